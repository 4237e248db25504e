//! What the pool can tell about itself: counters it keeps as it goes, and the snapshot it
//! hands out for `herd status`, USR1, `/metrics` and the dashboard (`/status.json`).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// A name from a fixed set (a state, an outcome, a reason): borrowed where the pool makes it,
/// owned where a client reads it back from JSON.
pub type Name = Cow<'static, str>;

/// Lifecycle events kept for `events` (the oldest is dropped first).
pub const EVENTS_KEPT: usize = 32;
/// Longest `detail` of an event kept, in bytes (a fault message can quote a worker).
pub const EVENT_DETAIL_MAX: usize = 512;
/// Width of one `history` bucket, in seconds.
pub const HISTORY_INTERVAL_SECS: u64 = 5;
/// `history` buckets kept: with [`HISTORY_INTERVAL_SECS`], the last ten minutes.
pub const HISTORY_BUCKETS: usize = 120;

/// Upper bounds (µs) of the task-duration histogram buckets; the last bucket is unbounded.
pub const DURATION_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Task durations (dispatch, or start of the worker's turn, to result), cumulative buckets
/// in the Prometheus sense are derived when rendering.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Count per bucket of [`DURATION_BOUNDS_US`], plus one for larger values.
    pub counts: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, micros: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; DURATION_BOUNDS_US.len() + 1];
        }
        let i = DURATION_BOUNDS_US.partition_point(|&b| b < micros);
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(micros);
        self.count += 1;
    }
}

/// A worker process replaced, as the `events` of `herd status --json` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LifecycleEvent {
    /// When, in seconds since the pool started (compare with `uptime_secs`).
    pub at_secs: f64,
    /// The slot.
    pub worker: usize,
    /// The process that ended.
    pub pid: u32,
    /// As in `restarts`.
    pub reason: crate::Replacement,
    /// [`Replacement::is_unexpected`](crate::Replacement::is_unexpected) of `reason`, spelled
    /// out for readers of the JSON.
    pub unexpected: bool,
    /// What happened, for people (e.g. "worker 1 (pid 4242) killed by SIGKILL").
    pub detail: String,
}

/// Final records per [`HISTORY_INTERVAL_SECS`] bucket, for a throughput chart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryBucket {
    /// Start of the bucket, in seconds since the pool started (a multiple of the interval).
    /// Buckets in which no record was written are absent.
    pub at_secs: u64,
    /// Ok records.
    pub ok: u64,
    /// Error records by kind (only kinds that occurred).
    pub errors: BTreeMap<Name, u64>,
}

/// The last [`HISTORY_BUCKETS`] buckets of final records, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct History {
    pub interval_secs: u64,
    pub buckets: VecDeque<HistoryBucket>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            interval_secs: HISTORY_INTERVAL_SECS,
            buckets: VecDeque::new(),
        }
    }
}

impl History {
    /// Counts one final record written `elapsed_secs` after the pool started (`None`: ok).
    pub fn record(&mut self, elapsed_secs: u64, error: Option<&'static str>) {
        let at = elapsed_secs - elapsed_secs % self.interval_secs.max(1);
        if self.buckets.back().is_none_or(|b| b.at_secs < at) {
            if self.buckets.len() == HISTORY_BUCKETS {
                self.buckets.pop_front();
            }
            self.buckets.push_back(HistoryBucket {
                at_secs: at,
                ok: 0,
                errors: BTreeMap::new(),
            });
        }
        // The clock is monotonic, so the current bucket is always the last one.
        if let Some(b) = self.buckets.back_mut() {
            match error {
                None => b.ok += 1,
                Some(kind) => *b.errors.entry(Cow::Borrowed(kind)).or_default() += 1,
            }
        }
    }
}

/// Counters the pool keeps besides the per-outcome totals.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub retries: u64,
    pub chunks: u64,
    /// `Batch` frames sent, and the events they carried (see `crate::batch`).
    pub batches: u64,
    pub batched_events: u64,
    pub restarts: BTreeMap<&'static str, u64>,
    pub durations: Histogram,
    /// The last [`EVENTS_KEPT`] lifecycle events, oldest first.
    pub events: VecDeque<LifecycleEvent>,
    pub history: History,
}

