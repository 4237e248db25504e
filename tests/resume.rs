//! `--resume` and `--retry-failed` (issue 13, part 3): `herd run` and `herd submit` SIGKILLed
//! at arbitrary points and resumed until done, torn last lines, files that are not herd
//! records, and failed events retried under their own seqs.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

const EVENTS: usize = 100_000;

/// A small deterministic generator (xorshift64*), so the kill points are random but the same
/// on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Every line of a records file, parsed (a torn line fails the test).
fn lines_of(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "unterminated last line"
    );
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {} ({e}): {l:?}", i + 1))
        })
        .collect()
}

/// The final records of a file by seq; panics on a second final record for any seq.
fn finals(path: &Path) -> HashMap<u64, Value> {
    let mut by_seq = HashMap::new();
    for r in lines_of(path) {
        if r.get("chunk").is_some() {
            continue;
        }
        let seq = r["seq"].as_u64().unwrap();
        if let Some(old) = by_seq.insert(seq, r.clone()) {
            panic!("two final records for seq {seq}: {old} and {r}");
        }
    }
    by_seq
}

/// Every seq of `n` square events has exactly one final record, and it is right.
fn assert_all_squares(path: &Path, n: usize) {
    let by_seq = finals(path);
    assert_eq!(by_seq.len(), n, "final records");
    for seq in 0..n as u64 {
        let r = &by_seq[&seq];
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["output"].as_u64(), Some(seq * seq), "{r}");
    }
}

/// `run FLAGS --resume -i INPUT -o OUTPUT -- herd-chaos`: the command line of every resumed
/// `herd run` below, which differ only in FLAGS and the files.
fn resume_args<'a>(flags: &[&'a str], input: &'a str, output: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(flags);
    args.extend(["--resume", "-i", input, "-o", output, "--", chaos()]);
    args
}

/// `herd run --log-format json FLAGS --resume -i INPUT -o OUTPUT -- herd-chaos`, run to its
/// end: its output and stderr.
fn run_resume(fx: &Fixture, flags: &[&str], input: &str, output: &str) -> (Output, String) {
    let mut all = vec!["--log-format", "json"];
    all.extend(flags);
    let run = fx.herd(&resume_args(&all, input, output)).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    (run, stderr)
}

