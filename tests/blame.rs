//! Crash blame with held replies, through the real binaries: a worker holds finished tasks'
//! replies for up to 1 ms (one write for many), and a poison event that kills it without
//! sending them (`"flush":false`, as a segfault would) must not get the innocent oldest task
//! charged. herd blames none of the unanswered tasks of such a death and reruns them alone
//! (solo), where the poison is caught on its own (see `crate::blame` in the supervisor).

#![allow(clippy::unwrap_used)]

use crate::util::*;

/// 2,000 tiny events, every 100th a crash that loses the worker's held replies, `--retries 2`,
/// with single tasks and with batches of 16: every innocent event is answered ok exactly once,
/// and every poison event ends `crashed` after 1 + `--retries` attempts of its own.
#[test]
fn a_crash_that_loses_held_replies_blames_the_poison_not_its_neighbours() {
    let fx = Fixture::new();
    let n = 2_000;
    let poison = |i: usize| i % 100 == 50;
    let input: String = (0..n)
        .map(|i| {
            if poison(i) {
                "{\"op\":\"crash\",\"flush\":false}\n".to_string()
            } else {
                format!("{{\"op\":\"square\",\"n\":{i}}}\n")
            }
        })
        .collect();
    for batch in [None, Some("16")] {
        let mut args = vec!["run", "--log-format", "json", "-w", "2", "--retries", "2"];
        if let Some(b) = batch {
            args.extend(["--batch", b]);
        }
        args.extend(["--", chaos()]);
        if let Some(b) = batch {
            args.extend(["--batch", b]);
        }
        let out = fx.herd(&args).write_stdin(input.clone()).output().unwrap();
        let run = Run::new(args.iter().map(|s| s.to_string()).collect(), out);
        run.assert_success();
        assert_eq!(run.records.len(), n, "{batch:?}: one record per event");
        let mut wrongly_failed = Vec::new();
        let mut poison_records = Vec::new();
        for (i, r) in run.by_seq(n).iter().enumerate() {
            if poison(i) {
                poison_records.push(*r);
            } else if r["ok"] != true {
                wrongly_failed.push((i, kind(r).to_string()));
            } else {
                assert_eq!(r["output"].as_u64(), Some((i * i) as u64), "{r}");
            }
        }
        assert!(
            wrongly_failed.is_empty(),
            "{batch:?}: {} innocent events not answered ok: {wrongly_failed:?}",
            wrongly_failed.len()
        );
        assert_eq!(poison_records.len(), n / 100);
        for r in poison_records {
            assert_eq!(kind(r), "crashed", "{batch:?}: {r}");
            // Charged alone, 1 + --retries times (the ambiguous death before that was no
            // attempt of anyone's).
            assert_eq!(r["attempts"], 3, "{batch:?}: {r}");
        }
    }
}
