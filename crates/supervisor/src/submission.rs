//! One stream of events into a pool and its records back — the seam between the pool and
//! where events come from and records go.
//!
//! A [`Source`] yields numbered events; a [`Sink`] takes their records. Today's sources are a
//! byte stream of lines (`herd run`'s stdin or file, see [`crate::lines::LineSource`]) and a
//! control-socket client (`herd submit`); the next (a broker consumer, which must publish each
//! record and then acknowledge its message) is one more pair of implementations, with no
//! change to the pool. [`Submission::run`] drives a pair to the end, and [`run_one`] runs a
//! whole pool for one pair, stopping it once the source has ended and every record is out.
//!
//! Back-pressure is credits: each event takes credits for one event and for its bytes, and a
//! record's credits come back only when the sink has delivered it (dropped its
//! [`RecordBatch`]). A sink that holds records back — until an acknowledgement, or because its
//! reader is slow — holds back its own source and nothing else.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::credits::{Credits, Outbox};
use crate::job::SubmissionId;
use crate::{
    Command, Input, PoolError, PoolHandle, RecordBatch, SubmissionMsg, SubmitOptions, Summary,
};

/// One stream of events into a pool and its records back.
#[derive(Debug)]
pub struct Submission {
    pub sender: EventSender,
    pub records: Records,
}

/// The sending half of a submission. Each event takes credits (one event, and its payload's
/// bytes), which come back when its record is delivered: at most `queue` events and about
/// `queue_bytes` bytes of a submission are in the pool at once, which is the back-pressure.
/// Dropping it (or [`EventSender::end`]) ends the submission.
#[derive(Debug)]
pub struct EventSender {
    pub(crate) id: SubmissionId,
    pub(crate) submissions: mpsc::UnboundedSender<SubmissionMsg>,
    pub(crate) credits: Arc<Credits>,
    pub(crate) max_batch: usize,
}

/// The pool has stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the pool has stopped")]
pub struct PoolGone;

impl EventSender {
    /// Largest batch [`EventSender::send`] accepts (the credit limit).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Sends a batch of events, waiting for credits first (in parts, if the batch is larger
    /// than what the submission may hold at once).
    ///
    /// # Errors
    /// [`PoolGone`] if the pool has stopped.
    pub async fn send(&self, mut batch: Vec<Input>) -> Result<(), PoolGone> {
        while !batch.is_empty() {
            // The longest prefix within both budgets, and at least one event.
            let mut bytes = 0usize;
            let mut n = 0;
            for input in batch.iter().take(self.max_batch) {
                let charge = self.credits.input_charge(input.len());
                if n > 0 && bytes + charge > self.credits.byte_limit {
                    break;
                }
                bytes += charge;
                n += 1;
            }
            let rest = batch.split_off(n);
            // Both are bounded by their semaphore's size, far below u32::MAX.
            let events = u32::try_from(n).unwrap_or(u32::MAX);
            let byte_permits = u32::try_from(bytes).unwrap_or(u32::MAX);
            self.credits
                .events
                .acquire_many(events)
                .await
                .map_err(|_| PoolGone)?
                .forget();
            self.credits
                .bytes
                .acquire_many(byte_permits)
                .await
                .map_err(|_| PoolGone)?
                .forget();
            self.submissions
                .send(SubmissionMsg::Events { id: self.id, batch })
                .map_err(|_| PoolGone)?;
            batch = rest;
        }
        Ok(())
    }

    /// Waits until the submission may take at least one more event, and says how much it may
    /// take now without waiting: a source that fetches (a broker consumer) asks for no more,
    /// so nothing it fetched sits waiting for credits.
    ///
    /// # Errors
    /// [`PoolGone`] if the pool has stopped.
    pub async fn room(&self) -> Result<Room, PoolGone> {
        // Taken and given back at once: only this sender takes this submission's credits.
        let one = self.credits.events.acquire().await.map_err(|_| PoolGone)?;
        let events = self.credits.events.available_permits() + 1;
        drop(one);
        Ok(Room {
            events: events.min(self.max_batch),
            bytes: self.credits.bytes.available_permits(),
        })
    }

    /// Blocking [`EventSender::send`], for plain threads (not inside an async runtime).
    ///
    /// # Errors
    /// [`PoolGone`] if the pool has stopped.
    pub fn blocking_send(&self, batch: Vec<Input>) -> Result<(), PoolGone> {
        futures_executor::block_on(self.send(batch))
    }

    /// Ends the submission: the records channel closes once every record is delivered.
    pub fn end(self) {}

    /// The submission's id in its pool (what [`crate::PoolHandle::cancel`] names).
    pub fn id(&self) -> SubmissionId {
        self.id
    }

    /// A handle that cancels this submission's events, usable after the sender is moved.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            id: self.id,
            submissions: self.submissions.clone(),
        }
    }
}

/// Cancels events of one submission (see [`EventSender::canceller`]). A cancel travels
/// behind the events sent before it, so it always finds them accepted.
#[derive(Debug, Clone)]
pub struct Canceller {
    id: SubmissionId,
    submissions: mpsc::UnboundedSender<SubmissionMsg>,
}

