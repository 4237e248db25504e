//! Checks both protocols' test vectors — `docs/protocol-vectors.json` (worker protocol) and
//! `docs/control-vectors.json` (control protocol) — and the worked examples of
//! `docs/PROTOCOL.md` and `docs/CONTROL.md` against the codec, through every decoding path
//! herd, the SDKs and `herd submit` use, so that no document can drift from the code.
//!
//! One program for both: the checks are written once, over [`Suite`]; each protocol says
//! how its messages are framed, decoded and read, and adds the checks only it needs.
//!
//! After an intended change of the vectors, regenerate the files with
//! `cargo run -q -p herd-proto --example protocol_vectors > docs/protocol-vectors.json` and
//! `cargo run -q -p herd-proto --example control_vectors > docs/control-vectors.json`
//! (or run this test with `HERD_BLESS_VECTORS=1`).

#![allow(clippy::unwrap_used)]
// Both generators include support/common.rs: each is also compiled alone, by its example.
#![allow(clippy::duplicate_mod)]

#[path = "support/control_vectors.rs"]
mod control_vectors;
#[path = "support/vectors.rs"]
mod vectors;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Cursor;
use std::path::PathBuf;

use herd_proto::codec::FrameError;
use herd_proto::HEADER_LEN;

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// One entry of a vectors file, whichever protocol and list it comes from.
struct Entry<J> {
    name: String,
    direction: String,
    frame: Vec<u8>,
    frame_hex: String,
    /// The decoded message (a vector, a non-canonical frame); `None` for a malformed one.
    message: Option<J>,
    /// `"malformed"` or `"oversize"`, for a malformed frame.
    error: Option<String>,
}

/// The three lists of a vectors file.
struct Entries<J> {
    vectors: Vec<Entry<J>>,
    malformed: Vec<Entry<J>>,
    non_canonical: Vec<Entry<J>>,
}

impl<J> Entries<J> {
    fn all(&self) -> impl Iterator<Item = &Entry<J>> {
        self.vectors
            .iter()
            .chain(&self.malformed)
            .chain(&self.non_canonical)
    }
}

/// What a protocol's vectors file needs from its codec and its readers.
trait Suite {
    type Message: Clone + PartialEq + Debug;
    type Json: Clone + PartialEq + Debug;

