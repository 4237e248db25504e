//! Records to the results subject, then the events' acknowledgements: each record is
//! published with `Nats-Msg-Id` set to its event's stream sequence, and its event is settled
//! only once the results stream has stored it (its PubAck). The batch of records is kept until
//! then, so the submission's credits come back only for settled events.
//!
//! `deliver` publishes and hands the batch to the acker task, which waits for the PubAcks of
//! every record it has at once and settles each event as soon as its own records are stored:
//! one lost PubAck delays only its own event, and after a server restart every record whose
//! PubAck went with the old connection is published again at once, not one by one.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use herd_supervisor::policy::{retry_delay, Jitter};
use herd_supervisor::{ErrorKind, PoolHandle, Record, RecordBatch, RecordOutcome, Sink};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::held::{bump, Settle, Shared};
use crate::source::settle;

/// Delay before publishing a record again after a failure, doubling up to the cap.
const REPUBLISH_FIRST: Duration = Duration::from_millis(100);
const REPUBLISH_MAX: Duration = Duration::from_secs(2);

/// What the sink needs to know of the consumer.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The consumer's max deliver (`None`: unlimited).
    pub max_deliver: Option<u64>,
    /// herd's `--retry-backoff`: the base of a nak's delay.
    pub backoff: Duration,
}

type AckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// A publish on its way.
pub(crate) enum Sent {
    /// Sent on the connection numbered `connection` (see `Shared::connections`) while the
    /// results stream's leader was the one numbered `leader` (see `Shared::results_leader`);
    /// `ack` is its PubAck, already polled once.
    Out {
        ack: AckFuture,
        connection: u64,
        leader: u64,
    },
    /// Not sent.
    Failed(PublishError),
    /// Not sent: there was no connection. (The client would queue it, and everything else
    /// sent meanwhile, until its buffer is full and every publish waits out a timeout.)
    Offline,
}

/// One record of a batch on its way.
struct Item {
    seq: u64,
    /// How its event settles; `None` for a chunk line, which settles nothing.
    how: Option<Settle>,
    /// A nak on a stop: it waits until this daemon fetches no more.
    on_stop: bool,
    /// The record as published with its message id, and the publish so far (none: nothing to
    /// publish).
    publish: Option<(String, Bytes, Sent)>,
}

struct Work {
    /// Held until its events are settled: its credits come back only then.
    batch: RecordBatch,
    items: Vec<Item>,
}

pub(crate) struct JetStreamRecords {
    publisher: Publisher,
    shared: Arc<Shared>,
    policy: Policy,
    jitter: Jitter,
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Work>>,
    acker: Option<JoinHandle<()>>,
    pool: PoolHandle,
}

/// Publishes records to the results subject.
#[derive(Clone)]
pub(crate) struct Publisher {
    pub js: async_nats::jetstream::Context,
    pub subject: Subject,
    pub shared: Arc<Shared>,
}

