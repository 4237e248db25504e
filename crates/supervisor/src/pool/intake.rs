//! Intake: submissions opening and ending, and their events accepted into the queue (or
//! answered at once when they cannot run).

use bytes::Bytes;

use super::{Phase, Pool};
use crate::job::{Extra, Job, SubmissionId};
use crate::priority;
use crate::record::{ErrorKind, Record, RecordOutcome};
use crate::{Input, KeySource, SubmissionMsg};

impl Pool {
    pub(super) fn on_submission(&mut self, msg: SubmissionMsg) {
        match msg {
            SubmissionMsg::Open {
                id,
                sink,
                credits,
                options,
            } => {
                tracing::debug!(
                    submission = id,
                    priority = options.priority,
                    line_priority = options.line_priority,
                    "submission opened"
                );
                if let Some(b) = options.batch {
                    self.batch_ceiling = self.batch_ceiling.max(b.max);
                }
                self.submissions.open(id, sink, credits, options);
            }
            SubmissionMsg::Events { id, batch } => self.accept(id, batch),
            SubmissionMsg::End { id } => self.submissions.end(id),
            SubmissionMsg::Cancel { id, seq, reply } => {
                let outcome = self.cancel_event(id, seq);
                tracing::debug!(submission = id, seq, ?outcome, "cancel");
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
        }
    }

    /// Accepts a batch of events: each is queued, or recorded at once if it cannot run (too
    /// large for a frame, refused by its source, or the pool is stopping).
    fn accept(&mut self, id: SubmissionId, batch: Vec<Input>) {
        let Some(options) = self.submissions.options(id) else {
            return;
        };
        self.submissions.accepted(id, batch.len());
        let limits = crate::limits::Limits::merged(
            crate::limits::Limits {
                max_age: options.max_age,
                deadline: options.deadline,
            },
            crate::limits::Limits {
                max_age: self.cfg.max_age,
                deadline: self.cfg.deadline,
            },
        );
        let times = limits.stamp(self.now);
        // Keys are looked for only while a per-key limit applies, or batches are formed by key
        // (a prefix is still stripped).
        let by_key = options
            .batch
            .or(self.cfg.batch)
            .is_some_and(|b| b.enabled() && b.by_key);
        let keyed = self.keys.limits().any() || by_key;
        self.time_limited |= limits.any();
        let running = self.phase == Phase::Running;
        let limit = self.cfg.max_line();
        let mut refused = Vec::new();
        // A batch's jobs gather in a buffer kept from batch to batch: a fresh one (80 KiB for
        // a batch of 1,024) cost malloc and free more than the queueing itself.
        let mut jobs = std::mem::take(&mut self.intake_jobs);
        jobs.reserve(batch.len());
        for input in batch {
            match input {
                Input::Event {
                    seq,
                    mut payload,
                    prior_attempts,
                } if running && payload.len() <= limit => {
                    let mut priority = options.priority;
                    if options.line_priority {
                        match priority::split_line_priority(&payload) {
                            Ok((p, start)) => {
                                priority = p;
                                payload = payload.slice(start..);
                            }
                            Err(why) => {
                                let why = why.to_string();
                                refused.push((seq, ErrorKind::Rejected, why, Some(payload)));
                                continue;
                            }
                        }
                    }
                    let key = match &options.key {
                        KeySource::None => None,
                        KeySource::Line => match crate::keys::split_line_key(&payload) {
                            Ok((key, start)) => {
                                let key = key.filter(|_| keyed).map(|k| self.keys.hash(k));
                                payload = payload.slice(start..);
                                key
                            }
                            Err(why) => {
                                let why = why.to_string();
                                refused.push((seq, ErrorKind::Rejected, why, Some(payload)));
                                continue;
                            }
                        },
                        KeySource::Pointer(_) if !keyed => None,
                        KeySource::Pointer(pointer) => {
                            match crate::keys::pointer_key(&payload, pointer) {
                                Ok(key) => key.map(|k| self.keys.hash(&k)),
                                Err(why) => {
                                    let why = why.to_string();
                                    refused.push((seq, ErrorKind::Rejected, why, Some(payload)));
                                    continue;
                                }
                            }
                        }
                    };
                    let extra = match (times, key) {
                        (None, None) => None,
                        (t, key) => Some(Box::new(Extra {
                            key,
                            ..t.unwrap_or_default()
                        })),
                    };
                    jobs.push(Job {
                        id: self.next_job,
                        submission: id,
                        seq,
                        payload,
                        attempts: prior_attempts,
                        charged: 0,
                        chunks: 0,
                        priority,
                        cancelled: false,
                        dispatched: false,
                        batch_cap: 0,
                        extra,
                    });
                    self.next_job += 1;
                }
                Input::Event { seq, payload, .. } if running => {
                    let why = format!(
                        "event of {} bytes exceeds the frame limit of {} bytes",
                        payload.len(),
                        self.cfg.max_frame
                    );
                    refused.push((seq, ErrorKind::Rejected, why, Some(payload)));
                }
                Input::Event { seq, payload, .. } => {
                    let why = "herd is stopping and takes no new events".to_string();
                    refused.push((seq, ErrorKind::Shutdown, why, Some(payload)));
                }
                Input::Rejected { seq, reason } => {
                    refused.push((seq, ErrorKind::Rejected, reason, None));
                }
            }
        }
        self.submissions.extend(id, jobs.drain(..));
        self.intake_jobs = jobs;
        for (seq, kind, message, input) in refused {
            let len = input.as_ref().map_or(0, Bytes::len);
            let record = Record {
                seq,
                attempts: 0,
                chunks: 0,
                outcome: RecordOutcome::Err {
                    kind,
                    message,
                    retryable: false,
                },
                input,
            };
            self.emit(id, record, len);
        }
    }
}
