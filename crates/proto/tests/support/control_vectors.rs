//! The control-protocol test vectors behind `docs/control-vectors.json`: which `Request` and
//! `Reply` messages and which hand-made frames it lists, their JSON form, and the exact text
//! of the file.
//!
//! Shared by `tests/vectors.rs` (which checks the checked-in file against the codec
//! and against this generator) and `examples/control_vectors.rs` (which prints the file). The
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
use herd_proto::control::{
    Reply, Request, SubmitOption, CONTROL_VERSION, REPLY_MAX_FRAME, REQUEST_MAX_FRAME,
};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// `direction` of a frame a client sends.
pub const CLIENT_TO_DAEMON: &str = "client->daemon";
/// `direction` of a frame the daemon sends.
pub const DAEMON_TO_CLIENT: &str = "daemon->client";
/// Path of the file, relative to the workspace root.
pub const FILE: &str = "docs/control-vectors.json";
/// How to regenerate the file (written into it).
pub const GENERATED_BY: &str =
    "cargo run -q -p herd-proto --example control_vectors > docs/control-vectors.json";

/// The whole file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub protocol: u32,
    pub generated_by: String,
    /// Largest frame a client may send before its `Submit` (the `malformed` cases of its
    /// direction assume it).
    pub request_max_frame: usize,
    /// Largest frame the daemon sends (the `malformed` cases of its direction assume it).
    pub reply_max_frame: usize,
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
    /// announces more than the direction's limit, and is refused before any body byte).
    pub error: String,
    pub why: String,
}

/// A frame no encoder produces (a varint not in its shortest form) that the decoder still
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

/// A message of either direction in serde's externally tagged JSON form (unit variants as
/// plain strings), byte vectors as lower-case hex in `..._hex` fields. The direction tells
/// which enum a name belongs to (`Status` is in both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonMessage {
    Request(JsonRequest),
    Reply(JsonReply),
}

/// [`Request`] in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum JsonRequest {
    Hello {
        protocol: u32,
    },
    Submit {
        ordered: bool,
    },
    /// One entry per line: its bytes in hex, or `null` for a line refused as too long.
    Events {
        lines_hex: Vec<Option<String>>,
    },
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
    Rate {
        submission: Option<u64>,
        rate: Option<String>,
    },
    SubmitRated {
        ordered: bool,
        priority: i8,
        line_priority: bool,
        rate: String,
    },
    Cancel {
        seq: u64,
    },
    CancelIn {
        submission: u64,
        seq: u64,
    },
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
    Open {
        options: Vec<SubmitOption>,
    },
}

/// [`Reply`] in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum JsonReply {
    Welcome {
        protocol: u32,
        pid: u32,
        max_frame: u32,
        max_line: u32,
    },
    /// A chunk of the JSON-lines stream, which may end inside a record.
    Records {
        data_hex: String,
    },
    Done {
        records: u64,
    },
    Status {
        json: String,
    },
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
    Submission {
        id: u64,
    },
}

/// A message of either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Reply(Reply),
}

