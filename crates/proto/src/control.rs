//! The control protocol: what `herd submit`, `herd status` and `herd ctl` say to a running
//! `herd serve` over its control socket. Same frames and codec as the worker protocol.
//!
//! ```text
//! client                                  daemon
//!   │ ── Hello { protocol } ────────────▶   │  version check (or Error, then close)
//!   │ ◀─ Welcome { protocol, pid, .. } ──── │  with the submission's frame and line limits
//!   │ ── Submit { ordered } ────────────▶   │  a submission (or SubmitWith/SubmitTimed):
//!   │ ── Events([line | None, ..]) ─────▶   │    lines (None: too long, rejected client-side)
//!   │ ── End ───────────────────────────▶   │
//!   │ ◀─ Records(json lines) ───────────── │    as they complete, concurrently with Events
//!   │ ◀─ Done { records } ──────────────── │    every record sent
//!   │ ── Cancel { seq } ────────────────▶   │    any time: cancel one of its events
//!   │ ── Status | Scale | Reload | Stop ─▶  │  or one request (also CancelIn),
//!   │ ◀─ Status(json) | Ok(text) | Error ── │  one reply
//! ```
//!
//! Limits, so that no peer can make the daemon hold much for it:
//! - every frame before `Submit` is at most [`REQUEST_MAX_FRAME`] bytes;
//! - an `Events` frame is at most `Welcome::max_frame` bytes: the client splits its batches by
//!   bytes, and a single line longer than `Welcome::max_line` travels as `None`;
//! - a reply frame is at most [`REPLY_MAX_FRAME`] bytes: `Records` carry JSON lines in chunks
//!   that need not end on a line boundary, so a record of any size fits.
//!
//! Both sides read and write a submission independently: the client never stops reading
//! records while it waits to send events, and the daemon never stops writing records while it
//! waits for credits to read events. The client keeps its side open until `Done`; a
//! submission whose client closes its side earlier has vanished, and its events are dropped.
//!
//! The variant order of [`Request`] and [`Reply`] is part of the protocol: new variants go at
//! the end, so that a client of another version can still read the daemon's `Error`.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::codec::HEADER_LEN;

/// Version of the control protocol. 2: `Welcome` carries the frame and line limits, and a
/// `Records` chunk may end inside a record.
pub const CONTROL_VERSION: u32 = 2;

/// Largest frame a client may send before its `Submit` (every request but `Events` is tiny).
pub const REQUEST_MAX_FRAME: usize = 4 * 1024;

/// Largest frame the daemon sends (a `Records` chunk, or the status object).
pub const REPLY_MAX_FRAME: usize = 8 * 1024 * 1024;

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
    /// `Submit` with a priority for its events (higher first, default 0), or with
    /// `line_priority` each line's own (`<priority>\t<event>`, the prefix stripped before
    /// dispatch). Appended to version 2: a daemon that predates it closes the connection.
    SubmitWith {
        ordered: bool,
        priority: i8,
        line_priority: bool,
    },
    /// A new rate limit on attempt starts, as `herd --rate` spells it (`200/s,burst=10`;
    /// `None`: unlimited): the pool's, or that of the open submission `submission` (its id in
    /// `herd status`). Answered `Ok` or `Error`. Appended to version 2.
    Rate {
        submission: Option<u64>,
        rate: Option<String>,
    },
    /// `SubmitWith` plus a rate limit on this submission's attempt starts (`200/s,burst=10`):
    /// other submissions are dispatched past it while it waits. Appended to version 2.
    SubmitRated {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        rate: String,
    },
    /// Inside a submission (before or after its `End`): cancel its event `seq`. No reply of
    /// its own: the event's record answers it (`cancelled`, or the record it already had).
    Cancel {
        seq: u64,
    },
    /// One request: cancel event `seq` of submission `submission` (the id a `SubmitNamed`
    /// submission was told). `Ok(text)` if it will be `cancelled`, `Error(text)` if not (already
    /// answered, or no such submission).
    CancelIn {
        submission: u64,
        seq: u64,
    },
    /// `SubmitRated` with the rate optional, and the daemon's first reply is
    /// `Submission { id }`: the id `CancelIn` names it by.
    SubmitNamed {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        rate: Option<String>,
    },
    /// `SubmitWith` plus this submission's time limits, in milliseconds, 0 for the daemon's
    /// own: `max_age_ms` (an event that waited longer for its first start gets an `expired`
    /// record) and `deadline_ms` (over all its attempts; then a `deadline` record); and its
    /// rate limit as in `SubmitRated` (`""`: none), so that one request carries every option
    /// `herd submit` takes but `--print-id`: it is not named (no `Submission` reply), so
    /// `herd submit` refuses `--print-id` with `--max-age`/`--deadline`. Variant 14, appended
    /// to version 2 after `SubmitNamed`: a daemon that predates it closes the connection.
    SubmitTimed {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        max_age_ms: u64,
        deadline_ms: u64,
        rate: String,
    },
    /// A submission with any set of options, each one [`SubmitOption`] (none given: the
    /// daemon's defaults), so that a new option is a new `SubmitOption` variant, not another
    /// `Submit…` request. With `Named`, the first reply is `Submission { id }`. Variant 15,
    /// appended to version 2: a daemon that predates it closes the connection; one that does
    /// not know an option closes it too (a client uses `Open` only for what the older requests
    /// cannot carry: keys, or a name with time limits).
    Open {
        options: Vec<SubmitOption>,
    },
}

