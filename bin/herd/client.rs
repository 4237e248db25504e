//! The daemon's clients: `herd submit`, `herd status`, `herd ctl`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use herd_proto::codec::{encode_frame, FrameCodec};
use herd_proto::control::{
    Reply, Request, RequestRef, CONTROL_VERSION, EVENTS_FRAME_OVERHEAD, EVENT_LINE_OVERHEAD,
    REPLY_MAX_FRAME, REQUEST_MAX_FRAME,
};
use herd_supervisor::Input;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use crate::resume::{Plan, Renumber};

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
    /// Continue an interrupted submission: append to the existing --output, sending only the
    /// lines that have no final record in it yet (a torn last line is cut off first); records
    /// keep their line numbers as `seq`. Needs -i FILE and -o FILE.
    #[arg(long)]
    resume: bool,
    /// Send only the lines whose final record in RECORDS (an earlier --output for the same
    /// input) is not ok; their records keep their line numbers as `seq`.
    #[arg(long, value_name = "RECORDS")]
    retry_failed: Option<PathBuf>,
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

/// How long `herd status` and `herd ctl` wait for the daemon's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of lines per `Events` frame (a single longer line gets a frame of its own).
const BATCH_BYTES: usize = 64 * 1024;

type Replies = FramedRead<OwnedReadHalf, FrameCodec<Reply, Request>>;

/// A connection the daemon has welcomed.
struct Conn {
    rd: Replies,
    wr: OwnedWriteHalf,
    /// Largest `Events` frame the daemon reads.
    max_frame: usize,
    /// Longest line the daemon's workers take.
    max_line: usize,
}

fn frame(req: &Request) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_frame(req, &mut buf, REQUEST_MAX_FRAME).context("cannot encode a request")?;
    Ok(buf)
}

/// How long a client waits for its turn when the daemon's control connections are all in
/// use (it connects, but is not welcomed until one closes).
const TURN_TIMEOUT: Duration = Duration::from_secs(300);
/// After this long without a welcome, the client says what it waits for.
const TURN_NOTICE: Duration = Duration::from_secs(5);

/// Connects, retrying while the daemon's listen backlog is full (`EAGAIN`): a client over
/// the connection cap waits for its turn rather than fail.
async fn connect_stream(path: &Path, until: tokio::time::Instant) -> anyhow::Result<UnixStream> {
    let mut pause = Duration::from_millis(5);
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && tokio::time::Instant::now() + pause < until =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "no herd daemon at {} (is `herd serve` running?)",
                        path.display()
                    )
                })
            }
        }
    }
}

async fn connect(path: &Path) -> anyhow::Result<Conn> {
    let until = tokio::time::Instant::now() + TURN_TIMEOUT;
    let stream = connect_stream(path, until).await?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = FramedRead::new(rd, FrameCodec::new(REPLY_MAX_FRAME));
    let hello = frame(&Request::Hello {
        protocol: CONTROL_VERSION,
    })?;
    // An error reply is still worth reading when the Hello cannot be written.
    let sent = wr.write_all(&hello).await;
    // Over the connection cap, the daemon accepts us only once a connection closes.
    let mut welcome = pin!(rd.next());
    let first = match tokio::time::timeout(TURN_NOTICE, &mut welcome).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(
                control = %path.display(),
                "the daemon's control connections are all in use; waiting for a turn (at \
                 most {})",
                humantime::format_duration(TURN_TIMEOUT)
            );
            tokio::time::timeout_at(until, &mut welcome)
                .await
                .map_err(|_| {
                    anyhow!(
                        "the daemon did not take the connection within {}: its control \
                         connections stayed in use (--max-connections)",
                        humantime::format_duration(TURN_TIMEOUT)
                    )
                })?
        }
    };
    match first {
        Some(Ok(Reply::Welcome {
            protocol,
            max_frame,
            max_line,
            ..
        })) if protocol == CONTROL_VERSION => Ok(Conn {
            rd,
            wr,
            max_frame: max_frame as usize,
            max_line: max_line as usize,
        }),
        Some(Ok(Reply::Welcome { protocol, .. })) => bail!(
            "the daemon speaks control protocol {protocol} and this herd {CONTROL_VERSION}: \
             use the herd binary that matches the daemon"
        ),
        Some(Ok(Reply::Error(e))) => bail!("the daemon refused the connection: {e}"),
        Some(Ok(other)) => bail!("unexpected reply from the daemon: {other:?}"),
        Some(Err(e)) => bail!("bad reply from the daemon: {e}"),
        None => {
            sent.context("the daemon closed the connection")?;
            bail!("the daemon closed the connection")
        }
    }
}

