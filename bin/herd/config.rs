//! `--config FILE` (see docs/CONFIG.md and herd-clap-toml): which subcommands read it, and
//! what a HUP may change while `herd serve` runs.

use herd_clap_toml::{Layer, Settings};

/// `herd serve --config` and `herd run --config`.
pub const LAYER: Layer = Layer {
    subcommands: &["serve", "run"],
    file_arg: "config",
    // `herd serve --die-with-parent PID` names the process that started this herd.
    command_line_only: &["die_with_parent"],
};

/// The keys a HUP applies to the running daemon (in place, or by a rolling restart of the
/// workers); a change to any other key needs a restart.
pub const LIVE_KEYS: &[&str] = &[
    "workers",
    "window",
    "timeout",
    "retries",
    "retry-backoff",
    "rate",
    "max-inflight-per-key",
    "key-rate",
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
    "command",
];

/// The keys whose settings differ between two parses, split into those a HUP applies and
/// those that need a restart.
pub fn changed(old: &Settings, new: &Settings) -> (Vec<String>, Vec<String>) {
    herd_clap_toml::changed(old, new)
        .into_iter()
        .partition(|key| LIVE_KEYS.contains(&key.as_str()))
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
}
