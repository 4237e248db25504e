//! Records to the results subject, then the events' acknowledgements: each record is
//! published with `Nats-Msg-Id` set to its event's stream sequence, and its event is settled
//! only once the results stream has stored it (its PubAck). The batch of records is kept until
//! then, so the submission's credits come back only for settled events.
//!
//! `deliver` publishes and hands the batch to the acker task, which waits for the PubAcks in
//! order and settles: publishing the next batch does not wait for the last one's PubAcks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use herd_supervisor::policy::{retry_delay, Jitter};
use herd_supervisor::{ErrorKind, PoolHandle, Record, RecordBatch, RecordOutcome, Sink};
use tokio::sync::mpsc;
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

/// One record of a batch on its way.
struct Item {
    seq: u64,
    /// How its event settles; `None` for a chunk line, which settles nothing.
    how: Option<Settle>,
    /// A nak on a stop: it waits until this daemon fetches no more.
    on_stop: bool,
    /// The record as published with its message id, and the publish's outcome so far (none:
    /// nothing to publish).
    publish: Option<(String, Bytes, Result<PublishAckFuture, PublishError>)>,
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
}

impl Publisher {
    /// Publishes `record` with message id `id`: the event's stream sequence for a final
    /// record, so the results stream drops a second record for the same event (a
    /// redelivery) within its duplicate window; see [`chunk_id`] for a chunk line.
    pub async fn publish(&self, id: &str, record: Bytes) -> Result<PublishAckFuture, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        self.js
            .publish_with_headers(self.subject.clone(), headers, record)
            .await
    }

    /// Publishes until the results stream has stored it (or `give_up` fires).
    pub async fn until_stored(
        &self,
        shared: &Shared,
        seq: u64,
        id: &str,
        record: &Bytes,
        mut first: Result<PublishAckFuture, PublishError>,
    ) {
        let mut delay = REPUBLISH_FIRST;
        let mut warned = false;
        loop {
            let outcome = match first {
                Ok(fut) => fut.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(ack) => {
                    bump(&shared.counters.published);
                    if ack.duplicate {
                        bump(&shared.counters.duplicates);
                    }
                    if warned {
                        tracing::info!(seq, "record stored after retrying");
                    }
                    return;
                }
                Err(e) => {
                    bump(&shared.counters.errors);
                    if !warned {
                        warned = true;
                        tracing::warn!(seq, error = %e, "record not stored yet; publishing it again");
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(REPUBLISH_MAX);
            bump(&shared.counters.republished);
            first = self.publish(id, record.clone()).await;
        }
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

/// Waits for each record to be stored, in order, then settles its event; a batch's credits
/// go back once all of its events are settled.
async fn acker(
    mut rx: mpsc::Receiver<Work>,
    publisher: Publisher,
    client: async_nats::Client,
    shared: Arc<Shared>,
    pool: PoolHandle,
) {
    while let Some(Work { batch, items }) = rx.recv().await {
        for item in items {
            if let Some((id, record, sent)) = item.publish {
                publisher
                    .until_stored(&shared, item.seq, &id, &record, sent)
                    .await;
            }
            let Some(how) = item.how else {
                continue; // a chunk line: stored, and nothing to settle
            };
            if item.on_stop || (matches!(how, Settle::Nak(_)) && pool.is_stopping()) {
                shared.fetching_closed().await;
            }
            settle(&client, &shared, item.seq, how).await;
        }
        drop(batch);
    }
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
