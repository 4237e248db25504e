//! herd-jetstream: events from a NATS JetStream durable pull consumer, records to a results
//! subject. Any number of herd daemons, on any number of machines, bind to the same consumer:
//! the server hands each message to one of them, and takes it back if that daemon does not
//! settle it within the ack wait.
//!
//! It is one [`Source`](herd_supervisor::Source) / [`Sink`](herd_supervisor::Sink) pair on the
//! pool's submission seam (no change to the pool), run by [`JetStream::run`]:
//! - **Flow:** a pull request asks for no more messages than the submission has room for (its
//!   credits), so no message waits in this process while its ack wait runs. Each record is
//!   published with `Nats-Msg-Id` = the event's stream sequence (the record's `seq`), and its
//!   event is acknowledged only after the PubAck; the record batch, and so its credits, are
//!   held until then.
//! - **Failures:** the delivery count is the attempt (the worker's `attempt`, the record's
//!   `attempts`). A retryable handler error is a nak with herd's backoff as its delay (the
//!   pool hands it back instead of retrying it); a fatal error, or retries used up after
//!   crashes or timeouts (herd's own `--retries`), publishes the error record and terminates
//!   the message. A retryable error on the last delivery allowed is terminal too. Messages
//!   held longer than half the ack wait get `+WPI` (progress). A message that runs out of
//!   deliveries elsewhere (its daemon died) gets an error record from the server's
//!   max-deliveries advisory.
//! - **Stops:** once the pool stops taking events, fetching stops and whatever the open pull
//!   request still brings is naked at once. A graceful stop finishes and acknowledges what was
//!   accepted; a fast stop's `shutdown` records become naks (no record), so other daemons
//!   take those messages at once. A daemon that is killed loses nothing: its messages come
//!   back after the ack wait.
//! - **Connection faults:** the client reconnects by itself, forever. Meanwhile pull requests
//!   fail or bring nothing (intake pauses), nothing is published or reported in progress, and
//!   nothing accepted is dropped; on reconnection every record not yet stored is published
//!   again at once (its PubAck went with the old connection). While a message's record fails to
//!   be stored, it gets no `+WPI`: if this daemon cannot settle it, another one can.
//! - **Clusters:** the client fails over between the servers given (and those the cluster
//!   advertises); the streams herd creates have `replicas` copies. When a server dies, its
//!   leaderships move: the server's leader-elected advisories for the consumer and the results
//!   stream make the open pull request be asked again of the new leader, and the records
//!   waiting on the old one be published again, at once; a pull request still open a second
//!   past its expiry is given up too (its leader died before any advisory could say so).

mod held;
mod sink;
mod source;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::{ConnectOptions, Event, ServerAddr};
use futures_util::StreamExt;
use herd_supervisor::{PoolHandle, SubmitOptions};
use serde::Serialize;

use held::{bump, Shared};
use sink::{render, JetStreamRecords, Policy, Publisher};
use source::{Fetcher, JetStreamEvents};
use tokio::sync::mpsc;

pub use held::{ConsumerNumbers, Counters};

/// Ack wait of a consumer herd creates.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Max deliver of a consumer herd creates.
pub const DEFAULT_MAX_DELIVER: i64 = 5;
/// Max ack pending of a consumer herd creates (across all daemons).
pub const DEFAULT_MAX_ACK_PENDING: i64 = 10_000;
/// Replicas of a stream herd creates: one, as a single server has.
pub const DEFAULT_REPLICAS: u8 = 1;

/// How often the consumer's numbers are asked of the server.
const INFO_EVERY: Duration = Duration::from_secs(5);

/// How herd authenticates to the server.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// A token (read from an environment variable or a file, never the command line).
    Token(String),
    /// A credentials file (JWT and NKey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "none",
            Auth::Token(_) => "token",
            Auth::CredsFile(_) => "credentials file",
        })
    }
}

/// Where the events come from and the records go.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server URLs (`nats://host:4222`; the client fails over between them).
    pub servers: Vec<String>,
    pub auth: Auth,
    /// The stream of events; created (work-queue retention, file storage) capturing
    /// `subjects` if absent.
    pub stream: String,
    pub subjects: Vec<String>,
    /// Replicas of each stream herd creates (the events' and the results'), on as many
    /// servers of a cluster: 3 keeps both streams, and the consumer, which takes its stream's,
    /// through the loss of any one server. An existing stream keeps its own.
    pub replicas: usize,
    /// The durable pull consumer every daemon binds to; created if absent with `ack_wait`,
    /// `max_deliver` and `max_ack_pending` (an existing one keeps its own settings).
    pub consumer: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// Where records are published; if no stream captures it, a stream `<stream>_RESULTS`
    /// is created for it.
    pub results: String,
    /// herd's retry backoff: the base of a nak's delay.
    pub retry_backoff: Duration,
    /// The connection's name, as the server shows it.
    pub name: String,
}

