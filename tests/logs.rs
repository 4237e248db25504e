//! Logs and messages for operators: one clear line per error, typed JSON values, worker output
//! that cannot flood the log, and a log sink that cannot stall the pool.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{ChildStderr, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// Lines of one worker stream herd logs per window (process.rs).
const BURST_LINES: usize = 100;

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn an_error_is_printed_once_without_repeating_its_cause() {
    let fx = Fixture::new();
    let modes: [&[&str]; 4] = [
        &[],
        &["-qq"],
        &["--log-format", "json"],
        &["--log-format", "json", "-qq"],
    ];
    for mode in modes {
        let mut args = vec!["run", "-w", "2"];
        args.extend_from_slice(mode);
        args.extend_from_slice(&["--", "/nonexistent/herd-worker-xyz"]);
        let out = fx
            .herd(&args)
            .write_stdin(square_events(5))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            count(
                &stderr,
                "cannot start worker program `/nonexistent/herd-worker-xyz`"
            ),
            1,
            "{mode:?}: printed exactly once:\n{stderr}"
        );
        assert_eq!(
            count(&stderr, "(os error 2)"),
            1,
            "{mode:?}: the OS error once:\n{stderr}"
        );
        if mode.contains(&"json") {
            // JSON logs on stderr stay all JSON: the error is one ERROR object.
            let lines: Vec<Value> = stderr
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
                .collect();
            let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
            assert_eq!(errors.len(), 1, "{stderr}");
        } else {
            assert!(stderr.starts_with("herd: cannot start"), "{stderr}");
            if mode.contains(&"-qq") {
                assert_eq!(stderr.lines().count(), 1, "-qq: just the error:\n{stderr}");
            }
        }
        assert!(out.stdout.is_empty());
    }

    // The pool's own fatal error (workers that never become ready), with -qq too.
    for quiet in [false, true] {
        let mut args = vec!["run", "-w", "1"];
        if quiet {
            args.push("-qq");
        }
        args.extend_from_slice(&["--", "sh", "-c", "echo 'fatal: config missing' >&2; exit 1"]);
        let out = fx
            .herd(&args)
            .write_stdin(square_events(5))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(count(&stderr, "never became ready"), 1, "{stderr}");
        assert_eq!(count(&stderr, "herd: "), 1, "{stderr}");
    }
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn json_logs_carry_arrays_objects_and_numbers() {
    // `run`: the closing summary.
    let fx = Fixture::new();
    // The worker line first, so it is logged long before the pool stops.
    let json_line = serde_json::json!({"op": "stderr", "text": "{\"looks\": [\"like json\"]}"});
    let input = format!("{json_line}\n{}{{\"op\":\"crash\"}}\n", square_events(20));
    let run = fx.run_chaos(&["-w", "2", "--retries", "0"], input);
    run.assert_success();
    run.by_seq(22);
    let done = run.log_events("done");
    assert_eq!(done.len(), 1, "{}", run.stderr());
    let done = done[0];
    assert_eq!(done["records"], 22);
    assert_eq!(done["ok"], 21);
    assert!(done["errors"].is_object(), "{done}");
    assert_eq!(done["errors"]["crashed"], 1, "{done}");
    assert!(done["secs"].is_f64(), "{done}");
    assert!(done["restarts"].is_u64(), "{done}");
    assert_eq!(done["dropped_log_lines"], 0, "{done}");
    // A worker line that happens to be JSON stays a string.
    let line = run
        .logs
        .iter()
        .find(|l| l["stream"] == "stderr")
        .unwrap_or_else(|| panic!("worker line logged: {}", run.stderr()));
    assert_eq!(line["message"], "{\"looks\": [\"like json\"]}", "{line}");

    // `serve`: the ready line's pids and the closing summary.
    let control = fx.path("control.sock");
    let live = fx.serve(&control, 2, &[]);
    let logs = live.logs();
    let ready = logs.iter().find(|l| l["message"] == "ready").unwrap();
    let pids = ready["pids"]
        .as_array()
        .unwrap_or_else(|| panic!("pids is an array: {ready}"));
    assert_eq!(pids.len(), 2, "{ready}");
    assert!(pids.iter().all(Value::is_u64), "{ready}");
    signal(live.pid(), Signal::SIGTERM);
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    let stopped = logs.iter().find(|l| l["message"] == "stopped").unwrap();
    assert!(stopped["errors"].is_object(), "{stopped}");
    assert!(stopped["secs"].is_f64(), "{stopped}");
    assert!(stopped["records"].is_u64(), "{stopped}");
}

/// The worker output lines herd logged, and the `suppressed` counts it reported, for one
/// stream.
fn worker_lines<'a>(logs: &'a [Value], stream: &str) -> (Vec<&'a str>, u64) {
    let ours = |l: &&Value| l["target"] == "herd::worker" && l["stream"] == stream;
    let lines = logs
        .iter()
        .filter(ours)
        .filter(|l| l.get("suppressed").is_none())
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let suppressed = logs
        .iter()
        .filter(ours)
        .filter_map(|l| l["suppressed"].as_u64())
        .sum();
    (lines, suppressed)
}

