//! Checks `docs/control-vectors.json` and the worked session of `docs/CONTROL.md` against the
//! codec, through every decoding path the daemon and `herd submit` use, so that neither
//! document can drift from the code.
//!
//! After an intended change of the vectors, regenerate the file with
//! `cargo run -q -p herd-proto --example control_vectors > docs/control-vectors.json`
//! (or run this test with `HERD_BLESS_VECTORS=1`).

#![allow(clippy::unwrap_used)]

#[path = "support/control_vectors.rs"]
mod control_vectors;

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::PathBuf;

use control_vectors::{
    File, JsonMessage, JsonReply, JsonRequest, Message, CLIENT_TO_DAEMON, DAEMON_TO_CLIENT,
};
use herd_proto::codec::{self, FrameError};
use herd_proto::control::{
    RecordsFrame, Reply, Request, RequestRef, CONTROL_VERSION, REPLY_MAX_FRAME, REQUEST_MAX_FRAME,
};
use herd_proto::{HEADER_LEN, MAX_FRAME_CEILING};

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn checked_in() -> File {
    let text = std::fs::read_to_string(repo_path(control_vectors::FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    control_vectors::unhex(s).unwrap()
}

/// The limit a reader applies to a well-formed vector: `Events` frames may exceed the
/// pre-`Submit` cap (the daemon then reads up to `Welcome::max_frame`).
fn limit_for(direction: &str, frame: &[u8]) -> usize {
    if direction == CLIENT_TO_DAEMON && frame.get(HEADER_LEN) == Some(&2) {
        MAX_FRAME_CEILING
    } else {
        control_vectors::limit(direction)
    }
}

/// Decodes one whole frame with the blocking reader; it must leave nothing unread.
fn read_blocking(direction: &str, frame: &[u8], max: usize) -> Result<Message, FrameError> {
    let mut r = Cursor::new(frame);
    let mut scratch = Vec::new();
    let msg = if direction == CLIENT_TO_DAEMON {
        codec::read_frame::<Request, _>(&mut r, &mut scratch, max)?.map(Message::Request)
    } else {
        codec::read_frame::<Reply, _>(&mut r, &mut scratch, max)?.map(Message::Reply)
    };
    assert_eq!(r.position() as usize, frame.len(), "bytes left unread");
    msg.ok_or(FrameError::EofMidFrame)
}

/// Decodes a client's frame the way the daemon does: header check, then the borrowing
/// decoder on the body.
fn read_like_daemon(frame: &[u8], max: usize) -> Result<Request, FrameError> {
    let len = codec::frame_len(frame, max)?.ok_or(FrameError::EofMidFrame)?;
    let body = frame
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(FrameError::EofMidFrame)?;
    assert_eq!(HEADER_LEN + len, frame.len(), "one frame per vector");
    Ok(match codec::decode_body_borrowed::<RequestRef<'_>>(body)? {
        RequestRef::Hello { protocol } => Request::Hello { protocol },
        RequestRef::Submit { ordered } => Request::Submit { ordered },
        RequestRef::Events(lines) => Request::Events(
            lines
                .into_iter()
                .map(|l| l.map(|b| serde_bytes::ByteBuf::from(b.to_vec())))
                .collect(),
        ),
        RequestRef::End => Request::End,
        RequestRef::Status => Request::Status,
        RequestRef::Scale { workers } => Request::Scale { workers },
        RequestRef::Reload => Request::Reload,
        RequestRef::Stop { fast } => Request::Stop { fast },
        RequestRef::SubmitWith {
            ordered,
            priority,
            line_priority,
        } => Request::SubmitWith {
            ordered,
            priority,
            line_priority,
        },
    })
}

/// Every decoding path must agree on `frame`.
fn decode_all(direction: &str, frame: &[u8], max: usize) -> Result<Message, String> {
    let owned = control_vectors::decode_with(direction, frame, max);
    let blocking = read_blocking(direction, frame, max);
    let result = match (&owned, &blocking) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "decoders disagree");
            Ok(a.clone())
        }
        (Err(a), Err(_)) => Err(a.to_string()),
        _ => panic!(
            "decoders disagree on {}: {owned:?} vs {blocking:?}",
            control_vectors::hex(frame)
        ),
    };
    if direction == CLIENT_TO_DAEMON {
        let daemon = read_like_daemon(frame, max);
        match (&result, &daemon) {
            (Ok(Message::Request(a)), Ok(b)) => assert_eq!(a, b, "the daemon's decoder disagrees"),
            (Err(_), Err(_)) => {}
            _ => panic!("the daemon's decoder disagrees: {result:?} vs {daemon:?}"),
        }
    }
    result
}

