//! `herd-chaos`: the fault-injection worker. Each event (one JSON object) chooses what the worker
//! does, so tests, demos and benchmarks can reproduce every failure a supervisor must survive
//! (the ops are listed in `--help` and docs/ARCHITECTURE.md). Outputs are JSON; an unknown op or
//! a malformed event is a non-retryable handler error.
//!
//! `square` is the benchmark path: the event is parsed into a borrowed struct and the answer
//! written straight into the output buffer, with no other allocation.

use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herd_proto::codec;
use herd_proto::{FromWorker, Outcome, DEFAULT_MAX_FRAME};
use herd_worker::{Task, TaskError};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::time::{clock_gettime, ClockId};
use serde::Deserialize;
use serde_json::value::RawValue;

const HELP: &str = "\
herd-chaos: a herd worker whose behaviour each event chooses.
Run it under `herd run -- herd-chaos`; events are JSON objects, one per line:
  {\"op\":\"echo\",\"v\":X}            returns X
  {\"op\":\"square\",\"n\":N}          returns N*N
  {\"op\":\"spin\",\"ms\":M}           burns M ms of CPU, returns M
  {\"op\":\"sleep\",\"ms\":M}          sleeps M ms, returns M
  {\"op\":\"fail\",\"retryable\":B}    handler error
  {\"op\":\"flaky\",\"fails\":K}       retryable error while attempt <= K, then the attempt
  {\"op\":\"panic\"}                  panics in the handler
  {\"op\":\"crash\",\"signal\":S}      aborts, or raises signal S (e.g. \"SEGV\")
  {\"op\":\"exit\",\"code\":C}         exits with code C mid-task
                                  (both first send the replies the worker held back; with
                                  \"flush\":false they are lost, as in a real segfault)
  {\"op\":\"hang\"}                   busy-loops forever, ignoring SIGTERM/SIGINT/SIGHUP
  {\"op\":\"garbage\"}                writes an invalid frame to the socket
  {\"op\":\"oversize\"}               writes a frame header claiming 4 GiB
  {\"op\":\"stderr\",\"text\":S}       writes S to stderr, returns S
  {\"op\":\"alloc\",\"mb\":M}          allocates and keeps M MiB, returns M
  {\"op\":\"pid\"}                    returns its own pid
  {\"op\":\"clock\"}                  returns the wall-clock time it started, in µs since 1970
  {\"op\":\"runaway\",\"mb\":M}        allocates 1 MiB at a time up to M MiB, aborting if
                                  an allocation fails (a leak meeting a memory limit)
  {\"op\":\"whoami\"}                 returns its uid, gid, groups, nice level and limits
  {\"op\":\"env\"}                    returns its environment as a JSON object
  {\"op\":\"stream\",\"n\":N}          sends N chunks {\"i\":0}..{\"i\":N-1}, returns N; options:
                                   \"size\":B  each chunk a JSON string of B bytes instead
                                   \"ms\":M    sleeps M ms before each chunk
                                   \"crash_after\":K  exits with code 3 after K chunks while
                                             the attempt is at most \"fails\" (default 1)
  {\"op\":\"cancellable\",\"ms\":M}     sleeps M ms unless herd cancels it first (protocol 3),
                                   then ends cancelled; returns M
  {\"op\":\"retry_after\",\"ms\":M,\"fails\":K,\"log\":P}
                                  appends \"attempt µs-since-1970\" to the file P, then
                                  while attempt <= K a retryable error asking for a retry
                                  after M ms (protocol 3); then returns the attempt
  {\"op\":\"v3_frame\",\"frame\":F}     writes a protocol 3 frame herd did not ask for, then
                                  sleeps: F is withdrawn_unknown, kept_unasked,
                                  cancelled_unasked, batching_late or truncated
  {\"op\":\"stray_chunk\"}            sends a chunk for a task it does not hold, then sleeps;
                                   with \"after_done\":true, its own Done then a chunk for it;
                                   with \"then_done\":true, the stray chunk then its own Done,
                                   in one write
  {\"op\":\"batch\",\"k\":K,\"i\":I}     (op first) returns the batch it ran in: {\"n\":size,\"k\":[K...],
                                   \"i\":[I...]} in the batch's order (a batch of one
                                   without --batch)
Options:
  --batch N      a batch handler of up to N events per call (protocol 3's Batching): each
                 event of a batch runs its op in turn, and a crash, hang or garbage takes
                 the whole batch with it, as a poison input would
  --protocol V   speak an older protocol version (herd's compatibility tests)
";

fn main() -> ExitCode {
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "--help" || a == "-h")
    {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    // `--protocol N`: speak an older protocol (herd's compatibility tests); `--batch N`: a
    // batch handler.
    let mut args = std::env::args().skip(1);
    let mut protocol = None;
    let mut batch = None;
    while let Some(arg) = args.next() {
        let (value, name) = match arg.as_str() {
            "--protocol" => (&mut protocol, "a version number"),
            "--batch" => (&mut batch, "a number of events"),
            _ => continue,
        };
        *value = args.next().and_then(|n| n.parse::<u32>().ok());
        if value.is_none() {
            eprintln!("herd-chaos: {arg} needs {name}");
            return ExitCode::from(2);
        }
    }
    if let Some(max) = batch {
        let config = match herd_worker::Config::from_env() {
            Ok(config) => herd_worker::Config {
                protocol: protocol.unwrap_or(config.protocol),
                ..config
            },
            Err(e) => {
                eprintln!("herd-chaos: {e}");
                return ExitCode::from(e.exit_code());
            }
        };
        return match herd_worker::run_batch_with(&config, max, handle_batch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("herd-chaos: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match protocol {
        None => herd_worker::run(handle),
        Some(protocol) => match herd_worker::Config::from_env() {
            Ok(config) => {
                let config = herd_worker::Config { protocol, ..config };
                match herd_worker::run_with(&config, handle) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("herd-chaos: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            }
            Err(e) => {
                eprintln!("herd-chaos: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

/// Every field any op uses; each op reads only its own. Borrowed so `square` allocates nothing.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    n: Option<i64>,
    ms: Option<u64>,
    #[serde(borrow)]
    v: Option<&'a RawValue>,
    retryable: Option<bool>,
    fails: Option<u32>,
    #[serde(borrow)]
    signal: Option<Cow<'a, str>>,
    code: Option<i32>,
    flush: Option<bool>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    mb: Option<usize>,
    size: Option<usize>,
    crash_after: Option<u32>,
    after_done: Option<bool>,
    then_done: Option<bool>,
    #[serde(borrow)]
    log: Option<Cow<'a, str>>,
    #[serde(borrow)]
    frame: Option<Cow<'a, str>>,
}

/// A batch: each event's op in turn (a `batch` op answers with the whole batch).
fn handle_batch(tasks: &mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>> {
    let summary = tasks
        .iter()
        .any(|t| is_batch_op(t.payload()))
        .then(|| batch_summary(tasks));
    tasks
        .iter_mut()
        .map(|t| match &summary {
            Some(s) if is_batch_op(t.payload()) => Ok(s.clone()),
            _ => handle(t),
        })
        .collect()
}

/// Whether an event is the `batch` op, written with `op` first (a cheap look before parsing,
/// so the benchmark's batches pay nothing for it).
fn is_batch_op(payload: &[u8]) -> bool {
    payload.starts_with(br#"{"op":"batch""#)
}

/// `{"n":size,"k":[keys],"i":[numbers]}` of a batch, in its order.
fn batch_summary(tasks: &[Task<'_>]) -> Vec<u8> {
    #[derive(Deserialize)]
    struct Marked<'a> {
        #[serde(borrow)]
        k: Option<&'a RawValue>,
        #[serde(borrow)]
        i: Option<&'a RawValue>,
    }
    let mut keys = Vec::new();
    let mut nums = Vec::new();
    for t in tasks {
        let m: Option<Marked<'_>> = serde_json::from_slice(t.payload()).ok();
        let raw = |v: Option<&RawValue>| v.map_or("null".to_string(), |v| v.get().to_string());
        keys.push(raw(m.as_ref().and_then(|m| m.k)));
        nums.push(raw(m.as_ref().and_then(|m| m.i)));
    }
    format!(
        r#"{{"n":{},"k":[{}],"i":[{}]}}"#,
        tasks.len(),
        keys.join(","),
        nums.join(",")
    )
    .into_bytes()
}

fn handle(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
    let event: Event<'_> = serde_json::from_slice(task.payload())
        .map_err(|e| TaskError::fatal(format!("malformed event: {e}")))?;
    match &*event.op {
        "echo" => Ok(echo(event.v)),
        "square" => {
            let n = need(event.n, "square", "n")?;
            let sq = n
                .checked_mul(n)
                .ok_or_else(|| TaskError::fatal(format!("square: {n}*{n} overflows i64")))?;
            Ok(number(sq))
        }
        "spin" => {
            let ms = need(event.ms, "spin", "ms")?;
            spin(Duration::from_millis(ms));
            Ok(number(ms))
        }
        "sleep" => {
            let ms = need(event.ms, "sleep", "ms")?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(number(ms))
        }
        "fail" => {
            let message = "failed on request";
            Err(if event.retryable.unwrap_or(false) {
                TaskError::retryable(message)
            } else {
                TaskError::fatal(message)
            })
        }
        "flaky" => {
            let fails = need(event.fails, "flaky", "fails")?;
            let attempt = task.attempt();
            if attempt <= fails {
                Err(TaskError::retryable(format!(
                    "flaky: attempt {attempt} of {fails} planned failures"
                )))
            } else {
                Ok(number(attempt))
            }
        }
        "panic" => panic!("herd-chaos: panic on request"),
        "crash" => {
            let sig = event.signal.as_deref().map(parse_signal).transpose()?;
            if event.flush != Some(false) {
                flush_queued(task);
            }
            crash(sig)
        }
        "exit" => {
            let code = need(event.code, "exit", "code")?;
            if event.flush != Some(false) {
                flush_queued(task);
            }
            std::process::exit(code)
        }
        "hang" => {
            flush_queued(task);
            hang()
        }
        "garbage" => {
            let mut frame = Vec::with_capacity(64);
            frame.extend_from_slice(&60u32.to_le_bytes());
            frame.push(0x7f); // no message has variant 127
            let mut rng = seed();
            frame.extend((0..59).map(|_| next_random(&mut rng) as u8));
            write_raw(task, &frame)?;
            sleep_forever()
        }
        "oversize" => {
            write_raw(task, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4])?;
            sleep_forever()
        }
        "stderr" => {
            let text = need(event.text, "stderr", "text")?;
            eprintln!("{text}");
            serde_json::to_vec(&*text).map_err(|e| TaskError::fatal(e.to_string()))
        }
        "alloc" => {
            let mb = need(event.mb, "alloc", "mb")?;
            alloc(mb)?;
            Ok(number(mb))
        }
        "pid" => Ok(number(std::process::id())),
        "batch" => Ok(batch_summary(std::slice::from_ref(task))),
        "clock" => {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Ok(number(since.as_micros() as u64))
        }
        "runaway" => {
            let mb = need(event.mb, "runaway", "mb")?;
            runaway(mb);
            Ok(number(mb))
        }
        "whoami" => Ok(whoami()),
        "env" => {
            let env: serde_json::Map<String, serde_json::Value> = std::env::vars_os()
                .map(|(k, v)| {
                    let v = v.to_string_lossy().into_owned();
                    (k.to_string_lossy().into_owned(), v.into())
                })
                .collect();
            serde_json::to_vec(&env).map_err(|e| TaskError::fatal(e.to_string()))
        }
        "stream" => {
            let n = need(event.n, "stream", "n")?;
            let n = u32::try_from(n).map_err(|_| TaskError::fatal(format!("stream: bad n {n}")))?;
            let dies = event
                .crash_after
                .filter(|_| task.attempt() <= event.fails.unwrap_or(1));
            let (size, ms) = (event.size, event.ms);
            stream(task, n, size, ms, dies)
        }
        "cancellable" => {
            let ms = need(event.ms, "cancellable", "ms")?;
            let until = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < until {
                if task.is_cancelled() {
                    return Err(TaskError::cancelled());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(number(ms))
        }
        "retry_after" => {
            let ms = need(event.ms, "retry_after", "ms")?;
            let log = need(event.log, "retry_after", "log")?;
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let line = format!("{} {}\n", task.attempt(), since.as_micros());
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*log)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| TaskError::fatal(format!("retry_after: {log}: {e}")))?;
            if task.attempt() <= event.fails.unwrap_or(1) {
                Err(TaskError::retryable("asked to wait").retry_after(Duration::from_millis(ms)))
            } else {
                Ok(number(task.attempt()))
            }
        }
        "v3_frame" => {
            let id = task.id();
            let msg = match need(event.frame, "v3_frame", "frame")?.as_ref() {
                // Far from any id herd has handed out.
                "withdrawn_unknown" => FromWorker::Withdrawn { id: id ^ (1 << 62) },
                "kept_unasked" => FromWorker::Kept { id },
                // A Batching that does not come right after Hello.
                "batching_late" => FromWorker::Batching { max: 8 },
                "cancelled_unasked" => FromWorker::Done {
                    id,
                    outcome: Outcome::Cancelled,
                },
                // A Withdrawn with its id missing.
                "truncated" => {
                    write_raw(task, &[1, 0, 0, 0, 4])?;
                    sleep_forever()
                }
                other => return Err(TaskError::fatal(format!("v3_frame: unknown frame {other:?}"))),
            };
            let mut frame = Vec::new();
            codec::encode_frame(&msg, &mut frame, DEFAULT_MAX_FRAME)
                .map_err(|e| TaskError::fatal(format!("cannot encode: {e}")))?;
            write_raw(task, &frame)?;
            sleep_forever()
        }
        "stray_chunk" => {
            let mut frames = Vec::new();
            let encode = |frames: &mut Vec<u8>, msg: &FromWorker| {
                codec::encode_frame(msg, frames, DEFAULT_MAX_FRAME)
                    .map_err(|e| TaskError::fatal(format!("cannot encode: {e}")))
            };
            let id = if event.after_done.unwrap_or(false) {
                let done = FromWorker::Done {
                    id: task.id(),
                    outcome: Outcome::Ok(b"\"done\"".to_vec()),
                };
                encode(&mut frames, &done)?;
                task.id()
            } else {
                // Far from any id herd has handed out.
                task.id() ^ (1 << 62)
            };
            let chunk = FromWorker::Chunk {
                id,
                data: b"\"stray\"".to_vec(),
            };
            encode(&mut frames, &chunk)?;
            if event.then_done.unwrap_or(false) {
                // Behind the fault, in the same write: herd must not trust it.
                let done = FromWorker::Done {
                    id: task.id(),
                    outcome: Outcome::Ok(b"\"done\"".to_vec()),
                };
                encode(&mut frames, &done)?;
            }
            write_raw(task, &frames)?;
            sleep_forever()
        }
        other => Err(TaskError::fatal(format!(
            "unknown op {other:?} (expected echo, square, spin, sleep, fail, flaky, panic, \
             crash, exit, hang, garbage, oversize, stderr, alloc, pid, clock, runaway, whoami, env, \
             stream, cancellable, retry_after, v3_frame or stray_chunk)"
        ))),
    }
}

/// `stream`: `n` chunks, then `n` as the output; exits after `dies` chunks if set.
fn stream(
    task: &mut Task<'_>,
    n: u32,
    size: Option<usize>,
    ms: Option<u64>,
    dies: Option<u32>,
) -> Result<Vec<u8>, TaskError> {
    let mut data = Vec::new();
    for i in 0..n {
        if dies == Some(i) {
            flush_queued(task);
            std::process::exit(3);
        }
        if let Some(ms) = ms {
            std::thread::sleep(Duration::from_millis(ms));
        }
        data.clear();
        match size {
            Some(size) => {
                data.reserve(size + 2);
                data.push(b'"');
                data.resize(size + 1, b'x');
                data.push(b'"');
            }
            // Writing to a Vec cannot fail.
            None => _ = write!(data, "{{\"i\":{i}}}"),
        }
        task.chunk(&data)?;
    }
    if dies == Some(n) {
        flush_queued(task);
        std::process::exit(3);
    }
    Ok(number(n))
}

/// The field an op requires, or a fatal error naming it.
fn need<T>(field: Option<T>, op: &str, name: &str) -> Result<T, TaskError> {
    field.ok_or_else(|| TaskError::fatal(format!("op {op:?} needs the field {name:?}")))
}

/// A number as JSON text.
fn number(n: impl std::fmt::Display) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n}");
    out
}

/// `v` as compact JSON (`null` when absent), member order and number spelling preserved.
fn echo(v: Option<&RawValue>) -> Vec<u8> {
    let Some(raw) = v else {
        return b"null".to_vec();
    };
    // `raw` is valid JSON, so whitespace outside strings is insignificant and can be dropped.
    let mut out = Vec::with_capacity(raw.get().len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in raw.get().as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_whitespace() {
            continue;
        }
        out.push(b);
    }
    out
}

/// Burns `d` of this process's CPU time (wall-clock time if the CPU clock is unavailable).
fn spin(d: Duration) {
    // The handler's own thread clock: the process clock sums every thread under a kernel lock,
    // which made each reading cost more than the work between readings.
    let cpu = || clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map(Duration::from);
    if let Ok(start) = cpu() {
        loop {
            match cpu() {
                Ok(now) if now.saturating_sub(start) >= d => return,
                Ok(_) => {}
                Err(_) => break,
            }
            for _ in 0..100 {
                std::hint::spin_loop();
            }
        }
    }
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Accepts `SEGV`, `SIGSEGV`, `segv` or a signal number.
fn parse_signal(name: &str) -> Result<Signal, TaskError> {
    let bad = || TaskError::fatal(format!("crash: unknown signal {name:?}"));
    if let Ok(num) = name.parse::<i32>() {
        return Signal::try_from(num).map_err(|_| bad());
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().map_err(|_| bad())
}

/// Dies by `sig` (default disposition restored first: Rust's runtime handles SIGSEGV and
/// ignores SIGPIPE), or by `abort` if there is no signal or it did not kill the process.
fn crash(sig: Option<Signal>) -> ! {
    if let Some(sig) = sig {
        // SAFETY: SIG_DFL installs no handler code; this thread is about to die anyway. Errors
        // (SIGKILL/SIGSTOP cannot be changed) are irrelevant: we raise regardless.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = set.thread_unblock();
        let _ = signal::raise(sig);
    }
    std::process::abort()
}

/// Never returns and cannot be asked to: only SIGKILL ends it.
fn hang() -> ! {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal::signal(sig, SigHandler::SigIgn) };
    }
    loop {
        std::hint::spin_loop();
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Sends the `Done` frames of earlier pipelined tasks before this process dies, so only the
/// task in hand (and those queued behind it) is lost with it.
fn flush_queued(task: &mut Task<'_>) {
    let _ = task.raw_stream().flush();
}

/// Writes `bytes` to the supervisor's socket, bypassing the protocol.
fn write_raw(task: &mut Task<'_>, bytes: &[u8]) -> Result<(), TaskError> {
    let w = task.raw_stream();
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(|e| TaskError::fatal(format!("cannot write to the socket: {e}")))
}

/// A xorshift64 state seeded from the pid and the clock: varied, not secure.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A leak: 1 MiB blocks, each touched and kept, up to `mb` MiB. A failed allocation aborts
/// the process (Rust's default), as it would in a real worker that leaks.
fn runaway(mb: usize) {
    let mut hoard = HOARD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..mb {
        hoard.push(vec![0xa5u8; 1 << 20]);
    }
}

/// Who the process runs as and under which limits, as the kernel says.
fn whoami() -> Vec<u8> {
    use nix::sys::resource::{getrlimit, Resource};
    let limit = |r| {
        getrlimit(r).map_or(serde_json::Value::Null, |(soft, hard)| {
            serde_json::json!([soft, hard])
        })
    };
    let groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    // SAFETY: getpriority has no preconditions; -1 is a valid nice level, so errno is cleared.
    let nice = unsafe {
        *nix::libc::__errno_location() = 0;
        nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0)
    };
    let out = serde_json::json!({
        "pid": std::process::id(),
        "uid": nix::unistd::getuid().as_raw(),
        "euid": nix::unistd::geteuid().as_raw(),
        "gid": nix::unistd::getgid().as_raw(),
        "groups": groups,
        "nice": nice,
        "as": limit(Resource::RLIMIT_AS),
        "nofile": limit(Resource::RLIMIT_NOFILE),
        "core": limit(Resource::RLIMIT_CORE),
        "cpu": limit(Resource::RLIMIT_CPU),
    });
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Memory kept for the life of the process by `alloc`.
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn alloc(mb: usize) -> Result<(), TaskError> {
    let bytes = mb
        .checked_mul(1024 * 1024)
        .ok_or_else(|| TaskError::fatal(format!("alloc: {mb} MiB is too large")))?;
    let mut block = Vec::new();
    block
        .try_reserve_exact(bytes)
        .map_err(|e| TaskError::fatal(format!("alloc: cannot allocate {mb} MiB: {e}")))?;
    // Non-zero, so every page is written and really resident.
    block.resize(bytes, 0xa5);
    HOARD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(block);
    Ok(())
}
