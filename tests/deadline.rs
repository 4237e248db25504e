//! Time limits beyond one attempt: `--max-age` (a backlog of stale events is dropped, not
//! worked through) and `--deadline` (over all attempts, retries and backoff included).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::util::*;

/// A line filter that appends each line to the file in `argv[1]` as it starts on it, then
/// takes 5 ms: the worker's own account of what ran.
const LOGGING_PY: &str = r#"
import sys, time
log = open(sys.argv[1], "a")
for line in sys.stdin:
    log.write(line)
    log.flush()
    time.sleep(0.005)
    sys.stdout.write(line)
    sys.stdout.flush()
"#;

fn kinds(records: &[&serde_json::Value], want: &str) -> BTreeSet<u64> {
    records
        .iter()
        .filter(|r| kind(r) == want)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn max_age_drops_a_stale_backlog_instead_of_working_through_it() {
    let fx = Fixture::new();
    let script = fx.path("log.py");
    std::fs::write(&script, LOGGING_PY).unwrap();
    let ran = fx.path("ran");
    let (script, ran) = (script.to_str().unwrap(), ran.to_str().unwrap());
    let n = 2000;
    let input: String = (0..n).map(|i| format!("{i}\n")).collect();
    let args = [
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "--max-age",
        "1s",
        "--",
        stdio(),
        "--",
        "python3",
        "-u",
        script,
        ran,
    ];
    let start = Instant::now();
    let out = fx.herd(&args).write_stdin(input).output().unwrap();
    let elapsed = start.elapsed();
    let run = Run::new(args.iter().map(|s| s.to_string()).collect(), out);
    run.assert_success();
    let records = run.by_seq(n);
    let ok = kinds(&records, "ok");
    let expired = kinds(&records, "expired");
    assert_eq!(ok.len() + expired.len(), n, "only ok and expired records");
    // About 1 s of 5 ms events ran; the rest expired.
    assert!(!ok.is_empty() && expired.len() > n / 2, "{} ok", ok.len());
    assert!(records
        .iter()
        .filter(|r| kind(r) == "expired")
        .all(|r| r["attempts"] == 0));
    // Worker-side: exactly the events with an ok record ran, none that expired.
    let started: BTreeSet<u64> = std::fs::read_to_string(ran)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(started, ok);
    // Working through the backlog would take 10 s.
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
}

fn stdio() -> &'static str {
    env!("CARGO_BIN_EXE_herd-stdio")
}

#[test]
fn deadline_passing_during_backoff_records_at_once() {
    let fx = Fixture::new();
    let start = Instant::now();
    // The first attempt fails at once; the retry would wait 5 to 10 s.
    let run = fx.run_chaos(
        &[
            "-w",
            "1",
            "--retries",
            "5",
            "--retry-backoff",
            "10s",
            "--deadline",
            "300ms",
        ],
        "{\"op\":\"flaky\",\"fails\":3}\n{\"op\":\"square\",\"n\":4}\n",
    );
    let elapsed = start.elapsed();
    run.assert_success();
    let r = run.by_seq(2);
    assert_eq!(kind(r[0]), "deadline", "{}", r[0]);
    assert_eq!(r[0]["attempts"], 1);
    assert_eq!(kind(r[1]), "ok");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[test]
fn deadline_passing_during_an_attempt_kills_it_and_frees_the_bystander() {
    let fx = Fixture::new();
    // Window 2: the second event waits behind the first inside the worker.
    let mut live = fx.spawn_herd(&[
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "--window",
        "2",
        "--retries",
        "3",
        "--deadline",
        "2s",
        "--",
        chaos(),
    ]);
    let start = Instant::now();
    live.write(b"{\"op\":\"sleep\",\"ms\":60000}\n");
    // Not synchronization: the second event must be younger than the first by a margin, so
    // that its own deadline is still ahead when the first one's passes.
    std::thread::sleep(Duration::from_secs(1));
    live.write(b"{\"op\":\"square\",\"n\":4}\n");
    live.close_stdin();
    let (status, mut records, logs) = live.finish(Duration::from_secs(20));
    let elapsed = start.elapsed();
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
    records.sort_by_key(|r| r["seq"].as_u64().unwrap());
    assert_eq!(records.len(), 2, "{records:?}");
    let r = &records;
    assert_eq!(kind(&r[0]), "deadline", "{}", r[0]);
    assert_eq!(r[0]["attempts"], 1, "not retried after its deadline");
    // The bystander was re-sent free, and ran on the replacement within its own deadline.
    assert_eq!(kind(&r[1]), "ok", "{}", r[1]);
    assert_eq!(r[1]["attempts"], 1);
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(
        logs.iter()
            .any(|l| l["message"] == "task past its deadline; killing worker"),
        "{}",
        dump(&logs)
    );
}

#[test]
fn stop_with_expiring_events_gives_one_record_each() {
    let fx = Fixture::new();
    let n = 400;
    let input: String = (0..n)
        .map(|_| "{\"op\":\"sleep\",\"ms\":10}\n".to_string())
        .collect();
    let mut live = fx.spawn_herd(&[
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "--max-age",
        "400ms",
        "--grace",
        "5s",
        "--",
        chaos(),
    ]);
    live.write(input.as_bytes());
    live.close_stdin();
    wait_for("first records", Duration::from_secs(10), || {
        live.records_so_far() > 0
    });
    signal(live.pid(), nix::sys::signal::Signal::SIGTERM);
    let (status, records, _logs) = live.finish(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    let mut seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>(), "one record each");
    let refs: Vec<&serde_json::Value> = records.iter().collect();
    let ok = kinds(&refs, "ok").len();
    let expired = kinds(&refs, "expired").len();
    let shutdown = kinds(&refs, "shutdown").len();
    assert_eq!(ok + expired + shutdown, n);
    assert!(expired > 0, "{ok} ok, {shutdown} shutdown");
}
