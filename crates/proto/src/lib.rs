//! herd's wire protocol, version 2: the messages a supervisor and its workers exchange, and the
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
//!   │ ── Done { id, outcome } ───────────▶   │  exactly one Done per Task
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
/// [`FromWorker::Chunk`]; every version-1 frame is unchanged, so the supervisor accepts
/// workers speaking any version from [`MIN_PROTOCOL_VERSION`] to this one.
pub const PROTOCOL_VERSION: u32 = 2;
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
}

/// What a handler made of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The handler's output bytes.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The handler failed; `retryable` asks the supervisor to try the event again.
    Err { retryable: bool, message: String },
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
}
