//! Fixture harness for the black-box tests: real `herd` and `herd-chaos` binaries, a private
//! temp dir per test, and helpers that turn output into records and log lines.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

/// Generous: CI machines are small and loaded.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub fn chaos() -> &'static str {
    env!("CARGO_BIN_EXE_herd-chaos")
}

/// Resident memory of `pid`, in bytes (the chunks and control tests both bound it).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

pub fn herd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herd")
}

/// A temp dir that is also herd's runtime-dir base, so leftover sockets are visible.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("herd-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `program` as a plain `std` command (for tests that handle its pipes themselves), with
    /// the runtime dir pointed into the fixture, no `RUST_LOG` and no stdin.
    pub fn std_command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// `herd <args>` with the runtime dir pointed into the fixture.
    pub fn herd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .timeout(RUN_TIMEOUT);
        cmd
    }

    /// `herd run <opts> -- herd-chaos` with `input` on stdin; JSON logs.
    pub fn run_chaos(&self, opts: &[&str], input: impl Into<Vec<u8>>) -> Run {
        let mut args = vec!["run", "--log-format", "json"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", chaos()]);
        let out = self.herd(&args).write_stdin(input.into()).output().unwrap();
        Run::new(args.iter().map(|s| s.to_string()).collect(), out)
    }

    /// Entries in the fixture dir that herd created (runtime dirs).
    pub fn leftover_runtime_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("herd-")
            })
            .collect()
    }
}

/// A finished `herd` invocation, parsed.
pub struct Run {
    pub args: Vec<String>,
    pub out: Output,
    pub records: Vec<Value>,
    pub logs: Vec<Value>,
}

impl Run {
    pub fn new(args: Vec<String>, out: Output) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let records = stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("stdout line is not JSON ({e}): {l:?}\nstderr:\n{stderr}")
                })
            })
            .collect();
        let logs = stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Self {
            args,
            out,
            records,
            logs,
        }
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Panics with the whole story unless herd exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.out.status.success(),
            "herd {:?} failed: {:?}\nstderr:\n{}",
            self.args,
            self.out.status,
            self.stderr()
        );
        self
    }

    /// The `seq` of every stdout line, in output order (what the ordering tests compare).
    pub fn seqs(&self) -> Vec<u64> {
        self.records
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    /// Records sorted by seq; asserts exactly one per seq in 0..n.
    pub fn by_seq(&self, n: usize) -> Vec<&Value> {
        let mut v: Vec<&Value> = self.records.iter().collect();
        v.sort_by_key(|r| r["seq"].as_u64().unwrap());
        let seqs: Vec<u64> = v.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        let want: Vec<u64> = (0..n as u64).collect();
        assert_eq!(
            seqs,
            want,
            "want exactly one record per event\nstderr:\n{}",
            self.stderr()
        );
        v
    }

    /// Log lines whose message is `msg`.
    pub fn log_events(&self, msg: &str) -> Vec<&Value> {
        self.logs.iter().filter(|l| l["message"] == msg).collect()
    }

    /// Every worker pid herd mentioned in its logs.
    pub fn worker_pids(&self) -> HashSet<u32> {
        self.logs
            .iter()
            .filter(|l| l.get("worker").is_some())
            .filter_map(|l| l["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }
}

/// Removes from `cmd`'s environment what cargo set for this test process: it describes the
/// herd package under test, not a build or shell the child starts.
pub fn remove_cargo_test_env(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k.as_ref());
        }
    }
}

/// Runs `cmd` to completion; panics with its stderr unless it exited 0.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn kind(r: &Value) -> &str {
    if r["ok"] == true {
        "ok"
    } else {
        r["error"]["kind"].as_str().unwrap_or("?")
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts none of `pids` is still running (allowing the kernel a moment to finish exits).
pub fn assert_all_gone(pids: &HashSet<u32>) {
    for &pid in pids {
        wait_for(
            &format!("worker pid {pid} to be gone"),
            Duration::from_secs(10),
            || !alive(pid),
        );
    }
}

pub fn square_events(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"op\":\"square\",\"n\":{i}}}\n"))
        .collect()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A `herd` process running in the background, with its stdout records and JSON log lines
