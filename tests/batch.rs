//! Batch dispatch (`--batch`, protocol 3's `Batching`/`Batch`) through the real binaries: a
//! million tiny events in batches, poison events isolated by solo reruns (crash, hang, garbage),
//! thin traffic that never waits for a batch to fill, batches by key, and workers that never
//! asked for batches. herd-chaos takes batches with `--batch N`.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::util::*;

/// `herd run --log-format json <opts> -- herd-chaos <worker>` with `input` on stdin.
fn run(fx: &Fixture, opts: &[&str], worker: &[&str], input: impl Into<Vec<u8>>) -> Run {
    let mut args = vec!["run", "--log-format", "json"];
    args.extend_from_slice(opts);
    args.push("--");
    args.push(chaos());
    args.extend_from_slice(worker);
    let out = fx.herd(&args).write_stdin(input.into()).output().unwrap();
    Run::new(args.iter().map(|s| s.to_string()).collect(), out)
}

/// The `done` log line's batch counters: batches sent, events in them.
fn batches(run: &Run) -> (u64, u64) {
    let done = run.log_events("done");
    let done = done
        .last()
        .unwrap_or_else(|| panic!("no done line: {}", run.stderr()));
    (
        done["batches"].as_u64().unwrap(),
        done["batched_events"].as_u64().unwrap(),
    )
}

/// Every record of `n` square events is there once, ok, with its square.
fn check_squares(run: &Run, n: usize) {
    run.assert_success();
    assert_eq!(run.records.len(), n, "one record per event");
    for (i, r) in run.by_seq(n).iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"].as_u64(), Some((i * i) as u64), "{r}");
    }
}

/// A million tiny events with `--batch 64`: every record checked, and they did go in batches
/// (nearly full ones: the queue is deep).
#[test]
fn a_million_tiny_events_in_batches_of_64() {
    let fx = Fixture::new();
    let n = 1_000_000;
    let run = run(
        &fx,
        &["-w", "2", "--batch", "64"],
        &["--batch", "64"],
        square_events(n),
    );
    check_squares(&run, n);
    let (sent, events) = batches(&run);
    assert!(sent > 0, "no batch was sent");
    let mean = events as f64 / sent as f64;
    assert!(mean > 32.0, "batches of {mean:.1} on average");
    assert!(
        events > n as u64 * 9 / 10,
        "{events} of {n} events in batches"
    );
}

/// One event in every 100th batch (every 6,400th event) is poison: the worker dies in it, hangs
/// in it past `--timeout`, or writes garbage. The worker's unanswered events then run alone
/// (solo), uncharged: it is quarantined by the normal retries with its own kind, and every
/// other event is answered ok, once.
#[test]
fn a_poison_event_in_every_100th_batch_is_isolated() {
    let fx = Fixture::new();
    let n = 12_800;
    for (op, kind_wanted) in [
        ("crash", "crashed"),
        ("hang", "timeout"),
        ("garbage", "protocol"),
    ] {
        let poison = |i: usize| i % 6_400 == 3_200;
        let input: String = (0..n)
            .map(|i| {
                if poison(i) {
                    format!("{{\"op\":\"{op}\"}}\n")
                } else {
                    format!("{{\"op\":\"square\",\"n\":{i}}}\n")
                }
            })
            .collect();
        let run = run(
            &fx,
            &[
                "-w",
                "2",
                "--batch",
                "64",
                "--timeout",
                "500ms",
                "--retries",
                "1",
            ],
            &["--batch", "64"],
            input,
        );
        run.assert_success();
        assert_eq!(run.records.len(), n, "{op}: one record per event");
        for (i, r) in run.by_seq(n).iter().enumerate() {
            if poison(i) {
                assert_eq!(kind(r), kind_wanted, "{op}: {r}");
                // Sent back from its batch (no charge), then charged alone: 1 + --retries.
                assert!(r["attempts"].as_u64().unwrap() >= 2, "{op}: {r}");
            } else {
                assert_eq!(r["ok"], true, "{op}: seq {i} was not answered ok: {r}");
                assert_eq!(r["output"].as_u64(), Some((i * i) as u64), "{r}");
            }
        }
        let (sent, _) = batches(&run);
        assert!(sent > 100, "{op}: {sent} batches");
    }
}

