//! `herd serve --redis`: the options of Redis Streams intake (see herd-redis and
//! docs/REDIS.md).

use std::time::Duration;

use clap::Args;
use herd_redis::Config;

#[derive(Debug, Args)]
#[command(next_help_heading = "Redis Streams (events from a consumer group many daemons share)")]
pub struct RedisArgs {
    /// Also take events from a Redis stream: the server's URL,
    /// redis://[USER:PASSWORD@]HOST:PORT[/DB] [env: HERD_REDIS_URL].
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "HERD_REDIS_URL",
        hide_env = true
    )]
    pub url: Option<String>,
    /// The stream of events; created (empty) with the group if absent.
    #[arg(
        long,
        value_name = "KEY",
        default_value = "herd:events",
        requires = "url"
    )]
    pub redis_stream: String,
    /// The consumer group every daemon joins; created if absent, delivering the stream from
    /// its start.
    #[arg(long, value_name = "NAME", default_value = "herd", requires = "url")]
    pub redis_group: String,
    /// This daemon's name in the group, unique per daemon [default: herd-HOST-PID].
    #[arg(long, value_name = "NAME", requires = "url")]
    pub redis_consumer: Option<String>,
    /// The stream each record is written to, with the entry id in its `id` field
    /// [default: STREAM:results].
    #[arg(long, value_name = "KEY", requires = "url")]
    pub redis_results: Option<String>,
    /// The field of an entry that holds the event; an entry without it gets a `rejected`
    /// record.
    #[arg(long, value_name = "NAME", default_value = herd_redis::DEFAULT_FIELD, requires = "url")]
    pub redis_field: String,
    /// An entry idle this long is claimed by another daemon (a live daemon keeps the entries
    /// it works on from going idle, however long they run).
    #[arg(long, value_name = "DUR", default_value = "30s",
          value_parser = crate::parse_positive_duration, requires = "url")]
    pub redis_claim_idle: Duration,
    /// Deliveries of an entry at most: one claimed past it is quarantined with a `rejected`
    /// record without running (0: no limit).
    #[arg(long, value_name = "N", default_value_t = herd_redis::DEFAULT_MAX_DELIVER, requires = "url")]
    pub redis_max_deliver: u64,
}

impl RedisArgs {
    /// The configuration, if `--redis` was given.
    pub fn config(&self, retry_backoff: Duration) -> Option<Config> {
        let url = self.url.clone()?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Some(Config {
            url,
            stream: self.redis_stream.clone(),
            group: self.redis_group.clone(),
            consumer: self
                .redis_consumer
                .clone()
                .unwrap_or_else(|| format!("herd-{}-{}", host.trim(), std::process::id())),
            results: self
                .redis_results
                .clone()
                .unwrap_or_else(|| format!("{}:results", self.redis_stream)),
            field: self.redis_field.clone(),
            claim_idle: self.redis_claim_idle,
            max_deliver: Some(self.redis_max_deliver).filter(|&m| m > 0),
            retry_backoff,
        })
    }
}
