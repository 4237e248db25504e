//! `herd run`: a file or stdin through a pool, records to a file or stdout, then exit.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use std::sync::{Arc, Mutex};

use herd_supervisor::lines::LineSource;
use herd_supervisor::{Input, RecordBatch, RecordWriter, Room, Sink, Source, SubmissionError};

use crate::progress::{InputCount, Progress};
use crate::resume;
use crate::{signals, PoolArgs};
use herd_supervisor::resume::Plan;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    io: resume::IoArgs,
    /// Also write the input line of every event whose record is not ok to FILE, so that
    /// `herd run -i FILE` can replay them (numbered as lines of FILE; --retry-failed keeps
    /// their seqs). Under --resume, with the failed lines of the earlier runs too.
    #[arg(long, value_name = "FILE")]
    failed: Option<PathBuf>,
    /// Never draw the progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    priority: crate::PriorityArgs,
    #[command(flatten)]
    keys: crate::KeyArgs,
    #[command(flatten)]
    config: crate::ConfigArgs,
    #[command(flatten)]
    pub pool: PoolArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.pool.config()?;
    // Which events run (all, unless resuming or retrying), checked before anything opens.
    let plan = args.io.plan()?;
    // With --failed, the input is still read: its failed lines are written again.
    if plan.as_ref().is_some_and(|p| p.to_run == 0) && args.failed.is_none() {
        tracing::info!("nothing to run: every event already has its record");
        return Ok(ExitCode::SUCCESS);
    }
    // Open both ends before starting any worker, so a typo costs nothing.
    let input = crate::open_input(&args.io.input)?;
    let to_stdout = args.io.output.as_os_str() == "-";
    let output = args.io.open_output(plan.as_deref())?;
    // Under --resume the failed file is written anew: the lines of the events that failed in
    // the earlier runs (from the records, so a kill that lost some of their lines loses
    // nothing) as the input goes by, and this run's as their records come.
    let failed: Option<Failed> = match &args.failed {
        Some(path) => Some(Arc::new(Mutex::new(io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create failed-events file {}", path.display()))?,
        )))),
        None => None,
    };
    // Records on the terminal the bar is drawn on go out with the bar out of the way.
    let records_on_terminal = to_stdout && io::stdout().is_terminal();
    let (mut progress, input_count, _clear_progress) =
        Progress::new(!args.no_progress, &args.io.input);
    if let Some(plan) = &plan {
        progress.skipped(plan.lines - plan.to_run);
    }

    let ordered = args.io.ordered;
    let max_line = cfg.max_line();
    let source = herd_supervisor::resume::Resumed::new(
        CountedLines {
            lines: LineSource::spawn(input, max_line).context("cannot start the input thread")?,
            count: input_count,
            max_line,
            plan: plan.clone(),
            failed: failed.clone(),
        },
        plan.clone(),
    );
    let sink = RecordSink {
        suspend: records_on_terminal && progress.is_shown(),
        writer: RecordWriter::new(output),
        failed,
        progress,
        plan,
    };
    let (pool, run_pool) = herd_supervisor::pool(cfg);
    signals::forward(pool.clone(), false, None)?;
    let started = std::time::Instant::now();
    // The library stops the pool once the input has ended and every record is written.
    let options = herd_supervisor::SubmitOptions {
        ordered,
        priority: args.priority.priority,
        line_priority: args.priority.line_priority,
        key: args.keys.source(),
        ..Default::default()
    };
    let (summary, delivered) = herd_supervisor::run_one(pool, run_pool, options, source, sink)?;
    crate::log_summary(&summary, started.elapsed().as_secs_f64(), "done");
    match delivered {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // Every event read got its record, but the input was not read to its end.
        Err(SubmissionError::Source(e, _)) => {
            Err(e).with_context(|| format!("cannot read input {}", args.io.input.display()))
        }
        Err(SubmissionError::Sink(e)) => Err(e).context("cannot write records"),
    }
}

