//! Autoscaling: the rule that decides how many workers the pool runs between `min` and `max`.
//!
//! Pure: the pool samples itself on a timer ([`TICK`]) and hands the numbers in a [`Sample`];
//! [`Autoscaler::evaluate`] returns a [`Decision`] or nothing. No clock, no I/O, no processes,
//! so every case is unit-tested below.
//!
//! The rule (docs/AUTOSCALING.md says why):
//! - **Grow on backlog**, like uWSGI's `backlog` cheaper algorithm and Celery's autoscaler:
//!   events wait while every ready worker's window is full, on [`GROW_AFTER`] consecutive
//!   samples, and no worker is still starting (the last step has not landed yet). The step is
//!   the backlog in windows (`ceil(queued / window)`), at most doubling the pool, within `max`
//!   and within the pool memory ceiling.
//! - **Shrink on measured spare capacity**, one worker at a time, like PHP-FPM's dynamic mode
//!   and uWSGI's `spare`: once a whole idle interval has passed with no backlog and the work
//!   done in it (task time, counting tasks still running) would have kept one worker fewer
//!   at most [`SHRINK_UTILIZATION`] busy. Work time rather than "some worker has no task at
//!   this instant", because round-robin dispatch spreads a light load over every worker.
//! - **Penalty against flapping**: a grow within one idle interval of a shrink doubles the
//!   idle interval (up to [`MAX_PENALTY`] times); it halves again after a quiet spell.

use std::time::Duration;

use serde::Serialize;

/// How often the pool samples itself.
pub const TICK: Duration = Duration::from_millis(100);
/// Consecutive samples with a backlog before the pool grows (a momentary queue is not one).
pub const GROW_AFTER: u32 = 2;
/// A shrink happens only if one worker fewer would have been at most this busy.
pub const SHRINK_UTILIZATION: f64 = 0.75;
/// Largest factor the anti-flap penalty multiplies the idle interval by.
pub const MAX_PENALTY: u32 = 16;
/// Default idle interval before a shrink (PHP-FPM's `pm.process_idle_timeout` default).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10);
/// Most workers a pool runs.
pub const MAX_WORKERS: usize = 4096;

/// The autoscaling settings of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoscaleConfig {
    /// Fewest workers; the pool starts with this many.
    pub min: usize,
    /// Most workers.
    pub max: usize,
    /// How long spare capacity must last before one worker is retired (`--scale-idle`).
    pub idle: Duration,
    /// Growth stops while the sum of the workers' resident memory would exceed this
    /// (`--max-pool-rss`).
    pub max_pool_rss: Option<u64>,
}

/// Why `--workers MIN..MAX` bounds were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("MAX must be at least 1")]
    NoMax,
    #[error("MIN must be at least 1 (herd keeps a worker ready to take the first event)")]
    NoMin,
    #[error("MIN ({min}) is larger than MAX ({max})")]
    MinOverMax { min: usize, max: usize },
    #[error("MAX ({max}) is over the limit of {MAX_WORKERS} workers")]
    OverLimit { max: usize },
}

impl AutoscaleConfig {
    /// Bounds `min..max` with the default idle interval and no memory ceiling.
    ///
    /// # Errors
    /// Bounds that cannot work, with a message for people.
    pub fn new(min: usize, max: usize) -> Result<Self, BoundsError> {
        if max == 0 {
            return Err(BoundsError::NoMax);
        }
        if min == 0 {
            return Err(BoundsError::NoMin);
        }
        if min > max {
            return Err(BoundsError::MinOverMax { min, max });
        }
        if max > MAX_WORKERS {
            return Err(BoundsError::OverLimit { max });
        }
        Ok(Self {
            min,
            max,
            idle: DEFAULT_IDLE,
            max_pool_rss: None,
        })
    }
}

/// What the pool measured at one sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Time since the pool started (any monotonic origin works).
    pub now: Duration,
    /// Workers the pool is scaled to now.
    pub target: usize,
    /// Of those, slots without a ready worker yet (spawning, handshaking, backing off).
    pub starting: usize,
    /// Events waiting for a worker.
    pub queued: usize,
    /// Free places in the ready workers' windows.
    pub room: usize,
    /// Tasks each worker holds at most (the window in effect).
    pub window: usize,
    /// Task time done so far, in µs, over the pool's life: finished tasks plus the elapsed
    /// part of those running now. Only its growth between samples matters.
    pub work_us: u64,
    /// Sum of the workers' resident memory, and how many workers it covers, if measured.
    pub pool_rss: Option<(u64, usize)>,
}

