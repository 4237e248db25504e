//! Worker processes as the operating system sees them: spawning one defensively, watching it
//! until it exits, forwarding what it prints to the log, and killing its process group.
//!
//! Each worker runs in its own process group, so a kill reaches the worker's own children too;
//! it gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with herd even when herd is SIGKILLed. That
//! signal tracks the *thread* that forked, so spawning must happen on a long-lived runtime
//! thread (the pool's own task), never from `spawn_blocking`. The watcher task owns the
//! `Child` (kill-on-drop) and reports the exit status; tokio reaps it, nothing else installs a
//! SIGCHLD handler.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use nix::sys::resource::Resource;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::config::PoolConfig;
use crate::guard::Guard;
use crate::launch::{Launch, Limits, DEFAULT_PATH};
use crate::msg::Exited;
use crate::slot::{Exit, WorkerId};

/// Lines of a worker's output (each stream) kept for error messages.
const TAIL_LINES: usize = 8;
/// Longest forwarded line; the rest of a longer line is cut.
const MAX_LINE: usize = 8 * 1024;
/// Lines of one worker stream logged per [`BURST_WINDOW`]: room for a whole backtrace.
const BURST_LINES: u32 = 100;
const BURST_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The exit status as herd reports it.
fn exit_of(status: io::Result<ExitStatus>) -> Exit {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        },
        Err(_) => Exit::Code(-1),
    }
}

/// A spawned worker process.
pub(crate) struct Spawned {
    pub pid: u32,
}

/// Starts one worker for slot `id` with its token in the environment, and the tasks that
/// watch it. The exit arrives later as an [`Exited`] message.
pub(crate) fn spawn_worker(
    cfg: &PoolConfig,
    id: WorkerId,
    socket: &std::path::Path,
    token: &str,
    events: &mpsc::UnboundedSender<Exited>,
    guard: Option<&Arc<Guard>>,
) -> io::Result<Spawned> {
    let Some((program, args)) = cfg.command.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty worker command",
        ));
    };
    let launch = &cfg.launch;
    let mut cmd = Command::new(program);
    cmd.args(args);
    set_environment(&mut cmd, launch);
    cmd.env(herd_proto::ENV_SOCKET, socket)
        .env(herd_proto::ENV_TOKEN, token)
        .env(herd_proto::ENV_WORKER, id.slot.to_string())
        .env(herd_proto::ENV_MAX_FRAME, cfg.max_frame.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let parent = nix::unistd::getpid();
    let rlimits = rlimits_for(&launch.limits);
    let nice = launch.nice;
    // Prepared before the fork: the child must not allocate.
    let ids = launch
        .user
        .as_ref()
        .map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (setrlimit, setpriority, setgroups, setgid, setuid, prctl, getppid, _exit) on
    // memory prepared before the fork; it touches no locks and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            for &(resource, soft, hard) in &rlimits {
                nix::sys::resource::setrlimit(resource, soft, hard).map_err(io::Error::from)?;
            }
            // Before dropping root: only root may lower the nice level below 0.
            if let Some(n) = nice {
                if libc::setpriority(libc::PRIO_PROCESS, 0, n) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid, groups)) = &ids {
                // Groups first: once the uid is dropped, they can no longer be changed.
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // After the uid change, which clears the parent-death signal.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // herd may have died between fork and prctl: then nobody would ever kill us.
            if nix::unistd::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    let exit_watch = exit_watch(pid);
    // The worker's group dies with herd even if herd is SIGKILLed.
    let guard = guard.cloned();
    if let Some(g) = &guard {
        g.watch(pid);
    }

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let events = events.clone();
    tokio::spawn(async move {
        let out_task = stdout.map(|s| tokio::spawn(forward_lines(s, id, pid, "stdout")));
        let err_task = stderr.map(|s| tokio::spawn(forward_lines(s, id, pid, "stderr")));
        // Whatever the worker left behind in its process group goes with it: killed while the
        // worker is an unreaped zombie, whose pid (the group's id) no stranger can have yet.
        let pinned = match &exit_watch {
            Some(fd) => fd.readable().await.is_ok(),
            None => false,
        };
        if pinned {
            kill_group(pid);
        }
        let status = exit_of(child.wait().await);
        if !pinned {
            kill_group(pid);
        }
        if let Some(g) = &guard {
            g.forget(pid);
        }
        // The pipes close with the process unless a grandchild holds them; don't wait long.
        let wait = std::time::Duration::from_millis(50);
        let mut stderr_tail = Vec::new();
        if let Some(t) = err_task {
            if let Ok(Ok(lines)) = tokio::time::timeout(wait, t).await {
                stderr_tail = lines.into();
            }
        }
        let mut stdout_tail = Vec::new();
        if let Some(t) = out_task {
            if let Ok(Ok(lines)) = tokio::time::timeout(wait, t).await {
                stdout_tail = lines.into();
            }
        }
        let _ = events.send(Exited {
            id,
            exit: status,
            stdout_tail,
            stderr_tail,
        });
    });
    Ok(Spawned { pid })
}