#[test]
fn worker_output_skips_blank_lines_and_bounds_a_burst() {
    let fx = Fixture::new();
    let control = fx.path("control.sock");
    let live = fx.serve(&control, 1, &[]);
    // Blank lines (empty, spaces, a lone \r), then a 500-line burst in one write, as a
    // backtrace comes.
    let burst: String = (0..500).map(|i| format!("burst line {i}\n")).collect();
    let input = [
        serde_json::json!({"op": "stderr", "text": "\n\n   \n\r\n\t"}),
        serde_json::json!({"op": "stderr", "text": "before the burst\n\n"}),
        serde_json::json!({"op": "stderr", "text": burst}),
    ]
    .iter()
    .map(|v| format!("{v}\n"))
    .collect::<String>();
    let out = output_ok(
        fx.herd(&["submit", "--control", control.to_str().unwrap()])
            .write_stdin(input),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // The worker stays up: the end of the rate-limit window reports what was held back.
    live.wait_log("the suppressed-lines summary", RUN_TIMEOUT, |logs| {
        worker_lines(logs, "stderr").1 > 0
    });
    let logs = live.logs();
    let (lines, suppressed) = worker_lines(&logs, "stderr");
    assert!(
        lines.iter().all(|l| !l.trim().is_empty()),
        "no blank log lines: {lines:?}"
    );
    assert_eq!(lines[0], "before the burst", "{lines:?}");
    let burst_logged = lines.iter().filter(|l| l.starts_with("burst line")).count();
    assert_eq!(burst_logged, BURST_LINES - 1, "{}", dump(&logs));
    assert_eq!(
        burst_logged as u64 + suppressed,
        500,
        "every burst line is logged or counted"
    );
    // The first lines of the burst are the ones logged, in order.
    assert_eq!(lines[1], "burst line 0");
    assert_eq!(
        lines[BURST_LINES - 1],
        format!("burst line {}", BURST_LINES - 2)
    );
    signal(live.pid(), Signal::SIGTERM);
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
}

#[test]
fn a_log_reader_that_never_reads_does_not_stall_the_pool() {
    let fx = Fixture::new();
    // 2,000 events, each making a worker write 2,000 bytes to its stderr: 4 MB of worker
    // output for a stderr pipe that holds 64 KiB and that nobody reads.
    let text = "e".repeat(2000);
    let events: String = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                format!("{}\n", serde_json::json!({"op": "stderr", "text": text}))
            } else {
                format!("{{\"op\":\"square\",\"n\":{i}}}\n")
            }
        })
        .collect();
    let input = fx.path("events.txt");
    std::fs::write(&input, events).unwrap();
    let mut child = fx
        .std_command(herd_bin())
        .args(["run", "-w", "2", "-i", input.to_str().unwrap(), "--"])
        .arg(chaos())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open, never read.
    let _stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let status = wait_exit(&mut child, RUN_TIMEOUT, "stderr never read");
    assert!(status.success(), "{status:?}");
    let out = reader.join().unwrap();
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2000, "every record arrived");
    assert!(records.iter().all(|r| r["ok"] == true));
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// JSON log lines read from a stderr pipe, from the moment the reader is started.
struct LogReader {
    logs: Arc<(Mutex<Vec<Value>>, Condvar)>,
}

impl LogReader {
    fn start(stderr: ChildStderr) -> Self {
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                let (m, cv) = &*l;
                m.lock().unwrap().push(v);
                cv.notify_all();
            }
        });
        LogReader { logs }
    }

    fn wait(&self, what: &str, mut pred: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let (m, cv) = &*self.logs;
        let start = Instant::now();
        let mut guard = m.lock().unwrap();
        while !pred(&guard) {
            let left = RUN_TIMEOUT
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("timed out waiting for {what}:\n{}", dump(&guard)));
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
        guard.clone()
    }
}

fn wait_for_socket(path: &Path) {
    wait_for("the control socket", RUN_TIMEOUT, || path.exists());
}

#[test]
fn a_stuck_log_sink_drops_lines_and_says_how_many() {
    let fx = Fixture::new();
    let control = fx.path("control.sock");
    let mut daemon = fx
        .std_command(herd_bin())
        .args(["serve", "--log-format", "json", "-w", "2", "--control"])
        .arg(&control)
        .arg("--")
        .arg(chaos())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    wait_for_socket(&control);
    // Hostile workers: bursts of 8,000 control characters per line, each six bytes once
    // escaped in JSON, far more than the log queue holds, mixed with ordinary events.
    let garbage = format!("{}\n", "\u{1}".repeat(8000)).repeat(10);
    let mut input = String::new();
    for i in 0..3000 {
        if i % 100 == 0 {
            input.push_str(&serde_json::json!({"op": "stderr", "text": garbage}).to_string());
            input.push('\n');
        } else {
            input.push_str(&format!("{{\"op\":\"square\",\"n\":{i}}}\n"));
        }
    }
    let file = fx.path("events.txt");
    std::fs::write(&file, input).unwrap();
    let out = output_ok(&mut fx.herd(&[
        "submit",
        "--control",
        control.to_str().unwrap(),
        "-i",
        file.to_str().unwrap(),
    ]));
    // Every record arrived while the log sink was stuck.
    let records = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(records, 3000);

    // Once the sink moves again, a line says how many were lost.
    let reader = LogReader::start(stderr);
    let logs = reader.wait("the dropped-lines notice", |l| {
        l.iter().any(|x| {
            x["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("log lines dropped"))
        })
    });
    let notice = logs
        .iter()
        .find(|x| {
            x["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("log lines dropped"))
        })
        .unwrap();
    let dropped = notice["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{notice}");
    signal(daemon.id(), Signal::SIGTERM);
    let logs = reader.wait("the closing summary", |l| {
        l.iter().any(|x| x["message"] == "stopped")
    });
    let status = wait_exit(&mut daemon, RUN_TIMEOUT, "stuck log sink");
    assert!(status.success());
    let stopped = logs.iter().find(|x| x["message"] == "stopped").unwrap();
    assert!(
        stopped["dropped_log_lines"].as_u64().unwrap() >= dropped,
        "{stopped}"
    );
    assert!(
        logs.iter().all(|l| l.get("raw").is_none()),
        "every line is whole JSON"
    );
    assert!(!control.exists());
}