#[test]
fn the_checked_in_control_file_is_what_the_generator_writes() {
    let want = control_vectors::render(&control_vectors::build());
    let path = repo_path(control_vectors::FILE);
    if std::env::var_os("HERD_BLESS_VECTORS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date; regenerate it with `{}`",
        path.display(),
        control_vectors::GENERATED_BY
    );
    let file = checked_in();
    assert_eq!(file.protocol, CONTROL_VERSION);
    assert_eq!(file.request_max_frame, REQUEST_MAX_FRAME);
    assert_eq!(file.reply_max_frame, REPLY_MAX_FRAME);
}

#[test]
fn every_control_message_encodes_to_its_frame() {
    let file = checked_in();
    for v in &file.vectors {
        let msg = Message::from_json(&v.direction, &v.message)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(msg.direction(), v.direction, "{}", v.name);
        let want = unhex(&v.frame_hex);
        assert_eq!(
            control_vectors::hex(&msg.frame()),
            v.frame_hex,
            "{}",
            v.name
        );
        // The daemon writes records through RecordsFrame, not the codec: same bytes.
        if let Message::Reply(Reply::Records(data)) = &msg {
            let mut f = RecordsFrame::new();
            f.append(|b| b.extend_from_slice(data));
            assert_eq!(
                f.frame(0..data.len()),
                &want[..],
                "{}: RecordsFrame",
                v.name
            );
        }
        let len = u32::from_le_bytes(want[..4].try_into().unwrap()) as usize;
        assert_eq!(len, want.len() - HEADER_LEN, "{}", v.name);
        // Every frame but a large Events batch fits the pre-Submit request cap.
        if v.direction == CLIENT_TO_DAEMON && !matches!(msg, Message::Request(Request::Events(_))) {
            assert!(len <= REQUEST_MAX_FRAME, "{}", v.name);
        }
    }
}

#[test]
fn every_control_frame_decodes_to_its_message() {
    let file = checked_in();
    for v in &file.vectors {
        let frame = unhex(&v.frame_hex);
        let got = decode_all(&v.direction, &frame, limit_for(&v.direction, &frame))
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(got.to_json(), v.message, "{}", v.name);
    }
}

#[test]
fn every_malformed_control_frame_is_rejected() {
    let file = checked_in();
    assert!(!file.malformed.is_empty());
    for m in &file.malformed {
        let frame = unhex(&m.frame_hex);
        let max = control_vectors::limit(&m.direction);
        let owned = control_vectors::decode_with(&m.direction, &frame, max);
        match (m.error.as_str(), &owned) {
            ("malformed", Err(FrameError::Malformed(_))) => {}
            ("oversize", Err(FrameError::Oversize { .. })) => {
                assert_eq!(frame.len(), HEADER_LEN, "{}", m.name);
            }
            _ => panic!("{}: expected {}, got {owned:?}", m.name, m.error),
        }
        assert!(decode_all(&m.direction, &frame, max).is_err(), "{}", m.name);
    }
}

