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
//! The guard is forked, not executed, so a library user needs no extra binary. Between fork
//! and exit it makes only async-signal-safe system calls (`read`, `kill`, `open`, `unlinkat`, `rmdir`,
//! `close`, `setsid`, `_exit`) on memory prepared before the fork, as a forked child of a
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

        let mut groups = [0i32; MAX_GROUPS];
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
                        groups[count] = msg;
                        count += 1;
                    }
                } else if let Some(k) = groups[..count].iter().position(|&g| g == -msg) {
                    count -= 1;
                    groups[k] = groups[count];
                }
            }
        }
        for &g in &groups[..count] {
            libc::kill(-g, libc::SIGKILL);
        }
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
