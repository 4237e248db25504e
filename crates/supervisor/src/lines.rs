//! Events from a byte stream: one event per line, read on a plain thread and fed to a pool in
//! batches.
//!
//! A line is everything up to `\n` (a trailing `\r` is dropped too); a blank line is an event
//! like any other (with an empty payload); a last line without a newline is an event. A line
//! longer than the frame limit is never buffered whole: it is skipped and reported as
//! [`Input::Rejected`], so memory stays bounded whatever the input.
//!
//! A batch is sent whenever the reader's buffer runs dry, so events from a slow producer (a
//! pipe fed by hand) go out at once, and events from a fast one go out a read-buffer at a time.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

use crate::Input;

/// Size of each read buffer.
const READ_BUF: usize = 256 * 1024;
/// Most bytes asked for in one read.
const READ_CHUNK: usize = 64 * 1024;
/// A buffer with less room left than this is retired for a fresh one.
const MIN_READ: usize = 4 * 1024;
/// Most events in one batch.
const BATCH_EVENTS: usize = 1024;

/// Reads `reader` to the end, handing its lines as numbered events (`seq` from 0) to `send` in
/// batches of at most `max_batch`. Lines longer than `max_line` bytes become `Rejected`.
/// Returns the number of lines, or early (with the count so far) once `send` returns false.
///
/// # Errors
/// A read error of the underlying stream.
pub fn read_lines<R: Read>(
    mut reader: R,
    max_line: usize,
    max_batch: usize,
    mut send: impl FnMut(Vec<Input>) -> bool,
) -> io::Result<u64> {
    let max_batch = max_batch.clamp(1, BATCH_EVENTS);
    // Reads land in one large buffer that successive reads fill in turn; each event is a
    // slice of it (no copy, no allocation per line). A buffer is freed once every event cut
    // from it has been answered, so what is kept is bounded by the events in flight.
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut seq = 0u64;
    let mut batch: Vec<Input> = Vec::with_capacity(max_batch);
    let mut flush =
        |batch: &mut Vec<Input>| send(std::mem::replace(batch, Vec::with_capacity(max_batch)));
    // Part of a line that spans reads.
    let mut partial: Vec<u8> = Vec::new();
    let mut oversize = false;
    let reject = |seq: u64| Input::Rejected {
        seq,
        reason: format!("line longer than the frame limit of {max_line} bytes"),
    };
    loop {
        if buf.capacity() < MIN_READ {
            buf = BytesMut::with_capacity(READ_BUF);
        }
        let want = buf.capacity().min(READ_CHUNK);
        buf.resize(want, 0);
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                buf.clear();
                continue;
            }
            Err(e) => return Err(e),
        };
        buf.truncate(n);
        if n == 0 {
            break;
        }
        let data = buf.split().freeze();
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &data[start..]) {
            let end = start + nl;
            if oversize || partial.len() + nl > max_line {
                batch.push(reject(seq));
                partial.clear();
            } else if partial.is_empty() {
                batch.push(event(seq, data.slice(start..end)));
            } else {
                partial.extend_from_slice(&data[start..end]);
                batch.push(event(seq, Bytes::copy_from_slice(&partial)));
                partial.clear();
            }
            oversize = false;
            seq += 1;
            start = end + 1;
            if batch.len() >= max_batch && !flush(&mut batch) {
                return Ok(seq);
            }
        }
        let rest = &data[start..];
        if !oversize {
            if partial.len() + rest.len() > max_line {
                oversize = true;
                partial = Vec::new();
            } else {
                partial.extend_from_slice(rest);
            }
        }
        // The next read may block: hand over what we have.
        if !batch.is_empty() && !flush(&mut batch) {
            return Ok(seq);
        }
    }
    if oversize {
        batch.push(reject(seq));
        seq += 1;
    } else if !partial.is_empty() {
        batch.push(event(seq, Bytes::from(std::mem::take(&mut partial))));
        seq += 1;
    }
    if !batch.is_empty() {
        flush(&mut batch);
    }
    Ok(seq)
}

