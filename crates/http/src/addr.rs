//! Where the listener binds: `HOST:PORT`, `PORT` or `:PORT`, checked before any resolution.

use std::net::SocketAddr;
use std::str::FromStr;

/// Where the metrics listener binds, as `HOST:PORT` (the host is resolved by [`Server::bind`]).
///
/// Parsed from `HOST:PORT` with a host name or an address (an IPv6 one in brackets), or a
/// bare `PORT` or `:PORT`, which means the loopback address `127.0.0.1`.
///
/// [`Server::bind`]: crate::Server::bind
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(String);

impl ListenAddr {
    /// `HOST:PORT`, as [`tokio::net::lookup_host`] takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string that is not a [`ListenAddr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a metrics address ({why}); use HOST:PORT, PORT or :PORT")]
pub struct AddrError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        let t = s.trim();
        let bad = |why: &'static str| AddrError {
            input: s.to_string(),
            why,
        };
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad("bad port"));
        if let Ok(addr) = t.parse::<SocketAddr>() {
            return Ok(Self(addr.to_string()));
        }
        let Some((host, p)) = t.rsplit_once(':') else {
            return Ok(Self(format!("127.0.0.1:{}", port(t)?)));
        };
        let p = port(p)?;
        if host.is_empty() {
            return Ok(Self(format!("127.0.0.1:{p}")));
        }
        if host.contains(':') || host.contains('/') || host.contains(char::is_whitespace) {
            return Err(bad("an IPv6 address needs brackets, like [::1]:9187"));
        }
        Ok(Self(format!("{host}:{p}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses() {
        let ok = |s: &str| {
            s.parse::<ListenAddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
                .0
        };
        assert_eq!(ok("9191"), "127.0.0.1:9191");
        assert_eq!(ok(":9191"), "127.0.0.1:9191");
        assert_eq!(ok("localhost:9191"), "localhost:9191");
        assert_eq!(ok("0.0.0.0:80"), "0.0.0.0:80");
        assert_eq!(ok("[::1]:9191"), "[::1]:9191");
        assert_eq!(ok("metrics.internal:0"), "metrics.internal:0");
        for bad in ["", "host:", "host:99999", "::1:80", ":x", "a b:1"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
