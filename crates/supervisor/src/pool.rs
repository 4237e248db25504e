//! The pool: the one task that owns all supervisor state — the worker slots, the queue of
//! accepted events, what each worker holds in flight, the reorder buffer and the counters.
//!
//! Everything else (link readers, process watchers, the accept loop, the caller's source, sink
//! and commands) talks to it through channels; it `select!`s over them with priority (commands,
//! exits and lost links, handshakes and timers before the flood of result frames and new
//! events). Every accepted event leaves this task as exactly one [`Record`]: the bookkeeping
//! that guarantees it is `finish`, and every path to a record goes through it.
//!
//! # Suspects and bystanders
//! A worker runs its tasks one at a time in the order sent, so when it dies or stalls the task
//! at the head of its in-flight queue is the suspect: that one is charged an attempt against
//! `retries`. The others it held were only waiting; they are re-queued without charge.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd_proto::PROTOCOL_VERSION;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::guard::Guard;
use crate::link::{Link, Outgoing, WorkerFrame};
use crate::origins::{Job, OriginId, Origins};
use crate::process::{self, Exit};
use crate::record::{ErrorKind, Record, RecordOutcome};
use crate::rendezvous::{self, Arrival, Greeting, RuntimeDir};
use crate::slot::{self, Jitter};
use crate::status::{Stats, Status, WorkerStatus};
use crate::{Command, Feed, Input, PoolError, Summary};
use tokio::sync::watch;

/// Consecutive failed starts on every slot, with no worker ever ready, that make `run` give up.
const GIVE_UP_AFTER: u32 = 3;
/// Frame overhead on top of an event's payload (variant, id, attempt, length varints).
const TASK_OVERHEAD: usize = 32;

/// A worker process incarnation: the slot it fills and which spawn of that slot it is, so
/// late messages from a dead predecessor are recognisable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerId {
    pub slot: usize,
    pub gen: u64,
}

/// What woke the pool up.
enum Wake {
    Command(Option<Command>),
    Msg(Msg),
    Arrival(Arrival),
    Tick,
    Frames(Msg),
    Feed(Option<Feed>),
}

/// What the I/O tasks tell the pool.
#[derive(Debug)]
pub(crate) enum Msg {
    Frame(WorkerId, WorkerFrame),
    Frames(WorkerId, Vec<WorkerFrame>),
    LinkLost {
        id: WorkerId,
        fault: Option<String>,
    },
    Exited {
        id: WorkerId,
        pid: u32,
        exit: Exit,
        stdout_tail: Vec<String>,
        stderr_tail: Vec<String>,
    },
}

/// A job a worker holds.
#[derive(Debug)]
struct Running {
    job: Job,
    /// When the worker (probably) started it: dispatch, or the previous task's completion.
    started: Instant,
}

/// Why the pool killed a worker; decides how the suspect's failure is recorded.
#[derive(Debug, Clone)]
enum Cause {
    Timeout,
    Protocol(String),
    /// Killed before or during its handshake (start timeout, bad credentials).
    StartFailed(String),
    /// The pool is stopping fast or the grace period ran out.
    Stop,
    /// Its socket closed but the process lingered.
    LinkLost,
}

/// A slot's lifecycle. A slot keeps its index for the life of the pool; the process in it
/// changes.
#[derive(Debug)]
enum State {
    /// Spawned, waiting for its `Hello`.
    Starting {
        pid: u32,
        token: String,
        since: Instant,
    },
    /// Handshake done; takes tasks.
    Ready {
        pid: u32,
        link: Link,
        inflight: VecDeque<Running>,
    },
    /// Takes no new tasks; gets the termination frame once `inflight` is empty, then has
    /// until `deadline` to exit.
    Draining {
        pid: u32,
        link: Link,
        inflight: VecDeque<Running>,
        deadline: Option<Instant>,
    },
    /// Killed by the pool; waiting for the exit status.
    Dying {
        pid: u32,
        inflight: VecDeque<Running>,
        cause: Cause,
    },
    /// Waiting to restart after failed starts.
    Backoff { until: Instant },
    /// Not running and not coming back (the pool is stopping).
    Stopped,
}

#[derive(Debug)]
struct Slot {
    index: usize,
    gen: u64,
    state: State,
    /// Consecutive failures without a completed task; drives the backoff.
    failures: u32,
    restarts: u64,
    /// Why the last start failed, and what the process printed (for the give-up message).
    last_failure: String,
    stdout_tail: Vec<String>,
    stderr_tail: Vec<String>,
    /// Tasks completed by the current process (for `max_tasks` recycling).
    tasks: u64,
    /// Tasks sent to the current process: with `max_tasks`, it is never sent more.
    sent: u64,
    /// Tasks completed in this slot, all processes together.
    total_tasks: u64,
    /// Why the current process is being retired gracefully, if it is.
    recycling: Option<&'static str>,
    /// Past the scaling target: once its process exits, the slot stays empty.
    retired: bool,
    /// The link reader has not reported the end of the socket yet.
    link_open: bool,
    /// An exit seen while the link was still delivering frames; settled when it closes.
    pending_exit: Option<PendingExit>,
}

/// An exit status waiting for the worker's last frames.
#[derive(Debug, Clone, Copy)]
struct PendingExit {
    pid: u32,
    exit: Exit,
    seen: Instant,
}

/// How long an exit waits for its link to report the end of the socket (only a grandchild
/// holding the socket open could make it wait that long).
const LINK_DRAIN: Duration = Duration::from_secs(1);
/// How often workers' resident memory is compared with `max_rss`.
const RSS_CHECK_EVERY: Duration = Duration::from_millis(500);

impl Slot {
    fn new(index: usize) -> Self {
        Slot {
            index,
            gen: 0,
            state: State::Stopped,
            failures: 0,
            restarts: 0,
            last_failure: String::new(),
            stdout_tail: Vec::new(),
            stderr_tail: Vec::new(),
            tasks: 0,
            sent: 0,
            total_tasks: 0,
            recycling: None,
            retired: false,
            link_open: false,
            pending_exit: None,
        }
    }

