//! `herd-stdio`: line filters as workers. Real programs (Python scripts, `sed -u`, `awk` with
//! `fflush`, `cat`) under the real `herd`, and a hand-driven supervisor socket where the exact
//! frames matter (pipelining, the termination frame, a supervisor that vanishes).

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};

use herd_proto::codec;
use herd_proto::{FromWorker, Outcome, ToWorker};
use serde_json::Value;

use crate::util::*;

fn stdio_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herd-stdio")
}

/// A line filter in Python with a few ways to misbehave, chosen by the event (a JSON object):
/// `{"n":N}` answers `{"sq":N*N,"pid":PID}`; `die` exits mid-stream; `partial` writes half a
/// line and exits; `hang` sleeps forever; `big` answers a line of `len` bytes; `extra` answers
/// with two lines. It announces its pid on stderr, so the tests can check it is gone.
const ENRICH_PY: &str = r#"
import json, os, sys, time
pid = os.getpid()
print(f"enrich started pid {pid}", file=sys.stderr, flush=True)
limit = int(sys.argv[1]) if len(sys.argv) > 1 else -1
answered = 0
for line in sys.stdin:
    e = json.loads(line)
    op = e.get("op")
    if op == "die":
        os._exit(7)
    elif op == "partial":
        sys.stdout.write("half an ans")
        sys.stdout.flush()
        os._exit(0)
    elif op == "hang":
        while True:
            time.sleep(3600)
    elif op == "big":
        sys.stdout.write("x" * e["len"] + "\n")
    elif op == "extra":
        sys.stdout.write("one\ntwo\n")
    else:
        sys.stdout.write(json.dumps({"sq": e["n"] * e["n"], "pid": pid}) + "\n")
    sys.stdout.flush()
    answered += 1
    if answered == limit:
        os._exit(0)
"#;

impl Fixture {
    /// Writes the Python filter into the fixture; returns its path.
    fn enrich_py(&self) -> String {
        let path = self.path("enrich.py");
        std::fs::write(&path, ENRICH_PY).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// `herd run -i FILE <opts> -- herd-stdio -- <program>` with `input` in FILE; JSON logs.
    /// From a file, not stdin: a herd that stops reading must not keep the test from timing out.
    fn run_stdio(&self, opts: &[&str], program: &[&str], input: impl Into<Vec<u8>>) -> Run {
        let file = self.path("input");
        std::fs::write(&file, input.into()).unwrap();
        let mut args = vec!["run", "--log-format", "json", "-i", file.to_str().unwrap()];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", stdio_bin(), "--"]);
        args.extend_from_slice(program);
        let out = self.herd(&args).output().unwrap();
        Run::new(args.iter().map(|s| s.to_string()).collect(), out)
    }
}

impl Run {
    /// The lines the workers (herd-stdio and its child) wrote to stderr, as herd logged them.
    fn worker_stderr(&self) -> Vec<String> {
        self.logs
            .iter()
            .filter(|l| l["stream"] == "stderr")
            .filter_map(|l| l["message"].as_str().map(String::from))
            .collect()
    }

