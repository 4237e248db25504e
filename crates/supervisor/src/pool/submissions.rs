//! Where events come from and where their records go: one entry per submission (the stdin of
//! `herd run`, or each `herd submit` client of a daemon), each with its own queue of accepted
//! events, its reorder buffer and its outbox.
//!
//! Jobs are taken by priority, then round-robin across submissions (see `queue`), so a
//! submitter with a thousand queued events does not make a newcomer wait behind all of them.
//! Records go back on an unbounded channel: the submitter bounds it by the credits it holds
//! (see `Submission`), so the pool never waits on a slow reader and a vanished one costs
//! nothing but its own queue.
//!
//! Records are handed over in batches, not one by one: each hand-over wakes the submitter
//! (for `herd run`, a thread that then makes a write), and with a wake-up per record that
//! thread took a CPU away from the workers on every event. An outbox goes out once it holds
//! [`FLUSH_RECORDS`] records or a quarter of the submission's credits, once its oldest record
//! has waited [`MAX_HOLD`], or at once when nothing else is owed to the submission (so an
//! interactive submitter never waits for a record).

use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap as HashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::credits::{Credits, Outbox};
use crate::job::{Job, SubmissionId};
use crate::priority::Priority;
use crate::record::Record;
use crate::SubmitOptions;

use super::queue::Queue;
use super::reorder::Reorder;

#[derive(Debug)]
struct Entry {
    sink: mpsc::UnboundedSender<Outbox>,
    credits: Arc<Credits>,
    options: SubmitOptions,
    /// Ordered submissions: what waits for the events before it.
    reorder: Reorder,
    /// Records ready to go, with the bytes they hold and how many are chunk lines.
    out: Outbox,
    /// When `out` was first seen non-empty by a flush.
    since: Option<Instant>,
    /// Events accepted and records emitted: equal means nothing is owed.
    accepted: u64,
    emitted: u64,
    /// The submitter sent its last event.
    ended: bool,
}

/// An outbox this full goes out at once.
pub(crate) const FLUSH_RECORDS: usize = 256;
/// The longest a record waits in an outbox.
pub(crate) const MAX_HOLD: Duration = Duration::from_millis(2);

/// All open submissions.
#[derive(Debug)]
pub(crate) struct Submissions {
    map: HashMap<SubmissionId, Entry>,
    /// Their queued jobs.
    queue: Queue,
    /// Submissions whose outbox has records.
    dirty: Vec<SubmissionId>,
    /// Accepted events that have no record yet, across all submissions (those of a
    /// cancelled submission no longer count: nobody waits for their records). The pool may
    /// not stop before this is zero.
    unanswered: usize,
    /// Outbox size that is sent without waiting.
    flush_at: usize,
    /// The rate limits of the submissions that have one (few: a map beside `map`).
    rates: HashMap<SubmissionId, crate::rate::Limiter>,
    /// Jobs of departed submissions that held a place of their key, for the pool to free
    /// (see [`Self::take_holding`]).
    holding: Vec<Job>,
}

impl Submissions {
    /// `credits` is how many records a submitter can be owed before it must wait for them.
    pub fn new(credits: usize) -> Self {
        Self {
            map: HashMap::default(),
            queue: Queue::default(),
            dirty: Vec::new(),
            unanswered: 0,
            flush_at: (credits / 4).clamp(1, FLUSH_RECORDS),
            rates: HashMap::default(),
            holding: Vec::new(),
        }
    }

    pub fn open(
        &mut self,
        id: SubmissionId,
        sink: mpsc::UnboundedSender<Outbox>,
        credits: Arc<Credits>,
        options: SubmitOptions,
    ) {
        if let Some(r) = options.rate {
            self.rates.insert(id, crate::rate::Limiter::new(r));
        }
        self.map.insert(
            id,
            Entry {
                sink,
                credits,
                options,
                reorder: Reorder::default(),
                out: Outbox::default(),
                since: None,
                accepted: 0,
                emitted: 0,
                ended: false,
            },
        );
    }

