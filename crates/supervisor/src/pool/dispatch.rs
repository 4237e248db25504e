//! Dispatch: queued jobs go to the workers with room in their window, round-robin, one batch
//! of frames per worker per wake-up.

use super::batch::Flow;
use super::Pool;
use crate::policy;

impl Pool {
    /// The window in effect: fixed, or automatic (2 until enough tasks were measured).
    pub(super) fn window(&self) -> usize {
        match self.cfg.window {
            0 if self.task_samples < policy::AUTO_WINDOW_WARMUP => 2,
            0 => policy::auto_window(self.task_ewma_us),
            w => w,
        }
    }

    /// How `job` batches on slot `i`: only when the worker takes batches (the common case
    /// costs one comparison).
    #[inline]
    fn batch_config_for(&self, i: usize, job: &crate::job::Job) -> Option<crate::BatchConfig> {
        if self.slots[i].batch_max() < 2 {
            return None;
        }
        self.batch_config(job.submission)
    }

    /// A ready worker that holds nothing and may take a task: `first` if it can, else the next
    /// from there on.
    fn idle_slot(&self, first: usize, window: usize) -> Option<usize> {
        let window_of = |i| self.slot_window(i, window);
        crate::slot::idle_from(&self.slots, first, window_of, self.cfg.max_tasks)
    }

    pub(super) fn dispatch(&mut self) {
        let window = self.window();
        let max_tasks = self.cfg.max_tasks;
        let now = self.now;
        self.rate_wake = None;
        // Jobs a key released go first.
        self.requeue_released();
        self.batch_held.clear();
        while self.submissions.queued() > 0 {
            let pool = &*self;
            let Some(i) = policy::pick_round_robin(pool.slots.len(), pool.cursor, |i| {
                pool.slots[i].has_room(pool.slot_window(i, window), max_tasks)
                    && !pool.batch_holding(i)
            }) else {
                break;
            };
            // The pool's rate limit, checked only once a worker has room: its wait is the
            // limit's doing, not the workers'.
            if let Some(Err(at)) = self.rate.as_mut().map(|l| l.check(now)) {
                self.rate_wake = Some(at);
                break;
            }
            self.cursor = i + 1;
            // Past the submissions a limit of their own holds back, to the others'.
            let job = match self.submissions.pop_limited(now) {
                Ok(job) => job,
                Err(wake) => {
                    self.rate_wake = wake;
                    break;
                }
            };
            // Out of time while queued: its record now, and the worker's place to the next
            // (no start counted against either rate limit).
            if let Some(kind) = crate::limits::verdict(&job, now) {
                self.fail(job, kind, crate::limits::message(kind).to_string());
                // Its record may have freed a place of its key.
                self.requeue_released();
                continue;
            }
            // A solo job (its worker died ambiguously, see `blame`) runs on a worker that holds
            // nothing, or waits at the front of the queue until one does.
            let i = if job.batch_cap == crate::blame::SOLO {
                match self.idle_slot(i, window) {
                    Some(idle) => idle,
                    None => {
                        self.submissions.push_front(job);
                        break;
                    }
                }
            } else {
                i
            };
            // A worker that takes batches, and an event whose submission batches: see `batch`.
            let job = match self.batch_config_for(i, &job) {
                None => job,
                Some(cfg) => {
                    let window = self.slot_window(i, window);
                    match self.dispatch_batch(i, job, cfg, window) {
                        Ok(Flow::Next) => continue,
                        Ok(Flow::Stop) => break,
                        Err(job) => job,
                    }
                }
            };
            // Its key full or throttled: parked, and the worker's place goes to the next job.
            // (Tested here, not in a call: most jobs have no key, and a job is moved whole.)
            let mut job = if job.extra.is_none() {
                job
            } else {
                match self.keys.admit(job, now) {
                    Some(job) => job,
                    None => continue,
                }
            };
            job.attempts += 1;
            let submission = job.submission;
            let was_dispatched = std::mem::replace(&mut job.dispatched, true);
            // Encoded into the worker's link now, sent once per worker after the loop.
            let Some(mark) = self.slots[i]
                .link_mut()
                .map(|l| l.queue_task(job.id, job.attempts, &job.payload))
            else {
                job.attempts -= 1;
                job.dispatched = was_dispatched;
                self.requeue(job);
                break;
            };
            match self.slots[i].assign(job, now) {
                Ok(()) => {
                    if let Some(l) = self.rate.as_mut() {
                        l.start(now);
                    }
                    self.submissions.rate_started(submission, now);
                }
                Err(mut job) => {
                    // Not ready after all (has_room said it was): the job goes back.
                    self.unqueue(i, Some(mark));
                    job.attempts -= 1;
                    job.dispatched = was_dispatched;
                    self.requeue(job);
                    break;
                }
            }
        }
        if self.submissions.queued() == 0 {
            if let Some(l) = self.rate.as_mut() {
                l.idle(now);
            }
        }
        if !self.batch_held.contains(&true) {
            // Nothing held back: the next partial batch waits its own full wait.
            self.batch_due = None;
        }
        // One write per worker per wake-up, however many tasks it got.
        for slot in &mut self.slots {
            let Some(link) = slot.link_mut().filter(|l| l.queued()) else {
                continue;
            };
            if !link.flush() {
                // The writer is gone, so the worker is going down: its exit settles the tasks.
                slot.on_write_failed(now, &self.limits);
            }
        }
    }
}