/// The worker's environment: herd's own (without herd's `HERD_*` settings, which may hold
/// secrets such as a NATS token) or, with `clear_env`, a minimal one; then the user's
/// identity variables and the `--env` ones. The protocol variables are set after this.
fn set_environment(cmd: &mut Command, launch: &Launch) {
    if launch.clear_env {
        cmd.env_clear();
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        let lang = std::env::var_os("LANG").unwrap_or_else(|| "C.UTF-8".into());
        cmd.env("PATH", path).env("HOME", home).env("LANG", lang);
    } else {
        for (key, _) in std::env::vars_os() {
            if key.as_encoded_bytes().starts_with(b"HERD_") {
                cmd.env_remove(key);
            }
        }
    }
    if let Some(user) = &launch.user {
        // As su and sudo do: a worker writing to ~ must not aim at herd's home.
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    for (key, value) in &launch.env {
        cmd.env(key, value);
    }
}

/// The limits to set in a worker: the configured ones, and the descriptor limit herd started
/// with (not the one it raised for itself) unless one is configured.
fn rlimits_for(limits: &Limits) -> Vec<(Resource, u64, u64)> {
    let mut out = Vec::with_capacity(4);
    match limits.open_files {
        Some(n) => out.push((Resource::RLIMIT_NOFILE, n, n)),
        None => {
            if let Some(&(soft, hard)) = NOFILE_AT_START.get() {
                out.push((Resource::RLIMIT_NOFILE, soft, hard));
            }
        }
    }
    if let Some(n) = limits.address_space {
        out.push((Resource::RLIMIT_AS, n, n));
    }
    if let Some(n) = limits.core {
        out.push((Resource::RLIMIT_CORE, n, n));
    }
    if let Some(d) = limits.cpu {
        // At the soft limit SIGXCPU (fatal unless handled), a second later SIGKILL.
        let secs = d.as_secs().max(1);
        out.push((Resource::RLIMIT_CPU, secs, secs + 1));
    }
    out
}

/// Logs each non-blank line a worker writes to `stream` (stdout or stderr), with its `worker`
/// and `pid`, and returns the last few (its tail, for error messages).
///
/// A burst (a backtrace, a chatty worker) is logged up to [`BURST_LINES`] lines per
/// [`BURST_WINDOW`]; the lines past that are counted, not logged, and one warning per window
/// says how many. That bounds what one worker can put in the log, and what it costs the pool's
/// thread, which this task shares.
async fn forward_lines<R: AsyncRead + Unpin>(
    mut r: R,
    id: WorkerId,
    pid: u32,
    stream: &'static str,
) -> VecDeque<String> {
    let mut out = Forward {
        id,
        pid,
        stream,
        tail: VecDeque::with_capacity(TAIL_LINES),
        window_end: None,
        logged: 0,
        suppressed: 0,
    };
    let mut buf = Vec::with_capacity(4096);
    // The rest of a line that was cut at MAX_LINE is skipped up to its newline.
    let mut skipping = false;
    let mut chunk = [0u8; 4096];
    loop {
        // While lines are held back, the window's end reports them even if the worker falls
        // silent. A read is cancel-safe: nothing is lost when the deadline wins.
        let read = match out.window_end.filter(|_| out.suppressed > 0) {
            Some(end) => match tokio::time::timeout_at(end, r.read(&mut chunk)).await {
                Ok(read) => read,
                Err(_) => {
                    out.report_suppressed();
                    continue;
                }
            },
            None => r.read(&mut chunk).await,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &chunk[..n];
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            if skipping {
                skipping = false;
            } else {
                buf.extend_from_slice(&rest[..nl]);
                out.line(&buf);
            }
            buf.clear();
            rest = &rest[nl + 1..];
        }
        if !skipping {
            buf.extend_from_slice(rest);
            if buf.len() >= MAX_LINE {
                buf.truncate(MAX_LINE);
                buf.extend_from_slice(" [line cut]".as_bytes());
                out.line(&buf);
                buf.clear();
                skipping = true;
            }
        }
    }
    if !buf.is_empty() {
        out.line(&buf);
    }
    out.report_suppressed();
    out.tail
}

/// [`forward_lines`]' state for one worker stream.
struct Forward {
    id: WorkerId,
    pid: u32,
    stream: &'static str,
    tail: VecDeque<String>,
    /// The end of the current rate-limit window (from its first line).
    window_end: Option<tokio::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl Forward {
    fn line(&mut self, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end();
        if text.trim_start().is_empty() {
            return;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.to_string());

        let now = tokio::time::Instant::now();
        if self.window_end.is_none_or(|end| now >= end) {
            self.report_suppressed();
            self.window_end = Some(now + BURST_WINDOW);
            self.logged = 0;
        }
        if self.logged < BURST_LINES {
            self.logged += 1;
            // A string field (not a format argument): a line that happens to be JSON stays a
            // string in JSON logs.
            tracing::info!(
                target: "herd::worker",
                message = text,
                worker = self.id.slot,
                pid = self.pid,
                stream = self.stream,
            );
        } else {
            self.suppressed += 1;
        }
    }

    /// Logs how many lines the current window held back, if any.
    fn report_suppressed(&mut self) {
        if self.suppressed == 0 {
            return;
        }
        tracing::warn!(
            target: "herd::worker",
            worker = self.id.slot,
            pid = self.pid,
            stream = self.stream,
            suppressed = self.suppressed,
            "worker output suppressed: more than {BURST_LINES} lines in {}s",
            BURST_WINDOW.as_secs()
        );
        self.suppressed = 0;
    }
}

/// The descriptor limit herd started with, when [`raise_nofile_limit`] raised it: workers get
/// it back, so herd's headroom is not passed on to programs that may not expect it.
static NOFILE_AT_START: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raises this process's soft limit on open descriptors to the hard limit (at most `max`), so
/// that client connections cannot take the descriptors the pool needs to restart workers;
/// workers spawned afterwards get the original limit back. Returns the soft limit in force.
pub fn raise_nofile_limit(max: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let want = hard.min(max);
    if soft < want {
        match setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            Ok(()) => {
                let _ = NOFILE_AT_START.set((soft, hard));
                return want;
            }
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the descriptor limit"),
        }
    }
    soft
}

/// A pidfd of child `pid`, readable once it has exited but before it is reaped (only the
/// watcher reaps it, after): the group's id is then still the worker's. `None` on kernels
/// without `pidfd_open` (before 5.3).
fn exit_watch(pid: u32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    let raw = i32::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: a plain system call; its result is checked before use.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, raw, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `pidfd_open` just returned this descriptor, owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the descriptor, which stays open and the same while registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .ok()
}

/// Sends SIGKILL to the worker's whole process group (its children included).
pub(crate) fn kill_group(pid: u32) {
    if pid == 0 {
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, error = %e, "cannot kill worker process group"),
    }
}