/// One option of an [`Request::Open`] submission (as `herd submit` spells them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitOption {
    /// Records in `seq` order (`--ordered`).
    Ordered,
    /// The dispatch priority of its events (`--priority`).
    Priority(i8),
    /// Each line starts with its priority and a tab (`--line-priority`).
    LinePriority,
    /// A rate limit on its attempt starts (`--rate`, as `200/s,burst=10`).
    Rate(String),
    /// Its `--max-age`, in milliseconds (at least 1).
    MaxAgeMs(u64),
    /// Its `--deadline`, in milliseconds (at least 1).
    DeadlineMs(u64),
    /// The first reply is `Submission { id }` (`--print-id`): the id `CancelIn` names it by.
    Named,
    /// Each line starts with its key and a tab, after any priority (`--line-key`).
    LineKey,
    /// Each event is JSON with its key at this JSON pointer (`--key /user/id`).
    KeyPointer(String),
    /// Its events go to workers that take batches up to `max` at a time (`--batch`), a
    /// partial batch waiting at most `wait_ms` for more while the worker is busy
    /// (`--batch-wait`), and with `by_key` a batch holds one key's events only
    /// (`--batch-by-key`). `max` 0 or 1: no batches for this submission.
    Batch {
        max: u32,
        wait_ms: u64,
        by_key: bool,
    },
}

/// Borrowing twin of [`Request`]: encodes to the same bytes, and decodes `Events` lines as
/// slices of the frame body instead of copying each into its own buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename = "Request")]
pub enum RequestRef<'a> {
    Hello {
        protocol: u32,
    },
    Submit {
        ordered: bool,
    },
    Events(#[serde(borrow)] Vec<Option<&'a serde_bytes::Bytes>>),
    End,
    Status,
    Scale {
        workers: u32,
    },
    Reload,
    Stop {
        fast: bool,
    },
    SubmitWith {
        ordered: bool,
        priority: i8,
        line_priority: bool,
    },
    /// A new rate limit on attempt starts, as `herd --rate` spells it (`200/s,burst=10`;
    /// `None`: unlimited): the pool's, or that of the open submission `submission` (its id in
    /// `herd status`). Answered `Ok` or `Error`. Appended to version 2.
    Rate {
        submission: Option<u64>,
        rate: Option<String>,
    },
    /// `SubmitWith` plus a rate limit on this submission's attempt starts (`200/s,burst=10`):
    /// other submissions are dispatched past it while it waits. Appended to version 2.
    SubmitRated {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        rate: String,
    },
    /// Inside a submission (before or after its `End`): cancel its event `seq`. No reply of
    /// its own: the event's record answers it (`cancelled`, or the record it already had).
    Cancel {
        seq: u64,
    },
    /// One request: cancel event `seq` of submission `submission` (the id a `SubmitNamed`
    /// submission was told). `Ok(text)` if it will be `cancelled`, `Error(text)` if not (already
    /// answered, or no such submission).
    CancelIn {
        submission: u64,
        seq: u64,
    },
    /// `SubmitRated` with the rate optional, and the daemon's first reply is
    /// `Submission { id }`: the id `CancelIn` names it by.
    SubmitNamed {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        rate: Option<String>,
    },
    SubmitTimed {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        max_age_ms: u64,
        deadline_ms: u64,
        rate: String,
    },
    /// A submission with any set of options, each one [`SubmitOption`] (none given: the
    /// daemon's defaults), so that a new option is a new `SubmitOption` variant, not another
    /// `Submit…` request. With `Named`, the first reply is `Submission { id }`. Variant 15,
    /// appended to version 2: a daemon that predates it closes the connection; one that does
    /// not know an option closes it too (a client uses `Open` only for what the older requests
    /// cannot carry: keys, or a name with time limits).
    Open {
        options: Vec<SubmitOption>,
    },
}