    /// Pids of every Python filter started (announced on stderr).
    fn child_pids(&self) -> HashSet<u32> {
        self.worker_stderr()
            .iter()
            .filter_map(|l| l.strip_prefix("enrich started pid "))
            .map(|p| p.parse().unwrap())
            .collect()
    }
}

fn numbers(range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{{\"n\":{i}}}\n")).collect()
}

#[test]
fn stdio_python_filter_at_volume_starts_once_per_worker() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    let n = 100_000;
    let run = fx.run_stdio(&["-w", "2"], &["python3", "-u", &py], numbers(0..n));
    run.assert_success();
    let mut by_pid: HashMap<u64, usize> = HashMap::new();
    for (i, r) in run.by_seq(n).iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"]["sq"].as_u64().unwrap(), (i * i) as u64, "{r}");
        assert_eq!(r["attempts"], 1, "{r}");
        *by_pid
            .entry(r["output"]["pid"].as_u64().unwrap())
            .or_default() += 1;
    }
    // One persistent child per worker, not one per event: two Python processes did all of it.
    assert_eq!(by_pid.len(), 2, "{by_pid:?}");
    let started = run.child_pids();
    assert_eq!(started.len(), 2, "{:?}", run.worker_stderr());
    assert!(by_pid.keys().all(|p| started.contains(&(*p as u32))));
    assert_all_gone(&started);
    assert_all_gone(&run.worker_pids());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn stdio_sed_and_awk_filters() {
    let fx = Fixture::new();
    let n = 20_000;
    // Blank lines, spaces, non-ASCII, and a `\r\n` line end (herd strips the `\r` on input).
    let line = |i: usize| match i % 4 {
        0 => String::new(),
        1 => format!("line {i} with  spaces"),
        2 => format!("ünïcödé {i}"),
        _ => format!("{i}"),
    };
    let mut input: String = (0..n).map(|i| line(i) + "\n").collect();
    input.push_str("crlf\r\n");
    let sed = fx.run_stdio(&["-w", "2"], &["sed", "-u", "s/^/> /"], input.clone());
    sed.assert_success();
    // mawk (Debian's awk) reads its input a block at a time unless told otherwise, and would
    // wait for more lines before answering; gawk answers each line as it comes.
    let version = Command::new("awk")
        .args(["-W", "version"])
        .output()
        .unwrap();
    let mut awk = vec!["awk"];
    if String::from_utf8_lossy(&version.stdout).contains("mawk") {
        awk.extend_from_slice(&["-W", "interactive"]);
    }
    awk.push("{ print length($0) \":\" $0; fflush() }");
    let awk = fx.run_stdio(&["-w", "2"], &awk, input);
    awk.assert_success();
    let sed = sed.by_seq(n + 1);
    let awk = awk.by_seq(n + 1);
    for i in 0..=n {
        let l = if i == n { "crlf".to_string() } else { line(i) };
        let want_sed = format!("> {l}");
        // A line that is all digits comes back as JSON: herd embeds valid JSON as JSON.
        assert_eq!(
            sed[i]["output"].as_str(),
            Some(want_sed.as_str()),
            "{}",
            sed[i]
        );
        let out = &awk[i]["output"];
        let text = out.as_str().map_or_else(|| out.to_string(), String::from);
        assert!(
            text.ends_with(&format!(":{l}")),
            "awk answer {text:?} for line {l:?}"
        );
    }
}

#[test]
fn stdio_child_that_dies_mid_stream_is_a_crash_and_nothing_is_lost() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    // Each child answers 700 events and exits with more outstanding (herd's window is full
    // of tiny events): a dozen deaths, mid-stream, in 10,000 events.
    let n = 10_000;
    let run = fx.run_stdio(
        &["-w", "2", "--retries", "5"],
        &["python3", "-u", &py, "700"],
        numbers(0..n),
    );
    run.assert_success();
    for (i, r) in run.by_seq(n).iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"]["sq"].as_u64().unwrap(), (i * i) as u64, "{r}");
    }
    let exits: Vec<_> = run
        .log_events("worker exited")
        .into_iter()
        .filter(|l| l["code"] == 3)
        .collect();
    assert!(exits.len() >= 10, "{} crashes", exits.len());
    let stderr = run.worker_stderr();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("closed its stdout or exited with") && l.contains("exit status: 0")),
        "{stderr:?}"
    );
    assert_all_gone(&run.child_pids());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

#[test]
fn stdio_poison_events_crash_their_worker_and_get_their_record() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    let mut input = numbers(0..3000);
    // The child exits on `die`, and stops mid-line on `partial`: every attempt crashes.
    input.insert_str(input.find("{\"n\":1000}").unwrap(), "{\"op\":\"die\"}\n");
    input.insert_str(
        input.find("{\"n\":2000}").unwrap(),
        "{\"op\":\"partial\"}\n",
    );
    let run = fx.run_stdio(
        &["-w", "2", "--retries", "1"],
        &["python3", "-u", &py],
        input,
    );
    run.assert_success();
    let recs = run.by_seq(3002);
    let mut n = 0;
    for r in recs {
        match r["seq"].as_u64().unwrap() {
            1000 | 2001 => {
                assert_eq!(kind(r), "crashed", "{r}");
                assert_eq!(r["attempts"], 2, "{r}");
                assert!(
                    r["error"]["message"].as_str().unwrap().contains("code 3"),
                    "{r}"
                );
            }
            _ => {
                // Events queued behind a poison one were sent again, not charged.
                assert_eq!(r["ok"], true, "{r}");
                assert_eq!(r["output"]["sq"].as_u64().unwrap(), n * n, "{r}");
                assert_eq!(r["attempts"], 1, "{r}");
                n += 1;
            }
        }
    }
    let stderr = run.worker_stderr().join("\n");
    assert!(stderr.contains("(exit status: 7)"), "{stderr}");
    assert!(
        stderr.contains("in the middle of a line (11 bytes)"),
        "{stderr}"
    );
    assert_all_gone(&run.child_pids());
}

