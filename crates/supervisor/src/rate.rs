//! Rate limits on attempt starts (`--rate N/s[,burst=B]`), by the generic cell rate algorithm
//! (GCRA): one "theoretical arrival time" per limit, so the burst is exact and there is no
//! window edge at which twice the rate gets through (the fixed-window flaw dramatiq warns of).
//!
//! A limit of `N` per `unit` with burst `B` lets a start through at `now` when
//! `tat - (B - 1) × T <= now`, where `T = unit / N`; each start moves `tat` to
//! `max(tat, now) + T`. Starts therefore follow the schedule of the limit, not the times the
//! pool happened to wake up: a late wake-up lets the missed starts through at once (within the
//! burst), so the long-run rate is exact.
//!
//! Pure: the caller passes the time in.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// A rate: `count` starts per `per`, with bursts of up to `burst` at once. Built by parsing
/// (`"200/s,burst=10".parse()`), which refuses a count that is not a positive number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Starts per `per` (may be fractional: `0.5/s`); positive and finite.
    count: f64,
    per: Duration,
    /// Starts allowed at once after a quiet spell (at least 1).
    burst: u32,
}

// `count` is never NaN (parsing refuses it), so equality is reflexive.
impl Eq for Rate {}

impl Rate {
    /// Starts allowed at once after a quiet spell.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time between two starts at the steady rate (at least 1 ns).
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.per.as_secs_f64() / self.count).max(Duration::from_nanos(1))
    }

    /// Starts per second.
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            3600 => "h",
            60 => "m",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)?;
        if self.burst != 1 {
            write!(f, ",burst={}", self.burst)?;
        }
        Ok(())
    }
}

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a rate like 200/s, 30/m or 200/s,burst=10: {why}")]
pub struct ParseRateError {
    input: String,
    why: &'static str,
}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseRateError {
            input: s.to_owned(),
            why,
        };
        let (rate, burst) = match s.split_once(',') {
            Some((r, b)) => {
                let b = b
                    .trim()
                    .strip_prefix("burst=")
                    .ok_or_else(|| err("after the comma only burst=B may follow"))?;
                let b: u32 = b
                    .trim()
                    .parse()
                    .map_err(|_| err("the burst is not a number"))?;
                if b == 0 {
                    return Err(err("the burst must be at least 1"));
                }
                (r, b)
            }
            None => (s, 1),
        };
        let (count, unit) = rate
            .split_once('/')
            .ok_or_else(|| err("expected N/s, N/m or N/h"))?;
        let count: f64 = count
            .trim()
            .parse()
            .map_err(|_| err("the count is not a number"))?;
        if !(count.is_finite() && count > 0.0) {
            return Err(err("the count must be a positive number"));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(err("the unit must be s, m or h")),
        };
        Ok(Rate { count, per, burst })
    }
}

/// One limit's state: the rate, the GCRA's theoretical arrival time, and how long it held
/// starts back.
#[derive(Debug, Clone)]
pub struct Limiter {
    rate: Rate,
    interval: Duration,
    /// `(burst - 1) × interval`: how far ahead of `now` the schedule may run.
    tolerance: Duration,
    /// When the next start is due at the steady rate; none before the first start.
    tat: Option<Instant>,
    /// Since when a start has been held back, if one is.
    held_since: Option<Instant>,
    waits: Waits,
}

