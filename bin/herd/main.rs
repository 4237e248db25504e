//! `herd`: the command line. Parses arguments, installs logging and signal forwarding, wires
//! stdin/stdout (or files) to a `herd_supervisor` pool, and maps the outcome to an exit code.

mod client;
mod config;
mod docs;
mod launch;
#[cfg(feature = "nats")]
mod nats;
mod progress;
#[cfg(feature = "redis")]
mod redis;
mod resume;
mod run;
mod serve;
mod signals;
mod stdio;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use herd_supervisor::PoolConfig;

use herd_clap_toml::Expanded;
use herd_log::LogFormat;

/// herd: a supervisor that turns a stream of CPU-heavy events into results, using a pool of
/// separate worker processes that it starts, feeds, watches, restarts and stops.
#[derive(Debug, Parser)]
#[command(name = "herd", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Logging")]
struct LogArgs {
    /// Log format on stderr (or in --log-file): human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Append logs to FILE instead of stderr.
    #[arg(long, value_name = "FILE", global = true)]
    log_file: Option<PathBuf>,
    /// More log detail (-v debug, -vv trace). RUST_LOG overrides both -v and -q.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log detail (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every line of the input through a pool of workers and write one JSON result record
    /// per line; exit when all are done.
    ///
    /// Each input line (blank ones included) is one event; the record's `seq` is its 0-based
    /// line number. Records go to stdout (or --output) in completion order unless --ordered.
    /// Exit status is 0 when every event got its record, whatever the records say; non-zero
    /// only when herd itself cannot do its job (e.g. the worker program cannot start).
    /// SIGINT/SIGTERM/SIGHUP: finish what was accepted, then exit; a second SIGINT or
    /// SIGQUIT: now. SIGUSR1: status snapshot to the log; SIGUSR2: reopen the log file.
    Run(run::RunArgs),
    /// Run a pool as a long-lived daemon: events arrive through the control socket
    /// (`herd submit`) and, with --nats, from a NATS JetStream consumer that any number of
    /// daemons share; it is steered with signals, `herd ctl` and `herd status`.
    ///
    /// Signals: TERM/INT graceful stop (a second INT stops at once), QUIT fast stop, HUP
    /// rolling restart of every worker (with --config: re-read the file and apply what
    /// changed; see docs/CONFIG.md), USR1 status snapshot to the log, USR2 reopen the log
    /// file, TTIN/TTOU one worker more/fewer.
    Serve(serve::ServeArgs),
    /// Stream events (lines) to a daemon and print their records as they complete.
    Submit(client::SubmitArgs),
    /// Show a daemon's workers, queue and totals.
    Status(client::StatusArgs),
    /// Steer a daemon: scale, reload, stop.
    Ctl(client::CtlArgs),
    /// Check a configuration file (see docs/CONFIG.md) as `herd serve --config FILE` (or
    /// `herd run`) would read it, and print every setting with where it comes from; start
    /// nothing. Exit status 0 if it is valid.
    Check(CheckArgs),
    /// Print a shell completion script for herd.
    Completions(docs::CompletionsArgs),
    /// Write docs/CLI.md and docs/man/*.1 from these definitions (for the repository).
    #[command(hide = true)]
    GenerateDocs(docs::GenerateDocsArgs),
}

/// `--config`, shared by `run` and `serve`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Configuration")]
pub struct ConfigArgs {
    /// Read options from a TOML file whose keys are these long options (`retries = 3`,
    /// `retry-backoff = "200ms"`, `env = ["A=1"]`) and `command` (the worker command as an
    /// array); the command line overrides it. `herd serve` re-reads it on HUP (see
    /// docs/CONFIG.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The configuration file to check.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Which command the file is for.
    #[arg(
        long = "for",
        value_enum,
        value_name = "COMMAND",
        default_value = "serve"
    )]
    target: CheckTarget,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CheckTarget {
    Serve,
    Run,
}

/// Priority options shared by `run` and `submit`.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Priority")]
pub struct PriorityArgs {
    /// Dispatch priority of these events, -128 to 127: higher runs first, with aging so a
    /// lower one is delayed, never starved (see docs/PRIORITIES.md).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    priority: i8,
    /// Each line starts with its own priority and a tab (`5<TAB>{...}`); herd strips it
    /// before the event goes to a worker. A line without a valid one gets a `rejected`
    /// record. Without this flag herd never looks inside a line.
    #[arg(long)]
    line_priority: bool,
}

impl PriorityArgs {
    /// Whether anything but the defaults was asked for.
    pub fn is_set(&self) -> bool {
        self.priority != 0 || self.line_priority
    }
}

