//! The connection to one worker after its handshake: a reader task that turns frames into pool
//! messages, and a writer task that encodes outgoing frames, coalescing whatever is queued into
//! one write.
//!
//! Neither task decides anything. A decode error or EOF is reported to the pool, which kills
//! and replaces the worker; a write error just ends the writer (the process exit follows).
//! The end of the link travels on the same channel as the frames, after them: when the pool
//! sees it, it has seen every result the worker managed to send.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use herd_proto::codec::{decode_body_borrowed, encode_frame, frame_len, FrameError, HEADER_LEN};
use herd_proto::{BatchTaskRef, FromWorkerRef, OutcomeRef, ToWorkerRef, WITHDRAW_VERSION};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::backlog::Backlog;
use crate::msg::{FromLink, Outgoing, TaskOutcome, WorkerFrame};
use crate::slot::WorkerId;

/// A worker's connection after its handshake: the socket (non-blocking), registered with the
/// runtime for *read* readiness only. A registration that also asks for write readiness is
/// woken each time the worker consumes a frame the pool sent (Linux signals the freed buffer
/// space), which cost the pool a wake-up per task; writes are tried directly instead, and
/// wait for room through a registration of their own only when the socket is full.
pub(crate) struct WorkerSocket {
    pub socket: AsyncFd<Arc<UnixStream>>,
    /// Bytes read past the `Hello` frame.
    pub read_buf: BytesMut,
}

/// Decodes the whole frame at the front of `buf` (checked complete by the caller) from a
/// worker speaking `protocol`: a frame of a later version is a fault. `chunks` is the worker's
/// backlog (protocol 2 and later).
fn decode(
    frame: Bytes,
    protocol: u32,
    chunks: Option<&Arc<Backlog>>,
) -> Result<WorkerFrame, FrameError> {
    let body = &frame[HEADER_LEN..];
    // The results of every version first: the hot path checks no version.
    Ok(match decode_body_borrowed::<FromWorkerRef<'_>>(body)? {
        FromWorkerRef::Done {
            id,
            outcome: OutcomeRef::Ok(out),
        } => WorkerFrame::Done {
            id,
            outcome: TaskOutcome::Ok(frame.slice_ref(out)),
        },
        FromWorkerRef::Done {
            id,
            outcome: OutcomeRef::Err { retryable, message },
        } => WorkerFrame::Done {
            id,
            outcome: TaskOutcome::Failed {
                retryable,
                message: message.into_owned(),
            },
        },
        FromWorkerRef::Heartbeat => WorkerFrame::Heartbeat,
        FromWorkerRef::Hello { .. } => WorkerFrame::Hello,
        msg if protocol < since(&msg) => {
            return Err(FrameError::Malformed(format!(
                "{} from a protocol {protocol} worker (it is protocol {})",
                frame_name(&msg),
                since(&msg)
            )))
        }
        FromWorkerRef::Chunk { id, data } => WorkerFrame::Chunk {
            id,
            ticket: chunks.map(|b| b.take(data.len())).unwrap_or_default(),
            data: frame.slice_ref(data),
        },
        FromWorkerRef::Done {
            id,
            outcome: OutcomeRef::RetryAfter { message, delay_ms },
        } => WorkerFrame::Done {
            id,
            outcome: TaskOutcome::RetryAfter(Box::new((
                message.into_owned(),
                std::time::Duration::from_millis(delay_ms),
            ))),
        },
        FromWorkerRef::Done {
            id,
            outcome: OutcomeRef::Cancelled,
        } => WorkerFrame::Done {
            id,
            outcome: TaskOutcome::Cancelled,
        },
        FromWorkerRef::Withdrawn { id } => WorkerFrame::Withdrawn { id },
        FromWorkerRef::Kept { id } => WorkerFrame::Kept { id },
        FromWorkerRef::Batching { max: 0 } => {
            return Err(FrameError::Malformed("Batching with max 0".into()))
        }
        FromWorkerRef::Batching { max } => WorkerFrame::Batching { max },
    })
}