/// collected by reader threads. Killed on drop.
pub struct Live {
    pub child: std::process::Child,
    pub stdin: Option<std::process::ChildStdin>,
    records: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    logs: std::sync::Arc<(std::sync::Mutex<Vec<Value>>, std::sync::Condvar)>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Fixture {
    /// Starts `herd <args>` with piped stdin/stdout and JSON logs on stderr.
    pub fn spawn_herd(&self, args: &[&str]) -> Live {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut cmd = std::process::Command::new(herd_bin());
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let logs =
            std::sync::Arc::new((std::sync::Mutex::new(Vec::new()), std::sync::Condvar::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let r = records.clone();
        let t1 = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("record {line:?}: {e}"));
                r.lock().unwrap().push(v);
            }
        });
        let l = logs.clone();
        let t2 = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"raw": line}));
                let (m, cv) = &*l;
                m.lock().unwrap().push(v);
                cv.notify_all();
            }
        });
        Live {
            child,
            stdin,
            records,
            logs,
            readers: vec![t1, t2],
        }
    }
}

impl Fixture {
    /// `herd serve` on `control` with JSON logs and `workers` herd-chaos workers (plus `extra`
    /// options), once it has logged `ready`.
    pub fn serve(&self, control: &Path, workers: usize, extra: &[&str]) -> Live {
        self.serve_w(control, &workers.to_string(), extra)
    }

    /// `serve` with `-w` as herd takes it: a count or an autoscaling `MIN..MAX`.
    pub fn serve_w(&self, control: &Path, workers: &str, extra: &[&str]) -> Live {
        self.serve_with(control, workers, extra, &[])
    }

