//! Operator logs: tracing to stderr or a log file, as text or one JSON object per line.
//! stdout is never used: it carries records.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use clap::ValueEnum;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `verbosity` is `-v` count minus `-q` count; `RUST_LOG`,
/// when set, has the last word.
pub fn init(format: LogFormat, file: Option<&Path>, verbosity: i8) -> anyhow::Result<()> {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).with_context(|| format!("invalid RUST_LOG value `{v}`"))?
        }
        _ => EnvFilter::new(level),
    };
    let (writer, ansi) = match file {
        Some(path) => {
            let f =
                open(path).with_context(|| format!("cannot open log file {}", path.display()))?;
            let log = Arc::new(LogFile {
                path: path.to_path_buf(),
                file: Mutex::new(f),
            });
            let _ = LOG_FILE.set(log.clone());
            (BoxMakeWriter::new(move || LogWriter(log.clone())), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).with_target(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// The log file, reopenable so logrotate can move it away (USR2).
struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

static LOG_FILE: OnceLock<Arc<LogFile>> = OnceLock::new();

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reopens the log file at its path (a no-op when logging to stderr).
pub fn reopen() -> io::Result<()> {
    let Some(log) = LOG_FILE.get() else {
        return Ok(());
    };
    let fresh = open(&log.path)?;
    let mut file = log.file.lock().unwrap_or_else(|e| e.into_inner());
    *file = fresh;
    Ok(())
}

/// One formatted event goes out in one locked write.
struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self.0.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
