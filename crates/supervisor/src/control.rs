//! The daemon's control socket: a Unix socket (mode 0600, peer uid checked) where `herd submit`
//! streams events and reads records, and `herd status` / `herd ctl` ask and steer.
//!
//! Each connection runs in its own task and talks to the pool only through a [`PoolHandle`].
//! A submission reads and writes independently: its reader stops reading the socket while
//! the submission has no credits left (back-pressure on that submitter only), and its writer
//! keeps writing records meanwhile. A batch of records gives its credits back only once it
//! has been written to the socket, so a submitter that stops reading stops itself, and what
//! the daemon holds for it stays within its credits. If the submitter vanishes, the
//! connection task ends, its records channel closes, and the pool drops whatever it still had
//! queued for it: nobody else waits.
//!
//! What a peer can make the daemon hold is bounded: at most `max_connections` connections (the
//! ones over the cap wait in the listen backlog, which costs the daemon no descriptor, until
//! one closes), frames of at most [`REQUEST_MAX_FRAME`] bytes until a submission starts and
//! of one line's worth after, buffer memory that grows only with bytes actually received, a
//! shared budget for the bytes of frames not yet complete (see [`FrameReader`]), a deadline
//! for a frame once it has begun, and an idle timeout for connections that are not
//! submissions (a submission may wait for its producer as long as it likes).
//!
//! When the pool stops, its last records are still on their way to the submitters: the
//! daemon waits for them through [`Deliveries::finish`], bounded by a delivery deadline.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use herd_proto::codec::{decode_body_borrowed, encode_frame, frame_len, HEADER_LEN};
use herd_proto::control::{
    RecordsFrame, Reply, RequestRef, SubmitOption, CONTROL_VERSION, EVENTS_FRAME_OVERHEAD,
    EVENT_LINE_OVERHEAD, REPLY_MAX_FRAME, REQUEST_MAX_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::record::Record;
use crate::{
    Command, Input, PoolHandle, RecordBatch, Sink, Source, SubmissionError, SubmitOptions,
};

/// Smallest `Events` frame cap, whatever the line limit: room for a client's byte budget.
const MIN_EVENTS_FRAME: usize = 64 * 1024;
/// Bytes a connection may hold of a frame not yet complete without a share of the
/// partial-frame budget: room for a client's usual `Events` frame (64 KiB of lines).
const FREE_PARTIAL: usize = 128 * 1024;
/// The default budget for partly received frames across all connections.
pub const PARTIAL_FRAMES_BUDGET: usize = 64 * 1024 * 1024;
/// How often reaching the connection cap is logged, at most.
const FULL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Records are coalesced into one write up to about this many bytes.
const WRITE_CHUNK: usize = 64 * 1024;
/// Largest `Records` frame body written.
const RECORDS_FRAME: usize = 1024 * 1024;

/// The largest `Events` frame a submission may send when lines are at most `max_line` bytes.
pub fn events_frame_cap(max_line: usize) -> usize {
    (max_line + EVENT_LINE_OVERHEAD + EVENTS_FRAME_OVERHEAD)
        .clamp(MIN_EVENTS_FRAME, herd_proto::MAX_FRAME_CEILING)
}

/// What the control socket allows its peers.
#[derive(Debug, Clone)]
pub struct ControlLimits {
    /// Longest event line the pool takes (the pool's frame limit less the task overhead);
    /// longer lines get a `rejected` record.
    pub max_line: usize,
    /// Connections open at once; the ones over the cap are not accepted until one closes.
    pub max_connections: usize,
    /// How long a connection that is not a submission may wait before its request and its
    /// reply, and how long any frame may take to arrive once it has begun.
    pub idle_timeout: Duration,
    /// Bytes of partly received frames held across all connections (raised to the largest
    /// frame if smaller, so that any legal frame can be read).
    pub partial_frames: usize,
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            max_line: herd_proto::DEFAULT_MAX_FRAME - herd_proto::TASK_FRAME_OVERHEAD,
            max_connections: 64,
            idle_timeout: Duration::from_secs(10),
            partial_frames: PARTIAL_FRAMES_BUDGET,
        }
    }
}

