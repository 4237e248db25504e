//! The frame codec: the only place that knows how messages become bytes.
//!
//! # Wire format
//!
//! ```text
//!  0        4                                  4+N
//!  ┌────────┬───────────────────────────────────┐
//!  │ N (u32 │ bincode 2 "standard" encoding of   │
//!  │ little │ one message: varint integers,      │
//!  │ endian)│ enum variant index first           │
//!  └────────┴───────────────────────────────────┘
//! ```
//!
//! `N` is checked against the reader's maximum before a single byte of body is buffered or
//! allocated; a frame whose body does not decode to exactly one message (bad variant, short
//! body, trailing bytes) is [`FrameError::Malformed`]. Swapping bincode for another format means
//! changing `config`, `encode_frame` and `decode_body` here and nothing else.

use std::io::{self, Read, Write};

use bincode::config::{Configuration, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Default largest frame body accepted by a reader: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Most bytes a `Task` frame body adds around its payload (variant, id, attempt, length):
/// the longest event a worker can be sent is the frame limit less this.
pub const TASK_FRAME_OVERHEAD: usize = 32;
/// Hard upper bound for any configured maximum; also bincode's allocation limit, so no length
/// field inside a body can make the decoder allocate more than this.
pub const MAX_FRAME_CEILING: usize = 64 * 1024 * 1024;

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announced a body larger than the reader accepts.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversize { len: u64, max: usize },
    /// The body is not one valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    EofMidFrame,
    /// The message could not be encoded (only possible past the size limit).
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

type Config = Configuration<LittleEndian, Varint, bincode::config::Limit<MAX_FRAME_CEILING>>;

/// The one bincode configuration, shared by encoding and decoding.
fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME_CEILING>()
}

/// Appends one frame (header + body) for `msg` to `out`.
///
/// # Errors
/// [`FrameError::Oversize`] if the body would exceed `max` (nothing is appended then).
pub fn encode_frame<T: Serialize>(
    msg: &T,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let written = match bincode::serde::encode_into_std_write(msg, out, config()) {
        Ok(n) => n,
        Err(e) => {
            out.truncate(start);
            return Err(FrameError::Encode(e.to_string()));
        }
    };
    if written > max {
        out.truncate(start);
        return Err(FrameError::Oversize {
            len: written as u64,
            max,
        });
    }
    // `written <= max <= MAX_FRAME_CEILING < u32::MAX`, so the cast is lossless.
    out[start..start + HEADER_LEN].copy_from_slice(&(written as u32).to_le_bytes());
    Ok(())
}

/// Reads the header at the front of `buf`: the body length, or `None` if fewer than
/// [`HEADER_LEN`] bytes are there yet.
///
/// # Errors
/// [`FrameError::Oversize`] when the announced length is above `max`.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if len as u64 > max as u64 {
        return Err(FrameError::Oversize {
            len: len.into(),
            max,
        });
    }
    Ok(Some(len as usize))
}

/// Decodes exactly one message from a frame body (the bytes after the header).
///
/// # Errors
/// [`FrameError::Malformed`] if the body is not exactly one `T`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    exactly_one(
        body,
        bincode::serde::decode_from_slice::<T, _>(body, config()),
    )
}

