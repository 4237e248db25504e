//! Stopping. Graceful: stop intake, finish what was accepted (within the stop grace), send
//! every worker the termination frame, give them the exit timeout, kill stragglers. Fast: kill
//! every worker and record everything unfinished as `shutdown`. Either way the pool exits only
//! once every slot has stopped and no accepted event is owed a record.

use super::{Phase, Pool};
use crate::slot::Cause;

impl Pool {
    /// Stops taking events; `fast` kills the workers at once.
    pub(super) fn begin_stop(&mut self, fast: bool) {
        if fast {
            self.stop_fast("herd was stopped");
            return;
        }
        if self.phase == Phase::Running {
            match self.submissions.unanswered() {
                0 => tracing::info!("stopping: every accepted event is answered"),
                n => tracing::info!(
                    unanswered = n,
                    grace_secs = self.cfg.stop_grace.as_secs_f64(),
                    "stopping: finishing accepted events"
                ),
            }
            self.phase = Phase::Draining {
                deadline: self.now + self.cfg.stop_grace,
            };
            self.reload_queue.clear();
        }
    }

    /// Kills every worker and records everything unfinished as `shutdown`.
    pub(super) fn stop_fast(&mut self, why: &str) {
        tracing::info!("stopping now: {why}");
        self.phase = Phase::Stopping;
        self.reload_queue.clear();
        self.fail_waiting(&format!("{why} before the event ran"));
        for i in 0..self.slots.len() {
            self.kill(i, Cause::Stop);
        }
    }

    /// While draining: a fast stop once the grace has run out, and the termination frames once
    /// nothing accepted is left to run.
    pub(super) fn maybe_stop(&mut self) {
        let Phase::Draining { deadline } = self.phase else {
            return;
        };
        if deadline <= self.now {
            self.stop_fast("the stop grace period ran out");
            return;
        }
        let busy = self.slots.iter().any(|s| s.inflight_len() > 0);
        let waiting =
            self.submissions.queued() > 0 || self.keys.parked() > 0 || !self.released.is_empty();
        if waiting || !self.retries.is_empty() || busy {
            return;
        }
        self.phase = Phase::Stopping;
        tracing::debug!("all events answered; sending termination frames");
        for i in 0..self.slots.len() {
            self.transition(i, |slot, now, limits| slot.stop(now, limits));
        }
    }

    /// The pool may exit once it is stopping, every slot has stopped, and every accepted
    /// event has its record.
    pub(super) fn finished(&mut self) -> bool {
        if self.phase != Phase::Stopping || !self.slots.iter().all(|s| s.is_stopped()) {
            return false;
        }
        self.account_for_everything();
        true
    }
}
