//! herd-redis: events from a Redis stream through a consumer group, records to a results
//! stream. Any number of herd daemons, on any number of machines, join the same group: the
//! server hands each entry to one of them (`XREADGROUP`), and the group's pending entries
//! list keeps what is handed out and not yet acknowledged.
//!
//! It is one [`Source`](herd_supervisor::Source) / [`Sink`](herd_supervisor::Sink) pair on the
//! pool's submission seam (no change to the pool), run by [`Redis::run`]:
//! - **Flow:** a read asks for no more entries than the submission has room for (its
//!   credits). Each final record is written to the results stream with the entry id, and the
//!   entry acknowledged (`XACK`), in one script; the record batch, and so its credits, are
//!   held until then.
//! - **Recovery without a timer of Redis's own:** Redis never takes an entry back. Every
//!   daemon claims (`XAUTOCLAIM`) entries idle longer than the claim time, whoever holds
//!   them; a daemon resets the idle time of every entry it is still working on (`XCLAIM ...
//!   JUSTID`, a quarter of the claim time at most after the last), so a live daemon's entries
//!   are never claimed, however long they run. A settle applies only while the entry is
//!   still pending to this consumer with the delivery count it took it with, checked in the
//!   same script (see `scripts`): when two daemons ran one entry (one could not reach the
//!   server for a while, and its entries were claimed meanwhile), one final record is
//!   written, and the other is dropped.
//! - **Failures:** the delivery count is the attempt (the worker's `attempt`, the record's
//!   `attempts`). A retryable handler error hands the entry back with herd's backoff as its
//!   delay (it is left idle so that it can be claimed once the delay has passed); a fatal
//!   error, or retries used up after crashes or timeouts (herd's own `--retries`), writes the
//!   error record and acknowledges the entry. A retryable error on the last delivery allowed
//!   does too. An entry claimed past the max deliveries (its daemons died running it) and
//!   an entry without the event field get a `rejected` record without running
//!   (quarantined), and are acknowledged.
//! - **Stops:** once the pool stops taking events, reading stops and whatever the last read
//!   still brings is handed back at once. A graceful stop finishes and acknowledges what was
//!   accepted; a fast stop's `shutdown` records hand their entries back (no record), so other
//!   daemons claim them at once. A daemon that is killed loses nothing: its entries are
//!   claimed once idle for the claim time.
//! - **Connection faults:** a command that fails for a connection reason drops the
//!   connection, and the next one makes a new one. Meanwhile reads fail (intake pauses),
//!   nothing is settled and nothing accepted is dropped; settles are applied again until the
//!   server takes them.

mod held;
mod id;
mod link;
mod scripts;
mod sink;
mod source;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herd_supervisor::{PoolHandle, SubmitOptions};
use redis::{RedisError, Script, Value};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use held::{bump, Shared};
use id::StreamId;
use link::Link;
use scripts::{Op, Scripts};
use sink::{Item, Policy, RedisRecords};
use source::{millis, Fetcher, RedisEvents, READ_BLOCK};

pub use held::{Counters, GroupNumbers};

/// Claim time: an entry idle this long is claimed by another daemon.
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
/// Deliveries of an entry at most.
pub const DEFAULT_MAX_DELIVER: u64 = 5;
/// The field of an entry that holds the event.
pub const DEFAULT_FIELD: &str = "event";

/// How often the group's numbers are asked of the server.
const INFO_EVERY: Duration = Duration::from_secs(2);
/// The most a reply may take on the shared connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the entries a stop hands back are tried for.
const RELEASE_FOR: Duration = Duration::from_secs(5);

/// Where the events come from and the records go.
#[derive(Debug, Clone)]
pub struct Config {
    /// `redis://[user:password@]host:port[/db]` (`rediss://` is not supported).
    pub url: String,
    /// The stream of events; created (empty) with the group if absent.
    pub stream: String,
    /// The consumer group every daemon joins; created if absent, delivering the stream from
    /// its start.
    pub group: String,
    /// This daemon's name in the group: unique per daemon.
    pub consumer: String,
    /// Where records go (a stream; `<stream>:results` by default).
    pub results: String,
    /// The field of an entry that holds the event.
    pub field: String,
    /// An entry idle this long is claimed by another daemon.
    pub claim_idle: Duration,
    /// Deliveries of an entry at most (`None`: no limit).
    pub max_deliver: Option<u64>,
    /// herd's retry backoff: the base of a retry's delay.
    pub retry_backoff: Duration,
}

