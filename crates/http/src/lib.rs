//! herd-http: a pool's counters as Prometheus metrics at `GET /metrics`, the status object at
//! `GET /status.json` and a live dashboard that polls it at `GET /`, over HTTP/1.
//!
//! This crate owns the listener and nothing else: the HTTP server (axum routes on hyper), the
//! OpenMetrics encoding of a [`Status`] ([`openmetrics`]), the embedded dashboard page and its
//! Content-Security-Policy, and the connection limits. The pool state lives in the pool's one
//! owner task (`herd-supervisor`), so every request asks a [`StatusSource`] (a
//! [`PoolHandle`], or anything else that yields a [`Status`]) for a fresh snapshot and renders
//! that: there is no second copy of the counters to keep in step. `herd serve --metrics` is
//! this crate wired to its command line.
//!
//! ```no_run
//! # async fn run(pool: herd_supervisor::PoolHandle) -> Result<(), herd_http::Error> {
//! let addr: herd_http::ListenAddr = "127.0.0.1:9187".parse()?;
//! let server = herd_http::Server::bind(&addr, herd_http::Exposure::Loopback).await?;
//! println!("dashboard at http://{}/", server.local_addr());
//! // Until the future given resolves (here: never).
//! server
//!     .serve(pool, herd_http::Limits::default(), std::future::pending())
//!     .await;
//! # Ok(()) }
//! ```
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `herd_events_total` | counter | `outcome`: ok, failed, timeout, crashed, protocol, rejected, shutdown, cancelled, expired, deadline |
//! | `herd_retries_total` | counter | |
//! | `herd_chunks_total` | counter | |
//! | `herd_batches_total` | counter | (`Batch` frames sent, `--batch`) |
//! | `herd_restarts_total` | counter | `reason`: crash, timeout, protocol, start-failure, max-tasks, max-rss, reload, cancelled, deadline |
//! | `herd_workers` | gauge | `state`: starting, idle, busy, draining, dying, backoff, stopped |
//! | `herd_workers_target` | gauge | |
//! | `herd_queue_depth` | gauge | |
//! | `herd_queue_depth_priority` | gauge | `priority`: each priority with queued events, and always 0 |
//! | `herd_inflight` | gauge | |
//! | `herd_submissions` | gauge | |
//! | `herd_uptime_seconds` | gauge | |
//! | `herd_batch_size_mean` | gauge | mean events per `Batch` frame |
//! | `herd_task_duration_seconds` | histogram | `le` |
//! | `herd_autoscale_min`, `herd_autoscale_max` | gauge | (with `--workers MIN..MAX`) |
//! | `herd_autoscale_decisions_total` | counter | `direction`: grow, shrink |
//! | `herd_autoscale_blocked` | gauge | 1 while growth is held at `--max-pool-rss` |
//! | `herd_autoscale_penalty` | gauge | the anti-flap factor on the idle interval |
//! | `herd_pool_rss_bytes` | gauge | (with `--workers MIN..MAX`) |
//!
//! Any other path is a 404; a scrape after the pool has stopped is a 503.
//!
//! Nothing here is authenticated: the listener is for trusted networks. With
//! [`Exposure::Loopback`] it binds loopback addresses only, and answers only requests whose
//! `Host` is a loopback name, so that a web page the operator visits cannot read it through
//! DNS rebinding; [`Exposure::Public`] lifts both (`--metrics-public`).
//!
//! At most [`Limits::max_connections`] connections are open at once (the one over is closed
//! at once), a connection idle for [`Limits::idle_timeout`] is closed, and so is one whose
//! request head has not arrived whole within the idle timeout of the server starting to wait
//! for it, however it trickles in (hyper answers it `408`). So scrapers, or anyone else who
//! can reach the port, cannot take the descriptors the pool needs to restart workers, nor hold
//! the slots a scrape needs for longer than that.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use herd_supervisor::status::Status;
use herd_supervisor::PoolHandle;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

mod addr;
mod conn;
mod dashboard;
pub mod openmetrics;
mod routes;

pub use addr::{AddrError, ListenAddr};

/// Where the pool's snapshots come from: asked once per request.
pub trait StatusSource: Clone + Send + Sync + 'static {
    /// A snapshot, or `None` once the pool has stopped (answered `503`).
    fn status(&self) -> impl Future<Output = Option<Status>> + Send;
}

impl StatusSource for PoolHandle {
    fn status(&self) -> impl Future<Output = Option<Status>> + Send {
        PoolHandle::status(self)
    }
}

/// Who may reach the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Exposure {
    /// Loopback addresses only, and requests naming a loopback `Host` only.
    #[default]
    Loopback,
    /// Any address and any `Host` (`--metrics-public`): for trusted networks only.
    Public,
}