/// Descriptors kept for the pool whatever the connections take: the runtime, the control
/// and worker listeners, logs, and what respawning a worker needs at once.
const FD_RESERVE_BASE: u64 = 64;
/// Descriptors kept per worker (its socket, stderr pipe, and the pipes of a respawn).
const FD_RESERVE_PER_WORKER: u64 = 8;
/// The soft descriptor limit is raised at most this far (workers inherit it).
const FD_RAISE_MAX: u64 = 65536;

/// The connection cap per listener: `wanted`, or less if the descriptor limit (raised to the
/// hard limit first) cannot hold that many connections on each of `listeners` beside what the
/// pool needs to run and restart `workers` workers. `herd serve --max-connections`.
pub fn connection_cap(wanted: usize, workers: usize, listeners: u64) -> usize {
    let limit = crate::raise_nofile_limit(FD_RAISE_MAX);
    let cap = fit_connections(wanted, workers, listeners, limit);
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            nofile = limit,
            "the descriptor limit cannot hold --max-connections beside the workers; lowered"
        );
    }
    cap
}

/// At most `wanted` connections per listener, and at least one, within `nofile` descriptors.
fn fit_connections(wanted: usize, workers: usize, listeners: u64, nofile: u64) -> usize {
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_WORKER * workers as u64;
    let room = (nofile.saturating_sub(reserve) / listeners.max(1)).max(1);
    (wanted as u64).min(room) as usize
}

/// The submissions a control socket serves, so that the daemon can wait for their last
/// records after the pool stopped. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Deliveries {
    tracker: TaskTracker,
    /// Cancelled when the delivery deadline has passed: submissions stop writing and count
    /// what they could not deliver.
    give_up: CancellationToken,
    undelivered: Arc<AtomicU64>,
}

impl Deliveries {
    pub fn new() -> Self {
        Self::default()
    }

    /// Once the pool has stopped: waits until every connected submitter has been written
    /// its records and its last frame, for at most `deadline`. Returns how many record
    /// lines could not be delivered (to submitters that did not read them in time).
    pub async fn finish(&self, deadline: Duration) -> u64 {
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            self.give_up.cancel();
            // They only count now, without writing: that takes no time at all.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
        self.undelivered.load(Ordering::Relaxed)
    }
}

/// A bound control socket; removes its file on drop (if it is still the one it bound).
#[derive(Debug)]
pub struct ControlSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file bound.
    id: (u64, u64),
}

