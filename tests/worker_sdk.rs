//! The Rust worker SDK's async handler API (`herd-worker`'s `tokio` feature) under the real
//! herd: `crates/worker/examples/probe.rs`, built by the real cargo, connects to each event's
//! TCP address on the runtime the SDK runs it on, and `?` decides what a failure means.

#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::util::*;

/// `target/debug/examples/probe`, built once per test run with the `tokio` feature (the test
/// binary's own build does not build another package's examples).
fn probe_worker() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--locked",
            "--message-format=json-render-diagnostics",
        ])
        .args([
            "-p",
            "herd-worker",
            "--features",
            "tokio",
            "--example",
            "probe",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
        remove_cargo_test_env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "building the probe example failed");
        out.stdout
            .lines()
            .map(Result::unwrap)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "probe")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the probe executable")
    })
}

#[test]
fn async_handler_worker_awaits_io_and_question_mark_picks_failed_or_retry() {
    let fx = Fixture::new();
    // Connecting succeeds through the listen backlog; nothing needs to accept.
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap();
    // A port that was just free: connecting is refused at once.
    let closed_addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let input = format!("{open_addr}\nnot an address\n{closed_addr}\n{open_addr}\n");
    let args = [
        "run",
        "-w",
        "2",
        "--retries",
        "2",
        "--retry-backoff",
        "1ms",
        "--ordered",
        "--",
    ];
    let mut cmd = fx.herd(&args);
    cmd.arg(probe_worker()).write_stdin(input);
    let run = Run::new(
        args.iter().map(|s| s.to_string()).collect(),
        cmd.output().unwrap(),
    );
    assert_eq!(run.seqs(), [0, 1, 2, 3], "{}", run.stderr());
    let r = &run.records;
    for ok in [&r[0], &r[3]] {
        assert_eq!(kind(ok), "ok", "{ok}");
        assert_eq!(ok["output"]["addr"], open_addr.to_string(), "{ok}");
        assert!(ok["output"]["connect_micros"].is_u64(), "{ok}");
    }
    // A parse error is the event's fault: failed at once, no retry.
    assert_eq!(kind(&r[1]), "failed", "{}", r[1]);
    assert_eq!(r[1]["attempts"], 1, "{}", r[1]);
    assert_eq!(r[1]["error"]["message"], "invalid socket address syntax");
    // A refused connection is transient: retried until the retries are used up.
    assert_eq!(kind(&r[2]), "failed", "{}", r[2]);
    assert_eq!(r[2]["attempts"], 3, "{}", r[2]);
    let refused = r[2]["error"]["message"].as_str().unwrap();
    assert!(refused.contains("refused"), "{refused}");
    // Every event has its record, whatever it says: herd exits 0 and leaves nothing behind.
    run.assert_success();
    assert!(fx.leftover_runtime_dirs().is_empty());
}
