//! The rate limits on attempt starts (see [`crate::rate`]): set at runtime, and shown.

use super::Pool;
use std::time::Duration;

use crate::rate::{Limiter, Rate};
use crate::status::{RateScope, RateStatus};

impl Pool {
    /// The pool's limit from now on (`None`: unlimited). Its schedule and wait counts carry
    /// over a change of rate.
    pub(super) fn set_rate(&mut self, rate: Option<Rate>) {
        self.cfg.rate = rate;
        match (rate, self.rate.as_mut()) {
            (None, _) => self.rate = None,
            (Some(r), Some(l)) => l.set_rate(r, self.now),
            (Some(r), None) => self.rate = Some(Limiter::new(r)),
        }
        tracing::info!(rate = rate.map(|r| r.to_string()), "pool rate limit");
    }

    /// A new limit for one submission; false if it is not open.
    pub(super) fn set_submission_rate(
        &mut self,
        id: crate::SubmissionId,
        rate: Option<Rate>,
    ) -> bool {
        let found = self.submissions.set_rate(id, rate, self.now);
        if found {
            tracing::info!(
                submission = id,
                rate = rate.map(|r| r.to_string()),
                "submission rate limit"
            );
        }
        found
    }

    pub(super) fn rate_status(&self) -> Vec<RateStatus> {
        let now = self.now;
        let mut subs: Vec<_> = self.submissions.rates().collect();
        subs.sort_by_key(|(id, _)| *id);
        let limiters = self
            .rate
            .iter()
            .map(|l| (RateScope::Pool, l))
            .chain(
                subs.into_iter()
                    .map(|(id, l)| (RateScope::Submission(id), l)),
            )
            .map(|(scope, l)| {
                let waited = l.waits().waited + l.current_wait(now);
                row(scope, l.rate(), l.waits().delayed, waited, l.holding())
            });
        // The per-key rate: one row, its waits summed over every key.
        let keys = self.keys.limits().rate.map(|r| {
            let w = self.keys.waits();
            row(
                RateScope::Key,
                r,
                w.delayed,
                w.waited,
                self.keys.next_wake().is_some(),
            )
        });
        limiters.chain(keys).collect()
    }

    /// The per-key limits' state, if any apply.
    pub(super) fn key_status(&self) -> Option<crate::status::KeyStatus> {
        let limits = self.keys.limits();
        limits.any().then(|| crate::status::KeyStatus {
            max_inflight: limits.max_inflight,
            tracked: self.keys.tracked(),
            parked: self.keys.parked(),
        })
    }
}

/// One rate limit's row of the status.
fn row(scope: RateScope, rate: Rate, delayed: u64, waited: Duration, holding: bool) -> RateStatus {
    RateStatus {
        scope,
        rate: rate.to_string(),
        per_second: rate.per_second(),
        burst: rate.burst(),
        delayed,
        wait_secs: waited.as_secs_f64(),
        holding,
    }
}
