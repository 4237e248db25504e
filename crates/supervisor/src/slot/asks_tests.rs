//! Protocol 3's withdrawals and cancels against every way a worker's hold on a task can end: an
//! answer, a `Done` that crossed the request, a crash, a kill, a stop, a retirement. In each
//! race the task leaves the slot exactly once: by its `Done`, by `Withdrawn`, or in the
//! `Settle` of the worker's end, never twice and never not at all.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::tests::{busy, limits, names, ready, PID};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The ids a `Settle` effect hands back.
fn settled(effects: &Effects) -> Vec<u64> {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Settle { inflight, .. } => Some(inflight.iter().map(|r| r.job.id).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

fn returned(answer: Answer) -> u64 {
    match answer {
        Answer::Returned { running, .. } => running.job.id,
        other => panic!("want Returned, got {other:?}"),
    }
}

fn fault(answer: Answer) -> String {
    match answer {
        Answer::Fault(f) => f,
        other => panic!("want Fault, got {other:?}"),
    }
}

/// A v3 slot holding 1..=n whose head stalled: asks for 2..=n are open.
fn stalled(t0: Instant, n: u64) -> Slot<()> {
    let mut s = busy(t0, n);
    assert_eq!(
        s.withdraw_behind_head(t0),
        (2..=n).collect::<Vec<_>>(),
        "everything behind the head"
    );
    s
}

/// A ready slot whose worker said protocol 2.
fn ready_v2(t0: Instant) -> Slot<()> {
    let mut s = Slot::new(3);
    s.next_id();
    s.spawned(PID, "tok".into(), t0);
    assert!(s.greeted((), 2, t0, true, &limits()).is_empty());
    s
}

#[test]
fn a_head_stalls_only_on_a_v3_worker_with_tasks_behind_it() {
    let t0 = Instant::now();
    let after = ms(1000);
    assert_eq!(busy(t0, 1).stall_at(after), None, "nothing behind it");
    assert_eq!(busy(t0, 2).stall_at(after), Some(t0 + after));
    let mut v2 = ready_v2(t0);
    v2.assign(Job::fresh(1, 0, 1, 0), t0).unwrap();
    v2.assign(Job::fresh(2, 0, 2, 0), t0).unwrap();
    assert_eq!(v2.stall_at(after), None, "a v2 worker cannot be asked");
    assert!(v2.withdraw_behind_head(t0).is_empty());
    assert!(!v2.ask_cancel(1, t0));
    assert!(v2.has_room(4, None));
}

#[test]
fn a_stalled_worker_gets_no_new_task_until_its_head_is_answered() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 3);
    assert!(!s.has_room(8, None));
    assert_eq!(s.stall_at(ms(1)), None, "stalled once");
    assert!(s.withdraw_behind_head(t0).is_empty(), "asked once");
    assert_eq!(returned(s.on_withdrawn(2, t0, &limits())), 2);
    assert!(!s.has_room(8, None), "the head still runs");
    assert!(matches!(
        s.on_done(1, t0 + ms(5), &limits()),
        Done::Task { .. }
    ));
    assert!(s.has_room(8, None), "moving again");
    assert!(matches!(s.on_kept(3), Answer::Kept));
    assert_eq!(s.inflight_len(), 1, "3 stays: the worker started it");
}

#[test]
fn answers_to_no_withdraw_are_faults() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 2);
    let f = fault(s.on_withdrawn(9, t0, &limits()));
    assert!(f.contains("Withdrawn for task 9"), "{f}");
    assert!(
        fault(s.on_kept(1)).contains("Kept for task 1"),
        "the head was never asked"
    );
    assert_eq!(returned(s.on_withdrawn(2, t0, &limits())), 2);
    // A second answer, either way.
    fault(s.on_withdrawn(2, t0, &limits()));
    fault(s.on_kept(2));
    // The task left once: the worker still holds only its head.
    assert_eq!(s.inflight_len(), 1);
}

