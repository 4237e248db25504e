//! `herd serve --nats` on a three-server JetStream cluster (issue 24, point 4): the events and
//! results streams replicated on all three (`--nats-replicas 3`), two daemons, and two servers
//! SIGKILLed and restarted under them, one after the other.
//!
//! Each server runs from a configuration file of its own in a temp dir, its store beside it, on
//! loopback ports picked once and kept across its restarts: a restarted server comes back where
//! its peers' routes and herd's clients look for it. Readiness is the servers' own word (their
//! monitoring endpoint), never a pause.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::jetstream::{nats_server_bin, number, permit_warnings, square, status, stop, Js, LIMIT};
use crate::util::*;

const SERVERS: usize = 3;

/// herd's log line for a leader-elected advisory.
const NEW_LEADER: &str =
    "new JetStream leader: pull requests and unstored records go to it at once";

/// One server of the cluster: its name and its three ports, kept across restarts.
struct Node {
    name: String,
    /// Clients (herd, the test).
    port: u16,
    /// Routes from the other servers.
    route: u16,
    /// Monitoring (`/jsz`, `/healthz`).
    http: u16,
    child: Option<Child>,
}

/// Three nats-servers on 127.0.0.1 as one JetStream cluster. Every server is killed on drop.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

/// `n` distinct ports free at one moment (all bound at once, then let go).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// `GET path` over HTTP/1.0: the status code and the body, or `None` if the server does not
/// answer (it is down or still starting).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

impl NatsCluster {
    pub fn start() -> Self {
        // A port picked free may be taken before its server binds it: try again on others.
        for _ in 0..5 {
            if let Some(cluster) = Self::try_start() {
                return cluster;
            }
        }
        panic!("the nats-server cluster did not start (see the logs printed above)");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herd-nats-cluster-")
            .tempdir()
            .unwrap();
        let ports = free_ports(3 * SERVERS);
        let nodes = (0..SERVERS)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                port: ports[3 * i],
                route: ports[3 * i + 1],
                http: ports[3 * i + 2],
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { dir, nodes };
        for i in 0..SERVERS {
            cluster.configure(i);
            if !cluster.launch(i) {
                eprintln!("{}", cluster.log_tail(i));
                return None; // the servers started so far are killed on drop
            }
        }
        for i in 0..SERVERS {
            cluster.wait_ready(i);
        }
        Some(cluster)
    }

