//! Every transition of a slot, with plain `Instant`s and no processes. The link is `()`: a
//! slot never touches it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::time::Instant;

use super::*;

pub(super) const PID: u32 = 4242;

pub(super) fn limits() -> SlotLimits {
    SlotLimits {
        start_timeout: Duration::from_secs(10),
        timeout: Some(Duration::from_secs(2)),
        exit_timeout: Duration::from_secs(5),
        max_tasks: None,
    }
}

fn job(id: u64) -> Job {
    Job {
        attempts: 1,
        ..Job::fresh(id, 0, id, 0)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn starting(t0: Instant) -> Slot<()> {
    let mut s = Slot::new(3);
    s.next_id();
    s.spawned(PID, "tok".into(), t0);
    s
}

pub(super) fn ready(t0: Instant) -> Slot<()> {
    let mut s = starting(t0);
    assert!(s
        .greeted((), herd_proto::PROTOCOL_VERSION, t0, true, &limits())
        .is_empty());
    s
}

/// A ready slot holding tasks 1..=n, dispatched at `t0`.
pub(super) fn busy(t0: Instant, n: u64) -> Slot<()> {
    let mut s = ready(t0);
    for id in 1..=n {
        s.assign(job(id), t0).unwrap();
    }
    s
}

pub(super) fn names(effects: &Effects) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Spawn => "spawn".to_string(),
            Effect::Shutdown => "shutdown".to_string(),
            Effect::Kill(pid) => format!("kill {pid}"),
            Effect::Settle { inflight, kind, .. } => {
                let ids: Vec<u64> = inflight.iter().map(|r| r.job.id).collect();
                format!("settle {kind} {ids:?}")
            }
            Effect::StartFailed => "start-failed".to_string(),
            Effect::EarlyDeath { .. } => "early-death".to_string(),
            Effect::Replaced { reason, .. } => {
                format!(
                    "replaced {reason} {}",
                    if reason.is_unexpected() { "!" } else { "ok" }
                )
            }
        })
        .collect()
}

