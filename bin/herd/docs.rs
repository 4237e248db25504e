//! What is generated from the clap definitions: shell completions (`herd completions`), and the
//! man pages and Markdown reference in `docs/` (the hidden `herd generate-docs DIR`, which a
//! test compares with the committed copies so that they cannot go stale).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Arg, Args, Command};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for; source the output from its startup file (e.g.
    /// `herd completions bash > ~/.local/share/bash-completion/completions/herd`).
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct GenerateDocsArgs {
    /// Directory to write CLI.md and man/*.1 into (the repository's docs/).
    #[arg(value_name = "DIR")]
    out: PathBuf,
}

pub fn completions(args: CompletionsArgs, mut cmd: Command) -> anyhow::Result<()> {
    use std::io::Write;
    // Into a buffer first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "herd", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("cannot write the completion script")
}

pub fn generate(args: GenerateDocsArgs, cmd: Command) -> anyhow::Result<()> {
    let man = args.out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("cannot write the man pages to {}", man.display()))?;
    let md = args.out.join("CLI.md");
    std::fs::write(&md, markdown(cmd)).with_context(|| format!("cannot write {}", md.display()))
}

/// The command-line reference as Markdown: every visible subcommand, its usage and its
/// arguments under clap's help headings, with their long help, defaults and possible values.
pub fn markdown(cmd: Command) -> String {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut all = Vec::new();
    collect(&cmd, &mut all);
    let mut out = String::from(
        "# Command-line reference\n\n\
         <!-- Generated from the clap definitions by `herd generate-docs docs`; do not edit.\n     \
         Regenerate with `HERD_REGEN=1 cargo test --test tests -- cli::generated_reference_is_current`. -->\n\n\
         The same text as `herd help <COMMAND>`; man pages are in [man/](man/), shell \
         completions come from `herd completions bash|zsh|fish`.\n\n",
    );
    for c in &all {
        let name = c.get_bin_name().unwrap_or(c.get_name());
        let _ = writeln!(out, "- [`{name}`](#{})", anchor(name));
    }
    for c in &all {
        section(&mut out, c, std::ptr::eq(*c, &cmd));
    }
    out
}

fn collect<'a>(cmd: &'a Command, out: &mut Vec<&'a Command>) {
    out.push(cmd);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
}

/// GitHub's heading anchor for a heading that is just `name` in backticks.
fn anchor(name: &str) -> String {
    name.chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn section(out: &mut String, cmd: &Command, top: bool) {
    let name = cmd.get_bin_name().unwrap_or(cmd.get_name());
    let _ = writeln!(out, "\n## `{name}`\n");
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{}\n", about.to_string().trim_end());
    }
    let usage = cmd.clone().render_usage().to_string();
    let _ = writeln!(out, "```text\n{}\n```", usage.trim_end());
    let subs: Vec<&Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    if !subs.is_empty() {
        let _ = writeln!(out, "\n**Commands**\n");
        for s in subs {
            let about = s.get_about().map(|a| a.to_string()).unwrap_or_default();
            let full = s.get_bin_name().unwrap_or(s.get_name());
            let _ = writeln!(out, "- [`{}`](#{}): {about}", s.get_name(), anchor(full));
        }
    }
    // Global options are listed once, with the top-level command.
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|a| top || !a.is_global_set())
        .collect();
    let mut headings: Vec<&str> = Vec::new();
    for a in &args {
        let h = heading(a);
        if !headings.contains(&h) {
            headings.push(h);
        }
    }
    for h in headings {
        let _ = writeln!(out, "\n**{h}**\n");
        for a in args.iter().filter(|a| heading(a) == h) {
            item(out, a);
        }
    }
    if !top {
        let _ = writeln!(out, "\nAnd the [global options](#herd).");
    }
}

fn heading(a: &Arg) -> &str {
    match a.get_help_heading() {
        Some(h) => h,
        None if a.is_positional() => "Arguments",
        None => "Options",
    }
}

fn item(out: &mut String, a: &Arg) {
    let values = a
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
    let mut names = Vec::new();
    if a.is_positional() {
        let dots = if a.is_last_set() { "-- " } else { "" };
        names.push(format!("`{dots}{values}...`"));
    } else {
        let v = if takes_value {
            format!(" {values}")
        } else {
            String::new()
        };
        if let Some(s) = a.get_short() {
            names.push(format!("`-{s}`"));
        }
        if let Some(l) = a.get_long() {
            names.push(format!("`--{l}{v}`"));
        }
    }
    let help = a
        .get_long_help()
        .or(a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut text = help.trim_end().to_string();
    if takes_value && !a.is_hide_default_value_set() && !a.get_default_values().is_empty() {
        let d: Vec<_> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy())
            .collect();
        let _ = write!(text, " [default: {}]", d.join(", "));
    }
    let possible: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| format!("`{}`", p.get_name()))
        .collect();
    if takes_value && !possible.is_empty() && !a.is_hide_possible_values_set() {
        let _ = write!(text, " [possible values: {}]", possible.join(", "));
    }
    if let Some(env) = a.get_env().filter(|_| !a.is_hide_env_set()) {
        let _ = write!(text, " [env: `{}`]", env.to_string_lossy());
    }
    // Paragraphs of the long help stay inside the list item.
    let text = text.replace("\n\n", "\n\n  ").replace("\n  \n", "\n\n");
    let _ = writeln!(out, "- {}: {}", names.join(", "), text.trim_start());
}