#[test]
fn stdio_hanging_child_is_killed_by_the_timeout() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    let mut input = numbers(0..200);
    input.push_str("{\"op\":\"hang\"}\n");
    input.push_str(&numbers(200..400));
    // 5 s: the deadline covers a task's time in the child's window too, and a Python child
    // starting on a loaded machine can take over a second before it answers anything.
    let run = fx.run_stdio(
        &["-w", "2", "--timeout", "5s", "--retries", "0"],
        &["python3", "-u", &py],
        input,
    );
    run.assert_success();
    let recs = run.by_seq(401);
    assert_eq!(kind(recs[200]), "timeout", "{}", recs[200]);
    assert!(recs
        .iter()
        .enumerate()
        .all(|(i, r)| i == 200 || r["ok"] == true));
    // The hung child (and the herd-stdio above it) was killed with its process group.
    let started = run.child_pids();
    assert!(started.len() >= 2, "{started:?}");
    assert_all_gone(&started);
    assert_all_gone(&run.worker_pids());
}

#[test]
fn stdio_a_line_nobody_asked_for_is_a_crash() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    // One event in flight at a time, so the second line of `extra` finds nothing outstanding.
    let input = format!("{}{{\"op\":\"extra\"}}\n{}", numbers(0..5), numbers(5..10));
    let run = fx.run_stdio(
        &["-w", "1", "--window", "1"],
        &["python3", "-u", &py],
        input,
    );
    run.assert_success();
    let recs = run.by_seq(11);
    // The first line answered the event; the second killed the worker, between events (herd
    // may have sent it the next one by then, which is then charged an attempt).
    assert_eq!(recs[5]["output"], "one", "{}", recs[5]);
    for (i, r) in recs.iter().enumerate().filter(|(i, _)| *i != 5) {
        let n = if i < 5 { i } else { i - 1 };
        assert_eq!(r["output"]["sq"].as_u64().unwrap(), (n * n) as u64, "{r}");
        let charged = if i == 6 { 2 } else { 1 };
        assert!(r["attempts"].as_u64().unwrap() <= charged, "{r}");
    }
    let stderr = run.worker_stderr().join("\n");
    assert!(
        stderr.contains("wrote a line no event asked for: \"two\""),
        "{stderr}"
    );
    assert!(run
        .log_events("worker exited")
        .iter()
        .any(|l| l["code"] == 3));
    assert_eq!(run.child_pids().len(), 2);
    assert_all_gone(&run.child_pids());
}

#[test]
fn stdio_large_lines_and_an_answer_over_the_frame_limit() {
    let fx = Fixture::new();
    // 100 lines of 1 MiB each way through `cat`.
    let big = |i: usize| format!("{i:07}{}", "y".repeat((1 << 20) - 7));
    let input: String = (0..100).map(|i| big(i) + "\n").collect();
    let run = fx.run_stdio(&["-w", "2"], &["cat"], input);
    run.assert_success();
    for (i, r) in run.by_seq(100).iter().enumerate() {
        assert_eq!(r["output"].as_str().unwrap(), big(i), "record {i}");
    }

    // An answer larger than a frame gets an error, and the stream stays in step after it.
    let py = fx.enrich_py();
    let input = format!(
        "{}{{\"op\":\"big\",\"len\":300000}}\n{}",
        numbers(0..50),
        numbers(50..100)
    );
    let run = fx.run_stdio(
        &["-w", "1", "--max-frame", "128KiB"],
        &["python3", "-u", &py],
        input,
    );
    run.assert_success();
    let recs = run.by_seq(101);
    assert_eq!(kind(recs[50]), "failed", "{}", recs[50]);
    let msg = recs[50]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("answer line of 300000 bytes exceeds the maximum frame"),
        "{msg}"
    );
    for (i, r) in recs.iter().enumerate().filter(|(i, _)| *i != 50) {
        let n = if i < 50 { i } else { i - 1 };
        assert_eq!(r["output"]["sq"].as_u64().unwrap(), (n * n) as u64, "{r}");
    }
    // One child did it all: the oversize answer was not a crash.
    assert_eq!(run.child_pids().len(), 1);
}