    pub fn contains(&self, id: SubmissionId) -> bool {
        self.map.contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether `id`'s source retries retryable failures itself.
    pub fn source_retries(&self, id: SubmissionId) -> bool {
        self.map.get(&id).is_some_and(|o| o.options.source_retries)
    }

    /// `id`'s own batches, if it is open and set them.
    pub fn batch(&self, id: SubmissionId) -> Option<crate::BatchConfig> {
        self.map.get(&id).and_then(|o| o.options.batch)
    }

    /// `id`'s options, if it is open.
    pub fn options(&self, id: SubmissionId) -> Option<SubmitOptions> {
        self.map.get(&id).map(|o| o.options.clone())
    }

    /// Counts `n` accepted events of `id` (queued or answered at once).
    pub fn accepted(&mut self, id: SubmissionId, n: usize) {
        if let Some(o) = self.map.get_mut(&id) {
            o.accepted += n as u64;
            self.unanswered += n;
        }
    }

    /// Accepted events still owed a record.
    pub fn unanswered(&self) -> usize {
        self.unanswered
    }

    /// Queues new jobs of one submission, in order.
    pub fn extend(&mut self, id: SubmissionId, jobs: impl Iterator<Item = Job>) {
        if self.map.contains_key(&id) {
            self.queue.extend(id, jobs);
        }
    }

    /// Queues a new job at the back of its submission's queue.
    #[cfg(test)]
    pub fn push_back(&mut self, job: Job) {
        self.push(job, false);
    }

    /// Queues a job to run next within its submission (retries).
    pub fn push_front(&mut self, job: Job) {
        self.push(job, true);
    }

    fn push(&mut self, job: Job, front: bool) {
        if self.map.contains_key(&job.submission) {
            self.queue.push(job, front);
        }
        // Otherwise its submitter is gone (and was uncounted); nobody wants the record.
    }

    /// The next job: by priority, then round-robin across submissions.
    pub fn pop(&mut self) -> Option<Job> {
        self.queue.pop()
    }

    /// The next job whose submission's rate limit lets it start at `now` (not yet counted as a
    /// start of that limit: see [`Self::rate_started`]); when none may, the earliest time one of
    /// the held submissions may start.
    #[inline]
    pub fn pop_limited(&mut self, now: Instant) -> Result<Job, Option<Instant>> {
        if self.rates.is_empty() {
            return self.queue.pop().ok_or(None);
        }
        self.pop_held_back(now)
    }

    /// [`Self::pop_limited`] when some submission has a rate limit (out of the hot path).
    #[inline(never)]
    fn pop_held_back(&mut self, now: Instant) -> Result<Job, Option<Instant>> {
        let mut held = Vec::new();
        let mut wake: Option<Instant> = None;
        for (&id, l) in &mut self.rates {
            if self.queue.queued_of(id) == 0 {
                l.idle(now);
                continue;
            }
            if let Err(at) = l.check(now) {
                held.push(id);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        self.queue.pop_unless(&held).ok_or(wake)
    }

    /// Counts a start of submission `id` against its rate limit, if it has one: called once a
    /// job from [`Self::pop_limited`] did start (not when it was out of time, or went back).
    #[inline]
    pub fn rate_started(&mut self, id: SubmissionId, now: Instant) {
        if self.rates.is_empty() {
            return;
        }
        if let Some(l) = self.rates.get_mut(&id) {
            l.start(now);
        }
    }

    /// A new limit for submission `id` (`None`: unlimited); false if it is not open.
    pub fn set_rate(
        &mut self,
        id: SubmissionId,
        rate: Option<crate::rate::Rate>,
        now: Instant,
    ) -> bool {
        let Some(entry) = self.map.get_mut(&id) else {
            return false;
        };
        entry.options.rate = rate;
        match (rate, self.rates.get_mut(&id)) {
            (None, _) => {
                self.rates.remove(&id);
            }
            (Some(r), Some(l)) => l.set_rate(r, now),
            (Some(r), None) => {
                self.rates.insert(id, crate::rate::Limiter::new(r));
            }
        }
        true
    }

    /// The submissions' rate limits, by submission.
    pub fn rates(&self) -> impl Iterator<Item = (SubmissionId, &crate::rate::Limiter)> + '_ {
        self.rates.iter().map(|(&id, l)| (id, l))
    }

    /// Queued jobs across all submissions.
    pub fn queued(&self) -> usize {
        self.queue.queued()
    }

    /// Whether a submission other than `id` has jobs queued.
    pub fn others_queued(&self, id: SubmissionId) -> bool {
        self.queue.others_queued(id)
    }

    /// Queued jobs per priority, highest first (only priorities with some).
    pub fn depths(&self) -> impl Iterator<Item = (Priority, usize)> + '_ {
        self.queue.depths()
    }

    /// Removes the queued job of event `seq` of submission `id` (a cancel).
    pub fn remove_queued(&mut self, id: SubmissionId, seq: u64) -> Option<Job> {
        self.queue.remove(id, seq)
    }

    /// Removes queued jobs out of time (see [`Queue::take_out_of_time`]).
    pub fn take_out_of_time(
        &mut self,
        now: Instant,
        budget: usize,
    ) -> Vec<(Job, crate::record::ErrorKind)> {
        self.queue.take_out_of_time(now, budget)
    }

    /// Takes every queued job (for a fast stop).
    pub fn take_all(&mut self) -> Vec<Job> {
        self.queue.take_all()
    }

    /// Routes a final record to its submission's outbox (in `seq` order if it asked for that).
    /// `input_len` is the payload length its event was charged for.
    pub fn emit(&mut self, submission: SubmissionId, record: Record, input_len: usize) {
        let Some(o) = self.map.get_mut(&submission) else {
            return; // cancelled: its events were uncounted then
        };
        o.emitted += 1;
        self.unanswered -= 1;
        let mut record = record;
        if o.options.ordered {
            record = o.reorder.final_record(record, o.credits.byte_limit);
        }
        let charge = o.credits.input_charge(input_len) + o.credits.charge_output(&record);
        if o.out.records.is_empty() {
            self.dirty.push(submission);
        }
        if o.options.ordered {
            o.reorder.finish(record, charge, &mut o.out);
        } else {
            o.out.records.push(record);
            o.out.bytes += charge;
        }
    }

    /// Routes a chunk line to its submission's outbox: at once, or, in an ordered submission,
    /// after everything of the events before its own (it goes out as soon as its event is the
    /// oldest unanswered one, so a long stream is not held back until its end). Charged
    /// against the byte credits like an output; owes nothing and settles nothing.
    pub fn emit_chunk(&mut self, submission: SubmissionId, record: Record) {
        let Some(o) = self.map.get_mut(&submission) else {
            return; // cancelled: nobody reads its lines
        };
        let charge = o.credits.charge_output(&record);
        if o.out.records.is_empty() {
            self.dirty.push(submission);
        }
        if o.options.ordered {
            o.reorder.chunk(record, charge, &o.credits, &mut o.out);
        } else {
            o.out.records.push(record);
            o.out.chunks += 1;
            o.out.bytes += charge;
        }
    }

    /// Marks the end of a submission's events.
    pub fn end(&mut self, id: SubmissionId) {
        if let Some(o) = self.map.get_mut(&id) {
            o.ended = true;
            self.dirty.push(id);
        }
    }

    /// Dropped jobs that held a place of their key (their submitter went away).
    pub fn take_holding(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.holding)
    }