/// A decoded message, provided it used the whole body.
fn exactly_one<T>(
    body: &[u8],
    decoded: Result<(T, usize), bincode::error::DecodeError>,
) -> Result<T, FrameError> {
    match decoded {
        Ok((msg, used)) if used == body.len() => Ok(msg),
        Ok((_, used)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - used
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Decodes one message that borrows from the frame body (see `FromWorkerRef`).
///
/// # Errors
/// [`FrameError::Malformed`] if the body is not exactly one `T`.
pub fn decode_body_borrowed<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
) -> Result<T, FrameError> {
    exactly_one(
        body,
        bincode::serde::borrow_decode_from_slice::<T, _>(body, config()),
    )
}

/// Decodes the first complete frame in `buf`, returning the message and the bytes it used, or
/// `None` if the frame is not complete yet. The caller removes the used bytes.
///
/// # Errors
/// As [`frame_len`] and [`decode_body`].
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(len) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    decode_body(body).map(|msg| Some((msg, HEADER_LEN + len)))
}

/// Blocking read of one frame. `scratch` is reused between calls to avoid an allocation per
/// frame. Returns `Ok(None)` on a clean end of stream (EOF before the first header byte).
///
/// # Errors
/// [`FrameError::EofMidFrame`] if the stream ends inside a frame; otherwise as [`decode_frame`].
pub fn read_frame<T: DeserializeOwned, R: Read>(
    reader: &mut R,
    scratch: &mut Vec<u8>,
    max: usize,
) -> Result<Option<T>, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::EofMidFrame),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = frame_len(&head, max)?.unwrap_or(0);
    scratch.clear();
    scratch.resize(len, 0);
    reader.read_exact(scratch).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::EofMidFrame,
        _ => FrameError::Io(e),
    })?;
    decode_body(scratch).map(Some)
}

/// Blocking write of one frame, through `scratch` so the frame goes out in one `write_all`.
///
/// # Errors
/// As [`encode_frame`], or the writer's I/O error.
pub fn write_frame<T: Serialize, W: Write>(
    writer: &mut W,
    msg: &T,
    scratch: &mut Vec<u8>,
    max: usize,
) -> Result<(), FrameError> {
    scratch.clear();
    encode_frame(msg, scratch, max)?;
    writer.write_all(scratch)?;
    Ok(())
}

#[cfg(feature = "tokio-codec")]
mod tokio_codec {
    use std::marker::PhantomData;

    use bytes::{Buf, BytesMut};
    use serde::{de::DeserializeOwned, Serialize};
    use tokio_util::codec::{Decoder, Encoder};

    use super::{decode_frame, encode_frame, frame_len, FrameError, HEADER_LEN};

    /// `tokio_util` adapter: decodes frames of `In`, encodes frames of `Out`.
    #[derive(Debug)]
    pub struct FrameCodec<In, Out> {
        max: usize,
        scratch: Vec<u8>,
        _types: PhantomData<fn(Out) -> In>,
    }

    impl<In, Out> FrameCodec<In, Out> {
        /// A codec that refuses frames over `max` bytes in either direction.
        pub fn new(max: usize) -> Self {
            Self {
                max: max.min(super::MAX_FRAME_CEILING),
                scratch: Vec::new(),
                _types: PhantomData,
            }
        }
    }

    impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
        type Item = In;
        type Error = FrameError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
            match decode_frame(src, self.max)? {
                Some((msg, used)) => {
                    src.advance(used);
                    Ok(Some(msg))
                }
                None => {
                    // Header checked above when present, so this reserve is bounded by `max`.
                    let want = frame_len(src, self.max)?.map_or(HEADER_LEN, |l| HEADER_LEN + l);
                    src.reserve(want.saturating_sub(src.len()));
                    Ok(None)
                }
            }
        }

        fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
            match self.decode(src)? {
                Some(msg) => Ok(Some(msg)),
                None if src.is_empty() => Ok(None),
                None => Err(FrameError::EofMidFrame),
            }
        }
    }

    impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
        type Error = FrameError;

        fn encode(&mut self, msg: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
            self.scratch.clear();
            encode_frame(&msg, &mut self.scratch, self.max)?;
            dst.extend_from_slice(&self.scratch);
            Ok(())
        }
    }
}

