//! Least privilege and resource limits: workers under `--user` really run as that user (the
//! kernel says so), still connect and serve, and own a socket directory nobody else may enter;
//! `--limit-*` and `--nice` are in force in the worker; an address-space limit turns a runaway
//! allocation into a crash record; `--env`/`--clear-env` shape what a worker sees; herd refuses
//! root workers unless told, and refuses bad values.
//!
//! The tests that switch users need root: they are `#[ignore = "needs root"]`, and
//! scripts/test.sh runs them (`cargo test -- --ignored`) when it runs as root, as CI does.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::util::*;

/// The unprivileged user the workers run as (Debian's `nobody`).
const NOBODY: u32 = 65534;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For the `#[ignore = "needs root"]` tests, run on purpose: fail, never pass, without root.
fn need_root() {
    assert!(root(), "this test switches users: run it as root");
}

/// A fixture whose dir the worker user may traverse (not list), so herd's default runtime
/// directory inside it is reachable: the socket directory is then visible to the test.
fn reachable_fixture() -> Fixture {
    let fx = Fixture::new();
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    fx
}

/// `Uid:` and `Gid:` of `/proc/PID/status`: real, effective, saved and filesystem ids.
fn proc_ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace()
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (ids("Uid:"), ids("Gid:"))
}

/// The one record's output of `herd run <opts> -- herd-chaos` fed `event`.
fn one_output(fx: &Fixture, opts: &[&str], event: &str) -> Value {
    let run = fx.run_chaos(opts, format!("{event}\n"));
    run.assert_success();
    let r = run.by_seq(1)[0].clone();
    assert_eq!(r["ok"], true, "{r}\n{}", run.stderr());
    r["output"].clone()
}

fn keys(v: &Value) -> HashSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// A daemon whose workers run as `nobody`: the kernel reports that uid for every worker, the
/// socket directory is theirs alone, 200,000 events come back ok, and a rolling reload brings
/// up workers that run as `nobody` too.
#[test]
#[ignore = "needs root"]
fn workers_run_as_the_given_user_and_serve() {
    need_root();
    let fx = reachable_fixture();
    let control = fx.path("control.sock");
    let herd = fx.serve(&control, 2, &["--user", "nobody"]);
    herd.wait_log("2 workers ready", RUN_TIMEOUT, |l| {
        l.iter().filter(|x| x["message"] == "worker ready").count() >= 2
    });
    let settings: Vec<Value> = herd
        .logs()
        .into_iter()
        .filter(|l| l["message"] == "worker launch settings")
        .collect();
    assert_eq!(settings.len(), 1, "{}", dump(&herd.logs()));
    assert_eq!(
        (&settings[0]["user"], &settings[0]["uid"]),
        (&"nobody".into(), &NOBODY.into())
    );
    let first: HashSet<u32> = herd.live_worker_pids().into_iter().collect();
    assert_eq!(first.len(), 2);
    for &pid in &first {
        assert_eq!(
            proc_ids(pid),
            (vec![NOBODY; 4], vec![NOBODY; 4]),
            "pid {pid}"
        );
    }

    // The socket directory: the workers' own, mode 0700, socket inside theirs too.
    let dirs = fx.leftover_runtime_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let meta = std::fs::metadata(&dirs[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o700));
    let sock = std::fs::metadata(dirs[0].join("workers.sock")).unwrap();
    assert_eq!(sock.uid(), NOBODY);
    // Another unprivileged user (daemon, uid 1) cannot even look inside.
    let peek = std::process::Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--clear-groups", "ls"])
        .arg(&dirs[0])
        .output()
        .unwrap();
    assert!(!peek.status.success(), "uid 1 listed the socket directory");
    assert!(
        String::from_utf8_lossy(&peek.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );

    // They serve: every event of a large submission gets its ok record.
    const N: usize = 200_000;
    let d = Daemon {
        fx,
        live: herd,
        control,
    };
    let mut input = square_events(N);
    input.push_str("{\"op\":\"whoami\"}\n");
    let child = d.submit_bg("events", &input, &[]);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Value> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(records.len(), N + 1);
    let seqs: HashSet<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), N + 1);
    for r in &records {
        assert_eq!(r["ok"], true, "{r}");
        let seq = r["seq"].as_u64().unwrap();
        if seq < N as u64 {
            assert_eq!(r["output"].as_u64(), Some(seq * seq), "{r}");
        } else {
            let who = &r["output"];
            assert_eq!(who["uid"], NOBODY, "{who}");
            assert_eq!(who["euid"], NOBODY, "{who}");
            assert_eq!(who["gid"], NOBODY, "{who}");
            // Root's supplementary groups are gone: only nobody's own.
            assert_eq!(who["groups"], serde_json::json!([NOBODY]), "{who}");
        }
    }

    // A rolling reload: the new workers run as nobody as well.
    d.ctl_cmd(&["reload"]);
    wait_for("2 new workers ready", RUN_TIMEOUT, || {
        let now: HashSet<u32> = d.live.live_worker_pids().into_iter().collect();
        now.len() == 2 && now.is_disjoint(&first)
    });
    for pid in d.live.live_worker_pids() {
        assert_eq!(proc_ids(pid).0, vec![NOBODY; 4], "reloaded pid {pid}");
    }
    let pids = d.live.all_worker_pids();
    let (status, logs, fx, _) = d.stop();
    assert!(status.success(), "{}", dump(&logs));
    assert_all_gone(&pids);
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// Hostile: a worker running as `nobody` tries to SIGKILL herd (its parent) and to write into
/// herd's directory before it starts serving. Both fail; herd serves every event.
#[test]
#[ignore = "needs root"]
fn a_worker_under_user_cannot_touch_herd() {
    need_root();
    let fx = reachable_fixture();
    let planted = fx.path("planted");
    let script = format!(
        "kill -9 $PPID 2>/dev/null; echo \"kill $?\" >&2; \
         touch '{}' 2>/dev/null; echo \"touch $?\" >&2; exec '{}'",
        planted.display(),
        chaos()
    );
    let mut herd = spawn_run_sh(&fx, 2, &["--user", "nobody"], &script);
    herd.feed(square_events(2_000).into_bytes());
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", dump(&logs));
    assert_eq!(records.len(), 2_000);
    assert!(records.iter().all(|r| r["ok"] == true));
    let said: Vec<&str> = logs
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with("kill ") || m.starts_with("touch "))
        .collect();
    assert!(said.len() >= 4, "{}", dump(&logs));
    assert!(said.iter().all(|m| m.ends_with(" 1")), "{said:?}");
    assert!(!planted.exists());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// herd (root) is SIGKILLed while its `nobody` workers have started helpers: the guard, still
