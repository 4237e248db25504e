//! A new user on a fresh machine: the commands of the README and of the user guide in docs/ run
//! as written, in order, in a checkout (every shell block, unless it is marked
//! `<!-- readme-test: skip: REASON -->`), the files they leave are ignored by git,
//! `scripts/demo.sh` reads well, and `scripts/test.sh` sets up what the tests need or stops at
//! once naming it.
//!
//! The checkout is a temp dir with the repository's entries linked in and `target/release`
//! pointing at this test build's binaries; `cargo` on `PATH` is a stand-in: `cargo build` of the
//! binaries finds them built, `cargo install --path .` links them into a `bin` directory on
//! `PATH` (as rustup's `~/.cargo/bin` is), examples are built and run by the real cargo in
//! the debug profile (a release build is far too slow for a test), and maturin (run by
//! `pip install ./sdk/python`) gets herd._native built for real in the debug profile and this
//! build's binaries in the wheel's scripts.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::util::*;

/// Per block: the slowest ones build an example (on a cold target) or make a Python venv.
const BLOCK_LIMIT: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// This test build's `target/debug`, where `herd` is.
fn debug_dir() -> &'static Path {
    Path::new(herd_bin()).parent().unwrap()
}

fn real_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A shell block of a Markdown file, in the user's order.
#[derive(Debug)]
struct Block {
    file: &'static str,
    line: usize,
    kind: BlockKind,
}

#[derive(Debug)]
enum BlockKind {
    /// ```sh: every line is typed.
    Sh(String),
    /// ```console: `$ ` lines (and their `\` continuations) are typed; the rest is output.
    Console { script: String, output: Vec<String> },
    /// A ```python block whose first line is `# NAME.py`: a file the reader saves.
    File { name: String, text: String },
    /// Marked `<!-- readme-test: skip: REASON -->` on the line before.
    Skipped(String),
}

const SKIP_MARK: &str = "<!-- readme-test: skip:";

fn blocks(file: &'static str) -> Vec<Block> {
    let text = fs::read_to_string(repo().join(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].trim_start().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let indent = lines[i].len() - lines[i].trim_start().len();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && lines[i].trim_start() != "```" {
            body.push(lines[i].get(indent..).unwrap_or("").to_string());
            i += 1;
        }
        i += 1;
        let skip = start
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix(SKIP_MARK))
            .map(|r| r.trim_end_matches("-->").trim().to_string());
        let kind = match (lang.trim(), skip) {
            ("sh" | "console", Some(reason)) => {
                assert!(!reason.is_empty(), "{file}:{}: a skip says why", start + 1);
                BlockKind::Skipped(reason)
            }
            ("sh", None) => BlockKind::Sh(body.join("\n")),
            ("console", None) => {
                let (mut script, mut output) = (Vec::new(), Vec::new());
                let mut continued = false;
                for l in body {
                    if let Some(cmd) = l.strip_prefix("$ ") {
                        continued = cmd.ends_with('\\');
                        script.push(cmd.to_string());
                    } else if continued {
                        continued = l.ends_with('\\');
                        script.push(l);
                    } else {
                        output.push(l);
                    }
                }
                BlockKind::Console {
                    script: script.join("\n"),
                    output,
                }
            }
            ("python", _) => match body.first().and_then(|l| l.strip_prefix("# ")) {
                Some(name) if name.ends_with(".py") && !name.contains(' ') => BlockKind::File {
                    name: name.to_string(),
                    text: body[1..].join("\n") + "\n",
                },
                _ => continue,
            },
            _ => continue,
        };
        out.push(Block {
            file,
            line: start + 1,
            kind,
        });
    }
    out
}

/// A checkout for the README's commands: see the module comment.
struct Checkout {
    dir: tempfile::TempDir,
}

