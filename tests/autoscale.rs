//! Autoscaling (`--workers MIN..MAX`): a burst grows the pool to MAX, spare capacity shrinks
//! it to MIN one worker at a time, nothing is lost on the way, a steady load does not flap,
//! the pool memory ceiling stops growth, and bad bounds are refused.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// `herd serve -w <workers> <extra> -- herd-chaos` with JSON logs, once it is ready.
fn autoscaled(workers: &str, extra: &[&str]) -> Daemon {
    let fx = Fixture::new();
    let control = fx.path("control.sock");
    let live = fx.serve_w(&control, workers, extra);
    Daemon { fx, live, control }
}

fn decisions(st: &Value) -> u64 {
    st["autoscale"]["grows"].as_u64().unwrap() + st["autoscale"]["shrinks"].as_u64().unwrap()
}

fn sleeps(n: usize, ms: u64) -> String {
    format!("{{\"op\":\"sleep\",\"ms\":{ms}}}\n").repeat(n)
}

/// Collects a background `herd submit`'s output on a thread, so its pipe never fills.
fn collect(child: Child) -> std::thread::JoinHandle<std::process::Output> {
    std::thread::spawn(move || child.wait_with_output().unwrap())
}

/// Every one of `n` records arrived once, and is ok.
fn assert_all_ok(records: &[Value], n: usize) {
    assert_eq!(records.len(), n, "one record per event");
    let seqs: HashSet<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), n, "no duplicate seq");
    assert!(seqs.iter().all(|&s| s < n as u64));
    for r in records {
        assert_eq!(r["ok"], true, "{r}");
    }
}

