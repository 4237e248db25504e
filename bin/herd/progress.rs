//! `herd run`'s progress bar on stderr: records written, how many failed, the rate and, when
//! the input is a regular file, an estimated total and an ETA.
//!
//! It is drawn only when stderr is a terminal (and not with `--no-progress`): redirected
//! stderr carries the logs and nothing else. While the bar is up, log lines are written with
//! it out of the way (see [`herd_log::set_stderr_suspend`]), so no stale copy of it stays
//! on the screen.

use std::io::{self, IsTerminal};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd_supervisor::{Input, Record};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the spinner and the elapsed time move while no record arrives.
const TICK: Duration = Duration::from_millis(120);
/// The bar goes up with the first record at least this long after the start, so the
/// workers' start-up logs are out of its way.
const SETTLE: Duration = Duration::from_millis(500);

const STREAM: &str = "{spinner:.green} [{elapsed_precise}] {human_pos} done · {msg} · {per_sec:0}";
const ESTIMATED: &str = "{spinner:.green} [{elapsed_precise}] [{wide_bar:.cyan/blue}] \
     {human_pos}/~{human_len} · {msg} · {per_sec:0} · ETA {eta}";
const EXACT: &str = "{spinner:.green} [{elapsed_precise}] [{wide_bar:.cyan/blue}] \
     {human_pos}/{human_len} · {msg} · {per_sec:0} · ETA {eta}";

/// What the input thread has handed to the pool so far, for the estimate of the total.
#[derive(Debug, Default)]
pub struct InputCount {
    lines: AtomicU64,
    bytes: AtomicU64,
    finished: AtomicBool,
}

impl InputCount {
    /// How many lines and bytes of the input `batch` holds. A rejected (over-long) line
    /// counts as `max_line` bytes: at least that much of the input went into it.
    pub fn tally(batch: &[Input], max_line: usize) -> (u64, u64) {
        let bytes: usize = batch
            .iter()
            .map(|i| match i {
                Input::Event { payload, .. } => payload.len() + 1,
                Input::Rejected { .. } => max_line + 1,
            })
            .sum();
        (batch.len() as u64, bytes as u64)
    }

    /// Counts a batch (its [`tally`](Self::tally)) the pool accepted.
    pub fn sent(&self, (lines, bytes): (u64, u64)) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.lines.fetch_add(lines, Ordering::Relaxed);
    }

    /// The input is read to its end (or given up): the line count is the total.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }
}

/// The bar, owned and updated by the output thread.
pub struct Progress {
    bar: ProgressBar,
    /// Whether the bar is wanted, and whether it is on the screen yet.
    shown: bool,
    drawing: bool,
    started: Instant,
    /// Set once the bar is cleared for good; guards putting it on the screen.
    closed: Arc<Mutex<bool>>,
    /// The input's line counters and its size in bytes, when it is a regular file.
    input: Option<(Arc<InputCount>, u64)>,
    exact: bool,
    done: u64,
    failed: u64,
}

impl Progress {
    /// A bar for reading `input` ('-' = stdin). It is drawn only when `enabled`, stderr is
    /// a terminal and the input is not typed on one, and only from a record after
    /// [`SETTLE`], so the workers' start-up logs come before it. Also returns the counters the input thread
    /// must feed (for a regular file only) and a guard that clears the bar when dropped.
    pub fn new(enabled: bool, input: &Path) -> (Self, Option<Arc<InputCount>>, ClearOnDrop) {
        let stdin = input.as_os_str() == "-";
        let shown = enabled && io::stderr().is_terminal() && !(stdin && io::stdin().is_terminal());
        let size = if shown && !stdin {
            std::fs::metadata(input)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())
        } else {
            None
        };
        let count = size.map(|_| Arc::new(InputCount::default()));
        // Drawn nowhere until the first record.
        let bar = ProgressBar::hidden();
        if shown {
            bar.set_style(style(if size.is_some() { ESTIMATED } else { STREAM }));
            bar.set_message("0 failed");
        }
        let closed = Arc::new(Mutex::new(false));
        let progress = Progress {
            bar: bar.clone(),
            shown,
            drawing: false,
            started: Instant::now(),
            closed: closed.clone(),
            input: count.clone().zip(size),
            exact: false,
            done: 0,
            failed: 0,
        };
        (progress, count, ClearOnDrop { bar, closed })
    }

    /// Whether the bar is wanted at all.
    pub fn is_shown(&self) -> bool {
        self.shown
    }

    /// Runs `f` (which writes to the terminal) with the bar out of the way. `f` must not
    /// touch the bar.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Counts events that get no record this time (`--resume`: they have one already), so
    /// the bar measures the whole input, whose lines it counts.
    pub fn skipped(&mut self, events: u64) {
        self.done += events;
    }

    /// Counts records that were written.
    pub fn written(&mut self, records: &[Record]) {
        if !self.shown {
            return;
        }
        let failed = records.iter().filter(|r| r.is_err()).count() as u64;
        // Events done: chunk lines are extra lines, not events.
        self.done += records.iter().filter(|r| r.is_final()).count() as u64;
        if failed > 0 {
            self.failed += failed;
            self.bar.set_message(format!("{} failed", self.failed));
        }
        self.estimate_total();
        self.bar.set_position(self.done);
        if !self.drawing && self.started.elapsed() >= SETTLE {
            self.drawing = true;
            let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            if !*closed {
                self.bar.reset_eta();
                self.bar.set_draw_target(ProgressDrawTarget::stderr());
                self.bar.enable_steady_tick(TICK);
                let bar = self.bar.clone();
                herd_log::set_stderr_suspend(Some(Arc::new(move |write: &mut dyn FnMut()| {
                    bar.suspend(write)
                })));
            }
        }
    }

    /// Sets the bar's length: lines read so far scaled by bytes left, exact once the input
    /// is read to its end.
    fn estimate_total(&mut self) {
        let Some((count, size)) = &self.input else {
            return;
        };
        if self.exact {
            return;
        }
        if count.finished.load(Ordering::Acquire) {
            self.bar
                .set_length(count.lines.load(Ordering::Relaxed).max(self.done));
            self.bar.set_style(style(EXACT));
            self.exact = true;
            return;
        }
        let lines = count.lines.load(Ordering::Relaxed);
        let bytes = count.bytes.load(Ordering::Relaxed);
        if lines > 0 && bytes > 0 {
            let estimate = (u128::from(lines) * u128::from(*size) / u128::from(bytes)) as u64;
            self.bar.set_length(estimate.max(lines).max(self.done));
        }
    }

    /// Takes the bar off the screen for good.
    pub fn clear(&self) {
        clear(&self.bar, &self.closed);
    }
}

/// Clears the bar when dropped: at the end of the run and on every early return.
pub struct ClearOnDrop {
    bar: ProgressBar,
    closed: Arc<Mutex<bool>>,
}

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        clear(&self.bar, &self.closed);
    }
}

fn clear(bar: &ProgressBar, closed: &Mutex<bool>) {
    let mut closed = closed.lock().unwrap_or_else(|e| e.into_inner());
    if !*closed {
        *closed = true;
        herd_log::set_stderr_suspend(None);
        bar.finish_and_clear();
        // Whatever still updates it (a thread outliving an error) draws nowhere.
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}
