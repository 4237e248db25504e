//! Priorities through the real binaries: urgent events overtaking a flood (the latency the
//! README states is measured here), aging under a steady high-priority stream, and hostile
//! per-line priorities.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control::output_of;
use crate::util::*;

/// What an urgent event may take end to end (`herd submit` started, connected, dispatched,
/// answered, exited) while thousands of low-priority events are queued ahead of it.
/// Typically tens of milliseconds (see the README); the bound is generous for a loaded
/// 2-core machine.
const URGENT_BOUND: Duration = Duration::from_secs(5);

/// `n` events that each take a worker `ms` milliseconds (without using a CPU).
fn sleep_events(n: usize, ms: u64) -> String {
    (0..n)
        .map(|_| format!("{{\"op\":\"sleep\",\"ms\":{ms}}}\n"))
        .collect()
}

/// `n` square events with a per-line priority prefix, numbered from `from`.
fn prefixed(priority: i32, from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("{priority}\t{{\"op\":\"square\",\"n\":{i}}}\n"))
        .collect()
}

/// Queued events at `priority` in a status object.
fn queued_at(st: &Value, priority: i32) -> u64 {
    st["queued_by_priority"][priority.to_string()]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn urgent_submissions_overtake_a_low_priority_flood() {
    let d = Daemon::start(2, &[]);
    // The flood: 2,400 events of 2 ms at priority -5 from 4 submitters at once, about 2.4 s
    // of work for the 2 workers, all of it queued at once (tiny events through `herd submit`
    // are answered as fast as the submitters send them, so they never queue up; a flood of
    // tiny events is `urgent_lines_overtake_a_flood_in_one_run`).
    let per = 600;
    let flood: Vec<_> = (0..4)
        .map(|i| {
            let events = sleep_events(per, 2);
            d.submit_bg(&format!("flood{i}.txt"), &events, &["--priority", "-5"])
        })
        .collect();
    // Status shows the flood queued at its priority.
    wait_for("the flood queued at priority -5", RUN_TIMEOUT, || {
        d.try_status().is_some_and(|st| queued_at(&st, -5) > 0)
    });

    let mut latencies = Vec::new();
    for i in 0..5u64 {
        // Each urgent event is measured only while the flood is still queued ahead of it.
        let st = d.status();
        assert!(
            queued_at(&st, -5) > 0,
            "the flood ran dry before urgent event {i}: {st}"
        );
        let n = 1000 + i;
        let started = Instant::now();
        let urgent = output_of(d.submit_bg(
            &format!("urgent{i}.txt"),
            &format!("{{\"op\":\"square\",\"n\":{n}}}\n"),
            &["--priority", "10"],
        ));
        let took = started.elapsed();
        urgent.assert_success();
        let r = urgent.by_seq(1)[0];
        assert_eq!(r["output"].as_u64(), Some(n * n), "{r}");
        latencies.push(took);
    }
    let after = d.status();
    latencies.sort();
    eprintln!(
        "urgent latency under a 2,400-event flood: min {:?}, median {:?}, max {:?}; \
         flood still queued after the last: {}",
        latencies[0],
        latencies[2],
        latencies[4],
        queued_at(&after, -5)
    );
    assert!(
        latencies[4] < URGENT_BOUND,
        "urgent events took {latencies:?} (bound {URGENT_BOUND:?})"
    );
    // The flood still finishes, every record there and right.
    for sub in flood {
        let run = output_of(sub);
        run.assert_success();
        for r in run.by_seq(per) {
            assert_eq!(r["output"].as_u64(), Some(2), "{r}");
        }
    }
    let st = d.status();
    assert_eq!(st["totals"]["ok"], 4 * per as u64 + 5);
    assert_eq!(st["queued"], 0);
    assert_eq!(st["queued_by_priority"], serde_json::json!({}));
    d.stop_ok();
}

/// `herd run FLAGS --line-priority -- herd-chaos` on `input`, which must succeed: the runs
/// below differ only in their pool flags.
fn run_line_priority(fx: &Fixture, flags: &[&str], input: String) -> Run {
    let mut args = vec!["run"];
    args.extend(flags);
    args.extend(["--line-priority", "--", chaos()]);
    let out = fx
        .herd(&args)
        .write_stdin(input)
        .timeout(RUN_TIMEOUT)
        .output()
        .unwrap();
    let run = Run::new(vec!["run --line-priority".into()], out);
    run.assert_success();
    run
}

/// One worker and a window of 1 make the completion order the dispatch order.
fn run_one_by_one(fx: &Fixture, input: String) -> Run {
    run_line_priority(
        fx,
        &["-w", "1", "--window", "1", "--queue", "100000"],
        input,
    )
}

/// Where each record of `seqs` came in the output (completion order).
fn positions(run: &Run, seqs: std::ops::Range<u64>) -> Vec<usize> {
    run.records
        .iter()
        .enumerate()
        .filter(|(_, r)| seqs.contains(&r["seq"].as_u64().unwrap()))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn urgent_lines_overtake_a_flood_in_one_run() {
    let fx = Fixture::new();
    // 200,000 tiny events, 2 workers, the automatic window: the whole input is accepted
    // (queue of 1,000,000) long before the workers get through it.
    let flood = 200_000;
    let input = prefixed(-5, 0, flood) + &prefixed(10, flood, 5);
    let run = run_line_priority(&fx, &["-w", "2", "--queue", "1000000"], input);
    for (i, r) in run.by_seq(flood + 5).iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(
            r["output"].as_u64(),
            Some((i * i) as u64),
            "prefix stripped: {r}"
        );
    }
    // The urgent lines are the input's last, and run long before the flood ends: as soon as
    // they are read (the input is read far faster than the one worker runs events).
    let at = positions(&run, flood as u64..flood as u64 + 5);
    eprintln!(
        "urgent lines completed at positions {at:?} of {}",
        flood + 5
    );
    assert!(at.iter().all(|&p| p < flood / 2), "urgent at {at:?}");
}

#[test]
fn a_steady_high_priority_stream_does_not_starve_a_low_one() {
    let fx = Fixture::new();
    // 50 low events first, then a stream of 20,000 one level higher that never runs dry.
    let low = 50;
    let input = prefixed(0, 0, low) + &prefixed(1, low, 20_000);
    let run = run_one_by_one(&fx, input);
    run.by_seq(low + 20_000);
    // Aging: a level one below the top waits at most AGING_DISPATCHES (64) dispatches, so
    // the k-th low event completes by position (k + 1) × 65 (plus the one in the window).
    let at = positions(&run, 0..low as u64);
    for (k, &p) in at.iter().enumerate() {
        assert!(
            p <= (k + 1) * 65 + 1,
            "low event {k} at position {p}: {at:?}"
        );
    }
    eprintln!("low events completed at positions {at:?}");
    // Low events keep their own order too.
    let seqs: Vec<u64> = at
        .iter()
        .map(|&p| run.records[p]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..low as u64).collect::<Vec<_>>());
}

