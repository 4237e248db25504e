//! Every deadline the pool keeps, armed in one place and fired in one place: each owner says
//! when it next needs attention and what to do then (the slots' start, task and exit timeouts
//! and backoffs; retries waiting out their delay; outboxes held for batching; partial batches
//! held for busy workers; the stop grace;
//! the memory check; the autoscaler's samples).

use std::time::Duration;

use tokio::time::Instant;

use super::{Phase, Pool};
use crate::link::Link;
use crate::{autoscale, process};

/// How often workers' resident memory is compared with `max_rss`.
const RSS_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How often the pool's memory (for `--max-pool-rss`) is summed: a read of
/// `/proc/PID/statm` per worker, so not on every autoscaler sample.
const POOL_RSS_EVERY: Duration = Duration::from_millis(500);

impl Pool {
    /// The earliest deadline of all.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let stop = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            _ => None,
        };
        let rss = self.cfg.max_rss.map(|_| self.next_rss_check);
        let autoscale = (self.autoscaler.is_some() && self.phase == Phase::Running)
            .then_some(self.next_autoscale);
        let slots = self.slots.iter().filter_map(|s| s.deadline(&self.limits));
        // A held worker's limit (see `release_held`); once past, only new work matters, and
        // that wakes the pool anyway.
        let held = self
            .slots
            .iter()
            .filter_map(|s| Some(s.held()?.0 + crate::backlog::HELD_LIMIT))
            .filter(|&t| t > self.now);
        [
            stop,
            rss,
            autoscale,
            self.retries.deadline(),
            self.submissions.next_flush(),
            self.rate_wake,
            self.next_sweep(),
            self.keys.next_wake(),
            self.stall_timer,
            self.batch_due,
        ]
        .into_iter()
        .flatten()
        .chain(slots)
        .chain(held)
        .min()
    }

    /// Whatever is due now. (Outboxes are flushed after every wake-up, and the stop grace is
    /// checked before every wait, so neither needs anything here.)
    pub(super) fn on_tick(&mut self) {
        self.check_rss();
        self.autoscale();
        self.retries_due();
        self.keys_due();
        self.sweep_out_of_time();
        for i in 0..self.slots.len() {
            let unread = self.slots[i]
                .overdue_drain(self.now)
                .is_some_and(Link::unread);
            if unread && self.slots[i].extend_drain(self.now) {
                continue;
            }
            let keep = self.keep(i);
            self.transition(i, |slot, now, limits| slot.on_deadline(now, keep, limits));
        }
    }

    /// Recycles ready workers whose resident memory is over `max_rss`.
    fn check_rss(&mut self) {
        let Some(limit) = self.cfg.max_rss else {
            return;
        };
        if self.next_rss_check > self.now {
            return;
        }
        self.next_rss_check = self.now + RSS_CHECK_EVERY;
        for i in 0..self.slots.len() {
            if !self.slots[i].is_ready() {
                continue;
            }
            let Some(pid) = self.slots[i].pid() else {
                continue;
            };
            if let Some(rss) = process::rss_bytes(pid).filter(|&r| r > limit) {
                tracing::info!(
                    worker = i,
                    rss_mib = rss >> 20,
                    limit_mib = limit >> 20,
                    "worker memory over the limit"
                );
                self.recycle(i, crate::slot::Replacement::MaxRss);
            }
        }
    }

    /// Samples the pool for the autoscaler and carries out its decision, if it is due.
    fn autoscale(&mut self) {
        if self.autoscaler.is_none() || self.next_autoscale > self.now {
            return;
        }
        self.next_autoscale = self.now + autoscale::TICK;
        if self.phase != Phase::Running {
            return;
        }
        let window = self.window();
        let max_tasks = self.cfg.max_tasks;
        let active = &self.slots[..self.target.min(self.slots.len())];
        let room = active
            .iter()
            .filter(|s| s.has_room(window, max_tasks))
            .map(|s| window.saturating_sub(s.inflight_len()))
            .sum();
        let running: u64 = self
            .slots
            .iter()
            .filter_map(|s| s.running_since())
            .map(|t| self.now.saturating_duration_since(t).as_micros() as u64)
            .sum();
        let ceiling = self
            .autoscaler
            .as_ref()
            .and_then(|a| a.config().max_pool_rss);
        if ceiling.is_some() && self.next_pool_rss <= self.now {
            self.next_pool_rss = self.now + POOL_RSS_EVERY;
            // Workers past their handshake only: one still starting is not its full size yet.
            let measured = self
                .slots
                .iter()
                .filter(|s| s.is_up())
                .filter_map(|s| s.pid());
            self.pool_rss =
                Some(
                    measured.fold((0, 0), |(sum, n), pid| match process::rss_bytes(pid) {
                        Some(b) => (sum + b, n + 1),
                        None => (sum, n),
                    }),
                );
        }
        let sample = autoscale::Sample {
            now: self.now.saturating_duration_since(self.epoch),
            target: self.target,
            starting: active.iter().filter(|s| !s.is_ready()).count(),
            queued: self.submissions.queued(),
            room,
            window,
            work_us: self.stats.durations.sum_us.saturating_add(running),
            pool_rss: self.pool_rss,
        };
        let Some(a) = self.autoscaler.as_mut() else {
            return;
        };
        let was_blocked = a.blocked();
        let decision = a.evaluate(&sample);
        let idle_ms = a.idle_interval().as_millis() as u64;
        let penalty = a.penalty();
        match (was_blocked, a.blocked()) {
            (None, Some(reason)) => tracing::info!(
                reason,
                workers = self.target,
                backlog = sample.queued,
                pool_rss = self.pool_rss.map(|(b, _)| b),
                max_pool_rss = ceiling,
                "autoscale growth held"
            ),
            (Some(reason), None) => tracing::debug!(reason, "autoscale growth no longer held"),
            _ => {}
        }
        let Some(d) = decision else {
            return;
        };
        tracing::info!(
            from = d.from,
            to = d.to,
            reason = d.reason,
            backlog = d.backlog,
            demand = d.demand,
            idle_ms,
            penalty,
            "autoscale"
        );
        self.resize(d.to);
    }
}
