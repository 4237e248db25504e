//! herd-supervisor: a pool of worker processes that turns a stream of events into results.
//!
//! # Theory of operation
//!
//! A pool spawns `workers` processes from one command line, each in its own process group and
//! with a parent-death signal, and waits for each to connect back over a Unix socket in a
//! private directory and introduce itself with a one-time token (checked together with the
//! kernel's peer credentials). Events from the caller's source are accepted into a bounded
//! queue — when it is full the source is simply not read, which is the back-pressure — and
//! dispatched round-robin to the workers with room in their window. Results come back
//! asynchronously; each accepted event leaves as exactly one [`Record`] on the sink, in
//! completion order or, with [`SubmitOptions::ordered`], in `seq` order.
//!
//! When a worker dies, breaks the protocol or overruns its deadline, its process group is
//! killed, the task it was running is charged an attempt and retried (or recorded as
//! `crashed`/`protocol`/`timeout` once `retries` are used up), the tasks merely queued behind it
//! are re-dispatched free of charge, and the slot is restarted: at once if the worker died
//! working, with exponential backoff if it failed to start or died idle.
//!
//! When the source ends (or a graceful [`Command::Stop`] arrives) the pool finishes what it
//! accepted, within [`PoolConfig::stop_grace`] (`--grace`, the drain deadline; what is left
//! then is recorded as `shutdown`), sends every worker the termination frame, gives each
//! [`PoolConfig::exit_timeout`] to exit, kills stragglers, reaps everything and removes its
//! socket directory.
//!
//! All of this state is owned by a single task (`pool`); the other modules only translate I/O
//! into messages for it: `rendezvous` (socket and handshakes), `link` (frames after the
//! handshake), `process` (spawning, exit watching, stderr forwarding).

pub mod autoscale;
mod backlog;
pub mod batch;
mod blame;
pub mod client;
mod config;
pub mod control;
mod credits;
mod guard;
mod job;
pub mod keys;
pub mod launch;
mod limits;
pub mod lines;
mod link;
mod msg;
pub mod parent;
pub mod policy;
mod pool;
pub mod priority;
mod process;
pub mod rate;
pub mod record;
mod rendezvous;
pub mod resume;
mod slot;
pub mod status;
mod submission;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use credits::{Credits, Outbox};

pub use autoscale::AutoscaleConfig;
pub use backlog::ChunkTicket;
pub use batch::BatchConfig;
pub use config::{PoolConfig, DEFAULT_QUEUE_BYTES};
pub use credits::RecordBatch;
pub use job::SubmissionId;
pub use launch::{Identity, Launch, Limits};
pub use pool::CancelOutcome;
pub use process::{peak_rss_bytes, raise_nofile_limit};
pub use rate::Rate;
pub use record::{ErrorKind, Record, RecordOutcome, RecordWriter};
pub use slot::{signal_name, Exit, Replacement};
pub use status::{
    AutoscaleDecision, AutoscaleStatus, BreakerStatus, KeyStatus, RateScope, RateStatus,
    SourceStatus, Status, WorkerStatus,
};
pub use submission::{
    run_one, Canceller, Delivered, EventSender, PoolGone, Records, Room, Sink, Source, Submission,
    SubmissionError,
};

/// One item from an event source.
#[derive(Debug, Clone)]
pub enum Input {
    /// An event to run. `prior_attempts` is how many attempts it already had elsewhere (a
    /// broker's earlier deliveries; 0 for a new event): its attempt numbers continue from
    /// there, for the worker (`Task::attempt`) and in the record's `attempts`.
    Event {
        seq: u64,
        payload: Bytes,
        prior_attempts: u32,
    },
    /// An event the source already refused (e.g. a line too long to buffer); it gets a
    /// `rejected` record.
    Rejected { seq: u64, reason: String },
}

impl Input {
    /// A new event (never attempted before).
    pub fn event(seq: u64, payload: Bytes) -> Self {
        Input::Event {
            seq,
            payload,
            prior_attempts: 0,
        }
    }