/// Key options shared by `run` and `submit`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Keys")]
pub struct KeyArgs {
    /// Each event is JSON with its key at this JSON pointer (e.g. /user/id; a string is the
    /// key, another value its JSON text): --max-inflight-per-key and --key-rate apply to the
    /// events of one key. An event without the member has no key; one that is not JSON gets
    /// a `rejected` record (see docs/KEYS.md).
    #[arg(long, value_name = "POINTER", conflicts_with = "line_key", value_parser = parse_pointer)]
    key: Option<String>,
    /// Each line starts with its key and a tab (`customer-7<TAB>{...}`; with --line-priority,
    /// after the priority); herd strips it before the event goes to a worker. An empty key is
    /// no key; a line without a tab gets a `rejected` record.
    #[arg(long)]
    line_key: bool,
}

impl KeyArgs {
    /// Where the events' keys are.
    pub fn source(&self) -> herd_supervisor::KeySource {
        match (&self.key, self.line_key) {
            (Some(p), _) => herd_supervisor::KeySource::Pointer(p.as_str().into()),
            (None, true) => herd_supervisor::KeySource::Line,
            (None, false) => herd_supervisor::KeySource::None,
        }
    }
}

/// Batch options shared by `run`, `serve` (the pool's default) and `submit` (this
/// submission's).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Batches")]
pub struct BatchArgs {
    /// Up to N events in one handler call, for workers that take batches (a batch handler of
    /// the Rust SDK; others get single events as ever). Each event still gets its own record.
    /// A batch goes when full; a partial one at once to an idle worker, or after --batch-wait
    /// to a busy one (see docs/BATCHES.md). 1: no batches.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: Option<u32>,
    /// With --batch: how long a partial batch may wait for more events while its worker is
    /// busy.
    #[arg(long, value_name = "DUR", requires = "batch", default_value = "5ms", value_parser = parse_duration)]
    batch_wait: Duration,
    /// With --batch: each batch holds the events of one key only (see --key, --line-key).
    #[arg(long, requires = "batch")]
    batch_by_key: bool,
}

impl BatchArgs {
    /// The batches asked for, if any.
    pub fn config(&self) -> Option<herd_supervisor::BatchConfig> {
        self.batch.map(|max| herd_supervisor::BatchConfig {
            max,
            wait: self.batch_wait,
            by_key: self.batch_by_key,
        })
    }
}

