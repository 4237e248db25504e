//! The daemon's clients: `herd submit`, `herd status`, `herd ctl`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use herd_proto::control::{Reply, Request};
use herd_supervisor::client::{self, Client, SubmitError};

/// `--control`, the daemon a client talks to.
#[derive(Debug, Args)]
struct ControlArg {
    /// The daemon's control socket.
    #[arg(long = "control", value_name = "PATH")]
    path: PathBuf,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    control: ControlArg,
    #[command(flatten)]
    io: crate::resume::IoArgs,
    #[command(flatten)]
    priority: crate::PriorityArgs,
    #[command(flatten)]
    keys: crate::KeyArgs,
    /// Attempt starts of this submission's events, at most: N/s, N/m or N/h, with up to B at
    /// once after a quiet spell [default burst: 1]. A retry is a start and counts. Other
    /// submissions keep their speed while this one waits; the daemon's own --rate applies
    /// too. Change it with `herd ctl rate --submission ID`.
    #[arg(long, value_name = "N/s[,burst=B]", value_parser = crate::parse_rate)]
    rate: Option<herd_supervisor::Rate>,
    /// Print `herd: submission N` on stderr once the daemon has named this submission: the
    /// N that `herd ctl cancel --submission N SEQ` takes.
    #[arg(long)]
    print_id: bool,
    /// This submission's --max-age, in place of the daemon's: an event that waited longer
    /// than DUR for its first start gets an `expired` record instead of running.
    #[arg(long, value_name = "DUR", value_parser = crate::parse_positive_duration)]
    max_age: Option<std::time::Duration>,
    /// This submission's --deadline, in place of the daemon's: a limit over all attempts of
    /// one event, retries and backoff included, after which it gets a `deadline` record.
    #[arg(long, value_name = "DUR", value_parser = crate::parse_positive_duration)]
    deadline: Option<std::time::Duration>,
    #[command(flatten)]
    batch: crate::BatchArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    control: ControlArg,
    /// Print the status object as JSON (documented in the README) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    control: ControlArg,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Run N workers (like TTIN/TTOU, but to a number).
    Scale {
        /// Workers to run: new ones start at once; surplus ones finish the tasks they hold,
        /// get the termination frame and are not replaced.
        #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
        workers: u32,
    },
    /// Rolling restart of every worker (like HUP).
    Reload,
    /// Change a rate limit on attempt starts: the pool's (as `herd serve --rate`), or with
    /// --submission that of one open submission (its id in `herd status --json`, `rates`).
    /// A retry is a start and counts.
    Rate {
        /// N/s, N/m or N/h, with up to B at once after a quiet spell [default burst: 1];
        /// `off` for no limit.
        #[arg(value_name = "N/s[,burst=B]|off", value_parser = parse_rate_or_off)]
        rate: RateOrOff,
        /// The submission whose limit changes, instead of the pool's.
        #[arg(long, value_name = "ID")]
        submission: Option<u64>,
    },
    /// Cancel one accepted event: queued, it is removed; running, its worker stops it
    /// (protocol 3), or is stopped and replaced (older workers, or no answer within the exit
    /// timeout; the other tasks it held run elsewhere). Its record is `cancelled`. Fails if
    /// the event was already answered.
    Cancel {
        /// The submission, as `herd submit --print-id` printed it.
        #[arg(long, value_name = "ID")]
        submission: u64,
        /// The event's seq in its submission (0-based, in the order sent).
        #[arg(value_name = "SEQ")]
        seq: u64,
    },
    /// Stop the daemon: finish accepted events first (like TERM), or --fast (like QUIT).
    Stop {
        /// Don't finish anything: kill the workers now and record every unfinished event as
        /// `shutdown`.
        #[arg(long)]
        fast: bool,
    },
}

/// A rate, or `off` (`None`).
#[derive(Debug, Clone)]
struct RateOrOff(Option<herd_supervisor::Rate>);

