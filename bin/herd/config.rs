//! `--config FILE`: a TOML file whose keys are the long options of `herd serve` / `herd run`
//! (`retries = 3`, `retry-backoff = "200ms"`, `env = ["A=1"]`) plus `command`, the worker
//! command line as an array. The clap definitions are the only list of keys: the file becomes
//! options that clap parses as if typed, placed before the ones on the command line, and an
//! option given on the command line (or in its environment variable) wins over its key.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The positional worker command's id and key.
const COMMAND: &str = "command";
/// The subcommands that take `--config`.
const CONFIGURED: &[&str] = &["serve", "run"];
/// The id of `--config` itself (not a key).
const CONFIG: &str = "config";
/// `herd serve --die-with-parent PID` names the process that started this herd: not a setting
/// a file can hold.
const DIE_WITH_PARENT: &str = "die_with_parent";

/// The arguments that are not settings: never keys of the file, nor in `herd check`.
fn command_line_only(id: &str) -> bool {
    matches!(id, CONFIG | DIE_WITH_PARENT | "help" | "version")
}

/// The keys a HUP applies to the running daemon (in place, or by a rolling restart of the
/// workers); a change to any other key needs a restart.
pub const LIVE_KEYS: &[&str] = &[
    "workers",
    "window",
    "timeout",
    "retries",
    "retry-backoff",
    "rate",
    "max-tasks",
    "max-rss",
    "grace",
    "exit-timeout",
    "start-timeout",
    "limit-as",
    "limit-nofile",
    "limit-core",
    "limit-cpu",
    "nice",
    "env",
    "clear-env",
    COMMAND,
];

/// One key of the file, as options.
#[derive(Debug)]
struct Entry {
    key: String,
    line: usize,
    /// The arg's id.
    id: String,
    args: Vec<OsString>,
}

/// A command line with its configuration file folded in.
#[derive(Debug)]
pub struct Expanded {
    pub argv: Vec<OsString>,
    /// The file, with where each of its keys is (none without `--config`).
    file: Option<(PathBuf, Vec<Entry>)>,
}

impl Expanded {
    /// Whether a `--config` file was read.
    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// `FILE:LINE` of the key for arg `id`, if the file set it (and the command line did not).
    fn line_of(&self, id: &str) -> Option<String> {
        let (path, entries) = self.file.as_ref()?;
        let e = entries.iter().find(|e| e.id == id && !e.args.is_empty())?;
        Some(format!("{}:{}", path.display(), e.line))
    }

    /// `FILE:LINE: key `KEY``, for an error about the key for arg `id`.
    fn origin(&self, id: &str) -> Option<String> {
        let (_, entries) = self.file.as_ref()?;
        let e = entries.iter().find(|e| e.id == id)?;
        Some(format!("{}: key `{}`", self.line_of(id)?, e.key))
    }

    /// Parses the expanded command line; an error about a value from the file names its key
    /// and line.
    pub fn parse(&self, cmd: Command) -> Result<ArgMatches, clap::Error> {
        cmd.try_get_matches_from(&self.argv)
    }

    /// Says which key of the file a clap error is about, if it is about one.
    pub fn explain(&self, err: &clap::Error) -> Option<String> {
        use clap::error::{ContextKind, ContextValue};
        let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
            return None;
        };
        // `--retries <N>`, `--ordered`, `<WORKER_CMD>...`
        let name = arg.split([' ', '=']).next()?.trim_start_matches('-');
        let id = if name.starts_with('<') { COMMAND } else { name };
        let (_, entries) = self.file.as_ref()?;
        let id = entries
            .iter()
            .find(|e| e.key == id || e.id == id)
            .map(|e| e.id.clone())?;
        let origin = self.origin(&id)?;
        let msg = err.render().to_string();
        let first = msg.lines().next().unwrap_or_default();
        Some(format!("{origin}: {}", first.trim_start_matches("error: ")))
    }
}