pub fn parse_pointer(s: &str) -> Result<String, String> {
    herd_supervisor::keys::check_pointer(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// Worker and dispatch options shared by `run` and `serve`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Pool")]
pub struct PoolArgs {
    /// Number of worker processes, or MIN..MAX to autoscale between bounds: grow on a
    /// backlog, shrink after --scale-idle of spare capacity (see docs/AUTOSCALING.md) [default:
    /// number of CPUs].
    #[arg(short, long, value_name = "N|MIN..MAX", value_parser = parse_workers)]
    workers: Option<Workers>,
    /// With --workers MIN..MAX: how long spare capacity must last before one worker is
    /// retired [default: 10s].
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    scale_idle: Option<Duration>,
    /// With --workers MIN..MAX: the pool does not grow while the sum of its workers' resident
    /// memory would exceed SIZE (e.g. 2GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_pool_rss: Option<usize>,
    /// Tasks in flight per worker [default: automatic, 2 to 1024: enough to cover about 2 ms of
    /// work, from the measured task duration; 2 until 8 tasks have been measured].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65536))]
    window: Option<u32>,
    /// Per-attempt deadline (e.g. 500ms, 30s); a worker past it is killed and replaced.
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    timeout: Option<Duration>,
    /// An event that waited longer than DUR for its first start gets an `expired` record
    /// instead of running (a backlog of stale events is dropped, not worked through).
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    max_age: Option<Duration>,
    /// A limit over all attempts of one event, retries and backoff included: once DUR has
    /// passed since it was accepted it gets a `deadline` record (a running attempt's worker is
    /// killed and replaced).
    #[arg(long, value_name = "DUR", value_parser = parse_positive_duration)]
    deadline: Option<Duration>,
    /// Extra attempts after a crash, timeout or retryable failure.
    #[arg(long, value_name = "N", default_value_t = 2)]
    retries: u32,
    /// Base delay before retrying a retryable failure; doubles per attempt, with jitter, up to
    /// 32 times DUR. A worker's own retry delay (`retry_after`, protocol 3) is clamped to that.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_duration)]
    retry_backoff: Duration,
    /// Attempt starts of the whole pool, at most: N/s, N/m or N/h, with up to B at once after
    /// a quiet spell [default burst: 1]. A retry is a start and counts. Exact (GCRA): no
    /// window edge lets a double burst through (see docs/RATES.md).
    #[arg(long, value_name = "N/s[,burst=B]", value_parser = parse_rate)]
    rate: Option<herd_supervisor::Rate>,
    /// Events of one key (see --key, --line-key) holding a worker at once, at most, retries
    /// included; 1 runs each key's events one at a time in order, with parallelism across
    /// keys. A key at its limit never holds back the others (see docs/KEYS.md).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_inflight_per_key: Option<u32>,
    /// Attempt starts of each key's events, at most: as --rate, one limit per key. A
    /// throttled key never holds back the others.
    #[arg(long, value_name = "N/s[,burst=B]", value_parser = parse_rate)]
    key_rate: Option<herd_supervisor::Rate>,
    /// Replace a worker gracefully after it completed N tasks (against leaks).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tasks: Option<u64>,
    /// Replace a worker gracefully once its resident memory exceeds SIZE (e.g. 512MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_rss: Option<usize>,
    /// Most events of one submission accepted but not yet answered (memory bound,
    /// back-pressure and reorder window) [default: 4 x workers (MAX when autoscaling) x window, within 1024 to 16384;
    /// the automatic window counts as 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    queue: Option<u64>,
    /// Most bytes of one submission held at once: payloads of accepted events (kept for
    /// retries) and outputs not yet written; intake waits while they exceed it [default:
    /// 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    queue_bytes: Option<usize>,
    /// Largest frame on the worker sockets; longer events are rejected [default: 16MiB,
    /// at most 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_frame: Option<usize>,
    /// On a graceful stop, how long accepted events may take to finish before the rest are
    /// recorded as `shutdown`.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// How long workers get to exit after the termination frame before they are killed.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    exit_timeout: Duration,
    /// How long a worker may take to start and complete its handshake.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    start_timeout: Duration,
    #[command(flatten)]
    batch: BatchArgs,
    #[command(flatten)]
    launch: launch::LaunchArgs,
    /// The worker command line, after `--`.
    // No heading: the positional goes under "Arguments", not the heading of the options
    // flattened before it.
    #[arg(last = true, required = true, value_name = "WORKER_CMD", help_heading = None::<&str>)]
    command: Vec<OsString>,
}

impl PoolArgs {
    /// The pool configuration these options describe.
    pub fn config(self) -> anyhow::Result<PoolConfig> {
        let mut cfg = PoolConfig::new(self.command);
        cfg.launch = self.launch.resolve()?;
        match self.workers {
            Some(Workers::Fixed(n)) => cfg.workers = n,
            Some(Workers::Range(mut a)) => {
                if let Some(idle) = self.scale_idle {
                    a.idle = idle;
                }
                a.max_pool_rss = self.max_pool_rss.map(|b| b as u64);
                cfg.workers = a.min;
                cfg.autoscale = Some(a);
            }
            None => {}
        }
        if cfg.autoscale.is_none() {
            anyhow::ensure!(
                self.scale_idle.is_none() && self.max_pool_rss.is_none(),
                "--scale-idle and --max-pool-rss apply to an autoscaling pool: give --workers MIN..MAX"
            );
        }
        cfg.window = self.window.unwrap_or(0) as usize;
        cfg.timeout = self.timeout;
        cfg.max_age = self.max_age;
        cfg.deadline = self.deadline;
        cfg.retries = self.retries;
        cfg.retry_backoff = self.retry_backoff;
        cfg.rate = self.rate;
        cfg.keys = herd_supervisor::keys::KeyLimits {
            max_inflight: self.max_inflight_per_key.unwrap_or(0),
            rate: self.key_rate,
        };
        cfg.batch = self.batch.config();
        cfg.queue = self.queue.unwrap_or(0) as usize;
        if let Some(b) = self.queue_bytes {
            anyhow::ensure!(b >= 1024, "--queue-bytes must be at least 1KiB");
            cfg.queue_bytes = b;
        }
        cfg.stop_grace = self.grace;
        cfg.exit_timeout = self.exit_timeout;
        cfg.start_timeout = self.start_timeout;
        cfg.max_tasks = self.max_tasks;
        cfg.max_rss = self.max_rss.map(|b| b as u64);
        if let Some(m) = self.max_frame {
            anyhow::ensure!(
                (1024..=herd_proto::MAX_FRAME_CEILING).contains(&m),
                "--max-frame must be between 1KiB and 64MiB"
            );
            cfg.max_frame = m;
        }
        Ok(cfg)
    }
}

/// `--workers`: a fixed number, or autoscaling bounds.
#[derive(Debug, Clone, Copy)]
pub enum Workers {
    Fixed(usize),
    Range(herd_supervisor::AutoscaleConfig),
}

pub fn parse_workers(s: &str) -> Result<Workers, String> {
    let num = |t: &str, what: &str| -> Result<usize, String> {
        t.trim()
            .parse()
            .map_err(|_| format!("`{s}`: {what} `{t}` is not a number (expected N or MIN..MAX)"))
    };
    let Some((min, max)) = s.split_once("..") else {
        let n = num(s, "N")?;
        if !(1..=herd_supervisor::autoscale::MAX_WORKERS).contains(&n) {
            return Err(format!(
                "`{s}`: the number of workers must be between 1 and {}",
                herd_supervisor::autoscale::MAX_WORKERS
            ));
        }
        return Ok(Workers::Fixed(n));
    };
    let (min, max) = (num(min, "MIN")?, num(max, "MAX")?);
    herd_supervisor::AutoscaleConfig::new(min, max)
        .map(Workers::Range)
        .map_err(|e| format!("`{s}`: {e}"))
}

pub fn parse_rate(s: &str) -> Result<herd_supervisor::Rate, String> {
    s.parse()
        .map_err(|e: herd_supervisor::rate::ParseRateError| e.to_string())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms or 30s: {e}"))
}

/// A duration that must not be zero (a zero deadline would fail every attempt).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "`{s}` is zero; leave the option out for no deadline"
        ));
    }
    Ok(d)
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512KiB or 16MiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown size unit (use B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a command line with its `--config` file folded in.
fn parse(argv: Vec<OsString>) -> Result<(Cli, clap::ArgMatches, Expanded), String> {
    let expanded = config::LAYER
        .expand(&Cli::command(), argv)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    let mut cmd = Cli::command();
    let parsed = expanded
        .parse(cmd.clone())
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)))
        .map_err(|e| e.format(&mut cmd));
    match parsed {
        Ok((cli, m)) => Ok((cli, m, expanded)),
        Err(e) => match expanded.explain(&e) {
            Some(msg) => Err(msg),
            None => hint_worker_command(e).exit(),
        },
    }
}