/// Bytes an `Events` frame spends on one line besides the line itself, at most (the `Some`
/// tag and the length).
pub const EVENT_LINE_OVERHEAD: usize = 1 + 9;
/// Bytes an `Events` frame spends besides its lines, at most (header, variant, count).
pub const EVENTS_FRAME_OVERHEAD: usize = HEADER_LEN + 1 + 9;

/// From the daemon to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The daemon speaks this client's protocol. `max_frame`: the largest frame it reads in a
    /// submission; `max_line`: the longest event its workers take (longer lines are sent as
    /// `None` and get a `rejected` record).
    Welcome {
        protocol: u32,
        pid: u32,
        max_frame: u32,
        max_line: u32,
    },
    /// Result records, JSON lines exactly as `herd run` writes them; a chunk may end inside
    /// a record, which the next chunk continues.
    Records(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The submission is complete: this many records were sent.
    Done {
        records: u64,
    },
    /// The status object, as JSON.
    Status(String),
    Ok(String),
    Error(String),
    /// The first reply to `SubmitNamed`: the submission's id, for `CancelIn`.
    Submission {
        id: u64,
    },
}

/// Room before a `Records` body for the frame header, the variant and the length.
const RECORDS_PREFIX: usize = HEADER_LEN + 1 + 9;
/// `Reply::Records`' variant index.
const RECORDS_VARIANT: u8 = 1;

/// A `Reply::Records` frame built in place: JSON lines are appended to [`RecordsFrame::body`]
/// after room for the prefix, and [`RecordsFrame::frame`] writes the prefix just before them,
/// so the records are never copied on their way to the socket. Encodes exactly what the
/// codec encodes for `Reply::Records(body)` (pinned by a test).
#[derive(Debug)]
pub struct RecordsFrame {
    buf: Vec<u8>,
}

impl Default for RecordsFrame {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordsFrame {
    pub fn new() -> Self {
        Self {
            buf: vec![0; RECORDS_PREFIX],
        }
    }

    /// Empties the body, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.truncate(RECORDS_PREFIX);
    }

    /// Bytes in the body.
    pub fn len(&self) -> usize {
        self.buf.len() - RECORDS_PREFIX
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends body bytes through `f` (which must only append).
    pub fn append(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.buf);
        // Whatever `f` did, the prefix room stays.
        if self.buf.len() < RECORDS_PREFIX {
            self.buf.resize(RECORDS_PREFIX, 0);
        }
    }

    /// The whole frame for body bytes `range` (relative to the body), to write as it is.
    /// The caller keeps each frame under [`REPLY_MAX_FRAME`] by its choice of ranges.
    ///
    /// Writes the prefix into the bytes just before the range, so frames must be taken in
    /// order, and each one written before the next is taken.
    pub fn frame(&mut self, range: std::ops::Range<usize>) -> &[u8] {
        let start = RECORDS_PREFIX + range.start;
        let end = RECORDS_PREFIX + range.end;
        let len = (range.end - range.start) as u64;
        let mut prefix = [0u8; 1 + 9];
        prefix[0] = RECORDS_VARIANT;
        let n = 1 + varint(len, &mut prefix[1..]);
        let body_len = (n as u64 + len) as u32;
        let at = start - n - HEADER_LEN;
        // The bytes before `start` are either the reserved room or the body of an earlier
        // chunk already written.
        self.buf[at..at + HEADER_LEN].copy_from_slice(&body_len.to_le_bytes());
        self.buf[at + HEADER_LEN..start].copy_from_slice(&prefix[..n]);
        &self.buf[at..end]
    }
}

