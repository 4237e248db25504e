//! Async handlers (the `tokio` feature): a handler that awaits I/O (a database, an HTTP
//! service, a file) without building a runtime of its own.
//!
//! The worker's half of the protocol stays exactly as for [`run`](crate::run): the same serve
//! loop, reply batching, flusher, panic capture and exit codes. The SDK builds one
//! current-thread tokio runtime (I/O and timers enabled) for the life of the worker, and each
//! task's handler future is driven to completion on it, on the thread that serves the
//! connection. One task still runs at a time: a worker is one unit of concurrency, and herd
//! runs as many workers as you ask for. A handler may `tokio::spawn`, but what it spawns only
//! makes progress while some handler is running; await it before returning.

use std::io::{Read, Write};
use std::process::ExitCode;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::{exit, run_with, serve, Config, Error, Task, TaskError};

/// Runs an async `handler` as a herd worker until the supervisor sends the termination frame:
/// [`run`](crate::run) for a handler that awaits (the `tokio` feature). The handler is an
/// `async` closure or an `async fn(&mut Task<'_>) -> Result<Vec<u8>, TaskError>`.
///
/// ```no_run
/// use herd_worker::{Task, TaskError};
/// use tokio::io::AsyncReadExt;
///
/// fn main() -> std::process::ExitCode {
///     herd_worker::run_async(async |task: &mut Task<'_>| -> Result<Vec<u8>, TaskError> {
///         // Each event names a peer; the answer is its first 64 bytes.
///         let addr = std::str::from_utf8(task.payload())?; // fatal: not UTF-8
///         let mut peer = tokio::net::TcpStream::connect(addr).await?; // refused: retryable
///         let mut reply = vec![0; 64];
///         let n = peer.read(&mut reply).await?;
///         reply.truncate(n);
///         Ok(reply)
///     })
/// }
/// ```
///
/// The SDK builds one current-thread tokio runtime, I/O and timers enabled, for the life of the
/// worker, and drives each handler future to completion on it; everything else (batching,
/// panics, chunks, exit codes) is as for [`run`](crate::run). Exit codes are those of
/// [`run`](crate::run); failing to build the runtime, or being called inside one, is code 2.
///
/// # Caveats
/// - Call it from a plain `fn main`, not inside a runtime (`#[tokio::main]`): it refuses to
///   start there, since the handler runs on the runtime the SDK builds.
/// - One task runs at a time, as with [`run`](crate::run): a worker is one unit of concurrency,
///   and herd runs as many workers as you ask for. What a handler `tokio::spawn`s makes
///   progress only while some handler runs: await it before returning.
pub fn run_async<F>(handler: F) -> ExitCode
where
    F: AsyncFnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    exit(Config::from_env().and_then(|config| run_async_with(&config, handler)))
}

/// Connects to the supervisor described by `config` and serves an async `handler` on that
/// connection: [`run_with`](crate::run_with) for a handler that awaits.
///
/// # Errors
/// [`Error::Runtime`] if the runtime cannot be built or this is called inside one; otherwise
/// as [`run_with`](crate::run_with).
pub fn run_async_with<F>(config: &Config, mut handler: F) -> Result<(), Error>
where
    F: AsyncFnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    let runtime = runtime()?;
    run_with(config, |task: &mut Task<'_>| {
        runtime.block_on(handler(task))
    })
}

/// Runs the worker's side of the protocol over an already connected stream, with an async
/// `handler`: [`serve`](crate::serve) for a handler that awaits.
///
/// # Errors
/// [`Error::Runtime`] if the runtime cannot be built or this is called inside one; otherwise
/// as [`serve`](crate::serve).
pub fn serve_async<R, W, F>(
    reader: R,
    writer: W,
    config: &Config,
    mut handler: F,
) -> Result<(), Error>
where
    R: Read + std::os::fd::AsFd + Send,
    W: Write + Send,
    F: AsyncFnMut(&mut Task<'_>) -> Result<Vec<u8>, TaskError>,
{
    let runtime = runtime()?;
    serve(reader, writer, config, |task: &mut Task<'_>| {
        runtime.block_on(handler(task))
    })
}

