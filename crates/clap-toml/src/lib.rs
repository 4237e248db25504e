//! herd-clap-toml: a TOML configuration file as the twin of a clap command line.
//!
//! The file's keys are the long options of a subcommand (`retries = 3`, `retry-backoff =
//! "200ms"`, `env = ["A=1"]`), plus the id of its trailing positional argument (the one after
//! `--`, given as an array). The clap definitions are the only list of keys: the file becomes
//! options that clap parses as if typed, placed before the ones on the command line, and an
//! option given on the command line (or in its environment variable) wins over its key. An
//! unknown key, or a value of the wrong TOML type, is an error naming the file, the line and the
//! key; so is a value clap refuses ([`Expanded::explain`]).
//!
//! It is `herd serve --config` and `herd run --config`; `herd check` prints
//! [`Expanded::report`], and a HUP compares two parses' [`Layer::settings`]. A crate of its own
//! because nothing in it is about herd: it works on any clap `Command`.
//!
//! ```
//! use clap::{Arg, ArgAction, Command};
//! use herd_clap_toml::Layer;
//! # use std::path::PathBuf;
//!
//! let cli = Command::new("app").subcommand(
//!     Command::new("serve")
//!         .arg(Arg::new("config").long("config").value_parser(clap::value_parser!(PathBuf)))
//!         .arg(Arg::new("retries").long("retries").default_value("2"))
//!         .arg(Arg::new("command").last(true).num_args(1..).required(true)),
//! );
//! let dir = std::env::temp_dir().join(format!("herd-clap-toml-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let file = dir.join("app.toml");
//! std::fs::write(&file, "retries = 5\ncommand = [\"worker\", \"-v\"]\n")?;
//!
//! const LAYER: Layer = Layer {
//!     subcommands: &["serve"],
//!     file_arg: "config",
//!     command_line_only: &[],
//! };
//! let argv = ["app", "serve", "--config", file.to_str().unwrap()];
//! let expanded = LAYER.expand(&cli, argv.iter().map(Into::into).collect())?;
//! let m = expanded.parse(cli.clone())?;
//! let serve = m.subcommand_matches("serve").unwrap();
//! assert_eq!(serve.get_one::<String>("retries").unwrap(), "5");
//! assert_eq!(serve.get_many::<String>("command").unwrap().collect::<Vec<_>>(), ["worker", "-v"]);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// Which subcommands read a configuration file, and the option that names it.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    /// The subcommands that take the file.
    pub subcommands: &'static [&'static str],
    /// The id of the option naming the file (not a key itself); its values are `PathBuf`s.
    pub file_arg: &'static str,
    /// Ids of options that are not settings (they name something of this one start, such as
    /// the process that started it): never keys of the file, nor in the report.
    pub command_line_only: &'static [&'static str],
}

/// Why a configuration file cannot be folded into the command line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read configuration file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A key that is no option of the subcommand; `hint` is a likely one it misspells.
    #[error("{}:{line}: unknown key `{key}`{}", path.display(),
            hint.as_ref().map(|h| format!(" (did you mean `{h}`?)")).unwrap_or_default())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        hint: Option<String>,
    },
    /// A value of a type the option cannot take.
    #[error("{}:{line}: key `{key}`: {message}", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Where a setting's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The command line or the file.
    Set,
    /// The option's environment variable.
    Environment,
    /// The option's default.
    Default,
    /// Nowhere: the option has no value.
    Unset,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Set => "set",
            Origin::Environment => "environment",
            Origin::Default => "default",
            Origin::Unset => "unset",
        })
    }
}

/// One option of a parsed subcommand: its raw values and where they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub values: Vec<OsString>,
    pub origin: Origin,
}

/// Every option of a parsed subcommand by key (its long name, or the positional's id).
pub type Settings = BTreeMap<String, Setting>;

/// One key of the file, as options.
#[derive(Debug)]
struct Entry {
    key: String,
    line: usize,
    /// The arg's id.
    id: String,
    /// Whether it is the trailing positional (the worker command after `--`).
    trailing: bool,
    args: Vec<OsString>,
}

/// A command line with its configuration file folded in.
#[derive(Debug)]
pub struct Expanded {
    pub argv: Vec<OsString>,
    layer: Layer,
    /// The file, with where each of its keys is (none without one).
    file: Option<(PathBuf, Vec<Entry>)>,
}

