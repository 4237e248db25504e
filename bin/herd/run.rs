//! `herd run`: a file or stdin through a pool, records to a file or stdout, then exit.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use herd_supervisor::{Command, RecordWriter, Records, Submission};

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
    let (pool, run_pool) = herd_supervisor::pool(cfg);
    let Submission { sender, records } = pool.submit(ordered);
    signals::forward(pool.clone(), false)?;

    let reader = std::thread::Builder::new()
        .name("herd-input".into())
        .spawn(move || {
            let max_batch = sender.max_batch();
            let read = herd_supervisor::lines::read_lines(input, max_line, max_batch, |batch| {
                let Some(count) = &input_count else {
                    return sender.blocking_send(batch).is_ok();
                };
                let tally = InputCount::tally(&batch, max_line);
                let sent = sender.blocking_send(batch).is_ok();
                if sent {
                    count.sent(tally);
                }
                sent
            });
            if let Some(count) = &input_count {
                count.finish();
            }
            read
        })
        .context("cannot start the input thread")?;
    let stopper = pool.clone();
    let writer = std::thread::Builder::new()
        .name("herd-output".into())
        .spawn(move || {
            let written = write_records(output, failed, records, progress, records_on_terminal);
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
    crate::log_summary(&summary, started.elapsed().as_secs_f64(), "done");
    // After a stop the reader may still be blocked reading a terminal or pipe: don't wait.
    if reader.is_finished() {
        match reader.join() {
            Ok(Ok(_)) => {}
            // Every event read got its record, but the input was not read to its end.
            Ok(Err(e)) => {
                return Err(e)
                    .with_context(|| format!("cannot read input {}", args.input.display()))
            }
            Err(_) => anyhow::bail!("input thread panicked"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes record batches as JSON lines, and the inputs of failed events to `failed`; flushes
/// whenever it has caught up. Counts them on the progress bar, which it clears at the end;
/// with `on_terminal` (records go to the terminal the bar is on) it writes with the bar
/// suspended.
fn write_records(
    out: Box<dyn Write + Send>,
    mut failed: Option<Box<dyn Write + Send>>,
    mut records: Records,
    mut progress: Progress,
    on_terminal: bool,
) -> io::Result<()> {
    let suspend = on_terminal && progress.is_shown();
    let mut w = RecordWriter::new(out);
    let written = (|| {
        while let Some(first) = records.blocking_recv() {
            let mut next = Some(first);
            while let Some(batch) = next.take() {
                if suspend {
                    progress.suspend(|| w.write(&batch))?;
                } else {
                    w.write(&batch)?;
                }
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
                progress.written(&batch);
                next = records.try_recv();
            }
            if suspend {
                progress.suspend(|| w.flush())?;
            } else {
                w.flush()?;
            }
            if let Some(f) = failed.as_mut() {
                f.flush()?;
            }
        }
        Ok(())
    })();
    // Off the screen before the pool's shutdown logs.
    progress.clear();
    written
}