impl Publisher {
    /// Publishes `record` with message id `id`: the event's stream sequence for a final
    /// record, so the results stream drops a second record for the same event (a
    /// redelivery) within its duplicate window; see [`chunk_id`] for a chunk line.
    pub async fn publish(&self, id: &str, record: Bytes) -> Sent {
        // Read before sending: a reconnection or a new leader in between counts against this
        // publish.
        let connection = *self.shared.connections.borrow();
        let leader = *self.shared.results_leader.borrow();
        if !self.shared.connected.load(Ordering::Relaxed) {
            return Sent::Offline;
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let ack = match self
            .js
            .publish_with_headers(self.subject.clone(), headers, record)
            .await
        {
            Ok(ack) => ack,
            Err(e) => return Sent::Failed(e),
        };
        // Polled once at once: a `PublishAckFuture` dropped before its first poll hands its
        // in-flight permit to the client's acker task, which warns for each one ("failed to
        // pass future permit to the acker") when that task is gone, as at runtime teardown.
        // Once polled, dropping it releases the permit itself. Its timeout runs from here.
        let mut ack: AckFuture = Box::pin(std::future::IntoFuture::into_future(ack));
        if let Poll::Ready(r) = std::future::poll_fn(|cx| Poll::Ready(ack.as_mut().poll(cx))).await
        {
            ack = Box::pin(std::future::ready(r));
        }
        Sent::Out {
            ack,
            connection,
            leader,
        }
    }

    /// Publishes until the results stream has stored it. A PubAck comes only on the
    /// connection its publish went out on, from the stream leader it reached: after a
    /// reconnection or a new leader, the record is published again at once instead of after
    /// the PubAck timeout (one refused for want of a leader too, instead of after its backoff),
    /// and while there is no connection it waits for one instead of queueing copies. While a
    /// line fails to be stored (an error or no PubAck in time on a live connection), its event
    /// gets no progress reports (see `Shared::stale`).
    pub async fn until_stored(&self, seq: u64, id: &str, record: &Bytes, mut sent: Sent) {
        let shared = &*self.shared;
        let mut connections = shared.connections.subscribe();
        let mut leaders = shared.results_leader.subscribe();
        let mut delay = REPUBLISH_FIRST;
        loop {
            let failure = match sent {
                Sent::Offline => None,
                Sent::Failed(e) => Some(Failure::Error(e)),
                Sent::Out {
                    ack,
                    connection,
                    leader,
                } if *connections.borrow_and_update() == connection
                    && *leaders.borrow_and_update() == leader =>
                {
                    tokio::select! {
                        r = ack => match r {
                            Ok(ack) => {
                                bump(&shared.counters.published);
                                if ack.duplicate {
                                    bump(&shared.counters.duplicates);
                                }
                                shared.set_unstored(seq, false);
                                if shared.store_failing.swap(false, Ordering::Relaxed) {
                                    tracing::info!(seq, "records are stored again");
                                }
                                return;
                            }
                            Err(e) => Some(Failure::Error(e)),
                        },
                        () = reconnected(&mut connections) => Some(Failure::Lost),
                        () = reconnected(&mut leaders) => Some(Failure::Lost),
                    }
                }
                Sent::Out { .. } => Some(Failure::Lost),
            };
            if let Some(failure) = &failure {
                bump(&shared.counters.errors);
                match failure {
                    // The disconnection or the election is logged once, for all of them;
                    // published again, it is stored at once.
                    Failure::Lost => {
                        tracing::debug!(seq, "PubAck lost with its connection or stream leader");
                    }
                    Failure::Error(e) => {
                        shared.set_unstored(seq, true);
                        if !shared.store_failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(seq, error = %e, "records are not stored; publishing them again");
                        }
                    }
                }
            }
            if !shared.connected.load(Ordering::Relaxed) {
                // `connections` has seen every reconnection up to the flag's `false`: the
                // next one wakes this.
                reconnected(&mut connections).await;
                delay = REPUBLISH_FIRST;
            } else if let Some(Failure::Error(_)) = failure {
                tokio::select! {
                    () = tokio::time::sleep(delay) => delay = (delay * 2).min(REPUBLISH_MAX),
                    () = reconnected(&mut connections) => delay = REPUBLISH_FIRST,
                    () = reconnected(&mut leaders) => delay = REPUBLISH_FIRST,
                }
            } // else: a new connection or leader already, or one that came back since: at once.
            bump(&shared.counters.republished);
            sent = self.publish(id, record.clone()).await;
        }
    }
}

/// Why a record is not stored yet.
enum Failure {
    /// Its publish went out on a connection that is gone, or reached a stream leader that is:
    /// no PubAck will come.
    Lost,
    /// The publish failed, or its PubAck did not come in time or was an error.
    Error(PublishError),
}

/// The next (re)connection, or new leader, as `changes` counts them.
async fn reconnected(changes: &mut watch::Receiver<u64>) {
    if changes.changed().await.is_err() {
        // The sender lives in `Shared`, which the caller holds: never.
        std::future::pending::<()>().await;
    }
}

impl JetStreamRecords {
    pub fn new(
        publisher: Publisher,
        client: async_nats::Client,
        shared: Arc<Shared>,
        policy: Policy,
        seed: u64,
        pool: PoolHandle,
    ) -> Self {
        // Bounded by the credits anyway (a batch holds at least one); this only keeps the
        // channel from being the unbounded kind.
        let (tx, rx) = mpsc::channel(4096);
        let acker = tokio::spawn(acker(
            rx,
            publisher.clone(),
            client,
            shared.clone(),
            pool.clone(),
        ));
        Self {
            publisher,
            shared,
            policy,
            jitter: Jitter::new(seed),
            buf: Vec::with_capacity(256),
            tx: Some(tx),
            acker: Some(acker),
            pool,
        }
    }
}

