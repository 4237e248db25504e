//! Worker lifecycles as the pool drives them: spawning, handshakes, results, link ends and
//! exits go to the slot's state machine, and the effects it returns are carried out here.
//! Scaling and rolling reloads too: they are decisions about which slots should have workers.

use std::io;

use tokio::net::unix::UCred;

use super::{Phase, Pool};
use crate::backlog::HELD_LIMIT;
use crate::link::Link;
use crate::msg::{Exited, FromLink, Outgoing, WorkerFrame};
use crate::process;
use crate::record::{Record, RecordOutcome};
use crate::rendezvous::{self, Greeting};
use crate::slot::{
    Cause, ChunkFor, Done, Effect, Effects, Replacement, Slot, SlotLimits, State, WorkerId,
};
use crate::status::LifecycleEvent;
use crate::PoolError;
use herd_proto::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use tokio::time::Instant;

/// Consecutive failed starts on every slot, with no worker ever ready, that make the pool
/// give up.
const GIVE_UP_AFTER: u32 = 3;

impl Pool {
    /// Spawns a process into slot `i`.
    pub(super) fn spawn(&mut self, i: usize) -> io::Result<()> {
        let token = rendezvous::random_hex(16)?;
        let id = self.slots[i].next_id();
        let spawned = process::spawn_worker(
            &self.cfg,
            id,
            self.rundir.socket(),
            &token,
            &self.exited_tx,
            self.guard.as_ref(),
        )?;
        self.slots[i].spawned(spawned.pid, token, self.now);
        Ok(())
    }

    /// Runs a transition of slot `i` (given the pool's clock and the slot limits) and carries
    /// out the effects it returns.
    pub(super) fn transition(
        &mut self,
        i: usize,
        step: impl FnOnce(&mut Slot<Link>, Instant, &SlotLimits) -> Effects,
    ) {
        let effects = step(&mut self.slots[i], self.now, &self.limits);
        self.apply(i, effects);
    }

    /// Kills the worker of slot `i` for `cause` (see [`Slot::kill`]).
    pub(super) fn kill(&mut self, i: usize, cause: Cause) {
        let effects = self.slots[i].kill(cause);
        self.apply(i, effects);
    }

    /// Carries out what a transition of slot `i` asked for.
    pub(super) fn apply(&mut self, i: usize, effects: Effects) {
        for effect in effects {
            match effect {
                Effect::Spawn => {
                    if let Err(e) = self.spawn(i) {
                        tracing::warn!(worker = i, program = self.cfg.program(), error = %e, "cannot spawn worker");
                        self.transition(i, |slot, now, _| slot.spawn_failed(&e.to_string(), now));
                    }
                }
                Effect::Shutdown => {
                    // A failed write means the worker is going down; its exit settles it.
                    if let Some(link) = self.slots[i].link_mut() {
                        link.send(&[Outgoing::Shutdown]);
                    }
                }
                Effect::Kill(pid) => process::kill_group(pid),
                Effect::Settle {
                    inflight,
                    kind,
                    message,
                } => self.settle_inflight(inflight, kind, &message),
                Effect::StartFailed => self.maybe_give_up(i),
                Effect::EarlyDeath { detail } => self.on_early_death(detail),
                Effect::Replaced {
                    reason,
                    pid,
                    detail,
                } => {
                    *self.stats.restarts.entry(reason.as_str()).or_default() += 1;
                    self.stats.lifecycle(LifecycleEvent {
                        at_secs: self.started.elapsed().as_secs_f64(),
                        worker: i,
                        pid,
                        reason,
                        unexpected: reason.is_unexpected(),
                        detail,
                    });
                    if reason.is_unexpected() {
                        self.summary.restarts += 1;
                    } else {
                        self.summary.recycled += 1;
                    }
                }
            }
        }
    }