fn event(seq: u64, mut line: Bytes) -> Input {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    Input::event(seq, line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn collect(input: &[u8], max: usize) -> Vec<Input> {
        let mut all = Vec::new();
        let n = read_lines(input, max, 7, |b| {
            assert!(b.len() <= 7);
            all.extend(b);
            true
        })
        .unwrap();
        assert_eq!(all.len() as u64, n);
        all
    }

    fn show(i: &Input) -> String {
        match i {
            Input::Event { seq, payload, .. } => {
                format!("{seq}:{}", String::from_utf8_lossy(payload))
            }
            Input::Rejected { seq, .. } => format!("{seq}:REJECTED"),
        }
    }

    #[test]
    fn splits_lines_keeps_blank_ones() {
        let got: Vec<String> = collect(b"a\n\nb\r\nlast", 100).iter().map(show).collect();
        assert_eq!(got, ["0:a", "1:", "2:b", "3:last"]);
        assert!(collect(b"", 100).is_empty());
        assert_eq!(collect(b"\n", 100).len(), 1);
    }

    #[test]
    fn long_lines_are_rejected_not_buffered() {
        let mut input = b"ok\n".to_vec();
        input.extend(vec![b'x'; READ_BUF * 3]);
        input.extend(b"\nfine\n");
        input.extend(vec![b'y'; 11]);
        let got: Vec<String> = collect(&input, 10).iter().map(show).collect();
        assert_eq!(got, ["0:ok", "1:REJECTED", "2:fine", "3:REJECTED"]);
        // A line that fits until its last read must not leak into the next line.
        let mut input = vec![b'a'; 70_001];
        input.extend(b"\nok\n");
        let got: Vec<String> = collect(&input, 70_000).iter().map(show).collect();
        assert_eq!(got, ["0:REJECTED", "1:ok"]);
        // Exactly at the limit is fine.
        let got: Vec<String> = collect(b"0123456789\n", 10).iter().map(show).collect();
        assert_eq!(got, ["0:0123456789"]);
    }

    #[test]
    fn lines_spanning_buffer_refills() {
        let mut input = Vec::new();
        for i in 0..100_000 {
            input.extend(format!("event-{i}\n").as_bytes());
        }
        let got = collect(&input, 100);
        assert_eq!(got.len(), 100_000);
        for (i, ev) in got.iter().enumerate() {
            assert_eq!(show(ev), format!("{i}:event-{i}"));
        }
    }
}

/// The lines of a byte stream as a [`crate::Source`]. The stream is read on a thread of its
/// own (a terminal or a pipe may block for good), two batches ahead at most.
#[derive(Debug)]
pub struct LineSource {
    rx: tokio::sync::mpsc::Receiver<Vec<Input>>,
    reader: Option<std::thread::JoinHandle<io::Result<u64>>>,
}

impl LineSource {
    /// Starts reading `input`; lines longer than `max_line` become `Rejected`.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn<R: Read + Send + 'static>(input: R, max_line: usize) -> io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let reader = std::thread::Builder::new()
            .name("herd-input".into())
            .spawn(move || {
                read_lines(input, max_line, BATCH_EVENTS, |b| {
                    tx.blocking_send(b).is_ok()
                })
            })?;
        Ok(Self {
            rx,
            reader: Some(reader),
        })
    }
}

impl crate::Source for LineSource {
    /// Lines are read ahead on their own thread: `room` is left to [`crate::EventSender`].
    async fn next_batch(&mut self, _room: crate::Room) -> io::Result<Option<Vec<Input>>> {
        if let Some(batch) = self.rx.recv().await {
            return Ok(Some(batch));
        }
        // The reader has returned (its sender is gone): how did it end?
        match self.reader.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(io::Error::other("the input thread panicked")),
            _ => Ok(None),
        }
    }
}
