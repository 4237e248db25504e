//! One worker slot's lifecycle, as a pure state machine.
//!
//! A slot keeps its index for the life of the pool; the process in it changes. Everything the
//! slot knows about its current process lives in the variant of [`State`] it is in, and every
//! change of state is a method here that takes the current time and returns the [`Effect`]s
//! the pool must carry out (spawn a process, send the termination frame, kill a process group,
//! settle the work a dead worker held, count a replacement). The methods do no I/O of their
//! own beyond logging, so every transition, and every race between a process's exit, the end
//! of its socket and its last frames, is unit-tested below with plain `Instant`s.
//!
//! ```text
//!            spawn                 Hello              retire (max-tasks, max-rss,
//!  Stopped ─────────▶ Starting ───────────▶ Ready ──── reload, scale-down, stop)
//!  Backoff ─────────▶    │                    │  ╲             │
//!     ▲                  │ kill               │   ╲ nothing    ▼
//!     │                  ▼                    │    ╲ held ─▶ Retiring ──(last result)──┐
//!     │               Dying ◀──── kill ───────┴─────────────────┘                       ▼
//!     │                  │                                          Exiting (termination
//!     │                  │ exit                                       frame sent) ── deadline ─▶ Dying
//!     │                  ▼                                                │ exit
//!     └── settle ◀── Exited (waits for the link's last frames) ◀──────────┘
//! ```
//!
//! An exit whose link is already closed is settled at once, without passing through
//! `Exited`. Settling decides what the exit means: the suspect task is charged, the slot is
//! restarted at once (a worker that died working), backs off (one that failed to start or died
//! idle), is replaced (a graceful retirement) or stays empty (the pool is stopping, or the slot
//! is past the scaling target).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::job::{Job, Running};
use crate::policy;
use crate::record::ErrorKind;

/// A worker process incarnation: the slot it fills and which spawn of that slot it is, so late
/// messages from a dead predecessor are recognisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerId {
    pub slot: usize,
    pub gen: u64,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// "exit code 3" / "SIGSEGV".
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => signal_name(s),
        }
    }

    /// "exited with code 3" / "killed by SIGSEGV".
    fn what(self) -> String {
        match self {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by {}", signal_name(s)),
        }
    }
}

/// "SIGSEGV" for 11, "signal 99" when unknown.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

/// Why the pool killed a worker; decides how the work it held is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Its running task overran `--timeout`.
    Timeout,
    /// It broke the protocol (garbage, a result for a task it does not hold, a second Hello).
    Protocol(String),
    /// It did not complete its handshake (start timeout, a bad handshake).
    StartFailed(String),
    /// The pool is stopping fast, it overran its exit timeout, or it was scaled away mid-start.
    Stop,
    /// Its socket ended, or could not be written, and the process had not exited within the
    /// exit timeout after that (see [`State::Leaving`]).
    LinkLost,
    /// Its reader was paused for one submitter's undelivered chunks past
    /// [`crate::backlog::HELD_LIMIT`] while others had work for it. The streaming event is
    /// `rejected` (its submitter is not reading; a retry would only stall again), the rest
    /// go back uncharged.
    Held,
    /// A control request cancelled this task (its job id), which the worker held. The task
    /// gets a `cancelled` record; the rest go back uncharged, as bystanders of a crash.
    Cancelled(u64),
    /// The `--deadline` of its running task passed. The task gets a `deadline` record, the
    /// rest go back uncharged, as for a timeout.
    Deadline,
}

/// Why a worker process was replaced or retired: the key of `restarts` and the `reason` of
/// the `events` in `herd status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replacement {
    /// It died on its own.
    Crash,
    /// Its running task overran `--timeout`, and it was killed.
    Timeout,
    /// It broke the protocol, and was killed.
    Protocol,
    /// It was held for a submitter that did not read its chunks while other work waited,
    /// and was killed.
    Held,
    /// A task it held was cancelled, and it was stopped.
    Cancelled,
    /// It never completed its handshake.
    StartFailure,
    /// It did not exit within the exit timeout after the termination frame, and was killed.
    ExitTimeout,
    /// It completed `--max-tasks` tasks.
    MaxTasks,
    /// Its resident memory passed `--max-rss`.
    MaxRss,
    /// A rolling reload.
    Reload,
    /// The pool scaled down past its slot (it is not replaced).
    ScaleDown,
    /// The pool is stopping (it is not replaced).
    Stop,
    /// The `--deadline` of its running task passed, and it was killed.
    Deadline,
}

impl Replacement {
    /// Every reason, in a stable order (for counters and reports).
    pub const ALL: [Replacement; 13] = [
        Replacement::Crash,
        Replacement::Timeout,
        Replacement::Protocol,
        Replacement::Held,
        Replacement::Cancelled,
        Replacement::StartFailure,
        Replacement::ExitTimeout,
        Replacement::MaxTasks,
        Replacement::MaxRss,
        Replacement::Reload,
        Replacement::ScaleDown,
        Replacement::Stop,
        Replacement::Deadline,
    ];