/// The process group of `pid`, if it still exists.
pub(crate) fn process_group_of(pid: u32) -> Option<u32> {
    let raw = i32::try_from(pid).ok()?;
    nix::unistd::getpgid(Some(Pid::from_raw(raw)))
        .ok()
        .and_then(|p| u32::try_from(p.as_raw()).ok())
}

/// Resident memory of `pid` in bytes, from `/proc/<pid>/statm`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    Some(pages * page)
}

/// This process's peak resident memory in bytes (`VmHWM`), e.g. for a closing log line.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_at_least_what_is_resident() {
        let peak = peak_rss_bytes().expect("VmHWM");
        let now = rss_bytes(std::process::id()).expect("statm");
        assert!(peak >= now / 2 && peak > 0, "{peak} {now}");
    }

    fn id() -> WorkerId {
        WorkerId { slot: 0, gen: 1 }
    }

    #[tokio::test]
    async fn the_tail_skips_blank_lines_and_keeps_the_last_ones() {
        let input: Vec<u8> = (0..20)
            .flat_map(|i| format!("line {i}\r\n\n   \n").into_bytes())
            .collect();
        let tail = forward_lines(&input[..], id(), 1, "stdout").await;
        let want: Vec<String> = (12..20).map(|i| format!("line {i}")).collect();
        assert_eq!(Vec::from(tail), want);
    }

    #[tokio::test]
    async fn a_long_line_is_cut_and_the_rest_of_it_skipped() {
        let mut input = vec![b'x'; 3 * MAX_LINE];
        input.extend_from_slice(b"\nnext\nlast without newline");
        let tail = forward_lines(&input[..], id(), 1, "stderr").await;
        assert_eq!(tail.len(), 3, "{tail:?}");
        assert_eq!(tail[0].len(), MAX_LINE + " [line cut]".len());
        assert!(tail[0].ends_with("x [line cut]"));
        assert_eq!(tail[1], "next");
        assert_eq!(tail[2], "last without newline");
    }
}
