//! Where workers find their supervisor: a private directory (mode 0700, fresh per pool, removed
//! on drop) holding one listening Unix socket, and the handshake each new connection must pass
//! before the pool sees it.
//!
//! The accept loop only accepts; each connection's first frame is read in its own task under
//! the start timeout, so a silent or slow peer cannot hold up other workers. What the peer
//! claims (token) and what the kernel says about it (uid, pid) are both passed to the pool,
//! which alone knows which token belongs to which spawned child.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use herd_proto::codec::FrameCodec;
use herd_proto::{FromWorker, ToWorker};
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

/// The private directory and the socket path inside it. Dropping it removes both.
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    dir: PathBuf,
    socket: PathBuf,
    /// The worker user the directory and socket belong to, when not herd's.
    owner: Option<(u32, u32)>,
}

impl RuntimeDir {
    /// Creates a fresh directory with mode 0700 under `base` (or `$XDG_RUNTIME_DIR`, or the
    /// temp dir). With an `owner` (workers running as another user) the directory is theirs,
    /// still 0700, so only they (and root) get in; a base that user cannot reach is skipped
    /// when it was only a default, and refused when it was asked for.
    pub fn create(base: Option<&Path>, owner: Option<&Identity>) -> io::Result<Self> {
        let base = choose_base(base, owner)?;
        sweep_stale(&base, owner.map(|o| o.uid));
        let mut last_err = None;
        for _ in 0..8 {
            let dir = base.join(format!("herd-{}-{}", std::process::id(), random_hex(6)?));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let socket = dir.join("workers.sock");
                    let mut rd = Self {
                        dir,
                        socket,
                        owner: None,
                    };
                    if let Some(o) = owner {
                        std::os::unix::fs::chown(&rd.dir, Some(o.uid), Some(o.gid))?;
                        rd.owner = Some((o.uid, o.gid));
                    }
                    return Ok(rd);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("cannot create runtime directory")))
    }

    /// Binds the worker socket in the directory; with an owner, the socket is theirs too (a
    /// connect needs write permission on it).
    pub fn bind(&self) -> io::Result<UnixListener> {
        let listener = UnixListener::bind(&self.socket)?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&self.socket, Some(uid), Some(gid))?;
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
        // Workers that own the directory may have swapped it for a symlink (it sits in a
        // shared, sticky directory): never remove through one.
        if self.owner.is_some()
            && !std::fs::symlink_metadata(&self.dir).is_ok_and(|m| m.file_type().is_dir())
        {
            return;
        }
        let _ = std::fs::remove_file(&self.socket);
        // A directory the workers own may hold what they left in it; std's remove_dir_all
        // does not follow symlinks planted there.
        if std::fs::remove_dir(&self.dir).is_err() && self.owner.is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
/// ran): `herd-<pid>-<hex>` entries whose pid is gone, holding nothing but a socket.
fn sweep_stale(base: &Path, worker_uid: Option<u32>) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
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
        use std::os::unix::fs::MetadataExt;
        // A real directory (the entry's own metadata: a planted symlink is not followed),
        // herd's or, when workers run as another user, theirs.
        let ours = entry.metadata().is_ok_and(|m| {
            m.is_dir() && (m.uid() == nix::unistd::getuid().as_raw() || Some(m.uid()) == worker_uid)
        });
        if !ours {
            continue;
        }
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            || std::path::Path::new(&format!("/proc/{pid}")).exists();
        if alive {
            continue;
        }
        let dir = entry.path();
        let _ = std::fs::remove_file(dir.join("workers.sock"));
        if std::fs::remove_dir(&dir).is_ok() {
            tracing::debug!(dir = %dir.display(), "removed a stale runtime directory");
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
