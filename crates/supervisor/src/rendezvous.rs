//! Where workers find their supervisor: a private directory (mode 0700, fresh per pool, removed
//! on drop) holding one listening Unix socket, and the handshake each new connection must pass
//! before the pool sees it.
//!
//! The accept loop only accepts; each connection's first frame is read in its own task under
//! the start timeout, so a silent or slow peer cannot hold up other workers. What the peer
//! claims (token) and what the kernel says about it (uid, pid) are both passed to the pool,
//! which alone knows which token belongs to which spawned child.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herd_proto::codec::FrameCodec;
use herd_proto::{FromWorker, ToWorker};
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use tokio::io::Interest;
use tokio::net::unix::UCred;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::launch::Identity;
use crate::link::{self, WorkerSocket};

/// What a new connection on the worker socket amounted to.
pub(crate) enum Arrival {
    /// A well-formed `Hello`.
    Hello(Greeting),
    /// A peer that failed the handshake (garbage, another frame, silence). The pool decides,
    /// from the peer's credentials, whether it was one of its workers (a start failure) or a
    /// stranger (ignored).
    Failed { cred: UCred, problem: String },
}

/// A connection that sent a well-formed `Hello`; not yet matched to a worker.
pub(crate) struct Greeting {
    pub protocol: u32,
    pub pid: u32,
    pub token: String,
    pub cred: UCred,
    pub conn: WorkerSocket,
}

/// The socket's name inside the runtime directory.
const SOCKET_NAME: &str = "workers.sock";

/// The private directory and the socket path inside it. Dropping it removes both.
///
/// Under `--user` the directory ends up owned by the workers' user, who may then put anything
/// in it, symlinks included. So herd (possibly root) never resolves a path inside it: it creates,
/// binds, changes owners and removes relative to descriptors it holds, without following
/// symlinks, and hands the directory over only once everything in it is set up.
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    /// The directory the runtime directory was made in.
    base: OwnedFd,
    /// The runtime directory's name in `base`.
    name: OsString,
    /// The runtime directory itself, opened when herd made it.
    fd: OwnedFd,
    dir: PathBuf,
    socket: PathBuf,
    /// The worker user the directory and socket belong to, when not herd's.
    owner: Option<(u32, u32)>,
}