fn settle_message(effects: &Effects) -> &str {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Settle { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn starts_greets_and_takes_work() {
    let t0 = Instant::now();
    let mut s: Slot<()> = Slot::new(3);
    assert_eq!(s.state().name(), "stopped");
    assert_eq!(s.pid(), None);
    let id = s.next_id();
    assert_eq!(id, WorkerId { slot: 3, gen: 1 });
    s.spawned(PID, "tok".into(), t0);
    assert_eq!(s.state().name(), "starting");
    assert_eq!(s.token(), Some("tok"));
    assert_eq!(s.pid(), Some(PID));
    assert!(!s.has_room(2, None), "not before its handshake");
    assert!(s.assign(job(1), t0).is_err());
    assert!(s.link_mut().is_none());

    assert!(s
        .greeted((), herd_proto::PROTOCOL_VERSION, t0, true, &limits())
        .is_empty());
    assert_eq!(s.state().name(), "idle");
    assert!(s.is_ready());
    assert_eq!(s.token(), None);
    assert!(s.link_mut().is_some());
    assert!(s.has_room(2, None));
    s.assign(job(1), t0).unwrap();
    s.assign(job(2), t0).unwrap();
    assert_eq!(s.state().name(), "busy");
    assert!(!s.has_room(2, None), "the window is full");
    assert_eq!(s.inflight_len(), 2);
}

#[test]
fn a_greeting_when_no_longer_wanted_gets_the_termination_frame() {
    let t0 = Instant::now();
    let mut s = starting(t0);
    let e = s.greeted((), herd_proto::PROTOCOL_VERSION, t0, false, &limits());
    assert_eq!(names(&e), ["shutdown"]);
    assert_eq!(s.state().name(), "draining");
    // A greeting in any other state changes nothing.
    assert!(s
        .greeted((), herd_proto::PROTOCOL_VERSION, t0, true, &limits())
        .is_empty());
    assert_eq!(s.state().name(), "draining");
}

#[test]
fn results_settle_tasks_in_order_and_move_the_clock_of_the_next() {
    let t0 = Instant::now();
    let mut s = busy(t0, 3);
    let t1 = t0 + ms(10);
    match s.on_done(1, t1, &limits()) {
        Done::Task {
            running,
            pid,
            effects,
        } => {
            assert_eq!((running.job.id, pid), (1, PID));
            assert!(effects.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // The next task started when the first finished: its deadline moves with it.
    assert_eq!(s.deadline(&limits()), Some(t1 + ms(2000)));
    // Out of order (a task behind the head) is fine and leaves the head's clock alone.
    assert!(matches!(
        s.on_done(3, t1 + ms(5), &limits()),
        Done::Task { .. }
    ));
    assert_eq!(s.deadline(&limits()), Some(t1 + ms(2000)));
    assert!(matches!(s.on_done(99, t1, &limits()), Done::NotHeld));
    assert!(
        matches!(s.on_done(1, t1, &limits()), Done::NotHeld),
        "answered twice"
    );
    assert_eq!(s.total_tasks, 2);
    assert!(matches!(
        Slot::<()>::new(0).on_done(1, t1, &limits()),
        Done::Ignored
    ));
}

#[test]
fn max_tasks_caps_what_is_sent_and_retires_the_worker_after_the_last() {
    let t0 = Instant::now();
    let lim = SlotLimits {
        max_tasks: Some(2),
        ..limits()
    };
    let mut s = ready(t0);
    assert!(s.has_room(8, Some(2)));
    s.assign(job(1), t0).unwrap();
    s.assign(job(2), t0).unwrap();
    assert!(!s.has_room(8, Some(2)), "never more than max_tasks sent");
    let Done::Task { effects, .. } = s.on_done(1, t0, &lim) else {
        panic!()
    };
    assert!(effects.is_empty());
    let Done::Task { effects, .. } = s.on_done(2, t0, &lim) else {
        panic!()
    };
    assert_eq!(
        names(&effects),
        ["shutdown"],
        "the last task answered: termination frame"
    );
    assert_eq!(s.state().name(), "draining");
    // Its exit is a graceful replacement.
    let e = s.on_exit(Exit::Code(0), t0, true, &lim);
    assert!(e.is_empty(), "waits for the link");
    let e = s.on_link_lost(None, t0, true, &lim);
    assert_eq!(names(&e), ["replaced max-tasks ok", "spawn"]);
    assert!(s.is_stopped());
}

#[test]
fn retiring_a_busy_worker_waits_for_its_last_result() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert!(s.retire(Replacement::Reload, t0, &limits()).is_empty());
    assert_eq!(s.state().name(), "draining");
    assert!(!s.has_room(8, None), "out of rotation");
    // Retiring again (a recycle during a reload) changes nothing.
    assert!(s.retire(Replacement::MaxRss, t0, &limits()).is_empty());
    let Done::Task { effects, .. } = s.on_done(1, t0, &limits()) else {
        panic!()
    };
    assert!(effects.is_empty());
    let Done::Task { effects, .. } = s.on_done(2, t0, &limits()) else {
        panic!()
    };
    assert_eq!(names(&effects), ["shutdown"]);
    assert_eq!(
        s.deadline(&limits()),
        Some(t0 + ms(5000)),
        "the exit timeout"
    );
    // A result for a task it no longer holds, after the termination frame.
    assert!(matches!(s.on_done(2, t0, &limits()), Done::NotHeld));
    let e = s.on_exit(Exit::Code(0), t0, true, &limits());
    assert!(e.is_empty());
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(names(&e), ["replaced reload ok", "spawn"]);
}

#[test]
fn an_idle_worker_retires_at_once() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    assert_eq!(
        names(&s.retire(Replacement::MaxRss, t0, &limits())),
        ["shutdown"]
    );
    // The link closes first this time, then the process exits: settled at the exit.
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let e = s.on_exit(Exit::Code(0), t0, true, &limits());
    assert_eq!(names(&e), ["replaced max-rss ok", "spawn"]);
    // Retiring a slot that is not ready does nothing.
    let mut s = starting(t0);
    assert!(s.retire(Replacement::Reload, t0, &limits()).is_empty());
    assert_eq!(s.state().name(), "starting");
}

#[test]
fn a_graceful_exit_of_a_slot_no_longer_wanted_leaves_it_empty() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    assert_eq!(
        names(&s.retire(Replacement::ScaleDown, t0, &limits())),
        ["shutdown"]
    );
    assert!(s.on_link_lost(None, t0, false, &limits()).is_empty());
    assert!(s.on_exit(Exit::Code(0), t0, false, &limits()).is_empty());
    assert!(s.is_stopped());
    assert_eq!(s.restarts, 0);
}

#[test]
fn a_graceful_stop() {
    let t0 = Instant::now();
    let lim = limits();
    let mut s = ready(t0);
    assert_eq!(names(&s.stop(t0, &lim)), ["shutdown"]);
    assert!(s.stop(t0, &lim).is_empty(), "once");
    // A starting slot waits for its handshake (then gets the frame: see above); one in
    // backoff just stays empty.
    let mut s = starting(t0);
    assert!(s.stop(t0, &lim).is_empty());
    assert_eq!(s.state().name(), "starting");
    let mut s = backoff(t0);
    assert!(s.stop(t0, &lim).is_empty());
    assert!(s.is_stopped());
    // A worker retiring with nothing left gets the frame now.
    let mut s = busy(t0, 1);
    s.retire(Replacement::Reload, t0, &lim);
    s.on_done(1, t0, &lim);
    assert_eq!(s.state().name(), "draining");
}

fn backoff(t0: Instant) -> Slot<()> {
    let mut s = starting(t0);
    s.on_exit(Exit::Code(1), t0, true, &limits());
    assert_eq!(s.state().name(), "backoff");
    s
}

#[test]
fn a_crash_while_working_charges_the_head_and_restarts_at_once() {
    let t0 = Instant::now();
    let mut s = busy(t0, 3);
    // Exit first, then the link's last frames, then its end: the race the slot waits out.
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert!(e.is_empty());
    assert_eq!(s.state().name(), "dying");
    assert_eq!(s.deadline(&limits()), Some(t0 + LINK_DRAIN));
    assert!(
        matches!(s.on_done(1, t0, &limits()), Done::Task { .. }),
        "results sent before dying count"
    );
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle crashed [2, 3]", "replaced crash !", "spawn"]
    );
    assert_eq!(
        settle_message(&e),
        format!("worker 3 (pid {PID}) killed by SIGKILL")
    );
    assert_eq!(s.restarts, 1);
}

#[test]
fn an_exit_with_its_link_already_closed_is_settled_at_once() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    // EOF first (a Python `sys.exit(3)` closes its socket, then shuts the interpreter down):
    // no kill, which would record herd's SIGKILL instead of the real exit (issue 19).
    let e = s.on_link_lost(None, t0, true, &limits());
    assert!(e.is_empty(), "{:?}", names(&e));
    assert_eq!(s.state().name(), "dying");
    assert_eq!(
        s.deadline(&limits()),
        Some(t0 + ms(5000)),
        "the exit timeout"
    );
    assert!(s.on_deadline(t0 + ms(4999), true, &limits()).is_empty());
    let e = s.on_exit(Exit::Code(3), t0 + ms(4000), true, &limits());
    assert_eq!(
        names(&e),
        [
            "settle crashed [1]",
            "replaced crash !",
            "early-death",
            "spawn"
        ],
        "it completed no task: counted for the breaker"
    );
    assert_eq!(
        settle_message(&e),
        format!("worker 3 (pid {PID}) exited with code 3")
    );
}