impl Stats {
    /// Keeps `event` as the newest, dropping the oldest past [`EVENTS_KEPT`].
    pub fn lifecycle(&mut self, mut event: LifecycleEvent) {
        if event.detail.len() > EVENT_DETAIL_MAX {
            let mut end = EVENT_DETAIL_MAX;
            while !event.detail.is_char_boundary(end) {
                end -= 1;
            }
            event.detail.truncate(end);
            event.detail.push('…');
        }
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// One worker slot, as `herd status --json` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    /// Slot index (stable across restarts).
    pub index: usize,
    /// Current process, if any.
    pub pid: Option<u32>,
    /// starting, idle, busy, draining, dying, backoff, stopped.
    pub state: Name,
    /// Tasks completed in this slot.
    pub tasks: u64,
    /// Unexpected exits replaced in this slot (crash, timeout, protocol, start-failure).
    pub restarts: u64,
    /// Tasks the worker holds now.
    pub inflight: usize,
    /// Resident memory in bytes.
    pub rss: Option<u64>,
    /// Seconds since the current process was spawned, if there is one.
    pub uptime_secs: Option<f64>,
}

/// A snapshot of the whole pool. This is the documented `herd status --json` object.
/// Every field reads back with a default when absent, as `herd status` did before the shape
/// was typed: a daemon that predates a field is still shown.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The supervisor's pid.
    pub pid: u32,
    pub uptime_secs: f64,
    /// running, draining, stopping.
    pub phase: Name,
    /// Workers the pool is scaled to.
    pub target_workers: usize,
    pub workers: Vec<WorkerStatus>,
    /// Accepted events waiting for a worker (including retries waiting out their backoff).
    pub queued: usize,
    /// Of `queued`, how many at each priority (as a JSON object: `{"0": 120, "5": 3}`);
    /// priorities with none are left out.
    pub queued_by_priority: BTreeMap<i8, usize>,
    /// Events held by workers.
    pub inflight: usize,
    /// Open submissions.
    pub submissions: usize,
    /// Final records by outcome: ok and each error kind.
    pub totals: BTreeMap<Name, u64>,
    /// Attempts that were retried: each time an event went back to the queue after a failed
    /// attempt (a retryable handler error, or the crash, timeout or protocol fault of the
    /// worker running it). Events merely queued behind a failed worker are re-sent without
    /// counting.
    pub retries: u64,
    /// Worker processes replaced, by reason: unexpected (crash, timeout, protocol,
    /// start-failure) and graceful (max-tasks, max-rss, reload). A scale-down retires a worker
    /// without replacing it and is not counted here (see `target_workers`).
    pub restarts: BTreeMap<Name, u64>,
    /// Chunk lines (partial results of protocol-2 workers) written, all attempts counted.
    pub chunks: u64,
    /// `Batch` frames sent to workers that take batches (`--batch`), and the mean number of
    /// events in one (0 before the first).
    pub batches: u64,
    pub batch_mean_size: f64,
    /// Task durations.
    pub durations: Histogram,
    /// The last 32 workers replaced (restarts and recycles), oldest first, with their reason.
    pub events: VecDeque<LifecycleEvent>,
    /// Final records per 5-second bucket over the last ten minutes, for throughput and error
    /// rates.
    pub history: History,
    /// Event sources outside the pool that report on themselves (a broker consumer); absent
    /// when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceStatus>,
    /// The autoscaler's bounds and decisions; absent when the pool has a fixed size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
    /// The circuit breaker, while it is open (workers keep dying after their handshake
    /// without completing a task); absent when closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerStatus>,
    /// Rate limits on attempt starts (`--rate`), the pool's first; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rates: Vec<RateStatus>,
    /// Per-key limits (`--max-inflight-per-key`, `--key-rate`); absent when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyStatus>,
}

/// The per-key limits, as `herd status --json` shows them (their rate, if any, is the `key`
/// row of `rates`, its waits summed over every key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyStatus {
    /// Events of one key holding a worker at once; 0: no limit.
    pub max_inflight: u32,
    /// Keys with events in flight, parked or throttled now.
    pub tracked: usize,
    /// Events waiting for their key (its places full, or its rate).
    pub parked: usize,
}

/// What a rate limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// Every attempt start of the pool (`--rate` of `herd run` / `herd serve`).
    Pool,
    /// The starts of one submission's events (`herd submit --rate`).
    Submission(crate::SubmissionId),
    /// The starts of each key's events (`--key-rate`), one limit per key; the waits are
    /// summed over all keys.
    Key,
}

