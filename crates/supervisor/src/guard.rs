//! The guard: a tiny process that outlives a SIGKILLed herd just long enough to clean up after
//! it.
//!
//! Workers get `PR_SET_PDEATHSIG`, so they die with herd. What they started themselves does
//! not: a worker command such as `sh -c 'helper & exec worker'` leaves `helper` running once
//! herd and the worker are gone, and herd's own cleanup (killing the worker's process group,
//! removing the socket directory) cannot run in a process that was SIGKILLed. So each pool
//! forks a guard that holds the read end of a pipe. The pool writes the id of every worker
//! process group it creates and of every one it has finished with; when the pipe reaches
//! end-of-file — herd exited, normally or not — the guard kills the process groups still
//! listed, removes the socket and its directory, and exits.
//!
//! It never signals a group by its id (`kill(-pgid)`): a group id is its leader's pid, free for
//! reuse once the group's last member is gone, and by the time the guard runs (a stopped or
//! starved guard, a message herd could not write) a listed group may have ended and its id
//! gone to a stranger. It kills, through a pidfd each, the processes it finds in `/proc` that
//! are in a listed group *and* in herd's session, which a stranger's new group is not, unless
//! the process holding the group's id now is not the leader it saw (its start time differs).
//! herd's session may be 0 (a child of an init that never called `setsid`, or of a session
//! leader outside herd's pid namespace): that is a session like any other, not a reason to kill
//! nothing.
//!
//! The guard is forked, not executed, so a library user needs no extra binary. Between fork
//! and exit it makes only async-signal-safe system calls (`read`, `open`, `getdents64`,
//! `pidfd_open`, `pidfd_send_signal`, `unlinkat`, `rmdir`, `close`, `setsid`, `_exit`) on memory prepared before the fork, as a forked child of a
//! multi-threaded process must. It is double-forked (reparented to init or the nearest
//! subreaper, so herd never has to reap it), starts its own session (no terminal signal
//! reaches it, so Ctrl-C stops herd gracefully without taking the guard along) and closes every
//! descriptor but its pipe.
//!
//! What holds where: a descendant that leaves its process group (`setsid`, `setpgid`) escapes
//! both herd and the guard. Only a cgroup catches those; under systemd, the service's cgroup
//! does (`KillMode=control-group`, the default).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::libc;

/// Most process groups the guard tracks at once (each worker has one; a slot's old group is
/// forgotten when its process has been reaped).
const MAX_GROUPS: usize = 16 * 1024;

/// The pool's end of the guard's pipe. Dropping it (herd exiting) lets the guard clean up and
/// exit.
#[derive(Debug)]
pub(crate) struct Guard {
    tx: OwnedFd,
}

