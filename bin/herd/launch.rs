//! Worker options for least privilege: the user workers run as, their resource limits, nice
//! level and environment (shared by `run` and `serve`, so reloads and restarts get them too).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use herd_supervisor::launch::{check_env_name, in_container};
use herd_supervisor::{Identity, Launch, Limits};

/// The help heading of the resource limits (the other options go under "Workers").
const LIMITS: &str = "Worker limits";

/// The smallest `--limit-as`: below it even the dynamic loader has no room.
const MIN_ADDRESS_SPACE: usize = 16 << 20;

#[derive(Debug, Args)]
#[command(next_help_heading = "Workers")]
pub struct LaunchArgs {
    /// Run workers as USER (a name or a uid); herd must run as root. Their socket directory
    /// belongs to USER alone (mode 0700).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Run workers with GROUP (a name or a gid) as their group [default: USER's primary
    /// group].
    #[arg(long, value_name = "GROUP", requires = "user")]
    group: Option<String>,
    /// Let workers run as root. Without it, herd running as root refuses to start workers as
    /// root, unless it runs in a container (HERD_CONTAINER=1/0 overrides the guess) and no
    /// --user was given. Also HERD_ALLOW_ROOT=1.
    #[arg(long, env = "HERD_ALLOW_ROOT", hide_env = true,
          value_parser = clap::builder::BoolishValueParser::new(),
          action = clap::ArgAction::SetTrue)]
    allow_root: bool,
    /// Most address space per worker (e.g. 512M, 2G): a runaway allocation fails in the
    /// worker instead of exhausting the machine's memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_address_space,
          help_heading = LIMITS)]
    limit_as: Option<usize>,
    /// Most open descriptors per worker [default: the limit herd started with].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(16..=1 << 30),
          help_heading = LIMITS)]
    limit_nofile: Option<u64>,
    /// Largest core dump per worker; 0 turns core dumps off.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size,
          help_heading = LIMITS)]
    limit_core: Option<usize>,
    /// CPU time a worker process may use over its whole life (e.g. 10m): then SIGXCPU, and
    /// SIGKILL a second later; its task is recorded as a crash.
    #[arg(long, value_name = "DUR", value_parser = crate::parse_positive_duration,
          help_heading = LIMITS)]
    limit_cpu: Option<Duration>,
    /// Nice level of workers, -20 (favoured) to 19 (background); below 0 needs root.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: Option<i32>,
    /// Set KEY=VALUE in every worker's environment (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(OsString, OsString)>,
    /// Start workers from an empty environment instead of herd's: they get only PATH, HOME,
    /// LANG (USER and LOGNAME with --user), the --env variables and herd's HERD_* ones.
    #[arg(long)]
    clear_env: bool,
}

impl LaunchArgs {
    /// The launch settings, checked against who herd runs as.
    pub fn resolve(self) -> anyhow::Result<Launch> {
        let euid = nix::unistd::geteuid().as_raw();
        let user = match &self.user {
            Some(name) => {
                let id = Identity::resolve(name, self.group.as_deref()).context("--user")?;
                if euid == 0 {
                    Some(id)
                } else if id.uid == euid && self.group.is_none() {
                    // Already that user: nothing to switch.
                    None
                } else {
                    bail!(
                        "--user {name} needs herd to run as root (it runs as uid {euid}); \
                         start herd as {name} instead"
                    );
                }
            }
            None => None,
        };
        let worker_uid = user.as_ref().map_or(euid, |u| u.uid);
        if worker_uid == 0 && !self.allow_root && (user.is_some() || !in_container()) {
            bail!(
                "refusing to run workers as root: pass --user USER to run them as an \
                 unprivileged user (e.g. --user nobody), or --allow-root if they must run as root"
            );
        }
        if let Some(n) = self.limit_nofile {
            let (_, hard) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .context("cannot read the descriptor limit")?;
            if euid != 0 && n > hard {
                bail!("--limit-nofile {n} is above the hard limit herd may grant ({hard})");
            }
        }
        if self.nice.is_some_and(|n| n < 0) && euid != 0 {
            bail!("--nice below 0 needs herd to run as root");
        }
        Ok(Launch {
            user,
            limits: Limits {
                address_space: self.limit_as.map(|b| b as u64),
                open_files: self.limit_nofile,
                core: self.limit_core.map(|b| b as u64),
                cpu: self.limit_cpu,
            },
            nice: self.nice,
            clear_env: self.clear_env,
            env: self.env,
        })
    }
}

fn parse_address_space(s: &str) -> Result<usize, String> {
    let n = crate::parse_size(s)?;
    if n < MIN_ADDRESS_SPACE {
        return Err(format!(
            "`{s}` is below 16MiB, too little to start a program"
        ));
    }
    Ok(n)
}

fn parse_env(s: &str) -> Result<(OsString, OsString), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("`{s}` is not KEY=VALUE"));
    };
    let key = OsString::from(key);
    check_env_name(&key).map_err(|e| e.to_string())?;
    Ok((key, OsString::from(value)))
}
