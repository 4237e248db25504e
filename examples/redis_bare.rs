//! The Redis Streams limit on this machine, for the benchmark (scripts/bench.py, `redis`): what
//! a bare consumer does with no worker, supervisor or process boundary. A plain consumer-group
//! loop: `XREADGROUP` a batch, then for each entry its record `XADD`ed to the results stream
//! and the entry `XACK`ed, the whole batch in one pipeline.
//!
//! ```text
//! redis_bare publish URL N   # fresh herd:events and herd:events:results, N square events
//!                            # (entry ids 0-1 .. 0-N, so that a record's id tells its event)
//! redis_bare consume URL N   # the bare consumer, in herd's group, until N are done
//! redis_bare wait URL N      # until herd:events:results holds N records; prints
//!                            # {"done_at": unix secs}, then checks each record (exit 1 if one is
//!                            # missing, repeated or wrong)
//! ```

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Commands, Value};

type Error = Box<dyn std::error::Error + Send + Sync>;

const EVENTS: &str = "herd:events";
const RESULTS: &str = "herd:events:results";
const GROUP: &str = "herd";

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, url, n] = args.as_slice() else {
        return Err("usage: redis_bare publish|consume|wait URL N".into());
    };
    let n: u64 = n.parse()?;
    let mut con = redis::Client::open(url.as_str())?.get_connection()?;
    match mode.as_str() {
        "publish" => publish(&mut con, n),
        "consume" => consume(&mut con, n),
        "wait" => wait(&mut con, n),
        _ => Err("usage: redis_bare publish|consume|wait URL N".into()),
    }
}

fn publish(con: &mut redis::Connection, n: u64) -> Result<(), Error> {
    let _: () = con.del(&[EVENTS, RESULTS])?;
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(EVENTS)
            .arg(format!("0-{}", i + 1))
            .arg("event")
            .arg(format!("{{\"op\":\"square\",\"n\":{i}}}"))
            .ignore();
        if (i + 1) % 4096 == 0 {
            let _: () = pipe.query(con)?;
            pipe.clear();
        }
    }
    let _: () = pipe.query(con)?;
    Ok(())
}

fn consume(con: &mut redis::Connection, n: u64) -> Result<(), Error> {
    let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(EVENTS)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e.into());
        }
    }
    let mut done = 0;
    while done < n {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("bare")
            .arg("COUNT")
            .arg(4096)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(EVENTS)
            .arg(">")
            .query(con)?;
        let mut pipe = redis::pipe();
        for (id, event) in entries(&reply) {
            let event: serde_json::Value = serde_json::from_slice(&event)?;
            let x = event["n"].as_i64().ok_or("no n")?;
            let record = format!(
                "{{\"id\":\"{id}\",\"ok\":true,\"output\":{},\"attempts\":1}}",
                x * x
            );
            pipe.cmd("XADD")
                .arg(RESULTS)
                .arg("*")
                .arg("id")
                .arg(&id)
                .arg("record")
                .arg(record)
                .ignore();
            pipe.cmd("XACK").arg(EVENTS).arg(GROUP).arg(&id).ignore();
            done += 1;
        }
        let _: () = pipe.query(con)?;
    }
    Ok(())
}

/// `XREADGROUP`'s entries: id and `event` field.
fn entries(reply: &Value) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for s in streams {
        let Value::Array(parts) = s else { continue };
        let Some(Value::Array(es)) = parts.get(1) else {
            continue;
        };
        for e in es {
            let Value::Array(p) = e else { continue };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (p.first(), p.get(1))
            else {
                continue;
            };
            if let Some(Value::BulkString(v)) = fields.get(1) {
                out.push((String::from_utf8_lossy(id).into_owned(), v.clone()));
            }
        }
    }
    out
}

fn wait(con: &mut redis::Connection, n: u64) -> Result<(), Error> {
    while con.xlen::<_, u64>(RESULTS)? < n {
        std::thread::sleep(Duration::from_millis(10));
    }
    let done_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    println!("{{\"done_at\":{done_at}}}");
    // Each event once, each result right (event i is square n=i, entry id 0-(i+1)).
    let mut seen = vec![false; n as usize];
    let mut start = "-".to_string();
    loop {
        let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(RESULTS)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(4096)
            .query(con)?;
        let Some((last, _)) = page.last() else { break };
        start = format!("({last}");
        for (_, fields) in page {
            let record = fields
                .iter()
                .find(|(k, _)| k == "record")
                .ok_or("no record field")?;
            let r: serde_json::Value = serde_json::from_str(&record.1)?;
            let id = r["id"].as_str().ok_or("no id")?;
            let i = id
                .strip_prefix("0-")
                .and_then(|k| k.parse::<u64>().ok())
                .and_then(|k| k.checked_sub(1))
                .ok_or("not an id of redis_bare publish")?;
            if i >= n || seen[i as usize] || r["output"].as_u64() != Some(i * i) {
                return Err(format!("wrong or repeated record {r}").into());
            }
            seen[i as usize] = true;
        }
    }
    if seen.iter().any(|s| !s) {
        return Err("a record is missing".into());
    }
    Ok(())
}
