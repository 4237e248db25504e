//! Which standard descriptors were closed when herd was started (`herd run … >&-`).
//!
//! Before `main`, Rust's runtime opens /dev/null on a closed descriptor 0, 1 or 2 (so that a
//! file herd opens never becomes its stdout by accident). Records written to that stdout
//! vanish and herd would exit 0. A constructor in `.init_array`, which the loader runs before
//! the runtime starts, notes which of the three were closed, so herd can refuse to start.

use std::sync::atomic::{AtomicU8, Ordering};

/// Bit `fd` is set when descriptor `fd` was closed at exec.
static CLOSED: AtomicU8 = AtomicU8::new(0);

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static NOTE_CLOSED: extern "C" fn() = note_closed;

extern "C" fn note_closed() {
    use nix::fcntl::{fcntl, FcntlArg};
    let mut closed = 0;
    for fd in 0..3 {
        if fcntl(fd, FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF) {
            closed |= 1 << fd;
        }
    }
    CLOSED.store(closed, Ordering::Relaxed);
}

/// Whether herd was started with descriptor `fd` (0, 1 or 2) closed.
pub fn was_closed(fd: u8) -> bool {
    CLOSED.load(Ordering::Relaxed) & (1 << fd) != 0
}