    /// Payload bytes this input holds.
    pub fn len(&self) -> usize {
        match self {
            Input::Event { payload, .. } => payload.len(),
            Input::Rejected { .. } => 0,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Asks a running pool to change course.
#[derive(Debug)]
pub enum Command {
    /// Stop taking events. `fast: false` finishes what was accepted (within the drain
    /// timeout), then sends the termination frames; `fast: true` kills the workers and
    /// records the rest as `shutdown`.
    Stop { fast: bool },
    /// Run this many workers. Ignored (with a warning in the log) while the pool autoscales.
    Scale(usize),
    /// One worker more (+1) or fewer (-1). Ignored while the pool autoscales.
    ScaleBy(i64),
    /// Rolling restart of every worker.
    Reload,
    /// A new configuration for the running pool. Applied in place: `workers` (unless
    /// autoscaling), `window`, `timeout`, `retries`, `retry_backoff`, `stop_grace`,
    /// `max_tasks`, `max_rss`, `start_timeout`, `exit_timeout`. A changed `command` or
    /// `launch` rolls every worker (as [`Command::Reload`]). `max_frame`, `queue`,
    /// `queue_bytes`, `runtime_dir`, the launch user and `autoscale` need a restart: their
    /// running values stay (with a warning in the log).
    Reconfigure(Box<PoolConfig>),
    /// A snapshot of the pool.
    Status(oneshot::Sender<Status>),
    /// Write a status snapshot to the log.
    LogStatus,
    /// A new rate limit on attempt starts (`None`: unlimited): the pool's, or one open
    /// submission's. The reply is false if that submission is not open.
    SetRate {
        submission: Option<SubmissionId>,
        rate: Option<rate::Rate>,
        reply: oneshot::Sender<bool>,
    },
}

/// Submission traffic into the pool, on one ordered channel.
#[derive(Debug)]
pub(crate) enum SubmissionMsg {
    Open {
        id: SubmissionId,
        sink: mpsc::UnboundedSender<Outbox>,
        credits: Arc<Credits>,
        options: SubmitOptions,
    },
    Events {
        id: SubmissionId,
        batch: Vec<Input>,
    },
    End {
        id: SubmissionId,
    },
    /// Cancel event `seq` of submission `id`. On the submission channel, so that every event
    /// its submitter sent before the cancel has been accepted when it arrives.
    Cancel {
        id: SubmissionId,
        seq: u64,
        reply: Option<oneshot::Sender<CancelOutcome>>,
    },
}

/// How a submission wants its events handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// The dispatch priority of its events (see [`crate::priority`]): higher first, default 0.
    pub priority: priority::Priority,
    /// Each line starts with its own priority and a tab (`5\t{...}`), which is stripped
    /// before the event goes to a worker; a line without a valid one gets a `rejected`
    /// record. Off, herd never looks inside a line.
    pub line_priority: bool,
    /// Records in `seq` order (a bounded reorder buffer holds early finishers) rather than
    /// in completion order.
    pub ordered: bool,
    /// The source retries retryable handler errors itself (a broker redelivers a message it
    /// is told to, after a delay): the pool does not retry them but hands each back at once
    /// as a `failed` record whose [`RecordOutcome::Err`] says `retryable`. Crashes and
    /// timeouts are still retried by the pool, up to `retries`.
    pub source_retries: bool,
    /// Attempt starts of this submission's events, at most (`herd submit --rate`); other
    /// submissions are dispatched past it while it waits.
    pub rate: Option<rate::Rate>,
    /// This submission's `--max-age`, in place of the pool's (see [`PoolConfig::max_age`]).
    pub max_age: Option<std::time::Duration>,
    /// This submission's `--deadline`, in place of the pool's (see [`PoolConfig::deadline`]).
    pub deadline: Option<std::time::Duration>,
    /// Where each event's key is, if anywhere (see [`crate::keys`]).
    pub key: KeySource,
    /// This submission's batches (`herd submit --batch`), in place of the pool's (see
    /// [`PoolConfig::batch`]); a `max` below 2 turns them off for it.
    pub batch: Option<BatchConfig>,
}

/// Where an event's key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeySource {
    /// No keys: per-key limits do not apply.
    #[default]
    None,
    /// Each line starts with its key and a tab (`<key>\t<event>`), stripped before the event
    /// goes to a worker (after the priority, with both prefixes: `<priority>\t<key>\t<event>`).
    /// An empty key is no key; a line without a tab gets a `rejected` record.
    Line,
    /// At this JSON pointer (RFC 6901, `/user/id`) in each event, which must then be JSON: a
    /// string is the key as it is, any other value its compact JSON text. An event without
    /// that member has no key; one that is not JSON gets a `rejected` record.
    Pointer(std::sync::Arc<str>),
}

/// What a pool did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Success records.
    pub ok: u64,
    /// Error records by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Worker processes replaced after an unexpected exit: the sum of [`Status::restarts`]
    /// for crash, timeout, protocol and start-failure.
    pub restarts: u64,
    /// Worker processes replaced gracefully: the sum of [`Status::restarts`] for max-tasks,
    /// max-rss and reload.
    pub recycled: u64,
    /// `Batch` frames sent (`--batch`), and the events they carried.
    pub batches: u64,
    pub batched_events: u64,
}

