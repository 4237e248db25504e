//! Streamed partial results (protocol version 2): chunk lines before each final record, at
//! volume, through `herd run` and `herd submit`, with `--ordered`, large chunks, a worker
//! that dies mid-stream, hostile chunks, and a version-1 worker.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::Value;

use crate::util::*;

/// The lines of one event: its chunk lines, then its final record.
#[derive(Debug, Default)]
struct Event<'a> {
    /// (attempt, chunk index, output) in the order written.
    chunks: Vec<(u64, u64, &'a Value)>,
    fin: Option<&'a Value>,
}

/// Groups record lines by seq, checking the line contract on the way: every line is a chunk
/// line or a final record, exactly one final record per seq in 0..n, and no chunk line after
/// its event's final record.
fn events(lines: &[Value], n: usize) -> Vec<Event<'_>> {
    let mut by_seq: BTreeMap<u64, Event<'_>> = BTreeMap::new();
    for line in lines {
        let seq = line["seq"].as_u64().unwrap();
        let e = by_seq.entry(seq).or_default();
        if line.get("chunk").is_some() {
            assert!(e.fin.is_none(), "chunk line after the final record: {line}");
            assert!(
                line.get("ok").is_none(),
                "a chunk line is not a result: {line}"
            );
            e.chunks.push((
                line["attempt"].as_u64().unwrap(),
                line["chunk"].as_u64().unwrap(),
                &line["output"],
            ));
        } else {
            assert!(line.get("ok").is_some(), "neither chunk nor record: {line}");
            assert!(
                e.fin.is_none(),
                "a second final record for seq {seq}: {line}"
            );
            e.fin = Some(line);
        }
    }
    let seqs: Vec<u64> = by_seq.keys().copied().collect();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>(), "seqs");
    by_seq
        .into_values()
        .map(|e| {
            assert!(e.fin.is_some(), "no final record: {e:?}");
            e
        })
        .collect()
}

/// What a consumer keeps: the chunks of the final attempt, which must be numbered 0..k and
/// as many as the final record says.
fn kept<'a>(e: &Event<'a>) -> Vec<&'a Value> {
    let fin = e.fin.unwrap();
    let last = fin["attempts"].as_u64().unwrap();
    let kept: Vec<_> = e.chunks.iter().filter(|c| c.0 == last).collect();
    let indexes: Vec<u64> = kept.iter().map(|c| c.1).collect();
    assert_eq!(indexes, (0..kept.len() as u64).collect::<Vec<_>>(), "{e:?}");
    assert_eq!(
        fin.get("chunks").and_then(Value::as_u64).unwrap_or(0),
        kept.len() as u64,
        "the final record counts the final attempt's chunks: {fin}"
    );
    kept.iter().map(|c| c.2).collect()
}

fn stream_events(n: usize, chunks: usize) -> String {
    (0..n)
        .map(|_| format!("{{\"op\":\"stream\",\"n\":{chunks}}}\n"))
        .collect()
}

/// Every event of `stream_events(n, 10)` streamed its 10 rows, once, and answered 10.
fn assert_ten_rows_each(lines: &[Value], n: usize) {
    assert_eq!(
        lines.len(),
        n * 11,
        "10 chunk lines and a final record per event"
    );
    for e in events(lines, n) {
        let fin = e.fin.unwrap();
        assert_eq!(fin["ok"], true, "{fin}");
        assert_eq!(fin["output"], 10);
        assert_eq!(fin["attempts"], 1);
        let rows: Vec<u64> = kept(&e).iter().map(|v| v["i"].as_u64().unwrap()).collect();
        assert_eq!(rows, (0..10).collect::<Vec<_>>());
    }
}