/// root, kills them all and removes the workers' socket directory.
#[test]
#[ignore = "needs root"]
fn the_guard_cleans_up_after_workers_of_another_user() {
    need_root();
    let fx = reachable_fixture();
    let script = format!("sleep 600 & echo \"sleeper $!\" >&2; exec '{}'", chaos());
    let herd = spawn_run_sh(&fx, 2, &["--user", "nobody"], &script);
    herd.wait_log("2 workers ready", RUN_TIMEOUT, |l| {
        l.iter().filter(|x| x["message"] == "worker ready").count() >= 2
    });
    let mut doomed = herd.all_worker_pids();
    let sleepers = sleeper_pids(&herd.logs());
    assert_eq!(sleepers.len(), 2);
    for &pid in &sleepers {
        assert_eq!(proc_ids(pid).0, vec![NOBODY; 4]);
    }
    doomed.extend(&sleepers);
    assert_eq!(fx.leftover_runtime_dirs().len(), 1);
    signal(herd.pid(), Signal::SIGKILL);
    let mut herd = herd;
    let _ = herd.child.wait();
    assert_all_gone(&doomed);
    wait_for("the socket directory to go", RUN_TIMEOUT, || {
        fx.leftover_runtime_dirs().is_empty()
    });
}

/// Under `--limit-as 256M`, an allocation that runs away to 4 GiB fails inside the worker,
/// which aborts: the event gets a `crashed` record after its attempts, the worker is replaced,
/// and the rest of the input is served. The machine's memory is never at stake.
#[test]
fn an_address_space_limit_turns_a_runaway_allocation_into_a_crash_record() {
    const N: usize = 5_000;
    let fx = Fixture::new();
    let mut input = String::from("{\"op\":\"runaway\",\"mb\":4096}\n");
    input.push_str(&square_events(N));
    input.push_str("{\"op\":\"whoami\"}\n");
    let run = fx.run_chaos(&["-w", "2", "--retries", "1", "--limit-as", "256M"], input);
    run.assert_success();
    let records = run.by_seq(N + 2);
    let runaway = records[0];
    assert_eq!(kind(runaway), "crashed", "{runaway}");
    assert_eq!(runaway["attempts"], 2, "{runaway}");
    let message = runaway["error"]["message"].as_str().unwrap();
    assert!(message.contains("SIGABRT"), "{message}");
    for (i, r) in records[1..=N].iter().enumerate() {
        assert_eq!(r["output"].as_u64(), Some((i * i) as u64), "{r}");
    }
    let who = &records[N + 1]["output"];
    assert_eq!(
        who["as"],
        serde_json::json!([256u64 << 20, 256u64 << 20]),
        "{who}"
    );
    // The allocator said why in the worker's stderr, which herd logged.
    assert!(
        run.logs.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("memory allocation of"))),
        "{}",
        run.stderr()
    );
}

