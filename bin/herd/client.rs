//! The daemon's clients: `herd submit`, `herd status`, `herd ctl`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use herd_proto::control::{Reply, Request};
use herd_supervisor::client::{self, Client, Events, Records};
use tokio::sync::mpsc;

use herd_supervisor::resume::{Cut, Plan, Renumber};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    #[command(flatten)]
    io: crate::resume::IoArgs,
    #[command(flatten)]
    priority: crate::PriorityArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the status object as JSON (documented in the README) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
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
    /// Stop the daemon: finish accepted events first (like TERM), or --fast (like QUIT).
    Stop {
        /// Don't finish anything: kill the workers now and record every unfinished event as
        /// `shutdown`.
        #[arg(long)]
        fast: bool,
    },
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
        Action::Stop { fast } => Request::Stop { fast },
    };
    match runtime()?.block_on(client::ask(&args.control, &req))? {
        Reply::Ok(text) => println!("ok: {text}"),
        other => bail!("unexpected reply: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    if args.json {
        // As the daemon wrote it: the documented object, fields this herd may not know included.
        let Reply::Status(json) = rt.block_on(client::ask(&args.control, &Request::Status))? else {
            bail!("unexpected reply to a status request");
        };
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let st = rt.block_on(client::status(&args.control))?;
    println!(
        "herd pid {}  up {:.0}s  {}  workers {}  queued {}  in flight {}  submissions {}",
        st.pid, st.uptime_secs, st.phase, st.target_workers, st.queued, st.inflight, st.submissions,
    );
    // Counters as `name n  name n`.
    fn counts<K: std::fmt::Display>(m: &std::collections::BTreeMap<K, u64>) -> String {
        let parts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        parts.join("  ")
    }
    println!("records: {}", counts(&st.totals));
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
        println!(
            "autoscale {}..{}  target {}  grows {}  shrinks {}  pool rss {:.1}MiB{held}{last}",
            a.min,
            a.max,
            a.target,
            a.grows,
            a.shrinks,
            a.pool_rss as f64 / 1048576.0,
        );
    }
    if !st.queued_by_priority.is_empty() {
        let by: Vec<String> = st
            .queued_by_priority
            .iter()
            .rev()
            .map(|(p, n)| format!("{p}: {n}"))
            .collect();
        println!("queued by priority: {}", by.join("  "));
    }
    for src in &st.sources {
        let up = if src.connected {
            "connected"
        } else {
            "DISCONNECTED"
        };
        println!(
            "{}: {up}  {}\n  {}",
            src.name,
            src.detail,
            counts(&src.numbers)
        );
    }
    println!(
        "\n{:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "WORKER", "PID", "STATE", "TASKS", "RESTARTS", "INFLIGHT", "RSS"
    );
    for w in &st.workers {
        let rss = w.rss.map_or("-".to_string(), |b| {
            format!("{:.1}MiB", b as f64 / 1048576.0)
        });
        let pid = w.pid.map_or("-".to_string(), |p| p.to_string());
        println!(
            "{:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10}",
            w.index, pid, w.state, w.tasks, w.restarts, w.inflight, rss
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let plan = args.io.plan()?;
    if plan.as_ref().is_some_and(|p| p.to_run == 0) {
        tracing::info!("nothing to send: every event already has its record");
        return Ok(ExitCode::SUCCESS);
    }
    let input = crate::open_input(&args.io.input)?;
    let output = args.io.open_output(plan.as_deref())?;
    let rt = runtime()?;
    let conn = rt.block_on(Client::connect(&args.control))?;
    let (lines, received) = rt.block_on(stream(conn, input, output, &args, plan))?;
    tracing::debug!(lines, received, "submission complete");
    Ok(ExitCode::SUCCESS)
}

/// The submission proper: lines in on a thread, frames out on one task, replies in on
/// another, records out on a thread. No side waits for another: reading replies never waits
/// for events to be written, nor writing events for replies to be read. Returns the lines
/// sent and the records received.
async fn stream(
    conn: Client,
    input: Box<dyn Read + Send>,
    mut output: Box<dyn Write + Send>,
    args: &SubmitArgs,
    plan: Option<Arc<Plan>>,
) -> anyhow::Result<(u64, u64)> {
    let max_line = conn.max_line();
    let options = herd_supervisor::SubmitOptions {
        ordered: args.io.ordered,
        priority: args.priority.priority,
        line_priority: args.priority.line_priority,
        ..Default::default()
    };
    let (events, records): (Events, Records) = conn.submit(&options).await?;

    // Lines are read and encoded on a plain thread, and handed over as ready frames.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let encoder = events.encoder();
    let mut cut = plan.clone().map(Cut::new);
    let input_thread = std::thread::Builder::new()
        .name("herd-input".into())
        .spawn(move || -> anyhow::Result<u64> {
            let mut failed = None;
            let read = herd_supervisor::lines::read_lines(input, max_line, 1024, |batch| {
                // With a plan, only the lines that run are sent; the daemon numbers them densely.
                let batch = match &mut cut {
                    None => batch,
                    Some(cut) => match cut.batch(batch) {
                        Ok(kept) if kept.is_empty() => return true,
                        Ok(kept) => kept,
                        Err(e) => {
                            failed = Some(e.into());
                            return false;
                        }
                    },
                };
                match encoder.encode(&batch) {
                    Ok(frames) => tx.blocking_send(frames).is_ok(),
                    Err(e) => {
                        failed = Some(e.into());
                        false
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let read = read?;
            match &cut {
                None => Ok(read),
                Some(cut) => Ok(cut.end()?),
            }
        })
        .context("cannot start the input thread")?;
    // Records are written on a plain thread, so a slow output never holds up the socket.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(4);
    let output_thread = std::thread::Builder::new()
        .name("herd-output".into())
        .spawn(move || -> std::io::Result<()> {
            while let Some(bytes) = out_rx.blocking_recv() {
                output.write_all(&bytes)?;
                if out_rx.is_empty() {
                    output.flush()?;
                }
            }
            output.flush()
        })
        .context("cannot start the output thread")?;

    let writer = async move {
        let mut events = events;
        while let Some(frames) = rx.recv().await {
            events.send_encoded(&frames).await?;
        }
        // Our side stays open until the last record: closing it says we are gone.
        events.end().await
    };
    let mut renumber = plan.map(Renumber::new);
    let reader = async move {
        let mut records = records;
        while let Some(bytes) = records.next().await? {
            // Counted as the daemon sent them (its seqs), then renumbered.
            let bytes = match &mut renumber {
                Some(r) => r.apply(&bytes)?,
                None => bytes,
            };
            if out_tx.send(bytes).await.is_err() {
                return Ok(Err(records.received()));
            }
        }
        if renumber.as_ref().is_some_and(|r| !r.is_clean()) {
            bail!("the daemon's last record is unfinished");
        }
        // One final record per line sent; chunk lines come on top.
        Ok(Ok(records.finals()))
    };
    let mut writer = pin!(writer);
    let mut reader = pin!(reader);
    let mut writing = true;
    let outcome = loop {
        tokio::select! {
            _ = &mut writer, if writing => {
                // A failed write means the daemon is gone; the reader says so when it sees it.
                writing = false;
            }
            r = &mut reader => break r,
        }
    };
    // The reader is finished (and its sender dropped): the output thread writes what it
    // was given, also when the daemon failed us, and ends.
    let written = match output_thread.join() {
        Ok(r) => r.context("cannot write records"),
        Err(_) => Err(anyhow!("the output thread panicked")),
    };
    let received = match outcome? {
        Ok(n) => n,
        // The output failed: that thread has the reason.
        Err(n) => {
            written?;
            bail!("cannot write records (after {n})");
        }
    };
    written?;
    // `Done` comes only after the daemon read our End: every frame is out, whatever the
    // writer's state (it may not have been polled since its last write).
    let lines = match input_thread.join() {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            return Err(e.context(format!("cannot read input {}", args.io.input.display())));
        }
        Err(_) => bail!("the input thread panicked"),
    };
    if lines != received {
        bail!("the daemon finished after {received} records for {lines} lines");
    }
    Ok((lines, received))
}