    /// The vectors file, and the command that writes it.
    const FILE: &'static str;
    const GENERATED_BY: &'static str;
    /// The spec whose worked examples are vectors, and how many it has at least.
    const SPEC: &'static str;
    const MIN_EXAMPLES: usize;
    /// The sender's side first.
    const DIRECTIONS: [&'static str; 2];

    /// The file as the generator writes it.
    fn generated() -> String;
    /// The checked-in file; checks its header against the code.
    fn checked_in() -> Entries<Self::Json>;

    fn from_json(direction: &str, json: &Self::Json) -> Result<Self::Message, String>;
    fn to_json(msg: &Self::Message) -> Self::Json;
    fn frame(msg: &Self::Message) -> Vec<u8>;
    /// Any other encoder of `msg` must write `want` too (and the frame obey its direction's cap).
    fn check_other_encoders(name: &str, msg: &Self::Message, want: &[u8]);

    /// The frame limit a reader applies to a well-formed vector, and to a malformed one.
    fn vector_limit(direction: &str, frame: &[u8]) -> usize;
    fn limit(direction: &str) -> usize;
    /// The owned decoder, which must use every byte.
    fn decode(direction: &str, frame: &[u8], max: usize) -> Result<Self::Message, FrameError>;
    /// The next frame of `direction` from a stream, with the blocking reader.
    fn read(
        direction: &str,
        r: &mut Cursor<&[u8]>,
        scratch: &mut Vec<u8>,
        max: usize,
    ) -> Result<Option<Self::Message>, FrameError>;
    /// The receiver's own borrowing decoder, for the directions that have one.
    fn decode_borrowed(
        direction: &str,
        frame: &[u8],
        max: usize,
    ) -> Option<Result<Self::Message, FrameError>>;
}

/// Decodes one whole frame with the blocking reader; it must leave nothing unread.
fn read_blocking<S: Suite>(
    direction: &str,
    frame: &[u8],
    max: usize,
) -> Result<S::Message, FrameError> {
    let mut r = Cursor::new(frame);
    let msg = S::read(direction, &mut r, &mut Vec::new(), max)?;
    assert_eq!(r.position() as usize, frame.len(), "bytes left unread");
    msg.ok_or(FrameError::EofMidFrame)
}

/// Every decoding path must agree on `frame`.
fn decode_all<S: Suite>(direction: &str, frame: &[u8], max: usize) -> Result<S::Message, String> {
    let owned = S::decode(direction, frame, max);
    let blocking = read_blocking::<S>(direction, frame, max);
    let result = match (&owned, &blocking) {
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
    if let Some(borrowed) = S::decode_borrowed(direction, frame, max) {
        match (&result, &borrowed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the receiver's decoder disagrees"),
            (Err(_), Err(_)) => {}
            _ => panic!("the receiver's decoder disagrees: {result:?} vs {borrowed:?}"),
        }
    }
    result
}

fn the_checked_in_file_is_what_the_generator_writes<S: Suite>() {
    let want = S::generated();
    let path = repo_path(S::FILE);
    if std::env::var_os("HERD_BLESS_VECTORS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date; regenerate it with `{}`",
        path.display(),
        S::GENERATED_BY
    );
    // And it is plain JSON of the promised shape.
    S::checked_in();
}

fn every_message_encodes_to_its_frame<S: Suite>() {
    for v in &S::checked_in().vectors {
        let json = v.message.as_ref().unwrap();
        let msg = S::from_json(&v.direction, json).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(vectors::hex(&S::frame(&msg)), v.frame_hex, "{}", v.name);
        S::check_other_encoders(&v.name, &msg, &v.frame);
        // The header is the body's length.
        let len = u32::from_le_bytes(v.frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, v.frame.len() - HEADER_LEN, "{}", v.name);
    }
}

fn every_frame_decodes_to_its_message<S: Suite>() {
    for v in &S::checked_in().vectors {
        let max = S::vector_limit(&v.direction, &v.frame);
        let got = decode_all::<S>(&v.direction, &v.frame, max)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(Some(S::to_json(&got)), v.message, "{}", v.name);
    }
}

fn every_malformed_frame_is_rejected<S: Suite>() {
    let file = S::checked_in();
    assert!(!file.malformed.is_empty());
    for m in &file.malformed {
        let max = S::limit(&m.direction);
        let owned = S::decode(&m.direction, &m.frame, max);
        match (m.error.as_deref(), &owned) {
            (Some("malformed"), Err(FrameError::Malformed(_))) => {}
            (Some("oversize"), Err(FrameError::Oversize { .. })) => {
                // Refused from the header alone: nothing follows it.
                assert_eq!(m.frame.len(), HEADER_LEN, "{}", m.name);
            }
            _ => panic!("{}: expected {:?}, got {owned:?}", m.name, m.error),
        }
        assert!(
            decode_all::<S>(&m.direction, &m.frame, max).is_err(),
            "{}",
            m.name
        );
    }
}

fn non_canonical_varints_are_accepted_but_never_written<S: Suite>() {
    let file = S::checked_in();
    assert!(!file.non_canonical.is_empty());
    for n in &file.non_canonical {
        let got = decode_all::<S>(&n.direction, &n.frame, S::limit(&n.direction))
            .unwrap_or_else(|e| panic!("{}: {e}", n.name));
        assert_eq!(Some(S::to_json(&got)), n.message, "{}", n.name);
        // The encoder writes the minimal form, which is shorter.
        assert!(S::frame(&got).len() < n.frame.len(), "{}", n.name);
    }
}

fn frames_of_one_direction_stream_back_to_back<S: Suite>() {
    // As on the socket: every frame of one direction in one buffer, read in order.
    let file = S::checked_in();
    for direction in S::DIRECTIONS {
        let sent: Vec<_> = file
            .vectors
            .iter()
            .filter(|v| v.direction == direction)
            .collect();
        assert!(!sent.is_empty(), "no vector {direction}");
        let max = sent
            .iter()
            .map(|v| S::vector_limit(direction, &v.frame))
            .max()
            .unwrap();
        let stream: Vec<u8> = sent.iter().flat_map(|v| v.frame.clone()).collect();
        let mut r = Cursor::new(&stream[..]);
        let mut scratch = Vec::new();
        for v in &sent {
            let got = S::read(direction, &mut r, &mut scratch, max).unwrap();
            assert_eq!(got.map(|m| S::to_json(&m)), v.message, "{}", v.name);
        }
        let end = S::read(direction, &mut r, &mut scratch, max);
        assert!(matches!(end, Ok(None)), "clean end of stream");
    }
}

fn every_name_is_unique<S: Suite>() {
    let file = S::checked_in();
    let mut names = BTreeSet::new();
    for e in file.all() {
        assert!(names.insert(e.name.clone()), "duplicate name {}", e.name);
    }
}

/// The worked examples in the spec are annotated hex dumps of vectors: a code block whose
/// first line is `vector: NAME`, then one line per field, the bytes first (pairs of hex
/// digits separated by single spaces), then two or more spaces and the annotation.
fn the_worked_examples_in_the_spec_are_the_vectors<S: Suite>() {
    let doc = std::fs::read_to_string(repo_path(S::SPEC)).unwrap();
    let file = S::checked_in();
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
        let want = &file
            .all()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("example {name} is not in the vectors file"))
            .frame_hex;
        assert_eq!(&hex, want, "worked example {name} in {}", S::SPEC);
        checked += 1;
    }
    assert!(
        checked >= S::MIN_EXAMPLES,
        "only {checked} worked examples found"
    );
}

