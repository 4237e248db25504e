//! Cancelling one event (`Cancel` in a submission, `CancelIn` / `herd ctl cancel` from
//! another connection) against a real daemon and real workers: queued, running, already
//! answered, and racing completions, crashes and a stop with exactly one record per event.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use herd_supervisor::client::Client;
use herd_supervisor::{Input, SubmitOptions};
use serde_json::Value;

use crate::util::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn events(lines: &[&str]) -> Vec<Input> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| Input::event(i as u64, l.to_string().into()))
        .collect()
}

/// `herd ctl cancel`'s output and whether it succeeded.
pub(crate) fn ctl_cancel(d: &Daemon, submission: &str, seq: u64) -> (bool, String) {
    let out =
        d.fx.herd(&[
            "ctl",
            "--control",
            d.ctl(),
            "cancel",
            "--submission",
            submission,
            &seq.to_string(),
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub(crate) fn total(st: &Value, kind: &str) -> u64 {
    st["totals"][kind].as_u64().unwrap_or(0)
}

/// `herd submit --print-id`, then `herd ctl cancel` from another connection: a queued event
/// is removed, a running one's worker is replaced, an answered one is refused; each record is
/// `cancelled` once, and the rest of the submission runs on. The worker speaks protocol 2, so
/// stopping is killing (`protocol_v3.rs` has the cancel a v3 worker carries out itself).
#[test]
fn ctl_cancel_removes_a_queued_event_stops_a_running_one_and_refuses_an_answered_one() {
    let d = Daemon::start_with(1, &["--window", "1"], &["--protocol", "2"]);
    let pid0 = d.status()["workers"][0]["pid"].as_u64().unwrap_or(0);
    let input = [
        r#"{"op":"sleep","ms":60000}"#,
        r#"{"op":"echo","v":1}"#,
        r#"{"op":"echo","v":2}"#,
        r#"{"op":"sleep","ms":60000}"#,
    ]
    .join("\n")
        + "\n";
    let (child, id) = d.submit_with_id("in.jsonl", &input);
    d.wait_status("the first sleep running, three queued", |st| {
        st["inflight"] == 1 && st["queued"] == 3
    });

    let (ok, text) = ctl_cancel(&d, &id, 1);
    assert!(ok, "{text}");
    assert!(text.contains("queued"), "{text}");
    let (ok, text) = ctl_cancel(&d, &id, 0);
    assert!(ok, "{text}");
    assert!(text.contains("worker"), "{text}");
    // Its replacement runs seq 2, then the second sleep.
    let st = d.wait_status("seq 2 answered", |st| total(st, "ok") == 1);
    assert_eq!(total(&st, "cancelled"), 2, "{st}");
    assert_eq!(st["restarts"]["cancelled"], 1, "{st}");
    assert_ne!(st["workers"][0]["pid"].as_u64().unwrap_or(0), pid0);
    let (ok, text) = ctl_cancel(&d, &id, 2);
    assert!(!ok, "an answered event: {text}");
    assert!(text.contains("already answered"), "{text}");
    let (ok, text) = ctl_cancel(&d, &id, 3);
    assert!(ok, "{text}");

    let out = wait_exit_output(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: BTreeMap<u64, Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["seq"].as_u64().unwrap(), v)
        })
        .collect();
    assert_eq!(records.len(), 4, "{records:?}");
    for (seq, attempts) in [(0, 1), (1, 0), (3, 1)] {
        let r = &records[&seq];
        assert_eq!(kind(r), "cancelled", "{r}");
        assert_eq!(r["attempts"], attempts, "{r}");
    }
    assert_eq!(records[&2]["output"], 2);
    let (ok, text) = ctl_cancel(&d, &id, 0);
    assert!(!ok && text.contains("no such submission"), "{text}");
    d.stop_ok();
}

pub(crate) fn wait_exit_output(child: std::process::Child) -> std::process::Output {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(RUN_TIMEOUT).unwrap().unwrap()
}

/// The library client cancels in its own submission, before and after its `End`: the
/// `cancelled` records come back on the same connection.
#[test]
fn the_library_client_cancels_in_its_submission_before_and_after_its_end() {
    let d = Daemon::start(1, &["--window", "1"]);
    let rt = runtime();
    let records = rt.block_on(async {
        let client = Client::connect(&d.control).await.unwrap();
        let (mut ev, mut rec) = client.submit(&SubmitOptions::default()).await.unwrap();
        ev.send(&events(&[
            r#"{"op":"sleep","ms":60000}"#,
            r#"{"op":"sleep","ms":60000}"#,
        ]))
        .await
        .unwrap();
        ev.cancel(1).await.unwrap();
        ev.end().await.unwrap();
        let mut text = Vec::new();
        let mut cancelled_running = false;
        while let Some(bytes) = rec.next().await.unwrap() {
            text.extend_from_slice(&bytes);
            if !cancelled_running {
                // The queued one is answered; now the running one, after End.
                rec.cancel(0).await.unwrap();
                cancelled_running = true;
            }
        }
        String::from_utf8(text).unwrap()
    });
    let records: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["seq"], 1, "the queued one first: {records:?}");
    assert!(
        records.iter().all(|r| kind(r) == "cancelled"),
        "{records:?}"
    );
    d.stop_ok();
}

