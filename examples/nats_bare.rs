//! The JetStream limit on this machine, for the benchmark (scripts/bench.py, `jetstream`):
//! what a bare async-nats consumer does with no worker, supervisor or process boundary. Same
//! flow as `herd serve --nats`: pull requests, each result published with `Nats-Msg-Id` = the
//! event's stream sequence, the event acknowledged after the PubAck.
//!
//! ```text
//! nats_bare publish URL N   # fresh HERD and HERD_RESULTS streams, N square events published
//! nats_bare consume URL N   # the bare consumer, on herd's durable consumer, until N are done
//! nats_bare wait URL N      # until HERD_RESULTS holds N records; prints {"done_at": unix secs},
//!                           # then checks each record (exit 1 if one is missing or wrong)
//! ```

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::{HeaderMap, Subject};
use futures_util::StreamExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, url, n] = args.as_slice() else {
        return Err("usage: nats_bare publish|consume|wait URL N".into());
    };
    let n: u64 = n.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(20_000)
            .build(client.clone());
        match mode.as_str() {
            "publish" => publish(&js, n).await,
            "consume" => consume(client, js, n).await,
            "wait" => wait(&js, n).await,
            _ => Err("usage: nats_bare publish|consume|wait URL N".into()),
        }
    })
}

async fn publish(js: &jetstream::Context, n: u64) -> Result<(), Error> {
    for name in ["HERD", "HERD_RESULTS"] {
        let _ = js.delete_stream(name).await;
    }
    js.create_stream(stream::Config {
        name: "HERD".into(),
        subjects: vec!["herd.events".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    js.create_stream(stream::Config {
        name: "HERD_RESULTS".into(),
        subjects: vec!["herd.results".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let mut acks = Vec::new();
    for i in 0..n {
        let event = format!("{{\"op\":\"square\",\"n\":{i}}}");
        acks.push(js.publish("herd.events", event.into()).await?);
        if acks.len() >= 4096 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    Ok(())
}

/// herd's consumer, with herd's defaults.
async fn consumer(js: &jetstream::Context) -> Result<PullConsumer, Error> {
    let stream = js.get_stream("HERD").await?;
    Ok(stream
        .get_or_create_consumer(
            "herd",
            pull::Config {
                durable_name: Some("herd".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_deliver: 5,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await?)
}

async fn consume(client: async_nats::Client, js: jetstream::Context, n: u64) -> Result<(), Error> {
    let consumer = consumer(&js).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(PublishAckFuture, Subject)>(20_000);
    // PubAcks are awaited in order on a task of their own, then the events acknowledged.
    let acker = tokio::spawn(async move {
        let mut done = 0;
        while let Some((stored, reply)) = rx.recv().await {
            stored.await?;
            client.publish(reply, AckKind::Ack.into()).await?;
            done += 1;
            if done == n {
                client.flush().await?;
                break;
            }
        }
        Ok::<(), Error>(())
    });
    let results = Subject::from("herd.results");
    let work = async {
        loop {
            let mut batch = consumer
                .batch()
                .max_messages(4096)
                .expires(Duration::from_secs(1))
                .messages()
                .await?;
            while let Some(msg) = batch.next().await {
                let msg = msg?;
                let seq = msg.info()?.stream_sequence;
                let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
                let x = event["n"].as_i64().ok_or("no n")?;
                let record = format!(
                    "{{\"seq\":{seq},\"ok\":true,\"output\":{},\"attempts\":1}}",
                    x * x
                );
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", seq.to_string().as_str());
                let stored = js
                    .publish_with_headers(results.clone(), headers, record.into())
                    .await?;
                let reply = msg.reply.clone().ok_or("no reply subject")?;
                if tx.send((stored, reply)).await.is_err() {
                    return Ok::<(), Error>(());
                }
            }
        }
    };
    tokio::select! {
        r = acker => r?,
        r = work => r,
    }
}

async fn wait(js: &jetstream::Context, n: u64) -> Result<(), Error> {
    let mut results = loop {
        if let Ok(s) = js.get_stream("HERD_RESULTS").await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loop {
        if results.info().await?.state.messages >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    println!("{{\"done_at\":{done_at}}}");
    // Each event once, each result right (event i is square n=i, at stream sequence i+1).
    let reader = results
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut seen = vec![false; n as usize];
    let mut read = 0;
    while read < n {
        let mut batch = reader
            .fetch()
            .max_messages(4096)
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        while let Some(m) = batch.next().await {
            let r: serde_json::Value = serde_json::from_slice(&m?.payload)?;
            let seq = r["seq"].as_u64().ok_or("no seq")?;
            let i = seq.checked_sub(1).ok_or("seq 0")?;
            if i >= n || seen[i as usize] || r["output"].as_u64() != Some(i * i) {
                return Err(format!("wrong or repeated record {r}").into());
            }
            seen[i as usize] = true;
            read += 1;
        }
    }
    Ok(())
}
