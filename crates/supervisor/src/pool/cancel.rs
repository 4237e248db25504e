//! Cancelling one accepted event (a control request naming its submission and `seq`).
//!
//! A job is in exactly one place (see `settle.rs`), so a cancel looks in each: queued or
//! waiting out a retry delay, it is taken out and gets its `cancelled` record at once; held by
//! a worker, the job is marked, and the worker is asked to stop it (protocol 3: a `Cancel`
//! frame, see `slot/asks.rs`) or, if it cannot be asked or does not answer within the exit
//! timeout, stopped (`Cause::Cancelled`) and replaced, the other tasks it held going back
//! uncharged as after a crash. The mark travels with the
//! job, so whichever way its attempt ends first (the kill, a `Done` that crossed it, a crash,
//! a stop) the one record is `cancelled`: `settle.rs` checks it on every path out.

use super::Pool;
use crate::job::{Job, SubmissionId};
use crate::record::ErrorKind;
use crate::slot::Cause;

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CancelOutcome {
    /// It was queued (or waiting to be retried): removed, its `cancelled` record sent.
    Queued,
    /// A worker held it: the worker was asked to stop it, or is being stopped; the
    /// `cancelled` record follows its answer or its exit.
    Running,
    /// It is not in the pool: it was already answered (or never accepted).
    Answered,
    /// No such submission is open.
    NoSubmission,
}

impl CancelOutcome {
    /// Whether the event will get a `cancelled` record.
    pub fn cancelled(self) -> bool {
        matches!(self, CancelOutcome::Queued | CancelOutcome::Running)
    }

    /// Says what happened, for a reply or a log line.
    pub fn describe(self) -> &'static str {
        match self {
            CancelOutcome::Queued => "cancelled (it was queued)",
            CancelOutcome::Running => "cancelled (its worker is stopping it)",
            CancelOutcome::Answered => "already answered (or never accepted): nothing to cancel",
            CancelOutcome::NoSubmission => "no such submission is open",
        }
    }
}

impl Pool {
    /// Cancels event `seq` of `submission`.
    pub(super) fn cancel_event(&mut self, submission: SubmissionId, seq: u64) -> CancelOutcome {
        if !self.submissions.contains(submission) {
            return CancelOutcome::NoSubmission;
        }
        if let Some(job) = self.submissions.remove_queued(submission, seq) {
            self.fail_cancelled(job);
            return CancelOutcome::Queued;
        }
        if let Some(job) = self.retries.remove(submission, seq) {
            self.fail_cancelled(job);
            return CancelOutcome::Queued;
        }
        if let Some(job) = self.keys.remove(submission, seq, self.now) {
            self.fail_cancelled(job);
            return CancelOutcome::Queued;
        }
        for i in 0..self.slots.len() {
            let Some(task) = self.slots[i].holds(submission, seq) else {
                continue;
            };
            if self.slots[i].cancel(task) == Some(true) {
                if self.slots[i].ask_cancel(task, self.now) {
                    tracing::debug!(worker = i, seq, "asking the worker to cancel a task");
                    self.send_asks(i, &[crate::msg::Outgoing::Cancel(task)]);
                } else {
                    tracing::debug!(worker = i, seq, "cancelling a task its worker holds");
                    self.kill(i, Cause::Cancelled(task));
                }
            }
            return CancelOutcome::Running;
        }
        CancelOutcome::Answered
    }

    /// The `cancelled` record of `job`.
    pub(super) fn fail_cancelled(&mut self, job: Job) {
        self.fail(job, ErrorKind::Cancelled, "cancelled".to_string());
    }
}