#[test]
fn non_canonical_control_varints_are_accepted_but_never_written() {
    let file = checked_in();
    assert!(!file.non_canonical.is_empty());
    for n in &file.non_canonical {
        let frame = unhex(&n.frame_hex);
        let got = decode_all(&n.direction, &frame, control_vectors::limit(&n.direction))
            .unwrap_or_else(|e| panic!("{}: {e}", n.name));
        assert_eq!(got.to_json(), n.message, "{}", n.name);
        assert!(got.frame().len() < frame.len(), "{}", n.name);
    }
}

/// Records chunks need not end on a line: the two halves of a split stream join into the
/// whole, and each half alone is not a sequence of whole lines.
#[test]
fn split_records_chunks_join_into_whole_lines() {
    let file = checked_in();
    let data = |name: &str| {
        let v = file.vectors.iter().find(|v| v.name == name).unwrap();
        match &v.message {
            JsonMessage::Reply(JsonReply::Records { data_hex }) => unhex(data_hex),
            other => panic!("{name}: {other:?}"),
        }
    };
    let first = data("records_split_first");
    let rest = data("records_split_rest");
    assert!(
        !first.ends_with(b"\n"),
        "the first chunk ends inside a record"
    );
    let joined = [first, rest].concat();
    assert_eq!(joined, data("records_two"));
    assert_eq!(joined, control_vectors::TWO_RECORDS.as_bytes());
    for line in std::str::from_utf8(&joined).unwrap().lines() {
        let _: serde_json::Value = serde_json::from_str(line).unwrap();
    }
}

