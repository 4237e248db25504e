//! What one daemon holds of the consumer: every message it fetched and has not yet
//! acknowledged, by stream sequence, shared by the source (which adds them), the sink's acker
//! (which settles them), the progress ticker and the stop path (which naks them). It also keeps
//! the connection state and the counters that status, metrics and logs show.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

/// One message this daemon holds.
#[derive(Debug)]
struct Held {
    /// Where its acknowledgement goes (the newest delivery's).
    reply: Subject,
    /// Its delivery count, as the server numbers it.
    delivered: u64,
    /// When it was fetched or last reported in progress.
    touched: Instant,
    /// A line of it (a record or chunk) failed to be stored, and none has been stored since:
    /// it gets no progress reports, so that if this daemon cannot settle it, its ack wait runs
    /// out and another daemon (or this one, once it can) settles it, instead of it being held
    /// here for as long as that lasts.
    unstored: bool,
}

/// How a message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done (its record is stored): `+ACK`.
    Ack,
    /// Redeliver, after a delay if any: `-NAK`.
    Nak(Option<Duration>),
    /// Done for good without success (its error record is stored): `+TERM`.
    Term,
}

impl Settle {
    fn kind(self) -> AckKind {
        match self {
            Settle::Ack => AckKind::Ack,
            Settle::Nak(delay) => AckKind::Nak(delay),
            Settle::Term => AckKind::Term,
        }
    }
}

/// Counters, each only ever growing.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages fetched (deliveries taken).
    pub fetched: AtomicU64,
    /// Deliveries of a message this daemon was still holding (not run twice).
    pub doubled: AtomicU64,
    /// Records published and stored (PubAck received).
    pub published: AtomicU64,
    /// Of those, records the results stream already had (a redelivered event).
    pub duplicates: AtomicU64,
    pub acked: AtomicU64,
    pub naked: AtomicU64,
    pub termed: AtomicU64,
    /// `+WPI` sent for messages still being processed.
    pub progress: AtomicU64,
    /// Error records for messages past the consumer's max deliveries.
    pub max_deliveries: AtomicU64,
    /// Publishes retried (no PubAck in time, or the publish failed).
    pub republished: AtomicU64,
    /// Pull requests and record publishes that failed (connection trouble).
    pub errors: AtomicU64,
}

/// The consumer's own numbers, as last asked of the server.
#[derive(Debug, Default)]
pub struct ConsumerNumbers {
    /// Messages in the stream not yet delivered to the consumer.
    pub pending: AtomicU64,
    /// Delivered and not yet acknowledged, across every daemon.
    pub ack_pending: AtomicU64,
    /// Messages delivered more than once.
    pub redelivered: AtomicU64,
    /// Pull requests waiting at the server.
    pub waiting: AtomicU64,
}

/// State shared by the parts of one daemon's consumer.
#[derive(Debug)]
pub(crate) struct Shared {
    held: Mutex<HashMap<u64, Held>>,
    pub connected: AtomicBool,
    /// Bumped at each (re)connection: a pull request from before it is gone.
    pub connections: watch::Sender<u64>,
    /// Bumped when the consumer gets a new leader (on a cluster, the server that led it died
    /// or stepped down): a pull request from before it is gone, though the connection is not.
    pub consumer_leader: watch::Sender<u64>,
    /// Bumped when the results stream gets a new leader: a record published before it may
    /// never get its PubAck, and one refused while there was none can be stored now.
    pub results_leader: watch::Sender<u64>,
    /// Set once fetching has stopped for good and the last pull request has ended. Until
    /// then a nak on a stop waits: the server would hand the message straight back to this
    /// daemon's open pull request, which only naks it again, burning its deliveries.
    pub fetch_closed: watch::Sender<bool>,
    pub counters: Counters,
    pub consumer: ConsumerNumbers,
    /// Records fail to be stored (logged once until one is stored again).
    pub store_failing: AtomicBool,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
            connections: watch::Sender::new(0),
            consumer_leader: watch::Sender::new(0),
            results_leader: watch::Sender::new(0),
            fetch_closed: watch::Sender::new(false),
            counters: Counters::default(),
            consumer: ConsumerNumbers::default(),
            store_failing: AtomicBool::new(false),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a delivery. `true` if the message is new to this daemon (it must be run);
    /// `false` if this daemon already runs it (a redelivery: only its acknowledgement moves to
    /// the new delivery, so the message is not run twice here).
    pub fn hold(&self, seq: u64, reply: Subject, delivered: u64) -> bool {
        bump(&self.counters.fetched);
        let now = Instant::now();
        let mut map = self.map();
        match map.get_mut(&seq) {
            Some(h) => {
                h.reply = reply;
                h.delivered = h.delivered.max(delivered);
                h.touched = now;
                drop(map);
                bump(&self.counters.doubled);
                false
            }
            None => {
                map.insert(
                    seq,
                    Held {
                        reply,
                        delivered,
                        touched: now,
                        unstored: false,
                    },
                );
                true
            }
        }
    }