#[cfg(feature = "tokio-codec")]
pub use tokio_codec::FrameCodec;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{FromWorker, Outcome, ToWorker};

    fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg, &mut out, DEFAULT_MAX_FRAME).unwrap();
        out
    }

    /// The overhead bound holds for the largest id, attempt and payload length.
    #[test]
    fn task_frame_overhead_bounds_a_task() {
        let payload = vec![b'x'; MAX_FRAME_CEILING - TASK_FRAME_OVERHEAD];
        let task = crate::ToWorkerRef::Task {
            id: u64::MAX,
            attempt: u32::MAX,
            payload: &payload,
        };
        let mut out = Vec::new();
        encode_frame(&task, &mut out, MAX_FRAME_CEILING).unwrap();
        assert!(out.len() - HEADER_LEN <= payload.len() + TASK_FRAME_OVERHEAD);
    }

    /// Pins the wire format: changing any byte here is a protocol version bump.
    #[test]
    fn wire_format_is_pinned() {
        let task = ToWorker::Task {
            id: 1,
            attempt: 2,
            payload: b"hi".to_vec(),
        };
        assert_eq!(frame(&task), [6, 0, 0, 0, 0, 1, 2, 2, b'h', b'i']);
        assert_eq!(frame(&ToWorker::Shutdown), [1, 0, 0, 0, 1]);

        let hello = FromWorker::Hello {
            protocol: 1,
            pid: 300,
            token: "ab".into(),
        };
        // 300 does not fit a one-byte varint: marker 251, then u16 little endian.
        assert_eq!(frame(&hello), [8, 0, 0, 0, 0, 1, 251, 44, 1, 2, b'a', b'b']);

        let done = FromWorker::Done {
            id: 7,
            outcome: Outcome::Ok(b"49".to_vec()),
        };
        assert_eq!(frame(&done), [6, 0, 0, 0, 1, 7, 0, 2, b'4', b'9']);
        let err = FromWorker::Done {
            id: 7,
            outcome: Outcome::Err {
                retryable: true,
                message: "x".into(),
            },
        };
        assert_eq!(frame(&err), [6, 0, 0, 0, 1, 7, 1, 1, 1, b'x']);
        assert_eq!(frame(&FromWorker::Heartbeat), [1, 0, 0, 0, 2]);
        // Version 2 only adds a variant, after the others.
        let chunk = FromWorker::Chunk {
            id: 7,
            data: b"ab".to_vec(),
        };
        assert_eq!(frame(&chunk), [5, 0, 0, 0, 3, 7, 2, b'a', b'b']);
        // Version 3 adds variants after the others again, in each enum.
        assert_eq!(frame(&ToWorker::Withdraw { id: 7 }), [2, 0, 0, 0, 2, 7]);
        assert_eq!(frame(&ToWorker::Cancel { id: 7 }), [2, 0, 0, 0, 3, 7]);
        assert_eq!(frame(&FromWorker::Withdrawn { id: 7 }), [2, 0, 0, 0, 4, 7]);
        assert_eq!(frame(&FromWorker::Kept { id: 7 }), [2, 0, 0, 0, 5, 7]);
        let retry = FromWorker::Done {
            id: 7,
            outcome: Outcome::RetryAfter {
                message: "x".into(),
                delay_ms: 300,
            },
        };
        assert_eq!(frame(&retry), [8, 0, 0, 0, 1, 7, 2, 1, b'x', 251, 44, 1]);
        let cancelled = FromWorker::Done {
            id: 7,
            outcome: Outcome::Cancelled,
        };
        assert_eq!(frame(&cancelled), [3, 0, 0, 0, 1, 7, 3]);
        // Batches (version 3, optional): variants after the others once more.
        assert_eq!(
            frame(&FromWorker::Batching { max: 64 }),
            [2, 0, 0, 0, 6, 64]
        );
        let batch = ToWorker::Batch {
            tasks: vec![
                crate::BatchTask {
                    id: 1,
                    attempt: 1,
                    payload: b"a".to_vec(),
                },
                crate::BatchTask {
                    id: 2,
                    attempt: 3,
                    payload: Vec::new(),
                },
            ],
        };
        assert_eq!(frame(&batch), [9, 0, 0, 0, 4, 2, 1, 1, 1, b'a', 2, 3, 0]);
        let tasks = [
            crate::BatchTaskRef {
                id: 1,
                attempt: 1,
                payload: b"a",
            },
            crate::BatchTaskRef {
                id: 2,
                attempt: 3,
                payload: b"",
            },
        ];
        assert_eq!(
            frame(&crate::ToWorkerRef::Batch { tasks: &tasks }),
            frame(&batch),
            "the borrowing twin encodes a batch identically"
        );
    }

    #[test]
    fn borrowed_twin_encodes_identically() {
        use crate::ToWorkerRef;
        let owned = ToWorker::Task {
            id: 300,
            attempt: 3,
            payload: b"payload".to_vec(),
        };
        let borrowed = ToWorkerRef::Task {
            id: 300,
            attempt: 3,
            payload: b"payload",
        };
        assert_eq!(frame(&owned), frame(&borrowed));
        assert_eq!(frame(&ToWorker::Shutdown), frame(&ToWorkerRef::Shutdown));
    }

    #[test]
    fn borrowed_decode_matches_owned() {
        use crate::{FromWorkerRef, OutcomeRef};
        let done = frame(&FromWorker::Done {
            id: 9,
            outcome: Outcome::Ok(b"[1,2]".to_vec()),
        });
        let got: FromWorkerRef<'_> = decode_body_borrowed(&done[HEADER_LEN..]).unwrap();
        assert_eq!(
            got,
            FromWorkerRef::Done {
                id: 9,
                outcome: OutcomeRef::Ok(b"[1,2]")
            }
        );
        let err = frame(&FromWorker::Done {
            id: 1,
            outcome: Outcome::Err {
                retryable: true,
                message: "m".into(),
            },
        });
        let got: FromWorkerRef<'_> = decode_body_borrowed(&err[HEADER_LEN..]).unwrap();
        assert!(matches!(
            got,
            FromWorkerRef::Done {
                outcome: OutcomeRef::Err {
                    retryable: true,
                    ..
                },
                ..
            }
        ));
        let hello = frame(&FromWorker::Hello {
            protocol: 1,
            pid: 3,
            token: "tok".into(),
        });
        let got: FromWorkerRef<'_> = decode_body_borrowed(&hello[HEADER_LEN..]).unwrap();
        assert!(matches!(got, FromWorkerRef::Hello { pid: 3, .. }));
        let chunk = frame(&FromWorker::Chunk {
            id: 4,
            data: b"row".to_vec(),
        });
        let got: FromWorkerRef<'_> = decode_body_borrowed(&chunk[HEADER_LEN..]).unwrap();
        assert_eq!(
            got,
            FromWorkerRef::Chunk {
                id: 4,
                data: b"row"
            }
        );
        assert!(decode_body_borrowed::<FromWorkerRef<'_>>(&[127, 0]).is_err());
        assert!(
            decode_body_borrowed::<FromWorkerRef<'_>>(&[2, 0]).is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn roundtrip_every_message() {
        let msgs = [
            FromWorker::Hello {
                protocol: 1,
                pid: u32::MAX,
                token: "t".repeat(40),
            },
            FromWorker::Done {
                id: u64::MAX,
                outcome: Outcome::Ok(vec![0, 255, 10]),
            },
            FromWorker::Heartbeat,
            FromWorker::Chunk {
                id: u64::MAX,
                data: vec![1; 300],
            },
        ];
        for msg in msgs {
            let bytes = frame(&msg);
            let (back, used) = decode_frame::<FromWorker>(&bytes, DEFAULT_MAX_FRAME)
                .unwrap()
                .unwrap();
            assert_eq!((back, used), (msg, bytes.len()));
        }
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let mut bytes = frame(&ToWorker::Shutdown);
        bytes.extend(frame(&ToWorker::Task {
            id: 3,
            attempt: 1,
            payload: vec![1, 2, 3],
        }));
        let (first, used) = decode_frame::<ToWorker>(&bytes, 100).unwrap().unwrap();
        assert_eq!(first, ToWorker::Shutdown);
        let (second, used2) = decode_frame::<ToWorker>(&bytes[used..], 100)
            .unwrap()
            .unwrap();
        assert!(matches!(second, ToWorker::Task { id: 3, .. }));
        assert_eq!(used + used2, bytes.len());
    }

    #[test]
    fn incomplete_frame_waits_for_more() {
        let bytes = frame(&ToWorker::Task {
            id: 3,
            attempt: 1,
            payload: vec![9; 100],
        });
        for cut in 0..bytes.len() {
            assert!(decode_frame::<ToWorker>(&bytes[..cut], 1000)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn oversize_header_is_rejected() {
        let err = decode_frame::<ToWorker>(&[0xff, 0xff, 0xff, 0xff], DEFAULT_MAX_FRAME);
        assert!(matches!(
            err,
            Err(FrameError::Oversize {
                len: 0xffff_ffff,
                ..
            })
        ));
        // Just over a small limit is rejected too, and exactly at it is not.
        assert!(frame_len(&[11, 0, 0, 0], 10).is_err());
        assert_eq!(frame_len(&[10, 0, 0, 0], 10).unwrap(), Some(10));
        // An encoder refuses to produce what a reader would refuse.
        let mut out = vec![7];
        let big = ToWorker::Task {
            id: 0,
            attempt: 1,
            payload: vec![0; 64],
        };
        assert!(matches!(
            encode_frame(&big, &mut out, 16),
            Err(FrameError::Oversize { .. })
        ));
        assert_eq!(out, [7], "nothing appended on failure");
    }

    #[test]
    fn garbage_body_is_malformed() {
        // Variant 127 does not exist.
        let bad = [3, 0, 0, 0, 127, 1, 2];
        assert!(matches!(
            decode_frame::<FromWorker>(&bad, 100),
            Err(FrameError::Malformed(_))
        ));
        // A valid message followed by junk inside the same frame.
        let trailing = [2, 0, 0, 0, 2, 0];
        assert!(matches!(
            decode_frame::<FromWorker>(&trailing, 100),
            Err(FrameError::Malformed(_))
        ));
        // A byte string whose length claims more than the body holds.
        let short = [4, 0, 0, 0, 1, 7, 0, 200];
        assert!(matches!(
            decode_frame::<FromWorker>(&short, 100),
            Err(FrameError::Malformed(_))
        ));
        // Invalid UTF-8 in the token.
        let utf8 = [5, 0, 0, 0, 0, 1, 1, 1, 0xff];
        assert!(matches!(
            decode_frame::<FromWorker>(&utf8, 100),
            Err(FrameError::Malformed(_))
        ));
    }

    /// A reader that hands out one byte per call and fails the test if asked for more than it
    /// was built with.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.data[self.pos];
            self.pos += 1;
            Ok(1)
        }
    }

    #[test]
    fn blocking_reader_handles_split_frames_and_eof() {
        let mut data = frame(&ToWorker::Task {
            id: 42,
            attempt: 1,
            payload: b"split".to_vec(),
        });
        data.extend(frame(&ToWorker::Shutdown));
        let mut r = Trickle { data, pos: 0 };
        let mut scratch = Vec::new();
        assert!(matches!(
            read_frame::<ToWorker, _>(&mut r, &mut scratch, 100).unwrap(),
            Some(ToWorker::Task { id: 42, .. })
        ));
        assert_eq!(
            read_frame::<ToWorker, _>(&mut r, &mut scratch, 100).unwrap(),
            Some(ToWorker::Shutdown)
        );
        assert!(read_frame::<ToWorker, _>(&mut r, &mut scratch, 100)
            .unwrap()
            .is_none());
    }

    #[test]
    fn blocking_reader_eof_mid_frame() {
        let full = frame(&ToWorker::Task {
            id: 1,
            attempt: 1,
            payload: vec![5; 20],
        });
        for cut in [1, 3, 4, 10, full.len() - 1] {
            let mut r = Trickle {
                data: full[..cut].to_vec(),
                pos: 0,
            };
            let res = read_frame::<ToWorker, _>(&mut r, &mut Vec::new(), 100);
            assert!(matches!(res, Err(FrameError::EofMidFrame)), "cut at {cut}");
        }
    }

    #[test]
    fn blocking_reader_rejects_oversize_before_allocating() {
        let mut r = Trickle {
            data: vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            pos: 0,
        };
        let mut scratch = Vec::new();
        let res = read_frame::<ToWorker, _>(&mut r, &mut scratch, DEFAULT_MAX_FRAME);
        assert!(matches!(res, Err(FrameError::Oversize { .. })));
        assert_eq!(scratch.capacity(), 0, "no buffer was allocated");
        assert_eq!(r.pos, HEADER_LEN, "no body byte was read");
    }

    #[cfg(feature = "tokio-codec")]
    mod tokio_codec {
        use bytes::BytesMut;
        use tokio_util::codec::{Decoder, Encoder};

        use super::*;

        type Codec = FrameCodec<FromWorker, ToWorker>;

        #[test]
        fn split_across_reads() {
            let bytes = frame(&FromWorker::Done {
                id: 9,
                outcome: Outcome::Ok(vec![1; 50]),
            });
            let mut codec = Codec::new(1000);
            let mut buf = BytesMut::new();
            for (i, b) in bytes.iter().enumerate() {
                buf.extend_from_slice(&[*b]);
                let got = codec.decode(&mut buf).unwrap();
                assert_eq!(got.is_some(), i == bytes.len() - 1);
            }
            assert!(buf.is_empty());
        }

        #[test]
        fn two_frames_one_read() {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&frame(&FromWorker::Heartbeat));
            buf.extend_from_slice(&frame(&FromWorker::Heartbeat));
            let mut codec = Codec::new(1000);
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(FromWorker::Heartbeat));
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(FromWorker::Heartbeat));
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
        }

        #[test]
        fn oversize_rejected_without_allocating() {
            let mut buf = BytesMut::with_capacity(8);
            buf.extend_from_slice(&[0, 0, 0, 0x80]); // 2 GiB
            let cap = buf.capacity();
            let mut codec = Codec::new(DEFAULT_MAX_FRAME);
            assert!(matches!(
                codec.decode(&mut buf),
                Err(FrameError::Oversize { .. })
            ));
            assert_eq!(buf.capacity(), cap);
        }

        #[test]
        fn eof_mid_frame_and_clean_eof() {
            let mut codec = Codec::new(1000);
            let mut empty = BytesMut::new();
            assert_eq!(codec.decode_eof(&mut empty).unwrap(), None);
            let mut partial = BytesMut::from(&frame(&FromWorker::Heartbeat)[..3]);
            assert!(matches!(
                codec.decode_eof(&mut partial),
                Err(FrameError::EofMidFrame)
            ));
        }

        #[test]
        fn garbage_is_malformed() {
            let mut buf = BytesMut::from(&[3u8, 0, 0, 0, 200, 200, 200][..]);
            assert!(matches!(
                Codec::new(100).decode(&mut buf),
                Err(FrameError::Malformed(_))
            ));
        }

        #[test]
        fn encoder_matches_blocking_writer() {
            let mut codec = Codec::new(1000);
            let mut buf = BytesMut::new();
            codec.encode(ToWorker::Shutdown, &mut buf).unwrap();
            let mut plain = Vec::new();
            write_frame(&mut plain, &ToWorker::Shutdown, &mut Vec::new(), 1000).unwrap();
            assert_eq!(&buf[..], &plain[..]);
        }
    }
}