#[test]
fn twenty_thousand_streams_of_ten_chunks_through_herd_run() {
    let fx = Fixture::new();
    let n = 20_000;
    let run = fx.run_chaos(&["-w", "2"], stream_events(n, 10));
    run.assert_success();
    assert_ten_rows_each(&run.records, n);
    assert_all_gone(&run.worker_pids());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn twenty_thousand_streams_of_ten_chunks_through_herd_submit() {
    let d = Daemon::start(2, &[]);
    let out = output_ok(
        d.fx.herd(&["submit", "--control", d.ctl()])
            .write_stdin(stream_events(20_000, 10)),
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_ten_rows_each(&lines, 20_000);
    let st = d.status();
    assert_eq!(st["chunks"], 200_000, "status counts chunk lines");
    assert_eq!(st["totals"]["ok"], 20_000);
    d.stop_ok();
}

#[test]
fn ordered_keeps_every_events_chunks_with_it_in_input_order() {
    let fx = Fixture::new();
    // Slow streams next to quick ones, so later events often finish first.
    let input: String = (0..600)
        .map(|i| match i % 3 {
            0 => format!("{{\"op\":\"stream\",\"n\":{},\"ms\":1}}\n", i % 7),
            1 => "{\"op\":\"square\",\"n\":3}\n".to_string(),
            _ => "{\"op\":\"stream\",\"n\":4}\n".to_string(),
        })
        .collect();
    let run = fx.run_chaos(&["-w", "3", "--ordered"], input);
    run.assert_success();
    let seqs = run.seqs();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "every line of an event comes after every line of the events before it"
    );
    for (i, e) in events(&run.records, 600).iter().enumerate() {
        let want = match i % 3 {
            0 => i % 7,
            1 => 0,
            _ => 4,
        };
        assert_eq!(kept(e).len(), want, "{e:?}");
    }
}

/// Chunks parked behind a slow earlier event (`--ordered`) are bounded by the submission's
/// byte budget: past it that event's chunks are dropped and its one final record is a
/// `rejected` one that says why; the events around it are untouched.
#[test]
fn ordered_chunks_parked_past_the_byte_budget_reject_their_event_alone() {
    let fx = Fixture::new();
    // Event 0 runs 5 s; event 1 streams 200 KiB meanwhile, against a 64 KiB budget.
    let input = "{\"op\":\"sleep\",\"ms\":5000}\n\
                 {\"op\":\"stream\",\"n\":200,\"size\":1024}\n\
                 {\"op\":\"stream\",\"n\":3}\n\
                 {\"op\":\"square\",\"n\":4}\n";
    // One task per worker, so event 1 runs beside event 0, not after it.
    let run = fx.run_chaos(
        &[
            "-w",
            "2",
            "--window",
            "1",
            "--ordered",
            "--queue-bytes",
            "64KiB",
        ],
        input,
    );
    run.assert_success();
    let evs = events(&run.records, 4);
    assert_eq!(evs[0].fin.unwrap()["ok"], true);
    let fin = evs[1].fin.unwrap();
    assert_eq!(kind(fin), "rejected", "{fin}");
    let msg = fin["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("outgrew the submission's byte budget"),
        "{msg}"
    );
    assert!(
        kept(&evs[1]).is_empty(),
        "none of its chunk lines were written"
    );
    assert!(fin.get("chunks").is_none(), "{fin}");
    assert_eq!(kept(&evs[2]).len(), 3);
    assert_eq!(evs[3].fin.unwrap()["output"], 16);
}

#[test]
fn large_chunks_arrive_whole_and_an_oversize_one_fails_its_event() {
    let fx = Fixture::new();
    let size = 4_000_000;
    let input = format!(
        "{{\"op\":\"stream\",\"n\":3,\"size\":{size}}}\n{{\"op\":\"stream\",\"n\":2,\"size\":2000000}}\n{{\"op\":\"square\",\"n\":5}}\n"
    );
    let run = fx.run_chaos(&["-w", "2", "--max-frame", "3MiB"], input);
    run.assert_success();
    let evs = events(&run.records, 3);
    // 4 MB does not fit a 3 MiB frame: the SDK fails the task with a fatal error.
    let fin = evs[0].fin.unwrap();
    assert_eq!(kind(fin), "failed", "{fin}");
    let msg = fin["error"]["message"].as_str().unwrap();
    assert!(msg.contains("chunk of 4000002 bytes exceeds"), "{msg}");
    assert!(evs[0].chunks.is_empty());
    let big = kept(&evs[1]);
    assert_eq!(big.len(), 2);
    for c in big {
        assert_eq!(c.as_str().unwrap().len(), 2_000_000);
    }
    assert_eq!(evs[2].fin.unwrap()["output"], 25);
}

#[test]
fn a_worker_that_dies_mid_stream_is_retried_and_the_chunks_of_each_attempt_are_kept_apart() {
    let fx = Fixture::new();
    let n = 40;
    // Dies after 3 of its 5 chunks on the first attempt, streams all 5 on the second.
    let mut input = "{\"op\":\"stream\",\"n\":5,\"crash_after\":3}\n".repeat(n);
    // Dies after 2 chunks on every attempt: out of retries, a crashed record.
    input.push_str("{\"op\":\"stream\",\"n\":5,\"crash_after\":2,\"fails\":99}\n");
    let run = fx.run_chaos(&["-w", "2", "--retries", "2"], input);
    run.assert_success();
    let evs = events(&run.records, n + 1);
    for e in &evs[..n] {
        let fin = e.fin.unwrap();
        assert_eq!(fin["ok"], true, "{fin}");
        assert_eq!(fin["attempts"], 2, "{fin}");
        let first: Vec<u64> = e.chunks.iter().filter(|c| c.0 == 1).map(|c| c.1).collect();
        assert_eq!(first, [0, 1, 2], "attempt 1's chunks stay written: {e:?}");
        // Attempt 1's lines all come before attempt 2's.
        let attempts: Vec<u64> = e.chunks.iter().map(|c| c.0).collect();
        assert!(attempts.windows(2).all(|w| w[0] <= w[1]), "{attempts:?}");
        let rows: Vec<u64> = kept(e).iter().map(|v| v["i"].as_u64().unwrap()).collect();
        assert_eq!(rows, [0, 1, 2, 3, 4]);
    }
    let last = &evs[n];
    let fin = last.fin.unwrap();
    assert_eq!(kind(fin), "crashed", "{fin}");
    assert_eq!(fin["attempts"], 3);
    assert_eq!(fin["chunks"], 2, "the final attempt sent 2: {fin}");
    assert_eq!(last.chunks.len(), 6, "2 per attempt: {last:?}");
    assert_eq!(kept(last).len(), 2);
}

#[test]
fn a_chunk_for_a_task_the_worker_does_not_hold_is_a_protocol_fault() {
    let fx = Fixture::new();
    let mut input = square_events(200);
    input.push_str("{\"op\":\"stray_chunk\"}\n");
    input.push_str(&square_events(200));
    let run = fx.run_chaos(&["-w", "2", "--retries", "1"], input);
    run.assert_success();
    let evs = events(&run.records, 401);
    let fin = evs[200].fin.unwrap();
    assert_eq!(kind(fin), "protocol", "{fin}");
    assert_eq!(fin["attempts"], 2);
    let msg = fin["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("chunk for task") && msg.contains("does not hold"),
        "{msg}"
    );
    for (i, e) in evs.iter().enumerate().filter(|(i, _)| *i != 200) {
        let v = if i < 200 { i } else { i - 201 };
        assert_eq!(e.fin.unwrap()["output"], v * v, "{:?}", e.fin);
    }
    assert_all_gone(&run.worker_pids());
}

#[test]
fn a_done_behind_a_protocol_fault_in_the_same_read_is_not_trusted() {
    let fx = Fixture::new();
    let mut input = square_events(100);
    // A stray chunk, then its own Done, in one write: the Done is discarded with the worker.
    input.push_str("{\"op\":\"stray_chunk\",\"then_done\":true}\n");
    input.push_str(&square_events(100));
    let run = fx.run_chaos(&["-w", "2", "--retries", "1"], input);
    run.assert_success();
    let evs = events(&run.records, 201);
    let fin = evs[100].fin.unwrap();
    assert_eq!(
        kind(fin),
        "protocol",
        "not the Done behind the fault: {fin}"
    );
    assert_eq!(fin["attempts"], 2, "charged like any fault, retried: {fin}");
    for (i, e) in evs.iter().enumerate().filter(|(i, _)| *i != 100) {
        let v = if i < 100 { i } else { i - 101 };
        assert_eq!(e.fin.unwrap()["output"], v * v, "{:?}", e.fin);
    }
    assert_all_gone(&run.worker_pids());
}

#[test]
fn a_chunk_after_its_done_is_a_protocol_fault_and_the_event_keeps_its_one_record() {
    let fx = Fixture::new();
    let mut input = square_events(100);
    input.push_str("{\"op\":\"stray_chunk\",\"after_done\":true}\n");
    input.push_str(&square_events(100));
    let run = fx.run_chaos(&["-w", "2"], input);
    run.assert_success();
    let evs = events(&run.records, 201);
    let fin = evs[100].fin.unwrap();
    assert_eq!(
        fin["output"], "done",
        "its Done came first and stands: {fin}"
    );
    assert!(evs[100].chunks.is_empty());
    assert!(
        run.logs.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("protocol violation: chunk for task"))),
        "the fault is logged:\n{}",
        run.stderr()
    );
    let done = run.log_events("done");
    assert_eq!(done[0]["restarts"], 1, "the worker was killed and replaced");
    for e in &evs[101..] {
        assert_eq!(e.fin.unwrap()["ok"], true, "{:?}", e.fin);
    }
    assert_all_gone(&run.worker_pids());
}

