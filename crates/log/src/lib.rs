//! herd-log: herd's operator logs. tracing to stderr or a log file, as text or one JSON object
//! per line; stdout is never used (it carries records).
//!
//! Whoever logs (the pool's thread above all) never waits for the log sink: a formatted line
//! goes into a bounded queue (tracing-appender's lossy non-blocking writer) and one writer
//! thread empties it into stderr or the file. When the sink is stuck (stderr a pipe nobody
//! reads, a full disk) the queue fills up, further lines are dropped and counted, and the
//! count is logged once lines flow again and in the closing summary.
//!
//! A crate of its own so that any program running a herd pool can log the way `herd` does
//! (the pool's thread must never block on a log line) and the supervisor library carries no
//! subscriber:
//!
//! ```no_run
//! # fn main() -> Result<(), herd_log::InitError> {
//! let logging = herd_log::init(herd_log::LogFormat::Json, None, 0)?;
//! tracing::info!(workers = 4, "ready");
//! drop(logging); // writes out what is still queued
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    // Not doc comments: clap would show them as the values' help.
    // Human-readable text.
    Text,
    // One JSON object per line: `timestamp`, `level`, the event's fields, `target`.
    Json,
}

/// Why the logging could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// `RUST_LOG` is not a filter.
    #[error("invalid RUST_LOG value `{value}`")]
    Filter {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The log file cannot be opened for appending.
    #[error("cannot open log file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A global subscriber is installed already.
    #[error("cannot install the logger: {0}")]
    Install(Box<dyn std::error::Error + Send + Sync>),
}

/// Lines the queue to the writer thread holds at most. Lines are admitted against this (and
/// [`QUEUE_BYTES`]) before they go into the appender's channel, which is a little larger: it
/// never refuses a line, and always has room for the guard's shutdown message.
const QUEUE_LINES: usize = 16 * 1024;
/// Bytes the queue holds at most (a line can be a worker's 8 KiB line, escaped).
const QUEUE_BYTES: usize = 4 << 20;
/// The writer thread gathers lines up to this much before a write.
const WRITE_BATCH: usize = 64 << 10;