/// `--nice`, `--limit-nofile`, `--limit-core` and `--limit-cpu` as the worker sees them (soft
/// and hard, so it cannot raise them); past its CPU budget a worker is killed by SIGXCPU and
/// its task recorded as a crash.
#[test]
fn nice_and_limits_are_in_force_in_the_worker() {
    let fx = Fixture::new();
    let nice = if root() { "-3" } else { "7" };
    let who = one_output(
        &fx,
        &[
            "-w",
            "1",
            "--nice",
            nice,
            "--limit-nofile",
            "64",
            "--limit-core",
            "0",
            "--limit-cpu",
            "90s",
        ],
        "{\"op\":\"whoami\"}",
    );
    assert_eq!(who["nice"].as_i64(), Some(nice.parse().unwrap()), "{who}");
    assert_eq!(who["nofile"], serde_json::json!([64, 64]), "{who}");
    assert_eq!(who["core"], serde_json::json!([0, 0]), "{who}");
    assert_eq!(who["cpu"], serde_json::json!([90, 91]), "{who}");

    // Without options the worker gets herd's own starting descriptor limit, not the one herd
    // raised for itself.
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let who = one_output(&fx, &["-w", "1"], "{\"op\":\"whoami\"}");
    assert_eq!(who["nofile"], serde_json::json!([soft, hard]), "{who}");
    assert_eq!(who["nice"], 0, "{who}");

    // A CPU budget of 1 s and a task that spins for 20 s: SIGXCPU, a crash record, and the
    // events after it are served by the replacement.
    let run = fx.run_chaos(
        &["-w", "1", "--retries", "0", "--limit-cpu", "1s"],
        "{\"op\":\"spin\",\"ms\":20000}\n{\"op\":\"square\",\"n\":9}\n",
    );
    run.assert_success();
    let r = run.by_seq(2);
    assert_eq!(kind(r[0]), "crashed", "{}", r[0]);
    assert!(
        r[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGXCPU"),
        "{}",
        r[0]
    );
    assert_eq!(r[1]["output"], 81);
}

/// The environment: inherited by default minus herd's own `HERD_*` settings (a NATS token
/// must not leak), `--env` on top; `--clear-env` leaves exactly PATH, HOME, LANG, the `--env`
/// ones and the protocol variables, plus the user's identity under `--user`.
#[test]
fn env_and_clear_env_shape_what_the_worker_sees() {
    let fx = Fixture::new();
    let env_of = |opts: &[&str]| -> Value {
        let mut args = vec!["run", "--log-format", "json", "-w", "1"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", chaos()]);
        let out = fx
            .herd(&args)
            .env("HERD_TEST_SECRET", "in herd's env")
            .env("HERD_NATS_TOKEN", "s3cret")
            .env("APP_SETTING", "inherited")
            .write_stdin("{\"op\":\"env\"}\n")
            .output()
            .unwrap();
        let run = Run::new(args.iter().map(|s| s.to_string()).collect(), out);
        run.assert_success();
        let r = run.by_seq(1)[0].clone();
        assert_eq!(r["ok"], true, "{r}");
        r["output"].clone()
    };
    let protocol = ["HERD_SOCKET", "HERD_TOKEN", "HERD_WORKER", "HERD_MAX_FRAME"];

    let env = env_of(&[
        "--env",
        "FOO=bar",
        "--env",
        "APP_SETTING=overridden",
        "--env",
        "E=",
    ]);
    assert_eq!(env["FOO"], "bar");
    assert_eq!(env["APP_SETTING"], "overridden");
    assert_eq!(env["E"], "");
    assert_eq!(env["PATH"].as_str(), std::env::var("PATH").ok().as_deref());
    let herd_vars: HashSet<String> = keys(&env)
        .into_iter()
        .filter(|k| k.starts_with("HERD_"))
        .collect();
    assert_eq!(herd_vars, protocol.iter().map(|s| s.to_string()).collect());

    let env = env_of(&["--clear-env", "--env", "FOO=bar"]);
    let mut want: HashSet<String> = ["PATH", "HOME", "LANG", "FOO"]
        .iter()
        .chain(&protocol)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(keys(&env), want, "{env}");
    assert!(!env["PATH"].as_str().unwrap().is_empty());

    if root() {
        let env = env_of(&["--clear-env", "--user", "nobody"]);
        want.remove("FOO");
        want.extend(["USER".to_string(), "LOGNAME".to_string()]);
        assert_eq!(keys(&env), want, "{env}");
        assert_eq!(env["USER"], "nobody");
        assert_eq!(env["LOGNAME"], "nobody");
        assert_eq!(env["HOME"], "/nonexistent");
    }
}

/// `herd <args>` as a run or serve that must fail before starting anything; its stderr.
fn refused(fx: &Fixture, args: &[&str], env: &[(&str, &str)], code: i32) -> String {
    let mut cmd = fx.herd(args);
    cmd.env_remove("HERD_ALLOW_ROOT")
        .env_remove("HERD_CONTAINER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "herd {args:?}\n{stderr}");
    assert!(fx.leftover_runtime_dirs().is_empty(), "herd {args:?}");
    stderr
}

/// Root workers: refused outside a container unless `--allow-root` (or HERD_ALLOW_ROOT=1);
/// inside one, allowed without `--user`; `--user root` always needs `--allow-root`.
#[test]
#[ignore = "needs root"]
fn root_workers_are_refused_unless_allowed() {
    need_root();
    let fx = Fixture::new();
    let chaos = chaos();
    let host = [("HERD_CONTAINER", "0")];
    for args in [
        &["run", "--", chaos][..],
        &["serve", "--control", "c.sock", "--", chaos][..],
        &["run", "--user", "root", "--", chaos][..],
        &["run", "--user", "0", "--group", "0", "--", chaos][..],
    ] {
        let stderr = refused(&fx, args, &host, 1);
        assert!(
            stderr.contains("refusing to run workers as root") && stderr.contains("--user"),
            "{stderr}"
        );
        assert!(!fx.path("c.sock").exists());
    }
    let stderr = refused(
        &fx,
        &["run", "--user", "root", "--", chaos],
        &[("HERD_CONTAINER", "1")],
        1,
    );
    assert!(stderr.contains("--allow-root"), "{stderr}");

    let ok = |args: &[&str], env: &[(&str, &str)]| {
        let mut full = vec!["run", "-w", "1"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", chaos]);
        let mut cmd = fx.herd(&full);
        cmd.env_remove("HERD_ALLOW_ROOT")
            .env_remove("HERD_CONTAINER");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = output_ok(cmd.write_stdin("{\"op\":\"whoami\"}\n"));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        r["output"]["uid"].as_u64().unwrap()
    };
    assert_eq!(ok(&["--allow-root"], &host), 0);
    assert_eq!(
        ok(&[], &[("HERD_CONTAINER", "0"), ("HERD_ALLOW_ROOT", "1")]),
        0
    );
    assert_eq!(ok(&[], &[("HERD_CONTAINER", "1")]), 0);
    assert_eq!(ok(&["--user", "root", "--allow-root"], &host), 0);
    assert_eq!(ok(&["--user", "nobody"], &host), u64::from(NOBODY));
}

/// Bad values are refused before anything starts: as usage errors when the value itself is
/// wrong, with a clear message when it does not fit the system or who herd runs as.
#[test]
fn bad_limit_and_user_values_are_refused() {
    let fx = Fixture::new();
    let chaos = chaos();
    let usage: [(&[&str], &str); 11] = [
        (&["--limit-as", "12X"], "unknown size unit"),
        (&["--limit-as", "1K"], "below 16MiB"),
        (&["--limit-as=-5"], "not a size"),
        (&["--limit-core", "lots"], "not a size"),
        (&["--nice", "20"], "-20..=19"),
        (&["--nice", "-21"], "-20..=19"),
        (&["--limit-nofile", "0"], "16.."),
        (&["--limit-cpu", "0s"], "is zero"),
        (&["--env", "NOEQUALS"], "not KEY=VALUE"),
        (&["--env", "HERD_TOKEN=x"], "cannot be overridden"),
        (&["--group", "nogroup"], "--user"),
    ];
    for (opts, want) in usage {
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", chaos]);
        let stderr = refused(&fx, &args, &[], 2);
        assert!(
            stderr.contains(want),
            "herd {args:?}: want {want:?}\n{stderr}"
        );
    }
}

/// Bad `--user` and `--group` values, and options that need herd to be root, are refused
/// with a clear message before anything starts.
#[test]
#[ignore = "needs root"]
fn bad_user_values_are_refused() {
    need_root();
    let fx = Fixture::new();
    let chaos = chaos();
    let resolve: [(&[&str], &str); 3] = [
        (
            &["--user", "no-such-user-herd"],
            "no user \"no-such-user-herd\"",
        ),
        (&["--user", "4000000"], "give its group with --group"),
        (
            &["--user", "nobody", "--group", "no-such-group-herd"],
            "no group",
        ),
    ];
    for (opts, want) in resolve {
        let mut args = vec!["run"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", chaos]);
        let stderr = refused(&fx, &args, &[], 1);
        assert!(
            stderr.contains(want),
            "herd {args:?}: want {want:?}\n{stderr}"
        );
    }
    // herd itself unprivileged: it cannot switch to another user, nor raise its priority.
    for (opts, want) in [
        (&["--user", "daemon"][..], "needs herd to run as root"),
        (&["--nice", "-5"][..], "needs herd to run as root"),
    ] {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                herd_bin(),
                "run",
            ])
            .args(opts)
            .args(["--", chaos])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(want), "{opts:?}: want {want:?}\n{stderr}");
    }
}

/// The default runtime directory (here the fixture, made mode 0700 root) is out of the worker
/// user's reach: herd uses the temp dir instead, and removes what it made there.
#[test]
#[ignore = "needs root"]
fn an_unreachable_runtime_dir_falls_back_to_the_temp_dir() {
    need_root();
    let fx = Fixture::new();
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = one_output(&fx, &["-w", "1", "--user", "nobody"], "{\"op\":\"env\"}");
    let socket = PathBuf::from(env["HERD_SOCKET"].as_str().unwrap());
    let dir = socket.parent().unwrap();
    assert!(
        dir.starts_with(std::env::temp_dir()),
        "{}",
        socket.display()
    );
    assert!(!dir.starts_with(fx.dir.path()), "{}", socket.display());
    assert!(!Path::new(dir).exists(), "{} left behind", dir.display());
    assert!(fx.leftover_runtime_dirs().is_empty());
}

/// Starts a process running as `nobody` that, for every runtime directory herd makes in
/// `base`, swaps the socket in it for a symlink to `target` as soon as the socket appears. It
/// runs inside the forked child (no exec), making only system calls on memory prepared here,
/// so that it is fast enough to win a race of a few microseconds.
fn spawn_socket_swapper(base: &Path, target: &Path) -> std::process::Child {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let base_c = CString::new(base.as_os_str().as_bytes()).unwrap();
    let base = base.as_os_str().as_bytes().to_vec();
    let target = CString::new(target.as_os_str().as_bytes()).unwrap();
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and the (never reached) exec only async-signal-safe system calls
    // on memory prepared before the fork; the child ends by being killed.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            // Closing std's exec-error pipe makes spawn() return.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            // Root's privilege, used once: to be on a CPU whenever herd opens the window.
            libc::setpriority(libc::PRIO_PROCESS, 0, -20);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                libc::_exit(2);
            }
            let ifd = libc::inotify_init1(0);
            if ifd < 0 || libc::inotify_add_watch(ifd, base_c.as_ptr(), libc::IN_CREATE) < 0 {
                libc::_exit(3);
            }
            let mut events = [0u8; 4096];
            let mut evil = [0u8; 4096];
            let mut sock = [0u8; 4096];
            loop {
                let n = libc::read(ifd, events.as_mut_ptr().cast(), events.len());
                if n <= 0 {
                    continue;
                }
                let mut at = 0usize;
                while at + 16 <= n as usize {
                    let len = u32::from_ne_bytes([
                        events[at + 12],
                        events[at + 13],
                        events[at + 14],
                        events[at + 15],
                    ]) as usize;
                    let name = &events[at + 16..(at + 16 + len).min(n as usize)];
                    at += 16 + len;
                    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                    if !name.starts_with(b"herd-") || base.len() + name.len() + 20 > evil.len() {
                        continue;
                    }
                    let fill = |buf: &mut [u8; 4096], leaf: &[u8]| {
                        let mut i = 0;
                        for part in [&base[..], b"/", name, b"/", leaf, b"\0"] {
                            buf[i..i + part.len()].copy_from_slice(part);
                            i += part.len();
                        }
                    };
                    // Tells the test: a file `<what>herd-...` in `base`.
                    let mark = |what: &[u8]| {
                        let mut path = [0u8; 4096];
                        let mut i = 0;
                        for part in [&base[..], what, name, b"\0"] {
                            path[i..i + part.len()].copy_from_slice(part);
                            i += part.len();
                        }
                        let fd = libc::open(
                            path.as_ptr().cast(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        libc::close(fd);
                    };
                    fill(&mut evil, b"evil");
                    fill(&mut sock, b"workers.sock");
                    let (evil, sock) = (evil.as_ptr().cast(), sock.as_ptr().cast());
                    // Wait for the directory to become ours, then for the socket.
                    let mut planted = false;
                    for tries in 0..200_000 {
                        if !planted {
                            planted = libc::symlink(target.as_ptr(), evil) == 0;
                            if planted {
                                mark(b"/entered-");
                            }
                            if !planted {
                                if *libc::__errno_location() != libc::EACCES {
                                    break; // gone already
                                }
                                // Not ours yet. Spin a little (main's herd handed the
                                // directory over at once), then let herd set up.
                                if tries > 1000 {
                                    let nap = libc::timespec {
                                        tv_sec: 0,
                                        tv_nsec: 50_000,
                                    };
                                    libc::nanosleep(&nap, std::ptr::null_mut());
                                }
                            }
                            continue;
                        }
                        let mut st: libc::stat = std::mem::zeroed();
                        if libc::lstat(sock, &mut st) == 0 {
                            // Only a socket herd has not handed over yet is worth it (a
                            // later swap only breaks that herd's own workers).
                            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                                && st.st_uid == 0
                                && libc::rename(evil, sock) == 0
                            {
                                mark(b"/swapped-");
                            }
                            break;
                        }
                    }
                }
            }
        });
    }
    cmd.spawn().unwrap()
}

