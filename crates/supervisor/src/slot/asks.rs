//! Protocol 3's requests to a worker, as part of the slot's state machine: taking back tasks it
//! has not started (`Withdraw`), and asking it to stop one it has (`Cancel`).
//!
//! # Who owns a task
//! A task sent to a worker stays in the slot's in-flight list until the worker gives it up, in
//! exactly one of two ways: a `Done` (it ran it), or a `Withdrawn` (it had not started it, and
//! never will). A `Withdraw` changes nothing by itself: the task stays in flight, charged to the
//! worker as before, until the answer comes. So at every moment one party owns each task:
//! - the answer `Withdrawn` hands it back (the pool re-queues it, uncharged);
//! - the answer `Kept` says the worker started it or answered it already: its `Done` follows
//!   or came before. Either way, nothing moves;
//! - a `Done` that crossed the `Withdraw` settles the task as usual; the worker's answer to the
//!   `Withdraw` is then `Kept` (it is remembered here as an open ask, so that answer is
//!   expected). A `Withdrawn` after the `Done` would give back a task that ran: a fault;
//! - a crash or a kill before the answer settles the task with the rest of what the worker
//!   held, as for any crash: the worker is gone, so it can neither run it nor give it back.
//!
//! An answer to no open `Withdraw` (an unknown id, or a second answer) is a protocol fault.
//!
//! A cancel is the existing mark on the job (`Slot::cancel`); for a protocol 3 worker the pool
//! sends `Cancel` and records the ask here instead of killing at once. Any `Done` for the task
//! answers it (and the mark makes its record `cancelled`); if none comes within the exit timeout,
//! `Slot::on_deadline` kills the worker as it would have at once before protocol 3.

use std::time::Duration;

use tokio::time::Instant;

use super::{Effect, Effects, Slot, State};
use crate::job::Running;

/// A request sent to the current process and not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ask {
    pub id: u64,
    pub kind: AskKind,
    /// When it was sent (a cancel's grace runs from here).
    pub at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AskKind {
    Withdraw,
    Cancel,
}

/// An answer to a `Withdraw`, as the slot saw it.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The worker gave the task back: the pool re-queues it. `effects`: the termination frame
    /// of a retiring worker that now holds nothing.
    Returned { running: Running, effects: Effects },
    /// The worker keeps the task: nothing changes.
    Kept,
    /// An answer to no open `Withdraw`, or a task given back after its `Done`: a protocol
    /// fault, described.
    Fault(String),
    /// The slot has no worker that could send it, or its worker broke the protocol.
    Ignored,
}

impl<L> Slot<L> {
    /// Whether the current process speaks protocol 3 (withdrawals, cancels, `retry_after`).
    pub fn speaks_v3(&self) -> bool {
        self.protocol >= herd_proto::WITHDRAW_VERSION
    }

    /// When the head task of this worker started, if it could stall: only for a ready protocol
    /// 3 worker with tasks queued behind its head, not already stalled. (It stalls once it has
    /// run the pool's stall time; the pool adds that once, not per slot.)
    pub fn stall_from(&self) -> Option<Instant> {
        match &self.state {
            State::Ready {
                inflight,
                stalled: false,
                ..
            } if inflight.len() > super::running_len(inflight) && self.speaks_v3() => {
                Some(inflight.front()?.started)
            }
            _ => None,
        }
    }

    /// When the head task of this worker counts as stalled, having run `after` (see
    /// [`Slot::stall_from`]).
    pub fn stall_at(&self, after: Duration) -> Option<Instant> {
        self.stall_from().map(|t| t + after)
    }

    /// The head task stalled: the tasks queued behind it are to be withdrawn. Marks the worker
    /// stalled (no new task until its head is answered), opens a `Withdraw` ask for each, and
    /// returns their ids for the pool to send.
    pub fn withdraw_behind_head(&mut self, now: Instant) -> Vec<u64> {
        if !self.speaks_v3() {
            return Vec::new();
        }
        let State::Ready {
            pid,
            inflight,
            stalled,
            ..
        } = &mut self.state
        else {
            return Vec::new();
        };
        if *stalled {
            return Vec::new();
        }
        *stalled = true;
        let asks = &mut self.asks;
        // Not the rest of a running batch: it started with the head (its answer is `Kept`).
        let running = super::running_len(inflight);
        let ids: Vec<u64> = inflight
            .iter()
            .skip(running)
            .map(|r| r.job.id)
            .filter(|&id| !asks.iter().any(|a| a.id == id))
            .collect();
        asks.extend(ids.iter().map(|&id| Ask {
            id,
            kind: AskKind::Withdraw,
            at: now,
        }));
        tracing::info!(
            worker = self.index,
            pid = *pid,
            head = inflight.front().map(|h| h.job.seq),
            withdrawn = ids.len(),
            "head task stalled; withdrawing the tasks behind it"
        );
        ids
    }