/// Why the control socket cannot be set up. [`ControlError::Bind`]'s message leaves its cause
/// to [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another herd is already serving on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("cannot bind control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ControlSocket {
    /// Binds `path` with mode 0600. A socket file left by a dead daemon (nobody accepts on it)
    /// is replaced; a live daemon's is not touched, and neither is anything but a socket.
    ///
    /// # Errors
    /// [`ControlError::InUse`] when a daemon answers on `path`, [`ControlError::NotSocket`]
    /// when something else is there; [`ControlError::Bind`] otherwise.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let bind_err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ControlError::NotSocket(path.to_path_buf()))
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Err(e) => return Err(bind_err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        // Nobody but us may connect, not even between bind and chmod.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = std::os::unix::net::UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until the returned future is dropped, in the tokio runtime that
    /// polls it (it need not be the pool's). Submissions are tracked in `deliveries`: they
    /// outlive this future, as tasks of that runtime.
    pub async fn serve(&self, pool: PoolHandle, limits: ControlLimits, deliveries: Deliveries) {
        let listener = match self.listener.try_clone().and_then(UnixListener::from_std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the control socket");
                return std::future::pending().await;
            }
        };
        let frame_cap = events_frame_cap(limits.max_line) + HEADER_LEN;
        let budget = limits
            .partial_frames
            .max(frame_cap)
            .min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            limits,
            partial: Arc::new(Semaphore::new(budget)),
            deliveries,
        });
        let slots = Arc::new(Semaphore::new(shared.limits.max_connections.max(1)));
        let uid = nix::unistd::getuid().as_raw();
        // Each condition is logged when it begins, not once per connection; reaching the
        // cap at most once per `FULL_LOG_EVERY`, as it may come and go with every connection.
        let mut accept_failing = false;
        let mut full_logged: Option<Instant> = None;
        loop {
            // At the cap, connections wait in the listen backlog, unaccepted: they cost no
            // descriptor of ours, and each is served in turn.
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if full_logged.is_none_or(|t| t.elapsed() >= FULL_LOG_EVERY) {
                        tracing::info!(
                            max = shared.limits.max_connections,
                            "control connections at their limit; new ones wait for a turn"
                        );
                        full_logged = Some(Instant::now());
                    }
                    match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return std::future::pending().await, // never closed
                    }
                }
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => {
                    accept_failing = false;
                    s
                }
                Err(e) => {
                    if !accept_failing {
                        tracing::warn!(error = %e, "accepting control connections fails");
                        accept_failing = true;
                    }
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
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = connection(stream, pool, &shared, permit).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Only our own socket: another daemon may have replaced a file we thought stale.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// What every connection of one control socket shares.
struct Shared {
    limits: ControlLimits,
    /// Bytes of partly received frames, across all connections (see [`FrameReader`]).
    partial: Arc<Semaphore>,
    deliveries: Deliveries,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

/// Reads frames off one connection. The buffer grows with the bytes that arrive, never
/// ahead of them on the word of a header, and each frame is handed out as a [`Bytes`] that
/// event payloads slice without copying.
///
/// Up to [`FREE_PARTIAL`] bytes of a frame are read freely. A larger frame reads on only once
/// it has reserved its whole length from the budget shared by all connections (and it keeps
/// the reservation until it is complete), so half-sent frames cannot pin more than the budget
/// between them, whatever the number of connections. All or nothing per frame: a frame that
/// waits for the budget holds none of it, so frames never wait on each other's halves. Its
/// deadline starts again once it has its share: the wait is not the client's doing.
struct FrameReader {
    io: OwnedReadHalf,
    buf: BytesMut,
    max: usize,
    /// Time a frame may take once begun.
    deadline: Duration,
    budget: Arc<Semaphore>,
    /// The current frame's share of `budget`.
    reserved: Option<OwnedSemaphorePermit>,
}

impl FrameReader {
    fn new(io: OwnedReadHalf, max: usize, deadline: Duration, budget: Arc<Semaphore>) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max,
            deadline,
            budget,
            reserved: None,
        }
    }

    /// The next frame's body, or `None` at a clean end of stream. Waits at most `idle` for a
    /// frame to begin (`None`: as long as it takes); a begun frame must be complete within
    /// the deadline.
    async fn next(&mut self, idle: Option<Duration>) -> io::Result<Option<Bytes>> {
        let mut begun = !self.buf.is_empty();
        let mut until = if begun {
            Some(Instant::now() + self.deadline)
        } else {
            idle.map(|d| Instant::now() + d)
        };
        loop {
            let len = frame_len(&self.buf, self.max).map_err(io::Error::other)?;
            let whole = len.map(|l| HEADER_LEN + l);
            if let Some(whole) = whole {
                if self.buf.len() >= whole {
                    self.buf.advance(HEADER_LEN);
                    let body = self.buf.split_to(whole - HEADER_LEN).freeze();
                    self.reserved = None;
                    return Ok(Some(body));
                }
            }
            // How far this read may fill the buffer.
            let fill = match whole {
                Some(whole) if whole > FREE_PARTIAL && self.buf.len() >= FREE_PARTIAL => {
                    if self.reserved.is_none() {
                        // `whole` is within `max`, which the budget is at least.
                        let n = u32::try_from(whole).unwrap_or(u32::MAX);
                        let permit = self
                            .budget
                            .clone()
                            .acquire_many_owned(n)
                            .await
                            .map_err(io::Error::other)?;
                        self.reserved = Some(permit);
                        until = Some(Instant::now() + self.deadline);
                        // Reserved: the frame may have its memory at once.
                        self.buf.reserve(whole - self.buf.len());
                    }
                    // Up to the end of this frame: the next one starts unreserved.
                    whole
                }
                _ => FREE_PARTIAL,
            };
            let room = fill - self.buf.len();
            self.buf.reserve(room);
            let mut limited = (&mut self.buf).limit(room);
            let read = self.io.read_buf(&mut limited);
            let n = match until {
                Some(at) => match tokio::time::timeout_at(at, read).await {
                    Ok(r) => r?,
                    Err(_) if begun => return Err(timed_out("a frame did not complete in time")),
                    Err(_) => return Err(timed_out("idle connection")),
                },
                None => read.await?,
            };
            if n == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a frame",
                    )),
                };
            }
            if !begun {
                begun = true;
                until = Some(Instant::now() + self.deadline);
            }
        }
    }
}

