//! `herd serve` and its clients: submissions, status, scaling, reload, signals, stop.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::{Child, Stdio};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

impl Daemon {
    fn submit(&self, input: String) -> Run {
        let args = vec!["submit".to_string(), "--control".into(), self.ctl().into()];
        let out = self
            .fx
            .herd(&["submit", "--control", self.ctl()])
            .write_stdin(input)
            .output()
            .unwrap();
        Run::new(args, out)
    }

    fn signal(&self, sig: Signal) {
        signal(self.live.pid(), sig);
    }
}

fn child_output(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run::new(vec!["submit".into()], out)
}

#[test]
fn submit_through_the_socket_gets_correct_records() {
    let d = Daemon::start(2, &[]);
    let run = d.submit(square_events(500) + "not json\n");
    run.assert_success();
    let recs = run.by_seq(501);
    for (i, r) in recs[..500].iter().enumerate() {
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64, "{r}");
    }
    assert_eq!(kind(recs[500]), "failed");
    // seq counts within each submission.
    let again = d.submit(square_events(3));
    again.assert_success();
    assert_eq!(again.by_seq(3)[2]["output"], 4);
    let st = d.status();
    assert_eq!(st["totals"]["ok"], 503);
    assert_eq!(st["totals"]["failed"], 1);
    assert_eq!(st["pid"], d.live.pid());
    let (status, logs, fx, control) = d.stop();
    assert!(status.success(), "{}", dump(&logs));
    assert!(!control.exists(), "control socket removed");
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn scaling_by_signal_and_by_ctl() {
    let d = Daemon::start(2, &[]);
    d.signal(Signal::SIGTTIN);
    d.wait_status("3 workers after TTIN", |s| {
        s["target_workers"] == 3 && ready_workers(s) == 3
    });
    // Standard signals do not queue: wait for each to take effect before the next.
    d.signal(Signal::SIGTTOU);
    d.wait_status("2 workers after TTOU", |s| {
        s["workers"].as_array().unwrap().len() == 2
    });
    d.signal(Signal::SIGTTOU);
    let st = d.wait_status("1 worker after 2 x TTOU", |s| {
        s["workers"].as_array().unwrap().len() == 1
    });
    assert_eq!(st["target_workers"], 1);
    d.ctl_cmd(&["scale", "4"]);
    d.wait_status("4 workers after ctl scale 4", |s| ready_workers(s) == 4);
    let run = d.submit(square_events(200));
    run.assert_success();
    let pids: HashSet<u64> = run
        .records
        .iter()
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 4, "all four workers served");
    let (status, logs, ..) = d.stop();
    assert!(status.success(), "{}", dump(&logs));
    // Retired workers left through the termination frame.
    assert!(
        logs.iter()
            .filter(|l| l["message"] == "worker exited")
            .all(|l| l["code"] == 0),
        "{}",
        dump(&logs)
    );
}

#[test]
fn hup_replaces_every_worker_and_loses_nothing() {
    let d = Daemon::start(3, &[]);
    let before: HashSet<u64> = d
        .live
        .logs()
        .iter()
        .filter(|l| l["message"] == "worker ready")
        .map(|l| l["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(before.len(), 3);
    let slow: String = (0..3000)
        .map(|i| {
            if i % 10 == 0 {
                "{\"op\":\"sleep\",\"ms\":5}\n".to_string()
            } else {
                format!("{{\"op\":\"square\",\"n\":{i}}}\n")
            }
        })
        .collect();
    let sub = d.submit_bg("events.txt", &slow, &[]);
    d.wait_status("the submission is flowing", |s| {
        s["totals"]["ok"].as_u64().unwrap() > 100
    });
    d.signal(Signal::SIGHUP);
    d.live.wait_log("reload complete", RUN_TIMEOUT, |l| {
        l.iter().any(|x| x["message"] == "reload complete")
    });
    let run = child_output(sub);
    run.assert_success();
    let recs = run.by_seq(3000);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        if i % 10 != 0 {
            assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64);
        }
    }
    let st = d.status();
    let after: HashSet<u64> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(after.len(), 3);
    assert!(
        before.is_disjoint(&after),
        "every worker replaced: {before:?} -> {after:?}"
    );
    assert_eq!(st["restarts"]["reload"], 3);
    let (status, logs, ..) = d.stop();
    assert!(status.success(), "{}", dump(&logs));
}

