//! Checks `docs/protocol-vectors.json` and the worked examples of `docs/PROTOCOL.md` against
//! the codec, through every decoding path herd and the Rust SDK use, so that neither document
//! can drift from the code.
//!
//! After an intended change of the vectors, regenerate the file with
//! `cargo run -q -p herd-proto --example protocol_vectors > docs/protocol-vectors.json`
//! (or run this test with `HERD_BLESS_VECTORS=1`).

#![allow(clippy::unwrap_used)]

#[path = "support/vectors.rs"]
mod vectors;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::PathBuf;

use herd_proto::codec::{self, FrameError};
use herd_proto::{
    FromWorker, FromWorkerRef, Outcome, OutcomeRef, ToWorker, ToWorkerRef, DEFAULT_MAX_FRAME,
    HEADER_LEN, PROTOCOL_VERSION,
};
use vectors::{File, JsonMessage, JsonOutcome, Message};

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn checked_in() -> File {
    let text = std::fs::read_to_string(repo_path(vectors::FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    vectors::unhex(s).unwrap()
}

/// Decodes one whole frame with the blocking reader the Rust worker SDK uses; it must leave
/// nothing unread.
fn read_blocking(direction: &str, frame: &[u8]) -> Result<Message, FrameError> {
    let mut r = Cursor::new(frame);
    let mut scratch = Vec::new();
    let msg = if direction == vectors::WORKER_TO_HERD {
        codec::read_frame::<FromWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME)?
            .map(Message::FromWorker)
    } else {
        codec::read_frame::<ToWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME)?
            .map(Message::ToWorker)
    };
    assert_eq!(r.position() as usize, frame.len(), "bytes left unread");
    msg.ok_or(FrameError::EofMidFrame)
}

/// Decodes a worker's frame the way herd's link reader does: header check, then the borrowing
/// decoder on the body.
fn read_like_herd(frame: &[u8]) -> Result<FromWorker, FrameError> {
    let len = codec::frame_len(frame, DEFAULT_MAX_FRAME)?.ok_or(FrameError::EofMidFrame)?;
    let body = frame
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(FrameError::EofMidFrame)?;
    assert_eq!(HEADER_LEN + len, frame.len(), "one frame per vector");
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
                },
            },
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
    };
    let mut out = Vec::new();
    codec::encode_frame(&borrowed, &mut out, DEFAULT_MAX_FRAME).unwrap();
    out
}

/// Every decoding path must agree on `frame`.
fn decode_all(direction: &str, frame: &[u8]) -> Result<Message, String> {
    let owned = vectors::decode(direction, frame);
    let blocking = read_blocking(direction, frame);
    let results = match (&owned, &blocking) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "decoders disagree");
            Ok(a.clone())
        }
        (Err(a), Err(_)) => Err(a.to_string()),
        _ => panic!(
            "decoders disagree on {}: {owned:?} vs {blocking:?}",
            vectors::hex(frame)
        ),
    };
    if direction == vectors::WORKER_TO_HERD {
        let herd = read_like_herd(frame);
        match (&results, &herd) {
            (Ok(Message::FromWorker(a)), Ok(b)) => assert_eq!(a, b, "herd's decoder disagrees"),
            (Err(_), Err(_)) => {}
            _ => panic!("herd's decoder disagrees: {results:?} vs {herd:?}"),
        }
    }
    results
}

#[test]
fn the_checked_in_file_is_what_the_generator_writes() {
    let want = vectors::render(&vectors::build());
    let path = repo_path(vectors::FILE);
    if std::env::var_os("HERD_BLESS_VECTORS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date; regenerate it with `{}`",
        path.display(),
        vectors::GENERATED_BY
    );
    // And it is plain JSON of the promised shape.
    let file = checked_in();
    assert_eq!(file.protocol, PROTOCOL_VERSION);
    assert_eq!(file.max_frame, DEFAULT_MAX_FRAME);
}

#[test]
fn every_message_encodes_to_its_frame() {
    let file = checked_in();
    for v in &file.vectors {
        let msg = Message::from_json(&v.direction, &v.message)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let want = unhex(&v.frame_hex);
        assert_eq!(vectors::hex(&msg.frame()), v.frame_hex, "{}", v.name);
        if let Message::ToWorker(m) = &msg {
            assert_eq!(encode_like_herd(m), want, "{}: herd's encoder", v.name);
        }
        // The header is the body's length.
        let len = u32::from_le_bytes(want[..4].try_into().unwrap()) as usize;
        assert_eq!(len, want.len() - HEADER_LEN, "{}", v.name);
    }
}

#[test]
fn every_frame_decodes_to_its_message() {
    let file = checked_in();
    for v in &file.vectors {
        let got = decode_all(&v.direction, &unhex(&v.frame_hex))
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(got.to_json(), v.message, "{}", v.name);
    }
}

