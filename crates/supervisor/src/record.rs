//! Result records: the one final answer herd gives for each accepted event, the chunk lines a
//! streaming handler adds before it, and their JSON-lines form (the user-visible contract in
//! docs/RECORDS.md).
//!
//! Formatting lives here, not in the pool, so the pool hands over raw records and the caller
//! formats them off the supervisor's hot loop (the `herd` binary does it on its writer thread).

use std::fmt;
use std::io::Write;

/// Why an event has no output. The names are the `error.kind` strings of the record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The handler returned an error (or panicked).
    Failed,
    /// An attempt ran past `--timeout`.
    Timeout,
    /// The worker died while holding the event.
    Crashed,
    /// The worker broke the protocol while holding the event.
    Protocol,
    /// The event was refused before dispatch (e.g. too large for a frame).
    Rejected,
    /// herd stopped before the event could run.
    Shutdown,
    /// A control request cancelled the event (queued: removed; running: its worker stopped
    /// it, or was stopped and replaced).
    Cancelled,
    /// It waited longer than `--max-age` for its first start, and never ran.
    Expired,
    /// `--deadline` passed (over all its attempts, retries and backoff included) before it
    /// had an answer.
    Deadline,
}

impl ErrorKind {
    /// Every kind, in a stable order (for counters and reports).
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Failed,
        ErrorKind::Timeout,
        ErrorKind::Crashed,
        ErrorKind::Protocol,
        ErrorKind::Rejected,
        ErrorKind::Shutdown,
        ErrorKind::Cancelled,
        ErrorKind::Expired,
        ErrorKind::Deadline,
    ];

    /// The `error.kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Expired => "expired",
            ErrorKind::Deadline => "deadline",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The final result of one event, or (with [`RecordOutcome::Chunk`]) one of the partial
/// results a streaming handler sent before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The event's sequence number (0-based input line number in `herd run`).
    pub seq: u64,
    /// How many times the event was dispatched to a worker (0 if never); for a chunk, the
    /// attempt that sent it.
    pub attempts: u32,
    /// Chunks the final attempt sent before this final record (0 on chunk lines).
    pub chunks: u32,
    /// Success or the typed error.
    pub outcome: RecordOutcome,
    /// The event's payload, kept on error records only (for `--failed` replay files); `None`
    /// on success and for lines refused before they were read whole.
    pub input: Option<bytes::Bytes>,
}

/// The two shapes a record can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// The handler's output, and where and how fast it ran.
    Ok {
        output: bytes::Bytes,
        worker: usize,
        pid: u32,
        micros: u64,
    },
    /// Why there is no output. `retryable` is set only on a handler's retryable error handed
    /// back to a source that retries by itself ([`crate::SubmitOptions::source_retries`]); it
    /// is not part of the JSON record.
    Err {
        kind: ErrorKind,
        message: String,
        retryable: bool,
    },
    /// Not a final record: partial result number `index` (from 0) of attempt `attempts`.
    /// `ticket` holds the chunk's share of its worker's backlog until the record is dropped
    /// (see `backlog`): drop a chunk record once it is written out, as any record.
    Chunk {
        index: u32,
        output: bytes::Bytes,
        ticket: crate::ChunkTicket,
    },
}