/// Runs an async batch `handler` of up to `max` tasks per call as a herd worker:
/// [`run_batch`](crate::run_batch) for a handler that awaits (the `tokio` feature), on the
/// runtime [`run_async`] builds.
///
/// # Caveats
/// As [`run_async`] and [`run_batch`](crate::run_batch).
pub fn run_batch_async<F>(max: u32, mut handler: F) -> ExitCode
where
    F: AsyncFnMut(&mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>>,
{
    exit(Config::from_env().and_then(|config| {
        let runtime = runtime()?;
        crate::run_batch_with(&config, max, |tasks: &mut [Task<'_>]| {
            runtime.block_on(handler(tasks))
        })
    }))
}

/// The runtime every handler future runs on.
fn runtime() -> Result<Runtime, Error> {
    // `block_on` inside a runtime panics: every task would fail with that panic's message.
    if Handle::try_current().is_ok() {
        return Err(Error::Runtime(std::io::Error::other(
            "run_async was called inside a tokio runtime; call it from a plain `fn main`",
        )));
    }
    Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;
    use std::thread;
    use std::time::Duration;

    use herd_proto::{FromWorker, Outcome, ToWorker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tests::{config, recv, send, task};

    /// Awaits real I/O (a socket pair through the runtime's reactor) and a timer; `?` on
    /// io and timeout errors.
    async fn handler(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
        match task.payload() {
            b"panic" => panic!("async boom"),
            b"timeout" => {
                tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>())
                    .await?;
                unreachable!("pending never completes")
            }
            b"refused" => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?,
            b"cancellable" => {
                // Protocol 3: the cancel wakes the handler out of its wait.
                tokio::select! {
                    () = task.cancelled() => Err(TaskError::cancelled()),
                    () = tokio::time::sleep(Duration::from_secs(60)) => Ok(b"slept".to_vec()),
                }
            }
            payload => {
                let (mut a, mut b) = tokio::net::UnixStream::pair()?;
                let echo = tokio::spawn(async move {
                    let mut got = Vec::new();
                    b.read_to_end(&mut got).await.map(|_| got)
                });
                tokio::time::sleep(Duration::from_millis(1)).await;
                a.write_all(payload).await?;
                drop(a);
                let mut out = echo.await.map_err(|e| TaskError::fatal(e.to_string()))??;
                out.extend_from_slice(format!(" #{}", task.attempt()).as_bytes());
                Ok(out)
            }
        }
    }

    fn spawn_async_worker() -> (UnixStream, thread::JoinHandle<Result<(), Error>>) {
        let (sup, worker) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || serve_async(&worker, &worker, &config(), handler));
        assert!(matches!(recv(&sup), FromWorker::Hello { .. }));
        (sup, handle)
    }

    fn done(sup: &UnixStream, id: u64) -> Outcome {
        match recv(sup) {
            FromWorker::Done { id: got, outcome } if got == id => outcome,
            other => panic!("want the Done of {id}, got {other:?}"),
        }
    }

    #[test]
    fn an_async_handler_awaits_io_and_timers() {
        let (sup, worker) = spawn_async_worker();
        send(&sup, &task(1, 3, b"hello"));
        assert_eq!(done(&sup, 1), Outcome::Ok(b"hello #3".to_vec()));
        send(&sup, &task(2, 1, b"again"));
        assert_eq!(done(&sup, 2), Outcome::Ok(b"again #1".to_vec()));
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn question_mark_on_timeouts_and_refusals_is_retryable_and_a_panic_is_fatal() {
        let (sup, worker) = spawn_async_worker();
        send(&sup, &task(1, 1, b"timeout"));
        assert_eq!(
            done(&sup, 1),
            Outcome::Err {
                retryable: true,
                message: "deadline has elapsed".into()
            }
        );
        send(&sup, &task(2, 1, b"refused"));
        assert!(matches!(
            done(&sup, 2),
            Outcome::Err {
                retryable: true,
                ..
            }
        ));
        send(&sup, &task(3, 1, b"panic"));
        assert_eq!(
            done(&sup, 3),
            Outcome::Err {
                retryable: false,
                message: "handler panicked: async boom".into()
            }
        );
        // The runtime survives a panicking handler.
        send(&sup, &task(4, 1, b"after"));
        assert_eq!(done(&sup, 4), Outcome::Ok(b"after #1".to_vec()));
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn a_cancel_wakes_an_awaiting_handler() {
        let (sup, worker) = spawn_async_worker();
        send(&sup, &task(1, 1, b"cancellable"));
        send(&sup, &ToWorker::Cancel { id: 1 });
        assert_eq!(done(&sup, 1), Outcome::Cancelled);
        send(&sup, &ToWorker::Shutdown);
        worker.join().unwrap().unwrap();
    }

    #[test]
    fn inside_a_runtime_it_refuses_to_start() {
        let rt = Builder::new_current_thread().build().unwrap();
        let (_sup, worker) = UnixStream::pair().unwrap();
        let err = rt
            .block_on(async { serve_async(&worker, &worker, &config(), handler) })
            .unwrap_err();
        assert!(matches!(err, Error::Runtime(_)), "{err:?}");
        assert_eq!(err.exit_code(), 2);
    }
}