impl Summary {
    /// Records of any kind.
    pub fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// Why a pool could not run (never because of what one worker or event did).
///
/// A message does not repeat its [`source`](std::error::Error::source): print the chain
/// (anyhow's `{:#}`) to get both, each once.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The worker command is empty.
    #[error("no worker command given")]
    NoCommand,
    /// The pool's task ended abnormally (a bug: it panicked).
    #[error("the pool stopped abnormally: {0}")]
    Internal(String),
    /// The worker program could not be started at all.
    #[error("cannot start worker program `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The private socket directory could not be set up.
    #[error("cannot set up the worker socket")]
    RuntimeDir(#[source] std::io::Error),
    /// A thread the pool needs (e.g. the one that drives [`run_one`]'s submission) could not
    /// be started: the process is out of threads or memory.
    #[error("cannot start the {name} thread")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Workers start but never complete a handshake.
    #[error("worker program `{program}` never became ready ({attempts} failed starts); the last: {reason}. \
        Is it a herd worker? A worker connects to the socket in $HERD_SOCKET and completes the \
        handshake; the worker SDKs do this for you (the herd-worker crate for Rust, sdk/python for Python; a program that reads and writes lines runs under herd-stdio: see the README){}{}",
        format_tail("stdout", .stdout_tail), format_tail("stderr", .stderr_tail))]
    NeverReady {
        program: String,
        attempts: u32,
        /// What went wrong the last time.
        reason: String,
        stdout_tail: Vec<String>,
        stderr_tail: Vec<String>,
    },
    /// The record sink went away (e.g. stdout closed).
    #[error("the output closed before all records were written")]
    SinkClosed,
}

fn format_tail(stream: &str, tail: &[String]) -> String {
    if tail.is_empty() {
        format!("; it wrote nothing to {stream}")
    } else {
        let mut s = format!("; its last {stream} lines:");
        for l in tail {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }
}

/// A handle on a running pool: submit events, send commands, ask for status. Cheap to clone;
/// when every handle is gone the pool stops gracefully.
#[derive(Clone)]
pub struct PoolHandle {
    submissions: mpsc::UnboundedSender<SubmissionMsg>,
    commands: mpsc::UnboundedSender<Command>,
    next_submission: Arc<AtomicU64>,
    ready: watch::Receiver<Option<Vec<u32>>>,
    /// Becomes true once the pool takes no more events (a stop began).
    stopping: watch::Receiver<bool>,
    /// Sources outside the pool that add themselves to status snapshots.
    reporters: Arc<std::sync::Mutex<Vec<Reporter>>>,
    /// Per submission: events and bytes in the pool at once.
    queue: usize,
    queue_bytes: usize,
    /// The autoscaling bounds, if the pool autoscales.
    autoscale: Option<autoscale::AutoscaleConfig>,
}

/// Tells a source's state for a status snapshot.
type Reporter = Arc<dyn Fn() -> SourceStatus + Send + Sync>;

/// Starts building a pool: returns its handle and the future that runs it. The pool spawns its
/// workers when the future is first polled, and the future ends when the pool has stopped.
///
/// The future must be polled inside a tokio runtime whose threads outlive the pool: the pool
/// runs as a task of that runtime (dropping the future aborts it), and workers' parent-death
/// signal is tied to the thread that spawns them. `herd` uses a current-thread runtime.
///
/// # Errors
/// The future fails with [`PoolError`] when the pool itself cannot work; worker and event
/// faults become records.
pub fn pool(config: PoolConfig) -> (PoolHandle, impl Future<Output = Result<Summary, PoolError>>) {
    let (submissions_tx, submissions_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = watch::channel(None);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let handle = PoolHandle {
        submissions: submissions_tx,
        commands: cmd_tx,
        next_submission: Arc::new(AtomicU64::new(0)),
        ready: ready_rx,
        stopping: stopping_rx,
        reporters: Arc::default(),
        queue: config.effective_queue(),
        queue_bytes: config.queue_bytes,
        autoscale: config.autoscale,
    };
    let run = pool::Pool::run(config, submissions_rx, cmd_rx, ready_tx, stopping_tx);
    // The pool runs as a task of its own, not as the future the caller awaits: on a
    // current-thread runtime, a wake-up of the future passed to `block_on` costs an extra turn
    // of the I/O driver (an `epoll_wait`) before it is polled, and the link readers wake the
    // pool once per result.
    // Dropping the returned future still drops the pool (and kills its workers).
    (handle, async move {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(run))
            .await
            .unwrap_or_else(|e| Err(PoolError::Internal(e.to_string())))
    })
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle")
            .field("queue", &self.queue)
            .field("queue_bytes", &self.queue_bytes)
            .finish_non_exhaustive()
    }
}