/// bincode's varint for a u64 (the "standard" configuration): returns the bytes written.
fn varint(v: u64, out: &mut [u8]) -> usize {
    match v {
        0..=250 => {
            out[0] = v as u8;
            1
        }
        251..=0xffff => {
            out[0] = 251;
            out[1..3].copy_from_slice(&(v as u16).to_le_bytes());
            3
        }
        0x1_0000..=0xffff_ffff => {
            out[0] = 252;
            out[1..5].copy_from_slice(&(v as u32).to_le_bytes());
            5
        }
        _ => {
            out[0] = 253;
            out[1..9].copy_from_slice(&v.to_le_bytes());
            9
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::codec::{decode_body, decode_body_borrowed, encode_frame, MAX_FRAME_CEILING};

    fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg, &mut out, MAX_FRAME_CEILING).unwrap();
        out
    }

    #[test]
    fn records_frame_matches_the_codec() {
        for len in [0, 1, 250, 251, 4000, 65535, 65536, 300_000] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut f = RecordsFrame::new();
            f.append(|b| b.extend_from_slice(&body));
            assert_eq!(f.len(), len);
            assert_eq!(
                f.frame(0..len),
                frame(&Reply::Records(body.clone())),
                "len {len}"
            );
            // Chunks of one body, taken in order, are the frames of the chunks.
            if len > 10 {
                let cut = len / 3;
                let first = f.frame(0..cut).to_vec();
                assert_eq!(first, frame(&Reply::Records(body[..cut].to_vec())));
                assert_eq!(
                    f.frame(cut..len),
                    frame(&Reply::Records(body[cut..].to_vec()))
                );
            }
            f.clear();
            assert!(f.is_empty());
        }
    }

    #[test]
    fn borrowed_request_is_the_same_on_the_wire() {
        let owned = Request::Events(vec![
            Some(ByteBuf::from(b"abc".to_vec())),
            None,
            Some(ByteBuf::from(vec![7; 300])),
        ]);
        let bytes = frame(&owned);
        let big = [7u8; 300];
        let borrowed = RequestRef::Events(vec![
            Some(serde_bytes::Bytes::new(b"abc")),
            None,
            Some(serde_bytes::Bytes::new(&big)),
        ]);
        assert_eq!(frame(&borrowed), bytes);
        let back: RequestRef<'_> = decode_body_borrowed(&bytes[HEADER_LEN..]).unwrap();
        assert_eq!(back, borrowed);
        for (o, b) in [
            (
                Request::Hello { protocol: 2 },
                RequestRef::Hello { protocol: 2 },
            ),
            (Request::End, RequestRef::End),
            (
                Request::Stop { fast: true },
                RequestRef::Stop { fast: true },
            ),
            (
                Request::Scale { workers: 9 },
                RequestRef::Scale { workers: 9 },
            ),
            (
                Request::SubmitWith {
                    ordered: true,
                    priority: -3,
                    line_priority: false,
                },
                RequestRef::SubmitWith {
                    ordered: true,
                    priority: -3,
                    line_priority: false,
                },
            ),
        ] {
            assert_eq!(frame(&o), frame(&b));
        }
        // The line overhead bound holds for the longest lengths.
        let long = vec![0u8; 70_000];
        let one = frame(&Request::Events(vec![Some(ByteBuf::from(long.clone()))]));
        assert!(one.len() <= EVENTS_FRAME_OVERHEAD + EVENT_LINE_OVERHEAD + long.len());
    }

    /// A client of another version reads the daemon's refusal: `Error` keeps its index.
    #[test]
    fn error_reply_is_pinned() {
        let bytes = frame(&Reply::Error("no".into()));
        assert_eq!(bytes, [4, 0, 0, 0, 5, 2, b'n', b'o']);
        assert_eq!(
            decode_body::<Reply>(&bytes[HEADER_LEN..]).unwrap(),
            Reply::Error("no".into())
        );
        // Hello{protocol} is variant 0 in every version.
        assert_eq!(frame(&Request::Hello { protocol: 1 }), [2, 0, 0, 0, 0, 1]);
        // SubmitWith came after Stop (7); a priority is one two's-complement byte.
        let with = |priority| Request::SubmitWith {
            ordered: false,
            priority,
            line_priority: true,
        };
        assert_eq!(frame(&with(-1)), [4, 0, 0, 0, 8, 0, 0xff, 1]);
        assert_eq!(frame(&with(127)), [4, 0, 0, 0, 8, 0, 0x7f, 1]);
    }
}
