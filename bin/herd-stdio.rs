//! `herd-stdio`: any program that reads a line and writes a line is a herd worker.
//!
//! ```sh
//! herd run -w 8 -- herd-stdio -- python3 -u enrich.py
//! ```
//!
//! The program is started once, as a persistent child, not once per event. Each task's payload
//! goes to its stdin as one line; its next line on stdout is that task's output (without the
//! newline, nor a `\r` before it). Its stderr is herd-stdio's, which herd forwards to its log.
//!
//! # Theory of operation
//!
//! - **Pipelined, in order.** herd keeps up to its window of tasks in flight at each worker.
//!   They are written to the child as they come, without waiting for answers; the child answers
//!   in order, so the n-th line it writes answers the n-th task it was given. Lines to the child
//!   are batched while more tasks are already buffered, and replies to herd while more answers
//!   are: tiny events travel many to a `write` in both directions.
//! - **Two threads, one per direction, so the pipes cannot deadlock.** The main thread reads
//!   tasks from herd and writes lines to the child; the answer thread reads the child's lines and
//!   sends the replies. Neither ever waits for the other, so the child's stdout is always being
//!   drained, however many lines are outstanding. What is outstanding is bounded by herd's
//!   window (at most 1024 tasks per worker).
//! - **Every task gets exactly one answer, or herd-stdio dies.** The main thread queues a task's
//!   id before writing its line, so an answer always finds its id. A payload containing a
//!   newline would break the line framing: it is answered at once with a non-retryable error and
//!   never reaches the child. Anything else that breaks the contract ends herd-stdio with code 3,
//!   after sending every answer already read, so herd charges only the tasks left unanswered,
//!   as for any crashed worker: the child exits or closes its stdout, writes a line no task asked
//!   for, stops reading its stdin, or ends in the middle of a line.
//! - **Bounded memory.** An answer line longer than herd's frame limit is not kept: the task gets
//!   a non-retryable error, and the rest of the line is skipped.
//! - **A silent child is named.** A filter that buffers its output when it writes to a pipe
//!   (Debian's mawk, `sed` without `-u`, `python3` without `-u`) holds its answers back, and
//!   herd waits. When events have waited [`SILENCE`] for an answer and the child wrote nothing,
//!   herd-stdio says so once on stderr (herd logs it), with how to unbuffer the usual filters.
//! - **The child never outlives herd-stdio.** It gets `PR_SET_PDEATHSIG(SIGKILL)`, and it is in
//!   the process group herd kills when the worker exits or times out. On the termination frame
//!   its stdin is closed; it gets `--stop-timeout` to write its last answers and exit, then it is
//!   killed.
//!
//! Exit codes: 0 after the termination frame, 1 when herd is gone, 2 for a usage error, a
//! program that cannot be started, or a start outside herd, 3 when the program broke the line
//! contract (the reason is on stderr).

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use herd_proto::{ENV_MAX_FRAME, ENV_SOCKET, ENV_TOKEN};
use herd_worker::{Config, Replies, TaskError, Tasks};
use nix::sys::signal::Signal;

/// The program broke the line contract.
const EXIT_PROGRAM: u8 = 3;
/// Buffers on the child's pipes: many tiny lines per `read` and `write`.
const PIPE_BUFFER: usize = 64 * 1024;
/// Longest quote of a stray line in an error message.
const QUOTE: usize = 200;
/// How long events may wait for an answer, with nothing at all from the child, before
/// herd-stdio says (once) that the child may be buffering its output.
const SILENCE: Duration = Duration::from_secs(5);
/// How often the answer thread looks at the time while it waits for the child's output.
const SILENCE_TICK: u16 = 500;

#[derive(Parser)]
#[command(
    name = "herd-stdio",
    version,
    about = "Runs a line filter as a herd worker: one event in as a line, one line out",
    long_about = "Runs a line filter as a herd worker: one event in as a line, one line out.

Run it under herd: herd run -w 8 -- herd-stdio -- python3 -u enrich.py

The program is started once and kept running. Each event is written to its stdin as one line;
the next line it writes to stdout is that event's output. The program must:
  - write exactly one line per input line, in order, as soon as it has read that line (not
    after a block of input: mawk needs -W interactive);
  - flush stdout after each line (python3 -u, sed -u, grep --line-buffered, jq --unbuffered,
    awk with fflush(), or stdbuf -oL);
  - write nothing else to stdout (diagnostics go to stderr, which herd logs).
An event containing a newline gets a failed record without reaching the program. A program
that exits, writes a line nobody asked for, or stops reading is a crashed worker: herd retries
its unanswered events on a fresh one. A program that hangs is handled by herd's --timeout.

