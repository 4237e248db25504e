//! An async worker (the `tokio` feature): each event is a TCP address, `host:port`; the output
//! is how long connecting to it took, as JSON. The handler awaits the connection on the
//! runtime the SDK runs it on, and uses `?` throughout:
//! - an event that is not UTF-8 or not an address fails at once (fatal: it never will be);
//! - a refused connection or a timeout is retryable: herd tries the event again, with backoff.
//!
//! ```console
//! $ cargo build -p herd-worker --features tokio --example probe
//! $ printf '127.0.0.1:22\nnowhere\n' | herd run -- target/debug/examples/probe
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use herd_worker::{Task, TaskError};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// How long one attempt may wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

async fn probe(task: &mut Task<'_>) -> Result<Vec<u8>, TaskError> {
    let addr: SocketAddr = std::str::from_utf8(task.payload())?.trim().parse()?;
    let started = Instant::now();
    // The outer `?` is the timeout's (Elapsed), the inner one the connection's (io::Error).
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await??;
    let micros = started.elapsed().as_micros();
    drop(stream);
    Ok(format!(r#"{{"addr":"{addr}","connect_micros":{micros}}}"#).into_bytes())
}

fn main() -> ExitCode {
    herd_worker::run_async(probe)
}
