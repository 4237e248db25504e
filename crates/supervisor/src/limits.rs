//! Time limits beyond one attempt: `--max-age` (how long an event may wait for its first start)
//! and `--deadline` (how long it may take over all its attempts, retries and backoff included).
//! Pure rules; the pool stamps each job at intake and asks [`verdict`] wherever a job waits
//! (at dispatch, in the queue sweep, in the retry backoff, at the head of a worker).
//!
//! The clock of both starts when the pool accepted the event (not when its line was read).

use std::time::Duration;

use tokio::time::Instant;

use crate::job::{Extra, Job};
use crate::record::ErrorKind;

/// At most this many queued jobs are looked at per sweep, so a huge backlog costs the pool a
/// bounded slice of each wake-up; the rest are swept on the next tick (or at dispatch).
pub(crate) const SWEEP_BUDGET: usize = 4096;
/// How often the queue is swept while limits apply and jobs are queued: how late past its
/// limit an expired event may get its record when no worker is free.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(20);

/// The limits one event runs under: its submission's, else the pool's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_age: Option<Duration>,
    pub deadline: Option<Duration>,
}

impl Limits {
    /// A submission's own limits, each falling back to the pool's.
    pub fn merged(own: Limits, pool: Limits) -> Limits {
        Limits {
            max_age: own.max_age.or(pool.max_age),
            deadline: own.deadline.or(pool.deadline),
        }
    }

    pub fn any(&self) -> bool {
        self.max_age.is_some() || self.deadline.is_some()
    }

    /// `(expires, deadline)` for an event accepted at `now`. A limit too far to represent (a
    /// client may send any number) is no limit.
    pub fn stamp(&self, now: Instant) -> Option<Extra> {
        let stamps = Extra {
            expires: self.max_age.and_then(|d| now.checked_add(d)),
            deadline: self.deadline.and_then(|d| now.checked_add(d)),
            ..Extra::default()
        };
        (stamps.expires.is_some() || stamps.deadline.is_some()).then_some(stamps)
    }
}

/// Whether `job` is out of time at `now`, and which record it gets. A job still waiting for
/// its first dispatch whose max age passed is `expired` (it never ran), else one whose
/// deadline passed is `deadline`.
pub(crate) fn verdict(job: &Job, now: Instant) -> Option<ErrorKind> {
    let times = job.extra.as_deref()?;
    if !job.dispatched && times.expires.is_some_and(|t| t <= now) {
        Some(ErrorKind::Expired)
    } else if times.deadline.is_some_and(|t| t <= now) {
        Some(ErrorKind::Deadline)
    } else {
        None
    }
}

/// The message of a record of `kind` from [`verdict`].
pub(crate) fn message(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Expired => {
            "the event waited longer than its --max-age to start, and did not run"
        }
        _ => "the event's --deadline passed before it had an answer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(expires: Option<Instant>, deadline: Option<Instant>) -> Job {
        let mut j = Job::fresh(1, 1, 0, 0);
        j.extra = Some(Box::new(Extra {
            expires,
            deadline,
            ..Extra::default()
        }));
        j
    }

    #[test]
    fn deadline_verdicts() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(verdict(&job(None, None), t0 + 100 * s), None);
        // Expired once its max age is reached, not before.
        let j = job(Some(t0 + s), None);
        assert_eq!(verdict(&j, t0), None);
        assert_eq!(verdict(&j, t0 + s), Some(ErrorKind::Expired));
        // A dispatched job is held to its deadline only.
        let mut j = job(Some(t0), Some(t0 + 2 * s));
        j.dispatched = true;
        assert_eq!(verdict(&j, t0 + s), None);
        assert_eq!(verdict(&j, t0 + 2 * s), Some(ErrorKind::Deadline));
        // Never started and both passed: it never ran, so `expired`.
        let j = job(Some(t0 + s), Some(t0 + s));
        assert_eq!(verdict(&j, t0 + 3 * s), Some(ErrorKind::Expired));
    }

    #[test]
    fn deadline_limits_merge_and_stamp() {
        let s = Duration::from_secs(1);
        let pool = Limits {
            max_age: Some(s),
            deadline: Some(10 * s),
        };
        let own = Limits {
            max_age: None,
            deadline: Some(3 * s),
        };
        let m = Limits::merged(own, pool);
        assert_eq!(m.max_age, Some(s));
        assert_eq!(m.deadline, Some(3 * s));
        assert!(m.any());
        assert!(!Limits::default().any());
        let t0 = Instant::now();
        assert_eq!(
            m.stamp(t0),
            Some(Extra {
                expires: Some(t0 + s),
                deadline: Some(t0 + 3 * s),
                ..Extra::default()
            })
        );
        assert_eq!(Limits::default().stamp(t0), None);
        let huge = Duration::MAX;
        let far = Limits {
            max_age: Some(huge),
            deadline: Some(huge),
        };
        assert_eq!(far.stamp(t0), None, "no overflow");
    }
}