/// Takes a worker's `Batching` off the front of `conn`'s buffer, if it came with its `Hello`
/// (the SDKs write both at once): its `max`, known before the pool first dispatches to the
/// worker, so that its first tasks can go in batches too. Anything else is left for the reader
/// (which then rules on it, `max` 0 included).
pub(crate) fn take_batching(
    conn: &mut WorkerSocket,
    protocol: u32,
    max_frame: usize,
) -> Option<u32> {
    if protocol < WITHDRAW_VERSION {
        return None;
    }
    let len = match frame_len(&conn.read_buf, max_frame) {
        Ok(Some(len)) if conn.read_buf.len() >= HEADER_LEN + len => len,
        _ => return None,
    };
    match decode_body_borrowed::<FromWorkerRef<'_>>(&conn.read_buf[HEADER_LEN..HEADER_LEN + len]) {
        Ok(FromWorkerRef::Batching { max }) if max > 0 => {
            let _ = conn.read_buf.split_to(HEADER_LEN + len);
            Some(max)
        }
        _ => None,
    }
}

/// The protocol version that introduced a frame.
fn since(msg: &FromWorkerRef<'_>) -> u32 {
    match msg {
        FromWorkerRef::Chunk { .. } => 2,
        FromWorkerRef::Withdrawn { .. }
        | FromWorkerRef::Kept { .. }
        | FromWorkerRef::Batching { .. }
        | FromWorkerRef::Done {
            outcome: OutcomeRef::RetryAfter { .. } | OutcomeRef::Cancelled,
            ..
        } => WITHDRAW_VERSION,
        _ => 1,
    }
}

/// A frame's name, for a fault message.
fn frame_name(msg: &FromWorkerRef<'_>) -> &'static str {
    match msg {
        FromWorkerRef::Hello { .. } => "Hello",
        FromWorkerRef::Done {
            outcome: OutcomeRef::RetryAfter { .. },
            ..
        } => "a RetryAfter outcome",
        FromWorkerRef::Done {
            outcome: OutcomeRef::Cancelled,
            ..
        } => "a Cancelled outcome",
        FromWorkerRef::Done { .. } => "Done",
        FromWorkerRef::Heartbeat => "Heartbeat",
        FromWorkerRef::Chunk { .. } => "Chunk frame",
        FromWorkerRef::Withdrawn { .. } => "Withdrawn frame",
        FromWorkerRef::Kept { .. } => "Kept frame",
        FromWorkerRef::Batching { .. } => "Batching frame",
    }
}

/// The pool's handle on a worker's write side. Frames are written straight from the pool
/// when the socket takes them (the common case: one syscall, no task hand-off, lowest
/// latency); whatever does not fit goes to a writer task that waits for the socket to drain,
/// and until it has, later frames queue behind it so order is kept. Dropping the link closes
/// the write side once the writer task is done.
#[derive(Debug)]
pub(crate) struct Link {
    id: WorkerId,
    /// Non-blocking; the reader task holds the read registration.
    socket: Arc<UnixStream>,
    /// Buffers handed to the writer task and not yet fully written.
    backlog: Arc<AtomicUsize>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    max_frame: usize,
    buf: Vec<u8>,
}

impl Link {
    /// Whether bytes (or the end of the stream) wait unread on the socket: the reader task
    /// has not caught up with what the worker wrote.
    pub fn unread(&self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.socket.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
    }

    /// Starts the reader and writer tasks for a worker that passed its handshake, speaking
    /// protocol version `protocol`.
    /// `batching_taken`: its `Batching` was taken with the handshake ([`take_batching`]), so
    /// another one is a fault even as the first frame here.
    pub fn start(
        id: WorkerId,
        conn: WorkerSocket,
        max_frame: usize,
        protocol: u32,
        batching_taken: bool,
        frames: mpsc::UnboundedSender<FromLink>,
    ) -> Self {
        let socket = conn.socket.get_ref().clone();
        tokio::spawn(read_loop(
            conn,
            max_frame,
            protocol,
            !batching_taken,
            id,
            frames,
        ));
        let backlog = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(socket.clone(), rx, backlog.clone(), id));
        Self {
            id,
            socket,
            backlog,
            tx,
            max_frame,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Queues a task frame, encoded now from the job's payload, to go with the next
    /// [`flush`](Self::flush): dispatch writes each task straight into the link's buffer, so
    /// the payload is neither copied nor its shared handle cloned and dropped (an atomic
    /// count the input thread also touches). Returns the mark [`unqueue`](Self::unqueue) takes.
    pub fn queue_task(&mut self, id: u64, attempt: u32, payload: &[u8]) -> usize {
        let mark = self.buf.len();
        self.encode(&ToWorkerRef::Task {
            id,
            attempt,
            payload,
        });
        mark
    }

    /// Queues a `Batch` frame of `tasks` (protocol 3, to a worker that sent `Batching`), as
    /// [`queue_task`](Self::queue_task) does a task. One small allocation per batch.
    pub fn queue_batch<'a>(&mut self, tasks: impl Iterator<Item = BatchTaskRef<'a>>) -> usize {
        let mark = self.buf.len();
        let tasks: Vec<BatchTaskRef<'a>> = tasks.collect();
        self.encode(&ToWorkerRef::Batch { tasks: &tasks });
        mark
    }

    /// Takes back what was queued since `mark`.
    pub fn unqueue(&mut self, mark: usize) {
        self.buf.truncate(mark);
    }

    /// Whether frames are queued for the next flush.
    pub fn queued(&self) -> bool {
        !self.buf.is_empty()
    }

    fn encode(&mut self, frame: &ToWorkerRef<'_>) {
        if let Err(e) = encode_frame(frame, &mut self.buf, self.max_frame) {
            // The pool checks sizes before dispatch; this is a bug, not a worker fault.
            tracing::error!(worker = self.id.slot, error = %e, "cannot encode frame");
        }
    }

    /// Sends frames (after any queued ones); `false` if the socket has failed (the worker is
    /// going down).
    pub fn send(&mut self, batch: &[Outgoing]) -> bool {
        for msg in batch {
            let frame = match msg {
                Outgoing::Shutdown => ToWorkerRef::Shutdown,
                Outgoing::Withdraw(id) => ToWorkerRef::Withdraw { id: *id },
                Outgoing::Cancel(id) => ToWorkerRef::Cancel { id: *id },
            };
            self.encode(&frame);
        }
        self.flush()
    }

    /// Writes everything queued; `false` if the socket has failed (the worker is going down).
    pub fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let mut written = 0;
        if self.backlog.load(Ordering::Acquire) == 0 {
            match write_while_room(&self.socket, &self.buf) {
                Ok(n) if n == self.buf.len() => {
                    self.buf.clear();
                    return true;
                }
                Ok(n) => written = n,
                Err(e) => {
                    tracing::debug!(worker = self.id.slot, error = %e, "write to worker failed");
                    self.buf.clear();
                    return false;
                }
            }
        }
        self.backlog.fetch_add(1, Ordering::AcqRel);
        let rest = self.buf[written..].to_vec();
        self.buf.clear();
        self.tx.send(rest).is_ok()
    }
}

