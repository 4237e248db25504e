//! Batch dispatch (protocol 3): a worker that declared `Batching` gets queued jobs in one
//! `Batch` frame, formed by the rule of `crate::batch` with every per-event check a single
//! dispatch makes (time limits, keys, rate limits), in the queue's order.

use super::Pool;
use crate::batch::{BatchConfig, Fit, Former};
use crate::job::Job;
use herd_proto::BatchTaskRef;

/// What the dispatch loop does after a batch.
pub(super) enum Flow {
    /// Look for the next worker with room.
    Next,
    /// Stop dispatching: a rate limit holds the rest back (its wake-up is set).
    Stop,
}

impl Pool {
    /// The batches of `submission`'s events: its own, or the pool's, if they batch at all.
    pub(super) fn batch_config(&self, submission: u64) -> Option<BatchConfig> {
        self.submissions
            .batch(submission)
            .or(self.cfg.batch)
            .filter(BatchConfig::enabled)
    }

    /// The window of slot `i`: a batching worker's is at least two batches (one running, one
    /// waiting), so that batches are not cut short by the window alone.
    pub(super) fn slot_window(&self, i: usize, window: usize) -> usize {
        let batch = self.slots[i].batch_max().min(self.batch_ceiling) as usize;
        if batch > 1 {
            window.max(2 * batch)
        } else {
            window
        }
    }

    /// Whether slot `i` takes no more jobs in this dispatch: it holds a partial batch back.
    pub(super) fn batch_holding(&self, i: usize) -> bool {
        self.batch_held.get(i).copied().unwrap_or(false)
    }

    /// Dispatch of `first` (popped, in time) to batching worker `i` under `cfg`: a batch
    /// starting with it, a single task if no other may join (`Err(first)`: the caller sends
    /// it as usual), or nothing yet (it goes back) while a busy worker waits for more.
    pub(super) fn dispatch_batch(
        &mut self,
        i: usize,
        first: Job,
        cfg: BatchConfig,
        window: usize,
    ) -> Result<Flow, Job> {
        let now = self.now;
        let room = self.slots[i].room(window, self.cfg.max_tasks);
        let mut former = Former::new(
            &first,
            cfg,
            self.slots[i].batch_max(),
            room,
            self.cfg.max_frame,
        );
        if former.limit() < 2 {
            return Err(first);
        }
        // Too few queued to fill it, and the worker busy: hold back until the pool's batch
        // deadline (an idle worker never waits).
        if !self.slots[i].is_idle() && self.submissions.queued() + 1 < former.limit() {
            let due = *self.batch_due.get_or_insert(now + cfg.wait);
            if due > now {
                self.submissions.push_front(first);
                self.batch_held.resize(self.slots.len(), false);
                self.batch_held[i] = true;
                return Ok(Flow::Next);
            }
        }
        let Some(first) = self.admit_key(first) else {
            return Ok(Flow::Next);
        };
        self.count_start(&first);
        let mut members = Vec::with_capacity(former.limit());
        members.push(first);
        let mut passed_over = Vec::new();
        let mut flow = Flow::Next;
        while !former.is_full() && self.submissions.queued() > 0 {
            if let Some(Err(at)) = self.rate.as_mut().map(|l| l.check(now)) {
                self.rate_wake = Some(at);
                flow = Flow::Stop;
                break;
            }
            let job = match self.submissions.pop_limited(now) {
                Ok(job) => job,
                Err(wake) => {
                    self.rate_wake = wake;
                    flow = Flow::Stop;
                    break;
                }
            };
            if let Some(kind) = crate::limits::verdict(&job, now) {
                self.fail(job, kind, crate::limits::message(kind).to_string());
                self.requeue_released();
                continue;
            }
            match former.offer(&job, self.batch_config(job.submission)) {
                Fit::Join => {}
                Fit::PassOver => {
                    passed_over.push(job);
                    continue;
                }
                Fit::Stop => {
                    self.submissions.push_front(job);
                    break;
                }
            }
            let len = job.payload.len();
            let Some(job) = self.admit_key(job) else {
                former.unjoin(len);
                continue;
            };
            self.count_start(&job);
            members.push(job);
        }
        // Passed over for another key's batch: they keep their places, in order.
        for job in passed_over.into_iter().rev() {
            self.submissions.push_front(job);
        }
        for job in &mut members {
            job.attempts += 1;
            job.dispatched = true;
        }
        if members.len() == 1 {
            let Some(job) = members.pop() else {
                return Ok(flow);
            };
            // Encoded into the worker's link now (see `Link::queue_task`).
            let mark = self.slots[i]
                .link_mut()
                .map(|l| l.queue_task(job.id, job.attempts, &job.payload));
            match self.slots[i].assign(job, now) {
                Ok(()) => {}
                Err(job) => {
                    self.unqueue(i, mark);
                    self.undispatch(vec![job]);
                }
            }
            return Ok(flow);
        }
        let mark = self.slots[i].link_mut().map(|l| {
            l.queue_batch(members.iter().map(|j| BatchTaskRef {
                id: j.id,
                attempt: j.attempts,
                payload: &j.payload,
            }))
        });
        let n = members.len() as u64;
        match self.slots[i].assign_batch(members, now) {
            Ok(()) => {
                self.stats.batches += 1;
                self.stats.batched_events += n;
                self.summary.batches += 1;
                self.summary.batched_events += n;
            }
            Err(jobs) => {
                self.unqueue(i, mark);
                self.undispatch(jobs);
            }
        }
        Ok(flow)
    }

    /// Takes back what dispatch queued on worker `i`'s link since `mark`.
    pub(super) fn unqueue(&mut self, i: usize, mark: Option<usize>) {
        if let (Some(link), Some(mark)) = (self.slots[i].link_mut(), mark) {
            link.unqueue(mark);
        }
    }

    /// `job` past its key's limits (it is parked if its key is full or throttled).
    fn admit_key(&mut self, job: Job) -> Option<Job> {
        if job.extra.is_none() {
            return Some(job);
        }
        self.keys.admit(job, self.now)
    }

    /// Counts a start of `job` against the pool's and its submission's rate limits.
    fn count_start(&mut self, job: &Job) {
        if let Some(l) = self.rate.as_mut() {
            l.start(self.now);
        }
        self.submissions.rate_started(job.submission, self.now);
    }

    /// Jobs a worker could not take after all (`room` said it could): back to the queue, the
    /// dispatch no attempt. (Their rate-limit starts stay counted; this does not happen.)
    fn undispatch(&mut self, jobs: Vec<Job>) {
        for mut job in jobs.into_iter().rev() {
            job.attempts -= 1;
            self.requeue(job);
        }
    }
}