#[test]
fn every_malformed_frame_is_rejected() {
    let file = checked_in();
    assert!(!file.malformed.is_empty());
    for m in &file.malformed {
        let frame = unhex(&m.frame_hex);
        let owned = vectors::decode(&m.direction, &frame);
        match (m.error.as_str(), &owned) {
            ("malformed", Err(FrameError::Malformed(_))) => {}
            ("oversize", Err(FrameError::Oversize { .. })) => {
                // Refused from the header alone: nothing follows it.
                assert_eq!(frame.len(), HEADER_LEN, "{}", m.name);
            }
            _ => panic!("{}: expected {}, got {owned:?}", m.name, m.error),
        }
        assert!(decode_all(&m.direction, &frame).is_err(), "{}", m.name);
    }
}

#[test]
fn non_canonical_varints_are_accepted_but_never_written() {
    let file = checked_in();
    assert!(!file.non_canonical.is_empty());
    for n in &file.non_canonical {
        let frame = unhex(&n.frame_hex);
        let got = decode_all(&n.direction, &frame).unwrap_or_else(|e| panic!("{}: {e}", n.name));
        assert_eq!(got.to_json(), n.message, "{}", n.name);
        // The encoder writes the minimal form, which is shorter.
        assert!(got.frame().len() < frame.len(), "{}", n.name);
    }
}

#[test]
fn frames_of_one_direction_stream_back_to_back() {
    // As on the socket: every frame of one direction in one buffer, read in order.
    let file = checked_in();
    for direction in [vectors::WORKER_TO_HERD, vectors::HERD_TO_WORKER] {
        let sent: Vec<_> = file
            .vectors
            .iter()
            .filter(|v| v.direction == direction)
            .collect();
        let stream: Vec<u8> = sent.iter().flat_map(|v| unhex(&v.frame_hex)).collect();
        let mut r = Cursor::new(&stream[..]);
        let mut scratch = Vec::new();
        for v in &sent {
            let got = if direction == vectors::WORKER_TO_HERD {
                codec::read_frame::<FromWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME)
                    .unwrap()
                    .map(Message::FromWorker)
            } else {
                codec::read_frame::<ToWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME)
                    .unwrap()
                    .map(Message::ToWorker)
            };
            assert_eq!(
                got.map(|m| m.to_json()),
                Some(v.message.clone()),
                "{}",
                v.name
            );
        }
        let end = codec::read_frame::<ToWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME);
        assert!(matches!(end, Ok(None)), "clean end of stream");
    }
}

/// The file covers what the spec promises: every message shape, every varint width for the
/// integer fields and lengths, and names that identify each entry.
#[test]
fn the_vectors_cover_the_protocol() {
    let file = checked_in();
    let mut names = BTreeSet::new();
    let all_names = file
        .vectors
        .iter()
        .map(|v| &v.name)
        .chain(file.malformed.iter().map(|m| &m.name))
        .chain(file.non_canonical.iter().map(|n| &n.name));
    for name in all_names {
        assert!(names.insert(name.clone()), "duplicate name {name}");
    }

    let mut shapes = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut u32s = BTreeSet::new();
    let mut lens = BTreeSet::new();
    for v in &file.vectors {
        match &v.message {
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
    for shape in [
        "Hello",
        "Done Ok",
        "Done Err retryable",
        "Done Err fatal",
        "Heartbeat",
        "Task",
        "Shutdown",
        "Chunk",
        "non-ASCII string",
    ] {
        assert!(shapes.contains(shape), "no vector for {shape}");
    }
    let u32_edges = [0, 250, 251, 255, 256, 65_535, 65_536, u64::from(u32::MAX)];
    for edge in u32_edges {
        assert!(u32s.contains(&edge), "no u32 field of {edge}");
    }
    for edge in u32_edges.into_iter().chain([1 << 32, u64::MAX]) {
        assert!(ids.contains(&edge), "no id of {edge}");
    }
    // Lengths are bounded by the frame limit, so the u64 form never occurs; the u32 one does.
    for edge in [0, 250, 251, 255, 256, 65_535, 65_536] {
        assert!(
            lens.contains(&edge),
            "no string or byte vector of {edge} bytes"
        );
    }
}

/// The worked examples in docs/PROTOCOL.md are annotated hex dumps of vectors: a code block
/// whose first line is `vector: NAME`, then one line per field, the bytes first (pairs of hex
/// digits separated by single spaces), then two or more spaces and the annotation.
#[test]
fn the_worked_examples_in_the_spec_are_the_vectors() {
    let doc = std::fs::read_to_string(repo_path("docs/PROTOCOL.md")).unwrap();
    let file = checked_in();
    let mut checked = 0;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix("vector: ") else {
            continue;
        };
        let name = name.split_whitespace().next().unwrap();
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            let bytes = l.split("  ").next().unwrap_or("");
            for b in bytes.split_whitespace() {
                assert!(
                    b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()),
                    "example {name}: {b:?} in {l:?} is not a hex byte"
                );
                hex.push_str(b);
            }
        }
        let want = file
            .vectors
            .iter()
            .map(|v| (&v.name, &v.frame_hex))
            .chain(file.malformed.iter().map(|m| (&m.name, &m.frame_hex)))
            .chain(file.non_canonical.iter().map(|n| (&n.name, &n.frame_hex)))
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("example {name} is not in the vectors file"))
            .1;
        assert_eq!(&hex, want, "worked example {name} in docs/PROTOCOL.md");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} worked examples found");
}