/// The settings of subcommand `name` in a parse, for `herd check` and HUP.
fn settings(m: &clap::ArgMatches, name: &str) -> herd_clap_toml::Settings {
    let mut cmd = Cli::command();
    cmd.build();
    match (cmd.find_subcommand(name), m.subcommand_matches(name)) {
        (Some(sub), Some(sm)) => config::LAYER.settings(sub, sm),
        _ => Default::default(),
    }
}

/// `herd check --config FILE`: parse and check as `herd serve|run --config FILE` would.
fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let name = match args.target {
        CheckTarget::Serve => "serve",
        CheckTarget::Run => "run",
    };
    let argv = vec![
        OsString::from("herd"),
        name.into(),
        "--config".into(),
        args.config.into_os_string(),
    ];
    let (cli, m, expanded) = parse(argv).map_err(anyhow::Error::msg)?;
    match cli.command {
        Cmd::Serve(a) => drop(serve::check(a)?),
        Cmd::Run(a) => drop(a.pool.config()?),
        _ => anyhow::bail!("not a command with a configuration file"),
    }
    let mut cmd = Cli::command();
    cmd.build();
    let (Some(sub), Some(sm)) = (cmd.find_subcommand(name), m.subcommand_matches(name)) else {
        anyhow::bail!("no {name} settings");
    };
    print!("{}", expanded.report(sub, sm));
    Ok(ExitCode::SUCCESS)
}