    /// The name in `herd status` and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Replacement::Crash => "crash",
            Replacement::Timeout => "timeout",
            Replacement::Protocol => "protocol",
            Replacement::Held => "held",
            Replacement::Cancelled => "cancelled",
            Replacement::StartFailure => "start-failure",
            Replacement::ExitTimeout => "exit-timeout",
            Replacement::MaxTasks => "max-tasks",
            Replacement::MaxRss => "max-rss",
            Replacement::Reload => "reload",
            Replacement::ScaleDown => "scale-down",
            Replacement::Stop => "stop",
            Replacement::Deadline => "deadline",
        }
    }

    /// The process ended against the pool's wishes (a fault, counted in
    /// [`crate::Summary::restarts`]), rather than being retired gracefully (counted in
    /// [`crate::Summary::recycled`]).
    pub fn is_unexpected(self) -> bool {
        match self {
            Replacement::Crash
            | Replacement::Timeout
            | Replacement::Protocol
            | Replacement::Held
            | Replacement::StartFailure
            | Replacement::ExitTimeout => true,
            // Asked for (a cancel), not a fault of the worker.
            Replacement::Cancelled
            | Replacement::MaxTasks
            | Replacement::MaxRss
            | Replacement::Reload
            | Replacement::ScaleDown
            | Replacement::Stop
            | Replacement::Deadline => false,
        }
    }
}

impl std::fmt::Display for Replacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an exit means, decided from the state the slot was in when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// It never completed a handshake.
    NeverConnected,
    /// It died on its own while up.
    Crashed,
    /// The pool killed it.
    Killed(Cause),
    /// It answered the termination frame; why it was retired.
    Graceful(Replacement),
}

/// The per-worker deadlines and task budget a slot enforces (not to be confused with
/// [`crate::Limits`], the resource limits a worker is launched with).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotLimits {
    /// From spawn to a completed handshake.
    pub start_timeout: Duration,
    /// Per attempt.
    pub timeout: Option<Duration>,
    /// From the termination frame to the exit.
    pub exit_timeout: Duration,
    /// Tasks one process is sent and completes before it is replaced.
    pub max_tasks: Option<u64>,
}

/// How long an exit waits for its link to report the end of the socket, which comes after
/// the worker's last results (only a grandchild holding the socket open makes it wait this
/// long).
pub(crate) const LINK_DRAIN: Duration = Duration::from_secs(1);

/// How long past the exit a link that still has unread bytes may keep the slot waiting: a
/// starved herd may not have read a dead worker's last frames within [`LINK_DRAIN`], and
/// settling then would drop results (or chunks) the worker did send.
pub(crate) const LINK_DRAIN_MAX: Duration = Duration::from_secs(30);

/// A slot's lifecycle; each variant carries what is true of the slot in it.
#[derive(Debug)]
pub(crate) enum State<L> {
    /// No process, and none wanted: the pool is stopping, or the slot is past the target.
    Stopped,
    /// Waiting out a restart delay after failures.
    Backoff { until: Instant },
    /// Spawned; waiting for its `Hello`.
    Starting {
        pid: u32,
        token: String,
        since: Instant,
    },
    /// Handshake done; takes tasks.
    Ready {
        pid: u32,
        link: L,
        inflight: VecDeque<Running>,
        /// Tasks sent to this process, and completed by it (for `max_tasks`).
        sent: u64,
        done: u64,
        /// Since when its reader has been paused for undelivered chunks (see `backlog`).
        held: Option<Instant>,
        /// Its head task ran so long that the tasks behind it were withdrawn (see `asks`): it
        /// gets no new task until that head is answered.
        stalled: bool,
    },
    /// Out of rotation; gets the termination frame once everything it holds is answered.
    Retiring {
        pid: u32,
        link: L,
        inflight: VecDeque<Running>,
        reason: Replacement,
        held: Option<Instant>,
    },
    /// The termination frame was sent (it holds nothing); has until `deadline` to exit.
    Exiting {
        pid: u32,
        link: L,
        link_open: bool,
        deadline: Instant,
        reason: Replacement,
    },
    /// Its link ended (or could not be written) while the process still ran: it is most
    /// likely exiting, and gets until `deadline` (the exit timeout) to do so on its own, so
    /// that its record says how it ended (a Python worker's `sys.exit(3)` closes its socket
    /// before the interpreter has shut down). Then it is killed. After a failed write the
    /// link may still deliver the results the worker sent before: they count, as in `Dying`.
    Leaving {
        pid: u32,
        inflight: VecDeque<Running>,
        deadline: Instant,
        link_open: bool,
    },
    /// Killed by the pool; waiting for its exit status.
    Dying {
        pid: u32,
        inflight: VecDeque<Running>,
        cause: Cause,
        link_open: bool,
    },
    /// Exited while its link may still deliver results: settled when the link ends, or at
    /// `deadline`.
    Exited {
        pid: u32,
        exit: Exit,
        inflight: VecDeque<Running>,
        end: End,
        deadline: Instant,
        /// When the exit was seen (bounds [`Slot::extend_drain`]).
        since: Instant,
        /// The link, kept so the pool can ask whether bytes are still unread on it (none
        /// once the worker was killed: the kill dropped it).
        link: Option<L>,
    },
}

impl<L> State<L> {
    /// The state's name in `herd status` (`idle`/`busy` for a ready worker).
    pub fn name(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Backoff { .. } => "backoff",
            State::Starting { .. } => "starting",
            State::Ready { inflight, .. } if inflight.is_empty() => "idle",
            State::Ready { .. } => "busy",
            State::Retiring { .. } | State::Exiting { .. } => "draining",
            State::Leaving { .. } | State::Dying { .. } | State::Exited { .. } => "dying",
        }
    }
}

