//! What one daemon holds of the consumer group: every entry it read or claimed and has not
//! yet settled, by the local number (`seq`) the pool knows it by, and by entry id. Shared by
//! the fetcher (which adds them), the settler (which lets them go), the toucher (which keeps
//! them claimed) and the stop path. It also keeps the connection state and the counters that
//! status, metrics and logs show.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::id::StreamId;

/// One entry this daemon holds.
#[derive(Debug)]
struct Held {
    /// The stream entry id (`1700000000000-0`).
    id: StreamId,
    /// Its delivery count in the group's pending entries list, as of this daemon's last read
    /// or claim: a settle applies only while the list still says so (see `scripts::APPLY`).
    deliveries: u64,
    /// When it was read, claimed or last touched.
    touched: Instant,
}

/// Counters, each only ever growing.
#[derive(Debug, Default)]
pub struct Counters {
    /// New entries read (`XREADGROUP >`).
    pub read: AtomicU64,
    /// Entries claimed from consumers that left them idle (`XAUTOCLAIM`).
    pub claimed: AtomicU64,
    /// Claims of an entry this daemon was still holding (not run twice).
    pub doubled: AtomicU64,
    /// Final records written to the results stream (each with its entry's `XACK`).
    pub written: AtomicU64,
    /// Chunk lines written to the results stream.
    pub chunks: AtomicU64,
    /// Entries acknowledged (`XACK`, in the same script as their final record).
    pub acked: AtomicU64,
    /// Entries handed back for a retry or on a stop (left idle to be claimed).
    pub released: AtomicU64,
    /// Settles refused because the entry had moved on (claimed by another consumer, or
    /// already settled): their records were dropped, not written a second time.
    pub dropped: AtomicU64,
    /// Idle times reset for entries still being worked on.
    pub touched: AtomicU64,
    /// Entries found claimed by another consumer while this daemon still held them.
    pub lost: AtomicU64,
    /// Entries past the max deliveries, quarantined with an error record without running.
    pub quarantined: AtomicU64,
    /// Entries without the event field (a `rejected` record each).
    pub garbage: AtomicU64,
    /// Commands that failed (connection trouble, mostly).
    pub errors: AtomicU64,
}

/// The group's own numbers, as last asked of the server (`XINFO GROUPS`).
#[derive(Debug, Default)]
pub struct GroupNumbers {
    /// Entries delivered and not yet acknowledged, across every consumer.
    pub pending: AtomicU64,
    /// Entries in the stream not yet delivered to the group.
    pub lag: AtomicU64,
    /// Consumers the group knows of (live or not).
    pub consumers: AtomicU64,
}

/// Keyed by local numbers and entry ids, neither chosen by an outsider: the fast hash (this
/// is every entry's way in and out) is enough.
#[derive(Debug, Default)]
struct Maps {
    by_seq: FxHashMap<u64, Held>,
    by_id: FxHashMap<StreamId, u64>,
}

/// State shared by the parts of one daemon's consumer.
#[derive(Debug)]
pub(crate) struct Shared {
    held: Mutex<Maps>,
    next_seq: AtomicU64,
    pub connected: AtomicBool,
    pub counters: Counters,
    pub group: GroupNumbers,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(Maps::default()),
            next_seq: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            counters: Counters::default(),
            group: GroupNumbers::default(),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        // A panic elsewhere while holding the lock leaves maps that are still consistent.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a delivery of entry `id`: its new local number if the entry is new to this daemon
    /// (it must be run); `None` if this daemon already runs it (a claim of its own entry: only
    /// the delivery count moves, so that its settle still applies).
    pub fn hold(&self, id: StreamId, deliveries: u64) -> Option<u64> {
        let now = Instant::now();
        let mut maps = self.maps();
        if let Some(seq) = maps.by_id.get(&id).copied() {
            if let Some(h) = maps.by_seq.get_mut(&seq) {
                h.deliveries = h.deliveries.max(deliveries);
                h.touched = now;
            }
            drop(maps);
            bump(&self.counters.doubled);
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        maps.by_id.insert(id, seq);
        maps.by_seq.insert(
            seq,
            Held {
                id,
                deliveries,
                touched: now,
            },
        );
        Some(seq)
    }

    /// The entry id and delivery count of a held entry.
    pub fn entry(&self, seq: u64) -> Option<(StreamId, u64)> {
        self.maps().by_seq.get(&seq).map(|h| (h.id, h.deliveries))
    }

    /// [`Shared::entry`] of each of `seqs`, under one lock.
    pub fn entries(&self, seqs: impl Iterator<Item = u64>) -> Vec<Option<(StreamId, u64)>> {
        let maps = self.maps();
        seqs.map(|seq| maps.by_seq.get(&seq).map(|h| (h.id, h.deliveries)))
            .collect()
    }

    /// Lets go of entries (settled, released or lost), under one lock; how many were held.
    pub fn release(&self, seqs: impl IntoIterator<Item = u64>) -> usize {
        let mut maps = self.maps();
        let mut n = 0;
        for seq in seqs {
            if let Some(held) = maps.by_seq.remove(&seq) {
                maps.by_id.remove(&held.id);
                n += 1;
            }
        }
        n
    }

    /// Every entry still held: `(seq, id, deliveries)`.
    pub fn all(&self) -> Vec<(u64, StreamId, u64)> {
        self.maps()
            .by_seq
            .iter()
            .map(|(seq, h)| (*seq, h.id, h.deliveries))
            .collect()
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.maps().by_seq.len()
    }

    /// Entries not touched for `age`: marked touched now, returned as `(seq, id,
    /// deliveries)` to reset their idle time at the server.
    pub fn stale(&self, age: Duration) -> Vec<(u64, StreamId, u64)> {
        let now = Instant::now();
        let mut maps = self.maps();
        let mut out = Vec::new();
        for (seq, h) in maps.by_seq.iter_mut() {
            if now.saturating_duration_since(h.touched) >= age {
                h.touched = now;
                out.push((*seq, h.id, h.deliveries));
            }
        }
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
    fn a_claim_of_a_held_entry_is_not_run_twice() {
        let s = Shared::new();
        let id = StreamId::new(1, 0);
        let seq = s.hold(id, 1).unwrap();
        assert_eq!(s.hold(id, 2), None, "already held: not run again");
        assert_eq!(s.entry(seq), Some((id, 2)), "its count moved");
        assert_eq!(s.counters.doubled.load(Ordering::Relaxed), 1);
        assert_eq!(s.release([seq]), 1);
        assert_eq!(s.release([seq]), 0, "released once");
        let again = s.hold(id, 3).unwrap();
        assert_ne!(
            again, seq,
            "a later delivery is new again, with a number of its own"
        );
        assert_eq!(s.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn only_stale_entries_are_touched() {
        let s = Shared::new();
        let a = s.hold(StreamId::new(1, 0), 1).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        s.hold(StreamId::new(2, 0), 1).unwrap();
        let stale = s.stale(Duration::from_secs(5));
        assert_eq!(stale, vec![(a, StreamId::new(1, 0), 1)]);
        assert!(s.stale(Duration::from_secs(5)).is_empty(), "touched now");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.stale(Duration::from_secs(5)).len(), 2);
    }
}
