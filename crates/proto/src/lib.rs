//! herd's wire protocol, version 3: the messages a supervisor and its workers exchange, and the
//! one codec both sides use to put them on a Unix-domain socket.
//!
//! This crate is pure: types and byte-level encoding only, no runtime and no I/O policy. The
//! blocking helpers in [`codec`] serve the worker SDK; the `tokio-codec` feature adds a
//! `tokio_util::codec` adapter over the very same functions for the supervisor.
//!
//! # Conversation
//!
//! ```text
//! worker                                   supervisor
//!   │ ── Hello { protocol, pid, token } ──▶  │  checks version, token, peer uid/pid
//!   │ ◀─ Task { id, attempt, payload } ───── │  up to `window` tasks in flight
//!   │ ── Chunk { id, data } ─────────────▶   │  v2: zero or more per Task, before its Done
//!   │ ── Done { id, outcome } ───────────▶   │  exactly one Done per Task (or a Withdrawn)
//!   │ ◀─ Withdraw { id } ─────────────────── │  v3: give back a task not started yet
//!   │ ── Withdrawn { id } / Kept { id } ─▶   │  v3: given back / started or answered
//!   │ ◀─ Cancel { id } ───────────────────── │  v3: stop it if you can (a Cancelled outcome)
//!   │ ── Batching { max } ───────────────▶   │  v3, optional, right after Hello
//!   │ ◀─ Batch { tasks } ─────────────────── │  v3: 2..=max tasks for one handler call
//!   │ ── Heartbeat ──────────────────────▶   │  optional, any time after Hello
//!   │ ◀─ Shutdown ────────────────────────── │  termination frame: finish, reply, exit 0
//! ```
//!
//! The wire format of a frame is documented (and pinned by tests) in [`codec`].
//! For implementers in other languages, the whole worker protocol is specified in
//! `docs/PROTOCOL.md`, with test vectors in `docs/protocol-vectors.json` that
//! `tests/vectors.rs` checks against this crate.

pub mod codec;
pub mod control;

use serde::{Deserialize, Serialize};

pub use codec::{
    FrameError, DEFAULT_MAX_FRAME, HEADER_LEN, MAX_FRAME_CEILING, TASK_FRAME_OVERHEAD,
};

/// Version of this protocol, sent in [`FromWorker::Hello`] by the SDKs. Version 2 added
/// [`FromWorker::Chunk`]; version 3 added [`ToWorker::Withdraw`], [`ToWorker::Cancel`], their
/// answers [`FromWorker::Withdrawn`] and [`FromWorker::Kept`], and the outcomes
/// [`Outcome::RetryAfter`] and [`Outcome::Cancelled`], and the optional batches
/// ([`FromWorker::Batching`], [`ToWorker::Batch`]). Every frame of an older version is
/// unchanged (new variants only ever come last), so the supervisor accepts workers speaking any
/// version from [`MIN_PROTOCOL_VERSION`] to this one, and sends each only the frames of its own.
pub const PROTOCOL_VERSION: u32 = 3;
/// The first version with withdrawals, cancels and `retry_after` (see [`PROTOCOL_VERSION`]).
pub const WITHDRAW_VERSION: u32 = 3;
/// The oldest version the supervisor still accepts (a version-1 worker never sends a Chunk).
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Environment variable carrying the supervisor's socket path to a worker.
pub const ENV_SOCKET: &str = "HERD_SOCKET";
/// Environment variable carrying the one-time token a worker must present in its `Hello`.
pub const ENV_TOKEN: &str = "HERD_TOKEN";
/// Environment variable carrying the worker's slot index (informational).
pub const ENV_WORKER: &str = "HERD_WORKER";
/// Environment variable carrying the maximum frame size the supervisor accepts.
pub const ENV_MAX_FRAME: &str = "HERD_MAX_FRAME";

/// A frame sent by a worker to its supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// First frame on every connection.
    Hello {
        protocol: u32,
        pid: u32,
        token: String,
    },
    /// The result of the task `id`.
    Done { id: u64, outcome: Outcome },
    /// Liveness signal; carries no work.
    Heartbeat,
    /// Version 2: a partial result of task `id`, sent before its `Done`. Last, so the
    /// variant indexes of version 1 do not move.
    Chunk {
        id: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Version 3, the answer to [`ToWorker::Withdraw`]: the worker had not started task `id`
    /// and has dropped it. It sends nothing more for it; the supervisor owns it again.
    Withdrawn { id: u64 },
    /// Version 3, the other answer to [`ToWorker::Withdraw`]: the worker had already started
    /// task `id`, or answered it; its `Done` follows, or came before.
    Kept { id: u64 },
    /// Version 3, optional: sent right after `Hello` (before any other frame), it says the
    /// worker's handler takes up to `max` tasks in one call, so herd may send it
    /// [`ToWorker::Batch`]. `max` 1 is the same as not sending it; 0 is a violation.
    Batching { max: u32 },
}

