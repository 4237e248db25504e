//! Protocol 3 in the SDK, over a socket pair: withdrawals and cancels answered while a handler
//! runs, and between handlers; `retry_after`; and a worker that speaks protocol 2.

#![allow(clippy::unwrap_used)]

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use herd_proto::{FromWorker, Outcome, ToWorker};

use super::Shared;
use crate::tests::{config, recv, send, task};
use crate::{serve, Config, Error, Outbox, Task, TaskError};

/// A worker whose task "wait" blocks until the test sends on the returned channel, whose task
/// "cancellable" runs until cancelled, and whose others echo.
fn spawn(
    config: Config,
) -> (
    UnixStream,
    mpsc::Sender<()>,
    thread::JoinHandle<Result<(), Error>>,
) {
    let (sup, worker) = UnixStream::pair().unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(gate));
    let handle = thread::spawn(move || {
        serve(&worker, &worker, &config, move |t: &mut Task<'_>| {
            match t.payload() {
                b"wait" => {
                    gate.lock().unwrap().recv().unwrap();
                    Ok(b"waited".to_vec())
                }
                b"cancellable" => {
                    while !t.is_cancelled() {
                        thread::sleep(Duration::from_millis(1));
                    }
                    Err(TaskError::cancelled())
                }
                b"later" => {
                    Err(TaskError::retryable("busy").retry_after(Duration::from_millis(1500)))
                }
                b"cancelled" => Err(TaskError::cancelled()),
                p => Ok(p.to_vec()),
            }
        })
    });
    assert!(matches!(recv(&sup), FromWorker::Hello { .. }));
    (sup, release, handle)
}

fn done(id: u64, outcome: Outcome) -> FromWorker {
    FromWorker::Done { id, outcome }
}

#[test]
fn tasks_behind_a_slow_handler_are_given_back_and_the_rest_run() {
    let (sup, release, worker) = spawn(config());
    send(&sup, &task(1, 1, b"wait"));
    send(&sup, &task(2, 1, b"two"));
    send(&sup, &task(3, 1, b"three"));
    send(&sup, &ToWorker::Withdraw { id: 2 });
    send(&sup, &ToWorker::Withdraw { id: 1 });
    // Answered while 1 still runs: 2 was not started, 1 was.
    assert_eq!(recv(&sup), FromWorker::Withdrawn { id: 2 });
    assert_eq!(recv(&sup), FromWorker::Kept { id: 1 });
    release.send(()).unwrap();
    assert_eq!(recv(&sup), done(1, Outcome::Ok(b"waited".to_vec())));
    assert_eq!(recv(&sup), done(3, Outcome::Ok(b"three".to_vec())));
    send(&sup, &ToWorker::Shutdown);
    worker.join().unwrap().unwrap();
}

#[test]
fn a_withdraw_read_between_handlers_finds_its_task_run() {
    let (sup, _release, worker) = spawn(config());
    send(&sup, &task(1, 1, b"one"));
    assert_eq!(recv(&sup), done(1, Outcome::Ok(b"one".to_vec())));
    send(&sup, &ToWorker::Withdraw { id: 1 });
    send(&sup, &ToWorker::Cancel { id: 1 });
    send(&sup, &task(2, 1, b"two"));
    assert_eq!(recv(&sup), FromWorker::Kept { id: 1 });
    assert_eq!(recv(&sup), done(2, Outcome::Ok(b"two".to_vec())));
    send(&sup, &ToWorker::Shutdown);
    worker.join().unwrap().unwrap();
}

#[test]
fn a_cancel_raises_the_running_tasks_flag_and_answers_one_ahead_at_once() {
    let (sup, release, worker) = spawn(config());
    send(&sup, &task(1, 1, b"wait"));
    send(&sup, &task(2, 1, b"two"));
    send(&sup, &ToWorker::Cancel { id: 2 });
    assert_eq!(
        recv(&sup),
        done(2, Outcome::Cancelled),
        "not started: answered now"
    );
    release.send(()).unwrap();
    assert_eq!(recv(&sup), done(1, Outcome::Ok(b"waited".to_vec())));
    send(&sup, &task(3, 1, b"cancellable"));
    send(&sup, &ToWorker::Cancel { id: 3 });
    assert_eq!(recv(&sup), done(3, Outcome::Cancelled));
    send(&sup, &ToWorker::Shutdown);
    worker.join().unwrap().unwrap();
}

#[test]
fn retry_after_is_sent_and_a_cancel_nobody_asked_for_is_a_fatal_error() {
    let (sup, _release, worker) = spawn(config());
    send(&sup, &task(1, 1, b"later"));
    assert_eq!(
        recv(&sup),
        done(
            1,
            Outcome::RetryAfter {
                message: "busy".into(),
                delay_ms: 1500
            }
        )
    );
    send(&sup, &task(2, 1, b"cancelled"));
    let FromWorker::Done {
        id: 2,
        outcome: Outcome::Err {
            retryable: false,
            message,
        },
    } = recv(&sup)
    else {
        panic!("a fatal error");
    };
    assert!(message.contains("herd did not cancel"), "{message}");
    send(&sup, &ToWorker::Shutdown);
    worker.join().unwrap().unwrap();
}

#[test]
fn a_protocol_2_worker_says_so_sends_plain_retries_and_refuses_v3_frames() {
    let (sup, worker) = UnixStream::pair().unwrap();
    let v2 = Config {
        protocol: 2,
        ..config()
    };
    let handle = thread::spawn(move || {
        serve(&worker, &worker, &v2, |_t: &mut Task<'_>| {
            Err(TaskError::retryable("busy").retry_after(Duration::from_secs(1)))
        })
    });
    assert!(matches!(recv(&sup), FromWorker::Hello { protocol: 2, .. }));
    send(&sup, &task(1, 1, b"x"));
    assert_eq!(
        recv(&sup),
        done(
            1,
            Outcome::Err {
                retryable: true,
                message: "busy".into()
            }
        )
    );
    send(&sup, &ToWorker::Withdraw { id: 1 });
    let err = handle.join().unwrap().unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
}

/// The rare hang of a worker holding its tasks, its watcher in `poll`: the watcher has waited
/// out a handler (count 1) when it ends; the serve loop counts it ended, sees the watcher not
/// engaged (so writes no wake-up), and the watcher takes the read side before the serve loop
/// takes it back. The watcher must see its handler gone and let go; it used to read for the
/// count it found then (2: no handler), matching it, and poll for a wake-up that never came
/// while the serve loop waited for the lock.
#[test]
fn a_watcher_that_takes_the_read_side_after_its_handler_ended_lets_go() {
    let (_sup, worker) = UnixStream::pair().unwrap();
    let shared = Shared::new(BufReader::new(&worker)).unwrap();
    let outbox = Outbox::new(&worker);
    shared.begin(1);
    let waited_out = 1; // the count the watcher's park loop saw last for WATCH_AFTER
    shared.mark_ended();
    let (let_go, gone) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            shared.engage(waited_out, &outbox, 1024);
            let _ = let_go.send(());
        });
        let released = gone.recv_timeout(Duration::from_secs(10)).is_ok();
        if !released {
            shared.shut(); // its wake-up ends the stuck watcher, so the scope can end
        }
        assert!(
            released,
            "the watcher kept the read side after its handler ended"
        );
    });
    // The serve loop takes the read side back and carries on.
    assert!(shared.reader.try_lock().is_ok());
}
