//! The exactly-one-record bookkeeping. Every accepted event leaves the pool as exactly one
//! record, and every record leaves through [`Pool::emit`]. A job is always in exactly one
//! place: its submission's queue, the retries waiting out their delay, or a worker's in-flight
//! list; each path out of those places ends here, in a record or back in a queue. The
//! submissions count what is still owed, and the pool may not exit before that count is zero
//! (see `stop.rs`).
//!
//! # Suspects and bystanders
//! A worker runs its tasks one at a time in the order sent, so when it stalls, or dies holding
//! one task, the task at the head of its in-flight queue is the suspect: that one is charged an
//! attempt against `retries`. The others it held were only waiting; they are re-queued without
//! charge. A crash holding several tasks blames none of them (`crate::blame`): they all go
//! back uncharged, to run alone.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::{Phase, Pool};
use crate::job::{Job, Running, SubmissionId};
use crate::msg::TaskOutcome;
use crate::policy;
use crate::record::{ErrorKind, Record, RecordOutcome};

/// Jobs waiting out a retry delay.
#[derive(Debug, Default)]
pub(super) struct Retries {
    waiting: Vec<(Instant, Job)>,
}

impl Retries {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The priority of each waiting job (for the per-priority queue depth).
    pub fn priorities(&self) -> impl Iterator<Item = crate::priority::Priority> + '_ {
        self.waiting.iter().map(|(_, j)| j.priority)
    }

    /// When the next one is due: its delay is over, or its `--deadline` passes.
    pub fn deadline(&self) -> Option<Instant> {
        let at = |(t, j): &(Instant, Job)| j.deadline().map_or(*t, |d| d.min(*t));
        self.waiting.iter().map(at).min()
    }

    /// The jobs whose `--deadline` passed while they waited out their delay.
    pub fn past_deadline(&mut self, now: Instant) -> Vec<Job> {
        if !self
            .waiting
            .iter()
            .any(|(_, j)| j.deadline().is_some_and(|d| d <= now))
        {
            return Vec::new();
        }
        let (past, rest) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, j)| j.deadline().is_some_and(|d| d <= now));
        self.waiting = rest;
        past.into_iter().map(|(_, j)| j).collect()
    }

    /// The jobs due at `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Job> {
        if self.waiting.iter().all(|(t, _)| *t > now) {
            return Vec::new();
        }
        let (due, later) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.waiting = later;
        due.into_iter().map(|(_, j)| j).collect()
    }

    pub fn take_all(&mut self) -> Vec<Job> {
        self.waiting.drain(..).map(|(_, j)| j).collect()
    }

    /// Takes out the waiting job of event `seq` of `submission` (a cancel).
    pub fn remove(&mut self, submission: SubmissionId, seq: u64) -> Option<Job> {
        let pos = self
            .waiting
            .iter()
            .position(|(_, j)| j.submission == submission && j.seq == seq)?;
        Some(self.waiting.swap_remove(pos).1)
    }
}

impl Pool {
    /// The one exit of an event from the pool. `input_len` is its payload's length (what its
    /// submitter was charged).
    pub(super) fn emit(&mut self, submission: SubmissionId, record: Record, input_len: usize) {
        let kind = record.error_kind().map(|k| k.as_str());
        match kind {
            None => self.summary.ok += 1,
            Some(kind) => *self.summary.errors.entry(kind).or_default() += 1,
        }
        // The wake-up's uptime: no clock arithmetic per record.
        self.stats.history.record(self.uptime_secs, kind);
        self.submissions.emit(submission, record, input_len);
    }

    /// An error record for `job`, which carries its payload (for `--failed` files).
    pub(super) fn fail(&mut self, job: Job, kind: ErrorKind, message: String) {
        self.fail_as(job, kind, message, false);
    }

    /// [`Pool::fail`], saying whether the failure is retryable (for a source that retries).
    fn fail_as(&mut self, job: Job, kind: ErrorKind, message: String, retryable: bool) {
        self.key_settled(&job);
        let len = job.payload.len();
        let record = Record {
            seq: job.seq,
            attempts: job.attempts,
            chunks: job.chunks,
            outcome: RecordOutcome::Err {
                kind,
                message,
                retryable,
            },
            input: Some(job.payload),
        };
        self.emit(job.submission, record, len);
    }

