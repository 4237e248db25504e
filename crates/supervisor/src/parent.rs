//! A daemon owned by one program: `herd serve --die-with-parent PID` stops when that program
//! exits, however it exits (SIGKILL included), so that a pool started by a script or a
//! notebook (Python's `herd.serve()`) is never left behind it.
//!
//! The parent is watched through a pidfd, which becomes readable when the process exits, not
//! through `PR_SET_PDEATHSIG`: that signal follows the *thread* that forked herd, and the
//! program's thread may end long before the program does. The PID is given rather than read
//! with `getppid()` so that a parent that died before herd looked is noticed: once the pidfd
//! is open, herd checks that PID is still its parent, so the pidfd cannot name a stranger that
//! was given a reused PID.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Why the parent cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// PID is not (or no longer) herd's parent: it exited before herd started watching, or
    /// the caller gave another process.
    #[error("process {pid} is not herd's parent (herd's parent is {actual}): it has exited, or it is another process")]
    NotParent { pid: u32, actual: u32 },
    /// `pidfd_open` failed (kernels before 5.3 lack it).
    #[error("cannot watch process {pid}: {source}")]
    Watch { pid: u32, source: io::Error },
}

/// herd's parent process, watched. Must be made on a tokio runtime with I/O enabled.
#[derive(Debug)]
pub struct Parent {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
}

impl Parent {
    /// Watches `pid`, which must be herd's parent.
    ///
    /// # Errors
    /// [`ParentError::NotParent`] if it is not (it has already exited), [`ParentError::Watch`]
    /// if the kernel cannot give a pidfd for it.
    pub fn watch(pid: u32) -> Result<Self, ParentError> {
        let watch_err = |source| ParentError::Watch { pid, source };
        let raw = i32::try_from(pid)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| watch_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: a plain system call; its result is checked before use.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, raw, 0) };
        let Some(fd) = i32::try_from(fd).ok().filter(|&fd| fd >= 0) else {
            let err = io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(nix::libc::ESRCH) => ParentError::NotParent {
                    pid,
                    actual: nix::unistd::getppid().as_raw().unsigned_abs(),
                },
                _ => watch_err(err),
            });
        };
        // SAFETY: `pidfd_open` just returned this descriptor, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // After the pidfd is open: if PID is still our parent, the pidfd is our parent's.
        let actual = nix::unistd::getppid().as_raw().unsigned_abs();
        if actual != pid {
            return Err(ParentError::NotParent { pid, actual });
        }
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same while
        // registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| watch_err(io::Error::from(e)))?;
        Ok(Self { pid, fd })
    }

    /// The watched process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves once the parent has exited.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits for the pidfd to become readable, which it stays.
    pub async fn exited(&self) {
        // A pidfd only ever becomes readable, for good, when its process exits; an error of
        // the reactor is not an exit, so it waits on (never seen in practice).
        match self.fd.readable().await {
            Ok(_guard) => {}
            Err(e) => {
                tracing::warn!(pid = self.pid, error = %e, "cannot watch the parent process");
                std::future::pending::<()>().await;
            }
        }
    }
}
