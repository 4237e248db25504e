//! Time limits beyond one attempt, carried out (the rules are in [`crate::limits`]): queued
//! events out of time are swept on a timer, so they get their record promptly even while no
//! worker is free, and retries waiting out their delay get theirs when their deadline passes.
//! (Dispatch checks each job it takes too, and a running task's deadline is the slot's.)

use tokio::time::Instant;

use super::Pool;
use crate::limits::{self, SWEEP_BUDGET, SWEEP_EVERY};

impl Pool {
    /// When the queue is next swept: only while some queued event may run out of time.
    pub(super) fn next_sweep(&self) -> Option<Instant> {
        let waiting = self.submissions.queued() > 0 || self.keys.parked() > 0;
        (self.time_limited && waiting).then_some(self.next_sweep)
    }

    /// Records the queued events out of time (at most [`SWEEP_BUDGET`] looked at), if a sweep
    /// is due.
    pub(super) fn sweep_out_of_time(&mut self) {
        if !self.time_limited || self.next_sweep > self.now {
            return;
        }
        self.next_sweep = self.now + SWEEP_EVERY;
        for (job, kind) in self.submissions.take_out_of_time(self.now, SWEEP_BUDGET) {
            self.fail(job, kind, limits::message(kind).to_string());
        }
        let now = self.now;
        for job in self
            .keys
            .take_where(now, |j| limits::verdict(j, now).is_some())
        {
            let kind = limits::verdict(&job, now).unwrap_or(crate::record::ErrorKind::Deadline);
            self.fail(job, kind, limits::message(kind).to_string());
        }
    }

    /// Retries whose deadline passed during their delay get their record now.
    pub(super) fn retries_past_deadline(&mut self) {
        for job in self.retries.past_deadline(self.now) {
            self.fail(
                job,
                crate::record::ErrorKind::Deadline,
                limits::message(crate::record::ErrorKind::Deadline).to_string(),
            );
        }
    }
}