impl Message {
    pub fn direction(&self) -> &'static str {
        match self {
            Message::Request(_) => CLIENT_TO_DAEMON,
            Message::Reply(_) => DAEMON_TO_CLIENT,
        }
    }

    /// The whole frame, header included, as the codec writes it.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let res = match self {
            Message::Request(m) => codec::encode_frame(m, &mut out, herd_proto::MAX_FRAME_CEILING),
            Message::Reply(m) => codec::encode_frame(m, &mut out, REPLY_MAX_FRAME),
        };
        if let Err(e) = res {
            panic!("cannot encode {self:?}: {e}");
        }
        out
    }

    pub fn to_json(&self) -> JsonMessage {
        match self {
            Message::Request(r) => JsonMessage::Request(match r {
                Request::Hello { protocol } => JsonRequest::Hello {
                    protocol: *protocol,
                },
                Request::Submit { ordered } => JsonRequest::Submit { ordered: *ordered },
                Request::Events(lines) => JsonRequest::Events {
                    lines_hex: lines.iter().map(|l| l.as_ref().map(|b| hex(b))).collect(),
                },
                Request::End => JsonRequest::End,
                Request::Status => JsonRequest::Status,
                Request::Scale { workers } => JsonRequest::Scale { workers: *workers },
                Request::Reload => JsonRequest::Reload,
                Request::Stop { fast } => JsonRequest::Stop { fast: *fast },
                Request::SubmitWith {
                    ordered,
                    priority,
                    line_priority,
                } => JsonRequest::SubmitWith {
                    ordered: *ordered,
                    priority: *priority,
                    line_priority: *line_priority,
                },
                Request::Rate { submission, rate } => JsonRequest::Rate {
                    submission: *submission,
                    rate: rate.clone(),
                },
                Request::SubmitRated {
                    ordered,
                    priority,
                    line_priority,
                    rate,
                } => JsonRequest::SubmitRated {
                    ordered: *ordered,
                    priority: *priority,
                    line_priority: *line_priority,
                    rate: rate.clone(),
                },
                Request::Cancel { seq } => JsonRequest::Cancel { seq: *seq },
                Request::CancelIn { submission, seq } => JsonRequest::CancelIn {
                    submission: *submission,
                    seq: *seq,
                },
                Request::SubmitNamed {
                    ordered,
                    priority,
                    line_priority,
                    rate,
                } => JsonRequest::SubmitNamed {
                    ordered: *ordered,
                    priority: *priority,
                    line_priority: *line_priority,
                    rate: rate.clone(),
                },
                Request::SubmitTimed {
                    ordered,
                    priority,
                    line_priority,
                    max_age_ms,
                    deadline_ms,
                    rate,
                } => JsonRequest::SubmitTimed {
                    ordered: *ordered,
                    priority: *priority,
                    line_priority: *line_priority,
                    max_age_ms: *max_age_ms,
                    deadline_ms: *deadline_ms,
                    rate: rate.clone(),
                },
                Request::Open { options } => JsonRequest::Open {
                    options: options.clone(),
                },
            }),
            Message::Reply(r) => JsonMessage::Reply(match r {
                Reply::Welcome {
                    protocol,
                    pid,
                    max_frame,
                    max_line,
                } => JsonReply::Welcome {
                    protocol: *protocol,
                    pid: *pid,
                    max_frame: *max_frame,
                    max_line: *max_line,
                },
                Reply::Records(data) => JsonReply::Records {
                    data_hex: hex(data),
                },
                Reply::Done { records } => JsonReply::Done { records: *records },
                Reply::Status(json) => JsonReply::Status { json: json.clone() },
                Reply::Ok(m) => JsonReply::Ok { message: m.clone() },
                Reply::Error(m) => JsonReply::Error { message: m.clone() },
                Reply::Submission { id } => JsonReply::Submission { id: *id },
            }),
        }
    }

    /// The message `json` describes, read as a message of `direction`.
    pub fn from_json(direction: &str, json: &JsonMessage) -> Result<Message, String> {
        // `Status` parses as a request first; the direction decides.
        let value = serde_json::to_value(json).map_err(|e| e.to_string())?;
        if direction == CLIENT_TO_DAEMON {
            let r: JsonRequest = serde_json::from_value(value).map_err(|e| e.to_string())?;
            Ok(Message::Request(match r {
                JsonRequest::Hello { protocol } => Request::Hello { protocol },
                JsonRequest::Submit { ordered } => Request::Submit { ordered },
                JsonRequest::Events { lines_hex } => Request::Events(
                    lines_hex
                        .iter()
                        .map(|l| {
                            l.as_deref()
                                .map(unhex)
                                .transpose()
                                .map(|b| b.map(ByteBuf::from))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                JsonRequest::End => Request::End,
                JsonRequest::Status => Request::Status,
                JsonRequest::Scale { workers } => Request::Scale { workers },
                JsonRequest::Reload => Request::Reload,
                JsonRequest::Stop { fast } => Request::Stop { fast },
                JsonRequest::SubmitWith {
                    ordered,
                    priority,
                    line_priority,
                } => Request::SubmitWith {
                    ordered,
                    priority,
                    line_priority,
                },
                JsonRequest::Rate { submission, rate } => Request::Rate { submission, rate },
                JsonRequest::SubmitRated {
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
                JsonRequest::Cancel { seq } => Request::Cancel { seq },
                JsonRequest::CancelIn { submission, seq } => Request::CancelIn { submission, seq },
                JsonRequest::SubmitNamed {
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
                JsonRequest::SubmitTimed {
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
                JsonRequest::Open { options } => Request::Open { options },
            }))
        } else if direction == DAEMON_TO_CLIENT {
            let r: JsonReply = serde_json::from_value(value).map_err(|e| e.to_string())?;
            Ok(Message::Reply(match r {
                JsonReply::Welcome {
                    protocol,
                    pid,
                    max_frame,
                    max_line,
                } => Reply::Welcome {
                    protocol,
                    pid,
                    max_frame,
                    max_line,
                },
                JsonReply::Records { data_hex } => Reply::Records(unhex(&data_hex)?),
                JsonReply::Done { records } => Reply::Done { records },
                JsonReply::Status { json } => Reply::Status(json),
                JsonReply::Ok { message } => Reply::Ok(message),
                JsonReply::Error { message } => Reply::Error(message),
                JsonReply::Submission { id } => Reply::Submission { id },
            }))
        } else {
            Err(format!("unknown direction {direction:?}"))
        }
    }
}

/// The frame limit a reader of `direction` applies (before a submission, for requests).
pub fn limit(direction: &str) -> usize {
    if direction == CLIENT_TO_DAEMON {
        REQUEST_MAX_FRAME
    } else {
        REPLY_MAX_FRAME
    }
}

/// Decodes one whole frame (header included) sent in `direction` with the owned decoder,
/// which must use every byte. `max`: the frame limit to apply.
pub fn decode_with(direction: &str, frame: &[u8], max: usize) -> Result<Message, FrameError> {
    if direction == CLIENT_TO_DAEMON {
        whole(frame, codec::decode_frame(frame, max)?).map(Message::Request)
    } else {
        whole(frame, codec::decode_frame(frame, max)?).map(Message::Reply)
    }
}

/// What the daemon answers a client of another version (the text is the daemon's, in
/// crates/supervisor/src/control.rs; only its variant, `Error`, is the protocol).
pub const OLD_CLIENT_ERROR: &str = "control protocol 1 is not supported (the daemon speaks 2): \
                                    use the herd binary that matches the daemon";

/// The one record of the worked session in docs/CONTROL.md.
pub const SESSION_RECORD: &str =
    "{\"seq\":0,\"ok\":true,\"output\":49,\"attempts\":1,\"worker\":0,\"pid\":4250,\"micros\":87}\n";

/// Two records as `herd run` writes them, the JSON lines a `Records` chunk carries.
pub const TWO_RECORDS: &str = concat!(
    r#"{"seq":0,"ok":true,"output":{"n":7,"square":49},"attempts":1,"worker":0,"pid":4250,"micros":87}"#,
    "\n",
    r#"{"seq":1,"ok":false,"error":{"kind":"failed","message":"bad op"},"attempts":1}"#,
    "\n",
);

fn events(lines: &[Option<&[u8]>]) -> Request {
    Request::Events(
        lines
            .iter()
            .map(|l| l.map(|b| ByteBuf::from(b.to_vec())))
            .collect(),
    )
}

fn welcome(pid: u32) -> Reply {
    Reply::Welcome {
        protocol: CONTROL_VERSION,
        pid,
        max_frame: 16_777_208,
        max_line: 16_777_184,
    }
}

/// Every message in the file, by name.
pub fn messages() -> Vec<(String, Message)> {
    let mut v: Vec<(String, Message)> = Vec::new();
    let mut req = |name: String, m: Request| v.push((name, Message::Request(m)));

    req(
        "hello".into(),
        Request::Hello {
            protocol: CONTROL_VERSION,
        },
    );
    // What an old (version 1) client sends: the daemon answers `Error`, then closes.
    req("hello_protocol_1".into(), Request::Hello { protocol: 1 });
    for p in U32_BOUNDARIES {
        let p = u32::try_from(p).unwrap_or(u32::MAX);
        req(
            format!("hello_protocol_{p}"),
            Request::Hello { protocol: p },
        );
    }
    req(
        "submit_unordered".into(),
        Request::Submit { ordered: false },
    );
    req("submit_ordered".into(), Request::Submit { ordered: true });
    req(
        "events_one".into(),
        events(&[Some(br#"{"op":"square","n":7}"#)]),
    );
    req("session_events".into(), events(&[Some(br#"{"n":7}"#)]));
    req("events_two".into(), events(&[Some(b"a"), Some(b"bc")]));
    req("events_empty_batch".into(), events(&[]));
    req("events_empty_line".into(), events(&[Some(b"")]));
    req(
        "events_too_long_line".into(),
        events(&[Some(b"x"), None, Some(b"y")]),
    );
    let all: Vec<u8> = (0..=255).collect();
    req("events_line_every_byte_value".into(), events(&[Some(&all)]));
    for len in [250usize, 251, 255, 256, 65_536] {
        req(
            format!("events_line_{len}_bytes"),
            events(&[Some(&vec![b'e'; len])]),
        );
    }
    let many: Vec<Option<&[u8]>> = vec![Some(b"z"); 251];
    req("events_251_lines".into(), events(&many));
    req("end".into(), Request::End);
    req("status".into(), Request::Status);
    req("scale".into(), Request::Scale { workers: 8 });
    for w in [250u32, 251, 4096, u32::MAX] {
        req(format!("scale_{w}"), Request::Scale { workers: w });
    }
    req("reload".into(), Request::Reload);
    req("stop".into(), Request::Stop { fast: false });
    req("stop_fast".into(), Request::Stop { fast: true });
    for (name, ordered, priority, line_priority) in [
        ("submit_with_priority_5", false, 5, false),
        ("submit_with_priority_minus_1_ordered", true, -1, false),
        ("submit_with_priority_127", false, 127, false),
        ("submit_with_priority_minus_128", false, -128, false),
        ("submit_with_line_priority", false, 0, true),
    ] {
        req(
            name.into(),
            Request::SubmitWith {
                ordered,
                priority,
                line_priority,
            },
        );
    }
    for (name, submission, rate) in [
        ("rate_pool", None, Some("200/s,burst=10")),
        ("rate_pool_off", None, None),
        ("rate_submission", Some(3), Some("30/m")),
        ("rate_submission_u64_max", Some(u64::MAX), Some("0.5/s")),
    ] {
        req(
            name.into(),
            Request::Rate {
                submission,
                rate: rate.map(str::to_owned),
            },
        );
    }
    req(
        "submit_rated".into(),
        Request::SubmitRated {
            ordered: true,
            priority: -1,
            line_priority: false,
            rate: "200/s,burst=10".into(),
        },
    );
    for (name, max_age_ms, deadline_ms, rate) in [
        ("submit_timed_max_age_1000", 1000, 0, ""),
        ("submit_timed_deadline_300000", 0, 300_000, ""),
        ("submit_timed_u64_max", u64::MAX, u64::MAX, ""),
        ("submit_timed_rated", 1000, 300_000, "200/s,burst=10"),
    ] {
        req(
            name.into(),
            Request::SubmitTimed {
                ordered: false,
                priority: 0,
                line_priority: false,
                max_age_ms,
                deadline_ms,
                rate: rate.into(),
            },
        );
    }

    req("open_empty".into(), Request::Open { options: vec![] });
    req(
        "open_every_option".into(),
        Request::Open {
            options: vec![
                SubmitOption::Ordered,
                SubmitOption::Priority(-3),
                SubmitOption::LinePriority,
                SubmitOption::Rate("200/s,burst=10".into()),
                SubmitOption::MaxAgeMs(1000),
                SubmitOption::DeadlineMs(300_000),
                SubmitOption::Named,
                SubmitOption::LineKey,
            ],
        },
    );
    req(
        "open_key_pointer".into(),
        Request::Open {
            options: vec![SubmitOption::KeyPointer("/user/id".into())],
        },
    );
    req(
        "open_batch".into(),
        Request::Open {
            options: vec![SubmitOption::Batch {
                max: 64,
                wait_ms: 5,
                by_key: true,
            }],
        },
    );
    for seq in U64_BOUNDARIES {
        req(format!("cancel_{seq}"), Request::Cancel { seq });
    }
    req(
        "cancel_in".into(),
        Request::CancelIn {
            submission: 3,
            seq: 17,
        },
    );
    req(
        "cancel_in_max".into(),
        Request::CancelIn {
            submission: u64::MAX,
            seq: u64::MAX,
        },
    );
    req(
        "submit_named".into(),
        Request::SubmitNamed {
            ordered: false,
            priority: 0,
            line_priority: false,
            rate: None,
        },
    );
    req(
        "submit_named_priority_minus_3_ordered".into(),
        Request::SubmitNamed {
            ordered: true,
            priority: -3,
            line_priority: false,
            rate: Some("200/s,burst=10".into()),
        },
    );

    let mut rep = |name: String, m: Reply| v.push((name, Message::Reply(m)));
    rep("welcome".into(), welcome(4242));
    for pid in U32_BOUNDARIES {
        let pid = u32::try_from(pid).unwrap_or(u32::MAX);
        rep(format!("welcome_pid_{pid}"), welcome(pid));
    }
    rep(
        "welcome_small_limits".into(),
        Reply::Welcome {
            protocol: CONTROL_VERSION,
            pid: 7,
            max_frame: 65_536,
            max_line: 1_000,
        },
    );
    rep(
        "records_two".into(),
        Reply::Records(TWO_RECORDS.as_bytes().to_vec()),
    );
    // One stream of two records cut inside the first: the client joins the chunks.
    let cut = 30;
    rep(
        "records_split_first".into(),
        Reply::Records(TWO_RECORDS.as_bytes()[..cut].to_vec()),
    );
    rep(
        "records_split_rest".into(),
        Reply::Records(TWO_RECORDS.as_bytes()[cut..].to_vec()),
    );
    // The worked session of docs/CONTROL.md: one record, in two chunks cut mid-record.
    let one = SESSION_RECORD.as_bytes();
    rep(
        "session_records_1".into(),
        Reply::Records(one[..24].to_vec()),
    );
    rep(
        "session_records_2".into(),
        Reply::Records(one[24..].to_vec()),
    );
    rep("records_empty".into(), Reply::Records(Vec::new()));
    for len in [250usize, 251, 65_536] {
        rep(
            format!("records_{len}_bytes"),
            Reply::Records(vec![b'r'; len]),
        );
    }
    rep("done_1".into(), Reply::Done { records: 1 });
    for n in U64_BOUNDARIES {
        rep(format!("done_{n}"), Reply::Done { records: n });
    }
    rep(
        "status_reply".into(),
        Reply::Status(r#"{"workers":{"target":2,"live":2}}"#.into()),
    );
    rep("ok_scaling".into(), Reply::Ok("scaling".into()));
    rep("ok_reloading".into(), Reply::Ok("reloading".into()));
    rep("ok_stopping".into(), Reply::Ok("stopping".into()));
    rep(
        "error_old_client".into(),
        Reply::Error(OLD_CLIENT_ERROR.into()),
    );
    rep(
        "error_too_many_connections".into(),
        Reply::Error("too many control connections (at most 64); try again later".into()),
    );
    rep(
        "error_daemon_stopped".into(),
        Reply::Error("the daemon stopped before the submission ended (2 records sent)".into()),
    );
    rep(
        "error_pool_stopped".into(),
        Reply::Error("the pool has stopped".into()),
    );
    rep(
        "error_unexpected_request".into(),
        Reply::Error("unexpected request End".into()),
    );
    for id in [0u64, 1, 250, 251, u64::MAX] {
        rep(format!("submission_{id}"), Reply::Submission { id });
    }
    rep(
        "ok_cancelled_queued".into(),
        Reply::Ok("cancelled (it was queued)".into()),
    );
    rep(
        "error_already_answered".into(),
        Reply::Error("already answered (or never accepted): nothing to cancel".into()),
    );
    rep(
        "error_non_ascii".into(),
        Reply::Error("naïve café: ☃ 🦀".into()),
    );
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
    let c = CLIENT_TO_DAEMON;
    let d = DAEMON_TO_CLIENT;
    let over_req = u32::try_from(REQUEST_MAX_FRAME + 1).unwrap_or(u32::MAX);
    let over_rep = u32::try_from(REPLY_MAX_FRAME + 1).unwrap_or(u32::MAX);
    vec![
        bad("request_empty_body", c, &[], "a body must hold one message; an empty one holds none"),
        bad("reply_empty_body", d, &[], "a body must hold one message; an empty one holds none"),
        bad("request_unknown_variant_16", c, &[16], "Request has variants 0 (Hello) to 15 (Open) only"),
        bad("open_unknown_option_9", c, &[15, 1, 9], "SubmitOption has variants 0 (Ordered) to 8 (KeyPointer) only"),
        bad("open_missing_options", c, &[15, 2, 0], "the body ends where the second option should start"),
        bad("cancel_missing_seq", c, &[11], "the body ends where seq should start"),
        bad("cancel_in_missing_seq", c, &[12, 3], "the body ends after submission, where seq should start"),
        bad("rate_missing_rate", c, &[9, 0], "the body ends where rate should start"),
        bad("submit_timed_missing_deadline", c, &[14, 0, 0, 0, 100], "the body ends where deadline_ms should start"),
        bad("submit_timed_missing_rate", c, &[14, 0, 0, 0, 100, 100], "the body ends where rate should start"),
        bad("submit_with_missing_line_priority", c, &[8, 0, 5], "the body ends where line_priority should start"),
        bad("submit_with_line_priority_bool_2", c, &[8, 0, 5, 2], "a bool is one byte, 0 or 1; 2 is refused"),
        bad("reply_unknown_variant_7", d, &[7], "Reply has variants 0 (Welcome) to 6 (Submission) only"),
        bad("submission_missing_id", d, &[6], "the body ends where id should start"),
        bad("hello_missing_protocol", c, &[0], "the body ends where the protocol should start"),
        bad("hello_protocol_u64_marker", c, &[0, 253, 2, 0, 0, 0, 0, 0, 0, 0], "protocol is a u32: the u64 marker 253 is refused"),
        bad("submit_bool_2", c, &[1, 2], "a bool is one byte, 0 or 1; 2 is refused"),
        bad("events_option_tag_2", c, &[2, 1, 2, 1, b'a'], "a line is an Option: tag 0 (None) or 1 (Some); 2 is refused"),
        bad("events_count_past_end", c, &[2, 3, 1, 1, b'a'], "the batch says 3 lines, the body ends after 1"),
        bad("events_line_length_past_end", c, &[2, 1, 1, 9, b'a', b'b'], "the line's length says 9 bytes, the body ends after 2"),
        bad("end_trailing_byte", c, &[3, 0], "a body holds exactly one message: bytes after it are refused"),
        bad("two_requests_in_one_body", c, &[3, 3], "two Ends in one body: each message needs a frame of its own"),
        bad("welcome_truncated", d, &[0, 2, 1], "the body ends after protocol and pid: max_frame and max_line are missing"),
        bad("records_length_past_end", d, &[1, 200, b'{', b'}'], "the chunk's length says 200 bytes, the body ends after 2"),
        bad("done_reserved_marker_255", d, &[2, 255, 0], "marker 255 is reserved and always refused"),
        bad("error_invalid_utf8", d, &[5, 1, 0xff], "a string must be valid UTF-8; 0xff never is"),
        bad("status_invalid_utf8", d, &[3, 2, 0xc3, 0x28], "a string must be valid UTF-8; 0xc3 must be followed by a continuation byte"),
        bad("ok_trailing_byte", d, &[4, 0, 0], "a body holds exactly one message: bytes after it are refused"),
        m("request_oversize_header", c, over_req.to_le_bytes().to_vec(), "oversize", "before Submit a request frame is at most request_max_frame bytes: max + 1 is refused from the header alone"),
        m("reply_oversize_header", d, over_rep.to_le_bytes().to_vec(), "oversize", "a reply frame is at most reply_max_frame bytes: max + 1 is refused from the header alone"),
        m("reply_oversize_header_max_u32", d, vec![255, 255, 255, 255], "oversize", "the header announces 4 GiB - 1 bytes: refused from the header alone"),
    ]
}

/// Frames with a varint in a longer form than needed, which the decoder accepts.
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
            "hello_protocol_u16_form",
            Message::Request(Request::Hello { protocol: 2 }),
            &[0, 251, 2, 0],
            "protocol 2 written as marker 251 + u16; minimal form is the single byte 02",
        ),
        n(
            "done_records_u64_form",
            Message::Reply(Reply::Done { records: 5 }),
            &[2, 253, 5, 0, 0, 0, 0, 0, 0, 0],
            "records 5 written as marker 253 + u64",
        ),
        n(
            "records_length_u16_form",
            Message::Reply(Reply::Records(b"{}".to_vec())),
            &[1, 251, 2, 0, b'{', b'}'],
            "chunk length 2 written as marker 251 + u16",
        ),
    ]
}

/// The file, built from the generator.
pub fn build() -> File {
    File {
        protocol: CONTROL_VERSION,
        generated_by: GENERATED_BY.into(),
        request_max_frame: REQUEST_MAX_FRAME,
        reply_max_frame: REPLY_MAX_FRAME,
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
    out.push_str(&format!(
        " \"request_max_frame\": {},\n",
        file.request_max_frame
    ));
    out.push_str(&format!(
        " \"reply_max_frame\": {},\n",
        file.reply_max_frame
    ));
    list(&mut out, "vectors", &file.vectors, false);
    list(&mut out, "malformed", &file.malformed, false);
    list(&mut out, "non_canonical", &file.non_canonical, true);
    out.push_str("}\n");
    out
}