impl Canceller {
    /// Cancels event `seq` without waiting for the outcome (its record tells it).
    ///
    /// # Errors
    /// [`PoolGone`] if the pool has stopped.
    pub fn cancel(&self, seq: u64) -> Result<(), PoolGone> {
        let msg = SubmissionMsg::Cancel {
            id: self.id,
            seq,
            reply: None,
        };
        self.submissions.send(msg).map_err(|_| PoolGone)
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let _ = self.submissions.send(SubmissionMsg::End { id: self.id });
    }
}

/// The receiving half of a submission. Its batches hold their records' credits until they
/// are dropped: drop each one only after its records are written out.
#[derive(Debug)]
pub struct Records {
    pub(crate) rx: mpsc::UnboundedReceiver<Outbox>,
    pub(crate) credits: Arc<Credits>,
}

impl Records {
    fn batch(&self, out: Outbox) -> RecordBatch {
        RecordBatch::new(out.records, out.bytes, out.chunks, self.credits.clone())
    }

    /// The next batch of records; `None` once every record of an ended submission has come
    /// (or the pool stopped).
    pub async fn recv(&mut self) -> Option<RecordBatch> {
        let out = self.rx.recv().await?;
        Some(self.batch(out))
    }

    /// Blocking [`Records::recv`], for plain threads.
    pub fn blocking_recv(&mut self) -> Option<RecordBatch> {
        let out = self.rx.blocking_recv()?;
        Some(self.batch(out))
    }

    /// A batch if one is ready now.
    pub fn try_recv(&mut self) -> Option<RecordBatch> {
        let out = self.rx.try_recv().ok()?;
        Some(self.batch(out))
    }
}

impl Drop for Records {
    /// Nobody reads records any more: a sender waiting for credits must not wait forever.
    fn drop(&mut self) {
        self.credits.close();
    }
}

/// What a submission may take now without waiting for credits (see [`EventSender::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Events; at least 1.
    pub events: usize,
    /// Bytes of the byte budget (each event is charged its payload and a small overhead).
    pub bytes: usize,
}

/// Where a submission's events come from.
pub trait Source: Send {
    /// The next batch of events, numbered by the source (`seq`); `Ok(None)` at the end. An
    /// error also ends the source; the events already sent still get their records.
    ///
    /// It is called once the submission has `room` for at least one event. A source that
    /// reads ahead anyway (a pipe, a socket) may ignore it; one that takes events on lease
    /// (a broker consumer, whose messages' ack wait starts when it fetches) fetches no more
    /// than that, and a batch larger than `room` waits for credits.
    fn next_batch(
        &mut self,
        room: Room,
    ) -> impl Future<Output = io::Result<Option<Vec<Input>>>> + Send;

    /// After its end, resolves if whoever the records are for went away (a client that
    /// closed its connection early): delivery then stops. By default it never resolves.
    fn gone(&mut self) -> impl Future<Output = io::Error> + Send {
        std::future::pending()
    }
}

/// Where a submission's records go.
pub trait Sink: Send {
    /// Delivers a batch of records. Their credits go back to the submission when `batch` is
    /// dropped: a sink that must hold records (until an acknowledgement) keeps the batch.
    fn deliver(&mut self, batch: RecordBatch) -> impl Future<Output = io::Result<()>> + Send;