#[test]
fn a_worker_that_closes_its_link_but_does_not_exit_is_killed_at_the_exit_timeout() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let e = s.on_deadline(t0 + ms(5000), true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle crashed [1, 2]", "replaced crash !", "spawn"],
        "two unanswered: an ambiguous death (see `crate::blame`), not counted for the breaker"
    );
    // The record says herd killed it, and why, not "killed by SIGKILL".
    assert_eq!(
        settle_message(&e),
        format!(
            "worker 3 (pid {PID}) closed its connection to herd but did not exit within 5s, \
             so herd killed it"
        )
    );
    // A write that fails (the dispatcher's view of the same end) waits the same way, and the
    // results the worker sent before still count: the link has not ended yet.
    let mut s = busy(t0, 2);
    s.on_write_failed(t0, &limits());
    assert_eq!(s.deadline(&limits()), Some(t0 + ms(5000)));
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    let e = s.on_exit(Exit::Signal(11), t0, true, &limits());
    assert!(e.is_empty(), "waits for the link");
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle crashed [2]", "replaced crash !", "spawn"]
    );
    assert_eq!(
        settle_message(&e),
        format!("worker 3 (pid {PID}) killed by SIGSEGV")
    );
    // A fast stop meanwhile kills it; its work is recorded as shutdown.
    let mut s = busy(t0, 1);
    s.on_link_lost(None, t0, false, &limits());
    assert_eq!(names(&s.kill(Cause::Stop)), [format!("kill {PID}")]);
    let e = s.on_exit(Exit::Signal(9), t0, false, &limits());
    assert_eq!(names(&e), ["settle shutdown [1]"]);
}