/// A change of the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decision {
    pub from: usize,
    pub to: usize,
    /// `backlog` (grow) or `idle` (shrink).
    pub reason: &'static str,
    /// Events waiting when it was taken.
    pub backlog: usize,
    /// Busy-worker equivalents measured over the idle interval (shrinks), or the target
    /// (grows: every worker was busy).
    pub demand: f64,
    /// When, as [`Sample::now`].
    #[serde(skip)]
    pub at: Duration,
}

/// The autoscaler's state between samples. Owned by the pool task.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    cfg: AutoscaleConfig,
    /// Consecutive samples with a backlog.
    backlog_samples: u32,
    /// Start of the interval over which spare capacity is measured, and the work done by then.
    since: Duration,
    work_at_since: u64,
    last_shrink: Option<Duration>,
    /// The idle interval is multiplied by this (1, 2, 4 ... [`MAX_PENALTY`]).
    penalty: u32,
    last_flap: Duration,
    /// Why growth would be held back now, if it would: the pool is at its memory ceiling.
    blocked: Option<&'static str>,
    grows: u64,
    shrinks: u64,
    last: Option<Decision>,
}

impl Autoscaler {
    pub fn new(cfg: AutoscaleConfig) -> Self {
        Self {
            cfg,
            backlog_samples: 0,
            since: Duration::ZERO,
            work_at_since: 0,
            last_shrink: None,
            penalty: 1,
            last_flap: Duration::ZERO,
            blocked: None,
            grows: 0,
            shrinks: 0,
            last: None,
        }
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.cfg
    }

    /// The idle interval in effect, penalty included.
    pub fn idle_interval(&self) -> Duration {
        self.cfg.idle.saturating_mul(self.penalty)
    }

    pub fn penalty(&self) -> u32 {
        self.penalty
    }

