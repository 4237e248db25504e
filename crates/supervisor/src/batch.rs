//! Batch dispatch: many events in one handler call, one record each (`--batch`).
//!
//! A worker whose handler takes batches says so once, right after its handshake (protocol 3's
//! `Batching { max }`); the pool then sends it up to `max` queued events in one `Batch` frame.
//! This module holds the rule, free of I/O so it is unit-tested below; the pool carries it out
//! in `pool/batch.rs`, and the slot keeps which of its in-flight tasks started together.
//!
//! # Forming a batch
//! When a batching worker has room, the pool takes events from the queue in its normal order
//! (priorities, then round-robin across submissions), each passing every per-event check a
//! single dispatch makes (`--max-age`/`--deadline`, the keys' limits, the rate limits), until
//! the batch is full: [`BatchConfig::max`], the worker's `max`, its window room, the frame limit
//! and the smallest [cap](#isolation) of the events in it. With `by_key`, a batch holds the
//! events of the first one's key only; others are passed over (a few batches' worth at most) and
//! keep their places.
//!
//! # When a partial batch goes
//! At once when the worker holds nothing: an idle worker never waits. When it is busy (but has
//! room), a partial batch waits for more events until [`BatchConfig::wait`] has passed since a
//! dispatch first held one back; one pool-wide deadline, armed and fired by the pool's timers,
//! not a timer per event.
//!
//! # Isolation
//! A worker that dies, overruns `--timeout` or breaks the protocol with a started batch
//! unanswered cannot say which event was to blame (nor can one that dies holding replies back,
//! batched or not: see `crate::blame`). The unanswered events go back to the front of the queue
//! uncharged, each with a [cap](crate::blame::SOLO) of 1: it runs alone, on a worker holding
//! nothing else, and is charged as a single task is. So a poison event ends quarantined by the
//! usual retries, alone, after one extra crash, and every other event of its batch is answered.

use std::time::Duration;

use crate::job::Job;

/// How a pool (`--batch N --batch-wait DUR --batch-by-key`) or a submission batches its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Events per batch, at most (below 2: no batches).
    pub max: u32,
    /// How long a partial batch may wait for more while its worker is busy.
    pub wait: Duration,
    /// Each batch holds one key's events only (events without a key are one group).
    pub by_key: bool,
}

/// The default `--batch-wait`: short, so thin traffic is not held up (onyx cut its default
/// from 1,000 ms to 50 ms for that reason; herd sends at once to an idle worker anyway).
pub const DEFAULT_WAIT: Duration = Duration::from_millis(5);

impl BatchConfig {
    /// `max` events a batch, the default wait, any keys.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            wait: DEFAULT_WAIT,
            by_key: false,
        }
    }

    /// Whether it batches at all.
    pub fn enabled(&self) -> bool {
        self.max > 1
    }
}

/// Bytes a `Batch` frame body adds around its payloads, at most: variant and count.
const BATCH_FRAME_OVERHEAD: usize = 1 + 9;
/// Bytes each task of a `Batch` adds around its payload, at most: id, attempt, length.
const BATCH_TASK_OVERHEAD: usize = 9 + 5 + 9;
/// How many events of other keys a `by_key` batch passes over, per place in the batch, before
/// it goes as it is (bounds the work of one dispatch).
const BY_KEY_SCAN: usize = 4;

/// What [`Former::offer`] decided for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// It joins the batch.
    Join,
    /// Another key's, in a `by_key` batch: it keeps its place in the queue, and the batch
    /// looks further.
    PassOver,
    /// It cannot join (no batching for its submission, its cap, the frame limit, or too many
    /// passed over): it keeps its place, and the batch goes as it is.
    Stop,
}

/// A batch being formed: what it holds so far decides what may join.
#[derive(Debug)]
pub(crate) struct Former {
    /// Events it may hold, at most (lowered by the caps of those that joined).
    limit: usize,
    len: usize,
    /// Frame body bytes so far, and the most allowed.
    bytes: usize,
    max_frame: usize,
    /// With `by_key`: the first event's key.
    key: Option<Option<u64>>,
    passed_over: usize,
}

