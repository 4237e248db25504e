//! The pool: the one task that owns all supervisor state — the worker slots, the submissions
//! with their queues and reorder buffers, the retries waiting out their delay, and the
//! counters.
//!
//! Everything else (link readers, process watchers, the accept loop, the submitters and the
//! caller's commands) talks to it through channels; it `select!`s over them with priority:
//! commands, exits and handshakes and timers come before the flood of result frames and new
//! events. Each concern has its own file:
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | the state and the select loop |
//! | `intake.rs` | submissions opening and ending, events accepted into their queues |
//! | `dispatch.rs` | handing queued jobs to workers with room, round-robin |
//! | `breaker.rs` | the circuit breaker: workers that always die after their handshake |
//! | `lifecycle.rs` | spawning, handshakes, results, exits and carrying out slot effects; scaling and reloading |
//! | `settle.rs` | the exactly-one-record bookkeeping: every record leaves through it |
//! | `stop.rs` | graceful and fast stops, and when the pool may exit |
//! | `timers.rs` | every deadline: one place that arms them and one that fires them; the autoscaler's samples |
//! | `status.rs` | snapshots for `herd status`, USR1 and metrics |
//! | `submissions.rs` | per submission: its queued jobs, its outbox, the records it is owed |
//! | `queue.rs` | the queued jobs of every submission, by priority then round-robin |
//! | `reorder.rs` | an `--ordered` submission's reorder buffer |
//! | `rate.rs` | the rate limits on attempt starts: changes and their status |
//! | `keyed.rs` | per-key limits carried out: parking at dispatch, release at the final record, wake-ups |
//! | `withdraw.rs` | protocol 3: moving queued work away from a worker whose head task stalled |
//! | `batch.rs` | protocol 3: many queued jobs in one `Batch` frame for a worker that takes them |
//!
//! A slot's own lifecycle is the state machine in `crate::slot`; the pool only carries out
//! the effects its transitions return.

mod batch;
mod breaker;
mod cancel;
mod dispatch;
mod expiry;
mod intake;
mod keyed;
mod lifecycle;
mod queue;
mod rate;
mod reconfigure;
mod reorder;
mod settle;
mod status;
mod stop;
mod submissions;
mod timers;
mod withdraw;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::autoscale::Autoscaler;
use crate::config::PoolConfig;
use crate::guard::Guard;
use crate::job::Job;
use crate::link::Link;
use crate::msg::{Exited, FromLink};
use crate::policy::Jitter;
use crate::rendezvous::{self, Arrival, RuntimeDir};
use crate::slot::{Cause, Slot, SlotLimits};
use crate::status::Stats;
use crate::{Command, PoolError, SubmissionMsg, Summary};
use submissions::Submissions;

pub use cancel::CancelOutcome;
use settle::Retries;

/// What woke the pool up.
enum Wake {
    Command(Option<Command>),
    Exited(Exited),
    Arrival(Arrival),
    Tick,
    Link(FromLink),
    Submission(Option<SubmissionMsg>),
}

/// Whether the pool is still taking work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Intake closed; finishing what was accepted, until `deadline` (then a fast stop).
    Draining {
        deadline: Instant,
    },
    /// Termination frames sent or workers killed; waiting for every slot to stop.
    Stopping,
}

