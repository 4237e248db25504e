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
        &["--workers", "4", "--window", "1", "--rate", "200/s,burst=10"],
        clock_events(2000),
    );
    run.assert_success();
    let at = starts(&run.records);
    assert_eq!(at.len(), 2000);
    // 10 at once, then 1990 at 5 ms apart: 9.95 s from the first start to the last.
    let span = (at[1999] - at[0]) as f64 / 1e6;
    assert!(
        (9.8..=10.2).contains(&span),
        "2000 starts at 200/s,burst=10 took {span:.3}s"
    );
    let most = busiest_second(&at);
    eprintln!("2000 starts over {span:.3}s, at most {most} in one second");
    assert!(most <= 210, "{most} starts in one second");
}
