//! Events from the durable pull consumer: one pull request at a time, for no more messages
//! than the submission has room for, so no fetched message waits in this process while its
//! ack wait runs.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use futures_util::{FutureExt, StreamExt};
use herd_supervisor::{Input, PoolHandle, Room, Source};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::held::{bump, Settle, Shared};

/// How long a pull request waits at the server for messages. Short, so that a stop (which
/// waits for the open request to end, naking what it brings) and a silent connection fault
/// cost little; an idle daemon makes one request per period.
pub(crate) const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Pause before a new pull request after a failed one (unless the connection comes back).
const RETRY_PULL: Duration = Duration::from_millis(500);
/// How long making a pull request may take before it is tried again (it does not wait for
/// the server, so only a stalled connection makes it take long).
const PULL_SETUP: Duration = Duration::from_secs(5);
/// How long past its expiry a pull request may stay open before it counts as lost. The server
/// ends every request at its expiry; one still open later went with a server that died (in a
/// cluster, the consumer's leader: a new leader knows nothing of it), while this daemon's own
/// connection, to another server, is fine. Without this, intake would wait for the client's
/// own timer, five seconds past the expiry, once per request lost during an election.
const PULL_GRACE: Duration = Duration::from_secs(1);

/// The source the submission reads: each call asks the fetcher for what fits in `room`.
pub(crate) struct JetStreamEvents {
    pub requests: mpsc::Sender<(Room, oneshot::Sender<Vec<Input>>)>,
}

impl Source for JetStreamEvents {
    async fn next_batch(&mut self, room: Room) -> io::Result<Option<Vec<Input>>> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send((room, tx)).await.is_err() {
            return Ok(None); // the fetcher stopped: the pool is stopping
        }
        Ok(rx.await.ok())
    }
}

/// The open pull request.
pub(crate) struct Open {
    messages: Batch,
    /// Past this, it is lost (see [`PULL_GRACE`]).
    lost_at: Instant,
}

/// What the open pull request gave.
// Matched at once where it is made: boxing the message would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Pulled {
    /// A new connection: a pull request made on the old one is gone.
    Reconnected,
    /// Still open past its expiry (see [`PULL_GRACE`]), or made before the consumer's
    /// current leader was elected: the new leader knows nothing of it.
    Lost,
    Next(Option<Result<async_nats::jetstream::Message, async_nats::Error>>),
}

/// Owns the pull requests, on a task of its own so that whatever an open request still
/// brings after a stop is naked, whenever the submission ends.
pub(crate) struct Fetcher {
    pub consumer: PullConsumer,
    pub shared: Arc<Shared>,
    pub pool: PoolHandle,
    pub client: async_nats::Client,
    pub connections: watch::Receiver<u64>,
    /// The consumer's new leaders (see `Shared::consumer_leader`).
    pub leaders: watch::Receiver<u64>,
    pub batch: Option<Open>,
    /// Whether the last pull request failed (logged once per outage).
    pub failing: bool,
}