pub(crate) struct Pool {
    cfg: PoolConfig,
    limits: SlotLimits,
    rundir: RuntimeDir,
    slots: Vec<Slot<Link>>,
    /// Slots that should have a worker (scaling changes it); slots at or past it are retired
    /// once their process ends.
    target: usize,
    /// Where the round-robin resumes.
    cursor: usize,
    submissions: Submissions,
    retries: Retries,
    next_job: u64,
    phase: Phase,
    /// Some worker completed a handshake once: start failures no longer make the pool give up.
    ever_ready: bool,
    /// Workers in a row that died after their handshake without completing a task.
    early_deaths: u32,
    /// Open while workers keep dying that way (see `breaker`).
    breaker: Option<breaker::Open>,
    announced_ready: bool,
    ready_tx: watch::Sender<Option<Vec<u32>>>,
    /// Slots still to be restarted by a rolling reload, in order.
    reload_queue: std::collections::VecDeque<usize>,
    next_rss_check: Instant,
    /// The time of the current wake-up.
    now: Instant,
    /// Moving average of task durations (µs), for the automatic window.
    task_ewma_us: f64,
    task_samples: u32,
    started: std::time::Instant,
    /// Whole seconds from `started` to `now` (the status history's bucket clock).
    uptime_secs: u64,
    fatal: Option<PoolError>,
    summary: Summary,
    stats: Stats,
    jitter: Jitter,
    uid: u32,
    exited_tx: mpsc::UnboundedSender<Exited>,
    link_tx: mpsc::UnboundedSender<FromLink>,
    /// Cleans up after herd if herd is killed (see `guard`); none if it could not start.
    guard: Option<Arc<Guard>>,
    /// With `--workers MIN..MAX`: the rule's state, sampled every `autoscale::TICK`.
    autoscaler: Option<Autoscaler>,
    next_autoscale: Instant,
    /// The autoscaler's clock starts here.
    epoch: Instant,
    /// Sum of the workers' resident memory and how many it covers, measured every
    /// `POOL_RSS_EVERY` while there is a pool memory ceiling.
    pool_rss: Option<(u64, usize)>,
    next_pool_rss: Instant,
    /// The pool's `--rate` limit on attempt starts, if any.
    rate: Option<crate::rate::Limiter>,
    /// When a start held back by a rate limit may happen (set by each dispatch).
    rate_wake: Option<Instant>,
    /// Some accepted event has a `--max-age` or `--deadline` (see `expiry`).
    time_limited: bool,
    next_sweep: Instant,
    /// Per-key limits and the events they park (see `crate::keys`).
    keys: crate::keys::Keys,
    /// Jobs a key released, newest first, for `requeue_released`.
    released: Vec<Job>,
    /// `accept`'s buffer, empty between calls (kept for its capacity).
    intake_jobs: Vec<Job>,
    /// Look for stalled workers at the next wake-up (see `withdraw`).
    stall_check: bool,
    /// When to look next, while some worker's head could stall (see `withdraw`).
    stall_timer: Option<Instant>,
    /// The largest batch any submission or the pool asked for (a batching worker's window is
    /// at least twice its batch: see `batch`).
    batch_ceiling: u32,
    /// While a dispatch holds a partial batch back for a busy worker: when it goes anyway.
    batch_due: Option<Instant>,
    /// Per slot, whether this dispatch held a partial batch back for it (kept to reuse the
    /// allocation; empty while nothing batches).
    batch_held: Vec<bool>,
}