#[test]
fn an_exit_whose_link_never_ends_is_settled_at_the_link_drain_deadline() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    assert!(s.on_exit(Exit::Code(1), t0, true, &limits()).is_empty());
    assert!(s.on_deadline(t0 + ms(10), true, &limits()).is_empty());
    let e = s.on_deadline(t0 + LINK_DRAIN, true, &limits());
    assert_eq!(
        names(&e),
        [
            "settle crashed [1]",
            "replaced crash !",
            "early-death",
            "spawn"
        ]
    );
}

#[test]
fn idle_deaths_back_off_after_the_first() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    let e = s.on_exit(Exit::Code(0), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["replaced crash !", "early-death", "spawn"],
        "first: at once"
    );
    s.next_id();
    s.spawned(PID + 1, "t2".into(), t0);
    s.greeted((), herd_proto::PROTOCOL_VERSION, t0, true, &limits());
    s.on_link_lost(None, t0, true, &limits());
    let e = s.on_exit(Exit::Code(0), t0, true, &limits());
    assert_eq!(names(&e), ["replaced crash !", "early-death"]);
    assert_eq!(s.state().name(), "backoff");
    assert_eq!(s.deadline(&limits()), Some(t0 + policy::BACKOFF_BASE));
    // A completed task resets the count.
    let mut s = busy(t0, 1);
    s.on_done(1, t0, &limits());
    assert_eq!(s.failures(), 0);
}

#[test]
fn start_failures_back_off_longer_each_time() {
    let t0 = Instant::now();
    let mut s = starting(t0);
    let e = s.on_exit(Exit::Code(0), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["replaced start-failure !", "early-death", "start-failed"]
    );
    assert_eq!(
        s.last_failure,
        format!("worker 3 (pid {PID}) exited with code 0 without connecting to herd")
    );
    assert_eq!(s.deadline(&limits()), Some(t0 + ms(100)));
    assert!(s.on_deadline(t0 + ms(99), true, &limits()).is_empty());
    assert_eq!(
        names(&s.on_deadline(t0 + ms(100), true, &limits())),
        ["spawn"]
    );
    assert!(s.is_stopped());
    let e = s.spawn_failed("no such file", t0);
    assert_eq!(names(&e), ["start-failed"]);
    assert_eq!(s.failures(), 2);
    assert_eq!(s.deadline(&limits()), Some(t0 + ms(200)));
    // A backoff that ends when the slot is no longer wanted leaves it empty.
    assert!(s.on_deadline(t0 + ms(200), false, &limits()).is_empty());
    assert!(s.is_stopped());
}

#[test]
fn a_start_timeout_kills_and_counts_as_a_start_failure() {
    let t0 = Instant::now();
    let mut s = starting(t0);
    assert_eq!(s.deadline(&limits()), Some(t0 + ms(10_000)));
    let e = s.on_deadline(t0 + ms(10_000), true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["replaced start-failure !", "early-death", "start-failed"]
    );
    assert!(s
        .last_failure
        .contains("did not complete its handshake within 10s"));
}

#[test]
fn a_task_timeout_kills_the_worker_and_blames_the_head() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert!(s.on_deadline(t0 + ms(1999), true, &limits()).is_empty());
    let e = s.on_deadline(t0 + ms(2000), true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    assert_eq!(s.deadline(&limits()), None, "dying: nothing to time");
    // Killing again (a second fault) changes nothing.
    assert!(s.kill(Cause::Protocol("late".into())).is_empty());
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert!(e.is_empty(), "its link is still open");
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle timeout [1, 2]", "replaced timeout !", "spawn"]
    );
    assert!(settle_message(&e).starts_with("attempt exceeded the 2s deadline"));
}