impl Checkout {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herd-fresh-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        for entry in fs::read_dir(repo()).unwrap() {
            let name = entry.unwrap().file_name();
            match name.to_str() {
                Some("target" | ".git" | "sdk") => {}
                _ => symlink(repo().join(&name), root.join(&name)).unwrap(),
            }
        }
        // A copy: pip builds the SDK in its tree.
        copy_tree(&repo().join("sdk"), &root.join("sdk"));
        fs::create_dir_all(root.join("target")).unwrap();
        symlink(debug_dir(), root.join("target/release")).unwrap();
        for d in [".bin", ".run"] {
            fs::create_dir(root.join(d)).unwrap();
        }
        let stub = format!(
            r#"#!/usr/bin/env bash
# cargo for tests/fresh.rs. This test build's binaries stand in for herd's release build:
# building them again would replace them (with other features: no dev-dependencies) while other
# tests run them. Examples are built, in the debug profile.
set -euo pipefail
real={cargo:?}; manifest={manifest:?}; bin={bin:?}; debug={debug:?}; root={root:?}
native={native:?}
args=(); skip=
for a in "$@"; do
    if [ -n "$skip" ]; then skip=; continue; fi
    case $a in
        --release|-r|--bins|--features=*|--profile=*) ;;
        --bin|--features|-F|--profile) skip=1 ;;
        *) args+=("$a") ;;
    esac
done
case ${{args[0]:-}} in
    build) case " ${{args[*]}} " in
        *" --example "*) exec "$real" build --manifest-path "$manifest" "${{args[@]:1}}" ;;
        *) exit 0 ;;
    esac ;;
    run) exec "$real" run --manifest-path "$manifest" "${{args[@]:1}}" ;;
    install) for b in herd herd-chaos herd-stdio; do ln -sf "$debug/$b" "$bin/$b"; done ;;
    # `pip install ./sdk/python` runs maturin, which reads the metadata (in the checkout's
    # target dir: cargo would resolve the linked manifest to the repository's), then builds
    # herd._native (crates/python) with `cargo rustc --lib ... --features wheel`: built here for
    # real, in the debug profile, into a target dir of its own kept between runs, without the
    # `wheel` feature; this test build's binaries go where its build script would put them.
    --version|-V|tree) exec "$real" "$@" ;;
    metadata) CARGO_TARGET_DIR="$root/target" exec "$real" "$@" ;;
    rustc)
        scripts="$root/sdk/python/wheel-data/scripts"
        mkdir -p "$scripts"
        for b in herd herd-chaos herd-stdio; do cp "$debug/$b" "$scripts/$b"; done
        exec "$real" rustc --target-dir "$native" "${{args[@]:1}}" ;;
    *) echo "the cargo stand-in of tests/fresh.rs does not do: cargo $*" >&2; exit 2 ;;