    /// Puts a job back at the front of its submission's queue, unless the pool is stopping
    /// (then nothing will run it: it gets its `shutdown` record now).
    pub(super) fn requeue(&mut self, job: Job) {
        if job.cancelled {
            return self.fail_cancelled(job);
        }
        if self.phase == Phase::Stopping {
            let message = "herd stopped before the event could run".to_string();
            return self.fail(job, ErrorKind::Shutdown, message);
        }
        if !self.submissions.contains(job.submission) {
            // Its submitter is gone (and was uncounted): nobody wants it; its key place frees.
            return self.key_settled(&job);
        }
        self.submissions.push_front(job);
    }

    /// Retries a job after `delay` (a retryable failure), unless the pool is stopping.
    fn retry_later(&mut self, job: Job, delay: Duration) {
        if job.cancelled {
            return self.fail_cancelled(job);
        }
        if self.phase == Phase::Stopping {
            let message = "herd stopped before the event could be retried".to_string();
            return self.fail(job, ErrorKind::Shutdown, message);
        }
        self.retries.waiting.push((self.now + delay, job));
    }

    /// Retries whose delay is over go back to the front of their queues.
    pub(super) fn retries_due(&mut self) {
        self.retries_past_deadline();
        for job in self.retries.due(self.now).into_iter().rev() {
            self.requeue(job);
        }
    }

    /// Records every queued or delayed job as `shutdown`.
    pub(super) fn fail_waiting(&mut self, message: &str) {
        let mut jobs = self.submissions.take_all();
        jobs.extend(self.retries.take_all());
        jobs.extend(self.keys.take_where(self.now, |_| true));
        jobs.append(&mut self.released);
        for job in jobs {
            self.fail(job, ErrorKind::Shutdown, message.to_string());
        }
    }

    /// A worker answered a task: a record, or a retry after a retryable error.
    pub(super) fn on_result(
        &mut self,
        worker: usize,
        pid: u32,
        running: Running,
        outcome: TaskOutcome,
    ) {
        let micros = self
            .now
            .saturating_duration_since(running.started)
            .as_micros() as u64;
        self.task_ewma_us = if self.task_samples == 0 {
            micros as f64
        } else {
            policy::ewma(self.task_ewma_us, micros as f64)
        };
        self.task_samples = self.task_samples.saturating_add(1);
        self.stats.durations.observe(micros);
        let job = running.job;
        if job.cancelled {
            // Its result crossed the cancel: the cancel was answered first, so it stands.
            return self.fail_cancelled(job);
        }
        match outcome {
            TaskOutcome::Ok(output) => {
                self.key_settled(&job);
                let len = job.payload.len();
                let record = Record {
                    seq: job.seq,
                    attempts: job.attempts,
                    chunks: job.chunks,
                    outcome: RecordOutcome::Ok {
                        output,
                        worker,
                        pid,
                        micros,
                    },
                    input: None,
                };
                self.emit(job.submission, record, len);
            }
            TaskOutcome::Cancelled => {
                // Not asked for (a cancelled job left above): the worker broke the protocol.
                let fault = format!(
                    "it answered task {} cancelled, which herd did not cancel",
                    job.id
                );
                tracing::warn!(worker, pid, "protocol violation: {fault}; killing worker");
                self.fail(
                    job,
                    ErrorKind::Protocol,
                    format!("worker {worker} (pid {pid}) broke the protocol: {fault}"),
                );
                self.kill(worker, crate::slot::Cause::Protocol(fault));
            }
            TaskOutcome::RetryAfter(after) => {
                let (message, delay) = *after;
                self.on_failure(job, true, message, Some(delay))
            }
            TaskOutcome::Failed { retryable, message } => {
                self.on_failure(job, retryable, message, None)
            }
        }
    }

    /// A failure the worker reported: a retry (after `asked`, if the worker said when, within
    /// the pool's backoff limits), or a `failed` record.
    fn on_failure(
        &mut self,
        mut job: Job,
        retryable: bool,
        message: String,
        asked: Option<Duration>,
    ) {
        if retryable && self.submissions.source_retries(job.submission) {
            // Its source retries (a broker's delayed redelivery), not the pool.
            return self.fail_as(job, ErrorKind::Failed, message, true);
        }
        job.charged += 1;
        if retryable && job.charged <= self.cfg.retries {
            self.stats.retries += 1;
            let delay = match asked {
                Some(asked) => policy::worker_retry_delay(asked, self.cfg.retry_backoff),
                None => {
                    policy::retry_delay(self.cfg.retry_backoff, job.charged, self.jitter.next_f64())
                }
            };
            tracing::debug!(
                seq = job.seq,
                attempt = job.attempts,
                delay_ms = delay.as_millis() as u64,
                "retryable failure; will retry"
            );
            self.retry_later(job, delay);
        } else {
            self.fail(job, ErrorKind::Failed, message);
        }
    }