#[test]
fn a_done_that_crossed_the_withdraw_is_answered_kept_and_a_withdrawn_after_it_is_a_fault() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 3);
    // The worker finished 1 and 2 before it read the Withdraw of 2.
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    assert!(matches!(s.on_done(2, t0, &limits()), Done::Task { .. }));
    assert!(matches!(s.on_kept(2), Answer::Kept));
    // It claims to give back 3 after all, which it already answered: a fault.
    assert!(matches!(s.on_done(3, t0, &limits()), Done::Task { .. }));
    let f = fault(s.on_withdrawn(3, t0, &limits()));
    assert!(f.contains("already answered"), "{f}");
}

#[test]
fn a_task_given_back_at_the_head_starts_the_clock_of_the_next() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 3);
    assert!(matches!(
        s.on_done(1, t0 + ms(10), &limits()),
        Done::Task { .. }
    ));
    // 2 is herd's head now, but the worker had not started it when the Withdraw came.
    assert_eq!(returned(s.on_withdrawn(2, t0 + ms(20), &limits())), 2);
    assert_eq!(
        s.running_since(),
        Some(t0 + ms(20)),
        "3 started when 2 left"
    );
}

#[test]
fn a_crash_before_the_answer_settles_the_task_with_the_rest_once() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 3);
    assert!(s.on_exit(Exit::Signal(11), t0, true, &limits()).is_empty());
    // The worker's last frames still arrive: it had given back 3 before it died.
    assert_eq!(returned(s.on_withdrawn(3, t0, &limits())), 3);
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(names(&e)[0], "settle crashed [1, 2]");
    assert_eq!(settled(&e), [1, 2], "3 left once, by its answer");
}

#[test]
fn a_stop_before_the_answer_settles_the_task_with_the_rest() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 3);
    assert_eq!(names(&s.kill(Cause::Stop)), [format!("kill {PID}")]);
    assert_eq!(returned(s.on_withdrawn(2, t0, &limits())), 2);
    assert!(s.on_exit(Exit::Signal(9), t0, false, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, false, &limits());
    assert_eq!(names(&e), ["settle shutdown [1, 3]"]);
}

#[test]
fn a_retiring_worker_that_gives_back_its_last_task_gets_the_termination_frame() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 2);
    assert!(s.retire(Replacement::Reload, t0, &limits()).is_empty());
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    let Answer::Returned { effects, .. } = s.on_withdrawn(2, t0, &limits()) else {
        panic!("given back");
    };
    assert_eq!(names(&effects), ["shutdown"]);
    assert_eq!(s.state().name(), "draining");
}

#[test]
fn a_kept_answer_after_the_termination_frame_is_expected() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 2);
    assert!(s.retire(Replacement::Reload, t0, &limits()).is_empty());
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    let Done::Task { effects, .. } = s.on_done(2, t0, &limits()) else {
        panic!("a result");
    };
    assert_eq!(names(&effects), ["shutdown"]);
    // The worker read the Withdraw before the Shutdown, and answered it.
    assert!(matches!(s.on_kept(2), Answer::Kept));
}

#[test]
fn answers_from_a_worker_that_broke_the_protocol_are_ignored() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 2);
    s.kill(Cause::Protocol("garbage".into()));
    assert!(matches!(s.on_withdrawn(2, t0, &limits()), Answer::Ignored));
    assert!(s.on_exit(Exit::Signal(9), t0, true, &limits()).is_empty());
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        settled(&e),
        [1, 2],
        "nothing it sent after the fault counts"
    );
}

#[test]
fn a_new_process_starts_with_no_open_asks() {
    let t0 = Instant::now();
    let mut s = stalled(t0, 2);
    s.on_link_lost(None, t0, true, &limits());
    s.on_exit(Exit::Code(1), t0, true, &limits());
    s.next_id();
    s.spawned(PID + 1, "t2".into(), t0);
    s.greeted((), 3, t0, true, &limits());
    fault(s.on_kept(2));
}

