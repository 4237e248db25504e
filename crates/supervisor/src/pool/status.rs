//! What the pool tells about itself: the snapshot for `herd status`, `/metrics` and USR1.

use super::{Phase, Pool};
use crate::process;
use crate::record::ErrorKind;
use crate::status::{AutoscaleDecision, AutoscaleStatus, Status, WorkerStatus};

impl Pool {
    pub(super) fn status(&self) -> Status {
        let now = tokio::time::Instant::now();
        let workers: Vec<WorkerStatus> = self
            .slots
            .iter()
            // A slot past the target with no process is gone, not stopped.
            .filter(|s| !(s.index >= self.target && s.is_stopped()))
            .map(|s| WorkerStatus {
                index: s.index,
                pid: s.pid(),
                state: s.state().name().into(),
                tasks: s.total_tasks,
                restarts: s.restarts,
                inflight: s.inflight_len(),
                rss: s.pid().and_then(process::rss_bytes),
                uptime_secs: s
                    .pid()
                    .and(s.spawned_at)
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            })
            .collect();
        let pool_rss: u64 = workers.iter().filter_map(|w| w.rss).sum();
        let mut totals: std::collections::BTreeMap<crate::status::Name, u64> = ErrorKind::ALL
            .iter()
            .map(|k| (k.as_str().into(), 0))
            .collect();
        totals.insert("ok".into(), self.summary.ok);
        let mut queued_by_priority = std::collections::BTreeMap::new();
        for (p, n) in self.submissions.depths() {
            *queued_by_priority.entry(p).or_insert(0) += n;
        }
        for p in self.retries.priorities() {
            *queued_by_priority.entry(p).or_insert(0) += 1;
        }
        for (k, v) in &self.summary.errors {
            totals.insert((*k).into(), *v);
        }
        Status {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            target_workers: self.target,
            workers,
            queued: self.submissions.queued() + self.retries.len(),
            queued_by_priority,
            inflight: self.slots.iter().map(|s| s.inflight_len()).sum(),
            submissions: self.submissions.len(),
            totals,
            retries: self.stats.retries,
            restarts: self
                .stats
                .restarts
                .iter()
                .map(|(k, v)| ((*k).into(), *v))
                .collect(),
            chunks: self.stats.chunks,
            batches: self.stats.batches,
            batch_mean_size: match self.stats.batches {
                0 => 0.0,
                n => self.stats.batched_events as f64 / n as f64,
            },
            durations: self.stats.durations.clone(),
            events: self.stats.events.clone(),
            history: self.stats.history.clone(),
            phase: match self.phase {
                Phase::Running => "running",
                Phase::Draining { .. } => "draining",
                Phase::Stopping => "stopping",
            }
            .into(),
            sources: Vec::new(),
            rates: self.rate_status(),
            keys: self.key_status(),
            breaker: self
                .breaker
                .as_ref()
                .map(|open| crate::status::BreakerStatus {
                    open_secs: self.now.saturating_duration_since(open.since).as_secs_f64(),
                    deaths: self.early_deaths,
                    last: open.last.clone(),
                }),
            autoscale: self.autoscaler.as_ref().map(|a| {
                let cfg = a.config();
                let (grows, shrinks) = a.counts();
                let uptime = self.now.saturating_duration_since(self.epoch);
                let unix_now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                AutoscaleStatus {
                    min: cfg.min,
                    max: cfg.max,
                    target: self.target,
                    idle_ms: a.idle_interval().as_millis() as u64,
                    penalty: a.penalty(),
                    pool_rss,
                    max_pool_rss: cfg.max_pool_rss,
                    blocked: a.blocked().map(Into::into),
                    grows,
                    shrinks,
                    last: a.last().map(|d| {
                        let ago = uptime.saturating_sub(d.at);
                        AutoscaleDecision {
                            from: d.from,
                            to: d.to,
                            reason: d.reason.into(),
                            backlog: d.backlog,
                            demand: d.demand,
                            uptime_secs: d.at.as_secs_f64(),
                            unix_ms: unix_now.saturating_sub(ago).as_millis() as u64,
                        }
                    }),
                }
            }),
        }
    }

    /// USR1: the state of every worker, one log line each.
    pub(super) fn log_status(&self) {
        let st = self.status();
        tracing::info!(
            workers = st.workers.len(),
            queued = st.queued,
            inflight = st.inflight,
            submissions = st.submissions,
            ok = st.totals.get("ok").copied().unwrap_or(0),
            retries = st.retries,
            restarts = ?st.restarts,
            "status"
        );
        for w in &st.workers {
            tracing::info!(
                worker = w.index,
                pid = w.pid,
                state = w.state.as_ref(),
                tasks = w.tasks,
                inflight = w.inflight,
                restarts = w.restarts,
                rss = w.rss,
                "worker status"
            );
        }
    }
}
