//! The herd worker SDK: turns a function into a worker process a herd supervisor can drive.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     herd_worker::run(|task| Ok(task.payload().to_vec()))
//! }
//! ```
//!
//! This crate owns the worker's half of the protocol (see `herd-proto`): finding the
//! supervisor's socket from the environment, the `Hello` handshake, the serve loop that turns
//! every `Task` into exactly one `Done`, and the process's exit code. It is blocking by default
//! (no async runtime): a worker exists to burn CPU in its handler, and one task runs at a
//! time, on the thread that called [`serve`]. The only other thread is a small flusher that
//! bounds how long a finished `Done` can be held back (see below).
//!
//! A handler that awaits I/O instead uses `run_async`, behind the `tokio` feature: the same
//! serve loop, with each handler future driven on a runtime the SDK builds.
//!
//! In a handler, `?` works on any error: it becomes the task's [`TaskError`], retryable when it
//! is a transient I/O failure and fatal otherwise ([`TaskError::classify`]; [`ResultExt`]
//! chooses explicitly).
//!
//! # Theory of operation
//!
//! - **A worker never outlives its supervisor.** End of stream on the socket means the
//!   supervisor is gone: the worker exits with code 1 instead of lingering. Only the termination
//!   frame (`Shutdown`) ends it with code 0; a protocol violation ends it with code 2.
//! - **A handler failure is a result, not a crash.** An `Err` becomes `Outcome::Err`; a panic is
//!   caught and reported as a non-retryable error, and the worker keeps serving.
//! - **Pipelining is cheap.** The supervisor may send several tasks before the first `Done`
//!   (its `--window`). Input is read through a large buffer, and while further complete tasks
//!   are already buffered, `Done` frames are queued and written together; everything queued is
//!   flushed before the worker could block on a read, so a reply never waits for new input.
//! - **Waiting for a task wakes nothing.** Between tasks the worker waits in `poll(2)`, not in
//!   a blocking `recv`, which Linux would also wake each time the supervisor reads a reply.
//! - **A finished `Done` is held for at most about 1 ms.** The supervisor times each attempt
//!   from the previous `Done`, so a quick task's reply must not wait for the handler of a slow
//!   task buffered behind it. A flusher thread writes out whatever has been queued for
//!   1 ms while the handler is still running. It sleeps while nothing is queued and is
//!   woken at most once per batch, so the tiny-task path costs no extra write.
//!
//! - **herd may take back what has not started, and ask to stop what has** (protocol 3). A
//!   handler that has run for 10 ms gets a watcher thread that reads the connection for it: it
//!   gives back queued tasks herd withdraws (to run on an idle worker while this one is busy)
//!   and raises the cancel flag of the running one ([`Task::is_cancelled`],
//!   [`Task::cancelled`]); see the `watch` module. A handler that observes the flag ends with
//!   [`TaskError::cancelled`]; one that does not is killed by herd after a grace.
//! - **A retry can say when.** [`TaskError::retry_after`] asks herd to wait that long before
//!   the next attempt (within its own backoff limits).
//! - **A handler may stream.** [`Task::chunk`] sends a partial result (protocol version 2's
//!   `Chunk` frame) before the handler returns its final output; herd writes each one as a
//!   record line of its own. Chunks are queued like replies and go out within the same 1 ms.
//!
//! A worker that must keep several tasks in progress at once, rather than run one handler call
//! at a time, uses [`connect`] instead: it gets the tasks and the replies as two halves it can
//! drive from two threads (`herd-stdio` pipes tasks through a child process this way).

#![warn(missing_docs)]

#[cfg(feature = "tokio")]
mod asynchronous;
mod batch;
mod watch;

pub use batch::{run_batch, run_batch_with, serve_batch};

pub use watch::Cancelled;
use watch::{Ahead, CancelSignal, Reader, Shared};

#[cfg(feature = "tokio")]
pub use asynchronous::{run_async, run_async_with, run_batch_async, serve_async};

use std::any::Any;
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use herd_proto::codec::{self, FrameError};
use herd_proto::{
    FromWorker, Outcome, ToWorker, DEFAULT_MAX_FRAME, ENV_MAX_FRAME, ENV_SOCKET, ENV_TOKEN,
    HEADER_LEN, MAX_FRAME_CEILING, PROTOCOL_VERSION, WITHDRAW_VERSION,
};

/// Capacity of the input buffer: large enough to hold many pipelined small tasks.
const READ_BUFFER: usize = 64 * 1024;
/// Queued output above this size is written even if more input is buffered.
const WRITE_BATCH: usize = 64 * 1024;
/// The longest a queued `Done` waits for the serve loop before the flusher writes it out.
const MAX_HOLD: Duration = Duration::from_millis(1);
/// Replies are batched only behind handlers faster than this; after a slower one the reply
/// goes out at once (a write costs a few microseconds, nothing next to such a task).
const BATCH_ONLY_UNDER: Duration = Duration::from_micros(50);

/// Runs `handler` as a herd worker until the supervisor sends the termination frame.
///
/// Reads the socket path, token and frame limit from the environment the supervisor sets
/// ([`Config::from_env`]), connects, and serves tasks one at a time. Errors are printed to
/// stderr; the return value is the process's exit code:
///
/// | code | meaning |
/// | --- | --- |
/// | 0 | the supervisor sent the termination frame |
/// | 1 | the supervisor went away (end of stream on the socket) |
/// | 2 | not started by herd, cannot connect, or protocol violation |
pub fn run<F>(handler: F) -> ExitCode
where
    F: FnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    exit(Config::from_env().and_then(|config| run_with(&config, handler)))
}

/// Prints a failed worker's error chain to stderr and maps it to the exit code [`run`]
/// documents.
fn exit(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}: {}", program_name(), err.report());
            ExitCode::from(err.exit_code())
        }
    }
}

/// This executable's file name, to prefix messages on stderr.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "herd worker".into())
}

/// Connects to the supervisor described by `config` and serves `handler` on that connection.
///
/// # Errors
/// [`Error::Connect`] if the socket cannot be reached; otherwise as [`serve`].
pub fn run_with<F>(config: &Config, handler: F) -> Result<(), Error>
where
    F: FnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    let socket = connect_socket(config)?;
    let reader = PollReader {
        socket: &socket,
        poll_first: false,
    };
    serve(reader, &socket, config, handler)
}

/// Connects to the socket named in `config`.
fn connect_socket(config: &Config) -> Result<UnixStream, Error> {
    use interprocess::local_socket::{prelude::*, GenericFilePath, Stream};

    let connect_err = |source| Error::Connect {
        path: config.socket.clone(),
        source,
    };
    let name = config
        .socket
        .as_path()
        .to_fs_name::<GenericFilePath>()
        .map_err(connect_err)?;
    match Stream::connect(name).map_err(connect_err)? {
        Stream::UdSocket(s) => Ok(UnixStream::from(std::os::fd::OwnedFd::from(s))),
    }
}

/// Reads a socket, waiting for input in `poll` rather than in a blocking `recv`.
///
/// Linux wakes a task blocked in `recv` on a Unix stream socket whenever the peer *consumes*
/// data this side sent (the write-space wake-up is not filtered by event), so a worker blocked
/// waiting for its next task was woken, for nothing, each time the supervisor read its reply:
/// one wasted context switch per task on each side. `poll` waits for input only.
///
/// After a read found nothing, the next one polls first (the supervisor is answering one task
/// at a time, as with `--window 1`); after a read found data, it tries `recv` first (tasks are
/// queued up, and polling would be a wasted call).
struct PollReader<S> {
    socket: S,
    poll_first: bool,
}

