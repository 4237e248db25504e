//! Records to the results stream, each with its entry's acknowledgement in the same script
//! (see `scripts::APPLY`): a final record is written and its entry acknowledged at once, or
//! neither. The batch of records is kept until then, so the submission's credits come back
//! only for settled entries.
//!
//! `deliver` turns records into operations and hands them to the settler task, which applies
//! what is waiting in script calls (a few on their way at once, an entry's operations in
//! order: its chunk lines before its final record), and tries again until the server takes
//! them: after a fault, an operation that
//! did apply the first time is refused the second (its entry is no longer pending), so a
//! final record is never written twice.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_supervisor::policy::{retry_delay, Jitter};
use herd_supervisor::{ErrorKind, PoolHandle, Record, RecordBatch, RecordOutcome, Sink};
use rustc_hash::FxHashSet;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::id::StreamId;
use crate::scripts::Op;
use crate::Ctx;

/// Operations applied in one script call at most.
pub(crate) const MAX_OPS: usize = 1024;
/// Settle calls on their way at once: the server runs them one after the other, but their
/// round trips overlap, and so does this daemon's own work.
const IN_FLIGHT: usize = 4;

/// What the sink needs to know of the group.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Deliveries of an entry at most (`None`: unlimited).
    pub max_deliver: Option<u64>,
    /// herd's `--retry-backoff`: the base of a retry's delay.
    pub backoff: Duration,
}

/// One operation of a batch: on entry `seq`, with its value (a record line, or nothing).
pub(crate) struct Item {
    pub seq: u64,
    pub op: Op,
    pub value: Bytes,
}

struct Work {
    /// Held until its entries are settled: its credits come back only then.
    _batch: RecordBatch,
    items: Vec<Item>,
}

pub(crate) struct RedisRecords {
    ctx: Arc<Ctx>,
    policy: Policy,
    jitter: Jitter,
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Work>>,
    settler: Option<JoinHandle<()>>,
    pool: PoolHandle,
}

impl RedisRecords {
    pub fn new(ctx: Arc<Ctx>, policy: Policy, seed: u64, pool: PoolHandle) -> Self {
        // Bounded by the credits anyway (a batch holds at least one); this only keeps the
        // channel from being the unbounded kind.
        let (tx, rx) = mpsc::channel(4096);
        let settler = tokio::spawn(settler(rx, ctx.clone()));
        Self {
            ctx,
            policy,
            jitter: Jitter::new(seed),
            buf: Vec::with_capacity(256),
            tx: Some(tx),
            settler: Some(settler),
            pool,
        }
    }
}

/// How a final record settles its entry, `deliveries` being its delivery count.
fn settle_as(r: &Record, deliveries: u64, policy: &Policy, jitter: &mut Jitter) -> Op {
    let last = policy.max_deliver.is_some_and(|max| deliveries >= max);
    match &r.outcome {
        RecordOutcome::Ok { .. } | RecordOutcome::Chunk { .. } => Op::Record,
        // Never run: another daemon may claim it at once.
        RecordOutcome::Err {
            kind: ErrorKind::Shutdown,
            ..
        } => Op::Release(Duration::ZERO),
        RecordOutcome::Err {
            retryable: true, ..
        } if !last => {
            let n = u32::try_from(deliveries).unwrap_or(u32::MAX);
            Op::Release(retry_delay(policy.backoff, n, jitter.next_f64()))
        }
        // Fatal, retries used up, cancelled, expired, rejected: the error record, acknowledged.
        RecordOutcome::Err { .. } => Op::Record,
    }
}

/// A record as written: its JSON line without the newline, with the entry id (`"id"`, a
/// string) in place of the daemon's own number (`"seq"`), which means nothing elsewhere.
pub(crate) fn render(r: &Record, id: StreamId, buf: &mut Vec<u8>) -> Bytes {
    buf.clear();
    r.write_json(buf);
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    const SEQ: &[u8] = b"{\"seq\":";
    let Some(rest) = buf.strip_prefix(SEQ) else {
        return Bytes::copy_from_slice(buf); // not herd's record shape: as it is
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut out = Vec::with_capacity(buf.len() + 48);
    out.extend_from_slice(b"{\"id\":\"");
    // Entry ids are `<ms>-<seq>`: nothing in them needs escaping.
    id.write(&mut out);
    out.push(b'"');
    out.extend_from_slice(&rest[digits..]);
    Bytes::from(out)
}

impl Sink for RedisRecords {
    async fn deliver(&mut self, batch: RecordBatch) -> io::Result<()> {
        let mut items = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            let Some((id, deliveries)) = self.ctx.shared.entry(r.seq) else {
                tracing::error!(seq = r.seq, "a record for an entry not held (bug)");
                continue;
            };
            let op = if matches!(r.outcome, RecordOutcome::Chunk { .. }) {
                Op::Chunk
            } else {
                let op = settle_as(r, deliveries, &self.policy, &mut self.jitter);
                // A retry's delay is moot once the pool stops: another daemon takes it now.
                match op {
                    Op::Release(_) if self.pool.is_stopping() => Op::Release(Duration::ZERO),
                    op => op,
                }
            };
            let value = match op {
                Op::Record | Op::Chunk => render(r, id, &mut self.buf),
                Op::Release(_) | Op::Touch => Bytes::new(),
            };
            items.push(Item {
                seq: r.seq,
                op,
                value,
            });
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("sink finished"))?;
        tx.send(Work {
            _batch: batch,
            items,
        })
        .await
        .map_err(|_| io::Error::other("the settler task is gone"))
    }

    async fn finish(&mut self) -> io::Result<()> {
        // The settler applies what it has, then ends.
        self.tx = None;
        if let Some(settler) = self.settler.take() {
            settler.await.map_err(io::Error::other)?;
        }
        Ok(())
    }
}