impl Layer {
    /// Whether `argv` (before a `--`) may set the file option of one of the subcommands: by
    /// its long or short flag, or its environment variable being set. `false` is certain;
    /// `true` leaves the answer to a parse.
    fn may_name_file(&self, root: &Command, argv: &[OsString]) -> bool {
        let args: Vec<&Arg> = self
            .subcommands
            .iter()
            .filter_map(|name| root.find_subcommand(name))
            .filter_map(|sub| sub.get_arguments().find(|a| a.get_id() == self.file_arg))
            .collect();
        if args.iter().any(|a| {
            a.get_env()
                .is_some_and(|var| std::env::var_os(var).is_some())
        }) {
            return true;
        }
        argv.iter()
            .skip(1)
            .take_while(|a| *a != "--")
            .filter_map(|a| a.to_str())
            .any(|a| {
                args.iter().any(|arg| {
                    let long = arg.get_long().is_some_and(|l| {
                        a.strip_prefix("--")
                            .is_some_and(|rest| rest.split('=').next() == Some(l))
                    });
                    let short = arg.get_short().is_some_and(|c| {
                        a.starts_with('-') && !a.starts_with("--") && a[1..].contains(c)
                    });
                    long || short
                })
            })
    }

    /// Folds the configuration file of one of [`subcommands`](Self::subcommands) into `argv`.
    /// Without one (or when the command line does not parse even without its required
    /// arguments: clap then reports it), `argv` comes back as it is.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not TOML, has a key that is not an option, or a value of
    /// the wrong type: each names the file and line.
    pub fn expand(&self, root: &Command, argv: Vec<OsString>) -> Result<Expanded, Error> {
        let unchanged = |argv| {
            Ok(Expanded {
                argv,
                layer: *self,
                file: None,
            })
        };
        // Most command lines name no file: seen without a parse, since building the relaxed
        // command costs more than everything else a short `herd` run does at start.
        if !self.may_name_file(root, &argv) {
            return unchanged(argv);
        }
        let mut relaxed = relax(root.clone());
        relaxed.build();
        let Ok(matches) = relaxed.clone().try_get_matches_from(&argv) else {
            return unchanged(argv);
        };
        let Some((name, sub)) = matches
            .subcommand()
            .filter(|(name, _)| self.subcommands.contains(name))
        else {
            return unchanged(argv);
        };
        let Some(path) = sub
            .try_get_one::<PathBuf>(self.file_arg)
            .ok()
            .flatten()
            .cloned()
        else {
            return unchanged(argv);
        };
        let Some(sub_cmd) = relaxed.find_subcommand(name) else {
            return unchanged(argv);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let mut entries = self.entries(sub_cmd, &path, &text)?;
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
            if e.trailing {
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
            layer: *self,
            file: Some((path, entries)),
        })
    }

    /// Whether `arg` is a key of the file.
    fn is_key(&self, arg: &Arg) -> bool {
        let id = arg.get_id().as_str();
        id != self.file_arg
            && !matches!(id, "help" | "version")
            && !self.command_line_only.contains(&id)
    }

    /// The file's keys as options of `cmd`, checked against its arguments.
    fn entries(&self, cmd: &Command, path: &Path, text: &str) -> Result<Vec<Entry>, Error> {
        use toml::de::{DeTable, DeValue};
        let at = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let table = DeTable::parse(text).map_err(|e| Error::Syntax {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| at(s.start)),
            message: e.message().to_string(),
        })?;
        let keys: Vec<&str> = cmd
            .get_arguments()
            .filter(|a| self.is_key(a))
            .map(key_of)
            .collect();
        let mut out = Vec::new();
        for (key, value) in table.get_ref() {
            let line = at(key.span().start);
            let key = key.get_ref().to_string();
            let fail = |message: String| Error::Value {
                path: path.to_path_buf(),
                line,
                key: key.clone(),
                message,
            };
            let Some(arg) = cmd
                .get_arguments()
                .find(|a| self.is_key(a) && key_of(a) == key)
            else {
                return Err(Error::UnknownKey {
                    path: path.to_path_buf(),
                    line,
                    hint: keys.iter().find(|k| close(k, &key)).map(|k| k.to_string()),
                    key,
                });
            };
            let trailing = arg.is_last_set();
            if arg.is_positional() && !trailing {
                return Err(fail("not settable in a file".into()));
            }
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
                    None => {
                        return Err(fail(format!("expected a number, not {}", value.type_str())))
                    }
                },
                ArgAction::Append | ArgAction::Set => {
                    let many = trailing || matches!(arg.get_action(), ArgAction::Append);
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
                            .collect::<Result<_, _>>()?,
                        v if trailing => {
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
                    if trailing {
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
                trailing,
                args,
            });
        }
        Ok(out)
    }

    /// Every option of a parsed subcommand as given or defaulted: what `herd check` prints and
    /// a HUP compares.
    pub fn settings(&self, cmd: &Command, m: &ArgMatches) -> Settings {
        let mut out = BTreeMap::new();
        for arg in cmd.get_arguments().filter(|a| self.is_key(a)) {
            let id = arg.get_id().as_str();
            let values: Vec<OsString> = match arg.get_action() {
                ArgAction::Count => vec![m.get_count(id).to_string().into()],
                _ => m
                    .get_raw(id)
                    .map(|v| v.map(OsStr::to_os_string).collect())
                    .unwrap_or_default(),
            };
            let origin = match m.value_source(id) {
                Some(ValueSource::DefaultValue) => Origin::Default,
                Some(ValueSource::EnvVariable) => Origin::Environment,
                Some(ValueSource::CommandLine) => Origin::Set,
                _ => Origin::Unset,
            };
            out.insert(key_of(arg).to_string(), Setting { values, origin });
        }
        out
    }
}