impl<S: AsFd> AsFd for PollReader<S> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl<S: AsFd> Read for PollReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        loop {
            if self.poll_first {
                let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match recv(self.socket.as_fd().as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    self.poll_first = false;
                    return Ok(n);
                }
                Err(Errno::EAGAIN) => self.poll_first = true,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Runs the worker's side of the protocol over an already connected stream: sends `Hello`, then
/// answers every `Task` with exactly one `Done` until `Shutdown`.
///
/// `reader` and `writer` are the two directions of the same connection (for a socket, pass
/// `&stream` twice). `config.socket` is not used. The handler runs on the calling thread;
/// `writer` is shared with a flusher thread that lives only as long as this call.
///
/// # Errors
/// [`Error::Disconnected`] when the stream ends or the peer resets it (the supervisor is gone);
/// [`Error::Protocol`] for a frame that cannot be read or written.
///
/// Protocol 3 (`config.protocol`): a watcher thread reads `reader` while a slow handler runs
/// (see the `watch` module), which is why it must be pollable (`AsFd`) and `Send`.
pub fn serve<R, W, F>(reader: R, writer: W, config: &Config, handler: F) -> Result<(), Error>
where
    R: Read + AsFd + Send,
    W: Write + Send,
    F: FnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    serve_handler(reader, writer, config, Single(handler))
}

/// [`serve`] for any [`Handler`]: one task per call, or batches.
fn serve_handler<R, W, H>(reader: R, writer: W, config: &Config, handler: H) -> Result<(), Error>
where
    R: Read + AsFd + Send,
    W: Write + Send,
    H: Handler,
{
    let outbox = Outbox::new(writer);
    let shared = Shared::new(BufReader::with_capacity(READ_BUFFER, reader))
        .map_err(|e| Error::Protocol(FrameError::Io(e)))?;
    let max = config.max_frame;
    thread::scope(|scope| {
        let _stop = StopOnDrop(&outbox, &shared);
        // Without the flusher every reply is still sent before the worker blocks on a read; only
        // the bound on holding one back is lost, so a failed spawn is not worth dying for.
        let _ = thread::Builder::new()
            .name("herd-flush".into())
            .spawn_scoped(scope, || outbox.run_flusher());
        if config.protocol >= WITHDRAW_VERSION {
            // Without the watcher, withdrawals and cancels are answered between tasks only
            // (`Kept`, or nothing): herd falls back to waiting, or to a kill.
            let _ = thread::Builder::new()
                .name("herd-watch".into())
                .spawn_scoped(scope, || shared.run_watcher(&outbox, max));
        }
        serve_loop(&shared, &outbox, config, handler)
    })
}

fn serve_loop<R, W, H>(
    shared: &Shared<R>,
    outbox: &Outbox<W>,
    config: &Config,
    mut handler: H,
) -> Result<(), Error>
where
    R: Read + AsFd,
    W: Write,
    H: Handler,
{
    let max = config.max_frame;
    let v3 = config.protocol >= WITHDRAW_VERSION;

    let hello = FromWorker::Hello {
        protocol: config.protocol,
        pid: std::process::id(),
        token: config.token.clone(),
    };
    let batching = if v3 { handler.batching() } else { 0 };
    {
        let mut out = outbox.lock();
        codec::encode_frame(&hello, &mut out.buf, max)?;
        if batching > 1 {
            // Right after Hello, before any other frame (docs/PROTOCOL.md §4b).
            let max_tasks = FromWorker::Batching { max: batching };
            codec::encode_frame(&max_tasks, &mut out.buf, max)?;
        }
        out.flush().map_err(Error::from_io)?;
    }
    // Reused across batches.
    let mut outcomes = Vec::new();
    // A batch handler may answer each task itself (`Task::answer`), a lone one included.
    let lone = if handler.batching() > 0 {
        Answer::Open
    } else {
        Answer::Returned
    };

    // Held except while a handler runs (then the watcher may read).
    let mut reader = shared.lock_reader();
    loop {
        let next = match reader.ahead.pop_front() {
            Some(next) => next,
            None => {
                let Reader { input, scratch, .. } = &mut *reader;
                match codec::read_frame::<ToWorker, _>(input, scratch, max) {
                    Ok(None) => Ahead::Eof,
                    Err(e) => Ahead::Broken(e),
                    Ok(Some(ToWorker::Shutdown)) => Ahead::Shutdown,
                    Ok(Some(ToWorker::Task {
                        id,
                        attempt,
                        payload,
                    })) => Ahead::Task {
                        id,
                        attempt,
                        payload,
                    },
                    // Read between handlers: its task is not ahead, so it started (and ran).
                    Ok(Some(ToWorker::Withdraw { id })) if v3 => {
                        let buffered = complete_frame_buffered(reader.input.buffer(), max);
                        let mut out = outbox.lock();
                        out.take_error().map_err(Error::from_io)?;
                        codec::encode_frame(&FromWorker::Kept { id }, &mut out.buf, max)?;
                        if buffered {
                            out.held(&outbox.wake);
                        } else {
                            out.flush().map_err(Error::from_io)?;
                        }
                        continue;
                    }
                    // Its Done went out already: nothing to stop.
                    Ok(Some(ToWorker::Cancel { .. })) if v3 => continue,
                    Ok(Some(ToWorker::Batch { tasks })) if batching > 1 => Ahead::Batch(tasks),
                    Ok(Some(ToWorker::Batch { .. })) => Ahead::Broken(FrameError::Malformed(
                        "a Batch sent to a worker that did not send Batching".into(),
                    )),
                    Ok(Some(_)) => Ahead::Broken(FrameError::Malformed(format!(
                        "a protocol {WITHDRAW_VERSION} frame sent to a protocol {} worker",
                        config.protocol
                    ))),
                }
            }
        };
        let (id, attempt, payload) = match next {
            Ahead::Eof => return Err(Error::Disconnected),
            Ahead::Broken(e) => {
                // The replies of the tasks before it still go out (herd counts them).
                let _ = outbox.lock().flush();
                return Err(Error::from_frame(e));
            }
            Ahead::Shutdown => {
                outbox.lock().flush().map_err(Error::from_io)?;
                return Ok(());
            }
            Ahead::Task {
                id,
                attempt,
                payload,
            } => (id, attempt, payload),
            Ahead::Batch(tasks) if batching < 2 => {
                let _ = tasks;
                return Err(Error::Protocol(FrameError::Malformed(
                    "a Batch sent to a worker that did not send Batching".into(),
                )));
            }
            Ahead::Batch(tasks) => {
                let Some(first) = tasks.first() else {
                    continue; // every task of it was withdrawn
                };
                // The batch has started: all of it (a Withdraw of any of its tasks is `Kept`).
                drop(reader);
                shared.begin(first.id);
                let mut raws: Vec<RawStream<'_, W>> = tasks
                    .iter()
                    .map(|_| RawStream::new(outbox, max, Answer::Open))
                    .collect();
                let mut views: Vec<Task<'_>> = tasks
                    .iter()
                    .zip(raws.iter_mut())
                    .map(|(t, raw)| Task {
                        id: t.id,
                        attempt: t.attempt,
                        payload: &t.payload,
                        out: raw,
                        cancel: &shared.cancel,
                    })
                    .collect();
                let started = Instant::now();
                outcomes.clear();
                handler.many(&mut views, v3, &mut outcomes);
                drop(views);
                let slow = started.elapsed() >= BATCH_ONLY_UNDER;
                reader = shared.end();
                let more =
                    !reader.ahead.is_empty() || complete_frame_buffered(reader.input.buffer(), max);
                let mut out = outbox.lock();
                out.take_error().map_err(Error::from_io)?;
                for ((task, outcome), raw) in tasks.iter().zip(outcomes.drain(..)).zip(&raws) {
                    // A task the handler answered early (`Task::answer`) has its Done queued.
                    if raw.answer != Answer::Sent {
                        push_done(&mut out.buf, task.id, outcome, max)?;
                    }
                }
                if slow || !more || out.buf.len() >= WRITE_BATCH {
                    out.flush().map_err(Error::from_io)?;
                } else {
                    out.held(&outbox.wake);
                }
                continue;
            }
        };
        // The task has started: the watcher may read (and answer for what is ahead) now.
        drop(reader);
        shared.begin(id);
        let mut raw = RawStream::new(outbox, max, lone);
        let mut task = Task {
            id,
            attempt,
            payload: &payload,
            out: &mut raw,
            cancel: &shared.cancel,
        };
        let started = Instant::now();
        let outcome = handler.one(&mut task, v3);
        let slow = started.elapsed() >= BATCH_ONLY_UNDER;
        reader = shared.end();

        let more = !reader.ahead.is_empty() || complete_frame_buffered(reader.input.buffer(), max);
        let mut out = outbox.lock();
        out.take_error().map_err(Error::from_io)?;
        if raw.answer != Answer::Sent {
            push_done(&mut out.buf, id, outcome, max)?;
        }
        // Flush before a read that may block, when the batch is full, or after a task slow
        // enough that a write per reply costs nothing (and the supervisor is waiting to send
        // more); otherwise hold the reply and let the flusher bound how long.
        if slow || !more || out.buf.len() >= WRITE_BATCH {
            out.flush().map_err(Error::from_io)?;
        } else {
            out.held(&outbox.wake);
        }
    }
}

/// Connects to the supervisor and completes the handshake, for a worker that answers tasks on
/// its own schedule rather than from a handler: [`Tasks`] yields them, [`Replies`] (which may
/// live on another thread) answers them, each exactly once, in any order.
///
/// This is for workers that keep several tasks in progress at once, such as `herd-stdio`,
/// which pipes them through a child process. Most workers want [`run`]: with this API, nothing
/// catches panics, nothing flushes replies on a timer, and a task left unanswered stays in
/// flight until the supervisor's `--timeout`.
///
/// # Errors
/// [`Error::Connect`] if the socket cannot be reached; [`Error::Disconnected`] or
/// [`Error::Protocol`] if the `Hello` cannot be sent.
pub fn connect(config: &Config) -> Result<(Tasks, Replies), Error> {
    let socket = connect_socket(config)?;
    let writer = socket.try_clone().map_err(Error::from_io)?;
    split(socket, writer, config)
}

/// Sends `Hello` on `writer` and pairs the two directions of one connection.
fn split(
    reader: UnixStream,
    writer: UnixStream,
    config: &Config,
) -> Result<(Tasks, Replies), Error> {
    let max = config.max_frame;
    let mut replies = Replies {
        stream: writer,
        buf: Vec::with_capacity(WRITE_BATCH),
        max,
    };
    // Tasks are answered on the caller's schedule, with no watcher: this API speaks protocol
    // 2 at most, so herd never withdraws or cancels here.
    let hello = FromWorker::Hello {
        protocol: config.protocol.min(2),
        pid: std::process::id(),
        token: config.token.clone(),
    };
    codec::encode_frame(&hello, &mut replies.buf, max)?;
    replies.flush()?;
    let tasks = Tasks {
        reader: BufReader::with_capacity(
            READ_BUFFER,
            PollReader {
                socket: reader,
                poll_first: false,
            },
        ),
        scratch: Vec::new(),
        max,
    };
    Ok((tasks, replies))
}

/// The receiving half of a [`connect`]ed worker: the supervisor's tasks, in the order sent.
pub struct Tasks {
    reader: BufReader<PollReader<UnixStream>>,
    scratch: Vec<u8>,
    max: usize,
}

/// A task received through [`Tasks::recv`]; answer it with [`Replies::send`] and its `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The supervisor's identifier for this attempt (see [`Task::id`]).
    pub id: u64,
    /// 1 the first time, 2 after one retry, and so on.
    pub attempt: u32,
    /// The event, exactly as the supervisor received it.
    pub payload: Vec<u8>,
}

