//! The options `herd run` and `herd submit` share: input, output, order, and which events run
//! (`--resume`, `--retry-failed`; the mechanism is `herd_supervisor::resume`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use herd_supervisor::resume::{self, Plan, ResumeOptions};

/// Where events come from and records go, and which events run: what `herd run` and
/// `herd submit` share.
#[derive(Debug, Args)]
pub struct IoArgs {
    /// Events, one per line ('-' = stdin).
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub input: PathBuf,
    /// Result records, JSON lines ('-' = stdout); `seq` is the event's line number in the
    /// input, from 0.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    /// Write records in input order (a bounded reorder buffer holds early finishers).
    #[arg(long)]
    pub ordered: bool,
    /// Continue an interrupted run or submission: append to the existing --output, running
    /// only the events that have no final record in it yet (a torn last line is cut off
    /// first); records keep their line numbers as `seq`. Needs -i FILE and -o FILE. Events
    /// whose record is not ok count as done: see --retry-failed.
    #[arg(long)]
    pub resume: bool,
    /// Run only the events whose final record in RECORDS (an earlier --output for the same
    /// input) is not ok; their new records keep their line numbers as `seq` and go to
    /// --output.
    #[arg(long, value_name = "RECORDS")]
    pub retry_failed: Option<PathBuf>,
}

impl IoArgs {
    /// Which events run: `None` when neither --resume nor --retry-failed is given.
    pub fn plan(&self) -> anyhow::Result<Option<Arc<Plan>>> {
        let plan = resume::plan(&ResumeOptions {
            input: &self.input,
            output: &self.output,
            resume: self.resume,
            retry_failed: self.retry_failed.as_deref(),
        })?;
        Ok(plan.map(Arc::new))
    }

    /// The output for records: under `--resume` the records file the plan checked and
    /// locked, appended to; else created (or stdout).
    pub fn open_output(&self, plan: Option<&Plan>) -> anyhow::Result<Box<dyn Write + Send>> {
        match plan.and_then(Plan::append_to) {
            Some(file) => Ok(Box::new(file.try_clone().with_context(|| {
                format!(
                    "cannot open output {} to append to it",
                    self.output.display()
                )
            })?)),
            None => crate::open_output(&self.output),
        }
    }
}