fn parse_rate_or_off(s: &str) -> Result<RateOrOff, String> {
    if s == "off" {
        return Ok(RateOrOff(None));
    }
    crate::parse_rate(s).map(|r| RateOrOff(Some(r)))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let req = match args.action {
        Action::Scale { workers } => Request::Scale { workers },
        Action::Reload => Request::Reload,
        Action::Rate { rate, submission } => Request::Rate {
            submission,
            rate: rate.0.map(|r| r.to_string()),
        },
        Action::Stop { fast } => Request::Stop { fast },
        Action::Cancel { submission, seq } => Request::CancelIn { submission, seq },
    };
    match runtime()?.block_on(client::ask(&args.control.path, &req))? {
        Reply::Ok(text) => write_stdout(&format!("ok: {text}\n")),
        other => bail!("unexpected reply: {other:?}"),
    }
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    if args.json {
        // As the daemon wrote it: the documented object, fields this herd may not know included.
        let Reply::Status(json) = rt.block_on(client::ask(&args.control.path, &Request::Status))?
        else {
            bail!("unexpected reply to a status request");
        };
        return write_stdout(&format!("{json}\n"));
    }
    let st = rt.block_on(client::status(&args.control.path))?;
    let mut out = String::new();
    // Lines gather in `out`, written once at the end (see `write_stdout`).
    macro_rules! say {
        ($($t:tt)*) => {{
            let _ = writeln!(out, $($t)*);
        }};
    }
    say!(
        "herd pid {}  up {:.0}s  {}  workers {}  queued {}  in flight {}  submissions {}",
        st.pid,
        st.uptime_secs,
        st.phase,
        st.target_workers,
        st.queued,
        st.inflight,
        st.submissions,
    );
    // Counters as `name n  name n`.
    fn counts<K: std::fmt::Display>(m: &std::collections::BTreeMap<K, u64>) -> String {
        let parts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        parts.join("  ")
    }
    say!("records: {}", counts(&st.totals));
    if let Some(a) = &st.autoscale {
        let last = a.last.as_ref().map_or(String::new(), |last| {
            format!(
                "  last: {} -> {} ({}, {} waiting) at {:.0}s",
                last.from, last.to, last.reason, last.backlog, last.uptime_secs,
            )
        });
        let held = a
            .blocked
            .as_ref()
            .map_or(String::new(), |r| format!("  growth held: {r}"));
        say!(
            "autoscale {}..{}  target {}  grows {}  shrinks {}  pool rss {:.1}MiB{held}{last}",
            a.min,
            a.max,
            a.target,
            a.grows,
            a.shrinks,
            a.pool_rss as f64 / 1048576.0,
        );
    }
    for r in &st.rates {
        let scope = match r.scope {
            herd_supervisor::RateScope::Pool => "pool".to_owned(),
            herd_supervisor::RateScope::Submission(id) => format!("submission {id}"),
            herd_supervisor::RateScope::Key => "each key".to_owned(),
        };
        let holding = if r.holding { "  holding" } else { "" };
        say!(
            "rate {scope}: {}  delayed {}  waited {:.1}s{holding}",
            r.rate,
            r.delayed,
            r.wait_secs,
        );
    }
    if let Some(k) = &st.keys {
        let max = match k.max_inflight {
            0 => "no limit".to_string(),
            n => n.to_string(),
        };
        say!(
            "keys: {} tracked  {} parked  in flight per key: {max}",
            k.tracked,
            k.parked
        );
    }
    if st.batches > 0 {
        say!(
            "batches: {}  mean size {:.1}",
            st.batches,
            st.batch_mean_size
        );
    }
    if !st.queued_by_priority.is_empty() {
        let by: Vec<String> = st
            .queued_by_priority
            .iter()
            .rev()
            .map(|(p, n)| format!("{p}: {n}"))
            .collect();
        say!("queued by priority: {}", by.join("  "));
    }
    for src in &st.sources {
        let up = if src.connected {
            "connected"
        } else {
            "DISCONNECTED"
        };
        say!(
            "{}: {up}  {}\n  {}",
            src.name,
            src.detail,
            counts(&src.numbers)
        );
    }
    say!(
        "\n{:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "WORKER",
        "PID",
        "STATE",
        "TASKS",
        "RESTARTS",
        "INFLIGHT",
        "RSS"
    );
    for w in &st.workers {
        let rss = w.rss.map_or("-".to_string(), |b| {
            format!("{:.1}MiB", b as f64 / 1048576.0)
        });
        let pid = w.pid.map_or("-".to_string(), |p| p.to_string());
        say!(
            "{:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10}",
            w.index,
            pid,
            w.state,
            w.tasks,
            w.restarts,
            w.inflight,
            rss
        );
    }
    write_stdout(&out)
}

/// Writes a command's output to stdout. A reader that has gone (`herd status | head`) is not
/// an error: the output was for it alone.
fn write_stdout(text: &str) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let plan = args.io.plan()?;
    if plan.as_ref().is_some_and(|p| p.to_run == 0) {
        tracing::info!("nothing to send: every event already has its record");
        return Ok(ExitCode::SUCCESS);
    }
    let input = crate::open_input(&args.io.input)?;
    let output = args.io.open_output(plan.as_deref())?;
    let options = herd_supervisor::SubmitOptions {
        ordered: args.io.ordered,
        priority: args.priority.priority,
        line_priority: args.priority.line_priority,
        rate: args.rate,
        max_age: args.max_age,
        deadline: args.deadline,
        key: args.keys.source(),
        batch: args.batch.config(),
        ..Default::default()
    };
    let rt = runtime()?;
    let sent = rt.block_on(async {
        let mut client = Client::connect(&args.control.path).await?;
        if args.print_id {
            client = client.named();
        }
        client.submit_lines(input, output, &options, plan).await
    });
    match sent {
        Ok(sent) => {
            tracing::debug!(
                lines = sent.lines,
                records = sent.records,
                "submission complete"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(SubmitError::Input(e)) => {
            Err(e).with_context(|| format!("cannot read input {}", args.io.input.display()))
        }
        Err(e) => Err(e.into()),
    }
}
