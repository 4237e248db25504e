//! The daemon's control path at volume and under attack: many tiny events through `herd
//! submit`, concurrent and slow submitters, and hostile clients written here with a plain
//! `UnixStream` / `TcpStream` (oversize and stalled frames, idle connections, an old protocol,
//! descriptor exhaustion).

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use herd_proto::codec::{encode_frame, read_frame, MAX_FRAME_CEILING};
use herd_proto::control::{Reply, Request, CONTROL_VERSION, REPLY_MAX_FRAME};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// Bounds a test's blocking reads: long enough for a loaded machine, short enough that a
/// regression fails rather than hangs.
const READ_LIMIT: Duration = Duration::from_secs(60);

impl Daemon {
    /// A raw connection that has said Hello and been welcomed.
    fn hello(&self) -> UnixStream {
        let mut s = raw_connect(&self.control);
        send(
            &mut s,
            &Request::Hello {
                protocol: CONTROL_VERSION,
            },
        );
        match recv(&mut s) {
            Some(Reply::Welcome { .. }) => s,
            other => panic!("no welcome: {other:?}"),
        }
    }
}

fn raw_connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    s
}

fn send(s: &mut UnixStream, req: &Request) {
    let mut buf = Vec::new();
    encode_frame(req, &mut buf, MAX_FRAME_CEILING).unwrap();
    s.write_all(&buf).unwrap();
}

/// The next reply, or `None` when the daemon closed the connection.
fn recv(s: &mut UnixStream) -> Option<Reply> {
    match read_frame::<Reply, _>(s, &mut Vec::new(), REPLY_MAX_FRAME) {
        Ok(r) => r,
        Err(herd_proto::FrameError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("no reply within {READ_LIMIT:?}")
        }
        Err(_) => None,
    }
}

/// Waits until the daemon closes `s` (EOF or reset), failing after [`READ_LIMIT`].
fn wait_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the daemon kept the connection open for {READ_LIMIT:?}")
            }
            Err(_) => return,
        }
    }
}

/// Waits for a background `herd submit` (killing it and failing after [`RUN_TIMEOUT`]),
/// reading its output meanwhile.
pub(crate) fn output_of(mut child: Child) -> Run {
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = r.read_to_end(&mut all);
            all
        })
    };
    let out = child.stdout.take().map(|o| drain(Box::new(o)));
    let err = child.stderr.take().map(|e| drain(Box::new(e)));
    let status = wait_exit(&mut child, RUN_TIMEOUT, "herd submit");
    let join = |t: Option<std::thread::JoinHandle<Vec<u8>>>| {
        t.map(|t| t.join().unwrap()).unwrap_or_default()
    };
    let output = std::process::Output {
        status,
        stdout: join(out),
        stderr: join(err),
    };
    Run::new(vec!["submit".into()], output)
}

/// Every record of `n` square events, by seq and value.
pub(crate) fn check_squares(run: &Run, n: usize) {
    run.assert_success();
    for (i, r) in run.by_seq(n).iter().enumerate() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"].as_u64(), Some((i * i) as u64), "{r}");
    }
}

#[test]
fn two_hundred_thousand_tiny_events_through_one_submitter() {
    let d = Daemon::start(2, &[]);
    let n = 200_000;
    let run = output_of(d.submit_bg("ev.txt", &square_events(n), &[]));
    check_squares(&run, n);
    // Ordered, from stdin: same events, records in input order.
    let out =
        d.fx.herd(&["submit", "--ordered", "--control", d.ctl()])
            .write_stdin(square_events(50_000))
            .output()
            .unwrap();
    let ordered = Run::new(vec!["submit --ordered".into()], out);
    ordered.assert_success();
    let seqs = ordered.seqs();
    assert_eq!(seqs, (0..50_000).collect::<Vec<u64>>(), "input order");
    check_squares(&ordered, 50_000);
    let st = d.status();
    assert_eq!(
        st["totals"]["ok"], 250_000,
        "the daemon counted what was delivered"
    );
    d.stop_ok();
}