fn parse_records(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn autoscale_lines(logs: &[Value]) -> Vec<&Value> {
    logs.iter()
        .filter(|l| l["message"] == "autoscale")
        .collect()
}

#[test]
fn a_burst_grows_to_max_and_idleness_shrinks_to_min_without_losing_a_record() {
    let d = autoscaled("1..4", &["--scale-idle", "500ms"]);
    let st = d.status();
    let a = &st["autoscale"];
    assert_eq!((a["min"].as_u64(), a["max"].as_u64()), (Some(1), Some(4)));
    assert_eq!(a["target"], 1);
    assert_eq!(a["idle_ms"], 500);
    assert_eq!(decisions(&st), 0);
    assert_eq!(ready_workers(&st), 1);

    // About 4 s of sleeping for 4 workers; 15 s for one.
    let n = 3_000;
    let sub = collect(d.submit_bg("burst.txt", &sleeps(n, 5), &[]));
    let st = d.wait_status("the burst to grow the pool to 4 ready workers", |s| {
        s["autoscale"]["target"] == 4 && ready_workers(s) == 4
    });
    assert_eq!(st["target_workers"], 4);
    assert_eq!(st["autoscale"]["last"]["reason"], "backlog");
    assert_eq!(st["autoscale"]["shrinks"], 0);
    // Hostile: the newest worker dies mid-burst. It is restarted, not scaled away, and its
    // task is retried.
    let victim = st["workers"][3]["pid"].as_u64().unwrap() as u32;
    signal(victim, Signal::SIGKILL);

    let out = sub.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_ok(&parse_records(&out.stdout), n);

    // Idle now: one worker retired per interval, down to MIN.
    let st = d.wait_status("idleness to shrink the pool to 1", |s| {
        s["target_workers"] == 1 && s["workers"].as_array().unwrap().len() == 1
    });
    let a = &st["autoscale"];
    assert_eq!(a["shrinks"], 3);
    assert_eq!(a["last"]["reason"], "idle");
    assert_eq!(
        (a["last"]["from"].as_u64(), a["last"]["to"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(a["last"]["unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(st["totals"]["ok"], n);
    assert_eq!(st["restarts"]["crash"], 1);

    let logs = d.live.logs();
    let lines = autoscale_lines(&logs);
    assert_eq!(
        lines.len() as u64,
        decisions(&st),
        "one log line per decision"
    );
    let grows: Vec<_> = lines.iter().filter(|l| l["reason"] == "backlog").collect();
    assert!(
        grows
            .iter()
            .any(|l| l["to"].as_u64() > Some(l["from"].as_u64().unwrap() + 1)),
        "a deep backlog grows by several at once: {grows:?}"
    );
    for l in &lines {
        for field in ["from", "to", "reason", "backlog"] {
            assert!(!l[field].is_null(), "{field} in {l}");
        }
    }
    let shrinks: Vec<_> = lines.iter().filter(|l| l["reason"] == "idle").collect();
    assert!(shrinks
        .iter()
        .all(|l| l["from"].as_u64().unwrap() == l["to"].as_u64().unwrap() + 1));
    // Scale-down went through the termination frame: retired workers exited 0.
    let retired = logs
        .iter()
        .filter(|l| l["message"] == "worker exited" && l["code"] == 0)
        .count();
    assert!(retired >= 3, "{}", dump(&logs));
    let fx_pids = d.live.all_worker_pids();
    let (status, logs, fx, _) = d.stop();
    assert!(status.success(), "{}", dump(&logs));
    assert_all_gone(&fx_pids);
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// A `herd submit` driven in a closed loop by a thread of its own: it keeps `k` events
/// outstanding, writing a new one each time a record arrives, so the load stays steady while
/// the test polls the daemon. `k` may change at any time; 0 ends the submission.
struct Feeder {
    k: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<(Vec<Value>, usize)>,
}

impl Feeder {
    fn start(d: &Daemon, event: &str, k: usize) -> Self {
        let mut child =
            d.fx.std_command(herd_bin())
                .args(["submit", "--control", d.ctl()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
        let mut stdin = child.stdin.take();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let event = format!("{event}\n");
        let k = Arc::new(AtomicUsize::new(k));
        let received = Arc::new(AtomicUsize::new(0));
        let (want, got) = (k.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut records: Vec<Value> = Vec::new();
            let mut sent = 0;
            let mut line = String::new();
            loop {
                let k = want.load(Ordering::SeqCst);
                if k == 0 {
                    break;
                }
                let input = stdin.as_mut().unwrap();
                while sent - records.len() < k {
                    input.write_all(event.as_bytes()).unwrap();
                    sent += 1;
                }
                input.flush().unwrap();
                line.clear();
                assert!(out.read_line(&mut line).unwrap() > 0, "submit ended early");
                records.push(serde_json::from_str(&line).unwrap());
                got.store(records.len(), Ordering::SeqCst);
            }
            stdin.take();
            line.clear();
            while out.read_line(&mut line).unwrap() > 0 {
                records.push(serde_json::from_str(&line).unwrap());
                line.clear();
            }
            assert!(wait_exit(&mut child, RUN_TIMEOUT, "submit").success());
            (records, sent)
        });
        Feeder {
            k,
            received,
            thread,
        }
    }

    fn set(&self, k: usize) {
        self.k.store(k, Ordering::SeqCst);
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Ends the submission; returns every record and how many events were sent.
    fn finish(self) -> (Vec<Value>, usize) {
        self.set(0);
        self.thread.join().unwrap()
    }
}

#[test]
fn a_steady_load_does_not_flap_and_shrinking_under_load_loses_nothing() {
    // Window 1: each worker holds one event, so k outstanding events need k workers.
    let d = autoscaled("1..4", &["--scale-idle", "500ms", "--window", "1"]);
    // 8 outstanding on 1 worker: a backlog, so the pool grows to 4.
    // Tasks of 1 s: long beside the pause between a record and the next event, even on a
    // loaded machine.
    let feeder = Feeder::start(&d, r#"{"op":"sleep","ms":1000}"#, 8);
    d.wait_status("the backlog to grow the pool to 4", |s| {
        s["autoscale"]["target"] == 4 && ready_workers(s) == 4
    });
    // 2 outstanding on 4: one worker fewer would be at most 67% busy, so one goes, while
    // events are in flight. (The gap between a record and the next event is idle time too;
    // on a loaded machine it can make 2 look like 1.5, and then 3 -> 2 is right as well.)
    feeder.set(2);
    d.wait_status("the pool to shrink under load", |s| {
        s["autoscale"]["target"].as_u64() <= Some(3)
    });
    // Steady: over 8 records (4 s, eight idle intervals) it never grows again, shrinks at
    // most one more step while it settles, and is never penalised for flapping. With 2
    // outstanding and window 1, a grow would need the pool to drop to 1 worker.
    let before = d.status();
    let goal = feeder.received() + 8;
    wait_for("8 more records", RUN_TIMEOUT, || feeder.received() >= goal);
    let after = d.status();
    let (a, b) = (&after["autoscale"], &before["autoscale"]);
    assert_eq!(a["grows"], b["grows"], "grew under a steady load: {a}");
    assert!(
        a["shrinks"].as_u64().unwrap() <= b["shrinks"].as_u64().unwrap() + 1,
        "flapped under a steady load: {a}"
    );
    assert!((2..=3).contains(&a["target"].as_u64().unwrap()), "{a}");
    assert_eq!(a["penalty"], 1);

    let (records, sent) = feeder.finish();
    assert_all_ok(&records, sent);
    assert_eq!(after["restarts"].as_object().map(|m| m.len()), Some(0));

    // Nothing to do: down to MIN.
    d.wait_status("the idle pool to shrink to 1", |s| s["target_workers"] == 1);
    d.stop_ok();
}

#[test]
fn the_pool_memory_ceiling_stops_growth() {
    // Any worker is larger than 1 MiB: the ceiling is reached with one.
    let d = autoscaled("1..4", &["--max-pool-rss", "1MiB"]);
    let n = 400;
    let sub = collect(d.submit_bg("burst.txt", &sleeps(n, 5), &[]));
    let st = d.wait_status("growth held at the memory ceiling", |s| {
        s["autoscale"]["blocked"] == "max-pool-rss"
    });
    assert_eq!(st["autoscale"]["max_pool_rss"], 1 << 20);
    assert!(st["autoscale"]["pool_rss"].as_u64().unwrap() > 1 << 20);
    let out = sub.join().unwrap();
    assert!(out.status.success());
    assert_all_ok(&parse_records(&out.stdout), n);
    let st = d.status();
    let logs = d.live.logs();
    assert_eq!(st["target_workers"], 1, "{st}\n{}", dump(&logs));
    assert_eq!(st["autoscale"]["grows"], 0);
    let held: Vec<_> = logs
        .iter()
        .filter(|l| l["message"] == "autoscale growth held")
        .collect();
    assert!(!held.is_empty(), "{}", dump(&logs));
    assert_eq!(held[0]["reason"], "max-pool-rss");
    d.stop_ok();
}

#[test]
fn manual_scaling_is_refused_while_autoscaling() {
    let d = autoscaled("1..2", &[]);
    let out =
        d.fx.herd(&["ctl", "--control", d.ctl(), "scale", "3"])
            .output()
            .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("autoscales between 1 and 2 workers") && err.contains("--workers 3"),
        "{err}"
    );
    let table = output_ok(&mut d.fx.herd(&["status", "--control", d.ctl()]));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("autoscale 1..2  target 1  grows 0  shrinks 0"),
        "{table}"
    );
    // TTIN is ignored, with a warning.
    signal(d.live.pid(), Signal::SIGTTIN);
    d.live.wait_log("the ignored TTIN", RUN_TIMEOUT, |l| {
        l.iter().any(|x| {
            x["message"] == "manual scaling ignored: the pool autoscales within its bounds"
        })
    });
    let st = d.status();
    assert_eq!(st["target_workers"], 1);
    assert_eq!(decisions(&st), 0);
    d.stop_ok();
}

#[test]
fn herd_run_autoscales_too() {
    let fx = Fixture::new();
    let run = fx.run_chaos(&["-w", "1..3", "--scale-idle", "200ms"], sleeps(1_500, 4));
    run.assert_success();
    assert_all_ok(&run.records, 1_500);
    let grows = run.log_events("autoscale");
    assert!(
        grows
            .iter()
            .any(|l| l["reason"] == "backlog" && l["to"] == 3),
        "{}",
        run.stderr()
    );
}

#[test]
fn bad_bounds_are_refused_with_a_clear_message() {
    let fx = Fixture::new();
    for (workers, want) in [
        ("3..2", "MIN (3) is larger than MAX (2)"),
        ("0..0", "MAX must be at least 1"),
        ("0..4", "MIN must be at least 1"),
        ("1..5000", "over the limit of 4096 workers"),
        ("1..x", "MAX `x` is not a number"),
        ("0", "between 1 and 4096"),
    ] {
        let out = fx
            .herd(&["run", "-w", workers, "--", chaos()])
            .write_stdin("")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{workers}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{workers}: want {want:?} in {err}");
    }
    let out = fx
        .herd(&[
            "serve",
            "--control",
            "x.sock",
            "-w",
            "2",
            "--scale-idle",
            "1s",
            "--",
            chaos(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give --workers MIN..MAX"), "{err}");
}

#[test]
fn two_hundred_thousand_tiny_events_through_an_autoscaled_run_all_arrive() {
    let fx = Fixture::new();
    let n = 200_000;
    let run = fx.run_chaos(&["-w", "1..4", "--scale-idle", "200ms"], square_events(n));
    run.assert_success();
    assert_eq!(run.records.len(), n);
    let seqs: HashSet<u64> = run.seqs().into_iter().collect();
    assert_eq!(seqs.len(), n);
    for r in &run.records {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(r["output"].as_u64(), Some(seq * seq), "{r}");
    }
    // However the load went, every decision stayed within the bounds.
    for l in run.log_events("autoscale") {
        let to = l["to"].as_u64().unwrap();
        assert!((1..=4).contains(&to), "{l}");
    }
}