impl Guard {
    /// Forks the guard for a pool whose socket is `socket` inside `dir`.
    pub fn start(dir: &Path, socket: &Path) -> io::Result<Self> {
        let dir = CString::new(dir.as_os_str().as_bytes())?;
        // Only the socket's name: the guard removes it relative to the directory it opened.
        let name = socket.file_name().unwrap_or(socket.as_os_str());
        let socket = CString::new(name.as_bytes())?;
        // Close-on-exec: workers must not hold the write end, or the pipe would never end.
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (rx_fd, tx_fd) = (rx.as_raw_fd(), tx.as_raw_fd());
        // SAFETY: both children make only async-signal-safe calls on memory prepared above
        // (see the module docs) and end in `_exit`; the parent only waits for the first.
        let first = unsafe { libc::fork() };
        match first {
            -1 => return Err(io::Error::last_os_error()),
            0 => unsafe {
                // The first child: fork the guard and exit, so the guard is reparented away
                // from herd at once.
                match libc::fork() {
                    0 => guard_main(rx_fd, tx_fd, &dir, &socket),
                    _ => libc::_exit(0),
                }
            },
            child => {
                let mut status = 0;
                // SAFETY: waits for the child forked above, which exits at once.
                while unsafe { libc::waitpid(child, &mut status, 0) } == -1
                    && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
                {
                }
            }
        }
        drop(rx);
        // Never block the pool on the guard: a full pipe means a stopped guard.
        nix::fcntl::fcntl(
            tx.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        Ok(Self { tx })
    }

    /// The guard kills process group `pgid` if herd dies.
    pub fn watch(&self, pgid: u32) {
        self.send(i32::try_from(pgid).unwrap_or(0));
    }

    /// Process group `pgid` is gone; the guard forgets it.
    pub fn forget(&self, pgid: u32) {
        self.send(-i32::try_from(pgid).unwrap_or(0));
    }

    fn send(&self, msg: i32) {
        if msg == 0 {
            return;
        }
        // Four bytes are written whole or not at all (below PIPE_BUF).
        if let Err(e) = nix::unistd::write(&self.tx, &msg.to_ne_bytes()) {
            tracing::warn!(error = %e, "cannot reach the guard process");
        }
    }
}

/// The guard's whole life. Never returns.
/// `socket` is the socket's file name inside `dir`.
unsafe fn guard_main(rx: i32, tx: i32, dir: &CString, socket: &CString) -> ! {
    // SAFETY (all calls below): async-signal-safe system calls on memory prepared before the
    // fork; no allocation, no locks.
    unsafe {
        // herd's session, which its workers and their children share: a stranger that got a
        // worker's group id after the group ended is (unless herd shares a terminal session
        // with it) in another one.
        let herd_session = libc::getsid(0);
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            // herd's handlers write to descriptors the guard closes: restore the defaults.
            libc::signal(sig, libc::SIG_DFL);
        }
        libc::close(tx);
        // Hold nothing of herd's open: its sockets, pipes and terminal.
        if rx > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (rx - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (rx + 1) as u32, u32::MAX, 0u32);
        libc::prctl(libc::PR_SET_NAME, c"herd-guard".as_ptr());

        // Each group's id and its leader's start time when the guard heard of it (0: unknown).
        let mut groups = [(0i32, 0u64); MAX_GROUPS];
        let mut count = 0usize;
        let mut buf = [0u8; 4096];
        let mut carry = [0u8; 4];
        let mut have = 0usize;
        loop {
            let n = libc::read(rx, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 {
                break;
            }
            if n < 0 {
                if *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            for &b in &buf[..n as usize] {
                carry[have] = b;
                have += 1;
                if have < 4 {
                    continue;
                }
                have = 0;
                let msg = i32::from_ne_bytes(carry);
                if msg > 0 {
                    if count < MAX_GROUPS {
                        let started = stat_ids(msg).map_or(0, |s| s.started);
                        groups[count] = (msg, started);
                        count += 1;
                    }
                } else if let Some(k) = groups[..count].iter().position(|&(g, _)| g == -msg) {
                    count -= 1;
                    groups[k] = groups[count];
                }
            }
        }
        kill_groups(&groups[..count], herd_session);
        // Under --user the directory belongs to the workers' user, who could have swapped it
        // for a symlink: open it without following one, and unlink the socket inside it.
        let fd = libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::unlinkat(fd, socket.as_ptr(), 0);
            libc::close(fd);
            // rmdir never follows a symlink.
            libc::rmdir(dir.as_ptr());
        }
        libc::_exit(0)
    }
}

/// SIGKILLs every process in one of `groups` that is in herd's session `session` (and whose
/// group's id is not held by a newer leader), each through a pidfd opened and then re-checked,
/// so that a pid reused in between is never hit. A few passes catch what forked during the
/// previous one. Async-signal-safe: stack buffers and syscalls.
unsafe fn kill_groups(groups: &[(i32, u64)], session: i32) {
    // Session 0 is a real one (see the module docs); only getsid's error is not.
    if groups.is_empty() || session < 0 {
        return;
    }
    // SAFETY (all calls): system calls on stack buffers.
    unsafe {
        for _ in 0..4 {
            let proc_dir = libc::open(
                c"/proc".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            if proc_dir < 0 {
                return;
            }
            let mut killed = 0;
            let mut buf = [0u8; 8192];
            loop {
                let n = libc::syscall(libc::SYS_getdents64, proc_dir, buf.as_mut_ptr(), buf.len());
                if n <= 0 {
                    break;
                }
                let n = n as usize;
                let mut at = 0;
                // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                while at + 19 < n {
                    let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
                    if reclen == 0 || at + reclen > n {
                        break;
                    }
                    let pid = parse_pid(&buf[at + 19..at + reclen]);
                    at += reclen;
                    let Some(pid) = pid else { continue };
                    let ours = |pid| match stat_ids(pid) {
                        Some(s) if s.state != b'Z' && s.session == session => {
                            groups.iter().any(|&(g, started)| {
                                g == s.pgrp && (started == 0 || leader_unchanged(g, started))
                            })
                        }
                        _ => false,
                    };
                    if !ours(pid) {
                        continue;
                    }
                    let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
                    if fd < 0 {
                        continue;
                    }
                    // Still ours once the pidfd pins it: the pid was not reused in between.
                    if ours(pid) {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            fd,
                            libc::SIGKILL,
                            std::ptr::null::<libc::siginfo_t>(),
                            0u32,
                        );
                        killed += 1;
                    }
                    libc::close(fd);
                }
            }
            libc::close(proc_dir);
            if killed == 0 {
                return;
            }
        }
    }
}

