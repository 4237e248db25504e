//! The control protocol: `docs/control-vectors.json`, decoded also the way the daemon does,
//! records encoded also the way the daemon writes them; and what only this protocol promises
//! (records split anywhere, a refusal every client version can read).

use std::collections::BTreeSet;
use std::io::Cursor;

use herd_proto::codec::{self, FrameError};
use herd_proto::control::{
    RecordsFrame, Reply, Request, RequestRef, CONTROL_VERSION, REPLY_MAX_FRAME, REQUEST_MAX_FRAME,
};
use herd_proto::{HEADER_LEN, MAX_FRAME_CEILING};

use super::control_vectors::{
    self as cv, JsonMessage, JsonReply, JsonRequest, Message, CLIENT_TO_DAEMON, DAEMON_TO_CLIENT,
};
use super::{assert_covers, decode_all, Entries, Suite, U32_EDGES, U64_EDGES_BEYOND_U32};

pub struct Control;

suite_tests!(Control);

impl Suite for Control {
    type Message = Message;
    type Json = JsonMessage;

    const FILE: &'static str = cv::FILE;
    const GENERATED_BY: &'static str = cv::GENERATED_BY;
    const SPEC: &'static str = "docs/CONTROL.md";
    const MIN_EXAMPLES: usize = 8;
    const DIRECTIONS: [&'static str; 2] = [CLIENT_TO_DAEMON, DAEMON_TO_CLIENT];

    fn generated() -> String {
        cv::render(&cv::build())
    }

    fn checked_in() -> Entries<JsonMessage> {
        let file: cv::File = super::parse_checked_in(cv::FILE);
        assert_eq!(file.protocol, CONTROL_VERSION);
        assert_eq!(file.request_max_frame, REQUEST_MAX_FRAME);
        assert_eq!(file.reply_max_frame, REPLY_MAX_FRAME);
        entries_of!(file)
    }

    fn from_json(direction: &str, json: &JsonMessage) -> Result<Message, String> {
        let msg = Message::from_json(direction, json)?;
        assert_eq!(msg.direction(), direction);
        Ok(msg)
    }

    fn to_json(msg: &Message) -> JsonMessage {
        msg.to_json()
    }

    fn frame(msg: &Message) -> Vec<u8> {
        msg.frame()
    }

    fn check_other_encoders(name: &str, msg: &Message, want: &[u8]) {
        // The daemon writes records through RecordsFrame, not the codec: same bytes.
        if let Message::Reply(Reply::Records(data)) = msg {
            let mut f = RecordsFrame::new();
            f.append(|b| b.extend_from_slice(data));
            assert_eq!(f.frame(0..data.len()), want, "{name}: RecordsFrame");
        }
        // Every frame but a large Events batch fits the pre-Submit request cap.
        if let Message::Request(r) = msg {
            if !matches!(r, Request::Events(_)) {
                assert!(want.len() - HEADER_LEN <= REQUEST_MAX_FRAME, "{name}");
            }
        }
    }

    /// `Events` frames may exceed the pre-`Submit` cap (the daemon then reads up to
    /// `Welcome::max_frame`).
    fn vector_limit(direction: &str, frame: &[u8]) -> usize {
        if direction == CLIENT_TO_DAEMON && frame.get(HEADER_LEN) == Some(&2) {
            MAX_FRAME_CEILING
        } else {
            cv::limit(direction)
        }
    }

    fn limit(direction: &str) -> usize {
        cv::limit(direction)
    }

    fn decode(direction: &str, frame: &[u8], max: usize) -> Result<Message, FrameError> {
        cv::decode_with(direction, frame, max)
    }

    fn read(
        direction: &str,
        r: &mut Cursor<&[u8]>,
        scratch: &mut Vec<u8>,
        max: usize,
    ) -> Result<Option<Message>, FrameError> {
        Ok(if direction == CLIENT_TO_DAEMON {
            codec::read_frame::<Request, _>(r, scratch, max)?.map(Message::Request)
        } else {
            codec::read_frame::<Reply, _>(r, scratch, max)?.map(Message::Reply)
        })
    }

    fn decode_borrowed(
        direction: &str,
        frame: &[u8],
        max: usize,
    ) -> Option<Result<Message, FrameError>> {
        (direction == CLIENT_TO_DAEMON).then(|| read_like_daemon(frame, max).map(Message::Request))
    }
}

/// Decodes a client's frame the way the daemon does: header check, then the borrowing
/// decoder on the body.
fn read_like_daemon(frame: &[u8], max: usize) -> Result<Request, FrameError> {
    let body = super::single_body(frame, max)?;
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
        RequestRef::Rate { submission, rate } => Request::Rate { submission, rate },
        RequestRef::SubmitRated {
            ordered,
            priority,
            line_priority,
            rate,
        } => Request::SubmitRated {
            ordered,
            priority,
            line_priority,
            rate,
        },
        RequestRef::Cancel { seq } => Request::Cancel { seq },
        RequestRef::CancelIn { submission, seq } => Request::CancelIn { submission, seq },
        RequestRef::SubmitNamed {
            ordered,
            priority,
            line_priority,
            rate,
        } => Request::SubmitNamed {
            ordered,
            priority,
            line_priority,
            rate,
        },
        RequestRef::SubmitTimed {
            ordered,
            priority,
            line_priority,
            max_age_ms,
            deadline_ms,
            rate,
        } => Request::SubmitTimed {
            ordered,
            priority,
            line_priority,
            max_age_ms,
            deadline_ms,
            rate,
        },
        RequestRef::Open { options } => Request::Open { options },
    })
}

