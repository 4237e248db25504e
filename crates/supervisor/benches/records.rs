//! Micro-benchmarks of result-record formatting: the per-event cost on `herd run`'s writer
//! thread.
//!
//! Run with `cargo bench -p herd-supervisor --bench records`. Sample counts are kept low so the
//! whole file finishes in well under a minute; pass `-- <filter>` to run a subset.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herd_supervisor::record::{ErrorKind, Record, RecordOutcome, RecordWriter};

/// Records per batch in the writer benchmark.
const BATCH: usize = 1024;

fn ok(seq: u64, output: &[u8]) -> Record {
    Record {
        seq,
        attempts: 1,
        chunks: 0,
        outcome: RecordOutcome::Ok {
            // `.into()` so this builds whether the field is a `Vec<u8>` or a `Bytes`.
            output: output.to_vec().into(),
            worker: 3,
            pid: 424_242,
            micros: 517,
        },
        input: None,
    }
}

fn err(seq: u64) -> Record {
    Record {
        seq,
        attempts: 3,
        chunks: 0,
        outcome: RecordOutcome::Err {
            kind: ErrorKind::Crashed,
            message: "worker 3 (pid 424250) killed by \"SIGSEGV\" while running the task".into(),
            retryable: false,
        },
        input: Some(bytes::Bytes::from_static(br#"{"op":"square","n":12345}"#)),
    }
}

/// Formats `r` once and checks it is one line of valid JSON (outside the timed loop).
fn check(r: &Record) -> String {
    let mut v = Vec::new();
    r.write_json(&mut v);
    let line = String::from_utf8(v).unwrap();
    assert_eq!(line.matches('\n').count(), 1, "{line}");
    serde_json::from_str::<serde_json::Value>(&line).unwrap();
    line
}

fn write_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));

    let cases = [
        // The hot case: a bare integer, embedded raw via the digit fast path.
        ("write_json_ok_integer", ok(123_456, b"152399025")),
        // Single-line JSON: validated with serde_json, then embedded raw.
        (
            "write_json_ok_object",
            ok(
                123_456,
                br#"{"op":"square","n":12345,"result":152399025,"tags":["a","b"]}"#,
            ),
        ),
        // Not JSON (and multi-line): a failed parse, then an escaped JSON string.
        (
            "write_json_ok_string_escaped",
            ok(123_456, b"result:\t152399025\nnote: \"square\" of 12345\n"),
        ),
        ("write_json_err", err(123_456)),
    ];

    let mut out = Vec::with_capacity(1024);
    for (name, record) in &cases {
        let line = check(record);
        if *name == "write_json_ok_string_escaped" {
            assert!(line.contains(r#""output":"result:\t152399025\nnote: \"square\""#));
        }
        g.bench_function(*name, |b| {
            b.iter(|| {
                out.clear();
                black_box(record).write_json(&mut out);
                black_box(out.len())
            });
        });
    }
    g.finish();
}

fn writer_batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(BATCH as u64));

    // One read's worth of typical results: integer outputs of varying width.
    let records: Vec<Record> = (0..BATCH as u64)
        .map(|seq| ok(seq, (seq * seq * 7919).to_string().as_bytes()))
        .collect();
    for r in &records[..4] {
        check(r);
    }

    let mut w = RecordWriter::new(std::io::sink());
    g.bench_function("writer_batch1024_ok_integer", |b| {
        b.iter(|| w.write(black_box(&records)).unwrap());
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = write_json, writer_batch
}
criterion_main!(benches);