Exit codes: 0 after herd's termination frame, 1 when herd is gone, 2 usage error, program
cannot be started, or not run by herd, 3 the program broke the contract."
)]
struct Cli {
    /// After herd's termination frame the program's stdin is closed; this is how long it gets
    /// to write its last answers and exit before it is killed.
    #[arg(long, value_name = "DUR", default_value = "4s", value_parser = parse_duration)]
    stop_timeout: Duration,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms or 4s: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return report(&err),
    };
    let program = describe(&cli.command);
    let (mut child, stdin, stdout) = match spawn(&cli.command) {
        Ok(spawned) => spawned,
        Err(err) => {
            eprintln!("herd-stdio: cannot start {program}: {err}");
            return ExitCode::from(2);
        }
    };
    let (tasks, replies) = match herd_worker::connect(&config) {
        Ok(pair) => pair,
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            return report(&err);
        }
    };
    let shared = Arc::new(Shared {
        program,
        child: Mutex::new(child),
        replies: Mutex::new(replies),
        stopping: AtomicBool::new(false),
        flushed: AtomicU64::new(0),
    });
    let (ids_tx, ids_rx) = mpsc::channel();
    let (end_tx, end_rx) = mpsc::channel();
    let max = config.max_frame;

    // Not joined: on the way out the main thread waits for it only as long as it chooses to.
    let answers = Arc::clone(&shared);
    let spawned = thread::Builder::new()
        .name("answers".into())
        .spawn(move || {
            let end = answer(stdout, &ids_rx, &answers, max);
            let _ = end_tx.send(end);
        });
    if let Err(err) = spawned {
        eprintln!("herd-stdio: cannot start a thread: {err}");
        shared.kill();
        return ExitCode::from(2);
    }
    match feed(tasks, stdin, ids_tx, &shared) {
        Fed::Shutdown => finish(&shared, &end_rx, cli.stop_timeout),
        Fed::Herd(err) => gone(&shared, &err),
        Fed::ChildStopped(err) => {
            // The answer thread reports it once the child's stdout ends (with the child's exit
            // status and what was left unanswered); one that lives on gets killed first.
            if shared.wait(cli.stop_timeout).is_none() {
                shared.kill();
            }
            let _ = end_rx.recv_timeout(cli.stop_timeout);
            fail(&shared, &format!("stopped reading its stdin ({err})"))
        }
    }
}

/// Taken by whichever thread ends the process, and never released: the other thread cannot
/// report a second, misleading reason (say, the child's end after we killed it).
fn exiting() -> MutexGuard<'static, ()> {
    static EXITING: Mutex<()> = Mutex::new(());
    lock(&EXITING)
}

/// Prints a worker SDK error with its causes and returns its exit code.
fn report(err: &herd_worker::Error) -> ExitCode {
    ExitCode::from(report_code(err))
}

fn report_code(err: &herd_worker::Error) -> u8 {
    eprintln!("herd-stdio: {}", err.report());
    err.exit_code()
}

/// `` `python3 -u enrich.py` ``, for messages.
fn describe(command: &[OsString]) -> String {
    let words: Vec<_> = command.iter().map(|w| w.to_string_lossy()).collect();
    format!("`{}`", words.join(" "))
}

/// Starts the program with piped stdin and stdout and the inherited stderr.
fn spawn(command: &[OsString]) -> io::Result<(Child, ChildStdin, ChildStdout)> {
    let Some((program, args)) = command.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no program"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        // The connection is ours: a child that is itself a herd worker must not try to use it.
        .env_remove(ENV_SOCKET)
        .env_remove(ENV_TOKEN)
        .env_remove(ENV_MAX_FRAME)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // syscalls (prctl, getppid, _exit); it touches no locks and allocates nothing. herd-stdio
    // is single-threaded here, and PR_SET_PDEATHSIG follows the main thread, which lives as
    // long as the process.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // herd-stdio may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    match (child.stdin.take(), child.stdout.take()) {
        (Some(stdin), Some(stdout)) => Ok((child, stdin, stdout)),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(io::Error::other("its pipes were not created"))
        }
    }
}

/// What the two threads share.
struct Shared {
    /// The command line, for messages.
    program: String,
    /// For killing and reaping.
    child: Mutex<Child>,
    replies: Mutex<Replies>,
    /// The termination frame came: the end of the child's stdout is expected.
    stopping: AtomicBool,
    /// Lines flushed to the child's stdin so far (each one waits for its answer line).
    flushed: AtomicU64,
}

