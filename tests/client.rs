//! The library's control client (`herd_supervisor::client`) against a real `herd serve`: a
//! Rust program submits and asks without the binary's code.

#![allow(clippy::unwrap_used)]

use serde_json::Value;

use crate::util::*;

/// The library's example, compiled in here so the test runs exactly its code.
#[path = "../crates/supervisor/examples/submit.rs"]
#[allow(dead_code)]
mod submit_example;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_library_example_submits_to_a_running_daemon_and_reads_its_records() {
    let d = Daemon::start(2, &[]);
    let mut events: Vec<String> = square_events(300).lines().map(String::from).collect();
    events.push("not json".into());
    let out = runtime()
        .block_on(submit_example::submit(&d.control, events))
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    records.sort_by_key(|r| r["seq"].as_u64().unwrap());
    assert_eq!(records.len(), 301, "{text}");
    for (i, r) in records[..300].iter().enumerate() {
        assert_eq!(r["seq"], i as u64, "{r}");
        assert_eq!(r["output"].as_u64(), Some((i * i) as u64), "{r}");
    }
    assert_eq!(records[300]["error"]["kind"], "failed");
    d.stop_ok();
}

#[test]
fn the_library_client_reads_the_typed_status_and_steers() {
    let d = Daemon::start(2, &[]);
    let rt = runtime();
    let st = rt
        .block_on(herd_supervisor::client::status(&d.control))
        .unwrap();
    assert_eq!(st.pid, d.live.pid());
    assert_eq!(st.phase, "running");
    assert_eq!(st.target_workers, 2);
    let reply = rt
        .block_on(herd_supervisor::client::ask(
            &d.control,
            &herd_supervisor::client::Request::Scale { workers: 3 },
        ))
        .unwrap();
    assert!(
        matches!(reply, herd_supervisor::client::Reply::Ok(_)),
        "{reply:?}"
    );
    wait_for("three workers", RUN_TIMEOUT, || {
        rt.block_on(herd_supervisor::client::status(&d.control))
            .is_ok_and(|st| st.target_workers == 3)
    });
    d.stop_ok();
}