/// 10,000 cancels racing completions, crashes (herd-chaos crash events) and a fast stop:
/// every event gets exactly one record, whichever came first. The cancels follow the
/// completions, some ahead of them (queued or running), some behind (answered), and go on
/// across the stop.
#[test]
fn ten_thousand_cancels_racing_completions_crashes_and_a_stop_leave_one_record_each() {
    // Protocol 2 workers: a cancel that finds its event running kills.
    let kills = cancels_racing(&["--protocol", "2"]);
    assert!(kills > 0, "no cancel found its event running");
}

/// The same races with protocol 3 workers, which are sent `Cancel` and answer it themselves
/// (a `Done` that crosses it, or a task not started given up at once), so that a kill is only
/// the fallback: still exactly one record per event.
#[test]
fn ten_thousand_cancels_asked_of_v3_workers_leave_one_record_each() {
    cancels_racing(&[]);
}

/// 10,000 events, cancels racing them, then a fast stop; checks one record each and returns
/// how many workers a cancel killed.
fn cancels_racing(worker_args: &[&str]) -> usize {
    const N: u64 = 10_000;
    // Room for every event at once: the events are all in before the cancels start.
    let d = Daemon::start_with(4, &["--retries", "0", "--queue", "16384"], worker_args);
    let lines: Vec<String> = (0..N)
        .map(|i| match i % 100 {
            7 => r#"{"op":"crash"}"#.to_string(),
            n if n % 10 == 3 => r#"{"op":"sleep","ms":2}"#.to_string(),
            _ => format!(r#"{{"op":"echo","v":{i}}}"#),
        })
        .collect();
    let rt = runtime();
    let control = d.control.clone();
    let text = rt.block_on(async move {
        let client = Client::connect(&control).await.unwrap();
        let (mut ev, mut rec) = client.submit(&SubmitOptions::default()).await.unwrap();
        let batch: Vec<Input> = (0..N)
            .map(|i| Input::event(i, lines[i as usize].clone().into()))
            .collect();
        ev.send(&batch).await.unwrap();
        ev.end().await.unwrap();
        let mut text = Vec::new();
        let mut stopped = false;
        let mut next = 0u64;
        while let Some(bytes) = rec.next().await.unwrap() {
            text.extend_from_slice(&bytes);
            // Event `next` is cancelled once the records reach within -32..480 of it: ahead
            // of them it is queued or running, behind them answered (records come in batches).
            while next < N && next + 32 < rec.finals() + 32 + (next * 7919) % 512 {
                if rec.cancel(next).await.is_err() {
                    // The daemon is going away (the stop): the rest need no cancel.
                    next = N;
                    break;
                }
                next += 1;
            }
            if !stopped && rec.finals() >= N * 3 / 4 {
                let stop = herd_supervisor::client::Request::Stop { fast: true };
                herd_supervisor::client::ask(&control, &stop).await.unwrap();
                stopped = true;
            }
        }
        String::from_utf8(text).unwrap()
    });
    let mut seen = vec![0u32; N as usize];
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        seen[r["seq"].as_u64().unwrap() as usize] += 1;
        *kinds.entry(kind(&r).to_string()).or_default() += 1;
    }
    let wrong: Vec<(usize, u32)> = seen
        .iter()
        .enumerate()
        .filter(|(_, &n)| n != 1)
        .map(|(i, &n)| (i, n))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "records per seq: {wrong:?}; kinds {kinds:?}"
    );
    for k in ["ok", "cancelled", "crashed", "shutdown"] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k}: {kinds:?}");
    }
    let (status, _, logs) = d.live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    let kills = logs
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("was stopped; restarting"))
        })
        .count();
    kills
}

/// An event waiting out its retry delay is taken from the retries: its record is `cancelled`
/// at once, with the attempt it made, and it never runs again.
#[test]
fn a_cancel_reaches_an_event_waiting_for_its_retry() {
    let d = Daemon::start(1, &["--retries", "3", "--retry-backoff", "60s"]);
    let rt = runtime();
    let text = rt.block_on(async {
        let client = Client::connect(&d.control).await.unwrap();
        let (mut ev, mut rec) = client.submit(&SubmitOptions::default()).await.unwrap();
        ev.send(&events(&[r#"{"op":"flaky","fails":10}"#]))
            .await
            .unwrap();
        ev.end().await.unwrap();
        let control = d.control.clone();
        let st = tokio::task::spawn_blocking(move || {
            let mut last = None;
            wait_for("the retry to wait", RUN_TIMEOUT, || {
                let rt = runtime();
                let st = rt.block_on(herd_supervisor::client::status(&control));
                let waiting = st
                    .as_ref()
                    .is_ok_and(|st| st.retries == 1 && st.queued == 1);
                last = st.ok();
                waiting
            });
            last
        })
        .await
        .unwrap();
        assert!(st.is_some_and(|st| st.inflight == 0));
        rec.cancel(0).await.unwrap();
        let mut text = Vec::new();
        while let Some(bytes) = rec.next().await.unwrap() {
            text.extend_from_slice(&bytes);
        }
        String::from_utf8(text).unwrap()
    });
    let r: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(kind(&r), "cancelled", "{r}");
    assert_eq!(r["attempts"], 1, "{r}");
    let st = d.status();
    assert_eq!(st["queued"], 0, "{st}");
    assert_eq!(total(&st, "cancelled"), 1, "{st}");
    d.stop_ok();
}