/// Why JetStream intake cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid NATS server URL `{0}`")]
    Url(String, #[source] async_nats::Error),
    #[error("cannot read the NATS credentials file {0}")]
    Creds(PathBuf, #[source] std::io::Error),
    #[error("cannot connect to NATS")]
    Connect(#[source] async_nats::ConnectError),
    #[error("{0}")]
    Setup(String),
}

/// A snapshot for status, metrics and logs.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub connected: bool,
    pub stream: String,
    pub consumer: String,
    pub results: String,
    /// Messages this daemon holds (fetched, not yet settled).
    pub held: usize,
    pub fetched: u64,
    pub published: u64,
    pub duplicates: u64,
    pub acked: u64,
    pub naked: u64,
    pub termed: u64,
    pub progress: u64,
    pub max_deliveries: u64,
    pub republished: u64,
    pub errors: u64,
    /// The consumer's numbers, across all daemons (as last asked).
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub waiting: u64,
}

/// JetStream intake for one daemon.
pub struct JetStream {
    cfg: Config,
    options: Option<ConnectOptions>,
    servers: Vec<ServerAddr>,
    shared: Arc<Shared>,
}

/// A cheap handle for status snapshots.
#[derive(Clone)]
pub struct StatusHandle {
    shared: Arc<Shared>,
    cfg: Arc<Config>,
}

impl StatusHandle {
    /// As `herd status` and the metrics show it.
    pub fn source_status(&self) -> herd_supervisor::SourceStatus {
        let s = self.snapshot();
        let numbers = [
            ("held", s.held as u64),
            ("fetched", s.fetched),
            ("published", s.published),
            ("duplicates", s.duplicates),
            ("acked", s.acked),
            ("naked", s.naked),
            ("termed", s.termed),
            ("progress", s.progress),
            ("max_deliveries", s.max_deliveries),
            ("republished", s.republished),
            ("errors", s.errors),
            ("consumer_pending", s.pending),
            ("consumer_ack_pending", s.ack_pending),
            ("consumer_redelivered", s.redelivered),
            ("consumer_waiting", s.waiting),
        ];
        herd_supervisor::SourceStatus {
            name: "jetstream".into(),
            connected: s.connected,
            detail: format!(
                "stream {} consumer {} -> {}",
                s.stream, s.consumer, s.results
            ),
            numbers: numbers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let c = &self.shared.counters;
        let n = &self.shared.consumer;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            connected: self.shared.connected.load(Ordering::Relaxed),
            stream: self.cfg.stream.clone(),
            consumer: self.cfg.consumer.clone(),
            results: self.cfg.results.clone(),
            held: self.shared.len(),
            fetched: get(&c.fetched),
            published: get(&c.published),
            duplicates: get(&c.duplicates),
            acked: get(&c.acked),
            naked: get(&c.naked),
            termed: get(&c.termed),
            progress: get(&c.progress),
            max_deliveries: get(&c.max_deliveries),
            republished: get(&c.republished),
            errors: get(&c.errors),
            pending: get(&n.pending),
            ack_pending: get(&n.ack_pending),
            redelivered: get(&n.redelivered),
            waiting: get(&n.waiting),
        }
    }
}

impl JetStream {
    /// Checks the configuration and reads the credentials; connects only in [`JetStream::run`].
    ///
    /// # Errors
    /// A server URL that does not parse, or a credentials file that cannot be read.
    pub async fn new(cfg: Config) -> Result<Self, Error> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| Error::Url(s.clone(), Box::new(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(Error::Setup("no NATS server URL given".into()));
        }
        let shared = Arc::new(Shared::new());
        let events = shared.clone();
        let mut options = ConnectOptions::new()
            .name(cfg.name.clone())
            .retry_on_initial_connect()
            .max_reconnects(None)
            // Quick to come back after a server restart; capped so an outage costs little.
            .reconnect_delay_callback(|n| {
                Duration::from_millis(100u64.saturating_mul(1 << n.min(5)).min(2_000))
            })
            .ping_interval(Duration::from_secs(10))
            .event_callback(move |event| {
                let shared = events.clone();
                async move { on_event(&shared, event) }
            });
        options = match &cfg.auth {
            Auth::None => options,
            Auth::Token(t) => options.token(t.clone()),
            Auth::CredsFile(p) => options
                .credentials_file(p)
                .await
                .map_err(|e| Error::Creds(p.clone(), e))?,
        };
        Ok(Self {
            cfg,
            options: Some(options),
            servers,
            shared,
        })
    }

    pub fn status(&self) -> StatusHandle {
        StatusHandle {
            shared: self.shared.clone(),
            cfg: Arc::new(self.cfg.clone()),
        }
    }

    /// Runs intake into `pool` until the pool stops taking events, then settles what it
    /// holds. Connection faults are waited out, never returned.
    ///
    /// # Errors
    /// A configuration the server refuses for good (the results subject is the events').
    pub async fn run(mut self, pool: PoolHandle) -> Result<(), Error> {
        let status = self.status();
        pool.add_source_status(move || status.source_status());
        let options = self.options.take().unwrap_or_default();
        let client = tokio::select! {
            c = options.connect(self.servers.clone()) => c.map_err(Error::Connect)?,
            () = pool.stopping() => return Ok(()),
        };
        let queue = pool.queue();
        let js = async_nats::jetstream::ContextBuilder::new()
            // Every record held may be waiting for its PubAck.
            .max_ack_inflight(queue.max(1024) * 2)
            .build(client.clone());
        let Some(Bound {
            consumer,
            max_deliver,
            ack_wait,
            results_stream,
        }) = self.setup_until_done(&js, &pool).await?
        else {
            return Ok(()); // stopped before the server could be reached
        };
        let shared = self.shared.clone();
        let publisher = Publisher {
            js: js.clone(),
            subject: self.cfg.results.clone().into(),
            shared: shared.clone(),
        };
        let (requests, requested) = mpsc::channel(1);
        let source = JetStreamEvents { requests };
        let fetcher = tokio::spawn(
            Fetcher {
                consumer: consumer.clone(),
                shared: shared.clone(),
                pool: pool.clone(),
                client: client.clone(),
                connections: shared.connections.subscribe(),
                leaders: shared.consumer_leader.subscribe(),
                batch: None,
                failing: false,
            }
            .run(requested),
        );
        let seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
        let sink = JetStreamRecords::new(
            publisher.clone(),
            client.clone(),
            shared.clone(),
            Policy {
                max_deliver,
                backoff: self.cfg.retry_backoff,
            },
            seed,
            pool.clone(),
        );
        let submission = pool.submit_with(SubmitOptions {
            ordered: false,
            source_retries: true,
            ..SubmitOptions::default()
        });
        let progress = progress(client.clone(), shared.clone(), ack_wait);
        let advisories = max_deliveries(
            client.clone(),
            publisher,
            shared.clone(),
            &self.cfg.stream,
            &self.cfg.consumer,
        );
        let numbers = consumer_numbers(consumer, shared.clone());
        let leaders = leaders(
            client.clone(),
            shared.clone(),
            &self.cfg.stream,
            &self.cfg.consumer,
            &results_stream,
        );
        let mut progress = std::pin::pin!(progress);
        let mut advisories = std::pin::pin!(advisories);
        let mut numbers = std::pin::pin!(numbers);
        let mut leaders = std::pin::pin!(leaders);
        let result = tokio::select! {
            r = submission.run(source, sink) => r,
            () = &mut progress => unreachable_end(),
            () = &mut advisories => unreachable_end(),
            () = &mut numbers => unreachable_end(),
            () = &mut leaders => unreachable_end(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "JetStream intake ended abnormally");
        }
        // It naks what its open pull request still brings, then ends; advisories are still
        // heard meanwhile (and new leaders: records wait for their PubAcks until then).
        tokio::select! {
            r = fetcher => if let Err(e) = r {
                tracing::error!(error = %e, "the JetStream fetcher failed");
            },
            () = &mut advisories => {}
            () = &mut leaders => {}
        }
        // Events fetched while the pool was already stopping may never have reached it (it
        // was gone): nothing holds them now, so they are naked for another daemon.
        for (reply, body) in shared.release_all(held::Settle::Nak(None)) {
            if let Err(e) = client.publish(reply, body).await {
                tracing::debug!(error = %e, "nak not sent");
            }
        }
        if let Err(e) = client.flush().await {
            tracing::warn!(error = %e, "could not flush the last acknowledgements");
        }
        let s = self.status().snapshot();
        tracing::info!(
            fetched = s.fetched,
            published = s.published,
            acked = s.acked,
            naked = s.naked,
            termed = s.termed,
            held = s.held,
            "JetStream intake stopped"
        );
        Ok(())
    }

    /// Binds the consumer (creating the stream, consumer and results stream if absent),
    /// retrying while the server cannot be reached. `None` if the pool stopped first.
    async fn setup_until_done(
        &self,
        js: &async_nats::jetstream::Context,
        pool: &PoolHandle,
    ) -> Result<Option<Bound>, Error> {
        let mut warned = false;
        loop {
            match self.setup(js).await {
                Ok(Ok(bound)) => return Ok(Some(bound)),
                Ok(Err(fatal)) => return Err(Error::Setup(fatal)),
                Err(e) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, "cannot bind the JetStream consumer yet; retrying");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = pool.stopping() => return Ok(None),
            }
        }
    }

    /// One try: `Err` is worth retrying, `Ok(Err)` is not.
    async fn setup(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Result<Result<Bound, String>, async_nats::Error> {
        let cfg = &self.cfg;
        let stream = js
            .get_or_create_stream(stream::Config {
                name: cfg.stream.clone(),
                subjects: cfg.subjects.clone(),
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await?;
        let mut consumer: PullConsumer = stream
            .get_or_create_consumer(
                &cfg.consumer,
                pull::Config {
                    durable_name: Some(cfg.consumer.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: cfg.ack_wait,
                    max_deliver: cfg.max_deliver,
                    max_ack_pending: cfg.max_ack_pending,
                    ..Default::default()
                },
            )
            .await?;
        let results = match js.stream_by_subject(cfg.results.clone()).await {
            Ok(name) => name,
            Err(_) => {
                let name = format!("{}_RESULTS", cfg.stream);
                js.get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![cfg.results.clone()],
                    storage: StorageType::File,
                    duplicate_window: Duration::from_secs(120),
                    num_replicas: cfg.replicas,
                    ..Default::default()
                })
                .await?;
                tracing::info!(stream = %name, subject = %cfg.results, "created the results stream");
                name
            }
        };
        if results == cfg.stream {
            return Ok(Err(format!(
                "the results subject `{}` is captured by the event stream `{}`: records would \
                 come back as events; use a subject outside it",
                cfg.results, cfg.stream
            )));
        }
        let info = consumer.info().await?;
        let max_deliver = u64::try_from(info.config.max_deliver)
            .ok()
            .filter(|&m| m > 0);
        let ack_wait = info.config.ack_wait;
        tracing::info!(
            stream = %cfg.stream,
            consumer = %cfg.consumer,
            results = %cfg.results,
            results_stream = %results,
            replicas = stream.cached_info().config.num_replicas,
            ack_wait_secs = ack_wait.as_secs_f64(),
            max_deliver = info.config.max_deliver,
            max_ack_pending = info.config.max_ack_pending,
            pending = info.num_pending,
            ack_pending = info.num_ack_pending,
            "JetStream consumer bound"
        );
        Ok(Ok(Bound {
            consumer,
            max_deliver,
            ack_wait,
            results_stream: results,
        }))
    }
}

/// The consumer as bound, and what of it and of the results stream the intake needs.
struct Bound {
    consumer: PullConsumer,
    /// `None`: unlimited.
    max_deliver: Option<u64>,
    ack_wait: Duration,
    results_stream: String,
}

fn unreachable_end() -> Result<herd_supervisor::Delivered, herd_supervisor::SubmissionError> {
    Ok(herd_supervisor::Delivered::default())
}

fn on_event(shared: &Shared, event: Event) {
    match event {
        Event::Connected => {
            shared.connected.store(true, Ordering::Relaxed);
            shared.connections.send_modify(|n| *n += 1);
            tracing::info!(
                pending = shared.consumer.pending.load(Ordering::Relaxed),
                ack_pending = shared.consumer.ack_pending.load(Ordering::Relaxed),
                held = shared.len(),
                "NATS connected"
            );
        }
        Event::Disconnected => {
            shared.connected.store(false, Ordering::Relaxed);
            tracing::warn!(
                held = shared.len(),
                "NATS disconnected: intake paused until the connection is back"
            );
        }
        Event::Closed => {
            shared.connected.store(false, Ordering::Relaxed);
            tracing::info!("NATS connection closed");
        }
        // One per reconnect attempt while the server is away: the outage is logged once above.
        Event::ClientError(e) => tracing::debug!(error = %e, "NATS client error"),
        other => tracing::warn!(event = %other, "NATS"),
    }
}

/// Sends `+WPI` for every message held longer than half the ack wait, so long tasks are not
/// redelivered to another daemon while they run; not for a message whose record could not be
/// stored (see `Shared::stale`), and nothing while disconnected (the client would only queue
/// them, ahead of the records that wait for the connection).
async fn progress(client: async_nats::Client, shared: Arc<Shared>, ack_wait: Duration) {
    let half = ack_wait / 2;
    let mut tick = tokio::time::interval((ack_wait / 4).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !shared.connected.load(Ordering::Relaxed) {
            continue;
        }
        for reply in shared.stale(half) {
            let body = async_nats::jetstream::AckKind::Progress.into();
            if client.publish(reply, body).await.is_err() {
                break;
            }
        }
    }
}

/// The server's advisory for a message that ran out of deliveries (its last daemon died, or
/// naked it on a stop) becomes that message's error record. Every daemon hears it; the
/// results stream keeps one copy.
async fn max_deliveries(
    client: async_nats::Client,
    publisher: Publisher,
    shared: Arc<Shared>,
    stream: &str,
    consumer: &str,
) {
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}");
    let mut sub = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to max-deliveries advisories; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut buf = Vec::new();
    while let Some(msg) = sub.next().await {
        let Ok(adv) = serde_json::from_slice::<Advisory>(&msg.payload) else {
            tracing::warn!("unreadable max-deliveries advisory; ignored");
            continue;
        };
        let record = herd_supervisor::Record {
            seq: adv.stream_seq,
            attempts: u32::try_from(adv.deliveries).unwrap_or(u32::MAX),
            chunks: 0,
            outcome: herd_supervisor::RecordOutcome::Err {
                kind: herd_supervisor::ErrorKind::Timeout,
                message: format!(
                    "delivered {} times (the consumer's max deliver) and never settled: \
                     its daemons stopped or died, or its ack wait ran out each time",
                    adv.deliveries
                ),
                retryable: false,
            },
            input: None,
        };
        let body = render(&record, &mut buf);
        tracing::warn!(
            seq = adv.stream_seq,
            deliveries = adv.deliveries,
            "message past max deliveries: error record published"
        );
        bump(&shared.counters.max_deliveries);
        let id = adv.stream_seq.to_string();
        let sent = publisher.publish(&id, body.clone()).await;
        publisher
            .until_stored(adv.stream_seq, &id, &body, sent)
            .await;
    }
    std::future::pending().await
}

/// The server's advisories for a new leader of the consumer or of the results stream (on a
/// cluster, the server that led it died or stepped down) bump `Shared::consumer_leader` or
/// `Shared::results_leader`: the open pull request is asked again of the new leader at once,
/// and records whose PubAck went with the old one are published again at once, instead of
/// each waiting out its own timeout after the election.
async fn leaders(
    client: async_nats::Client,
    shared: Arc<Shared>,
    stream: &str,
    consumer: &str,
    results_stream: &str,
) {
    let of_consumer = format!("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}");
    let of_results = format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{results_stream}");
    let mut subs = Vec::new();
    for subject in [&of_consumer, &of_results] {
        let sub = loop {
            match client.subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to leader advisories; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        subs.push(sub);
    }
    let mut elected = futures_util::stream::select_all(subs);
    while let Some(msg) = elected.next().await {
        let leader = leader_of(&msg.payload);
        let (what, epoch) = if msg.subject.as_str() == of_consumer {
            ("consumer", &shared.consumer_leader)
        } else {
            ("results stream", &shared.results_leader)
        };
        tracing::info!(
            of = what,
            leader = leader.as_deref().unwrap_or("?"),
            "new JetStream leader: pull requests and unstored records go to it at once"
        );
        epoch.send_modify(|n| *n += 1);
    }
    std::future::pending().await
}

/// The server a leader-elected advisory names (for the log).
fn leader_of(advisory: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Advisory {
        leader: String,
    }
    serde_json::from_slice::<Advisory>(advisory)
        .ok()
        .map(|a| a.leader)
}

/// Asks the server for the consumer's numbers now and then.
async fn consumer_numbers(mut consumer: PullConsumer, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(INFO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(info) = consumer.info().await {
            let n = &shared.consumer;
            n.pending.store(info.num_pending, Ordering::Relaxed);
            n.ack_pending
                .store(info.num_ack_pending as u64, Ordering::Relaxed);
            n.redelivered
                .store(info.num_redelivered as u64, Ordering::Relaxed);
            n.waiting.store(info.num_waiting as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_elected_advisory_names_its_leader() {
        // As nats-server 2.9 sends it (trimmed).
        let advisory = br#"{"type":"io.nats.jetstream.advisory.v1.consumer_leader_elected",
            "id":"x","timestamp":"2026-12-07T06:32:50.2Z","stream":"HERD","consumer":"herd",
            "leader":"n2","replicas":[{"name":"n1","current":true,"active":1000}]}"#;
        assert_eq!(leader_of(advisory).as_deref(), Some("n2"));
        assert_eq!(leader_of(b"not json"), None);
    }
}