#[test]
fn a_timeout_while_retiring_is_still_a_timeout() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    s.retire(Replacement::Reload, t0, &limits());
    let e = s.on_deadline(t0 + ms(2000), true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    s.on_link_lost(None, t0, true, &limits());
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle timeout [1]", "replaced timeout !", "spawn"]
    );
}

#[test]
fn protocol_faults_kill_and_are_recorded_as_such() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    let e = s.on_link_lost(Some("bad frame".into()), t0, true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle protocol [1]", "replaced protocol !", "spawn"]
    );
    assert!(settle_message(&e).ends_with("broke the protocol: bad frame"));
    // A fault reported while it is already being killed only closes the link.
    let mut s = busy(t0, 1);
    s.kill(Cause::Timeout);
    assert!(s
        .on_link_lost(Some("garbage".into()), t0, true, &limits())
        .is_empty());
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle timeout [1]", "replaced timeout !", "spawn"]
    );
}

/// Durations in messages are written by humantime, as `--timeout` takes them.
#[test]
fn a_timeout_message_names_the_deadline_as_humantime_writes_it() {
    let t0 = Instant::now();
    let lim = SlotLimits {
        timeout: Some(ms(1500)),
        ..limits()
    };
    let mut s = busy(t0, 1);
    s.kill(Cause::Timeout);
    s.on_link_lost(None, t0, true, &lim);
    let e = s.on_exit(Exit::Signal(9), t0, true, &lim);
    let msg = settle_message(&e);
    assert!(
        msg.starts_with("attempt exceeded the 1s 500ms deadline"),
        "{msg}"
    );
}

#[test]
fn a_worker_that_ignores_the_termination_frame_is_killed_and_replaced() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    s.retire(Replacement::Reload, t0, &limits());
    let e = s.on_deadline(t0 + ms(5000), true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    s.on_link_lost(None, t0, true, &limits());
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(names(&e), ["replaced exit-timeout !", "spawn"]);
    // ... unless the pool is stopping.
    let mut s = ready(t0);
    s.stop(t0, &limits());
    s.on_deadline(t0 + ms(5000), false, &limits());
    s.on_link_lost(None, t0, false, &limits());
    let e = s.on_exit(Exit::Signal(9), t0, false, &limits());
    assert!(e.is_empty());
    assert!(s.is_stopped());
}

#[test]
fn a_fast_stop_records_held_work_as_shutdown_and_restarts_nothing() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    let e = s.kill(Cause::Stop);
    assert_eq!(names(&e), [format!("kill {PID}")]);
    s.on_link_lost(None, t0, false, &limits());
    let e = s.on_exit(Exit::Signal(9), t0, false, &limits());
    assert_eq!(names(&e), ["settle shutdown [1, 2]"]);
    assert!(s.is_stopped());
    // Backoff and stopped slots simply stay empty.
    let mut s = backoff(t0);
    assert!(s.kill(Cause::Stop).is_empty());
    assert!(s.is_stopped());
    let mut s: Slot<()> = Slot::new(0);
    assert!(s.kill(Cause::Stop).is_empty());
}

#[test]
fn a_scale_down_of_a_starting_slot() {
    let t0 = Instant::now();
    let mut s = starting(t0);
    assert_eq!(names(&s.kill(Cause::Stop)), [format!("kill {PID}")]);
    let e = s.on_exit(Exit::Signal(9), t0, false, &limits());
    assert!(e.is_empty(), "no restart, nothing to settle");
    assert!(s.is_stopped());
    assert_eq!(s.restarts, 0);
}

#[test]
fn a_crash_when_the_slot_is_no_longer_wanted_settles_but_does_not_restart() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    s.on_link_lost(None, t0, false, &limits());
    let e = s.on_exit(Exit::Signal(11), t0, false, &limits());
    assert_eq!(names(&e), ["settle crashed [1]"]);
    assert!(s.is_stopped());
}

