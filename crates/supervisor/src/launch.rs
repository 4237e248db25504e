//! How worker processes are launched: as which user, under which resource limits and nice
//! level, with which environment. Everything is resolved here, before any fork: the child
//! only makes system calls on memory prepared in advance (see `process::spawn_worker`).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Group, Uid, User};

/// Variables a worker always gets from herd, whatever the environment options say.
pub const PROTOCOL_ENV: [&str; 4] = [
    herd_proto::ENV_SOCKET,
    herd_proto::ENV_TOKEN,
    herd_proto::ENV_WORKER,
    herd_proto::ENV_MAX_FRAME,
];

/// `PATH` for workers under [`Launch::clear_env`] when herd itself has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How every worker process of a pool is started. The default changes nothing: workers run as
/// herd's user, with herd's limits (minus herd's own descriptor headroom) and environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// Run workers as this user (herd must be root to switch).
    pub user: Option<Identity>,
    /// Resource limits set in the child before exec.
    pub limits: Limits,
    /// Nice level (-20 to 19) set in the child before exec.
    pub nice: Option<i32>,
    /// Start from an empty environment (PHP-FPM's `clear_env`) instead of herd's: workers get
    /// only `PATH`, `HOME`, `LANG` (and `USER`/`LOGNAME` with a user), [`Launch::env`] and the
    /// protocol variables.
    pub clear_env: bool,
    /// Variables set for every worker (after the inherited or cleared environment).
    pub env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// One log line with the settings, when any is set (`--env` values may be secrets: only
    /// their names are logged).
    pub(crate) fn log(&self, socket_dir: &Path) {
        if self.user.is_none()
            && self.limits == Limits::default()
            && self.nice.is_none()
            && !self.clear_env
            && self.env.is_empty()
        {
            return;
        }
        let names: Vec<String> = self
            .env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        tracing::info!(
            user = self.user.as_ref().map(|u| u.name.as_str()),
            uid = self.user.as_ref().map(|u| u.uid),
            gid = self.user.as_ref().map(|u| u.gid),
            socket_dir = %socket_dir.display(),
            limit_as = self.limits.address_space,
            limit_nofile = self.limits.open_files,
            limit_core = self.limits.core,
            limit_cpu_secs = self.limits.cpu.map(|d| d.as_secs()),
            nice = self.nice,
            clear_env = self.clear_env,
            env = ?names,
            "worker launch settings"
        );
    }
}

/// Resource limits for workers; each sets the soft and hard limit (a worker cannot raise it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_AS`: bytes of address space. A runaway allocation fails instead of pushing the
    /// machine into the OOM killer.
    pub address_space: Option<u64>,
    /// `RLIMIT_NOFILE`: open descriptors.
    pub open_files: Option<u64>,
    /// `RLIMIT_CORE`: bytes of a core dump (0: none).
    pub core: Option<u64>,
    /// `RLIMIT_CPU`: CPU time over the process's whole life. SIGXCPU at the limit, SIGKILL a
    /// second later.
    pub cpu: Option<Duration>,
}

/// A resolved user (and group) that workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's name (or its uid, for a uid with no passwd entry).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
    /// The user's home directory (`/` when unknown): the worker's `HOME`.
    pub home: PathBuf,
}

impl Identity {
    /// Looks up `user` (a name or a numeric uid) and `group` (a name or a numeric gid; default:
    /// the user's primary group). A numeric uid with no passwd entry needs `group`.
    ///
    /// # Errors
    /// The user or group does not exist or cannot be looked up.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Self, IdentityError> {
        let entry = lookup_user(user)?;
        let gid = match group {
            Some(g) => lookup_group(g)?,
            None => match &entry {
                Some(u) => u.gid.as_raw(),
                None => return Err(IdentityError::GroupNeeded(user.to_string())),
            },
        };
        let Some(u) = entry else {
            // A bare uid (common in containers): no name, no supplementary groups.
            let uid = user
                .parse()
                .map_err(|_| IdentityError::NoUser(user.to_string()))?;
            return Ok(Self {
                name: user.to_string(),
                uid,
                gid,
                groups: vec![gid],
                home: PathBuf::from("/"),
            });
        };
        let cname = CString::new(u.name.as_bytes())
            .map_err(|_| IdentityError::BadName(user.to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, Gid::from_raw(gid))
            .map_err(|source| IdentityError::Groups {
                user: u.name.clone(),
                source,
            })?
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Ok(Self {
            name: u.name,
            uid: u.uid.as_raw(),
            gid,
            groups,
            home: u.dir,
        })
    }

    /// Whether this user may search (traverse) every directory on the way to `dir`, `dir`
    /// included; the first one it may not, if any.
    pub fn blocked_at(&self, dir: &Path) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        if self.uid == 0 {
            return None;
        }
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        dir.ancestors()
            .find(|d| {
                let Ok(m) = std::fs::metadata(d) else {
                    return true;
                };
                let bit = if m.uid() == self.uid {
                    0o100
                } else if self.groups.contains(&m.gid()) || m.gid() == self.gid {
                    0o010
                } else {
                    0o001
                };
                m.mode() & bit == 0
            })
            .map(Path::to_path_buf)
    }
}

