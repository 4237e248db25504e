//! The daemon's control socket: a Unix socket (mode 0600, peer uid checked) where `herd submit`
//! streams events and reads records, and `herd status` / `herd ctl` ask and steer.
//!
//! Each connection runs in its own task and talks to the pool only through a [`PoolHandle`].
//! A submission's reader stops reading the socket while the submission has no credits left
//! (back-pressure on that submitter only); its writer formats records as they come. If the
//! submitter vanishes, the connection task ends, its records channel closes, and the pool drops
//! whatever it still had queued for it: nobody else waits.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use herd_proto::codec::FrameCodec;
use herd_proto::control::{Reply, Request, CONTROL_VERSION};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;

use crate::record::Record;
use crate::{Command, Input, PoolHandle};

type Conn = Framed<UnixStream, FrameCodec<Request, Reply>>;

/// Largest control frame (a batch of event lines or of records).
pub const CONTROL_MAX_FRAME: usize = herd_proto::MAX_FRAME_CEILING;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound control socket; removes its file on drop.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Why the control socket cannot be set up. [`ControlError::Bind`]'s message leaves its cause
/// to [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another herd is already serving on {0}")]
    InUse(PathBuf),
    #[error("cannot bind control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ControlSocket {
    /// Binds `path` with mode 0600. A socket file left by a dead daemon (nobody accepts on it)
    /// is replaced; a live daemon's is not touched.
    ///
    /// # Errors
    /// [`ControlError::InUse`] when a daemon answers on `path`; [`ControlError::Bind`] otherwise.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Err(e) => return Err(bind_err(e)),
            }
        }
        // Nobody but us may connect, not even between bind and chmod.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the returned future is dropped.
    pub async fn serve(&self, pool: PoolHandle) {
        let uid = nix::unistd::getuid().as_raw();
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a control connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(c) if c.uid() == uid => {}
                Ok(c) => {
                    tracing::warn!(
                        peer_uid = c.uid(),
                        "control connection from another user refused"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no peer credentials; control connection refused");
                    continue;
                }
            }
            let pool = pool.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, pool).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection(stream: UnixStream, pool: PoolHandle) -> io::Result<()> {
    let mut conn: Conn = Framed::new(stream, FrameCodec::new(CONTROL_MAX_FRAME));
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await {
        Ok(Some(Ok(Request::Hello { protocol }))) if protocol == CONTROL_VERSION => {}
        Ok(Some(Ok(Request::Hello { protocol }))) => {
            let msg = format!(
                "control protocol {protocol} is not supported (daemon speaks {CONTROL_VERSION})"
            );
            return send(&mut conn, Reply::Error(msg)).await;
        }
        _ => return Ok(()),
    }
    send(
        &mut conn,
        Reply::Welcome {
            protocol: CONTROL_VERSION,
            pid: std::process::id(),
        },
    )
    .await?;
    let Some(Ok(request)) = conn.next().await else {
        return Ok(());
    };
    let reply = match request {
        Request::Submit { ordered } => return submission(conn, pool, ordered).await,
        Request::Status => match pool.status().await {
            Some(st) => Reply::Status(serde_json::to_string(&st).map_err(io::Error::other)?),
            None => Reply::Error("the pool has stopped".into()),
        },
        Request::Scale { workers } => command(&pool, Command::Scale(workers as usize), "scaling"),
        Request::Reload => command(&pool, Command::Reload, "reloading"),
        Request::Stop { fast } => command(&pool, Command::Stop { fast }, "stopping"),
        other => Reply::Error(format!("unexpected request {other:?}")),
    };
    send(&mut conn, reply).await
}

fn command(pool: &PoolHandle, cmd: Command, what: &str) -> Reply {
    if pool.command(cmd) {
        Reply::Ok(what.to_string())
    } else {
        Reply::Error("the pool has stopped".into())
    }
}

async fn send(conn: &mut Conn, reply: Reply) -> io::Result<()> {
    conn.send(reply).await.map_err(io::Error::other)
}

/// One `herd submit`: events in, records out, concurrently.
async fn submission(conn: Conn, pool: PoolHandle, ordered: bool) -> io::Result<()> {
    let sub = pool.submit(ordered);
    let (mut sink, mut stream) = conn.split();
    let sender = sub.sender;
    let mut records = sub.records;
    let reader = async move {
        let mut seq = 0u64;
        while let Some(msg) = stream.next().await {
            match msg.map_err(io::Error::other)? {
                Request::Events(lines) => {
                    let batch = lines
                        .into_iter()
                        .map(|line| {
                            let input = match line {
                                Some(b) => Input::Event {
                                    seq,
                                    payload: Bytes::from(b.into_vec()),
                                },
                                None => Input::Rejected {
                                    seq,
                                    reason: "line longer than the frame limit".into(),
                                },
                            };
                            seq += 1;
                            input
                        })
                        .collect();
                    if sender.send(batch).await.is_err() {
                        break;
                    }
                }
                Request::End => break,
                _ => return Err(io::Error::other("unexpected request in a submission")),
            }
        }
        // Dropping the sender ends the submission.
        drop(sender);
        // Keep the read side open until the writer is done; the client may half-close.
        std::future::pending::<()>().await;
        Ok::<(), io::Error>(())
    };
    let writer = async move {
        let mut count = 0u64;
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(batch) = records.recv().await {
            buf.clear();
            append(&mut buf, &batch);
            count += batch.len() as u64;
            // Coalesce what else is ready into one frame.
            while buf.len() < 1 << 20 {
                match records.try_recv() {
                    Some(more) => {
                        count += more.len() as u64;
                        append(&mut buf, &more);
                    }
                    None => break,
                }
            }
            sink.send(Reply::Records(std::mem::take(&mut buf)))
                .await
                .map_err(io::Error::other)?;
        }
        sink.send(Reply::Done { records: count })
            .await
            .map_err(io::Error::other)?;
        Ok::<(), io::Error>(())
    };
    // Whichever fails first (a vanished submitter) ends both; the writer finishing is success.
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

fn append(buf: &mut Vec<u8>, batch: &[Record]) {
    for r in batch {
        r.write_json(buf);
    }
}