fn encode_reply(msg: &Reply) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_frame(msg, &mut buf, REPLY_MAX_FRAME).map_err(io::Error::other)?;
    Ok(buf)
}

/// Writes one reply frame within `limit`.
async fn reply(wr: &mut OwnedWriteHalf, msg: &Reply, limit: Duration) -> io::Result<()> {
    let buf = encode_reply(msg)?;
    tokio::time::timeout(limit, wr.write_all(&buf))
        .await
        .map_err(|_| timed_out("the client does not read its reply"))?
}

async fn connection(
    stream: UnixStream,
    pool: PoolHandle,
    shared: &Shared,
    _slot: OwnedSemaphorePermit,
) -> io::Result<()> {
    let limits = &shared.limits;
    let idle = limits.idle_timeout;
    let (rd, mut wr) = stream.into_split();
    let mut rd = FrameReader::new(rd, REQUEST_MAX_FRAME, idle, shared.partial.clone());
    let Some(body) = rd.next(Some(idle)).await? else {
        return Ok(());
    };
    match decode_body_borrowed::<RequestRef<'_>>(&body).map_err(io::Error::other)? {
        RequestRef::Hello { protocol } if protocol == CONTROL_VERSION => {}
        RequestRef::Hello { protocol } => {
            let msg = format!(
                "control protocol {protocol} is not supported (the daemon speaks \
                 {CONTROL_VERSION}): use the herd binary that matches the daemon"
            );
            return reply(&mut wr, &Reply::Error(msg), idle).await;
        }
        _ => return Err(io::Error::other("the first request is not Hello")),
    }
    let welcome = Reply::Welcome {
        protocol: CONTROL_VERSION,
        pid: std::process::id(),
        max_frame: u32::try_from(events_frame_cap(limits.max_line)).unwrap_or(u32::MAX),
        max_line: u32::try_from(limits.max_line).unwrap_or(u32::MAX),
    };
    reply(&mut wr, &welcome, idle).await?;
    let Some(body) = rd.next(Some(idle)).await? else {
        return Ok(());
    };
    let answer = match decode_body_borrowed::<RequestRef<'_>>(&body).map_err(io::Error::other)? {
        RequestRef::Submit { ordered } => {
            let options = SubmitOptions {
                ordered,
                ..SubmitOptions::default()
            };
            return submission(rd, wr, pool, options, false, shared).await;
        }
        RequestRef::SubmitWith {
            ordered,
            priority,
            line_priority,
        } => {
            let options = SubmitOptions {
                ordered,
                priority,
                line_priority,
                ..SubmitOptions::default()
            };
            return submission(rd, wr, pool, options, false, shared).await;
        }
        RequestRef::SubmitRated {
            ordered,
            priority,
            line_priority,
            rate,
        } => match rate.parse::<crate::rate::Rate>() {
            Ok(rate) => {
                let options = SubmitOptions {
                    ordered,
                    priority,
                    line_priority,
                    rate: Some(rate),
                    ..SubmitOptions::default()
                };
                return submission(rd, wr, pool, options, false, shared).await;
            }
            Err(e) => Reply::Error(e.to_string()),
        },
        RequestRef::Rate { submission, rate } => set_rate(&pool, submission, rate.as_deref()).await,
        RequestRef::SubmitNamed {
            ordered,
            priority,
            line_priority,
            rate,
        } => match rate.map(|r| r.parse::<crate::rate::Rate>()).transpose() {
            Ok(rate) => {
                let options = SubmitOptions {
                    ordered,
                    priority,
                    line_priority,
                    rate,
                    ..SubmitOptions::default()
                };
                return submission(rd, wr, pool, options, true, shared).await;
            }
            Err(e) => Reply::Error(e.to_string()),
        },
        RequestRef::CancelIn { submission, seq } => match pool.cancel(submission, seq).await {
            Some(outcome) if outcome.cancelled() => Reply::Ok(outcome.describe().into()),
            Some(outcome) => Reply::Error(outcome.describe().into()),
            None => Reply::Error("the pool has stopped".into()),
        },
        RequestRef::SubmitTimed {
            ordered,
            priority,
            line_priority,
            max_age_ms,
            deadline_ms,
            rate,
        } => match (!rate.is_empty())
            .then(|| rate.parse::<crate::rate::Rate>())
            .transpose()
        {
            Ok(rate) => {
                let ms = |n: u64| (n > 0).then(|| std::time::Duration::from_millis(n));
                let options = SubmitOptions {
                    ordered,
                    priority,
                    line_priority,
                    rate,
                    max_age: ms(max_age_ms),
                    deadline: ms(deadline_ms),
                    ..SubmitOptions::default()
                };
                return submission(rd, wr, pool, options, false, shared).await;
            }
            Err(e) => Reply::Error(e.to_string()),
        },
        RequestRef::Open { options } => match open_options(options) {
            Ok((options, named)) => {
                return submission(rd, wr, pool, options, named, shared).await;
            }
            Err(e) => Reply::Error(e),
        },
        RequestRef::Status => match pool.status().await {
            Some(st) => Reply::Status(serde_json::to_string(&st).map_err(io::Error::other)?),
            None => Reply::Error("the pool has stopped".into()),
        },
        RequestRef::Scale { workers } => match pool.autoscale() {
            // One owner for the target: the autoscaler would undo a manual scale anyway.
            Some(a) => Reply::Error(format!(
                "the daemon autoscales between {} and {} workers (--workers {}..{}); \
                 restart it with --workers {workers} for a fixed size",
                a.min, a.max, a.min, a.max
            )),
            None => command(&pool, Command::Scale(workers as usize), "scaling"),
        },
        RequestRef::Reload => command(&pool, Command::Reload, "reloading"),
        RequestRef::Stop { fast } => command(&pool, Command::Stop { fast }, "stopping"),
        other => Reply::Error(format!("unexpected request {}", name(&other))),
    };
    reply(&mut wr, &answer, idle).await
}

