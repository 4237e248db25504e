//! What a worker has streamed and its submitter has not received yet: the bound that keeps a
//! handler streaming chunks to a slow reader from filling herd's memory.
//!
//! Final records are bounded by the credits: a submitter holds at most so many events, and
//! each has one record. Chunks are not: one event may stream without end. So each chunk the
//! link reader decodes takes a [`ChunkTicket`] for its bytes from its worker's [`Backlog`],
//! the ticket travels inside the chunk's record, and the bytes come back when the record is
//! dropped, after its sink wrote it out. While a worker's backlog is over [`LIMIT`] its reader
//! stops reading: the worker blocks on its socket, and the stream waits for the reader of the
//! records, not herd's memory. Only the worker's own undelivered chunks hold it back, and they
//! leave the pool within its outbox delay whatever other workers do, so this cannot deadlock
//! (chunks that `--ordered` parks behind an earlier event give their ticket back: see
//! `submissions`).
//!
//! A paused worker is held for one submitter, so the reader tells the pool when it pauses and
//! resumes: nothing is dispatched to a held worker, and one held past [`HELD_LIMIT`] while
//! other submitters have work for it is killed (`Cause::Held`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Undelivered chunk bytes over which a worker's reader pauses.
pub(crate) const LIMIT: usize = 4 * 1024 * 1024;
/// How long a paused worker may be held for its submitter while other submitters have work
/// waiting for it; then it is killed (its stream's event is `rejected`), so a submitter that
/// stops reading holds up only itself. A reader that keeps reading, however slowly, unpauses
/// the worker well within it.
pub(crate) const HELD_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Bytes counted per chunk besides its data.
const OVERHEAD: usize = 64;

/// One worker's undelivered chunk bytes.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    bytes: AtomicUsize,
    /// Wakes the reader when the backlog falls back to the limit.
    room: Notify,
}

impl Backlog {
    /// A ticket for a chunk of `len` data bytes.
    pub fn take(self: &Arc<Self>, len: usize) -> ChunkTicket {
        let n = len + OVERHEAD;
        self.bytes.fetch_add(n, Ordering::AcqRel);
        ChunkTicket {
            held: Some((self.clone(), n)),
        }
    }

    /// Whether the backlog is over [`LIMIT`] (the reader would wait in [`Backlog::room`]).
    pub fn over(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > LIMIT
    }

    /// Waits until the backlog is at most [`LIMIT`].
    pub async fn room(&self) {
        while self.bytes.load(Ordering::Acquire) > LIMIT {
            // A release that crosses the limit leaves a permit if nobody waits yet, so one
            // between the load and this await is not missed.
            self.room.notified().await;
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// A chunk's share of its worker's [`Backlog`], given back when dropped. A clone holds
/// nothing (only the record the pool handed over gives the bytes back), and tickets compare
/// equal, so records keep their value semantics.
#[derive(Default)]
pub struct ChunkTicket {
    held: Option<(Arc<Backlog>, usize)>,
}

impl Drop for ChunkTicket {
    fn drop(&mut self) {
        if let Some((backlog, n)) = self.held.take() {
            let before = backlog.bytes.fetch_sub(n, Ordering::AcqRel);
            if before > LIMIT && before - n <= LIMIT {
                backlog.room.notify_one();
            }
        }
    }
}

impl Clone for ChunkTicket {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for ChunkTicket {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ChunkTicket {}

impl std::fmt::Debug for ChunkTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkTicket")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_full_backlog_waits_until_enough_is_delivered() {
        let b = Arc::new(Backlog::default());
        let small = b.take(10);
        b.room().await; // under the limit: no wait
        let big = b.take(LIMIT);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "over the limit");
        let copy = big.clone();
        drop(copy);
        assert_eq!(
            b.bytes(),
            LIMIT + 10 + 2 * OVERHEAD,
            "a clone gives nothing back"
        );
        drop(big);
        waiter.await.unwrap();
        drop(small);
        assert_eq!(b.bytes(), 0);
    }
}
