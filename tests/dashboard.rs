//! The dashboard at `GET /` of `herd serve --metrics`, loaded in a real headless Chromium
//! driven over the DevTools protocol, and the listener under hostile clients.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::util::*;

/// Debian's `chromium` (CI's `.ci/run` installs it).
fn chromium() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| {
            panic!(
                "the dashboard tests need headless Chromium: `apt-get install -y chromium` \
                 (.ci/run installs it)"
            )
        })
}

/// A headless Chromium driven over `--remote-debugging-pipe` (JSON messages ending in NUL,
/// read by the browser on fd 3 and written on fd 4), with one page attached. Its profile,
/// HOME and config live in a temp dir of its own, whose path every process it starts carries
/// on its command line (its crash handlers leave its process group), so that all of them can
/// be found at the end.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Self {
        let profile = tempfile::Builder::new()
            .prefix("herd-chromium-")
            .tempdir()
            .unwrap();
        let root = profile.path();
        // The shell hands our stdin and stdout to the browser as fds 3 and 4, then execs it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg("sh")
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-pipe",
                "--window-size=1200,900",
            ])
            .arg(format!(
                "--user-data-dir={}",
                root.join("profile").display()
            ))
            .env("HOME", root)
            .env("XDG_CONFIG_HOME", root.join("config"))
            .env("XDG_CACHE_HOME", root.join("cache"))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own group, so that every process it starts can be killed at the end.
            .process_group(0)
            .spawn()
            .unwrap();
        let to = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                let mut msg = Vec::new();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                msg.pop();
                let v: Value = serde_json::from_slice(&msg).unwrap();
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// One DevTools command; its result (events in between are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from Chromium to {method}: {e}"));
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value as JSON.
    fn eval(&mut self, expr: &str) -> Value {
        let session = self.session.clone();
        let r = self.call(
            Some(&session),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expr` evaluates to something `ok` accepts; returns it.
    fn wait(&mut self, what: &str, expr: &str, mut ok: impl FnMut(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let last = self.eval(expr);
            if ok(&last) {
                return last;
            }
            assert!(
                start.elapsed() < RUN_TIMEOUT,
                "timed out waiting for {what}; last: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Live processes of this browser: its process group, and anything carrying its temp
    /// dir on its command line.
    fn processes(&self) -> Vec<u32> {
        let pgid = self.child.id().to_string();
        let mark = self._profile.path().as_os_str().as_encoded_bytes();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // After the parenthesised name: state, ppid, pgrp.
                let rest: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                if rest.first() == Some(&"Z") {
                    return false;
                }
                rest.get(2) == Some(&pgid.as_str())
                    || std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.windows(mark.len()).any(|w| w == mark))
            })
            .collect()
    }

    /// SIGKILL to every process of this browser that is still running.
    fn kill_all(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        for pid in self.processes() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Closes the browser; then none of its processes may be left.
    fn close(mut self) {
        self.next_id += 1;
        let msg = json!({ "id": self.next_id, "method": "Browser.close" });
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        let _ = self.to.write_all(&bytes);
        // It ends its helpers itself; it gets time to, on a loaded machine.
        let start = Instant::now();
        while !self.processes().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is still running (a browser that did not close) is killed.
        self.kill_all();
        wait_for("Chromium's processes to be gone", RUN_TIMEOUT, || {
            self.processes().is_empty()
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test leaves no browser behind either.
        self.kill_all();
    }
}

/// Sends `request` raw and reads until the server closes; the status code, if any.
fn raw(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (code, text)
}

fn get(addr: SocketAddr, path: &str) -> (Option<u16>, String) {
    raw(
        addr,
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
}

/// The body of `GET /status.json`, parsed.
fn status_json(addr: SocketAddr) -> Value {
    let (code, text) = get(addr, "/status.json");
    assert_eq!(code, Some(200), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

const ROWS: &str = "JSON.stringify([...document.querySelectorAll('#workers tbody tr')]\
    .map(r => [...r.cells].map(c => c.textContent)))";
const EVENTS: &str = "JSON.stringify([...document.querySelectorAll('#events li')]\
    .map(li => [li.dataset.reason || '', li.dataset.pid || '', li.textContent]))";

fn parse(v: &Value) -> Vec<Vec<String>> {
    serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap()
}

#[test]
fn the_dashboard_shows_workers_and_a_restart_live() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let ctl = control.to_str().unwrap();
    let live = fx.serve(
        &control,
        3,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-inflight-per-key",
            "2",
            "--key-rate",
            "1000/s",
        ],
    );
    let addr = live.metrics_addr();
    output_ok(
        fx.herd(&["submit", "--control", ctl])
            .write_stdin(square_events(500)),
    );

    // The page is the one embedded in the binary, with its own policy.
    let (code, page) = get(addr, "/");
    assert_eq!(code, Some(200), "{page}");
    assert!(page.contains("content-security-policy"), "{page}");
    assert!(page.contains("<table id=\"workers\""), "{page}");

    let ready = live
        .logs()
        .into_iter()
        .find(|x| x["message"] == "ready")
        .unwrap();
    assert_eq!(ready["dashboard"], format!("http://{addr}/"), "{ready}");

    // The JSON beside the page is the object `herd status --json` prints.
    let st = status_json(addr);
    let out = output_ok(&mut fx.herd(&["status", "--control", ctl, "--json"]));
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&st), keys(&cli));
    assert_eq!(st["totals"], cli["totals"]);
    let history_ok: u64 = st["history"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ok"].as_u64().unwrap())
        .sum();
    assert_eq!(history_ok, 500, "{st}");
    let pids: Vec<String> = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].to_string())
        .collect();
    assert_eq!(pids.len(), 3, "{st}");
    let mut browser = Browser::open(&format!("http://{addr}/"));

    // One row per worker, with its pid, as herd reports them.
    let rows = browser.wait("a row per worker", ROWS, |v| parse(v).len() == 3);
    let rows = parse(&rows);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], i.to_string(), "{rows:?}");
        assert_eq!(row[1], pids[i], "{rows:?}");
        assert_eq!(row[4], "0", "no restarts yet: {rows:?}");
    }
    let polls = |b: &mut Browser| {
        b.eval("+document.getElementById('updated').dataset.polls")
            .as_u64()
            .unwrap()
    };
    let loaded = polls(&mut browser);
    assert_eq!(
        browser.eval("document.getElementById('ok').textContent"),
        "500"
    );
    let hist = browser.eval("document.querySelectorAll('#hist rect').length");
    assert!(hist.as_u64().unwrap() > 0, "the histogram has bars");
    assert!(browser
        .eval("document.getElementById('dursum').textContent")
        .as_str()
        .unwrap()
        .contains("500 tasks"));
    let bars = browser.eval("document.querySelectorAll('#rate rect').length");
    assert!(bars.as_u64().unwrap() > 0, "the throughput chart has bars");

    // What the page does not know (autoscaling, event sources) is listed field by field.
    let shown = browser.eval(
        "extra({pid: 1, autoscale: {min: 1, max: 8, decisions: [{action: 'grow', by: 2}]}}); \
         JSON.stringify([document.getElementById('more').hidden, \
           [...document.querySelectorAll('#extra dt, #extra dd')].map(e => e.textContent)])",
    );
    assert_eq!(
        shown,
        json!([
            false,
            [
                "autoscale.min",
                "1",
                "autoscale.max",
                "8",
                "autoscale.decisions.0.action",
                "grow",
                "autoscale.decisions.0.by",
                "2"
            ]
        ])
        .to_string()
    );

    // A worker killed from outside: the same page, never reloaded, shows its replacement
    // and the restart with its reason.
    let victim: u32 = pids[1].parse().unwrap();
    signal(victim, Signal::SIGKILL);
    let rows = browser.wait("the restarted worker in the table", ROWS, |v| {
        let rows = parse(v);
        rows.len() == 3 && rows[1][1] != pids[1] && rows[1][1] != "-" && rows[1][4] == "1"
    });
    let rows = parse(&rows);
    assert_eq!(rows[0][1], pids[0], "{rows:?}");
    assert_eq!(rows[2][1], pids[2], "{rows:?}");
    let events = browser.wait("the restart in the recent events", EVENTS, |v| {
        parse(v)
            .iter()
            .any(|e| e[0] == "crash" && e[1] == victim.to_string())
    });
    let events = parse(&events);
    let ev = events.iter().find(|e| e[0] == "crash").unwrap();
    assert!(ev[2].contains("SIGKILL"), "{events:?}");
    assert!(
        polls(&mut browser) > loaded,
        "the page polled status.json again"
    );
    // The same event in the status object.
    let st = status_json(addr);
    assert_eq!(st["events"][0]["pid"], victim, "{st}");
    assert_eq!(st["events"][0]["worker"], 1, "{st}");
    assert_eq!(st["restarts"]["crash"], 1, "{st}");

    // The per-key limits in the top bar.
    browser.wait(
        "the per-key limits",
        "document.getElementById('keys').textContent + ' | ' + \
         document.getElementById('rates').textContent",
        |v| {
            v.as_str().is_some_and(|s| {
                s.starts_with("0 tracked, 0 parked (2 in flight each) | ")
                    && s.contains("each key 1000/s")
            })
        },
    );

    // Errors by kind beside the count: an event past its own deadline (`herd submit
    // --deadline`), whose worker was replaced for it.
    let out = output_ok(
        fx.herd(&["submit", "--control", ctl, "--deadline", "300ms"])
            .write_stdin("{\"op\":\"hang\"}\n"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"kind\":\"deadline\""));
    browser.wait(
        "the deadline record among the errors",
        "document.getElementById('errkinds').textContent",
        |v| v == "deadline 1",
    );
    let st = status_json(addr);
    assert_eq!(st["totals"]["deadline"], 1, "{st}");
    assert_eq!(st["restarts"]["deadline"], 1, "{st}");

    browser.close();
    output_ok(&mut fx.herd(&["ctl", "--control", ctl, "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
}

/// Issue 19, item 9: the page's policy names its own script and style by hash, so they run
/// and nothing else inline does, as a script an injection slipped into the page would be.
#[test]
fn the_dashboard_runs_its_own_script_and_no_other_inline_one() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let live = fx.serve(&control, 1, &["--metrics", "127.0.0.1:0"]);
    let addr = live.metrics_addr();
    let (code, page) = get(addr, "/");
    assert_eq!(code, Some(200), "{page}");
    let csp = page
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy:"))
        .unwrap_or_else(|| panic!("no policy in {page}"));
    for directive in ["script-src", "style-src"] {
        let sources = csp
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(directive))
            .unwrap_or_else(|| panic!("no {directive} in {csp}"));
        assert!(!sources.contains("'unsafe-inline'"), "{csp}");
        assert!(sources.contains("'sha256-"), "{csp}");
    }

    let mut browser = Browser::open(&format!("http://{addr}/"));
    // Its own script runs under the policy: it polls and draws.
    browser.wait(
        "the page's own script to poll status.json",
        "+(document.getElementById('updated')?.dataset.polls ?? 0)",
        |v| v.as_f64().is_some_and(|n| n >= 1.0),
    );
    browser.wait(
        "the page's own style to apply",
        "getComputedStyle(document.getElementById('lost')).display",
        |v| v == "none",
    );
    // What an injection would add: an inline script, an inline event handler and a style
    // element. Each is refused, and reported as a violation of the policy.
    browser.eval(
        r#"(() => {
            window.violations = [];
            document.addEventListener("securitypolicyviolation",
                e => window.violations.push(e.effectiveDirective));
            const s = document.createElement("script");
            s.textContent = "window.injected = 1";
            document.body.append(s);
            const img = document.createElement("img");
            img.setAttribute("onerror", "window.handler = 1");
            img.addEventListener("error", () => { window.errored = 1 });
            img.src = "data:,not-an-image";
            document.body.append(img);
            const st = document.createElement("style");
            st.textContent = "body { display: none }";
            document.head.append(st);
            return 0;
        })()"#,
    );
    // Done once the image has failed and the three refusals are reported, or as soon as an
    // injected script has run.
    let outcome = browser.wait(
        "the injections to run or be refused",
        "JSON.stringify({ ran: [window.injected, window.handler].filter(x => x).length, \
            violations: [...window.violations].sort(), errored: window.errored === 1 })",
        |v| {
            let v: Value = serde_json::from_str(v.as_str().unwrap_or("{}")).unwrap();
            v["ran"].as_u64() > Some(0)
                || (v["errored"] == true
                    && v["violations"].as_array().is_some_and(|a| a.len() >= 3))
        },
    );
    let outcome: Value = serde_json::from_str(outcome.as_str().unwrap()).unwrap();
    assert_eq!(outcome["ran"], 0, "an injected script ran: {outcome}");
    assert_eq!(
        outcome["violations"],
        json!(["script-src-attr", "script-src-elem", "style-src-elem"])
    );
    assert_eq!(
        browser.eval("getComputedStyle(document.body).display"),
        json!("block")
    );
    browser.close();
    output_ok(&mut fx.herd(&["ctl", "--control", control.to_str().unwrap(), "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
}

#[test]
fn the_http_listener_shrugs_off_garbage_slow_clients_and_floods() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let ctl = control.to_str().unwrap();
    let live = fx.serve(
        &control,
        2,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--max-connections",
            "16",
            "--idle-timeout",
            "2s",
        ],
    );
    let addr = live.metrics_addr();

    // Garbage: binary noise, a bad request line, a huge header. Each gets an error or a
    // closed connection, nothing else.
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let (code, _) = raw(addr, &noise);
    assert!(code.is_none() || code == Some(400), "{code:?}");
    let (code, _) = raw(addr, b"BREW /pot HTCPCP/1.0\r\n\r\n");
    assert!(code.is_none() || code.unwrap() >= 400, "{code:?}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (code, _) = raw(addr, huge.as_bytes());
    assert!(code.is_none() || code.unwrap() >= 400, "{code:?}");
    // A page elsewhere that rebinds its name to 127.0.0.1 is turned away.
    let (code, _) = raw(
        addr,
        b"GET /status.json HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, Some(421));

    // Slow clients that never finish their request: closed after the idle timeout, and
    // the listener answers others meanwhile.
    let mut slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    assert_eq!(get(addr, "/status.json").0, Some(200));
    for s in &mut slow {
        s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        let mut got = Vec::new();
        let n = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(
            n.is_err() || !text.contains("200 OK"),
            "a slow request was answered: {text}"
        );
    }

    // 300 connections at once, held open: past the cap of 16 they are closed at once, and the
    // pool and its control socket go on working.
    let held: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let out = output_ok(
        fx.herd(&["submit", "--control", ctl])
            .write_stdin(square_events(1000)),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1000);
    drop(held);

    // A flood: 8 clients × 100 requests of the page, the JSON and the metrics, while the
    // pool works. Connections over the cap are closed; the rest are answered.
    let pool_work = std::thread::spawn({
        let herd = fx.herd(&["submit", "--control", ctl]);
        move || {
            let mut herd = herd;
            herd.write_stdin(square_events(20_000)).output().unwrap()
        }
    });
    let clients: Vec<_> = (0..8)
        .map(|c| {
            std::thread::spawn(move || {
                let mut answered = 0;
                for i in 0..100 {
                    let path = ["/", "/status.json", "/metrics"][(c + i) % 3];
                    if let (Some(200), _) = get(addr, path) {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(answered > 0, "the flood got no answer at all");
    let out = pool_work.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(records, 20_000);

    // Unaffected: it answers, counts everything, and stops cleanly.
    wait_for("the listener to answer again", RUN_TIMEOUT, || {
        get(addr, "/status.json").0 == Some(200)
    });
    let st = status_json(addr);
    assert_eq!(st["totals"]["ok"], 21_000, "{st}");
    assert_eq!(st["restarts"], json!({}), "{st}");
    output_ok(&mut fx.herd(&["ctl", "--control", ctl, "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
    assert!(TcpStream::connect(addr).is_err(), "the port is closed");
    eprintln!("flood: {answered} of 800 requests answered");
}

#[test]
fn a_non_loopback_address_needs_metrics_public() {
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let out = fx
        .herd(&[
            "serve",
            "--control",
            control.to_str().unwrap(),
            "--metrics",
            "0.0.0.0:0",
            "--",
            chaos(),
        ])
        .timeout(RUN_TIMEOUT)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--metrics-public"), "{stderr}");
    assert!(!control.exists(), "the control socket is removed");

    // Asked for explicitly: any address, any Host.
    let live = fx.serve(&control, 1, &["--metrics", "0.0.0.0:0", "--metrics-public"]);
    let bound = live.metrics_addr();
    assert!(bound.ip().is_unspecified(), "{bound}");
    let local: SocketAddr = format!("127.0.0.1:{}", bound.port()).parse().unwrap();
    let (code, text) = raw(
        local,
        b"GET /status.json HTTP/1.0\r\nHost: herd.internal.example\r\n\r\n",
    );
    assert_eq!(code, Some(200), "{text}");
    output_ok(&mut fx.herd(&["ctl", "--control", control.to_str().unwrap(), "stop"]));
    let (status, _, logs) = live.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
}