/// Hostile: a process running as the worker user swaps `workers.sock` for a symlink to a root
/// file while herd (root) sets up, 200 times. herd never changes that file: it hands the
/// directory over only once the socket in it is set up, and changes owners through
/// descriptors, never through a path the worker user can write.
#[test]
#[ignore = "needs root"]
fn a_worker_user_cannot_make_herd_chown_a_root_file() {
    need_root();
    let fx = reachable_fixture();
    // A shared, sticky base like /tmp, watchable by the worker user.
    let base = fx.path("run");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let canary = fx.path("root-file");
    std::fs::write(&canary, "secret").unwrap();
    std::fs::set_permissions(&canary, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut swapper = spawn_socket_swapper(&base, &canary);
    for start in 1..=200 {
        let mut herd = fx.std_command(herd_bin());
        herd.env("XDG_RUNTIME_DIR", &base)
            .args(["run", "-w", "1", "--user", "nobody", "--", chaos()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // No input: herd sets up, has nothing to do, and exits (whether or not the swap broke
        // its worker's connection).
        herd.status().unwrap();
        let meta = std::fs::metadata(&canary).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o600),
            "the root file changed after {start} starts"
        );
        assert!(swapper.try_wait().unwrap().is_none(), "the swapper died");
    }
    let marks = |what: &str| {
        std::fs::read_dir(&base)
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_name().to_string_lossy().starts_with(what)
            })
            .count()
    };
    // The swapper got into most directories; it never saw a socket herd had not handed over.
    let (entered, swapped) = (marks("entered-"), marks("swapped-"));
    eprintln!("the swapper entered {entered} of 200 runtime directories");
    assert_eq!(swapped, 0);
    swapper.kill().unwrap();
    swapper.wait().unwrap();
}