/// What a handler made of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The handler's output bytes.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler failed; `retryable` asks the supervisor to try the event again.
    Err { retryable: bool, message: String },
    /// Version 3: a retryable failure that says when to try again, `delay_ms` from now (the
    /// supervisor clamps it to its own backoff limits).
    RetryAfter { message: String, delay_ms: u64 },
    /// Version 3: the handler stopped because the supervisor sent [`ToWorker::Cancel`] for
    /// this task (or the task was cancelled before it started).
    Cancelled,
}

/// A frame sent by the supervisor to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run the handler on `payload`. `attempt` starts at 1.
    Task {
        id: u64,
        attempt: u32,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// The termination frame: finish the task in hand, send its `Done`, then exit 0.
    Shutdown,
    /// Version 3: give task `id` back if it has not started. Answered by exactly one
    /// [`FromWorker::Withdrawn`] or [`FromWorker::Kept`].
    Withdraw { id: u64 },
    /// Version 3: stop task `id` if it can be stopped cleanly; its `Done` (usually
    /// [`Outcome::Cancelled`]) is the answer. One not started yet is answered at once.
    Cancel { id: u64 },
    /// Version 3, only to a worker that sent [`FromWorker::Batching`]: 2 to `max` tasks for
    /// one handler call. Each is answered by its own `Done`, in this order; they all start
    /// together, so a `Withdraw` of any of them once the batch started is answered `Kept`.
    Batch { tasks: Vec<BatchTask> },
}

/// One task of a [`ToWorker::Batch`]: the fields of a [`ToWorker::Task`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTask {
    pub id: u64,
    pub attempt: u32,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Borrowing twin of [`BatchTask`] (see [`ToWorkerRef`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename = "BatchTask")]
pub struct BatchTaskRef<'a> {
    pub id: u64,
    pub attempt: u32,
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// Borrowing twin of [`FromWorker`] for the receiving side: decodes the same bytes, but leaves
/// the output where it lies in the read buffer instead of copying it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename = "FromWorker")]
pub enum FromWorkerRef<'a> {
    /// See [`FromWorker::Hello`].
    Hello {
        protocol: u32,
        pid: u32,
        #[serde(borrow)]
        token: std::borrow::Cow<'a, str>,
    },
    /// See [`FromWorker::Done`].
    Done {
        id: u64,
        #[serde(borrow)]
        outcome: OutcomeRef<'a>,
    },
    /// See [`FromWorker::Heartbeat`].
    Heartbeat,
    /// See [`FromWorker::Chunk`].
    Chunk {
        id: u64,
        #[serde(borrow)]
        data: &'a [u8],
    },
    /// See [`FromWorker::Withdrawn`].
    Withdrawn { id: u64 },
    /// See [`FromWorker::Kept`].
    Kept { id: u64 },
    /// See [`FromWorker::Batching`].
    Batching { max: u32 },
}

/// Borrowing twin of [`Outcome`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename = "Outcome")]
pub enum OutcomeRef<'a> {
    Ok(#[serde(borrow)] &'a [u8]),
    Err {
        retryable: bool,
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
    },
    RetryAfter {
        #[serde(borrow)]
        message: std::borrow::Cow<'a, str>,
        delay_ms: u64,
    },
    Cancelled,
}

/// Borrowing twin of [`ToWorker`] for the sending side: encodes to exactly the same bytes, but
/// lets the supervisor send a payload it keeps (for retries) without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename = "ToWorker")]
pub enum ToWorkerRef<'a> {
    /// See [`ToWorker::Task`].
    Task {
        id: u64,
        attempt: u32,
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
    },
    /// See [`ToWorker::Shutdown`].
    Shutdown,
    /// See [`ToWorker::Withdraw`].
    Withdraw { id: u64 },
    /// See [`ToWorker::Cancel`].
    Cancel { id: u64 },
    /// See [`ToWorker::Batch`].
    Batch { tasks: &'a [BatchTaskRef<'a>] },
}