/// An old client can always read the daemon's refusal: `Hello` is request variant 0 and
/// `Error` reply variant 5 in every version, and the refusal fits any version's reply cap.
#[test]
fn an_old_client_reads_a_clear_error() {
    let file = checked_in();
    let frame = |name: &str| {
        unhex(
            &file
                .vectors
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .frame_hex,
        )
    };
    assert_eq!(frame("hello_protocol_1"), [2, 0, 0, 0, 0, 1]);
    let err = frame("error_old_client");
    assert_eq!(err[HEADER_LEN], 5, "Error's variant index");
    match decode_all(DAEMON_TO_CLIENT, &err, REPLY_MAX_FRAME).unwrap() {
        Message::Reply(Reply::Error(m)) => {
            assert!(m.contains("not supported"), "{m}");
            assert!(m.contains(&CONTROL_VERSION.to_string()), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn control_frames_of_one_direction_stream_back_to_back() {
    let file = checked_in();
    for direction in [CLIENT_TO_DAEMON, DAEMON_TO_CLIENT] {
        let sent: Vec<_> = file
            .vectors
            .iter()
            .filter(|v| v.direction == direction)
            .collect();
        let stream: Vec<u8> = sent.iter().flat_map(|v| unhex(&v.frame_hex)).collect();
        let mut r = Cursor::new(&stream[..]);
        let mut scratch = Vec::new();
        for v in &sent {
            let got = if direction == CLIENT_TO_DAEMON {
                codec::read_frame::<Request, _>(&mut r, &mut scratch, MAX_FRAME_CEILING)
                    .unwrap()
                    .map(Message::Request)
            } else {
                codec::read_frame::<Reply, _>(&mut r, &mut scratch, REPLY_MAX_FRAME)
                    .unwrap()
                    .map(Message::Reply)
            };
            assert_eq!(
                got.map(|m| m.to_json()),
                Some(v.message.clone()),
                "{}",
                v.name
            );
        }
        let end = codec::read_frame::<Reply, _>(&mut r, &mut scratch, REPLY_MAX_FRAME);
        assert!(matches!(end, Ok(None)), "clean end of stream");
    }
}

/// The file covers every variant of both enums, unique names, and the varint widths.
#[test]
fn the_control_vectors_cover_the_protocol() {
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
    let mut u32s = BTreeSet::new();
    let mut u64s = BTreeSet::new();
    let mut lens = BTreeSet::new();
    for v in &file.vectors {
        let shape = match &v.message {
            JsonMessage::Request(r) => match r {
                JsonRequest::Hello { protocol } => {
                    u32s.insert(u64::from(*protocol));
                    "Hello"
                }
                JsonRequest::Submit { ordered } => {
                    if *ordered {
                        "Submit ordered"
                    } else {
                        "Submit unordered"
                    }
                }
                JsonRequest::Events { lines_hex } => {
                    lens.insert(lines_hex.len());
                    for l in lines_hex {
                        match l {
                            Some(h) => lens.insert(h.len() / 2),
                            None => shapes.insert("Events None line"),
                        };
                    }
                    "Events"
                }
                JsonRequest::End => "End",
                JsonRequest::Status => "Status request",
                JsonRequest::Scale { .. } => "Scale",
                JsonRequest::Reload => "Reload",
                JsonRequest::Stop { fast } => {
                    if *fast {
                        "Stop fast"
                    } else {
                        "Stop"
                    }
                }
                JsonRequest::SubmitWith {
                    priority,
                    line_priority,
                    ..
                } => match (*line_priority, *priority) {
                    (true, _) => "SubmitWith line_priority",
                    (false, i8::MIN) => "SubmitWith lowest",
                    (false, i8::MAX) => "SubmitWith highest",
                    (false, p) if p < 0 => "SubmitWith negative",
                    _ => "SubmitWith",
                },
            },
            JsonMessage::Reply(r) => match r {
                JsonReply::Welcome { pid, .. } => {
                    u32s.insert(u64::from(*pid));
                    "Welcome"
                }
                JsonReply::Records { data_hex } => {
                    lens.insert(data_hex.len() / 2);
                    "Records"
                }
                JsonReply::Done { records } => {
                    u64s.insert(*records);
                    "Done"
                }
                JsonReply::Status { .. } => "Status reply",
                JsonReply::Ok { .. } => "Ok",
                JsonReply::Error { message } => {
                    if !message.is_ascii() {
                        shapes.insert("non-ASCII string");
                    }
                    "Error"
                }
            },
        };
        shapes.insert(shape);
    }
    for shape in [
        "Hello",
        "Submit ordered",
        "Submit unordered",
        "Events",
        "Events None line",
        "End",
        "Status request",
        "Scale",
        "Reload",
        "Stop",
        "Stop fast",
        "SubmitWith",
        "SubmitWith negative",
        "SubmitWith lowest",
        "SubmitWith highest",
        "SubmitWith line_priority",
        "Welcome",
        "Records",
        "Done",
        "Status reply",
        "Ok",
        "Error",
        "non-ASCII string",
    ] {
        assert!(shapes.contains(shape), "no vector for {shape}");
    }
    let u32_edges = [0, 250, 251, 255, 256, 65_535, 65_536, u64::from(u32::MAX)];
    for edge in u32_edges {
        assert!(u32s.contains(&edge), "no u32 field of {edge}");
    }
    for edge in u32_edges.into_iter().chain([1 << 32, u64::MAX]) {
        assert!(u64s.contains(&edge), "no Done of {edge}");
    }
    for edge in [0, 250, 251, 255, 256, 65_536] {
        assert!(lens.contains(&edge), "no length of {edge}");
    }
}

/// The worked session in docs/CONTROL.md is annotated hex dumps of vectors: a code block whose
/// first line is `vector: NAME`, then one line per field, the bytes first (pairs of hex digits
/// separated by single spaces), then two or more spaces and the annotation.
#[test]
fn the_worked_session_in_the_control_spec_is_the_vectors() {
    let doc = std::fs::read_to_string(repo_path("docs/CONTROL.md")).unwrap();
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
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("example {name} is not in the vectors file"))
            .1;
        assert_eq!(&hex, want, "worked example {name} in docs/CONTROL.md");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} worked examples found");
}