#[test]
fn a_failed_handshake_is_a_start_failure_with_its_cause() {
    let t0 = Instant::now();
    let mut s = starting(t0);
    s.kill(Cause::StartFailed("it wrote text".into()));
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["replaced start-failure !", "early-death", "start-failed"]
    );
    assert_eq!(s.last_failure, "it wrote text");
}

#[test]
fn late_messages_from_a_dead_generation_are_recognised() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    let old = s.id();
    s.next_id();
    s.spawned(PID + 1, "t2".into(), t0);
    assert!(!s.is_current(old));
    assert!(s.is_current(s.id()));
    // Messages for a state that cannot receive them change nothing.
    let mut s: Slot<()> = Slot::new(0);
    assert!(s.on_exit(Exit::Code(0), t0, true, &limits()).is_empty());
    assert!(s.on_link_lost(None, t0, true, &limits()).is_empty());
    assert!(s.on_deadline(t0, true, &limits()).is_empty());
    assert_eq!(s.deadline(&limits()), None);
}

#[test]
fn state_names_for_status() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    assert_eq!(s.state().name(), "busy");
    s.kill(Cause::Timeout);
    assert_eq!(s.state().name(), "dying");
    assert_eq!(s.inflight_len(), 1);
    s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert_eq!(s.state().name(), "dying", "exited, link still open");
    assert_eq!(s.inflight_len(), 1);
    assert_eq!(s.pid(), Some(PID));
}

#[test]
fn no_task_timeout_without_a_timeout() {
    let t0 = Instant::now();
    let lim = SlotLimits {
        timeout: None,
        ..limits()
    };
    let mut s = busy(t0, 1);
    assert_eq!(s.deadline(&lim), None);
    assert!(s.on_deadline(t0 + ms(3_600_000), true, &lim).is_empty());
}

#[test]
fn exit_descriptions() {
    assert_eq!(Exit::Code(3).describe(), "exit code 3");
    assert_eq!(Exit::Signal(11).describe(), "SIGSEGV");
    assert_eq!(signal_name(99), "signal 99");
}

#[test]
fn chunks_count_per_attempt_and_only_for_held_tasks() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    let first = |index| ChunkFor::Task {
        submission: 0,
        seq: 1,
        attempt: 1,
        index,
    };
    assert_eq!(s.on_chunk(1), first(0));
    assert_eq!(s.on_chunk(1), first(1));
    // The second task may stream too (it is held), counted apart.
    assert!(matches!(s.on_chunk(2), ChunkFor::Task { index: 0, .. }));
    assert_eq!(s.on_chunk(99), ChunkFor::NotHeld, "unknown id");
    let Done::Task { running, .. } = s.on_done(1, t0, &limits()) else {
        panic!("task 1 is held");
    };
    assert_eq!(running.job.chunks, 2, "the final record's count");
    assert_eq!(s.on_chunk(1), ChunkFor::NotHeld, "after its Done");
    // A retry starts counting again.
    let mut again = running.job;
    again.attempts = 2;
    s.assign(again, t0).unwrap();
    assert!(matches!(
        s.on_chunk(1),
        ChunkFor::Task {
            attempt: 2,
            index: 0,
            ..
        }
    ));
    // Chunks sent before a kill still count; an empty slot ignores them.
    s.kill(Cause::Timeout);
    assert!(matches!(s.on_chunk(2), ChunkFor::Task { index: 1, .. }));
    assert_eq!(Slot::<()>::new(0).on_chunk(1), ChunkFor::Ignored);
}

#[test]
fn nothing_after_a_protocol_fault_counts_and_its_work_is_settled_as_the_fault() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    // A stray chunk was the fault; its own Done and chunk came behind it, in the same read.
    assert_eq!(s.on_chunk(99), ChunkFor::NotHeld);
    s.kill(Cause::Protocol("chunk for task 99".into()));
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Ignored));
    assert_eq!(s.on_chunk(2), ChunkFor::Ignored);
    // Nor after its exit, while the link still drains.
    let _ = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert!(matches!(s.on_done(2, t0, &limits()), Done::Ignored));
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle protocol [1, 2]", "replaced protocol !", "spawn"],
        "the suspect and its bystander, as if the late frames never came"
    );
    // Any other kill still takes the results sent before it.
    let mut s = busy(t0, 1);
    s.kill(Cause::Timeout);
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
}

