//! What a pool is asked to do: the worker command and the knobs of dispatch and supervision.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Default byte budget per submission (`--queue-bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

/// Configuration of one pool. Build with [`PoolConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Program and arguments of every worker.
    pub command: Vec<OsString>,
    /// Number of worker processes.
    pub workers: usize,
    /// Tasks in flight per worker; 0 (the default) adapts it to the tasks: see
    /// [`crate::policy::auto_window`].
    pub window: usize,
    /// Events accepted but not yet answered, at most. This bounds memory and is the
    /// back-pressure on the event source (and the size of the `--ordered` reorder buffer).
    pub queue: usize,
    /// Bytes of one submission held at once, at most: payloads of accepted events (kept for
    /// retries) and outputs waiting to be delivered. Intake waits while they are over it.
    pub queue_bytes: usize,
    /// Largest frame body either side may send.
    pub max_frame: usize,
    /// Per-attempt deadline.
    pub timeout: Option<Duration>,
    /// An event that waited longer than this for its first start gets an `expired` record
    /// instead of running (`--max-age`). A submission may set its own.
    pub max_age: Option<Duration>,
    /// A limit over all the attempts of one event, retries and backoff included
    /// (`--deadline`): once it passes the event gets a `deadline` record. A submission may set
    /// its own.
    pub deadline: Option<Duration>,
    /// Extra attempts after a crash, timeout or retryable failure.
    pub retries: u32,
    /// Base delay before retrying a retryable failure (doubles per attempt, with jitter).
    pub retry_backoff: Duration,
    /// How long a graceful stop may take to finish accepted events before the rest are
    /// recorded as `shutdown` (`--grace`).
    pub stop_grace: Duration,
    /// Replace a worker (gracefully, between tasks) after it completed this many tasks.
    pub max_tasks: Option<u64>,
    /// Replace a worker (gracefully, between tasks) once its resident memory exceeds this
    /// many bytes (checked twice a second).
    pub max_rss: Option<u64>,
    /// How long a worker may take from spawn to a completed handshake.
    pub start_timeout: Duration,
    /// How long a worker gets to exit after the termination frame before it is killed
    /// (`--exit-timeout`).
    pub exit_timeout: Duration,
    /// Where the private runtime directory is created (default: `$XDG_RUNTIME_DIR` or the
    /// system temp dir).
    pub runtime_dir: Option<PathBuf>,
    /// As whom, with which limits and environment workers run.
    pub launch: crate::launch::Launch,
    /// Scale between bounds instead of running `workers` (which is then ignored): see
    /// [`crate::autoscale`].
    pub autoscale: Option<crate::autoscale::AutoscaleConfig>,
    /// Attempt starts of the whole pool, at most (`--rate`); a retry is a start.
    pub rate: Option<crate::rate::Rate>,
    /// Per-key limits (`--max-inflight-per-key`, `--key-rate`): see [`crate::keys`].
    pub keys: crate::keys::KeyLimits,
    /// Batches for workers that take them (`--batch`): see [`crate::batch`]. A submission may
    /// set its own.
    pub batch: Option<crate::BatchConfig>,
}

impl PoolConfig {
    /// Defaults for everything but the command.
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            command: command.into_iter().map(Into::into).collect(),
            workers,
            window: 0,
            queue: 0,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            max_frame: herd_proto::DEFAULT_MAX_FRAME,
            timeout: None,
            max_age: None,
            deadline: None,
            retries: 2,
            retry_backoff: Duration::from_millis(100),
            stop_grace: Duration::from_secs(30),
            max_tasks: None,
            max_rss: None,
            start_timeout: Duration::from_secs(10),
            exit_timeout: Duration::from_secs(5),
            runtime_dir: None,
            launch: crate::launch::Launch::default(),
            autoscale: None,
            rate: None,
            keys: crate::keys::KeyLimits::default(),
            batch: None,
        }
    }

    /// The queue bound in effect: the configured one, or enough to keep every worker's
    /// largest window full four times over, between 1024 (so `--ordered` tolerates a slow event)
    /// and 16384.
    pub fn effective_queue(&self) -> usize {
        if self.queue > 0 {
            return self.queue;
        }
        let window = if self.window == 0 {
            crate::policy::AUTO_WINDOW_MAX
        } else {
            self.window
        };
        (self.max_workers() * window * 4).clamp(1024, 16384)
    }

    /// Workers the pool may run at most: `workers`, or the autoscaling maximum.
    pub fn max_workers(&self) -> usize {
        self.autoscale.map_or(self.workers, |a| a.max).max(1)
    }

    /// The longest event the pool takes: its frame limit less the task frame's overhead (what
    /// `herd run` and the control socket cut lines at; a longer event gets a `rejected`
    /// record).
    pub fn max_line(&self) -> usize {
        self.max_frame
            .saturating_sub(herd_proto::TASK_FRAME_OVERHEAD)
    }

    /// The program name, for messages.
    pub fn program(&self) -> String {
        self.command
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}
