//! Moving work away from a stalled worker (protocol 3): when a worker's head task has run far
//! longer than the pool's usual task time while another worker has room, the tasks queued
//! behind that head are withdrawn and go back to the queue, to run elsewhere. Without it, with
//! no `--timeout`, they would wait behind a hung task forever while other workers idle.
//!
//! The slot keeps the handshake honest (see `slot/asks.rs`): a task stays the worker's until
//! it answers `Withdrawn` (then it is re-queued here, uncharged: it never started) or runs it.

use std::time::Duration;

use super::Pool;
use crate::msg::Outgoing;
use crate::slot::{Answer, Cause};

/// A head task is stalled once it has run this many times the pool's average task time...
const STALL_FACTOR: f64 = 8.0;
/// ...and at least this long: short tasks vary too much for their average to say "stuck".
const STALL_FLOOR: Duration = Duration::from_secs(1);
/// How often heads are checked for a stall while some could stall.
const STALL_POLL: Duration = Duration::from_millis(250);

impl Pool {
    /// How long a head task runs before the tasks behind it are withdrawn.
    pub(super) fn stall_after(&self) -> Duration {
        let usual = Duration::from_micros((self.task_ewma_us * STALL_FACTOR) as u64);
        usual.max(STALL_FLOOR)
    }

    /// Withdraws the tasks behind each stalled head while another worker has room for them.
    ///
    /// Runs at every wake-up, but looks at the slots only when the stall timer fired, or while
    /// a stalled worker waits for room elsewhere (`stall_check`): the timer is a coarse poll
    /// ([`STALL_POLL`]) armed while some head could stall, not a deadline per slot recomputed
    /// at every wake-up, which the tiny-task path would pay for.
    pub(super) fn move_stalled_work(&mut self) {
        match self.stall_timer {
            Some(t) if t <= self.now => {
                self.stall_timer = None;
                self.stall_check = true;
            }
            Some(_) => {}
            None => {
                if self.slots.iter().any(|s| s.stall_from().is_some()) {
                    self.stall_timer = Some(self.now + STALL_POLL);
                }
            }
        }
        if !std::mem::take(&mut self.stall_check) || self.phase == super::Phase::Stopping {
            return;
        }
        let after = self.stall_after();
        let window = self.window();
        let max_tasks = self.cfg.max_tasks;
        for i in 0..self.slots.len() {
            if self.slots[i].stall_at(after).is_none_or(|t| t > self.now) {
                continue;
            }
            let room = self
                .slots
                .iter()
                .enumerate()
                .any(|(k, s)| k != i && s.has_room(window, max_tasks));
            if !room {
                // Look again when something changes: a worker may get room.
                self.stall_check = true;
                continue;
            }
            let frames: Vec<Outgoing> = self.slots[i]
                .withdraw_behind_head(self.now)
                .into_iter()
                .map(Outgoing::Withdraw)
                .collect();
            self.send_asks(i, &frames);
        }
    }

    /// Sends protocol 3 requests to the worker of slot `i`.
    pub(super) fn send_asks(&mut self, i: usize, frames: &[Outgoing]) {
        if frames.is_empty() {
            return;
        }
        let sent = self.slots[i].link_mut().is_some_and(|l| l.send(frames));
        if !sent {
            // The worker is going down: its exit settles what it held.
            self.slots[i].on_write_failed(self.now, &self.limits);
        }
    }

    /// The worker of slot `i` answered a `Withdraw` for `task`: `returned` (`Withdrawn`) or
    /// not (`Kept`).
    pub(super) fn on_withdraw_answer(&mut self, i: usize, task: u64, returned: bool) {
        let answer = if returned {
            self.slots[i].on_withdrawn(task, self.now, &self.limits)
        } else {
            self.slots[i].on_kept(task)
        };
        match answer {
            Answer::Returned { running, effects } => {
                self.apply(i, effects);
                let mut job = running.job;
                // It never started: that dispatch was no attempt.
                if job.chunks == 0 {
                    job.attempts = job.attempts.saturating_sub(1);
                }
                self.requeue(job);
            }
            Answer::Kept | Answer::Ignored => {}
            Answer::Fault(fault) => {
                tracing::warn!(
                    worker = i,
                    pid = self.slots[i].pid(),
                    "protocol violation: {fault}; killing worker"
                );
                self.kill(i, Cause::Protocol(fault));
            }
        }
    }
}
