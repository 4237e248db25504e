//! The reorder buffer of an `--ordered` submission: records that finished before an earlier
//! event wait here, and leave for the outbox in `seq` order.
//!
//! A streaming event's chunk lines go out as soon as their event is the oldest unanswered
//! one, so a long stream is not held back until its end. Chunks of a later event are
//! *parked* behind the earlier ones; the earlier event may be queued behind this very worker,
//! so holding the worker's backlog here could stall both (see `backlog`). Parked lines give
//! their backlog ticket back and are bounded by the submission's byte budget instead: past
//! it, the event's chunks are dropped and its final record says so.

use std::collections::VecDeque;

use crate::credits::{Credits, Outbox, CHUNK_OVERHEAD};
use crate::record::{ErrorKind, Record, RecordOutcome};

/// One submission's reorder buffer.
#[derive(Debug, Default)]
pub(super) struct Reorder {
    /// What waits, from `next_seq` on.
    pending: VecDeque<Pending>,
    /// The next `seq` to go out.
    next_seq: u64,
    /// The credit charges of the records held here, and of the final records released
    /// while something still waits (handed to the outbox once nothing does).
    held: usize,
    /// The size of the chunk lines parked behind an earlier event.
    parked: usize,
}

/// An event waiting for those before it: its chunk lines so far, then its final record once
/// there is one.
#[derive(Debug, Default)]
struct Pending {
    chunks: Vec<Record>,
    /// What `chunks` hold of the byte credits (part of `held`).
    chunk_bytes: usize,
    /// The size of the chunks parked while an earlier event was unanswered.
    parked_bytes: usize,
    /// Chunks dropped because the parked ones outgrew the byte budget: the final record
    /// becomes a `rejected` one saying so.
    overflow: Option<Overflow>,
    fin: Option<Record>,
}

/// What an ordered event lost to the parking limit.
#[derive(Debug, Default, Clone, Copy)]
struct Overflow {
    chunks: u64,
    bytes: u64,
}

impl Reorder {
    /// The final record of its event as it will go out: `rejected`, saying why, if the
    /// event's parked chunks outgrew `limit` (call before charging it).
    pub fn final_record(&mut self, record: Record, limit: usize) -> Record {
        match self.pending(record.seq).and_then(|p| p.overflow) {
            Some(lost) => overflowed(record, lost, limit),
            None => record,
        }
    }

    /// Holds a final record (charged `charge`) until everything before it is out, then
    /// releases what is complete into `out`.
    pub fn finish(&mut self, record: Record, charge: usize, out: &mut Outbox) {
        self.held += charge;
        if let Some(p) = self.pending(record.seq) {
            p.fin = Some(record);
        }
        self.release(out);
    }

    /// A chunk line (charged `charge`): out at once if its event is the oldest unanswered
    /// one, else parked, or dropped (its charge given back to `credits`) once its event's
    /// parked lines outgrew the byte budget.
    pub fn chunk(
        &mut self,
        mut record: Record,
        charge: usize,
        credits: &Credits,
        out: &mut Outbox,
    ) {
        if record.seq != self.next_seq {
            if let RecordOutcome::Chunk { ticket, .. } = &mut record.outcome {
                drop(std::mem::take(ticket));
            }
            let size = chunk_size(&record);
            let over = self.parked + size > credits.byte_limit;
            let Some(p) = self.pending(record.seq) else {
                credits.release(0, charge);
                return;
            };
            if over || p.overflow.is_some() {
                let lost = p.overflow.get_or_insert_with(Overflow::default);
                lost.chunks += p.chunks.len() as u64 + 1;
                lost.bytes += (p.parked_bytes + size) as u64;
                p.chunks.clear();
                let freed = std::mem::take(&mut p.chunk_bytes);
                let unparked = std::mem::take(&mut p.parked_bytes);
                self.held -= freed;
                self.parked -= unparked;
                credits.release(0, freed + charge);
                return;
            }
            p.chunks.push(record);
            p.chunk_bytes += charge;
            p.parked_bytes += size;
            self.held += charge;
            self.parked += size;
            return;
        }
        if let Some(p) = self.pending(record.seq) {
            if let Some(lost) = &mut p.overflow {
                // Its earlier chunks were dropped: so are the rest, for one consistent answer.
                lost.chunks += 1;
                lost.bytes += chunk_size(&record) as u64;
                credits.release(0, charge);
                return;
            }
            p.chunks.push(record);
            p.chunk_bytes += charge;
            self.held += charge;
        }
        self.release(out);
    }

    /// The size of the chunk lines parked now.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// The entry of `seq`, made if need be.
    fn pending(&mut self, seq: u64) -> Option<&mut Pending> {
        let Some(offset) = seq.checked_sub(self.next_seq) else {
            tracing::error!(seq, "record for a seq already written (bug)");
            return None;
        };
        let offset = offset as usize;
        if self.pending.len() <= offset {
            self.pending.resize_with(offset + 1, Pending::default);
        }
        self.pending.get_mut(offset)
    }

    /// Moves to `out` whatever no longer waits for an earlier event: the oldest event's
    /// chunk lines, and its final record with everything after it that is complete.
    fn release(&mut self, out: &mut Outbox) {
        while let Some(front) = self.pending.front_mut() {
            if !front.chunks.is_empty() {
                out.chunks += front.chunks.len();
                out.records.append(&mut front.chunks);
                // Out of the reorder buffer: delivered with the outbox, not with the event.
                self.parked -= std::mem::take(&mut front.parked_bytes);
                let bytes = std::mem::take(&mut front.chunk_bytes);
                self.held -= bytes;
                out.bytes += bytes;
            }
            let Some(fin) = front.fin.take() else { break };
            out.records.push(fin);
            self.pending.pop_front();
            self.next_seq += 1;
        }
        if self.pending.is_empty() {
            // Everything held is in the outbox now.
            out.bytes += std::mem::take(&mut self.held);
        }
    }
}

/// A chunk line's size as the parking limit counts it: by its bytes, not its charge (an
/// exhausted budget charges nothing).
fn chunk_size(record: &Record) -> usize {
    match &record.outcome {
        RecordOutcome::Chunk { output, .. } => output.len() + CHUNK_OVERHEAD,
        _ => 0,
    }
}

/// The final record of an ordered event whose parked chunks were dropped: `rejected`, saying
/// why, and with no chunk lines to look for.
fn overflowed(record: Record, lost: Overflow, limit: usize) -> Record {
    let message = format!(
        "its streamed chunks waited for earlier events (--ordered) and outgrew the \
         submission's byte budget ({limit} bytes): {} chunks ({} bytes) were dropped; \
         stream without --ordered, or raise --queue-bytes",
        lost.chunks, lost.bytes
    );
    Record {
        chunks: 0,
        outcome: RecordOutcome::Err {
            kind: ErrorKind::Rejected,
            message,
            retryable: false,
        },
        ..record
    }
}