/// Why [`Identity::resolve`] failed. The look-up's own error is the
/// [`source`](std::error::Error::source), not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No such user name.
    #[error("no user {0:?}")]
    NoUser(String),
    /// No such group name.
    #[error("no group {0:?}")]
    NoGroup(String),
    /// A numeric uid without a passwd entry, and no group given.
    #[error("uid {0} has no entry in the user database; give its group with --group")]
    GroupNeeded(String),
    /// A user name with a NUL byte.
    #[error("bad user {0:?}")]
    BadName(String),
    /// The user database could not be read.
    #[error("cannot look up user {user:?}")]
    LookupUser {
        user: String,
        #[source]
        source: nix::Error,
    },
    /// The group database could not be read.
    #[error("cannot look up group {group:?}")]
    LookupGroup {
        group: String,
        #[source]
        source: nix::Error,
    },
    /// The user's supplementary groups could not be listed.
    #[error("cannot list the groups of user {user}")]
    Groups {
        user: String,
        #[source]
        source: nix::Error,
    },
}

fn lookup_user(user: &str) -> Result<Option<User>, IdentityError> {
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(user),
    }
    .map_err(|source| IdentityError::LookupUser {
        user: user.to_string(),
        source,
    })?;
    if found.is_none() && user.parse::<u32>().is_err() {
        return Err(IdentityError::NoUser(user.to_string()));
    }
    Ok(found)
}

fn lookup_group(group: &str) -> Result<u32, IdentityError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(IdentityError::NoGroup(group.to_string())),
        Err(source) => Err(IdentityError::LookupGroup {
            group: group.to_string(),
            source,
        }),
    }
}

/// Why a name cannot be set with `--env`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvNameError {
    /// Empty, or holds `=` or NUL.
    #[error("{0:?} is not a variable name")]
    NotAName(OsString),
    /// One of [`PROTOCOL_ENV`].
    #[error("{0} is set by herd for each worker and cannot be overridden")]
    Reserved(&'static str),
}

/// Whether `name` may be set with `--env`: not empty, no `=` or NUL, and not one of the
/// variables the protocol needs.
///
/// # Errors
/// Why it may not.
pub fn check_env_name(name: &OsStr) -> Result<(), EnvNameError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.contains(&b'=') || bytes.contains(&0) {
        return Err(EnvNameError::NotAName(name.to_os_string()));
    }
    if let Some(reserved) = PROTOCOL_ENV.iter().find(|p| p.as_bytes() == bytes) {
        return Err(EnvNameError::Reserved(reserved));
    }
    Ok(())
}

/// Whether herd seems to run in a container (where root is the usual user and the container is
/// the isolation boundary) or in a user namespace (where root is not the host's root).
/// `HERD_CONTAINER=1` or `=0` overrides the guess.
pub fn in_container() -> bool {
    if let Some(v) = std::env::var_os("HERD_CONTAINER") {
        return v != "0" && !v.is_empty();
    }
    let marker = ["/.dockerenv", "/run/.containerenv"]
        .iter()
        .any(|p| Path::new(p).exists());
    let env = std::env::var_os("container").is_some_and(|v| !v.is_empty())
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    // The host's root maps "0 0 4294967295"; anything else is a user namespace.
    let userns = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().take(3).collect();
        f.len() == 3 && f != ["0", "0", "4294967295"]
    });
    marker || env || userns
}

/// Hides this process's memory and environment from workers of its own user, which could
/// otherwise read its secrets (such as a NATS token) through `/proc/<pid>/environ`, `mem` or
/// ptrace, whatever `clear_env` hides from their own environment. A process that is not
/// dumpable keeps its `/proc` files root's and refuses ptrace to all but root; workers are
/// dumpable again once they exec. (It also means this process leaves no core dump.) A failure
/// is logged, not returned: the pool runs either way.
pub fn hide_from_workers() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot hide herd's memory from its workers (PR_SET_DUMPABLE)");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn users_resolve_by_name_and_uid() {
        let root = Identity::resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(Identity::resolve("0", None).unwrap(), root);
        let bare = Identity::resolve("4000000", Some("4000001")).unwrap();
        assert_eq!(
            (bare.uid, bare.gid, bare.groups),
            (4000000, 4000001, vec![4000001])
        );
        let err = Identity::resolve("4000000", None).unwrap_err();
        assert!(matches!(&err, IdentityError::GroupNeeded(u) if u == "4000000"));
        assert!(err.to_string().contains("--group"));
        let err = Identity::resolve("no-such-user-herd", None).unwrap_err();
        assert!(matches!(&err, IdentityError::NoUser(u) if u == "no-such-user-herd"));
        assert_eq!(err.to_string(), "no user \"no-such-user-herd\"");
        let err = Identity::resolve("root", Some("no-such-group-herd")).unwrap_err();
        assert!(matches!(&err, IdentityError::NoGroup(g) if g == "no-such-group-herd"));
        assert!(err.to_string().contains("no group"));
    }

    #[test]
    fn env_names_are_checked() {
        assert!(check_env_name(OsStr::new("A_B")).is_ok());
        assert_eq!(
            check_env_name(OsStr::new("")),
            Err(EnvNameError::NotAName(OsString::new()))
        );
        assert_eq!(
            check_env_name(OsStr::new("A=B")).unwrap_err().to_string(),
            "\"A=B\" is not a variable name"
        );
        let err = check_env_name(OsStr::new("HERD_SOCKET")).unwrap_err();
        assert_eq!(err, EnvNameError::Reserved("HERD_SOCKET"));
        assert!(err.to_string().contains("set by herd"));
    }
}
