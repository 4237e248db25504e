//! `herd serve --nats`: the options of JetStream intake (see herd-jetstream and the README,
//! "Beyond one machine").

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herd_jetstream::{Auth, Config};

/// Environment variable that may hold the NATS token (never taken on the command line).
const TOKEN_ENV: &str = "HERD_NATS_TOKEN";

#[derive(Debug, Args)]
#[command(next_help_heading = "NATS JetStream (events from a durable consumer many daemons share)")]
pub struct NatsArgs {
    /// Also take events from NATS JetStream: server URL(s), comma-separated, e.g.
    /// nats://127.0.0.1:4222 [env: HERD_NATS_URL].
    #[arg(
        long = "nats",
        value_name = "URL",
        env = "HERD_NATS_URL",
        value_delimiter = ',',
        hide_env = true
    )]
    pub urls: Vec<String>,
    /// NATS credentials file (JWT and NKey seed) [env: HERD_NATS_CREDS].
    #[arg(long, value_name = "FILE", env = "HERD_NATS_CREDS", hide_env = true)]
    pub nats_creds: Option<PathBuf>,
    /// File holding the NATS token; or set HERD_NATS_TOKEN (a token is never taken on the
    /// command line).
    #[arg(long, value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// The stream of events; created if absent (work-queue retention, file storage),
    /// capturing --nats-subjects.
    #[arg(long, value_name = "NAME", default_value = "HERD")]
    pub nats_stream: String,
    /// Subjects the stream captures when herd creates it (comma-separated).
    #[arg(
        long,
        value_name = "SUBJ",
        default_value = "herd.events",
        value_delimiter = ','
    )]
    pub nats_subjects: Vec<String>,
    /// Replicas of each stream herd creates (events and results; the consumer takes its
    /// stream's): 3 on a cluster of 3 or more servers keeps them through the loss of one.
    #[arg(long, value_name = "N", default_value_t = herd_jetstream::DEFAULT_REPLICAS,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
    /// The durable pull consumer every daemon binds to; created if absent with the three
    /// settings below (an existing consumer keeps its own).
    #[arg(long, value_name = "NAME", default_value = "herd")]
    pub nats_consumer: String,
    /// Ack wait of a consumer herd creates: a message not settled (or reported in progress,
    /// which herd does every half ack wait) within it goes to another daemon.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = crate::parse_positive_duration)]
    pub nats_ack_wait: Duration,
    /// Max deliver of a consumer herd creates: deliveries of a message at most (-1: no limit).
    #[arg(long, value_name = "N", default_value_t = herd_jetstream::DEFAULT_MAX_DELIVER,
          allow_negative_numbers = true)]
    pub nats_max_deliver: i64,
    /// Max ack pending of a consumer herd creates: messages delivered and not yet settled,
    /// across all daemons.
    #[arg(long, value_name = "N", default_value_t = herd_jetstream::DEFAULT_MAX_ACK_PENDING)]
    pub nats_max_ack_pending: i64,
    /// Subject each record is published to (with Nats-Msg-Id = the event's stream sequence);
    /// if no stream captures it, herd creates `<stream>_RESULTS` for it.
    #[arg(long, value_name = "SUBJ", default_value = "herd.results")]
    pub nats_results: String,
}

impl NatsArgs {
    /// The configuration, if `--nats` was given; reads the token file or variable.
    pub fn config(&self, retry_backoff: Duration) -> anyhow::Result<Option<Config>> {
        if self.urls.is_empty() {
            return Ok(None);
        }
        let token = match &self.nats_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the NATS token file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        };
        let auth = match (&self.nats_creds, token) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give a NATS credentials file or a token, not both")
            }
            (Some(p), None) => Auth::CredsFile(p.clone()),
            (None, Some(t)) => Auth::Token(t),
            (None, None) => Auth::None,
        };
        Ok(Some(Config {
            servers: self.urls.clone(),
            auth,
            stream: self.nats_stream.clone(),
            subjects: self.nats_subjects.clone(),
            replicas: usize::from(self.nats_replicas),
            consumer: self.nats_consumer.clone(),
            ack_wait: self.nats_ack_wait,
            max_deliver: self.nats_max_deliver,
            max_ack_pending: self.nats_max_ack_pending,
            results: self.nats_results.clone(),
            retry_backoff,
            name: format!(
                "herd pid {} on {}",
                std::process::id(),
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
            ),
        }))
    }
}
