//! The worker's serve loop for a Python handler: herd-worker's own loop (`herd_worker::serve`:
//! Hello, reading ahead, the batching of replies, the flusher, the protocol-3 watcher, the
//! exit conditions) with a handler that calls into Python. Only the call itself and the
//! conversion of its result are per-event Python work.
//!
//! - **The GIL.** The serving thread holds it throughout, as a Python program's main thread
//!   does, and lets go of it only where the loop waits: in poll(2) for input, or for room to
//!   write. So other Python threads run while the worker is idle, and the per-event path never
//!   pays for taking it back. herd-worker's flusher and watcher threads never touch Python:
//!   they take only Rust locks, so the serving thread can block on those (the outbox, the read
//!   side at the end of a handler) while holding the GIL without any deadlock.
//! - **Signals.** A signal (Ctrl-C) interrupts that poll; its Python handler runs there, and
//!   an exception it raises (KeyboardInterrupt) ends the loop and is raised from `serve`.
//! - **An exception that is not an `Exception`** (SystemExit, KeyboardInterrupt) raised by a
//!   handler ends the worker as in the pure-Python loop: the replies of the tasks it finished
//!   go out, this task gets none (herd sees the exit), and `serve` raises it. The loop is
//!   stopped through its own connection: from then on the reader and the writer refuse, so
//!   herd-worker returns at its next read or write, and a handler is not called again.
//! - **The task.** A `Channel` lends the running `herd_worker::Task` to Python (chunks,
//!   the cancel flag, the fault-injection writes) for the duration of one handler call; a
//!   batch handler's call (`serve_batch`) borrows all the tasks of its batch.
//! - **Batches.** `serve_batch` drives `herd_worker::serve_batch`: the handler gets a list of
//!   the batch's payloads (or Tasks), and each result it returns (or its iterator yields) is
//!   sent as that task's `Done` at once (`Task::answer`), so an iterator streams.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use herd_proto::PROTOCOL_VERSION;
use herd_worker::{Config, Error, Task, TaskError};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, send, MsgFlags};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyIterator, PyList, PyString, PyType};

use crate::codec::with_bytes;

/// What ended the loop from the Python side: a handler's SystemExit or KeyboardInterrupt, or a
/// signal handler's exception.
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    error: Mutex<Option<PyErr>>,
}

impl Stop {
    fn stop(&self, err: PyErr) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(err);
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn take(&self) -> Option<PyErr> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn refused() -> io::Error {
        io::Error::other("the worker is stopping")
    }
}

/// One direction of the connection: the Python socket's descriptor, which the caller keeps
/// open for the whole call. `server` is the thread that serves (and holds the GIL).
struct Side<'a> {
    fd: RawFd,
    server: ThreadId,
    stop: &'a Stop,
    /// Reading: after a read found nothing the next one polls first.
    poll_first: bool,
}

impl Side<'_> {
    fn on_server(&self) -> bool {
        thread::current().id() == self.server
    }

    /// Waits in poll(2) for `events`, without the GIL on the serving thread.
    fn wait(&self, events: PollFlags) -> io::Result<()> {
        let fd = self.fd;
        let wait = move || {
            // SAFETY: the caller keeps the socket open for the whole serve call.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut fds = [PollFd::new(fd, events)];
            poll(&mut fds, PollTimeout::NONE).map(drop)
        };
        let res = if self.on_server() {
            // SAFETY: the serving thread holds the GIL whenever herd-worker's loop runs on it.
            unsafe { Python::assume_attached() }.detach(wait)
        } else {
            wait()
        };
        match res {
            Ok(()) => Ok(()),
            Err(Errno::EINTR) => self.signals(),
            Err(e) => Err(e.into()),
        }
    }

    /// A send that may block, without the GIL on the serving thread.
    fn blocking_send(&self, buf: &[u8]) -> nix::Result<usize> {
        let fd = self.fd;
        let send = move || send(fd, buf, MsgFlags::MSG_NOSIGNAL);
        if self.on_server() {
            // SAFETY: as in `wait`.
            unsafe { Python::assume_attached() }.detach(send)
        } else {
            send()
        }
    }

    /// After EINTR: runs Python's signal handlers (on the serving thread, the main one); an
    /// exception one raises stops the loop.
    fn signals(&self) -> io::Result<()> {
        if self.on_server() {
            // SAFETY: as in `wait`.
            let py = unsafe { Python::assume_attached() };
            if let Err(e) = py.check_signals() {
                self.stop.stop(e);
                return Err(Stop::refused());
            }
        }
        Ok(())
    }
}