    /// `serve_w` with arguments for herd-chaos (`--protocol 2`: an older worker).
    pub fn serve_with(
        &self,
        control: &Path,
        workers: &str,
        extra: &[&str],
        worker_args: &[&str],
    ) -> Live {
        let mut args = vec![
            "serve",
            "--log-format",
            "json",
            "--control",
            control.to_str().unwrap(),
            "-w",
            workers,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", chaos()]);
        args.extend_from_slice(worker_args);
        let live = self.spawn_herd(&args);
        live.wait_log("ready", RUN_TIMEOUT, |l| {
            l.iter().any(|x| x["message"] == "ready")
        });
        live
    }
}

impl Live {
    /// Waits until the log satisfies `pred` (called with all lines so far).
    pub fn wait_log(&self, what: &str, limit: Duration, mut pred: impl FnMut(&[Value]) -> bool) {
        let (m, cv) = &*self.logs;
        let start = Instant::now();
        let mut guard = m.lock().unwrap();
        while !pred(&guard) {
            let left = limit.checked_sub(start.elapsed()).unwrap_or_else(|| {
                panic!(
                    "timed out after {limit:?} waiting for {what}; log:\n{}",
                    dump(&guard)
                )
            });
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub fn logs(&self) -> Vec<Value> {
        self.logs.0.lock().unwrap().clone()
    }

    /// The metrics address from the daemon's `ready` line (the metrics and dashboard tests
    /// both scrape the daemon there).
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let ready = self
            .logs()
            .into_iter()
            .find(|x| x["message"] == "ready")
            .unwrap();
        ready["metrics"]
            .as_str()
            .unwrap_or_else(|| panic!("no metrics address in {ready}"))
            .parse()
            .unwrap()
    }

    /// Records received so far.
    pub fn records_so_far(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// Pids of workers announced ready and not yet reported exited.
    pub fn live_worker_pids(&self) -> Vec<u32> {
        let logs = self.logs();
        let exited: HashSet<u64> = logs
            .iter()
            .filter(|l| l["message"] == "worker exited")
            .filter_map(|l| l["pid"].as_u64())
            .collect();
        logs.iter()
            .filter(|l| l["message"] == "worker ready")
            .filter_map(|l| l["pid"].as_u64())
            .filter(|p| !exited.contains(p))
            .map(|p| p as u32)
            .collect()
    }

    /// Every worker pid ever announced.
    pub fn all_worker_pids(&self) -> HashSet<u32> {
        self.logs()
            .iter()
            .filter(|l| l["message"] == "worker ready")
            .filter_map(|l| l["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }

    /// Writes input (from this thread; keep it small or use `feed`).
    pub fn write(&mut self, data: &[u8]) {
        use std::io::Write;
        self.stdin.as_mut().unwrap().write_all(data).unwrap();
    }

    /// Writes `data` to stdin from a thread, then closes stdin.
    pub fn feed(&mut self, data: Vec<u8>) -> std::thread::JoinHandle<()> {
        use std::io::Write;
        let mut stdin = self.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        })
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for herd to exit (bounded), then for its output readers; returns status and records.
    pub fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, Vec<Value>, Vec<Value>) {
        self.stdin.take();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "herd did not exit within {limit:?}; log:\n{}",
                    dump(&self.logs())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for t in self.readers.drain(..) {
            t.join().unwrap();
        }
        let records = self.records.lock().unwrap().clone();
        let logs = self.logs();
        (status, records, logs)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dump(logs: &[Value]) -> String {
    logs.iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Workers with a ready process (idle or busy) in a `herd status --json` object.
pub fn ready_workers(st: &Value) -> usize {
    st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "idle" || w["state"] == "busy")
        .count()
}

/// A running daemon with its control socket in the fixture dir.
pub struct Daemon {
    pub fx: Fixture,
    pub live: Live,
    pub control: PathBuf,
}

impl Daemon {
    pub fn start(workers: usize, extra: &[&str]) -> Self {
        Self::start_with(workers, extra, &[])
    }

    /// `start` with arguments for herd-chaos (`--protocol 2`: an older worker).
    pub fn start_with(workers: usize, extra: &[&str], worker_args: &[&str]) -> Self {
        let fx = Fixture::new();
        let control = fx.path("control.sock");
        let live = fx.serve_with(&control, &workers.to_string(), extra, worker_args);
        Daemon { fx, live, control }
    }

    /// `herd submit --print-id` of `input` in the background, and the submission's id.
    pub fn submit_with_id(&self, name: &str, input: &str) -> (std::process::Child, String) {
        use std::io::BufRead;
        let mut child = self.submit_bg(name, input, &["--print-id"]);
        // The id comes on stderr as soon as the daemon names the submission.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("herd: submission ") {
                    let _ = tx.send(id.to_string());
                }
            }
        });
        let id = rx
            .recv_timeout(RUN_TIMEOUT)
            .expect("herd submit --print-id");
        (child, id)
    }

    pub fn ctl(&self) -> &str {
        self.control.to_str().unwrap()
    }

    /// `herd submit <extra>` in the background with input from a new file `name`.
    pub fn submit_bg(&self, name: &str, input: &str, extra: &[&str]) -> std::process::Child {
        let file = self.fx.path(name);
        std::fs::write(&file, input).unwrap();
        std::process::Command::new(herd_bin())
            .args([
                "submit",
                "--control",
                self.ctl(),
                "-i",
                file.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Polls `herd status --json` until `cond` holds; returns that status. The daemon and
    /// autoscale tests both wait on it.
    pub fn wait_status(&self, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        wait_for(what, RUN_TIMEOUT, || {
            last = self.status();
            cond(&last)
        });
        last
    }

    /// `herd status --json`, if the daemon answers.
    pub fn try_status(&self) -> Option<Value> {
        let out = self
            .fx
            .herd(&["status", "--control", self.ctl(), "--json"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `herd status --json`, waiting until the daemon answers.
    pub fn status(&self) -> Value {
        let mut st = None;
        wait_for("herd status to answer", RUN_TIMEOUT, || {
            st = self.try_status();
            st.is_some()
        });
        st.unwrap()
    }

    pub fn ctl_cmd(&self, args: &[&str]) {
        let mut all = vec!["ctl", "--control", self.ctl()];
        all.extend_from_slice(args);
        output_ok(&mut self.fx.herd(&all));
    }

    /// Stops with `ctl stop` and returns the exit status and the log.
    pub fn stop(self) -> (std::process::ExitStatus, Vec<Value>, Fixture, PathBuf) {
        self.ctl_cmd(&["stop"]);
        let (status, _, logs) = self.live.finish(RUN_TIMEOUT);
        (status, logs, self.fx, self.control)
    }

    /// Stops with `ctl stop`; it must exit 0 and remove its socket.
    pub fn stop_ok(self) {
        let (status, logs, _fx, control) = self.stop();
        assert!(status.success(), "{}", dump(&logs));
        assert!(!control.exists(), "control socket removed");
    }
}

/// `herd run` (JSON logs) with `workers` workers running `sh -c script`.
pub fn spawn_run_sh(fx: &Fixture, workers: usize, extra: &[&str], script: &str) -> Live {
    let w = workers.to_string();
    let mut args = vec!["run", "--log-format", "json", "-w", &w];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    fx.spawn_herd(&args)
}

/// Waits for `child` to exit within `limit`; kills it and panics otherwise.
pub fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: herd did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids a worker wrapper announced on stderr as "sleeper PID" lines.
pub fn sleeper_pids(logs: &[Value]) -> HashSet<u32> {
    logs.iter()
        .filter_map(|l| {
            l["message"]
                .as_str()?
                .strip_prefix("sleeper ")?
                .parse()
                .ok()
        })
        .collect()
}
