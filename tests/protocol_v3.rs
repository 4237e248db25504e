//! Worker protocol 3 with the real binaries: work withdrawn from behind a hung task, a cancel
//! the worker carries out itself (and the kill when it does not), `retry_after`, and workers
//! that answer what nobody asked. herd-chaos speaks protocol 3 unless run with `--protocol 2`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cancel::{ctl_cancel, total, wait_exit_output};
use crate::util::*;

/// The records of a finished `herd submit`, by seq (exactly one each).
fn records_by_seq(out: &std::process::Output) -> BTreeMap<u64, Value> {
    let mut records = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        assert!(records.insert(seq, v).is_none(), "two records for {seq}");
    }
    records
}

/// The pid of worker `i` in a status.
fn worker_pid(st: &Value, i: usize) -> u64 {
    st["workers"][i]["pid"].as_u64().unwrap_or(0)
}

/// With no `--timeout`, the events pipelined behind a hung one are withdrawn from its worker
/// and finish on the idle one; the hung worker is not killed for it. Then a cancel of the hung
/// event, which ignores it, falls back to the kill after the exit timeout.
#[test]
fn events_behind_a_hung_head_finish_on_another_worker() {
    const N: u64 = 20;
    let d = Daemon::start(2, &["--exit-timeout", "1s"]);
    let mut input = String::from("{\"op\":\"sleep\",\"ms\":600000}\n");
    for _ in 1..=N {
        input.push_str("{\"op\":\"sleep\",\"ms\":20}\n");
    }
    let (child, id) = d.submit_with_id("in.jsonl", &input);
    let st = d.wait_status("every event but the hung one answered", |st| {
        total(st, "ok") == N
    });
    let hung = (0..2)
        .find(|&i| st["workers"][i]["inflight"] == 1)
        .unwrap_or_else(|| panic!("one worker still runs the hung event: {st}"));
    let pid = worker_pid(&st, hung);
    assert!(
        d.live
            .logs()
            .iter()
            .any(|l| l["message"] == "head task stalled; withdrawing the tasks behind it"),
        "{}",
        dump(&d.live.logs())
    );
    assert_eq!(st["restarts"].as_object().map_or(0, |r| r.len()), 0, "{st}");

    // The sleep does not look at its cancel flag: herd kills it after the exit timeout.
    let asked = Instant::now();
    let (ok, text) = ctl_cancel(&d, &id, 0);
    assert!(ok, "{text}");
    let out = wait_exit_output(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "the grace was kept"
    );
    let records = records_by_seq(&out);
    assert_eq!(records.len() as u64, N + 1);
    assert_eq!(kind(&records[&0]), "cancelled", "{}", records[&0]);
    assert!(records.values().skip(1).all(|r| r["ok"] == true));
    let st = d.wait_status("the killed worker replaced", |st| {
        worker_pid(st, hung) != pid && ready_workers(st) == 2
    });
    assert_eq!(st["restarts"]["cancelled"], 1, "{st}");
    d.stop_ok();
}