#[test]
fn stdio_usage_errors_and_a_program_that_cannot_start() {
    let out = Command::new(stdio_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("flush stdout after each line"), "{help}");

    let out = Command::new(stdio_bin()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(stdio_bin())
        .args(["--", "cat"])
        .env_remove(herd_proto::ENV_SOCKET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run it under `herd run"), "{err}");

    let fx = Fixture::new();
    let run = fx.run_stdio(&["-w", "1"], &["/nonexistent/filter"], "a\n");
    assert!(!run.out.status.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("herd-stdio: cannot start `/nonexistent/filter`: No such file"),
        "{stderr}"
    );
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// herd-stdio on a socket this test drives by hand, as herd would.
struct Supervisor {
    sock: UnixStream,
    stdio: Child,
    scratch: Vec<u8>,
}

const MAX: usize = 1 << 20;

impl Supervisor {
    fn start(fx: &Fixture, program: &[&str]) -> Self {
        let path = fx.path("herd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stdio = Command::new(stdio_bin())
            .arg("--")
            .args(program)
            .env(herd_proto::ENV_SOCKET, &path)
            .env(herd_proto::ENV_TOKEN, "tok")
            .env(herd_proto::ENV_MAX_FRAME, MAX.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(fx.path("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut sock = None;
        wait_for("herd-stdio to connect", RUN_TIMEOUT, || {
            sock = listener.accept().ok().map(|(s, _)| s);
            sock.is_some()
        });
        let sock = sock.unwrap();
        sock.set_nonblocking(false).unwrap();
        sock.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        let mut sup = Self {
            sock,
            stdio,
            scratch: Vec::new(),
        };
        match sup.recv() {
            Some(FromWorker::Hello { token, .. }) => assert_eq!(token, "tok"),
            other => panic!("want Hello, got {other:?}"),
        }
        sup
    }

    fn recv(&mut self) -> Option<FromWorker> {
        codec::read_frame(&mut &self.sock, &mut self.scratch, MAX).unwrap()
    }

    /// Writes `msgs` in one go from a thread (they may be more than the socket buffer holds).
    fn send_all(&self, msgs: Vec<ToWorker>) -> std::thread::JoinHandle<()> {
        let mut bytes = Vec::new();
        for m in &msgs {
            codec::encode_frame(m, &mut bytes, MAX).unwrap();
        }
        let mut sock = self.sock.try_clone().unwrap();
        std::thread::spawn(move || sock.write_all(&bytes).unwrap())
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("herd-stdio to exit", RUN_TIMEOUT, || {
            status = self.stdio.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stdio.kill();
        let _ = self.stdio.wait();
    }
}

fn task(id: u64, payload: &[u8]) -> ToWorker {
    ToWorker::Task {
        id,
        attempt: 1,
        payload: payload.to_vec(),
    }
}

#[test]
fn stdio_pipelines_answers_in_order_and_finishes_on_the_termination_frame() {
    let fx = Fixture::new();
    let mut sup = Supervisor::start(&fx, &["sed", "-u", "s/^/> /"]);
    // 50,000 tasks and the termination frame in one stream, as a pipelining herd sends them;
    // one payload has a newline in it and must not reach (and desynchronise) the child.
    let n = 50_000u64;
    let mut msgs: Vec<ToWorker> = (0..n)
        .map(|id| {
            if id == 777 {
                task(id, b"two\nlines")
            } else {
                task(id, id.to_string().as_bytes())
            }
        })
        .collect();
    msgs.push(ToWorker::Shutdown);
    let writer = sup.send_all(msgs);
    let mut seen = HashSet::new();
    for _ in 0..n {
        let Some(FromWorker::Done { id, outcome }) = sup.recv() else {
            panic!("want a Done");
        };
        assert!(seen.insert(id), "two answers for {id}");
        match outcome {
            Outcome::Err { retryable, message } => {
                assert_eq!(id, 777);
                assert!(!retryable);
                assert!(message.contains("contains a newline"), "{message}");
            }
            Outcome::Ok(out) => assert_eq!(out, format!("> {id}").into_bytes()),
            other => panic!("herd-stdio speaks protocol 2, not {other:?}"),
        }
    }
    writer.join().unwrap();
    // Every task answered; then the end of the connection, and exit 0.
    assert_eq!(sup.recv(), None);
    assert!(sup.wait_exit().success());
    let stderr = std::fs::read_to_string(fx.path("stderr")).unwrap();
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn stdio_answers_outstanding_tasks_after_the_termination_frame() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    let mut sup = Supervisor::start(&fx, &["python3", "-u", &py]);
    let mut msgs: Vec<ToWorker> = (0..1000u64)
        .map(|id| task(id, format!("{{\"n\":{id}}}").as_bytes()))
        .collect();
    msgs.push(ToWorker::Shutdown);
    sup.send_all(msgs).join().unwrap();
    let mut pid = 0;
    for want in 0..1000u64 {
        match sup.recv() {
            Some(FromWorker::Done {
                id,
                outcome: Outcome::Ok(out),
            }) => {
                assert_eq!(id, want);
                let v: Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v["sq"].as_u64().unwrap(), want * want);
                pid = v["pid"].as_u64().unwrap() as u32;
            }
            other => panic!("want Done {want}, got {other:?}"),
        }
    }
    assert_eq!(sup.recv(), None);
    assert!(sup.wait_exit().success());
    // The child saw the end of its stdin and exited; herd-stdio reaped it.
    assert!(!alive(pid));
}

#[test]
fn stdio_exits_and_takes_its_child_along_when_herd_goes_away() {
    let fx = Fixture::new();
    let py = fx.enrich_py();
    let mut sup = Supervisor::start(&fx, &["python3", "-u", &py]);
    sup.send_all(vec![task(1, b"{\"n\":3}")]).join().unwrap();
    let pid = match sup.recv() {
        Some(FromWorker::Done {
            id: 1,
            outcome: Outcome::Ok(out),
        }) => serde_json::from_slice::<Value>(&out).unwrap()["pid"]
            .as_u64()
            .unwrap() as u32,
        other => panic!("want Done, got {other:?}"),
    };
    assert!(alive(pid));
    // herd vanishes mid-conversation: no termination frame, just the end of the socket.
    sup.sock.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(sup.wait_exit().code(), Some(1));
    wait_for("the child to be gone", RUN_TIMEOUT, || !alive(pid));
    let stderr = std::fs::read_to_string(fx.path("stderr")).unwrap();
    assert!(
        stderr.contains("the supervisor closed the connection"),
        "{stderr}"
    );
}

/// Issue 19: a filter that buffers its output on a pipe (`sed` without `-u`, like Debian's
/// mawk) holds every answer back and herd waits. herd-stdio says so once, with how to unbuffer
/// it, after events waited 5 s with nothing from the filter (before, there was no log line).
#[test]
fn stdio_a_filter_that_buffers_its_output_is_named_once() {
    let fx = Fixture::new();
    let input = fx.path("input");
    std::fs::write(&input, "a\nb\nc\n").unwrap();
    let args = [
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "-i",
        input.to_str().unwrap(),
        "--",
        stdio_bin(),
        "--",
        "sed",
        "s/^/x/",
    ];
    let started = std::time::Instant::now();
    let live = fx.spawn_herd(&args);
    let silent = |l: &Value| {
        l["stream"] == "stderr"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("has not answered"))
    };
    live.wait_log(
        "herd-stdio to name the silent filter",
        std::time::Duration::from_secs(60),
        |logs| logs.iter().any(silent),
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "not before 5 s of silence"
    );
    // The answers never come: a fast stop ends the run.
    signal(live.pid(), nix::sys::signal::Signal::SIGQUIT);
    let (_, records, logs) = live.finish(RUN_TIMEOUT);
    let named: Vec<&Value> = logs.iter().filter(|l| silent(l)).collect();
    assert_eq!(named.len(), 1, "once: {}", dump(&logs));
    let message = named[0]["message"].as_str().unwrap();
    assert!(
        message.contains("`sed s/^/x/`")
            && message.contains("sed -u")
            && message.contains("mawk -W interactive"),
        "{message}"
    );
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| kind(r) == "shutdown"), "{records:?}");
}
