//! The circuit breaker: what the pool does when its workers complete their handshake and then
//! always die. Each such death charges the event it held, so every event would still get its
//! record, but only after `--retries` + 1 deaths each, paced by restarts: minutes for a few
//! hundred events, with nothing saying why. So the pool counts workers in a row that died on
//! their own after their handshake without completing a task (any completed task resets the
//! count). At [`trip_after`] it opens: it logs an error, shows it in `herd status` and
//! `/metrics`, and answers every queued event at once with a `crashed` record saying so, but
//! one: the probe, which a worker still gets (the slots keep restarting, with their backoff).
//! The first task any worker completes closes the breaker. A single poison event kills at most
//! `--retries` + 1 workers, so it cannot open it alone (a death that held several tasks, which
//! blames none of them, is not counted: see `crate::blame`).

use tokio::time::Instant;

use super::Pool;
use crate::record::ErrorKind;

/// An open breaker.
#[derive(Debug, Clone)]
pub(super) struct Open {
    pub since: Instant,
    /// What the last worker died of.
    pub last: String,
}

/// Workers dying in a row, before any completes a task, that open the breaker: one more than
/// three poison events' worth, so that up to three such events never do. Since a death that
/// held several tasks blames none and its tasks rerun alone (`crate::blame`), a poison event's
/// `--retries` + 1 deaths come one after another, each the first task of a new worker: three
/// poison events in a burst make 3 × (`--retries` + 1) such deaths in a row, nothing more.
pub(super) fn trip_after(retries: u32) -> u32 {
    retries
        .saturating_add(1)
        .saturating_mul(3)
        .saturating_add(1)
}

impl Pool {
    /// A worker died after its handshake without completing a task (`Effect::EarlyDeath`).
    pub(super) fn on_early_death(&mut self, last: String) {
        self.early_deaths = self.early_deaths.saturating_add(1);
        if let Some(open) = &mut self.breaker {
            open.last = last;
            return;
        }
        if self.early_deaths < trip_after(self.cfg.retries) {
            return;
        }
        tracing::error!(
            deaths = self.early_deaths,
            program = self.cfg.program(),
            last = %last,
            "circuit breaker open: workers keep dying after their handshake without completing \
             a task; queued events are answered as crashed until a worker completes one"
        );
        self.breaker = Some(Open {
            since: self.now,
            last,
        });
    }

    /// A worker completed a task: the workers can work.
    pub(super) fn on_task_completed(&mut self) {
        self.early_deaths = 0;
        if let Some(open) = self.breaker.take() {
            tracing::warn!(
                open_ms = self.now.saturating_duration_since(open.since).as_millis() as u64,
                "circuit breaker closed: a worker completed a task"
            );
        }
    }

    /// While the breaker is open, answers every queued event at once but the probe: one
    /// event left queued when no worker holds any and one is ready to take it.
    pub(super) fn shed_while_open(&mut self) {
        let Some(open) = &self.breaker else {
            return;
        };
        // A probe only for a worker ready to take it now: one left waiting for a slot in
        // backoff could wait for ever.
        let window = self.window();
        let probing = self.slots.iter().any(|s| s.inflight_len() > 0)
            || !self
                .slots
                .iter()
                .any(|s| s.has_room(window, self.cfg.max_tasks));
        if self.submissions.queued() <= usize::from(!probing) {
            return;
        }
        let message = format!(
            "not run: the circuit breaker is open ({} workers in a row died after their \
             handshake without completing a task; the last: {})",
            self.early_deaths, open.last
        );
        let probe = if probing {
            None
        } else {
            self.submissions.pop()
        };
        for job in self.submissions.take_all() {
            self.fail(job, ErrorKind::Crashed, message.clone());
        }
        if let Some(job) = probe {
            self.submissions.push_front(job);
        }
    }
}