/// A worker of protocol version 1, in Python with the standard library only: it answers
/// every task with its payload, and, for a payload `chunk`, first sends a Chunk frame, which
/// a version-1 worker must not.
const V1_WORKER: &str = r#"
import os, socket, struct, sys

def varint(n):
    if n <= 250: return bytes([n])
    if n < 1 << 16: return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32: return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)

def read_varint(b, p):
    m = b[p]
    if m <= 250: return m, p + 1
    size = {251: 2, 252: 4, 253: 8}[m]
    return int.from_bytes(b[p + 1:p + 1 + size], "little"), p + 1 + size

def frame(body): return struct.pack("<I", len(body)) + body

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["HERD_SOCKET"])
token = os.environ["HERD_TOKEN"].encode()
s.sendall(frame(b"\x00" + varint(1) + varint(os.getpid()) + varint(len(token)) + token))
buf = b""
while True:
    data = s.recv(65536)
    if not data: sys.exit(1)
    buf += data
    while len(buf) >= 4:
        (n,) = struct.unpack("<I", buf[:4])
        if len(buf) < 4 + n: break
        body, buf = buf[4:4 + n], buf[4 + n:]
        if body[0] == 1: sys.exit(0)
        tid, p = read_varint(body, 1)
        _, p = read_varint(body, p)
        plen, p = read_varint(body, p)
        payload = body[p:p + plen]
        out = b""
        if payload == b"chunk":
            out += frame(b"\x03" + varint(tid) + varint(1) + b"x")
        out += frame(b"\x01" + varint(tid) + b"\x00" + varint(len(payload)) + payload)
        s.sendall(out)
