//! Batches, as part of the slot's state machine (see `crate::batch`): whether the current
//! process takes them, handing it one, and which of its in-flight tasks started together.
//!
//! A batch's tasks sit in the in-flight list like single tasks, in the order sent; each but
//! the first is marked [`Running::batched`]. The head and the marked tasks right behind it are
//! running (one handler call), which decides who is a suspect when the worker dies and what may
//! still be withdrawn.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::{Slot, State};
use crate::job::{Job, Running};

impl<L> Slot<L> {
    /// The worker said its handler takes up to `max` tasks per call (its `Batching`, checked
    /// by the link: protocol 3, first frame, `max` at least 1).
    pub fn on_batching(&mut self, max: u32) {
        tracing::debug!(worker = self.index, max, "worker takes batches");
        self.batching = max;
    }

    /// Tasks the current process takes per handler call (0 or 1: single tasks only).
    pub fn batch_max(&self) -> u32 {
        self.batching
    }

    /// Whether a ready worker holds nothing: a partial batch goes to it at once.
    pub fn is_idle(&self) -> bool {
        matches!(&self.state, State::Ready { inflight, .. } if inflight.is_empty())
    }

    /// How many more tasks a ready worker may be sent within `window` and `max_tasks` (0 when
    /// [`Slot::has_room`] says no).
    pub fn room(&self, window: usize, max_tasks: Option<u64>) -> usize {
        if !self.has_room(window, max_tasks) {
            return 0;
        }
        let State::Ready { inflight, sent, .. } = &self.state else {
            return 0;
        };
        let budget = max_tasks.map_or(usize::MAX, |m| {
            usize::try_from(m.saturating_sub(*sent)).unwrap_or(usize::MAX)
        });
        window.saturating_sub(inflight.len()).min(budget)
    }

    /// Hands a batch to a ready worker (check [`Slot::room`] first); gives it back if the slot
    /// is not ready.
    pub fn assign_batch(&mut self, jobs: Vec<Job>, now: Instant) -> Result<(), Vec<Job>> {
        match &mut self.state {
            State::Ready { inflight, sent, .. } => {
                *sent += jobs.len() as u64;
                for (k, mut job) in jobs.into_iter().enumerate() {
                    job.chunks = 0;
                    inflight.push_back(Running {
                        job,
                        started: now,
                        batched: k > 0,
                    });
                }
                Ok(())
            }
            _ => Err(jobs),
        }
    }
}

/// Where a solo job may go (see `crate::blame`): the first slot from `from` on, round the ring,
/// whose worker is ready, holds nothing and may take a task within `window(i)` and `max_tasks`.
pub(crate) fn idle_from<L>(
    slots: &[Slot<L>],
    from: usize,
    window: impl Fn(usize) -> usize,
    max_tasks: Option<u64>,
) -> Option<usize> {
    let n = slots.len();
    (0..n)
        .map(|k| (from + k) % n)
        .find(|&i| slots[i].is_idle() && slots[i].has_room(window(i), max_tasks))
}

/// How many tasks at the front of `inflight` are running: the head, and the rest of its batch.
pub(crate) fn running_len(inflight: &VecDeque<Running>) -> usize {
    match inflight.front() {
        None => 0,
        Some(_) => 1 + inflight.iter().skip(1).take_while(|r| r.batched).count(),
    }
}

/// Takes task `pos` out of `inflight`, keeping the batch marks true: when the first task of a
/// batch leaves, the next one of that batch becomes its first.
pub(crate) fn remove(inflight: &mut VecDeque<Running>, pos: usize) -> Option<Running> {
    let running = inflight.remove(pos)?;
    if !running.batched {
        if let Some(next) = inflight.get_mut(pos).filter(|n| n.batched) {
            next.batched = false;
        }
    }
    Some(running)
}