#[test]
fn a_cancel_asked_of_the_worker_is_answered_by_its_done() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert_eq!(s.cancel(1), Some(true));
    assert!(s.ask_cancel(1, t0 + ms(100)));
    let grace = t0 + ms(2500);
    assert_eq!(
        s.deadline(&limits()),
        Some(t0 + ms(2000)),
        "the timeout first"
    );
    let Done::Task { running, .. } = s.on_done(1, t0 + ms(150), &limits()) else {
        panic!("its answer");
    };
    assert!(running.job.cancelled, "its record is `cancelled`");
    assert_eq!(
        s.cancel_due(&limits()),
        None,
        "answered: no grace left to run"
    );
    assert_eq!(s.deadline(&limits()), Some(t0 + ms(2150)), "2's timeout");
    assert!(
        s.on_deadline(grace, true, &limits()).len() == 1,
        "2's timeout, not the cancel"
    );
}

#[test]
fn a_cancel_not_answered_within_the_grace_kills_the_worker() {
    let t0 = Instant::now();
    let mut lim = limits();
    lim.timeout = None;
    let mut s = busy(t0, 2);
    assert_eq!(s.cancel(2), Some(true));
    assert!(s.ask_cancel(2, t0));
    assert!(
        s.ask_cancel(2, t0 + ms(50)),
        "asked again: the first grace stands"
    );
    let grace = t0 + lim.exit_timeout;
    assert_eq!(s.deadline(&lim), Some(grace));
    assert!(s.on_deadline(grace - ms(1), true, &lim).is_empty());
    assert_eq!(
        names(&s.on_deadline(grace, true, &lim)),
        [format!("kill {PID}")]
    );
    assert!(s.on_exit(Exit::Signal(9), t0, true, &lim).is_empty());
    let e = s.on_link_lost(None, t0, true, &lim);
    assert_eq!(
        names(&e),
        ["settle cancelled [1, 2]", "replaced cancelled ok", "spawn"]
    );
}

#[test]
fn a_cancel_asked_of_the_worker_then_a_crash_or_a_stop_still_settles_it_marked() {
    let t0 = Instant::now();
    for stop in [false, true] {
        let mut s = busy(t0, 2);
        assert_eq!(s.cancel(2), Some(true));
        assert!(s.ask_cancel(2, t0));
        if stop {
            s.kill(Cause::Stop);
            assert_eq!(s.deadline(&limits()), None, "dying: no grace to run");
        }
        assert!(s.on_exit(Exit::Signal(11), t0, !stop, &limits()).is_empty());
        let e = s.on_link_lost(None, t0, !stop, &limits());
        let Some(Effect::Settle { inflight, .. }) = e.first() else {
            panic!("{e:?}");
        };
        let marks: Vec<(u64, bool)> = inflight
            .iter()
            .map(|r| (r.job.id, r.job.cancelled))
            .collect();
        assert_eq!(marks, [(1, false), (2, true)]);
    }
}

#[test]
fn a_cancel_cannot_be_asked_of_a_worker_that_is_no_longer_writable() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    s.on_write_failed(t0, &limits());
    assert_eq!(s.cancel(1), Some(true), "alive: it must be stopped");
    assert!(!s.ask_cancel(1, t0), "so by a kill");
    let s2 = ready(t0);
    assert!(s2.speaks_v3());
}

#[test]
fn a_cancel_that_crossed_a_withdrawal_ends_with_the_task_given_back() {
    let t0 = Instant::now();
    let mut lim = limits();
    lim.timeout = None;
    let mut s = stalled(t0, 2);
    assert_eq!(s.cancel(2), Some(true));
    assert!(s.ask_cancel(2, t0));
    let Answer::Returned { running, .. } = s.on_withdrawn(2, t0, &lim) else {
        panic!("given back");
    };
    assert!(running.job.cancelled, "the pool records it `cancelled`");
    assert_eq!(
        s.cancel_due(&lim),
        None,
        "no grace left to kill the worker over it"
    );
    assert!(s.on_deadline(t0 + lim.exit_timeout, true, &lim).is_empty());
}