/// One request, one reply.
async fn ask(path: &Path, req: Request) -> anyhow::Result<Reply> {
    let exchange = async {
        let mut conn = connect(path).await?;
        conn.wr
            .write_all(&frame(&req)?)
            .await
            .context("the daemon went away")?;
        match conn.rd.next().await {
            Some(Ok(Reply::Error(e))) => bail!("{e}"),
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => bail!("bad reply from the daemon: {e}"),
            None => bail!("the daemon closed the connection without a reply"),
        }
    };
    tokio::time::timeout(ASK_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("the daemon did not answer within {ASK_TIMEOUT:?}"))?
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
    let st: herd_supervisor::Status = serde_json::from_str(&json).context("bad status object")?;
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
    let plan = crate::resume::plan(&crate::resume::Options {
        input: &args.input,
        output: &args.output,
        resume: args.resume,
        retry_failed: args.retry_failed.as_deref(),
    })?
    .map(Arc::new);
    if plan.as_ref().is_some_and(|p| p.to_run == 0) {
        tracing::info!("nothing to send: every event already has its record");
        return Ok(ExitCode::SUCCESS);
    }
    let input = crate::open_input(&args.input)?;
    let output = crate::resume::open_output(&args.output, plan.as_deref())?;
    let rt = runtime()?;
    let conn = rt.block_on(connect(&args.control))?;
    let (lines, received) = rt.block_on(stream(conn, input, output, &args, plan))?;
    tracing::debug!(lines, received, "submission complete");
    Ok(ExitCode::SUCCESS)
}

/// Turns batches of lines into `Events` frames of at most `budget` bytes each (a line longer
/// than that gets a frame of its own, which the daemon's `max_frame` always allows).
struct Encoder {
    budget: usize,
    max_frame: usize,
}

impl Encoder {
    /// The frames for `batch`, back to back in one buffer.
    fn encode(&self, batch: &[Input]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut lines: Vec<Option<&serde_bytes::Bytes>> = Vec::new();
        let mut size = EVENTS_FRAME_OVERHEAD;
        for input in batch {
            let line = match input {
                Input::Event { payload, .. } => Some(serde_bytes::Bytes::new(payload)),
                Input::Rejected { .. } => None,
            };
            let cost = line.map_or(1, |l| l.len() + EVENT_LINE_OVERHEAD);
            if !lines.is_empty() && size + cost > self.budget {
                self.flush(&mut lines, &mut out)?;
                size = EVENTS_FRAME_OVERHEAD;
            }
            lines.push(line);
            size += cost;
        }
        if !lines.is_empty() {
            self.flush(&mut lines, &mut out)?;
        }
        Ok(out)
    }

    fn flush(
        &self,
        lines: &mut Vec<Option<&serde_bytes::Bytes>>,
        out: &mut Vec<u8>,
    ) -> anyhow::Result<()> {
        let req = RequestRef::Events(std::mem::take(lines));
        encode_frame(&req, out, self.max_frame).context("cannot encode a batch of lines")
    }
}

/// Counts the record lines of a submission as they arrive, and which of them are chunk
/// lines (`{"seq":N,"chunk":...`) rather than final records.
#[derive(Debug, Default)]
struct RecordLines {
    total: u64,
    chunks: u64,
    /// The start of the line in progress, when a frame ended inside it.
    head: Vec<u8>,
}

/// Enough of a line to tell a chunk line: `{"seq":`, 20 digits, `,"chunk":`.
const LINE_HEAD: usize = 36;

impl RecordLines {
    fn feed(&mut self, bytes: &[u8]) {
        // Records never contain a raw newline; a frame may end inside one.
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[start..nl];
            start = nl + 1;
            self.total += 1;
            let chunk = if self.head.is_empty() {
                is_chunk_line(line)
            } else {
                let room = LINE_HEAD.saturating_sub(self.head.len());
                self.head.extend_from_slice(&line[..line.len().min(room)]);
                let chunk = is_chunk_line(&self.head);
                self.head.clear();
                chunk
            };
            self.chunks += u64::from(chunk);
        }
        let rest = &bytes[start..];
        let room = LINE_HEAD.saturating_sub(self.head.len());
        self.head.extend_from_slice(&rest[..rest.len().min(room)]);
    }
}

fn is_chunk_line(line: &[u8]) -> bool {
    crate::resume::split_seq(line).is_some_and(|(_, rest)| rest.starts_with(b",\"chunk\":"))
}

