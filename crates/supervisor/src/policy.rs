//! The pool's policies, as pure functions: how long a failing slot waits before its next
//! start, how long a retryable event waits before its next attempt, which worker gets the next
//! task (round-robin over those with room), and how many tasks each worker is given at once
//! (the automatic window). No state, no I/O; unit-tested here.

use std::time::Duration;

/// First restart delay after a failed start.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Delay before restarting a slot after its `failures`-th consecutive failed start:
/// 100 ms doubling to 10 s.
pub fn restart_backoff(failures: u32) -> Duration {
    exp_delay(BACKOFF_BASE, failures, BACKOFF_MAX)
}

/// `base * 2^(n-1)`, capped at `max`; zero for `n == 0`.
pub fn exp_delay(base: Duration, n: u32, max: Duration) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32
        .checked_shl(n.saturating_sub(1).min(31))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// Delay before retrying an event after its `n`-th retryable failure: exponential from `base`,
/// capped at 32×base, with "equal jitter" (half fixed, half random from `rand01` in [0, 1)) so
/// that a burst of failures does not retry in lockstep.
pub fn retry_delay(base: Duration, n: u32, rand01: f64) -> Duration {
    let full = exp_delay(base, n, retry_delay_max(base));
    let half = full / 2;
    half + half.mul_f64(rand01.clamp(0.0, 1.0))
}

/// The longest retry delay for a `--retry-backoff` of `base`: 32×base.
pub fn retry_delay_max(base: Duration) -> Duration {
    base.saturating_mul(32)
}

/// The delay before a retry a worker asked for (`retry_after`, protocol 3): what it asked,
/// clamped to the pool's longest retry delay. No jitter: the worker said when.
pub fn worker_retry_delay(asked: Duration, base: Duration) -> Duration {
    asked.min(retry_delay_max(base))
}

/// Round-robin: the first index at or after `cursor` (wrapping) for which `has_room` holds.
pub fn pick_round_robin(
    len: usize,
    cursor: usize,
    mut has_room: impl FnMut(usize) -> bool,
) -> Option<usize> {
    (0..len).map(|k| (cursor + k) % len).find(|&i| has_room(i))
}

/// Largest window the automatic setting uses.
pub const AUTO_WINDOW_MAX: usize = 1024;
/// Tasks measured before the automatic window trusts its average (it uses 2 until then, so a
/// slow or stuck first task does not find a thousand others queued behind it).
pub const AUTO_WINDOW_WARMUP: u32 = 8;
/// Work the automatic window aims to keep queued at each worker, in microseconds.
pub const AUTO_WINDOW_TARGET_US: f64 = 2_000.0;

/// The automatic window for tasks that take `task_us` on average: enough tasks in flight to
/// cover about 2 ms of work per worker. Tiny tasks get up to 1024 in flight (frames and
/// syscalls are batched, which is where the throughput comes from); tasks of a millisecond or
/// more get 2 (one running, one waiting, so a worker never idles for a round trip) while
/// keeping a slow task's queue-mates few and the end of a run balanced.
pub fn auto_window(task_us: f64) -> usize {
    if task_us.is_nan() || task_us <= 0.0 {
        return AUTO_WINDOW_MAX;
    }
    ((AUTO_WINDOW_TARGET_US / task_us) as usize).clamp(2, AUTO_WINDOW_MAX)
}

/// Exponentially weighted moving average step (weight 1/16 for the new sample).
pub fn ewma(avg: f64, sample: f64) -> f64 {
    avg + (sample - avg) / 16.0
}

/// A tiny xorshift generator for jitter; seeded from the kernel, not for secrets.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A value in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap() {
        let ms: Vec<u128> = (0..10).map(|n| restart_backoff(n).as_millis()).collect();
        assert_eq!(ms, [0, 100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        assert_eq!(restart_backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn retry_delay_has_bounded_jitter() {
        let base = Duration::from_millis(50);
        assert_eq!(retry_delay(base, 1, 0.0), Duration::from_millis(25));
        assert_eq!(retry_delay(base, 2, 0.999_999).as_millis(), 99);
        assert_eq!(retry_delay(base, 30, 0.0), base * 16);
        let mut j = Jitter::new(42);
        for _ in 0..1000 {
            let x = j.next_f64();
            assert!((0.0..1.0).contains(&x));
        }
    }

    #[test]
    fn a_worker_retry_delay_is_clamped_to_the_longest_backoff() {
        let base = Duration::from_millis(100);
        assert_eq!(worker_retry_delay(Duration::ZERO, base), Duration::ZERO);
        assert_eq!(
            worker_retry_delay(Duration::from_millis(700), base),
            Duration::from_millis(700)
        );
        assert_eq!(
            worker_retry_delay(Duration::from_secs(3600), base),
            Duration::from_millis(3200)
        );
    }

    #[test]
    fn auto_window_follows_task_duration() {
        assert_eq!(auto_window(0.0), AUTO_WINDOW_MAX);
        assert_eq!(auto_window(1.0), AUTO_WINDOW_MAX);
        assert_eq!(auto_window(100.0), 20);
        assert_eq!(auto_window(1_000.0), 2);
        assert_eq!(auto_window(1e7), 2);
        let mut avg = 1_000.0;
        for _ in 0..100 {
            avg = ewma(avg, 10.0);
        }
        assert!(avg < 20.0, "{avg}");
    }

    #[test]
    fn round_robin_skips_full_workers() {
        let room = [true, false, true, true];
        assert_eq!(pick_round_robin(4, 0, |i| room[i]), Some(0));
        assert_eq!(pick_round_robin(4, 1, |i| room[i]), Some(2));
        assert_eq!(pick_round_robin(4, 4, |i| room[i]), Some(0));
        assert_eq!(pick_round_robin(4, 0, |_| false), None);
        assert_eq!(pick_round_robin(0, 0, |_| true), None);
        // Cycling the cursor past each pick visits every worker with room in turn.
        let mut cursor = 0;
        let mut order = Vec::new();
        for _ in 0..6 {
            let i = pick_round_robin(4, cursor, |i| room[i]).unwrap_or(usize::MAX);
            order.push(i);
            cursor = i + 1;
        }
        assert_eq!(order, [0, 2, 3, 0, 2, 3]);
    }
}