/// What the pool must do after a transition.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Start a new process in this slot now (then call [`Slot::spawned`] or
    /// [`Slot::spawn_failed`]).
    Spawn,
    /// Send the termination frame on the slot's link.
    Shutdown,
    /// SIGKILL this process group.
    Kill(u32),
    /// A worker ended holding this work, in the order it was sent: the head was running
    /// (the suspect), the rest only waited.
    Settle {
        inflight: VecDeque<Running>,
        kind: ErrorKind,
        message: String,
    },
    /// A start failed (counted towards giving up on the pool).
    StartFailed,
    /// A worker that completed its handshake died on its own without completing a task
    /// (counted towards the pool's circuit breaker; any completed task resets the count).
    EarlyDeath { detail: String },
    /// A worker process was replaced, for this reason.
    Replaced {
        reason: Replacement,
        /// The process that ended, and what happened to it (for `herd status` events).
        pid: u32,
        detail: String,
    },
}

/// Effects of one transition (rarely more than two).
pub(crate) type Effects = Vec<Effect>;

/// A result frame, as [`Slot::on_done`] saw it.
#[derive(Debug)]
pub(crate) enum Done {
    /// The task it settles, the worker's pid, and what the slot wants done now (the
    /// termination frame, when it retired and this was the last task it held).
    Task {
        running: Running,
        pid: u32,
        effects: Effects,
    },
    /// A result for a task the worker does not hold: a protocol fault.
    NotHeld,
    /// The slot has no worker that could send results, or its worker broke the protocol.
    Ignored,
}

/// A chunk frame, as [`Slot::on_chunk`] saw it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkFor {
    /// Chunk number `index` of this attempt of the event `seq` of `submission`.
    Task {
        submission: crate::job::SubmissionId,
        seq: u64,
        attempt: u32,
        index: u32,
    },
    /// A chunk for a task the worker does not hold (unknown, or already answered): a
    /// protocol fault.
    NotHeld,
    /// The slot has no worker that could send it, or its worker broke the protocol.
    Ignored,
}

/// One slot: its lifecycle and what outlives each process in it.
#[derive(Debug)]
pub(crate) struct Slot<L> {
    pub index: usize,
    /// Incremented at each spawn; see [`WorkerId`].
    pub gen: u64,
    state: State<L>,
    /// Consecutive failures without a completed task; drives the backoff.
    failures: u32,
    /// Unexpected exits replaced in this slot.
    pub restarts: u64,
    /// Tasks completed in this slot, all processes together.
    pub total_tasks: u64,
    /// Why the last start failed, and what the process printed (for the give-up message).
    pub last_failure: String,
    pub stdout_tail: Vec<String>,
    pub stderr_tail: Vec<String>,
    /// When the current (or last) process was spawned, for its uptime in `herd status`.
    pub spawned_at: Option<Instant>,
    /// Tasks the current (or last) process completed, whatever its state.
    completed: u64,
    /// The protocol version the current process said in its `Hello` (0 before one).
    protocol: u32,
    /// Protocol 3 requests sent to the current process and not answered yet (see `asks`).
    asks: Vec<asks::Ask>,
    /// Tasks the current process's handler takes per call (its `Batching`; 0 before one).
    batching: u32,
}

impl<L> Slot<L> {
    pub fn new(index: usize) -> Self {
        Self {
            index,
            gen: 0,
            state: State::Stopped,
            failures: 0,
            restarts: 0,
            total_tasks: 0,
            last_failure: String::new(),
            stdout_tail: Vec::new(),
            stderr_tail: Vec::new(),
            spawned_at: None,
            completed: 0,
            protocol: 0,
            asks: Vec::new(),
            batching: 0,
        }
    }

    pub fn state(&self) -> &State<L> {
        &self.state
    }

    /// The id of the current process.
    pub fn id(&self) -> WorkerId {
        WorkerId {
            slot: self.index,
            gen: self.gen,
        }
    }