/// Why Redis intake cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Redis URL `{0}`")]
    Url(String, #[source] RedisError),
    #[error("{0}")]
    Setup(String),
}

/// A snapshot for status, metrics and logs.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub connected: bool,
    pub stream: String,
    pub group: String,
    pub consumer: String,
    pub results: String,
    /// Entries this daemon holds (read or claimed, not yet settled).
    pub held: usize,
    pub read: u64,
    pub claimed: u64,
    pub doubled: u64,
    pub written: u64,
    pub chunks: u64,
    pub acked: u64,
    pub released: u64,
    pub dropped: u64,
    pub touched: u64,
    pub lost: u64,
    pub quarantined: u64,
    pub garbage: u64,
    pub errors: u64,
    /// The group's numbers, across all daemons (as last asked).
    pub group_pending: u64,
    pub group_lag: u64,
    pub group_consumers: u64,
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
            ("read", s.read),
            ("claimed", s.claimed),
            ("doubled", s.doubled),
            ("written", s.written),
            ("chunks", s.chunks),
            ("acked", s.acked),
            ("released", s.released),
            ("dropped", s.dropped),
            ("touched", s.touched),
            ("lost", s.lost),
            ("quarantined", s.quarantined),
            ("garbage", s.garbage),
            ("errors", s.errors),
            ("group_pending", s.group_pending),
            ("group_lag", s.group_lag),
            ("group_consumers", s.group_consumers),
        ];
        herd_supervisor::SourceStatus {
            name: "redis".into(),
            connected: s.connected,
            detail: format!(
                "stream {} group {} consumer {} -> {}",
                s.stream, s.group, s.consumer, s.results
            ),
            numbers: numbers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let c = &self.shared.counters;
        let g = &self.shared.group;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            connected: self.shared.connected.load(Ordering::Relaxed),
            stream: self.cfg.stream.clone(),
            group: self.cfg.group.clone(),
            consumer: self.cfg.consumer.clone(),
            results: self.cfg.results.clone(),
            held: self.shared.len(),
            read: get(&c.read),
            claimed: get(&c.claimed),
            doubled: get(&c.doubled),
            written: get(&c.written),
            chunks: get(&c.chunks),
            acked: get(&c.acked),
            released: get(&c.released),
            dropped: get(&c.dropped),
            touched: get(&c.touched),
            lost: get(&c.lost),
            quarantined: get(&c.quarantined),
            garbage: get(&c.garbage),
            errors: get(&c.errors),
            group_pending: get(&g.pending),
            group_lag: get(&g.lag),
            group_consumers: get(&g.consumers),
        }
    }
}

/// What the fetcher, the settler and the toucher share: the configuration, the connection
/// for everything but reads, the scripts and the held entries.
pub(crate) struct Ctx {
    pub cfg: Config,
    pub writer: Link,
    pub scripts: Scripts,
    pub shared: Arc<Shared>,
}

