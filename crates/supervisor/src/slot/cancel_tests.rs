//! A cancel against every way a worker's hold on a task can end: the slot marks the task and
//! the pool stops the worker (`Cause::Cancelled`); whatever comes first, the kill, a `Done`
//! that crossed it, a crash or a stop, the task leaves the slot exactly once, marked, and the
//! pool records it `cancelled` (`pool/settle.rs` checks the mark on every path out).

#![allow(clippy::unwrap_used)]

use super::tests::{busy, limits, names, ready, PID};
use super::*;

/// The ids and cancel marks of the work a `Settle` effect hands back.
fn settled(effects: &Effects) -> Vec<(u64, bool)> {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Settle { inflight, .. } => Some(
                inflight
                    .iter()
                    .map(|r| (r.job.id, r.job.cancelled))
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_cancelled_running_task_stops_its_worker_and_the_rest_go_back() {
    let t0 = Instant::now();
    let mut s = busy(t0, 3);
    assert_eq!(s.holds(0, 1), Some(1));
    assert_eq!(s.cancel(1), Some(true), "alive: the pool must stop it");
    assert_eq!(names(&s.kill(Cause::Cancelled(1))), [format!("kill {PID}")]);
    assert_eq!(s.state().name(), "dying");
    assert!(s.on_exit(Exit::Signal(9), t0, true, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        names(&e),
        [
            "settle cancelled [1, 2, 3]",
            "replaced cancelled ok",
            "spawn"
        ]
    );
    assert_eq!(settled(&e), [(1, true), (2, false), (3, false)]);
    assert_eq!(s.restarts, 0, "a cancel is no fault of the worker");
}

#[test]
fn a_done_that_crossed_the_cancel_leaves_marked_and_the_worker_is_replaced_at_once() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    assert_eq!(s.cancel(1), Some(true));
    s.kill(Cause::Cancelled(1));
    // Its result was on the way: it settles the task, marked, so its record is `cancelled`.
    let Done::Task { running, .. } = s.on_done(1, t0, &limits()) else {
        panic!("the result of a task it held");
    };
    assert!(running.job.cancelled);
    assert!(s.on_exit(Exit::Signal(9), t0, true, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, true, &limits());
    // Nothing left to settle, and not an idle death: no backoff.
    assert_eq!(names(&e), ["replaced cancelled ok", "spawn"]);
    assert_eq!(s.state().name(), "stopped");
}

#[test]
fn a_cancel_after_a_crash_marks_the_task_and_kills_nothing() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert!(s.on_exit(Exit::Signal(11), t0, true, &limits()).is_empty());
    assert_eq!(s.cancel(2), Some(false), "already dying: nothing to stop");
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(names(&e)[0], "settle crashed [1, 2]");
    assert_eq!(settled(&e), [(1, false), (2, true)]);
}

#[test]
fn a_crash_after_the_cancel_settles_as_the_cancel() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert_eq!(s.cancel(1), Some(true));
    s.kill(Cause::Cancelled(1));
    // It died of something else before the kill landed: the kill decided how it is recorded.
    assert!(s.on_exit(Exit::Signal(6), t0, true, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(names(&e)[0], "settle cancelled [1, 2]");
    assert_eq!(settled(&e), [(1, true), (2, false)]);
}

#[test]
fn a_cancel_during_a_stop_marks_the_task_and_a_second_kill_changes_nothing() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert_eq!(names(&s.kill(Cause::Stop)), [format!("kill {PID}")]);
    assert_eq!(s.cancel(2), Some(false));
    // A cancel that raced the other way: the slot is already dying, no second kill.
    assert!(s.kill(Cause::Cancelled(2)).is_empty());
    assert!(s.on_exit(Exit::Signal(9), t0, false, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, false, &limits());
    assert_eq!(names(&e), ["settle shutdown [1, 2]"]);
    assert_eq!(settled(&e), [(1, false), (2, true)]);
}

#[test]
fn a_stop_after_the_cancel_keeps_the_cancel() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert_eq!(s.cancel(1), Some(true));
    s.kill(Cause::Cancelled(1));
    assert!(s.kill(Cause::Stop).is_empty(), "already dying");
    assert!(s.on_exit(Exit::Signal(9), t0, false, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, false, &limits());
    assert_eq!(names(&e), ["settle cancelled [1, 2]"]);
}

#[test]
fn a_task_not_held_is_not_found() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    assert_eq!(s.holds(0, 1), None);
    assert_eq!(s.cancel(1), None);
    let mut s = busy(t0, 1);
    assert_eq!(s.holds(0, 2), None, "another seq");
    assert_eq!(s.holds(1, 1), None, "another submission");
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    assert_eq!(s.cancel(1), None, "answered: gone from the slot");
}
