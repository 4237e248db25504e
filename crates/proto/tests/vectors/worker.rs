//! The worker protocol: `docs/protocol-vectors.json`, decoded also the way herd's link reader
//! does, and encoded also the way herd's dispatcher does.

use std::collections::BTreeSet;
use std::io::Cursor;

use herd_proto::codec::{self, FrameError};
use herd_proto::{
    BatchTaskRef, FromWorker, FromWorkerRef, Outcome, OutcomeRef, ToWorker, ToWorkerRef,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

use super::vectors::{self, JsonMessage, JsonOutcome, Message};
use super::{assert_covers, Entries, Suite, U32_EDGES, U64_EDGES_BEYOND_U32};

pub struct Worker;

suite_tests!(Worker);

impl Suite for Worker {
    type Message = Message;
    type Json = JsonMessage;

    const FILE: &'static str = vectors::FILE;
    const GENERATED_BY: &'static str = vectors::GENERATED_BY;
    const SPEC: &'static str = "docs/PROTOCOL.md";
    const MIN_EXAMPLES: usize = 5;
    const DIRECTIONS: [&'static str; 2] = [vectors::WORKER_TO_HERD, vectors::HERD_TO_WORKER];

    fn generated() -> String {
        vectors::render(&vectors::build())
    }

    fn checked_in() -> Entries<JsonMessage> {
        let file: vectors::File = super::parse_checked_in(vectors::FILE);
        assert_eq!(file.protocol, PROTOCOL_VERSION);
        assert_eq!(file.max_frame, DEFAULT_MAX_FRAME);
        entries_of!(file)
    }

    fn from_json(direction: &str, json: &JsonMessage) -> Result<Message, String> {
        Message::from_json(direction, json)
    }

    fn to_json(msg: &Message) -> JsonMessage {
        msg.to_json()
    }

    fn frame(msg: &Message) -> Vec<u8> {
        msg.frame()
    }

    fn check_other_encoders(name: &str, msg: &Message, want: &[u8]) {
        if let Message::ToWorker(m) = msg {
            assert_eq!(encode_like_herd(m), want, "{name}: herd's encoder");
        }
    }

    fn vector_limit(_: &str, _: &[u8]) -> usize {
        DEFAULT_MAX_FRAME
    }

    fn limit(_: &str) -> usize {
        DEFAULT_MAX_FRAME
    }

    fn decode(direction: &str, frame: &[u8], max: usize) -> Result<Message, FrameError> {
        assert_eq!(max, DEFAULT_MAX_FRAME);
        vectors::decode(direction, frame)
    }

    fn read(
        direction: &str,
        r: &mut Cursor<&[u8]>,
        scratch: &mut Vec<u8>,
        max: usize,
    ) -> Result<Option<Message>, FrameError> {
        Ok(if direction == vectors::WORKER_TO_HERD {
            codec::read_frame::<FromWorker, _>(r, scratch, max)?.map(Message::FromWorker)
        } else {
            codec::read_frame::<ToWorker, _>(r, scratch, max)?.map(Message::ToWorker)
        })
    }

    fn decode_borrowed(
        direction: &str,
        frame: &[u8],
        max: usize,
    ) -> Option<Result<Message, FrameError>> {
        (direction == vectors::WORKER_TO_HERD)
            .then(|| read_like_herd(frame, max).map(Message::FromWorker))
    }
}

/// Decodes a worker's frame the way herd's link reader does: header check, then the borrowing
/// decoder on the body.
fn read_like_herd(frame: &[u8], max: usize) -> Result<FromWorker, FrameError> {
    let body = super::single_body(frame, max)?;
    Ok(
        match codec::decode_body_borrowed::<FromWorkerRef<'_>>(body)? {
            FromWorkerRef::Hello {
                protocol,
                pid,
                token,
            } => FromWorker::Hello {
                protocol,
                pid,
                token: token.into_owned(),
            },
            FromWorkerRef::Done { id, outcome } => FromWorker::Done {
                id,
                outcome: match outcome {
                    OutcomeRef::Ok(out) => Outcome::Ok(out.to_vec()),
                    OutcomeRef::Err { retryable, message } => Outcome::Err {
                        retryable,
                        message: message.into_owned(),
                    },
                    OutcomeRef::RetryAfter { message, delay_ms } => Outcome::RetryAfter {
                        message: message.into_owned(),
                        delay_ms,
                    },
                    OutcomeRef::Cancelled => Outcome::Cancelled,
                },
            },
            FromWorkerRef::Withdrawn { id } => FromWorker::Withdrawn { id },
            FromWorkerRef::Kept { id } => FromWorker::Kept { id },
            FromWorkerRef::Batching { max } => FromWorker::Batching { max },
            FromWorkerRef::Heartbeat => FromWorker::Heartbeat,
            FromWorkerRef::Chunk { id, data } => FromWorker::Chunk {
                id,
                data: data.to_vec(),
            },
        },
    )
}

/// The frame herd's dispatcher writes for a task (the borrowing twin of `ToWorker`).
fn encode_like_herd(msg: &ToWorker) -> Vec<u8> {
    let borrowed = match msg {
        ToWorker::Task {
            id,
            attempt,
            payload,
        } => ToWorkerRef::Task {
            id: *id,
            attempt: *attempt,
            payload,
        },
        ToWorker::Shutdown => ToWorkerRef::Shutdown,
        ToWorker::Withdraw { id } => ToWorkerRef::Withdraw { id: *id },
        ToWorker::Cancel { id } => ToWorkerRef::Cancel { id: *id },
        ToWorker::Batch { tasks } => {
            let tasks: Vec<BatchTaskRef<'_>> = tasks
                .iter()
                .map(|t| BatchTaskRef {
                    id: t.id,
                    attempt: t.attempt,
                    payload: &t.payload,
                })
                .collect();
            let mut out = Vec::new();
            codec::encode_frame(
                &ToWorkerRef::Batch { tasks: &tasks },
                &mut out,
                DEFAULT_MAX_FRAME,
            )
            .unwrap();
            return out;
        }
    };
    let mut out = Vec::new();
    codec::encode_frame(&borrowed, &mut out, DEFAULT_MAX_FRAME).unwrap();
    out
}

/// The file covers what the spec promises: every message shape, and every varint width for
/// the integer fields and lengths.
#[test]
fn the_vectors_cover_the_protocol() {
    let file = Worker::checked_in();
    let mut shapes = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut u32s = BTreeSet::new();
    let mut lens = BTreeSet::new();
    for v in &file.vectors {
        match v.message.as_ref().unwrap() {
            JsonMessage::Hello { pid, token, .. } => {
                shapes.insert("Hello");
                u32s.insert(u64::from(*pid));
                lens.insert(token.len());
                if !token.is_ascii() {
                    shapes.insert("non-ASCII string");
                }
            }
            JsonMessage::Done { id, outcome } => {
                ids.insert(*id);
                match outcome {
                    JsonOutcome::Ok { output_hex } => {
                        shapes.insert("Done Ok");
                        lens.insert(output_hex.len() / 2);
                    }
                    JsonOutcome::Err { retryable, message } => {
                        shapes.insert(if *retryable {
                            "Done Err retryable"
                        } else {
                            "Done Err fatal"
                        });
                        lens.insert(message.len());
                        if !message.is_ascii() {
                            shapes.insert("non-ASCII string");
                        }
                    }
                    JsonOutcome::RetryAfter { message, delay_ms } => {
                        shapes.insert("Done RetryAfter");
                        lens.insert(message.len());
                        ids.insert(*delay_ms);
                    }
                    JsonOutcome::Cancelled => {
                        shapes.insert("Done Cancelled");
                    }
                }
            }
            JsonMessage::Withdraw { id } => {
                shapes.insert("Withdraw");
                ids.insert(*id);
            }
            JsonMessage::Cancel { id } => {
                shapes.insert("Cancel");
                ids.insert(*id);
            }
            JsonMessage::Withdrawn { id } => {
                shapes.insert("Withdrawn");
                ids.insert(*id);
            }
            JsonMessage::Kept { id } => {
                shapes.insert("Kept");
                ids.insert(*id);
            }
            JsonMessage::Batching { max } => {
                shapes.insert("Batching");
                u32s.insert(u64::from(*max));
            }
            JsonMessage::Batch { tasks } => {
                shapes.insert("Batch");
                lens.insert(tasks.len());
                for t in tasks {
                    ids.insert(t.id);
                    u32s.insert(u64::from(t.attempt));
                    lens.insert(t.payload_hex.len() / 2);
                }
            }
            JsonMessage::Heartbeat => {
                shapes.insert("Heartbeat");
            }
            JsonMessage::Task {
                id,
                attempt,
                payload_hex,
            } => {
                shapes.insert("Task");
                ids.insert(*id);
                u32s.insert(u64::from(*attempt));
                lens.insert(payload_hex.len() / 2);
            }
            JsonMessage::Shutdown => {
                shapes.insert("Shutdown");
            }
            JsonMessage::Chunk { id, data_hex } => {
                shapes.insert("Chunk");
                ids.insert(*id);
                lens.insert(data_hex.len() / 2);
            }
        }
    }
    let shapes_wanted = [
        "Hello",
        "Done Ok",
        "Done Err retryable",
        "Done Err fatal",
        "Heartbeat",
        "Task",
        "Shutdown",
        "Chunk",
        "Withdraw",
        "Cancel",
        "Withdrawn",
        "Kept",
        "Done RetryAfter",
        "Done Cancelled",
        "Batching",
        "Batch",
        "non-ASCII string",
    ];
    assert_covers(&shapes, shapes_wanted, |shape| {
        format!("no vector for {shape}")
    });
    assert_covers(&u32s, U32_EDGES, |edge| format!("no u32 field of {edge}"));
    let id_edges = U32_EDGES.into_iter().chain(U64_EDGES_BEYOND_U32);
    assert_covers(&ids, id_edges, |edge| format!("no id of {edge}"));
    // Lengths are bounded by the frame limit, so the u64 form never occurs; the u32 one does.
    let len_edges = [0, 250, 251, 255, 256, 65_535, 65_536];
    assert_covers(&lens, len_edges, |edge| {
        format!("no string or byte vector of {edge} bytes")
    });
}