    /// Forgets a submission whose submitter went away; returns its queued jobs (they need no
    /// record: nobody is listening).
    pub fn cancel(&mut self, id: SubmissionId) -> usize {
        self.rates.remove(&id);
        match self.map.remove(&id) {
            Some(o) => {
                // Queued or in flight, none of its events is owed a record any more.
                self.unanswered -= (o.accepted - o.emitted) as usize;
                self.queue.cancel(id, &mut self.holding)
            }
            None => 0,
        }
    }

    /// Hands over the outboxes that are due (see the module docs); closes submissions that are
    /// complete. With `all`, every outbox is due. Returns the ids of submitters that turned
    /// out to be gone.
    pub fn flush(&mut self, now: Instant, all: bool) -> Vec<SubmissionId> {
        let mut gone = Vec::new();
        let mut waiting = Vec::new();
        for id in std::mem::take(&mut self.dirty) {
            let Some(o) = self.map.get_mut(&id) else {
                continue;
            };
            if !o.out.records.is_empty() {
                let since = *o.since.get_or_insert(now);
                let due = all
                    || o.emitted == o.accepted
                    || o.out.records.len() >= self.flush_at
                    || now >= since + MAX_HOLD;
                if !due {
                    waiting.push(id);
                    continue;
                }
                o.since = None;
                // The next outbox is likely about as large as this one.
                let next = Outbox {
                    records: Vec::with_capacity(o.out.records.len()),
                    ..Outbox::default()
                };
                let out = std::mem::replace(&mut o.out, next);
                if o.sink.send(out).is_err() {
                    gone.push(id);
                    continue;
                }
            }
            if o.ended && o.emitted == o.accepted {
                // Every record delivered: dropping the sink tells the submitter it is done.
                self.map.remove(&id);
                self.rates.remove(&id);
                self.queue.cancel(id, &mut self.holding); // its emptied queues
            }
        }
        self.dirty = waiting;
        for &id in &gone {
            self.cancel(id);
        }
        gone
    }