/// The message id of a chunk line: unique per delivery of the event, attempt and chunk, so
/// the duplicate window never drops a chunk of a later attempt or redelivery.
fn chunk_id(seq: u64, delivered: u64, attempt: u32, index: u32) -> String {
    format!("{seq}.{delivered}.{attempt}.{index}")
}

/// How a record settles its event, `delivered` being the delivery count.
fn settle_as(r: &Record, delivered: u64, policy: &Policy, jitter: &mut Jitter) -> Settle {
    let last = policy.max_deliver.is_some_and(|max| delivered >= max);
    match &r.outcome {
        // Not called for chunks (they settle nothing); acking would be wrong, so a stray one
        // must not settle the event either way.
        RecordOutcome::Ok { .. } | RecordOutcome::Chunk { .. } => Settle::Ack,
        // Never run: another daemon takes it at once.
        RecordOutcome::Err {
            kind: ErrorKind::Shutdown,
            ..
        } => Settle::Nak(None),
        RecordOutcome::Err {
            retryable: true, ..
        } if !last => {
            let n = u32::try_from(delivered).unwrap_or(u32::MAX);
            let delay = retry_delay(policy.backoff, n, jitter.next_f64());
            Settle::Nak(Some(delay))
        }
        RecordOutcome::Err { .. } => Settle::Term,
    }
}

/// A record as published: its JSON line without the newline.
pub(crate) fn render(r: &Record, buf: &mut Vec<u8>) -> Bytes {
    buf.clear();
    r.write_json(buf);
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Bytes::copy_from_slice(buf)
}

impl Sink for JetStreamRecords {
    async fn deliver(&mut self, batch: RecordBatch) -> io::Result<()> {
        let mut items = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            let Some(delivered) = self.shared.delivered(r.seq) else {
                tracing::error!(seq = r.seq, "a record for a message not held (bug)");
                continue;
            };
            if let RecordOutcome::Chunk { index, .. } = &r.outcome {
                // Published to the results subject like a record, before the event's final
                // record; the event stays held.
                let id = chunk_id(r.seq, delivered, r.attempts, *index);
                let record = render(r, &mut self.buf);
                let sent = self.publisher.publish(&id, record.clone()).await;
                items.push(Item {
                    seq: r.seq,
                    how: None,
                    on_stop: false,
                    publish: Some((id, record, sent)),
                });
                continue;
            }
            let how = settle_as(r, delivered, &self.policy, &mut self.jitter);
            let publish = match how {
                Settle::Nak(_) => None,
                Settle::Ack | Settle::Term => {
                    let id = r.seq.to_string();
                    let record = render(r, &mut self.buf);
                    let sent = self.publisher.publish(&id, record.clone()).await;
                    Some((id, record, sent))
                }
            };
            let on_stop = matches!(how, Settle::Nak(_))
                && (r.error_kind() == Some(ErrorKind::Shutdown) || self.pool.is_stopping());
            let how = Some(how);
            items.push(Item {
                seq: r.seq,
                how,
                on_stop,
                publish,
            });
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("sink finished"))?;
        tx.send(Work { batch, items })
            .await
            .map_err(|_| io::Error::other("the acker task is gone"))
    }

    async fn finish(&mut self) -> io::Result<()> {
        // The acker settles what it has, then ends.
        self.tx = None;
        if let Some(acker) = self.acker.take() {
            acker.await.map_err(io::Error::other)?;
        }
        Ok(())
    }
}

/// Waits for the records of every batch at once and settles each event once its records are
/// stored; a batch's credits go back once all of its events are settled. The records of one
/// event (its chunk lines, then its final record) are waited for in order, so an event is
/// never settled before all of its lines are stored.
async fn acker(
    mut rx: mpsc::Receiver<Work>,
    publisher: Publisher,
    client: async_nats::Client,
    shared: Arc<Shared>,
    pool: PoolHandle,
) {
    let mut running = FuturesUnordered::new();
    // Per event with lines on their way: the last one's "stored" signal.
    let mut last: HashMap<u64, oneshot::Receiver<()>> = HashMap::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            work = rx.recv(), if open => {
                let Some(Work { batch, items }) = work else {
                    open = false;
                    continue;
                };
                // Dropped, and its credits returned, with its last item.
                let batch = Arc::new(batch);
                for item in items {
                    let after = last.remove(&item.seq);
                    let (done, stored) = oneshot::channel();
                    if item.how.is_none() {
                        last.insert(item.seq, stored); // a chunk line: its final record waits
                    }
                    running.push(settle_item(
                        item,
                        after,
                        done,
                        batch.clone(),
                        &publisher,
                        &client,
                        &shared,
                        &pool,
                    ));
                }
            }
            Some(()) = running.next() => {}
        }
    }
}