#[test]
fn a_held_worker_takes_no_work_and_its_kill_rejects_the_stream_alone() {
    let t0 = Instant::now();
    let mut s = busy(t0, 1);
    let mut other = job(2);
    other.submission = 7;
    s.assign(other, t0).unwrap();
    assert!(s.has_room(4, None));
    s.on_held(true, t0 + ms(10));
    assert!(
        !s.has_room(4, None),
        "nothing is dispatched behind a held worker"
    );
    assert_eq!(s.held(), Some((t0 + ms(10), 0, true)));
    s.on_held(false, t0 + ms(20));
    assert_eq!(s.held(), None);
    assert!(s.has_room(4, None));
    s.on_held(true, t0 + ms(30));
    assert_eq!(names(&s.kill(Cause::Held)), [format!("kill {PID}")]);
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    assert!(e.is_empty(), "waits for the link");
    let e = s.on_link_lost(None, t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle rejected [1, 2]", "replaced held !", "spawn"]
    );
    assert!(settle_message(&e).contains("did not read its chunks"));
}

#[test]
fn only_a_worker_that_never_completed_a_task_dies_early() {
    let t0 = Instant::now();
    let mut s = busy(t0, 2);
    assert!(matches!(s.on_done(1, t0, &limits()), Done::Task { .. }));
    s.on_link_lost(None, t0, true, &limits());
    let e = s.on_exit(Exit::Code(3), t0, true, &limits());
    assert_eq!(
        names(&e),
        ["settle crashed [2]", "replaced crash !", "spawn"]
    );
    // Its successor starts from nothing.
    s.next_id();
    s.spawned(PID + 1, "t2".into(), t0);
    s.greeted((), herd_proto::PROTOCOL_VERSION, t0, true, &limits());
    s.on_link_lost(None, t0, true, &limits());
    let e = s.on_exit(Exit::Code(3), t0, true, &limits());
    assert!(names(&e).contains(&"early-death".to_string()), "{e:?}");
}

#[test]
fn replacement_reasons_are_named_once_and_say_whether_unexpected() {
    for r in Replacement::ALL {
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            serde_json::Value::from(r.as_str())
        );
        assert_eq!(
            serde_json::from_value::<Replacement>(r.as_str().into()).unwrap(),
            r
        );
    }
    let unexpected: Vec<&str> = Replacement::ALL
        .into_iter()
        .filter(|r| r.is_unexpected())
        .map(Replacement::as_str)
        .collect();
    assert_eq!(
        unexpected,
        [
            "crash",
            "timeout",
            "protocol",
            "held",
            "start-failure",
            "exit-timeout"
        ]
    );
}

#[test]
fn deadline_of_the_head_task_kills_the_worker_before_its_timeout() {
    let t0 = Instant::now();
    let mut s = ready(t0);
    let mut head = job(1);
    head.extra = Some(Box::new(crate::job::Extra {
        expires: None,
        deadline: Some(t0 + ms(700)),
        ..Default::default()
    }));
    s.assign(head, t0).unwrap();
    // A bystander's deadline is not the slot's: only the running task is timed.
    let mut behind = job(2);
    behind.extra = Some(Box::new(crate::job::Extra {
        expires: None,
        deadline: Some(t0 + ms(100)),
        ..Default::default()
    }));
    s.assign(behind, t0).unwrap();
    assert_eq!(
        s.deadline(&limits()),
        Some(t0 + ms(700)),
        "before the 2s timeout"
    );
    assert!(s.on_deadline(t0 + ms(699), true, &limits()).is_empty());
    let e = s.on_deadline(t0 + ms(700), true, &limits());
    assert_eq!(names(&e), [format!("kill {PID}")]);
    s.on_link_lost(None, t0, true, &limits());
    let e = s.on_exit(Exit::Signal(9), t0, true, &limits());
    // Not a worker fault: no early death, and the replacement is no unexpected restart.
    assert_eq!(
        names(&e),
        ["settle deadline [1, 2]", "replaced deadline ok", "spawn"]
    );
    assert!(settle_message(&e).contains("--deadline passed"));
    // Without a deadline, the timeout still applies.
    let s = busy(t0, 1);
    assert_eq!(s.deadline(&limits()), Some(t0 + ms(2000)));
}