fn name(req: &RequestRef<'_>) -> &'static str {
    match req {
        RequestRef::Hello { .. } => "Hello",
        RequestRef::Submit { .. } => "Submit",
        RequestRef::Events(_) => "Events",
        RequestRef::End => "End",
        RequestRef::Status => "Status",
        RequestRef::Scale { .. } => "Scale",
        RequestRef::Reload => "Reload",
        RequestRef::Stop { .. } => "Stop",
        RequestRef::SubmitWith { .. } => "SubmitWith",
        RequestRef::Cancel { .. } => "Cancel",
        RequestRef::CancelIn { .. } => "CancelIn",
        RequestRef::SubmitNamed { .. } => "SubmitNamed",
        RequestRef::Rate { .. } => "Rate",
        RequestRef::SubmitRated { .. } => "SubmitRated",
        RequestRef::SubmitTimed { .. } => "SubmitTimed",
        RequestRef::Open { .. } => "Open",
    }
}

/// The options of an `Open` request, and whether it is named; an error names the bad one.
fn open_options(given: Vec<SubmitOption>) -> Result<(SubmitOptions, bool), String> {
    let mut options = SubmitOptions::default();
    let mut named = false;
    let ms = |n: u64| (n > 0).then(|| Duration::from_millis(n));
    for option in given {
        match option {
            SubmitOption::Ordered => options.ordered = true,
            SubmitOption::Priority(p) => options.priority = p,
            SubmitOption::LinePriority => options.line_priority = true,
            SubmitOption::Rate(r) => {
                let rate = r.parse::<crate::rate::Rate>().map_err(|e| e.to_string())?;
                options.rate = Some(rate);
            }
            SubmitOption::MaxAgeMs(n) => options.max_age = ms(n),
            SubmitOption::DeadlineMs(n) => options.deadline = ms(n),
            SubmitOption::Named => named = true,
            SubmitOption::LineKey => options.key = crate::KeySource::Line,
            SubmitOption::KeyPointer(p) => {
                crate::keys::check_pointer(&p).map_err(|e| e.to_string())?;
                options.key = crate::KeySource::Pointer(p.into());
            }
            SubmitOption::Batch {
                max,
                wait_ms,
                by_key,
            } => {
                options.batch = Some(crate::BatchConfig {
                    max,
                    wait: Duration::from_millis(wait_ms),
                    by_key,
                })
            }
        }
    }
    Ok((options, named))
}

/// `Rate`: the pool's limit, or an open submission's.
async fn set_rate(pool: &PoolHandle, submission: Option<u64>, rate: Option<&str>) -> Reply {
    let rate = match rate.map(str::parse::<crate::rate::Rate>).transpose() {
        Ok(r) => r,
        Err(e) => return Reply::Error(e.to_string()),
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let cmd = Command::SetRate {
        submission,
        rate,
        reply,
    };
    if !pool.command(cmd) {
        return Reply::Error("the pool has stopped".into());
    }
    let what = match submission {
        None => "the pool".to_owned(),
        Some(id) => format!("submission {id}"),
    };
    let limit = rate.map_or("no limit".to_owned(), |r| r.to_string());
    match answer.await {
        Ok(true) => Reply::Ok(format!("rate of {what}: {limit}")),
        Ok(false) => Reply::Error(format!(
            "no open submission {id}",
            id = submission.unwrap_or(0)
        )),
        Err(_) => Reply::Error("the pool has stopped".into()),
    }
}

fn command(pool: &PoolHandle, cmd: Command, what: &str) -> Reply {
    if pool.command(cmd) {
        Reply::Ok(what.to_string())
    } else {
        Reply::Error("the pool has stopped".into())
    }
}

/// `line` as a slice of `body`, which it borrows from (checked, never trusted).
fn slice_of(body: &Bytes, line: &[u8]) -> Option<Bytes> {
    if line.is_empty() {
        return Some(Bytes::new());
    }
    let start = (line.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(line.len())?;
    (end <= body.len()).then(|| body.slice(start..end))
}

/// One `herd submit`: events from the client's frames, records back on its socket, run by
/// [`Submission::run`] (reading and writing independently).
async fn submission(
    mut rd: FrameReader,
    mut wr: OwnedWriteHalf,
    pool: PoolHandle,
    options: SubmitOptions,
    named: bool,
    shared: &Shared,
) -> io::Result<()> {
    let limits = &shared.limits;
    rd.max = events_frame_cap(limits.max_line);
    let submission = pool.submit_with(options);
    if named {
        let id = submission.sender.id();
        reply(&mut wr, &Reply::Submission { id }, limits.idle_timeout).await?;
    }
    // Whether the client's End arrived: only then does `Done` say the submission is whole.
    let ended = Arc::new(AtomicBool::new(false));
    let source = ClientEvents {
        rd,
        seq: 0,
        max_line: limits.max_line,
        ended: ended.clone(),
        canceller: submission.sender.canceller(),
    };
    let deliveries = &shared.deliveries;
    let sink = ClientRecords {
        wr,
        frame: RecordsFrame::new(),
        held: Vec::new(),
        count: 0,
        ended,
        give_up: deliveries.give_up.clone(),
        abandoned: false,
        undelivered: deliveries.undelivered.clone(),
    };
    // Tracked: the daemon does not exit while the pool's last records are on their way.
    let run = submission.run(source, sink);
    match deliveries.tracker.track_future(run).await {
        Ok(_) => Ok(()),
        Err(SubmissionError::Source(e, _) | SubmissionError::Sink(e)) => Err(e),
    }
}

fn vanished() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the submitter went away before its last record",
    )
}

/// The events of a submission, from the client's `Events` frames until its `End`.
struct ClientEvents {
    rd: FrameReader,
    seq: u64,
    max_line: usize,
    ended: Arc<AtomicBool>,
    /// Carries the client's `Cancel`s to the pool, behind the events sent before them.
    canceller: crate::Canceller,
}

impl ClientEvents {
    /// A `Cancel` from the client; its event's record answers it.
    fn cancel(&self, seq: u64) {
        // A pool that is gone answers every event anyway (or nobody is listening).
        let _ = self.canceller.cancel(seq);
    }
}

impl Source for ClientEvents {
    /// The client's frames wait in its socket until there is room.
    async fn next_batch(&mut self, _room: crate::Room) -> io::Result<Option<Vec<Input>>> {
        // A producer may be slow: no idle limit between frames.
        let body = loop {
            let Some(body) = self.rd.next(None).await? else {
                return Err(vanished());
            };
            match decode_body_borrowed::<RequestRef<'_>>(&body).map_err(io::Error::other)? {
                RequestRef::Cancel { seq } => self.cancel(seq),
                _ => break body,
            }
        };
        let lines = match decode_body_borrowed::<RequestRef<'_>>(&body).map_err(io::Error::other)? {
            RequestRef::Events(lines) => lines,
            RequestRef::End => {
                self.ended.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            other => {
                let what = name(&other);
                return Err(io::Error::other(format!("{what} inside a submission")));
            }
        };
        let mut batch = Vec::with_capacity(lines.len());
        for line in lines {
            let seq = self.seq;
            self.seq += 1;
            batch.push(match line {
                Some(b) => Input::event(
                    seq,
                    slice_of(&body, b).ok_or_else(|| io::Error::other("line outside its frame"))?,
                ),
                None => Input::Rejected {
                    seq,
                    reason: format!(
                        "line longer than the frame limit of {} bytes",
                        self.max_line
                    ),
                },
            });
        }
        Ok(Some(batch))
    }

    /// The client keeps its side open until its last record: an end now means it is gone.
    async fn gone(&mut self) -> io::Error {
        loop {
            let body = match self.rd.next(None).await {
                Ok(Some(body)) => body,
                Ok(None) => return vanished(),
                Err(e) => return e,
            };
            // A client may cancel an event it awaits after its End, too.
            match decode_body_borrowed::<RequestRef<'_>>(&body) {
                Ok(RequestRef::Cancel { seq }) => self.cancel(seq),
                _ => return io::Error::other("a request after the end of a submission"),
            }
        }
    }
}