impl Tasks {
    /// Waits for the next task. `Ok(None)` is the termination frame: answer the tasks still in
    /// hand, flush, and exit 0.
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the supervisor is gone (exit 1); [`Error::Protocol`] for a
    /// frame that cannot be read (exit 2).
    pub fn recv(&mut self) -> Result<Option<Incoming>, Error> {
        match codec::read_frame::<ToWorker, _>(&mut self.reader, &mut self.scratch, self.max)
            .map_err(Error::from_frame)?
        {
            None => Err(Error::Disconnected),
            Some(ToWorker::Shutdown) => Ok(None),
            Some(ToWorker::Task {
                id,
                attempt,
                payload,
            }) => Ok(Some(Incoming {
                id,
                attempt,
                payload,
            })),
            Some(ToWorker::Withdraw { .. } | ToWorker::Cancel { .. }) => Err(Error::Protocol(
                FrameError::Malformed("a protocol 3 frame sent to a protocol 2 worker".into()),
            )),
            Some(ToWorker::Batch { .. }) => Err(Error::Protocol(FrameError::Malformed(
                "a Batch sent to a worker that did not send Batching".into(),
            ))),
        }
    }

    /// Whether a whole frame is already buffered, so that [`Tasks::recv`] will not block. A
    /// worker that batches its own output flushes it when this is false.
    pub fn buffered(&self) -> bool {
        complete_frame_buffered(self.reader.buffer(), self.max)
    }
}

/// The sending half of a [`connect`]ed worker. Replies are queued and written together: call
/// [`Replies::flush`] before anything that may wait, or they wait too.
pub struct Replies {
    stream: UnixStream,
    buf: Vec<u8>,
    max: usize,
}

impl Replies {
    /// Queues the answer to task `id` (written at once if the queue is full). An output too
    /// large for one frame is replaced by a non-retryable error saying so.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the supervisor is gone; [`Error::Protocol`] if the reply
    /// cannot be encoded or written.
    pub fn send(&mut self, id: u64, result: Result<Vec<u8>, TaskError>) -> Result<(), Error> {
        let outcome = match result {
            Ok(output) => Outcome::Ok(output),
            Err(err) => err.into_outcome(false, false),
        };
        push_done(&mut self.buf, id, outcome, self.max)?;
        if self.buf.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes out every queued reply.
    ///
    /// # Errors
    /// [`Error::Disconnected`] if the supervisor is gone, else [`Error::Protocol`].
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let res = self.stream.write_all(&self.buf);
        // After a failed write the connection is unusable anyway.
        self.buf.clear();
        res.map_err(Error::from_io)
    }
}

/// Whether `buf` starts with a whole frame, so reading it cannot block.
fn complete_frame_buffered(buf: &[u8], max: usize) -> bool {
    match codec::frame_len(buf, max) {
        Ok(Some(len)) => buf.len() >= HEADER_LEN + len,
        // Incomplete header, or an oversize one the next read will report.
        Ok(None) | Err(_) => false,
    }
}

