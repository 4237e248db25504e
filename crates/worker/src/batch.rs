//! Batch handlers (protocol 3's optional `Batching`/`Batch`): many tasks in one handler call,
//! for work that is cheaper per event in bulk (one model inference over 64 inputs, one
//! vectorised pass, one bulk write).
//!
//! The worker declares `Batching { max }` right after its `Hello`; herd then sends it up to
//! `max` tasks at once when it runs with `--batch` (and single tasks otherwise, or when only
//! one is queued). The handler answers each task on its own: one result per task, in order,
//! each becoming that task's `Done`, so one bad input fails alone and every other input of the
//! batch keeps its output. Everything else (reply batching, the flusher, withdrawals of batches
//! not started yet, exit codes) is as for [`run`](crate::run).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

use herd_proto::Outcome;

use crate::{
    connect_socket, exit, panic_message, serve_handler, Config, Error, Handler, PollReader, Task,
    TaskError,
};

/// Runs `handler` as a herd worker that takes up to `max` tasks per call, until the
/// supervisor sends the termination frame: [`run`](crate::run) for a batch handler.
///
/// The handler gets the tasks of one batch (at least one) and returns one result per task,
/// in the same order. A result missing at the end (a shorter vector) fails its task with a
/// non-retryable error saying so; extra ones are ignored. A panic fails every task of the
/// batch with a non-retryable error, and the worker keeps serving.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     herd_worker::run_batch(64, |tasks| {
///         // One pass over the whole batch; here, the lengths of the payloads.
///         tasks
///             .iter()
///             .map(|t| Ok(t.payload().len().to_string().into_bytes()))
///             .collect()
///     })
/// }
/// ```
///
/// Exit codes are those of [`run`](crate::run).
///
/// # Caveats
/// - `--timeout` bounds one handler call: the batch's first answer is timed from its start.
/// - A worker that dies in a batch cannot say which input was to blame: herd runs the batch's
///   tasks again in smaller batches until the culprit runs alone (see herd's BATCHES.md).
pub fn run_batch<F>(max: u32, handler: F) -> ExitCode
where
    F: FnMut(&mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>>,
{
    exit(Config::from_env().and_then(|config| run_batch_with(&config, max, handler)))
}

/// Connects to the supervisor described by `config` and serves a batch `handler` of up to `max`
/// tasks per call: [`run_with`](crate::run_with) for a batch handler.
///
/// # Errors
/// As [`run_with`](crate::run_with).
pub fn run_batch_with<F>(config: &Config, max: u32, handler: F) -> Result<(), Error>
where
    F: FnMut(&mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>>,
{
    let socket = connect_socket(config)?;
    let reader = PollReader {
        socket: &socket,
        poll_first: false,
    };
    serve_batch(reader, &socket, config, max, handler)
}

/// Runs the worker's side of the protocol over an already connected stream, with a batch
/// `handler` of up to `max` tasks per call: [`serve`](crate::serve) for a batch handler. It
/// declares `Batching { max }` after `Hello` when it speaks protocol 3 and `max` is 2 or more
/// (otherwise it gets single tasks, each one call with a slice of one).
///
/// # Errors
/// As [`serve`](crate::serve).
pub fn serve_batch<R, W, F>(
    reader: R,
    writer: W,
    config: &Config,
    max: u32,
    handler: F,
) -> Result<(), Error>
where
    R: Read + AsFd + Send,
    W: Write + Send,
    F: FnMut(&mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>>,
{
    serve_handler(reader, writer, config, Batched { max, handler })
}

/// A batch handler, as the serve loop calls it.
struct Batched<F> {
    max: u32,
    handler: F,
}

impl<F> Handler for Batched<F>
where
    F: FnMut(&mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>>,
{
    fn batching(&self) -> u32 {
        self.max
    }

    fn one(&mut self, task: &mut Task<'_>, v3: bool) -> Outcome {
        let mut out = Vec::with_capacity(1);
        self.many(std::slice::from_mut(task), v3, &mut out);
        out.pop().unwrap_or(Outcome::Err {
            retryable: false,
            message: "the batch handler returned no result".into(),
        })
    }

    fn many(&mut self, tasks: &mut [Task<'_>], v3: bool, out: &mut Vec<Outcome>) {
        let n = tasks.len();
        let handler = &mut self.handler;
        match panic::catch_unwind(AssertUnwindSafe(|| handler(tasks))) {
            Ok(results) => {
                let got = results.len();
                for (task, result) in tasks.iter().zip(results) {
                    out.push(match result {
                        Ok(output) => Outcome::Ok(output),
                        Err(err) => err.into_outcome(v3, task.is_cancelled()),
                    });
                }
                for _ in got..n {
                    out.push(Outcome::Err {
                        retryable: false,
                        message: format!(
                            "the batch handler returned {got} results for a batch of {n} tasks"
                        ),
                    });
                }
            }
            Err(payload) => {
                let message = format!("handler panicked: {}", panic_message(payload.as_ref()));
                out.extend((0..n).map(|_| Outcome::Err {
                    retryable: false,
                    message: message.clone(),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::net::UnixStream;
    use std::thread;

    use herd_proto::codec::{read_frame, write_frame};
    use herd_proto::{BatchTask, FromWorker, Outcome, ToWorker, DEFAULT_MAX_FRAME};

    use super::*;

    fn config() -> Config {
        Config {
            socket: "/unused".into(),
            token: "tok".into(),
            max_frame: DEFAULT_MAX_FRAME,
            protocol: herd_proto::PROTOCOL_VERSION,
        }
    }

    fn recv(s: &UnixStream) -> FromWorker {
        let mut r = s;
        read_frame::<FromWorker, _>(&mut r, &mut Vec::new(), DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap()
    }

    fn send(s: &UnixStream, msg: &ToWorker) {
        let mut w = s;
        write_frame(&mut w, msg, &mut Vec::new(), DEFAULT_MAX_FRAME).unwrap();
    }

    fn batch(ids: &[u64]) -> ToWorker {
        ToWorker::Batch {
            tasks: ids
                .iter()
                .map(|&id| BatchTask {
                    id,
                    attempt: 1,
                    payload: id.to_string().into_bytes(),
                })
                .collect(),
        }
    }

    fn spawn<F>(max: u32, handler: F) -> (UnixStream, thread::JoinHandle<Result<(), Error>>)
    where
        F: FnMut(&mut [Task<'_>]) -> Vec<Result<Vec<u8>, TaskError>> + Send + 'static,
    {
        let (sup, worker) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || serve_batch(&worker, &worker, &config(), max, handler));
        (sup, t)
    }

    /// Batching follows Hello at once; each task of a batch gets its own Done, in order, and a
    /// lone Task is a batch of one.
    #[test]
    fn declares_batching_and_answers_each_task() {
        let (sup, t) = spawn(8, |tasks| {
            tasks
                .iter()
                .map(|t| match t.payload() {
                    b"2" => Err(TaskError::fatal("two is bad")),
                    p => Ok(p.to_vec()),
                })
                .collect()
        });
        assert!(matches!(recv(&sup), FromWorker::Hello { protocol: 3, .. }));
        assert_eq!(recv(&sup), FromWorker::Batching { max: 8 });
        send(&sup, &batch(&[1, 2, 3]));
        for (id, ok) in [(1, true), (2, false), (3, true)] {
            match recv(&sup) {
                FromWorker::Done { id: got, outcome } => {
                    assert_eq!(got, id);
                    assert_eq!(matches!(outcome, Outcome::Ok(_)), ok, "{outcome:?}");
                }
                other => panic!("{other:?}"),
            }
        }
        send(
            &sup,
            &ToWorker::Task {
                id: 9,
                attempt: 1,
                payload: b"9".to_vec(),
            },
        );
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 9,
                outcome: Outcome::Ok(b"9".to_vec())
            }
        );
        send(&sup, &ToWorker::Shutdown);
        t.join().unwrap().unwrap();
    }

    /// Too few results fail the rest with a clear message; a panic fails the whole batch, and
    /// the worker keeps serving.
    #[test]
    fn short_answers_and_panics_fail_per_task() {
        let (sup, t) = spawn(8, |tasks| {
            if tasks.iter().any(|t| t.payload() == b"7") {
                panic!("seven");
            }
            vec![Ok(b"only one".to_vec())]
        });
        recv(&sup);
        recv(&sup);
        send(&sup, &batch(&[1, 2]));
        assert!(matches!(
            recv(&sup),
            FromWorker::Done {
                id: 1,
                outcome: Outcome::Ok(_)
            }
        ));
        match recv(&sup) {
            FromWorker::Done {
                id: 2,
                outcome: Outcome::Err { retryable, message },
            } => {
                assert!(!retryable);
                assert!(
                    message.contains("returned 1 results for a batch of 2"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        send(&sup, &batch(&[7, 8]));
        for id in [7, 8] {
            match recv(&sup) {
                FromWorker::Done {
                    id: got,
                    outcome: Outcome::Err { retryable, message },
                } => {
                    assert_eq!((got, retryable), (id, false));
                    assert!(message.contains("handler panicked: seven"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        send(&sup, &ToWorker::Shutdown);
        t.join().unwrap().unwrap();
    }

    /// `Task::answer` sends a task's Done while the batch still runs; what the handler then
    /// returns for it is ignored, and a second answer is refused. A lone Task may be answered
    /// the same way.
    #[test]
    fn an_early_answer_goes_out_before_the_batch_ends() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (sup, t) = spawn(8, move |tasks| {
            tasks[0].answer(Ok(b"early".to_vec())).unwrap();
            assert!(tasks[0].answer(Ok(b"twice".to_vec())).is_err());
            assert!(tasks[0].chunk(b"late").is_err());
            if tasks.len() > 1 {
                // Held until the supervisor has seen the early answer.
                go_rx
                    .recv_timeout(std::time::Duration::from_secs(30))
                    .unwrap();
            }
            tasks
                .iter()
                .map(|t| Ok(format!("late {}", t.id()).into_bytes()))
                .collect()
        });
        recv(&sup);
        recv(&sup);
        send(&sup, &batch(&[1, 2]));
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 1,
                outcome: Outcome::Ok(b"early".to_vec())
            }
        );
        go_tx.send(()).unwrap();
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 2,
                outcome: Outcome::Ok(b"late 2".to_vec())
            }
        );
        send(
            &sup,
            &ToWorker::Task {
                id: 3,
                attempt: 1,
                payload: b"3".to_vec(),
            },
        );
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 3,
                outcome: Outcome::Ok(b"early".to_vec())
            }
        );
        send(&sup, &ToWorker::Shutdown);
        t.join().unwrap().unwrap();
    }

    /// A single task's handler has nothing to answer early: its return value is the answer.
    #[test]
    fn answer_is_refused_outside_a_batch_handler() {
        let (sup, worker) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            crate::serve(&worker, &worker, &config(), |t| {
                let refused = t.answer(Ok(b"early".to_vec())).is_err();
                Ok(refused.to_string().into_bytes())
            })
        });
        recv(&sup);
        send(
            &sup,
            &ToWorker::Task {
                id: 1,
                attempt: 1,
                payload: Vec::new(),
            },
        );
        assert_eq!(
            recv(&sup),
            FromWorker::Done {
                id: 1,
                outcome: Outcome::Ok(b"true".to_vec())
            }
        );
        send(&sup, &ToWorker::Shutdown);
        t.join().unwrap().unwrap();
    }

    /// A plain handler never asked for batches: a Batch is a protocol violation (exit 2).
    #[test]
    fn a_batch_to_a_single_handler_is_refused() {
        let (sup, worker) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            crate::serve(&worker, &worker, &config(), |t| Ok(t.payload().to_vec()))
        });
        assert!(matches!(recv(&sup), FromWorker::Hello { .. }));
        send(&sup, &batch(&[1, 2]));
        let err = t.join().unwrap().unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}