/// One rate limit, as `herd status --json` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateStatus {
    pub scope: RateScope,
    /// As given: `200/s,burst=10`.
    pub rate: String,
    pub per_second: f64,
    pub burst: u32,
    /// Starts the limit held back, and their waits summed (from the limit's first refusal to
    /// the start), the current wait included.
    pub delayed: u64,
    pub wait_secs: f64,
    /// Whether a start is being held back now.
    pub holding: bool,
}

/// An open circuit breaker, as `herd status --json` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreakerStatus {
    /// How long it has been open (s).
    pub open_secs: f64,
    /// Workers in a row that died after their handshake without completing a task.
    pub deaths: u32,
    /// What the last one died of.
    pub last: String,
}

/// The autoscaler, as `herd status --json` shows it (`--workers MIN..MAX`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoscaleStatus {
    pub min: usize,
    pub max: usize,
    /// Workers the pool is scaled to now (as `target_workers`).
    pub target: usize,
    /// How long spare capacity must last before a worker is retired, penalty included (ms).
    pub idle_ms: u64,
    /// The anti-flap factor the configured idle interval is multiplied by (1 = none).
    pub penalty: u32,
    /// Sum of the workers' resident memory (bytes).
    pub pool_rss: u64,
    /// `--max-pool-rss`, if set.
    pub max_pool_rss: Option<u64>,
    /// Why growth is held back now (`max-pool-rss`), if it is.
    pub blocked: Option<Name>,
    /// Decisions so far.
    pub grows: u64,
    pub shrinks: u64,
    /// The latest decision.
    pub last: Option<AutoscaleDecision>,
}

/// One autoscaling decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoscaleDecision {
    pub from: usize,
    pub to: usize,
    /// `backlog` (grow) or `idle` (shrink).
    pub reason: Name,
    /// Events waiting when it was taken.
    pub backlog: usize,
    /// Busy-worker equivalents measured (a shrink's spare-capacity check).
    pub demand: f64,
    /// When: the pool's uptime then, and Unix time in milliseconds.
    pub uptime_secs: f64,
    pub unix_ms: u64,
}