#[test]
fn eight_concurrent_submitters_of_25000_each() {
    let d = Daemon::start(2, &[]);
    let n = 25_000;
    let events = square_events(n);
    let subs: Vec<Child> = (0..8)
        .map(|i| d.submit_bg(&format!("ev{i}.txt"), &events, &[]))
        .collect();
    for sub in subs {
        check_squares(&output_of(sub), n);
    }
    assert_eq!(d.status()["totals"]["ok"], 8 * n);
    d.stop_ok();
}

#[test]
fn a_slow_reader_slows_only_itself() {
    let d = Daemon::start(2, &["--queue", "1000"]);
    let slow_n = 100_000;
    // Nobody reads this one's stdout: it stalls once the pipe and its buffers are full.
    let mut slow = d.submit_bg("slow.txt", &square_events(slow_n), &[]);
    let slow_out = slow.stdout.take().unwrap();
    d.status();
    let fast_n = 25_000;
    let fast = output_of(d.submit_bg("fast.txt", &square_events(fast_n), &[]));
    check_squares(&fast, fast_n);
    // The stalled submitter holds the daemon to its credits: what the daemon produced for it
    // is what fits in its credits, the socket, and the client's buffers and pipe; far from
    // all of it.
    let st = d.status();
    let for_slow = st["totals"]["ok"].as_u64().unwrap() - fast_n as u64;
    assert!(
        for_slow < 40_000,
        "{for_slow} records produced for a submitter that read none"
    );
    assert!(
        rss(d.live.pid()) < 200 << 20,
        "daemon memory {} bytes",
        rss(d.live.pid())
    );
    // Now read it: every record arrives.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::io::BufReader::new(slow_out)
            .read_to_end(&mut all)
            .unwrap();
        all
    });
    let mut run = output_of(slow);
    run.out.stdout = reader.join().unwrap();
    let run = Run::new(vec!["slow submit".into()], run.out);
    check_squares(&run, slow_n);
    d.stop_ok();
}

#[test]
fn lines_at_the_pool_limit_pass_and_a_longer_one_is_rejected_alone() {
    // The default --max-frame is 16MiB; the pool takes lines up to 32 bytes less.
    let limit = 16 * 1024 * 1024 - 32;
    let d = Daemon::start(1, &[]);
    let mut input = Vec::new();
    let mut want = Vec::new();
    let mut push = |line: Vec<u8>, kind: &'static str| {
        input.extend_from_slice(&line);
        input.push(b'\n');
        want.push(kind);
    };
    for round in 0..3 {
        for i in 0..300 {
            push(
                format!("{{\"op\":\"square\",\"n\":{i}}}").into_bytes(),
                "ok",
            );
        }
        // Not JSON, so the worker answers `failed` at once: these lines travelled whole.
        push(vec![b'x'; limit - round], "failed");
        push(vec![b'y'; limit / 2 + round], "failed");
        push(vec![b'z'; limit / 2], "failed");
    }
    push(vec![b'o'; limit + 1], "rejected");
    for i in 0..300 {
        push(
            format!("{{\"op\":\"square\",\"n\":{i}}}").into_bytes(),
            "ok",
        );
    }
    let out =
        d.fx.herd(&["submit", "--control", d.ctl()])
            .write_stdin(input)
            .output()
            .unwrap();
    let run = Run::new(vec!["submit".into()], out);
    run.assert_success();
    let recs = run.by_seq(want.len());
    for (r, kind_wanted) in recs.iter().zip(&want) {
        assert_eq!(kind(r), *kind_wanted, "seq {}: {}", r["seq"], r["error"]);
    }
    d.stop_ok();
}