/// What the serve loop calls: a handler of one task at a time, or of batches (see `batch`).
trait Handler {
    /// Tasks per call it takes, declared after `Hello` (below 2: one at a time).
    fn batching(&self) -> u32;
    /// Runs one task. `v3`: the outcomes of protocol 3 may be sent.
    fn one(&mut self, task: &mut Task<'_>, v3: bool) -> Outcome;
    /// Runs a batch (only ever sent to a worker that declared batching), pushing one outcome
    /// per task, in order, to `out`.
    fn many(&mut self, tasks: &mut [Task<'_>], v3: bool, out: &mut Vec<Outcome>);
}

/// A handler of one task per call ([`run`]).
struct Single<F>(F);

impl<F> Handler for Single<F>
where
    F: FnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    fn batching(&self) -> u32 {
        0
    }

    fn one(&mut self, task: &mut Task<'_>, v3: bool) -> Outcome {
        call(&mut self.0, task, v3)
    }

    fn many(&mut self, tasks: &mut [Task<'_>], v3: bool, out: &mut Vec<Outcome>) {
        out.extend(tasks.iter_mut().map(|t| call(&mut self.0, t, v3)));
    }
}

/// Calls the handler, turning a panic into a non-retryable error. `v3`: the outcomes of
/// protocol 3 may be sent.
fn call<F>(handler: &mut F, task: &mut Task<'_>, v3: bool) -> Outcome
where
    F: FnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    match panic::catch_unwind(AssertUnwindSafe(|| handler(task))) {
        Ok(Ok(output)) => Outcome::Ok(output),
        Ok(Err(err)) => err.into_outcome(v3, task.is_cancelled()),
        Err(payload) => Outcome::Err {
            retryable: false,
            message: format!("handler panicked: {}", panic_message(payload.as_ref())),
        },
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Queues the `Done` for task `id`. An outcome too large for one frame is replaced by a
/// non-retryable error saying so, so the supervisor still gets exactly one reply.
fn push_done(buf: &mut Vec<u8>, id: u64, outcome: Outcome, max: usize) -> Result<(), Error> {
    let mut done = FromWorker::Done { id, outcome };
    match codec::encode_frame(&done, buf, max) {
        Err(FrameError::Oversize { .. }) => {}
        other => return other.map_err(Error::Protocol),
    }
    if let FromWorker::Done { outcome, .. } = &mut done {
        let message = match outcome {
            Outcome::Ok(bytes) => format!(
                "handler output of {} bytes exceeds the maximum frame of {max} bytes",
                bytes.len()
            ),
            Outcome::Err { message, .. } | Outcome::RetryAfter { message, .. } => format!(
                "handler error message of {} bytes exceeds the maximum frame of {max} bytes; \
                 it began: {}",
                message.len(),
                truncate(message, 200)
            ),
            // Too small to be oversize.
            Outcome::Cancelled => "cancelled".into(),
        };
        *outcome = Outcome::Err {
            retryable: false,
            message,
        };
    }
    codec::encode_frame(&done, buf, max)?;
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Write side of the connection, shared by the serve loop and the flusher thread: frames are
/// appended to a buffer and written out, in order, under one lock.
struct Outbox<W> {
    out: Mutex<Queued<W>>,
    /// Wakes the flusher: something was queued while it was idle, or it must stop.
    wake: Condvar,
}

/// What the [`Outbox`] lock protects.
struct Queued<W> {
    buf: Vec<u8>,
    /// When the oldest byte in `buf` was queued; `None` while nothing is held.
    since: Option<Instant>,
    stream: W,
    /// A write error the flusher hit, for the serve loop to report.
    error: Option<io::Error>,
    /// The flusher is waiting for something to be queued (and needs a notification).
    idle: bool,
    /// The serve loop is over: the flusher must exit.
    stop: bool,
}

impl<W: Write> Outbox<W> {
    fn new(stream: W) -> Self {
        Self {
            out: Mutex::new(Queued {
                buf: Vec::with_capacity(WRITE_BATCH),
                since: None,
                stream,
                error: None,
                idle: false,
                stop: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued<W>> {
        // Only `W::write` or encoding could panic under the lock; the queue stays consistent,
        // and the serve loop reports the broken stream at its next write.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flusher thread: writes out whatever has been held for [`MAX_HOLD`], until told to
    /// stop.
    fn run_flusher(&self) {
        let mut out = self.lock();
        while !out.stop {
            let Some(since) = out.since else {
                out.idle = true;
                out = self.wake.wait(out).unwrap_or_else(PoisonError::into_inner);
                out.idle = false;
                continue;
            };
            let due = since + MAX_HOLD;
            let now = Instant::now();
            if now < due {
                out = self
                    .wake
                    .wait_timeout(out, due - now)
                    .map_or_else(|p| p.into_inner().0, |(out, _)| out);
            } else if out.error.is_some() {
                out.discard();
            } else if let Err(err) = out.write_queued() {
                out.error = Some(err);
            }
        }
    }
}

impl<W: Write> Queued<W> {
    /// Notes that bytes were queued without a flush, so the flusher must write them out in time.
    fn held(&mut self, wake: &Condvar) {
        if self.since.is_none() && !self.buf.is_empty() {
            self.since = Some(Instant::now());
            if self.idle {
                wake.notify_one();
            }
        }
    }

    /// Writes out everything queued.
    ///
    /// # Errors
    /// The flusher's error if it hit one (see [`Queued::take_error`]), else the stream's.
    fn flush(&mut self) -> io::Result<()> {
        self.take_error()?;
        self.write_queued()
    }

    /// Writes `buf` and flushes the stream. The queue is emptied whatever the outcome: after a
    /// failed write the connection is unusable anyway.
    fn write_queued(&mut self) -> io::Result<()> {
        self.since = None;
        if !self.buf.is_empty() {
            let res = self.stream.write_all(&self.buf);
            self.buf.clear();
            res?;
        }
        self.stream.flush()
    }

    fn discard(&mut self) {
        self.buf.clear();
        self.since = None;
    }

    /// Reports the write error the flusher hit, if any: the first call returns it, later ones a
    /// copy (same kind and message), since the connection stays broken.
    fn take_error(&mut self) -> io::Result<()> {
        match self.error.take() {
            None => Ok(()),
            Some(err) => {
                self.error = Some(io::Error::new(err.kind(), err.to_string()));
                Err(err)
            }
        }
    }
}

/// Tells the flusher to exit when the serve loop ends, however it ends, so that the scope
/// joining it does not wait forever.
struct StopOnDrop<'a, W: Write, R: Read + AsFd>(&'a Outbox<W>, &'a Shared<R>);

impl<W: Write, R: Read + AsFd> Drop for StopOnDrop<'_, W, R> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.wake.notify_one();
        self.1.shut();
    }
}

/// The handler's view of the write side ([`Task::raw_stream`]): bytes are queued after the
/// `Done` frames already there and go out on `flush`, or within [`MAX_HOLD`].
struct RawStream<'a, W> {
    outbox: &'a Outbox<W>,
    max: usize,
    answer: Answer,
}

/// Who sends a task's `Done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The serve loop, from what the handler returns (a single task).
    Returned,
    /// The serve loop, unless the handler answers first (a task of a batch).
    Open,
    /// The handler did ([`Task::answer`]): the serve loop sends nothing more for it.
    Sent,
}

impl<'a, W> RawStream<'a, W> {
    fn new(outbox: &'a Outbox<W>, max: usize, answer: Answer) -> Self {
        Self {
            outbox,
            max,
            answer,
        }
    }
}

/// What a [`Task`] writes to: the raw stream, chunks, and a batch task's early answer.
trait TaskOut: Write {
    /// Queues a `Chunk` frame for task `id`.
    fn chunk(&mut self, id: u64, data: &[u8]) -> Result<(), TaskError>;
    /// Queues task `id`'s `Done` now (a task of a batch, not answered yet).
    fn answer(&mut self, id: u64, outcome: Outcome) -> Result<(), TaskError>;
}

impl<W: Write> RawStream<'_, W> {
    /// Queues what `encode` appends, held like a quick reply: the flusher sends it within
    /// MAX_HOLD, so a stream of small frames costs one write per batch, and a lone one does
    /// not wait for the handler.
    fn queue(
        &mut self,
        what: &str,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        let mut out = self.outbox.lock();
        if let Err(e) = out.take_error() {
            // The connection is broken; the serve loop reports it after the handler returns.
            return Err(TaskError::retryable(format!(
                "cannot send {what} to herd: {e}"
            )));
        }
        encode(&mut out.buf)?;
        if out.buf.len() >= WRITE_BATCH {
            if let Err(e) = out.flush() {
                out.error = Some(e);
            }
        } else {
            out.held(&self.outbox.wake);
        }
        Ok(())
    }
}

impl<W: Write> TaskOut for RawStream<'_, W> {
    fn answer(&mut self, id: u64, outcome: Outcome) -> Result<(), TaskError> {
        match self.answer {
            Answer::Open => {}
            Answer::Returned => {
                return Err(TaskError::fatal(
                    "Task::answer is for a batch handler's tasks; a single task's handler \
                     returns its answer",
                ))
            }
            Answer::Sent => return Err(TaskError::fatal("this task was answered already")),
        }
        let max = self.max;
        self.queue("an answer", |buf| {
            push_done(buf, id, outcome, max)
                .map_err(|e| TaskError::fatal(format!("cannot encode an answer: {e}")))
        })?;
        self.answer = Answer::Sent;
        Ok(())
    }

    fn chunk(&mut self, id: u64, data: &[u8]) -> Result<(), TaskError> {
        if self.answer == Answer::Sent {
            return Err(TaskError::fatal(
                "a chunk of a task that was answered already",
            ));
        }
        let max = self.max;
        let frame = FromWorker::Chunk {
            id,
            data: data.to_vec(),
        };
        self.queue("a chunk", |buf| {
            match codec::encode_frame(&frame, buf, max) {
                Ok(()) => Ok(()),
                Err(FrameError::Oversize { .. }) => Err(TaskError::fatal(format!(
                    "chunk of {} bytes exceeds the maximum frame of {max} bytes",
                    data.len()
                ))),
                Err(e) => Err(TaskError::fatal(format!("cannot encode a chunk: {e}"))),
            }
        })
    }
}

impl<W: Write> Write for RawStream<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut out = self.outbox.lock();
        out.take_error()?;
        out.buf.extend_from_slice(bytes);
        out.held(&self.outbox.wake);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.outbox.lock().flush()
    }
}

/// One task handed to the handler: the event's bytes and where it stands in its retries.
pub struct Task<'a> {
    id: u64,
    attempt: u32,
    payload: &'a [u8],
    out: &'a mut dyn TaskOut,
    cancel: &'a CancelSignal,
}

impl<'a> Task<'a> {
    /// The event, exactly as the supervisor received it (one input line, without its newline).
    /// Borrowed for the whole call, not from `self`, so a handler may read it while it sends
    /// chunks.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Which attempt this is at the event: 1 the first time, 2 after one retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The supervisor's identifier for this attempt; unique within one supervisor run.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends `data` as a partial result of this task (a `Chunk` frame, protocol version 2),
    /// before the handler returns the final output. herd writes it at once as a record line
    /// of its own, `{"seq":…,"chunk":k,"attempt":a,"output":…}`, and the final record counts
    /// the chunks. A chunk cannot be taken back: if this attempt fails and the event is
    /// retried, the next attempt's chunks follow with their own `attempt`.
    ///
    /// ```no_run
    /// # fn main() -> std::process::ExitCode {
    /// herd_worker::run(|task| {
    ///     for row in 0..3 {
    ///         task.chunk(format!("{{\"row\":{row}}}").as_bytes())?;
    ///     }
    ///     Ok(b"3".to_vec())
    /// })
    /// # }
    /// ```
    ///
    /// # Errors
    /// A fatal [`TaskError`] if `data` does not fit in a frame (split it); a retryable one if
    /// the connection to herd is broken. Return it with `?`: the task then fails as it says.
    pub fn chunk(&mut self, data: &[u8]) -> Result<(), TaskError> {
        self.out.chunk(self.id, data)
    }

    /// In a batch handler ([`run_batch`]): sends this task's answer now rather than when the
    /// whole batch returns, so that an input answered early does not wait for the batch's
    /// slowest. It is held like a quick reply (sent within about 1 ms). The result the handler
    /// then returns for this task is ignored; no chunk may follow.
    ///
    /// # Errors
    /// A fatal [`TaskError`] for a single task's handler (its return value is its answer), or
    /// for a task answered already; a retryable one if the connection to herd is broken.
    pub fn answer(&mut self, result: Result<Vec<u8>, TaskError>) -> Result<(), TaskError> {
        let outcome = match result {
            Ok(output) => Outcome::Ok(output),
            // Batches are protocol 3's.
            Err(err) => err.into_outcome(true, self.is_cancelled()),
        };
        self.out.answer(self.id, outcome)
    }

    /// Whether herd asked to cancel this task (protocol 3: `herd ctl cancel`, or a client's
    /// cancel). Poll it between steps of a long computation, and end with
    /// [`TaskError::cancelled`]: the worker then stays up. A handler that never looks is killed
    /// by herd once the exit timeout has passed after the cancel, as before protocol 3.
    ///
    /// The flag is raised by a watcher thread that reads the connection once a handler has run
    /// for 10 ms, so it can take that long to appear.
    ///
    /// ```no_run
    /// # fn main() -> std::process::ExitCode {
    /// herd_worker::run(|task| {
    ///     for _step in 0..1000 {
    ///         if task.is_cancelled() {
    ///             return Err(herd_worker::TaskError::cancelled());
    ///         }
    ///         std::thread::sleep(std::time::Duration::from_millis(10));
    ///     }
    ///     Ok(b"done".to_vec())
    /// })
    /// # }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is(self.id)
    }

    /// A future that completes when herd cancels this task: for an async handler, race it
    /// against the work (`tokio::select!`) and end with [`TaskError::cancelled`]. It borrows
    /// the cancel signal, not the task, so the handler may keep using the task meanwhile.
    pub fn cancelled(&self) -> Cancelled<'a> {
        Cancelled {
            signal: self.cancel,
            id: self.id,
        }
    }

