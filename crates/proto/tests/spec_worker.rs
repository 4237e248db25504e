//! Runs the Python worker printed in docs/PROTOCOL.md §11 as a real process against a socket
//! driven by herd's codec, so that the spec's reference worker (written from the spec, not
//! from the Rust code) agrees with the codec, on volume and on hostile input, and keeps the
//! documented exit codes. Needs `python3` on the PATH.

#![allow(clippy::unwrap_used)]

#[path = "support/vectors.rs"]
mod vectors;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use herd_proto::codec::{self, read_frame};
use herd_proto::{FromWorker, Outcome, ToWorker, DEFAULT_MAX_FRAME, MIN_PROTOCOL_VERSION};

/// Generous: the machine is small and shared.
const TIMEOUT: Duration = Duration::from_secs(120);
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The Python block of §11.
fn spec_worker_source() -> String {
    let doc = std::fs::read_to_string(repo_path("docs/PROTOCOL.md")).unwrap();
    let section = doc
        .split("\n## 11.")
        .nth(1)
        .expect("docs/PROTOCOL.md has a section 11");
    let code = section
        .split("```python\n")
        .nth(1)
        .expect("section 11 has a python block");
    code.split("\n```").next().unwrap().to_string()
}

/// A private directory holding the script and the socket; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herd-proto-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("worker.py"), spec_worker_source()).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn python(script: &Path) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .env_remove(herd_proto::ENV_SOCKET)
        .env_remove(herd_proto::ENV_TOKEN)
        .env_remove(herd_proto::ENV_MAX_FRAME)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The spec's worker, started as herd would start it, and its connection after `Hello`.
struct Worker {
    child: Option<Child>,
    conn: UnixStream,
    _scratch: Scratch,
}

impl Worker {
    fn start(name: &str) -> Self {
        let scratch = Scratch::new(name);
        let socket = scratch.path("workers.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let child = python(&scratch.path("worker.py"))
            .env(herd_proto::ENV_SOCKET, &socket)
            .env(herd_proto::ENV_TOKEN, TOKEN)
            .env(herd_proto::ENV_WORKER, "0")
            .env(herd_proto::ENV_MAX_FRAME, DEFAULT_MAX_FRAME.to_string())
            .spawn()
            .expect("cannot run python3 (needed for this test)");
        let pid = child.id();
        let mut worker = Self {
            child: Some(child),
            conn: within(TIMEOUT, "the worker's connection", move || {
                listener.accept().unwrap().0
            }),
            _scratch: scratch,
        };
        let hello = worker.recv();
        assert_eq!(
            hello,
            // The spec's worker speaks version 1 (it never streams chunks); herd accepts it.
            Some(FromWorker::Hello {
                protocol: MIN_PROTOCOL_VERSION,
                pid,
                token: TOKEN.into()
            })
        );
        worker
    }

    fn recv(&mut self) -> Option<FromWorker> {
        read_frame(&mut self.conn, &mut Vec::new(), DEFAULT_MAX_FRAME).unwrap()
    }

    /// Writes `bytes` from another thread, so that a worker blocked writing its replies
    /// cannot deadlock the test; returns that thread.
    fn send_in_background(&self, bytes: Vec<u8>) -> thread::JoinHandle<std::io::Result<()>> {
        let mut conn = self.conn.try_clone().unwrap();
        thread::spawn(move || conn.write_all(&bytes))
    }

    /// Waits for the worker to exit; returns its status and what it printed on stderr.
    fn exit(mut self) -> (ExitStatus, String) {
        let child = self.child.take().unwrap();
        wait(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `f` on a thread and waits up to `limit` for its result.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no {what} within {limit:?}"))
}

fn wait(mut child: Child) -> (ExitStatus, String) {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let _ = tx.send((child.wait().unwrap(), stderr));
    });
    rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("worker {pid} did not exit within {TIMEOUT:?}")
    })
}

fn frame(msg: &ToWorker, out: &mut Vec<u8>) {
    codec::encode_frame(msg, out, DEFAULT_MAX_FRAME).unwrap();
}

/// The task `i` of the volume test: ids across every varint width, attempts 1 to 3, payloads
/// from empty (the handler raises) to 100 kB (a length in the u32 form).
fn volume_task(i: u64) -> ToWorker {
    let id = match i % 4 {
        0 => i,
        1 => i + 70_000,
        2 => i + (1 << 33),
        _ => u64::MAX - i,
    };
    let payload = match i {
        _ if i % 1000 == 7 => Vec::new(),
        5000 => vec![b'z'; 100_000],
        _ => format!("event-{i}").into_bytes(),
    };
    ToWorker::Task {
        id,
        attempt: (i % 3) as u32 + 1,
        payload,
    }
}

