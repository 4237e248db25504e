//! `--config FILE`: every option has a key, the command line wins, mistakes name their key and
//! line, `herd check` validates, and a HUP applies a good file and refuses a bad one.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::Signal;

use crate::util::*;

/// The keys `herd check` reports as coming from `file` (`key = value  # FILE:LINE`).
fn keys_from_file(out: &str, file: &Path) -> BTreeSet<String> {
    let tag = format!("# {}:", file.display());
    out.lines()
        .filter(|l| l.contains(&tag))
        .map(|l| l.split(" = ").next().unwrap().to_string())
        .collect()
}

/// Every key `herd check` reports, set or not.
fn all_keys(out: &str) -> BTreeSet<String> {
    out.lines()
        .map(|l| {
            let l = l.trim_start_matches("# ");
            l.split([' ', '=']).next().unwrap().to_string()
        })
        .collect()
}

fn check(fx: &Fixture, file: &Path, target: &str) -> String {
    let out =
        output_ok(&mut fx.herd(&["check", "--config", file.to_str().unwrap(), "--for", target]));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn check_parses_every_key_of_serve() {
    let fx = Fixture::new();
    let creds = fx.path("nats.creds");
    let token = fx.path("nats.token");
    std::fs::write(&creds, "creds").unwrap();
    std::fs::write(&token, "secret").unwrap();
    // Everything but the NATS token (a token and a credentials file exclude each other) and
    // -q (it excludes -v): those are in the second file.
    let a = fx.path("a.toml");
    std::fs::write(
        &a,
        format!(
            r#"# every key of herd serve
control = "{ctl}"
pid-file = "{pid}"
metrics = "127.0.0.1:9187"
metrics-public = true
max-connections = 32
idle-timeout = "20s"
delivery-timeout = "15s"
workers = "2..4"
scale-idle = "30s"
max-pool-rss = "2GiB"
window = 8
timeout = "1s"
max-age = "30s"
deadline = "5m"
retries = 4
retry-backoff = "250ms"
rate = "200/s,burst=10"
max-inflight-per-key = 1
key-rate = "10/s,burst=2"
batch = 64
batch-wait = "10ms"
batch-by-key = true
max-tasks = 1_000
max-rss = "512MiB"
queue = 5000
queue-bytes = "8MiB"
max-frame = "1MiB"
grace = "40s"
exit-timeout = "3s"
start-timeout = "7s"
user = "nobody"
group = "nogroup"
allow-root = true
limit-as = "1GiB"
limit-nofile = 512
limit-core = 0
limit-cpu = "10m"
nice = 5
env = ["A=1", "B=two words"]
clear-env = true
nats = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
nats-creds = "{creds}"
nats-stream = "S"
nats-subjects = ["a.>", "b.>"]
nats-replicas = 3
nats-consumer = "c"
nats-ack-wait = "20s"
nats-max-deliver = 3
nats-max-ack-pending = 100
nats-results = "r"
log-format = "json"
log-file = "{log}"
verbose = 2
command = ["{chaos}", "--flag"]
"#,
            ctl = fx.path("c.sock").display(),
            pid = fx.path("herd.pid").display(),
            creds = creds.display(),
            log = fx.path("herd.log").display(),
            chaos = chaos(),
        ),
    )
    .unwrap();
    let b = fx.path("b.toml");
    std::fs::write(
        &b,
        format!(
            "control = \"x.sock\"\nnats = \"nats://h:4222\"\nnats-token-file = \"{}\"\nquiet = 1\ncommand = [\"w\"]\n",
            token.display()
        ),
    )
    .unwrap();
    // Redis intake excludes NATS: its keys are in a third file.
    let c = fx.path("c.toml");
    std::fs::write(
        &c,
        "control = \"x.sock\"\nredis = \"redis://127.0.0.1:6379/2\"\nredis-stream = \"s\"\n\
         redis-group = \"g\"\nredis-consumer = \"me\"\nredis-results = \"r\"\n\
         redis-field = \"data\"\nredis-claim-idle = \"45s\"\nredis-max-deliver = 0\n\
         command = [\"w\"]\n",
    )
    .unwrap();
    let out_a = check(&fx, &a, "serve");
    let out_b = check(&fx, &b, "serve");
    let out_c = check(&fx, &c, "serve");
    let mut set = keys_from_file(&out_a, &a);
    set.extend(keys_from_file(&out_b, &b));
    set.extend(keys_from_file(&out_c, &c));
    assert_eq!(set, all_keys(&out_a), "{out_a}\n{out_b}\n{out_c}");
    assert!(out_c.contains("redis-claim-idle = \"45s\""), "{out_c}");
    // The values as parsed, not just seen.
    for line in [
        "retries = \"4\"",
        "max-tasks = \"1000\"",
        "env = [\"A=1\", \"B=two words\"]",
        "verbose = \"2\"",
        "nats-subjects = [\"a.>\", \"b.>\"]",
        "nats-replicas = \"3\"",
    ] {
        assert!(out_a.contains(line), "{line}\n{out_a}");
    }
    assert!(
        out_a.contains(&format!("command = [\"{}\", \"--flag\"]", chaos())),
        "{out_a}"
    );
    assert!(out_b.contains("quiet = \"1\""), "{out_b}");
}

#[test]
fn check_parses_every_key_of_run() {
    let fx = Fixture::new();
    let f = fx.path("run.toml");
    std::fs::write(
        &f,
        format!(
            r#"input = "in.txt"
output = "out.txt"
ordered = true
failed = "failed.txt"
resume = true
retry-failed = "old.txt"
no-progress = true
priority = -5
line-priority = true
workers = 3
window = 4
timeout = "2s"
max-age = "1s"
deadline = "1m"
retries = 1
retry-backoff = "1s"
rate = "30/m"
line-key = true
max-inflight-per-key = 2
key-rate = "5/s"
batch = 8
batch-wait = "2ms"
batch-by-key = true
max-tasks = 10
max-rss = "1GiB"
queue = 100
queue-bytes = "4MiB"
max-frame = "2MiB"
grace = "1s"
exit-timeout = "1s"
start-timeout = "1s"
user = "nobody"
group = "nogroup"
allow-root = true
limit-as = "1GiB"
limit-nofile = 100
limit-core = "1MiB"
limit-cpu = "1h"
nice = 19
env = ["X=1"]
clear-env = true
log-format = "json"
log-file = "l.log"
verbose = 1
command = ["{chaos}"]
"#,
            chaos = chaos()
        ),
    )
    .unwrap();
    let out = check(&fx, &f, "run");
    let mut set = keys_from_file(&out, &f);
    // Autoscaling keys need `workers = "MIN..MAX"`, and -q excludes -v: serve's test has them.
    // `key` excludes `line-key`: `key` is checked on its own below.
    set.extend(["scale-idle", "max-pool-rss", "quiet", "key"].map(String::from));
    assert_eq!(set, all_keys(&out), "{out}");
    assert!(out.contains("priority = \"-5\""), "{out}");
    assert!(out.contains("key-rate = \"5/s\""), "{out}");
    let k = fx.path("key.toml");
    std::fs::write(
        &k,
        format!("key = \"/user/id\"\ncommand = [\"{}\"]\n", chaos()),
    )
    .unwrap();
    let out = check(&fx, &k, "run");
    assert!(out.contains("key = \"/user/id\""), "{out}");
}

#[test]
fn unknown_keys_and_bad_values_name_their_key_and_line() {
    let fx = Fixture::new();
    let cases = [
        (
            "control = \"c.sock\"\n\nretris = 3\n",
            ":3: unknown key `retris` (did you mean `retries`?)",
        ),
        (
            "control = \"c.sock\"\n[pool]\nworkers = 2\n",
            ":2: unknown key `pool`",
        ),
        (
            "control = \"c.sock\"\ncommand = [\"w\"]\nworkers = \"many\"\n",
            ":3: key `workers`: invalid value 'many'",
        ),
        (
            "control = \"c.sock\"\ncommand = [\"w\"]\n\n\ntimeout = 5\n",
            ":5: key `timeout`: invalid value '5'",
        ),
        (
            "clear-env = \"yes\"\n",
            ":1: key `clear-env`: expected true or false",
        ),
        (
            "command = \"w.py\"\n",
            ":1: key `command`: expected an array",
        ),
        (
            "control = \"c.sock\"\nretries = [1, 2]\n",
            ":2: key `retries`: expected a string or a number",
        ),
        ("control = \"c.sock\"\nretries = \n", ":2:"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let f = fx.path(&format!("bad{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let want = format!("{}{want}", f.display());
        for args in [
            vec!["check", "--config", f.to_str().unwrap()],
            vec!["serve", "--config", f.to_str().unwrap()],
        ] {
            let out = fx.herd(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} {text:?}");
            assert!(err.contains(&want), "{args:?}: want {want:?} in:\n{err}");
        }
    }
}

#[test]
fn the_command_line_overrides_the_file() {
    let fx = Fixture::new();
    let f = fx.path("h.toml");
    std::fs::write(
        &f,
        format!(
            "workers = 3\nretries = \"lots\"\nenv = [\"A=1\"]\ncommand = [\"{}\"]\n",
            chaos()
        ),
    )
    .unwrap();
    // A bad value in the file is no error when the command line replaces it.
    let run = fx.run_chaos_cfg(&f, &["-w", "2", "--retries", "1"], square_events(50));
    run.assert_success();
    run.by_seq(50);
    let pids = run.worker_pids();
    assert_eq!(pids.len(), 2, "{}", run.stderr());
}

impl Fixture {
    /// `herd run --config FILE <opts>` (the worker command from the file), JSON logs.
    fn run_chaos_cfg(&self, file: &Path, opts: &[&str], input: String) -> Run {
        let mut args = vec![
            "run",
            "--log-format",
            "json",
            "--config",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(opts);
        let out = self.herd(&args).write_stdin(input).output().unwrap();
        Run::new(args.iter().map(|s| s.to_string()).collect(), out)
    }
}

#[test]
fn hup_applies_a_good_file_and_refuses_a_bad_one_under_load() {
    const EVENTS: usize = 20_000;
    let fx = Fixture::new();
    let control = fx.path("c.sock");
    let f = fx.path("herd.toml");
    let write = |workers: usize, gen: u32| {
        std::fs::write(
            &f,
            format!(
                "control = \"{}\"\nworkers = {workers}\nidle-timeout = \"{gen}s\"\nenv = [\"GEN={gen}\"]\ncommand = [\"{}\"]\n",
                control.display(),
                chaos()
            ),
        )
        .unwrap();
    };
    write(2, 1);
    let live = fx.spawn_herd(&[
        "serve",
        "--log-format",
        "json",
        "--config",
        f.to_str().unwrap(),
    ]);
    live.wait_log("ready", RUN_TIMEOUT, |l| {
        l.iter().any(|x| x["message"] == "ready")
    });
    let d = Daemon {
        fx,
        live,
        control: control.clone(),
    };
    // The events go in through a pipe, half before the HUPs and half after: the submission
    // runs across both.
    let mut sub = std::process::Command::new(herd_bin())
        .args(["submit", "--control", control.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = square_events(EVENTS);
    let lines: Vec<&str> = events.lines().collect();
    let mut stdin = sub.stdin.take().unwrap();
    for l in &lines[..EVENTS / 2] {
        writeln!(stdin, "{l}").unwrap();
    }
    stdin.flush().unwrap();
    d.wait_status("the submission is flowing", |s| {
        s["totals"]["ok"].as_u64().unwrap() > 100
    });

    // A good change: one worker more (in place) and a new environment (a rolling restart).
    write(3, 2);
    signal(d.live.pid(), Signal::SIGHUP);
    d.live.wait_log("reload complete", RUN_TIMEOUT, |l| {
        l.iter().any(|x| x["message"] == "reload complete")
    });
    let st = d.wait_status("three workers", |s| ready_workers(s) == 3);
    assert_eq!(st["target_workers"], 3);
    let logs = d.live.logs();
    let said = |msg: &str| {
        logs.iter()
            .find(|l| l["message"] == msg)
            .map(|l| l["keys"].clone())
    };
    assert_eq!(
        said("configuration changed"),
        Some(serde_json::json!(["env", "workers"])),
        "{}",
        dump(&logs)
    );
    assert_eq!(
        said("these keys changed but take effect only at a restart"),
        Some(serde_json::json!(["idle-timeout"])),
        "{}",
        dump(&logs)
    );
    // Every worker now runs with the new environment.
    let env_events = "{\"op\":\"env\"}\n".repeat(30);
    let out =
        d.fx.herd(&["submit", "--control", control.to_str().unwrap()])
            .write_stdin(env_events)
            .output()
            .unwrap();
    let envs = Run::new(vec!["submit".into()], out);
    envs.assert_success();
    for r in envs.by_seq(30) {
        assert_eq!(r["output"]["GEN"], "2", "{r}");
    }

    // A bad file: refused, and what runs stays.
    std::fs::write(&f, "workers = 3\nretrys = 2\n").unwrap();
    signal(d.live.pid(), Signal::SIGHUP);
    d.live.wait_log("the refusal", RUN_TIMEOUT, |l| {
        l.iter().any(|x| {
            x["message"] == "configuration refused; the running one stays"
                && x["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains(":2: unknown key `retrys`")
        })
    });
    for l in &lines[EVENTS / 2..] {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = sub.wait_with_output().unwrap();
    let run = Run::new(vec!["submit".into()], out);
    run.assert_success();
    for (i, r) in run.by_seq(EVENTS).iter().enumerate() {
        assert_eq!(r["output"].as_u64().unwrap(), (i * i) as u64, "{r}");
    }
    let st = d.status();
    assert_eq!(st["target_workers"], 3, "{st}");
    // The two workers replaced by the one reload (the third started with the new settings).
    assert_eq!(st["restarts"]["reload"], 2, "{st}");
    let logs = d.live.logs();
    assert_eq!(
        logs.iter()
            .filter(|l| l["message"] == "reload complete")
            .count(),
        1,
        "{}",
        dump(&logs)
    );
    d.stop_ok();
}