#[test]
fn bad_line_priorities_are_rejected_and_nothing_is_lost() {
    let d = Daemon::start(2, &[]);
    let n = 10_000;
    let long_junk = "x".repeat(100_000);
    let mut input = String::new();
    let mut expect: Vec<Result<u64, &str>> = Vec::new();
    for i in 0..n {
        let event = format!("{{\"op\":\"square\",\"n\":{i}}}");
        let (line, want) = match i % 10 {
            0 => (event.clone(), Err("does not start with a priority")),
            1 => (format!("high\t{event}"), Err("bad line priority `high`")),
            2 => (
                format!("300\t{event}"),
                Err("line priority 300 is out of range"),
            ),
            3 => (format!("\t{event}"), Err("bad line priority ``")),
            4 => (String::new(), Err("does not start with a priority")),
            5 if i % 1000 == 5 => (long_junk.clone(), Err("does not start with a priority")),
            6 => (format!("-128\t{event}"), Ok((i * i) as u64)),
            7 => (format!("+127\t{event}"), Ok((i * i) as u64)),
            _ => (format!("{}\t{event}", i % 7), Ok((i * i) as u64)),
        };
        input.push_str(&line);
        input.push('\n');
        expect.push(want);
    }
    let run = output_of(d.submit_bg("mixed.txt", &input, &["--line-priority"]));
    run.assert_success();
    for (r, want) in run.by_seq(n).iter().zip(&expect) {
        match want {
            Ok(v) => {
                assert_eq!(r["ok"], true, "{r}");
                assert_eq!(r["output"].as_u64(), Some(*v), "{r}");
            }
            Err(why) => {
                assert_eq!(kind(r), "rejected", "{r}");
                let msg = r["error"]["message"].as_str().unwrap();
                assert!(msg.contains(why), "{msg:?} should say {why:?}");
            }
        }
    }
    // The daemon is unharmed and counted every record.
    let st = d.status();
    let ok = expect.iter().filter(|w| w.is_ok()).count() as u64;
    assert_eq!(st["totals"]["ok"], ok);
    assert_eq!(st["totals"]["rejected"], n as u64 - ok);
    d.stop_ok();
}