    /// Whether a message from `id` concerns the current process (not a dead predecessor).
    pub fn is_current(&self, id: WorkerId) -> bool {
        id.gen == self.gen
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Starting { pid, .. }
            | State::Ready { pid, .. }
            | State::Retiring { pid, .. }
            | State::Exiting { pid, .. }
            | State::Leaving { pid, .. }
            | State::Dying { pid, .. }
            | State::Exited { pid, .. } => Some(*pid),
            State::Backoff { .. } | State::Stopped => None,
        }
    }

    pub fn inflight_len(&self) -> usize {
        match &self.state {
            State::Ready { inflight, .. }
            | State::Retiring { inflight, .. }
            | State::Leaving { inflight, .. }
            | State::Dying { inflight, .. }
            | State::Exited { inflight, .. } => inflight.len(),
            _ => 0,
        }
    }

    /// When the task the worker is running now started, if it is running one (for the
    /// autoscaler's measure of work done).
    pub fn running_since(&self) -> Option<Instant> {
        match &self.state {
            State::Ready { inflight, .. } | State::Retiring { inflight, .. } => {
                Some(inflight.front()?.started)
            }
            _ => None,
        }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Whether a worker that completed its handshake is alive here (ready, or retiring).
    pub fn is_up(&self) -> bool {
        matches!(
            self.state,
            State::Ready { .. } | State::Retiring { .. } | State::Exiting { .. }
        )
    }

    /// The token a starting worker must present.
    pub fn token(&self) -> Option<&str> {
        match &self.state {
            State::Starting { token, .. } => Some(token),
            _ => None,
        }
    }

    /// The link to a worker that can still be written to.
    pub fn link_mut(&mut self) -> Option<&mut L> {
        match &mut self.state {
            State::Ready { link, .. }
            | State::Retiring { link, .. }
            | State::Exiting { link, .. } => Some(link),
            _ => None,
        }
    }

    /// Whether a ready worker may be sent one more task (not while it is held for a
    /// submitter's undelivered chunks: a task behind it would wait on that submitter; nor
    /// while it runs a solo task, which must be alone, see `crate::blame`).
    pub fn has_room(&self, window: usize, max_tasks: Option<u64>) -> bool {
        matches!(&self.state, State::Ready { inflight, sent, held: None, stalled: false, .. }
            if inflight.len() < window
                && max_tasks.is_none_or(|m| *sent < m)
                && inflight.front().is_none_or(|r| r.job.batch_cap != crate::blame::SOLO))
    }

    /// The worker's link reader paused (`held`) for undelivered chunks, or resumed.
    pub fn on_held(&mut self, held: bool, now: Instant) {
        if let State::Ready { held: h, .. } | State::Retiring { held: h, .. } = &mut self.state {
            tracing::debug!(
                worker = self.index,
                held,
                "worker held for its chunks' reader"
            );
            *h = held.then_some(now);
        }
    }

    /// If the worker is held for undelivered chunks: since when, and the submission of the
    /// task it runs (the one streaming), with whether it holds another submission's tasks.
    pub fn held(&self) -> Option<(Instant, crate::job::SubmissionId, bool)> {
        match &self.state {
            State::Ready {
                held: Some(since),
                inflight,
                ..
            }
            | State::Retiring {
                held: Some(since),
                inflight,
                ..
            } => {
                let sub = inflight.front()?.job.submission;
                let others = inflight.iter().any(|r| r.job.submission != sub);
                Some((*since, sub, others))
            }
            _ => None,
        }
    }

    fn set(&mut self, next: State<L>) {
        tracing::trace!(
            worker = self.index,
            from = self.state.name(),
            to = next.name(),
            "slot transition"
        );
        self.state = next;
    }

    /// Takes the state out (leaving `Stopped`) to move its data into the next one.
    fn take(&mut self) -> State<L> {
        std::mem::replace(&mut self.state, State::Stopped)
    }

    // ----- starting --------------------------------------------------------------------

    /// A new process is about to be spawned: its id.
    pub fn next_id(&mut self) -> WorkerId {
        self.gen += 1;
        self.id()
    }

    /// The process was spawned and must now complete its handshake.
    pub fn spawned(&mut self, pid: u32, token: String, now: Instant) {
        tracing::debug!(worker = self.index, pid, "worker spawned");
        self.spawned_at = Some(now);
        self.completed = 0;
        self.protocol = 0;
        self.asks.clear();
        self.batching = 0;
        self.set(State::Starting {
            pid,
            token,
            since: now,
        });
    }

    /// The process could not be spawned.
    pub fn spawn_failed(&mut self, reason: &str, now: Instant) -> Effects {
        self.start_failure(reason, now)
    }

    /// A start failed: back off, longer each time.
    fn start_failure(&mut self, reason: &str, now: Instant) -> Effects {
        self.failures += 1;
        self.last_failure = reason.to_string();
        let delay = policy::restart_backoff(self.failures);
        tracing::warn!(
            worker = self.index,
            failures = self.failures,
            delay_ms = delay.as_millis() as u64,
            reason,
            "worker failed to start; backing off"
        );
        self.set(State::Backoff { until: now + delay });
        vec![Effect::StartFailed]
    }

    /// The starting worker completed its handshake, speaking `protocol`. With `keep` false (the
    /// pool is stopping, or the slot was scaled away meanwhile) it gets the termination frame
    /// at once.
    pub fn greeted(
        &mut self,
        link: L,
        protocol: u32,
        now: Instant,
        keep: bool,
        limits: &SlotLimits,
    ) -> Effects {
        let State::Starting { pid, .. } = self.state else {
            return Vec::new();
        };
        tracing::info!(worker = self.index, pid, protocol, "worker ready");
        self.protocol = protocol;
        self.set(State::Ready {
            pid,
            link,
            inflight: VecDeque::new(),
            sent: 0,
            done: 0,
            held: None,
            stalled: false,
        });
        if keep {
            return Vec::new();
        }
        self.retire(Replacement::Stop, now, limits)
    }

    // ----- work --------------------------------------------------------------------------

    /// Hands a job to a ready worker (check [`Slot::has_room`] first); gives it back if the
    /// slot is not ready.
    pub fn assign(&mut self, mut job: Job, now: Instant) -> Result<(), Job> {
        match &mut self.state {
            State::Ready { inflight, sent, .. } => {
                *sent += 1;
                job.chunks = 0;
                inflight.push_back(Running {
                    job,
                    started: now,
                    batched: false,
                });
                Ok(())
            }
            _ => Err(job),
        }
    }

    /// Whether the worker was killed for breaking the protocol. Nothing it sent after the
    /// fault is trusted, not even frames that arrived in the same read: its results and
    /// chunks are ignored, and what it held is settled as the fault (the suspect charged, the
    /// bystanders re-queued), exactly as if the frames had never come.
    fn faulted(&self) -> bool {
        matches!(
            &self.state,
            State::Dying {
                cause: Cause::Protocol(_),
                ..
            } | State::Exited {
                end: End::Killed(Cause::Protocol(_)),
                ..
            }
        )
    }

    /// A chunk for task `task` arrived; counted on the task like a result, from the same
    /// states (a chunk sent before the worker died still stands: it was written).
    pub fn on_chunk(&mut self, task: u64) -> ChunkFor {
        if self.faulted() {
            return ChunkFor::Ignored;
        }
        let inflight = match &mut self.state {
            State::Ready { inflight, .. }
            | State::Retiring { inflight, .. }
            | State::Leaving { inflight, .. }
            | State::Dying { inflight, .. }
            | State::Exited { inflight, .. } => inflight,
            State::Exiting { .. } => return ChunkFor::NotHeld,
            _ => return ChunkFor::Ignored,
        };
        let Some(running) = inflight.iter_mut().find(|r| r.job.id == task) else {
            return ChunkFor::NotHeld;
        };
        let job = &mut running.job;
        let index = job.chunks;
        job.chunks = job.chunks.saturating_add(1);
        ChunkFor::Task {
            submission: job.submission,
            seq: job.seq,
            attempt: job.attempts,
            index,
        }
    }

    /// A result for task `task` arrived. Results count from a worker that is retiring, being
    /// killed or has exited (they were sent before it died), unless it was killed for a
    /// protocol fault (see [`Slot::faulted`]).
    pub fn on_done(&mut self, task: u64, now: Instant, limits: &SlotLimits) -> Done {
        if self.faulted() {
            return Done::Ignored;
        }
        let (pid, inflight) = match &mut self.state {
            State::Ready { pid, inflight, .. }
            | State::Retiring { pid, inflight, .. }
            | State::Leaving { pid, inflight, .. }
            | State::Dying { pid, inflight, .. }
            | State::Exited { pid, inflight, .. } => (*pid, inflight),
            State::Exiting { .. } => return Done::NotHeld,
            _ => return Done::Ignored,
        };
        let Some(pos) = inflight.iter().position(|r| r.job.id == task) else {
            return Done::NotHeld;
        };
        let Some(running) = batch::remove(inflight, pos) else {
            return Done::NotHeld;
        };
        if !self.asks.is_empty() {
            // A cancel asked of the worker is answered (a withdrawal still is not: its
            // `Kept` follows).
            self.asks
                .retain(|a| a.id != task || a.kind != asks::AskKind::Cancel);
        }
        if pos == 0 {
            // The worker moves on to the next task now.
            if let Some(next) = inflight.front_mut() {
                next.started = now;
            }
        }
        self.failures = 0;
        self.total_tasks += 1;
        self.completed += 1;
        let mut worn_out = false;
        let mut emptied = false;
        match &mut self.state {
            State::Ready { done, stalled, .. } => {
                // Its head is answered: the worker is moving again.
                *stalled &= pos != 0;
                *done += 1;
                worn_out = limits.max_tasks.is_some_and(|m| *done >= m);
            }
            State::Retiring { inflight, .. } => emptied = inflight.is_empty(),
            _ => {}
        }
        let effects = if worn_out {
            self.retire(Replacement::MaxTasks, now, limits)
        } else if emptied {
            self.exit_now(now, limits);
            vec![Effect::Shutdown]
        } else {
            Vec::new()
        };
        Done::Task {
            running,
            pid,
            effects,
        }
    }

    // ----- retiring and killing ----------------------------------------------------------

    /// Takes a ready worker out of rotation for `reason`; it gets the termination frame once
    /// everything it holds is answered (at once if idle), and its exit is graceful.
    pub fn retire(&mut self, reason: Replacement, now: Instant, limits: &SlotLimits) -> Effects {
        match self.take() {
            State::Ready {
                pid,
                link,
                inflight,
                held,
                ..
            } => {
                if reason != Replacement::Stop {
                    tracing::info!(worker = self.index, pid, %reason, "recycling worker");
                }
                let idle = inflight.is_empty();
                self.set(State::Retiring {
                    pid,
                    link,
                    inflight,
                    reason,
                    held,
                });
                if idle {
                    self.exit_now(now, limits);
                    return vec![Effect::Shutdown];
                }
                Vec::new()
            }
            other => {
                self.state = other;
                Vec::new()
            }
        }
    }

    /// Retiring and holding nothing: the termination frame goes out (the caller sends it).
    fn exit_now(&mut self, now: Instant, limits: &SlotLimits) {
        if let State::Retiring {
            pid, link, reason, ..
        } = self.take()
        {
            self.set(State::Exiting {
                pid,
                link,
                link_open: true,
                deadline: now + limits.exit_timeout,
                reason,
            });
        }
    }

    /// The pool is stopping gracefully and everything is answered: every worker gets the
    /// termination frame; a starting one gets it once it is ready (see [`Slot::greeted`]), a
    /// slot in backoff stays empty.
    pub fn stop(&mut self, now: Instant, limits: &SlotLimits) -> Effects {
        match &self.state {
            State::Ready { .. } => self.retire(Replacement::Stop, now, limits),
            State::Retiring { inflight, .. } if inflight.is_empty() => {
                self.exit_now(now, limits);
                vec![Effect::Shutdown]
            }
            State::Backoff { .. } => {
                self.set(State::Stopped);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Kills the worker's process group for `cause`; its exit status arrives later and
    /// settles its work. A slot in backoff killed for a stop just stays empty.
    /// Marks task `task` cancelled if this worker holds it, so that whatever ends it (its
    /// result, the worker's death, a stop) records it as `cancelled`. Returns `None` if it
    /// is not held here, else whether the worker still runs and must be stopped
    /// ([`Slot::kill`] with [`Cause::Cancelled`]); a worker already dying needs nothing more.
    pub fn cancel(&mut self, task: u64) -> Option<bool> {
        let (inflight, alive) = match &mut self.state {
            State::Ready { inflight, .. }
            | State::Retiring { inflight, .. }
            | State::Leaving { inflight, .. } => (inflight, true),
            State::Dying { inflight, .. } | State::Exited { inflight, .. } => (inflight, false),
            _ => return None,
        };
        let running = inflight.iter_mut().find(|r| r.job.id == task)?;
        running.job.cancelled = true;
        Some(alive)
    }

    /// The id of the job this worker holds for event `seq` of `submission`, if any.
    pub fn holds(&self, submission: crate::job::SubmissionId, seq: u64) -> Option<u64> {
        let inflight = match &self.state {
            State::Ready { inflight, .. }
            | State::Retiring { inflight, .. }
            | State::Leaving { inflight, .. }
            | State::Dying { inflight, .. }
            | State::Exited { inflight, .. } => inflight,
            _ => return None,
        };
        inflight
            .iter()
            .find(|r| r.job.submission == submission && r.job.seq == seq)
            .map(|r| r.job.id)
    }

    pub fn kill(&mut self, cause: Cause) -> Effects {
        let (pid, inflight, link_open) = match self.take() {
            State::Starting { pid, .. } => (pid, VecDeque::new(), false),
            State::Ready { pid, inflight, .. } | State::Retiring { pid, inflight, .. } => {
                (pid, inflight, true)
            }
            State::Exiting { pid, link_open, .. } => (pid, VecDeque::new(), link_open),
            State::Leaving {
                pid,
                inflight,
                link_open,
                ..
            } => (pid, inflight, link_open),
            State::Backoff { .. } if cause == Cause::Stop => return Vec::new(),
            other => {
                self.state = other;
                return Vec::new();
            }
        };
        self.set(State::Dying {
            pid,
            inflight,
            cause,
            link_open,
        });
        vec![Effect::Kill(pid)]
    }

    // ----- the end of a process ----------------------------------------------------------

    /// The link reader reached the end of the socket (after every frame it delivered), with a
    /// protocol fault if the stream was broken.
    pub fn on_link_lost(
        &mut self,
        fault: Option<String>,
        now: Instant,
        keep: bool,
        limits: &SlotLimits,
    ) -> Effects {
        match (&mut self.state, fault) {
            (State::Exited { .. }, _) => self.settle(now, keep, limits),
            (
                State::Dying { link_open, .. }
                | State::Exiting { link_open, .. }
                | State::Leaving { link_open, .. },
                None,
            ) => {
                // Expected: it is being killed, or is exiting after the termination frame.
                *link_open = false;
                Vec::new()
            }
            (State::Dying { link_open, .. }, Some(_)) => {
                *link_open = false;
                Vec::new()
            }
            (_, Some(fault)) => {
                tracing::warn!(
                    worker = self.index,
                    pid = self.pid(),
                    "protocol violation: {fault}; killing worker"
                );
                self.kill_after_link_lost(Cause::Protocol(fault))
            }
            (State::Ready { .. } | State::Retiring { .. }, None) => {
                self.leave(now, limits, false);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A write to the worker's link failed: the process is most likely exiting (see
    /// [`Slot::leave`]); what it sent before still arrives on the link.
    pub fn on_write_failed(&mut self, now: Instant, limits: &SlotLimits) {
        self.leave(now, limits, true);
    }

    /// The link of a ready or retiring worker ended, or could not be written: the process is
    /// most likely exiting. It gets the exit timeout to do so, so that its own exit status,
    /// not herd's SIGKILL, decides what is recorded (see [`State::Leaving`]).
    fn leave(&mut self, now: Instant, limits: &SlotLimits, link_open: bool) {
        match self.take() {
            State::Ready { pid, inflight, .. } | State::Retiring { pid, inflight, .. } => {
                tracing::debug!(
                    worker = self.index,
                    pid,
                    "worker link ended; awaiting its exit"
                );
                self.set(State::Leaving {
                    pid,
                    inflight,
                    deadline: now + limits.exit_timeout,
                    link_open,
                });
            }
            other => self.state = other,
        }
    }

    fn kill_after_link_lost(&mut self, cause: Cause) -> Effects {
        let effects = self.kill(cause);
        if let State::Dying { link_open, .. } = &mut self.state {
            *link_open = false;
        }
        effects
    }

    /// The process exited. If its link is still open, results it sent before dying may be on
    /// their way: wait for the link's end (up to [`LINK_DRAIN`]) before settling.
    pub fn on_exit(
        &mut self,
        exit: Exit,
        now: Instant,
        keep: bool,
        limits: &SlotLimits,
    ) -> Effects {
        let (pid, inflight, end, link_open, link) = match self.take() {
            State::Starting { pid, .. } => (pid, VecDeque::new(), End::NeverConnected, false, None),
            State::Ready {
                pid,
                inflight,
                link,
                ..
            }
            | State::Retiring {
                pid,
                inflight,
                link,
                ..
            } => (pid, inflight, End::Crashed, true, Some(link)),
            State::Exiting {
                pid,
                link_open,
                reason,
                link,
                ..
            } => (
                pid,
                VecDeque::new(),
                End::Graceful(reason),
                link_open,
                Some(link),
            ),
            // Its link was dropped with its Ready state, as a killed worker's is.
            State::Leaving {
                pid,
                inflight,
                link_open,
                ..
            } => (pid, inflight, End::Crashed, link_open, None),
            State::Dying {
                pid,
                inflight,
                cause,
                link_open,
            } => (pid, inflight, End::Killed(cause), link_open, None),
            other => {
                self.state = other;
                return Vec::new();
            }
        };
        match exit {
            Exit::Code(code) => tracing::info!(worker = self.index, pid, code, "worker exited"),
            Exit::Signal(sig) => {
                tracing::info!(worker = self.index, pid, signal = %signal_name(sig), "worker exited")
            }
        }
        self.set(State::Exited {
            pid,
            exit,
            inflight,
            end,
            deadline: now + LINK_DRAIN,
            since: now,
            link,
        });
        if link_open {
            return Vec::new();
        }
        self.settle(now, keep, limits)
    }

    /// Decides what an exit means for the work the worker held and for the slot.
    fn settle(&mut self, now: Instant, keep: bool, limits: &SlotLimits) -> Effects {
        let State::Exited {
            pid,
            exit,
            inflight,
            end,
            ..
        } = self.take()
        else {
            return Vec::new();
        };
        self.set(State::Stopped);
        let i = self.index;
        let mut effects = Vec::new();
        if let End::Graceful(reason) = end {
            if keep {
                tracing::info!(
                    worker = i,
                    pid,
                    %reason,
                    "worker recycled; starting its replacement"
                );
                effects.push(Effect::Replaced {
                    reason,
                    pid,
                    detail: format!(
                        "worker {i} (pid {pid}) recycled ({reason}), {}",
                        exit.what()
                    ),
                });
                effects.push(Effect::Spawn);
            }
            return effects;
        }
        let what = exit.what();
        let (kind, message) = match &end {
            End::NeverConnected => (
                ErrorKind::Crashed,
                format!("worker {i} (pid {pid}) {what} without connecting to herd"),
            ),
            // herd's own SIGKILL is not how it ended: it had stopped talking to herd.
            End::Killed(Cause::LinkLost) if exit == Exit::Signal(nix::libc::SIGKILL) => (
                ErrorKind::Crashed,
                format!(
                    "worker {i} (pid {pid}) closed its connection to herd but did not exit \
                     within {}, so herd killed it",
                    humantime::format_duration(limits.exit_timeout)
                ),
            ),
            End::Crashed | End::Killed(Cause::LinkLost) | End::Graceful(_) => {
                (ErrorKind::Crashed, format!("worker {i} (pid {pid}) {what}"))
            }
            End::Killed(Cause::Timeout) => (
                ErrorKind::Timeout,
                format!(
                    "attempt exceeded the {} deadline; worker {i} (pid {pid}) was killed",
                    humantime::format_duration(limits.timeout.unwrap_or_default())
                ),
            ),
            End::Killed(Cause::Protocol(fault)) => (
                ErrorKind::Protocol,
                format!("worker {i} (pid {pid}) broke the protocol: {fault}"),
            ),
            End::Killed(Cause::StartFailed(why)) => (ErrorKind::Crashed, why.clone()),
            End::Killed(Cause::Held) => (
                ErrorKind::Rejected,
                format!(
                    "its submitter did not read its chunks for {} while other work waited \
                     for worker {i} (pid {pid}), which was stopped",
                    humantime::format_duration(crate::backlog::HELD_LIMIT)
                ),
            ),
            End::Killed(Cause::Deadline) => (
                ErrorKind::Deadline,
                format!(
                    "{}; worker {i} (pid {pid}) was killed",
                    crate::limits::message(ErrorKind::Deadline)
                ),
            ),
            End::Killed(Cause::Stop) => (
                ErrorKind::Shutdown,
                "herd stopped before the event finished".to_string(),
            ),
            End::Killed(Cause::Cancelled(_)) => (
                ErrorKind::Cancelled,
                format!("cancelled; worker {i} (pid {pid}) was stopped"),
            ),
        };
        let held_work = !inflight.is_empty();
        // An ambiguous death (several tasks unanswered, see `crate::blame`) is charged to none
        // of them, and not to the workers either: at most one per poison task, whose solo
        // reruns follow. The breaker counts the deaths of a task running alone.
        let ambiguous = crate::blame::ambiguous(kind, &inflight);
        if held_work {
            effects.push(Effect::Settle {
                inflight,
                kind,
                message: message.clone(),
            });
        }
        if !keep {
            return effects;
        }
        if end == End::Killed(Cause::Stop) {
            // It overran its exit timeout after the termination frame; the slot still wants a
            // worker.
            self.restarts += 1;
            effects.push(Effect::Replaced {
                reason: Replacement::ExitTimeout,
                pid,
                detail: format!(
                    "worker {i} (pid {pid}) did not exit after the termination frame and was killed"
                ),
            });
            effects.push(Effect::Spawn);
            return effects;
        }
        let started = !matches!(
            end,
            End::NeverConnected | End::Killed(Cause::StartFailed(_))
        );
        let reason = match &end {
            _ if !started => Replacement::StartFailure,
            End::Killed(Cause::Timeout) => Replacement::Timeout,
            End::Killed(Cause::Protocol(_)) => Replacement::Protocol,
            End::Killed(Cause::Held) => Replacement::Held,
            End::Killed(Cause::Cancelled(_)) => Replacement::Cancelled,
            End::Killed(Cause::Deadline) => Replacement::Deadline,
            _ => Replacement::Crash,
        };
        if reason.is_unexpected() {
            self.restarts += 1;
        }
        effects.push(Effect::Replaced {
            reason,
            pid,
            detail: message.clone(),
        });
        // A worker whose Hello the pool had not taken in yet when it died counts too (it
        // looks like a failed start): only a completed task shows the workers can work.
        if self.completed == 0
            && !ambiguous
            && matches!(
                end,
                End::Crashed
                    | End::Killed(Cause::LinkLost)
                    | End::NeverConnected
                    | End::Killed(Cause::StartFailed(_))
            )
        {
            effects.push(Effect::EarlyDeath {
                detail: message.clone(),
            });
        }
        if !started {
            effects.extend(self.start_failure(&message, now));
        } else if let End::Killed(Cause::Cancelled(_)) = end {
            // Stopped for a cancel, not a fault of the worker (whether or not the cancelled
            // task's result crossed the kill): replace it now, with no backoff.
            tracing::info!(worker = i, pid, "{message}; restarting");
            effects.push(Effect::Spawn);
        } else if held_work {
            // It died working: the likely culprit was a task, not the worker; replace it now.
            tracing::warn!(
                worker = i,
                pid,
                "worker lost while holding work: {message}; restarting"
            );
            effects.push(Effect::Spawn);
        } else {
            // Died idle: count it, so a worker that cannot stay up backs off.
            self.failures += 1;
            let delay = policy::restart_backoff(self.failures.saturating_sub(1));
            tracing::warn!(
                worker = i,
                pid,
                delay_ms = delay.as_millis() as u64,
                "idle worker died: {message}"
            );
            if delay.is_zero() {
                effects.push(Effect::Spawn);
            } else {
                self.set(State::Backoff { until: now + delay });
            }
        }
        effects
    }

    // ----- time --------------------------------------------------------------------------

    /// When this slot next needs [`Slot::on_deadline`].
    pub fn deadline(&self, limits: &SlotLimits) -> Option<Instant> {
        // The running task's `--timeout`, or its `--deadline` if that comes first.
        let head = |inflight: &VecDeque<Running>| {
            let head = inflight.front()?;
            let timeout = limits.timeout.map(|t| head.started + t);
            [timeout, head.job.deadline()].into_iter().flatten().min()
        };
        match &self.state {
            State::Starting { since, .. } => Some(*since + limits.start_timeout),
            State::Ready { inflight, .. } | State::Retiring { inflight, .. }
                if !self.asks.is_empty() =>
            {
                [head(inflight), self.cancel_due(limits)]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Ready { inflight, .. } | State::Retiring { inflight, .. } => head(inflight),
            State::Exiting { deadline, .. }
            | State::Leaving { deadline, .. }
            | State::Exited { deadline, .. } => Some(*deadline),
            State::Backoff { until } => Some(*until),
            State::Dying { .. } | State::Stopped => None,
        }
    }

    /// Whatever is due at `now`: a start or task timeout, an exit timeout, an exit whose
    /// link never ended, the end of a backoff.
    /// The link of an exited worker whose drain deadline has passed, for the pool to ask
    /// whether the worker's last bytes are still unread.
    pub fn overdue_drain(&self, now: Instant) -> Option<&L> {
        match &self.state {
            State::Exited {
                deadline,
                link: Some(link),
                ..
            } if *deadline <= now => Some(link),
            _ => None,
        }
    }

    /// Gives an exited worker's link another [`LINK_DRAIN`] because bytes are still unread
    /// on it (herd, not the worker, is behind), up to [`LINK_DRAIN_MAX`] after the exit.
    /// Returns whether it did.
    pub fn extend_drain(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Exited {
                deadline, since, ..
            } if now.saturating_duration_since(*since) < LINK_DRAIN_MAX => {
                *deadline = now + LINK_DRAIN;
                true
            }
            _ => false,
        }
    }

    pub fn on_deadline(&mut self, now: Instant, keep: bool, limits: &SlotLimits) -> Effects {
        if self.deadline(limits).is_none_or(|d| d > now) {
            return Vec::new();
        }
        let i = self.index;
        match &self.state {
            State::Starting { pid, .. } => {
                let why = format!(
                    "worker {i} (pid {pid}) did not complete its handshake within {}",
                    humantime::format_duration(limits.start_timeout)
                );
                tracing::warn!(worker = i, pid, "{why}; killing it");
                self.kill(Cause::StartFailed(why))
            }
            State::Ready { pid, .. } | State::Retiring { pid, .. }
                if self.cancel_due(limits).is_some_and(|d| d <= now) =>
            {
                let task = self.overdue_cancel(now, limits).unwrap_or_default();
                tracing::info!(
                    worker = i,
                    pid,
                    task,
                    "worker did not end a cancelled task within the exit timeout; killing it"
                );
                self.kill(Cause::Cancelled(task))
            }
            State::Ready { pid, inflight, .. } | State::Retiring { pid, inflight, .. } => {
                let seq = inflight.front().map(|h| h.job.seq);
                let past_deadline = inflight
                    .front()
                    .and_then(|h| h.job.deadline())
                    .is_some_and(|d| d <= now);
                if past_deadline {
                    tracing::info!(
                        worker = i,
                        pid,
                        seq,
                        "task past its deadline; killing worker"
                    );
                    return self.kill(Cause::Deadline);
                }
                tracing::warn!(worker = i, pid, seq, "task timed out; killing worker");
                self.kill(Cause::Timeout)
            }
            State::Exiting { pid, .. } => {
                tracing::warn!(
                    worker = i,
                    pid,
                    "worker did not exit after the termination frame; killing it"
                );
                self.kill(Cause::Stop)
            }
            State::Leaving { pid, .. } => {
                tracing::warn!(
                    worker = i,
                    pid,
                    "worker closed its connection but did not exit; killing it"
                );
                self.kill(Cause::LinkLost)
            }
            State::Exited { pid, .. } => {
                tracing::warn!(
                    worker = i,
                    pid,
                    "worker socket still open after its exit; settling anyway"
                );
                self.settle(now, keep, limits)
            }
            State::Backoff { .. } if keep => {
                tracing::info!(worker = i, "restarting worker after backoff");
                self.set(State::Stopped);
                vec![Effect::Spawn]
            }
            State::Backoff { .. } => {
                self.set(State::Stopped);
                Vec::new()
            }
            State::Dying { .. } | State::Stopped => Vec::new(),
        }
    }
}

mod asks;
mod batch;

pub(crate) use asks::Answer;
pub(crate) use batch::{idle_from, running_len};

#[cfg(test)]
mod asks_tests;
#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod cancel_tests;
#[cfg(test)]
mod tests;