impl Expanded {
    /// Whether a configuration file was read.
    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// Parses the expanded command line.
    ///
    /// # Errors
    ///
    /// clap's; [`explain`](Self::explain) says which key of the file one is about.
    pub fn parse(&self, cmd: Command) -> Result<ArgMatches, clap::Error> {
        cmd.try_get_matches_from(&self.argv)
    }

    /// `FILE:LINE` of the key for arg `id`, if the file set it (and the command line did not).
    fn line_of(&self, id: &str) -> Option<String> {
        let (path, entries) = self.file.as_ref()?;
        let e = entries.iter().find(|e| e.id == id && !e.args.is_empty())?;
        Some(format!("{}:{}", path.display(), e.line))
    }

    /// Says which key of the file a clap error is about, if it is about one: `FILE:LINE: key
    /// `KEY`: ` and the first line of clap's message.
    pub fn explain(&self, err: &clap::Error) -> Option<String> {
        use clap::error::{ContextKind, ContextValue};
        let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
            return None;
        };
        // `--retries <N>`, `--ordered`, `<WORKER_CMD>...`
        let name = arg.split([' ', '=']).next()?.trim_start_matches('-');
        let (_, entries) = self.file.as_ref()?;
        let e = entries.iter().find(|e| {
            if name.starts_with('<') {
                e.trailing
            } else {
                e.key == name || e.id == name
            }
        })?;
        let origin = format!("{}: key `{}`", self.line_of(&e.id)?, e.key);
        let msg = err.render().to_string();
        let first = msg.lines().next().unwrap_or_default();
        Some(format!("{origin}: {}", first.trim_start_matches("error: ")))
    }

    /// `herd check`'s report: one `key = value  # ORIGIN` line per option of the parsed
    /// subcommand `cmd` (the origin is `FILE:LINE` for a key of the file), `# key is not set`
    /// for one without a value.
    pub fn report(&self, cmd: &Command, m: &ArgMatches) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (key, setting) in self.layer.settings(cmd, m) {
            let arg = cmd.get_arguments().find(|a| key_of(a) == key);
            let id = arg.map(|a| a.get_id().to_string()).unwrap_or_default();
            let from = match (setting.origin, self.line_of(&id)) {
                (Origin::Set, Some(line)) => line,
                (Origin::Set, None) => "command line".to_string(),
                (other, _) => other.to_string(),
            };
            if setting.origin == Origin::Unset {
                let _ = writeln!(s, "# {key} is not set");
                continue;
            }
            let shown: Vec<String> = setting
                .values
                .iter()
                .map(|v| format!("{:?}", v.to_string_lossy()))
                .collect();
            // A repeated option or the trailing command is an array, even of one.
            let array = arg.is_some_and(|a| {
                a.is_last_set()
                    || (matches!(a.get_action(), ArgAction::Append)
                        && a.get_value_delimiter().is_none())
            });
            let value = match shown.len() {
                0 => "[]".to_string(),
                1 if !array => shown[0].clone(),
                _ => format!("[{}]", shown.join(", ")),
            };
            let _ = writeln!(s, "{key} = {value}  # {from}");
        }
        s
    }
}

/// The keys whose values differ between two parses' settings (in `new`'s order).
pub fn changed(old: &Settings, new: &Settings) -> Vec<String> {
    new.iter()
        .filter(|(key, s)| old.get(*key).map(|o| &o.values) != Some(&s.values))
        .map(|(key, _)| key.clone())
        .collect()
}

/// An option's key: its long name, or a positional's id.
fn key_of(arg: &Arg) -> &str {
    arg.get_long().unwrap_or(arg.get_id().as_str())
}

/// The command with no argument required, to find the file and what the command line sets
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

#[cfg(test)]
mod tests;
