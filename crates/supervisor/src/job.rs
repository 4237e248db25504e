//! An accepted event on its way through the pool, and what a worker holds of it.

use bytes::Bytes;
use tokio::time::Instant;

use crate::priority::Priority;

/// Identifies one submission (a stream of events and its records) for the life of the pool.
pub type SubmissionId = u64;

/// An accepted event and what has happened to it so far.
#[derive(Debug)]
pub(crate) struct Job {
    /// Unique in the pool; the task id on the wire.
    pub id: u64,
    pub submission: SubmissionId,
    /// The event's number within its submission (the record's `seq`).
    pub seq: u64,
    pub payload: Bytes,
    /// Attempts a worker started (the record's `attempts`).
    pub attempts: u32,
    /// Failures charged against `retries`.
    pub charged: u32,
    /// Chunks its latest attempt sent (reset when a worker is given it).
    pub chunks: u32,
    /// Its dispatch priority (kept across retries).
    pub priority: Priority,
    /// A cancel reached it while a worker held it: whatever ends this attempt (its result,
    /// the worker's death, a stop), its record is `cancelled`.
    pub cancelled: bool,
    /// It was handed to a worker once: `--max-age` no longer applies.
    pub dispatched: bool,
    /// The most events a batch holding it may have (0: no cap). 1 is solo, alone on its
    /// worker: set when a worker died holding it and others unanswered, so that the next
    /// death with it is its own (see `crate::blame`). In a padding hole: `Job` stays 80 bytes.
    pub batch_cap: u8,
    /// What only some jobs have (time limits, a key): boxed, because jobs are moved on every
    /// step of the hot path and most have none (two `Option<Instant>`s inline cost the
    /// tiny-event rate).
    pub extra: Option<Box<Extra>>,
}

/// What only some jobs carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extra {
    /// `--max-age`: when it expires unless it has been dispatched by then (see
    /// [`crate::limits`]).
    pub expires: Option<Instant>,
    /// `--deadline`: when it gets a `deadline` record if it has no answer yet, whatever
    /// attempt it is on.
    pub deadline: Option<Instant>,
    /// Its key's hash (see [`crate::keys`]).
    pub key: Option<u64>,
    /// It holds one of its key's in-flight places, from its first start (or its release from
    /// the key's parked line) to its final record, retries included.
    pub holds_key: bool,
}

impl Job {
    /// `--deadline`: when it is out of time whatever attempt it is on.
    pub fn deadline(&self) -> Option<Instant> {
        self.extra.as_ref().and_then(|t| t.deadline)
    }
}

#[cfg(test)]
impl Job {
    /// A job not yet attempted, with an empty payload: the unit tests of the queues, the
    /// submissions and the slots each need one and differ only in these numbers.
    pub(crate) fn fresh(id: u64, submission: SubmissionId, seq: u64, priority: Priority) -> Self {
        Job {
            id,
            submission,
            seq,
            payload: Bytes::new(),
            attempts: 0,
            charged: 0,
            chunks: 0,
            priority,
            cancelled: false,
            dispatched: false,
            batch_cap: 0,
            extra: None,
        }
    }
}

/// A job a worker holds.
#[derive(Debug)]
pub(crate) struct Running {
    pub job: Job,
    /// When the worker (probably) started it: dispatch, or the previous task's completion. A
    /// worker runs its tasks one at a time in the order sent, so only the head is running
    /// (with the rest of its batch, if it came in one).
    pub started: Instant,
    /// It was sent in the same `Batch` frame as the task before it in the worker's in-flight
    /// list: the head and the tasks right behind it marked so started together, in one
    /// handler call.
    pub batched: bool,
}

#[cfg(test)]
mod tests {
    /// The tiny-event path moves jobs whole: the batch cap must not make them bigger.
    #[test]
    fn a_job_stays_80_bytes() {
        assert_eq!(std::mem::size_of::<super::Job>(), 80);
    }
}
