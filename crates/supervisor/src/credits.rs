//! What one submission may hold in the pool at once: a number of events and a number of
//! bytes. Both are taken by the submitter before it sends events and come back only when the
//! records of those events have been *delivered* (the [`RecordBatch`] holding them is
//! dropped, after its caller wrote it out), so a submitter that stops reading its records
//! stops itself, and nothing else.
//!
//! The byte budget covers the event's payload (held for retries until its record exists) and
//! the record's output and message (held until written). Outputs are charged when they arrive
//! without waiting — the pool never blocks — so a worker's output may take the budget past
//! zero for a moment; intake then waits until enough is delivered.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::record::{Record, RecordOutcome};

/// Bytes charged per event besides its payload: the job, the record and their bookkeeping.
pub(crate) const EVENT_OVERHEAD: usize = 64;
/// Bytes charged per chunk line besides its output: the record and its bookkeeping.
pub(crate) const CHUNK_OVERHEAD: usize = 64;

/// One submission's credits.
#[derive(Debug)]
pub(crate) struct Credits {
    pub events: Semaphore,
    pub bytes: Semaphore,
    /// Size of the byte budget; one event never needs more than this.
    pub byte_limit: usize,
}

impl Credits {
    pub fn new(events: usize, bytes: usize) -> Arc<Self> {
        let byte_limit = bytes.clamp(EVENT_OVERHEAD, Semaphore::MAX_PERMITS);
        Arc::new(Self {
            events: Semaphore::new(events.clamp(1, Semaphore::MAX_PERMITS)),
            bytes: Semaphore::new(byte_limit),
            byte_limit,
        })
    }

    /// What an event of `len` payload bytes takes from the byte budget (never more than all
    /// of it, so any single event can run).
    pub fn input_charge(&self, len: usize) -> usize {
        len.saturating_add(EVENT_OVERHEAD).min(self.byte_limit)
    }

    /// Takes what a record holds beyond its input (output, error message) from the byte
    /// budget, as far as it has any left; returns what was taken.
    pub fn charge_output(&self, record: &Record) -> usize {
        let extra = match &record.outcome {
            RecordOutcome::Ok { output, .. } => output.len(),
            RecordOutcome::Err { message, .. } => message.len(),
            // A chunk line has no event charge of its own to ride on.
            RecordOutcome::Chunk { output, .. } => output.len() + CHUNK_OVERHEAD,
        };
        if extra == 0 {
            return 0;
        }
        self.bytes.forget_permits(extra)
    }

    /// Gives back what delivered records held.
    pub fn release(&self, events: usize, bytes: usize) {
        self.events.add_permits(events);
        if bytes > 0 {
            self.bytes.add_permits(bytes);
        }
    }

    /// Nobody will deliver records any more: wake and fail every waiting sender.
    pub fn close(&self) {
        self.events.close();
        self.bytes.close();
    }
}

/// Records handed over by the pool, with the credits they hold. The credits go back to the
/// submission when the batch is dropped: drop it only once its records are written out.
///
/// A batch may hold chunk lines besides final records ([`Record::is_final`]); only final
/// records hold an event credit.
#[derive(Debug)]
pub struct RecordBatch {
    records: Vec<Record>,
    bytes: usize,
    chunks: usize,
    credits: Arc<Credits>,
}

impl RecordBatch {
    pub(crate) fn new(
        records: Vec<Record>,
        bytes: usize,
        chunks: usize,
        credits: Arc<Credits>,
    ) -> Self {
        Self {
            records,
            bytes,
            chunks,
            credits,
        }
    }

    /// How many of the records are chunk lines (the rest are final records).
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// How many of the records are final records.
    pub fn finals(&self) -> usize {
        self.records.len() - self.chunks
    }
}

impl std::ops::Deref for RecordBatch {
    type Target = [Record];

    fn deref(&self) -> &[Record] {
        &self.records
    }
}

impl Drop for RecordBatch {
    fn drop(&mut self) {
        self.credits.release(self.finals(), self.bytes);
    }
}

/// What the pool sends a submitter: records, the bytes they hold, and how many of them are
/// chunk lines.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub records: Vec<Record>,
    pub bytes: usize,
    pub chunks: usize,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    fn ok(len: usize) -> Record {
        Record {
            seq: 0,
            attempts: 1,
            chunks: 0,
            outcome: RecordOutcome::Ok {
                output: Bytes::from(vec![b'x'; len]),
                worker: 0,
                pid: 1,
                micros: 1,
            },
            input: None,
        }
    }

    #[test]
    fn charges_are_capped_and_returned_on_drop() {
        let c = Credits::new(4, 1000);
        assert_eq!(c.input_charge(10), 10 + EVENT_OVERHEAD);
        assert_eq!(c.input_charge(1 << 30), 1000, "one event can always run");
        c.bytes.try_acquire_many(900).unwrap().forget();
        c.events.try_acquire_many(2).unwrap().forget();
        // Output beyond what is left takes only what is left; intake then waits.
        assert_eq!(c.charge_output(&ok(500)), 100);
        assert_eq!(c.bytes.available_permits(), 0);
        let batch = RecordBatch::new(vec![ok(500), ok(0)], 1000, 0, c.clone());
        assert_eq!(batch.len(), 2);
        drop(batch);
        assert_eq!(c.bytes.available_permits(), 1000);
        assert_eq!(c.events.available_permits(), 4);
    }
}
