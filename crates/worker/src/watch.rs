//! Protocol 3 while a handler runs: the watcher, a thread that reads the connection only while a
//! handler has been running for a while, so that herd's `Withdraw` and `Cancel` are answered
//! even when the task in hand is slow or hung.
//!
//! # Theory of operation
//! The serve loop reads its frames itself between handlers, as it always has: the tiny-task path
//! costs a few atomic operations more and no thread hand-off. A handler that has run for
//! [`WATCH_AFTER`] is "slow": the watcher takes the read side over until that handler returns.
//! It answers `Withdraw` and `Cancel` at once and keeps every `Task` (and the end of the stream)
//! in [`Reader::ahead`], in order, for the serve loop to run next.
//!
//! - **Exactly one owner per task.** A task is *started* the moment the serve loop takes it to
//!   run. Both that and the watcher's decision on a `Withdraw` happen under the one lock on the
//!   read side ([`Reader`]), so a task is either still in `ahead` (given back: `Withdrawn`) or
//!   started (kept: `Kept`, its `Done` follows or went before). A `Withdraw` the serve loop reads
//!   itself, between handlers, always finds its task run already: nothing is ahead when it
//!   reads (`Kept`).
//! - **Handing the read side back.** The serve loop bumps [`Shared::seq`] when a handler starts
//!   and when it ends (odd while one runs). When one ends while the watcher reads, the serve
//!   loop wakes the watcher's `poll` through a socket pair, and takes the lock as soon as the
//!   watcher lets go. The two flags (`seq` and `engaged`) are sequentially consistent, so one
//!   side always sees the other's move: the watcher never keeps reading after a handler ended.
//!   That holds only for the (odd) count of the handler the watcher waited out: the read side
//!   is free, and no wake-up is coming, between a handler's end and the serve loop taking the
//!   lock back (see `Shared::engage`).
//! - **A cancel is a request.** A `Cancel` for the running task sets its flag
//!   ([`Task::is_cancelled`](crate::Task::is_cancelled), and wakes
//!   [`Task::cancelled`](crate::Task::cancelled)); the handler decides when it stops. A `Cancel`
//!   for a task still ahead removes it and answers `Done(Cancelled)` at once; for one already
//!   answered it changes nothing.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use herd_proto::codec::{self, FrameError};
use herd_proto::{BatchTask, FromWorker, Outcome, ToWorker};

use crate::{complete_frame_buffered, Outbox};

/// How long a handler runs before the watcher reads the connection for it. herd withdraws work
/// only from a task that has run a second or more, so this costs nothing it needs.
pub(crate) const WATCH_AFTER: Duration = Duration::from_millis(10);

/// What the serve loop runs next, decoded ahead of it by the watcher.
pub(crate) enum Ahead {
    Task {
        id: u64,
        attempt: u32,
        payload: Vec<u8>,
    },
    /// Tasks for one handler call (protocol 3, to a worker that sent `Batching`).
    Batch(Vec<BatchTask>),
    /// The termination frame.
    Shutdown,
    /// The end of the stream: herd is gone.
    Eof,
    /// A frame that could not be read.
    Broken(FrameError),
}

/// The connection's read side, and what was read ahead of the serve loop.
pub(crate) struct Reader<R> {
    pub input: BufReader<R>,
    pub scratch: Vec<u8>,
    pub ahead: VecDeque<Ahead>,
    /// The watcher read the end of the stream (or the termination frame): it reads no more.
    pub ended: bool,
}

/// The cancel of the running task, shared by the watcher and the handler.
#[derive(Debug, Default)]
pub struct CancelSignal {
    state: Mutex<CancelState>,
}

#[derive(Debug, Default)]
struct CancelState {
    /// The task herd cancelled (ids are unique in a herd run, and a cancelled event is never
    /// sent again, so a flag left from an earlier task cannot match a later one).
    id: Option<u64>,
    waker: Option<Waker>,
}

impl CancelSignal {
    fn lock(&self) -> MutexGuard<'_, CancelState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether herd cancelled task `id`.
    pub(crate) fn is(&self, id: u64) -> bool {
        self.lock().id == Some(id)
    }