/// The records of a submission, as `Records` frames on the client's socket, then `Done`.
/// Batches are coalesced into one write while more are ready, and give their credits back
/// only once written.
///
/// A record counts as delivered once written to the socket. Once the delivery deadline after
/// a stop has passed (`give_up`), nothing more is written: the records not delivered are
/// counted instead, so the daemon can say how many its submitters lost.
struct ClientRecords {
    wr: OwnedWriteHalf,
    frame: RecordsFrame,
    held: Vec<RecordBatch>,
    count: u64,
    ended: Arc<AtomicBool>,
    give_up: CancellationToken,
    /// The deadline passed: the rest is counted, not written.
    abandoned: bool,
    undelivered: Arc<AtomicU64>,
}

impl ClientRecords {
    async fn write_out(&mut self) -> io::Result<()> {
        let total = self.frame.len();
        let mut at = 0;
        while at < total && !self.abandoned {
            let end = total.min(at + RECORDS_FRAME);
            // A submitter may read slowly: no time limit on its writes, until the delivery
            // deadline of a stop.
            tokio::select! {
                r = self.wr.write_all(self.frame.frame(at..end)) => r?,
                () = self.give_up.cancelled() => {
                    self.abandoned = true;
                    break;
                }
            }
            at = end;
        }
        if at < total {
            // Lines end in '\n' and never contain one: those not written in whole frames.
            let frame = self.frame.frame(at..total);
            let body = &frame[frame.len() - (total - at)..];
            let lost = memchr::memchr_iter(b'\n', body).count() as u64;
            self.undelivered.fetch_add(lost, Ordering::Relaxed);
        }
        self.frame.clear();
        // Written to the socket (or given up on): their credits go back.
        self.held.clear();
        Ok(())
    }
}