impl AsFd for Side<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: as in `wait`.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Read for Side<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stop.stopped() {
                return Err(Stop::refused());
            }
            if self.poll_first {
                self.wait(PollFlags::POLLIN)?;
            }
            match recv(self.fd, buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => {
                    self.poll_first = false;
                    return Ok(n);
                }
                Err(Errno::EAGAIN) => self.poll_first = true,
                Err(Errno::EINTR) => self.signals()?,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Write for Side<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            if self.stop.stopped() {
                return Err(Stop::refused());
            }
            // Without waiting first; then, if the socket is full (herd is not reading), in a
            // blocking send without the GIL.
            match send(
                self.fd,
                buf,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => return Ok(n),
                Err(Errno::EAGAIN) => {}
                Err(Errno::EINTR) => {
                    self.signals()?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            match self.blocking_send(buf) {
                Ok(n) => return Ok(n),
                // A socket in non-blocking mode (a Python socket with a timeout).
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLOUT)?,
                Err(Errno::EINTR) => self.signals()?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How often `Channel::wait_cancelled` looks at the cancel flag.
const CANCEL_LOOK: Duration = Duration::from_millis(2);

/// The running tasks (one, or a batch's), lent to Python for one handler call.
struct Lent {
    tasks: *mut Task<'static>,
    len: usize,
}

// SAFETY: the pointer is only followed under the Channel's mutex, while the handler call that
// lent it is in progress (the serving thread does not touch the tasks meanwhile).
unsafe impl Send for Lent {}

/// The task a handler is running, as `herd.Task` needs it: chunks, the cancel flag, and the
/// fault-injection writes. One per serve call; it lends out each task for its handler call
/// only, so a `Task` kept past its handler sees nothing.
#[pyclass(frozen, module = "herd._native")]
pub struct Channel {
    task: Mutex<Option<Lent>>,
}

/// Takes the lent task back when the handler call ends, however it ends.
struct Lending<'a>(&'a Channel);

impl Drop for Lending<'_> {
    fn drop(&mut self) {
        *self.0.slot() = None;
    }
}

impl Channel {
    fn new(py: Python<'_>) -> PyResult<Bound<'_, Channel>> {
        Bound::new(
            py,
            Channel {
                task: Mutex::new(None),
            },
        )
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Lent>> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lend<'c>(&'c self, tasks: &mut [Task<'_>]) -> Lending<'c> {
        // Erasing the lifetime is what the guard makes sound: the pointer is gone when the
        // borrow it came from ends.
        let lent = Lent {
            tasks: tasks.as_mut_ptr().cast::<Task<'static>>(),
            len: tasks.len(),
        };
        *self.slot() = Some(lent);
        Lending(self)
    }

    /// Runs `f` on the lent task that `pick` finds, if a handler is running; None otherwise.
    fn find<R>(
        &self,
        pick: impl for<'t> FnOnce(&'t mut [Task<'static>]) -> Option<&'t mut Task<'static>>,
        f: impl FnOnce(&mut Task<'_>) -> R,
    ) -> Option<R> {
        let slot = self.slot();
        let lent = slot.as_ref()?;
        // SAFETY: see `Lent`: lent for this handler call, which has not returned, and only
        // used under the mutex.
        let tasks = unsafe { std::slice::from_raw_parts_mut(lent.tasks, lent.len) };
        pick(tasks).map(f)
    }

    /// Runs `f` on task `id` if its handler is running; None otherwise.
    fn with<R>(&self, id: u64, f: impl FnOnce(&mut Task<'_>) -> R) -> Option<R> {
        self.find(|tasks| tasks.iter_mut().find(|t| t.id() == id), f)
    }

    /// Runs `f` on the `i`th task of the running batch.
    fn at<R>(&self, i: usize, f: impl FnOnce(&mut Task<'_>) -> R) -> Option<R> {
        self.find(|tasks| tasks.get_mut(i), f)
    }
}

fn worker_class(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
) -> PyResult<Py<PyType>> {
    cell.import(py, "herd.worker", name)
        .map(|c| c.clone().unbind())
}

#[pymethods]
impl Channel {
    /// Sends `data` as a chunk of task `id`: Fatal if it does not fit in a frame, Retryable if
    /// the connection is broken.
    fn chunk(&self, py: Python<'_>, id: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        static FATAL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        static RETRYABLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        let sent = with_bytes(data, |bytes| Ok(self.with(id, |task| task.chunk(bytes))))?;
        match sent {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => {
                let class = if e.is_retryable() {
                    worker_class(py, &RETRYABLE, "Retryable")?
                } else {
                    worker_class(py, &FATAL, "Fatal")?
                };
                Err(PyErr::from_type(
                    class.into_bound(py),
                    e.message().to_owned(),
                ))
            }
            None => Err(PyValueError::new_err(format!(
                "a chunk for task {id}, whose handler has returned"
            ))),
        }
    }

    /// Whether herd cancelled task `id` (while its handler runs).
    fn cancelled(&self, id: u64) -> bool {
        self.with(id, |task| task.is_cancelled()).unwrap_or(false)
    }

    /// Blocks until herd cancels task `id` or `timeout` seconds pass (None: no limit), without
    /// the GIL; whether it was cancelled. False at once if its handler has returned.
    #[pyo3(signature = (id, timeout=None))]
    fn wait_cancelled(&self, py: Python<'_>, id: u64, timeout: Option<f64>) -> PyResult<bool> {
        // A timeout too long for an Instant waits without one.
        let deadline = timeout.and_then(|t| {
            Instant::now().checked_add(Duration::try_from_secs_f64(t.max(0.0)).ok()?)
        });
        loop {
            match self.with(id, |task| task.is_cancelled()) {
                Some(true) => return Ok(true),
                Some(false) => {}
                None => return Ok(false),
            }
            // The watcher raises the flag once a handler has run 10 ms and looks every few ms
            // after: a look this often adds little to that.
            let mut nap = CANCEL_LOOK;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                nap = nap.min(left);
            }
            py.detach(|| thread::sleep(nap));
            py.check_signals()?;
        }
    }

    /// Fault injection only: queues raw bytes after the replies already queued and writes
    /// everything out.
    fn write_raw(&self, id: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        with_bytes(data, |bytes| {
            self.with(id, |task| {
                let out = task.raw_stream();
                out.write_all(bytes).and_then(|()| out.flush())
            })
            .unwrap_or(Ok(()))
            .map_err(PyErr::from)
        })
    }

    /// Fault injection only: writes out the replies of earlier tasks that are still queued.
    fn flush(&self, id: u64) -> PyResult<()> {
        self.with(id, |task| task.raw_stream().flush())
            .unwrap_or(Ok(()))
            .map_err(PyErr::from)
    }
}

/// The Python side of a serve call (herd/worker.py): the handler, and the helpers for what is
/// rare (results other than bytes and str, failures).
struct Callbacks<'py> {
    handler: Bound<'py, PyAny>,
    /// `make_task(id, attempt, payload, channel)`, for a handler run with pass_task=True.
    make_task: Option<Bound<'py, PyAny>>,
    /// `result(value, channel, id) -> bytes`: any result that is not bytes or str (a
    /// generator's stream, dict/list as JSON, a wrong type's TypeError).
    result: Bound<'py, PyAny>,
    /// `failure(exc, cancelled) -> (kind, message, delay_ms)`: how a handler's exception is
    /// reported.
    failure: Bound<'py, PyAny>,
    channel: Bound<'py, Channel>,
}

/// How `failure` classifies an exception (worker.py's `_KIND_*`).
const KIND_FATAL: u8 = 0;
const KIND_RETRYABLE: u8 = 1;
const KIND_CANCELLED: u8 = 2;

impl<'py> Callbacks<'py> {
    /// One handler call: the payload in, the output (or the exception) out.
    fn call(&self, id: u64, attempt: u32, payload: Bound<'py, PyBytes>) -> PyResult<Vec<u8>> {
        let value = match &self.make_task {
            None => self.handler.call1((payload,))?,
            Some(make) => {
                let task = make.call1((id, attempt, payload, &self.channel))?;
                self.handler.call1((task,))?
            }
        };
        if let Ok(b) = value.cast::<PyBytes>() {
            return Ok(b.as_bytes().to_vec());
        }
        if let Ok(s) = value.cast::<PyString>() {
            return Ok(s.to_cow()?.into_owned().into_bytes());
        }
        let bytes = self.result.call1((value, &self.channel, id))?;
        Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
    }

    /// The TaskError for a handler's exception.
    fn failed(&self, err: PyErr, cancelled: bool) -> TaskError {
        let py = self.handler.py();
        // As an exception object with its traceback, which `failure` prints.
        let exc = err.clone_ref(py).into_value(py);
        let classified = self
            .failure
            .call1((exc, cancelled))
            .and_then(|r| r.extract::<(u8, String, Option<u64>)>());
        match classified {
            Ok((KIND_RETRYABLE, message, None)) => TaskError::retryable(message),
            Ok((KIND_RETRYABLE, message, Some(ms))) => {
                TaskError::retryable(message).retry_after(Duration::from_millis(ms))
            }
            Ok((KIND_CANCELLED, _, _)) => TaskError::cancelled(),
            Ok((KIND_FATAL | _, message, _)) => TaskError::fatal(message),
            Err(e) => TaskError::fatal(format!("handler raised {err}; reporting it raised {e}")),
        }
    }
}

/// Runs the worker's side of the protocol on the connected socket `fd` (kept open by the
/// caller): Hello, then one Done per Task until Shutdown. Returns (exit code, message): 0 after
/// Shutdown, 1 when herd went away, 2 for a protocol error. Raises what a handler raised that
/// is not an Exception (SystemExit, KeyboardInterrupt), and a signal handler's exception.
#[pyfunction]
#[pyo3(signature = (fd, handler, token, max_frame, make_task, result, failure))]
#[allow(clippy::too_many_arguments)]
pub fn serve<'py>(
    py: Python<'py>,
    fd: RawFd,
    handler: Bound<'py, PyAny>,
    token: String,
    max_frame: usize,
    make_task: Option<Bound<'py, PyAny>>,
    result: Bound<'py, PyAny>,
    failure: Bound<'py, PyAny>,
) -> PyResult<(u8, String)> {
    let stop = Stop::default();
    let server = thread::current().id();
    let side = |poll_first| Side {
        fd,
        server,
        stop: &stop,
        poll_first,
    };
    let config = worker_config(token, max_frame);
    let calls = Callbacks {
        handler,
        make_task,
        result,
        failure,
        channel: Channel::new(py)?,
    };
    let channel = calls.channel.get();
    let handle = |task: &mut Task<'_>| -> Result<Vec<u8>, TaskError> {
        if stop.stopped() {
            return Err(TaskError::fatal("the worker is stopping"));
        }
        let (id, attempt) = (task.id(), task.attempt());
        let payload = PyBytes::new(py, task.payload());
        let called = {
            let _lent = channel.lend(std::slice::from_mut(task));
            calls.call(id, attempt, payload)
        };
        match called {
            Ok(output) => Ok(output),
            Err(e) if e.is_instance_of::<PyException>(py) => {
                Err(calls.failed(e, task.is_cancelled()))
            }
            Err(e) => {
                // The replies of the tasks before this one go out; then nothing more does.
                let _ = task.raw_stream().flush();
                stop.stop(e);
                Err(TaskError::fatal("the worker is stopping"))
            }
        }
    };
    let served = herd_worker::serve(side(false), side(false), &config, handle);
    ended(&stop, served)
}

/// The Python side of a `serve_batch` call (herd/worker.py).
struct BatchCalls<'py> {
    handler: Bound<'py, PyAny>,
    make_task: Option<Bound<'py, PyAny>>,
    /// `results(value) -> iterator`: the handler's return value as an iterator of per-event
    /// results (a TypeError for anything else).
    results: Bound<'py, PyAny>,
    /// `event(value, cancelled) -> (kind, output or message, delay_ms)`: a per-event result
    /// that is not bytes or str (KIND_OK: an output).
    event: Bound<'py, PyAny>,
    failure: Bound<'py, PyAny>,
    channel: Bound<'py, Channel>,
}

/// `event`'s kind for an output (beside `failure`'s).
const KIND_OK: u8 = 3;

impl<'py> BatchCalls<'py> {
    /// The handler's argument: the batch's payloads, or its Tasks.
    fn argument(&self, tasks: &[Task<'_>]) -> PyResult<Bound<'py, PyList>> {
        let py = self.handler.py();
        let items = tasks.iter().map(|t| -> PyResult<Bound<'py, PyAny>> {
            let payload = PyBytes::new(py, t.payload());
            match &self.make_task {
                None => Ok(payload.into_any()),
                Some(make) => make.call1((t.id(), t.attempt(), payload, &self.channel)),
            }
        });
        let items = items.collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// One per-event result as the task's answer.
    fn answer(&self, value: &Bound<'py, PyAny>, cancelled: bool) -> Result<Vec<u8>, TaskError> {
        if let Ok(b) = value.cast::<PyBytes>() {
            return Ok(b.as_bytes().to_vec());
        }
        if let Ok(s) = value.cast::<PyString>() {
            if let Ok(text) = s.to_cow() {
                return Ok(text.into_owned().into_bytes());
            }
        }
        let converted = self
            .event
            .call1((value, cancelled))
            .and_then(|r| r.extract::<(u8, Bound<'py, PyAny>, Option<u64>)>());
        match converted {
            Ok((KIND_OK, output, _)) => match output.cast::<PyBytes>() {
                Ok(b) => Ok(b.as_bytes().to_vec()),
                Err(_) => Err(TaskError::fatal("a batch result converted to no bytes")),
            },
            Ok((kind, message, delay)) => {
                let message = message
                    .extract::<String>()
                    .unwrap_or_else(|e| format!("a batch result's failure has no message: {e}"));
                Err(task_error(kind, message, delay))
            }
            Err(e) => Err(TaskError::fatal(format!(
                "converting a batch handler's result raised {e}"
            ))),
        }
    }

    /// The error every unanswered task of a batch gets when its handler raised `err`.
    fn failed(&self, err: PyErr, cancelled: bool) -> TaskError {
        let py = self.handler.py();
        let exc = err.clone_ref(py).into_value(py);
        let classified = self
            .failure
            .call1((exc, cancelled))
            .and_then(|r| r.extract::<(u8, String, Option<u64>)>());
        match classified {
            Ok((kind, message, delay)) => task_error(kind, message, delay),
            Err(e) => TaskError::fatal(format!("handler raised {err}; reporting it raised {e}")),
        }
    }
}

/// The TaskError for `failure`'s (kind, message, delay_ms).
fn task_error(kind: u8, message: String, delay_ms: Option<u64>) -> TaskError {
    match (kind, delay_ms) {
        (KIND_RETRYABLE, None) => TaskError::retryable(message),
        (KIND_RETRYABLE, Some(ms)) => {
            TaskError::retryable(message).retry_after(Duration::from_millis(ms))
        }
        (KIND_CANCELLED, _) => TaskError::cancelled(),
        _ => TaskError::fatal(message),
    }
}

/// `serve` for a batch handler of up to `max` tasks per call: Hello and Batching{max}, then
/// one handler call per Task or Batch, each task answered on its own. The handler gets a list
/// of payloads (or Tasks from `make_task`); each per-event result it returns or yields is sent
/// at once. As `serve` otherwise.
#[pyfunction]
#[pyo3(signature = (fd, handler, token, max_frame, max, make_task, results, event, failure))]
#[allow(clippy::too_many_arguments)]
pub fn serve_batch<'py>(
    py: Python<'py>,
    fd: RawFd,
    handler: Bound<'py, PyAny>,
    token: String,
    max_frame: usize,
    max: u32,
    make_task: Option<Bound<'py, PyAny>>,
    results: Bound<'py, PyAny>,
    event: Bound<'py, PyAny>,
    failure: Bound<'py, PyAny>,
) -> PyResult<(u8, String)> {
    let stop = Stop::default();
    let server = thread::current().id();
    let side = |poll_first| Side {
        fd,
        server,
        stop: &stop,
        poll_first,
    };
    let config = worker_config(token, max_frame);
    let calls = BatchCalls {
        handler,
        make_task,
        results,
        event,
        failure,
        channel: Channel::new(py)?,
    };
    let channel = calls.channel.get();
    let handle = |tasks: &mut [Task<'_>]| -> Vec<Result<Vec<u8>, TaskError>> {
        let n = tasks.len();
        if stop.stopped() {
            return (0..n)
                .map(|_| Err(TaskError::fatal("the worker is stopping")))
                .collect();
        }
        // Answered: each result goes out as it comes; what is returned below is for the rest.
        let mut answered = 0;
        let outcome: PyResult<()> = (|| {
            let argument = calls.argument(tasks)?;
            let _lent = channel.lend(tasks);
            let value = calls.handler.call1((argument,))?;
            let results = calls.results.call1((value,))?;
            let results = results.cast_into::<PyIterator>()?;
            for value in results {
                if answered == n {
                    break; // extra results are ignored, as in the Rust SDK
                }
                let value = value?;
                let i = answered;
                let cancelled = channel.at(i, |t| t.is_cancelled()).unwrap_or(false);
                let result = calls.answer(&value, cancelled);
                // A broken connection is the serve loop's to report, after the handler.
                let _ = channel.at(i, |t| t.answer(result));
                answered += 1;
            }
            Ok(())
        })();
        let mut out: Vec<Result<Vec<u8>, TaskError>> =
            (0..answered).map(|_| Ok(Vec::new())).collect();
        match outcome {
            Ok(()) => {}
            Err(e) if e.is_instance_of::<PyException>(py) => {
                let cancelled = tasks[answered..].iter().any(|t| t.is_cancelled());
                let err = calls.failed(e, cancelled);
                out.extend((answered..n).map(|_| Err(err.clone())));
            }
            Err(e) => {
                // The replies of the tasks before this one go out; then nothing more does.
                if let Some(task) = tasks.first_mut() {
                    let _ = task.raw_stream().flush();
                }
                stop.stop(e);
                out.extend((answered..n).map(|_| Err(TaskError::fatal("the worker is stopping"))));
            }
        }
        out
    };
    let served = herd_worker::serve_batch(side(false), side(false), &config, max, handle);
    ended(&stop, served)
}

/// The worker's side of the handshake: this SDK's protocol, herd's frame limit.
fn worker_config(token: String, max_frame: usize) -> Config {
    Config {
        socket: Default::default(),
        token,
        max_frame: max_frame.min(herd_proto::MAX_FRAME_CEILING),
        protocol: PROTOCOL_VERSION,
    }
}

/// What a serve call returns: (exit code, message), or what a handler raised that stopped it.
fn ended(stop: &Stop, served: Result<(), Error>) -> PyResult<(u8, String)> {
    if let Some(err) = stop.take() {
        return Err(err);
    }
    Ok(match served {
        Ok(()) => (0, String::new()),
        Err(e) => (e.exit_code(), e.report()),
    })
}