    /// Waits until no pull request of this daemon is open any more (see `fetch_closed`).
    pub async fn fetching_closed(&self) {
        let mut rx = self.fetch_closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The delivery count of a held message.
    pub fn delivered(&self, seq: u64) -> Option<u64> {
        self.map().get(&seq).map(|h| h.delivered)
    }

    /// Marks whether a held message's last line failed to be stored: while it has, the
    /// message gets no progress.
    pub fn set_unstored(&self, seq: u64, unstored: bool) {
        if let Some(h) = self.map().get_mut(&seq) {
            h.unstored = unstored;
        }
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Lets go of a message, returning where to settle it.
    pub fn release(&self, seq: u64, how: Settle) -> Option<(Subject, Bytes)> {
        let held = self.map().remove(&seq)?;
        bump(match how {
            Settle::Ack => &self.counters.acked,
            Settle::Nak(_) => &self.counters.naked,
            Settle::Term => &self.counters.termed,
        });
        Some((held.reply, how.kind().into()))
    }

    /// Lets go of every message still held (the intake has ended: nothing else will settle
    /// them), returning where to settle each.
    pub fn release_all(&self, how: Settle) -> Vec<(Subject, Bytes)> {
        let seqs: Vec<u64> = self.map().keys().copied().collect();
        seqs.into_iter()
            .filter_map(|seq| self.release(seq, how))
            .collect()
    }

    /// Messages not touched for `age` (and whose records have not failed to be stored):
    /// marked touched now, their reply subjects returned (to send them `+WPI`).
    pub fn stale(&self, age: Duration) -> Vec<Subject> {
        let now = Instant::now();
        let mut map = self.map();
        let mut out = Vec::new();
        for h in map.values_mut().filter(|h| !h.unstored) {
            if now.saturating_duration_since(h.touched) >= age {
                h.touched = now;
                out.push(h.reply.clone());
            }
        }
        drop(map);
        self.counters
            .progress
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_redelivery_of_a_held_message_is_not_run_twice() {
        let s = Shared::new();
        assert!(s.hold(7, "r1".into(), 1));
        assert!(!s.hold(7, "r2".into(), 2), "already held: not run again");
        assert_eq!(s.delivered(7), Some(2));
        let (reply, body) = s.release(7, Settle::Ack).unwrap();
        assert_eq!(reply.as_str(), "r2", "the newest delivery is acknowledged");
        assert_eq!(&body[..], b"+ACK");
        assert!(s.release(7, Settle::Ack).is_none(), "settled once");
        assert_eq!(s.counters.doubled.load(Ordering::Relaxed), 1);
        assert!(s.hold(7, "r3".into(), 3), "a later delivery is new again");
    }

    #[tokio::test(start_paused = true)]
    async fn only_stale_messages_get_progress() {
        let s = Shared::new();
        s.hold(1, "a".into(), 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        s.hold(2, "b".into(), 1);
        let stale = s.stale(Duration::from_secs(5));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].as_str(), "a");
        assert!(
            s.stale(Duration::from_secs(5)).is_empty(),
            "touched by the progress"
        );
        let (_, nak) = s.release(2, Settle::Nak(None)).unwrap();
        assert_eq!(&nak[..], b"-NAK");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_whose_record_cannot_be_stored_gets_no_progress() {
        let s = Shared::new();
        s.hold(1, "a".into(), 1);
        s.hold(2, "b".into(), 1);
        s.set_unstored(2, true);
        s.set_unstored(99, true); // not held: nothing to mark
        tokio::time::advance(Duration::from_secs(10)).await;
        let stale = s.stale(Duration::from_secs(5));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].as_str(), "a");
        // A redelivery to this daemon moves its acknowledgement, not its state.
        assert!(!s.hold(2, "b2".into(), 2));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(s.stale(Duration::from_secs(5)).len(), 1);
        // A line stored again (a chunk of a task still running): progress again.
        s.set_unstored(2, false);
        let stale = s.stale(Duration::from_secs(5));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].as_str(), "b2");
        let (reply, _) = s.release(2, Settle::Ack).unwrap();
        assert_eq!(reply.as_str(), "b2");
    }
}