impl Record {
    /// Whether this is a success record.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, RecordOutcome::Ok { .. })
    }

    /// Whether this is an event's one final record (not a chunk line).
    pub fn is_final(&self) -> bool {
        !matches!(self.outcome, RecordOutcome::Chunk { .. })
    }

    /// Whether this is a final error record.
    pub fn is_err(&self) -> bool {
        matches!(self.outcome, RecordOutcome::Err { .. })
    }

    /// The error kind, if this is an error record.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        match self.outcome {
            RecordOutcome::Ok { .. } | RecordOutcome::Chunk { .. } => None,
            RecordOutcome::Err { kind, .. } => Some(kind),
        }
    }

    /// Appends this record as one JSON line (with the trailing newline) to `out`.
    ///
    /// A worker output that is valid JSON is embedded as-is (re-serialised compactly if it
    /// spans lines, so a record is always one line); anything else becomes a JSON string, with
    /// invalid UTF-8 replaced by U+FFFD.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(SEQ_PREFIX);
        out.extend_from_slice(num.format(self.seq).as_bytes());
        match &self.outcome {
            RecordOutcome::Ok {
                output,
                worker,
                pid,
                micros,
            } => {
                out.extend_from_slice(b",\"ok\":true,\"output\":");
                write_output(output, out);
                out.extend_from_slice(b",\"attempts\":");
                out.extend_from_slice(num.format(self.attempts).as_bytes());
                out.extend_from_slice(b",\"worker\":");
                out.extend_from_slice(num.format(*worker).as_bytes());
                out.extend_from_slice(b",\"pid\":");
                out.extend_from_slice(num.format(*pid).as_bytes());
                out.extend_from_slice(b",\"micros\":");
                out.extend_from_slice(num.format(*micros).as_bytes());
                self.write_chunks(out);
            }
            RecordOutcome::Err { kind, message, .. } => {
                out.extend_from_slice(b",\"ok\":false,\"error\":{\"kind\":\"");
                out.extend_from_slice(kind.as_str().as_bytes());
                out.extend_from_slice(b"\",\"message\":");
                write_json_string(message, out);
                out.extend_from_slice(b"},\"attempts\":");
                out.extend_from_slice(num.format(self.attempts).as_bytes());
                self.write_chunks(out);
            }
            RecordOutcome::Chunk { index, output, .. } => {
                out.extend_from_slice(b",\"chunk\":");
                out.extend_from_slice(num.format(*index).as_bytes());
                out.extend_from_slice(b",\"attempt\":");
                out.extend_from_slice(num.format(self.attempts).as_bytes());
                out.extend_from_slice(b",\"output\":");
                write_output(output, out);
            }
        }
        out.extend_from_slice(b"}\n");
    }

    /// `,"chunks":n` on a final record whose attempt streamed; nothing otherwise, so records
    /// of handlers that do not stream are as they always were.
    fn write_chunks(&self, out: &mut Vec<u8>) {
        if self.chunks > 0 {
            out.extend_from_slice(b",\"chunks\":");
            out.extend_from_slice(itoa::Buffer::new().format(self.chunks).as_bytes());
        }
    }
}

/// The prefix every line [`Record::write_json`] writes starts with.
pub const SEQ_PREFIX: &[u8] = b"{\"seq\":";

/// A record line's `seq` and the bytes after it (`{"seq":N<rest>`), or `None` if the line
/// does not start that way: the reader of what [`Record::write_json`] writes, for programs
/// that read records back (resuming, renumbering, counting chunk lines).
pub fn split_seq(line: &[u8]) -> Option<(Option<u64>, &[u8])> {
    let rest = line.strip_prefix(SEQ_PREFIX)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    Some((seq, &rest[digits..]))
}