impl Ctx {
    /// How often claims are tried: often enough that a dead daemon's entries wait little
    /// past the claim time, and a handed-back entry little past its delay.
    pub fn claim_every(&self) -> Duration {
        (self.cfg.claim_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Runs `script` once on the shared connection.
    ///
    /// # Errors
    /// The connection's, or the server's.
    pub async fn script(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value, RedisError> {
        let (n, mut conn) = self.writer.get().await?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let r = inv.invoke_async::<Value>(&mut conn).await;
        if let Err(e) = &r {
            self.writer.fault(n, e).await;
        }
        r
    }

    /// Runs a script's `EVALSHA` command on the shared connection, loading the script first
    /// if the server does not have it (it restarted).
    ///
    /// # Errors
    /// The connection's, or the server's.
    async fn evalsha(&self, script: &Script, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let (n, mut conn) = self.writer.get().await?;
        let mut r = cmd.query_async::<Value>(&mut conn).await;
        if matches!(&r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            r = match script.prepare_invoke().load_async(&mut conn).await {
                Ok(_) => cmd.query_async::<Value>(&mut conn).await,
                Err(e) => Err(e),
            };
        }
        if let Err(e) = &r {
            self.writer.fault(n, e).await;
        }
        r
    }

    /// Applies `items` once (see `scripts::APPLY`), each against the delivery count the entry
    /// is held with now; whether each applied, `None` for an entry no longer held.
    ///
    /// The command is built in place (no copy of each value per layer): it is what every
    /// record goes through.
    async fn apply(&self, items: &[&Item]) -> Result<Vec<Option<bool>>, RedisError> {
        let held = self.shared.entries(items.iter().map(|i| i.seq));
        let mut range: Option<(StreamId, StreamId)> = None;
        let mut ops = 0usize;
        let mut bytes = 0usize;
        for (item, h) in items.iter().zip(&held) {
            let Some((id, _)) = h else { continue };
            range = Some(match range {
                None => (*id, *id),
                Some((lo, hi)) => (lo.min(*id), hi.max(*id)),
            });
            ops += 1;
            bytes += item.value.len() + 64;
        }
        let Some((first, last)) = range else {
            return Ok(vec![None; items.len()]);
        };
        let cfg = &self.cfg;
        let mut cmd = redis::Cmd::with_capacity(10 + 4 * ops, 256 + bytes);
        cmd.arg("EVALSHA")
            .arg(self.scripts.apply.get_hash())
            .arg(2)
            .arg(&cfg.stream)
            .arg(&cfg.results)
            .arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg(first.to_bytes())
            .arg(last.to_bytes())
            // This consumer's pending entries in the range are the batch's and those still
            // running; past this many, the script looks up the rest one at a time.
            .arg(2 * ops + 64);
        let mut id_buf = Vec::with_capacity(24);
        for (item, h) in items.iter().zip(&held) {
            let Some((id, deliveries)) = h else { continue };
            id_buf.clear();
            id.write(&mut id_buf);
            cmd.arg(item.op.letter()).arg(&id_buf[..]).arg(*deliveries);
            match item.op {
                Op::Release(after) => cmd.arg(millis(cfg.claim_idle.saturating_sub(after))),
                Op::Record | Op::Chunk => cmd.arg(&item.value[..]),
                Op::Touch => cmd.arg(""),
            };
        }
        let reply = self.evalsha(&self.scripts.apply, &cmd).await?;
        let mut applied = match reply {
            Value::Array(a) => a.into_iter().map(|v| matches!(v, Value::Int(1))),
            other => {
                return Err(RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected reply to the settle script",
                    format!("{other:?}"),
                )))
            }
        };
        Ok(held
            .into_iter()
            .map(|h| h.map(|_| applied.next().unwrap_or(false)))
            .collect())
    }

    /// Applies settles until the server takes them, then lets their entries go.
    pub async fn apply_until_done(&self, items: &[&Item]) {
        let mut delay = RETRY_FIRST;
        let mut warned = false;
        let results = loop {
            match self.apply(items).await {
                Ok(r) => break r,
                Err(e) => {
                    if !warned && !link::is_connection_fault(&e) && !link::is_transient(&e) {
                        warned = true;
                        tracing::warn!(error = %e, "records are not stored; trying again");
                    } else {
                        tracing::debug!(error = %e, "records not stored yet; trying again");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        };
        if warned {
            tracing::info!("records are stored again");
        }
        let c = &self.shared.counters;
        for (item, applied) in items.iter().zip(results) {
            let Some(applied) = applied else { continue };
            match (item.op, applied) {
                (Op::Record, true) => {
                    bump(&c.written);
                    bump(&c.acked);
                }
                (Op::Chunk, true) => bump(&c.chunks),
                (Op::Release(_), true) => bump(&c.released),
                (Op::Touch, true) => bump(&c.touched),
                (Op::Chunk | Op::Touch, false) => {}
                (Op::Record | Op::Release(_), false) => {
                    bump(&c.dropped);
                    tracing::debug!(seq = item.seq, "the entry moved on: its settle was dropped");
                }
            }
        }
        self.shared.release(
            items
                .iter()
                .filter(|i| matches!(i.op, Op::Record | Op::Release(_)))
                .map(|i| i.seq),
        );
    }

    /// Hands entries back at once (a stop), trying for a while; what is left is claimed
    /// after the claim time.
    pub async fn release_now(&self, entries: Vec<(u64, StreamId, u64)>) {
        if entries.is_empty() {
            return;
        }
        let items: Vec<Item> = entries
            .into_iter()
            .map(|(seq, _, _)| Item {
                seq,
                op: Op::Release(Duration::ZERO),
                value: bytes::Bytes::new(),
            })
            .collect();
        let refs: Vec<&Item> = items.iter().collect();
        if tokio::time::timeout(RELEASE_FOR, self.apply_until_done(&refs))
            .await
            .is_err()
        {
            tracing::warn!(
                entries = refs.len(),
                "could not hand entries back; they are claimed after the claim time"
            );
            self.shared.release(items.iter().map(|i| i.seq));
        }
    }

    /// Creates the group (and the stream) if absent.
    ///
    /// # Errors
    /// The connection's, or the server's (other than the group's existing).
    pub async fn create_group(&self) -> Result<(), RedisError> {
        let (n, mut conn) = self.writer.get().await?;
        let r: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.cfg.stream)
            .arg(&self.cfg.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match r {
            Ok(_) => {
                tracing::info!(stream = %self.cfg.stream, group = %self.cfg.group, "created the consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => {
                self.writer.fault(n, &e).await;
                Err(e)
            }
        }
    }

    async fn command(&self, cmd: &redis::Cmd) -> Result<Value, RedisError> {
        let (n, mut conn) = self.writer.get().await?;
        let r = cmd.query_async::<Value>(&mut conn).await;
        if let Err(e) = &r {
            self.writer.fault(n, e).await;
        }
        r
    }
}

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Redis intake for one daemon.
pub struct Redis {
    ctx: Arc<Ctx>,
    reader: Link,
}

impl Redis {
    /// Checks the configuration; connects only in [`Redis::run`].
    ///
    /// # Errors
    /// A URL that does not parse, or settings that cannot work.
    pub fn new(cfg: Config) -> Result<Self, Error> {
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| Error::Url(cfg.url.clone(), e))?;
        if cfg.results == cfg.stream {
            return Err(Error::Setup(format!(
                "the results stream `{}` is the event stream: records would come back as events",
                cfg.results
            )));
        }
        if cfg.claim_idle < Duration::from_millis(100) {
            return Err(Error::Setup(
                "the claim idle time must be 100ms at least: a daemon touches its entries a few \
                 times per claim time"
                    .into(),
            ));
        }
        let shared = Arc::new(Shared::new());
        let (read_up, write_up) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let reader = Link::new(
            client.clone(),
            READ_BLOCK + RESPONSE_TIMEOUT,
            shared.clone(),
            read_up.clone(),
            write_up.clone(),
        );
        let writer = Link::new(client, RESPONSE_TIMEOUT, shared.clone(), write_up, read_up);
        Ok(Self {
            ctx: Arc::new(Ctx {
                cfg,
                writer,
                scripts: Scripts::new(),
                shared,
            }),
            reader,
        })
    }

    pub fn status(&self) -> StatusHandle {
        StatusHandle {
            shared: self.ctx.shared.clone(),
            cfg: Arc::new(self.ctx.cfg.clone()),
        }
    }

    /// Runs intake into `pool` until the pool stops taking events, then settles what it
    /// holds. Connection faults are waited out, never returned.
    ///
    /// # Errors
    /// A configuration the server refuses for good (the results key is not a stream).
    pub async fn run(self, pool: PoolHandle) -> Result<(), Error> {
        let status = self.status();
        pool.add_source_status(move || status.source_status());
        let ctx = self.ctx.clone();
        if !setup_until_done(&ctx, &pool).await? {
            return Ok(()); // stopped before the server could be reached
        }
        let (requests, requested) = mpsc::channel(1);
        let source = RedisEvents { requests };
        let fetcher = tokio::spawn(
            Fetcher {
                reader: self.reader,
                ctx: ctx.clone(),
                pool: pool.clone(),
                cursor: "0-0".into(),
                next_claim: Instant::now(),
                failing: false,
            }
            .run(requested),
        );
        let seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
        let sink = RedisRecords::new(
            ctx.clone(),
            Policy {
                max_deliver: ctx.cfg.max_deliver,
                backoff: ctx.cfg.retry_backoff,
            },
            seed,
            pool.clone(),
        );
        let submission = pool.submit_with(SubmitOptions {
            ordered: false,
            source_retries: true,
            ..SubmitOptions::default()
        });
        let mut touch = std::pin::pin!(toucher(ctx.clone()));
        let mut numbers = std::pin::pin!(group_numbers(ctx.clone()));
        let result = tokio::select! {
            r = submission.run(source, sink) => r,
            () = &mut touch => unreachable_end(),
            () = &mut numbers => unreachable_end(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "Redis intake ended abnormally");
        }
        // It hands back what its last read still brings, then ends; entries are still
        // touched meanwhile.
        tokio::select! {
            r = fetcher => if let Err(e) = r {
                tracing::error!(error = %e, "the Redis fetcher failed");
            },
            () = &mut touch => {}
        }
        // Entries read while the pool was already stopping may never have reached it (it was
        // gone): nothing holds them now, so they are handed back for another daemon.
        ctx.release_now(ctx.shared.all()).await;
        forget_consumer(&ctx).await;
        let s = StatusHandle {
            shared: ctx.shared.clone(),
            cfg: Arc::new(ctx.cfg.clone()),
        }
        .snapshot();
        tracing::info!(
            read = s.read,
            claimed = s.claimed,
            written = s.written,
            acked = s.acked,
            released = s.released,
            dropped = s.dropped,
            held = s.held,
            "Redis intake stopped"
        );
        Ok(())
    }
}

/// Joins the group (creating it, and the stream, if absent) and checks the results key,
/// retrying while the server cannot be reached. `false` if the pool stopped first.
async fn setup_until_done(ctx: &Ctx, pool: &PoolHandle) -> Result<bool, Error> {
    let mut warned = false;
    loop {
        match setup(ctx).await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(fatal)) => return Err(Error::Setup(fatal)),
            Err(e) => {
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, "cannot join the Redis consumer group yet; retrying");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = pool.stopping() => return Ok(false),
        }
    }
}

/// One try: `Err` is worth retrying, `Ok(Err)` is not.
async fn setup(ctx: &Ctx) -> Result<Result<(), String>, RedisError> {
    let cfg = &ctx.cfg;
    for (key, what) in [(&cfg.stream, "event"), (&cfg.results, "results")] {
        let kind = ctx.command(redis::cmd("TYPE").arg(key)).await?;
        let kind = match kind {
            Value::SimpleString(s) => s,
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        };
        if kind != "none" && kind != "stream" {
            return Ok(Err(format!(
                "the {what} key `{key}` holds a {kind}, not a stream"
            )));
        }
    }
    ctx.create_group().await?;
    // Loaded now, so that the first settles do not each find it missing.
    let (n, mut conn) = ctx.writer.get().await?;
    for s in [&ctx.scripts.claim, &ctx.scripts.apply, &ctx.scripts.forget] {
        if let Err(e) = s.prepare_invoke().load_async(&mut conn).await {
            ctx.writer.fault(n, &e).await;
            return Err(e);
        }
    }
    refresh_numbers(ctx).await?;
    tracing::info!(
        stream = %cfg.stream,
        group = %cfg.group,
        consumer = %cfg.consumer,
        results = %cfg.results,
        claim_idle_secs = cfg.claim_idle.as_secs_f64(),
        max_deliver = cfg.max_deliver,
        pending = ctx.shared.group.pending.load(Ordering::Relaxed),
        lag = ctx.shared.group.lag.load(Ordering::Relaxed),
        "Redis consumer group joined"
    );
    Ok(Ok(()))
}

fn unreachable_end() -> Result<herd_supervisor::Delivered, herd_supervisor::SubmissionError> {
    Ok(herd_supervisor::Delivered::default())
}

/// Resets the idle time of every entry held longer than a quarter of the claim time since
/// its last reset, so that no other daemon claims what this one is still working on. An
/// entry found claimed by another consumer meanwhile (this daemon could not reach the
/// server for longer than the claim time) is counted lost: its settle will be dropped.
async fn toucher(ctx: Arc<Ctx>) {
    let quarter = ctx.cfg.claim_idle / 4;
    let mut tick = tokio::time::interval((quarter / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stale = ctx.shared.stale(quarter);
        for chunk in stale.chunks(sink::MAX_OPS) {
            let items: Vec<Item> = chunk
                .iter()
                .map(|(seq, _, _)| Item {
                    seq: *seq,
                    op: Op::Touch,
                    value: bytes::Bytes::new(),
                })
                .collect();
            let refs: Vec<&Item> = items.iter().collect();
            // Tried once: a touch fails when the server cannot be reached, and these entries
            // come up again a quarter of the claim time later.
            match ctx.apply(&refs).await {
                Ok(applied) => {
                    for (item, a) in items.iter().zip(applied) {
                        match a {
                            Some(true) => bump(&ctx.shared.counters.touched),
                            Some(false) => {
                                bump(&ctx.shared.counters.lost);
                                tracing::debug!(
                                    seq = item.seq,
                                    "an entry this daemon runs was claimed by another consumer"
                                );
                            }
                            None => {}
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "touch failed"),
            }
        }
    }
}

/// Asks the server for the group's numbers now and then.
async fn group_numbers(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(INFO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = refresh_numbers(&ctx).await;
    }
}

/// `XINFO GROUPS`: the group's pending count, lag and consumers.
async fn refresh_numbers(ctx: &Ctx) -> Result<(), RedisError> {
    let reply = ctx
        .command(redis::cmd("XINFO").arg("GROUPS").arg(&ctx.cfg.stream))
        .await?;
    let Value::Array(groups) = reply else {
        return Ok(());
    };
    for g in groups {
        let fields: Vec<(String, Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| match kv {
                    [Value::BulkString(k), v] => {
                        Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                    }
                    [Value::SimpleString(k), v] => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            Value::Map(kvs) => kvs
                .into_iter()
                .filter_map(|(k, v)| match k {
                    Value::BulkString(k) => Some((String::from_utf8_lossy(&k).into_owned(), v)),
                    Value::SimpleString(k) => Some((k, v)),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let is_ours =
            matches!(get("name"), Some(Value::BulkString(b)) if b == ctx.cfg.group.as_bytes());
        if !is_ours {
            continue;
        }
        let num = |name: &str| match get(name) {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        };
        let g = &ctx.shared.group;
        g.pending.store(num("pending"), Ordering::Relaxed);
        g.lag.store(num("lag"), Ordering::Relaxed);
        g.consumers.store(num("consumers"), Ordering::Relaxed);
    }
    Ok(())
}

/// On a clean stop, leaves the group if nothing is pending to this consumer.
async fn forget_consumer(ctx: &Ctx) {
    let cfg = &ctx.cfg;
    let r = ctx
        .script(
            &ctx.scripts.forget,
            &[cfg.stream.as_bytes()],
            &[cfg.group.as_bytes(), cfg.consumer.as_bytes()],
        )
        .await;
    match r {
        Ok(Value::Int(1)) => tracing::debug!(consumer = %cfg.consumer, "left the consumer group"),
        Ok(_) => tracing::info!(
            consumer = %cfg.consumer,
            "entries are still pending to this consumer: it stays in the group until they are claimed"
        ),
        Err(e) => tracing::debug!(error = %e, "could not leave the consumer group"),
    }
}