#[test]
fn spec_worker_answers_20000_pipelined_tasks_in_order_then_exits_0_on_shutdown() {
    const N: u64 = 20_000;
    let mut worker = Worker::start("volume");
    let mut bytes = Vec::new();
    for i in 0..N {
        frame(&volume_task(i), &mut bytes);
    }
    frame(&ToWorker::Shutdown, &mut bytes);
    let writer = worker.send_in_background(bytes);
    for i in 0..N {
        let ToWorker::Task { id, payload, .. } = volume_task(i) else {
            unreachable!()
        };
        let outcome = if payload.is_empty() {
            Outcome::Err {
                retryable: false,
                message: "ValueError: empty event".into(),
            }
        } else {
            Outcome::Ok(payload.to_ascii_uppercase())
        };
        assert_eq!(
            worker.recv(),
            Some(FromWorker::Done { id, outcome }),
            "task {i}"
        );
    }
    writer.join().unwrap().unwrap();
    // After Shutdown: nothing more on the socket, then exit code 0.
    assert_eq!(worker.recv(), None);
    let (status, stderr) = worker.exit();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn spec_worker_accepts_non_canonical_varints() {
    let file = vectors::build();
    let mut worker = Worker::start("noncanonical");
    let mut expected = Vec::new();
    for n in file
        .non_canonical
        .iter()
        .filter(|n| n.direction == vectors::HERD_TO_WORKER)
    {
        let msg = vectors::Message::from_json(&n.direction, &n.message).unwrap();
        // The spec's worker speaks version 1: herd never sends it a version 3 frame.
        let vectors::Message::ToWorker(ToWorker::Task { id, payload, .. }) = msg else {
            continue;
        };
        (&worker.conn)
            .write_all(&vectors::unhex(&n.frame_hex).unwrap())
            .unwrap();
        expected.push((n.name.clone(), id, payload));
    }
    assert!(!expected.is_empty());
    for (name, id, payload) in expected {
        let outcome = if payload.is_empty() {
            Outcome::Err {
                retryable: false,
                message: "ValueError: empty event".into(),
            }
        } else {
            Outcome::Ok(payload.to_ascii_uppercase())
        };
        assert_eq!(
            worker.recv(),
            Some(FromWorker::Done { id, outcome }),
            "{name}"
        );
    }
    (&worker.conn)
        .write_all(&{
            let mut b = Vec::new();
            frame(&ToWorker::Shutdown, &mut b);
            b
        })
        .unwrap();
    assert_eq!(worker.exit().0.code(), Some(0));
}

#[test]
fn spec_worker_exits_1_when_herd_goes_away() {
    let worker = Worker::start("eof");
    worker.conn.shutdown(std::net::Shutdown::Both).unwrap();
    let (status, stderr) = worker.exit();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
}

/// Each malformed frame herd could send makes the worker stop with code 2 (after answering
/// the well-formed task sent before it, which proves the stream was read up to the bad frame).
#[test]
fn spec_worker_exits_2_on_every_malformed_frame_from_herd() {
    let cases: Vec<_> = vectors::malformed()
        .into_iter()
        .filter(|m| m.direction == vectors::HERD_TO_WORKER)
        .collect();
    assert!(cases.len() >= 5);
    for case in cases {
        let mut worker = Worker::start("malformed");
        let mut bytes = Vec::new();
        frame(
            &ToWorker::Task {
                id: 1,
                attempt: 1,
                payload: b"before".to_vec(),
            },
            &mut bytes,
        );
        bytes.extend(vectors::unhex(&case.frame_hex).unwrap());
        (&worker.conn).write_all(&bytes).unwrap();
        assert_eq!(
            worker.recv(),
            Some(FromWorker::Done {
                id: 1,
                outcome: Outcome::Ok(b"BEFORE".to_vec())
            }),
            "{}",
            case.name
        );
        let (status, stderr) = worker.exit();
        assert_eq!(status.code(), Some(2), "{}: stderr: {stderr}", case.name);
        assert!(stderr.contains("protocol error"), "{}: {stderr}", case.name);
    }
}

#[test]
fn spec_worker_outside_herd_says_so_and_exits_2() {
    let scratch = Scratch::new("outside");
    let child = python(&scratch.path("worker.py")).spawn().unwrap();
    let (status, stderr) = wait(child);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("is a herd worker"), "{stderr}");
}