    /// The sink has caught up with the pool: nothing more is ready now. A buffering sink
    /// flushes here, so records never wait for the next batch.
    fn caught_up(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Every record has been delivered (flush, acknowledge the end).
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// What a finished [`Submission::run`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Events taken from the source and sent to the pool.
    pub events: u64,
    /// Records delivered to the sink.
    pub records: u64,
    /// The source reached its end (rather than the pool stopping first).
    pub source_ended: bool,
}

/// Why a submission did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    /// The source failed; every event it had yielded still got its record.
    #[error("reading events failed")]
    Source(#[source] io::Error, Delivered),
    /// The sink failed; records were lost with it.
    #[error("delivering records failed")]
    Sink(#[source] io::Error),
}

impl Submission {
    /// Runs this submission to its end: events from `source` until it ends, records to `sink`
    /// until every event sent has one (or the pool stopped). Reading and delivering run
    /// concurrently, so neither waits on the other; credits bound what is in between.
    ///
    /// # Errors
    /// [`SubmissionError::Sink`] at once when the sink fails; [`SubmissionError::Source`]
    /// once every record of the events sent before the source failed is delivered.
    pub async fn run<S: Source, K: Sink>(
        self,
        mut source: S,
        mut sink: K,
    ) -> Result<Delivered, SubmissionError> {
        let Submission {
            sender,
            mut records,
        } = self;
        let feed = async move {
            let mut events = 0u64;
            let end = loop {
                let Ok(room) = sender.room().await else {
                    break Ok(false); // the pool stopped
                };
                match source.next_batch(room).await {
                    Ok(Some(batch)) => {
                        let n = batch.len() as u64;
                        if sender.send(batch).await.is_err() {
                            break Ok(false); // the pool stopped
                        }
                        events += n;
                    }
                    Ok(None) => break Ok(true),
                    Err(e) => break Err(e),
                }
            };
            // Dropping the sender ends the submission: its channel closes after the last record.
            drop(sender);
            (events, end, source)
        };
        let deliver = async move {
            let mut n = 0u64;
            while let Some(batch) = records.recv().await {
                n += batch.len() as u64;
                sink.deliver(batch).await?;
                while let Some(more) = records.try_recv() {
                    n += more.len() as u64;
                    sink.deliver(more).await?;
                }
                sink.caught_up().await?;
            }
            sink.finish().await?;
            Ok::<u64, io::Error>(n)
        };
        let mut feed = pin!(feed);
        let mut deliver = pin!(deliver);
        let finish = |records: u64, events: u64, end: io::Result<bool>| {
            let mut done = Delivered {
                events,
                records,
                source_ended: false,
            };
            match end {
                Ok(ended) => {
                    done.source_ended = ended;
                    Ok(done)
                }
                Err(e) => Err(SubmissionError::Source(e, done)),
            }
        };
        // Until the source ends, delivery ending means the pool stopped first (the source may
        // then be blocked for good: it is not waited for).
        let (events, end, mut source) = tokio::select! {
            fed = &mut feed => fed,
            r = &mut deliver => {
                let records = r.map_err(SubmissionError::Sink)?;
                return finish(records, records, Ok(false));
            }
        };
        tokio::select! {
            r = &mut deliver => {
                let records = r.map_err(SubmissionError::Sink)?;
                finish(records, events, end)
            }
            e = source.gone() => Err(SubmissionError::Sink(e)),
        }
    }
}

/// Runs `pool` (the future from [`crate::pool`]) with one submission (`options`) from `source`
/// to `sink`, and stops it once the source has ended and every record is delivered:
/// gracefully, or at once if the sink failed. The pool runs on the calling thread (in a current-thread runtime:
/// workers' parent-death signal is tied to the thread that spawns them); the submission on a
/// thread of its own, so a sink may block.
///
/// # Errors
/// The pool's error if it could not work, else the submission's.
pub fn run_one<S, K>(
    handle: PoolHandle,
    pool: impl Future<Output = Result<Summary, PoolError>>,
    options: SubmitOptions,
    source: S,
    sink: K,
) -> Result<(Summary, Result<Delivered, SubmissionError>), PoolError>
where
    S: Source + 'static,
    K: Sink + 'static,
{
    let submission = handle.submit_with(options);
    let stopper = handle.clone();
    drop(handle);
    const DRIVER: &str = "herd-submission";
    let driver = std::thread::Builder::new()
        .name(DRIVER.into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SubmissionError::Sink(io::Error::other(e)))?;
            let result = runtime.block_on(submission.run(source, sink));
            // Every record is out (or can no longer be delivered): the pool's job is done.
            stopper.command(Command::Stop {
                fast: matches!(result, Err(SubmissionError::Sink(_))),
            });
            result
        })
        .map_err(|source| PoolError::Thread {
            name: DRIVER,
            source,
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PoolError::Internal(format!("cannot start the runtime: {e}")))?;
    let summary = runtime.block_on(pool);
    drop(runtime);
    let delivered = driver
        .join()
        .map_err(|_| PoolError::Internal("the submission thread panicked".into()))?;
    Ok((summary?, delivered))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_failed_thread_spawn_is_reported_as_such_not_as_the_worker_socket() {
        let e = PoolError::Thread {
            name: "herd-submission",
            source: io::Error::from(io::ErrorKind::WouldBlock),
        };
        assert_eq!(e.to_string(), "cannot start the herd-submission thread");
        assert!(std::error::Error::source(&e).is_some());
    }

    fn sender(events: usize, bytes: usize) -> (EventSender, Arc<Credits>) {
        let (tx, _rx) = mpsc::unbounded_channel();
        let credits = Credits::new(events, bytes);
        let s = EventSender {
            id: 0,
            submissions: tx,
            credits: credits.clone(),
            max_batch: events,
        };
        (s, credits)
    }

    #[tokio::test]
    async fn room_is_what_credits_allow_now_and_waits_for_one() {
        let (s, credits) = sender(8, 10_000);
        assert_eq!(
            s.room().await.unwrap(),
            Room {
                events: 8,
                bytes: 10_000
            }
        );
        credits.events.try_acquire_many(8).unwrap().forget();
        let mut waiting = tokio_test_poll(&s);
        assert!(waiting.as_mut().now_or_never().is_none(), "no room: waits");
        credits.release(3, 0);
        assert_eq!(waiting.await.unwrap().events, 3);
        credits.close();
        assert!(s.room().await.is_err(), "a closed submission has no room");
    }

    /// The `room` future, boxed so it can be polled once and then awaited.
    fn tokio_test_poll(
        s: &EventSender,
    ) -> std::pin::Pin<Box<impl Future<Output = Result<Room, PoolGone>> + '_>> {
        Box::pin(s.room())
    }
}
