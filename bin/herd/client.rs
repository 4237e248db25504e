//! The daemon's clients: `herd submit`, `herd status`, `herd ctl`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use herd_proto::codec::FrameCodec;
use herd_proto::control::{Reply, Request, CONTROL_VERSION};
use herd_supervisor::control::CONTROL_MAX_FRAME;
use herd_supervisor::Input;
use serde_bytes::ByteBuf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

type Conn = Framed<UnixStream, FrameCodec<Reply, Request>>;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Events, one per line ('-' = stdin).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Result records, JSON lines ('-' = stdout); `seq` counts lines of this submission.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Records in input order.
    #[arg(long)]
    ordered: bool,
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
    Scale { workers: u32 },
    /// Rolling restart of every worker (like HUP).
    Reload,
    /// Stop the daemon: finish accepted events first (like TERM), or --fast (like QUIT).
    Stop {
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

async fn connect(path: &Path) -> anyhow::Result<Conn> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no herd daemon at {} (is `herd serve` running?)",
            path.display()
        )
    })?;
    let mut conn = Framed::new(stream, FrameCodec::new(CONTROL_MAX_FRAME));
    conn.send(Request::Hello {
        protocol: CONTROL_VERSION,
    })
    .await?;
    match conn.next().await {
        Some(Ok(Reply::Welcome { .. })) => Ok(conn),
        Some(Ok(Reply::Error(e))) => bail!("the daemon refused the connection: {e}"),
        Some(Ok(other)) => bail!("unexpected reply from the daemon: {other:?}"),
        Some(Err(e)) => bail!("bad reply from the daemon: {e}"),
        None => bail!("the daemon closed the connection"),
    }
}

/// One request, one reply.
async fn ask(path: &Path, req: Request) -> anyhow::Result<Reply> {
    let mut conn = connect(path).await?;
    conn.send(req).await?;
    match conn.next().await {
        Some(Ok(Reply::Error(e))) => bail!("{e}"),
        Some(Ok(reply)) => Ok(reply),
        Some(Err(e)) => bail!("bad reply from the daemon: {e}"),
        None => bail!("the daemon closed the connection without a reply"),
    }
}

pub fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let req = match args.action {
        Action::Scale { workers } => Request::Scale { workers },
        Action::Reload => Request::Reload,
        Action::Stop { fast } => Request::Stop { fast },
    };
    match runtime()?.block_on(ask(&args.control, req))? {
        Reply::Ok(text) => println!("ok: {text}"),
        other => bail!("unexpected reply: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let Reply::Status(json) = runtime()?.block_on(ask(&args.control, Request::Status))? else {
        bail!("unexpected reply to a status request");
    };
    if args.json {
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    let st: serde_json::Value = serde_json::from_str(&json).context("bad status object")?;
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    println!(
        "herd pid {}  up {:.0}s  {}  workers {}  queued {}  in flight {}  submissions {}",
        num(&st["pid"]),
        st["uptime_secs"].as_f64().unwrap_or(0.0),
        st["phase"].as_str().unwrap_or("?"),
        num(&st["target_workers"]),
        num(&st["queued"]),
        num(&st["inflight"]),
        num(&st["submissions"]),
    );
    let totals = st["totals"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {}", num(v)))
                .collect::<Vec<_>>()
                .join("  ")
        })
        .unwrap_or_default();
    println!("records: {totals}");
    println!(
        "\n{:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "WORKER", "PID", "STATE", "TASKS", "RESTARTS", "INFLIGHT", "RSS"
    );
    for w in st["workers"].as_array().into_iter().flatten() {
        let rss = w["rss"].as_u64().map_or("-".to_string(), |b| {
            format!("{:.1}MiB", b as f64 / 1048576.0)
        });
        let pid = w["pid"].as_u64().map_or("-".to_string(), |p| p.to_string());
        println!(
            "{:>6} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10}",
            num(&w["index"]),
            pid,
            w["state"].as_str().unwrap_or("?"),
            num(&w["tasks"]),
            num(&w["restarts"]),
            num(&w["inflight"]),
            rss
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let input = crate::open_input(&args.input)?;
    let mut output = crate::open_output(&args.output)?;
    let rt = runtime()?;
    let mut conn = rt.block_on(connect(&args.control))?;
    rt.block_on(conn.send(Request::Submit {
        ordered: args.ordered,
    }))?;

    // Lines are read on a plain thread and handed over in batches.
    let (tx, mut rx) = mpsc::channel::<Vec<Option<ByteBuf>>>(4);
    let reader = std::thread::spawn(move || {
        herd_supervisor::lines::read_lines(input, CONTROL_MAX_FRAME - 64, 1024, |batch| {
            let lines = batch
                .into_iter()
                .map(|i| match i {
                    Input::Event { payload, .. } => Some(ByteBuf::from(payload.to_vec())),
                    Input::Rejected { .. } => None,
                })
                .collect();
            tx.blocking_send(lines).is_ok()
        })
    });

    let (mut sink, mut stream) = conn.split();
    let outcome: anyhow::Result<(u64, u64)> = rt.block_on(async {
        let mut sent = 0u64;
        let mut received = 0u64;
        let mut sending = true;
        loop {
            tokio::select! {
                batch = rx.recv(), if sending => match batch {
                    Some(lines) => {
                        sent += lines.len() as u64;
                        sink.send(Request::Events(lines)).await.context("the daemon went away")?;
                    }
                    None => {
                        sending = false;
                        sink.send(Request::End).await.context("the daemon went away")?;
                    }
                },
                reply = stream.next() => match reply {
                    Some(Ok(Reply::Records(bytes))) => {
                        received += memchr::memchr_iter(b'\n', &bytes).count() as u64;
                        output.write_all(&bytes).context("cannot write records")?;
                        output.flush().context("cannot write records")?;
                    }
                    Some(Ok(Reply::Done { records })) => {
                        if records != received || sending {
                            bail!("the daemon finished after {received} records for {sent} events");
                        }
                        return Ok((sent, received));
                    }
                    Some(Ok(Reply::Error(e))) => bail!("the daemon refused the submission: {e}"),
                    Some(Ok(other)) => bail!("unexpected reply from the daemon: {other:?}"),
                    Some(Err(e)) => bail!("bad frame from the daemon: {e}"),
                    None => bail!(
                        "the daemon went away after {received} records ({sent} events sent)"
                    ),
                }
            }
        }
    });
    let (sent, received) = outcome?;
    match reader.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => bail!("reading the input failed: {e}"),
        Err(_) => bail!("input thread panicked"),
    }
    tracing::debug!(sent, received, "submission complete");
    Ok(ExitCode::SUCCESS)
}