"#;

#[test]
fn a_version_1_worker_still_works_and_may_not_send_chunks() {
    let fx = Fixture::new();
    let py = fx.path("v1.py");
    std::fs::write(&py, V1_WORKER).unwrap();
    let mut input: String = (0..300).map(|i| format!("{i}\n")).collect();
    input.push_str("chunk\n");
    let out = fx
        .herd(&[
            "run",
            "--log-format",
            "json",
            "-w",
            "2",
            "--retries",
            "0",
            "--",
            "python3",
            py.to_str().unwrap(),
        ])
        .write_stdin(input)
        .output()
        .unwrap();
    let run = Run::new(vec!["run v1.py".into()], out);
    run.assert_success();
    let evs = events(&run.records, 301);
    for (i, e) in evs[..300].iter().enumerate() {
        let fin = e.fin.unwrap();
        assert_eq!(fin["output"], i, "{fin}");
        assert!(fin.get("chunks").is_none(), "unchanged v1 record: {fin}");
    }
    let fin = evs[300].fin.unwrap();
    assert_eq!(kind(fin), "protocol", "{fin}");
    let msg = fin["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Chunk frame from a protocol 1 worker"),
        "{msg}"
    );
    assert!(evs[300].chunks.is_empty(), "nothing written for it");
}