/// Applies the operations of the batches waiting in script calls of up to `MAX_OPS`, with up to
/// `IN_FLIGHT` calls on their way at once, until the server takes them; a batch's credits go
/// back once all of its entries are settled. An entry's operations are applied in order (its
/// chunk lines before its final record), whatever is retried: a batch with an operation on an
/// entry that a call on its way also has waits for that call to end.
async fn settler(mut rx: mpsc::Receiver<Work>, ctx: Arc<Ctx>) {
    let mut running: JoinSet<Vec<u64>> = JoinSet::new();
    let mut busy: FxHashSet<u64> = FxHashSet::default();
    let mut next: Option<Work> = None;
    let mut open = true;
    loop {
        if next.is_none() && open {
            tokio::select! {
                w = rx.recv(), if running.len() < IN_FLIGHT => match w {
                    Some(w) => next = Some(w),
                    None => open = false,
                },
                Some(done) = running.join_next() => ended(done, &mut busy),
            }
            continue;
        }
        let Some(first) = next.take() else {
            // The sink is finished: what is on its way ends, then so does this.
            while let Some(done) = running.join_next().await {
                ended(done, &mut busy);
            }
            return;
        };
        let clashes =
            |w: &Work, busy: &FxHashSet<u64>| w.items.iter().any(|i| busy.contains(&i.seq));
        if running.len() >= IN_FLIGHT || clashes(&first, &busy) {
            if let Some(done) = running.join_next().await {
                ended(done, &mut busy);
            }
            next = Some(first);
            continue;
        }
        let mut n = first.items.len();
        let mut works = vec![first];
        while n < MAX_OPS {
            match rx.try_recv() {
                Ok(w) if clashes(&w, &busy) => {
                    next = Some(w);
                    break;
                }
                Ok(w) => {
                    n += w.items.len();
                    works.push(w);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let seqs: Vec<u64> = works
            .iter()
            .flat_map(|w| w.items.iter().map(|i| i.seq))
            .collect();
        busy.extend(seqs.iter().copied());
        let ctx = ctx.clone();
        running.spawn(async move {
            let items: Vec<&Item> = works.iter().flat_map(|w| w.items.iter()).collect();
            ctx.apply_until_done(&items).await;
            drop(items);
            drop(works);
            seqs
        });
    }
}

/// A settle call has ended: its entries may be in the next one.
fn ended(done: Result<Vec<u64>, tokio::task::JoinError>, busy: &mut FxHashSet<u64>) {
    match done {
        Ok(seqs) => {
            for s in seqs {
                busy.remove(&s);
            }
        }
        // Only a panic (a bug): its entries stay busy, and are claimed after the claim time.
        Err(e) => tracing::error!(error = %e, "a settle task failed"),
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
    fn each_record_settles_its_entry() {
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
        assert_eq!(settle_as(&ok, 1, &policy, &mut j), Op::Record);
        // Retryable: handed back with herd's backoff (doubling per delivery, jittered),
        // until the last delivery, which writes the error record.
        let Op::Release(d1) = settle_as(&err(ErrorKind::Failed, true), 1, &policy, &mut j) else {
            panic!("a retryable error before the last delivery is handed back");
        };
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        let Op::Release(d2) = settle_as(&err(ErrorKind::Failed, true), 2, &policy, &mut j) else {
            panic!("still handed back on the second delivery");
        };
        assert!(d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200));
        assert_eq!(
            settle_as(&err(ErrorKind::Failed, true), 3, &policy, &mut j),
            Op::Record
        );
        for kind in [
            ErrorKind::Failed,
            ErrorKind::Crashed,
            ErrorKind::Timeout,
            ErrorKind::Protocol,
            ErrorKind::Rejected,
            ErrorKind::Cancelled,
            ErrorKind::Expired,
            ErrorKind::Deadline,
        ] {
            assert_eq!(settle_as(&err(kind, false), 1, &policy, &mut j), Op::Record);
        }
        // Never ran: handed back at once, whatever the delivery.
        assert_eq!(
            settle_as(&err(ErrorKind::Shutdown, false), 3, &policy, &mut j),
            Op::Release(Duration::ZERO)
        );
        let unlimited = Policy {
            max_deliver: None,
            ..policy
        };
        assert!(matches!(
            settle_as(&err(ErrorKind::Failed, true), 50, &unlimited, &mut j),
            Op::Release(_)
        ));
    }

    #[test]
    fn a_written_record_carries_the_entry_id_in_place_of_seq() {
        let mut buf = Vec::new();
        let mut r = err(ErrorKind::Crashed, false);
        r.seq = 12345;
        let body = render(&r, StreamId::new(1_700_000_000_000, 7), &mut buf);
        assert_eq!(
            &body[..],
            br#"{"id":"1700000000000-7","ok":false,"error":{"kind":"crashed","message":""},"attempts":1}"#
        );
    }
}