    /// Client URLs of every server, as herd and the test's own client take them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The index of the server named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server named {name}"))
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    fn conf(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.conf", self.nodes[i].name))
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "{} ({}):\n{tail}",
            self.nodes[i].name,
            self.log(i).display()
        )
    }

    /// Server `i`'s configuration file: its name, ports, store, and routes to all three (a
    /// route to itself is recognised and dropped by the server).
    fn configure(&self, i: usize) {
        let node = &self.nodes[i];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats-route://127.0.0.1:{}", n.route))
            .collect();
        let store = self.dir.path().join(&node.name);
        let text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http}\n\
             jetstream {{\n  store_dir: \"{store}\"\n}}\n\
             cluster {{\n  name: herd_test\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
            name = node.name,
            port = node.port,
            http = node.http,
            store = store.display(),
            route = node.route,
            routes = routes.join(", "),
        );
        std::fs::write(self.conf(i), text).unwrap();
    }

    /// Starts server `i` and waits until it takes clients; `false` if it exited first (a port
    /// was taken).
    fn launch(&mut self, i: usize) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let mut child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.conf(i))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        let port = self.nodes[i].port;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                self.nodes[i].child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The meta leader as server `i` knows it (`/jsz`).
    fn meta_leader(&self, i: usize) -> Option<String> {
        let (code, body) = http_get(self.nodes[i].http, "/jsz")?;
        let jsz: Value = serde_json::from_str(&body).ok()?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (code == 200 && !leader.is_empty()).then(|| leader.to_string())
    }

    /// Waits until server `i` knows the cluster's meta leader and reports itself healthy
    /// (`/healthz`: JetStream is current with the meta group and with every stream and
    /// consumer it holds a replica of, so it has caught up after a restart).
    pub fn wait_ready(&self, i: usize) {
        let name = &self.nodes[i].name;
        let start = Instant::now();
        while self.meta_leader(i).is_none()
            || http_get(self.nodes[i].http, "/healthz").map(|r| r.0) != Some(200)
        {
            assert!(
                start.elapsed() < LIMIT,
                "{name} not ready after {LIMIT:?}: meta leader {:?}, healthz {:?}\n{}",
                self.meta_leader(i),
                http_get(self.nodes[i].http, "/healthz"),
                self.log_tail(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The servers' pids, of those running.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().map(Child::id))
            .collect()
    }

    /// SIGKILLs server `i` (nothing flushed, no goodbye to its peers), waited for.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("the server is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a killed server again, on its ports and store.
    pub fn relaunch(&mut self, i: usize) {
        assert!(
            self.launch(i),
            "{} did not come back\n{}",
            self.nodes[i].name,
            self.log_tail(i)
        );
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..SERVERS {
                eprintln!("{}", self.log_tail(i));
            }
        }
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Leaders and replicas as the cluster reports them (`None` while it cannot tell: a server
/// the test's client was on is down, or an election is under way).
impl Js {
    fn stream_info(&self, name: &str) -> Option<async_nats::jetstream::stream::Info> {
        self.rt.block_on(async {
            let mut s = self.js.get_stream(name).await.ok()?;
            s.info().await.ok().cloned()
        })
    }

    /// The server leading the events' consumer: the one that hands out messages and takes
    /// their acknowledgements.
    fn consumer_leader(&self) -> Option<String> {
        self.rt.block_on(async {
            let stream = self.js.get_stream("HERD").await.ok()?;
            let mut c: consumer::PullConsumer = stream.get_consumer("herd").await.ok()?;
            c.info().await.ok()?.cluster.as_ref()?.leader.clone()
        })
    }

    fn stream_leader(&self, name: &str) -> Option<String> {
        self.stream_info(name)?.cluster?.leader
    }

    /// Whether the events stream, its consumer and the results stream each have a leader and
    /// both other replicas current, `name` among the three: a server back from a kill has
    /// caught up on all of them. (Its `/healthz` can say so a moment early, while it has not
    /// yet taken up a stream; killing a second server then can leave that stream without a
    /// quorum for tens of seconds.)
    fn caught_up(&self, name: &str) -> bool {
        let ok = |cluster: Option<&async_nats::jetstream::stream::ClusterInfo>| {
            cluster.is_some_and(|c| {
                c.leader.is_some()
                    && c.replicas.len() == SERVERS - 1
                    && c.replicas.iter().all(|p| p.current && !p.offline)
                    && (c.leader.as_deref() == Some(name)
                        || c.replicas.iter().any(|p| p.name == name))
            })
        };
        let streams = ["HERD", "HERD_RESULTS"].iter().all(|s| {
            ok(self
                .stream_info(s)
                .as_ref()
                .and_then(|i| i.cluster.as_ref()))
        });
        streams
            && self.rt.block_on(async {
                let Ok(stream) = self.js.get_stream("HERD").await else {
                    return false;
                };
                let Ok(mut c) = stream.get_consumer::<consumer::pull::Config>("herd").await else {
                    return false;
                };
                c.info().await.is_ok_and(|i| ok(i.cluster.as_ref()))
            })
    }

    /// Every event settled: none pending, none delivered and unacknowledged.
    fn settled(&self) -> bool {
        self.rt.block_on(async {
            let Ok(stream) = self.js.get_stream("HERD").await else {
                return false;
            };
            let Ok(mut c) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("herd")
                .await
            else {
                return false;
            };
            c.info()
                .await
                .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        })
    }
}

/// Waits until `what` is known, polling.
fn wait_some<T>(what: &str, mut get: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = get() {
            return v;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two daemons on an R3 cluster; the server leading the events' consumer is SIGKILLed
/// mid-stream and restarted, then (once it has caught up) the one leading the results stream,
/// or another: every event gets exactly one final record, each right, and the last record is
/// stored within a bound after the last server's return.
#[test]
fn jetstream_cluster_survives_two_servers_killed_in_turn() {
    const N: u64 = 4_000;
    /// From the last server's return to the last record, generous for a loaded machine: the
    /// events left then run in this time too (at the daemons' 300/s, ten seconds at most).
    const BOUND: Duration = Duration::from_secs(30);
    let mut cluster = NatsCluster::start();
    let fx = Fixture::new();
    let urls = cluster.urls().join(",");
    // Paced (two daemons at 150 events/s each) so that both kills land mid-stream; a short
    // ack wait brings back quickly what an acknowledgement lost with a server left unsettled.
    let opts = [
        "--nats",
        &urls,
        "--nats-replicas",
        "3",
        "--nats-ack-wait",
        "4s",
        "--rate",
        "150/s",
        "--queue",
        "64",
    ];
    let daemon = |name: &str| {
        let live = fx.serve(&fx.path(&format!("{name}.sock")), 2, &opts);
        live.wait_log("the consumer bound", LIMIT, |l| {
            l.iter().any(|x| x["message"] == "JetStream consumer bound")
        });
        live
    };
    // Bound: herd has created both streams (and the consumer) on the cluster.
    let a = daemon("a");
    let b = daemon("b");
    // Short requests: while a stream elects a leader, its count is skipped, not waited for.
    let js = Js::connect_to(&cluster.urls(), Duration::from_secs(2));
    for stream in ["HERD", "HERD_RESULTS"] {
        let info = wait_some(stream, || js.stream_info(stream));
        let cl = info.cluster.as_ref().unwrap();
        assert_eq!(info.config.num_replicas, 3, "{stream}: {:?}", info.config);
        assert_eq!(
            cl.replicas.len(),
            2,
            "{stream}: a leader and two replicas: {cl:?}"
        );
    }
    js.publish((0..N).map(square));
    // The results stream only grows: a count the cluster cannot give now (the test's own
    // client lost its server, or an election is under way) is the last one it gave.
    let seen = std::cell::Cell::new(0);
    let records = || {
        seen.set(seen.get().max(js.results_count()));
        seen.get()
    };
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>7.2?} {what}: {} records", t0.elapsed(), seen.get());

    wait_for("records to flow", LIMIT, || records() >= N / 8);
    let first = cluster.index(&wait_some("the consumer's leader", || js.consumer_leader()));
    cluster.kill(first);
    phase("first killed");
    let down = records();
    // Two servers of three are a quorum: the work goes on while the third is away.
    wait_for("records while a server is down", LIMIT, || {
        records() >= down + 200
    });
    // Both daemons heard of the consumer's new leader (and asked it for messages at once).
    for d in [&a, &b] {
        d.wait_log("the consumer's new leader", LIMIT, |l| {
            l.iter()
                .any(|x| x["message"] == NEW_LEADER && x["of"] == "consumer")
        });
    }
    cluster.relaunch(first);
    phase("first relaunched");
    cluster.wait_ready(first);
    wait_for("the first server to catch up", LIMIT, || {
        js.caught_up(cluster.name(first))
    });
    phase("first ready");
    let back = records();

    wait_for("records after its return", LIMIT, || {
        records() >= back + 200
    });
    let results_leader = wait_some("the results stream's leader", || {
        js.stream_leader("HERD_RESULTS")
    });
    let second = match cluster.index(&results_leader) {
        i if i == first => (first + 1) % SERVERS,
        i => i,
    };
    let before = records();
    assert!(
        before < N,
        "still mid-stream at the second kill ({before} records of {N})"
    );
    cluster.kill(second);
    phase("second killed");
    wait_for("records while another server is down", LIMIT, || {
        records() >= before + 200
    });
    cluster.relaunch(second);
    phase("second relaunched");
    let returned = Instant::now();
    let left = N - records().min(N);
    wait_for("a record for every event", BOUND, || records() >= N);
    let stored = returned.elapsed();
    phase("every record stored");
    wait_for("every event to be acknowledged", LIMIT, || js.settled());
    let acked = returned.elapsed();
    cluster.wait_ready(second);

    let results = js.results(N); // panics on a second record for an event
    assert_eq!(results.len() as u64, N, "one record per event");
    for seq in 1..=N {
        let r = &results[&seq];
        let n = seq - 1; // published in order to a fresh stream
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"].as_u64(), Some(n * n), "{r}");
    }
    assert_eq!(js.results_count(), N, "no second record for an event");
    let sum = |key: &str| -> u64 {
        ["a", "b"]
            .iter()
            .map(|d| number(&status(&fx, d), key))
            .sum()
    };
    assert!(sum("acked") >= N, "every event acknowledged by a daemon");
    eprintln!(
        "killed {} at {down} records, {} at {before}; after the last return ({left} events \
         left): every record stored in {stored:?}, every event acknowledged in {acked:?}; \
         duplicates dropped {}, records published again {}",
        cluster.name(first),
        cluster.name(second),
        sum("duplicates"),
        sum("republished"),
    );
    for d in [a, b] {
        let logs = stop(d, Signal::SIGTERM);
        assert_eq!(permit_warnings(&logs), 0, "{}", dump(&logs));
    }
    // The guard leaves no server behind.
    let pids = cluster.pids();
    assert_eq!(pids.len(), SERVERS);
    drop(cluster);
    assert!(pids.iter().all(|&p| !alive(p)), "servers left: {pids:?}");
}
