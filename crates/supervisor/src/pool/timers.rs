//! Every deadline the pool keeps, armed in one place and fired in one place: each owner says
//! when it next needs attention and what to do then (the slots' start, task and exit timeouts
//! and backoffs; retries waiting out their delay; outboxes held for batching; the stop grace;
//! the memory check).

use std::time::Duration;

use tokio::time::Instant;

use super::{Phase, Pool};
use crate::process;

/// How often workers' resident memory is compared with `max_rss`.
const RSS_CHECK_EVERY: Duration = Duration::from_millis(500);

impl Pool {
    /// The earliest deadline of all.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let stop = match self.phase {
            Phase::Draining { deadline } => Some(deadline),
            _ => None,
        };
        let rss = self.cfg.max_rss.map(|_| self.next_rss_check);
        let slots = self.slots.iter().filter_map(|s| s.deadline(&self.limits));
        [
            stop,
            rss,
            self.retries.deadline(),
            self.submissions.next_flush(),
        ]
        .into_iter()
        .flatten()
        .chain(slots)
        .min()
    }

    /// Whatever is due now. (Outboxes are flushed after every wake-up, and the stop grace is
    /// checked before every wait, so neither needs anything here.)
    pub(super) fn on_tick(&mut self) {
        self.check_rss();
        self.retries_due();
        for i in 0..self.slots.len() {
            let keep = self.keep(i);
            let effects = self.slots[i].on_deadline(self.now, keep, &self.limits);
            self.apply(i, effects);
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
                self.recycle(i, "max-rss");
            }
        }
    }
}
