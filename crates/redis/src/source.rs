//! Entries for the pool: claimed ones first (entries other consumers left idle longer than the
//! claim time), then new ones, never more than the submission has room for, so no entry waits
//! in this process unstarted while its idle time runs.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_supervisor::{Input, PoolHandle, Room, Source};
use redis::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::held::bump;
use crate::id::StreamId;
use crate::link::{is_transient, Link};
use crate::Ctx;

/// How long a read waits at the server for new entries. Short, so that a stop (which waits
/// for the read to end, handing back what it brings) and a silent connection fault cost
/// little; an idle daemon makes one read per period.
pub(crate) const READ_BLOCK: Duration = Duration::from_secs(1);
/// Pause before trying again after a failed read or claim.
const RETRY: Duration = Duration::from_millis(250);

/// The source the submission reads: each call asks the fetcher for what fits in `room`.
pub(crate) struct RedisEvents {
    pub requests: mpsc::Sender<(Room, oneshot::Sender<Vec<Input>>)>,
}

impl Source for RedisEvents {
    async fn next_batch(&mut self, room: Room) -> io::Result<Option<Vec<Input>>> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send((room, tx)).await.is_err() {
            return Ok(None); // the fetcher stopped: the pool is stopping
        }
        Ok(rx.await.ok())
    }
}

/// A stream entry as read or claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub id: StreamId,
    pub deliveries: u64,
    /// The event (the value of the event field), or why the entry is not one.
    pub event: Result<Bytes, String>,
}

/// Owns the reads and claims, on a task of its own so that whatever a read still brings
/// after a stop is handed back, whenever the submission ends.
pub(crate) struct Fetcher {
    pub reader: Link,
    pub ctx: Arc<Ctx>,
    pub pool: PoolHandle,
    /// `XAUTOCLAIM`'s cursor: each claim goes on where the last one stopped.
    pub cursor: String,
    pub next_claim: Instant,
    /// Whether the last read or claim failed (logged once per outage).
    pub failing: bool,
}

