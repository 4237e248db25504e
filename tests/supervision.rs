//! Supervision: crashes, deadlines, retries, poison events, recycling, no orphans.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::*;

#[test]
fn every_failure_gets_the_right_record_and_the_rest_flows() {
    let fx = Fixture::new();
    let specials: [(&str, &str, u64, Option<&str>); 12] = [
        (r#"{"op":"crash"}"#, "crashed", 3, Some("SIGABRT")),
        (
            r#"{"op":"crash","signal":"SEGV"}"#,
            "crashed",
            3,
            Some("SIGSEGV"),
        ),
        (r#"{"op":"exit","code":3}"#, "crashed", 3, Some("code 3")),
        (r#"{"op":"panic"}"#, "failed", 1, Some("panicked")),
        (r#"{"op":"garbage"}"#, "protocol", 3, Some("malformed")),
        (r#"{"op":"oversize"}"#, "protocol", 3, Some("exceeds")),
        (r#"{"op":"flaky","fails":1}"#, "ok", 2, None),
        (r#"{"op":"flaky","fails":2}"#, "ok", 3, None),
        (r#"{"op":"flaky","fails":5}"#, "failed", 3, None),
        (r#"{"op":"fail","retryable":false}"#, "failed", 1, None),
        (r#"{"op":"hang"}"#, "timeout", 3, Some("deadline")),
        ("not json at all", "failed", 1, None),
    ];
    let mut input = String::new();
    let mut expect = Vec::new();
    for i in 0..400usize {
        if i % 30 == 7 && i / 30 < specials.len() {
            let s = specials[i / 30];
            input.push_str(s.0);
            expect.push(Some(s));
        } else {
            input.push_str(&format!("{{\"op\":\"square\",\"n\":{i}}}"));
            expect.push(None);
        }
        input.push('\n');
    }
    let run = fx.run_chaos(
        &[
            "-w",
            "3",
            "--window",
            "4",
            "--timeout",
            "300ms",
            "--retry-backoff",
            "10ms",
        ],
        input,
    );
    run.assert_success();
    let recs = run.by_seq(400);
    for (i, (r, e)) in recs.iter().zip(&expect).enumerate() {
        match e {
            None => {
                assert_eq!(r["ok"], true, "seq {i}: {r}");
                assert_eq!(
                    r["output"].as_u64().unwrap(),
                    (i * i) as u64,
                    "seq {i}: {r}"
                );
                assert_eq!(r["attempts"], 1, "a bystander is never charged: {r}");
            }
            Some((event, k, attempts, msg)) => {
                assert_eq!(kind(r), *k, "{event}: {r}");
                assert_eq!(r["attempts"], *attempts, "{event}: {r}");
                if let Some(m) = msg {
                    let text = r["error"]["message"].as_str().unwrap();
                    assert!(
                        text.contains(m),
                        "{event}: message {text:?} should mention {m:?}"
                    );
                }
            }
        }
    }
    // flaky returns the attempt that succeeded.
    assert_eq!(recs[6 * 30 + 7]["output"], 2);
    assert_eq!(recs[7 * 30 + 7]["output"], 3);
    // Each crash was logged with its signal or code, and every slot came back.
    let exits = run.log_events("worker exited");
    assert!(exits.iter().any(|e| e["signal"] == "SIGSEGV"), "{exits:?}");
    assert!(exits.iter().any(|e| e["code"] == 3));
    assert_all_gone(&run.worker_pids());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn random_kill_9_of_workers_loses_nothing() {
    let fx = Fixture::new();
    let n = 8000;
    let input: String = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                "{\"op\":\"spin\",\"ms\":1}\n".to_string()
            } else {
                format!("{{\"op\":\"square\",\"n\":{i}}}\n")
            }
        })
        .collect();
    let mut herd = fx.spawn_herd(&[
        "run",
        "--log-format",
        "json",
        "-w",
        "2",
        "--retries",
        "1000",
        "--",
        chaos(),
    ]);
    herd.wait_log("workers ready", RUN_TIMEOUT, |l| {
        l.iter().filter(|x| x["message"] == "worker ready").count() >= 2
    });
    let feeder = herd.feed(input.into_bytes());
    let mut kills = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let start = Instant::now();
    while herd.child.try_wait().unwrap().is_none() && start.elapsed() < RUN_TIMEOUT {
        let pids = herd.live_worker_pids();
        if !pids.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            signal(pids[(seed % pids.len() as u64) as usize], Signal::SIGKILL);
            kills += 1;
        }
        // The workload's pacing (a kill every ~150 ms), not a synchronisation.
        std::thread::sleep(Duration::from_millis(150));
    }
    feeder.join().unwrap();
    let all = herd.all_worker_pids();
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
    assert!(
        kills >= 5,
        "the run lasted long enough for several kills ({kills})"
    );
    let mut seen = vec![false; n];
    for r in &records {
        let seq = r["seq"].as_u64().unwrap() as usize;
        assert!(!seen[seq], "one record per event: {r}");
        seen[seq] = true;
        assert_eq!(r["ok"], true, "{r}");
        let want = if seq.is_multiple_of(2) {
            1
        } else {
            (seq * seq) as u64
        };
        assert_eq!(r["output"].as_u64().unwrap(), want, "{r}");
    }
    assert!(seen.iter().all(|s| *s), "every event has its record");
    let restarts = logs
        .iter()
        .filter(|l| l["message"] == "worker ready")
        .count();
    assert!(restarts > 2, "killed workers were replaced");
    assert_all_gone(&all);
}

#[test]
fn hang_times_out_without_holding_up_the_rest() {
    let fx = Fixture::new();
    let mut input = String::from("{\"op\":\"hang\"}\n");
    input.push_str(&square_events(300));
    // With one task in flight per worker nothing ever queues behind the hang: it is last.
    // (The deadline is long enough that a tiny event never meets it, even on a machine so
    // loaded that a worker waits hundreds of milliseconds for a CPU.)
    let run = fx.run_chaos(
        &["-w", "2", "--window", "1", "--timeout", "1s"],
        input.clone(),
    );
    run.assert_success();
    let last = run.records.last().unwrap();
    assert_eq!(
        last["seq"], 0,
        "the hang finishes last, after everything else: {last}"
    );
    assert_eq!(kind(last), "timeout");
    assert_eq!(last["attempts"], 3);
    let recs = run.by_seq(301);
    assert!(recs[1..].iter().all(|r| r["ok"] == true));
    let kills = run
        .logs
        .iter()
        .filter(|l| l["message"] == "task timed out; killing worker")
        .count();
    assert_eq!(kills, 3);
    assert_all_gone(&run.worker_pids());

    // With the automatic window, events queued behind the hang on its worker wait for the
    // deadline, then run elsewhere, uncharged.
    let run = fx.run_chaos(&["-w", "2", "--timeout", "1s"], input);
    run.assert_success();
    let recs = run.by_seq(301);
    assert_eq!(kind(recs[0]), "timeout");
    assert_eq!(recs[0]["attempts"], 3);
    for (i, r) in recs.iter().enumerate().skip(1) {
        assert_eq!(r["output"].as_u64().unwrap(), ((i - 1) * (i - 1)) as u64);
        assert_eq!(r["attempts"], 1, "{r}");
    }
}

#[test]
fn workers_die_with_a_sigkilled_herd() {
    let fx = Fixture::new();
    let mut herd = fx.spawn_herd(&["run", "--log-format", "json", "-w", "3", "--", chaos()]);
    herd.wait_log("3 workers ready", RUN_TIMEOUT, |l| {
        l.iter().filter(|x| x["message"] == "worker ready").count() >= 3
    });
    // Keep two of them busy so both idle and working workers are covered.
    herd.write(b"{\"op\":\"sleep\",\"ms\":60000}\n{\"op\":\"spin\",\"ms\":60000}\n");
    let pids = herd.all_worker_pids();
    assert_eq!(pids.len(), 3);
    signal(herd.pid(), Signal::SIGKILL);
    let _ = herd.child.wait();
    assert_all_gone(&pids);
    // Its guard process removes the socket directory.
    wait_for("the socket directory to go", RUN_TIMEOUT, || {
        fx.leftover_runtime_dirs().is_empty()
    });
    let run = fx.run_chaos(&["-w", "1"], square_events(3));
    run.assert_success();
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn a_worker_that_cannot_start_fails_fast_and_clearly() {
    let fx = Fixture::new();
    let start = Instant::now();
    let out = fx
        .herd(&["run", "-w", "2", "--", "/bin/false"])
        .write_stdin(square_events(5))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "gave up within seconds: {:?}",
        start.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/bin/false"), "{stderr}");
    assert!(stderr.contains("never became ready"), "{stderr}");

    let out = fx
        .herd(&[
            "run",
            "-w",
            "2",
            "--",
            "sh",
            "-c",
            "echo 'fatal: config missing' >&2; exit 1",
        ])
        .write_stdin(square_events(5))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fatal: config missing"),
        "quotes the worker's stderr: {stderr}"
    );
    assert!(
        stderr.contains("exited with code 1 without connecting"),
        "{stderr}"
    );
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn recycling_replaces_workers_without_losing_events() {
    let fx = Fixture::new();
    let run = fx.run_chaos(
        &["-w", "2", "--window", "3", "--max-tasks", "25"],
        square_events(500),
    );
    run.assert_success();
    let recs = run.by_seq(500);
    let pids: HashSet<u64> = recs.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64);
        assert_eq!(r["attempts"], 1);
    }
    // A worker stops taking tasks at 25; the (window - 1) already sent to it still complete.
    let mut per_pid: std::collections::HashMap<u64, usize> = Default::default();
    for r in &recs {
        *per_pid.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
    }
    assert!(per_pid.values().all(|&c| c <= 27), "{per_pid:?}");
    assert!(
        pids.len() >= 500 / 27,
        "500 tasks at <= 27 per worker: {} workers",
        pids.len()
    );
    assert!(
        run.log_events("worker recycled; starting its replacement")
            .len()
            >= 500 / 27 - 2
    );
    // Recycled workers leave through the termination frame, with code 0.
    assert!(run
        .log_events("worker exited")
        .iter()
        .all(|e| e["code"] == 0));
    assert_all_gone(&run.worker_pids());
}

#[test]
fn memory_recycling_replaces_a_bloated_worker() {
    let fx = Fixture::new();
    let mut input = String::from("{\"op\":\"alloc\",\"mb\":64}\n");
    for _ in 0..40 {
        input.push_str("{\"op\":\"sleep\",\"ms\":25}\n");
    }
    let run = fx.run_chaos(&["-w", "1", "--max-rss", "32MiB"], input);
    run.assert_success();
    let recs = run.by_seq(41);
    assert!(recs.iter().all(|r| r["ok"] == true));
    let pids: HashSet<u64> = recs.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
    assert!(pids.len() >= 2, "the bloated worker was replaced");
    assert!(!run
        .log_events("worker recycled; starting its replacement")
        .is_empty());
}

#[test]
fn failed_events_can_be_replayed() {
    let fx = Fixture::new();
    let failed = fx.path("failed.txt");
    let input = "{\"op\":\"square\",\"n\":2}\n{\"op\":\"fail\"}\nnot json\n{\"op\":\"crash\"}\n{\"op\":\"square\",\"n\":3}\n";
    let run = fx.run_chaos(
        &[
            "-w",
            "2",
            "--retries",
            "0",
            "--failed",
            failed.to_str().unwrap(),
        ],
        input,
    );
    run.assert_success();
    let mut lines: Vec<String> = std::fs::read_to_string(&failed)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["not json", "{\"op\":\"crash\"}", "{\"op\":\"fail\"}"]
    );
    let out = fx
        .herd(&[
            "run",
            "-w",
            "1",
            "--retries",
            "0",
            "-i",
            failed.to_str().unwrap(),
            "--",
            chaos(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn a_stranger_with_the_wrong_token_is_refused() {
    use std::io::{Read, Write};
    let fx = Fixture::new();
    let mut herd = fx.spawn_herd(&["run", "--log-format", "json", "-w", "1", "--", chaos()]);
    herd.wait_log("worker ready", RUN_TIMEOUT, |l| {
        l.iter().any(|x| x["message"] == "worker ready")
    });
    let dir = fx.leftover_runtime_dirs().pop().unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("workers.sock")).unwrap();
    let mut frame = Vec::new();
    let hello = herd_proto::FromWorker::Hello {
        protocol: 1,
        pid: std::process::id(),
        token: "guess".into(),
    };
    herd_proto::codec::encode_frame(&hello, &mut frame, 1024).unwrap();
    s.write_all(&frame).unwrap();
    s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "herd closes the connection");
    herd.wait_log("refusal logged", RUN_TIMEOUT, |l| {
        l.iter().any(|x| {
            x["message"]
                .as_str()
                .is_some_and(|m| m.contains("connection refused"))
        })
    });
    herd.write(b"{\"op\":\"square\",\"n\":9}\n");
    let (status, records, _) = herd.finish(RUN_TIMEOUT);
    assert!(status.success());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["output"], 81);
}

#[test]
fn wrapped_workers_and_their_children_are_cleaned_up() {
    let fx = Fixture::new();
    // The shell forks a long sleeper and the worker (not exec'd, because of `; exit 0`): the
    // peer is a child of the spawned process, in its process group.
    let script = format!("sleep 300 & echo \"sleeper $!\" >&2; {} ; exit 0", chaos());
    let out = fx
        .herd(&[
            "run",
            "--log-format",
            "json",
            "-w",
            "2",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .write_stdin(square_events(100))
        .output()
        .unwrap();
    let run = Run::new(vec![], out);
    run.assert_success();
    for (i, r) in run.by_seq(100).iter().enumerate() {
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64);
    }
    let sleepers = sleeper_pids(&run.logs);
    assert_eq!(sleepers.len(), 2, "{}", run.stderr());
    assert!(run
        .log_events("worker exited")
        .iter()
        .all(|e| e["code"] == 0));
    assert_all_gone(&sleepers);
}

#[test]
fn a_slot_that_cannot_start_backs_off_while_the_others_serve() {
    let fx = Fixture::new();
    // Slot 1's worker always dies at start-up; slot 0's is fine.
    let script = format!(
        "if [ \"$HERD_WORKER\" = 1 ]; then echo 'slot 1 is broken' >&2; exit 1; fi; exec {}",
        chaos()
    );
    let mut herd = spawn_run_sh(&fx, 2, &[], &script);
    herd.wait_log("four failed starts of slot 1", RUN_TIMEOUT, |l| {
        l.iter()
            .filter(|x| x["message"] == "worker failed to start; backing off" && x["worker"] == 1)
            .count()
            >= 4
    });
    herd.write(square_events(200).as_bytes());
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    assert_eq!(records.len(), 200);
    assert!(records.iter().all(|r| r["ok"] == true && r["worker"] == 0));
    let delays: Vec<u64> = logs
        .iter()
        .filter(|x| x["message"] == "worker failed to start; backing off" && x["worker"] == 1)
        .map(|x| x["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(
        &delays[..4],
        &[100, 200, 400, 800],
        "exponential backoff: {delays:?}"
    );
}

/// A worker that completes its handshake (protocol 2) and dies at once, whatever it is sent.
const HELLO_THEN_DIE: &str = r#"
import os, socket, struct
def varint(n):
    if n <= 250: return bytes([n])
    if n < 1 << 16: return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32: return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["HERD_SOCKET"])
token = os.environ["HERD_TOKEN"].encode()
body = b"\x00" + varint(2) + varint(os.getpid()) + varint(len(token)) + token
s.sendall(struct.pack("<I", len(body)) + body)
os._exit(3)
"#;

#[test]
fn workers_that_always_die_after_their_handshake_open_the_circuit_breaker() {
    let fx = Fixture::new();
    let py = fx.path("hello_then_die.py");
    std::fs::write(&py, HELLO_THEN_DIE).unwrap();
    let started = Instant::now();
    let out = fx
        .herd(&["run", "--log-format", "json", "-w", "2", "--", "python3"])
        .arg(&py)
        .write_stdin(square_events(300))
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let run = Run::new(vec!["run hello_then_die.py".into()], out);
    eprintln!(
        "300 events, workers that always die: {:?}",
        started.elapsed()
    );
    let records = run.by_seq(300);
    assert!(
        records.iter().all(|r| kind(r) == "crashed"),
        "{}",
        run.stderr()
    );
    let shed = records
        .iter()
        .filter(|r| {
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("circuit breaker is open"))
        })
        .count();
    assert!(
        shed > 200,
        "most answered at once, not one death each: {shed}"
    );
    assert_eq!(
        run.log_events(
            "circuit breaker open: workers keep dying after their handshake without \
             completing a task; queued events are answered as crashed until a worker \
             completes one"
        )
        .len(),
        1,
        "logged once:\n{}",
        run.stderr()
    );
    assert_all_gone(&run.worker_pids());
}