/// herd's own environment (and memory) is out of its workers' reach even when they run as
/// herd's user: a worker that reads `/proc/<herd>/environ` is refused, and herd's secrets
/// appear nowhere in what it printed. herd runs as `nobody` here (dropped to it when the test
/// runs as root).
#[test]
fn workers_of_herds_own_user_cannot_read_herds_environment() {
    let fx = Fixture::new();
    // Writable by `nobody` too, for herd's runtime directory.
    std::fs::set_permissions(fx.dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let input = fx.path("input");
    std::fs::write(&input, "{\"op\":\"square\",\"n\":3}\n").unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = format!(
        "env=$(tr '\\0' ' ' < /proc/$PPID/environ); r=$?; echo \"$env\" >&2; \
         echo \"environ $r\" >&2; tr '\\0' ' ' < /proc/$PPID/cmdline >/dev/null; \
         echo \"cmdline $?\" >&2; exec '{}'",
        chaos()
    );
    let herd_args = [
        herd_bin(),
        "run",
        "--log-format",
        "json",
        "-w",
        "1",
        "--clear-env",
        "--",
        "sh",
        "-c",
        &script,
    ];
    let mut cmd = if root() {
        let mut c = fx.std_command("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.args(herd_args);
        c
    } else {
        let mut c = fx.std_command(herd_bin());
        c.args(&herd_args[1..]);
        c
    };
    let out = cmd
        .env("SECRET_API_KEY", "sk-very-secret")
        .env("HERD_NATS_TOKEN", "nats-s3cret")
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let run = Run::new(herd_args.iter().map(|s| s.to_string()).collect(), out);
    run.assert_success();
    assert_eq!(run.by_seq(1)[0]["output"], 9);
    let said: Vec<&str> = run
        .logs
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with("environ ") || m.starts_with("cmdline "))
        .collect();
    // /proc/PID/cmdline stays readable (ps works); environ does not.
    let stderr = run.stderr();
    assert!(
        said.len() == 2 && said[0] != "environ 0" && said[1] == "cmdline 0",
        "{said:?}\n{stderr}"
    );
    assert!(stderr.contains("environ: Permission denied"), "{stderr}");
    assert!(
        !stderr.contains("sk-very-secret") && !stderr.contains("nats-s3cret"),
        "{stderr}"
    );
}

/// Everything in the socket directory is herd's or its workers': what a worker planted there
/// (a file, a directory tree, a symlink to a file outside) goes with it when herd exits, and a
/// directory a SIGKILLed herd left behind with such things in it is swept by the next herd.
/// Symlinks are removed, never followed.
#[test]
fn what_workers_plant_in_the_socket_directory_goes_with_it() {
    let fx = Fixture::new();
    let outside = fx.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "keep").unwrap();
    let plant = format!(
        "d=$(dirname \"$HERD_SOCKET\"); touch \"$d/x\" && mkdir -p \"$d/sub/deeper\" && \
         touch \"$d/sub/deeper/y\" && ln -s '{0}' \"$d/link\" && ln -s '{0}/keep' \"$d/sub/k\" \
         && echo planted >&2; exec '{1}'",
        outside.display(),
        chaos()
    );
    let mut herd = spawn_run_sh(&fx, 1, &[], &plant);
    herd.feed(square_events(10).into_bytes());
    let (status, records, logs) = herd.finish(RUN_TIMEOUT);
    assert!(status.success(), "{}", dump(&logs));
    assert_eq!(records.len(), 10);
    assert!(
        logs.iter().any(|l| l["message"] == "planted"),
        "{}",
        dump(&logs)
    );
    assert_eq!(fx.leftover_runtime_dirs(), Vec::<PathBuf>::new());
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "keep"
    );

    // A stale directory of a herd that is gone (its pid: a process that has exited), with
    // the same things planted in it; and a stale-looking symlink, which must not be followed.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let stale = fx.path(&format!("herd-{pid}-0123456789ab"));
    std::fs::create_dir_all(stale.join("sub/deeper")).unwrap();
    std::fs::write(stale.join("x"), "").unwrap();
    std::fs::write(stale.join("sub/deeper/y"), "").unwrap();
    std::os::unix::fs::symlink(&outside, stale.join("link")).unwrap();
    let decoy = fx.path(&format!("herd-{pid}-decoy"));
    std::os::unix::fs::symlink(&outside, &decoy).unwrap();
    fx.run_chaos(&["-w", "1"], square_events(1))
        .assert_success();
    assert_eq!(fx.leftover_runtime_dirs(), vec![decoy]);
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "keep"
    );
}