    fn state_name(&self) -> &'static str {
        match &self.state {
            State::Starting { .. } => "starting",
            State::Ready { inflight, .. } if inflight.is_empty() => "idle",
            State::Ready { .. } => "busy",
            State::Draining { .. } => "draining",
            State::Dying { .. } => "dying",
            State::Backoff { .. } => "backoff",
            State::Stopped if self.retired => "retired",
            State::Stopped => "stopped",
        }
    }

    fn has_room(&self, window: usize, max_tasks: Option<u64>) -> bool {
        matches!(&self.state, State::Ready { inflight, .. } if inflight.len() < window)
            && max_tasks.is_none_or(|m| self.sent < m)
    }

    fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Starting { pid, .. }
            | State::Ready { pid, .. }
            | State::Draining { pid, .. }
            | State::Dying { pid, .. } => Some(*pid),
            State::Backoff { .. } | State::Stopped => None,
        }
    }

    fn inflight_len(&self) -> usize {
        match &self.state {
            State::Ready { inflight, .. }
            | State::Draining { inflight, .. }
            | State::Dying { inflight, .. } => inflight.len(),
            _ => 0,
        }
    }

    fn id(&self) -> WorkerId {
        WorkerId {
            slot: self.index,
            gen: self.gen,
        }
    }
}

/// Whether the pool is still taking work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Intake closed; finishing what was accepted (until `deadline`, if any).
    Draining {
        deadline: Option<Instant>,
    },
    /// Termination frames sent or workers killed; waiting for every slot to stop.
    Stopping,
}

pub(crate) struct Pool {
    cfg: PoolConfig,
    rundir: RuntimeDir,
    slots: Vec<Slot>,
    /// Slots that should be running (scaling changes it); slots at or past it retire.
    target: usize,
    cursor: usize,
    origins: Origins,
    delayed: Vec<(Instant, Job)>,
    next_job: u64,
    phase: Phase,
    ever_ready: bool,
    announced_ready: bool,
    ready_tx: watch::Sender<Option<Vec<u32>>>,
    /// Per-worker frames gathered by one dispatch (kept to reuse the allocation).
    outgoing: Vec<Vec<Outgoing>>,
    /// Slots still to be restarted by a rolling reload, in order.
    reload_queue: VecDeque<usize>,
    next_rss_check: Instant,
    /// The time of the current wake-up.
    now: Instant,
    /// Moving average of task durations (µs), for the automatic window.
    task_ewma_us: f64,
    task_samples: u32,
    started: std::time::Instant,
    fatal: Option<PoolError>,
    summary: Summary,
    stats: Stats,
    jitter: Jitter,
    uid: u32,
    urgent_tx: mpsc::UnboundedSender<Msg>,
    frames_tx: mpsc::UnboundedSender<Msg>,
    /// Cleans up after herd if herd is killed (see `guard`); none if it could not start.
    guard: Option<Arc<Guard>>,
}

