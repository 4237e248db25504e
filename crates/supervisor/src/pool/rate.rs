//! The rate limits on attempt starts (see [`crate::rate`]): set at runtime, and shown.

use super::Pool;
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
        let keys = self.keys.limits().rate.map(|r| {
            let w = self.keys.waits();
            RateStatus {
                scope: RateScope::Key,
                rate: r.to_string(),
                per_second: r.per_second(),
                burst: r.burst(),
                delayed: w.delayed,
                wait_secs: w.waited.as_secs_f64(),
                holding: self.keys.next_wake().is_some(),
            }
        });
        let mut rates: Vec<RateStatus> = self
            .rate
            .iter()
            .map(|l| (RateScope::Pool, l))
            .chain({
                let mut subs: Vec<_> = self.submissions.rates().collect();
                subs.sort_by_key(|(id, _)| *id);
                subs.into_iter()
                    .map(|(id, l)| (RateScope::Submission(id), l))
            })
            .map(|(scope, l)| {
                let r = l.rate();
                let w = l.waits();
                RateStatus {
                    scope,
                    rate: r.to_string(),
                    per_second: r.per_second(),
                    burst: r.burst(),
                    delayed: w.delayed,
                    wait_secs: (w.waited + l.current_wait(now)).as_secs_f64(),
                    holding: l.holding(),
                }
            })
            .collect();
        rates.extend(keys);
        rates
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