impl Pool {
    /// Runs a pool until it is stopped (a [`Command::Stop`], or every handle dropped).
    pub(crate) async fn run(
        mut cfg: PoolConfig,
        mut submissions: mpsc::UnboundedReceiver<SubmissionMsg>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        ready_tx: watch::Sender<Option<Vec<u32>>>,
        stopping_tx: watch::Sender<bool>,
    ) -> Result<Summary, PoolError> {
        if let Some(a) = cfg.autoscale {
            cfg.workers = a.min;
        }
        cfg.workers = cfg.workers.max(1);
        cfg.max_frame = cfg.max_frame.clamp(1024, herd_proto::MAX_FRAME_CEILING);
        if cfg.command.is_empty() {
            return Err(PoolError::NoCommand);
        }
        let rundir = RuntimeDir::create(cfg.runtime_dir.as_deref(), cfg.launch.user.as_ref())
            .map_err(PoolError::RuntimeDir)?;
        let listener = rundir.bind().map_err(PoolError::RuntimeDir)?;
        let guard = match Guard::start(rundir.dir(), rundir.socket()) {
            Ok(g) => Some(Arc::new(g)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the guard process; if herd is killed, what workers started may outlive it");
                None
            }
        };
        cfg.launch.log(rundir.dir());
        let (arrival_tx, mut arrival_rx) = mpsc::unbounded_channel();
        tokio::spawn(rendezvous::accept_loop(
            listener,
            cfg.max_frame,
            cfg.start_timeout,
            arrival_tx,
        ));
        let (exited_tx, mut exited_rx) = mpsc::unbounded_channel();
        let (link_tx, mut link_rx) = mpsc::unbounded_channel();
        let seed = rendezvous::random_hex(8)
            .ok()
            .and_then(|h| u64::from_str_radix(&h, 16).ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let credits = cfg.effective_queue();
        let cfg_autoscale = cfg.autoscale;
        let now = Instant::now();
        let cfg_keys = cfg.keys;
        let mut pool = Pool {
            limits: SlotLimits {
                start_timeout: cfg.start_timeout,
                timeout: cfg.timeout,
                exit_timeout: cfg.exit_timeout,
                max_tasks: cfg.max_tasks,
            },
            // Workers must connect as the user they were started as.
            uid: cfg
                .launch
                .user
                .as_ref()
                .map_or_else(|| nix::unistd::getuid().as_raw(), |u| u.uid),
            target: cfg.workers,
            slots: Vec::new(),
            cfg,
            rundir,
            cursor: 0,
            submissions: Submissions::new(credits),
            retries: Retries::default(),
            next_job: 0,
            phase: Phase::Running,
            ever_ready: false,
            early_deaths: 0,
            breaker: None,
            announced_ready: false,
            ready_tx,
            reload_queue: std::collections::VecDeque::new(),
            next_rss_check: now,
            now,
            task_ewma_us: 0.0,
            task_samples: 0,
            started: std::time::Instant::now(),
            uptime_secs: 0,
            fatal: None,
            summary: Summary::default(),
            stats: Stats::default(),
            jitter: Jitter::new(seed),
            exited_tx,
            link_tx,
            guard,
            autoscaler: cfg_autoscale.map(Autoscaler::new),
            next_autoscale: now + crate::autoscale::TICK,
            epoch: now,
            pool_rss: None,
            next_pool_rss: now,
            rate: None,
            rate_wake: None,
            time_limited: false,
            next_sweep: now,
            keys: crate::keys::Keys::new(cfg_keys),
            released: Vec::new(),
            intake_jobs: Vec::new(),
            stall_check: false,
            stall_timer: None,
            batch_ceiling: 0,
            batch_due: None,
            batch_held: Vec::new(),
        };
        pool.batch_ceiling = pool.cfg.batch.map_or(0, |b| b.max);
        pool.rate = pool.cfg.rate.map(crate::rate::Limiter::new);
        for i in 0..pool.target {
            pool.slots.push(Slot::new(i));
            if let Err(source) = pool.spawn(i) {
                // Nothing can work if the very first spawn fails (missing binary, no permission).
                for k in 0..pool.slots.len() {
                    pool.kill(k, Cause::Stop);
                }
                return Err(PoolError::Spawn {
                    program: pool.cfg.program(),
                    source,
                });
            }
        }

        let mut submissions_open = true;
        let mut commands_open = true;
        let mut sleep = pin!(tokio::time::sleep_until(far_future()));
        let mut armed: Option<Instant> = None;

        loop {
            pool.now = Instant::now();
            pool.maybe_stop();
            if pool.phase != Phase::Running {
                // Sources that fetch (a broker consumer) stop taking events now.
                stopping_tx.send_if_modified(|s| !std::mem::replace(s, true));
            }
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
                Some(exited) = exited_rx.recv() => Wake::Exited(exited),
                Some(arrival) = arrival_rx.recv() => Wake::Arrival(arrival),
                () = &mut sleep, if armed.is_some() => Wake::Tick,
                Some(msg) = link_rx.recv() => Wake::Link(msg),
                msg = submissions.recv(), if submissions_open => Wake::Submission(msg),
            };
            // One clock read per wake-up serves every event handled in it.
            pool.now = Instant::now();
            pool.uptime_secs = pool
                .now
                .into_std()
                .saturating_duration_since(pool.started)
                .as_secs();
            match event {
                Wake::Command(Some(cmd)) => pool.on_command(cmd),
                Wake::Command(None) => commands_open = false,
                Wake::Exited(exited) => pool.on_exited(exited),
                Wake::Arrival(Arrival::Hello(greeting)) => pool.on_greeting(greeting),
                Wake::Arrival(Arrival::Failed { cred, problem }) => {
                    pool.on_failed_handshake(&cred, &problem)
                }
                Wake::Tick => {
                    armed = None;
                    pool.on_tick();
                }
                Wake::Link(msg) => {
                    pool.on_link(msg);
                    // Drain what else is ready before paying for another select.
                    for _ in 0..64 {
                        match link_rx.try_recv() {
                            Ok(msg) => pool.on_link(msg),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Submission(Some(msg)) => {
                    pool.on_submission(msg);
                    for _ in 0..64 {
                        match submissions.try_recv() {
                            Ok(msg) => pool.on_submission(msg),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Submission(None) => {
                    // No handle left: nobody can submit or stop us any more.
                    submissions_open = false;
                    if !commands_open {
                        pool.begin_stop(false);
                    }
                }
            }
            pool.release_held();
            pool.shed_while_open();
            pool.move_stalled_work();
            pool.dispatch();
            for id in pool.submissions.flush(pool.now, false) {
                pool.drop_parked_of(id);
                tracing::info!(
                    submission = id,
                    "submitter went away; its queued events are dropped"
                );
            }
        }
        pool.submissions.flush(Instant::now(), true);
        tracing::debug!(socket = %pool.rundir.socket().display(), "pool stopped");
        match pool.fatal.take() {
            Some(e) => Err(e),
            None => Ok(pool.summary.clone()),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Stop { fast } => self.begin_stop(fast),
            Command::Scale(n) => self.scale(n),
            Command::ScaleBy(delta) => {
                let n = (self.target as i64 + delta).max(1) as usize;
                self.scale(n);
            }
            Command::Reload => self.reload(),
            Command::Reconfigure(cfg) => self.reconfigure(*cfg),
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::LogStatus => self.log_status(),
            Command::SetRate {
                submission,
                rate,
                reply,
            } => {
                let found = match submission {
                    None => {
                        self.set_rate(rate);
                        true
                    }
                    Some(id) => self.set_submission_rate(id, rate),
                };
                let _ = reply.send(found);
            }
        }
    }

    /// Whether slot `i` should have a worker: the pool is not stopping and the slot is within
    /// the scaling target.
    fn keep(&self, i: usize) -> bool {
        self.phase != Phase::Stopping && i < self.target
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
