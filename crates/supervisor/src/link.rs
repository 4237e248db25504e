//! The connection to one worker after its handshake: a reader task that turns frames into pool
//! messages, and a writer task that encodes outgoing frames, coalescing whatever is queued into
//! one write.
//!
//! Neither task decides anything. A decode error or EOF is reported to the pool, which kills
//! and replaces the worker; a write error just ends the writer (the process exit follows).
//! The end of the link travels on the same channel as the frames, after them: when the pool
//! sees it, it has seen every result the worker managed to send.

use bytes::Bytes;
use futures_util::StreamExt;
use herd_proto::codec::encode_frame;
use herd_proto::ToWorkerRef;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::pool::{Msg, WorkerId};
use crate::rendezvous::WorkerReader;

/// A frame for a worker, as the pool hands it to the writer.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Task {
        id: u64,
        attempt: u32,
        payload: Bytes,
    },
    Shutdown,
}

/// The pool's handle on a worker's writer task. Dropping it closes the write side.
#[derive(Debug)]
pub(crate) struct Link {
    tx: mpsc::UnboundedSender<Outgoing>,
}

impl Link {
    /// Starts the reader and writer tasks for a worker that passed its handshake.
    pub fn start(
        id: WorkerId,
        mut reader: WorkerReader,
        writer: OwnedWriteHalf,
        max_frame: usize,
        frames: mpsc::UnboundedSender<Msg>,
    ) -> Self {
        tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Some(Ok(frame)) => {
                        if frames.send(Msg::Frame(id, frame)).is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        let _ = frames.send(Msg::LinkLost {
                            id,
                            fault: Some(e.to_string()),
                        });
                        return;
                    }
                    None => {
                        let _ = frames.send(Msg::LinkLost { id, fault: None });
                        return;
                    }
                }
            }
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, rx, max_frame, id));
        Self { tx }
    }

    /// Queues a frame; `false` if the writer has already stopped.
    pub fn send(&self, msg: Outgoing) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// Largest batch of frames gathered into one write.
const BATCH_BYTES: usize = 256 * 1024;

async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    max_frame: usize,
    id: WorkerId,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let frame = match &msg {
                Outgoing::Task {
                    id,
                    attempt,
                    payload,
                } => ToWorkerRef::Task {
                    id: *id,
                    attempt: *attempt,
                    payload,
                },
                Outgoing::Shutdown => ToWorkerRef::Shutdown,
            };
            if let Err(e) = encode_frame(&frame, &mut buf, max_frame) {
                // The pool checks sizes before dispatch; this is a bug, not a worker fault.
                tracing::error!(worker = id.slot, error = %e, "cannot encode frame");
            }
            if buf.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = w.write_all(&buf).await {
            tracing::debug!(worker = id.slot, error = %e, "write to worker failed");
            return;
        }
        buf.clear();
    }
}
