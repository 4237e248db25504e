//! The worker-protocol test vectors behind `docs/protocol-vectors.json`: which messages and
//! which hand-made frames it lists, their JSON form, and the exact text of the file.
//!
//! Shared by `tests/vectors.rs` (which checks the checked-in file against the codec
//! and against this generator) and `examples/protocol_vectors.rs` (which prints the file). The
//! messages are built as Rust values and encoded by the real codec; only the malformed and
//! non-canonical frames are written by hand, and the test proves what the decoder makes of
//! each.

// Each includer uses a different part of this module.
#![allow(dead_code)]

#[path = "common.rs"]
mod common;
pub use common::{hex, unhex};
use common::{whole, U32_BOUNDARIES, U64_BOUNDARIES};

use herd_proto::codec::{self, FrameError};
use herd_proto::{BatchTask, FromWorker, Outcome, ToWorker, DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// `direction` of a frame a worker sends.
pub const WORKER_TO_HERD: &str = "worker->herd";
/// `direction` of a frame herd sends.
pub const HERD_TO_WORKER: &str = "herd->worker";
/// Path of the file, relative to the workspace root.
pub const FILE: &str = "docs/protocol-vectors.json";
/// How to regenerate the file (written into it).
pub const GENERATED_BY: &str =
    "cargo run -q -p herd-proto --example protocol_vectors > docs/protocol-vectors.json";

/// The whole file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub protocol: u32,
    pub generated_by: String,
    /// The frame limit the `malformed` cases assume (herd's default `HERD_MAX_FRAME`).
    pub max_frame: usize,
    pub vectors: Vec<Vector>,
    pub malformed: Vec<Malformed>,
    pub non_canonical: Vec<NonCanonical>,
}

/// A message and its one correct frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub name: String,
    pub direction: String,
    pub message: JsonMessage,
    pub frame_hex: String,
}

/// A frame every decoder must reject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Malformed {
    pub name: String,
    pub direction: String,
    pub frame_hex: String,
    /// `"malformed"` (the body is not exactly one message) or `"oversize"` (the header alone
    /// announces more than `max_frame` bytes, and is refused before any body byte is read).
    pub error: String,
    pub why: String,
}

/// A frame no encoder produces (a varint not in its shortest form) that herd's decoder still
/// accepts, and the message it decodes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonCanonical {
    pub name: String,
    pub direction: String,
    pub message: JsonMessage,
    pub frame_hex: String,
    pub why: String,
}

/// A message of either direction in serde's externally tagged JSON form, byte vectors as
/// lower-case hex in `..._hex` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum JsonMessage {
    Hello {
        protocol: u32,
        pid: u32,
        token: String,
    },
    Done {
        id: u64,
        outcome: JsonOutcome,
    },
    Heartbeat,
    Task {
        id: u64,
        attempt: u32,
        payload_hex: String,
    },
    Shutdown,
    /// Version 2.
    Chunk {
        id: u64,
        data_hex: String,
    },
    /// Version 3, herd to worker.
    Withdraw {
        id: u64,
    },
    /// Version 3, herd to worker.
    Cancel {
        id: u64,
    },
    /// Version 3, worker to herd.
    Withdrawn {
        id: u64,
    },
    /// Version 3, worker to herd.
    Kept {
        id: u64,
    },
    /// Version 3 (optional), worker to herd.
    Batching {
        max: u32,
    },
    /// Version 3 (optional), herd to worker.
    Batch {
        tasks: Vec<JsonBatchTask>,
    },
}

/// One task of a `Batch` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonBatchTask {
    pub id: u64,
    pub attempt: u32,
    pub payload_hex: String,
}

/// [`Outcome`] in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum JsonOutcome {
    Ok {
        output_hex: String,
    },
    Err {
        retryable: bool,
        message: String,
    },
    /// Version 3.
    RetryAfter {
        message: String,
        delay_ms: u64,
    },
    /// Version 3.
    Cancelled,
}

/// A message of either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    FromWorker(FromWorker),
    ToWorker(ToWorker),
}