esac
"#,
            cargo = real_cargo(),
            manifest = repo().join("Cargo.toml"),
            bin = root.join(".bin"),
            debug = debug_dir(),
            root = root,
            native = debug_dir().parent().unwrap().join("fresh-native"),
        );
        let cargo = root.join(".bin/cargo");
        fs::write(&cargo, stub).unwrap();
        fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The user's PATH with the stand-in bin directory first, less any directory that already
    /// has a `herd` (an earlier install would hide a missing install step).
    fn path_env(&self) -> std::ffi::OsString {
        let user = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(self.root().join(".bin"))
            .chain(std::env::split_paths(&user).filter(|d| !d.join("herd").exists()));
        std::env::join_paths(dirs).unwrap()
    }

    /// Runs `script` with bash in the checkout, in a process group of its own: its status, its
    /// stdout, its stderr. Fails if it outlives `BLOCK_LIMIT` or leaves a process running.
    fn run(&self, what: &str, script: &str, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
        let out_path = self.root().join(".run/stdout");
        let err_path = self.root().join(".run/stderr");
        // Files, not pipes: a background process a block starts would hold a pipe open.
        let mut cmd = Command::new("bash");
        // What cargo sets for this test process is not in a user's shell; build scripts that
        // watch it (ring's CARGO_MANIFEST_DIR) would make every cargo command rebuild them.
        remove_cargo_test_env(&mut cmd);
        cmd.env_remove("CARGO").env_remove("CARGO_TARGET_TMPDIR");
        let mut child = cmd
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(self.root())
            .env("PATH", self.path_env())
            .env("XDG_RUNTIME_DIR", self.root().join(".run"))
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + BLOCK_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let left_running = killpg(group, None).is_ok();
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
        let stdout = fs::read_to_string(&out_path).unwrap();
        let stderr = fs::read_to_string(&err_path).unwrap();
        let Some(status) = status else {
            panic!(
                "{what}: still running after {BLOCK_LIMIT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        };
        assert!(
            !left_running,
            "{what}: left processes running\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        (status, stdout, stderr)
    }

    /// Every path under the checkout, not following its links into the repository.
    fn paths(&self) -> BTreeSet<PathBuf> {
        fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                out.insert(p.strip_prefix(root).unwrap().to_path_buf());
                if e.file_type().unwrap().is_dir() {
                    walk(&p, root, out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(self.root(), self.root(), &mut out);
        out
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if matches!(name.to_str(), Some("build" | "__pycache__")) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// Each record of `want` (a block's example output) is in `got`: same `seq`, `ok`, `output`,
/// `chunk` and `attempt` (pids, timings and workers vary from run to run).
fn assert_records_match(what: &str, want: &[String], got: &str) {
    let got: Vec<Value> = got
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for line in want {
        let Ok(want @ Value::Object(_)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let same = |g: &Value| {
            ["seq", "ok", "output", "chunk", "attempt"]
                .iter()
                .all(|k| want.get(k) == g.get(k))
        };
        assert!(
            got.iter().any(same),
            "{what}: the README shows {line}; the command wrote none like it:\n{got:#?}"
        );
    }
}

/// The pages of the user guide, in the order a reader meets them: their commands run after the
/// README's (they use its install, venv and files), before the seed example's.
const GUIDE_PAGES: [&str; 16] = [
    "docs/PYTHON.md",
    "docs/STREAMING.md",
    "docs/WORKERS.md",
    "docs/RUN.md",
    "docs/RESUME.md",
    "docs/DAEMON.md",
    "docs/PRIORITIES.md",
    "docs/KEYS.md",
    "docs/BATCHES.md",
    "docs/DASHBOARD.md",
    "docs/JETSTREAM.md",
    "docs/REDIS.md",
    "docs/RECORDS.md",
    "docs/PRIVILEGES.md",
    "docs/AUTOSCALING.md",
    "docs/PERFORMANCE.md",
];

/// Every page of docs/ with a shell block is one whose blocks run: a command moved to a new page
/// cannot go untested.
#[test]
fn every_doc_page_with_commands_is_run() {
    for e in fs::read_dir(repo().join("docs")).unwrap() {
        let name = format!("docs/{}", e.unwrap().file_name().to_str().unwrap());
        if !name.ends_with(".md") || GUIDE_PAGES.contains(&name.as_str()) {
            continue;
        }
        let text = fs::read_to_string(repo().join(&name)).unwrap();
        assert!(
            !text
                .lines()
                .any(|l| matches!(l.trim_start(), "```sh" | "```console")),
            "{name} has shell blocks: add it to GUIDE_PAGES"
        );
    }
}

/// The README's shell blocks, then the user guide's, then the seed example's (which uses the
/// README's venv and install), run as written in one checkout; then every file they made is
/// ignored by git.
#[test]
fn readme_shell_blocks_run_as_written() {
    let co = Checkout::new();
    let before = co.paths();
    let all: Vec<Block> = std::iter::once("README.md")
        .chain(GUIDE_PAGES)
        .chain(["examples/seed/README.md"])
        .flat_map(blocks)
        .collect();
    let nats_server = ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join("nats-server"))
        .find(|p| p.is_file());
    let nats_dir = nats_server
        .as_ref()
        .map(|p| p.parent().unwrap().to_str().unwrap().to_string())
        .expect("nats-server not found: the README runs one (apt-get install nats-server)");
    let mut ran = 0;
    for b in &all {
        let what = format!("{}:{}", b.file, b.line);
        let (script, output) = match &b.kind {
            BlockKind::Skipped(reason) => {
                eprintln!("{what}: skipped: {reason}");
                continue;
            }
            BlockKind::File { name, text } => {
                fs::write(co.root().join(name), text).unwrap();
                continue;
            }
            BlockKind::Sh(script) => (script, &[][..]),
            BlockKind::Console { script, output } => (script, &output[..]),
        };
        // Debian puts nats-server in /usr/sbin, which a user's PATH may leave out.
        let script = format!("PATH=$PATH:{nats_dir}\n{script}");
        let started = Instant::now();
        let (status, stdout, stderr) = co.run(&what, &script, &[]);
        eprintln!("{what}: {:.1?}", started.elapsed());
        assert!(
            status.success(),
            "{what}: {status}\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert_records_match(&what, output, &stdout);
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} blocks ran");

    // What the commands left in the checkout, each new path once (not what is inside a new dir).
    let after = co.paths();
    let new: Vec<&PathBuf> = after
        .difference(&before)
        .filter(|p| {
            !p.ancestors()
                .skip(1)
                .any(|a| after.contains(a) && !before.contains(a))
        })
        .filter(|p| !p.starts_with(".run") && !p.starts_with(".bin") && !p.ends_with("enrich.py"))
        .collect();
    assert!(new.iter().any(|p| p.ends_with(".venv")), "{new:?}");
    for p in new {
        let mut name = p.to_str().unwrap().to_string();
        if co.root().join(p).is_dir() {
            name.push('/');
        }
        let ignored = Command::new("git")
            .args(["check-ignore", "-q", "--no-index", &name])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(
            ignored.success(),
            "the README's commands leave {name}, which git does not ignore"
        );
    }
}

/// `scripts/demo.sh` shows the build, keeps herd's log (the injected crashes and panics) out of
/// its output, and ends with a summary of every event's fate.
#[test]
fn demo_summarizes_and_keeps_worker_noise_out() {
    let co = Checkout::new();
    let (status, stdout, stderr) = co.run(
        "scripts/demo.sh",
        "scripts/demo.sh",
        &[("N", "2000"), ("WORKERS", "2")],
    );
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let all = format!("{stdout}{stderr}");
    for noise in [
        "panicked at",
        "INFO",
        "WARN",
        "stack backtrace",
        "stream=\"stderr\"",
    ] {
        assert!(!all.contains(noise), "the demo prints {noise:?}:\n{all}");
    }
    assert!(stdout.contains("==> building"), "{stdout}");
    assert!(
        stdout.contains("Every event got exactly one record (2000 records for 2000 events"),
        "{stdout}"
    );
    for line in ["ok ", "failed ", "crashed "] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(line)),
            "{line}: {stdout}"
        );
    }
    assert!(stdout.contains("injected on purpose"), "{stdout}");
    // The log it points to has what it kept out.
    let log = fs::read_to_string(co.root().join("target/demo/herd.log")).unwrap();
    assert!(log.contains("panic"), "{log}");
    // Under /target: git ignores it.
    let records = fs::read_to_string(co.root().join("target/demo/records.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 2000);
}

/// A directory of links to the named programs, for a PATH that has nothing else.
fn bin_with(dir: &Path, tools: &[&str]) {
    fs::create_dir_all(dir).unwrap();
    for t in tools {
        let target = if *t == "cargo" {
            real_cargo()
        } else {
            let found = ["/usr/bin", "/bin", "/usr/sbin"]
                .iter()
                .map(|d| Path::new(d).join(t))
                .find(|p| p.is_file());
            found.unwrap().to_str().unwrap().to_string()
        };
        symlink(target, dir.join(t)).unwrap();
    }
}

/// `scripts/test.sh` copied into a temp dir of its own, run with PATH=`bin` only.
fn test_sh(dir: &Path, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    fs::create_dir_all(dir.join("scripts")).unwrap();
    fs::copy(repo().join("scripts/test.sh"), dir.join("scripts/test.sh")).unwrap();
    let out = Command::new(dir.join("bin/bash"))
        .arg(dir.join("scripts/test.sh"))
        .env_clear()
        .env("PATH", dir.join("bin"))
        .env("HOME", dir)
        .env("NATS_SERVER", dir.join("no-nats-server"))
        .env("REDIS_SERVER", dir.join("no-redis-server"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let s = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status, s(out.stdout), s(out.stderr))
}

const BASE_TOOLS: &[&str] = &["bash", "dirname", "id", "rm", "cargo"];

/// Without apt-get (or as a user), test.sh stops before building anything and names every
/// package the tests would fail without.
#[test]
fn test_sh_stops_at_once_naming_the_missing_packages() {
    let fx = Fixture::new();
    bin_with(&fx.path("bin"), BASE_TOOLS);
    let (status, stdout, stderr) = test_sh(fx.dir.path(), &[]);
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for pkg in [
        "nats-server",
        "redis-server",
        "mosquitto-clients",
        "chromium",
        "python3",
        "python3-venv",
    ] {
        assert!(
            stderr.contains(&format!(" {pkg}")),
            "{pkg} not named\nstderr:\n{stderr}"
        );
    }
    assert!(!stdout.contains("==> cargo"), "it went on: {stdout}");
}

/// As root with apt-get, test.sh installs what is missing, then goes on.
#[test]
fn test_sh_installs_the_missing_packages_as_root_with_apt_get() {
    let fx = Fixture::new();
    let bin = fx.path("bin");
    bin_with(
        &bin,
        &["bash", "dirname", "rm", "python3", "touch", "chmod"],
    );
    // Stand-ins: root, an apt-get that "installs" a package by making its programs, and a cargo
    // that stops the script once it gets past the packages.
    let scripts = [
        ("id", "echo 0".to_string()),
        (
            "apt-get",
            format!(
                r#"echo "apt-get $*" >> {log:?}
[ "$1" = install ] || exit 0
for p in "$@"; do case $p in
    nats-server) touch {bin:?}/nats-server; chmod +x {bin:?}/nats-server ;;
    redis-server) touch {bin:?}/redis-server; chmod +x {bin:?}/redis-server ;;
    mosquitto-clients) for t in mosquitto_pub mosquitto_sub; do touch {bin:?}/$t; chmod +x {bin:?}/$t; done ;;
    chromium) touch {bin:?}/chromium; chmod +x {bin:?}/chromium ;;
esac; done"#,
                log = fx.path("apt.log"),
                bin = bin,
            ),
        ),
        ("cargo", "exit 3".to_string()),
    ];
    for (name, body) in scripts {
        let p = bin.join(name);
        fs::write(&p, format!("#!{}/bash\n{body}\n", bin.display())).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let nats = bin.join("nats-server");
    let redis = bin.join("redis-server");
    let (status, stdout, stderr) = test_sh(
        fx.dir.path(),
        &[
            ("NATS_SERVER", nats.to_str().unwrap()),
            ("REDIS_SERVER", redis.to_str().unwrap()),
        ],
    );
    let apt = fs::read_to_string(fx.path("apt.log")).unwrap_or_default();
    assert!(
        apt.starts_with("apt-get update"),
        "{apt}\nstderr:\n{stderr}"
    );
    assert!(
        apt.contains("install -y -qq nats-server redis-server mosquitto-clients chromium\n"),
        "{apt}\nstderr:\n{stderr}"
    );
    // Past the packages: on to the toolchain's components.
    assert!(
        stdout.contains("==> installing rustfmt"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!status.success());
}