    /// No worker ever became ready and every slot failed to start repeatedly: the worker
    /// program cannot work. Stop, and say why with what slot `i` printed.
    fn maybe_give_up(&mut self, i: usize) {
        if self.ever_ready || !self.slots.iter().all(|s| s.failures() >= GIVE_UP_AFTER) {
            return;
        }
        let slot = &self.slots[i];
        let err = PoolError::NeverReady {
            program: self.cfg.program(),
            attempts: self.slots.iter().map(|s| s.failures()).sum(),
            reason: slot.last_failure.clone(),
            stdout_tail: slot.stdout_tail.clone(),
            stderr_tail: slot.stderr_tail.clone(),
        };
        // Returned from `run`: the caller reports it, once.
        self.fatal.get_or_insert(err);
        self.stop_fast("no worker could start");
    }

    /// The slot of the current process `id`, if `id` is not a dead predecessor.
    fn current(&self, id: WorkerId) -> Option<usize> {
        self.slots
            .get(id.slot)
            .is_some_and(|s| s.is_current(id))
            .then_some(id.slot)
    }

    /// The starting slot whose spawned process `peer` is, or belongs to (a wrapper such as a
    /// shell or an interpreter launcher may fork the real worker; it stays in the process
    /// group herd created, whose id is the spawned pid).
    fn starting_slot_of(&self, peer: Option<u32>) -> Option<usize> {
        let peer = peer?;
        let group = process::process_group_of(peer);
        self.slots.iter().position(|s| {
            matches!(s.state(), State::Starting { pid, .. } if *pid == peer || group == Some(*pid))
        })
    }

    /// A connection that failed the handshake. If it came from one of our starting workers,
    /// that worker failed to start, now: kill it and remember why. A stranger costs nothing.
    pub(super) fn on_failed_handshake(&mut self, cred: &UCred, problem: &str) {
        let peer = cred.pid().and_then(|p| u32::try_from(p).ok());
        let Some(i) = self.starting_slot_of(peer) else {
            tracing::warn!(
                peer_pid = peer,
                "handshake failed: {problem}; not one of our workers, ignored"
            );
            return;
        };
        let pid = self.slots[i].pid().unwrap_or(0);
        tracing::warn!(worker = i, pid, "worker handshake failed: {problem}");
        let why = format!("worker {i} (pid {pid}) failed its handshake: {problem}");
        self.kill(i, Cause::StartFailed(why));
    }

