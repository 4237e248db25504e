//! The status snapshot in the OpenMetrics text format: a fresh `prometheus_client` registry
//! per scrape around one [`Status`] (a [`Collector`] of constant metrics), so there is no
//! second copy of the counters to keep in step with the pool.

use herd_supervisor::status::{Status, DURATION_BOUNDS_US};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// What Prometheus expects for the OpenMetrics text format `prometheus_client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every state a worker slot can report (`WorkerStatus::state`). All are exported, at 0 when
/// no worker is in them, so that a series does not vanish when its last worker leaves it.
const WORKER_STATES: [&str; 7] = [
    "starting", "idle", "busy", "draining", "dying", "backoff", "stopped",
];

/// The snapshot in the OpenMetrics text format.
pub fn render(status: Status) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("herd");
    registry.register_collector(Box::new(Snapshot(status)));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

/// One [`Status`], exported as constant metrics.
#[derive(Debug)]
struct Snapshot(Status);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;

        // Counters: the encoder appends `_total`.
        let mut m = enc.encode_descriptor(
            "events",
            "Final records, by outcome: ok or the error kind",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in &s.totals {
            ConstCounter::new(*n).encode(m.encode_family(&[("outcome", outcome.as_ref())])?)?;
        }
        let m = enc.encode_descriptor(
            "retries",
            "Retries after retryable handler errors",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.retries).encode(m)?;
        let m = enc.encode_descriptor(
            "chunks",
            "Chunk lines (partial results) written, every attempt counted",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.chunks).encode(m)?;
        let m = enc.encode_descriptor(
            "batches",
            "Batch frames sent to workers that take batches",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.batches).encode(m)?;
        let mut m = enc.encode_descriptor(
            "restarts",
            "Worker replacements, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &s.restarts {
            ConstCounter::new(*n).encode(m.encode_family(&[("reason", reason.as_ref())])?)?;
        }

        // Gauges.
        let mut m =
            enc.encode_descriptor("workers", "Worker slots, by state", None, MetricType::Gauge)?;
        let mut states = WORKER_STATES.to_vec();
        for w in &s.workers {
            if !states.contains(&w.state.as_ref()) {
                states.push(&w.state);
            }
        }
        for state in states {
            let n = s.workers.iter().filter(|w| w.state == state).count();
            ConstGauge::new(n as u64).encode(m.encode_family(&[("state", state)])?)?;
        }
        let gauges: [(&str, &str, u64); 5] = [
            (
                "workers_target",
                "Workers the pool is scaled to",
                s.target_workers as u64,
            ),
            (
                "queue_depth",
                "Accepted events waiting for a worker, retries in backoff included",
                s.queued as u64,
            ),
            ("inflight", "Events held by workers", s.inflight as u64),
            ("submissions", "Open submissions", s.submissions as u64),
            (
                "breaker_open",
                "1 while the circuit breaker is open: workers keep dying after their handshake",
                u64::from(s.breaker.is_some()),
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        // The default priority always, so that a pool without priorities has the series too.
        let mut by_priority = s.queued_by_priority.clone();
        by_priority.entry(0).or_insert(0);
        let mut m = enc.encode_descriptor(
            "queue_depth_priority",
            "Accepted events waiting for a worker, by priority (higher runs first)",
            None,
            MetricType::Gauge,
        )?;
        for (p, n) in by_priority {
            let label = p.to_string();
            ConstGauge::new(n as u64).encode(m.encode_family(&[("priority", label.as_str())])?)?;
        }
        let m = enc.encode_descriptor(
            "uptime",
            "Time since the pool started",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.uptime_secs).encode(m)?;
        let m = enc.encode_descriptor(
            "batch_size_mean",
            "Mean events per Batch frame (0 before the first)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.batch_mean_size).encode(m)?;

        // Sources outside the pool (a broker consumer): connection state and their numbers.
        if !s.sources.is_empty() {
            let mut m = enc.encode_descriptor(
                "source_connected",
                "Whether an event source's connection is up (intake pauses while it is not)",
                None,
                MetricType::Gauge,
            )?;
            for src in &s.sources {
                let up = u64::from(src.connected);
                ConstGauge::new(up).encode(m.encode_family(&[("source", src.name.as_str())])?)?;
            }
            let mut names: Vec<&String> = s.sources.iter().flat_map(|x| x.numbers.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let metric = format!("source_{name}");
                let mut m = enc.encode_descriptor(
                    &metric,
                    "An event source's own number (see the README, Beyond one machine)",
                    None,
                    MetricType::Gauge,
                )?;
                for src in &s.sources {
                    if let Some(&v) = src.numbers.get(name) {
                        ConstGauge::new(v)
                            .encode(m.encode_family(&[("source", src.name.as_str())])?)?;
                    }
                }
            }
        }

        if let Some(a) = &s.autoscale {
            let mut m = enc.encode_descriptor(
                "autoscale_decisions",
                "Autoscaling decisions, by direction",
                None,
                MetricType::Counter,
            )?;
            for (direction, n) in [("grow", a.grows), ("shrink", a.shrinks)] {
                ConstCounter::new(n).encode(m.encode_family(&[("direction", direction)])?)?;
            }
            let gauges: [(&str, &str, u64); 4] = [
                (
                    "autoscale_min",
                    "Fewest workers the pool autoscales to",
                    a.min as u64,
                ),
                (
                    "autoscale_max",
                    "Most workers the pool autoscales to",
                    a.max as u64,
                ),
                (
                    "autoscale_blocked",
                    "1 while growth is held back by the pool memory ceiling",
                    u64::from(a.blocked.is_some()),
                ),
                (
                    "autoscale_penalty",
                    "Factor on the idle interval after a shrink was followed by a grow",
                    u64::from(a.penalty),
                ),
            ];
            for (name, help, v) in gauges {
                ConstGauge::new(v).encode(enc.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            let m = enc.encode_descriptor(
                "pool_rss",
                "Sum of the workers' resident memory",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(a.pool_rss).encode(m)?;
        }

        if !s.rates.is_empty() {
            encode_rates(&s.rates, &mut enc)?;
        }

        // The histogram: per-bucket counts go in as they are; the encoder makes them
        // cumulative. The last bucket is `+Inf`.
        let h = &s.durations;
        let buckets: Vec<(f64, u64)> = DURATION_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            // `counts` stays empty until the first observation.
            .map(|(i, le)| (le, h.counts.get(i).copied().unwrap_or(0)))
            .collect();
        let mut m = enc.encode_descriptor(
            "task_duration",
            "Task durations, from dispatch (or the start of the worker's turn) to result",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count, &buckets, None)
    }
}
/// Each rate limit, labelled by its scope (`pool` or `submission-N`): its rate and how long
/// it held starts back.
fn encode_rates(
    rates: &[herd_supervisor::RateStatus],
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    use herd_supervisor::RateScope;
    let scopes: Vec<String> = rates
        .iter()
        .map(|r| match r.scope {
            RateScope::Pool => "pool".to_owned(),
            RateScope::Submission(id) => format!("submission-{id}"),
            RateScope::Key => "key".to_owned(),
        })
        .collect();
    let mut m = enc.encode_descriptor(
        "rate_limit",
        "Attempt starts allowed per second, by the limit's scope",
        None,
        MetricType::Gauge,
    )?;
    for (r, scope) in rates.iter().zip(&scopes) {
        ConstGauge::new(r.per_second).encode(m.encode_family(&[("scope", scope.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "rate_limit_burst",
        "Attempt starts a limit lets through at once after a quiet spell",
        None,
        MetricType::Gauge,
    )?;
    for (r, scope) in rates.iter().zip(&scopes) {
        ConstGauge::new(u64::from(r.burst))
            .encode(m.encode_family(&[("scope", scope.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "rate_limit_delayed",
        "Attempt starts a rate limit held back",
        None,
        MetricType::Counter,
    )?;
    for (r, scope) in rates.iter().zip(&scopes) {
        ConstCounter::new(r.delayed).encode(m.encode_family(&[("scope", scope.as_str())])?)?;
    }
    let mut m = enc.encode_descriptor(
        "rate_limit_wait",
        "Time attempt starts waited on a rate limit, summed",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?;
    for (r, scope) in rates.iter().zip(&scopes) {
        ConstCounter::new(r.wait_secs).encode(m.encode_family(&[("scope", scope.as_str())])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_supervisor::status::{Histogram, WorkerStatus};

    use super::*;

    fn worker(index: usize, state: &'static str) -> WorkerStatus {
        WorkerStatus {
            index,
            pid: Some(100 + index as u32),
            state: state.into(),
            tasks: 0,
            restarts: 0,
            inflight: 0,
            rss: None,
            uptime_secs: None,
        }
    }

    /// A running pool with nothing in it: each test sets only the fields it renders.
    fn empty_status() -> Status {
        Status {
            pid: 1,
            uptime_secs: 0.0,
            phase: "running".into(),
            target_workers: 0,
            workers: vec![],
            queued: 0,
            queued_by_priority: BTreeMap::new(),
            inflight: 0,
            submissions: 0,
            totals: BTreeMap::new(),
            retries: 0,
            chunks: 0,
            batches: 0,
            batch_mean_size: 0.0,
            restarts: BTreeMap::new(),
            durations: Histogram::default(),
            events: Default::default(),
            history: Default::default(),
            sources: Vec::new(),
            autoscale: None,
            breaker: None,
            rates: Vec::new(),
            keys: None,
        }
    }

    #[test]
    fn rate_limits_show_their_rate_and_waits_by_scope() {
        let limit =
            |scope, rate: &str, per_second, delayed, wait_secs| herd_supervisor::RateStatus {
                scope,
                rate: rate.into(),
                per_second,
                burst: 10,
                delayed,
                wait_secs,
                holding: false,
            };
        let status = Status {
            rates: vec![
                limit(
                    herd_supervisor::RateScope::Pool,
                    "200/s,burst=10",
                    200.0,
                    1990,
                    9.5,
                ),
                limit(
                    herd_supervisor::RateScope::Submission(7),
                    "30/m",
                    0.5,
                    3,
                    6.0,
                ),
            ],
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "# TYPE herd_rate_limit gauge",
            "herd_rate_limit{scope=\"pool\"} 200.0",
            "herd_rate_limit{scope=\"submission-7\"} 0.5",
            "herd_rate_limit_burst{scope=\"pool\"} 10",
            "herd_rate_limit_delayed_total{scope=\"pool\"} 1990",
            "# TYPE herd_rate_limit_wait_seconds counter",
            "herd_rate_limit_wait_seconds_total{scope=\"pool\"} 9.5",
            "herd_rate_limit_wait_seconds_total{scope=\"submission-7\"} 6.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // No limit, no series.
        let text = render(empty_status()).expect("a String never fails to take writes");
        assert!(!text.contains("herd_rate_limit"), "{text}");
    }

    #[test]
    fn renders_the_snapshot() {
        let mut durations = Histogram::default();
        for us in [50, 100, 101, 2_000_000, 99_000_000] {
            durations.observe(us);
        }
        let status = Status {
            uptime_secs: 1.5,
            target_workers: 3,
            workers: vec![worker(0, "idle"), worker(1, "busy"), worker(2, "idle")],
            queued: 4,
            queued_by_priority: BTreeMap::from([(-2, 1), (9, 3)]),
            inflight: 1,
            submissions: 2,
            totals: BTreeMap::from([("ok".into(), 7), ("failed".into(), 2)]),
            retries: 3,
            restarts: BTreeMap::from([("crash".into(), 1)]),
            durations,
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "# TYPE herd_events counter",
            "herd_events_total{outcome=\"ok\"} 7",
            "herd_events_total{outcome=\"failed\"} 2",
            "herd_retries_total 3",
            "herd_restarts_total{reason=\"crash\"} 1",
            "# TYPE herd_workers gauge",
            "herd_workers{state=\"idle\"} 2",
            "herd_workers{state=\"busy\"} 1",
            "herd_workers{state=\"backoff\"} 0",
            "herd_workers_target 3",
            "herd_queue_depth 4",
            "# TYPE herd_queue_depth_priority gauge",
            "herd_queue_depth_priority{priority=\"-2\"} 1",
            "herd_queue_depth_priority{priority=\"0\"} 0",
            "herd_queue_depth_priority{priority=\"9\"} 3",
            "herd_inflight 1",
            "herd_submissions 2",
            "herd_uptime_seconds 1.5",
            "# TYPE herd_task_duration_seconds histogram",
            "herd_task_duration_seconds_count 5",
            "herd_task_duration_seconds_sum 101.000251",
            "herd_task_duration_seconds_bucket{le=\"0.0001\"} 2",
            "herd_task_duration_seconds_bucket{le=\"0.00025\"} 3",
            "herd_task_duration_seconds_bucket{le=\"2.5\"} 4",
            "herd_task_duration_seconds_bucket{le=\"10.0\"} 4",
            "herd_task_duration_seconds_bucket{le=\"+Inf\"} 5",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn autoscaling_shows_bounds_decisions_and_memory() {
        let status = Status {
            target_workers: 3,
            autoscale: Some(herd_supervisor::AutoscaleStatus {
                min: 1,
                max: 8,
                target: 3,
                idle_ms: 10_000,
                penalty: 2,
                pool_rss: 3 << 20,
                max_pool_rss: None,
                blocked: Some("max-pool-rss".into()),
                grows: 4,
                shrinks: 2,
                last: None,
            }),
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "herd_workers_target 3",
            "herd_autoscale_min 1",
            "herd_autoscale_max 8",
            "herd_autoscale_decisions_total{direction=\"grow\"} 4",
            "herd_autoscale_decisions_total{direction=\"shrink\"} 2",
            "herd_autoscale_blocked 1",
            "herd_autoscale_penalty 2",
            "herd_pool_rss_bytes 3145728",
        ] {
            assert!(text.lines().any(|l| l == line), "want {line:?} in\n{text}");
        }
    }

    #[test]
    fn sources_show_their_connection_and_numbers() {
        let status = Status {
            target_workers: 1,
            workers: vec![worker(0, "idle")],
            submissions: 1,
            sources: vec![herd_supervisor::SourceStatus {
                name: "jetstream".into(),
                connected: false,
                detail: String::new(),
                numbers: BTreeMap::from([("acked".to_string(), 5), ("held".to_string(), 2)]),
            }],
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "herd_source_connected{source=\"jetstream\"} 0",
            "herd_source_acked{source=\"jetstream\"} 5",
            "herd_source_held{source=\"jetstream\"} 2",
        ] {
            assert!(text.contains(line), "want {line:?} in\n{text}");
        }
    }

    #[test]
    fn an_empty_histogram_has_every_bucket() {
        let text = render(empty_status()).expect("a String never fails to take writes");
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("herd_task_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, DURATION_BOUNDS_US.len() + 1, "{text}");
        assert!(text.contains("herd_task_duration_seconds_bucket{le=\"+Inf\"} 0"));
    }
}