impl Shared {
    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SIGKILLs the child unless it has been reaped (then its pid may be someone else's; `Child`
    /// knows, under the lock).
    fn kill(&self) {
        let _ = self.child().kill();
    }

    /// Waits up to `limit` for the child to exit, and reaps it. Polls, because only `try_wait`
    /// can be bounded; this runs only on the way out.
    fn wait(&self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child().try_wait() {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ends herd-stdio because the program broke the contract: sends the answers already read
/// (they are results; herd charges only what is left), kills and reaps the child, says why
/// (with its exit status), and exits 3. Whichever thread gets here first decides; the other
/// blocks here until the process is gone.
fn fail(shared: &Shared, why: &str) -> ! {
    std::mem::forget(exiting());
    let _ = lock(&shared.replies).flush();
    // A program that exited on its own has its own status; give it a moment to be reaped
    // before it is killed (which would mask the status with SIGKILL).
    let status = shared.wait(Duration::from_millis(100)).or_else(|| {
        shared.kill();
        shared.wait(Duration::from_secs(5))
    });
    let status = status.map_or_else(|| "still running".to_string(), |s| s.to_string());
    eprintln!("herd-stdio: {} {why} ({status})", shared.program);
    std::process::exit(i32::from(EXIT_PROGRAM))
}

/// Ends herd-stdio because herd is gone (or broke the protocol): the child goes too. Called
/// by the answer thread, which must not just stop reading: the child would block on its
/// stdout, and the main thread on the child's stdin.
fn gone(shared: &Shared, err: &herd_worker::Error) -> ! {
    std::mem::forget(exiting());
    shared.kill();
    std::process::exit(i32::from(report_code(err)))
}

/// How the main thread's task loop ended.
enum Fed {
    /// herd sent the termination frame.
    Shutdown,
    /// herd is gone, or broke the protocol.
    Herd(herd_worker::Error),
    /// Writing to the child's stdin failed: it exited or closed it.
    ChildStopped(io::Error),
}

/// The main thread: tasks from herd become lines on the child's stdin.
fn feed(mut tasks: Tasks, stdin: ChildStdin, ids: Sender<u64>, shared: &Shared) -> Fed {
    let mut stdin = BufWriter::with_capacity(PIPE_BUFFER, stdin);
    let mut written = 0u64;
    loop {
        // Lines go out before a read that may block: the child must not wait for a task we
        // hold while herd waits for its answer.
        if !tasks.buffered() {
            if let Err(err) = stdin.flush() {
                return Fed::ChildStopped(err);
            }
            shared.flushed.store(written, Ordering::Relaxed);
        }
        let task = match tasks.recv() {
            Ok(Some(task)) => task,
            // Closing the child's stdin (dropping the writer) is its termination signal.
            Ok(None) => {
                shared.stopping.store(true, Ordering::SeqCst);
                let _ = stdin.flush();
                return Fed::Shutdown;
            }
            Err(err) => return Fed::Herd(err),
        };
        if let Some(at) = memchr::memchr(b'\n', &task.payload) {
            let why = TaskError::fatal(format!(
                "herd-stdio: the event contains a newline (at byte {at} of {}), so it cannot \
                 be passed as one line",
                task.payload.len()
            ));
            let mut out = lock(&shared.replies);
            if let Err(err) = out.send(task.id, Err(why)).and_then(|()| out.flush()) {
                return Fed::Herd(err);
            }
            continue;
        }
        // The id is queued before the line is written, so the answer always finds it.
        if ids.send(task.id).is_err() {
            // The answer thread is gone: the process is on its way out.
            return Fed::ChildStopped(io::ErrorKind::BrokenPipe.into());
        }
        let line = stdin
            .write_all(&task.payload)
            .and_then(|()| stdin.write_all(b"\n"));
        if let Err(err) = line {
            return Fed::ChildStopped(err);
        }
        written += 1;
    }
}

/// How the answer thread ended after the termination frame (any other end exits the process).
struct AnswersEnd {
    /// Tasks whose answers never came.
    unanswered: usize,
    /// Bytes of a last line that had no newline.
    partial: usize,
}

/// The answer thread: each line on the child's stdout answers the oldest task outstanding.
/// Returns at the end of the child's stdout after the termination frame; any other way the
/// child stops answering ends the process ([`fail`]).
fn answer(stdout: ChildStdout, ids: &Receiver<u64>, shared: &Shared, max: usize) -> AnswersEnd {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, stdout);
    let mut line = Vec::new();
    // Bytes of the current line beyond `max`, dropped.
    let mut dropped = 0usize;
    // Answer lines read, and whether the child was already named as silent.
    let mut answered = 0u64;
    let mut warned = false;
    loop {
        // Replies go out before a read that may block.
        if reader.buffer().is_empty() {
            if let Err(err) = lock(&shared.replies).flush() {
                gone(shared, &err);
            }
            if !warned {
                warned = await_output(reader.get_ref(), shared, answered);
            }
        }
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => fail(shared, &format!("could not be read from: {err}")),
        };
        if buf.is_empty() {
            let unanswered = ids.try_iter().count();
            let partial = line.len() + dropped;
            if shared.stopping.load(Ordering::SeqCst) {
                return AnswersEnd {
                    unanswered,
                    partial,
                };
            }
            fail(
                shared,
                &format!(
                    "closed its stdout or exited{}",
                    unanswered_note(unanswered, partial)
                ),
            );
        }
        let (chunk, complete) = match memchr::memchr(b'\n', buf) {
            Some(at) => (&buf[..at], true),
            None => (buf, false),
        };
        let room = (max + 1).saturating_sub(line.len());
        let kept = chunk.len().min(room);
        line.extend_from_slice(&chunk[..kept]);
        dropped += chunk.len() - kept;
        let used = chunk.len() + usize::from(complete);
        reader.consume(used);
        if !complete {
            continue;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        answered += 1;
        let Ok(id) = ids.try_recv() else {
            let quote = String::from_utf8_lossy(&line[..line.len().min(QUOTE)]).into_owned();
            fail(
                shared,
                &format!(
                    "wrote a line no event asked for: {quote:?} (write one line per event on \
                     stdout, diagnostics on stderr)"
                ),
            )
        };
        let result = if dropped > 0 || line.len() > max {
            let len = line.len() + dropped;
            line.clear();
            dropped = 0;
            Err(TaskError::fatal(format!(
                "herd-stdio: the answer line of {len} bytes exceeds the maximum frame of {max} \
                 bytes"
            )))
        } else {
            Ok(std::mem::take(&mut line))
        };
        if let Err(err) = lock(&shared.replies).send(id, result) {
            gone(shared, &err);
        }
    }
}

/// Waits until the child's stdout can be read (or has ended). Returns true after saying, once,
/// that events have waited [`SILENCE`] without a byte from the child: the usual cause is a
/// filter that buffers its output on a pipe, and herd would otherwise wait without a word.
fn await_output(stdout: &ChildStdout, shared: &Shared, answered: u64) -> bool {
    use nix::poll::{poll, PollFd, PollFlags};
    // Since when events have been waiting while the child wrote nothing.
    let mut waiting_since: Option<Instant> = None;
    loop {
        let pending = shared
            .flushed
            .load(Ordering::Relaxed)
            .saturating_sub(answered);
        if pending == 0 {
            waiting_since = None;
        } else {
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SILENCE {
                eprintln!(
                    "herd-stdio: {} has not answered for {}s with {pending} events waiting for \
                     their answer lines: if it buffers its output on a pipe, make it write each \
                     line at once (python3 -u, sed -u, grep --line-buffered, mawk -W \
                     interactive, awk with fflush(), jq --unbuffered, or stdbuf -oL)",
                    shared.program,
                    SILENCE.as_secs()
                );
                return true;
            }
        }
        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, SILENCE_TICK) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            // Readable, ended, or an error the read will report.
            Ok(_) | Err(_) => return false,
        }
    }
}

fn unanswered_note(unanswered: usize, partial: usize) -> String {
    let mut note = format!(" with {unanswered} events unanswered");
    if partial > 0 {
        note.push_str(&format!(", in the middle of a line ({partial} bytes)"));
    }
    note
}

/// After the termination frame: the child's stdin is closed (the feed loop dropped it); waits
/// for its last answers and its exit, each bounded by `limit`.
fn finish(shared: &Shared, end_rx: &Receiver<AnswersEnd>, limit: Duration) -> ExitCode {
    let end = match end_rx.recv_timeout(limit) {
        Ok(end) => end,
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
            std::mem::forget(exiting());
            shared.kill();
            eprintln!(
                "herd-stdio: {} did not finish within {limit:?} of its stdin closing; killed it",
                shared.program
            );
            return ExitCode::from(EXIT_PROGRAM);
        }
    };
    let status = shared.wait(limit);
    if status.is_none() {
        shared.kill();
        eprintln!(
            "herd-stdio: {} closed its stdout but did not exit within {limit:?}; killed it",
            shared.program
        );
    }
    if end.unanswered > 0 || end.partial > 0 {
        eprintln!(
            "herd-stdio: {} exited after its stdin closed{}",
            shared.program,
            unanswered_note(end.unanswered, end.partial)
        );
        return ExitCode::from(EXIT_PROGRAM);
    }
    if let Some(status) = status.filter(|s| !s.success()) {
        // Every event was answered, so nothing is lost; but the operator may want to know.
        eprintln!(
            "herd-stdio: {} {status} after its stdin closed",
            shared.program
        );
    }
    ExitCode::SUCCESS
}