/// Folds the `--config` file of `herd serve` / `herd run` into `argv`. Without one (or when
/// the command line does not parse even without its required arguments: clap then reports
/// it), `argv` comes back as it is.
pub fn expand(root: &Command, argv: Vec<OsString>) -> anyhow::Result<Expanded> {
    let mut relaxed = relax(root.clone());
    relaxed.build();
    let Ok(matches) = relaxed.clone().try_get_matches_from(&argv) else {
        return Ok(Expanded { argv, file: None });
    };
    let Some((name, sub)) = matches
        .subcommand()
        .filter(|(name, _)| CONFIGURED.contains(name))
    else {
        return Ok(Expanded { argv, file: None });
    };
    let Some(path) = sub.try_get_one::<PathBuf>(CONFIG).ok().flatten().cloned() else {
        return Ok(Expanded { argv, file: None });
    };
    let sub_cmd = relaxed
        .find_subcommand(name)
        .context("no such subcommand")?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read configuration file {}", path.display()))?;
    let mut entries = entries(sub_cmd, &path, &text)?;
    // What the command line (or an option's environment variable) set wins.
    for e in &mut entries {
        if matches!(
            sub.value_source(&e.id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            e.args.clear();
        }
    }
    let sep = argv.iter().position(|a| a == "--");
    let mut out: Vec<OsString> = argv[..sep.unwrap_or(argv.len())].to_vec();
    let mut command = None;
    for e in &entries {
        if e.id == COMMAND {
            command = Some(&e.args);
        } else {
            out.extend(e.args.iter().cloned());
        }
    }
    out.extend(argv[sep.unwrap_or(argv.len())..].iter().cloned());
    if let Some(cmd) = command.filter(|c| !c.is_empty()) {
        if sep.is_none() {
            out.push("--".into());
        }
        out.extend(cmd.iter().cloned());
    }
    Ok(Expanded {
        argv: out,
        file: Some((path, entries)),
    })
}

/// The command with no argument required, to find `--config` and what the command line sets
/// before the file supplies the rest.
fn relax(mut cmd: Command) -> Command {
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    for id in ids {
        cmd = cmd.mut_arg(id, |a| a.required(false));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, relax);
    }
    cmd
}

/// The file's keys as options of `cmd`, checked against its arguments.
fn entries(cmd: &Command, path: &Path, text: &str) -> anyhow::Result<Vec<Entry>> {
    use toml::de::{DeTable, DeValue};
    let at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| at(s.start));
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message())
    })?;
    let keys: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !command_line_only(a.get_id().as_str()))
        .map(|a| a.get_long().unwrap_or(a.get_id().as_str()).to_string())
        .collect();
    let mut out = Vec::new();
    for (key, value) in table.get_ref() {
        let line = at(key.span().start);
        let key = key.get_ref().to_string();
        let fail = |msg: String| anyhow::anyhow!("{}:{line}: key `{key}`: {msg}", path.display());
        let Some(arg) = cmd.get_arguments().find(|a| {
            !command_line_only(a.get_id().as_str())
                && (a.get_long() == Some(key.as_str())
                    || (a.get_long().is_none() && a.get_id() == key.as_str()))
        }) else {
            let hint = keys
                .iter()
                .filter(|k| close(k, &key))
                .map(|k| format!(" (did you mean `{k}`?)"))
                .next()
                .unwrap_or_default();
            return Err(anyhow::anyhow!(
                "{}:{line}: unknown key `{key}`{hint}",
                path.display()
            ));
        };
        let scalar = |v: &DeValue| -> Option<String> {
            match v {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(i) => {
                    let digits = i.as_str().replace('_', "");
                    i64::from_str_radix(&digits, i.radix())
                        .ok()
                        .map(|n| n.to_string())
                }
                _ => None,
            }
        };
        let flag = format!("--{key}");
        let value = value.get_ref();
        let args: Vec<OsString> = match arg.get_action() {
            ArgAction::SetTrue => match value {
                DeValue::Boolean(true) => vec![flag.into()],
                DeValue::Boolean(false) => vec![],
                v => {
                    return Err(fail(format!(
                        "expected true or false, not {}",
                        v.type_str()
                    )))
                }
            },
            ArgAction::Count => match value.as_integer().and_then(|_| scalar(value)) {
                Some(n) => match n.parse::<u8>() {
                    Ok(n) => vec![OsString::from(&flag); n as usize],
                    Err(_) => return Err(fail(format!("expected 0 to 255, not {n}"))),
                },
                None => return Err(fail(format!("expected a number, not {}", value.type_str()))),
            },
            ArgAction::Append | ArgAction::Set => {
                let many = arg.get_id() == COMMAND || matches!(arg.get_action(), ArgAction::Append);
                let values: Vec<String> = match value {
                    DeValue::Array(items) if many => items
                        .iter()
                        .map(|v| {
                            scalar(v.get_ref()).ok_or_else(|| {
                                fail(format!(
                                    "expected strings or numbers, not {}",
                                    v.get_ref().type_str()
                                ))
                            })
                        })
                        .collect::<anyhow::Result<_>>()?,
                    v if arg.get_id() == COMMAND => {
                        return Err(fail(format!(
                            "expected an array like [\"python3\", \"worker.py\"], not {}",
                            v.type_str()
                        )))
                    }
                    v => vec![scalar(v).ok_or_else(|| {
                        fail(format!(
                            "expected a string or a number, not {}",
                            v.type_str()
                        ))
                    })?],
                };
                if arg.get_id() == COMMAND {
                    values.into_iter().map(OsString::from).collect()
                } else {
                    // `--key=value`: a value may start with `-` (`priority = -5`).
                    values
                        .into_iter()
                        .map(|v| OsString::from(format!("{flag}={v}")))
                        .collect()
                }
            }
            _ => return Err(fail("not settable in a file".into())),
        };
        out.push(Entry {
            key,
            line,
            id: arg.get_id().to_string(),
            args,
        });
    }
    Ok(out)
}

