//! `herd`: the command line. Parses arguments, installs logging and signal forwarding, wires
//! stdin/stdout (or files) to a `herd_supervisor` pool, and maps the outcome to an exit code.

mod logging;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herd_supervisor::{Command, PoolConfig, PoolHandle, RecordWriter, Records, Submission};

use logging::LogFormat;

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
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Number of worker processes [default: number of CPUs].
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,
    /// Tasks in flight per worker; more than 1 pipelines small tasks.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    window: u32,
    /// Per-attempt deadline (e.g. 500ms, 30s); a worker past it is killed and replaced.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Extra attempts after a crash, timeout or retryable failure.
    #[arg(long, value_name = "N", default_value_t = 2)]
    retries: u32,
    /// Base delay before retrying a retryable failure; doubles per attempt, with jitter.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = parse_duration)]
    retry_backoff: Duration,
    /// Events, one per line ('-' = stdin).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Result records, JSON lines ('-' = stdout).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Replace a worker gracefully after it completed N tasks (against leaks).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tasks: Option<u64>,
    /// Replace a worker gracefully once its resident memory exceeds SIZE (e.g. 512MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_rss: Option<usize>,
    /// Also write the input line of every event whose record is not ok to FILE, so that
    /// `herd run -i FILE` can replay them.
    #[arg(long, value_name = "FILE")]
    failed: Option<PathBuf>,
    /// Write records in input order (a bounded reorder buffer holds early finishers).
    #[arg(long)]
    ordered: bool,
    /// Most events accepted but not yet answered (memory bound and reorder window)
    /// [default: max(1024, 4 x workers x window)].
    #[arg(long, value_name = "N")]
    queue: Option<usize>,
    /// Largest frame on the worker sockets; longer input lines are rejected [default: 16MiB,
    /// at most 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_frame: Option<usize>,
    /// How long workers get to exit after the termination frame before they are killed.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// How long a worker may take to start and complete its handshake.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    start_timeout: Duration,
    /// The worker command line, after `--`.
    #[arg(last = true, required = true, value_name = "WORKER_CMD")]
    command: Vec<OsString>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms or 30s: {e}"))
}

fn parse_size(s: &str) -> Result<usize, String> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = cli.log.verbose as i8 - cli.log.quiet as i8;
    if let Err(e) = logging::init(cli.log.log_format, cli.log.log_file.as_deref(), verbosity) {
        eprintln!("herd: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Cmd::Run(args) => run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("herd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = PoolConfig::new(args.command);
    if let Some(w) = args.workers {
        cfg.workers = w as usize;
    }
    cfg.window = args.window as usize;
    cfg.timeout = args.timeout;
    cfg.retries = args.retries;
    cfg.retry_backoff = args.retry_backoff;
    cfg.ordered = args.ordered;
    cfg.queue = args.queue.unwrap_or(0);
    cfg.grace = args.grace;
    cfg.start_timeout = args.start_timeout;
    cfg.max_tasks = args.max_tasks;
    cfg.max_rss = args.max_rss.map(|b| b as u64);
    if let Some(m) = args.max_frame {
        anyhow::ensure!(
            (1024..=herd_proto::MAX_FRAME_CEILING).contains(&m),
            "--max-frame must be between 1KiB and 64MiB"
        );
        cfg.max_frame = m;
    }
    // Open both ends before starting any worker, so a typo costs nothing.
    let input: Box<dyn Read + Send> = if args.input.as_os_str() == "-" {
        Box::new(io::stdin())
    } else {
        Box::new(
            File::open(&args.input)
                .with_context(|| format!("cannot open input {}", args.input.display()))?,
        )
    };
    let output: Box<dyn Write + Send> = if args.output.as_os_str() == "-" {
        Box::new(io::stdout())
    } else {
        Box::new(
            File::create(&args.output)
                .with_context(|| format!("cannot create output {}", args.output.display()))?,
        )
    };
    let failed: Option<Box<dyn Write + Send>> = match &args.failed {
        Some(path) => Some(Box::new(io::BufWriter::new(
            File::create(path)
                .with_context(|| format!("cannot create failed-events file {}", path.display()))?,
        ))),
        None => None,
    };

    let ordered = cfg.ordered;
    let max_line = cfg.max_frame.saturating_sub(32);
    let (pool, run_pool) = herd_supervisor::pool(cfg);
    let Submission { sender, records } = pool.submit(ordered);
    forward_signals(pool.clone())?;

    let reader = std::thread::Builder::new()
        .name("herd-input".into())
        .spawn(move || {
            let max_batch = sender.max_batch();
            herd_supervisor::lines::read_lines(input, max_line, max_batch, |batch| {
                sender.blocking_send(batch).is_ok()
            })
        })
        .context("cannot start the input thread")?;
    let stopper = pool.clone();
    let writer = std::thread::Builder::new()
        .name("herd-output".into())
        .spawn(move || {
            let written = write_records(output, failed, records);
            // Every record is out (or the output failed): the pool's job is done.
            stopper.command(Command::Stop {
                fast: written.is_err(),
            });
            written
        })
        .context("cannot start the output thread")?;
    drop(pool);

    // One thread runs the pool: workers' parent-death signal is tied to the spawning thread,
    // and this one lives as long as the process.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = std::time::Instant::now();
    let result = runtime.block_on(run_pool);
    drop(runtime);

    let summary = result?;
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("output thread panicked"))?;
    written.context("cannot write records")?;
    match reader.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "reading the input failed; stopped early"),
        Err(_) => tracing::error!("input thread panicked"),
    }
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        records = summary.total(),
        ok = summary.ok,
        errors = ?summary.errors,
        restarts = summary.restarts,
        recycled = summary.recycled,
        secs = format!("{secs:.3}"),
        "done"
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes record batches as JSON lines, and the inputs of failed events to `failed`; flushes
/// whenever it has caught up.
fn write_records(
    out: Box<dyn Write + Send>,
    mut failed: Option<Box<dyn Write + Send>>,
    mut records: Records,
) -> io::Result<()> {
    let mut w = RecordWriter::new(out);
    while let Some(first) = records.blocking_recv() {
        let mut next = Some(first);
        while let Some(batch) = next.take() {
            w.write(&batch)?;
            if let Some(f) = failed.as_mut() {
                let inputs = batch
                    .iter()
                    .filter(|r| !r.is_ok())
                    .filter_map(|r| r.input.as_ref());
                for input in inputs {
                    f.write_all(input)?;
                    f.write_all(b"\n")?;
                }
            }
            next = records.try_recv();
        }
        w.flush()?;
        if let Some(f) = failed.as_mut() {
            f.flush()?;
        }
    }
    Ok(())
}

/// INT/TERM: finish what was accepted, then stop; a second INT, or QUIT: stop now.
fn forward_signals(pool: PoolHandle) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGQUIT])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("herd-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                let fast = sig == SIGQUIT || (stopping && sig == SIGINT);
                tracing::info!(signal = %herd_supervisor::signal_name(sig), fast, "signal received");
                stopping = true;
                if !pool.command(Command::Stop { fast }) {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