    fn set(&self, id: u64) {
        let mut st = self.lock();
        st.id = Some(id);
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

/// A future that completes when herd cancels the task ([`Task::cancelled`](crate::Task::cancelled)).
///
/// # Cancel safety
/// Dropping it changes nothing; a new one completes at once if the cancel came meanwhile.
#[derive(Debug)]
pub struct Cancelled<'a> {
    pub(crate) signal: &'a CancelSignal,
    pub(crate) id: u64,
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.signal.lock();
        if st.id == Some(self.id) {
            return Poll::Ready(());
        }
        st.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What the serve loop and the watcher share.
pub(crate) struct Shared<R> {
    pub reader: Mutex<Reader<R>>,
    /// Bumped when a handler starts and when it ends: odd while one runs.
    seq: AtomicU64,
    /// The task whose handler runs (while `seq` is odd).
    running: AtomicU64,
    /// The watcher holds the read side.
    engaged: AtomicBool,
    /// The watcher waits for a handler to start (and must be notified).
    parked: AtomicBool,
    park: Mutex<()>,
    wake_watcher: Condvar,
    /// Written by the serve loop to interrupt the watcher's `poll`.
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    stop: AtomicBool,
    pub cancel: CancelSignal,
}

impl<R: Read + AsFd> Shared<R> {
    pub fn new(input: BufReader<R>) -> std::io::Result<Self> {
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Self {
            reader: Mutex::new(Reader {
                input,
                scratch: Vec::new(),
                ahead: VecDeque::new(),
                ended: false,
            }),
            seq: AtomicU64::new(0),
            running: AtomicU64::new(0),
            engaged: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            park: Mutex::new(()),
            wake_watcher: Condvar::new(),
            wake_tx,
            wake_rx,
            stop: AtomicBool::new(false),
            cancel: CancelSignal::default(),
        })
    }

    pub fn lock_reader(&self) -> MutexGuard<'_, Reader<R>> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The handler of task `id` starts (the caller has let go of the read side).
    pub fn begin(&self, id: u64) {
        self.running.store(id, SeqCst);
        self.seq.fetch_add(1, SeqCst);
        if self.parked.load(SeqCst) {
            let _park = self.park.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake_watcher.notify_one();
        }
    }

    /// The handler ended: takes the read side back (from the watcher, if it had it).
    pub fn end(&self) -> MutexGuard<'_, Reader<R>> {
        self.mark_ended();
        self.lock_reader()
    }