impl PoolHandle {
    /// Opens a submission: a stream of events whose records come back on its own channel, in
    /// completion order or (with `ordered`) in `seq` order.
    pub fn submit(&self, ordered: bool) -> Submission {
        self.submit_with(SubmitOptions {
            ordered,
            ..SubmitOptions::default()
        })
    }

    /// Opens a submission with `options`.
    pub fn submit_with(&self, options: SubmitOptions) -> Submission {
        let id = self.next_submission.fetch_add(1, Ordering::Relaxed);
        let (sink, records) = mpsc::unbounded_channel();
        let credits = Credits::new(self.queue, self.queue_bytes);
        let _ = self.submissions.send(SubmissionMsg::Open {
            id,
            sink,
            credits: credits.clone(),
            options,
        });
        Submission {
            sender: EventSender {
                id,
                submissions: self.submissions.clone(),
                credits: credits.clone(),
                max_batch: self.queue,
            },
            records: Records {
                rx: records,
                credits,
            },
        }
    }

    /// Events one submission may have in the pool at once (its event credits).
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// The autoscaling settings, if the pool autoscales (`--workers MIN..MAX`).
    pub fn autoscale(&self) -> Option<autoscale::AutoscaleConfig> {
        self.autoscale
    }

    /// Sends a command; `false` if the pool has stopped.
    pub fn command(&self, cmd: Command) -> bool {
        self.commands.send(cmd).is_ok()
    }

    /// Cancels event `seq` of submission `submission` (from another connection than its
    /// submitter's); `None` if the pool has stopped.
    pub async fn cancel(&self, submission: SubmissionId, seq: u64) -> Option<CancelOutcome> {
        let (tx, rx) = oneshot::channel();
        let msg = SubmissionMsg::Cancel {
            id: submission,
            seq,
            reply: Some(tx),
        };
        self.submissions.send(msg).ok()?;
        rx.await.ok()
    }

    /// A snapshot of the pool, or `None` if it has stopped.
    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Status(tx));
        let mut status = rx.await.ok()?;
        let reporters = self.reporters.lock().unwrap_or_else(|e| e.into_inner());
        status.sources = reporters.iter().map(|r| r()).collect();
        Some(status)
    }

    /// Adds a source's own report to every status snapshot from now on (`herd status`,
    /// metrics). `report` is called on the asker's task, so it must be quick and not block.
    pub fn add_source_status(&self, report: impl Fn() -> SourceStatus + Send + Sync + 'static) {
        self.reporters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(report));
    }

    /// Resolves once the pool takes no more events: a stop began, or the pool is gone. A
    /// source that must not take events it cannot run (a broker consumer) stops fetching.
    pub async fn stopping(&self) {
        let mut rx = self.stopping.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether a stop has begun (or the pool is gone).
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow() || self.stopping.has_changed().is_err()
    }

    /// Waits until every worker has completed its handshake once; returns their pids, or
    /// `None` if the pool stopped first.
    pub async fn ready(&self) -> Option<Vec<u32>> {
        let mut rx = self.ready.clone();
        let got = rx.wait_for(Option::is_some).await.ok()?;
        got.clone()
    }
}