#[test]
fn oversize_garbage_and_stalled_frames_cost_the_daemon_nothing() {
    let d = Daemon::start(1, &["--idle-timeout", "3s"]);
    let before = rss(d.live.pid());
    // A 64 MiB frame header before any Submit: closed at once, nothing reserved.
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let mut s = d.hello();
        let _ = s.write_all(&(60u32 << 20).to_le_bytes());
        let _ = s.write_all(&vec![0u8; 1 << 20]);
        wait_closed(&mut s);
        hogs.push(s);
    }
    // The same inside a submission, within the frame cap: the frame has its deadline.
    for _ in 0..8 {
        let mut s = d.hello();
        send(&mut s, &Request::Submit { ordered: false });
        // The daemon may already have given up on a slow writer: errors are fine here.
        let _ = s.write_all(&(8u32 << 20).to_le_bytes());
        let _ = s.write_all(&vec![0u8; 4 << 20]);
        hogs.push(s);
    }
    for s in &mut hogs {
        wait_closed(s);
    }
    // Garbage inside a submission, and a request that does not belong there.
    let mut s = d.hello();
    send(&mut s, &Request::Submit { ordered: false });
    s.write_all(&[5, 0, 0, 0, 200, 200, 200, 200, 200]).unwrap();
    wait_closed(&mut s);
    let mut s = d.hello();
    send(&mut s, &Request::Submit { ordered: false });
    send(&mut s, &Request::Status);
    wait_closed(&mut s);
    let grown = rss(d.live.pid()).saturating_sub(before);
    assert!(grown < 48 << 20, "the daemon grew by {grown} bytes");
    // It serves on as if nothing happened.
    let run =
        d.fx.herd(&["submit", "--control", d.ctl()])
            .write_stdin(square_events(1000))
            .output()
            .unwrap();
    check_squares(&Run::new(vec!["submit".into()], run), 1000);
    d.stop_ok();
}

