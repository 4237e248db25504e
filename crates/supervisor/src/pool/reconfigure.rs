//! A new configuration for a running pool ([`Command::Reconfigure`]): what can change in place
//! does, a changed worker command or launch rolls the workers, the rest waits for a restart.
//!
//! [`Command::Reconfigure`]: crate::Command::Reconfigure

use super::{Phase, Pool};
use crate::PoolConfig;

impl Pool {
    pub(super) fn reconfigure(&mut self, new: PoolConfig) {
        if self.phase != Phase::Running {
            tracing::info!("stopping: the new configuration is not applied");
            return;
        }
        // Fixed at start: the worker socket's frame limit, the submissions' credits, the
        // runtime directory (owned by the workers' user), the autoscaler and the batches.
        let max_frame = new.max_frame.clamp(1024, herd_proto::MAX_FRAME_CEILING);
        let kept: Vec<&str> = [
            ("max_frame", max_frame != self.cfg.max_frame),
            ("queue", new.queue != self.cfg.queue),
            ("queue_bytes", new.queue_bytes != self.cfg.queue_bytes),
            ("runtime_dir", new.runtime_dir != self.cfg.runtime_dir),
            ("user", new.launch.user != self.cfg.launch.user),
            ("autoscale", new.autoscale != self.cfg.autoscale),
            ("batch", new.batch != self.cfg.batch),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !kept.is_empty() {
            tracing::warn!(
                ?kept,
                "these settings need a restart; the running ones stay"
            );
        }
        let mut launch = new.launch;
        launch.user = self.cfg.launch.user.clone();
        let roll = new.command != self.cfg.command || launch != self.cfg.launch;
        let cfg = &mut self.cfg;
        cfg.command = new.command;
        cfg.launch = launch;
        cfg.window = new.window;
        cfg.timeout = new.timeout;
        cfg.retries = new.retries;
        cfg.retry_backoff = new.retry_backoff;
        cfg.stop_grace = new.stop_grace;
        cfg.max_tasks = new.max_tasks;
        cfg.max_rss = new.max_rss;
        cfg.start_timeout = new.start_timeout;
        cfg.exit_timeout = new.exit_timeout;
        self.limits.start_timeout = new.start_timeout;
        self.limits.timeout = new.timeout;
        self.limits.exit_timeout = new.exit_timeout;
        self.limits.max_tasks = new.max_tasks;
        if new.rate != self.cfg.rate {
            self.set_rate(new.rate);
        }
        if new.keys != self.cfg.keys {
            self.cfg.keys = new.keys;
            self.keys.set_limits(new.keys, self.now);
            tracing::info!(
                max_inflight = new.keys.max_inflight,
                rate = new.keys.rate.map(|r| r.to_string()),
                "per-key limits"
            );
        }
        tracing::info!(roll, "new configuration applied");
        if roll {
            // Every replacement is spawned from the new command and launch settings (before
            // scaling: a worker added below starts with them already).
            self.reload();
        }
        if self.autoscaler.is_none() && new.autoscale.is_none() {
            self.cfg.workers = new.workers.max(1);
            self.scale(new.workers);
        }
    }
}