/// The pipe inodes among `pid`'s descriptors.
fn pipe_inodes(pid: u32) -> HashSet<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("pipe:"))
        .collect()
}

/// The guard of the herd with pid `herd`: the `herd-guard` process holding a pipe herd holds.
fn guard_of(herd: u32) -> u32 {
    let herd_pipes = pipe_inodes(herd);
    let guards: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "herd-guard")
        })
        .filter(|&pid| !pipe_inodes(pid).is_disjoint(&herd_pipes))
        .collect();
    assert_eq!(guards.len(), 1, "{guards:?}");
    guards[0]
}

/// Hostile: the guard still lists a worker's process group when that group has ended and its
/// id has gone to a stranger (here: the guard is stopped while herd is SIGKILLed and its worker
/// dies; a new session leader is then steered to the worker's pid through ns_last_pid). When
/// the guard runs again, the stranger survives: the guard kills only processes in herd's
/// session, never a group by its id.
#[test]
#[ignore = "needs root"]
fn the_guard_never_kills_a_group_whose_id_was_reused() {
    need_root();
    let fx = Fixture::new();
    let herd = fx.spawn_herd(&["run", "--log-format", "json", "-w", "1", "--", chaos()]);
    herd.wait_log("the worker ready", RUN_TIMEOUT, |l| {
        l.iter().any(|x| x["message"] == "worker ready")
    });
    let worker = herd.live_worker_pids()[0];
    let guard = guard_of(herd.pid());
    signal(guard, Signal::SIGSTOP);
    signal(herd.pid(), Signal::SIGKILL);
    let mut herd = herd;
    let _ = herd.child.wait();
    wait_for("the worker to be gone", RUN_TIMEOUT, || {
        !Path::new(&format!("/proc/{worker}")).exists()
    });
    // A stranger in a session of its own, with the worker's pid as its group id.
    let mut stranger = None;
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (worker - 1).to_string()).unwrap();
        let mut child = std::process::Command::new("setsid")
            .args(["sleep", "600"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if child.id() == worker {
            stranger = Some(child);
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut stranger = stranger.expect("could not give a new process the worker's pid");
    wait_for("the stranger to lead its own session", RUN_TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| s.contains("(sleep)"))
    });
    signal(guard, Signal::SIGCONT);
    wait_for("the guard to finish", RUN_TIMEOUT, || {
        std::fs::read_to_string(format!("/proc/{guard}/comm"))
            .map_or(true, |c| c.trim_end() != "herd-guard")
    });
    let alive = stranger.try_wait().unwrap().is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(alive, "the guard killed a stranger's process group");
}

/// herd's session is 0 when it descends from an init that never called `setsid` (CI's machine
/// runs its tests so) or from a session leader outside its pid namespace. The guard took 0 for
/// "no session" and killed nothing there. The killed-herd test, run again in a new pid
/// namespace, where `getsid` says 0.
#[test]
#[ignore = "needs root"]
fn a_killed_herd_in_session_zero_leaves_nothing_behind() {
    need_root();
    let me = std::env::current_exe().unwrap();
    let script = r#"set -e
test "$(cut -d' ' -f6 /proc/self/stat)" = 0 || { echo "session is not 0"; exit 9; }
exec "$0" --exact hardening::a_killed_herd_leaves_no_process_or_socket_behind"#;
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", script])
        .arg(&me)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
}