/// Embeds a worker's output: raw when it is single-line valid JSON, compacted when it is
/// multi-line JSON, a JSON string otherwise.
fn write_output(output: &[u8], out: &mut Vec<u8>) {
    if is_single_line_json(output) {
        out.extend_from_slice(trim_ascii(output));
        return;
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(output) {
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &value);
        return;
    }
    write_json_string(&String::from_utf8_lossy(output), out);
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// True for a complete JSON value with no line breaks, checked without building it.
fn is_single_line_json(b: &[u8]) -> bool {
    // Fast path for the commonest outputs: plain integers.
    let t = trim_ascii(b);
    if !t.is_empty() && t.len() <= 20 {
        let digits = t.strip_prefix(b"-").unwrap_or(t);
        if !digits.is_empty()
            && digits.iter().all(u8::is_ascii_digit)
            && (digits.len() == 1 || digits[0] != b'0')
        {
            return true;
        }
    }
    if memchr::memchr2(b'\n', b'\r', b).is_some() {
        return false;
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok()
}

/// Writes `s` as a JSON string literal.
fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes records as JSON lines to `w`, reusing one buffer.
pub struct RecordWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// Wraps a writer; nothing is written until [`RecordWriter::write`].
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Formats `records` and writes them in one go.
    ///
    /// # Errors
    /// The underlying writer's error (e.g. a closed pipe).
    pub fn write(&mut self, records: &[Record]) -> std::io::Result<()> {
        for r in records {
            r.write_json(&mut self.buf);
            if self.buf.len() >= 64 * 1024 {
                self.inner.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes the underlying writer.
    ///
    /// # Errors
    /// The underlying writer's error.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn json(r: &Record) -> String {
        let mut v = Vec::new();
        r.write_json(&mut v);
        String::from_utf8(v).unwrap()
    }

    fn ok(output: &[u8]) -> Record {
        Record {
            seq: 3,
            attempts: 1,
            chunks: 0,
            outcome: RecordOutcome::Ok {
                output: bytes::Bytes::copy_from_slice(output),
                worker: 2,
                pid: 4242,
                micros: 517,
            },
            input: None,
        }
    }

    #[test]
    fn success_record_format() {
        assert_eq!(
            json(&ok(b"49")),
            "{\"seq\":3,\"ok\":true,\"output\":49,\"attempts\":1,\"worker\":2,\"pid\":4242,\"micros\":517}\n"
        );
    }

    #[test]
    fn chunk_line_and_final_record_with_chunks() {
        let chunk = Record {
            seq: 3,
            attempts: 2,
            chunks: 0,
            outcome: RecordOutcome::Chunk {
                index: 4,
                output: bytes::Bytes::from_static(b"{\"row\": 1}"),
                ticket: crate::ChunkTicket::default(),
            },
            input: None,
        };
        assert_eq!(
            json(&chunk),
            "{\"seq\":3,\"chunk\":4,\"attempt\":2,\"output\":{\"row\": 1}}\n"
        );
        assert!(!chunk.is_final() && !chunk.is_ok() && !chunk.is_err());
        let mut fin = ok(b"49");
        fin.chunks = 5;
        assert_eq!(
            json(&fin),
            "{\"seq\":3,\"ok\":true,\"output\":49,\"attempts\":1,\"worker\":2,\"pid\":4242,\"micros\":517,\"chunks\":5}\n"
        );
        let err = Record {
            seq: 1,
            attempts: 3,
            chunks: 2,
            outcome: RecordOutcome::Err {
                kind: ErrorKind::Crashed,
                message: "gone".into(),
                retryable: false,
            },
            input: None,
        };
        assert_eq!(
            json(&err),
            "{\"seq\":1,\"ok\":false,\"error\":{\"kind\":\"crashed\",\"message\":\"gone\"},\"attempts\":3,\"chunks\":2}\n"
        );
    }

    #[test]
    fn output_embedding() {
        let cases: [(&[u8], &str); 9] = [
            (b"{\"a\":[1,2]}", "{\"a\":[1,2]}"),
            (b"\"s\"", "\"s\""),
            (b"-12", "-12"),
            (b"007", "\"007\""),
            (b"hello", "\"hello\""),
            (b"", "\"\""),
            (b"{\n  \"a\": 1\n}", "{\"a\":1}"),
            (b"line\nbreak", "\"line\\nbreak\""),
            (b"\xff\xfe", "\"\u{fffd}\u{fffd}\""),
        ];
        for (raw, want) in cases {
            let line = json(&ok(raw));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["output"].to_string(), want, "for {raw:?}");
            assert_eq!(line.matches('\n').count(), 1);
        }
    }

    #[test]
    fn retryable_flag_is_not_in_the_json() {
        let r = Record {
            seq: 9,
            attempts: 2,
            chunks: 0,
            outcome: RecordOutcome::Err {
                kind: ErrorKind::Failed,
                message: "later".into(),
                retryable: true,
            },
            input: None,
        };
        assert_eq!(
            json(&r),
            "{\"seq\":9,\"ok\":false,\"error\":{\"kind\":\"failed\",\"message\":\"later\"},\"attempts\":2}\n"
        );
    }

    #[test]
    fn error_record_format() {
        let r = Record {
            seq: 1,
            attempts: 3,
            chunks: 0,
            outcome: RecordOutcome::Err {
                kind: ErrorKind::Crashed,
                message: "worker 3 (pid 4250) killed by \"SIGSEGV\"".into(),
                retryable: false,
            },
            input: None,
        };
        assert_eq!(
            json(&r),
            "{\"seq\":1,\"ok\":false,\"error\":{\"kind\":\"crashed\",\"message\":\"worker 3 (pid 4250) killed by \\\"SIGSEGV\\\"\"},\"attempts\":3}\n"
        );
    }
}