/// What an event source outside the pool (a broker consumer) tells about itself, in
/// `herd status` and the metrics. It keeps its own state; the pool only passes it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    /// What it is, e.g. `jetstream`.
    pub name: String,
    /// Whether its connection is up (intake pauses while it is not).
    pub connected: bool,
    /// Where its events come from and its records go, for people.
    pub detail: String,
    /// Its counters and gauges by name (e.g. `fetched`, `acked`, `ack_pending`).
    pub numbers: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::default();
        for us in [50, 100, 101, 2_000_000, 99_000_000] {
            h.observe(us);
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.counts[0], 2, "<= 100us");
        assert_eq!(h.counts[1], 1, "<= 250us");
        assert_eq!(h.counts[13], 1, "<= 2.5s");
        assert_eq!(h.counts[16], 1, "+Inf");
    }

    #[test]
    fn history_is_bucketed_and_bounded() {
        let mut h = History::default();
        h.record(0, None);
        h.record(4, Some("crashed"));
        h.record(5, None);
        h.record(23, None);
        let at: Vec<u64> = h.buckets.iter().map(|b| b.at_secs).collect();
        assert_eq!(at, [0, 5, 20]);
        assert_eq!(h.buckets[0].ok, 1);
        assert_eq!(h.buckets[0].errors.get("crashed"), Some(&1));
        for s in 0..10_000 {
            h.record(25 + s, None);
        }
        assert_eq!(h.buckets.len(), HISTORY_BUCKETS);
        assert_eq!(h.buckets.back().map(|b| b.at_secs), Some(10_020));
    }

    /// `herd status`, the dashboard and every client read the one typed shape the pool
    /// writes: every field survives JSON and back (issue 20).
    #[test]
    fn status_round_trips_through_json() {
        let mut durations = Histogram::default();
        durations.observe(300);
        let mut history = History::default();
        history.record(3, Some("crashed"));
        history.record(7, None);
        let mut stats = Stats::default();
        stats.lifecycle(LifecycleEvent {
            at_secs: 1.5,
            worker: 2,
            pid: 42,
            reason: crate::Replacement::MaxRss,
            unexpected: false,
            detail: "worker 2 (pid 42) recycled".into(),
        });
        let status = Status {
            pid: 7,
            uptime_secs: 12.25,
            phase: "draining".into(),
            target_workers: 2,
            workers: vec![WorkerStatus {
                index: 0,
                pid: Some(99),
                state: "busy".into(),
                tasks: 5,
                restarts: 1,
                inflight: 2,
                rss: Some(1 << 20),
                uptime_secs: Some(3.5),
            }],
            queued: 3,
            queued_by_priority: BTreeMap::from([(-3, 1), (5, 2)]),
            inflight: 2,
            submissions: 1,
            totals: BTreeMap::from([("ok".into(), 4), ("crashed".into(), 1)]),
            retries: 1,
            restarts: BTreeMap::from([("crash".into(), 1)]),
            chunks: 6,
            batches: 2,
            batch_mean_size: 3.5,
            durations,
            events: stats.events,
            history,
            sources: vec![SourceStatus {
                name: "jetstream".into(),
                connected: true,
                detail: "stream S".into(),
                numbers: BTreeMap::from([("acked".into(), 4)]),
            }],
            autoscale: Some(AutoscaleStatus {
                min: 1,
                max: 4,
                target: 2,
                idle_ms: 500,
                penalty: 2,
                pool_rss: 1 << 21,
                max_pool_rss: None,
                blocked: Some("max-pool-rss".into()),
                grows: 1,
                shrinks: 0,
                last: Some(AutoscaleDecision {
                    from: 1,
                    to: 2,
                    reason: "backlog".into(),
                    backlog: 9,
                    demand: 1.5,
                    uptime_secs: 2.0,
                    unix_ms: 1_700_000_000_000,
                }),
            }),
            breaker: Some(BreakerStatus {
                open_secs: 0.5,
                deaths: 3,
                last: "exit 1".into(),
            }),
            rates: vec![RateStatus {
                scope: RateScope::Submission(3),
                rate: "30/m".into(),
                per_second: 0.5,
                burst: 1,
                delayed: 2,
                wait_secs: 3.5,
                holding: true,
            }],
            keys: Some(KeyStatus {
                max_inflight: 1,
                tracked: 4,
                parked: 9,
            }),
        };
        let json = serde_json::to_string(&status).expect("serializes");
        assert!(
            json.contains(r#""keys":{"max_inflight":1,"tracked":4,"parked":9}"#),
            "{json}"
        );
        assert!(json.contains(r#""scope":{"submission":3}"#), "{json}");
        let back: Status = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(serde_json::to_string(&back).expect("serializes"), json);
        assert_eq!(back.queued_by_priority.get(&-3), Some(&1));
        assert_eq!(back.workers[0].state, "busy");
        // The optional parts are absent from the JSON when empty, and read back as empty.
        let bare = Status {
            sources: Vec::new(),
            autoscale: None,
            breaker: None,
            rates: Vec::new(),
            keys: None,
            ..back
        };
        let json = serde_json::to_string(&bare).expect("serializes");
        assert!(
            !json.contains("autoscale")
                && !json.contains("sources")
                && !json.contains("rates")
                && !json.contains("keys"),
            "{json}"
        );
        let back: Status = serde_json::from_str(&json).expect("deserializes");
        assert!(back.autoscale.is_none() && back.breaker.is_none() && back.sources.is_empty());
        // A daemon that predates most fields.
        let old: Status =
            serde_json::from_str(r#"{"pid":9,"phase":"running","workers":[{"index":1}]}"#)
                .expect("deserializes");
        assert_eq!((old.pid, old.workers[0].index, old.queued), (9, 1, 0));
        assert!(old.history.buckets.is_empty() && old.totals.is_empty());
    }

    #[test]
    fn events_are_bounded() {
        let mut st = Stats::default();
        for pid in 0..100 {
            st.lifecycle(LifecycleEvent {
                at_secs: 0.0,
                worker: 0,
                pid,
                reason: crate::Replacement::Crash,
                unexpected: true,
                detail: "é".repeat(1000),
            });
        }
        assert_eq!(st.events.len(), EVENTS_KEPT);
        assert!(st
            .events
            .iter()
            .all(|e| e.detail.len() <= EVENT_DETAIL_MAX + 3));
        assert_eq!(
            st.events.front().map(|e| e.pid),
            Some(100 - EVENTS_KEPT as u32)
        );
    }
}