impl Pool {
    /// Runs a pool until it is stopped (a [`Command::Stop`], or every handle dropped).
    pub(crate) async fn run(
        mut cfg: PoolConfig,
        mut feed: mpsc::UnboundedReceiver<Feed>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        ready_tx: watch::Sender<Option<Vec<u32>>>,
    ) -> Result<Summary, PoolError> {
        cfg.workers = cfg.workers.max(1);
        cfg.max_frame = cfg.max_frame.clamp(1024, herd_proto::MAX_FRAME_CEILING);
        if cfg.command.is_empty() {
            return Err(PoolError::NoCommand);
        }
        let rundir =
            RuntimeDir::create(cfg.runtime_dir.as_deref()).map_err(PoolError::RuntimeDir)?;
        let listener = UnixListener::bind(rundir.socket()).map_err(PoolError::RuntimeDir)?;
        let guard = match Guard::start(rundir.dir(), rundir.socket()) {
            Ok(g) => Some(Arc::new(g)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the guard process; if herd is killed, what workers started may outlive it");
                None
            }
        };
        let (greet_tx, mut greet_rx) = mpsc::unbounded_channel();
        tokio::spawn(rendezvous::accept_loop(
            listener,
            cfg.max_frame,
            cfg.start_timeout,
            greet_tx,
        ));
        let (urgent_tx, mut urgent_rx) = mpsc::unbounded_channel();
        let (frames_tx, mut frames_rx) = mpsc::unbounded_channel();
        let seed = rendezvous::random_hex(8)
            .ok()
            .and_then(|h| u64::from_str_radix(&h, 16).ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let credits = cfg.effective_queue();
        let mut pool = Pool {
            uid: nix::unistd::getuid().as_raw(),
            target: cfg.workers,
            slots: Vec::new(),
            cfg,
            rundir,
            cursor: 0,
            origins: Origins::new(credits),
            delayed: Vec::new(),
            next_job: 0,
            phase: Phase::Running,
            ever_ready: false,
            announced_ready: false,
            ready_tx,
            outgoing: Vec::new(),
            reload_queue: VecDeque::new(),
            next_rss_check: Instant::now(),
            now: Instant::now(),
            task_ewma_us: 0.0,
            task_samples: 0,
            started: std::time::Instant::now(),
            fatal: None,
            summary: Summary::default(),
            stats: Stats::default(),
            jitter: Jitter::new(seed),
            urgent_tx,
            frames_tx,
            guard,
        };
        for i in 0..pool.target {
            pool.slots.push(Slot::new(i));
            if let Err(e) = pool.spawn(i) {
                // Nothing can work if the very first spawn fails (missing binary, no permission).
                pool.kill_all(Cause::Stop);
                return Err(e);
            }
        }

        let mut feed_open = true;
        let mut commands_open = true;
        let mut sleep = pin!(tokio::time::sleep_until(far_future()));
        let mut armed: Option<Instant> = None;

        loop {
            pool.maybe_stop();
            if pool.finished() {
                break;
            }
            let deadline = pool.next_deadline();
            if deadline != armed {
                sleep.as_mut().reset(deadline.unwrap_or_else(far_future));
                armed = deadline;
            }
            let event = tokio::select! {
                biased;
                cmd = commands.recv(), if commands_open => Wake::Command(cmd),
                Some(msg) = urgent_rx.recv() => Wake::Msg(msg),
                Some(arrival) = greet_rx.recv() => Wake::Arrival(arrival),
                () = &mut sleep, if armed.is_some() => Wake::Tick,
                Some(msg) = frames_rx.recv() => Wake::Frames(msg),
                item = feed.recv(), if feed_open => Wake::Feed(item),
            };
            // One clock read per wake-up serves every event handled in it.
            pool.now = Instant::now();
            match event {
                Wake::Command(Some(cmd)) => pool.on_command(cmd),
                Wake::Command(None) => commands_open = false,
                Wake::Msg(msg) => pool.on_msg(msg),
                Wake::Arrival(Arrival::Hello(greeting)) => pool.on_greeting(greeting),
                Wake::Arrival(Arrival::Failed { cred, problem }) => {
                    pool.on_failed_handshake(&cred, &problem)
                }
                Wake::Tick => {
                    armed = None;
                    pool.on_tick();
                }
                Wake::Frames(msg) => {
                    pool.on_msg(msg);
                    // Drain what else is ready before paying for another select.
                    for _ in 0..64 {
                        match frames_rx.try_recv() {
                            Ok(msg) => pool.on_msg(msg),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Feed(Some(item)) => {
                    pool.on_feed(item);
                    for _ in 0..64 {
                        match feed.try_recv() {
                            Ok(item) => pool.on_feed(item),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Feed(None) => {
                    // No handle left: nobody can submit or stop us any more.
                    feed_open = false;
                    if !commands_open {
                        pool.begin_stop(false);
                    }
                }
            }
            pool.dispatch();
            for origin in pool.origins.flush(pool.now, false) {
                tracing::info!(
                    submission = origin,
                    "submitter went away; its queued events are dropped"
                );
            }
        }
        pool.origins.flush(Instant::now(), true);
        tracing::debug!(socket = %pool.rundir.socket().display(), "pool stopped");
        match pool.fatal.take() {
            Some(e) => Err(e),
            None => Ok(pool.summary.clone()),
        }
    }

    // ----- intake and output -------------------------------------------------------------

    fn on_feed(&mut self, item: Feed) {
        match item {
            Feed::Open {
                origin,
                sink,
                credits,
                ordered,
            } => {
                tracing::debug!(submission = origin, "submission opened");
                self.origins.open(origin, sink, credits, ordered);
            }
            Feed::Events { origin, batch } => self.accept(origin, batch),
            Feed::End { origin } => self.origins.end(origin),
        }
    }

    fn accept(&mut self, origin: OriginId, batch: Vec<Input>) {
        if !self.origins.contains(origin) {
            return;
        }
        self.origins.accepted(origin, batch.len());
        let running = self.phase == Phase::Running;
        let limit = self.cfg.max_frame.saturating_sub(TASK_OVERHEAD);
        let mut refused = Vec::new();
        let mut jobs = Vec::with_capacity(batch.len());
        for input in batch {
            match input {
                Input::Event { seq, payload } if running && payload.len() <= limit => {
                    jobs.push(Job {
                        id: self.next_job,
                        origin,
                        seq,
                        payload,
                        attempts: 0,
                        charged: 0,
                    });
                    self.next_job += 1;
                }
                Input::Event { seq, payload } if running => {
                    let why = format!(
                        "event of {} bytes exceeds the frame limit of {} bytes",
                        payload.len(),
                        self.cfg.max_frame
                    );
                    refused.push((seq, ErrorKind::Rejected, why, Some(payload)));
                }
                Input::Event { seq, payload } => {
                    let why = "herd is stopping and takes no new events".to_string();
                    refused.push((seq, ErrorKind::Shutdown, why, Some(payload)));
                }
                Input::Rejected { seq, reason } => {
                    refused.push((seq, ErrorKind::Rejected, reason, None));
                }
            }
        }
        self.origins.extend(origin, jobs.into_iter());
        for (seq, kind, message, input) in refused {
            let len = input.as_ref().map_or(0, Bytes::len);
            self.emit(
                origin,
                Record {
                    seq,
                    attempts: 0,
                    outcome: RecordOutcome::Err { kind, message },
                    input,
                },
                len,
            );
        }
    }

    /// The one exit of an event from the pool. `input_len` is its payload's length (what its
    /// submitter was charged).
    fn emit(&mut self, origin: OriginId, record: Record, input_len: usize) {
        match record.error_kind() {
            None => self.summary.ok += 1,
            Some(kind) => *self.summary.errors.entry(kind.as_str()).or_default() += 1,
        }
        self.origins.emit(origin, record, input_len);
    }

    fn fail(&mut self, job: Job, kind: ErrorKind, message: String) {
        let len = job.payload.len();
        self.emit(
            job.origin,
            Record {
                seq: job.seq,
                attempts: job.attempts,
                outcome: RecordOutcome::Err { kind, message },
                input: Some(job.payload),
            },
            len,
        );
    }

    /// Puts a job back at the front of its submission's queue, unless the pool is stopping
    /// (then nothing will run it: it gets its `shutdown` record now).
    fn requeue(&mut self, job: Job) {
        if self.phase == Phase::Stopping {
            let message = "herd stopped before the event could run".to_string();
            return self.fail(job, ErrorKind::Shutdown, message);
        }
        self.origins.push_front(job);
    }

    /// Retries a job after `delay` (a retryable failure), unless the pool is stopping.
    fn retry_later(&mut self, job: Job, delay: Duration) {
        if self.phase == Phase::Stopping {
            let message = "herd stopped before the event could be retried".to_string();
            return self.fail(job, ErrorKind::Shutdown, message);
        }
        self.delayed.push((self.now + delay, job));
    }

    // ----- commands ----------------------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop { fast } => self.begin_stop(fast),
            Command::Scale(n) => self.scale(n),
            Command::ScaleBy(delta) => {
                let n = (self.target as i64 + delta).max(1) as usize;
                self.scale(n);
            }
            Command::Reload => self.reload(),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::LogStatus => self.log_status(),
        }
    }

    /// Stops taking events. Graceful: finish what was accepted (within `drain_timeout`), then
    /// terminate the workers. Fast: kill the workers and record the rest as `shutdown`.
    fn begin_stop(&mut self, fast: bool) {
        if fast {
            self.stop_fast("herd was stopped");
            return;
        }
        if self.phase == Phase::Running {
            match self.origins.unanswered() {
                0 => tracing::info!("stopping: every accepted event is answered"),
                n => tracing::info!(
                    unanswered = n,
                    grace_secs = self.cfg.drain_timeout.as_secs_f64(),
                    "stopping: finishing accepted events"
                ),
            }
            self.phase = Phase::Draining {
                deadline: Some(Instant::now() + self.cfg.drain_timeout),
            };
            self.reload_queue.clear();
        }
    }

    /// Kills every worker and records everything unfinished as `shutdown`.
    fn stop_fast(&mut self, why: &str) {
        tracing::info!("stopping now: {why}");
        self.phase = Phase::Stopping;
        self.reload_queue.clear();
        self.fail_waiting(&format!("{why} before the event ran"));
        self.kill_all(Cause::Stop);
    }

    /// Records every queued or delayed job as `shutdown`.
    fn fail_waiting(&mut self, message: &str) {
        let mut jobs = self.origins.take_all();
        jobs.extend(
            std::mem::take(&mut self.delayed)
                .into_iter()
                .map(|(_, j)| j),
        );
        for job in jobs {
            self.fail(job, ErrorKind::Shutdown, message.to_string());
        }
    }

    // ----- the stop protocol -------------------------------------------------------------

    /// Moves to `Stopping` once nothing accepted is left to run, and to a fast stop once the
    /// drain deadline has passed.
    fn maybe_stop(&mut self) {
        let Phase::Draining { deadline } = self.phase else {
            return;
        };
        if deadline.is_some_and(|d| d <= Instant::now()) {
            self.stop_fast("the stop grace period ran out");
            return;
        }
        let busy = self.slots.iter().any(|s| s.inflight_len() > 0);
        if self.origins.queued() > 0 || !self.delayed.is_empty() || busy {
            return;
        }
        self.phase = Phase::Stopping;
        tracing::debug!("all events answered; sending termination frames");
        let grace = Instant::now() + self.cfg.grace;
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            match std::mem::replace(&mut slot.state, State::Stopped) {
                State::Ready {
                    pid,
                    mut link,
                    inflight,
                }
                | State::Draining {
                    pid,
                    mut link,
                    inflight,
                    ..
                } => {
                    link.send(&[Outgoing::Shutdown]);
                    slot.state = State::Draining {
                        pid,
                        link,
                        inflight,
                        deadline: Some(grace),
                    };
                }
                // Let it finish its handshake and get the termination frame like the others
                // (the start timeout still applies), so a normal stop kills nothing.
                starting @ State::Starting { .. } => slot.state = starting,
                other @ State::Dying { .. } => slot.state = other,
                State::Backoff { .. } | State::Stopped => {}
            }
        }
    }

    /// Sends the termination frame to a ready worker and starts its exit grace period.
    fn send_shutdown(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let State::Ready {
            pid,
            mut link,
            inflight,
        } = std::mem::replace(&mut slot.state, State::Stopped)
        {
            link.send(&[Outgoing::Shutdown]);
            slot.state = State::Draining {
                pid,
                link,
                inflight,
                deadline: Some(Instant::now() + self.cfg.grace),
            };
        }
    }

    /// The pool may exit once it is stopping, every slot has stopped, and every accepted
    /// event has its record: the count of unanswered events must be zero.
    fn finished(&mut self) -> bool {
        if self.phase != Phase::Stopping
            || !self.slots.iter().all(|s| matches!(s.state, State::Stopped))
        {
            return false;
        }
        // No worker is left to run anything still waiting.
        self.fail_waiting("herd stopped before the event could run");
        let owed = self.origins.unanswered();
        if owed > 0 {
            // Neither queued nor held by a worker: the bookkeeping lost them (a bug). Say so
            // loudly rather than exit as if every record had been written.
            let err = PoolError::Internal(format!("{owed} accepted events have no record"));
            tracing::error!(unanswered = owed, "{err}");
            self.fatal.get_or_insert(err);
        }
        true
    }

    fn kill_all(&mut self, cause: Cause) {
        for i in 0..self.slots.len() {
            self.kill(i, cause.clone());
        }
    }

    // ----- workers -----------------------------------------------------------------------

    fn spawn(&mut self, i: usize) -> Result<(), PoolError> {
        let token = rendezvous::random_hex(16).map_err(PoolError::RuntimeDir)?;
        let slot = &mut self.slots[i];
        slot.gen += 1;
        slot.link_open = false;
        slot.pending_exit = None;
        slot.tasks = 0;
        slot.sent = 0;
        let id = slot.id();
        match process::spawn_worker(
            &self.cfg,
            id,
            self.rundir.socket(),
            &token,
            &self.urgent_tx,
            self.guard.as_ref(),
        ) {
            Ok(spawned) => {
                tracing::debug!(worker = i, pid = spawned.pid, "worker spawned");
                slot.state = State::Starting {
                    pid: spawned.pid,
                    token,
                    since: Instant::now(),
                };
                Ok(())
            }
            Err(source) => {
                let program = self.cfg.program();
                if !self.ever_ready && slot.restarts == 0 {
                    return Err(PoolError::Spawn { program, source });
                }
                tracing::warn!(worker = i, program, error = %source, "cannot spawn worker");
                self.start_failed(i, &source.to_string());
                Ok(())
            }
        }
    }

    /// Puts a slot whose worker failed to start into backoff (or gives up on the pool).
    fn start_failed(&mut self, i: usize, reason: &str) {
        let slot = &mut self.slots[i];
        slot.failures += 1;
        slot.last_failure = reason.to_string();
        let delay = slot::restart_backoff(slot.failures);
        slot.state = State::Backoff {
            until: Instant::now() + delay,
        };
        tracing::warn!(
            worker = i,
            failures = slot.failures,
            delay_ms = delay.as_millis() as u64,
            reason,
            "worker failed to start; backing off"
        );
        if !self.ever_ready && self.slots.iter().all(|s| s.failures >= GIVE_UP_AFTER) {
            let slot = &self.slots[i];
            let err = PoolError::NeverReady {
                program: self.cfg.program(),
                attempts: self.slots.iter().map(|s| s.failures).sum(),
                reason: slot.last_failure.clone(),
                stdout_tail: slot.stdout_tail.clone(),
                stderr_tail: slot.stderr_tail.clone(),
            };
            // Returned from `run`: the caller reports it, once.
            self.fatal.get_or_insert(err);
            self.stop_fast("no worker could start");
        }
    }

    /// The starting slot whose spawned process `peer` is, or belongs to (a wrapper such as a
    /// shell or an interpreter launcher may fork the real worker; it stays in the process
    /// group herd created, whose id is the spawned pid).
    fn starting_slot_of(&self, peer: Option<u32>) -> Option<usize> {
        let peer = peer?;
        let group = process::process_group_of(peer);
        self.slots.iter().position(
            |s| matches!(s.state, State::Starting { pid, .. } if pid == peer || group == Some(pid)),
        )
    }

    /// A connection that failed the handshake. If it came from one of our starting workers,
    /// that worker failed to start, now: kill it and remember why. A stranger costs nothing.
    fn on_failed_handshake(&mut self, cred: &tokio::net::unix::UCred, problem: &str) {
        let peer = cred.pid().and_then(|p| u32::try_from(p).ok());
        let Some(i) = self.starting_slot_of(peer) else {
            tracing::warn!(
                peer_pid = peer,
                "handshake failed: {problem}; not one of our workers, ignored"
            );
            return;
        };
        let pid = self.slots[i].pid();
        tracing::warn!(worker = i, pid, "worker handshake failed: {problem}");
        let why = format!(
            "worker {i} (pid {}) failed its handshake: {problem}",
            pid.unwrap_or(0)
        );
        self.kill(i, Cause::StartFailed(why));
    }

    fn on_greeting(&mut self, g: Greeting) {
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
        let State::Starting { pid, ref token, .. } = self.slots[i].state else {
            return;
        };
        let problem = if g.token != *token {
            Some("it presented the wrong token".to_string())
        } else if g.protocol != PROTOCOL_VERSION {
            Some(format!(
                "it speaks protocol version {}, herd speaks {PROTOCOL_VERSION}",
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
        let slot = &mut self.slots[i];
        let link = Link::start(
            slot.id(),
            g.conn,
            self.cfg.max_frame,
            self.frames_tx.clone(),
        );
        slot.state = State::Ready {
            pid,
            link,
            inflight: VecDeque::new(),
        };
        slot.link_open = true;
        self.ever_ready = true;
        tracing::info!(worker = i, pid, "worker ready");
        if self.phase == Phase::Stopping || self.slots[i].retired {
            self.send_shutdown(i);
            return;
        }
        self.announce_ready();
        if self.reload_queue.front() == Some(&i) {
            self.reload_queue.pop_front();
            self.reload_step();
        }
    }

    /// A frame, unless its worker has been replaced since it was sent.
    fn on_frame_from(&mut self, id: WorkerId, frame: WorkerFrame) {
        if self.slots.get(id.slot).is_some_and(|s| s.gen == id.gen) {
            self.on_frame(id.slot, frame);
        }
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Frame(id, frame) => self.on_frame_from(id, frame),
            Msg::Frames(id, frames) => {
                for frame in frames {
                    // A frame can get its sender killed; the rest of its batch is then stale.
                    self.on_frame_from(id, frame);
                }
            }
            Msg::LinkLost { id, fault } => {
                if self.slots.get(id.slot).is_none_or(|s| s.gen != id.gen) {
                    return;
                }
                let slot = &mut self.slots[id.slot];
                slot.link_open = false;
                if let Some(p) = slot.pending_exit.take() {
                    return self.settle_exit(id.slot, p.pid, p.exit);
                }
                match fault {
                    Some(fault) => {
                        tracing::warn!(
                            worker = id.slot,
                            pid = slot.pid(),
                            "protocol violation: {fault}; killing worker"
                        );
                        self.kill(id.slot, Cause::Protocol(fault));
                    }
                    // Usually the process is exiting; make sure of it. Its exit status, not
                    // this EOF, decides what is recorded.
                    None => match slot.state {
                        // After the termination frame the socket closing is expected; the
                        // process (perhaps a wrapper finishing up) has its grace period.
                        State::Draining {
                            deadline: Some(_), ..
                        }
                        | State::Dying { .. } => {}
                        _ => {
                            if let Some(pid) = slot.pid() {
                                process::kill_group(pid);
                            }
                        }
                    },
                }
            }
            Msg::Exited {
                id,
                pid,
                exit,
                stdout_tail,
                stderr_tail,
            } => {
                if self.slots.get(id.slot).is_some_and(|s| s.gen == id.gen) {
                    let slot = &mut self.slots[id.slot];
                    if !stdout_tail.is_empty() || !stderr_tail.is_empty() {
                        slot.stdout_tail = stdout_tail;
                        slot.stderr_tail = stderr_tail;
                    }
                    self.on_exit(id.slot, pid, exit);
                }
            }
        }
    }

    fn on_frame(&mut self, i: usize, frame: WorkerFrame) {
        let (id, outcome) = match frame {
            WorkerFrame::Done { id, outcome } => (id, outcome),
            WorkerFrame::Heartbeat => return,
            WorkerFrame::Hello => {
                self.kill(i, Cause::Protocol("second Hello".into()));
                return;
            }
        };
        let slot = &mut self.slots[i];
        let (pid, inflight) = match &mut slot.state {
            // A worker being killed may still have sent results before it died: they count.
            State::Ready { pid, inflight, .. }
            | State::Draining { pid, inflight, .. }
            | State::Dying { pid, inflight, .. } => (*pid, inflight),
            _ => return,
        };
        let Some(pos) = inflight.iter().position(|r| r.job.id == id) else {
            self.kill(
                i,
                Cause::Protocol(format!("result for task {id}, which it does not hold")),
            );
            return;
        };
        let now = self.now;
        let Some(running) = inflight.remove(pos) else {
            return;
        };
        if pos == 0 {
            if let Some(next) = inflight.front_mut() {
                next.started = now;
            }
        }
        let micros = now.saturating_duration_since(running.started).as_micros() as u64;
        self.task_ewma_us = if self.task_samples == 0 {
            micros as f64
        } else {
            slot::ewma(self.task_ewma_us, micros as f64)
        };
        self.task_samples = self.task_samples.saturating_add(1);
        let mut job = running.job;
        match outcome {
            Ok(output) => {
                slot.failures = 0;
                self.stats.durations.observe(micros);
                let len = job.payload.len();
                self.emit(
                    job.origin,
                    Record {
                        seq: job.seq,
                        attempts: job.attempts,
                        outcome: RecordOutcome::Ok {
                            output,
                            worker: i,
                            pid,
                            micros,
                        },
                        input: None,
                    },
                    len,
                );
            }
            Err((retryable, message)) => {
                slot.failures = 0;
                self.stats.durations.observe(micros);
                job.charged += 1;
                if retryable && job.charged <= self.cfg.retries {
                    self.stats.retries += 1;
                    let delay = slot::retry_delay(
                        self.cfg.retry_backoff,
                        job.charged,
                        self.jitter.next_f64(),
                    );
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
        }
        self.after_task_done(i);
    }

    /// Counts a completed task; recycles a worker that reached `max_tasks`; a draining worker
    /// gets its termination frame once it holds nothing.
    fn after_task_done(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.tasks += 1;
        slot.total_tasks += 1;
        if self.cfg.max_tasks.is_some_and(|m| slot.tasks >= m) {
            self.recycle(i, "max-tasks");
        }
        self.after_drain_step(i);
    }

    /// A draining worker gets its termination frame once it holds nothing.
    fn after_drain_step(&mut self, i: usize) {
        if let State::Draining {
            link,
            inflight,
            deadline,
            ..
        } = &mut self.slots[i].state
        {
            if inflight.is_empty() && deadline.is_none() {
                link.send(&[Outgoing::Shutdown]);
                *deadline = Some(Instant::now() + self.cfg.grace);
            }
        }
    }

    /// Takes a ready worker out of rotation; it gets the termination frame once its in-flight
    /// tasks are answered, and is replaced when it exits.
    fn recycle(&mut self, i: usize, reason: &'static str) {
        let slot = &mut self.slots[i];
        if !matches!(slot.state, State::Ready { .. }) {
            return;
        }
        if let State::Ready {
            pid,
            link,
            inflight,
        } = std::mem::replace(&mut slot.state, State::Stopped)
        {
            tracing::info!(worker = i, pid, reason, "recycling worker");
            slot.recycling = Some(reason);
            slot.state = State::Draining {
                pid,
                link,
                inflight,
                deadline: None,
            };
        }
        // An idle worker gets its termination frame right away.
        self.after_drain_step(i);
    }

    /// Kills slot `i`'s process group; its exit status arrives later and settles its work.
    fn kill(&mut self, i: usize, cause: Cause) {
        let slot = &mut self.slots[i];
        match std::mem::replace(&mut slot.state, State::Stopped) {
            State::Starting { pid, .. } => {
                process::kill_group(pid);
                slot.state = State::Dying {
                    pid,
                    inflight: VecDeque::new(),
                    cause,
                };
            }
            State::Ready { pid, inflight, .. } | State::Draining { pid, inflight, .. } => {
                process::kill_group(pid);
                slot.state = State::Dying {
                    pid,
                    inflight,
                    cause,
                };
            }
            dying @ State::Dying { .. } => slot.state = dying,
            State::Backoff { .. } | State::Stopped => {}
        }
    }

    fn on_exit(&mut self, i: usize, pid: u32, exit: Exit) {
        let slot = &mut self.slots[i];
        match exit {
            Exit::Code(code) => tracing::info!(worker = i, pid, code, "worker exited"),
            Exit::Signal(sig) => {
                tracing::info!(worker = i, pid, signal = %process::signal_name(sig), "worker exited")
            }
        }
        if slot.link_open {
            // Results it sent before dying may still be on their way; settle after them.
            slot.pending_exit = Some(PendingExit {
                pid,
                exit,
                seen: Instant::now(),
            });
            return;
        }
        self.settle_exit(i, pid, exit);
    }

    /// Decides what an exit means for the work the worker held and for its slot.
    fn settle_exit(&mut self, i: usize, pid: u32, exit: Exit) {
        let slot = &mut self.slots[i];
        let state = std::mem::replace(&mut slot.state, State::Stopped);
        let (inflight, cause, was_up) = match state {
            State::Starting { .. } => (VecDeque::new(), None, false),
            State::Ready { inflight, .. } => (inflight, None, true),
            State::Draining {
                inflight, deadline, ..
            } => {
                if inflight.is_empty() && deadline.is_some() {
                    // The termination frame was answered: a stop, a recycling or a retirement.
                    let reason = self.slots[i].recycling.take().unwrap_or("stop");
                    if self.phase == Phase::Stopping || self.slots[i].retired {
                        return self.after_stop(i);
                    }
                    tracing::info!(
                        worker = i,
                        pid,
                        reason,
                        "worker recycled; starting its replacement"
                    );
                    self.summary.recycled += 1;
                    *self.stats.restarts.entry(reason).or_default() += 1;
                    return self.restart_now(i);
                }
                (inflight, None, true)
            }
            State::Dying {
                inflight, cause, ..
            } => {
                let up = !matches!(cause, Cause::StartFailed(_));
                (inflight, Some(cause), up)
            }
            State::Backoff { .. } | State::Stopped => return,
        };
        let held_work = !inflight.is_empty();
        let what = match exit {
            Exit::Code(c) => format!("exited with code {c}"),
            Exit::Signal(s) => format!("killed by {}", process::signal_name(s)),
        };
        let (kind, message) = match &cause {
            None if !was_up => (
                ErrorKind::Crashed,
                format!("worker {i} (pid {pid}) {what} without connecting to herd"),
            ),
            None | Some(Cause::LinkLost) => {
                (ErrorKind::Crashed, format!("worker {i} (pid {pid}) {what}"))
            }
            Some(Cause::Timeout) => (
                ErrorKind::Timeout,
                format!(
                    "attempt exceeded the {} deadline; worker {i} (pid {pid}) was killed",
                    humanize(self.cfg.timeout.unwrap_or_default())
                ),
            ),
            Some(Cause::Protocol(fault)) => (
                ErrorKind::Protocol,
                format!("worker {i} (pid {pid}) broke the protocol: {fault}"),
            ),
            Some(Cause::StartFailed(why)) => (ErrorKind::Crashed, why.clone()),
            Some(Cause::Stop) => (
                ErrorKind::Shutdown,
                "herd stopped before the event finished".into(),
            ),
        };
        self.settle_inflight(inflight, kind, &message);

        if self.phase == Phase::Stopping
            || matches!(cause, Some(Cause::Stop))
            || self.slots[i].retired
        {
            return self.after_stop(i);
        }
        let reason = match (&cause, was_up) {
            (_, false) => "start-failure",
            (Some(Cause::Timeout), _) => "timeout",
            (Some(Cause::Protocol(_)), _) => "protocol",
            _ => "crash",
        };
        *self.stats.restarts.entry(reason).or_default() += 1;
        self.summary.restarts += 1;
        self.slots[i].restarts += 1;
        self.slots[i].recycling = None;
        if !was_up {
            self.start_failed(i, &message);
        } else if held_work {
            // It died working: the likely culprit was a task, not the worker; replace now.
            tracing::warn!(
                worker = i,
                pid,
                "worker lost while holding work: {message}; restarting"
            );
            self.restart_now(i);
        } else {
            // Died idle: count it, so a worker that cannot stay up backs off.
            self.slots[i].failures += 1;
            let delay = slot::restart_backoff(self.slots[i].failures.saturating_sub(1));
            tracing::warn!(
                worker = i,
                pid,
                delay_ms = delay.as_millis() as u64,
                "idle worker died: {message}"
            );
            if delay.is_zero() {
                self.restart_now(i);
            } else {
                self.slots[i].state = State::Backoff {
                    until: Instant::now() + delay,
                };
            }
        }
    }

    fn restart_now(&mut self, i: usize) {
        if let Err(e) = self.spawn(i) {
            self.start_failed(i, &e.to_string());
        }
    }

    fn after_stop(&mut self, i: usize) {
        self.slots[i].state = State::Stopped;
    }

    /// Work a dead worker held: the suspect is charged, bystanders go back uncharged.
    fn settle_inflight(&mut self, inflight: VecDeque<Running>, kind: ErrorKind, message: &str) {
        let mut back = Vec::with_capacity(inflight.len());
        for (k, running) in inflight.into_iter().enumerate() {
            let mut job = running.job;
            if kind == ErrorKind::Shutdown {
                self.fail(job, kind, message.to_string());
                continue;
            }
            if k == 0 {
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
            } else {
                // It was only queued in the worker, never started: that dispatch was no attempt.
                job.attempts = job.attempts.saturating_sub(1);
            }
            back.push(job);
        }
        for job in back.into_iter().rev() {
            self.requeue(job);
        }
    }

    // ----- scaling, reloading, status ----------------------------------------------------

    /// Logs `ready` once, when every slot first has a worker that completed its handshake.
    fn announce_ready(&mut self) {
        if self.announced_ready {
            return;
        }
        let pids: Option<Vec<u32>> = self.slots[..self.target]
            .iter()
            .map(|s| match s.state {
                State::Ready { pid, .. } => Some(pid),
                _ => None,
            })
            .collect();
        if let Some(pids) = pids {
            self.announced_ready = true;
            tracing::debug!(?pids, "all workers ready");
            let _ = self.ready_tx.send(Some(pids));
        }
    }

    /// Grows or shrinks the pool to `n` workers. New slots start at once; surplus slots finish
    /// their in-flight tasks, get the termination frame and stay empty.
    fn scale(&mut self, n: usize) {
        let n = n.clamp(1, 4096);
        if self.phase != Phase::Running || n == self.target {
            return;
        }
        tracing::info!(from = self.target, to = n, "scaling");
        let old = self.target;
        self.target = n;
        if n > old {
            for i in old..n {
                if i == self.slots.len() {
                    self.slots.push(Slot::new(i));
                }
                self.slots[i].retired = false;
                if matches!(self.slots[i].state, State::Stopped) {
                    self.restart_now(i);
                }
            }
        } else {
            for i in n..old {
                self.slots[i].retired = true;
                self.reload_queue.retain(|&r| r != i);
                match self.slots[i].state {
                    State::Ready { .. } => self.recycle(i, "scale-down"),
                    State::Starting { .. } => self.kill(i, Cause::Stop),
                    State::Backoff { .. } => self.slots[i].state = State::Stopped,
                    _ => {}
                }
            }
        }
    }

    /// Rolling restart of every worker, one slot at a time, so capacity never drops below
    /// N-1. Each replacement is spawned from the command line again, so a new binary on disk
    /// is picked up.
    fn reload(&mut self) {
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
            match self.slots[i].state {
                State::Ready { .. } => {
                    self.recycle(i, "reload");
                    return;
                }
                // Already on its way to a fresh process; nothing to wait for.
                State::Backoff { .. } | State::Stopped | State::Dying { .. } => {
                    self.reload_queue.pop_front();
                }
                // Mid-start or mid-drain: its readiness moves the reload on.
                State::Starting { .. } | State::Draining { .. } => return,
            }
        }
        if self.reload_queue.is_empty() {
            tracing::info!("reload complete");
        }
    }

    pub(crate) fn status(&self) -> Status {
        let workers: Vec<WorkerStatus> = self
            .slots
            .iter()
            .filter(|s| !(s.retired && matches!(s.state, State::Stopped)))
            .map(|s| WorkerStatus {
                index: s.index,
                pid: s.pid(),
                state: s.state_name(),
                tasks: s.total_tasks,
                restarts: s.restarts,
                inflight: s.inflight_len(),
                rss: s.pid().and_then(process::rss_bytes),
            })
            .collect();
        let mut totals: std::collections::BTreeMap<&'static str, u64> =
            ErrorKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
        totals.insert("ok", self.summary.ok);
        for (k, v) in &self.summary.errors {
            totals.insert(k, *v);
        }
        Status {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs_f64(),
            target_workers: self.target,
            workers,
            queued: self.origins.queued() + self.delayed.len(),
            inflight: self.slots.iter().map(Slot::inflight_len).sum(),
            submissions: self.origins.len(),
            totals,
            retries: self.stats.retries,
            restarts: self.stats.restarts.clone(),
            durations: self.stats.durations.clone(),
            phase: match self.phase {
                Phase::Running => "running",
                Phase::Draining { .. } => "draining",
                Phase::Stopping => "stopping",
            },
        }
    }

    /// USR1: the state of every worker, one log line each.
    fn log_status(&self) {
        let st = self.status();
        tracing::info!(
            workers = st.workers.len(),
            queued = st.queued,
            inflight = st.inflight,
            submissions = st.submissions,
            ok = st.totals.get("ok").copied().unwrap_or(0),
            retries = st.retries,
            restarts = ?st.restarts,
            "status"
        );
        for w in &st.workers {
            tracing::info!(
                worker = w.index,
                pid = w.pid,
                state = w.state,
                tasks = w.tasks,
                inflight = w.inflight,
                restarts = w.restarts,
                rss = w.rss,
                "worker status"
            );
        }
    }

    // ----- time --------------------------------------------------------------------------

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Phase::Draining { deadline: Some(d) } = self.phase {
            consider(d);
        }
        if self.cfg.max_rss.is_some() {
            consider(self.next_rss_check);
        }
        for (t, _) in &self.delayed {
            consider(*t);
        }
        if let Some(t) = self.origins.next_flush() {
            consider(t);
        }
        for s in &self.slots {
            if let Some(p) = s.pending_exit {
                consider(p.seen + LINK_DRAIN);
            }
            match &s.state {
                State::Starting { since, .. } => consider(*since + self.cfg.start_timeout),
                State::Ready { inflight, .. } => {
                    if let (Some(t), Some(head)) = (self.cfg.timeout, inflight.front()) {
                        consider(head.started + t);
                    }
                }
                State::Draining {
                    inflight, deadline, ..
                } => {
                    if let (Some(t), Some(head)) = (self.cfg.timeout, inflight.front()) {
                        consider(head.started + t);
                    }
                    if let Some(d) = deadline {
                        consider(*d);
                    }
                }
                State::Backoff { until } => consider(*until),
                State::Dying { .. } | State::Stopped => {}
            }
        }
        next
    }

    fn on_tick(&mut self) {
        let now = self.now;
        if let Some(limit) = self.cfg.max_rss {
            if self.next_rss_check <= now {
                self.next_rss_check = now + RSS_CHECK_EVERY;
                for i in 0..self.slots.len() {
                    let State::Ready { pid, .. } = self.slots[i].state else {
                        continue;
                    };
                    if let Some(rss) = process::rss_bytes(pid).filter(|&r| r > limit) {
                        tracing::info!(
                            worker = i,
                            rss_mib = rss >> 20,
                            limit_mib = limit >> 20,
                            "worker memory over the limit"
                        );
                        self.recycle(i, "max-rss");
                    }
                }
            }
        }
        if self.delayed.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
                .into_iter()
                .partition(|(t, _)| *t <= now);
            self.delayed = later;
            for (_, job) in due.into_iter().rev() {
                self.requeue(job);
            }
        }
        for i in 0..self.slots.len() {
            if let Some(p) = self.slots[i].pending_exit {
                if p.seen + LINK_DRAIN <= now {
                    tracing::warn!(
                        worker = i,
                        pid = p.pid,
                        "worker socket still open after its exit; settling anyway"
                    );
                    self.slots[i].pending_exit = None;
                    self.slots[i].link_open = false;
                    self.settle_exit(i, p.pid, p.exit);
                }
                continue;
            }
            let timeout = self.cfg.timeout;
            let head_expired = |inflight: &VecDeque<Running>| {
                timeout.is_some_and(|t| inflight.front().is_some_and(|h| h.started + t <= now))
            };
            match &self.slots[i].state {
                State::Starting { since, pid, .. } if *since + self.cfg.start_timeout <= now => {
                    let why = format!(
                        "worker {i} (pid {pid}) did not complete its handshake within {}",
                        humanize(self.cfg.start_timeout)
                    );
                    tracing::warn!(worker = i, pid, "{why}; killing it");
                    self.kill(i, Cause::StartFailed(why));
                }
                State::Ready { inflight, pid, .. } if head_expired(inflight) => {
                    let seq = inflight.front().map(|h| h.job.seq);
                    tracing::warn!(worker = i, pid, seq, "task timed out; killing worker");
                    self.kill(i, Cause::Timeout);
                }
                State::Draining {
                    inflight,
                    deadline,
                    pid,
                    ..
                } => {
                    if head_expired(inflight) {
                        let seq = inflight.front().map(|h| h.job.seq);
                        tracing::warn!(worker = i, pid, seq, "task timed out; killing worker");
                        self.kill(i, Cause::Timeout);
                    } else if deadline.is_some_and(|d| d <= now) {
                        tracing::warn!(
                            worker = i,
                            pid,
                            "worker did not exit after the termination frame; killing it"
                        );
                        self.kill(i, Cause::Stop);
                    }
                }
                State::Backoff { until } if *until <= now => {
                    if self.phase == Phase::Stopping {
                        self.slots[i].state = State::Stopped;
                    } else {
                        tracing::info!(worker = i, "restarting worker after backoff");
                        self.restart_now(i);
                    }
                }
                _ => {}
            }
        }
    }

    // ----- dispatch ----------------------------------------------------------------------

    fn dispatch(&mut self) {
        let window = match self.cfg.window {
            0 if self.task_samples < slot::AUTO_WINDOW_WARMUP => 2,
            0 => slot::auto_window(self.task_ewma_us),
            w => w,
        };
        let now = self.now;
        let mut batches = std::mem::take(&mut self.outgoing);
        batches.resize_with(self.slots.len(), Vec::new);
        let max_tasks = self.cfg.max_tasks;
        while self.origins.queued() > 0 {
            let slots = &self.slots;
            let Some(i) = slot::pick_round_robin(slots.len(), self.cursor, |i| {
                slots[i].has_room(window, max_tasks)
            }) else {
                break;
            };
            self.cursor = i + 1;
            let Some(mut job) = self.origins.pop() else {
                break;
            };
            let slot = &mut self.slots[i];
            let State::Ready { inflight, .. } = &mut slot.state else {
                self.requeue(job);
                break;
            };
            slot.sent += 1;
            job.attempts += 1;
            batches[i].push(Outgoing::Task {
                id: job.id,
                attempt: job.attempts,
                payload: job.payload.clone(),
            });
            inflight.push_back(Running { job, started: now });
        }
        // One message per worker per wake-up, however many tasks it got.
        for (i, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let sent = match &mut self.slots[i].state {
                State::Ready { link, .. } => link.send(batch),
                _ => false,
            };
            // Cleared, not replaced: the next dispatch reuses the allocation.
            batch.clear();
            if !sent {
                // The writer is gone, so the worker is going down: its exit settles the tasks.
                self.kill(i, Cause::LinkLost);
            }
        }
        self.outgoing = batches;
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