/// Wall-clock microseconds since 1970 (herd-chaos's `clock` op says when it started).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Thin traffic, one event per 50 ms through a pipe: an idle worker never waits for a batch
/// to fill, so each event starts within `--batch-wait` (plus a margin for a loaded machine)
/// of being written.
#[test]
fn thin_traffic_is_not_held_for_a_batch() {
    let fx = Fixture::new();
    let mut live = fx.spawn_herd(&[
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "--batch",
        "64",
        "--batch-wait",
        "20ms",
        "--",
        chaos(),
        "--batch",
        "64",
    ]);
    let n = 40;
    let mut written = Vec::new();
    let mut stdin = live.stdin.take().unwrap();
    for _ in 0..n {
        written.push(now_us());
        stdin.write_all(b"{\"op\":\"clock\"}\n").unwrap();
        stdin.flush().unwrap();
        // The traffic's shape, not a synchronisation: one event per 50 ms.
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    let (status, records, logs) = live.finish(Duration::from_secs(30));
    assert!(status.success(), "{}", dump(&logs));
    assert_eq!(records.len(), n);
    let margin_us = 20_000 + 250_000;
    for r in &records {
        let seq = r["seq"].as_u64().unwrap() as usize;
        let started = r["output"].as_u64().unwrap();
        let waited = started.saturating_sub(written[seq]);
        assert!(
            waited < margin_us,
            "event {seq} started {waited} µs after it was written"
        );
    }
}

/// A partial batch is held back while its worker is busy, and goes at once when that worker
/// becomes idle, not after `--batch-wait`: three events trickled in while the only worker
/// streams a long task run together, as one batch (sent at once, they would have gone one by
/// one), as soon as it is done (not 60 s later).
#[test]
fn a_held_batch_goes_when_its_worker_is_idle() {
    let fx = Fixture::new();
    let mut live = fx.spawn_herd(&[
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "--batch",
        "64",
        "--batch-wait",
        "60s",
        "--",
        chaos(),
        "--batch",
        "64",
    ]);
    // Busy for 1.6 s; its first chunk (at 800 ms) says it is running.
    live.write(b"{\"op\":\"stream\",\"n\":2,\"ms\":800}\n");
    wait_for("the first chunk", Duration::from_secs(30), || {
        live.records_so_far() >= 1
    });
    let written = Instant::now();
    for i in 0..3 {
        live.write(format!("{{\"op\":\"batch\",\"i\":{i}}}\n").as_bytes());
        // The traffic's shape, not a synchronisation: one event per 30 ms.
        std::thread::sleep(Duration::from_millis(30));
    }
    let (status, records, logs) = live.finish(Duration::from_secs(50));
    assert!(status.success(), "{}", dump(&logs));
    assert!(
        written.elapsed() < Duration::from_secs(30),
        "the held batch waited for --batch-wait"
    );
    let finals: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("chunk").is_none())
        .collect();
    assert_eq!(finals.len(), 4, "{records:?}");
    for r in finals.iter().filter(|r| r["seq"] != 0) {
        assert_eq!(r["output"]["n"], 3, "the three went as one batch: {r}");
    }
}

/// `--batch-by-key`: every batch holds the events of one key only (the worker reports the keys
/// of the batch each event ran in), and batches of more than one did form.
#[test]
fn batches_by_key_hold_one_keys_events() {
    let fx = Fixture::new();
    let n = 4_000;
    let input: String = (0..n)
        .map(|i| format!("{{\"op\":\"batch\",\"k\":\"key-{}\",\"i\":{i}}}\n", i % 4))
        .collect();
    let run = run(
        &fx,
        &["-w", "2", "--batch", "16", "--batch-by-key", "--key", "/k"],
        &["--batch", "16"],
        input,
    );
    run.assert_success();
    assert_eq!(run.records.len(), n);
    let mut largest = 0;
    for r in run.by_seq(n) {
        let seq = r["seq"].as_u64().unwrap();
        let own = format!("key-{}", seq % 4);
        let out = &r["output"];
        let keys = out["k"].as_array().unwrap();
        assert!(keys.iter().all(|k| k == &own), "mixed batch: {r}");
        assert!(
            out["i"].as_array().unwrap().contains(&Value::from(seq)),
            "its batch names it: {r}"
        );
        largest = largest.max(out["n"].as_u64().unwrap());
    }
    assert!(largest > 1, "no batch of more than one event formed");
}