impl Fetcher {
    /// Answers the source's requests until the pool stops.
    pub async fn run(mut self, mut requests: mpsc::Receiver<(Room, oneshot::Sender<Vec<Input>>)>) {
        loop {
            let (room, reply) = tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = self.pool.stopping() => break,
            };
            let Some(events) = self.fill(room).await else {
                break;
            };
            if let Err(events) = reply.send(events) {
                // The submission ended meanwhile: nothing will run these.
                let seqs = events.iter().map(|i| match i {
                    Input::Event { seq, .. } | Input::Rejected { seq, .. } => *seq,
                });
                let entries: Vec<(u64, StreamId, u64)> = seqs
                    .filter_map(|seq| {
                        let (id, n) = self.ctx.shared.entry(seq)?;
                        Some((seq, id, n))
                    })
                    .collect();
                self.ctx.release_now(entries).await;
                break;
            }
        }
    }

    /// The next events (at least one), claimed or new; `None` once the pool stops taking
    /// events.
    async fn fill(&mut self, room: Room) -> Option<Vec<Input>> {
        let want = room.events.max(1);
        loop {
            if self.pool.is_stopping() {
                return None;
            }
            let now = Instant::now();
            if now >= self.next_claim {
                self.next_claim = now + self.ctx.claim_every();
                match self.claim(want).await {
                    Ok(entries) if !entries.is_empty() => {
                        self.working();
                        let mut out = Vec::new();
                        for e in entries {
                            self.take(e, true, &mut out);
                        }
                        if !out.is_empty() {
                            return Some(out);
                        }
                    }
                    Ok(_) => self.working(),
                    Err(e) => {
                        self.failed(&e);
                        if self.pause().await {
                            return None;
                        }
                        continue;
                    }
                }
            }
            let block = self
                .next_claim
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), READ_BLOCK);
            // Not cancelled by a stop: a read the server already has would leave entries in
            // this consumer's pending list that nobody runs until they are claimed. It ends
            // within `block`; what it brings after a stop is handed back.
            match self.read(want, block).await {
                Ok(entries) => {
                    self.working();
                    if self.pool.is_stopping() {
                        let mut held = Vec::new();
                        for e in entries {
                            bump(&self.ctx.shared.counters.read);
                            if let Some(seq) = self.ctx.shared.hold(e.id, e.deliveries) {
                                held.push((seq, e.id, e.deliveries));
                            }
                        }
                        self.ctx.release_now(held).await;
                        return None;
                    }
                    let mut out = Vec::new();
                    for e in entries {
                        self.take(e, false, &mut out);
                    }
                    if !out.is_empty() {
                        return Some(out);
                    }
                }
                Err(e) => {
                    self.failed(&e);
                    if e.code() == Some("NOGROUP") {
                        // The group (or the stream) went away: a server restarted without
                        // its data, or someone deleted it. Made again, from the start.
                        if let Err(e) = self.ctx.create_group().await {
                            tracing::debug!(error = %e, "cannot create the group again yet");
                        }
                    }
                    if self.pause().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Waits a little after a failure; `true` if the pool stopped meanwhile.
    async fn pause(&self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(RETRY) => self.pool.is_stopping(),
            () = self.pool.stopping() => true,
        }
    }

    fn failed(&mut self, e: &redis::RedisError) {
        if !self.failing && !is_transient(e) {
            self.failing = true;
            tracing::warn!(error = %e, "reading from Redis failed; intake paused until it works");
        }
    }

    fn working(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!("reading from Redis works again; intake resumed");
        }
    }

    /// New entries (`XREADGROUP ... >`), waiting `block` at most for some.
    async fn read(&self, count: usize, block: Duration) -> Result<Vec<Entry>, redis::RedisError> {
        let (n, mut conn) = self.reader.get().await?;
        let cfg = &self.ctx.cfg;
        let reply: Result<Value, _> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg("STREAMS")
            .arg(&cfg.stream)
            .arg(">")
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(v) => Ok(parse_read(&v, &cfg.field)),
            Err(e) => {
                self.reader.fault(n, &e).await;
                Err(e)
            }
        }
    }

    /// Entries idle longer than the claim time, claimed for this consumer.
    async fn claim(&mut self, count: usize) -> Result<Vec<Entry>, redis::RedisError> {
        let cfg = &self.ctx.cfg;
        let reply = self
            .ctx
            .script(
                &self.ctx.scripts.claim,
                &[cfg.stream.as_bytes()],
                &[
                    cfg.group.as_bytes(),
                    cfg.consumer.as_bytes(),
                    millis(cfg.claim_idle).as_bytes(),
                    self.cursor.as_bytes(),
                    count.to_string().as_bytes(),
                ],
            )
            .await?;
        let (cursor, entries, deleted) = parse_claim(&reply, &cfg.field);
        if deleted > 0 {
            tracing::warn!(
                deleted,
                "pending entries were gone from the stream (trimmed or deleted) before they \
                 were settled: they get no record"
            );
        }
        self.cursor = cursor;
        Ok(entries)
    }

    /// Takes a delivery: an event for the pool, unless this daemon already runs the entry;
    /// an entry past the max deliveries, or not an event, is refused with a record.
    fn take(&self, e: Entry, claimed: bool, out: &mut Vec<Input>) {
        let shared = &self.ctx.shared;
        bump(if claimed {
            &shared.counters.claimed
        } else {
            &shared.counters.read
        });
        let Some(seq) = shared.hold(e.id, e.deliveries) else {
            tracing::debug!(id = %e.id, deliveries = e.deliveries, "claimed an entry this daemon still runs");
            return;
        };
        if let Some(max) = self.ctx.cfg.max_deliver.filter(|&m| e.deliveries > m) {
            bump(&shared.counters.quarantined);
            tracing::warn!(id = %e.id, deliveries = e.deliveries, "entry past max deliveries: quarantined with an error record");
            out.push(Input::Rejected {
                seq,
                reason: format!(
                    "delivered {} times, more than the max deliveries ({max}), and never \
                     settled: its consumers stopped or died, or could not reach the server, \
                     each time; not run again",
                    e.deliveries
                ),
            });
            return;
        }
        match e.event {
            Ok(payload) => out.push(Input::Event {
                seq,
                payload,
                // The delivery count is the attempt: earlier deliveries were attempts.
                prior_attempts: u32::try_from(e.deliveries.saturating_sub(1)).unwrap_or(u32::MAX),
            }),
            Err(reason) => {
                bump(&shared.counters.garbage);
                out.push(Input::Rejected { seq, reason });
            }
        }
    }
}

pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

fn entry_id(v: &Value) -> Option<StreamId> {
    match v {
        Value::BulkString(b) => StreamId::parse(b),
        Value::SimpleString(s) => StreamId::parse(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => &[],
    }
}

/// An entry's event: the value of `field`, or why it has none.
fn event(fields: &Value, field: &str) -> Result<Bytes, String> {
    let flat = items(fields);
    let mut names = Vec::new();
    for pair in flat.chunks(2) {
        let [k, v] = pair else { break };
        let Value::BulkString(name) = k else { continue };
        if name == field.as_bytes() {
            if let Value::BulkString(b) = v {
                return Ok(Bytes::copy_from_slice(b));
            }
        }
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    Err(if names.is_empty() {
        format!("the entry has no fields; herd reads the event from the field `{field}`")
    } else {
        format!(
            "the entry has no field `{field}` (it has: {}); herd reads the event from it",
            names.join(", ")
        )
    })
}

/// `XREADGROUP`'s reply: `nil`, or `[[stream, [[id, [field, value, ...]], ...]]]`.
fn parse_read(v: &Value, field: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for stream in items(v) {
        let Some(entries) = items(stream).get(1) else {
            continue;
        };
        for e in items(entries) {
            let parts = items(e);
            let Some(id) = parts.first().and_then(entry_id) else {
                continue;
            };
            let fields = parts.get(1).unwrap_or(&Value::Nil);
            out.push(Entry {
                id,
                deliveries: 1,
                event: event(fields, field),
            });
        }
    }
    out
}

/// [`crate::scripts::CLAIM`]'s reply: the next cursor, the entries, and how many were gone.
fn parse_claim(v: &Value, field: &str) -> (String, Vec<Entry>, u64) {
    let parts = items(v);
    let cursor = parts
        .first()
        .and_then(text)
        .unwrap_or_else(|| "0-0".to_string());
    let mut entries = Vec::new();
    for e in parts.get(1).map(items).unwrap_or_default() {
        let p = items(e);
        let (Some(id), Some(n)) = (p.first().and_then(entry_id), p.get(1).and_then(int)) else {
            continue;
        };
        entries.push(Entry {
            id,
            deliveries: n.max(1),
            event: event(p.get(2).unwrap_or(&Value::Nil), field),
        });
    }
    let deleted = parts.get(2).and_then(int).unwrap_or(0);
    (cursor, entries, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_read_gives_each_entry_its_event_or_why_not() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("k"), bulk("v"), bulk("event"), bulk("{}")]),
                ]),
                Value::Array(vec![
                    bulk("2-0"),
                    Value::Array(vec![bulk("data"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("3-0"), Value::Nil]),
            ]),
        ])]);
        let got = parse_read(&reply, "event");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].id, StreamId::new(1, 0));
        assert_eq!(got[0].event, Ok(Bytes::from_static(b"{}")));
        assert_eq!(got[0].deliveries, 1);
        assert_eq!(
            got[1].event,
            Err(
                "the entry has no field `event` (it has: data); herd reads the event from it"
                    .into()
            )
        );
        assert!(got[2].event.is_err());
        assert!(
            parse_read(&Value::Nil, "event").is_empty(),
            "a read that timed out"
        );
    }

    #[test]
    fn a_claim_gives_the_delivery_counts_and_the_cursor() {
        let reply = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Int(4),
                Value::Array(vec![bulk("event"), bulk("7")]),
            ])]),
            Value::Int(2),
        ]);
        let (cursor, entries, deleted) = parse_claim(&reply, "event");
        assert_eq!(cursor, "5-0");
        assert_eq!(deleted, 2);
        assert_eq!(
            entries,
            vec![Entry {
                id: StreamId::new(3, 0),
                deliveries: 4,
                event: Ok(Bytes::from_static(b"7")),
            }]
        );
    }
}