    /// The first half of [`Shared::end`]: counts the handler ended and wakes the watcher if it
    /// reads for it. Until the serve loop has the lock again, the read side is free.
    fn mark_ended(&self) {
        self.seq.fetch_add(1, SeqCst);
        if self.engaged.load(SeqCst) {
            // A full pipe already holds a wake-up.
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// Tells the watcher to exit.
    pub fn shut(&self) {
        self.stop.store(true, SeqCst);
        let _park = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake_watcher.notify_one();
        drop(_park);
        let _ = (&self.wake_tx).write(&[1]);
    }

    /// The watcher thread: waits for a handler to run for [`WATCH_AFTER`], then reads for it
    /// until it ends.
    pub fn run_watcher<W: Write>(&self, outbox: &Outbox<W>, max: usize) {
        loop {
            // Park until a handler runs, then give it its time: `seen` is its (odd) count.
            let seen = {
                let mut park = self.park.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if self.stop.load(SeqCst) {
                        return;
                    }
                    self.parked.store(true, SeqCst);
                    if !self.seq.load(SeqCst).is_multiple_of(2) {
                        break;
                    }
                    park = self
                        .wake_watcher
                        .wait(park)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                self.parked.store(false, SeqCst);
                // Give the handler its time; a stop cuts the wait short.
                let seen = self.seq.load(SeqCst);
                let (_park, _) = self
                    .wake_watcher
                    .wait_timeout(park, WATCH_AFTER)
                    .unwrap_or_else(PoisonError::into_inner);
                if self.stop.load(SeqCst) {
                    return;
                }
                if self.seq.load(SeqCst) != seen || seen.is_multiple_of(2) {
                    continue;
                }
                seen
            };
            self.engage(seen, outbox, max);
        }
    }

    /// Takes the read side and reads for the handler counted `seen` (odd), if it still runs;
    /// lets go when it ends.
    ///
    /// `seen` is the count the watcher waited out, never a fresh load: between a handler's end
    /// and the serve loop taking the lock back ([`Shared::end`]) the count is even, the lock
    /// free and no wake-up coming (the serve loop saw `engaged` false). A watcher that took the
    /// lock then and read for that fresh count matched it, polled for the wake-up, and held the
    /// lock the serve loop waited for: a worker stuck with all its tasks. With the handler's own
    /// count, set `engaged` then compare: either it still matches and the handler's end will see
    /// `engaged` and write, or the handler is gone and the watcher lets go at once.
    fn engage<W: Write>(&self, seen: u64, outbox: &Outbox<W>, max: usize) {
        debug_assert!(
            !seen.is_multiple_of(2),
            "the watcher reads only for a handler"
        );
        let mut reader = self.lock_reader();
        self.engaged.store(true, SeqCst);
        if self.seq.load(SeqCst) == seen && !reader.ended {
            self.watch(&mut reader, seen, outbox, max);
        }
        self.engaged.store(false, SeqCst);
        let mut drain = [0u8; 64];
        while matches!((&self.wake_rx).read(&mut drain), Ok(n) if n > 0) {}
        drop(reader);
    }

    /// Reads frames while the handler of `seen` runs.
    fn watch<W: Write>(&self, reader: &mut Reader<R>, seen: u64, outbox: &Outbox<W>, max: usize) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            if self.seq.load(SeqCst) != seen || self.stop.load(SeqCst) {
                return;
            }
            if !complete_frame_buffered(reader.input.buffer(), max) {
                let mut fds = [
                    PollFd::new(reader.input.get_ref().as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN),
                ];
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue; // EINTR
                }
                let woken = fds[1].revents().is_some_and(|r| !r.is_empty());
                if woken || self.seq.load(SeqCst) != seen {
                    return;
                }
            }
            let Reader {
                input,
                scratch,
                ahead,
                ended,
            } = reader;
            let frame = match codec::read_frame::<ToWorker, _>(input, scratch, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    ahead.push_back(Ahead::Eof);
                    *ended = true;
                    return;
                }
                Err(e) => {
                    ahead.push_back(Ahead::Broken(e));
                    *ended = true;
                    return;
                }
            };
            let answer = match frame {
                ToWorker::Task {
                    id,
                    attempt,
                    payload,
                } => {
                    ahead.push_back(Ahead::Task {
                        id,
                        attempt,
                        payload,
                    });
                    None
                }
                ToWorker::Batch { tasks } => {
                    ahead.push_back(Ahead::Batch(tasks));
                    None
                }
                ToWorker::Shutdown => {
                    ahead.push_back(Ahead::Shutdown);
                    *ended = true;
                    return;
                }
                ToWorker::Withdraw { id } => Some(match take(ahead, id) {
                    true => FromWorker::Withdrawn { id },
                    false => FromWorker::Kept { id },
                }),
                ToWorker::Cancel { id } => {
                    if take(ahead, id) {
                        Some(FromWorker::Done {
                            id,
                            outcome: Outcome::Cancelled,
                        })
                    } else {
                        if self.running.load(SeqCst) == id && self.seq.load(SeqCst) == seen {
                            self.cancel.set(id);
                        }
                        None
                    }
                }
            };
            if let Some(msg) = answer {
                let mut out = outbox.lock();
                if out.error.is_none() {
                    let sent = codec::encode_frame(&msg, &mut out.buf, max)
                        .map_err(std::io::Error::other)
                        .and_then(|()| out.flush());
                    if let Err(e) = sent {
                        out.error = Some(e);
                    }
                }
            }
        }
    }
}

/// Takes the task `id` out of `ahead`: whether it was there (not started). A task of a batch
/// not started yet is taken out of its batch alone; the rest still run together.
fn take(ahead: &mut VecDeque<Ahead>, id: u64) -> bool {
    for (p, a) in ahead.iter_mut().enumerate() {
        match a {
            Ahead::Task { id: t, .. } if *t == id => return ahead.remove(p).is_some(),
            Ahead::Batch(tasks) => {
                if let Some(k) = tasks.iter().position(|t| t.id == id) {
                    tasks.remove(k);
                    if tasks.is_empty() {
                        ahead.remove(p);
                    }
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