/// How much a limit held starts back.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Waits {
    /// Starts that had to wait for the limit.
    pub delayed: u64,
    /// Their waits summed: the time from the limit's first refusal to the start it let
    /// through.
    pub waited: Duration,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        let interval = rate.interval();
        Self {
            rate,
            interval,
            tolerance: interval * rate.burst.saturating_sub(1),
            tat: None,
            held_since: None,
            waits: Waits::default(),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    pub fn waits(&self) -> Waits {
        self.waits
    }

    /// A new rate, keeping the schedule, but never holding starts back longer than one
    /// interval of the new rate (a change from 1/h to 100/s takes effect now).
    pub fn set_rate(&mut self, rate: Rate, now: Instant) {
        let waits = self.waits;
        let held_since = self.held_since;
        let tat = self.tat;
        *self = Self::new(rate);
        self.waits = waits;
        self.held_since = held_since;
        self.tat = tat.map(|t| t.min(now + self.interval));
    }

    /// The earliest time a start may happen: `now` or earlier if one may happen now.
    pub fn ready_at(&self) -> Option<Instant> {
        let tat = self.tat?;
        tat.checked_sub(self.tolerance)
    }

    /// When the schedule is no longer ahead of the clock: from then on the limiter is as good
    /// as a new one (its whole burst available), so it may be dropped.
    pub fn caught_up_at(&self) -> Option<Instant> {
        self.tat
    }

    /// Whether a start may happen at `now`; if not, when it may. A refusal starts the count
    /// of the held start's wait.
    pub fn check(&mut self, now: Instant) -> Result<(), Instant> {
        match self.ready_at() {
            Some(at) if at > now => {
                self.held_since.get_or_insert(now);
                Err(at)
            }
            _ => Ok(()),
        }
    }

    /// Counts a start at `now` (after [`check`](Self::check) allowed it).
    pub fn start(&mut self, now: Instant) {
        let base = self.tat.map_or(now, |t| t.max(now));
        self.tat = Some(base + self.interval);
        if let Some(since) = self.held_since.take() {
            self.waits.delayed += 1;
            self.waits.waited += now.saturating_duration_since(since);
        }
    }

    /// No start is waiting any more (the queue emptied): the current wait, if any, ends
    /// without a start.
    pub fn idle(&mut self, now: Instant) {
        if let Some(since) = self.held_since.take() {
            self.waits.waited += now.saturating_duration_since(since);
        }
    }

    /// How long the start held back now has waited so far.
    pub fn current_wait(&self, now: Instant) -> Duration {
        self.held_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Whether a start is being held back.
    pub fn holding(&self) -> bool {
        self.held_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    #[test]
    fn parses_units_bursts_and_refuses_nonsense() {
        assert_eq!(
            rate("200/s,burst=10"),
            Rate {
                count: 200.0,
                per: Duration::from_secs(1),
                burst: 10
            }
        );
        assert_eq!(rate("30/m").interval(), Duration::from_secs(2));
        assert_eq!(rate("3600/h").interval(), Duration::from_secs(1));
        assert_eq!(rate("0.5/s").interval(), Duration::from_secs(2));
        assert_eq!(rate("200/s, burst=10").burst, 10);
        for bad in [
            "",
            "200",
            "200/d",
            "0/s",
            "-1/s",
            "inf/s",
            "NaN/s",
            "x/s",
            "2/s,burst=0",
            "2/s,bust=3",
            "2/s,burst=x",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(rate("200/s,burst=10").to_string(), "200/s,burst=10");
        assert_eq!(rate("30/m").to_string(), "30/m");
    }

    /// Starts as fast as the limiter allows, from `t0`, jumping to each time it names.
    fn schedule(l: &mut Limiter, t0: Instant, n: usize) -> Vec<Duration> {
        let mut now = t0;
        let mut at = Vec::with_capacity(n);
        while at.len() < n {
            match l.check(now) {
                Ok(()) => {
                    l.start(now);
                    at.push(now - t0);
                }
                Err(next) => {
                    assert!(next > now);
                    now = next;
                }
            }
        }
        at
    }

    #[test]
    fn exact_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(rate("200/s,burst=10"));
        let at = schedule(&mut l, t0, 2000);
        assert!(at[..10].iter().all(|d| d.is_zero()), "{:?}", &at[..12]);
        assert_eq!(at[10], Duration::from_millis(5));
        for w in at[10..].windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(5));
        }
        // 1990 starts after the burst, 5 ms apart.
        assert_eq!(at[1999], Duration::from_millis(5 * 1990));
        // No one-second window holds more than rate + burst.
        let most = (0..at.len())
            .map(|i| at[i..].partition_point(|&d| d < at[i] + Duration::from_secs(1)))
            .max()
            .unwrap();
        assert!(most <= 210, "{most} starts in one second");
        assert_eq!(l.waits().delayed, 1990);
    }

    #[test]
    fn no_window_edge_burst_after_a_quiet_spell() {
        let t0 = Instant::now();
        let mut l = Limiter::new(rate("10/s,burst=3"));
        schedule(&mut l, t0, 20);
        // Idle long: the burst is back, but only the burst.
        let at = schedule(&mut l, t0 + Duration::from_secs(100), 13);
        assert_eq!(at.iter().filter(|d| d.is_zero()).count(), 3);
        let first_second = at.iter().filter(|d| **d < Duration::from_secs(1)).count();
        assert_eq!(first_second, 3 + 9, "{at:?}");
    }

    #[test]
    fn a_late_wake_up_catches_up_within_the_burst_only() {
        let t0 = Instant::now();
        let mut l = Limiter::new(rate("100/s,burst=5"));
        for _ in 0..5 {
            l.check(t0).unwrap();
            l.start(t0);
        }
        assert!(l.check(t0).is_err());
        // Woken 1 s late: five starts at once (the burst), not a hundred.
        let late = t0 + Duration::from_secs(1);
        let mut n = 0;
        while l.check(late).is_ok() {
            l.start(late);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn waits_are_counted_from_the_first_refusal() {
        let t0 = Instant::now();
        let mut l = Limiter::new(rate("1/s"));
        l.check(t0).unwrap();
        l.start(t0);
        assert_eq!(l.check(t0), Err(t0 + Duration::from_secs(1)));
        assert!(l.holding());
        // A second refusal does not restart the count.
        assert!(l.check(t0 + Duration::from_millis(300)).is_err());
        let t1 = t0 + Duration::from_secs(1);
        l.check(t1).unwrap();
        l.start(t1);
        assert_eq!(
            l.waits(),
            Waits {
                delayed: 1,
                waited: Duration::from_secs(1)
            }
        );
        assert!(!l.holding());
    }

    #[test]
    fn a_faster_rate_takes_effect_at_once() {
        let t0 = Instant::now();
        let mut l = Limiter::new(rate("1/h"));
        l.start(t0);
        assert!(l.check(t0 + Duration::from_secs(60)).is_err());
        let now = t0 + Duration::from_secs(60);
        l.set_rate(rate("100/s"), now);
        assert_eq!(l.check(now), Err(now + Duration::from_millis(10)));
        assert!(l.check(now + Duration::from_millis(10)).is_ok());
        assert_eq!(l.rate(), rate("100/s"));
    }
}
