//! What a hostile tester and a new user found (issue: hardening): stops that lost accepted
//! events, limits that were overshot, start-up failures that took long to say little, and a
//! SIGKILLed or signalled herd that left processes and sockets behind.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::process::Stdio;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// Seqs of `records`, asserting each appears once and together they are 0..n.
fn assert_contiguous(records: &[Value], logs: &[Value]) -> usize {
    let mut seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    let n = seqs.len();
    let want: Vec<u64> = (0..n as u64).collect();
    if seqs != want {
        let dup = seqs.windows(2).find(|w| w[0] == w[1]);
        let gap = seqs.iter().enumerate().find(|(i, s)| **s != *i as u64);
        panic!(
            "records are not exactly one per accepted event: first duplicate {dup:?}, first gap {gap:?}\n{}",
            dump(logs)
        );
    }
    n
}

/// A fast stop in the middle of a retry storm: retryable failures race the stop, and every
/// accepted event must still get exactly one record (it lost up to 972 of them).
#[test]
fn a_fast_stop_during_a_retry_storm_answers_every_accepted_event() {
    let events = "{\"op\":\"fail\",\"retryable\":true}\n".repeat(200_000);
    for (trial, (sig, extra)) in [
        (Signal::SIGQUIT, &[][..]),
        (Signal::SIGQUIT, &[][..]),
        (Signal::SIGTERM, &["--grace", "300ms"][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let fx = Fixture::new();
        let mut args = vec![
            "run",
            "--log-format",
            "json",
            "-w",
            "2",
            "--retries",
            "5",
            "--retry-backoff",
            "1ms",
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", chaos()]);
        let mut herd = fx.spawn_herd(&args);
        let _feeder = herd.feed(events.clone().into_bytes());
        wait_for("the first records", RUN_TIMEOUT, || {
            herd.records_so_far() > 50
        });
        signal(herd.pid(), sig);
        let (status, records, logs) = herd.finish(RUN_TIMEOUT);
        assert!(
            status.success(),
            "trial {trial}: {status:?}\n{}",
            dump(&logs)
        );
        let n = assert_contiguous(&records, &logs);
        assert!(n > 50, "trial {trial}: {n} records");
        for r in &records {
            assert!(
                matches!(kind(r), "failed" | "shutdown"),
                "trial {trial}: {r}"
            );
        }
        assert!(fx.leftover_runtime_dirs().is_empty());
    }
}

/// `--max-tasks N`: a worker is never sent more than N tasks, whatever the window (the
/// automatic window sent 140 to 1,024).
#[test]
fn max_tasks_is_a_hard_limit_per_worker() {
    let fx = Fixture::new();
    let run = fx.run_chaos(&["-w", "2", "--max-tasks", "100"], square_events(5_000));
    run.assert_success();
    let mut per_pid: HashMap<u64, usize> = HashMap::new();
    for (i, r) in run.by_seq(5_000).iter().enumerate() {
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64);
        *per_pid.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
    }
    let most = per_pid.values().max().copied().unwrap_or(0);
    assert!(most <= 100, "a worker ran {most} tasks: {per_pid:?}");
    assert!(
        per_pid.len() >= 50,
        "{} workers for 5,000 tasks",
        per_pid.len()
    );
}

#[test]
fn a_zero_timeout_is_refused() {
    let fx = Fixture::new();
    let out = fx
        .herd(&["run", "--timeout", "0", "--", chaos()])
        .write_stdin(square_events(1))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--timeout") && err.contains("zero"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A program that connects and writes a line of text instead of `Hello` is a failed start at
/// once, and the final error quotes what it sent (herd used to wait for it to exit).
#[test]
fn a_worker_that_writes_text_fails_at_once_with_the_cause() {
    let fx = Fixture::new();
    let script = "import os, socket, time\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(os.environ['HERD_SOCKET'])\n\
        s.sendall(b'{\"op\":\"square\",\"n\":3}\\n')\n\
        time.sleep(600)\n";
    // A start timeout far beyond the test's: only the handshake failure can end it in time.
    let out = fx
        .herd(&[
            "run",
            "-w",
            "2",
            "--start-timeout",
            "600s",
            "--",
            "python3",
            "-c",
            script,
        ])
        .write_stdin(square_events(2))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed its handshake"), "{err}");
    assert!(err.contains("where herd expects a Hello frame"), "{err}");
    assert!(err.contains(r#"{\"op\":\"square\""#), "{err}");
    // The events herd had accepted when it gave up (possibly none yet) have their records.
    let records: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(records.len() <= 2);
    assert!(records.iter().all(|r| kind(r) == "shutdown"), "{records:?}");
}

/// `herd run -- cat`-like mistakes: the program exits without ever connecting. The error says
/// so, quotes its stdout and stderr, and points to the SDK.
#[test]
fn a_program_that_is_not_a_worker_is_told_so() {
    let fx = Fixture::new();
    let out = fx
        .herd(&[
            "run",
            "-w",
            "1",
            "--",
            "sh",
            "-c",
            "echo printed-to-stdout; echo printed-to-stderr >&2",
        ])
        .write_stdin(square_events(1))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without connecting to herd"), "{err}");
    assert!(err.contains("printed-to-stdout"), "{err}");
    assert!(err.contains("printed-to-stderr"), "{err}");
    assert!(err.contains("herd-worker"), "{err}");
}

/// The children of the process herd spawned, by pid.
fn children_of(parent: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&parent.to_string()) {
            kids.push(pid);
        }
    }
    kids
}

/// A same-uid process reads a slow-starting worker's token from /proc and presents it first,
/// six times. herd refuses it and the real worker is not touched (it used to be killed, and six
/// attempts made herd give up).
#[test]
fn a_stolen_token_costs_the_real_worker_nothing() {
    let fx = Fixture::new();
    let go = fx.path("go");
    // The worker waits for the test's signal before it connects.
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.02; done; exec '{}'",
        go.display(),
        chaos()
    );
    let mut herd = spawn_run_sh(&fx, 1, &["--start-timeout", "120s"], &script);
    let mut env = HashMap::new();
    wait_for("the worker's environment", RUN_TIMEOUT, || {
        for pid in children_of(herd.pid()) {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            env = raw
                .split(|&b| b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect();
            if env.contains_key("HERD_TOKEN") {
                return true;
            }
        }
        false
    });
    let token = env["HERD_TOKEN"].clone();
    for _ in 0..6 {
        let mut s = std::os::unix::net::UnixStream::connect(&env["HERD_SOCKET"]).unwrap();
        let mut frame = Vec::new();
        let hello = herd_proto::FromWorker::Hello {
            protocol: herd_proto::PROTOCOL_VERSION,
            pid: std::process::id(),
            token: token.clone(),
        };
        herd_proto::codec::encode_frame(&hello, &mut frame, 1024).unwrap();
        s.write_all(&frame).unwrap();
        s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "herd closes the connection");
    }
    herd.wait_log("six refusals", RUN_TIMEOUT, |l| {
        l.iter()
            .filter(|x| {
                x["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not a starting worker"))
            })
            .count()
            >= 6
    });
    std::fs::write(&go, b"").unwrap();
    herd.write(square_events(100).as_bytes());
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    assert_eq!(assert_contiguous(&records, &logs), 100);
    assert!(records.iter().all(|r| r["ok"] == true), "{}", dump(&logs));
    let ready = logs
        .iter()
        .filter(|l| l["message"] == "worker ready")
        .count();
    assert_eq!(ready, 1, "the worker was never replaced\n{}", dump(&logs));
}

/// SIGHUP (a closed terminal or ssh session) stops `herd run` gracefully: every accepted event
/// gets its record and nothing is left behind.
#[test]
fn sighup_stops_herd_run_gracefully() {
    let fx = Fixture::new();
    let mut herd = fx.spawn_herd(&["run", "--log-format", "json", "-w", "2", "--", chaos()]);
    herd.write("{\"op\":\"spin\",\"ms\":2}\n".repeat(500).as_bytes());
    wait_for("the first records", RUN_TIMEOUT, || {
        herd.records_so_far() > 10
    });
    let pids = herd.all_worker_pids();
    signal(herd.pid(), Signal::SIGHUP);
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
    assert_eq!(assert_contiguous(&records, &logs), 500);
    assert!(records.iter().all(|r| r["ok"] == true));
    assert_all_gone(&pids);
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// herd is killed by a signal it does not handle (SIGALRM) or cannot (SIGKILL), while its
/// workers have started helpers of their own: the guard kills those too and removes the socket
/// directory (the sleeper used to live on).
#[test]
fn a_killed_herd_leaves_no_process_or_socket_behind() {
    for sig in [Signal::SIGKILL, Signal::SIGALRM] {
        let fx = Fixture::new();
        let script = format!("sleep 600 & echo \"sleeper $!\" >&2; exec '{}'", chaos());
        let mut herd = spawn_run_sh(&fx, 2, &[], &script);
        herd.wait_log("2 workers ready", RUN_TIMEOUT, |l| {
            l.iter().filter(|x| x["message"] == "worker ready").count() >= 2
        });
        herd.write(b"{\"op\":\"sleep\",\"ms\":60000}\n");
        let mut doomed = herd.all_worker_pids();
        let sleepers = sleeper_pids(&herd.logs());
        assert_eq!(sleepers.len(), 2);
        doomed.extend(&sleepers);
        assert_eq!(fx.leftover_runtime_dirs().len(), 1);
        signal(herd.pid(), sig);
        let _ = herd.child.wait();
        assert_all_gone(&doomed);
        wait_for("the socket directory to go", RUN_TIMEOUT, || {
            fx.leftover_runtime_dirs().is_empty()
        });
    }
}

#[test]
fn an_unreadable_input_is_an_error() {
    let fx = Fixture::new();
    let dir = fx.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let out = fx
        .herd(&["run", "-i", dir.to_str().unwrap(), "--", chaos()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read input"), "{err}");
}

/// 1,500 events of 1 MiB each: herd holds about `--queue-bytes` (64 MiB) of them at a time,
/// not `--queue` events (it reached 1.4 GB). Every record is checked.
#[test]
fn large_payloads_are_bounded_in_bytes() {
    const N: usize = 1_500;
    let fx = Fixture::new();
    let mut child = std::process::Command::new(herd_bin())
        .args(["run", "--log-format", "json", "-w", "2", "--", chaos()])
        .env("XDG_RUNTIME_DIR", fx.dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let pad = "x".repeat(1 << 20);
        for i in 0..N {
            let line = format!("{{\"op\":\"echo\",\"v\":\"{i}:{pad}\"}}\n");
            if stdin.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::BufReader::new(stderr)
            .read_to_string(&mut s)
            .unwrap();
        s
    });
    // Records are checked as they stream by, not kept: each is over a MiB.
    let mut seen = vec![false; N];
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).split(b'\n') {
        let line = line.unwrap();
        let text = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        let seq: usize = text
            .strip_prefix("{\"seq\":")
            .and_then(|r| r.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad record {text}"));
        let want = format!(",\"ok\":true,\"output\":\"{seq}:xxx");
        assert!(text.contains(&want), "{text}");
        let pad = line.iter().filter(|&&b| b == b'x').count();
        assert_eq!(pad, 1 << 20, "seq {seq}: the output is whole");
        assert!(!seen[seq], "seq {seq} twice");
        seen[seq] = true;
    }
    feeder.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(seen.iter().all(|s| *s), "a record is missing");
    let logs = logs.join().unwrap();
    let summary: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "done")
        .unwrap_or_else(|| panic!("no summary line:\n{logs}"));
    let peak = summary["peak_rss"].as_u64().unwrap();
    assert!(peak < 150 << 20, "herd's peak RSS was {} MiB", peak >> 20);
}