    /// Why growth is held back now (`max-pool-rss`), if it is.
    pub fn blocked(&self) -> Option<&'static str> {
        self.blocked
    }

    /// Decisions so far: (grows, shrinks).
    pub fn counts(&self) -> (u64, u64) {
        (self.grows, self.shrinks)
    }

    pub fn last(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// The new target for what `s` shows, if it should change. A returned decision has been
    /// counted: the caller carries it out.
    pub fn evaluate(&mut self, s: &Sample) -> Option<Decision> {
        let backlog = s.queued > 0 && s.room == 0;
        if backlog {
            self.backlog_samples = self.backlog_samples.saturating_add(1);
            // Waiting events are no spare capacity: the idle interval starts over.
            self.restart_interval(s);
        } else {
            self.backlog_samples = 0;
        }
        // A state, not an event: it changes when memory does, so its log line is not repeated
        // with every burst.
        self.blocked =
            (s.target < self.cfg.max && self.rss_fit(s) == Some(0)).then_some("max-pool-rss");
        self.decay_penalty(s.now);
        if backlog {
            return self.maybe_grow(s);
        }
        self.maybe_shrink(s)
    }

    fn maybe_grow(&mut self, s: &Sample) -> Option<Decision> {
        if self.backlog_samples < GROW_AFTER || s.starting > 0 || s.target >= self.cfg.max {
            return None;
        }
        let wanted = s.queued.div_ceil(s.window.max(1)).clamp(1, s.target.max(1));
        let mut step = wanted.min(self.cfg.max - s.target);
        if let Some(fit) = self.rss_fit(s) {
            step = step.min(fit);
        }
        if step == 0 {
            return None;
        }
        if self
            .last_shrink
            .is_some_and(|t| s.now.saturating_sub(t) < self.idle_interval())
        {
            // Shrunk too eagerly: wait longer before the next shrink.
            self.penalty = (self.penalty * 2).min(MAX_PENALTY);
            self.last_flap = s.now;
        }
        self.grows += 1;
        self.backlog_samples = 0;
        self.restart_interval(s);
        self.decide(s, s.target + step, "backlog", s.target as f64)
    }

    /// Workers that still fit under the memory ceiling, at the average measured worker's
    /// size; `None` without a ceiling or a measurement. Workers of the target that were not
    /// measured (new ones, or a measurement older than the last grow) count at that size too,
    /// so a stale measurement cannot let the pool overshoot.
    fn rss_fit(&self, s: &Sample) -> Option<usize> {
        let ceiling = self.cfg.max_pool_rss?;
        let (sum, n) = s.pool_rss?;
        if sum >= ceiling {
            return Some(0);
        }
        if n == 0 {
            return None;
        }
        let each = (sum / n as u64).max(1);
        let projected = sum.max(each.saturating_mul(s.target as u64));
        let room = ceiling.saturating_sub(projected);
        Some(usize::try_from(room / each).unwrap_or(usize::MAX))
    }

    fn maybe_shrink(&mut self, s: &Sample) -> Option<Decision> {
        let elapsed = s.now.saturating_sub(self.since);
        if s.target <= self.cfg.min || elapsed < self.idle_interval() || elapsed.is_zero() {
            return None;
        }
        let work = s.work_us.saturating_sub(self.work_at_since) as f64;
        let demand = work / elapsed.as_micros().max(1) as f64;
        // Judged over the latest interval only: the next one starts now either way.
        self.restart_interval(s);
        if demand > (s.target - 1) as f64 * SHRINK_UTILIZATION {
            return None;
        }
        self.shrinks += 1;
        self.last_shrink = Some(s.now);
        self.decide(s, s.target - 1, "idle", demand)
    }

    /// After four penalised idle intervals without a flap, the penalty halves.
    fn decay_penalty(&mut self, now: Duration) {
        if self.penalty > 1
            && now.saturating_sub(self.last_flap) >= self.idle_interval().saturating_mul(4)
        {
            self.penalty /= 2;
            self.last_flap = now;
        }
    }

    fn restart_interval(&mut self, s: &Sample) {
        self.since = s.now;
        self.work_at_since = s.work_us;
    }

    fn decide(
        &mut self,
        s: &Sample,
        to: usize,
        reason: &'static str,
        demand: f64,
    ) -> Option<Decision> {
        let d = Decision {
            from: s.target,
            to,
            reason,
            backlog: s.queued,
            demand: (demand * 100.0).round() / 100.0,
            at: s.now,
        };
        self.last = Some(d);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg(min: usize, max: usize) -> AutoscaleConfig {
        AutoscaleConfig {
            idle: Duration::from_secs(1),
            ..AutoscaleConfig::new(min, max).unwrap()
        }
    }

    /// A pool of `target` ready workers with window 2.
    fn sample(now_ms: u64, target: usize, queued: usize, work_us: u64) -> Sample {
        Sample {
            now: MS * now_ms as u32,
            target,
            starting: 0,
            queued,
            room: if queued > 0 { 0 } else { target * 2 },
            window: 2,
            work_us,
            pool_rss: None,
        }
    }

    /// Runs `a` on samples every 100 ms from `from_ms` to `to_ms` with a constant `queued`
    /// and `busy` workers' worth of work, applying each decision; returns the final target.
    fn drive(
        a: &mut Autoscaler,
        target: &mut usize,
        from_ms: u64,
        to_ms: u64,
        queued: usize,
        busy: f64,
        work: &mut u64,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        let mut t = from_ms;
        while t <= to_ms {
            *work += (busy * 100_000.0) as u64;
            if let Some(d) = a.evaluate(&sample(t, *target, queued, *work)) {
                assert_eq!(d.from, *target);
                *target = d.to;
                out.push(d);
            }
            t += 100;
        }
        out
    }

    #[test]
    fn bad_bounds_are_refused_with_a_reason() {
        assert_eq!(
            AutoscaleConfig::new(3, 2).unwrap_err(),
            BoundsError::MinOverMax { min: 3, max: 2 }
        );
        assert_eq!(
            AutoscaleConfig::new(3, 2).unwrap_err().to_string(),
            "MIN (3) is larger than MAX (2)"
        );
        assert_eq!(AutoscaleConfig::new(0, 0).unwrap_err(), BoundsError::NoMax);
        assert_eq!(
            AutoscaleConfig::new(0, 0).unwrap_err().to_string(),
            "MAX must be at least 1"
        );
        assert!(AutoscaleConfig::new(0, 4)
            .unwrap_err()
            .to_string()
            .starts_with("MIN must be at least 1"));
        assert!(AutoscaleConfig::new(1, 5000)
            .unwrap_err()
            .to_string()
            .contains("4096"));
        let ok = AutoscaleConfig::new(2, 2).unwrap();
        assert_eq!((ok.min, ok.max, ok.idle), (2, 2, DEFAULT_IDLE));
    }

    #[test]
    fn a_momentary_queue_does_not_grow() {
        let mut a = Autoscaler::new(cfg(1, 8));
        assert_eq!(a.evaluate(&sample(100, 1, 50, 0)), None);
        assert_eq!(a.evaluate(&sample(200, 1, 0, 0)), None);
        assert_eq!(a.evaluate(&sample(300, 1, 50, 0)), None);
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn a_deep_backlog_grows_several_at_once_doubling_up_to_max() {
        let mut a = Autoscaler::new(cfg(1, 6));
        let (mut target, mut work) = (1, 0);
        let ds = drive(&mut a, &mut target, 100, 2_000, 1_000, 1.0, &mut work);
        let steps: Vec<_> = ds.iter().map(|d| (d.from, d.to, d.reason)).collect();
        assert_eq!(
            steps,
            [(1, 2, "backlog"), (2, 4, "backlog"), (4, 6, "backlog")]
        );
        assert_eq!(ds[0].backlog, 1_000);
        assert_eq!(a.counts(), (3, 0));
    }

    #[test]
    fn a_shallow_backlog_grows_by_what_it_needs() {
        let mut a = Autoscaler::new(cfg(1, 16));
        let mut s = sample(100, 8, 3, 0);
        assert_eq!(a.evaluate(&s), None);
        s.now = MS * 200;
        // 3 events in windows of 2: two more workers, not eight.
        assert_eq!(a.evaluate(&s).map(|d| d.to), Some(10));
    }

    #[test]
    fn no_growth_while_new_workers_are_still_starting() {
        let mut a = Autoscaler::new(cfg(1, 8));
        let mut s = sample(100, 2, 500, 0);
        s.starting = 1;
        assert_eq!(a.evaluate(&s), None);
        s.now = MS * 200;
        assert_eq!(a.evaluate(&s), None);
        s.starting = 0;
        s.now = MS * 300;
        assert_eq!(a.evaluate(&s).map(|d| d.to), Some(4));
    }

    #[test]
    fn room_in_some_window_is_not_a_backlog() {
        let mut a = Autoscaler::new(cfg(1, 8));
        let mut s = sample(100, 2, 500, 0);
        s.room = 1;
        for t in 1..10 {
            s.now = MS * 100 * t;
            assert_eq!(a.evaluate(&s), None);
        }
    }

    #[test]
    fn idle_shrinks_one_at_a_time_per_interval_down_to_min() {
        let mut a = Autoscaler::new(cfg(2, 8));
        let (mut target, mut work) = (6, 0);
        let ds = drive(&mut a, &mut target, 100, 10_000, 0, 0.0, &mut work);
        assert_eq!(target, 2);
        let at: Vec<_> = ds.iter().map(|d| (d.to, d.at.as_millis())).collect();
        assert_eq!(at, [(5, 1_000), (4, 2_000), (3, 3_000), (2, 4_000)]);
        assert!(ds.iter().all(|d| d.reason == "idle" && d.demand == 0.0));
    }

    #[test]
    fn busy_workers_are_not_shrunk_and_spare_ones_are() {
        // 2.5 workers' worth of work on 4: 3 would be 83% busy, so 4 stay.
        let mut a = Autoscaler::new(cfg(1, 8));
        let (mut target, mut work) = (4, 0);
        assert!(drive(&mut a, &mut target, 100, 10_000, 0, 2.5, &mut work).is_empty());
        // 2 workers' worth on 4: down to 3 (67% busy), not to 2 (100%).
        let ds = drive(&mut a, &mut target, 10_100, 30_000, 0, 2.0, &mut work);
        assert_eq!(ds.len(), 1);
        assert_eq!((ds[0].to, ds[0].demand), (3, 2.0));
        assert_eq!(target, 3);
    }

    #[test]
    fn a_backlog_restarts_the_idle_interval() {
        let mut a = Autoscaler::new(cfg(1, 4));
        let (mut target, mut work) = (4, 0);
        assert!(drive(&mut a, &mut target, 100, 900, 0, 0.0, &mut work).is_empty());
        // One sample with a queue at the top (not enough to grow: it is at max anyway).
        assert!(a.evaluate(&sample(1_000, 4, 10, work)).is_none());
        assert!(drive(&mut a, &mut target, 1_100, 1_900, 0, 0.0, &mut work).is_empty());
        assert_eq!(
            drive(&mut a, &mut target, 2_000, 2_000, 0, 0.0, &mut work)[0].to,
            3
        );
    }

    #[test]
    fn a_grow_soon_after_a_shrink_doubles_the_idle_interval_then_it_decays() {
        let mut a = Autoscaler::new(cfg(1, 4));
        let (mut target, mut work) = (2, 0);
        let ds = drive(&mut a, &mut target, 100, 1_000, 0, 0.0, &mut work);
        assert_eq!((ds.len(), target), (1, 1));
        // A burst right after the shrink: grow, with a penalty.
        let ds = drive(&mut a, &mut target, 1_100, 1_200, 100, 1.0, &mut work);
        assert_eq!(ds.iter().map(|d| d.to).collect::<Vec<_>>(), [2]);
        assert_eq!(
            (a.penalty(), a.idle_interval()),
            (2, Duration::from_secs(2))
        );
        // Idle again: the next shrink waits the doubled interval.
        let ds = drive(&mut a, &mut target, 1_300, 5_000, 0, 0.0, &mut work);
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].at.as_millis(), 3_200);
        // Four penalised intervals with no flap: back to the plain interval.
        drive(&mut a, &mut target, 5_100, 9_300, 0, 0.0, &mut work);
        assert_eq!(a.penalty(), 1);
    }

    #[test]
    fn repeated_flapping_is_damped_up_to_the_cap() {
        let mut a = Autoscaler::new(cfg(1, 2));
        let (mut target, work) = (2, 0);
        let mut t = 100;
        let mut decisions = 0;
        // Alternate: idle until it shrinks, then a burst. Each cycle waits longer.
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let start = t;
            while target == 2 {
                if a.evaluate(&sample(t, target, 0, work)).is_some() {
                    target = 1;
                    decisions += 1;
                }
                t += 100;
            }
            gaps.push(t - start);
            while target == 1 {
                if a.evaluate(&sample(t, target, 100, work)).is_some() {
                    target = 2;
                    decisions += 1;
                }
                t += 100;
            }
        }
        assert_eq!(decisions, 12);
        assert_eq!(a.penalty(), MAX_PENALTY);
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
    }

    #[test]
    fn the_memory_ceiling_limits_and_then_stops_growth() {
        let mut a = Autoscaler::new(AutoscaleConfig {
            max_pool_rss: Some(100 << 20),
            ..cfg(1, 16)
        });
        // Two workers of 30 MiB: one more fits (90 MiB), two would not.
        let mut s = sample(100, 2, 1_000, 0);
        s.pool_rss = Some((60 << 20, 2));
        assert_eq!(a.evaluate(&s), None);
        s.now = MS * 200;
        assert_eq!(a.evaluate(&s).map(|d| d.to), Some(3));
        assert_eq!(a.blocked(), None);
        s.target = 3;
        s.pool_rss = Some((90 << 20, 3));
        for t in [300, 400] {
            s.now = MS * t;
            assert_eq!(a.evaluate(&s), None);
        }
        assert_eq!(a.blocked(), Some("max-pool-rss"));
        // Over the ceiling already: no growth, and no shrink because of it either.
        s.pool_rss = Some((150 << 20, 3));
        s.now = MS * 500;
        assert_eq!(a.evaluate(&s), None);
        assert_eq!(a.blocked(), Some("max-pool-rss"));
        // The backlog gone, the pool is still at its ceiling: the state stays.
        s.queued = 0;
        s.room = 6;
        s.now = MS * 600;
        assert_eq!(a.evaluate(&s), None);
        assert_eq!(a.blocked(), Some("max-pool-rss"));
        // Workers recycled to a smaller size: room for more again.
        s.pool_rss = Some((30 << 20, 3));
        s.now = MS * 700;
        assert_eq!(a.evaluate(&s), None);
        assert_eq!(a.blocked(), None);
        // At max, a full pool is not "held back" by memory.
        s.target = 16;
        s.pool_rss = Some((150 << 20, 16));
        s.now = MS * 800;
        assert_eq!(a.evaluate(&s), None);
        assert_eq!(a.blocked(), None);
    }

    #[test]
    fn workers_not_measured_yet_count_at_the_average_size() {
        let mut a = Autoscaler::new(AutoscaleConfig {
            max_pool_rss: Some(10 << 20),
            ..cfg(1, 16)
        });
        // Measured before the last grow: one worker of 2 MiB, but the pool runs 4 now.
        let mut s = sample(100, 4, 1_000, 0);
        s.pool_rss = Some((2 << 20, 1));
        assert_eq!(a.evaluate(&s), None);
        s.now = MS * 200;
        // 4 x 2 MiB = 8 MiB: one more fits under 10 MiB, not four.
        assert_eq!(a.evaluate(&s).map(|d| d.to), Some(5));
        s.target = 5;
        s.now = MS * 300;
        assert_eq!(a.evaluate(&s), None);
        assert_eq!(a.blocked(), Some("max-pool-rss"));
    }

    #[test]
    fn fixed_bounds_never_change() {
        let mut a = Autoscaler::new(cfg(3, 3));
        let (mut target, mut work) = (3, 0);
        assert!(drive(&mut a, &mut target, 100, 5_000, 1_000, 3.0, &mut work).is_empty());
        assert!(drive(&mut a, &mut target, 5_100, 20_000, 0, 0.0, &mut work).is_empty());
    }
}