#[test]
fn an_old_client_gets_a_clear_error() {
    let d = Daemon::start(1, &[]);
    let mut s = raw_connect(&d.control);
    send(&mut s, &Request::Hello { protocol: 1 });
    match recv(&mut s) {
        Some(Reply::Error(e)) => {
            assert!(e.contains("control protocol 1 is not supported"), "{e}");
            assert!(e.contains("matches the daemon"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    wait_closed(&mut s);
    d.stop_ok();
}

#[test]
fn idle_connections_time_out_and_the_one_over_the_cap_waits_its_turn() {
    let d = Daemon::start(1, &["--max-connections", "3", "--idle-timeout", "2s"]);
    // Three idle connections: one silent, two welcomed and then silent.
    let mut idle = vec![raw_connect(&d.control), d.hello(), d.hello()];
    // The fourth is served once the idle ones have timed out.
    output_ok(&mut d.fx.herd(&["status", "--control", d.ctl()]));
    for s in &mut idle {
        wait_closed(s);
    }
    assert_eq!(d.status()["phase"], "running");
    // A submission may sit idle longer than that while its producer thinks.
    let mut sub = d.fx.spawn_herd(&["submit", "--control", d.ctl()]);
    sub.write(b"{\"op\":\"square\",\"n\":3}\n");
    wait_for("the first record", RUN_TIMEOUT, || {
        sub.records_so_far() == 1
    });
    let idle_from = std::time::Instant::now();
    wait_for("two idle timeouts to pass", RUN_TIMEOUT, || {
        idle_from.elapsed() > Duration::from_secs(5)
    });
    sub.write(b"{\"op\":\"square\",\"n\":4}\n");
    sub.close_stdin();
    let (status, records, _) = sub.finish(RUN_TIMEOUT);
    assert!(status.success());
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["output"], 16);
    d.stop_ok();
}

/// A process whose JSON log lines (stderr) are collected as they come. Killed on drop.
struct Logged {
    child: Child,
    logs: Arc<(Mutex<Vec<Value>>, Condvar)>,
}

impl Logged {
    fn spawn(fx: &Fixture, program: &str, args: &[&str]) -> Self {
        let mut child = fx
            .std_command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                l.0.lock().unwrap().push(v);
                l.1.notify_all();
            }
        });
        Self { child, logs }
    }

    fn logs(&self) -> Vec<Value> {
        self.logs.0.lock().unwrap().clone()
    }

    fn wait_log(&self, what: &str, mut pred: impl FnMut(&[Value]) -> bool) {
        let (m, cv) = &*self.logs;
        let start = std::time::Instant::now();
        let mut guard = m.lock().unwrap();
        while !pred(&guard) {
            let left = RUN_TIMEOUT
                .checked_sub(start.elapsed())
                .unwrap_or_else(|| panic!("timed out waiting for {what}; log:\n{}", dump(&guard)));
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    fn worker_pids(logs: &[Value]) -> HashSet<u64> {
        logs.iter()
            .filter(|l| l["message"] == "worker ready")
            .filter_map(|l| l["pid"].as_u64())
            .collect()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn connections_cannot_take_the_descriptors_a_respawn_needs() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let ctl = control.to_str().unwrap();
    // A low descriptor limit, hard as well as soft, so the daemon cannot raise it.
    let script = format!(
        "ulimit -n 128 && exec {} serve --log-format json --control {ctl} -w 2 --metrics \
         127.0.0.1:0 --idle-timeout 600s -- {}",
        herd_bin(),
        chaos()
    );
    let mut daemon = Logged::spawn(&fx, "sh", &["-c", &script]);
    daemon.wait_log("ready", |l| l.iter().any(|x| x["message"] == "ready"));
    let logs = daemon.logs();
    let ready = logs.iter().find(|x| x["message"] == "ready").unwrap();
    let metrics: std::net::SocketAddr = ready["metrics"].as_str().unwrap().parse().unwrap();
    assert!(
        logs.iter()
            .any(|x| x["message"].as_str().is_some_and(|m| m.contains("lowered"))),
        "the cap was lowered to fit: {}",
        dump(&logs)
    );
    let cap = logs
        .iter()
        .find_map(|x| x["cap"].as_u64())
        .unwrap_or_else(|| panic!("{}", dump(&logs))) as usize;
    assert!(cap < 150, "{cap}");
    // 150 control connections: the first `cap` are welcomed, the others wait their turn
    // (unaccepted, they hold no descriptor of the daemon's).
    let mut held: Vec<UnixStream> = (0..150)
        .map(|_| {
            let mut s = raw_connect(&control);
            send(
                &mut s,
                &Request::Hello {
                    protocol: CONTROL_VERSION,
                },
            );
            s
        })
        .collect();
    let waiting = held.split_off(cap);
    for s in &mut held {
        assert!(matches!(recv(s), Some(Reply::Welcome { .. })));
    }
    // And 150 to the metrics port.
    let tcp: Vec<std::net::TcpStream> = (0..150)
        .map(|_| std::net::TcpStream::connect(metrics).unwrap())
        .collect();
    // A killed worker is still replaced.
    let before = Logged::worker_pids(&daemon.logs());
    let victim = *before.iter().next().unwrap();
    signal(victim as u32, Signal::SIGKILL);
    daemon.wait_log("a replacement worker", |l| {
        Logged::worker_pids(l).difference(&before).count() == 1
    });
    // Once the connections go, the waiting ones are served in turn, and then anyone.
    drop(held);
    for mut s in waiting {
        assert!(matches!(recv(&mut s), Some(Reply::Welcome { .. })));
    }
    drop(tcp);
    wait_for("herd status to answer", RUN_TIMEOUT, || {
        fx.herd(&["status", "--control", ctl])
            .output()
            .unwrap()
            .status
            .success()
    });
    let out = fx
        .herd(&["submit", "--control", ctl])
        .write_stdin(square_events(2000))
        .output()
        .unwrap();
    check_squares(&Run::new(vec!["submit".into()], out), 2000);
    output_ok(&mut fx.herd(&["ctl", "--control", ctl, "stop"]));
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{}", dump(&daemon.logs()));
    assert!(!control.exists());
}

#[test]
fn a_regular_file_at_the_control_path_is_left_alone() {
    let fx = Fixture::new();
    let path = fx.path("precious.txt");
    std::fs::write(&path, "keep me\n").unwrap();
    let out = fx
        .herd(&["serve", "--control", path.to_str().unwrap(), "--", chaos()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me\n");
}

#[test]
fn submit_fails_clearly_when_its_input_cannot_be_read() {
    let d = Daemon::start(1, &[]);
    let dir = d.fx.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let out =
        d.fx.herd(&["submit", "--control", d.ctl(), "-i", dir.to_str().unwrap()])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = stderr
        .lines()
        .find(|l| l.starts_with("herd: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("cannot read input"), "{stderr}");
    assert!(line.contains("a-directory"), "{stderr}");
    d.stop_ok();
}

#[test]
fn a_daemon_that_stops_mid_submission_is_reported_after_the_records() {
    let d = Daemon::start(1, &[]);
    let mut sub = d.fx.spawn_herd(&["submit", "--control", d.ctl()]);
    sub.write(square_events(3).as_bytes());
    wait_for("three records", RUN_TIMEOUT, || sub.records_so_far() == 3);
    // Its input stays open while the daemon stops.
    output_ok(&mut d.fx.herd(&["ctl", "--control", d.ctl(), "stop"]));
    wait_for("herd submit to notice", RUN_TIMEOUT, || {
        sub.child.try_wait().unwrap().is_some()
    });
    let (status, records, logs) = sub.finish(RUN_TIMEOUT);
    assert!(!status.success());
    assert_eq!(records.len(), 3);
    let text = dump(&logs);
    assert!(
        text.contains("the daemon stopped before the submission ended"),
        "{text}"
    );
    let (status, _, logs) = d.live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
}

/// `n` events that each sleep `ms` milliseconds.
fn sleep_events(n: usize, ms: u64) -> Vec<u8> {
    format!("{{\"op\":\"sleep\",\"ms\":{ms}}}\n")
        .repeat(n)
        .into_bytes()
}

/// The daemon stops (`sig`) while one `herd submit` still has thousands of events queued:
/// every one of them still reaches it, `shutdown` records for those that never ran, and the
/// daemon exits only after that (issue 19, item 1).
fn a_stop_delivers_every_record_to_the_submitter(workers: &str, extra: &[&str], sig: Signal) {
    let fx = Fixture::new();
    let control = fx.path("control.sock");
    let live = fx.serve_w(&control, workers, extra);
    let d = Daemon { fx, live, control };
    let mut sub = d.fx.spawn_herd(&["submit", "--control", d.ctl()]);
    let feeder = sub.feed(sleep_events(4000, 50));
    wait_for("the first records", RUN_TIMEOUT, || {
        sub.records_so_far() >= 20
    });
    signal(d.live.pid(), sig);
    let (status, records, logs) = sub.finish(RUN_TIMEOUT);
    feeder.join().unwrap();
    assert!(status.success(), "{}", dump(&logs));
    assert_eq!(records.len(), 4000, "{}", dump(&logs));
    let seqs: HashSet<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), 4000);
    let shutdown = records.iter().filter(|r| kind(r) == "shutdown").count();
    assert!(
        (1..=3980).contains(&shutdown),
        "{shutdown} shutdown records"
    );
    let (status, _, logs) = d.live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    assert!(!d.control.exists(), "control socket removed");
}

#[test]
fn a_fast_stop_delivers_every_record_to_a_connected_submitter() {
    a_stop_delivers_every_record_to_the_submitter("1", &[], Signal::SIGQUIT);
}

#[test]
fn a_fast_stop_delivers_every_record_to_a_connected_submitter_under_autoscaling() {
    a_stop_delivers_every_record_to_the_submitter("1..2", &[], Signal::SIGQUIT);
}

#[test]
fn a_graceful_stop_past_its_grace_delivers_every_record_to_a_connected_submitter() {
    a_stop_delivers_every_record_to_the_submitter("1", &["--grace", "1s"], Signal::SIGTERM);
}

#[test]
fn a_submitter_that_does_not_read_is_given_up_on_at_the_delivery_deadline() {
    let d = Daemon::start(1, &["--delivery-timeout", "2s"]);
    let mut s = d.hello();
    send(&mut s, &Request::Submit { ordered: false });
    let line = serde_bytes::ByteBuf::from(sleep_events(1, 50).trim_ascii_end().to_vec());
    send(&mut s, &Request::Events(vec![Some(line); 4000]));
    send(&mut s, &Request::End);
    // It reads its first three records, then stops reading: later records wait in the socket
    // buffer, and once the stop's `shutdown` records fill it, the rest stay with the daemon.
    // (Waiting on the status's `ok` instead raced: a settled record may not be written yet.)
    let mut read = 0;
    while read < 3 {
        let Some(Reply::Records(body)) = recv(&mut s) else {
            panic!("records expected")
        };
        read += body.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    d.wait_status("the events to be queued", |st| {
        st["queued"].as_u64().unwrap() >= 3000
    });
    let stopped = std::time::Instant::now();
    signal(d.live.pid(), Signal::SIGQUIT);
    let (status, _, logs) = d.live.finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(3), "{}", dump(&logs));
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "bounded by --delivery-timeout"
    );
    let lost = logs
        .iter()
        .find_map(|l| l["undelivered"].as_u64())
        .unwrap_or_else(|| panic!("{}", dump(&logs)));
    // What it can still read is exactly what the daemon did not count as lost.
    while let Some(reply) = recv(&mut s) {
        let Reply::Records(body) = reply else {
            panic!("{reply:?}")
        };
        read += body.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    eprintln!("{read} records read, {lost} not delivered");
    assert!(lost > 0 && read >= 3, "{read} read, {lost} lost");
    assert_eq!(read + lost, 4000);
}

#[test]
fn submitters_over_the_connection_cap_wait_for_their_turn() {
    let d = Daemon::start(2, &["--max-connections", "4"]);
    let input = d.fx.path("one.jsonl");
    std::fs::write(&input, "{\"op\":\"square\",\"n\":7}\n").unwrap();
    // Files, not pipes: 500 children must not take 1,000 descriptors of this process.
    let children: Vec<_> = (0..500)
        .map(|i| {
            let out = d.fx.path(&format!("out{i}"));
            let err = std::fs::File::create(d.fx.path(&format!("err{i}"))).unwrap();
            let child =
                d.fx.std_command(herd_bin())
                    .args(["submit", "--control", d.ctl(), "-i"])
                    .arg(&input)
                    .arg("-o")
                    .arg(&out)
                    .stdout(Stdio::null())
                    .stderr(err)
                    .spawn()
                    .unwrap();
            (i, child)
        })
        .collect();
    for (i, mut child) in children {
        let status = child.wait().unwrap();
        let err = std::fs::read_to_string(d.fx.path(&format!("err{i}"))).unwrap();
        assert!(status.success(), "submitter {i}: {err}");
        let out = std::fs::read_to_string(d.fx.path(&format!("out{i}"))).unwrap();
        let record: Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(record["output"], 49, "submitter {i}");
    }
    let logs = d.live.logs();
    assert!(
        logs.iter()
            .any(|l| l["message"] == "control connections at their limit; new ones wait for a turn"),
        "the cap was reached: {}",
        dump(&logs)
    );
    d.stop_ok();
}

#[test]
fn half_sent_frames_cannot_pin_more_than_the_shared_budget() {
    // Lines up to 4 MiB: each connection may legally send an `Events` frame of about that.
    let d = Daemon::start(1, &["--max-frame", "4MiB", "--idle-timeout", "2s"]);
    let max_frame = {
        let mut s = raw_connect(&d.control);
        send(
            &mut s,
            &Request::Hello {
                protocol: CONTROL_VERSION,
            },
        );
        match recv(&mut s) {
            Some(Reply::Welcome { max_frame, .. }) => max_frame as usize,
            other => panic!("{other:?}"),
        }
    };
    let pid = d.live.pid();
    let base = rss(pid);
    // 48 connections each send 3.5 MiB of a frame and stall: 168 MiB if each kept its half.
    let threads: Vec<_> = (0..48)
        .map(|_| {
            let mut s = d.hello();
            send(&mut s, &Request::Submit { ordered: false });
            std::thread::spawn(move || {
                let mut half = (max_frame as u32 - 64).to_le_bytes().to_vec();
                half.resize(4 + 3584 * 1024, b'x');
                // Blocks while the daemon does not read; fails once it gives up on us.
                let _ = s.write_all(&half);
                wait_closed(&mut s);
            })
        })
        .collect();
    let mut peak = 0;
    wait_for("every half frame to time out", RUN_TIMEOUT, || {
        peak = peak.max(rss(pid));
        threads.iter().all(|t| t.is_finished())
    });
    let grown = peak.saturating_sub(base) >> 20;
    eprintln!("the daemon grew by {grown} MiB at most");
    // The budget (64 MiB) plus 128 KiB per connection, and room for the allocator.
    assert!(grown < 100, "the daemon grew by {grown} MiB");
    assert_eq!(d.status()["phase"], "running");
    d.stop_ok();
}