impl Message {
    pub fn direction(&self) -> &'static str {
        match self {
            Message::FromWorker(_) => WORKER_TO_HERD,
            Message::ToWorker(_) => HERD_TO_WORKER,
        }
    }

    /// The whole frame, header included, as the codec writes it.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let res = match self {
            Message::FromWorker(m) => codec::encode_frame(m, &mut out, DEFAULT_MAX_FRAME),
            Message::ToWorker(m) => codec::encode_frame(m, &mut out, DEFAULT_MAX_FRAME),
        };
        if let Err(e) = res {
            panic!("cannot encode {self:?}: {e}");
        }
        out
    }

    pub fn to_json(&self) -> JsonMessage {
        match self {
            Message::FromWorker(FromWorker::Hello {
                protocol,
                pid,
                token,
            }) => JsonMessage::Hello {
                protocol: *protocol,
                pid: *pid,
                token: token.clone(),
            },
            Message::FromWorker(FromWorker::Done { id, outcome }) => JsonMessage::Done {
                id: *id,
                outcome: match outcome {
                    Outcome::Ok(out) => JsonOutcome::Ok {
                        output_hex: hex(out),
                    },
                    Outcome::Err { retryable, message } => JsonOutcome::Err {
                        retryable: *retryable,
                        message: message.clone(),
                    },
                    Outcome::RetryAfter { message, delay_ms } => JsonOutcome::RetryAfter {
                        message: message.clone(),
                        delay_ms: *delay_ms,
                    },
                    Outcome::Cancelled => JsonOutcome::Cancelled,
                },
            },
            Message::FromWorker(FromWorker::Withdrawn { id }) => JsonMessage::Withdrawn { id: *id },
            Message::FromWorker(FromWorker::Kept { id }) => JsonMessage::Kept { id: *id },
            Message::ToWorker(ToWorker::Withdraw { id }) => JsonMessage::Withdraw { id: *id },
            Message::ToWorker(ToWorker::Cancel { id }) => JsonMessage::Cancel { id: *id },
            Message::FromWorker(FromWorker::Batching { max }) => {
                JsonMessage::Batching { max: *max }
            }
            Message::ToWorker(ToWorker::Batch { tasks }) => JsonMessage::Batch {
                tasks: tasks
                    .iter()
                    .map(|t| JsonBatchTask {
                        id: t.id,
                        attempt: t.attempt,
                        payload_hex: hex(&t.payload),
                    })
                    .collect(),
            },
            Message::FromWorker(FromWorker::Heartbeat) => JsonMessage::Heartbeat,
            Message::FromWorker(FromWorker::Chunk { id, data }) => JsonMessage::Chunk {
                id: *id,
                data_hex: hex(data),
            },
            Message::ToWorker(ToWorker::Task {
                id,
                attempt,
                payload,
            }) => JsonMessage::Task {
                id: *id,
                attempt: *attempt,
                payload_hex: hex(payload),
            },
            Message::ToWorker(ToWorker::Shutdown) => JsonMessage::Shutdown,
        }
    }

    /// The message `json` describes, provided it belongs to `direction`.
    pub fn from_json(direction: &str, json: &JsonMessage) -> Result<Message, String> {
        let msg = match json.clone() {
            JsonMessage::Hello {
                protocol,
                pid,
                token,
            } => Message::FromWorker(FromWorker::Hello {
                protocol,
                pid,
                token,
            }),
            JsonMessage::Done { id, outcome } => Message::FromWorker(FromWorker::Done {
                id,
                outcome: match outcome {
                    JsonOutcome::Ok { output_hex } => Outcome::Ok(unhex(&output_hex)?),
                    JsonOutcome::Err { retryable, message } => Outcome::Err { retryable, message },
                    JsonOutcome::RetryAfter { message, delay_ms } => {
                        Outcome::RetryAfter { message, delay_ms }
                    }
                    JsonOutcome::Cancelled => Outcome::Cancelled,
                },
            }),
            JsonMessage::Withdrawn { id } => Message::FromWorker(FromWorker::Withdrawn { id }),
            JsonMessage::Kept { id } => Message::FromWorker(FromWorker::Kept { id }),
            JsonMessage::Withdraw { id } => Message::ToWorker(ToWorker::Withdraw { id }),
            JsonMessage::Cancel { id } => Message::ToWorker(ToWorker::Cancel { id }),
            JsonMessage::Batching { max } => Message::FromWorker(FromWorker::Batching { max }),
            JsonMessage::Batch { tasks } => Message::ToWorker(ToWorker::Batch {
                tasks: tasks
                    .into_iter()
                    .map(|t| {
                        Ok(BatchTask {
                            id: t.id,
                            attempt: t.attempt,
                            payload: unhex(&t.payload_hex)?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            }),
            JsonMessage::Heartbeat => Message::FromWorker(FromWorker::Heartbeat),
            JsonMessage::Chunk { id, data_hex } => Message::FromWorker(FromWorker::Chunk {
                id,
                data: unhex(&data_hex)?,
            }),
            JsonMessage::Task {
                id,
                attempt,
                payload_hex,
            } => Message::ToWorker(ToWorker::Task {
                id,
                attempt,
                payload: unhex(&payload_hex)?,
            }),
            JsonMessage::Shutdown => Message::ToWorker(ToWorker::Shutdown),
        };
        if msg.direction() != direction {
            return Err(format!("{json:?} does not travel {direction}"));
        }
        Ok(msg)
    }
}

/// Decodes one whole frame (header included) sent in `direction` with the owned decoder,
/// which must use every byte.
pub fn decode(direction: &str, frame: &[u8]) -> Result<Message, FrameError> {
    if direction == WORKER_TO_HERD {
        whole(frame, codec::decode_frame(frame, DEFAULT_MAX_FRAME)?).map(Message::FromWorker)
    } else {
        whole(frame, codec::decode_frame(frame, DEFAULT_MAX_FRAME)?).map(Message::ToWorker)
    }
}

/// The `hello` vectors stay those of version 1, byte for byte (herd still accepts them);
/// `hello_protocol_2` is what today's SDKs send.
fn hello(pid: u32, token: &str) -> FromWorker {
    FromWorker::Hello {
        protocol: 1,
        pid,
        token: token.into(),
    }
}

fn ok(id: u64, output: &[u8]) -> FromWorker {
    FromWorker::Done {
        id,
        outcome: Outcome::Ok(output.to_vec()),
    }
}

fn err(id: u64, retryable: bool, message: &str) -> FromWorker {
    FromWorker::Done {
        id,
        outcome: Outcome::Err {
            retryable,
            message: message.into(),
        },
    }
}

fn chunk(id: u64, data: &[u8]) -> FromWorker {
    FromWorker::Chunk {
        id,
        data: data.to_vec(),
    }
}

fn task(id: u64, attempt: u32, payload: &[u8]) -> ToWorker {
    ToWorker::Task {
        id,
        attempt,
        payload: payload.to_vec(),
    }
}

/// Every message in the file, by name.
pub fn messages() -> Vec<(String, Message)> {
    let mut v: Vec<(String, Message)> = Vec::new();
    let mut from = |name: String, m: FromWorker| v.push((name, Message::FromWorker(m)));

    from("hello".into(), hello(4242, "ab12"));
    // herd's tokens are 16 random bytes in hex.
    from(
        "hello_real_token".into(),
        hello(31_337, "9f86d081884c7d659a2feaa0c55ad015"),
    );
    from("hello_empty_token".into(), hello(1, ""));
    // A version 2 worker (Chunk, no withdrawals): herd still accepts it.
    from(
        "hello_protocol_2".into(),
        FromWorker::Hello {
            protocol: 2,
            pid: 7,
            token: "ab12".into(),
        },
    );
    // What the SDKs send since version 3 (which added Withdraw, Cancel and their answers).
    from(
        "hello_protocol_3".into(),
        FromWorker::Hello {
            protocol: PROTOCOL_VERSION,
            pid: 7,
            token: "ab12".into(),
        },
    );
    // herd refuses this at the handshake, but it is a well-formed frame.
    from(
        "hello_protocol_4".into(),
        FromWorker::Hello {
            protocol: 4,
            pid: 7,
            token: "ab12".into(),
        },
    );
    for pid in U32_BOUNDARIES {
        let pid = u32::try_from(pid).unwrap_or(u32::MAX);
        from(format!("hello_pid_{pid}"), hello(pid, "ab12"));
    }
    from("done_ok".into(), ok(7, b"49"));
    from("done_ok_empty_output".into(), ok(0, b""));
    from(
        "done_ok_json_output".into(),
        ok(12, br#"{"n":7,"square":49}"#),
    );
    from(
        "done_ok_binary_output".into(),
        ok(3, &[0, 255, 10, 13, 251]),
    );
    for id in U64_BOUNDARIES {
        from(format!("done_ok_id_{id}"), ok(id, b"ok"));
    }
    for len in [250, 251, 255, 256, 65_535] {
        from(
            format!("done_ok_output_{len}_bytes"),
            ok(1, &vec![b'o'; len]),
        );
    }
    from("done_err_retryable".into(), err(7, true, "x"));
    from(
        "done_err_fatal".into(),
        err(8, false, "handler panicked: boom"),
    );
    from("done_err_empty_message".into(), err(9, false, ""));
    from(
        "done_err_non_ascii_message".into(),
        err(10, true, "naïve café: ☃ 🦀 — ошибка"),
    );
    from(
        "done_err_message_300_bytes".into(),
        err(u64::MAX, false, &"e".repeat(300)),
    );
    from("heartbeat".into(), FromWorker::Heartbeat);
    // Version 2: partial results, any number per task before its Done.
    from("chunk".into(), chunk(7, br#"{"row":1}"#));
    from("chunk_empty".into(), chunk(0, b""));
    from("chunk_binary".into(), chunk(3, &[0, 255, 10, 13, 251]));
    from("chunk_id_u64_max".into(), chunk(u64::MAX, b"x"));
    for len in [250, 251, 65_536] {
        from(
            format!("chunk_data_{len}_bytes"),
            chunk(1, &vec![b'c'; len]),
        );
    }
    // Version 3: the answers to Withdraw, and the outcomes a retry delay and a cancel.
    from("withdrawn".into(), FromWorker::Withdrawn { id: 7 });
    from(
        "withdrawn_id_u64_max".into(),
        FromWorker::Withdrawn { id: u64::MAX },
    );
    from("kept".into(), FromWorker::Kept { id: 7 });
    from("kept_id_65536".into(), FromWorker::Kept { id: 65_536 });
    let retry_after = |id: u64, message: &str, delay_ms: u64| FromWorker::Done {
        id,
        outcome: Outcome::RetryAfter {
            message: message.into(),
            delay_ms,
        },
    };
    from("done_retry_after".into(), retry_after(7, "busy", 1500));
    from("done_retry_after_0_ms".into(), retry_after(7, "", 0));
    from(
        "done_retry_after_u64_max_ms".into(),
        retry_after(u64::MAX, "rate limited: ☃", u64::MAX),
    );
    from(
        "done_cancelled".into(),
        FromWorker::Done {
            id: 7,
            outcome: Outcome::Cancelled,
        },
    );
    // Version 3, optional: a worker whose handler takes batches says so after its Hello.
    from("batching".into(), FromWorker::Batching { max: 64 });
    from("batching_max_1".into(), FromWorker::Batching { max: 1 });
    from(
        "batching_max_u32_max".into(),
        FromWorker::Batching { max: u32::MAX },
    );

    let mut to = |name: String, m: ToWorker| v.push((name, Message::ToWorker(m)));
    to("task".into(), task(1, 1, br#"{"op":"square","n":7}"#));
    to("task_pinned".into(), task(1, 2, b"hi"));
    to("task_empty_payload".into(), task(0, 1, b""));
    for id in U64_BOUNDARIES {
        to(format!("task_id_{id}"), task(id, 1, b"x"));
    }
    for attempt in U32_BOUNDARIES {
        let attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
        to(format!("task_attempt_{attempt}"), task(5, attempt, b"x"));
    }
    for len in [250, 251, 255] {
        to(
            format!("task_payload_{len}_bytes"),
            task(2, 1, &vec![b'p'; len]),
        );
    }
    // Every byte value once.
    let all: Vec<u8> = (0..=255).collect();
    to(
        "task_payload_256_bytes_every_value".into(),
        task(2, 1, &all),
    );
    to(
        "task_payload_65536_bytes".into(),
        task(3, 1, &vec![b'p'; 65_536]),
    );
    to("shutdown".into(), ToWorker::Shutdown);
    // Version 3.
    to("withdraw".into(), ToWorker::Withdraw { id: 7 });
    to(
        "withdraw_id_u64_max".into(),
        ToWorker::Withdraw { id: u64::MAX },
    );
    to("cancel".into(), ToWorker::Cancel { id: 7 });
    to("cancel_id_251".into(), ToWorker::Cancel { id: 251 });
    // Version 3, optional: only to a worker that sent Batching.
    let batch_task = |id: u64, attempt: u32, payload: &[u8]| BatchTask {
        id,
        attempt,
        payload: payload.to_vec(),
    };
    to(
        "batch".into(),
        ToWorker::Batch {
            tasks: vec![batch_task(1, 1, b"a"), batch_task(2, 3, b"")],
        },
    );
    to(
        "batch_three_tasks".into(),
        ToWorker::Batch {
            tasks: vec![
                batch_task(300, 1, br#"{"n":1}"#),
                batch_task(301, 1, br#"{"n":2}"#),
                batch_task(u64::MAX, u32::MAX, &vec![b'p'; 251]),
            ],
        },
    );
    to("batch_empty".into(), ToWorker::Batch { tasks: Vec::new() });
    v
}

/// A frame whose header announces exactly `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut f = len.to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// The frames the decoder must reject.
#[rustfmt::skip] // A table: one case per line.
pub fn malformed() -> Vec<Malformed> {
    let m = |name: &str, direction: &str, frame: Vec<u8>, error: &str, why: &str| Malformed {
        name: name.into(),
        direction: direction.into(),
        frame_hex: hex(&frame),
        error: error.into(),
        why: why.into(),
    };
    let bad = |name: &str, direction: &str, body: &[u8], why: &str| {
        m(name, direction, framed(body), "malformed", why)
    };
    let over = u32::try_from(DEFAULT_MAX_FRAME + 1).unwrap_or(u32::MAX);
    vec![
        bad("empty_body", WORKER_TO_HERD, &[], "a body must hold one message; an empty one holds none"),
        bad("empty_body_to_worker", HERD_TO_WORKER, &[], "a body must hold one message; an empty one holds none"),
        bad("unknown_variant_7", WORKER_TO_HERD, &[7], "FromWorker has variants 0 (Hello), 1 (Done), 2 (Heartbeat), 3 (Chunk), 4 (Withdrawn), 5 (Kept) and 6 (Batching) only"),
        bad("unknown_variant_250", WORKER_TO_HERD, &[250], "FromWorker has variants 0 to 6 only"),
        bad("batching_missing_max", WORKER_TO_HERD, &[6], "the body ends where Batching's max should start"),
        bad("withdrawn_missing_id", WORKER_TO_HERD, &[4], "the body ends where Withdrawn's id should start"),
        bad("kept_trailing_byte", WORKER_TO_HERD, &[5, 7, 0], "a body holds exactly one message: bytes after it are refused"),
        bad("chunk_missing_data", WORKER_TO_HERD, &[3, 7], "the body ends where the chunk's data length should start"),
        bad("chunk_length_past_end", WORKER_TO_HERD, &[3, 7, 9, b'a', b'b'], "the data's length says 9 bytes, the body ends after 2"),
        bad("chunk_trailing_byte", WORKER_TO_HERD, &[3, 7, 1, b'a', 0], "a body holds exactly one message: bytes after it are refused"),
        bad("unknown_variant_5_to_worker", HERD_TO_WORKER, &[5], "ToWorker has variants 0 (Task), 1 (Shutdown), 2 (Withdraw), 3 (Cancel) and 4 (Batch) only; 5 is Kept in the other direction"),
        bad("batch_missing_count", HERD_TO_WORKER, &[4], "the body ends where the Batch's task count should start"),
        bad("batch_count_past_end", HERD_TO_WORKER, &[4, 2, 1, 1, 1, b'a'], "the count says 2 tasks, the body ends after 1"),
        bad("batch_task_payload_past_end", HERD_TO_WORKER, &[4, 1, 1, 1, 5, b'a'], "the task's payload length says 5 bytes, the body ends after 1"),
        bad("withdraw_missing_id", HERD_TO_WORKER, &[2], "the body ends where Withdraw's id should start"),
        bad("cancel_id_u128_marker", HERD_TO_WORKER, &[3, 254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "marker 254 (u128) is refused: no field is a u128"),
        bad("variant_index_u64_marker", WORKER_TO_HERD, &[253, 2, 0, 0, 0, 0, 0, 0, 0], "a variant index is a u32 varint: the u64 marker 253 is refused whatever the value"),
        bad("hello_truncated_token", WORKER_TO_HERD, &[0, 1, 146, 4, b'a', b'b'], "the token's length says 4 bytes, the body ends after 2"),
        bad("hello_truncated_varint", WORKER_TO_HERD, &[0, 1, 251, 146], "the pid's marker 251 promises 2 more bytes, the body has 1"),
        bad("hello_token_invalid_utf8", WORKER_TO_HERD, &[0, 1, 1, 1, 0xff], "a string must be valid UTF-8; 0xff never is"),
        bad("hello_token_utf8_surrogate", WORKER_TO_HERD, &[0, 1, 1, 3, 0xed, 0xa0, 0x80], "UTF-8-encoded surrogates (U+D800) are not valid UTF-8"),
        bad("hello_token_overlong_utf8", WORKER_TO_HERD, &[0, 1, 1, 2, 0xc0, 0x80], "overlong UTF-8 (NUL in 2 bytes) is not valid UTF-8"),
        bad("hello_pid_u64_marker", WORKER_TO_HERD, &[0, 1, 253, 1, 0, 0, 0, 0, 0, 0, 0, 0], "pid is a u32: the u64 marker 253 is refused even for a small value"),
        bad("hello_pid_u128_marker", WORKER_TO_HERD, &[0, 1, 254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "marker 254 (u128) is refused: no field is a u128"),
        bad("done_id_reserved_marker_255", WORKER_TO_HERD, &[1, 255, 0, 2, b'o', b'k'], "marker 255 is reserved and always refused"),
        bad("done_unknown_outcome_4", WORKER_TO_HERD, &[1, 7, 4], "Outcome has variants 0 (Ok), 1 (Err), 2 (RetryAfter) and 3 (Cancelled) only"),
        bad("done_retry_after_missing_delay", WORKER_TO_HERD, &[1, 7, 2, 1, b'x'], "the body ends where RetryAfter's delay_ms should start"),
        bad("done_cancelled_trailing_byte", WORKER_TO_HERD, &[1, 7, 3, 0], "Cancelled has no fields: bytes after it are refused"),
        bad("done_ok_length_past_end", WORKER_TO_HERD, &[1, 7, 0, 200, b'4', b'9'], "the output's length says 200 bytes, the body ends after 2"),
        bad("done_ok_length_u64_max", WORKER_TO_HERD, &[1, 7, 0, 253, 255, 255, 255, 255, 255, 255, 255, 255], "a length of 2^64-1: refused without allocating (longer than the body, and above the 64 MiB ceiling)"),
        bad("done_err_bool_2", WORKER_TO_HERD, &[1, 7, 1, 2, 1, b'x'], "a bool is one byte, 0 or 1; 2 is refused"),
        bad("done_err_bool_255", WORKER_TO_HERD, &[1, 7, 1, 255, 1, b'x'], "a bool is one byte, 0 or 1; 255 is refused"),
        bad("done_err_message_invalid_utf8", WORKER_TO_HERD, &[1, 7, 1, 1, 2, 0xc3, 0x28], "a string must be valid UTF-8; 0xc3 must be followed by a continuation byte"),
        bad("done_missing_outcome", WORKER_TO_HERD, &[1, 7], "the body ends where the outcome should start"),
        bad("heartbeat_trailing_byte", WORKER_TO_HERD, &[2, 0], "a body holds exactly one message: bytes after it are refused"),
        bad("done_trailing_byte", WORKER_TO_HERD, &[1, 7, 0, 2, b'4', b'9', 0], "a body holds exactly one message: bytes after it are refused"),
        bad("two_messages_in_one_body", WORKER_TO_HERD, &[2, 2], "two Heartbeats in one body: each message needs a frame of its own"),
        bad("task_attempt_u64_marker", HERD_TO_WORKER, &[0, 1, 253, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'x'], "attempt is a u32: the u64 marker 253 is refused"),
        bad("task_truncated_payload", HERD_TO_WORKER, &[0, 1, 1, 5, b'a', b'b'], "the payload's length says 5 bytes, the body ends after 2"),
        bad("task_truncated_id", HERD_TO_WORKER, &[0, 252, 1, 0], "the id's marker 252 promises 4 more bytes, the body has 2"),
        bad("task_missing_payload", HERD_TO_WORKER, &[0, 1, 1], "the body ends where the payload's length should start"),
        bad("shutdown_trailing_byte", HERD_TO_WORKER, &[1, 1], "a body holds exactly one message: bytes after it are refused"),
        m("oversize_header", WORKER_TO_HERD, over.to_le_bytes().to_vec(), "oversize", "the header announces max_frame + 1 bytes: refused from the 4 header bytes alone, before any body is read"),
        m("oversize_header_max_u32", HERD_TO_WORKER, vec![255, 255, 255, 255], "oversize", "the header announces 4 GiB - 1 bytes: refused from the header alone"),
    ]
}

/// Frames with a varint in a longer form than needed, which herd's decoder accepts.
pub fn non_canonical() -> Vec<NonCanonical> {
    let n = |name: &str, msg: Message, body: &[u8], why: &str| NonCanonical {
        name: name.into(),
        direction: msg.direction().into(),
        message: msg.to_json(),
        frame_hex: hex(&framed(body)),
        why: why.into(),
    };
    vec![
        n(
            "heartbeat_variant_u16_form",
            Message::FromWorker(FromWorker::Heartbeat),
            &[251, 2, 0],
            "variant index 2 written as marker 251 + u16; minimal form is the single byte 02",
        ),
        n(
            "done_id_u16_form",
            Message::FromWorker(ok(5, b"")),
            &[1, 251, 5, 0, 0, 0],
            "id 5 written as marker 251 + u16",
        ),
        n(
            "done_id_u64_form",
            Message::FromWorker(ok(5, b"")),
            &[1, 253, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "id 5 written as marker 253 + u64",
        ),
        n(
            "done_id_300_u32_form",
            Message::FromWorker(ok(300, b"")),
            &[1, 252, 44, 1, 0, 0, 0, 0],
            "id 300 written as marker 252 + u32; minimal form is fb 2c 01",
        ),
        n(
            "task_attempt_u32_form",
            Message::ToWorker(task(1, 1, b"")),
            &[0, 1, 252, 1, 0, 0, 0, 0],
            "attempt 1 written as marker 252 + u32",
        ),
        n(
            "chunk_data_length_u16_form",
            Message::FromWorker(chunk(1, b"hi")),
            &[3, 1, 251, 2, 0, b'h', b'i'],
            "data length 2 written as marker 251 + u16",
        ),
        n(
            "withdraw_id_u32_form",
            Message::ToWorker(ToWorker::Withdraw { id: 7 }),
            &[2, 252, 7, 0, 0, 0],
            "id 7 written as marker 252 + u32",
        ),
        n(
            "task_payload_length_u16_form",
            Message::ToWorker(task(1, 1, b"hi")),
            &[0, 1, 1, 251, 2, 0, b'h', b'i'],
            "payload length 2 written as marker 251 + u16",
        ),
    ]
}

/// The file, built from the generator.
pub fn build() -> File {
    File {
        protocol: PROTOCOL_VERSION,
        generated_by: GENERATED_BY.into(),
        max_frame: DEFAULT_MAX_FRAME,
        vectors: messages()
            .into_iter()
            .map(|(name, msg)| Vector {
                name,
                direction: msg.direction().into(),
                message: msg.to_json(),
                frame_hex: hex(&msg.frame()),
            })
            .collect(),
        malformed: malformed(),
        non_canonical: non_canonical(),
    }
}

/// The exact text of the file: one entry per line, so a diff shows which vector changed.
pub fn render(file: &File) -> String {
    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_else(|e| panic!("cannot write JSON: {e}"))
    }
    fn list<T: Serialize>(out: &mut String, key: &str, items: &[T], last: bool) {
        out.push_str(&format!(" {}: [\n", json(&key)));
        for (i, item) in items.iter().enumerate() {
            let sep = if i + 1 < items.len() { "," } else { "" };
            out.push_str(&format!("  {}{sep}\n", json(item)));
        }
        out.push_str(if last { " ]\n" } else { " ],\n" });
    }
    let mut out = String::new();
    out.push_str(&format!("{{\"protocol\": {},\n", file.protocol));
    out.push_str(&format!(
        " \"generated_by\": {},\n",
        json(&file.generated_by)
    ));
    out.push_str(&format!(" \"max_frame\": {},\n", file.max_frame));
    list(&mut out, "vectors", &file.vectors, false);
    list(&mut out, "malformed", &file.malformed, false);
    list(&mut out, "non_canonical", &file.non_canonical, true);
    out.push_str("}\n");
    out
}
