//! Per-key limits carried out (the rules are in [`crate::keys`]): a job of a full or throttled
//! key is parked at dispatch, and its key's parked jobs go back to the front of the queue when
//! a job of the key gets its final record or the key's rate allows the next start.

use super::Pool;
use crate::job::{Job, SubmissionId};

impl Pool {
    /// `job` got its final record: the parked jobs its key place frees are set aside to go
    /// back to the front of the queue (see [`Pool::requeue_released`]).
    #[inline]
    pub(super) fn key_settled(&mut self, job: &Job) {
        if job.extra.is_none() {
            return;
        }
        self.key_settled_slow(job);
    }

    #[inline(never)]
    fn key_settled_slow(&mut self, job: &Job) {
        let released = self.keys.settled(job, self.now);
        self.released.extend(released.into_iter().rev());
    }

    /// Throttled keys whose time has come.
    pub(super) fn keys_due(&mut self) {
        let released = self.keys.due(self.now);
        self.released.extend(released.into_iter().rev());
    }

    /// Released jobs go back to the front of the queue, each key's oldest first. Done here,
    /// once per wake-up, not where a record frees the place: a released job may itself be
    /// settled at once (its submitter gone, a stop), freeing the next, and a chain of those
    /// must not become a chain of nested calls.
    #[inline]
    pub(super) fn requeue_released(&mut self) {
        if self.released.is_empty() {
            return;
        }
        self.requeue_released_slow();
    }

    #[inline(never)]
    fn requeue_released_slow(&mut self) {
        while !self.released.is_empty() {
            for job in std::mem::take(&mut self.released) {
                self.requeue(job);
            }
        }
    }

    /// A submitter went away: its parked jobs are dropped (nobody wants their records), and
    /// any key place one held is freed.
    pub(super) fn drop_parked_of(&mut self, id: SubmissionId) {
        let mut dropped = self.keys.take_where(self.now, |j| j.submission == id);
        // Its queued jobs were dropped with it; some held their key's place.
        dropped.extend(self.submissions.take_holding());
        for job in dropped {
            self.key_settled(&job);
        }
    }
}