/// Reads frames and hands them to the pool in batches: everything decodable from one read
/// goes in one message, so a busy worker costs the pool one wake-up per read, not per result.
async fn read_loop(
    conn: WorkerSocket,
    max_frame: usize,
    protocol: u32,
    mut first: bool,
    id: WorkerId,
    frames: mpsc::UnboundedSender<FromLink>,
) {
    let WorkerSocket {
        socket,
        read_buf: mut buf,
    } = conn;
    let backlog = (protocol >= 2).then(|| Arc::new(Backlog::default()));
    // Reused while reads bring one frame each (the usual case with one task in flight): such
    // a frame travels alone, so the common path allocates nothing.
    let mut batch = Vec::new();
    // `first`: no frame came yet after Hello (a `Batching` is allowed only then).
    loop {
        let mut fault = None;
        loop {
            let len = match frame_len(&buf, max_frame) {
                Ok(Some(len)) if buf.len() >= HEADER_LEN + len => len,
                Ok(_) => break,
                Err(e) => {
                    fault = Some(e.to_string());
                    break;
                }
            };
            match decode(
                buf.split_to(HEADER_LEN + len).freeze(),
                protocol,
                backlog.as_ref(),
            ) {
                Ok(WorkerFrame::Batching { .. }) if !first => {
                    fault = Some("Batching must come right after Hello, once".to_string());
                    break;
                }
                Ok(frame) => {
                    first = false;
                    batch.push(frame);
                }
                Err(e) => {
                    fault = Some(e.to_string());
                    break;
                }
            }
        }
        let msg = match batch.len() {
            0 => None,
            1 => batch.pop().map(|frame| FromLink::Frame(id, frame)),
            // The next batch starts at this one's size: grown from empty it would be copied
            // at every doubling, which cost more than the decoding itself.
            n => Some(FromLink::Frames(
                id,
                std::mem::replace(&mut batch, Vec::with_capacity(n)),
            )),
        };
        if msg.is_some_and(|msg| frames.send(msg).is_err()) {
            return;
        }
        if let Some(fault) = fault {
            let _ = frames.send(FromLink::Closed {
                id,
                fault: Some(fault),
            });
            return;
        }
        // Room for at least the frame in progress (its length was checked against the limit).
        let want = match frame_len(&buf, max_frame) {
            Ok(Some(len)) => HEADER_LEN + len,
            _ => 0,
        };
        // Frames already split off keep the buffer they were read into alive (their outputs
        // are slices of it), so `reserve` must allocate afresh whenever it cannot be satisfied
        // from the spare capacity: ask for a new chunk only when that is nearly used up, not
        // on every read (at one small frame per read that was a 64 KiB allocation per result).
        let need = want.saturating_sub(buf.len());
        if buf.capacity() - buf.len() < need.max(MIN_SPARE) {
            buf.reserve(need.max(READ_CHUNK));
        }
        if let Some(backlog) = backlog.as_ref().filter(|b| b.over()) {
            // Too much of what this worker streamed is not delivered yet: stop reading, so it
            // blocks on its socket until its records are written out (see `backlog`). The
            // pool hears of it, after the frames before it, to stop dispatching here.
            if frames.send(FromLink::Held { id, held: true }).is_err() {
                return;
            }
            backlog.room().await;
            if frames.send(FromLink::Held { id, held: false }).is_err() {
                return;
            }
        }
        match read(&socket, &mut buf).await {
            Ok(0) => {
                let fault = (!buf.is_empty()).then(|| FrameError::EofMidFrame.to_string());
                let _ = frames.send(FromLink::Closed { id, fault });
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(worker = id.slot, error = %e, "read from worker failed");
                let _ = frames.send(FromLink::Closed { id, fault: None });
                return;
            }
        }
    }
}