    /// The connection's write side, for fault injection only (`herd-chaos`): whatever is written
    /// here reaches the supervisor as raw bytes, after any `Done` frames already queued, when
    /// the writer is flushed (or about 1 ms later at the latest). Flushing it also sends those
    /// queued frames. Anything else written here breaks the protocol.
    #[doc(hidden)]
    pub fn raw_stream(&mut self) -> &mut dyn Write {
        self.out
    }
}

impl fmt::Debug for Task<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// A handler's failure, reported to the supervisor as the task's outcome.
///
/// Retryable errors ask the supervisor to try the event again (up to its `--retries`); fatal
/// ones end the event with a `failed` record at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    retryable: bool,
    message: String,
    /// When to retry, if the handler said (protocol 3).
    retry_after: Option<Duration>,
    /// The handler stopped for a cancel (protocol 3).
    cancelled: bool,
}

impl TaskError {
    /// A transient failure: the supervisor may run the event again.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
            retry_after: None,
            cancelled: false,
        }
    }

    /// A permanent failure: running the event again would fail the same way.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
            retry_after: None,
            cancelled: false,
        }
    }

    /// The handler stopped because herd cancelled the task ([`Task::is_cancelled`]). Sent as
    /// the `Cancelled` outcome; the event's record is `cancelled`. Returned for a task herd did
    /// not cancel, it becomes a fatal error saying so.
    pub fn cancelled() -> Self {
        Self {
            retryable: false,
            message: "cancelled".into(),
            retry_after: None,
            cancelled: true,
        }
    }

    /// Makes this a retryable failure to be retried after `delay` (protocol 3's
    /// `RetryAfter`: a service's `Retry-After`, a lock's expiry). herd waits that long, clamped
    /// to its longest backoff (32 × `--retry-backoff`), instead of its own backoff; `--retries`
    /// and `--deadline` still apply.
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = herd_worker::TaskError::retryable("rate limited").retry_after(Duration::from_secs(2));
    /// assert!(err.is_retryable());
    /// assert_eq!(err.retry_delay(), Some(Duration::from_secs(2)));
    /// ```
    #[must_use]
    pub fn retry_after(self, delay: Duration) -> Self {
        Self {
            retryable: true,
            retry_after: Some(delay),
            cancelled: false,
            ..self
        }
    }

    /// The delay set by [`TaskError::retry_after`].
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether this is [`TaskError::cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// The outcome sent for this error: `v3` allows protocol 3's outcomes; `was_cancelled`
    /// says whether herd cancelled the task.
    fn into_outcome(self, v3: bool, was_cancelled: bool) -> Outcome {
        match self {
            Self {
                cancelled: true, ..
            } if v3 && was_cancelled => Outcome::Cancelled,
            Self {
                cancelled: true, ..
            } => Outcome::Err {
                retryable: false,
                message: "the handler ended cancelled, but herd did not cancel this task".into(),
            },
            Self {
                retryable: true,
                retry_after: Some(delay),
                message,
                ..
            } if v3 => Outcome::RetryAfter {
                message,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
            Self {
                retryable, message, ..
            } => Outcome::Err { retryable, message },
        }
    }

    /// Whether the supervisor may retry the event.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message shown in the event's record.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// Like `anyhow::Error`, `TaskError` does not implement `std::error::Error`: that is what lets
// the blanket `From` below exist (it would overlap `impl From<T> for T`), so that `?` works on
// any error in a handler.

/// `?` on any error in a handler: the error becomes the task's outcome.
///
/// The message is the error and its [`source`](std::error::Error::source) chain, joined by
/// `": "`. Whether it is retryable is decided by [`TaskError::classify`]: an error that a second
/// attempt could plausibly not hit (a peer or the network briefly unavailable, an I/O timeout) is
/// retryable; anything else (a malformed event, a parse error, a missing file) is fatal, since
/// every attempt would fail the same way. Override the default with [`ResultExt`].
///
/// ```
/// use herd_worker::{Task, TaskError};
///
/// fn handle(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
///     let text = std::str::from_utf8(task.payload())?; // fatal: the event is not UTF-8
///     let n: u64 = text.trim().parse()?; // fatal: not a number
///     Ok((n * 2).to_string().into_bytes())
/// }
///
/// let err = TaskError::from("x".parse::<u64>().unwrap_err());
/// assert!(!err.is_retryable());
/// assert_eq!(err.message(), "invalid digit found in string");
/// let err = TaskError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert!(err.is_retryable());
/// ```
impl<E> From<E> for TaskError
where
    E: std::error::Error + 'static,
{
    fn from(err: E) -> Self {
        TaskError::classify(&err)
    }
}

impl TaskError {
    /// The outcome `?` makes of `err` (see the `From` impl): its message with its source chain,
    /// retryable if and only if the error or one of its sources is
    /// - an [`io::Error`] of a kind that says a peer, the network or a resource was briefly
    ///   unavailable: `TimedOut`, `Interrupted`, `WouldBlock`, `ConnectionRefused`,
    ///   `ConnectionReset`, `ConnectionAborted`, `NotConnected`, `BrokenPipe`,
    ///   `HostUnreachable`, `NetworkUnreachable`, `NetworkDown`, `AddrNotAvailable` or
    ///   `ResourceBusy`;
    /// - with the `tokio` feature, a `tokio::time::error::Elapsed` (a `timeout` ran out).
    ///
    /// Everything else is fatal: the same event would fail the same way on every attempt.
    ///
    /// `Box<dyn Error>` does not implement `Error`, so `?` cannot convert it; this can:
    /// `.map_err(|e| TaskError::classify(&*e))`.
    pub fn classify(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = err.to_string();
        let mut retryable = is_transient(err);
        let mut cause = err.source();
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            retryable |= is_transient(c);
            cause = c.source();
        }
        Self {
            retryable,
            message,
            retry_after: None,
            cancelled: false,
        }
    }
}