    pub(super) fn on_greeting(&mut self, g: Greeting) {
        let peer = g.cred.pid().and_then(|p| u32::try_from(p).ok());
        let Some(i) = self.starting_slot_of(peer) else {
            // Not a process herd started (e.g. one that read a worker's token from
            // /proc/PID/environ): refused, and the worker whose token it presented is not
            // touched.
            tracing::warn!(
                peer_pid = peer,
                claimed_pid = g.pid,
                "handshake from a process that is not a starting worker; connection refused"
            );
            return;
        };
        let pid = self.slots[i].pid().unwrap_or(0);
        let problem = if self.slots[i].token() != Some(g.token.as_str()) {
            Some("it presented the wrong token".to_string())
        } else if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&g.protocol) {
            Some(format!(
                "it speaks protocol version {}, herd speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                g.protocol
            ))
        } else if g.cred.uid() != self.uid {
            Some(format!(
                "it runs as uid {}, herd as uid {}",
                g.cred.uid(),
                self.uid
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            tracing::error!(
                worker = i,
                pid,
                claimed_pid = g.pid,
                "worker handshake refused: {problem}"
            );
            let why = format!("worker {i} (pid {pid}) failed its handshake: {problem}");
            self.kill(i, Cause::StartFailed(why));
            return;
        }
        let mut conn = g.conn;
        let batching = crate::link::take_batching(&mut conn, g.protocol, self.cfg.max_frame);
        let link = Link::start(
            self.slots[i].id(),
            conn,
            self.cfg.max_frame,
            g.protocol,
            batching.is_some(),
            self.link_tx.clone(),
        );
        self.ever_ready = true;
        let keep = self.keep(i);
        let protocol = g.protocol;
        self.transition(i, |slot, now, limits| {
            slot.greeted(link, protocol, now, keep, limits)
        });
        if let Some(max) = batching {
            self.slots[i].on_batching(max);
        }
        if !keep {
            return;
        }
        self.announce_ready();
        if self.reload_queue.front() == Some(&i) {
            self.reload_queue.pop_front();
            self.reload_step();
        }
    }

    pub(super) fn on_link(&mut self, msg: FromLink) {
        match msg {
            FromLink::Frame(id, frame) => self.on_frame(id, frame),
            FromLink::Frames(id, frames) => {
                for frame in frames {
                    self.on_frame(id, frame);
                }
            }
            FromLink::Held { id, held } => {
                if let Some(i) = self.current(id) {
                    self.slots[i].on_held(held, self.now);
                }
            }
            FromLink::Closed { id, fault } => {
                let Some(i) = self.current(id) else { return };
                let keep = self.keep(i);
                self.transition(i, |slot, now, limits| {
                    slot.on_link_lost(fault, now, keep, limits)
                });
            }
        }
    }

    fn on_frame(&mut self, id: WorkerId, frame: WorkerFrame) {
        let Some(i) = self.current(id) else { return };
        let (task, outcome) = match frame {
            WorkerFrame::Done { id, outcome } => (id, outcome),
            WorkerFrame::Chunk { id, data, ticket } => return self.on_chunk(i, id, data, ticket),
            WorkerFrame::Withdrawn { id } => return self.on_withdraw_answer(i, id, true),
            WorkerFrame::Kept { id } => return self.on_withdraw_answer(i, id, false),
            WorkerFrame::Heartbeat => return,
            WorkerFrame::Batching { max } => return self.slots[i].on_batching(max),
            WorkerFrame::Hello => {
                return self.kill(i, Cause::Protocol("second Hello".into()));
            }
        };
        match self.slots[i].on_done(task, self.now, &self.limits) {
            Done::Task {
                running,
                pid,
                effects,
            } => {
                self.apply(i, effects);
                self.on_task_completed();
                self.on_result(i, pid, running, outcome);
            }
            Done::NotHeld => {
                let fault = format!("result for task {task}, which it does not hold");
                self.kill(i, Cause::Protocol(fault));
            }
            Done::Ignored => {}
        }
    }

    /// A partial result: a chunk line for its submission now (it cannot be taken back, so
    /// it carries its attempt), or a protocol fault if the worker does not hold the task.
    fn on_chunk(&mut self, i: usize, task: u64, data: bytes::Bytes, ticket: crate::ChunkTicket) {
        match self.slots[i].on_chunk(task) {
            ChunkFor::Task {
                submission,
                seq,
                attempt,
                index,
            } => {
                self.stats.chunks += 1;
                let record = Record {
                    seq,
                    attempts: attempt,
                    chunks: 0,
                    outcome: RecordOutcome::Chunk {
                        index,
                        output: data,
                        ticket,
                    },
                    input: None,
                };
                self.submissions.emit_chunk(submission, record);
            }
            ChunkFor::NotHeld => {
                let fault = format!("chunk for task {task}, which it does not hold");
                let pid = self.slots[i].pid();
                tracing::warn!(
                    worker = i,
                    pid,
                    "protocol violation: {fault}; killing worker"
                );
                self.kill(i, Cause::Protocol(fault));
            }
            ChunkFor::Ignored => {}
        }
    }

    /// Kills each worker held for one submitter's undelivered chunks for longer than
    /// [`HELD_LIMIT`] while another submitter's work waits for it (queued, or behind the
    /// stream in the worker): a submitter that stops reading holds up only itself. Checked at
    /// every wake-up, so work arriving after the limit releases the worker at once.
    pub(super) fn release_held(&mut self) {
        for i in 0..self.slots.len() {
            let Some((since, submission, others_inside)) = self.slots[i].held() else {
                continue;
            };
            if since + HELD_LIMIT > self.now
                || !(others_inside || self.submissions.others_queued(submission))
            {
                continue;
            }
            tracing::warn!(
                worker = i,
                pid = self.slots[i].pid(),
                submission,
                "worker held for a submitter that does not read its chunks while other work \
                 waits; killing it"
            );
            self.kill(i, Cause::Held);
        }
    }

    pub(super) fn on_exited(&mut self, exited: Exited) {
        let Some(i) = self.current(exited.id) else {
            return;
        };
        let slot = &mut self.slots[i];
        if !exited.stdout_tail.is_empty() || !exited.stderr_tail.is_empty() {
            slot.stdout_tail = exited.stdout_tail;
            slot.stderr_tail = exited.stderr_tail;
        }
        let keep = self.keep(i);
        self.transition(i, |slot, now, limits| {
            slot.on_exit(exited.exit, now, keep, limits)
        });
    }

    /// Logs `ready` once, when every slot first has a worker that completed its handshake.
    fn announce_ready(&mut self) {
        if self.announced_ready {
            return;
        }
        let pids: Option<Vec<u32>> = self.slots[..self.target]
            .iter()
            .map(|s| s.is_ready().then(|| s.pid()).flatten())
            .collect();
        if let Some(pids) = pids {
            self.announced_ready = true;
            tracing::debug!(?pids, "all workers ready");
            let _ = self.ready_tx.send(Some(pids));
        }
    }

    /// Retires a ready worker gracefully (`max-rss`, `reload`, `scale-down`).
    pub(super) fn recycle(&mut self, i: usize, reason: Replacement) {
        self.transition(i, |slot, now, limits| slot.retire(reason, now, limits));
    }

    /// A manual scale (`herd ctl scale`, TTIN/TTOU). Refused while autoscaling: the
    /// autoscaler owns the target then (`herd ctl scale` is refused before it gets here).
    pub(super) fn scale(&mut self, n: usize) {
        if let Some(a) = &self.autoscaler {
            let bounds = a.config();
            tracing::warn!(
                min = bounds.min,
                max = bounds.max,
                wanted = n,
                "manual scaling ignored: the pool autoscales within its bounds"
            );
            return;
        }
        let n = n.clamp(1, crate::autoscale::MAX_WORKERS);
        if self.phase != Phase::Running || n == self.target {
            return;
        }
        tracing::info!(from = self.target, to = n, "scaling");
        self.resize(n);
    }

    /// Grows or shrinks the pool to `n` workers. New slots start at once; surplus slots finish
    /// their in-flight tasks, get the termination frame and stay empty.
    pub(super) fn resize(&mut self, n: usize) {
        if self.phase != Phase::Running || n == self.target || n == 0 {
            return;
        }
        let old = self.target;
        self.target = n;
        if n > old {
            for i in old..n {
                if i == self.slots.len() {
                    self.slots.push(crate::slot::Slot::new(i));
                }
                // A slot still retiring from an earlier scale-down is replaced when it exits.
                if self.slots[i].is_stopped() {
                    self.apply(i, vec![Effect::Spawn]);
                }
            }
        } else {
            for i in n..old {
                self.reload_queue.retain(|&r| r != i);
                match self.slots[i].state() {
                    State::Ready { .. } => self.recycle(i, Replacement::ScaleDown),
                    State::Starting { .. } | State::Backoff { .. } => {
                        self.kill(i, Cause::Stop);
                    }
                    // Ending anyway: with the slot past the target, it stays empty.
                    _ => {}
                }
            }
        }
    }

    /// Rolling restart of every worker, one slot at a time, so capacity never drops below
    /// N-1. Each replacement is spawned from the command line again, so a new binary on disk
    /// is picked up.
    pub(super) fn reload(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        tracing::info!(
            workers = self.target,
            "reloading: rolling restart of every worker"
        );
        self.reload_queue = (0..self.target).collect();
        self.reload_step();
    }

    /// Retires the worker of the slot at the head of the reload queue; the next slot follows
    /// when its replacement is ready.
    fn reload_step(&mut self) {
        while let Some(&i) = self.reload_queue.front() {
            match self.slots[i].state() {
                State::Ready { .. } => {
                    self.recycle(i, Replacement::Reload);
                    return;
                }
                // Mid-start or mid-drain: its readiness moves the reload on.
                State::Starting { .. } | State::Retiring { .. } | State::Exiting { .. } => return,
                // Already on its way to a fresh process; nothing to wait for.
                State::Backoff { .. }
                | State::Stopped
                | State::Leaving { .. }
                | State::Dying { .. }
                | State::Exited { .. } => {
                    self.reload_queue.pop_front();
                }
            }
        }
        tracing::info!("reload complete");
    }
}