/// What a HUP does to `herd serve --config`: parse the command line and the file again; apply
/// a valid change (in place, or rolling the workers for a new command or environment), say
/// which changed keys need a restart; refuse an invalid file, keeping what runs.
fn reloader(argv: Vec<OsString>, m: &clap::ArgMatches) -> signals::OnHup {
    let mut current = settings(m, "serve");
    Box::new(move || {
        let (cli, m) = match parse(argv.clone()) {
            Ok((cli, m, _)) => (cli, m),
            Err(e) => {
                tracing::error!(error = %e, "configuration refused; the running one stays");
                return None;
            }
        };
        let Cmd::Serve(args) = cli.command else {
            return None;
        };
        let cfg = match args.pool.config() {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "configuration refused; the running one stays"
                );
                return None;
            }
        };
        let new = settings(&m, "serve");
        let (live, restart) = config::changed(&current, &new);
        current = new;
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these keys changed but take effect only at a restart");
        }
        if live.is_empty() && restart.is_empty() {
            // As without a file: a HUP restarts the workers (e.g. for a new binary on disk).
            tracing::info!("configuration unchanged: rolling restart of the workers");
            return Some(herd_supervisor::Command::Reload);
        }
        tracing::info!(keys = ?live, "configuration changed");
        Some(herd_supervisor::Command::Reconfigure(Box::new(cfg)))
    })
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let (cli, matches, expanded) = match parse(argv.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("herd: {e}");
            return ExitCode::from(2);
        }
    };
    let verbosity = cli.log.verbose as i8 - cli.log.quiet as i8;
    let logging = match herd_log::init(cli.log.log_format, cli.log.log_file.as_deref(), verbosity) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("herd: {:#}", anyhow::Error::from(e));
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Cmd::Run(_) | Cmd::Serve(_)) {
        herd_supervisor::launch::hide_from_workers();
    }
    let result = match cli.command {
        Cmd::Run(args) => run::run(args),
        Cmd::Serve(args) => {
            let on_hup = expanded.has_file().then(|| reloader(argv, &matches));
            serve::serve(args, on_hup)
        }
        Cmd::Check(args) => check(args),
        Cmd::Submit(args) => client::submit(args),
        Cmd::Status(args) => client::status(args),
        Cmd::Ctl(args) => client::ctl(args),
        Cmd::Completions(args) => {
            docs::completions(args, Cli::command()).map(|()| ExitCode::SUCCESS)
        }
        Cmd::GenerateDocs(args) => docs::generate(args, Cli::command()).map(|()| ExitCode::SUCCESS),
    };
    // Dropping `logging` flushes the queued log lines (the summary, the error).
    match result {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` is the whole chain, each cause once: the error types do not repeat their
            // source in their own message.
            logging.exit_with_error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Clap reports a worker command typed without `--` (`herd run herd-chaos`) as a bare
/// "unexpected argument"; add a tip that shows where it goes.
fn hint_worker_command(mut err: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::UnknownArgument {
        return err;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::StyledStr(usage))) = (
        err.get(ContextKind::InvalidArg),
        err.get(ContextKind::Usage),
    ) else {
        return err;
    };
    // Only for a positional argument of a subcommand that takes a worker command.
    let usage = usage.to_string();
    let usage = usage.trim().trim_start_matches("Usage:").trim();
    let Some(prefix) = usage.strip_suffix("<WORKER_CMD>...") else {
        return err;
    };
    if arg.starts_with('-') {
        return err;
    }
    let tip = format!("the worker command goes after `--`: {prefix}{arg}");
    let mut tips = match err.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(tips)) => tips.clone(),
        _ => Vec::new(),
    };
    tips.push(tip.into());
    err.insert(ContextKind::Suggested, ContextValue::StyledStrs(tips));
    err
}

/// Events from FILE, or stdin for `-`.
pub fn open_input(path: &std::path::Path) -> anyhow::Result<Box<dyn std::io::Read + Send>> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        anyhow::ensure!(
            !stdio::was_closed(0),
            "stdin is closed, so there are no events to read: give -i FILE, or </dev/null for none"
        );
        return Ok(Box::new(std::io::stdin()));
    }
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open input {}", path.display()))?;
    Ok(Box::new(f))
}

/// Records to FILE, or stdout for `-`.
pub fn open_output(path: &std::path::Path) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        // Refused before any worker starts: the records would go nowhere and herd exit 0.
        anyhow::ensure!(
            !stdio::was_closed(1),
            "stdout is closed, so the records cannot be written: give -o FILE, or >/dev/null \
             to drop them"
        );
        return Ok(Box::new(std::io::stdout()));
    }
    let f = std::fs::File::create(path)
        .with_context(|| format!("cannot create output {}", path.display()))?;
    Ok(Box::new(f))
}

/// The closing log line of `run` and `serve`.
pub fn log_summary(summary: &herd_supervisor::Summary, secs: f64, what: &str) {
    tracing::info!(
        records = summary.total(),
        ok = summary.ok,
        // A map of counts by kind: a JSON object in JSON logs.
        errors = ?summary.errors,
        restarts = summary.restarts,
        recycled = summary.recycled,
        batches = summary.batches,
        batched_events = summary.batched_events,
        peak_rss = herd_supervisor::peak_rss_bytes(),
        secs = (secs * 1000.0).round() / 1000.0,
        dropped_log_lines = herd_log::dropped_lines(),
        "{what}"
    );
}
