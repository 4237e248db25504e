//! Keys (`--key`, `--line-key`) and the per-key limits (`--max-inflight-per-key`, `--key-rate`),
//! through the real binaries.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::util::*;

/// Per key, the seqs of its records in the order herd wrote them.
fn by_key(records: &[Value], key_of: impl Fn(u64) -> u64) -> HashMap<u64, Vec<u64>> {
    let mut keys: HashMap<u64, Vec<u64>> = HashMap::new();
    for r in records {
        let seq = r["seq"].as_u64().unwrap();
        keys.entry(key_of(seq)).or_default().push(seq);
    }
    keys
}

/// 100,000 events over 10,000 keys, one in flight per key: every key's events are answered in
/// the order they came, and every worker is used (the keys run side by side).
#[test]
fn one_in_flight_per_key_keeps_each_keys_order_across_every_worker() {
    let fx = Fixture::new();
    const N: u64 = 100_000;
    const KEYS: u64 = 10_000;
    let input: String = (0..N)
        .map(|i| {
            format!(
                "{{\"op\":\"square\",\"n\":{i},\"k\":\"key-{}\"}}\n",
                i % KEYS
            )
        })
        .collect();
    let run = fx.run_chaos(
        &["-w", "4", "--key", "/k", "--max-inflight-per-key", "1"],
        input,
    );
    run.assert_success();
    assert_eq!(run.records.len(), N as usize);
    assert!(run.records.iter().all(|r| kind(r) == "ok"), "all ok");
    let keys = by_key(&run.records, |seq| seq % KEYS);
    assert_eq!(keys.len(), KEYS as usize);
    for (k, seqs) in &keys {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "key {k} out of order: {seqs:?}"
        );
    }
    let workers: HashSet<u64> = run
        .records
        .iter()
        .map(|r| r["worker"].as_u64().unwrap())
        .collect();
    assert_eq!(workers.len(), 4, "every worker ran some: {workers:?}");
}

/// One key throttled to 1/s beside a stream of other events: the others keep full speed (all
/// answered before the throttled key's second start), the key gets its starts a second apart.
#[test]
fn a_throttled_key_never_holds_back_the_others() {
    let fx = Fixture::new();
    // The throttled key's three events first, then 2,000 events of other keys.
    let mut input = String::new();
    for _ in 0..3 {
        input.push_str("slow\t{\"op\":\"clock\"}\n");
    }
    for i in 0..2000 {
        input.push_str(&format!("k{i}\t{{\"op\":\"clock\"}}\n"));
    }
    let run = fx.run_chaos(&["-w", "2", "--line-key", "--key-rate", "1/s"], input);
    run.assert_success();
    assert_eq!(run.records.len(), 2003);
    let line_of_seq: HashMap<u64, usize> = run
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (r["seq"].as_u64().unwrap(), i))
        .collect();
    // The second of the throttled key's records is written after every other record.
    let second_slow = line_of_seq[&1];
    let last_other = (3..2003).map(|s| line_of_seq[&s]).max().unwrap();
    assert!(
        last_other < second_slow,
        "the throttled key held others back: its second record at line {second_slow}, \
         the others' last at {last_other}"
    );
    // Its starts as the worker saw them: the first may have waited for the worker to start
    // reading, so only the later two are a dispatch each a second after the one before.
    let slow: Vec<u64> = (0..3)
        .map(|s| run.by_seq(2003)[s as usize]["output"].as_u64().unwrap())
        .collect();
    let gap = (slow[2] - slow[1]) as f64 / 1e6;
    assert!(gap >= 0.9, "the key's starts {gap:.3}s apart");
    let span = (slow[2] - slow[0]) as f64 / 1e6;
    assert!(span >= 1.5, "the key's three starts within {span:.3}s");
}

