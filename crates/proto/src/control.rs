//! The control protocol: what `herd submit`, `herd status` and `herd ctl` say to a running
//! `herd serve` over its control socket. Same frames and codec as the worker protocol.
//!
//! ```text
//! client                                  daemon
//!   │ ── Hello { protocol } ────────────▶   │  version check
//!   │ ◀─ Welcome { protocol, pid } ──────── │
//!   │ ── Submit { ordered } ────────────▶   │  a submission:
//!   │ ── Events([line | None, ..]) ─────▶   │    lines (None: too long, rejected client-side)
//!   │ ── End ───────────────────────────▶   │
//!   │ ◀─ Records(json lines) ───────────── │    as they complete
//!   │ ◀─ Done { records } ──────────────── │    every record sent
//!   │ ── Status | Scale | Reload | Stop ─▶  │  or one request,
//!   │ ◀─ Status(json) | Ok(text) | Error ── │  one reply
//! ```

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Version of the control protocol.
pub const CONTROL_VERSION: u32 = 1;

/// From a client to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Hello {
        protocol: u32,
    },
    Submit {
        ordered: bool,
    },
    /// Event lines; `None` stands for a line the client refused as too long.
    Events(Vec<Option<ByteBuf>>),
    End,
    Status,
    Scale {
        workers: u32,
    },
    Reload,
    Stop {
        fast: bool,
    },
}

/// From the daemon to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Welcome {
        protocol: u32,
        pid: u32,
    },
    /// Result records, JSON lines exactly as `herd run` writes them.
    Records(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The submission is complete: this many records were sent.
    Done {
        records: u64,
    },
    /// The status object, as JSON.
    Status(String),
    Ok(String),
    Error(String),
}