impl RuntimeDir {
    /// Creates a fresh directory with mode 0700 under `base` (or `$XDG_RUNTIME_DIR`, or the
    /// temp dir), herd's until [`bind`](Self::bind) hands it to an `owner` (workers running as
    /// another user), still 0700, so only they (and root) get in; a base that user cannot
    /// reach is skipped when it was only a default, and refused when it was asked for.
    pub fn create(base: Option<&Path>, owner: Option<&Identity>) -> io::Result<Self> {
        let base_path = choose_base(base, owner)?;
        let base_fd = open_dir(None, &base_path, OFlag::empty())?;
        sweep_stale(&base_fd, owner.map(|o| o.uid));
        let mut last_err = None;
        for _ in 0..8 {
            let name = format!("herd-{}-{}", std::process::id(), random_hex(6)?);
            match mkdirat(Some(base_fd.as_raw_fd()), name.as_str(), Mode::S_IRWXU) {
                Ok(()) => {
                    let fd = open_dir(Some(&base_fd), Path::new(&name), OFlag::O_NOFOLLOW)?;
                    // Exactly 0700 whatever the umask, and verifiably the directory just made.
                    fchmod(fd.as_raw_fd(), Mode::S_IRWXU)?;
                    let st = fstat(fd.as_raw_fd())?;
                    if st.st_uid != nix::unistd::geteuid().as_raw() || !is(&st, SFlag::S_IFDIR) {
                        return Err(io::Error::other(format!(
                            "{} is not the directory herd just created",
                            base_path.join(&name).display()
                        )));
                    }
                    let dir = base_path.join(&name);
                    return Ok(Self {
                        base: base_fd,
                        name: name.into(),
                        fd,
                        socket: dir.join(SOCKET_NAME),
                        dir,
                        owner: owner.map(|o| (o.uid, o.gid)),
                    });
                }
                Err(nix::errno::Errno::EEXIST) => {
                    last_err = Some(io::Error::from(nix::errno::Errno::EEXIST));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("cannot create runtime directory")))
    }

    /// Binds the worker socket in the directory; with an owner, the socket is theirs too (a
    /// connect needs write permission on it), and then the directory.
    pub fn bind(&self) -> io::Result<UnixListener> {
        // There is no bindat(2): bind through the descriptor's /proc link, so the path cannot
        // be redirected between herd making the directory and binding in it.
        let via = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(SOCKET_NAME);
        let listener = match UnixListener::bind(&via) {
            // No /proc: the path, which only herd can change below its base until the
            // hand-over (the check below catches a base that led elsewhere).
            Err(e) if e.kind() == io::ErrorKind::NotFound => UnixListener::bind(&self.socket)?,
            other => other?,
        };
        // Nobody else can write in the directory yet: what is there now is what herd bound.
        let st = fstatat(
            Some(self.fd.as_raw_fd()),
            SOCKET_NAME,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || !is(&st, SFlag::S_IFSOCK) {
            return Err(io::Error::other(format!(
                "{} is not the socket herd just bound",
                self.socket.display()
            )));
        }
        if let Some((uid, gid)) = self.owner {
            let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            fchownat(
                Some(self.fd.as_raw_fd()),
                SOCKET_NAME,
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            // Last: from here on the workers' user may change what is inside.
            fchown(self.fd.as_raw_fd(), uid, gid)?;
        }
        Ok(listener)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // Everything in the directory is herd's or its workers': remove it all, through the
        // descriptor (the workers may have moved the directory or swapped it for a symlink).
        let _ = unlinkat(
            Some(self.fd.as_raw_fd()),
            SOCKET_NAME,
            UnlinkatFlags::NoRemoveDir,
        );
        clear_dir(&self.fd);
        remove_if_same(&self.base, &self.name, &self.fd);
    }
}

fn is(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// Opens directory `path` (relative to `at` if given) for use as a descriptor, with `extra`
/// flags such as `O_NOFOLLOW`.
fn open_dir(at: Option<&OwnedFd>, path: &Path, extra: OFlag) -> io::Result<OwnedFd> {
    let fd = openat(
        at.map(|d| d.as_raw_fd()),
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra,
        Mode::empty(),
    )?;
    // SAFETY: `openat` just returned this descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path that lists, or reaches into, the directory open as `fd`.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Removes everything inside the directory open as `dir`, never following a symlink: each
/// entry is unlinked relative to the descriptor; a subdirectory goes with std's
/// `remove_dir_all`, which opens each level with `O_NOFOLLOW` and unlinks relative to it.
fn clear_dir(dir: &OwnedFd) {
    let Ok(entries) = std::fs::read_dir(fd_path(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if unlinkat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        ) == Err(nix::errno::Errno::EISDIR)
        {
            let _ = std::fs::remove_dir_all(fd_path(dir).join(&name));
        }
    }
}

/// Removes the (empty) directory `name` in `base` if it is still the one open as `dir`.
fn remove_if_same(base: &OwnedFd, name: &OsStr, dir: &OwnedFd) -> bool {
    let here = fstatat(Some(base.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW);
    let ours = fstat(dir.as_raw_fd());
    match (here, ours) {
        (Ok(h), Ok(o)) if (h.st_dev, h.st_ino) == (o.st_dev, o.st_ino) => {
            unlinkat(Some(base.as_raw_fd()), name, UnlinkatFlags::RemoveDir).is_ok()
        }
        _ => false,
    }
}

/// Where the runtime directory goes: `base` if given, else `$XDG_RUNTIME_DIR`, else the temp
/// dir; for an `owner`, only a place that user can reach.
fn choose_base(base: Option<&Path>, owner: Option<&Identity>) -> io::Result<PathBuf> {
    let blocked = |dir: &Path| owner.and_then(|o| o.blocked_at(dir));
    if let Some(b) = base.filter(|p| p.is_dir()) {
        if let Some(at) = blocked(b) {
            return Err(unreachable_err(owner, b, &at));
        }
        return Ok(b.to_path_buf());
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
    {
        match blocked(&xdg) {
            None => return Ok(xdg),
            Some(at) => tracing::debug!(
                dir = %xdg.display(),
                blocked = %at.display(),
                "XDG_RUNTIME_DIR is out of the worker user's reach; using the temp dir"
            ),
        }
    }
    let tmp = std::env::temp_dir();
    match blocked(&tmp) {
        None => Ok(tmp),
        Some(at) => Err(unreachable_err(owner, &tmp, &at)),
    }
}

fn unreachable_err(owner: Option<&Identity>, base: &Path, at: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "worker user {} cannot reach {} ({} is not searchable by it)",
            owner.map_or("?", |o| o.name.as_str()),
            base.display(),
            at.display()
        ),
    )
}

/// Removes runtime directories left by herd processes that were SIGKILLed (their Drop never
/// ran, and the guard only removes the socket): `herd-<pid>-<hex>` directories of herd's user
/// or the workers' whose pid is gone, with whatever the workers left in them.
fn sweep_stale(base: &OwnedFd, worker_uid: Option<u32>) {
    let Ok(entries) = std::fs::read_dir(fd_path(base)) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("herd-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // A real directory (a planted symlink is not followed), herd's or, when workers run
        // as another user, theirs.
        let ours = |st: &FileStat| {
            is(st, SFlag::S_IFDIR) && (st.st_uid == me || Some(st.st_uid) == worker_uid)
        };
        let Ok(fd) = open_dir(Some(base), Path::new(&name), OFlag::O_NOFOLLOW) else {
            continue;
        };
        if !fstat(fd.as_raw_fd()).is_ok_and(|st| ours(&st)) {
            continue;
        }
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            || std::path::Path::new(&format!("/proc/{pid}")).exists();
        if alive {
            continue;
        }
        clear_dir(&fd);
        if remove_if_same(base, &name, &fd) {
            tracing::debug!(dir = ?name, "removed a stale runtime directory");
        }
    }
}

/// `n` random bytes from the kernel, hex-encoded (tokens and directory names).
pub(crate) fn random_hex(n: usize) -> io::Result<String> {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Accepts connections forever, handing each to its own handshake task. Greetings go to
/// `out`; the loop ends when `out` is closed.
pub(crate) async fn accept_loop(
    listener: UnixListener,
    max_frame: usize,
    handshake_timeout: Duration,
    out: mpsc::UnboundedSender<Arrival>,
) {
    loop {
        let stream = tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: keep serving, but don't spin.
                    tracing::warn!(error = %e, "accepting a worker connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = out.closed() => return,
        };
        let out = out.clone();
        tokio::spawn(async move {
            let cred = match stream.peer_cred() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read peer credentials; connection dropped");
                    return;
                }
            };
            let mut reader = FramedRead::new(stream, FrameCodec::new(max_frame));
            let first = tokio::time::timeout(handshake_timeout, reader.next()).await;
            let problem = match first {
                Ok(Some(Ok(FromWorker::Hello {
                    protocol,
                    pid,
                    token,
                }))) => match read_only(reader) {
                    Ok(conn) => {
                        let _ = out.send(Arrival::Hello(Greeting {
                            protocol,
                            pid,
                            token,
                            cred,
                            conn,
                        }));
                        return;
                    }
                    Err(e) => format!("its connection could not be registered: {e}"),
                },
                Ok(Some(Ok(other))) => {
                    format!(
                        "its first frame was {} instead of Hello",
                        frame_name(&other)
                    )
                }
                Ok(Some(Err(e))) => match quote_text(reader.read_buffer()) {
                    Some(text) => {
                        format!("it wrote text ({text}) where herd expects a Hello frame")
                    }
                    None => format!("it sent a bad handshake frame ({e})"),
                },
                Ok(None) => "it closed its connection before sending Hello".to_string(),
                Err(_) => "it sent no Hello within the start timeout".to_string(),
            };
            let _ = out.send(Arrival::Failed { cred, problem });
        });
    }
}

/// The start of what a peer sent, quoted, if it looks like text (a program that prints lines
/// is the usual mistake).
fn quote_text(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(60)];
    let text = std::str::from_utf8(head).ok()?;
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return None;
    }
    let more = if bytes.len() > head.len() { "..." } else { "" };
    Some(format!("{:?}{more}", text))
}

fn frame_name(frame: &FromWorker) -> &'static str {
    match frame {
        FromWorker::Hello { .. } => "Hello",
        FromWorker::Done { .. } => "Done",
        FromWorker::Heartbeat => "Heartbeat",
        FromWorker::Chunk { .. } => "Chunk",
        FromWorker::Withdrawn { .. } => "Withdrawn",
        FromWorker::Kept { .. } => "Kept",
        FromWorker::Batching { .. } => "Batching",
    }
}

/// Re-registers a handshaken connection for read readiness only (see [`WorkerSocket`]).
fn read_only(
    reader: FramedRead<tokio::net::UnixStream, FrameCodec<FromWorker, ToWorker>>,
) -> io::Result<WorkerSocket> {
    let parts = reader.into_parts();
    // Leaves the socket in non-blocking mode.
    let socket = Arc::new(parts.io.into_std()?);
    Ok(WorkerSocket {
        socket: link::register(socket, Interest::READABLE)?,
        read_buf: parts.read_buf,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn runtime_dir_is_private_and_removed() {
        let base = std::env::temp_dir();
        let rd = RuntimeDir::create(Some(&base), None).unwrap();
        let dir = rd.socket().parent().unwrap().to_path_buf();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(rd.socket(), b"").unwrap();
        drop(rd);
        assert!(!dir.exists());
    }
}