/// Whether `err` itself (not its sources) is a failure a later attempt may not hit.
fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    use io::ErrorKind::*;
    if let Some(io) = err.downcast_ref::<io::Error>() {
        return matches!(
            io.kind(),
            TimedOut
                | Interrupted
                | WouldBlock
                | ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | BrokenPipe
                | HostUnreachable
                | NetworkUnreachable
                | NetworkDown
                | AddrNotAvailable
                | ResourceBusy
        );
    }
    #[cfg(feature = "tokio")]
    if err.is::<tokio::time::error::Elapsed>() {
        return true;
    }
    false
}

/// Chooses the outcome of a failed `Result` explicitly, where the default of `?` (see
/// [`TaskError::classify`]) does not fit: the message stays, the retryability is yours.
///
/// ```
/// use herd_worker::{ResultExt, Task, TaskError};
///
/// fn handle(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
///     // A missing file is fatal by default; here it is still being written: try again.
///     let path = std::str::from_utf8(task.payload())?;
///     std::fs::read(path).retryable()
/// }
/// ```
pub trait ResultExt<T> {
    /// The error, if any, as a retryable [`TaskError`].
    ///
    /// # Errors
    /// The `Err` of `self`, converted.
    fn retryable(self) -> Result<T, TaskError>;
    /// The error, if any, as a fatal [`TaskError`].
    ///
    /// # Errors
    /// The `Err` of `self`, converted.
    fn fatal(self) -> Result<T, TaskError>;
}

impl<T, E: Into<TaskError>> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, TaskError> {
        self.map_err(|e| TaskError {
            retryable: true,
            ..e.into()
        })
    }

    fn fatal(self) -> Result<T, TaskError> {
        self.map_err(|e| TaskError {
            retryable: false,
            retry_after: None,
            ..e.into()
        })
    }
}

/// Where a worker finds its supervisor, as passed in the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the supervisor's Unix socket ([`ENV_SOCKET`]).
    pub socket: PathBuf,
    /// One-time token to present in `Hello` ([`ENV_TOKEN`]).
    pub token: String,
    /// Largest frame body sent or accepted ([`ENV_MAX_FRAME`]; at most [`MAX_FRAME_CEILING`]).
    pub max_frame: usize,
    /// The protocol version to speak: [`PROTOCOL_VERSION`] from [`Config::from_env`]. A lower
    /// one makes herd treat the worker as an older one (no withdrawals, cancels or
    /// `retry_after` below 3; no chunks below 2), which is how herd's tests check that older
    /// workers keep working.
    pub protocol: u32,
}

impl Config {
    /// Reads the configuration the supervisor put in this process's environment.
    ///
    /// # Errors
    /// [`Error::NotUnderHerd`] if the socket or token variable is missing;
    /// [`Error::BadEnv`] if a variable is not valid Unicode or the frame limit is not a number.
    pub fn from_env() -> Result<Self, Error> {
        let socket = std::env::var_os(ENV_SOCKET).ok_or(Error::NotUnderHerd(ENV_SOCKET))?;
        let token = match std::env::var(ENV_TOKEN) {
            Ok(token) => token,
            Err(std::env::VarError::NotPresent) => return Err(Error::NotUnderHerd(ENV_TOKEN)),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::BadEnv {
                    var: ENV_TOKEN,
                    reason: "not valid UTF-8".into(),
                })
            }
        };
        let max_frame = match std::env::var(ENV_MAX_FRAME) {
            Err(std::env::VarError::NotPresent) => DEFAULT_MAX_FRAME,
            Ok(s) => s.trim().parse::<usize>().map_err(|e| Error::BadEnv {
                var: ENV_MAX_FRAME,
                reason: format!("{s:?}: {e}"),
            })?,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(Error::BadEnv {
                    var: ENV_MAX_FRAME,
                    reason: "not valid UTF-8".into(),
                })
            }
        };
        Ok(Self {
            socket: socket.into(),
            token,
            max_frame: max_frame.min(MAX_FRAME_CEILING),
            protocol: PROTOCOL_VERSION,
        })
    }
}