/// The input's lines, counted for the progress bar as they go into the pool. Under a `plan`
/// with a `failed` file, the lines that failed in an earlier run are written to it as they go
/// by ([`herd_supervisor::resume::Resumed`] then keeps the lines that run).
struct CountedLines {
    lines: LineSource,
    count: Option<Arc<InputCount>>,
    max_line: usize,
    plan: Option<Arc<Plan>>,
    failed: Option<Failed>,
}

/// The `--failed` file, written by the sink and, under `--resume`, by the source.
type Failed = Arc<Mutex<io::BufWriter<std::fs::File>>>;

/// Writes the lines of `batch` whose events failed in an earlier run to the failed file.
fn write_failed_before(plan: &Plan, batch: &[Input], failed: &Failed) -> io::Result<()> {
    let mut f = failed.lock().unwrap_or_else(|e| e.into_inner());
    for input in batch {
        if let Input::Event { seq, payload, .. } = input {
            if plan.failed_before(*seq) {
                f.write_all(payload)?;
                f.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

impl Source for CountedLines {
    async fn next_batch(&mut self, room: Room) -> io::Result<Option<Vec<Input>>> {
        let batch = self.lines.next_batch(room).await;
        if let Some(count) = &self.count {
            match &batch {
                Ok(Some(b)) => count.sent(InputCount::tally(b, self.max_line)),
                _ => count.finish(),
            }
        }
        if let (Ok(Some(b)), Some(plan), Some(f)) = (&batch, &self.plan, &self.failed) {
            write_failed_before(plan, b, f)?;
        }
        batch
    }
}

/// Records as JSON lines, and the inputs of failed events to `failed`; flushed whenever the
/// pool has nothing more ready. Counts them on the progress bar; with `suspend` (records go to
/// the terminal the bar is on) writes with the bar out of the way. It runs on a thread of its
/// own, so its writes may block.
struct RecordSink {
    writer: RecordWriter<Box<dyn Write + Send>>,
    failed: Option<Failed>,
    progress: Progress,
    suspend: bool,
    /// Records' `seq` are dense numbers of the lines this plan runs: written as line numbers.
    plan: Option<Arc<Plan>>,
}

impl RecordSink {
    fn write(&mut self, batch: &[herd_supervisor::Record]) -> io::Result<()> {
        let renumbered: Vec<herd_supervisor::Record>;
        let batch = match &self.plan {
            None => batch,
            Some(plan) => {
                renumbered = plan.renumber(batch).map_err(io::Error::other)?;
                &renumbered
            }
        };
        if self.suspend {
            let (progress, writer) = (&self.progress, &mut self.writer);
            progress.suspend(|| writer.write(batch))?;
        } else {
            self.writer.write(batch)?;
        }
        if let Some(f) = &self.failed {
            let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
            let inputs = batch
                .iter()
                .filter(|r| r.is_err())
                .filter_map(|r| r.input.as_ref());
            for input in inputs {
                f.write_all(input)?;
                f.write_all(b"\n")?;
            }
        }
        self.progress.written(batch);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.suspend {
            let (progress, writer) = (&self.progress, &mut self.writer);
            progress.suspend(|| writer.flush())?;
        } else {
            self.writer.flush()?;
        }
        if let Some(f) = &self.failed {
            f.lock().unwrap_or_else(|e| e.into_inner()).flush()?;
        }
        Ok(())
    }
}

impl Sink for RecordSink {
    async fn deliver(&mut self, batch: RecordBatch) -> io::Result<()> {
        let written = self.write(&batch);
        if written.is_err() {
            // Off the screen before the pool's shutdown logs.
            self.progress.clear();
        }
        written
    }

    async fn caught_up(&mut self) -> io::Result<()> {
        self.flush()
    }

    async fn finish(&mut self) -> io::Result<()> {
        let flushed = self.flush();
        self.progress.clear();
        flushed
    }
}
