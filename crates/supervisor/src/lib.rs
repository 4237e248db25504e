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
//! completion order or, with `ordered`, in `seq` order.
//!
//! When a worker dies, breaks the protocol or overruns its deadline, its process group is
//! killed, the task it was running is charged an attempt and retried (or recorded as
//! `crashed`/`protocol`/`timeout` once `retries` are used up), the tasks merely queued behind it
//! are re-dispatched free of charge, and the slot is restarted: at once if the worker died
//! working, with exponential backoff if it failed to start or died idle.
//!
//! When the source ends (or a graceful [`Command::Stop`] arrives) the pool finishes what it
//! accepted, sends every worker the termination frame, gives them `grace` to exit, kills
//! stragglers, reaps everything and removes its socket directory.
//!
//! All of this state is owned by a single task (`pool`); the other modules only translate I/O
//! into messages for it: `rendezvous` (socket and handshakes), `link` (frames after the
//! handshake), `process` (spawning, exit watching, stderr forwarding).

mod config;
pub mod lines;
mod link;
mod pool;
mod process;
pub mod record;
mod rendezvous;
pub mod slot;

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use config::PoolConfig;
pub use process::{signal_name, Exit};
pub use record::{ErrorKind, Record, RecordOutcome, RecordWriter};

/// One item from an event source.
#[derive(Debug, Clone)]
pub enum Input {
    /// An event to run.
    Event { seq: u64, payload: Bytes },
    /// An event the source already refused (e.g. a line too long to buffer); it gets a
    /// `rejected` record.
    Rejected { seq: u64, reason: String },
}

/// Asks a running pool to change course.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop taking events. `fast: false` finishes what was accepted (within the drain
    /// timeout); `fast: true` kills the workers and records the rest as `shutdown`.
    Stop { fast: bool },
}

/// What a pool did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Success records.
    pub ok: u64,
    /// Error records by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Worker processes replaced after an unexpected exit.
    pub restarts: u64,
    /// Worker processes replaced gracefully (`max_tasks`, `max_rss`).
    pub recycled: u64,
}

impl Summary {
    /// Records of any kind.
    pub fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// Why a pool could not run (never because of what one worker or event did).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The worker command is empty.
    #[error("no worker command given")]
    NoCommand,
    /// The worker program could not be started at all.
    #[error("cannot start worker program `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The private socket directory could not be set up.
    #[error("cannot set up the worker socket: {0}")]
    RuntimeDir(#[source] std::io::Error),
    /// Workers start but never complete a handshake.
    #[error("worker program `{program}` failed to start {attempts} times and never became ready (last: {}){}",
        .last_exit.as_deref().unwrap_or("no exit status"),
        format_tail(.stderr_tail))]
    NeverReady {
        program: String,
        attempts: u32,
        last_exit: Option<String>,
        stderr_tail: Vec<String>,
    },
    /// The record sink went away (e.g. stdout closed).
    #[error("the output closed before all records were written")]
    SinkClosed,
}

fn format_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        "; it wrote nothing to stderr".to_string()
    } else {
        let mut s = String::from("; its last stderr lines:");
        for l in tail {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }
}

/// Runs a pool: events from `source` (batches of [`Input`]) become [`Record`]s on `sink`.
/// Returns when the source is exhausted and every record is handed over and every worker has
/// exited, or after a [`Command::Stop`].
///
/// Must be called on a long-lived runtime thread (not inside `spawn_blocking`): workers'
/// parent-death signal is tied to the thread that spawns them.
///
/// # Errors
/// [`PoolError`] when the pool itself cannot work; worker and event faults become records.
pub async fn run(
    config: PoolConfig,
    source: mpsc::Receiver<Vec<Input>>,
    sink: mpsc::Sender<Vec<Record>>,
    commands: mpsc::UnboundedReceiver<Command>,
) -> Result<Summary, PoolError> {
    pool::Pool::run(config, source, sink, commands).await
}
