//! Submits events to a running `herd serve` and prints their records: what `herd submit`
//! does, through the library.
//!
//! ```text
//! herd serve --control /tmp/herd.sock -- python3 worker.py &
//! cargo run -p herd-supervisor --example submit -- /tmp/herd.sock < events.jsonl
//! ```

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use herd_supervisor::client::{Client, ClientError};
use herd_supervisor::{Input, SubmitOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(control) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: submit CONTROL_SOCKET < EVENTS");
        return ExitCode::from(2);
    };
    let mut events = Vec::new();
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(line) => events.push(line),
            Err(e) => {
                eprintln!("submit: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match submit(&control, events).await {
        Ok(records) => {
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(&records).and_then(|()| out.flush()) {
                eprintln!("submit: cannot write the records: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("submit: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `events` as one submission to the daemon at `control` and returns their records,
/// JSON lines in the order they completed (`seq` is the event's index in `events`).
pub async fn submit(control: &Path, events: Vec<String>) -> Result<Vec<u8>, ClientError> {
    let client = Client::connect(control).await?;
    let (mut sender, mut records) = client.submit(&SubmitOptions::default()).await?;
    // Events go out while records come in: the daemon reads a submitter's events only as
    // fast as that submitter reads its records.
    let send = async move {
        let batch: Vec<Input> = events
            .into_iter()
            .enumerate()
            .map(|(seq, line)| Input::event(seq as u64, line.into()))
            .collect();
        for chunk in batch.chunks(256) {
            sender.send(chunk).await?;
        }
        sender.end().await
    };
    let receive = async move {
        let mut out = Vec::new();
        while let Some(bytes) = records.next().await? {
            out.extend_from_slice(&bytes);
        }
        Ok::<_, ClientError>(out)
    };
    let (sent, received) = tokio::join!(send, receive);
    // The records say more than a failed send (e.g. the daemon's error reply).
    let records = received?;
    sent?;
    Ok(records)
}