impl Former {
    /// A batch starting with `first`, for a worker that takes `worker_max` per call and has
    /// room for `room` more tasks, under its submission's `cfg`.
    pub fn new(
        first: &Job,
        cfg: BatchConfig,
        worker_max: u32,
        room: usize,
        max_frame: usize,
    ) -> Self {
        let mut limit = (cfg.max.min(worker_max) as usize).min(room);
        if first.batch_cap > 0 {
            limit = limit.min(first.batch_cap.into());
        }
        Self {
            limit: limit.max(1),
            len: 1,
            bytes: BATCH_FRAME_OVERHEAD + BATCH_TASK_OVERHEAD + first.payload.len(),
            max_frame,
            key: cfg.by_key.then(|| key_of(first)),
            passed_over: 0,
        }
    }

    /// Events it may hold, at most: 1 means it goes as a single task.
    pub fn limit(&self) -> usize {
        self.limit
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.limit
    }

    /// Whether `job`, whose submission batches as `cfg` (if at all), may join. A `Join` is
    /// counted in: the caller must add the job, or [`Former::unjoin`] it.
    pub fn offer(&mut self, job: &Job, cfg: Option<BatchConfig>) -> Fit {
        if cfg.is_none_or(|c| !c.enabled()) {
            return Fit::Stop;
        }
        if let Some(key) = self.key {
            if key_of(job) != key {
                self.passed_over += 1;
                return if self.passed_over > BY_KEY_SCAN * self.limit {
                    Fit::Stop
                } else {
                    Fit::PassOver
                };
            }
        }
        if job.batch_cap > 0 && usize::from(job.batch_cap) <= self.len {
            return Fit::Stop;
        }
        let bytes = self.bytes + BATCH_TASK_OVERHEAD + job.payload.len();
        if bytes > self.max_frame {
            return Fit::Stop;
        }
        self.bytes = bytes;
        self.len += 1;
        if job.batch_cap > 0 {
            self.limit = self.limit.min(job.batch_cap.into());
        }
        Fit::Join
    }

    /// A job that [`Former::offer`] let join did not (its key parked it): its payload was
    /// `len` bytes.
    pub fn unjoin(&mut self, len: usize) {
        self.len -= 1;
        self.bytes -= BATCH_TASK_OVERHEAD + len;
    }
}