/// Reads once into the spare capacity of `buf`, waiting for input as needed.
async fn read(socket: &AsyncFd<Arc<UnixStream>>, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        let mut ready = socket.readable().await?;
        let spare = buf.spare_capacity_mut();
        let spare_len = spare.len();
        let result = ready.try_io(|s| {
            // SAFETY: recv writes at most `spare.len()` bytes to the start of `spare`, a valid
            // writable region, and reports how many (or an error, writing nothing).
            let n = unsafe {
                nix::libc::recv(
                    s.get_ref().as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    0,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match result {
            Ok(Ok(n)) => {
                // SAFETY: the first `n` spare bytes were just written by recv.
                unsafe { buf.set_len(buf.len() + n) };
                if n > 0 && n < spare_len {
                    // A short read drained the socket: skip the recv that would only say
                    // so. (Readiness is edge-triggered; data arriving from now on raises a
                    // new edge, as tokio's own streams rely on.)
                    ready.clear_ready();
                }
                return Ok(n);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
}

/// Registers a socket with the runtime for `interest` only.
pub(crate) fn register<S>(socket: S, interest: Interest) -> io::Result<AsyncFd<S>>
where
    S: std::borrow::Borrow<UnixStream> + AsRawFd,
{
    // SAFETY: `S` owns (a share of) the descriptor, and the AsyncFd owns `S`, so the
    // descriptor stays open and the same for the registration's whole life.
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

/// Size of a fresh read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much spare room the next read goes into a fresh buffer.
const MIN_SPARE: usize = 4 * 1024;

/// Writes what did not fit in the socket, waiting for room through a write registration of
/// its own (on a duplicate descriptor) that lives only while there is a backlog.
async fn write_loop(
    socket: Arc<UnixStream>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    backlog: Arc<AtomicUsize>,
    id: WorkerId,
) {
    let mut room: Option<AsyncFd<UnixStream>> = None;
    while let Some(buf) = rx.recv().await {
        if let Err(e) = write_all(&socket, &buf, &mut room).await {
            tracing::debug!(worker = id.slot, error = %e, "write to worker failed");
            return;
        }
        backlog.fetch_sub(1, Ordering::AcqRel);
        if rx.is_empty() {
            room = None;
        }
    }
}

async fn write_all(
    socket: &UnixStream,
    buf: &[u8],
    room: &mut Option<AsyncFd<UnixStream>>,
) -> io::Result<()> {
    let mut written = write_while_room(socket, buf)?;
    while written < buf.len() {
        let fd = match room {
            Some(fd) => fd,
            None => room.insert(register(socket.try_clone()?, Interest::WRITABLE)?),
        };
        // Readiness is edge-triggered: clear it, then check the socket again before waiting,
        // so room that appeared in between is not missed.
        fd.writable().await?.clear_ready();
        written += write_while_room(socket, &buf[written..])?;
    }
    Ok(())
}

/// Writes as much of `buf` to the non-blocking socket as it takes now; returns how much.
fn write_while_room(socket: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match (&*socket).write(&buf[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use herd_proto::{FromWorker, Outcome};

    fn decoded(outcome: Outcome) -> WorkerFrame {
        let mut buf = Vec::new();
        encode_frame(&FromWorker::Done { id: 7, outcome }, &mut buf, 1 << 20).unwrap();
        decode(Bytes::from(buf), herd_proto::PROTOCOL_VERSION, None).unwrap()
    }

    fn decode_as(protocol: u32, msg: &FromWorker) -> Result<WorkerFrame, FrameError> {
        let mut buf = Vec::new();
        encode_frame(msg, &mut buf, 1 << 20).unwrap();
        decode(Bytes::from(buf), protocol, None)
    }

    /// Each frame is accepted from the version that has it on, and is a fault before.
    #[test]
    fn a_frame_of_a_later_version_is_a_fault() {
        let chunk = FromWorker::Chunk {
            id: 1,
            data: b"x".to_vec(),
        };
        let retry = FromWorker::Done {
            id: 1,
            outcome: Outcome::RetryAfter {
                message: "busy".into(),
                delay_ms: 250,
            },
        };
        let cancelled = FromWorker::Done {
            id: 1,
            outcome: Outcome::Cancelled,
        };
        let withdrawn = FromWorker::Withdrawn { id: 1 };
        let kept = FromWorker::Kept { id: 1 };
        assert!(decode_as(1, &chunk).is_err());
        assert!(decode_as(2, &chunk).is_ok());
        for msg in [&retry, &cancelled, &withdrawn, &kept] {
            let err = decode_as(2, msg).unwrap_err().to_string();
            assert!(err.contains("from a protocol 2 worker"), "{err}");
            assert!(decode_as(3, msg).is_ok());
        }
        assert!(matches!(
            decode_as(3, &retry).unwrap(),
            WorkerFrame::Done {
                outcome: TaskOutcome::RetryAfter(ref after),
                ..
            } if after.1 == std::time::Duration::from_millis(250)
        ));
        assert!(matches!(
            decode_as(3, &withdrawn).unwrap(),
            WorkerFrame::Withdrawn { id: 1 }
        ));
    }

    /// `Batching` is a protocol 3 frame, and `max` 0 is refused (its place is checked by the
    /// reader: first frame only).
    #[test]
    fn batching_is_version_3_with_a_max_of_at_least_1() {
        let batching = |max| FromWorker::Batching { max };
        let err = decode_as(2, &batching(8)).unwrap_err().to_string();
        assert!(
            err.contains("Batching frame from a protocol 2 worker"),
            "{err}"
        );
        assert!(matches!(
            decode_as(3, &batching(8)).unwrap(),
            WorkerFrame::Batching { max: 8 }
        ));
        let err = decode_as(3, &batching(0)).unwrap_err().to_string();
        assert!(err.contains("Batching with max 0"), "{err}");
    }

    #[test]
    fn a_result_frame_decodes_to_a_named_outcome() {
        let WorkerFrame::Done { id, outcome } = decoded(Outcome::Ok(b"out".to_vec())) else {
            panic!("not a result")
        };
        assert_eq!(
            (id, outcome),
            (7, TaskOutcome::Ok(Bytes::from_static(b"out")))
        );
        let WorkerFrame::Done { outcome, .. } = decoded(Outcome::Err {
            retryable: true,
            message: "busy".into(),
        }) else {
            panic!("not a result")
        };
        assert_eq!(
            outcome,
            TaskOutcome::Failed {
                retryable: true,
                message: "busy".into()
            }
        );
    }
}
