//! Signals become pool commands on a dedicated thread (installed once, at start-up).

use anyhow::Context;
use herd_supervisor::{Command, PoolHandle};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2};

/// What a HUP asks of the pool, if anything.
pub type OnHup = Box<dyn FnMut() -> Option<Command> + Send>;

/// INT/TERM: finish what was accepted, then stop; a second INT, or QUIT: stop now. USR1:
/// status to the log; USR2: reopen the log file. HUP: with `daemon`, a rolling reload;
/// otherwise (`herd run`, whose terminal or ssh session closed) a graceful stop like TERM.
/// With `daemon`, also TTIN/TTOU (one worker more/fewer).
///
/// A signal herd does not handle still leaves nothing behind: the pool's guard process kills
/// the workers' process groups and removes the socket directory (see herd-supervisor).
/// `on_hup`, if given, decides what a daemon's HUP does (`herd serve --config` re-reads its
/// file); `None` from it ignores that HUP.
pub fn forward(pool: PoolHandle, daemon: bool, mut on_hup: Option<OnHup>) -> anyhow::Result<()> {
    let mut set = vec![SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2];
    if daemon {
        set.extend([SIGTTIN, SIGTTOU]);
    }
    let mut signals =
        signal_hook::iterator::Signals::new(&set).context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("herd-signals".into())
        .spawn(move || {
            let mut stopping = false;
            for sig in signals.forever() {
                let name = herd_supervisor::signal_name(sig);
                let cmd = match sig {
                    SIGINT | SIGTERM | SIGQUIT | SIGHUP if sig != SIGHUP || !daemon => {
                        let fast = sig == SIGQUIT || (stopping && sig == SIGINT);
                        stopping = true;
                        tracing::info!(signal = %name, fast, "signal received: stopping");
                        Command::Stop { fast }
                    }
                    SIGHUP => match on_hup.as_mut() {
                        Some(f) => {
                            tracing::info!(signal = %name, "signal received: re-reading the configuration");
                            match f() {
                                Some(cmd) => cmd,
                                None => continue,
                            }
                        }
                        None => {
                            tracing::info!(signal = %name, "signal received: reloading workers");
                            Command::Reload
                        }
                    },
                    SIGUSR1 => Command::LogStatus,
                    SIGUSR2 => {
                        match herd_log::reopen() {
                            Ok(()) => tracing::info!(signal = %name, "log file reopened"),
                            Err(e) => tracing::error!(error = %e, "cannot reopen the log file"),
                        }
                        continue;
                    }
                    SIGTTIN => Command::ScaleBy(1),
                    SIGTTOU => Command::ScaleBy(-1),
                    _ => continue,
                };
                if !pool.command(cmd) {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