#[test]
fn a_stream_to_a_reader_that_stops_reading_waits_instead_of_filling_memory() {
    use std::io::Read;
    let d = Daemon::start(1, &[]);
    // 2,000 chunks of 256 KiB: 500 MiB if herd took them all in.
    let (n, size) = (2_000u64, 256 * 1024);
    let input = d.fx.path("events");
    std::fs::write(
        &input,
        format!("{{\"op\":\"stream\",\"n\":{n},\"size\":{size}}}\n"),
    )
    .unwrap();
    let mut submit =
        d.fx.std_command(herd_bin())
            .args([
                "submit",
                "--control",
                d.ctl(),
                "-i",
                input.to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    // Nobody reads the records yet.
    wait_for("the stream to start", RUN_TIMEOUT, || {
        d.status()["chunks"].as_u64().unwrap() >= 20
    });
    // The stream stalls: the chunk count stops growing (unchanged over 10 status calls)
    // short of the end, and herd's memory stays small meanwhile.
    let daemon = d.live.pid();
    let (mut peak, mut last, mut same) = (0, 0, 0);
    wait_for("the stream to stall", RUN_TIMEOUT, || {
        peak = peak.max(rss(daemon));
        let chunks = d.status()["chunks"].as_u64().unwrap();
        assert!(chunks < n, "herd took the whole stream in");
        same = if chunks == last { same + 1 } else { 0 };
        last = chunks;
        same >= 10
    });
    assert!(
        peak < 120 << 20,
        "herd's memory is bounded while its reader is stalled: {peak} bytes at {last} chunks"
    );
    eprintln!(
        "stalled at {last} chunks of {n}, herd's peak RSS {} MiB",
        peak >> 20
    );
    // The reader comes back: everything arrives, in order, once.
    let mut out = String::new();
    submit
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(submit.wait().unwrap().success());
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evs = events(&lines, 1);
    let kept = kept(&evs[0]);
    assert_eq!(kept.len() as u64, n);
    assert!(kept.iter().all(|c| c.as_str().unwrap().len() == size));
    assert_eq!(evs[0].fin.unwrap()["output"], n);
    d.stop_ok();
}

#[test]
fn a_submitter_that_stops_reading_its_chunks_holds_up_only_itself() {
    use std::io::{Read, Write};
    let d = Daemon::start(2, &[]);
    // One stream per worker, for a submitter that does not read its records.
    let stream = "{\"op\":\"stream\",\"n\":500,\"size\":1000000}\n";
    let mut slow = d.submit_bg("streams", &stream.repeat(2), &[]);
    let mut last = 0;
    let mut same = 0;
    wait_for("both streams to stall", RUN_TIMEOUT, || {
        let chunks = d.status()["chunks"].as_u64().unwrap();
        same = if chunks == last { same + 1 } else { 0 };
        last = chunks;
        chunks >= 8 && same >= 10
    });
    // Another submitter's work is answered anyway, within the hold limit and a little.
    let started = std::time::Instant::now();
    let mut quick =
        d.fx.std_command(herd_bin())
            .args(["submit", "--control", d.ctl()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let mut stdin = quick.stdin.take().unwrap();
    stdin.write_all(square_events(200).as_bytes()).unwrap();
    drop(stdin);
    let mut out = String::new();
    let mut stdout = quick.stdout.take().unwrap();
    let reader = std::thread::spawn(move || stdout.read_to_string(&mut out).map(|_| out));
    wait_for(
        "the other submitter's records",
        std::time::Duration::from_secs(40),
        || reader.is_finished(),
    );
    let out = reader.join().unwrap().unwrap();
    assert!(quick.wait().unwrap().success());
    eprintln!(
        "200 events beside a stalled reader: {:?}",
        started.elapsed()
    );
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 200);
    assert!(records.iter().all(|r| r["ok"] == true), "{out}");
    // The stalled streams were stopped for it: each event has its one record, rejected.
    let mut out = String::new();
    slow.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(slow.wait().unwrap().success());
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in events(&lines, 2) {
        let fin = e.fin.unwrap();
        assert_eq!(kind(fin), "rejected", "{fin}");
        let msg = fin["error"]["message"].as_str().unwrap();
        assert!(msg.contains("did not read its chunks"), "{msg}");
    }
    assert_eq!(d.status()["restarts"]["held"], 2);
    d.stop_ok();
}