/// A `/proc` entry's name as a pid (NUL-terminated digits), if it is one.
fn parse_pid(name: &[u8]) -> Option<i32> {
    let name = &name[..name.iter().position(|&b| b == 0)?];
    if name.is_empty() || name.len() > 9 {
        return None;
    }
    let mut pid = 0i32;
    for &b in name {
        if !b.is_ascii_digit() {
            return None;
        }
        pid = pid * 10 + i32::from(b - b'0');
    }
    Some(pid)
}

/// Whether group `pgid`'s id is not held by a process other than the leader that started at
/// `started`: the leader is still there, or gone (its group lives on while a member does, and
/// its id cannot be reused until none does).
unsafe fn leader_unchanged(pgid: i32, started: u64) -> bool {
    // SAFETY: reads /proc with stack buffers.
    unsafe { stat_ids(pgid) }.is_none_or(|s| s.started == started)
}

/// What the guard reads of a process in `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: u8,
    pgrp: i32,
    session: i32,
    /// Clock ticks after boot: with the pid, names one process for good.
    started: u64,
}

/// `pid`'s `/proc/<pid>/stat`. Async-signal-safe.
unsafe fn stat_ids(pid: i32) -> Option<Stat> {
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    let mut digits = [0u8; 10];
    let (mut len, mut rest) = (0, pid);
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for i in (0..len).rev() {
        path[at] = digits[i];
        at += 1;
    }
    path[at..at + 5].copy_from_slice(b"/stat");
    let mut buf = [0u8; 512];
    // SAFETY: system calls on the stack buffers above; `path` is NUL-terminated (zeroed).
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    parse_stat(buf.get(..usize::try_from(n).ok()?)?)
}

/// `pid (comm) S ppid pgrp session ... starttime ...`: the state, pgrp, session and start time
/// (comm may hold anything, so fields count from its last `)`).
fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    let num = |f: &[u8]| -> Option<i32> {
        let (neg, digits) = match f.split_first() {
            Some((b'-', d)) => (true, d),
            _ => (false, f),
        };
        let mut v = 0i32;
        for &b in digits {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(i32::from(b - b'0'))?;
        }
        Some(if neg { -v } else { v })
    };
    let _ppid = fields.next()?;
    let pgrp = num(fields.next()?)?;
    let session = num(fields.next()?)?;
    // tty_nr through itrealvalue, then starttime (field 22).
    let started = fields.nth(15)?;
    let mut ticks = 0u64;
    for &b in started {
        if !b.is_ascii_digit() {
            return None;
        }
        ticks = ticks.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(Stat {
        state,
        pgrp,
        session,
        started: ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let tail = " 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 98765 4096 3\n";
        assert_eq!(
            parse_stat(format!("42 (a) b) 7 (x) S 1 40 39{tail}").as_bytes()),
            Some(Stat {
                state: b'S',
                pgrp: 40,
                session: 39,
                started: 98765
            })
        );
        assert_eq!(
            parse_stat(format!("42 (sleep) Z 1 -1 0{tail}").as_bytes())
                .map(|s| (s.pgrp, s.session)),
            Some((-1, 0))
        );
        assert_eq!(parse_stat(b"42 (sleep) S 1 40 39 0"), None);
        assert_eq!(parse_stat(b"42 (sleep"), None);
        assert_eq!(parse_pid(b"1234\0\0"), Some(1234));
        assert_eq!(parse_pid(b"self\0"), None);
        assert_eq!(parse_pid(b"\0"), None);
    }

    #[test]
    fn this_process_is_found_in_its_own_group_and_session() {
        let me = std::process::id() as i32;
        // SAFETY: reads /proc with stack buffers.
        let s = unsafe { stat_ids(me) }.expect("own stat");
        assert_ne!(s.state, b'Z');
        assert_eq!(s.pgrp, nix::unistd::getpgrp().as_raw());
        assert_eq!(s.session, nix::unistd::getsid(None).expect("sid").as_raw());
        assert!(s.started > 0);
        // SAFETY: as above.
        assert!(unsafe { leader_unchanged(me, s.started) });
        assert!(!unsafe { leader_unchanged(me, s.started + 1) });
    }
}
