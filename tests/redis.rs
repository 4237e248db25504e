//! `herd serve --redis`: several daemons in one Redis Streams consumer group, against a real
//! `redis-server` started by each test on 127.0.0.1 with a free port and its data in a temp
//! dir (append-only file, fsynced at every write, so a killed server loses nothing).
//!
//! The server binary comes from Debian's `redis-server` package (or `REDIS_SERVER=/path`). A
//! missing binary fails the test with how to install it: these tests never skip.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use redis::{Commands, Value as RValue};
use serde_json::Value;

use crate::util::*;

/// Generous: the machine is small and shared.
const LIMIT: Duration = Duration::from_secs(120);
const STREAM: &str = "herd:events";
const RESULTS: &str = "herd:events:results";
const GROUP: &str = "herd";

fn redis_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found: these tests need a real Redis server. Install it with \
                 `apt-get install redis-server` (Debian), or set REDIS_SERVER=/path/to/redis-server"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server on 127.0.0.1, its data in a temp dir. Killed on drop.
pub struct RedisServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herd-redis-")
            .tempdir()
            .unwrap();
        let mut s = RedisServer {
            dir,
            port: 0,
            child: None,
        };
        // A port picked free may be taken before the server binds it: try again.
        for _ in 0..5 {
            s.port = free_port();
            if s.launch() {
                return s;
            }
        }
        panic!("redis-server did not start; see {}", s.log().display());
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn launch(&mut self) -> bool {
        let port = self.port.to_string();
        let mut child = Command::new(redis_server_bin())
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--logfile",
            ])
            .arg(self.log())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            // Up once it answers, its data loaded.
            let ready = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if ready {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops the server (SIGTERM: it writes its data out, waited for) and starts it again on
    /// the same port and data.
    pub fn restart(&mut self) {
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
        assert!(self.launch(), "redis-server did not come back");
    }

    /// SIGKILLs the server, waited for.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed server again on the same port and data.
    pub fn relaunch(&mut self) {
        assert!(self.launch(), "redis-server did not come back");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test's own connection.
pub struct Client(redis::Connection);

impl Client {
    pub fn connect(server: &RedisServer) -> Self {
        let c = redis::Client::open(server.url()).unwrap();
        Client(c.get_connection_with_timeout(LIMIT).unwrap())
    }

    /// Adds `events` (each as its `event` field), in order; their entry ids.
    pub fn add(&mut self, events: impl IntoIterator<Item = String>) -> Vec<String> {
        self.add_fields(events.into_iter().map(|e| vec![("event".to_string(), e)]))
    }

    /// Adds entries with the given fields, in order; their entry ids.
    pub fn add_fields(
        &mut self,
        entries: impl IntoIterator<Item = Vec<(String, String)>>,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        let mut pipe = redis::pipe();
        let mut batched = 0;
        for fields in entries {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(STREAM).arg("*");
            for (k, v) in fields {
                cmd.arg(k).arg(v);
            }
            pipe.add_command(cmd);
            batched += 1;
            if batched == 1000 {
                ids.extend(pipe.query::<Vec<String>>(&mut self.0).unwrap());
                pipe.clear();
                batched = 0;
            }
        }
        if batched > 0 {
            ids.extend(pipe.query::<Vec<String>>(&mut self.0).unwrap());
        }
        ids
    }

    pub fn results_count(&mut self) -> u64 {
        self.0.xlen(RESULTS).unwrap()
    }

    /// The group's pending entries (delivered, not acknowledged), across every consumer.
    pub fn pending(&mut self) -> u64 {
        let v: RValue = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query(&mut self.0)
            .unwrap();
        match v {
            RValue::Array(a) => match a.first() {
                Some(RValue::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Entries pending to `consumer`.
    pub fn pending_to(&mut self, consumer: &str) -> u64 {
        let v: Vec<RValue> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(100_000)
            .arg(consumer)
            .query(&mut self.0)
            .unwrap();
        v.len() as u64
    }

    /// Pending entries idle for `idle` at least (claimable with that claim time).
    pub fn pending_idle(&mut self, idle: Duration) -> u64 {
        let v: Vec<RValue> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(100_000)
            .query(&mut self.0)
            .unwrap();
        v.len() as u64
    }

    /// Every line of the results stream in order: the entry id and the record or chunk line
    /// (`chunk` tells which).
    pub fn lines(&mut self) -> Vec<(String, Value, bool)> {
        let mut out = Vec::new();
        let mut start = "-".to_string();
        loop {
            let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(RESULTS)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(5000)
                .query(&mut self.0)
                .unwrap();
            let Some((last, _)) = v.last() else { break };
            start = format!("({last}");
            for (_, fields) in v {
                let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
                let id = get("id").expect("a results entry has an id field");
                let (line, chunk) = match (get("record"), get("chunk")) {
                    (Some(r), None) => (r, false),
                    (None, Some(c)) => (c, true),
                    other => panic!("a results entry has a record or a chunk: {other:?}"),
                };
                out.push((id, serde_json::from_str(&line).unwrap(), chunk));
            }
        }
        out
    }

    /// Waits until the results stream holds `n` final records, then reads them by entry id.
    /// Panics on a second final record for one entry.
    pub fn results(&mut self, n: u64) -> HashMap<String, Value> {
        wait_for(&format!("{n} records in {RESULTS}"), LIMIT, || {
            self.results_count() >= n
        });
        let mut by_id = HashMap::new();
        for (id, r, chunk) in self.lines() {
            if chunk {
                continue;
            }
            assert_eq!(
                r["id"].as_str(),
                Some(id.as_str()),
                "the record's id is the entry's: {r}"
            );
            assert!(
                by_id.insert(id.clone(), r).is_none(),
                "two records for entry {id}"
            );
        }
        by_id
    }
}

fn square(i: u64) -> String {
    format!("{{\"op\":\"square\",\"n\":{i}}}")
}

/// `herd serve` on `server`'s group, with `extra` options, once it has joined.
fn daemon(fx: &Fixture, name: &str, server: &RedisServer, workers: usize, extra: &[&str]) -> Live {
    let control = fx.path(&format!("{name}.sock"));
    let url = server.url();
    let consumer = format!("herd-test-{name}");
    let mut args = vec![
        "--redis",
        url.as_str(),
        "--redis-consumer",
        consumer.as_str(),
    ];
    args.extend_from_slice(extra);
    let live = fx.serve(&control, workers, &args);
    live.wait_log("the group joined", LIMIT, |l| {
        l.iter()
            .any(|x| x["message"] == "Redis consumer group joined")
    });
    live
}

/// `herd status --json` of the daemon `name`.
fn status(fx: &Fixture, name: &str) -> Value {
    let control = fx.path(&format!("{name}.sock"));
    let out =
        output_ok(&mut fx.herd(&["status", "--control", control.to_str().unwrap(), "--json"]));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn redis_source(st: &Value) -> &Value {
    st["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "redis"))
        .unwrap_or_else(|| panic!("no redis source in status: {st}"))
}

fn number(st: &Value, key: &str) -> u64 {
    redis_source(st)["numbers"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {st}"))
}

/// Stops a daemon with `sig` and waits for it; it must exit 0.
fn stop(live: Live, sig: Signal) -> Vec<Value> {
    signal(live.pid(), sig);
    let (st, _, logs) = live.finish(LIMIT);
    assert!(st.success(), "{}", dump(&logs));
    logs
}

fn stopped_line(logs: &[Value]) -> &Value {
    logs.iter()
        .find(|l| l["message"] == "Redis intake stopped")
        .unwrap_or_else(|| panic!("{}", dump(logs)))
}

#[test]
fn redis_twenty_thousand_entries_three_daemons_one_killed() {
    const N: u64 = 20_000;
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    let fx = Fixture::new();
    let opts = ["--redis-claim-idle", "2s"];
    // The victim starts alone, so that it surely holds entries when it is caught: frozen,
    // and kept frozen only if entries are pending to it then (else let go and caught again).
    let victim = daemon(&fx, "c", &server, 1, &opts);
    let ids = redis.add((0..N).map(square));
    wait_for("the victim to hold entries", LIMIT, || {
        signal(victim.pid(), Signal::SIGSTOP);
        if redis.pending_to("herd-test-c") > 0 {
            return true;
        }
        signal(victim.pid(), Signal::SIGCONT);
        false
    });
    // Two more join mid-stream; the victim dies holding its entries: they must claim them.
    let a = daemon(&fx, "a", &server, 1, &opts);
    let b = daemon(&fx, "b", &server, 1, &opts);
    let held = redis.pending_to("herd-test-c");
    signal(victim.pid(), Signal::SIGKILL);
    drop(victim);
    let records = redis.results(N);
    assert_eq!(records.len() as u64, N, "one record per entry");
    for (n, id) in ids.iter().enumerate() {
        let r = &records[id];
        let n = n as u64;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"].as_u64(), Some(n * n), "{r}");
    }
    // Every entry settled: nothing pending to anyone.
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    assert_eq!(
        redis.results_count(),
        N,
        "no second record for a claimed entry"
    );
    let (sa, sb) = (status(&fx, "a"), status(&fx, "b"));
    let claimed = number(&sa, "claimed") + number(&sb, "claimed");
    assert!(claimed > 0, "the victim's entries were claimed: {sa} {sb}");
    let acked = number(&sa, "acked") + number(&sb, "acked");
    assert!(acked < N, "the victim did some: {acked}");
    eprintln!("the victim held {held} when killed; the others claimed {claimed}");
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

#[test]
fn redis_failures_map_onto_deliveries() {
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
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
    let mut ids = redis.add(events.iter().map(|(_, e)| e.to_string()));
    // Entries herd cannot take an event from: another field only, and a binary one.
    ids.extend(redis.add_fields([
        vec![("data".to_string(), "x".to_string())],
        vec![("Event".to_string(), "\u{1}\u{2}".to_string())],
    ]));
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
            "--redis-max-deliver",
            "3",
            "--redis-claim-idle",
            "1s",
        ],
    );
    let records = redis.results(ids.len() as u64);
    let name_of: Vec<&str> = events
        .iter()
        .map(|(n, _)| *n)
        .chain(["no event field", "wrong field"])
        .collect();
    let by_name: HashMap<&str, &Value> = name_of
        .iter()
        .zip(&ids)
        .map(|(name, id)| (*name, &records[id]))
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
    // Retryable: handed back each time, until the last delivery allowed writes the record.
    check("retryable", Some("failed"), 3);
    // The worker sees the delivery count as its attempt: it succeeds on the second.
    check("flaky", None, 2);
    assert_eq!(by_name["flaky"]["output"], 2);
    check("ok", None, 1);
    assert_eq!(by_name["ok"]["output"], 49);
    // Not events: quarantined with a record, never run.
    for name in ["no event field", "wrong field"] {
        check(name, Some("rejected"), 0);
        let msg = by_name[name]["error"]["message"].as_str().unwrap();
        assert!(msg.contains("no field `event`"), "{msg}");
    }
    // Nothing is left pending: every entry was acknowledged.
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    let st = status(&fx, "d");
    // Deliveries: 3 for the retryable, 2 for the flaky, 1 for each of the other 8.
    assert_eq!(
        number(&st, "read") + number(&st, "claimed"),
        3 + 2 + 8,
        "{st}"
    );
    assert_eq!(number(&st, "claimed"), 2 + 1, "{st}");
    assert_eq!(number(&st, "released"), 2 + 1, "{st}");
    assert_eq!(number(&st, "acked"), ids.len() as u64, "{st}");
    assert_eq!(number(&st, "garbage"), 2, "{st}");
    assert_eq!(redis.results_count(), ids.len() as u64);
    stop(d, Signal::SIGTERM);
}

/// An entry claimed past the max deliveries (its daemons died running it) is quarantined
/// with a record, not run again.
#[test]
fn redis_an_entry_past_max_deliveries_is_quarantined() {
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    let ids = redis.add([square(3)]);
    // Three consumers that "died" holding it: read, then claimed twice.
    let _: RValue = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .query(&mut redis.0)
        .unwrap();
    let _: RValue = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("dead-1")
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query(&mut redis.0)
        .unwrap();
    for dead in ["dead-2", "dead-3"] {
        let _: RValue = redis::cmd("XCLAIM")
            .arg(STREAM)
            .arg(GROUP)
            .arg(dead)
            .arg(0)
            .arg(&ids[0])
            .query(&mut redis.0)
            .unwrap();
    }
    let fx = Fixture::new();
    let d = daemon(
        &fx,
        "d",
        &server,
        1,
        &["--redis-max-deliver", "3", "--redis-claim-idle", "100ms"],
    );
    let records = redis.results(1);
    let r = &records[&ids[0]];
    assert_eq!(r["error"]["kind"], "rejected", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("delivered 4 times"), "{msg}");
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    let st = status(&fx, "d");
    assert_eq!(number(&st, "quarantined"), 1, "{st}");
    assert_eq!(st["totals"]["ok"], 0, "never run: {st}");
    stop(d, Signal::SIGTERM);
}

#[test]
fn redis_long_task_is_not_claimed_while_it_runs() {
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    let fx = Fixture::new();
    // Two daemons: a claim would go to the idle one.
    let opts = ["--redis-claim-idle", "1s"];
    let a = daemon(&fx, "a", &server, 1, &opts);
    let b = daemon(&fx, "b", &server, 1, &opts);
    let ids = redis.add([r#"{"op":"sleep","ms":4000}"#.to_string()]);
    let records = redis.results(1);
    let r = &records[&ids[0]];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["attempts"], 1, "one delivery: {r}");
    let (sa, sb) = (status(&fx, "a"), status(&fx, "b"));
    assert_eq!(number(&sa, "read") + number(&sb, "read"), 1);
    assert_eq!(
        number(&sa, "claimed") + number(&sb, "claimed"),
        0,
        "{sa} {sb}"
    );
    assert!(
        number(&sa, "touched") + number(&sb, "touched") >= 3,
        "kept claimed while it ran: {sa} {sb}"
    );
    assert_eq!(redis.results_count(), 1);
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

/// Two daemons run one entry: one is paused (SIGSTOP) past the claim time, the other claims
/// its entries and finishes them; the paused one, resumed, finishes them too, and its
/// settles are refused: one final record per entry.
#[test]
fn redis_a_paused_daemon_whose_entries_were_claimed_writes_no_second_record() {
    const N: u64 = 20;
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    let fx = Fixture::new();
    let opts = ["--redis-claim-idle", "1s"];
    let a = daemon(&fx, "a", &server, 2, &opts);
    let ids = redis.add((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":1500,\"n\":{i}}}")));
    wait_for("a to hold entries", LIMIT, || {
        number(&status(&fx, "a"), "held") >= 2
    });
    signal(a.pid(), Signal::SIGSTOP);
    let b = daemon(&fx, "b", &server, 2, &opts);
    wait_for("b to claim a's entries", LIMIT, || {
        number(&status(&fx, "b"), "claimed") >= 2
    });
    signal(a.pid(), Signal::SIGCONT);
    let records = redis.results(N);
    assert_eq!(records.len() as u64, N);
    for id in &ids {
        assert_eq!(records[id]["ok"], true, "{}", records[id]);
    }
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    wait_for("a to drop what it finished late", LIMIT, || {
        let st = status(&fx, "a");
        number(&st, "held") == 0 && number(&st, "dropped") + number(&st, "lost") >= 2
    });
    assert_eq!(redis.results_count(), N, "no second record");
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

#[test]
fn redis_server_restart_pauses_and_resumes() {
    const N: u64 = 3_000;
    let mut server = RedisServer::start();
    let mut redis = Client::connect(&server);
    // Slow enough that the restart lands mid-stream.
    let ids = redis.add((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":1,\"n\":{i}}}")));
    let fx = Fixture::new();
    let opts = ["--redis-claim-idle", "3s"];
    let a = daemon(&fx, "a", &server, 1, &opts);
    let b = daemon(&fx, "b", &server, 1, &opts);
    wait_for("records to flow", LIMIT, || redis.results_count() >= 300);
    server.restart();
    let mut redis = Client::connect(&server);
    wait_for("both daemons to notice", LIMIT, || {
        [&a, &b].iter().all(|d| {
            d.logs().iter().any(|l| {
                l["message"] == "Redis disconnected: intake paused until the connection is back"
            })
        })
    });
    let records = redis.results(N);
    assert_eq!(records.len() as u64, N);
    for id in &ids {
        assert_eq!(records[id]["ok"], true, "{}", records[id]);
    }
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    for (name, d) in [("a", &a), ("b", &b)] {
        let st = status(&fx, name);
        assert_eq!(redis_source(&st)["connected"], true, "{st}");
        let connects = d
            .logs()
            .iter()
            .filter(|l| l["message"] == "Redis connected")
            .count();
        assert!(connects >= 2, "{name} reconnected");
    }
    assert_eq!(redis.results_count(), N);
    stop(a, Signal::SIGTERM);
    stop(b, Signal::SIGTERM);
}

/// The server goes away (killed) mid-stream: intake pauses, nothing held is dropped, and
/// once the server is back every entry gets exactly one record.
#[test]
fn redis_connection_loss_pauses_intake() {
    const N: u64 = 500;
    let mut server = RedisServer::start();
    let mut redis = Client::connect(&server);
    let ids = redis.add((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":10,\"n\":{i}}}")));
    let fx = Fixture::new();
    // A small queue: it holds a few entries at a time.
    let a = daemon(
        &fx,
        "a",
        &server,
        2,
        &["--redis-claim-idle", "5s", "--queue", "16"],
    );
    wait_for("records to flow", LIMIT, || redis.results_count() >= 20);
    server.kill();
    a.wait_log("the disconnection", LIMIT, |l| {
        l.iter().any(|x| {
            x["message"] == "Redis disconnected: intake paused until the connection is back"
        })
    });
    // What it held has run, and waits to be settled; nothing new comes in.
    wait_for("the held entries to run", LIMIT, || {
        let st = status(&fx, "a");
        st["queued"] == 0 && st["inflight"] == 0 && number(&st, "held") > 0
    });
    let st = status(&fx, "a");
    assert_eq!(redis_source(&st)["connected"], false, "{st}");
    let taken = number(&st, "read");
    assert!(taken < N, "{st}");
    server.relaunch();
    let mut redis = Client::connect(&server);
    let records = redis.results(N);
    assert_eq!(records.len() as u64, N);
    for id in &ids {
        assert_eq!(records[id]["ok"], true, "{}", records[id]);
    }
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    assert_eq!(redis.results_count(), N);
    stop(a, Signal::SIGTERM);
}

#[test]
fn redis_graceful_stop_finishes_and_acks_what_it_holds() {
    const N: u64 = 40;
    const CLAIM: Duration = Duration::from_secs(300);
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    redis.add((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":200,\"n\":{i}}}")));
    let fx = Fixture::new();
    // A small queue: it holds a few entries at a time.
    let opts = ["--redis-claim-idle", "300s", "--queue", "4"];
    let a = daemon(&fx, "a", &server, 2, &opts);
    wait_for("a few records", LIMIT, || redis.results_count() >= 4);
    let logs = stop(a, Signal::SIGTERM);
    assert_eq!(
        stopped_line(&logs)["held"],
        0,
        "it settled everything it held"
    );
    let done = redis.results_count();
    assert!((4..N).contains(&done), "{done}");
    // Whatever its last read brought after the stop was handed back: claimable at once.
    let pending = redis.pending();
    assert_eq!(
        redis.pending_idle(CLAIM),
        pending,
        "nothing waits out the claim time"
    );
    // Another daemon finishes the rest, each once: long before the 300 s claim time.
    let b = daemon(&fx, "b", &server, 2, &opts);
    let records = redis.results(N);
    assert_eq!(records.len() as u64, N);
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    stop(b, Signal::SIGTERM);
}

#[test]
fn redis_fast_stop_hands_back_what_it_holds() {
    const N: u64 = 6;
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    redis.add((0..N).map(|i| format!("{{\"op\":\"sleep\",\"ms\":3000,\"n\":{i}}}")));
    let fx = Fixture::new();
    // A claim time far longer than the test: only handing back brings the entries back in
    // time.
    let opts = ["--redis-claim-idle", "300s"];
    let a = daemon(&fx, "a", &server, 2, &opts);
    wait_for("the daemon to hold entries", LIMIT, || redis.pending() >= 2);
    let logs = stop(a, Signal::SIGQUIT);
    assert!(
        stopped_line(&logs)["released"].as_u64() >= Some(2),
        "{}",
        dump(&logs)
    );
    assert_eq!(
        redis.results_count(),
        0,
        "a fast stop writes no shutdown records"
    );
    let b = daemon(&fx, "b", &server, 2, &opts);
    let records = redis.results(N);
    assert!(records.values().all(|r| r["ok"] == true));
    assert!(
        records.values().any(|r| r["attempts"] == 2),
        "the handed-back ones were delivered again: {records:?}"
    );
    stop(b, Signal::SIGTERM);
}

#[test]
fn redis_chunk_lines_go_to_the_results_stream_before_their_record() {
    const N: u64 = 200;
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    let ids = redis.add((0..N).map(|_| r#"{"op":"stream","n":3}"#.to_string()));
    let fx = Fixture::new();
    let d = daemon(&fx, "d", &server, 2, &[]);
    wait_for("every line", LIMIT, || redis.results_count() >= N * 4);
    let mut by_id: HashMap<String, Vec<(Value, bool)>> = HashMap::new();
    for (id, line, chunk) in redis.lines() {
        by_id.entry(id).or_default().push((line, chunk));
    }
    assert_eq!(by_id.len() as u64, N);
    for id in &ids {
        let lines = &by_id[id];
        let kinds: Vec<bool> = lines.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            kinds,
            [true, true, true, false],
            "chunks, then the record: {lines:?}"
        );
        let chunks: Vec<u64> = lines[..3]
            .iter()
            .map(|(l, _)| l["chunk"].as_u64().unwrap())
            .collect();
        assert_eq!(chunks, [0, 1, 2]);
        assert_eq!(lines[3].0["chunks"], 3, "{:?}", lines[3]);
    }
    wait_for("the group to settle", LIMIT, || redis.pending() == 0);
    let st = status(&fx, "d");
    assert_eq!(number(&st, "acked"), N, "{st}");
    assert_eq!(number(&st, "chunks"), N * 3, "{st}");
    stop(d, Signal::SIGTERM);
}

/// The daemon's status, metrics and dashboard show the Redis source like JetStream's.
#[test]
fn redis_source_in_status_and_metrics() {
    let server = RedisServer::start();
    let mut redis = Client::connect(&server);
    redis.add((0..10).map(square));
    let fx = Fixture::new();
    let port = free_port().to_string();
    let d = daemon(&fx, "d", &server, 1, &["--metrics", port.as_str()]);
    redis.results(10);
    wait_for("the group numbers", LIMIT, || {
        let st = status(&fx, "d");
        number(&st, "acked") == 10 && number(&st, "group_pending") == 0
    });
    let st = status(&fx, "d");
    let src = redis_source(&st);
    assert_eq!(src["connected"], true, "{st}");
    assert!(
        src["detail"]
            .as_str()
            .unwrap()
            .contains("stream herd:events group herd consumer herd-test-d"),
        "{st}"
    );
    for key in [
        "claimed",
        "group_pending",
        "group_lag",
        "group_consumers",
        "held",
    ] {
        number(&st, key);
    }
    // The table `herd status` prints.
    let control = fx.path("d.sock");
    let out = output_ok(&mut fx.herd(&["status", "--control", control.to_str().unwrap()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("redis: connected"), "{text}");
    assert!(text.contains("acked 10"), "{text}");
    // The metrics.
    let body = http_get(&format!("127.0.0.1:{port}"), "/metrics");
    assert!(
        body.contains("herd_source_connected{source=\"redis\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("herd_source_acked{source=\"redis\"} 10"),
        "{body}"
    );
    stop(d, Signal::SIGTERM);
}

/// A plain HTTP/1.0 GET; the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}