/// Square events `0..n`, except that each `n` that `odd` picks is the event `instead`: the
/// retry tests mix failing events into squares this way.
fn squares_but(n: u64, instead: &str, odd: impl Fn(u64) -> bool) -> String {
    (0..n)
        .map(|i| {
            if odd(i) {
                format!("{instead}\n")
            } else {
                format!("{{\"op\":\"square\",\"n\":{i}}}\n")
            }
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn spawn(fx: &Fixture, args: &[&str]) -> Child {
    fx.std_command(herd_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `child` until the file at `out` reaches `bytes`, then SIGKILLs it. Returns whether it
/// was killed (false: it finished first).
fn kill_at(child: &mut Child, out: &Path, bytes: u64) -> bool {
    let mut finished = false;
    wait_for("the output to grow or herd to finish", RUN_TIMEOUT, || {
        finished = child.try_wait().unwrap().is_some();
        finished || file_len(out) >= bytes
    });
    if finished {
        return false;
    }
    signal(child.id(), Signal::SIGKILL);
    child.wait().unwrap();
    true
}

#[test]
fn run_killed_at_random_points_resumes_to_exactly_one_record_each() {
    let fx = Fixture::new();
    let (input, out) = (fx.path("events"), fx.path("records.jsonl"));
    std::fs::write(&input, square_events(EVENTS)).unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let args = resume_args(&["--log-format", "json", "-w", "2"], i, o);
    // A record takes 80 to 90 bytes: each run gets killed after writing 1/8 to 5/32 of the
    // whole more, at a random byte (so often in the middle of a line).
    let full = 80 * EVENTS as u64;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut kills, mut torn) = (0, 0);
    for round in 0..5 {
        let point = file_len(&out) + full / 8 + rng.below(full / 32);
        let mut child = spawn(&fx, &args);
        assert!(
            kill_at(&mut child, &out, point),
            "round {round}: herd finished before the kill point"
        );
        kills += 1;
        let bytes = std::fs::read(&out).unwrap();
        torn += usize::from(bytes.last() != Some(&b'\n'));
        // The guard cleans up after the killed herd: workers and socket directory.
        wait_for("the killed run's socket dir to go", RUN_TIMEOUT, || {
            fx.leftover_runtime_dirs().is_empty()
        });
    }
    let out_run = fx.herd(&args).output().unwrap();
    assert!(
        out_run.status.success(),
        "{}",
        String::from_utf8_lossy(&out_run.stderr)
    );
    eprintln!("{kills} kills, {torn} left a torn last line");
    assert_all_squares(&out, EVENTS);
    // Once done, resuming again runs nothing and changes nothing.
    let before = std::fs::read(&out).unwrap();
    let again = fx.herd(&args).output().unwrap();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to run"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn torn_last_line_is_cut_off_and_its_event_runs_again() {
    let fx = Fixture::new();
    let (input, out) = (fx.path("events"), fx.path("records.jsonl"));
    std::fs::write(&input, square_events(1000)).unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let full = fx
        .herd(&["run", "-w", "2", "-i", i, "-o", o, "--", chaos()])
        .output()
        .unwrap();
    assert!(full.status.success());
    // Keep 600 records and half of the next one, as a kill in the middle of a write leaves.
    let text = std::fs::read_to_string(&out).unwrap();
    let mut kept: String = text.lines().take(600).map(|l| format!("{l}\n")).collect();
    let next = text.lines().nth(600).unwrap();
    kept.push_str(&next[..next.len() / 2]);
    std::fs::write(&out, &kept).unwrap();
    let torn_seq: u64 = serde_json::from_str::<Value>(next).unwrap()["seq"]
        .as_u64()
        .unwrap();

    let (run, stderr) = run_resume(&fx, &["-w", "2", "--ordered"], i, o);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("cut off a torn last line"), "{stderr}");
    assert_all_squares(&out, 1000);
    // The first 600 lines are untouched; the 400 appended ones are in input order (--ordered
    // numbers the resumed events densely and maps them back).
    let after = std::fs::read_to_string(&out).unwrap();
    let appended: Vec<u64> = after
        .lines()
        .skip(600)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(after.starts_with(&kept[..kept.len() - next.len() / 2]));
    assert_eq!(appended.len(), 400);
    assert!(appended.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(appended.contains(&torn_seq));
}

#[test]
fn resume_ignores_chunk_lines_and_counts_failed_records_as_done() {
    let fx = Fixture::new();
    let (input, out) = (fx.path("events"), fx.path("records.jsonl"));
    std::fs::write(&input, square_events(4)).unwrap();
    // seq 0: only streamed chunks, no final record; 1: failed; 3: ok.
    std::fs::write(
        &out,
        "{\"seq\":0,\"chunk\":0,\"attempt\":1,\"output\":\"part\"}\n\
         {\"seq\":1,\"ok\":false,\"error\":{\"kind\":\"crashed\",\"message\":\"x\"},\"attempts\":3}\n\
         {\"seq\":3,\"ok\":true,\"output\":9,\"attempts\":1,\"worker\":0,\"pid\":1,\"micros\":1}\n",
    )
    .unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let (run, stderr) = run_resume(&fx, &["-w", "1"], i, o);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("--retry-failed"),
        "the hint names the way to retry: {stderr}"
    );
    let by_seq = finals(&out);
    assert_eq!(by_seq.len(), 4);
    assert_eq!(by_seq[&0]["output"], 0);
    assert_eq!(by_seq[&1]["ok"], false, "a failed event is done");
    assert_eq!(by_seq[&2]["output"], 4);
}

#[test]
fn retry_failed_keeps_the_original_seqs() {
    let fx = Fixture::new();
    let (input, out, retry, failed) = (
        fx.path("events"),
        fx.path("records.jsonl"),
        fx.path("retry.jsonl"),
        fx.path("failed.txt"),
    );
    // Every 7th event fails its first attempt; with no retries it ends failed.
    let events = squares_but(2000, "{\"op\":\"flaky\",\"fails\":1}", |n| n % 7 == 3);
    std::fs::write(&input, events).unwrap();
    let (i, o, r, f) = (
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        retry.to_str().unwrap(),
        failed.to_str().unwrap(),
    );
    let first = fx
        .herd(&[
            "run",
            "-w",
            "2",
            "--retries",
            "0",
            "--failed",
            f,
            "-i",
            i,
            "-o",
            o,
            "--",
            chaos(),
        ])
        .output()
        .unwrap();
    assert!(first.status.success());
    let want: Vec<u64> = (0..2000).filter(|n| n % 7 == 3).collect();
    let mut failed_seqs: Vec<u64> = finals(&out)
        .values()
        .filter(|r| r["ok"] == false)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    failed_seqs.sort();
    assert_eq!(failed_seqs, want);
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap().lines().count(),
        want.len()
    );

    // The replay runs only those, from the original input, under their own seqs.
    let again = fx
        .herd(&[
            "run",
            "-w",
            "2",
            "--retries",
            "1",
            "--retry-failed",
            o,
            "-i",
            i,
            "-o",
            r,
            "--",
            chaos(),
        ])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let by_seq = finals(&retry);
    let mut seqs: Vec<u64> = by_seq.keys().copied().collect();
    seqs.sort();
    assert_eq!(seqs, want);
    for r in by_seq.values() {
        // flaky succeeds on attempt 2 and returns the attempt.
        assert_eq!(
            (r["ok"].clone(), r["output"].clone()),
            (true.into(), 2.into()),
            "{r}"
        );
    }
    // Writing the retries into the file they come from would give a seq two final records.
    let same = fx
        .herd(&["run", "--retry-failed", o, "-i", i, "-o", o, "--", chaos()])
        .output()
        .unwrap();
    assert!(!same.status.success());
    assert!(String::from_utf8_lossy(&same.stderr).contains("another file"));
}

#[test]
fn files_that_are_not_herd_records_are_refused_untouched() {
    let fx = Fixture::new();
    let input = fx.path("events");
    std::fs::write(&input, square_events(100)).unwrap();
    let i = input.to_str().unwrap();
    // A valid start, then a line no record could be.
    let mut mixed = b"{\"seq\":0,\"ok\":true,\"output\":0}\n".to_vec();
    mixed.extend(vec![b'x'; 20 << 20]);
    let cases: [(&str, &[u8], &str); 7] = [
        ("text", b"hello\nworld\n", "line 1 is not a herd record"),
        (
            "binary",
            &[0xff, 0x00, 0x13, 0x37, 0xfe],
            "line 1 is not a herd record",
        ),
        ("big", &mixed, "line 2 is not a herd record"),
        (
            "beyond",
            b"{\"seq\":100,\"ok\":true,\"output\":1,\"attempts\":1}\n",
            "the input changed",
        ),
        (
            "twice",
            b"{\"seq\":5,\"ok\":true,\"output\":25}\n{\"seq\":5,\"ok\":true,\"output\":25}\n",
            "second final record",
        ),
        ("json", b"{\"a\":1}\n", "line 1 is not a herd record"),
        // A middle line cut short that still ends with `}` (issue 19, item 6).
        (
            "cut",
            b"{\"seq\":0,\"ok\":true,\"output\":0}\n{\"seq\":1,\"ok\":true,\"output\":{\"a\":2}\n\
              {\"seq\":2,\"ok\":true,\"output\":4}\n",
            "line 2 is not a herd record (it is not valid JSON",
        ),
    ];
    for (name, content, want) in cases {
        let out = fx.path(name);
        std::fs::write(&out, content).unwrap();
        let (run, stderr) = run_resume(&fx, &[], i, out.to_str().unwrap());
        assert!(!run.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(want), "{name}: {stderr}");
        assert!(stderr.contains("left as it is"), "{name}: {stderr}");
        assert!(
            !stderr.contains("worker ready"),
            "{name}: no worker started"
        );
        assert_eq!(std::fs::read(&out).unwrap(), content, "{name}: untouched");
    }
    // `herd submit --resume` checks the file before it looks for a daemon.
    let out = fx.path("text");
    let sub = fx
        .herd(&[
            "submit",
            "--control",
            "/nonexistent.sock",
            "--resume",
            "-i",
            i,
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&sub.stderr);
    assert!(
        !sub.status.success() && stderr.contains("line 1 is not a herd record"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"hello\nworld\n");
    // Resuming needs files on both sides.
    for (args, want) in [
        (vec!["--resume", "-i", i], "-o FILE"),
        (vec!["--resume", "-o", "x.jsonl"], "-i FILE"),
        (
            vec!["--resume", "-i", "/dev/stdin", "-o", "x.jsonl"],
            "regular file",
        ),
    ] {
        let mut all = vec!["run"];
        all.extend(args);
        all.extend(["--", chaos()]);
        let run = fx.herd(&all).write_stdin("x\n").output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains(want), "{stderr}");
    }
}

/// Issue 19, item 5: records that cannot be read back (a pipe, a FIFO) are refused at once, as
/// `-o -` is, by `herd run` and `herd submit` alike; before, the scan waited for ever.
#[test]
fn resume_refuses_a_pipe_or_fifo_as_the_records_file() {
    let fx = Fixture::new();
    let input = fx.path("events");
    std::fs::write(&input, square_events(10)).unwrap();
    let fifo = fx.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let new = fx.path("new.jsonl");
    let (i, f, n) = (
        input.to_str().unwrap(),
        fifo.to_str().unwrap(),
        new.to_str().unwrap(),
    );
    let submit = ["submit", "--control", "/nonexistent.sock"];
    let cases: [(&str, Vec<&str>); 5] = [
        ("run -o FIFO", resume_args(&[], i, f)),
        // The test reads herd's stdout through a pipe.
        ("run -o /dev/stdout", resume_args(&[], i, "/dev/stdout")),
        (
            "run --retry-failed FIFO",
            vec!["run", "--retry-failed", f, "-i", i, "-o", n, "--", chaos()],
        ),
        (
            "submit -o FIFO",
            [&submit[..], &["--resume", "-i", i, "-o", f]].concat(),
        ),
        (
            "submit -o /dev/stdout",
            [&submit[..], &["--resume", "-i", i, "-o", "/dev/stdout"]].concat(),
        ),
    ];
    for (name, args) in cases {
        let run = fx
            .herd(&args)
            .timeout(Duration::from_secs(20))
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains("needs the records as a regular file")
                && stderr.contains("is a pipe or FIFO"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("worker ready"), "{name}: {stderr}");
    }
    assert!(!exists(&new), "nothing was created");
}

#[test]
fn submit_killed_then_resumed_gets_every_record_once() {
    let d = Daemon::start(2, &[]);
    let (input, out) = (d.fx.path("events"), d.fx.path("records.jsonl"));
    std::fs::write(&input, square_events(EVENTS)).unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let args = ["submit", "--control", d.ctl(), "--resume", "-i", i, "-o", o];
    let full = 80 * EVENTS as u64;
    let mut rng = Rng(42);
    for round in 0..3 {
        let point = file_len(&out) + full / 6 + rng.below(full / 10);
        let mut child = spawn(&d.fx, &args);
        assert!(
            kill_at(&mut child, &out, point),
            "round {round}: submit finished before the kill point"
        );
    }
    output_ok(&mut d.fx.herd(&args));
    assert_all_squares(&out, EVENTS);
    // The daemon dropped the killed clients' events and serves on.
    let st = d.status();
    assert_eq!(st["submissions"], 0, "{st}");
    d.stop_ok();
}

#[test]
fn submit_retry_failed_keeps_the_original_seqs() {
    let d = Daemon::start(1, &["--retries", "0"]);
    let (input, out, retry) = (
        d.fx.path("events"),
        d.fx.path("records.jsonl"),
        d.fx.path("retry.jsonl"),
    );
    let events = squares_but(300, "{\"op\":\"fail\"}", |n| n % 5 == 2);
    std::fs::write(&input, events).unwrap();
    let (i, o, r) = (
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        retry.to_str().unwrap(),
    );
    output_ok(
        &mut d
            .fx
            .herd(&["submit", "--control", d.ctl(), "-i", i, "-o", o]),
    );
    let want: Vec<u64> = (0..300).filter(|n| n % 5 == 2).collect();
    let args = [
        "submit",
        "--control",
        d.ctl(),
        "--resume",
        "--retry-failed",
        o,
        "-i",
        i,
        "-o",
        r,
    ];
    output_ok(&mut d.fx.herd(&args));
    let by_seq = finals(&retry);
    let mut seqs: Vec<u64> = by_seq.keys().copied().collect();
    seqs.sort();
    assert_eq!(seqs, want, "the retried events under their line numbers");
    assert!(by_seq.values().all(|r| kind(r) == "failed"));
    // Resumed again: nothing left to send, nothing written.
    let before = std::fs::read(&retry).unwrap();
    output_ok(&mut d.fx.herd(&args));
    assert_eq!(std::fs::read(&retry).unwrap(), before);
    d.stop_ok();
}

#[test]
fn a_second_resume_of_the_same_output_is_refused_while_the_first_runs() {
    let fx = Fixture::new();
    let (input, out) = (fx.path("events"), fx.path("records.jsonl"));
    std::fs::write(&input, "{\"op\":\"sleep\",\"ms\":20}\n".repeat(300)).unwrap();
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let args = resume_args(&["-w", "1"], i, o);
    let mut first = spawn(&fx, &args);
    // 300 events of 20 ms on one worker: about 6 s left after the first record.
    wait_for("the first record", RUN_TIMEOUT, || file_len(&out) > 0);
    let second = fx.herd(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(stderr.contains("another herd is writing"), "{stderr}");
    assert!(first.try_wait().unwrap().is_none(), "the first still runs");
    // The kernel drops a killed herd's lock: the next resume finishes the job.
    signal(first.id(), Signal::SIGKILL);
    first.wait().unwrap();
    output_ok(&mut fx.herd(&args));
    let by_seq = finals(&out);
    assert_eq!(by_seq.len(), 300);
    assert!(by_seq.values().all(|r| r["output"] == 20));
}

#[test]
fn failed_file_lists_every_failed_line_once_after_kills() {
    let fx = Fixture::new();
    let (input, out, failed) = (
        fx.path("events"),
        fx.path("records.jsonl"),
        fx.path("failed.txt"),
    );
    let n = 30_000;
    let line = |i: usize| {
        if i % 10 == 4 {
            format!("{{\"op\":\"fail\",\"n\":{i}}}")
        } else {
            format!("{{\"op\":\"square\",\"n\":{i}}}")
        }
    };
    let events: String = (0..n).map(|i| line(i) + "\n").collect();
    std::fs::write(&input, events).unwrap();
    let (i, o, f) = (
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        failed.to_str().unwrap(),
    );
    let args = resume_args(&["-w", "2", "--failed", f], i, o);
    let full = 80 * n as u64;
    let mut rng = Rng(7);
    for round in 0..2 {
        let point = file_len(&out) + full / 4 + rng.below(full / 8);
        let mut child = spawn(&fx, &args);
        assert!(
            kill_at(&mut child, &out, point),
            "round {round}: herd finished before the kill point"
        );
    }
    output_ok(&mut fx.herd(&args));
    let by_seq = finals(&out);
    assert_eq!(by_seq.len(), n);
    let mut got: Vec<String> = std::fs::read_to_string(&failed)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..n).filter(|i| i % 10 == 4).map(line).collect();
    want.sort();
    assert_eq!(got, want, "each failed line once, the earlier runs' too");
}
