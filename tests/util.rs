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
