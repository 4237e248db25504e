#![allow(clippy::unwrap_used)]

use super::*;

const LAYER: Layer = Layer {
    subcommands: &["serve"],
    file_arg: "config",
    command_line_only: &[],
};

/// A command shaped like herd's: options of each action, and a worker command after `--`.
fn cli() -> Command {
    Command::new("app").subcommand(
        Command::new("serve")
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("retries")
                    .long("retries")
                    .default_value("2")
                    .value_parser(clap::value_parser!(u32)),
            )
            .arg(
                Arg::new("priority")
                    .long("priority")
                    .allow_negative_numbers(true)
                    .value_parser(clap::value_parser!(i8)),
            )
            .arg(
                Arg::new("ordered")
                    .long("ordered")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("verbose").long("verbose").action(ArgAction::Count))
            .arg(Arg::new("env").long("env").action(ArgAction::Append))
            .arg(
                Arg::new("urls")
                    .long("nats")
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            )
            .arg(Arg::new("timeout").long("timeout"))
            .arg(Arg::new("command").last(true).num_args(1..).required(true)),
    )
}

/// A file with `text`, removed on drop.
struct File(PathBuf);

impl File {
    fn new(name: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("herd-clap-toml-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.toml");
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    fn argv(&self, extra: &[&str]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = ["app", "serve", "--config"].map(Into::into).into();
        argv.push(self.0.clone().into());
        argv.extend(extra.iter().map(Into::into));
        argv
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn expand(file: &File, extra: &[&str]) -> Result<Expanded, Error> {
    LAYER.expand(&cli(), file.argv(extra))
}

fn strings(argv: &[OsString]) -> Vec<String> {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_action_becomes_options_and_the_command_goes_after_the_separator() {
    let f = File::new(
        "actions",
        "retries = 0x10\npriority = -5\nordered = true\nverbose = 2\nenv = [\"A=1\", \"B=2\"]\n\
         nats = \"n1,n2\"\ntimeout = 1_000\ncommand = [\"worker\", \"--fast\", 3]\n",
    );
    let exp = expand(&f, &[]).unwrap();
    let argv = strings(&exp.argv);
    let sep = argv.iter().position(|a| a == "--").unwrap();
    assert_eq!(argv[sep + 1..], ["worker", "--fast", "3"]);
    let m = exp.parse(cli()).unwrap();
    let m = m.subcommand_matches("serve").unwrap();
    assert_eq!(m.get_one::<u32>("retries"), Some(&16));
    assert_eq!(m.get_one::<i8>("priority"), Some(&-5));
    assert!(m.get_flag("ordered"));
    assert_eq!(m.get_count("verbose"), 2);
    let env: Vec<&String> = m.get_many("env").unwrap().collect();
    assert_eq!(env, ["A=1", "B=2"]);
    let urls: Vec<&String> = m.get_many("urls").unwrap().collect();
    assert_eq!(urls, ["n1", "n2"]);
    assert_eq!(m.get_one::<String>("timeout").unwrap(), "1000");
    assert!(exp.has_file());
}

#[test]
fn the_command_line_wins_over_the_file() {
    let f = File::new(
        "wins",
        "retries = 5\ntimeout = \"1s\"\ncommand = [\"from-file\"]\n",
    );
    let exp = expand(&f, &["--retries", "7", "--", "typed"]).unwrap();
    let m = exp.parse(cli()).unwrap();
    let m = m.subcommand_matches("serve").unwrap();
    assert_eq!(m.get_one::<u32>("retries"), Some(&7));
    assert_eq!(m.get_one::<String>("timeout").unwrap(), "1s");
    let cmd: Vec<&String> = m.get_many("command").unwrap().collect();
    assert_eq!(cmd, ["typed"]);
}

#[test]
fn without_a_file_the_command_line_is_untouched() {
    let argv: Vec<OsString> = ["app", "serve", "--retries", "3", "--", "w"]
        .map(Into::into)
        .into();
    let exp = LAYER.expand(&cli(), argv.clone()).unwrap();
    assert_eq!(exp.argv, argv);
    assert!(!exp.has_file());
}

#[test]
fn mistakes_name_their_file_line_and_key() {
    let f = File::new("unknown", "retries = 1\n\nretris = 2\n");
    let e = expand(&f, &[]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.ends_with(":3: unknown key `retris` (did you mean `retries`?)"),
        "{text}"
    );
    assert!(text.starts_with(&f.0.display().to_string()), "{text}");

    let f = File::new("config", "config = \"other.toml\"\n");
    let e = expand(&f, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownKey {
                line: 1,
                hint: None,
                ..
            }
        ),
        "{e}"
    );

    let f = File::new("type", "ordered = \"yes\"\n");
    let e = expand(&f, &[]).unwrap_err().to_string();
    assert!(
        e.ends_with(":1: key `ordered`: expected true or false, not string"),
        "{e}"
    );

    let f = File::new("command", "command = \"worker\"\n");
    let e = expand(&f, &[]).unwrap_err().to_string();
    assert!(e.contains("key `command`: expected an array like"), "{e}");

    let f = File::new("syntax", "retries = 1\nretries = \n");
    let e = expand(&f, &[]).unwrap_err();
    assert!(matches!(e, Error::Syntax { line: 2, .. }), "{e}");

    let missing = File::new("missing", "");
    let argv = missing.argv(&[]);
    drop(missing);
    let e = LAYER.expand(&cli(), argv).unwrap_err();
    assert!(matches!(e, Error::Read { .. }), "{e}");
}

#[test]
fn a_value_clap_refuses_is_explained_with_its_key_and_line() {
    let f = File::new(
        "explain",
        "# comment\nretries = \"many\"\ncommand = [\"w\"]\n",
    );
    let exp = expand(&f, &[]).unwrap();
    let err = exp.parse(cli()).unwrap_err();
    let text = exp.explain(&err).unwrap();
    let want = format!("{}:2: key `retries`: invalid value 'many'", f.0.display());
    assert!(text.starts_with(&want), "{text}");
    // An error about the command line alone is clap's to report.
    let exp = expand(&f, &["--priority", "x"]).unwrap();
    let err = exp.parse(cli()).unwrap_err();
    assert_eq!(exp.explain(&err), None);
}

#[test]
fn the_report_says_where_each_value_comes_from() {
    let f = File::new(
        "report",
        "env = [\"A=1\"]\nnats = \"n1\"\ncommand = [\"w\"]\n",
    );
    let exp = expand(&f, &["--timeout", "2s"]).unwrap();
    let m = exp.parse(cli()).unwrap();
    let mut cmd = cli();
    cmd.build();
    let sub = cmd.find_subcommand("serve").unwrap();
    let report = exp.report(sub, m.subcommand_matches("serve").unwrap());
    let path = f.0.display();
    let want = format!(
        "command = [\"w\"]  # {path}:3\n\
         env = [\"A=1\"]  # {path}:1\n\
         nats = \"n1\"  # {path}:2\n\
         ordered = \"false\"  # default\n\
         # priority is not set\n\
         retries = \"2\"  # default\n\
         timeout = \"2s\"  # command line\n\
         verbose = \"0\"  # default\n"
    );
    assert_eq!(report, want);
}

#[test]
fn changed_lists_the_keys_whose_values_differ() {
    let f = File::new("changed", "retries = 3\ncommand = [\"w\"]\n");
    let settings = |extra: &[&str]| {
        let exp = expand(&f, extra).unwrap();
        let m = exp.parse(cli()).unwrap();
        let mut cmd = cli();
        cmd.build();
        LAYER.settings(
            cmd.find_subcommand("serve").unwrap(),
            m.subcommand_matches("serve").unwrap(),
        )
    };
    let old = settings(&[]);
    assert_eq!(old["retries"].origin, Origin::Set);
    assert_eq!(old["timeout"].origin, Origin::Unset);
    assert!(changed(&old, &settings(&[])).is_empty());
    assert_eq!(
        changed(&old, &settings(&["--retries", "4", "--ordered"])),
        ["ordered", "retries"]
    );
}

#[test]
fn misspellings_are_close() {
    assert!(close("retries", "retris"));
    assert!(close("grace", "grase"));
    assert!(close("retries", "retriess"));
    assert!(!close("retries", "timeout"));
}

#[test]
fn only_a_command_line_that_may_name_the_file_is_parsed() {
    let root = cli();
    let argv = |args: &[&str]| -> Vec<OsString> { args.iter().map(OsString::from).collect() };
    let may = |args: &[&str]| LAYER.may_name_file(&root, &argv(args));
    assert!(!may(&["app", "serve", "--retries", "3", "--", "w"]));
    // After `--` it is the worker's argument, not ours.
    assert!(!may(&["app", "serve", "--", "w", "--config", "x"]));
    assert!(may(&["app", "serve", "--config", "x", "--", "w"]));
    assert!(may(&["app", "serve", "--config=x", "--", "w"]));
    // A lookalike is left to the parse (which finds no file).
    assert!(!may(&["app", "serve", "--configure", "--", "w"]));
    let out = LAYER
        .expand(&root, argv(&["app", "serve", "--retries", "3", "--", "w"]))
        .unwrap();
    assert!(!out.has_file());
}
