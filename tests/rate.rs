//! Rate limits on attempt starts (`--rate`), measured where the starts happen: each event is
//! herd-chaos's `clock` op, which answers with the worker's wall-clock time as it started.

#![allow(clippy::unwrap_used)]

use serde_json::Value;

use crate::util::*;

/// `n` events that each report when they started.
fn clock_events(n: usize) -> String {
    "{\"op\":\"clock\"}\n".repeat(n)
}

/// The start times (µs since 1970) the records report, sorted.
fn starts(records: &[Value]) -> Vec<u64> {
    let mut at: Vec<u64> = records
        .iter()
        .map(|r| {
            assert_eq!(kind(r), "ok", "{r}");
            r["output"].as_u64().unwrap()
        })
        .collect();
    at.sort_unstable();
    at
}

/// The most starts in any one-second window.
fn busiest_second(at: &[u64]) -> usize {
    (0..at.len())
        .map(|i| at[i..].partition_point(|&t| t < at[i] + 1_000_000))
        .max()
        .unwrap_or(0)
}

#[test]
fn pool_rate_is_exact_with_its_burst_and_no_window_edge() {
    let fx = Fixture::new();
    // One task per worker at a time, so a start on the worker follows its dispatch closely.
    let run = fx.run_chaos(
        &[
            "--workers",
            "4",
            "--window",
            "1",
            "--rate",
            "200/s,burst=10",
        ],
        clock_events(2000),
    );
    run.assert_success();
    let at = starts(&run.records);
    assert_eq!(at.len(), 2000);
    // 10 at once, then 1990 at 5 ms apart: 9.95 s from the first start to the last. The
    // times are the workers' (a start as the worker saw it, after its dispatch crossed a
    // socket and a scheduler): on a loaded machine a late first start shortens the span, a
    // pool that cannot keep up for a while lengthens it, so the bounds leave room for that;
    // a limiter that let the schedule slip or run ahead would be far outside them.
    let span = (at[1999] - at[0]) as f64 / 1e6;
    assert!(
        (9.8..=10.6).contains(&span),
        "2000 starts at 200/s,burst=10 took {span:.3}s"
    );
    // At most B + N·L = 210 dispatches in any second; two dispatches a few milliseconds apart
    // can reach their workers closer together than they left, so the workers may count one or
    // two more. A fixed-window limiter would show up to 400 here.
    let most = busiest_second(&at);
    eprintln!("2000 starts over {span:.3}s, at most {most} in one second");
    assert!(most <= 212, "{most} starts in one second");
}

/// The start times one `herd submit` got back.
fn submit_starts(child: std::process::Child) -> Vec<u64> {
    let run = crate::control::output_of(child);
    run.assert_success();
    starts(&run.records)
}

#[test]
fn a_submission_limit_holds_back_only_that_submission() {
    let d = Daemon::start(2, &["--window", "1"]);
    let slow = d.submit_bg("slow.txt", &clock_events(16), &["--rate", "5/s"]);
    // The limited submission is queued and held before the other one arrives.
    d.wait_status("the submission's limit holding", |st| {
        st["rates"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["holding"] == true))
    });
    let started = std::time::Instant::now();
    let fast = d.submit_bg("fast.txt", &clock_events(1000), &[]);
    let fast_at = submit_starts(fast);
    let fast_took = started.elapsed();
    let st = d.status();
    let slow_at = submit_starts(slow);
    // At 5/s the slow one takes 3 s for its 16 starts; the other went at full speed beside
    // it (dispatch skipped to its queue instead of stopping at the held one), so it finished
    // while the slow one was still going.
    assert_eq!(fast_at.len(), 1000);
    assert!(
        fast_at[999] < slow_at[15],
        "the unlimited submission finished after the limited one ({fast_took:?})"
    );
    let gaps: Vec<u64> = slow_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g >= 150_000),
        "starts of a 5/s submission closer than 200 ms: {gaps:?}"
    );
    let rate = &st["rates"][0];
    assert_eq!(rate["rate"], "5/s", "{st}");
    assert!(rate["scope"]["submission"].is_u64(), "{st}");
    assert!(rate["wait_secs"].as_f64().unwrap() > 0.0, "{st}");
    eprintln!("1000 unlimited starts in {fast_took:?} beside a 5/s submission; its status: {rate}");
    d.stop_ok();
}

#[test]
fn ctl_rate_changes_the_pool_limit_mid_run() {
    let d = Daemon::start(2, &["--window", "1", "--rate", "2/s"]);
    let sub = d.submit_bg("events.txt", &clock_events(400), &[]);
    // At 2/s these would take 200 s.
    let st = d.wait_status("starts held by the pool limit", |st| {
        st["rates"][0]["delayed"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(st["rates"][0]["scope"], "pool", "{st}");
    assert_eq!(st["rates"][0]["rate"], "2/s", "{st}");
    let out =
        d.fx.herd(&["ctl", "--control", d.ctl(), "rate", "400/s,burst=10"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: rate of the pool: 400/s,burst=10\n"
    );
    let at = submit_starts(sub);
    assert_eq!(at.len(), 400);
    // The first few at 2/s, then the rest at 400/s: about a second, far from 200.
    let fast_part = (at[399] - at[10]) as f64 / 1e6;
    assert!(fast_part < 5.0, "the last 390 starts took {fast_part:.1}s");
    let st = d.status();
    assert_eq!(st["rates"][0]["rate"], "400/s,burst=10", "{st}");
    assert!(st["rates"][0]["wait_secs"].as_f64().unwrap() > 0.5, "{st}");
    // A submission that is not open is an error; `off` lifts the limit.
    let out =
        d.fx.herd(&[
            "ctl",
            "--control",
            d.ctl(),
            "rate",
            "--submission",
            "999",
            "1/s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no open submission 999"));
    d.ctl_cmd(&["rate", "off"]);
    assert!(d.status().get("rates").is_none());
    d.stop_ok();
}

#[test]
fn a_submission_with_a_rate_and_a_max_age_gets_both() {
    // One `herd submit` with both: SubmitTimed carries the rate along with the time limits.
    let d = Daemon::start(2, &["--window", "1"]);
    let child = d.submit_bg(
        "both.txt",
        &clock_events(20),
        &["--rate", "5/s", "--max-age", "700ms"],
    );
    d.wait_status("the submission's limit holding", |st| {
        st["rates"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["rate"] == "5/s"))
    });
    let run = crate::control::output_of(child);
    run.assert_success();
    let ok: Vec<&Value> = run.records.iter().filter(|r| kind(r) == "ok").collect();
    let expired = run.records.iter().filter(|r| kind(r) == "expired").count();
    assert_eq!(ok.len() + expired, 20, "only ok and expired records");
    // At 5/s about 4 start within the 700 ms (0, 200, 400, 600 ms); the rest expired queued.
    assert!((2..=6).contains(&ok.len()), "{} ok", ok.len());
    let mut at: Vec<u64> = ok.iter().map(|r| r["output"].as_u64().unwrap()).collect();
    at.sort_unstable();
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g >= 150_000),
        "starts of a 5/s submission closer than 200 ms: {gaps:?}"
    );
    d.stop_ok();
}