/// With `--batch`, workers that never declared batches get single tasks: protocol 1 and 2
/// workers (which cannot), and a protocol 3 worker with a plain handler.
#[test]
fn workers_without_batching_get_single_tasks() {
    let fx = Fixture::new();
    let n = 300;
    let input: String = (0..n)
        .map(|i| format!("{{\"op\":\"batch\",\"i\":{i}}}\n"))
        .collect();
    for worker in [
        &["--protocol", "1", "--batch", "64"][..],
        &["--protocol", "2", "--batch", "64"],
        &[],
    ] {
        let run = run(&fx, &["-w", "2", "--batch", "64"], worker, input.clone());
        run.assert_success();
        assert_eq!(run.records.len(), n, "{worker:?}");
        for r in run.by_seq(n) {
            assert_eq!(r["output"]["n"], 1, "{worker:?}: {r}");
        }
        assert_eq!(batches(&run), (0, 0), "{worker:?}");
    }
}

/// A `Batching` anywhere but right after Hello is a protocol fault: the worker is killed, its
/// event gets a `protocol` record naming the rule, and nothing else is lost.
#[test]
fn a_late_batching_frame_is_a_protocol_fault() {
    let fx = Fixture::new();
    let input = "{\"op\":\"echo\",\"v\":1}\n{\"op\":\"v3_frame\",\"frame\":\"batching_late\"}\n\
                 {\"op\":\"echo\",\"v\":2}\n";
    let run = run(&fx, &["-w", "1", "--retries", "0"], &[], input);
    run.assert_success();
    let records = run.by_seq(3);
    assert_eq!(records[0]["output"], 1);
    assert_eq!(kind(records[1]), "protocol", "{}", records[1]);
    let message = records[1]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Batching must come right after Hello"),
        "{message}"
    );
    assert_eq!(records[2]["output"], 2);
    let pids: HashSet<u32> = run.worker_pids();
    assert_all_gone(&pids);
}

/// Batches per submission on a daemon that has none of its own (`herd submit --batch`, the
/// control protocol's `SubmitOption::Batch`): that submission's events go in batches, another
/// submission's do not, and `herd status` counts the batches.
#[test]
fn a_submission_asks_for_its_own_batches() {
    let d = Daemon::start_with(1, &[], &["--batch", "16"]);
    let n = 2_000;
    let input: String = (0..n)
        .map(|i| format!("{{\"op\":\"batch\",\"i\":{i}}}\n"))
        .collect();
    let plain = crate::control::output_of(d.submit_bg("plain.jsonl", &input, &[]));
    plain.assert_success();
    assert_eq!(plain.records.len(), n);
    assert!(
        plain.records.iter().all(|r| r["output"]["n"] == 1),
        "no batches asked for"
    );
    assert_eq!(d.status()["batches"], 0);

    let batched = crate::control::output_of(d.submit_bg(
        "batched.jsonl",
        &input,
        &["--batch", "16", "--batch-wait", "1ms"],
    ));
    batched.assert_success();
    assert_eq!(batched.records.len(), n);
    let sizes: Vec<u64> = batched
        .by_seq(n)
        .iter()
        .map(|r| r["output"]["n"].as_u64().unwrap())
        .collect();
    assert!(sizes.iter().all(|&s| (1..=16).contains(&s)), "{sizes:?}");
    assert!(sizes.iter().any(|&s| s > 1), "no batch formed");
    let st = d.status();
    assert!(st["batches"].as_u64().unwrap() > 0, "{st}");
    assert!(st["batch_mean_size"].as_f64().unwrap() > 1.0, "{st}");
    let text = output_ok(&mut d.fx.herd(&["status", "--control", d.ctl()]));
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("batches: "),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    d.stop_ok();
}
