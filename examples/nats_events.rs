//! Events in and records out of `herd serve --nats` on a machine with a NATS server but no `nats`
//! CLI (Debian's nats-server package ships none):
//!
//! ```text
//! nats_events publish [SUBJECT] < EVENTS  # each line a message on SUBJECT (herd.events),
//!                                         # stored by JetStream (PubAck) before the next
//! nats_events records N [STREAM]          # prints the lines of STREAM (HERD_RESULTS) from the
//!                                         # start until N final records were printed
//! ```
//!
//! The server is `NATS_URL` (nats://127.0.0.1:4222). Both wait up to 30 s for their stream to
//! exist (the first `herd serve --nats` creates it), and `records` up to 30 s for each line.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream::Stream};
use futures_util::StreamExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str =
    "usage: nats_events publish [SUBJECT] < EVENTS | nats_events records N [STREAM]";
const WAIT: Duration = Duration::from_secs(30);

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url.as_str())
            .await?;
        let js = jetstream::new(client);
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["publish"] => publish(&js, "herd.events").await,
            ["publish", subject] => publish(&js, subject).await,
            ["records", n] => records(&js, n.parse()?, "HERD_RESULTS").await,
            ["records", n, stream] => records(&js, n.parse()?, stream).await,
            _ => Err(USAGE.into()),
        }
    })
}

/// The stream named `name`, or the one capturing subject `subject`, once it exists.
async fn stream_when_there(
    js: &jetstream::Context,
    name: Option<&str>,
    subject: &str,
) -> Result<Stream, Error> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = match name {
            Some(name) => js.get_stream(name).await.ok(),
            None => match js.stream_by_subject(subject).await {
                Ok(name) => js.get_stream(name).await.ok(),
                Err(_) => None,
            },
        };
        if let Some(s) = found {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no stream for {subject} after {WAIT:?}: start `herd serve --nats` first, which \
                 creates it"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish(js: &jetstream::Context, subject: &str) -> Result<(), Error> {
    stream_when_there(js, None, subject).await?;
    let subject = subject.to_string();
    let mut n = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        js.publish(subject.clone(), line.into()).await?.await?;
        n += 1;
    }
    eprintln!("nats_events: {n} events published to {subject}");
    Ok(())
}

async fn records(js: &jetstream::Context, n: u64, stream: &str) -> Result<(), Error> {
    let stream = stream_when_there(js, Some(stream), stream).await?;
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await?;
    let mut messages = reader.messages().await?;
    let mut out = std::io::stdout().lock();
    let mut finals = 0;
    while finals < n {
        let msg = match tokio::time::timeout(WAIT, messages.next()).await {
            Ok(Some(msg)) => msg?,
            Ok(None) => return Err("the stream's consumer ended".into()),
            Err(_) => {
                return Err(format!("{finals} of {n} records after waiting {WAIT:?}").into());
            }
        };
        out.write_all(&msg.payload)?;
        out.write_all(b"\n")?;
        // Chunk lines are extra lines before their event's one final record.
        let line: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        if line.get("ok").is_some() {
            finals += 1;
        }
    }
    out.flush()?;
    Ok(())
}