/// Why a worker stopped serving (other than the termination frame).
///
/// A message does not repeat its [`source`](std::error::Error::source): print the chain to
/// get both, each once (as [`run`] does).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process was not started by a herd supervisor.
    #[error("this program is a herd worker: run it under `herd run -- <cmd>` ({0} is not set)")]
    NotUnderHerd(&'static str),
    /// An environment variable set by the supervisor is unusable.
    #[error("environment variable {var} is invalid: {reason}")]
    BadEnv {
        /// The variable's name.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The supervisor's socket could not be reached.
    #[error("cannot connect to the supervisor at {}", path.display())]
    Connect {
        /// The socket path from the environment.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The supervisor closed or reset the connection: it is gone, and so must the worker be.
    #[error("the supervisor closed the connection; exiting")]
    Disconnected,
    /// A frame could not be read or written.
    #[error("protocol error")]
    Protocol(#[from] FrameError),
    /// The async runtime for [`run_async`] could not be started (the `tokio` feature).
    #[cfg(feature = "tokio")]
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
}

impl Error {
    /// The error and its sources, as [`run`] prints them: "cannot connect to the supervisor
    /// at /x: No such file or directory (os error 2)".
    pub fn report(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        message
    }

    /// The exit code [`run`] uses for this error: 1 for [`Error::Disconnected`], else 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Disconnected => 1,
            _ => 2,
        }
    }

    fn from_io(err: io::Error) -> Self {
        if is_disconnect(&err) {
            Error::Disconnected
        } else {
            Error::Protocol(FrameError::Io(err))
        }
    }

    fn from_frame(err: FrameError) -> Self {
        match err {
            FrameError::Io(e) => Self::from_io(e),
            other => Error::Protocol(other),
        }
    }
}

fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;
    use std::thread;

    use super::*;

    pub(crate) fn config() -> Config {
        Config {
            socket: PathBuf::new(),
            token: "tok".into(),
            max_frame: 1024,
            protocol: PROTOCOL_VERSION,
        }
    }

    /// Runs `serve` on one end of a socket pair in a thread; returns the other end and the
    /// thread, whose result is `serve`'s.
    fn spawn_worker<F>(handler: F) -> (UnixStream, thread::JoinHandle<Result<(), Error>>)
    where
        F: FnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError> + Send + 'static,
    {
        let (sup, worker) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || serve(&worker, &worker, &config(), handler));
        (sup, handle)
    }

    pub(crate) fn send(sock: &UnixStream, msg: &ToWorker) {
        let mut w = sock;
        codec::write_frame(&mut w, msg, &mut Vec::new(), 1024).unwrap();
    }

    pub(crate) fn recv(sock: &UnixStream) -> FromWorker {
        let mut r = sock;
        codec::read_frame(&mut r, &mut Vec::new(), 1024)
            .unwrap()
            .unwrap()
    }

    pub(crate) fn task(id: u64, attempt: u32, payload: &[u8]) -> ToWorker {
        ToWorker::Task {
            id,
            attempt,
            payload: payload.to_vec(),
        }
    }

    fn echo(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
        match task.payload() {
            b"panic" => panic!("boom {}", task.id()),
            b"static-panic" => std::panic::panic_any(42_u32),
            b"retry" => Err(TaskError::retryable("try again")),
            b"fatal" => Err(TaskError::fatal("no")),
            b"attempt" => Ok(task.attempt().to_string().into_bytes()),
            b"big" => Ok(vec![0; 2000]),
            p => Ok(p.to_vec()),
        }
    }

    #[test]
    fn hello_then_tasks_then_shutdown() {
        let (sup, worker) = spawn_worker(echo);
        assert_eq!(
            recv(&sup),
            FromWorker::Hello {
                protocol: PROTOCOL_VERSION,
                pid: std::process::id(),
                token: "tok".into()
            }
        );
        send(&sup, &task(1, 1, b"hi"));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 1,
                outcome: Outcome::Ok(b"hi".to_vec())
            }
        );
        send(&sup, &task(2, 3, b"attempt"));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 2,
                outcome: Outcome::Ok(b"3".to_vec())
            }
        );
        send(&sup, &task(3, 1, b"retry"));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 3,
                outcome: Outcome::Err {
                    retryable: true,
                    message: "try again".into()
                }
            }
        );
        send(&sup, &task(4, 1, b"fatal"));
        assert!(matches!(
            recv(&sup),
            FromWorker::Done {
                id: 4,
                outcome: Outcome::Err {
                    retryable: false,
                    ..
                }
            }
        ));
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn panic_is_a_fatal_error_and_the_worker_survives() {
        let (sup, worker) = spawn_worker(echo);
        recv(&sup);
        send(&sup, &task(7, 1, b"panic"));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 7,
                outcome: Outcome::Err {
                    retryable: false,
                    message: "handler panicked: boom 7".into()
                }
            }
        );
        send(&sup, &task(8, 1, b"static-panic"));
        assert!(matches!(
            recv(&sup),
            FromWorker::Done { id: 8, outcome: Outcome::Err { message, .. } }
                if message == "handler panicked: non-string panic payload"
        ));
        send(&sup, &task(9, 1, b"still here"));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 9,
                outcome: Outcome::Ok(b"still here".to_vec())
            }
        );
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn pipelined_tasks_are_answered_in_order() {
        let (sup, worker) = spawn_worker(echo);
        recv(&sup);
        // Many tasks and the termination frame in one write, as a pipelining supervisor would.
        let mut bytes = Vec::new();
        for id in 0..500u64 {
            codec::encode_frame(&task(id, 1, &id.to_le_bytes()), &mut bytes, 1024).unwrap();
        }
        codec::encode_frame(&ToWorker::Shutdown, &mut bytes, 1024).unwrap();
        (&sup).write_all(&bytes).unwrap();
        for id in 0..500u64 {
            assert_eq!(
                recv(&sup),
                FromWorker::Done {
                    id,
                    outcome: Outcome::Ok(id.to_le_bytes().to_vec())
                }
            );
        }
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn chunks_go_before_their_done_and_an_oversize_one_fails_the_task() {
        let (sup, worker) = spawn_worker(|task: &mut Task<'_>| {
            if task.payload() == b"huge" {
                task.chunk(b"fits")?;
                task.chunk(&[0; 2000])?;
                return Ok(b"unreachable".to_vec());
            }
            for row in task.payload() {
                task.chunk(&[*row])?;
            }
            Ok(b"end".to_vec())
        });
        recv(&sup);
        send(&sup, &task(5, 1, b"ab"));
        send(&sup, &task(6, 1, b"huge"));
        send(&sup, &task(7, 1, b""));
        let chunk = |id, data: &[u8]| FromWorker::Chunk {
            id,
            data: data.to_vec(),
        };
        assert_eq!(recv(&sup), chunk(5, b"a"));
        assert_eq!(recv(&sup), chunk(5, b"b"));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 5,
                outcome: Outcome::Ok(b"end".to_vec())
            }
        );
        assert_eq!(recv(&sup), chunk(6, b"fits"));
        match recv(&sup) {
            FromWorker::Done {
                id: 6,
                outcome:
                    Outcome::Err {
                        retryable: false,
                        message,
                    },
            } => assert!(message.contains("chunk of 2000 bytes"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 7,
                outcome: Outcome::Ok(b"end".to_vec())
            }
        );
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn oversize_output_becomes_an_error() {
        let (sup, worker) = spawn_worker(echo);
        recv(&sup);
        send(&sup, &task(5, 1, b"big"));
        match recv(&sup) {
            FromWorker::Done {
                id: 5,
                outcome:
                    Outcome::Err {
                        retryable: false,
                        message,
                    },
            } => assert!(message.contains("2000 bytes"), "{message}"),
            other => panic!("unexpected {other:?}"),
        }
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn eof_means_disconnected() {
        let (sup, worker) = spawn_worker(echo);
        recv(&sup);
        drop(sup);
        let err = worker.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Disconnected), "{err:?}");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn garbage_and_oversize_input_are_protocol_errors() {
        for bad in [
            &[3u8, 0, 0, 0, 0x7f, 1, 2][..],
            &[0xff, 0xff, 0xff, 0xff, 1][..],
        ] {
            let (sup, worker) = spawn_worker(echo);
            recv(&sup);
            (&sup).write_all(bad).unwrap();
            let err = worker.join().unwrap().unwrap_err();
            assert!(matches!(err, Error::Protocol(_)), "{err:?}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn eof_mid_frame_is_a_protocol_error() {
        let (sup, worker) = spawn_worker(echo);
        recv(&sup);
        (&sup).write_all(&[10, 0, 0, 0, 0]).unwrap();
        drop(sup);
        let err = worker.join().unwrap().unwrap_err();
        assert!(
            matches!(err, Error::Protocol(FrameError::EofMidFrame)),
            "{err:?}"
        );
    }

    #[test]
    fn raw_stream_bytes_follow_queued_frames() {
        let (sup, worker) = spawn_worker(|task: &mut Task<'_>| {
            if task.payload() == b"raw" {
                let w = task.raw_stream();
                w.write_all(&[1, 0, 0, 0, 2]).unwrap(); // a Heartbeat frame, hand-made
                w.flush().unwrap();
            }
            Ok(Vec::new())
        });
        recv(&sup);
        let mut bytes = Vec::new();
        codec::encode_frame(&task(1, 1, b"x"), &mut bytes, 1024).unwrap();
        codec::encode_frame(&task(2, 1, b"raw"), &mut bytes, 1024).unwrap();
        (&sup).write_all(&bytes).unwrap();
        assert!(matches!(recv(&sup), FromWorker::Done { id: 1, .. }));
        assert_eq!(recv(&sup), FromWorker::Heartbeat);
        assert!(matches!(recv(&sup), FromWorker::Done { id: 2, .. }));
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn a_quick_done_is_not_held_behind_a_slow_handler() {
        let (sup, worker) = spawn_worker(|task: &mut Task<'_>| {
            if task.payload() == b"slow" {
                thread::sleep(Duration::from_millis(300));
            }
            Ok(task.payload().to_vec())
        });
        recv(&sup);
        // Both tasks in one write, so the second is buffered when the first's handler returns.
        let mut bytes = Vec::new();
        codec::encode_frame(&task(1, 1, b"quick"), &mut bytes, 1024).unwrap();
        codec::encode_frame(&task(2, 1, b"slow"), &mut bytes, 1024).unwrap();
        let sent = Instant::now();
        (&sup).write_all(&bytes).unwrap();
        // Without the flusher the first Done would only come with the second, after 300 ms.
        sup.set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        let first = codec::read_frame::<FromWorker, _>(&mut &sup, &mut Vec::new(), 1024)
            .unwrap_or_else(|e| panic!("no Done {:?} after sending: {e}", sent.elapsed()));
        assert_eq!(
            first,
            Some(FromWorker::Done {
                id: 1,
                outcome: Outcome::Ok(b"quick".to_vec())
            })
        );
        sup.set_read_timeout(None).unwrap();
        assert!(matches!(recv(&sup), FromWorker::Done { id: 2, .. }));
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    /// Accepts the `Hello`, then fails every write as a closed socket would, and says so.
    struct BreaksAfterHello {
        writes: usize,
        broke: std::sync::mpsc::Sender<()>,
    }

    impl Write for BreaksAfterHello {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            if self.writes == 1 {
                return Ok(bytes.len());
            }
            let _ = self.broke.send(());
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_in_the_flusher_is_reported_by_the_serve_loop() {
        let (broke_tx, broke_rx) = std::sync::mpsc::channel();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (sup, worker) = UnixStream::pair().unwrap();
        let writer = BreaksAfterHello {
            writes: 0,
            broke: broke_tx,
        };
        let handle = thread::spawn(move || {
            serve(&worker, writer, &config(), move |task: &mut Task<'_>| {
                if task.payload() == b"wait" {
                    // Only the flusher can try to write the first Done while this handler runs.
                    let flushed = broke_rx.recv_timeout(Duration::from_secs(10)).is_ok();
                    seen_tx.send(flushed).unwrap();
                }
                Ok(Vec::new())
            })
        });
        let mut bytes = Vec::new();
        codec::encode_frame(&task(1, 1, b"quick"), &mut bytes, 1024).unwrap();
        codec::encode_frame(&task(2, 1, b"wait"), &mut bytes, 1024).unwrap();
        codec::encode_frame(&ToWorker::Shutdown, &mut bytes, 1024).unwrap();
        (&sup).write_all(&bytes).unwrap();
        assert!(
            seen_rx.recv().unwrap(),
            "the flusher did not write while the handler ran"
        );
        let err = handle.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Disconnected), "{err:?}");
    }

    /// `split` on one end of a socket pair; returns the supervisor's end too, past the Hello.
    fn split_pair() -> (UnixStream, Tasks, Replies) {
        let (sup, worker) = UnixStream::pair().unwrap();
        let writer = worker.try_clone().unwrap();
        let (tasks, replies) = split(worker, writer, &config()).unwrap();
        assert!(matches!(recv(&sup), FromWorker::Hello { .. }));
        (sup, tasks, replies)
    }

    #[test]
    fn split_connection_answers_in_any_order_and_batches() {
        let (sup, mut tasks, mut replies) = split_pair();
        let mut bytes = Vec::new();
        for id in 0..100u64 {
            codec::encode_frame(&task(id, 1, &id.to_le_bytes()), &mut bytes, 1024).unwrap();
        }
        codec::encode_frame(&ToWorker::Shutdown, &mut bytes, 1024).unwrap();
        (&sup).write_all(&bytes).unwrap();
        let mut got = Vec::new();
        while let Some(t) = tasks.recv().unwrap() {
            assert_eq!(t.payload, t.id.to_le_bytes());
            got.push(t.id);
            // All of them came in one write; only the termination frame is left at the end.
            assert!(tasks.buffered());
        }
        assert!(!tasks.buffered());
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        // Answered from another thread, in reverse order, one of them an error.
        thread::spawn(move || {
            for &id in got.iter().rev() {
                let result = if id == 7 {
                    Err(TaskError::retryable("again"))
                } else {
                    Ok(id.to_string().into_bytes())
                };
                replies.send(id, result).unwrap();
            }
            replies.flush().unwrap();
        })
        .join()
        .unwrap();
        for id in (0..100u64).rev() {
            let want = if id == 7 {
                Outcome::Err {
                    retryable: true,
                    message: "again".into(),
                }
            } else {
                Outcome::Ok(id.to_string().into_bytes())
            };
            assert_eq!(recv(&sup), FromWorker::Done { id, outcome: want });
        }
    }

    #[test]
    fn split_connection_eof_oversize_and_garbage() {
        let (sup, mut tasks, mut replies) = split_pair();
        replies.send(1, Ok(vec![0; 2000])).unwrap();
        replies.flush().unwrap();
        assert!(matches!(
            recv(&sup),
            FromWorker::Done { id: 1, outcome: Outcome::Err { retryable: false, message } }
                if message.contains("2000 bytes")
        ));
        drop(sup);
        let err = tasks.recv().unwrap_err();
        assert!(matches!(err, Error::Disconnected), "{err:?}");
        // Writing to a supervisor that is gone is a disconnect too, not a protocol error.
        replies.send(2, Ok(b"x".to_vec())).unwrap();
        assert!(matches!(replies.flush(), Err(Error::Disconnected)));

        let (sup, mut tasks, _replies) = split_pair();
        (&sup).write_all(&[3u8, 0, 0, 0, 0x7f, 1, 2]).unwrap();
        assert!(matches!(tasks.recv(), Err(Error::Protocol(_))));
    }

    #[test]
    fn not_under_herd_message() {
        let msg = Error::NotUnderHerd(ENV_SOCKET).to_string();
        assert_eq!(
            msg,
            "this program is a herd worker: run it under `herd run -- <cmd>` (HERD_SOCKET is not set)"
        );
    }

    #[test]
    fn complete_frame_detection() {
        assert!(!complete_frame_buffered(&[], 10));
        assert!(!complete_frame_buffered(&[2, 0, 0], 10));
        assert!(!complete_frame_buffered(&[2, 0, 0, 0, 1], 10));
        assert!(complete_frame_buffered(&[2, 0, 0, 0, 1, 2], 10));
        assert!(!complete_frame_buffered(&[20, 0, 0, 0, 1, 2], 10));
    }

    /// An error whose source is an I/O error, as a client library's would be.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot query the index")]
    struct Query(#[source] io::Error);

    #[test]
    fn question_mark_turns_any_error_into_a_task_error() {
        fn handle(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
            let text = std::str::from_utf8(task.payload())?;
            let n: u32 = text.parse()?;
            if n == 0 {
                Err(Query(io::ErrorKind::ConnectionReset.into()))?;
            }
            Ok(n.to_string().into_bytes())
        }
        let (sup, worker) = spawn_worker(handle);
        recv(&sup);
        send(&sup, &task(1, 1, b"\xff"));
        send(&sup, &task(2, 1, b"x"));
        send(&sup, &task(3, 1, b"0"));
        send(&sup, &task(4, 1, b"7"));
        let err = |retryable, message: &str| Outcome::Err {
            retryable,
            message: message.into(),
        };
        let want = [
            err(false, "invalid utf-8 sequence of 1 bytes from index 0"),
            err(false, "invalid digit found in string"),
            err(true, "cannot query the index: connection reset"),
            Outcome::Ok(b"7".to_vec()),
        ];
        for (id, outcome) in (1..).zip(want) {
            assert_eq!(recv(&sup), FromWorker::Done { id, outcome });
        }
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn only_transient_io_errors_are_retryable() {
        use io::ErrorKind::*;
        for kind in [TimedOut, ConnectionRefused, BrokenPipe, NetworkUnreachable] {
            assert!(
                TaskError::from(io::Error::from(kind)).is_retryable(),
                "{kind:?}"
            );
        }
        for kind in [
            NotFound,
            PermissionDenied,
            InvalidData,
            UnexpectedEof,
            Other,
        ] {
            assert!(
                !TaskError::from(io::Error::from(kind)).is_retryable(),
                "{kind:?}"
            );
        }
        // A source anywhere in the chain counts; the message names every link once.
        let err = TaskError::from(Query(io::Error::new(TimedOut, "after 5s")));
        assert!(err.is_retryable());
        assert_eq!(err.message(), "cannot query the index: after 5s");
        let boxed: Box<dyn std::error::Error + Send + Sync> = "plain".into();
        assert_eq!(TaskError::classify(&*boxed), TaskError::fatal("plain"));
    }

    #[test]
    fn result_ext_overrides_the_default() {
        let missing: Result<(), io::Error> = Err(io::ErrorKind::NotFound.into());
        assert_eq!(
            missing.retryable(),
            Err(TaskError::retryable("entity not found"))
        );
        let refused: Result<(), io::Error> = Err(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(refused.fatal(), Err(TaskError::fatal("connection refused")));
        let own: Result<(), TaskError> = Err(TaskError::fatal("mine"));
        assert_eq!(own.retryable(), Err(TaskError::retryable("mine")));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}

/// The README's examples, compiled as doc tests so that they stay true.
#[cfg(all(doctest, feature = "tokio"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
