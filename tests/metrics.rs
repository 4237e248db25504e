//! `herd serve --metrics`: Prometheus metrics at `GET /metrics`, read over plain HTTP/1.0.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::util::*;

/// `GET path` over HTTP/1.0 (the server closes the connection after the response); returns
/// the status code, the headers (lower-cased names) and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {raw:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// Samples of an exposition: `name{labels}` → value.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample {l:?}"));
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str, body: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in:\n{body}"))
}

#[test]
fn metrics_count_events_workers_and_durations() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let ctl = control.to_str().unwrap();
    let live = fx.serve(&control, 2, &["--metrics", "127.0.0.1:0"]);
    let ready = live
        .logs()
        .into_iter()
        .find(|x| x["message"] == "ready")
        .unwrap();
    let addr: SocketAddr = ready["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics address in {ready}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "the ready line names the bound port");

    let mut input = square_events(50);
    input.push_str(&"{\"op\":\"fail\"}\n".repeat(3));
    input.push_str(&"not json\n".repeat(2));
    let args = ["submit", "--control", ctl];
    let out = fx.herd(&args).write_stdin(input).output().unwrap();
    let run = Run::new(args.iter().map(|s| s.to_string()).collect(), out);
    run.assert_success();
    assert_eq!(run.records.len(), 55, "{}", run.stderr());

    let (code, headers, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let m = samples(&body);
    let v = |key: &str| value(&m, key, &body);
    assert_eq!(v("herd_events_total{outcome=\"ok\"}"), 50.0);
    assert_eq!(v("herd_events_total{outcome=\"failed\"}"), 5.0);
    assert_eq!(v("herd_events_total{outcome=\"crashed\"}"), 0.0);
    // Every record kind has its series, the limits' too, before the first of them.
    assert_eq!(v("herd_events_total{outcome=\"expired\"}"), 0.0);
    assert_eq!(v("herd_events_total{outcome=\"deadline\"}"), 0.0);
    assert_eq!(v("herd_retries_total"), 0.0);
    assert_eq!(v("herd_task_duration_seconds_count"), 55.0);
    assert_eq!(v("herd_task_duration_seconds_bucket{le=\"+Inf\"}"), 55.0);
    assert!(v("herd_task_duration_seconds_sum") > 0.0);
    let workers: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("herd_workers{state="))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(workers, 2.0, "{body}");
    assert_eq!(v("herd_workers_target"), 2.0);
    assert_eq!(v("herd_queue_depth"), 0.0);
    assert_eq!(v("herd_inflight"), 0.0);
    assert!(v("herd_uptime_seconds") > 0.0);
    // Buckets are cumulative.
    let buckets: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with("herd_task_duration_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 17, "{body}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{body}");

    let (code, _, _) = get(addr, "/nope");
    assert_eq!(code, 404);

    output_ok(&mut fx.herd(&["ctl", "--control", ctl, "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
    assert!(TcpStream::connect(addr).is_err(), "the port is closed");
}

#[test]
fn a_busy_metrics_address_fails_at_start_up() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = fx
        .herd(&[
            "serve",
            "--control",
            control.to_str().unwrap(),
            "--metrics",
            &addr,
            "--",
            chaos(),
        ])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for metrics on {addr}")),
        "{stderr}"
    );
    assert!(!control.exists(), "the control socket is removed");
}

#[test]
fn a_bare_port_means_loopback_and_host_names_resolve() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    for (i, addr) in [":0", "0", "localhost:0"].iter().enumerate() {
        let control = fx.path(&format!("c{i}.sock"));
        let live = fx.serve(&control, 1, &["--metrics", addr]);
        let bound = live.metrics_addr();
        assert!(bound.ip().is_loopback(), "{addr} bound {bound}");
        assert_ne!(bound.port(), 0);
        assert_eq!(get(bound, "/metrics").0, 200);
        signal(live.pid(), nix::sys::signal::Signal::SIGTERM);
        let (status, _, logs) = live.finish(RUN_TIMEOUT);
        assert!(status.success(), "{}", dump(&logs));
    }
    let out = fx
        .herd(&[
            "serve",
            "--control",
            control.to_str().unwrap(),
            "--metrics",
            "::1:80",
            "--",
            chaos(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs brackets"), "{stderr}");
}

#[test]
fn idle_metrics_connections_are_closed_and_capped() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let live = fx.serve(
        &control,
        1,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-connections",
            "2",
            "--idle-timeout",
            "3s",
        ],
    );
    let addr = live.metrics_addr();
    // Two connections that never send a byte fill the cap...
    let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // ... so a third is closed at once (without an answer),
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let _ = write!(third, "GET /metrics HTTP/1.0\r\n\r\n");
    let mut got = Vec::new();
    let _ = third.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // ... and the idle ones are closed by the daemon after the idle timeout.
    for s in &mut idle {
        s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        let mut buf = Vec::new();
        let n = s.read_to_end(&mut buf);
        assert!(
            matches!(n, Ok(0)) || n.is_err(),
            "{n:?} {}",
            String::from_utf8_lossy(&buf)
        );
    }
    wait_for("a scrape to succeed again", RUN_TIMEOUT, || {
        get_status(addr) == Some(200)
    });
    output_ok(&mut fx.herd(&["ctl", "--control", control.to_str().unwrap(), "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
}

/// The status code of `GET /metrics`, or `None` if the connection was closed first.
fn get_status(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(RUN_TIMEOUT)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_whitespace().nth(1)?.parse().ok()
}

/// Issue 19, item 4 (slowloris): connections that trickle a request head, a byte a second,
/// never go idle, yet each is closed once its head has taken `--idle-timeout`, so they hold the
/// listener for a bounded time and scrapes get through.
#[test]
fn trickled_request_heads_cannot_hold_the_metrics_listener() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let live = fx.serve(
        &control,
        1,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-connections",
            "4",
            "--idle-timeout",
            "3s",
        ],
    );
    let addr = live.metrics_addr();
    // Six attackers, connected before the first scrape so that they take every slot.
    let start = Instant::now();
    let give_up = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let give_up = give_up.clone();
            std::thread::spawn(move || {
                let head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
                let bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
                // The read timeout paces the attack: one byte, then a second of listening for
                // the daemon to close the connection.
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 512];
                for b in bytes {
                    if give_up.load(Ordering::Relaxed) {
                        return None;
                    }
                    if s.write_all(&[b]).is_err() {
                        return Some(start.elapsed());
                    }
                    match s.read(&mut buf) {
                        // An answer (a 408) or the end: the daemon let go of it.
                        Ok(_) => return Some(start.elapsed()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return Some(start.elapsed()),
                    }
                }
                None
            })
        })
        .collect();
    // The 3 s head deadline, and generous room for a loaded machine; without a deadline on
    // the head, the attackers would hold every slot for as long as they liked.
    let answered = std::panic::catch_unwind(|| {
        wait_for(
            "a scrape to be answered while six clients trickle request heads",
            Duration::from_secs(20),
            || get_status(addr) == Some(200),
        );
        start.elapsed()
    });
    give_up.store(true, Ordering::Relaxed);
    let closed: Vec<Option<Duration>> = attackers.into_iter().map(|t| t.join().unwrap()).collect();
    let answered = answered.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!("scrape answered after {answered:?}; attackers closed after {closed:?}");
    // Every attacker was let go (the two over the cap at once), none before it ran out of its
    // 3 s unless it was over the cap.
    assert!(closed.iter().all(Option::is_some), "{closed:?}");
    let held = closed
        .iter()
        .flatten()
        .filter(|d| **d >= Duration::from_secs(2))
        .count();
    assert!(held <= 4, "{closed:?}");
    output_ok(&mut fx.herd(&["ctl", "--control", control.to_str().unwrap(), "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
}