#[test]
fn usr1_writes_a_status_snapshot_to_the_log() {
    let d = Daemon::start(2, &[]);
    d.signal(Signal::SIGUSR1);
    d.live.wait_log("worker status lines", RUN_TIMEOUT, |l| {
        l.iter().filter(|x| x["message"] == "worker status").count() >= 2
    });
    let logs = d.live.logs();
    let lines: Vec<&Value> = logs
        .iter()
        .filter(|x| x["message"] == "worker status")
        .collect();
    for l in &lines {
        assert!(
            l["pid"].is_u64() && l["state"].is_string() && l["worker"].is_u64(),
            "{l}"
        );
    }
    assert!(logs.iter().any(|x| x["message"] == "status"));
    let (status, ..) = d.stop();
    assert!(status.success());
}

#[test]
fn term_finishes_queued_events_and_leaves_nothing() {
    let d = Daemon::start(2, &[]);
    let sub = d.submit_bg(
        "slow.txt",
        &"{\"op\":\"sleep\",\"ms\":10}\n".repeat(200),
        &[],
    );
    d.wait_status("200 events accepted", |s| {
        s["totals"]["ok"].as_u64().unwrap()
            + s["queued"].as_u64().unwrap()
            + s["inflight"].as_u64().unwrap()
            >= 200
    });
    let pids = d.live.all_worker_pids();
    d.signal(Signal::SIGTERM);
    let run = child_output(sub);
    run.assert_success();
    let recs = run.by_seq(200);
    assert!(
        recs.iter().all(|r| r["ok"] == true),
        "every accepted event completed"
    );
    let (status, _, logs) = d.live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    assert!(!d.control.exists(), "control socket removed");
    assert!(d.fx.leftover_runtime_dirs().is_empty());
    assert_all_gone(&pids);
}

#[test]
fn json_logs_parse_and_carry_worker_stderr() {
    let d = Daemon::start(1, &[]);
    let run = d.submit("{\"op\":\"stderr\",\"text\":\"from the worker\"}\n".into());
    run.assert_success();
    d.live.wait_log("forwarded stderr", RUN_TIMEOUT, |l| {
        l.iter().any(|x| x["message"] == "from the worker")
    });
    let logs = d.live.logs();
    let line = logs
        .iter()
        .find(|x| x["message"] == "from the worker")
        .unwrap();
    assert_eq!(line["worker"], 0);
    assert!(line["pid"].is_u64());
    assert!(
        logs.iter().all(|l| l.get("raw").is_none()),
        "every log line is JSON: {}",
        dump(&logs)
    );
    let (status, ..) = d.stop();
    assert!(status.success());
}

#[test]
fn concurrent_submitters_both_get_all_their_records() {
    let d = Daemon::start(2, &[]);
    let a = d.submit_bg("a.txt", &square_events(2000), &[]);
    let b = d.submit_bg(
        "b.txt",
        &(0..2000)
            .map(|i| format!("{{\"op\":\"echo\",\"v\":\"b{i}\"}}\n"))
            .collect::<String>(),
        &[],
    );
    let (ra, rb) = (child_output(a), child_output(b));
    ra.assert_success();
    rb.assert_success();
    for (i, r) in ra.by_seq(2000).iter().enumerate() {
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64);
    }
    for (i, r) in rb.by_seq(2000).iter().enumerate() {
        assert_eq!(r["output"], format!("b{i}"));
    }
    let (status, ..) = d.stop();
    assert!(status.success());
}

#[test]
fn a_vanished_submitter_does_not_disturb_the_daemon() {
    let d = Daemon::start(2, &[]);
    let mut doomed = d.submit_bg(
        "doomed.txt",
        &"{\"op\":\"sleep\",\"ms\":5}\n".repeat(2000),
        &[],
    );
    d.wait_status("the doomed submission is flowing", |s| {
        s["totals"]["ok"].as_u64().unwrap() > 20
    });
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    // Its queued events are dropped; the daemon goes on serving others.
    d.wait_status("the vanished submission is dropped", |s| {
        s["submissions"] == 0 && s["queued"] == 0 && s["inflight"] == 0
    });
    let run = d.submit(square_events(50));
    run.assert_success();
    assert_eq!(run.by_seq(50)[7]["output"], 49);
    let (status, logs, ..) = d.stop();
    assert!(status.success(), "{}", dump(&logs));
}