    /// When the oldest held outbox falls due.
    pub fn next_flush(&self) -> Option<Instant> {
        self.dirty
            .iter()
            .filter_map(|id| self.map.get(id)?.since)
            .min()
            .map(|t| t + MAX_HOLD)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::{ErrorKind, RecordOutcome};
    use bytes::Bytes;

    fn job(submission: SubmissionId, seq: u64) -> Job {
        Job::fresh(submission * 1000 + seq, submission, seq, 0)
    }

    fn ordered() -> SubmitOptions {
        SubmitOptions {
            ordered: true,
            ..SubmitOptions::default()
        }
    }

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            attempts: 1,
            chunks: 0,
            outcome: RecordOutcome::Err {
                kind: ErrorKind::Failed,
                message: String::new(),
                retryable: false,
            },
            input: None,
        }
    }

    #[test]
    fn round_robin_across_submissions() {
        let mut o = Submissions::new(1024);
        let (tx, _rx) = mpsc::unbounded_channel();
        o.open(
            1,
            tx.clone(),
            Credits::new(1 << 20, 1 << 30),
            SubmitOptions::default(),
        );
        o.open(
            2,
            tx,
            Credits::new(1 << 20, 1 << 30),
            SubmitOptions::default(),
        );
        for s in 0..4 {
            o.push_back(job(1, s));
        }
        o.push_back(job(2, 0));
        o.push_back(job(2, 1));
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| o.pop())
            .map(|j| (j.submission, j.seq))
            .collect();
        assert_eq!(order, [(1, 0), (2, 0), (1, 1), (2, 1), (1, 2), (1, 3)]);
        assert_eq!(o.queued(), 0);
        // A retry goes first within its submission.
        o.push_back(job(1, 9));
        o.push_front(job(1, 8));
        assert_eq!(o.pop().unwrap().seq, 8);
    }

    fn chunk(seq: u64, attempt: u32, index: u32) -> Record {
        Record {
            seq,
            attempts: attempt,
            chunks: 0,
            outcome: RecordOutcome::Chunk {
                index,
                output: Bytes::from_static(b"12345678"),
                ticket: crate::ChunkTicket::default(),
            },
            input: None,
        }
    }

    /// Outboxes of `limit` records at most, with submission `id` open and credit to spare.
    fn opened(
        limit: usize,
        id: u64,
        opts: SubmitOptions,
    ) -> (Submissions, mpsc::UnboundedReceiver<Outbox>) {
        let mut o = Submissions::new(limit);
        let (tx, rx) = mpsc::unbounded_channel();
        o.open(id, tx, Credits::new(1 << 20, 1 << 30), opts);
        (o, rx)
    }

    /// (seq, chunk index) of each line in the outboxes received so far; `None` for a final.
    fn lines(rx: &mut mpsc::UnboundedReceiver<Outbox>) -> Vec<(u64, Option<u32>)> {
        let mut v = Vec::new();
        while let Ok(out) = rx.try_recv() {
            let chunks = out.records.iter().filter(|r| !r.is_final()).count();
            assert_eq!(out.chunks, chunks, "the outbox counts its chunk lines");
            for r in out.records {
                v.push(match r.outcome {
                    RecordOutcome::Chunk { index, .. } => (r.seq, Some(index)),
                    _ => (r.seq, None),
                });
            }
        }
        v
    }

    #[test]
    fn chunks_owe_nothing_and_hold_no_event_credit() {
        let mut o = Submissions::new(1024);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let credits = Credits::new(10, 1 << 20);
        o.open(3, tx, credits.clone(), SubmitOptions::default());
        // Taken by the submitter when it sent the event; given back with its final record.
        credits.events.try_acquire().unwrap().forget();
        let input = credits.input_charge(0);
        credits
            .bytes
            .try_acquire_many(input as u32)
            .unwrap()
            .forget();
        o.accepted(3, 1);
        o.emit_chunk(3, chunk(0, 1, 0));
        o.emit_chunk(3, chunk(0, 1, 1));
        assert_eq!(o.unanswered(), 1, "a chunk is no answer");
        let charged = (1 << 20) - input - credits.bytes.available_permits();
        assert_eq!(charged, 2 * (8 + crate::credits::CHUNK_OVERHEAD));
        o.end(3);
        o.emit(3, rec(0), 0);
        assert_eq!(o.unanswered(), 0);
        o.flush(Instant::now(), true);
        let out = rx.try_recv().unwrap();
        assert_eq!(out.chunks, 2);
        let batch = crate::RecordBatch::new(out.records, out.bytes, out.chunks, credits.clone());
        assert_eq!((batch.finals(), batch.chunks()), (1, 2));
        drop(batch);
        assert_eq!(credits.events.available_permits(), 10);
        assert_eq!(credits.bytes.available_permits(), 1 << 20);
    }

    #[test]
    fn ordered_chunks_follow_the_events_before_them() {
        let (mut o, mut rx) = opened(1024, 7, ordered());
        o.accepted(7, 3);
        // seq 1 streams while seq 0 runs: held back.
        o.emit_chunk(7, chunk(1, 1, 0));
        o.emit_chunk(7, chunk(2, 1, 0));
        o.flush(Instant::now(), true);
        assert!(lines(&mut rx).is_empty(), "held until seq 0 is done");
        // seq 0 is the oldest: its chunks go out at once.
        o.emit_chunk(7, chunk(0, 1, 0));
        o.flush(Instant::now(), true);
        assert_eq!(lines(&mut rx), [(0, Some(0))]);
        o.emit(7, rec(0), 0);
        o.emit_chunk(7, chunk(1, 2, 0)); // a retry's chunk
        o.flush(Instant::now(), true);
        assert_eq!(
            lines(&mut rx),
            [(0, None), (1, Some(0)), (1, Some(0))],
            "seq 1 is the oldest now: its chunks, both attempts, in arrival order"
        );
        o.emit(7, rec(2), 0);
        o.emit(7, rec(1), 0);
        o.flush(Instant::now(), true);
        assert_eq!(lines(&mut rx), [(1, None), (2, Some(0)), (2, None)]);
    }

    #[test]
    fn parked_chunks_past_the_byte_budget_reject_their_event() {
        let mut o = Submissions::new(1024);
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Room for two parked chunk lines (72 bytes each), not three.
        let credits = Credits::new(1 << 20, 200);
        o.open(7, tx, credits.clone(), ordered());
        o.accepted(7, 3);
        o.emit_chunk(7, chunk(1, 1, 0));
        o.emit_chunk(7, chunk(1, 1, 1));
        o.emit_chunk(7, chunk(1, 1, 2)); // over: seq 1's chunks are dropped
        o.emit_chunk(7, chunk(2, 1, 0)); // room again for another event's
        o.emit(7, rec(0), 0);
        o.emit_chunk(7, chunk(1, 1, 3)); // seq 1 is the oldest now: dropped all the same
        let mut fin = rec(1);
        fin.chunks = 4;
        o.emit(7, fin, 0);
        o.emit(7, rec(2), 0);
        o.flush(Instant::now(), true);
        let mut outs = Vec::new();
        while let Ok(out) = rx.try_recv() {
            outs.extend(out.records);
        }
        let got: Vec<_> = outs
            .iter()
            .map(|r| match &r.outcome {
                RecordOutcome::Chunk { index, .. } => (r.seq, Some(*index)),
                _ => (r.seq, None),
            })
            .collect();
        assert_eq!(got, [(0, None), (1, None), (2, Some(0)), (2, None)]);
        let RecordOutcome::Err { kind, message, .. } = &outs[1].outcome else {
            panic!("{:?}", outs[1]);
        };
        assert_eq!(*kind, ErrorKind::Rejected);
        assert!(
            message.contains("4 chunks (288 bytes) were dropped"),
            "{message}"
        );
        assert_eq!(outs[1].chunks, 0, "no chunk lines to look for");
        // What the dropped lines took from the budget is back.
        assert_eq!(o.map[&7].reorder.parked(), 0);
    }

    #[test]
    fn ordered_outbox_and_completion() {
        let (mut o, mut rx) = opened(1024, 7, ordered());
        for _ in 0..3 {
            o.accepted(7, 1);
        }
        o.emit(7, rec(2), 0);
        o.emit(7, rec(1), 0);
        o.flush(Instant::now(), false);
        assert!(rx.try_recv().is_err(), "held until seq 0 arrives");
        o.end(7);
        o.emit(7, rec(0), 0);
        assert!(o.flush(Instant::now(), false).is_empty());
        let seqs: Vec<u64> = rx
            .try_recv()
            .unwrap()
            .records
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
        assert!(!o.contains(7), "complete submissions are closed");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn outboxes_are_held_until_full_old_or_owed_nothing() {
        let t0 = Instant::now();
        let (mut o, mut rx) = opened(1 << 20, 1, SubmitOptions::default());
        o.accepted(1, 1000);
        o.emit(1, rec(0), 0);
        o.flush(t0, false);
        assert!(rx.try_recv().is_err(), "one record, more owed: held");
        assert_eq!(o.next_flush(), Some(t0 + MAX_HOLD));
        o.flush(t0 + MAX_HOLD / 2, false);
        assert!(rx.try_recv().is_err());
        o.flush(t0 + MAX_HOLD, false);
        assert_eq!(
            rx.try_recv().unwrap().records.len(),
            1,
            "due after MAX_HOLD"
        );
        assert_eq!(o.next_flush(), None);

        for s in 1..=FLUSH_RECORDS as u64 {
            o.emit(1, rec(s), 0);
        }
        o.flush(t0 + MAX_HOLD, false);
        assert_eq!(
            rx.try_recv().unwrap().records.len(),
            FLUSH_RECORDS,
            "due when full"
        );

        // The last record owed goes out at once.
        o.accepted(1, 0);
        for s in 257..1000 {
            o.emit(1, rec(s), 0);
        }
        o.flush(t0 + MAX_HOLD, false);
        let mut got = 0;
        while let Ok(batch) = rx.try_recv() {
            got += batch.records.len();
        }
        assert_eq!(got, 1000 - 257);

        // A small credit limit makes a small outbox due: its submitter may be waiting.
        let (mut o, mut rx) = opened(4, 2, SubmitOptions::default());
        o.accepted(2, 100);
        o.emit(2, rec(0), 0);
        o.flush(t0, false);
        assert_eq!(rx.try_recv().unwrap().records.len(), 1);
    }

    #[test]
    fn source_retries_is_per_submission() {
        let mut o = Submissions::new(1024);
        let (tx, _rx) = mpsc::unbounded_channel();
        let broker = SubmitOptions {
            source_retries: true,
            ..SubmitOptions::default()
        };
        o.open(1, tx.clone(), Credits::new(16, 1 << 20), broker);
        o.open(2, tx, Credits::new(16, 1 << 20), SubmitOptions::default());
        assert!(o.source_retries(1));
        assert!(!o.source_retries(2));
        assert!(
            !o.source_retries(3),
            "an unknown submission retries nothing"
        );
    }

    #[test]
    fn vanished_submitter_is_cancelled() {
        let (mut o, rx) = opened(1024, 3, SubmitOptions::default());
        o.push_back(job(3, 0));
        o.push_back(job(3, 1));
        o.accepted(3, 1);
        drop(rx);
        o.emit(3, rec(5), 0);
        assert_eq!(o.flush(Instant::now(), false), [3]);
        assert_eq!(o.queued(), 0);
        assert!(o.pop().is_none());
    }
}
