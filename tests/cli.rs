//! The command line and the documents agree with the code: help texts state the limits the
//! code applies, every argument is described, the generated reference is current, and the
//! documents link nothing outside the repository.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use herd_supervisor::policy::AUTO_WINDOW_MAX;
use herd_supervisor::PoolConfig;

use crate::util::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `herd <args>`, expected to succeed; its stdout.
fn stdout_of(fx: &Fixture, args: &[&str]) -> String {
    String::from_utf8(output_ok(&mut fx.herd(args)).stdout).unwrap()
}

/// `herd <args>`, expected to be refused as a usage error; its stderr.
fn usage_error(fx: &Fixture, args: &[&str]) -> String {
    let out = fx.herd(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "herd {args:?}: want a usage error\nstderr:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "herd {args:?} printed to stdout");
    stderr
}

/// The bounds of the default queue, from the code that computes it.
fn queue_bounds() -> (usize, usize) {
    let mut smallest = PoolConfig::new(["w"]);
    smallest.workers = 1;
    smallest.window = 1;
    let mut largest = PoolConfig::new(["w"]);
    largest.workers = 4096;
    largest.window = 0;
    (smallest.effective_queue(), largest.effective_queue())
}

#[test]
fn worker_command_without_separator_gets_a_tip() {
    let fx = Fixture::new();
    let chaos = chaos();
    let cases: [(&[&str], String); 3] = [
        (&["run", chaos], format!("herd run [OPTIONS] -- {chaos}")),
        (
            &["run", "-w", "2", chaos, "--timeout", "1s"],
            format!("herd run [OPTIONS] -- {chaos}"),
        ),
        (
            &["serve", "--control", "h.sock", chaos],
            format!("herd serve [OPTIONS] --control <PATH> -- {chaos}"),
        ),
    ];
    for (args, want) in cases {
        let stderr = usage_error(&fx, args);
        let tip = format!("tip: the worker command goes after `--`: {want}");
        assert!(
            stderr.contains(&tip),
            "herd {args:?}: want {tip:?}\nstderr:\n{stderr}"
        );
        assert!(stderr.contains("unexpected argument"), "{stderr}");
    }
    // Nothing was started: no runtime directory, no control socket.
    assert!(fx.leftover_runtime_dirs().is_empty());
    assert!(!fx.path("h.sock").exists());

    // Only where a worker command belongs, and not for a mistyped option.
    for args in [
        &["status", "--control", "h.sock", "extra"][..],
        &["run", "--frobnicate", "--", chaos][..],
    ] {
        let stderr = usage_error(&fx, args);
        assert!(
            !stderr.contains("worker command goes after"),
            "herd {args:?}: no worker-command tip wanted\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn help_states_the_limits_the_code_applies() {
    let fx = Fixture::new();
    let (qmin, qmax) = queue_bounds();
    for sub in ["run", "serve"] {
        let help = stdout_of(&fx, &[sub, "--help"]);
        let window = format!("automatic, 2 to {AUTO_WINDOW_MAX}");
        assert!(
            help.contains(&window),
            "{sub} --help: want {window:?}\n{help}"
        );
        let queue = format!("within {qmin} to {qmax}");
        assert!(
            help.contains(&queue),
            "{sub} --help: want {queue:?}\n{help}"
        );
    }
    // The guide's page on `herd run` says the same.
    let guide = read("docs/RUN.md");
    for want in [
        format!("2 to {AUTO_WINDOW_MAX} tasks per worker"),
        format!("{qmin} to {qmax}"),
    ] {
        assert!(guide.contains(&want), "docs/RUN.md: want {want:?}");
    }
    // `ctl scale` takes what `-w` takes.
    let stderr = usage_error(&fx, &["ctl", "--control", "h.sock", "scale", "0"]);
    assert!(stderr.contains("1..=4096"), "{stderr}");
}

/// Entries of a short (`-h`) help screen that have no description.
fn undescribed(help: &str) -> Vec<String> {
    help.lines()
        .filter(|l| {
            let t = l.trim_start();
            l.starts_with("  ") && (t.starts_with('-') || t.starts_with('<'))
        })
        .filter(|l| {
            let t = l.trim();
            // "<spec>  <description>": the spec has no double space in it.
            t.split_once("  ").is_none_or(|(_, d)| d.trim().is_empty())
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_argument_is_described() {
    let fx = Fixture::new();
    let screens: [&[&str]; 9] = [
        &["-h"],
        &["run", "-h"],
        &["serve", "-h"],
        &["submit", "-h"],
        &["status", "-h"],
        &["ctl", "-h"],
        &["ctl", "scale", "-h"],
        &["ctl", "reload", "-h"],
        &["ctl", "stop", "-h"],
    ];
    for args in screens {
        let help = stdout_of(&fx, args);
        let bare = undescribed(&help);
        assert!(
            bare.is_empty(),
            "herd {args:?}: no description for {bare:?}\n{help}"
        );
    }
    // The check itself: an entry without a description is caught.
    assert_eq!(undescribed("Options:\n      --fast  \n").len(), 1);
}

/// A help screen's headings (`Options`, `Pool`…), each with the long names (or `<VALUE>`
/// names) of the entries under it.
type Sections = Vec<(String, Vec<String>)>;

/// The sections of a short (`-h`) help screen.
fn help_sections(help: &str) -> Sections {
    let mut sections: Sections = Vec::new();
    for line in help.lines() {
        if let Some(heading) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            sections.push((heading.to_string(), Vec::new()));
            continue;
        }
        let t = line.trim_start();
        if !line.starts_with("  ") || !(t.starts_with('-') || t.starts_with('<')) {
            continue;
        }
        let Some((_, entries)) = sections.last_mut() else {
            continue;
        };
        let spec = t.split_whitespace().next().unwrap().trim_end_matches(',');
        let name = match spec.strip_prefix('-').filter(|s| !s.starts_with('-')) {
            // `-w, --workers <N>`: the long name.
            Some(_) => t.split_whitespace().nth(1).unwrap_or(spec),
            None => spec,
        };
        entries.push(
            name.trim_start_matches('-')
                .trim_end_matches("...")
                .to_string(),
        );
    }
    sections
}

/// The heading `option` is listed under on a help screen.
fn heading_of<'a>(sections: &'a Sections, option: &str) -> Option<&'a str> {
    sections
        .iter()
        .find(|(_, entries)| entries.iter().any(|e| e == option))
        .map(|(heading, _)| heading.as_str())
}

#[test]
fn help_groups_the_options_by_topic() {
    let fx = Fixture::new();
    let screens: Vec<(&str, Sections)> = ["run", "serve", "submit", "status", "ctl"]
        .into_iter()
        .map(|sub| (sub, help_sections(&stdout_of(&fx, &[sub, "-h"]))))
        .collect();
    let serve = &screens[1].1;
    let want: &[(&str, &[&str])] = &[
        (
            "Pool",
            &[
                "workers", "timeout", "retries", "window", "queue", "max-rss", "grace",
            ],
        ),
        ("Workers", &["user", "group", "env", "clear-env", "nice"]),
        (
            "Worker limits",
            &["limit-as", "limit-nofile", "limit-core", "limit-cpu"],
        ),
        ("Metrics & dashboard", &["metrics", "metrics-public"]),
        ("Logging", &["log-format", "log-file", "verbose", "quiet"]),
        ("Arguments", &["<WORKER_CMD>"]),
    ];
    for (heading, options) in want {
        for opt in *options {
            assert_eq!(
                heading_of(serve, opt),
                Some(*heading),
                "herd serve -h: --{opt} belongs under {heading:?}\n{serve:#?}"
            );
        }
    }
    for (sub, sections) in &screens {
        for (heading, entries) in sections {
            // The NATS heading holds the NATS options and nothing else.
            let nats = heading.starts_with("NATS");
            for e in entries {
                assert_eq!(
                    e.starts_with("nats"),
                    nats,
                    "herd {sub} -h: {e} is under {heading:?}"
                );
            }
        }
        // Every screen has the log options together, under their own heading.
        for opt in ["log-format", "log-file", "verbose", "quiet"] {
            assert_eq!(
                heading_of(sections, opt),
                Some("Logging"),
                "herd {sub} -h: --{opt}\n{sections:#?}"
            );
        }
        // What `run` and `serve` share sits under the same heading in both.
        if *sub == "run" {
            for (heading, entries) in sections {
                for e in entries.iter().filter(|e| heading_of(serve, e).is_some()) {
                    assert_eq!(
                        heading_of(serve, e),
                        Some(heading.as_str()),
                        "--{e}: run and serve put it under different headings"
                    );
                }
            }
        }
    }
    // The parser itself.
    let parsed = help_sections("Options:\n  -w, --workers <N>  x\n\nPool:\n      --grace <D>  y\n");
    assert_eq!(heading_of(&parsed, "workers"), Some("Options"));
    assert_eq!(heading_of(&parsed, "grace"), Some("Pool"));
}

/// Long options (`--name`) mentioned in `text`, in order of appearance, without repeats.
fn long_options(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        rest = &rest[at + 2..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if name.len() > 1 && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// docs/CLI.md and docs/man/*.1 are what `herd generate-docs` writes from the clap definitions
/// now: a changed option fails here until they are regenerated (`HERD_REGEN=1` does that).
#[test]
fn generated_reference_is_current() {
    let fx = Fixture::new();
    let fresh = fx.path("docs");
    output_ok(&mut fx.herd(&["generate-docs", fresh.to_str().unwrap()]));
    let files = |dir: &Path| -> std::collections::BTreeSet<PathBuf> {
        let mut set: std::collections::BTreeSet<PathBuf> = std::fs::read_dir(dir.join("man"))
            .unwrap()
            .map(|e| Path::new("man").join(e.unwrap().file_name()))
            .collect();
        set.insert("CLI.md".into());
        set
    };
    let committed = repo().join("docs");
    if std::env::var_os("HERD_REGEN").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(committed.join("man"));
        std::fs::create_dir_all(committed.join("man")).unwrap();
        for f in files(&fresh) {
            std::fs::copy(fresh.join(&f), committed.join(&f)).unwrap();
        }
        return;
    }
    let regen = "regenerate with HERD_REGEN=1 cargo test --test tests -- cli::generated_reference_is_current";
    assert_eq!(
        files(&committed),
        files(&fresh),
        "docs/man is stale: {regen}"
    );
    for f in files(&fresh) {
        let want = std::fs::read_to_string(fresh.join(&f)).unwrap();
        let have = std::fs::read_to_string(committed.join(&f)).unwrap();
        assert!(want == have, "docs/{} is stale: {regen}", f.display());
    }
    // Every option of `run` and `serve` is in the reference.
    let reference = read("docs/CLI.md");
    for sub in ["run", "serve"] {
        for opt in long_options(&stdout_of(&fx, &[sub, "-h"])) {
            if opt == "help" || opt == "version" {
                continue;
            }
            assert!(
                reference.contains(&format!("`--{opt}")),
                "docs/CLI.md lacks `herd {sub} --{opt}`"
            );
        }
    }
}

/// `herd completions SHELL` prints a script that completes herd's subcommands and options.
#[test]
fn completions_for_each_shell() {
    let fx = Fixture::new();
    for (shell, marker) in [
        ("bash", "complete -F _herd"),
        ("zsh", "#compdef herd"),
        ("fish", "complete -c herd"),
    ] {
        let script = stdout_of(&fx, &["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["serve", "max-rss", "line-priority", "scale"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let syntax = std::process::Command::new("bash")
        .args(["-n", "-c", &stdout_of(&fx, &["completions", "bash"])])
        .status()
        .unwrap();
    assert!(
        syntax.success(),
        "the bash completion script does not parse"
    );
    usage_error(&fx, &["completions", "tcsh"]);
}

/// Relative link targets of the Markdown file at `rel`, resolved.
fn local_links(rel: &str) -> Vec<(String, PathBuf)> {
    let text = read(rel);
    let base = repo().join(rel).parent().unwrap().to_path_buf();
    let mut links = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = &rest[..end];
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let path = match target.split('#').next().unwrap() {
            "" => repo().join(rel),
            path => base.join(path),
        };
        links.push((target.to_string(), path));
    }
    links
}

/// Every relative link of the README and of the pages in docs/ (and the other READMEs) leads to
/// a file of the repository, and to a heading of it where it names one.
#[test]
fn documents_link_only_into_the_repository() {
    let root = repo().canonicalize().unwrap();
    let mut checked = 0;
    let mut docs = vec!["README.md".to_string()];
    docs.extend(markdown_in("docs"));
    docs.extend(markdown_in("examples/seed"));
    docs.extend(markdown_in("sdk/python"));
    assert!(docs.len() > 10, "{docs:?}");
    for doc in &docs {
        for (target, path) in local_links(doc) {
            let found = path
                .canonicalize()
                .unwrap_or_else(|e| panic!("{doc}: link {target:?} is dead: {e}"));
            assert!(
                found.starts_with(&root),
                "{doc}: link {target:?} leads out of the repository"
            );
            if let Some((_, anchor)) = target.split_once('#') {
                if found.extension().is_some_and(|e| e == "md") {
                    let text = std::fs::read_to_string(&found).unwrap();
                    assert!(
                        heading_anchors(&text).iter().any(|a| a == anchor),
                        "{doc}: link {target:?}: no such heading"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "the README links into docs/");
    // The README is a front door; the manual is in docs/.
    let lines = read("README.md").lines().count();
    assert!(lines < 250, "README.md has {lines} lines");
    let guide = read("docs/GUIDE.md");
    for page in markdown_in("docs") {
        let name = page.trim_start_matches("docs/");
        assert!(
            name == "GUIDE.md" || guide.contains(&format!("]({name}")),
            "docs/GUIDE.md does not list {page}"
        );
    }
}

/// The anchors GitHub gives the headings of a Markdown text (outside code blocks).
fn heading_anchors(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut anchors = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        if in_code {
            continue;
        }
        let heading = heading.trim_start_matches('#');
        let Some(heading) = heading.strip_prefix(' ') else {
            continue;
        };
        anchors.push(
            heading
                .trim()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .flat_map(char::to_lowercase)
                .collect(),
        );
    }
    anchors
}

/// The Markdown files directly in the repository's directory `rel`, sorted.
fn markdown_in(rel: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(repo().join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("{rel}/{n}"))
        .collect();
    found.sort();
    found
}

#[test]
fn architecture_lists_every_chaos_op() {
    let out = output_ok(assert_cmd::Command::new(chaos()).arg("--help"));
    let help = String::from_utf8(out.stdout).unwrap();
    let doc = read("docs/ARCHITECTURE.md");
    let ops: Vec<&str> = help
        .split("{\"op\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(ops.len() >= 15, "herd-chaos --help lists its ops: {help}");
    for op in ops {
        let key = format!("{{\"op\":\"{op}\"");
        assert!(
            doc.contains(&key),
            "docs/ARCHITECTURE.md does not describe the herd-chaos op {op}"
        );
    }
}