fn vector(name: &str) -> super::Entry<JsonMessage> {
    Control::checked_in()
        .vectors
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vector {name}"))
}

/// Records chunks need not end on a line: the two halves of a split stream join into the
/// whole, and each half alone is not a sequence of whole lines.
#[test]
fn split_records_chunks_join_into_whole_lines() {
    let data = |name: &str| match vector(name).message {
        Some(JsonMessage::Reply(JsonReply::Records { data_hex })) => cv::unhex(&data_hex).unwrap(),
        other => panic!("{name}: {other:?}"),
    };
    let first = data("records_split_first");
    let rest = data("records_split_rest");
    assert!(
        !first.ends_with(b"\n"),
        "the first chunk ends inside a record"
    );
    let joined = [first, rest].concat();
    assert_eq!(joined, data("records_two"));
    assert_eq!(joined, cv::TWO_RECORDS.as_bytes());
    for line in std::str::from_utf8(&joined).unwrap().lines() {
        let _: serde_json::Value = serde_json::from_str(line).unwrap();
    }
}

/// An old client can always read the daemon's refusal: `Hello` is request variant 0 and
/// `Error` reply variant 5 in every version, and the refusal fits any version's reply cap.
#[test]
fn an_old_client_reads_a_clear_error() {
    assert_eq!(vector("hello_protocol_1").frame, [2, 0, 0, 0, 0, 1]);
    let err = vector("error_old_client").frame;
    assert_eq!(err[HEADER_LEN], 5, "Error's variant index");
    match decode_all::<Control>(DAEMON_TO_CLIENT, &err, REPLY_MAX_FRAME).unwrap() {
        Message::Reply(Reply::Error(m)) => {
            assert!(m.contains("not supported"), "{m}");
            assert!(m.contains(&CONTROL_VERSION.to_string()), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

/// The file covers every variant of both enums and the varint widths.
#[test]
fn the_vectors_cover_the_protocol() {
    let file = Control::checked_in();
    let mut shapes = BTreeSet::new();
    let mut u32s = BTreeSet::new();
    let mut u64s = BTreeSet::new();
    let mut lens = BTreeSet::new();
    for v in &file.vectors {
        let shape = match v.message.as_ref().unwrap() {
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
                JsonRequest::Rate { submission, rate } => match (submission, rate) {
                    (_, None) => "Rate off",
                    (None, Some(_)) => "Rate pool",
                    (Some(_), Some(_)) => "Rate submission",
                },
                JsonRequest::SubmitRated { .. } => "SubmitRated",
                JsonRequest::Cancel { seq } => {
                    u64s.insert(*seq);
                    "Cancel"
                }
                JsonRequest::CancelIn { .. } => "CancelIn",
                JsonRequest::SubmitNamed { .. } => "SubmitNamed",
                JsonRequest::SubmitTimed {
                    max_age_ms,
                    deadline_ms,
                    rate,
                    ..
                } => {
                    u64s.insert(*max_age_ms);
                    u64s.insert(*deadline_ms);
                    if rate.is_empty() {
                        "SubmitTimed"
                    } else {
                        "SubmitTimed rated"
                    }
                }
                JsonRequest::Open { options } if options.is_empty() => "Open empty",
                JsonRequest::Open { options } => {
                    for o in options {
                        if let herd_proto::control::SubmitOption::MaxAgeMs(n)
                        | herd_proto::control::SubmitOption::DeadlineMs(n) = o
                        {
                            u64s.insert(*n);
                        }
                    }
                    "Open"
                }
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
                JsonReply::Submission { .. } => "Submission",
            },
        };
        shapes.insert(shape);
    }
    let shapes_wanted = [
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
        "Rate pool",
        "Rate off",
        "Rate submission",
        "SubmitRated",
        "Cancel",
        "CancelIn",
        "SubmitNamed",
        "SubmitTimed",
        "SubmitTimed rated",
        "Open empty",
        "Open",
        "Welcome",
        "Records",
        "Done",
        "Status reply",
        "Ok",
        "Error",
        "Submission",
        "non-ASCII string",
    ];
    assert_covers(&shapes, shapes_wanted, |shape| {
        format!("no vector for {shape}")
    });
    assert_covers(&u32s, U32_EDGES, |edge| format!("no u32 field of {edge}"));
    let u64_edges = U32_EDGES.into_iter().chain(U64_EDGES_BEYOND_U32);
    assert_covers(&u64s, u64_edges, |edge| format!("no Done of {edge}"));
    let len_edges = [0, 250, 251, 255, 256, 65_536];
    assert_covers(&lens, len_edges, |edge| format!("no length of {edge}"));
}