impl Fetcher {
    /// Answers the source's requests until the pool stops, then naks what is left.
    pub async fn run(mut self, mut requests: mpsc::Receiver<(Room, oneshot::Sender<Vec<Input>>)>) {
        // Events fetched for a submission that ended meanwhile: naked below, in this task, so
        // that the stop's flush (which awaits this task) sends them before the connection
        // closes. A task of their own raced it, and lost them under load.
        let mut orphans: Vec<u64> = Vec::new();
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
                let seqs: Vec<u64> = events
                    .iter()
                    .filter_map(|i| match i {
                        Input::Event { seq, .. } => Some(*seq),
                        Input::Rejected { .. } => None,
                    })
                    .collect();
                orphans = seqs;
                break;
            }
        }
        // Whatever the open pull request still brings is naked only once it has ended, and so
        // are the naks of the stop (see `Shared::fetch_closed`).
        let late = match self.batch.take() {
            Some(open) => drain(open.messages, &self.shared).await,
            None => Vec::new(),
        };
        self.shared.fetch_closed.send_replace(true);
        for reply in late {
            bump(&self.shared.counters.naked);
            let _ = self.client.publish(reply, AckKind::Nak(None).into()).await;
        }
        for seq in orphans {
            settle(&self.client, &self.shared, seq, Settle::Nak(None)).await;
        }
    }

    /// The next events (at least one), from the open pull request or a new one for `room`;
    /// `None` once the pool stops taking events.
    async fn fill(&mut self, room: Room) -> Option<Vec<Input>> {
        loop {
            if self.pool.is_stopping() {
                return None;
            }
            let Some(open) = self.batch.as_mut() else {
                let request = self
                    .consumer
                    .batch()
                    .max_messages(room.events)
                    .expires(PULL_EXPIRES)
                    .messages();
                // Not cancelled by a stop: a pull request the server already has would deliver
                // messages nobody naks, held until their ack wait. Once made, it is the open
                // batch, which the stop drains and naks (see `run`).
                let lost_at = Instant::now() + PULL_EXPIRES + PULL_GRACE;
                let Ok(made) = tokio::time::timeout(PULL_SETUP, request).await else {
                    if self.pool.is_stopping() {
                        return None;
                    }
                    continue;
                };
                match made {
                    Ok(messages) => {
                        self.batch = Some(Open { messages, lost_at });
                        if self.failing {
                            self.failing = false;
                            tracing::info!("pull requests work again; intake resumed");
                        }
                    }
                    Err(e) => {
                        bump(&self.shared.counters.errors);
                        if !self.failing {
                            self.failing = true;
                            tracing::warn!(error = %e, "pull request failed; intake paused until it works");
                        }
                        // Until the connection comes back, or a while.
                        tokio::select! {
                            _ = self.connections.changed() => {}
                            _ = self.leaders.changed() => {}
                            () = tokio::time::sleep(RETRY_PULL) => {}
                            () = self.pool.stopping() => return None,
                        }
                    }
                }
                continue;
            };
            let pulled = tokio::select! {
                biased;
                () = self.pool.stopping() => return None,
                _ = self.connections.changed() => Pulled::Reconnected,
                _ = self.leaders.changed() => Pulled::Lost,
                () = tokio::time::sleep_until(open.lost_at) => Pulled::Lost,
                m = open.messages.next() => Pulled::Next(m),
            };
            let first = match pulled {
                Pulled::Reconnected | Pulled::Next(None) => {
                    self.batch = None;
                    continue;
                }
                Pulled::Lost => {
                    bump(&self.shared.counters.errors);
                    tracing::debug!(
                        "pull request lost (past its expiry, or a new consumer leader); asking again"
                    );
                    self.abandon();
                    continue;
                }
                Pulled::Next(Some(Ok(msg))) => msg,
                Pulled::Next(Some(Err(e))) => {
                    tracing::debug!(error = %e, "pull request ended with an error");
                    self.abandon();
                    continue;
                }
            };
            let mut out = Vec::new();
            self.take(first, &mut out);
            // Whatever else has arrived goes in the same batch; nothing waits for more.
            while let Some(next) = self
                .batch
                .as_mut()
                .and_then(|o| o.messages.next().now_or_never())
            {
                match next {
                    Some(Ok(msg)) => self.take(msg, &mut out),
                    Some(Err(_)) => self.abandon(),
                    None => self.batch = None,
                }
            }
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    /// Gives up the open pull request after an error, or once lost, without losing what it may still
    /// bring: a message the server delivers to it after this would otherwise wait out its ack
    /// wait unseen. Such messages are naked as soon as they arrive.
    fn abandon(&mut self) {
        let Some(open) = self.batch.take() else {
            return;
        };
        let (client, shared) = (self.client.clone(), self.shared.clone());
        tokio::spawn(async move {
            for reply in drain(open.messages, &shared).await {
                bump(&shared.counters.naked);
                let _ = client.publish(reply, AckKind::Nak(None).into()).await;
            }
        });
    }

    /// Takes a delivery: an event for the pool, unless this daemon already runs the message.
    fn take(&mut self, msg: async_nats::jetstream::Message, out: &mut Vec<Input>) {
        let (seq, delivered) = match msg.info() {
            Ok(info) => (
                info.stream_sequence,
                u64::try_from(info.delivered).unwrap_or(1).max(1),
            ),
            Err(e) => {
                tracing::warn!(error = %e, subject = %msg.subject, "not a JetStream message; ignored");
                return;
            }
        };
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        if self.shared.hold(seq, reply, delivered) {
            out.push(Input::Event {
                seq,
                payload: msg.payload.clone(),
                // The delivery count is the attempt: earlier deliveries were attempts.
                prior_attempts: u32::try_from(delivered - 1).unwrap_or(u32::MAX),
            });
        } else {
            tracing::debug!(
                seq,
                delivered,
                "redelivery of a message this daemon still runs"
            );
        }
    }
}

/// What an open pull request still brings until it ends (at its expiry): the reply subjects
/// of those messages, to nak.
async fn drain(mut batch: Batch, shared: &Shared) -> Vec<async_nats::Subject> {
    let mut late = Vec::new();
    let limit = PULL_EXPIRES + Duration::from_secs(5);
    let _ = tokio::time::timeout(limit, async {
        // Past an error too: messages may still follow it until the request ends.
        while let Some(next) = batch.next().await {
            if let Ok(msg) = next {
                bump(&shared.counters.fetched);
                late.extend(msg.reply.clone());
            }
        }
    })
    .await;
    late
}

/// Settles a message with `how` (used by the sink's acker and by stops).
pub(crate) async fn settle(client: &async_nats::Client, shared: &Shared, seq: u64, how: Settle) {
    if let Some((reply, body)) = shared.release(seq, how) {
        // An acknowledgement that is lost (the connection dropped) is not retried: the message
        // comes back after its ack wait and its record is a duplicate the results stream drops.
        if let Err(e) = client.publish(reply, body).await {
            tracing::debug!(seq, error = %e, "acknowledgement not sent");
        }
    }
}
