//! The messages between the pool and the tasks that do its I/O, one enum per channel.
//!
//! - [`FromLink`], on the frames channel: what a worker's link reader decoded, then the end of
//!   the link. The end travels after the frames on the same channel, so when the pool sees it,
//!   it has seen every result the worker managed to send.
//! - [`Exited`], on the urgent channel: a process watcher's report, which must not wait
//!   behind a flood of results.
//! - [`Outgoing`]: what the pool hands a link to write.
//!
//! (Handshakes arrive on a channel of their own: `rendezvous::Arrival`.)

use bytes::Bytes;

use crate::slot::{Exit, WorkerId};

/// A frame for a worker, as the pool hands it to the link. (Tasks and batches are encoded
/// straight into the link by dispatch: see `Link::queue_task`.)
#[derive(Debug)]
pub(crate) enum Outgoing {
    Shutdown,
    /// Protocol 3: give task `id` back if not started.
    Withdraw(u64),
    /// Protocol 3: stop task `id` if it can.
    Cancel(u64),
}

/// A frame from a worker, as the pool sees it. A result's output is a slice of the buffer it
/// was read into: no copy between the socket and the record writer.
#[derive(Debug)]
pub(crate) enum WorkerFrame {
    Done {
        id: u64,
        outcome: TaskOutcome,
    },
    /// A partial result of task `id` (protocol 2), a slice of the read buffer like an output.
    Chunk {
        id: u64,
        data: Bytes,
        ticket: crate::ChunkTicket,
    },
    /// Protocol 3: the worker gave task `id` back (it never started it).
    Withdrawn {
        id: u64,
    },
    /// Protocol 3: the worker keeps task `id` (started or answered): its `Done` comes or came.
    Kept {
        id: u64,
    },
    Heartbeat,
    Hello,
    /// Protocol 3: its handler takes up to `max` (at least 1) tasks per call. The link
    /// reader lets it through only as the first frame after the handshake.
    Batching {
        max: u32,
    },
}

/// What a worker answered for a task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TaskOutcome {
    /// The handler's output.
    Ok(Bytes),
    /// The handler failed; `retryable` if another attempt may succeed.
    Failed { retryable: bool, message: String },
    /// Protocol 3: a retryable failure (its message) with the worker's delay before the
    /// retry. Boxed: rare, and every frame is moved on the hot path.
    RetryAfter(Box<(String, std::time::Duration)>),
    /// Protocol 3: the handler stopped for a cancel.
    Cancelled,
}

/// From a worker's link reader.
#[derive(Debug)]
pub(crate) enum FromLink {
    /// One frame (the usual case with one task in flight: no batch allocated).
    Frame(WorkerId, WorkerFrame),
    /// Everything decoded from one read.
    Frames(WorkerId, Vec<WorkerFrame>),
    /// The reader stopped reading (`true`) because too much of what the worker streamed is
    /// not delivered yet, or started again (`false`): see `backlog`.
    Held { id: WorkerId, held: bool },
    /// The end of the socket, with the protocol fault that ended it, if any.
    Closed { id: WorkerId, fault: Option<String> },
}

/// From a worker's process watcher: it exited, and the last lines it printed.
#[derive(Debug)]
pub(crate) struct Exited {
    pub id: WorkerId,
    pub exit: Exit,
    pub stdout_tail: Vec<String>,
    pub stderr_tail: Vec<String>,
}