impl Sink for ClientRecords {
    async fn deliver(&mut self, batch: RecordBatch) -> io::Result<()> {
        if self.abandoned || self.give_up.is_cancelled() {
            self.abandoned = true;
            self.undelivered
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        append(&mut self.frame, &batch);
        self.count += batch.len() as u64;
        self.held.push(batch);
        if self.frame.len() >= WRITE_CHUNK {
            self.write_out().await?;
        }
        Ok(())
    }

    async fn caught_up(&mut self) -> io::Result<()> {
        self.write_out().await
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.write_out().await?;
        if self.abandoned {
            return Err(timed_out(
                "the submitter did not read its records before the delivery deadline",
            ));
        }
        let count = self.count;
        let last = if self.ended.load(Ordering::Relaxed) {
            Reply::Done { records: count }
        } else {
            Reply::Error(format!(
                "the daemon stopped before the submission ended ({count} records sent)"
            ))
        };
        let buf = encode_reply(&last)?;
        tokio::select! {
            r = self.wr.write_all(&buf) => r,
            () = self.give_up.cancelled() => Err(timed_out(
                "the submitter did not read its last frame before the delivery deadline",
            )),
        }
    }
}

fn append(frame: &mut RecordsFrame, batch: &[Record]) {
    frame.append(|buf| {
        for r in batch {
            r.write_json(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FRAME: usize = 600 * 1024;

    #[test]
    fn connections_get_what_the_workers_leave_of_the_descriptors() {
        // Plenty: as asked.
        assert_eq!(fit_connections(64, 4, 2, 65536), 64);
        // 1024 less 64 + 8 x 100 for the workers, shared by two listeners.
        assert_eq!(fit_connections(1000, 100, 2, 1024), 80);
        assert_eq!(fit_connections(1000, 100, 1, 1024), 160);
        // Never none.
        assert_eq!(fit_connections(64, 1000, 1, 1024), 1);
    }

    fn reader(budget: &Arc<Semaphore>) -> (FrameReader, OwnedWriteHalf, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (rd, wr) = ours.into_split();
        let rd = FrameReader::new(rd, 1 << 20, Duration::from_secs(30), budget.clone());
        (rd, wr, theirs)
    }

    fn frame(fill: u8) -> Vec<u8> {
        let mut f = (FRAME as u32).to_le_bytes().to_vec();
        f.resize(HEADER_LEN + FRAME, fill);
        f
    }

    /// Two big frames, half sent each, and budget for one: the first reserves its whole
    /// length, the second waits holding none of it, and both complete in turn (a budget
    /// taken piecemeal would leave each holding half, waiting for the other).
    #[tokio::test]
    async fn big_frames_take_the_shared_budget_whole_and_in_turn() {
        let budget = Arc::new(Semaphore::new(FRAME + FRAME / 2));
        let (mut r1, _w1, mut c1) = reader(&budget);
        let (mut r2, _w2, mut c2) = reader(&budget);
        let (a, b) = (frame(b'a'), frame(b'b'));
        let half = HEADER_LEN + FRAME / 2;
        let first = tokio::spawn(async move { r1.next(None).await.map(|f| (f.unwrap(), r1)) });
        c1.write_all(&a[..half]).await.unwrap();
        let wait = Duration::from_secs(30);
        tokio::time::timeout(wait, async {
            while budget.available_permits() != FRAME / 2 - HEADER_LEN {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first frame reserves its whole length");
        let second = tokio::spawn(async move { r2.next(None).await.map(|f| (f.unwrap(), r2)) });
        // The second reads its free share, then waits for the budget without taking any.
        let writer = tokio::spawn(async move {
            c2.write_all(&b).await.unwrap();
            c2
        });
        c1.write_all(&a[half..]).await.unwrap();
        let (body, r1) = tokio::time::timeout(wait, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((body.len(), body[FRAME - 1]), (FRAME, b'a'));
        assert!(r1.reserved.is_none());
        let (body, r2) = tokio::time::timeout(wait, second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((body.len(), body[FRAME - 1]), (FRAME, b'b'));
        assert!(r2.reserved.is_none() && r2.buf.is_empty());
        writer.await.unwrap();
        assert_eq!(budget.available_permits(), FRAME + FRAME / 2);
    }

    /// Frames within the free share never touch the budget, however many follow each other.
    #[tokio::test]
    async fn small_frames_need_no_budget() {
        let budget = Arc::new(Semaphore::new(0));
        let (mut r, _w, mut c) = reader(&budget);
        let mut bytes = Vec::new();
        for i in 0..40u8 {
            let mut f = 10_000u32.to_le_bytes().to_vec();
            f.resize(HEADER_LEN + 10_000, i);
            bytes.extend_from_slice(&f);
        }
        tokio::spawn(async move { c.write_all(&bytes).await.map(|()| c) });
        for i in 0..40u8 {
            let body = r.next(None).await.unwrap().unwrap();
            assert_eq!((body.len(), body[0]), (10_000, i));
            assert!(r.buf.len() <= FREE_PARTIAL);
        }
    }
}