/// A cancel of a running event on a v3 worker whose handler looks at its flag: the record is
/// `cancelled`, the worker is not replaced (same pid), and the next event runs on it.
#[test]
fn a_cancel_carried_out_by_the_worker_keeps_it() {
    let d = Daemon::start(1, &["--window", "1"]);
    let pid = worker_pid(&d.status(), 0);
    let input = "{\"op\":\"cancellable\",\"ms\":600000}\n{\"op\":\"pid\"}\n";
    let (child, id) = d.submit_with_id("in.jsonl", input);
    d.wait_status("the cancellable event running", |st| st["inflight"] == 1);
    let (ok, text) = ctl_cancel(&d, &id, 0);
    assert!(ok && text.contains("stopping it"), "{text}");
    let out = wait_exit_output(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = records_by_seq(&out);
    assert_eq!(kind(&records[&0]), "cancelled", "{}", records[&0]);
    assert_eq!(records[&0]["attempts"], 1);
    assert_eq!(
        records[&1]["output"], pid,
        "the same worker ran the next event"
    );
    let st = d.status();
    assert_eq!(worker_pid(&st, 0), pid);
    assert!(st["restarts"].get("cancelled").is_none(), "{st}");
    d.stop_ok();
}

/// The attempt start times `retry_after` logged in `path`.
fn attempt_times(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect()
}

/// A worker's `retry_after` is the delay before the retry, clamped to the pool's longest
/// backoff (32 × `--retry-backoff`, 1.6 s here); a protocol 2 worker's plain retryable error gets the
/// pool's own short backoff; `--deadline` still ends an event whose retry would come too late.
#[test]
fn retry_after_is_honoured_clamped_and_bounded_by_the_deadline() {
    let fx = Fixture::new();
    let honoured = fx.path("honoured.log");
    let clamped = fx.path("clamped.log");
    let input = format!(
        "{{\"op\":\"retry_after\",\"ms\":700,\"log\":{:?}}}\n\
         {{\"op\":\"retry_after\",\"ms\":600000,\"log\":{:?}}}\n",
        honoured.to_str().unwrap(),
        clamped.to_str().unwrap()
    );
    let run = fx.run_chaos(&["-w", "2", "--retry-backoff", "50ms"], input.clone());
    run.assert_success();
    for r in run.by_seq(2) {
        assert_eq!(r["output"], 2, "{r}");
    }
    let gap = |path| {
        let t = attempt_times(path);
        assert_eq!(t.len(), 2, "two attempts");
        Duration::from_micros(t[1] - t[0])
    };
    let g = gap(&honoured);
    assert!(g >= Duration::from_millis(700), "retried after {g:?}");
    let g = gap(&clamped);
    assert!(
        g >= Duration::from_millis(1500) && g < Duration::from_secs(10),
        "clamped to 1.6 s, retried after {g:?}"
    );

    // A protocol 2 worker cannot say when: the pool's own backoff (5 to 10 ms here).
    let v2 = fx.path("v2.log");
    let input = format!(
        "{{\"op\":\"retry_after\",\"ms\":5000,\"log\":{:?}}}\n",
        v2.to_str().unwrap()
    );
    let args = [
        "run",
        "--log-format",
        "json",
        "--retry-backoff",
        "10ms",
        "--",
        chaos(),
        "--protocol",
        "2",
    ];
    let out = fx.herd(&args).write_stdin(input).output().unwrap();
    let run = Run::new(args.iter().map(|s| s.to_string()).collect(), out);
    run.assert_success();
    assert_eq!(run.by_seq(1)[0]["output"], 2);
    assert!(
        gap(&v2) < Duration::from_secs(2),
        "not the 5 s it asked for"
    );

    // The deadline comes before the (clamped) 320 s the worker asks for.
    let late = fx.path("late.log");
    let input = format!(
        "{{\"op\":\"retry_after\",\"ms\":3600000,\"log\":{:?}}}\n",
        late.to_str().unwrap()
    );
    let started = Instant::now();
    let run = fx.run_chaos(&["--retry-backoff", "10s", "--deadline", "800ms"], input);
    run.assert_success();
    assert_eq!(kind(run.by_seq(1)[0]), "deadline", "{:?}", run.records);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(attempt_times(&late).len(), 1);
}

/// Workers that answer what herd never asked, or send a v3 frame while speaking protocol 2, or
/// a broken one: each is killed with a clear protocol error naming what it did, its event gets
/// one `protocol` record, and nothing else is lost.
#[test]
fn v3_frames_nobody_asked_for_are_protocol_faults_and_nothing_is_lost() {
    let fx = Fixture::new();
    let cases = [
        ("withdrawn_unknown", "Withdrawn for task"),
        ("kept_unasked", "Kept for task"),
        ("cancelled_unasked", "which herd did not cancel"),
        ("truncated", "malformed frame"),
    ];
    let mut input = String::new();
    for (frame, _) in cases {
        input.push_str(&format!(
            "{{\"op\":\"echo\",\"v\":1}}\n{{\"op\":\"v3_frame\",\"frame\":\"{frame}\"}}\n"
        ));
    }
    input.push_str("{\"op\":\"echo\",\"v\":2}\n");
    let run = fx.run_chaos(&["-w", "2", "--retries", "0"], input);
    run.assert_success();
    let records = run.by_seq(2 * cases.len() + 1);
    for (k, (frame, says)) in cases.iter().enumerate() {
        let r = records[2 * k + 1];
        assert_eq!(kind(r), "protocol", "{frame}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{frame}: {message}");
        assert_eq!(records[2 * k]["ok"], true, "{}", records[2 * k]);
    }
    assert_eq!(records[2 * cases.len()]["output"], 2);

    // A protocol 2 worker sending a protocol 3 frame.
    let args = [
        "run",
        "--log-format",
        "json",
        "--retries",
        "0",
        "--",
        chaos(),
        "--protocol",
        "2",
    ];
    let input = "{\"op\":\"v3_frame\",\"frame\":\"kept_unasked\"}\n{\"op\":\"echo\",\"v\":3}\n";
    let out = fx.herd(&args).write_stdin(input).output().unwrap();
    let run = Run::new(args.iter().map(|s| s.to_string()).collect(), out);
    run.assert_success();
    let records = run.by_seq(2);
    assert_eq!(kind(records[0]), "protocol");
    let message = records[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("from a protocol 2 worker"), "{message}");
    assert_eq!(records[1]["output"], 3);
}