/// An event's key hash, for `by_key` (none is a group of its own).
fn key_of(job: &Job) -> Option<u64> {
    job.extra.as_ref().and_then(|e| e.key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::job::Extra;

    fn job(id: u64) -> Job {
        Job::fresh(id, 1, id, 0)
    }

    fn keyed(id: u64, key: u64) -> Job {
        let mut j = job(id);
        j.extra = Some(Box::new(Extra {
            key: Some(key),
            ..Extra::default()
        }));
        j
    }

    const ON: Option<BatchConfig> = Some(BatchConfig {
        max: 4,
        wait: DEFAULT_WAIT,
        by_key: false,
    });

    #[test]
    fn a_batch_is_bounded_by_the_config_the_worker_and_the_room() {
        let cfg = BatchConfig::new(64);
        assert_eq!(Former::new(&job(0), cfg, 8, 100, 1 << 20).limit(), 8);
        assert_eq!(Former::new(&job(0), cfg, 100, 5, 1 << 20).limit(), 5);
        assert_eq!(
            Former::new(&job(0), BatchConfig::new(3), 100, 100, 1 << 20).limit(),
            3
        );
        // No room at all still leaves the single task the caller picked the worker for.
        assert_eq!(Former::new(&job(0), cfg, 8, 0, 1 << 20).limit(), 1);
    }

    #[test]
    fn it_fills_up_to_its_limit() {
        let mut f = Former::new(&job(0), ON.unwrap(), 64, 64, 1 << 20);
        for id in 1..4 {
            assert!(!f.is_full());
            assert_eq!(f.offer(&job(id), ON), Fit::Join);
        }
        assert!(f.is_full());
        assert_eq!(f.len(), 4);
    }

    #[test]
    fn an_event_of_a_submission_without_batches_ends_it() {
        let mut f = Former::new(&job(0), ON.unwrap(), 64, 64, 1 << 20);
        assert_eq!(f.offer(&job(1), None), Fit::Stop);
        assert_eq!(f.offer(&job(1), Some(BatchConfig::new(1))), Fit::Stop);
        assert_eq!(f.len(), 1);
    }

    /// A batch is never larger than the smallest cap of its events (a solo one's is 1).
    #[test]
    fn caps_bound_the_batch() {
        let mut capped = job(0);
        capped.batch_cap = 2;
        let f = Former::new(&capped, BatchConfig::new(64), 64, 64, 1 << 20);
        assert_eq!(f.limit(), 2);

        let mut f = Former::new(&job(0), BatchConfig::new(64), 64, 64, 1 << 20);
        let cfg = Some(BatchConfig::new(64));
        assert_eq!(f.offer(&job(1), cfg), Fit::Join);
        assert_eq!(f.offer(&job(2), cfg), Fit::Join);
        // Capped at 4: it may be the fourth, and then the batch is full.
        let mut four = job(3);
        four.batch_cap = 4;
        assert_eq!(f.offer(&four, cfg), Fit::Join);
        assert!(f.is_full());
        // Capped at 2 when two are in: it cannot join.
        let mut f = Former::new(&job(0), BatchConfig::new(64), 64, 64, 1 << 20);
        assert_eq!(f.offer(&job(1), cfg), Fit::Join);
        let mut two = job(2);
        two.batch_cap = 2;
        assert_eq!(f.offer(&two, cfg), Fit::Stop);
        // A cap of 1 never joins anything.
        let mut one = job(9);
        one.batch_cap = 1;
        let mut f = Former::new(&job(0), BatchConfig::new(64), 64, 64, 1 << 20);
        assert_eq!(f.offer(&one, cfg), Fit::Stop);
        assert_eq!(
            Former::new(&one, BatchConfig::new(64), 64, 64, 1 << 20).limit(),
            1
        );
    }

    #[test]
    fn the_frame_limit_bounds_the_batch() {
        let mut big = job(0);
        big.payload = bytes::Bytes::from(vec![b'x'; 400]);
        let mut f = Former::new(&big, BatchConfig::new(64), 64, 64, 1000);
        let mut second = job(1);
        second.payload = bytes::Bytes::from(vec![b'y'; 400]);
        assert_eq!(f.offer(&second, ON), Fit::Join);
        let mut third = job(2);
        third.payload = bytes::Bytes::from(vec![b'z'; 400]);
        assert_eq!(f.offer(&third, ON), Fit::Stop);
        f.unjoin(second.payload.len());
        assert_eq!(f.offer(&third, ON), Fit::Join);
    }

    #[test]
    fn by_key_passes_other_keys_over() {
        let cfg = BatchConfig {
            by_key: true,
            ..BatchConfig::new(2)
        };
        let mut f = Former::new(&keyed(0, 7), cfg, 64, 64, 1 << 20);
        assert_eq!(f.offer(&keyed(1, 8), Some(cfg)), Fit::PassOver);
        assert_eq!(
            f.offer(&job(2), Some(cfg)),
            Fit::PassOver,
            "no key is a key of its own"
        );
        assert_eq!(f.offer(&keyed(3, 7), Some(cfg)), Fit::Join);
        assert!(f.is_full());
        // It gives up after passing over a few batches' worth.
        let mut f = Former::new(&keyed(0, 7), cfg, 64, 64, 1 << 20);
        let passed = (0..100)
            .take_while(|&i| f.offer(&keyed(i, 8), Some(cfg)) == Fit::PassOver)
            .count();
        assert_eq!(passed, BY_KEY_SCAN * 2);
        // Unkeyed events batch together.
        let mut f = Former::new(&job(0), cfg, 64, 64, 1 << 20);
        assert_eq!(f.offer(&job(1), Some(cfg)), Fit::Join);
    }
}
