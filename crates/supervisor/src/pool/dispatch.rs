//! Dispatch: queued jobs go to the workers with room in their window, round-robin, one batch
//! of frames per worker per wake-up.

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

    pub(super) fn dispatch(&mut self) {
        let window = self.window();
        let max_tasks = self.cfg.max_tasks;
        let now = self.now;
        self.rate_wake = None;
        // Jobs a key released go first.
        self.requeue_released();
        while self.submissions.queued() > 0 {
            let slots = &self.slots;
            let Some(i) = policy::pick_round_robin(slots.len(), self.cursor, |i| {
                slots[i].has_room(window, max_tasks)
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
                    if let Some(l) = self.slots[i].link_mut() {
                        l.unqueue(mark);
                    }
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
