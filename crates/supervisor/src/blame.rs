//! Who is blamed when a worker dies holding work: the rule, free of I/O (the pool settles the
//! work in `pool/settle.rs`, the slot decides the circuit breaker's count in `slot.rs`).
//!
//! # Why the head is not always the culprit
//! A worker runs its tasks one at a time in the order sent, so the oldest unanswered task looks
//! like the one running. But both worker SDKs hold a finished task's `Done` for up to about
//! 1 ms while more tasks are buffered behind a quick handler (one write for many replies). A
//! worker that then crashes in a later task (a segfault, `os._exit`, SIGKILL) loses those held
//! replies: the head herd sees unanswered may have finished long ago, and the task that killed
//! it may be any of the others. Blaming the head would charge an innocent event on every crash
//! of a poison one behind it, until the innocent ends `crashed` and the poison escapes.
//!
//! # The rule
//! A death is [ambiguous](ambiguous) when the worker crashed, exited or broke the protocol
//! holding two or more unanswered tasks, or overran `--timeout` in a batch of several (which
//! event hangs is unknown). Then nobody is blamed: every unanswered task goes back to the front
//! of the queue uncharged and [solo](SOLO). A solo task runs alone: it is sent only to a worker
//! with nothing in flight, and that worker gets nothing else until it is answered. So a death
//! holding a solo task is unambiguous, and charged as a single head's always was (`--retries`,
//! quarantine, the circuit breaker). A poison event costs one ambiguous death plus its
//! `--retries` + 1 solo ones; every other event it took down is answered.
//!
//! A timeout of a single head is not ambiguous: the SDKs' flusher writes a held reply within
//! 1 ms even while the next handler runs, so a head unanswered for `--timeout` did not finish.
//! Neither is a kill of herd's own choosing (a stop, a cancel, a `--deadline`, a submitter that
//! did not read its chunks): it says which task it was for.

use std::collections::VecDeque;

use crate::job::Running;
use crate::record::ErrorKind;

/// The batch cap of a solo job (see `crate::job::Job::batch_cap`): alone on its worker.
pub(crate) const SOLO: u8 = 1;

/// Whether a worker that ended as `kind` holding `inflight` (unanswered, in the order sent)
/// leaves its culprit unknown: then none of them is charged, and all run solo.
pub(crate) fn ambiguous(kind: ErrorKind, inflight: &VecDeque<Running>) -> bool {
    match kind {
        ErrorKind::Crashed | ErrorKind::Protocol => inflight.len() > 1,
        ErrorKind::Timeout => crate::slot::running_len(inflight) > 1,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Job;
    use tokio::time::Instant;

    fn inflight(batched: &[bool]) -> VecDeque<Running> {
        let now = Instant::now();
        batched
            .iter()
            .enumerate()
            .map(|(k, &batched)| Running {
                job: Job::fresh(k as u64, 0, k as u64, 0),
                started: now,
                batched,
            })
            .collect()
    }

    #[test]
    fn a_crash_holding_several_tasks_is_ambiguous_batched_or_not() {
        for kind in [ErrorKind::Crashed, ErrorKind::Protocol] {
            assert!(!ambiguous(kind, &inflight(&[false])), "{kind:?} alone");
            assert!(ambiguous(kind, &inflight(&[false, false])), "{kind:?}");
            assert!(ambiguous(kind, &inflight(&[false, true])), "{kind:?}");
        }
    }

    #[test]
    fn only_a_batch_timeout_is_ambiguous() {
        let t = ErrorKind::Timeout;
        assert!(!ambiguous(t, &inflight(&[false])));
        assert!(
            !ambiguous(t, &inflight(&[false, false, false])),
            "a single head timed out: it did not finish (its reply would have been flushed)"
        );
        assert!(ambiguous(t, &inflight(&[false, true, false])));
    }

    #[test]
    fn kills_of_herds_own_choosing_are_not_ambiguous() {
        for kind in [
            ErrorKind::Shutdown,
            ErrorKind::Cancelled,
            ErrorKind::Deadline,
            ErrorKind::Rejected,
        ] {
            assert!(
                !ambiguous(kind, &inflight(&[false, true, false])),
                "{kind:?}"
            );
        }
    }
}