/// The submission proper: lines in on a thread, frames out on one task, replies in on
/// another, records out on a thread. No side waits for another: reading replies never waits
/// for events to be written, nor writing events for replies to be read. Returns the lines
/// sent and the records received.
async fn stream(
    conn: Conn,
    input: Box<dyn Read + Send>,
    mut output: Box<dyn Write + Send>,
    args: &SubmitArgs,
    plan: Option<Arc<Plan>>,
) -> anyhow::Result<(u64, u64)> {
    let Conn {
        mut rd,
        mut wr,
        max_frame,
        max_line,
    } = conn;
    // Plain Submit when there is no priority to give: it works with daemons older than
    // SubmitWith too.
    let with_priority = args.priority.is_set();
    let start = if with_priority {
        Request::SubmitWith {
            ordered: args.ordered,
            priority: args.priority.priority,
            line_priority: args.priority.line_priority,
        }
    } else {
        Request::Submit {
            ordered: args.ordered,
        }
    };
    wr.write_all(&frame(&start)?)
        .await
        .context("the daemon went away")?;

    // Lines are read and encoded on a plain thread, and handed over as ready frames.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let encoder = Encoder {
        budget: BATCH_BYTES.min(max_frame),
        max_frame,
    };
    let input_plan = plan.clone();
    let input_thread = std::thread::Builder::new()
        .name("herd-input".into())
        .spawn(move || -> anyhow::Result<u64> {
            let mut failed = None;
            // With a plan, only the lines that run are sent; the daemon numbers them densely.
            let mut sent = 0u64;
            let read = herd_supervisor::lines::read_lines(input, max_line, 1024, |batch| {
                let batch = match &input_plan {
                    None => batch,
                    Some(plan) => match plan.filter(batch, &mut sent) {
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
                        failed = Some(e);
                        false
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let read = read?;
            match &input_plan {
                None => Ok(read),
                Some(plan) if read == plan.lines => Ok(sent),
                Some(plan) => bail!(
                    "the input changed while herd read it: it had {} lines at the start",
                    plan.lines
                ),
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

    let end = frame(&Request::End)?;
    let writer = async move {
        while let Some(frames) = rx.recv().await {
            wr.write_all(&frames).await?;
        }
        wr.write_all(&end).await?;
        // Our side stays open until the last record: closing it says we are gone.
        Ok::<_, std::io::Error>(wr)
    };
    let mut renumber = plan.map(Renumber::new);
    let reader = async move {
        let mut lines = RecordLines::default();
        loop {
            let received = lines.total;
            match rd.next().await {
                Some(Ok(Reply::Records(bytes))) => {
                    // Counted as the daemon sent them (its seqs), then renumbered.
                    lines.feed(&bytes);
                    let bytes = match &mut renumber {
                        Some(r) => r.apply(&bytes)?,
                        None => bytes,
                    };
                    if out_tx.send(bytes).await.is_err() {
                        return Ok(Err(lines.total));
                    }
                }
                Some(Ok(Reply::Done { records })) => {
                    if renumber.as_ref().is_some_and(|r| !r.is_clean()) {
                        bail!("the daemon's last record is unfinished");
                    }
                    if records != received {
                        bail!("the daemon sent {records} records, but {received} arrived");
                    }
                    // One final record per line sent; chunk lines come on top.
                    return Ok(Ok(received - lines.chunks));
                }
                Some(Ok(Reply::Error(e))) => bail!("{e}"),
                Some(Ok(other)) => bail!("unexpected reply from the daemon: {other:?}"),
                Some(Err(e)) => bail!("the daemon went away after {received} records: {e}"),
                None if received == 0 && with_priority => bail!(
                    "the daemon closed the connection without a record: if it is older than \
                     priorities it does not know --priority and --line-priority"
                ),
                None => bail!("the daemon went away after {received} records"),
            }
        }
    };
    let mut writer = pin!(writer);
    let mut reader = pin!(reader);
    let mut writing = true;
    let mut _open = None;
    let outcome = loop {
        tokio::select! {
            w = &mut writer, if writing => {
                writing = false;
                // A failed write means the daemon is gone; the reader says so when it sees it.
                _open = w.ok();
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
            return Err(e.context(format!("cannot read input {}", args.input.display())));
        }
        Err(_) => bail!("the input thread panicked"),
    };
    if lines != received {
        bail!("the daemon finished after {received} records for {lines} lines");
    }
    Ok((lines, received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_tell_chunk_lines_from_final_records_across_frames() {
        let text = concat!(
            "{\"seq\":0,\"chunk\":0,\"attempt\":1,\"output\":1}\n",
            "{\"seq\":12345678901234567890,\"chunk\":1,\"attempt\":1,\"output\":\"x\"}\n",
            "{\"seq\":0,\"ok\":true,\"output\":{\"a\":1,\"chunk\":2},\"attempts\":1}\n",
            "{\"seq\":1,\"ok\":false,\"error\":{\"kind\":\"failed\",\"message\":\"m\"},\"attempts\":1}\n",
        )
        .as_bytes();
        // Every way of cutting the text into two frames counts the same.
        for cut in 0..=text.len() {
            let mut lines = RecordLines::default();
            lines.feed(&text[..cut]);
            lines.feed(&text[cut..]);
            assert_eq!((lines.total, lines.chunks), (4, 2), "cut at {cut}");
        }
        // And one byte at a time.
        let mut lines = RecordLines::default();
        for b in text.chunks(1) {
            lines.feed(b);
        }
        assert_eq!((lines.total, lines.chunks), (4, 2));
    }
}
