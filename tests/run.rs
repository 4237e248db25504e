//! `herd run`: the core pipeline.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use crate::util::*;

#[test]
fn ten_thousand_events_through_four_workers() {
    let fx = Fixture::new();
    let n = 10_000;
    let run = fx.run_chaos(&["-w", "4"], square_events(n));
    run.assert_success();
    let recs = run.by_seq(n);
    let mut share: HashMap<u64, usize> = HashMap::new();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["ok"], true, "record {r}");
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64, "record {r}");
        assert_eq!(r["attempts"], 1);
        assert!(r["micros"].is_u64());
        *share.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
    }
    let herd_pids: Vec<u64> = run
        .log_events("worker ready")
        .iter()
        .map(|l| l["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(share.len(), 4, "4 distinct worker pids: {share:?}");
    for pid in share.keys() {
        assert!(
            herd_pids.contains(pid),
            "pid {pid} was announced as a worker"
        );
        assert_ne!(*pid, std::process::id() as u64);
    }
    // Round-robin over equal workers: every worker gets a fair share (25% each, loosely).
    for (pid, count) in &share {
        assert!(
            *count > n / 8,
            "worker {pid} got only {count} of {n}: {share:?}"
        );
    }
    // The pids are worker processes, not herd: herd's own pid never appears as a worker.
    let workers: std::collections::HashSet<u64> =
        recs.iter().map(|r| r["worker"].as_u64().unwrap()).collect();
    assert_eq!(workers.len(), 4);
    assert_all_gone(&run.worker_pids());
    assert!(fx.leftover_runtime_dirs().is_empty(), "socket dir removed");
}

#[test]
fn worker_pids_are_children_not_herd() {
    let fx = Fixture::new();
    let input = "{\"op\":\"pid\"}\n".repeat(200);
    let run = fx.run_chaos(&["-w", "2"], input);
    run.assert_success();
    for r in run.by_seq(200) {
        // The worker reports its own pid; herd reports the pid it spawned. They agree.
        assert_eq!(r["output"], r["pid"], "{r}");
    }
}

#[test]
fn malformed_and_blank_lines_get_error_records_and_the_run_goes_on() {
    let fx = Fixture::new();
    let input = "{\"op\":\"square\",\"n\":3}\nthis is not json\n\n{\"op\":\"nope\"}\n{\"op\":\"square\",\"n\":4}";
    let run = fx.run_chaos(&["-w", "2"], input);
    run.assert_success();
    let recs = run.by_seq(5);
    assert_eq!(recs[0]["output"], 9);
    for r in &recs[1..4] {
        assert_eq!(kind(r), "failed", "{r}");
        assert_eq!(r["attempts"], 1, "not retried: {r}");
        assert!(r["error"]["message"].as_str().unwrap().len() > 3);
    }
    // The last line has no trailing newline and still counts.
    assert_eq!(recs[4]["output"], 16);
}

#[test]
fn ordered_gives_input_order() {
    let fx = Fixture::new();
    // Early events are slow, later ones fast: completion order differs from input order.
    let mut input = String::new();
    for i in 0..300 {
        if i % 50 == 0 {
            input.push_str("{\"op\":\"sleep\",\"ms\":30}\n");
        } else {
            input.push_str(&format!("{{\"op\":\"square\",\"n\":{i}}}\n"));
        }
    }
    let run = fx.run_chaos(&["-w", "3", "--window", "4", "--ordered"], input);
    run.assert_success();
    let seqs = run.seqs();
    assert_eq!(seqs, (0..300).collect::<Vec<u64>>());
}

#[test]
fn empty_input_exits_zero_with_no_records() {
    let fx = Fixture::new();
    let run = fx.run_chaos(&["-w", "2"], "");
    run.assert_success();
    assert!(run.records.is_empty());
    assert_eq!(run.log_events("worker exited").len(), 2);
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn oversize_line_is_rejected() {
    let fx = Fixture::new();
    let big = format!("{{\"op\":\"echo\",\"v\":\"{}\"}}", "x".repeat(5000));
    let input = format!("{{\"op\":\"square\",\"n\":2}}\n{big}\n{{\"op\":\"square\",\"n\":5}}\n");
    let run = fx.run_chaos(&["-w", "2", "--max-frame", "4KiB"], input);
    run.assert_success();
    let recs = run.by_seq(3);
    assert_eq!(recs[0]["output"], 4);
    assert_eq!(kind(recs[1]), "rejected", "{}", recs[1]);
    assert_eq!(recs[1]["attempts"], 0);
    assert_eq!(recs[2]["output"], 25);
}

#[test]
fn line_over_the_default_frame_limit_is_rejected() {
    let fx = Fixture::new();
    let input = format!(
        "{}\n{{\"op\":\"square\",\"n\":6}}\n",
        "y".repeat(17 * 1024 * 1024)
    );
    let run = fx.run_chaos(&["-w", "1"], input);
    run.assert_success();
    let recs = run.by_seq(2);
    assert_eq!(kind(recs[0]), "rejected");
    assert_eq!(recs[1]["output"], 36);
}

#[test]
fn events_larger_than_the_socket_buffer_all_arrive() {
    // Eight 512 KiB events in flight per worker are far more than a socket buffer holds, so
    // the pool's writes back up and finish as the workers read.
    let fx = Fixture::new();
    let n = 48;
    let input: String = (0..n)
        .map(|i| {
            let v = char::from(b'a' + (i % 26) as u8)
                .to_string()
                .repeat(512 * 1024);
            format!("{{\"op\":\"echo\",\"v\":\"{v}\"}}\n")
        })
        .collect();
    let run = fx.run_chaos(&["-w", "2", "--window", "8"], input);
    run.assert_success();
    for (i, r) in run.by_seq(n).iter().enumerate() {
        let out = r["output"].as_str().unwrap();
        let want = char::from(b'a' + (i % 26) as u8);
        assert!(
            out.len() == 512 * 1024 && out.chars().all(|c| c == want),
            "seq {i}"
        );
    }
}

#[test]
fn workers_exit_zero_after_the_termination_frame() {
    let fx = Fixture::new();
    let run = fx.run_chaos(&["-w", "3"], square_events(100));
    run.assert_success();
    let exits = run.log_events("worker exited");
    assert_eq!(exits.len(), 3, "{exits:?}");
    for e in &exits {
        assert_eq!(e["code"], 0, "{e}");
        assert!(e["worker"].is_u64() && e["pid"].is_u64(), "{e}");
    }
    assert_all_gone(&run.worker_pids());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn output_embeds_json_or_strings() {
    let fx = Fixture::new();
    let input =
        "{\"op\":\"echo\",\"v\":{\"a\":[1,2]}}\n{\"op\":\"stderr\",\"text\":\"hi there\"}\n";
    let run = fx.run_chaos(&["-w", "1"], input);
    run.assert_success();
    let recs = run.by_seq(2);
    assert_eq!(recs[0]["output"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(recs[1]["output"], "hi there");
    // The worker's stderr line is in the log with its worker's fields.
    let fwd: Vec<_> = run
        .logs
        .iter()
        .filter(|l| l["message"] == "hi there")
        .collect();
    assert_eq!(fwd.len(), 1, "{:?}", run.logs);
    assert_eq!(fwd[0]["worker"], 0);
    assert!(fwd[0]["pid"].is_u64());
}

#[test]
fn input_and_output_files() {
    let fx = Fixture::new();
    let input = fx.path("events.txt");
    let output = fx.path("records.jsonl");
    std::fs::write(&input, square_events(50)).unwrap();
    let out = output_ok(&mut fx.herd(&[
        "run",
        "-w",
        "2",
        "-i",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--",
        chaos(),
    ]));
    assert!(
        out.stdout.is_empty(),
        "records go to the file, logs to stderr"
    );
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().count(), 50);
}

#[test]
fn missing_worker_program_fails_at_once() {
    let fx = Fixture::new();
    let start = std::time::Instant::now();
    let out = fx
        .herd(&["run", "-w", "2", "--", "/nonexistent/herd-worker-xyz"])
        .write_stdin(square_events(10))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/herd-worker-xyz"),
        "names the program: {stderr}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert!(out.stdout.is_empty());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn help_explains_the_options() {
    let fx = Fixture::new();
    let out = fx.herd(&["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--workers",
        "--window",
        "--input",
        "--output",
        "--ordered",
        "--log-format",
        "--log-file",
        "--verbose",
        "--quiet",
        "--timeout",
        "--retries",
    ] {
        assert!(help.contains(opt), "run --help mentions {opt}");
    }
    let out = fx.herd(&["--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("run"));
}

#[test]
fn logs_stay_off_stdout_and_json_logs_parse() {
    let fx = Fixture::new();
    let log = fx.path("herd.log");
    let out = fx
        .herd(&[
            "run",
            "-w",
            "2",
            "-v",
            "--log-format",
            "json",
            "--log-file",
            log.to_str().unwrap(),
            "--",
            chaos(),
        ])
        .write_stdin(square_events(20))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 20);
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("seq").is_some(), "only records on stdout: {line}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 4);
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some());
    }
}

#[test]
fn sigint_finishes_accepted_events_and_a_second_one_stops_at_once() {
    use nix::sys::signal::Signal;
    let fx = Fixture::new();
    let events = "{\"op\":\"sleep\",\"ms\":50}\n".repeat(40);

    // One SIGINT: everything accepted still completes, then herd exits 0.
    let mut herd = fx.spawn_herd(&["run", "--log-format", "json", "-w", "2", "--", chaos()]);
    herd.write(events.as_bytes());
    wait_for("the first records", RUN_TIMEOUT, || {
        herd.records_so_far() > 0
    });
    signal(herd.pid(), Signal::SIGINT);
    let pids = herd.all_worker_pids();
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    assert_eq!(records.len(), 40, "every accepted event completed");
    assert!(records.iter().all(|r| r["ok"] == true));
    assert!(logs
        .iter()
        .filter(|l| l["message"] == "worker exited")
        .all(|l| l["code"] == 0));
    assert_all_gone(&pids);

    // A second SIGINT: the workers are killed and the rest is recorded as `shutdown`.
    let mut herd = fx.spawn_herd(&["run", "--log-format", "json", "-w", "2", "--", chaos()]);
    herd.write(events.as_bytes());
    wait_for("the first records", RUN_TIMEOUT, || {
        herd.records_so_far() > 0
    });
    signal(herd.pid(), Signal::SIGINT);
    herd.wait_log("the first signal", RUN_TIMEOUT, |l| {
        l.iter()
            .any(|x| x["message"] == "signal received: stopping")
    });
    signal(herd.pid(), Signal::SIGINT);
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    let mut seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (0..40).collect::<Vec<u64>>(), "one record per event");
    assert!(records.iter().any(|r| kind(r) == "shutdown"), "{records:?}");
    assert!(records
        .iter()
        .all(|r| kind(r) == "ok" || kind(r) == "shutdown"));
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// Issue 19, item 13: started with stdout closed (`>&-`), herd cannot write its records, so
/// `run` and `submit` refuse to start (before, the runtime's /dev/null took fd 1 and herd
/// exited 0 with every record lost). Likewise a closed stdin. `>/dev/null` still works.
#[test]
fn a_closed_stdout_or_stdin_is_refused_before_any_worker_starts() {
    let fx = Fixture::new();
    let input = fx.path("events");
    std::fs::write(&input, square_events(3)).unwrap();
    let i = input.to_str().unwrap();
    let run = ["run", "-i", i, "--", chaos()];
    let submit = ["submit", "--control", "/nonexistent.sock", "-i", i];
    let sh = |redirect: &str, args: &[&str]| {
        // The shell applies the redirection, then becomes herd, as a user's shell does.
        fx.std_command("sh")
            .arg("-c")
            .arg(format!("exec \"$0\" \"$@\" {redirect}"))
            .arg(herd_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let stdin_run = ["run", "--", chaos()];
    for (redirect, args, want) in [
        (">&-", &run[..], "stdout is closed"),
        (">&-", &submit[..], "stdout is closed"),
        ("<&-", &stdin_run[..], "stdin is closed"),
    ] {
        let out = sh(redirect, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{redirect} {args:?}: {stderr}");
        assert!(stderr.contains(want), "{redirect} {args:?}: {stderr}");
        assert!(!stderr.contains("worker ready"), "{redirect}: {stderr}");
    }
    let out = sh(">/dev/null", &run);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