/// The listener's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once; the one over is closed as it comes.
    pub max_connections: usize,
    /// How long a connection may sit idle, and the most a request head may take in all.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// `herd serve`'s defaults: 64 connections, 10 s.
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the listener cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address does not parse.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// The host name does not resolve.
    #[error("cannot listen for metrics on {addr}")]
    Resolve {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
    /// The host name resolves to no address.
    #[error("cannot listen for metrics on {addr}: the name resolves to nothing")]
    Unresolved { addr: ListenAddr },
    /// [`Exposure::Loopback`], and the address is not a loopback one.
    #[error(
        "refusing to serve metrics and the dashboard on {addr} ({ip}): it is not a loopback \
         address, and they have no authentication"
    )]
    NotLoopback { addr: String, ip: IpAddr },
    /// The address cannot be bound (in use, not local, no permission).
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: ListenAddr,
        #[source]
        source: io::Error,
    },
    /// The bound listener cannot tell its address.
    #[error("cannot read the address of the metrics listener")]
    LocalAddr(#[source] io::Error),
}

/// The metrics endpoint, bound but not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    exposure: Exposure,
}

impl Server {
    /// Binds `addr` (resolving a host name), so that a bad or busy address fails at start-up.
    /// With [`Exposure::Loopback`], every address it resolves to must be a loopback one.
    ///
    /// # Errors
    /// When the address cannot be resolved or bound, or is not loopback and `exposure` is
    /// [`Exposure::Loopback`].
    pub async fn bind(addr: &ListenAddr, exposure: Exposure) -> Result<Self, Error> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|source| Error::Resolve {
                addr: addr.clone(),
                source,
            })?
            .collect();
        if resolved.is_empty() {
            return Err(Error::Unresolved { addr: addr.clone() });
        }
        if exposure == Exposure::Loopback {
            if let Some(open) = resolved.iter().find(|a| !a.ip().is_loopback()) {
                return Err(Error::NotLoopback {
                    addr: addr.to_string(),
                    ip: open.ip(),
                });
            }
        }
        let listener = TcpListener::bind(resolved.as_slice())
            .await
            .map_err(|source| Error::Bind {
                addr: addr.clone(),
                source,
            })?;
        Self::from_listener(listener, exposure)
    }

    /// A listener bound by the caller. With [`Exposure::Loopback`], it must be bound to a
    /// loopback address.
    ///
    /// # Errors
    /// When its address cannot be read, or is not loopback and `exposure` is
    /// [`Exposure::Loopback`].
    pub fn from_listener(listener: TcpListener, exposure: Exposure) -> Result<Self, Error> {
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        if exposure == Exposure::Loopback && !addr.ip().is_loopback() {
            return Err(Error::NotLoopback {
                addr: addr.to_string(),
                ip: addr.ip(),
            });
        }
        Ok(Self {
            listener,
            addr,
            exposure,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests until `shutdown` resolves. A failure of the listener itself (such as
    /// running out of descriptors) is logged and retried: the pool goes on meanwhile.
    ///
    /// # Cancel safety
    /// Dropping the future, like `shutdown` resolving, closes the listener and abandons the
    /// requests in progress.
    pub async fn serve<S: StatusSource>(
        self,
        source: S,
        limits: Limits,
        shutdown: impl Future<Output = ()>,
    ) {
        let app = routes::router(source, self.exposure);
        let mut listener =
            conn::Capped::new(self.listener, limits.max_connections, limits.idle_timeout);
        // The idle timer of `IdleStream` restarts on every byte, so a head sent a byte at a
        // time would hold its slot for ever: hyper's own deadline on the head bounds it.
        // HTTP/1 only (what Prometheus and browsers speak here), with no upgrades.
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout);
        // Owned here, so that returning ends the connections too.
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                (io, peer) = listener.accept() => {
                    let conn = http.serve_connection(
                        TokioIo::new(io),
                        TowerToHyperService::new(app.clone()),
                    );
                    connections.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "metrics connection failed");
                        }
                    });
                }
                Some(_) = connections.join_next() => {}
            }
        }
    }
}

/// Serves `source` on a listener the caller bound, until `shutdown` resolves:
/// [`Server::from_listener`] then [`Server::serve`].
///
/// # Errors
/// As [`Server::from_listener`]; once serving, nothing fails.
pub async fn serve<S: StatusSource>(
    listener: TcpListener,
    source: S,
    exposure: Exposure,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    Server::from_listener(listener, exposure)?
        .serve(source, limits, shutdown)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_off_loopback_is_refused_unless_public() {
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        let listener = TcpListener::bind((any, 0)).await.expect("bind 0.0.0.0:0");
        assert!(matches!(
            Server::from_listener(listener, Exposure::Loopback),
            Err(Error::NotLoopback { .. })
        ));
        let listener = TcpListener::bind((any, 0)).await.expect("bind 0.0.0.0:0");
        assert!(Server::from_listener(listener, Exposure::Public).is_ok());
    }

    #[tokio::test]
    async fn serving_ends_when_shutdown_resolves() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let (pool, _run) = herd_supervisor::pool(herd_supervisor::PoolConfig::new(["true"]));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(
            listener,
            pool,
            Exposure::Loopback,
            Limits::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        stop.send(()).expect("the server waits for it");
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve returns once shut down")
            .expect("serve does not panic")
            .expect("a loopback listener is served");
    }
}
