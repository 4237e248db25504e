//! Micro-benchmarks of the frame codec: the per-task costs on both ends of a worker socket.
//!
//! Run with `cargo bench -p herd-proto`. Sample counts are kept low so the whole file finishes
//! in well under a minute; pass `-- <filter>` to run a subset.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herd_proto::codec::{decode_frame, encode_frame, read_frame};
use herd_proto::{FromWorker, Outcome, ToWorker, ToWorkerRef, DEFAULT_MAX_FRAME};

/// A typical small event line.
const PAYLOAD: &[u8] = br#"{"op":"square","n":12345}"#;
/// A typical small handler output (12345²).
const OUTPUT: &[u8] = b"152399025";
/// Frames per batch in the batch benchmarks.
const BATCH: usize = 64;
/// Size of the large payload.
const MIB: usize = 1 << 20;

fn task(id: u64, payload: &[u8]) -> ToWorkerRef<'_> {
    ToWorkerRef::Task {
        id,
        attempt: 1,
        payload,
    }
}

fn done(id: u64) -> FromWorker {
    FromWorker::Done {
        id,
        outcome: Outcome::Ok(OUTPUT.to_vec()),
    }
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out, DEFAULT_MAX_FRAME).unwrap();
    out
}

/// The supervisor's send path: one Task frame appended to a reused buffer.
fn small_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));

    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_task_small", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(
                black_box(&task(12_345, PAYLOAD)),
                &mut out,
                DEFAULT_MAX_FRAME,
            )
            .unwrap();
            black_box(out.len())
        });
    });

    let one = frame(&done(12_345));
    let (back, used) = decode_frame::<FromWorker>(&one, DEFAULT_MAX_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!((back, used), (done(12_345), one.len()));
    g.bench_function("decode_done_small", |b| {
        b.iter(|| decode_frame::<FromWorker>(black_box(&one), DEFAULT_MAX_FRAME).unwrap());
    });
    g.finish();
}

/// Many frames per buffer: the supervisor's read path (decode_frame over one read's worth of
/// Done frames) and the worker's (read_frame over a stream of Task frames).
fn batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(BATCH as u64));

    let mut dones = Vec::new();
    for id in 0..BATCH as u64 {
        encode_frame(&done(1_000 + id), &mut dones, DEFAULT_MAX_FRAME).unwrap();
    }
    let decode_all = |buf: &[u8]| {
        let mut at = 0;
        let mut n = 0;
        while let Some((msg, used)) =
            decode_frame::<FromWorker>(&buf[at..], DEFAULT_MAX_FRAME).unwrap()
        {
            black_box(msg);
            at += used;
            n += 1;
        }
        n
    };
    assert_eq!(decode_all(&dones), BATCH);
    g.bench_function("decode_done_batch64", |b| {
        b.iter(|| decode_all(black_box(&dones)));
    });

    let mut tasks = Vec::new();
    for id in 0..BATCH as u64 {
        encode_frame(&task(1_000 + id, PAYLOAD), &mut tasks, DEFAULT_MAX_FRAME).unwrap();
    }
    let mut scratch = Vec::new();
    let mut read_all = |mut r: &[u8]| {
        let mut n = 0;
        while let Some(msg) =
            read_frame::<ToWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME).unwrap()
        {
            black_box(msg);
            n += 1;
        }
        n
    };
    assert_eq!(read_all(&tasks), BATCH);
    g.bench_function("read_frame_task_stream64", |b| {
        b.iter(|| read_all(black_box(&tasks)));
    });
    g.finish();
}

/// A 1 MiB payload: dominated by copying, shows the codec adds no per-byte work of its own.
fn large_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(MIB as u64));

    let payload: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::with_capacity(MIB + 64);
    g.bench_function("encode_task_1mib", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(black_box(&task(7, &payload)), &mut out, DEFAULT_MAX_FRAME).unwrap();
            black_box(out.len())
        });
    });

    let big = frame(&task(7, &payload));
    match decode_frame::<ToWorker>(&big, DEFAULT_MAX_FRAME).unwrap() {
        Some((ToWorker::Task { payload: p, .. }, used)) => {
            assert_eq!((p.as_slice(), used), (payload.as_slice(), big.len()));
        }
        other => panic!("unexpected decode: {other:?}"),
    }
    g.bench_function("decode_task_1mib", |b| {
        b.iter(|| decode_frame::<ToWorker>(black_box(&big), DEFAULT_MAX_FRAME).unwrap());
    });

    g.bench_function("roundtrip_task_1mib", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(black_box(&task(7, &payload)), &mut out, DEFAULT_MAX_FRAME).unwrap();
            decode_frame::<ToWorker>(black_box(&out), DEFAULT_MAX_FRAME).unwrap()
        });
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
    targets = small_frames, batches, large_frames
}
criterion_main!(benches);