/// Whether `a` is a likely misspelling of `b`: one edit apart, or one's prefix.
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()] <= 1
}

/// Every argument of a parsed subcommand as given or defaulted (`key -> (values, source)`):
/// what `herd check` prints and a HUP compares.
pub fn settings(cmd: &Command, m: &ArgMatches) -> BTreeMap<String, (Vec<OsString>, String)> {
    let mut out = BTreeMap::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if command_line_only(id) {
            continue;
        }
        let key = arg.get_long().unwrap_or(id).to_string();
        let values: Vec<OsString> = match arg.get_action() {
            ArgAction::Count => vec![m.get_count(id).to_string().into()],
            _ => m
                .get_raw(id)
                .map(|v| v.map(OsStr::to_os_string).collect())
                .unwrap_or_default(),
        };
        let source = match m.value_source(id) {
            Some(ValueSource::DefaultValue) => "default",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::CommandLine) => "set",
            _ => "unset",
        };
        out.insert(key, (values, source.to_string()));
    }
    out
}

/// `herd check`'s report: one `key = value` line per option, with where it came from.
pub fn report(exp: &Expanded, cmd: &Command, m: &ArgMatches) -> anyhow::Result<String> {
    use std::fmt::Write;
    let mut s = String::new();
    for (key, (values, source)) in settings(cmd, m) {
        let id = cmd
            .get_arguments()
            .find(|a| a.get_long().unwrap_or(a.get_id().as_str()) == key)
            .map(|a| a.get_id().to_string())
            .unwrap_or_default();
        let from = match (source.as_str(), exp.line_of(&id)) {
            ("set", Some(line)) => line,
            ("set", None) => "command line".to_string(),
            (other, _) => other.to_string(),
        };
        let shown: Vec<String> = values
            .iter()
            .map(|v| format!("{:?}", v.to_string_lossy()))
            .collect();
        if source == "unset" {
            writeln!(s, "# {key} is not set")?;
            continue;
        }
        let value = match shown.len() {
            0 => "[]".to_string(),
            1 if key != COMMAND && key != "env" => shown[0].clone(),
            _ => format!("[{}]", shown.join(", ")),
        };
        writeln!(s, "{key} = {value}  # {from}")?;
    }
    Ok(s)
}

/// The keys whose settings differ between two parses, split into those a HUP applies and
/// those that need a restart.
pub fn changed(
    old: &BTreeMap<String, (Vec<OsString>, String)>,
    new: &BTreeMap<String, (Vec<OsString>, String)>,
) -> (Vec<String>, Vec<String>) {
    let mut live = Vec::new();
    let mut restart = Vec::new();
    for (key, (values, _)) in new {
        if old.get(key).map(|(v, _)| v) != Some(values) {
            if LIVE_KEYS.contains(&key.as_str()) {
                live.push(key.clone());
            } else {
                restart.push(key.clone());
            }
        }
    }
    (live, restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renamed option cannot leave its key behind in the list a HUP applies.
    #[test]
    fn live_keys_are_keys_of_serve() {
        let mut cmd = <crate::Cli as clap::CommandFactory>::command();
        cmd.build();
        let serve = cmd.find_subcommand("serve").expect("serve");
        for key in LIVE_KEYS {
            assert!(
                serve
                    .get_arguments()
                    .any(|a| a.get_long().unwrap_or(a.get_id().as_str()) == *key),
                "{key}"
            );
        }
    }

    #[test]
    fn misspellings_are_close() {
        assert!(close("retries", "retris"));
        assert!(close("grace", "grase"));
        assert!(!close("retries", "timeout"));
    }
}