/// The installed logging; dropping it flushes what is queued (for a second at most).
pub struct Logging {
    guard: Option<WorkerGuard>,
    front: Front,
    to_file: bool,
}

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q` count; `RUST_LOG`,
/// when set, has the last word.
///
/// # Errors
///
/// An invalid `RUST_LOG`, a log file that cannot be opened, or a subscriber installed already.
pub fn init(format: LogFormat, file: Option<&Path>, verbosity: i8) -> Result<Logging, InitError> {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|source| InitError::Filter { value: v, source })?
        }
        // The NATS client logs each reconnect attempt at info; herd logs the outage once.
        _ => EnvFilter::new(format!(
            "{level},async_nats={}",
            if level == "error" { "error" } else { "warn" }
        )),
    };
    let (target, ansi) = match file {
        Some(path) => {
            let f = open(path).map_err(|source| InitError::File {
                path: path.to_path_buf(),
                source,
            })?;
            let log = Arc::new(LogFile {
                path: path.to_path_buf(),
                reopened: Mutex::new(None),
            });
            let _ = LOG_FILE.set(log.clone());
            (Target::File { file: f, log }, false)
        }
        None => (Target::Stderr, io::stderr().is_terminal()),
    };
    let queue = Arc::new(Queue::default());
    let sink = Sink {
        target,
        queue: queue.clone(),
        buf: Vec::with_capacity(WRITE_BATCH),
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES + 64)
        .thread_name("herd-log")
        .finish(sink);
    let front = Front {
        inner: writer,
        queue: queue.clone(),
        format,
    };
    let _ = FRONT.set(front.clone());
    let front_for_exit = front.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(front);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(ansi).with_target(false).try_init(),
        LogFormat::Json => builder.event_format(JsonLine).try_init(),
    };
    installed.map_err(InitError::Install)?;
    Ok(Logging {
        guard: Some(guard),
        front: front_for_exit,
        to_file: file.is_some(),
    })
}

impl Logging {
    /// Reports the error that ends herd, exactly once where the operator looks: as an ERROR
    /// log line in the log file (and `herd: ...` on stderr, for whoever started herd), as an
    /// ERROR line in JSON logs on stderr (which stay all JSON), else as `herd: ...` on stderr.
    /// Then flushes the logs. `text` is the whole error, its causes included.
    pub fn exit_with_error(self, text: &str) {
        let json_on_stderr = !self.to_file && self.front.format == LogFormat::Json;
        let logged = (self.to_file || json_on_stderr)
            && tracing::enabled!(target: "herd", tracing::Level::ERROR);
        if logged {
            tracing::error!(target: "herd", "{text}");
        }
        if logged && json_on_stderr {
            return;
        }
        let line = format!("herd: {text}\n");
        if self.to_file {
            drop(self);
            let _ = io::stderr().write_all(line.as_bytes());
        } else {
            // Through the queue, after the last log lines and never blocking for long on a
            // stderr nobody reads.
            let _ = self.front.make_writer().write_all(line.as_bytes());
        }
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        // The guard's drop queues a shutdown message (the channel always has room for it; were
        // it full for 100 ms, the guard would complain on stdout, among the records) and
        // waits up to a second for the writer thread to write out what is queued.
        drop(self.guard.take());
    }
}

/// Log lines dropped so far because the sink did not keep up.
pub fn dropped_lines() -> u64 {
    FRONT
        .get()
        .map_or(0, |f| f.queue.dropped.load(Ordering::Relaxed))
}

/// Runs a write to stderr with whatever else draws on the terminal out of the way.
pub type Suspend = Arc<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// Log lines on stderr are written through `suspend` (`herd run` puts its progress bar out of
/// the way), so that no stale copy of what it draws stays on the screen. `None` once it is
/// gone.
pub fn set_stderr_suspend(suspend: Option<Suspend>) {
    *SUSPEND.lock().unwrap_or_else(|e| e.into_inner()) = suspend;
}

static SUSPEND: Mutex<Option<Suspend>> = Mutex::new(None);

/// The subscriber's writer, for [`dropped_lines`] and [`reopen`].
static FRONT: OnceLock<Front> = OnceLock::new();

/// What is in the queue between the loggers and the writer thread.
///
/// Not tracing-appender's own bound and drop count (`error_counter`): it bounds lines only,
/// and a line can be a worker's 8 KiB line, escaped. Admitting lines here also keeps the
/// channel's spare room for the reopen marker and the guard's shutdown message.
#[derive(Default)]
struct Queue {
    /// Lines and bytes admitted and not yet taken by the writer thread.
    lines: AtomicUsize,
    bytes: AtomicUsize,
    /// Lines refused because the queue was full.
    dropped: AtomicU64,
    /// Drops already announced with a "log lines dropped" line.
    reported: AtomicU64,
}

/// The subscriber's writer: one formatted event becomes one queued line.
#[derive(Clone)]
struct Front {
    inner: NonBlocking,
    queue: Arc<Queue>,
    format: LogFormat,
}

impl<'a> MakeWriter<'a> for Front {
    type Writer = FrontWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        FrontWriter(self)
    }
}

struct FrontWriter<'a>(&'a Front);

impl FrontWriter<'_> {
    /// Queues `line` unless the queue is full; whether it was queued.
    fn offer(&self, line: &[u8]) -> bool {
        let front = self.0;
        let queue = &front.queue;
        let len = line.len();
        if len == 0 {
            // The writer thread would never see it (write_all of nothing), nor give room back.
            return true;
        }
        // Reserve room first: the writer thread gives it back when it takes the line.
        if queue.lines.fetch_add(1, Ordering::AcqRel) >= QUEUE_LINES {
            queue.lines.fetch_sub(1, Ordering::AcqRel);
            queue.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if queue.bytes.fetch_add(len, Ordering::AcqRel) + len > QUEUE_BYTES {
            queue.bytes.fetch_sub(len, Ordering::AcqRel);
            queue.lines.fetch_sub(1, Ordering::AcqRel);
            queue.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Never blocks, and with the room reserved the channel takes it.
        let _ = front.inner.clone().write(line);
        true
    }

    /// Queues [`REOPEN`] whatever the queue holds: the channel has room to spare for it, and
    /// [`reopen`] keeps at most one in flight.
    fn mark_reopen(&self) {
        let queue = &self.0.queue;
        queue.lines.fetch_add(1, Ordering::AcqRel);
        queue.bytes.fetch_add(REOPEN.len(), Ordering::AcqRel);
        let _ = self.0.inner.clone().write(REOPEN);
    }

    /// After a line got through: says how many were dropped before it, once.
    fn announce_drops(&self) {
        let queue = &self.0.queue;
        let total = queue.dropped.load(Ordering::Relaxed);
        let reported = queue.reported.load(Ordering::Acquire);
        if total <= reported
            || queue
                .reported
                .compare_exchange(reported, total, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let notice = drop_notice(self.0.format, total - reported);
        // If this one is dropped too, it is counted and announced later.
        self.offer(notice.as_bytes());
    }
}

impl Write for FrontWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.offer(buf) {
            self.announce_drops();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The line that tells how many log lines were lost.
fn drop_notice(format: LogFormat, n: u64) -> String {
    const MESSAGE: &str = "log lines dropped: the log output did not keep up";
    let mut ts = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut ts));
    match format {
        LogFormat::Text => format!("{ts}  WARN {MESSAGE} dropped={n}\n"),
        LogFormat::Json => {
            let v = serde_json::json!({
                "timestamp": ts,
                "level": "WARN",
                "message": MESSAGE,
                "dropped": n,
                "target": "herd",
            });
            format!("{v}\n")
        }
    }
}

/// Where the writer thread writes.
enum Target {
    Stderr,
    File { file: File, log: Arc<LogFile> },
}

/// A queued "line" that tells the writer thread to switch to the reopened log file: lines
/// logged before the reopen go to the old file, the rest to the new one. (Formatted lines
/// end with a newline; this does not.)
const REOPEN: &[u8] = b"\0herd: reopen the log file\0";

/// The writer thread's end: gathers the queued lines and writes them in batches. Errors are
/// swallowed: there is nowhere left to report them.
struct Sink {
    target: Target,
    queue: Arc<Queue>,
    buf: Vec<u8>,
}

impl Sink {
    fn write_out(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match &mut self.target {
            Target::Stderr => {
                let suspend = SUSPEND.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let buf = &self.buf;
                let mut write = || {
                    let _ = io::stderr().lock().write_all(buf);
                };
                match suspend {
                    Some(suspend) => suspend(&mut write),
                    None => write(),
                }
            }
            Target::File { file, .. } => {
                let _ = file.write_all(&self.buf);
            }
        }
        self.buf.clear();
    }
}

impl Write for Sink {
    /// Called once per queued line (tracing-appender uses `write_all`, which we serve whole).
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.queue.bytes.fetch_sub(line.len(), Ordering::AcqRel);
        self.queue.lines.fetch_sub(1, Ordering::AcqRel);
        if line == REOPEN {
            self.write_out();
            if let Target::File { file, log } = &mut self.target {
                let reopened = log
                    .reopened
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(fresh) = reopened {
                    *file = fresh;
                }
            }
            return Ok(line.len());
        }
        self.buf.extend_from_slice(line);
        if self.buf.len() >= WRITE_BATCH {
            self.write_out();
        }
        Ok(line.len())
    }

    /// Called whenever the queue is empty.
    fn flush(&mut self) -> io::Result<()> {
        self.write_out();
        Ok(())
    }
}

/// The log file, reopenable so logrotate can move it away (USR2).
struct LogFile {
    path: PathBuf,
    /// Opened by [`reopen`], waiting for the writer thread to take it.
    reopened: Mutex<Option<File>>,
}

static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopens the log file at its path (a no-op when logging to stderr). The file is opened
/// here, so that an error can be reported; the writer thread switches to it after the lines
/// already queued.
pub fn reopen() -> io::Result<()> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(());
    };
    let fresh = open(&log.path)?;
    let in_flight = log
        .reopened
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(fresh)
        .is_some();
    // A marker still queued will pick up the newer file.
    if !in_flight {
        if let Some(front) = FRONT.get() {
            front.make_writer().mark_reopen();
        }
    }
    Ok(())
}

/// One JSON object per event: `timestamp`, `level`, the event's fields (`message` first),
/// `target`.
///
/// Field values keep their JSON types: numbers and booleans as such, strings (`record_str`,
/// e.g. a worker's output line) always as strings. A value recorded through `Debug` or
/// `Display` (`?x`, `%x`) that reads as a JSON array or object, such as a `Vec` of pids or
/// a map of counts, is embedded as one; anything else becomes a string. The message is
/// always a string.
///
/// Not tracing-subscriber's `.json()`: tracing values have no arrays or maps, so it writes
/// the ready line's `pids` and the summary's `errors` as strings, which log readers then
/// have to parse twice (`json_logs_carry_arrays_objects_and_numbers` holds that shape).
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        let meta = event.metadata();
        let mut obj = JsonObject(String::with_capacity(256));
        obj.0.push('{');
        obj.key("timestamp");
        obj.value(&ts);
        obj.key("level");
        obj.value(meta.level().as_str());
        event.record(&mut obj);
        obj.key("target");
        obj.value(meta.target());
        obj.0.push('}');
        writeln!(writer, "{}", obj.0)
    }
}

/// An object being written, without its closing brace.
struct JsonObject(String);

impl JsonObject {
    fn key(&mut self, name: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        self.value(name);
        self.0.push(':');
    }

    fn value<T: serde::Serialize + ?Sized>(&mut self, v: &T) {
        // Serializing a str, number or Value cannot fail.
        if let Ok(s) = serde_json::to_string(v) {
            self.0.push_str(&s);
        } else {
            self.0.push_str("null");
        }
    }
}

impl Visit for JsonObject {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field.name());
        self.value(value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field.name());
        self.value(&value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field.name());
        self.value(&value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field.name());
        self.value(&value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.key(field.name());
        self.value(&value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.key(field.name());
        self.value(&value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field.name());
        if value.is_finite() {
            self.value(&value);
        } else {
            self.value(&value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.key(field.name());
        if field.name() != "message" && text.starts_with(['[', '{']) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                self.value(&v);
                return;
            }
        }
        self.value(&text);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Formats the events `f` emits with [`JsonLine`] and parses them back.
    fn json_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLine)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_values_keep_their_types() {
        let pids = vec![41u32, 42];
        let counts = std::collections::BTreeMap::from([("crashed", 1u64)]);
        let lines = json_lines(|| {
            tracing::info!(
                ?pids,
                errors = ?counts,
                secs = 0.5,
                nan = f64::NAN,
                ok = true,
                delta = -3i64,
                grace = ?std::time::Duration::from_secs(30),
                line = "{\"a\": 1}",
                "done {}",
                "[1]"
            );
        });
        let l = &lines[0];
        assert_eq!(l["pids"], serde_json::json!([41, 42]));
        assert_eq!(l["errors"], serde_json::json!({"crashed": 1}));
        assert_eq!(l["secs"], 0.5);
        assert_eq!(l["nan"], "NaN");
        assert_eq!(l["ok"], true);
        assert_eq!(l["delta"], -3);
        assert_eq!(l["grace"], "30s");
        // A str field stays a string even when it reads as JSON; so does the message.
        assert_eq!(l["line"], "{\"a\": 1}");
        assert_eq!(l["message"], "done [1]");
        assert_eq!(l["level"], "INFO");
        assert!(l["timestamp"].is_string());
        assert_eq!(l["target"], "herd_log::tests");
    }

    #[test]
    fn a_message_that_reads_as_json_stays_a_string() {
        let lines = json_lines(|| tracing::warn!("[1, 2]"));
        assert_eq!(lines[0]["message"], "[1, 2]");
    }

    #[test]
    fn the_drop_notice_matches_the_format() {
        let text = drop_notice(LogFormat::Text, 7);
        assert!(text.ends_with("dropped=7\n"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&drop_notice(LogFormat::Json, 7)).unwrap();
        assert_eq!(json["dropped"], 7);
        assert_eq!(json["level"], "WARN");
    }
}