    /// Work a dead worker held: the suspect is charged, bystanders go back uncharged. For a
    /// stop (`Shutdown`) everything is recorded at once.
    ///
    /// The running tasks are the head and the rest of its batch, if it came in one. When the
    /// death is ambiguous (see `crate::blame`: a crash holding several tasks, whose replies it
    /// may have held back, or a batch that overran `--timeout`), none can be blamed: every
    /// unanswered task goes back uncharged and solo, to run alone and be charged alone.
    pub(super) fn settle_inflight(
        &mut self,
        inflight: VecDeque<Running>,
        kind: ErrorKind,
        message: &str,
    ) {
        let running = crate::slot::running_len(&inflight);
        let ambiguous = crate::blame::ambiguous(kind, &inflight);
        let mut back = Vec::with_capacity(inflight.len());
        for (k, running_job) in inflight.into_iter().enumerate() {
            let started = k < running;
            let mut job = running_job.job;
            if job.cancelled {
                // Whatever ended its worker (the cancel's kill, or a crash, timeout or stop
                // that came first), the cancel was answered: that is its record.
                self.fail_cancelled(job);
                continue;
            }
            if kind == ErrorKind::Shutdown {
                self.fail(job, kind, message.to_string());
                continue;
            }
            // Stopped because its submitter did not read its chunks (`Cause::Held`): the
            // stream is not retried (it would stall again); anything else it held is innocent.
            let held = kind == ErrorKind::Rejected;
            // Stopped to cancel another task: everything else it held is innocent, and goes
            // back uncharged (the running ones keep their attempt: they did start).
            if kind == ErrorKind::Cancelled {
                if !started && job.chunks == 0 {
                    job.attempts = job.attempts.saturating_sub(1);
                }
                back.push(job);
                continue;
            }
            // Killed because its `--deadline` passed: no attempt is left to it (a batch-mate
            // whose own deadline has not passed goes back, uncharged).
            if started
                && kind == ErrorKind::Deadline
                && (k == 0 || job.deadline().is_some_and(|d| d <= self.now))
            {
                self.fail(job, kind, message.to_string());
                continue;
            }
            if started && held && job.chunks > 0 {
                self.fail(job, kind, message.to_string());
                continue;
            }
            if ambiguous {
                // Any of them may have killed it: none is blamed, each runs alone next. Which
                // ran is unknown, so that dispatch is no attempt of any (a poison event's
                // record keeps `attempts` = 1 + `--retries`), unless it streamed (below).
                job.batch_cap = crate::blame::SOLO;
                if job.chunks == 0 {
                    job.attempts = job.attempts.saturating_sub(1);
                }
            } else if k == 0 && !held && kind != ErrorKind::Deadline {
                job.charged += 1;
                if job.charged > self.cfg.retries {
                    self.fail(job, kind, message.to_string());
                    continue;
                }
                self.stats.retries += 1;
                tracing::debug!(
                    seq = job.seq,
                    attempt = job.attempts,
                    "re-dispatching after {kind}"
                );
            } else if job.chunks == 0 && !(started && k > 0) {
                // It was only queued in the worker, never started: that dispatch was no attempt.
                // (The rest of a running batch did start with its head.)
                job.attempts = job.attempts.saturating_sub(1);
            }
            // (One that streamed chunks did start, whatever the order: its chunk lines carry
            // this attempt, so the next one must have a number of its own.)
            back.push(job);
        }
        for job in back.into_iter().rev() {
            self.requeue(job);
        }
    }

    /// The final check before the pool may exit: nothing may be owed a record. Anything still
    /// waiting is recorded as `shutdown` (no worker is left to run it); an event that is owed
    /// a record but is nowhere would be a bug, and is reported as one rather than passed over.
    pub(super) fn account_for_everything(&mut self) {
        self.fail_waiting("herd stopped before the event could run");
        let owed = self.submissions.unanswered();
        if owed > 0 {
            // Returned from `run`, which its caller reports.
            let err = crate::PoolError::Internal(format!("{owed} accepted events have no record"));
            self.fatal.get_or_insert(err);
        }
    }
}