/// The checks every protocol's vectors pass, as one test each.
macro_rules! suite_tests {
    ($suite:ty) => {
        #[test]
        fn the_checked_in_file_is_what_the_generator_writes() {
            super::the_checked_in_file_is_what_the_generator_writes::<$suite>();
        }
        #[test]
        fn every_message_encodes_to_its_frame() {
            super::every_message_encodes_to_its_frame::<$suite>();
        }
        #[test]
        fn every_frame_decodes_to_its_message() {
            super::every_frame_decodes_to_its_message::<$suite>();
        }
        #[test]
        fn every_malformed_frame_is_rejected() {
            super::every_malformed_frame_is_rejected::<$suite>();
        }
        #[test]
        fn non_canonical_varints_are_accepted_but_never_written() {
            super::non_canonical_varints_are_accepted_but_never_written::<$suite>();
        }
        #[test]
        fn frames_of_one_direction_stream_back_to_back() {
            super::frames_of_one_direction_stream_back_to_back::<$suite>();
        }
        #[test]
        fn every_name_is_unique() {
            super::every_name_is_unique::<$suite>();
        }
        #[test]
        fn the_worked_examples_in_the_spec_are_the_vectors() {
            super::the_worked_examples_in_the_spec_are_the_vectors::<$suite>();
        }
    };
}

/// The checked-in vectors file `rel`, parsed.
fn parse_checked_in<F: serde::de::DeserializeOwned>(rel: &str) -> F {
    let text = std::fs::read_to_string(repo_path(rel)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The three lists of a parsed vectors file, whichever protocol's: each protocol's `File` has
/// its own entry types, with the same field names.
macro_rules! entries_of {
    ($file:expr) => {{
        let file = $file;
        $crate::Entries {
            vectors: file
                .vectors
                .iter()
                .map(|v| $crate::entry(&v.name, &v.direction, &v.frame_hex, Some(&v.message), None))
                .collect(),
            malformed: file
                .malformed
                .iter()
                .map(|m| $crate::entry(&m.name, &m.direction, &m.frame_hex, None, Some(&m.error)))
                .collect(),
            non_canonical: file
                .non_canonical
                .iter()
                .map(|n| $crate::entry(&n.name, &n.direction, &n.frame_hex, Some(&n.message), None))
                .collect(),
        }
    }};
}

/// The varint boundaries of a u32 field: each side of every change of encoded size (the last
/// is `u32::MAX`). A u64 field adds `U64_EDGES_BEYOND_U32`. The test's own list, not the
/// generator's.
const U32_EDGES: [u64; 8] = [0, 250, 251, 255, 256, 65_535, 65_536, 4_294_967_295];
const U64_EDGES_BEYOND_U32: [u64; 2] = [1 << 32, u64::MAX];

/// Each of `want` must be in `have`; `missing` words the failure.
fn assert_covers<T: Ord>(
    have: &BTreeSet<T>,
    want: impl IntoIterator<Item = T>,
    missing: impl Fn(&T) -> String,
) {
    for w in want {
        assert!(have.contains(&w), "{}", missing(&w));
    }
}

/// The body of `frame` after the header check a receiver makes; `frame` must be one frame.
fn single_body(frame: &[u8], max: usize) -> Result<&[u8], FrameError> {
    let len = herd_proto::codec::frame_len(frame, max)?.ok_or(FrameError::EofMidFrame)?;
    let body = frame
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(FrameError::EofMidFrame)?;
    assert_eq!(HEADER_LEN + len, frame.len(), "one frame per vector");
    Ok(body)
}

/// The parts of a vectors file's lists every protocol shares.
fn entry<J>(
    name: &str,
    direction: &str,
    frame_hex: &str,
    message: Option<&J>,
    error: Option<&str>,
) -> Entry<J>
where
    J: Clone,
{
    Entry {
        name: name.to_owned(),
        direction: direction.to_owned(),
        frame: vectors::unhex(frame_hex).unwrap(),
        frame_hex: frame_hex.to_owned(),
        message: message.cloned(),
        error: error.map(str::to_owned),
    }
}

#[path = "vectors/control.rs"]
mod control;
#[path = "vectors/worker.rs"]
mod worker;
