//! Batches in a slot: which in-flight tasks are running together, as answers, withdrawals and
//! deaths take tasks out, with plain `Instant`s and no processes.

#![allow(clippy::unwrap_used)]

use super::tests::{limits, ready};
use super::*;

fn job(id: u64) -> Job {
    Job {
        attempts: 1,
        ..Job::fresh(id, 0, id, 0)
    }
}

fn inflight(s: &Slot<()>) -> &VecDeque<Running> {
    match s.state() {
        State::Ready { inflight, .. } => inflight,
        State::Dying { inflight, .. } => inflight,
        other => panic!("no in-flight list in {}", other.name()),
    }
}

/// A ready worker that takes batches of 8, holding batch [1, 2, 3], then batch [4, 5].
fn two_batches(t0: Instant) -> Slot<()> {
    let mut s = ready(t0);
    s.on_batching(8);
    assert_eq!(s.batch_max(), 8);
    assert!(s.is_idle());
    s.assign_batch(vec![job(1), job(2), job(3)], t0).unwrap();
    s.assign_batch(vec![job(4), job(5)], t0).unwrap();
    s
}

#[test]
fn the_head_batch_is_running_and_answers_move_it_along() {
    let t0 = Instant::now();
    let mut s = two_batches(t0);
    assert_eq!(running_len(inflight(&s)), 3);
    assert_eq!(s.room(10, None), 5);
    assert_eq!(s.room(10, Some(6)), 1, "--max-tasks bounds the room");
    for (answered, running) in [(1, 2), (2, 1), (3, 2), (4, 1)] {
        assert!(matches!(
            s.on_done(answered, t0, &limits()),
            Done::Task { .. }
        ));
        assert_eq!(running_len(inflight(&s)), running, "after {answered}");
    }
}

/// A withdrawal skips the running batch; the first task of a batch not started yet leaves its
/// mark to the next.
#[test]
fn withdrawals_skip_the_running_batch() {
    let t0 = Instant::now();
    let mut s = two_batches(t0);
    assert_eq!(s.withdraw_behind_head(t0), vec![4, 5]);
    assert!(matches!(
        s.on_withdrawn(4, t0, &limits()),
        Answer::Returned { .. }
    ));
    // 5 is now the first of its batch: not running with [1, 2, 3].
    assert_eq!(running_len(inflight(&s)), 3);
    let ids: Vec<(u64, bool)> = inflight(&s).iter().map(|r| (r.job.id, r.batched)).collect();
    assert_eq!(ids, [(1, false), (2, true), (3, true), (5, false)]);
}

/// A worker killed in a batch hands back everything, the running batch at the front with its
/// marks (the pool decides from them who is blamed: see `crate::blame`).
#[test]
fn a_kill_settles_the_batch_with_its_marks() {
    let t0 = Instant::now();
    let mut s = two_batches(t0);
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    s.kill(Cause::Timeout);
    assert_eq!(running_len(inflight(&s)), 2, "2 and 3 still running");
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let effects = s.on_exit(Exit::Signal(9), t0, true, &limits());
    let settled = effects
        .iter()
        .find_map(|e| match e {
            Effect::Settle { inflight, kind, .. } => Some((running_len(inflight), *kind)),
            _ => None,
        })
        .unwrap();
    assert_eq!(settled, (2, ErrorKind::Timeout));
}

/// A new process starts with no batches until it says so.
#[test]
fn a_new_process_takes_no_batches_until_it_says_so() {
    let t0 = Instant::now();
    let mut s = two_batches(t0);
    s.kill(Cause::Stop);
    let _ = s.on_exit(Exit::Signal(9), t0, true, &limits());
    s.next_id();
    s.spawned(1, "tok".into(), t0);
    assert_eq!(s.batch_max(), 0);
}

/// A worker that crashes holding several unanswered tasks, in a batch or not, before completing
/// any, does not count toward the circuit breaker (none is blamed: they all run solo next);
/// one that crashes holding a task alone does.
#[test]
fn only_a_death_with_a_task_alone_counts_toward_the_breaker() {
    let t0 = Instant::now();
    let early = |effects: &Effects| {
        effects
            .iter()
            .any(|e| matches!(e, Effect::EarlyDeath { .. }))
    };
    let mut s = two_batches(t0);
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let effects = s.on_exit(Exit::Signal(6), t0, true, &limits());
    assert!(!early(&effects), "a death in a batch of 3 is not counted");

    let mut s = super::tests::busy(t0, 2);
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let effects = s.on_exit(Exit::Signal(11), t0, true, &limits());
    assert!(
        !early(&effects),
        "a death holding two single tasks is ambiguous (a reply may have been held back)"
    );

    let mut s = ready(t0);
    s.on_batching(8);
    s.assign(job(9), t0).unwrap();
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let effects = s.on_exit(Exit::Signal(6), t0, true, &limits());
    assert!(early(&effects), "a death running a task alone counts");
}

/// A worker running a solo task (see `crate::blame`) takes nothing else until it is answered,
/// whatever its window: then a death is the solo task's own.
#[test]
fn a_worker_running_a_solo_task_has_no_room() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    s.on_batching(8);
    let mut solo = job(1);
    solo.batch_cap = crate::blame::SOLO;
    s.assign(solo, t0).unwrap();
    assert!(!s.is_idle());
    assert!(!s.has_room(100, None));
    assert_eq!(s.room(100, None), 0);
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    assert!(s.is_idle());
    assert!(
        s.has_room(100, None),
        "answered: the worker takes work again"
    );
    // A capped batch-mate that is not solo leaves room.
    let mut two = job(2);
    two.batch_cap = 2;
    s.assign(two, t0).unwrap();
    assert!(s.has_room(100, None));
}

/// A solo task goes only to a worker holding nothing: the first such from the round-robin's
/// place on, or none while every worker is busy.
#[test]
fn a_solo_task_goes_only_to_an_idle_worker() {
    let t0 = Instant::now();
    let busy = || super::tests::busy(t0, 1);
    let window = |_| 8;
    let slots = vec![busy(), ready(t0), busy(), ready(t0)];
    assert_eq!(idle_from(&slots, 0, window, None), Some(1));
    assert_eq!(idle_from(&slots, 2, window, None), Some(3));
    assert_eq!(idle_from(&slots, 3, window, None), Some(3));
    let slots = vec![busy(), busy()];
    assert_eq!(
        idle_from(&slots, 0, window, None),
        None,
        "none idle: it waits"
    );
    // An idle worker with no task left under --max-tasks takes none.
    let mut spent = super::tests::busy(t0, 1);
    assert!(matches!(spent.on_done(1, t0, &limits()), Done::Task { .. }));
    assert!(spent.is_idle());
    assert_eq!(idle_from(&[spent], 0, window, Some(1)), None);
    let no_slots: [Slot<()>; 0] = [];
    assert_eq!(idle_from(&no_slots, 0, window, None), None);
}