/// Keys are read as documented: a line key is stripped (after a line priority), an empty one
/// is no key, a line without one is rejected; `--key` on an event that is not JSON is rejected
/// with the reason, and nothing else is lost.
#[test]
fn keys_are_parsed_and_bad_ones_are_rejected_alone() {
    let fx = Fixture::new();
    let run = fx.run_chaos(
        &[
            "-w",
            "2",
            "--line-priority",
            "--line-key",
            "--max-inflight-per-key",
            "1",
        ],
        "5\ta\t{\"op\":\"square\",\"n\":2}\n\
         0\t\t{\"op\":\"square\",\"n\":3}\n\
         0\t{\"op\":\"square\",\"n\":4}\n",
    );
    let r = run.by_seq(3);
    assert_eq!(r[0]["output"], 4);
    assert_eq!(r[1]["output"], 9);
    assert_eq!(kind(r[2]), "rejected", "{}", r[2]);
    assert!(
        r[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no key"),
        "{}",
        r[2]
    );

    let run = fx.run_chaos(
        &["-w", "1", "--key", "/user", "--max-inflight-per-key", "2"],
        "{\"op\":\"square\",\"n\":5,\"user\":7}\nnot json\n{\"op\":\"square\",\"n\":6}\n",
    );
    let r = run.by_seq(3);
    assert_eq!(r[0]["output"], 25);
    assert_eq!(kind(r[1]), "rejected");
    assert!(
        r[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{}",
        r[1]
    );
    assert_eq!(r[2]["output"], 36, "an event without the key runs unkeyed");

    let out = fx
        .herd(&["run", "--key", "user", "--", chaos()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a JSON pointer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Through the daemon: a keyed submission (`herd submit --line-key`) is held to the daemon's
/// per-key limit, its parked events show in the status, and once everything is answered no
/// key's state is left behind (memory follows the events, not the keys seen).
#[test]
fn a_daemon_applies_per_key_limits_to_submissions_and_forgets_idle_keys() {
    let d = Daemon::start(2, &["--max-inflight-per-key", "1"]);
    // One key's 20 events, each 50 ms: one at a time, so most of them wait parked.
    let one_key = "same\t{\"op\":\"sleep\",\"ms\":50}\n".repeat(20);
    let child = d.submit_bg("keyed.txt", &one_key, &["--line-key"]);
    let st = d.wait_status("events parked behind their key", |st| {
        st["keys"]["parked"].as_u64().unwrap_or(0) > 5
    });
    assert_eq!(st["keys"]["max_inflight"], 1);
    let run = crate::control::output_of(child);
    run.assert_success();
    assert_eq!(run.records.len(), 20);
    assert_eq!(run.seqs(), (0..20).collect::<Vec<_>>(), "in order");
    let st = d.wait_status("no key left", |st| st["keys"]["tracked"] == 0);
    assert_eq!(st["keys"]["parked"], 0);
    d.stop_ok();
}

/// Hostile: workers crash under keyed, one-at-a-time events (a crash's bystanders go back,
/// the crashed event is retried while it keeps its key's place), and the daemon is stopped
/// fast with events still parked behind their keys: every event gets exactly one record, and
/// each key's events that ran did so in order.
#[test]
fn crashes_and_a_fast_stop_leave_exactly_one_record_per_keyed_event() {
    let fx = Fixture::new();
    const N: usize = 3000;
    let input: String = (0..N)
        .map(|i| {
            let op = if i % 97 == 13 {
                "{\"op\":\"crash\"}".to_string()
            } else {
                format!("{{\"op\":\"square\",\"n\":{i}}}")
            };
            format!("k{}\t{op}\n", i % 40)
        })
        .collect();
    let run = fx.run_chaos(
        &[
            "-w",
            "3",
            "--line-key",
            "--max-inflight-per-key",
            "1",
            "--retries",
            "1",
        ],
        input,
    );
    let records = run.by_seq(N);
    for (i, r) in records.iter().enumerate() {
        if i % 97 == 13 {
            assert_eq!(kind(r), "crashed", "{r}");
        } else {
            assert_eq!(r["output"], (i * i) as u64, "{r}");
        }
    }
    let keys = by_key(&run.records, |seq| seq % 40);
    for (k, seqs) in &keys {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key {k}: {seqs:?}");
    }

    // A fast stop while most events wait parked behind one slow key.
    let d = Daemon::start(2, &["--max-inflight-per-key", "1"]);
    let slow = "one\t{\"op\":\"sleep\",\"ms\":200}\n".repeat(50);
    let child = d.submit_bg("slow.txt", &slow, &["--line-key"]);
    d.wait_status("events parked", |st| {
        st["keys"]["parked"].as_u64().unwrap_or(0) > 40
    });
    d.ctl_cmd(&["stop", "--fast"]);
    let run = crate::control::output_of(child);
    let records = run.by_seq(50);
    assert!(records.iter().any(|r| kind(r) == "shutdown"));
    assert!(records
        .iter()
        .all(|r| kind(r) == "ok" || kind(r) == "shutdown"));
}

/// Hostile: a submitter killed while its events hold and wait for their key leaves the key
/// free for the next submitter (no place of the key leaks with the dropped events).
#[test]
fn a_killed_submitter_leaves_its_keys_free() {
    let d = Daemon::start(2, &["--max-inflight-per-key", "1"]);
    let slow = "k\t{\"op\":\"sleep\",\"ms\":100}\n".repeat(30);
    let mut child = d.submit_bg("a.txt", &slow, &["--line-key"]);
    d.wait_status("events parked behind their key", |st| {
        st["keys"]["parked"].as_u64().unwrap_or(0) > 20
    });
    child.kill().unwrap();
    child.wait().unwrap();
    d.wait_status("the submitter's events dropped", |st| {
        st["keys"]["parked"] == 0 && st["keys"]["tracked"] == 0
    });
    let next = d.submit_bg(
        "b.txt",
        &"k\t{\"op\":\"square\",\"n\":3}\n".repeat(3),
        &["--line-key"],
    );
    let run = crate::control::output_of(next);
    run.assert_success();
    assert!(run.by_seq(3).iter().all(|r| r["output"] == 9));
    d.stop_ok();
}