#[test]
fn stale_socket_is_replaced_and_a_live_one_is_not_stolen() {
    let d = Daemon::start(1, &[]);
    // A second daemon on the same path refuses to start.
    let out =
        d.fx.herd(&["serve", "--control", d.ctl(), "-w", "1", "--", chaos()])
            .output()
            .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.control.exists(), "the live socket is untouched");
    assert_eq!(d.submit(square_events(2)).by_seq(2)[1]["output"], 1);
    // A daemon killed with SIGKILL leaves a stale socket; the next one replaces it.
    let pids = d.live.all_worker_pids();
    d.signal(Signal::SIGKILL);
    let Daemon { fx, live, control } = d;
    let _ = live.finish(RUN_TIMEOUT);
    assert_all_gone(&pids);
    assert!(control.exists(), "stale socket left behind");
    let c = control.to_str().unwrap();
    let second = fx.serve(&control, 1, &[]);
    let out = fx
        .herd(&["submit", "--control", c])
        .write_stdin(square_events(3))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    signal(second.pid(), Signal::SIGTERM);
    let (status, ..) = second.finish(RUN_TIMEOUT);
    assert!(status.success());
    assert!(!control.exists());
}

#[test]
fn submit_without_a_daemon_fails_clearly() {
    let fx = Fixture::new();
    let sock = fx.path("nobody.sock");
    let out = fx
        .herd(&["submit", "--control", sock.to_str().unwrap()])
        .write_stdin("x\n")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no herd daemon"));
}

#[test]
fn submitter_fails_when_the_daemon_goes_away() {
    let d = Daemon::start(1, &[]);
    let sub = d.submit_bg(
        "long.txt",
        &"{\"op\":\"sleep\",\"ms\":20}\n".repeat(500),
        &[],
    );
    d.wait_status("flowing", |s| s["totals"]["ok"].as_u64().unwrap() > 5);
    d.signal(Signal::SIGKILL);
    let run = child_output(sub);
    assert!(!run.out.status.success(), "the submitter notices");
    assert!(run.stderr().contains("went away"), "{}", run.stderr());
}

#[test]
fn usr2_reopens_the_log_file_and_pid_file_and_sd_notify_work() {
    use std::os::unix::net::UnixDatagram;
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let log = fx.path("herd.log");
    let pid_file = fx.path("herd.pid");
    let notify_path = fx.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let mut child = std::process::Command::new(herd_bin())
        .args([
            "serve",
            "--log-format",
            "json",
            "--log-file",
            log.to_str().unwrap(),
        ])
        .args([
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ])
        .args(["-w", "1", "--", chaos()])
        .env("XDG_RUNTIME_DIR", fx.dir.path())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // First that the control socket takes submissions, then READY=1 once every worker is up.
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(msg.trim(), "X_HERD_LISTENING=1");
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(msg.contains("STATUS="), "{msg}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, child.id());
    // logrotate: move the file away, USR2, and new lines go to a fresh file at the old path.
    let rotated = fx.path("herd.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(pid, Signal::SIGUSR2);
    wait_for("the log file to be reopened", RUN_TIMEOUT, || log.exists());
    signal(pid, Signal::SIGUSR1);
    wait_for("the status snapshot in the new file", RUN_TIMEOUT, || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("worker status"))
    });
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("\"ready\""));
    signal(pid, Signal::SIGTERM);
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    assert!(!pid_file.exists(), "pid file removed");
    assert!(!control.exists());
}

#[test]
fn status_to_a_reader_that_has_gone_is_not_a_panic() {
    let d = Daemon::start(1, &[]);
    // A pipe whose reader is closed before herd writes: every write fails with EPIPE.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    for args in [vec!["status"], vec!["status", "--json"]] {
        let out =
            d.fx.std_command(herd_bin())
                .args(&args)
                .args(["--control", d.ctl()])
                .stdout(Stdio::from(write.try_clone().unwrap()))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}\n{stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
