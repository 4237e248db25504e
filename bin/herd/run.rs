//! `herd run`: a file or stdin through a pool, records to a file or stdout, then exit.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use std::sync::Arc;

use herd_supervisor::lines::LineSource;
use herd_supervisor::{Input, RecordBatch, RecordWriter, Room, Sink, Source, SubmissionError};

use crate::progress::{InputCount, Progress};
use crate::{signals, PoolArgs};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Events, one per line ('-' = stdin).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    input: PathBuf,
    /// Result records, JSON lines ('-' = stdout).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Write records in input order (a bounded reorder buffer holds early finishers).
    #[arg(long)]
    ordered: bool,
    /// Also write the input line of every event whose record is not ok to FILE, so that
    /// `herd run -i FILE` can replay them.
    #[arg(long, value_name = "FILE")]
    failed: Option<PathBuf>,
    /// Never draw the progress bar (it is drawn on stderr only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = args.pool.config()?;
    cfg.ordered = args.ordered;
    // Open both ends before starting any worker, so a typo costs nothing.
    let input = crate::open_input(&args.input)?;
    let to_stdout = args.output.as_os_str() == "-";
    let output = crate::open_output(&args.output)?;
    let failed: Option<Box<dyn Write + Send>> = match &args.failed {
        Some(path) => Some(Box::new(io::BufWriter::new(
            File::create(path)
                .with_context(|| format!("cannot create failed-events file {}", path.display()))?,
        ))),
        None => None,
    };
    // Records on the terminal the bar is drawn on go out with the bar out of the way.
    let records_on_terminal = to_stdout && io::stdout().is_terminal();
    let (progress, input_count, _clear_progress) = Progress::new(!args.no_progress, &args.input);

    let ordered = cfg.ordered;
    let max_line = cfg.max_frame.saturating_sub(32);
    let source = CountedLines {
        lines: LineSource::spawn(input, max_line).context("cannot start the input thread")?,
        count: input_count,
        max_line,
    };
    let sink = RecordSink {
        suspend: records_on_terminal && progress.is_shown(),
        writer: RecordWriter::new(output),
        failed,
        progress,
    };
    let (pool, run_pool) = herd_supervisor::pool(cfg);
    signals::forward(pool.clone(), false)?;
    let started = std::time::Instant::now();
    // The library stops the pool once the input has ended and every record is written.
    let (summary, delivered) = herd_supervisor::run_one(pool, run_pool, ordered, source, sink)?;
    crate::log_summary(&summary, started.elapsed().as_secs_f64(), "done");
    match delivered {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // Every event read got its record, but the input was not read to its end.
        Err(SubmissionError::Source(e, _)) => {
            Err(e).with_context(|| format!("cannot read input {}", args.input.display()))
        }
        Err(SubmissionError::Sink(e)) => Err(e).context("cannot write records"),
    }
}

/// The input's lines, counted for the progress bar as they go into the pool.
struct CountedLines {
    lines: LineSource,
    count: Option<Arc<InputCount>>,
    max_line: usize,
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
        batch
    }
}

/// Records as JSON lines, and the inputs of failed events to `failed`; flushed whenever the
/// pool has nothing more ready. Counts them on the progress bar; with `suspend` (records go to
/// the terminal the bar is on) writes with the bar out of the way. It runs on a thread of its
/// own, so its writes may block.
struct RecordSink {
    writer: RecordWriter<Box<dyn Write + Send>>,
    failed: Option<Box<dyn Write + Send>>,
    progress: Progress,
    suspend: bool,
}

impl RecordSink {
    fn write(&mut self, batch: &[herd_supervisor::Record]) -> io::Result<()> {
        if self.suspend {
            let (progress, writer) = (&self.progress, &mut self.writer);
            progress.suspend(|| writer.write(batch))?;
        } else {
            self.writer.write(batch)?;
        }
        if let Some(f) = self.failed.as_mut() {
            let inputs = batch
                .iter()
                .filter(|r| !r.is_ok())
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
        if let Some(f) = self.failed.as_mut() {
            f.flush()?;
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