/// Stores one item's record (after the event's earlier lines), then settles its event.
#[allow(clippy::too_many_arguments)]
async fn settle_item(
    item: Item,
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
    batch: Arc<RecordBatch>,
    publisher: &Publisher,
    client: &async_nats::Client,
    shared: &Shared,
    pool: &PoolHandle,
) {
    if let Some(after) = after {
        let _ = after.await;
    }
    if let Some((id, record, sent)) = item.publish {
        publisher.until_stored(item.seq, &id, &record, sent).await;
    }
    if let Some(how) = item.how {
        if item.on_stop || (matches!(how, Settle::Nak(_)) && pool.is_stopping()) {
            shared.fetching_closed().await;
        }
        settle(client, shared, item.seq, how).await;
    }
    let _ = done.send(());
    drop(batch);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind, retryable: bool) -> Record {
        Record {
            seq: 1,
            attempts: 1,
            chunks: 0,
            outcome: RecordOutcome::Err {
                kind,
                message: String::new(),
                retryable,
            },
            input: None,
        }
    }

    #[test]
    fn each_record_settles_its_message() {
        let policy = Policy {
            max_deliver: Some(3),
            backoff: Duration::from_millis(100),
        };
        let mut j = Jitter::new(1);
        let ok = Record {
            seq: 1,
            attempts: 1,
            chunks: 0,
            outcome: RecordOutcome::Ok {
                output: Bytes::from_static(b"1"),
                worker: 0,
                pid: 1,
                micros: 1,
            },
            input: None,
        };
        assert_eq!(settle_as(&ok, 1, &policy, &mut j), Settle::Ack);
        // Retryable: a nak with herd's backoff (doubling per delivery, jittered), until the
        // last delivery, which is terminal.
        let Settle::Nak(Some(d1)) = settle_as(&err(ErrorKind::Failed, true), 1, &policy, &mut j)
        else {
            panic!("a retryable error before the last delivery is a delayed nak");
        };
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let Settle::Nak(Some(d2)) = settle_as(&err(ErrorKind::Failed, true), 2, &policy, &mut j)
        else {
            panic!("still a nak on the second delivery");
        };
        assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200));
        assert_eq!(
            settle_as(&err(ErrorKind::Failed, true), 3, &policy, &mut j),
            Settle::Term
        );
        for kind in [
            ErrorKind::Failed,
            ErrorKind::Crashed,
            ErrorKind::Timeout,
            ErrorKind::Protocol,
            ErrorKind::Rejected,
            // Cancelled on purpose: terminated, never redelivered.
            ErrorKind::Cancelled,
            // A stale or late event is dropped, not redelivered to go stale again.
            ErrorKind::Expired,
            ErrorKind::Deadline,
        ] {
            assert_eq!(
                settle_as(&err(kind, false), 1, &policy, &mut j),
                Settle::Term
            );
        }
        // Never ran: back to the server at once, whatever the delivery.
        assert_eq!(
            settle_as(&err(ErrorKind::Shutdown, false), 3, &policy, &mut j),
            Settle::Nak(None)
        );
        // No max deliver: retryable errors are naked for ever.
        let unlimited = Policy {
            max_deliver: None,
            ..policy
        };
        assert!(matches!(
            settle_as(&err(ErrorKind::Failed, true), 50, &unlimited, &mut j),
            Settle::Nak(Some(_))
        ));
    }

    #[test]
    fn a_published_record_is_its_json_line_without_the_newline() {
        let mut buf = Vec::new();
        let body = render(&err(ErrorKind::Crashed, false), &mut buf);
        assert_eq!(
            &body[..],
            br#"{"seq":1,"ok":false,"error":{"kind":"crashed","message":""},"attempts":1}"#
        );
    }
}