    /// A task marked cancelled (see [`Slot::cancel`]) on a worker that can stop it itself: the
    /// pool sends `Cancel` instead of killing, and this opens the ask (its grace is the exit
    /// timeout). `false` if the worker cannot be asked (an older protocol, or it is no longer
    /// writable): kill it.
    pub fn ask_cancel(&mut self, task: u64, now: Instant) -> bool {
        if !self.speaks_v3() || !matches!(self.state, State::Ready { .. } | State::Retiring { .. })
        {
            return false;
        }
        if !self
            .asks
            .iter()
            .any(|a| a.id == task && a.kind == AskKind::Cancel)
        {
            self.asks.push(Ask {
                id: task,
                kind: AskKind::Cancel,
                at: now,
            });
        }
        true
    }

    /// When the oldest open cancel runs out of grace.
    pub(super) fn cancel_due(&self, limits: &super::SlotLimits) -> Option<Instant> {
        self.asks
            .iter()
            .filter(|a| a.kind == AskKind::Cancel)
            .map(|a| a.at + limits.exit_timeout)
            .min()
    }

    /// The task of a cancel whose grace is over at `now`.
    pub(super) fn overdue_cancel(&self, now: Instant, limits: &super::SlotLimits) -> Option<u64> {
        self.asks
            .iter()
            .find(|a| a.kind == AskKind::Cancel && a.at + limits.exit_timeout <= now)
            .map(|a| a.id)
    }

    /// Takes the open `Withdraw` ask for `task`, or describes the fault of an answer to none.
    fn answer(&mut self, task: u64, what: &str) -> Result<(), String> {
        match self
            .asks
            .iter()
            .position(|a| a.id == task && a.kind == AskKind::Withdraw)
        {
            Some(pos) => {
                self.asks.swap_remove(pos);
                Ok(())
            }
            None => Err(format!(
                "{what} for task {task}, which herd did not ask it to withdraw (or it answered \
                 already)"
            )),
        }
    }

    /// The worker answered `Kept` for `task`.
    pub fn on_kept(&mut self, task: u64) -> Answer {
        if self.faulted() || self.pid().is_none() {
            return Answer::Ignored;
        }
        match self.answer(task, "Kept") {
            Ok(()) => Answer::Kept,
            Err(fault) => Answer::Fault(fault),
        }
    }

    /// The worker answered `Withdrawn` for `task`: it gives the task back. Counts from the
    /// same states as a result (it was sent before the worker died), unless the worker broke
    /// the protocol.
    pub fn on_withdrawn(&mut self, task: u64, now: Instant, limits: &super::SlotLimits) -> Answer {
        if self.faulted() || self.pid().is_none() {
            return Answer::Ignored;
        }
        if let Err(fault) = self.answer(task, "Withdrawn") {
            return Answer::Fault(fault);
        }
        let inflight = match &mut self.state {
            State::Ready { inflight, .. }
            | State::Retiring { inflight, .. }
            | State::Leaving { inflight, .. }
            | State::Dying { inflight, .. }
            | State::Exited { inflight, .. } => Some(inflight),
            _ => None,
        };
        let Some((pos, inflight)) =
            inflight.and_then(|f| Some((f.iter().position(|r| r.job.id == task)?, f)))
        else {
            return Answer::Fault(format!(
                "Withdrawn for task {task}, which it had already answered"
            ));
        };
        let Some(running) = super::batch::remove(inflight, pos) else {
            return Answer::Ignored;
        };
        // A cancel that crossed the withdrawal finds nothing to stop: its grace must not run
        // out on a task the worker no longer holds.
        self.asks.retain(|a| a.id != task);
        if pos == 0 {
            // Answered everything before it and gave this one back: it starts the next now.
            if let Some(next) = inflight.front_mut() {
                next.started = now;
            }
        }
        let emptied = inflight.is_empty();
        tracing::debug!(
            worker = self.index,
            seq = running.job.seq,
            "worker gave back a task it had not started"
        );
        let effects = match &self.state {
            State::Retiring { .. } if emptied => {
                self.exit_now(now, limits);
                vec![Effect::Shutdown]
            }
            _ => Vec::new(),
        };
        Answer::Returned { running, effects }
    }
}
