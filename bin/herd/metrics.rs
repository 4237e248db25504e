//! `herd serve --metrics ADDR`: the pool's counters as Prometheus metrics at `GET /metrics`,
//! the status object at `GET /status.json` and a live dashboard that polls it at `GET /`.
//!
//! Owns nothing but a TCP listener. The pool state lives in the pool's one owner task, so
//! every scrape asks it for a [`Status`] snapshot and renders that: there is no second copy of
//! the counters to keep in step. Each scrape builds a fresh `prometheus_client` registry
//! around the snapshot (a [`Collector`] of constant metrics) and encodes it in the
//! OpenMetrics text format, which Prometheus reads natively.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `herd_events_total` | counter | `outcome`: ok, failed, timeout, crashed, protocol, rejected, shutdown |
//! | `herd_retries_total` | counter | |
//! | `herd_chunks_total` | counter | |
//! | `herd_restarts_total` | counter | `reason`: crash, timeout, protocol, start-failure, max-tasks, max-rss, reload |
//! | `herd_workers` | gauge | `state`: starting, idle, busy, draining, dying, backoff, stopped |
//! | `herd_workers_target` | gauge | |
//! | `herd_queue_depth` | gauge | |
//! | `herd_queue_depth_priority` | gauge | `priority`: each priority with queued events, and always 0 |
//! | `herd_inflight` | gauge | |
//! | `herd_submissions` | gauge | |
//! | `herd_uptime_seconds` | gauge | |
//! | `herd_task_duration_seconds` | histogram | `le` |
//! | `herd_autoscale_min`, `herd_autoscale_max` | gauge | (with `--workers MIN..MAX`) |
//! | `herd_autoscale_decisions_total` | counter | `direction`: grow, shrink |
//! | `herd_autoscale_blocked` | gauge | 1 while growth is held at `--max-pool-rss` |
//! | `herd_autoscale_penalty` | gauge | the anti-flap factor on the idle interval |
//! | `herd_pool_rss_bytes` | gauge | (with `--workers MIN..MAX`) |
//!
//! Any other path is a 404; a scrape after the pool has stopped is a 503.
//!
//! Nothing here is authenticated: the listener is for trusted networks. It binds loopback
//! addresses only unless the operator passes `--metrics-public`, and on loopback it answers
//! only requests whose `Host` is a loopback name, so that a web page the operator visits
//! cannot read it through DNS rebinding.
//!
//! At most `max_connections` connections are open at once (the one over is closed at once),
//! a connection idle for `idle_timeout` is closed, and so is one whose request head has not
//! arrived whole within `idle_timeout` of the server starting to wait for it, however it
//! trickles in (hyper answers it `408`). So scrapers, or anyone else who can reach the port,
//! cannot take the descriptors the pool needs to restart workers, nor hold the slots a scrape
//! needs for longer than that.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use herd_supervisor::status::{Status, DURATION_BOUNDS_US};
use herd_supervisor::PoolHandle;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// The dashboard: one page with inline CSS and JavaScript that polls `status.json`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The page runs its own inline script and style and reads `status.json`, nothing else: the
/// script and style are named by hash, so that anything else inline (a script or handler
/// an injection slipped into the page) is refused.
static DASHBOARD_CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hashes(DASHBOARD, "script"),
        inline_hashes(DASHBOARD, "style"),
    )
});

/// What Prometheus expects for the OpenMetrics text format `prometheus_client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every state a worker slot can report (`WorkerStatus::state`). All are exported, at 0 when
/// no worker is in them, so that a series does not vanish when its last worker leaves it.
const WORKER_STATES: [&str; 7] = [
    "starting", "idle", "busy", "draining", "dying", "backoff", "stopped",
];

/// Where `--metrics` listens, as `HOST:PORT` (resolved when bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsAddr(String);

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `--metrics`: `HOST:PORT` with a host name or an address (an IPv6 one in brackets), or a
/// bare `PORT` or `:PORT`, which means the loopback address.
pub fn parse_addr(s: &str) -> Result<MetricsAddr, String> {
    let t = s.trim();
    let bad =
        |why: &str| format!("`{s}` is not a metrics address ({why}); use HOST:PORT, PORT or :PORT");
    let port = |p: &str| p.parse::<u16>().map_err(|_| bad("bad port"));
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(MetricsAddr(addr.to_string()));
    }
    let Some((host, p)) = t.rsplit_once(':') else {
        return Ok(MetricsAddr(format!("127.0.0.1:{}", port(t)?)));
    };
    let p = port(p)?;
    if host.is_empty() {
        return Ok(MetricsAddr(format!("127.0.0.1:{p}")));
    }
    if host.contains(':') || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(bad("an IPv6 address needs brackets, like [::1]:9187"));
    }
    Ok(MetricsAddr(format!("{host}:{p}")))
}

/// The metrics endpoint, bound but not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    max_connections: usize,
    idle_timeout: Duration,
    /// `--metrics-public`: any address and any `Host` header.
    public: bool,
}

impl MetricsServer {
    /// Binds `addr` (resolving a host name), so that a bad or busy address fails at
    /// start-up. Unless `public`, every address it resolves to must be a loopback one.
    ///
    /// # Errors
    /// When the address cannot be resolved or bound, or is not loopback and not `public`.
    pub async fn bind(
        addr: &MetricsAddr,
        public: bool,
        max_connections: usize,
        idle_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr.0.as_str())
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?
            .collect();
        if resolved.is_empty() {
            anyhow::bail!("cannot listen for metrics on {addr}: the name resolves to nothing");
        }
        if !public {
            if let Some(open) = resolved.iter().find(|a| !a.ip().is_loopback()) {
                anyhow::bail!(
                    "refusing to serve metrics and the dashboard on {addr} ({}): it is not a \
                     loopback address, and they have no authentication. Use a loopback \
                     address (127.0.0.1:PORT, [::1]:PORT, or just PORT) and a tunnel or a \
                     reverse proxy, or pass --metrics-public to serve them to the network",
                    open.ip()
                );
            }
        }
        let listener = TcpListener::bind(resolved.as_slice())
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot read the metrics address bound for {addr}"))?;
        Ok(Self {
            listener,
            addr,
            max_connections,
            idle_timeout,
            public,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers scrapes until dropped. Never returns: should the server itself fail, the
    /// failure is logged and the pool goes on without metrics.
    ///
    /// # Cancel safety
    /// Dropping the future closes the listener; scrapes in progress are abandoned.
    pub async fn serve(self, pool: PoolHandle) {
        let mut app = axum::Router::new()
            .route("/metrics", axum::routing::get(scrape))
            .route("/status.json", axum::routing::get(status_json))
            .route("/", axum::routing::get(dashboard))
            .with_state(pool);
        if !self.public {
            app = app.layer(axum::middleware::from_fn(loopback_host));
        }
        let mut listener = Capped {
            listener: self.listener,
            slots: Arc::new(Semaphore::new(self.max_connections.max(1))),
            max: self.max_connections,
            idle: self.idle_timeout,
            full: false,
            failing: false,
        };
        // The idle timer of `IdleStream` restarts on every byte, so a head sent a byte at a
        // time would hold its slot for ever: hyper's own deadline on the head bounds it.
        // HTTP/1 only (what Prometheus and browsers speak here), with no upgrades.
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.idle_timeout);
        // Owned here, so that dropping `serve` ends the connections too.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
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

/// The metrics listener: a cap on open connections and an idle timeout on each.
struct Capped {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    idle: Duration,
    /// Conditions logged when they begin, not once per connection.
    full: bool,
    failing: bool,
}

impl Capped {
    /// The next connection within the cap; those over it are closed as they come.
    async fn accept(&mut self) -> (IdleStream, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => {
                    self.failing = false;
                    accepted
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, "accepting metrics connections fails");
                        self.failing = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                if !self.full {
                    tracing::warn!(
                        max = self.max,
                        "metrics connections at their limit; refusing more"
                    );
                    self.full = true;
                }
                continue;
            };
            self.full = false;
            return (IdleStream::new(stream, slot, self.idle), peer);
        }
    }
}

/// A connection that fails with `TimedOut` once neither side has moved a byte for `idle`,
/// and gives its slot back when dropped.
struct IdleStream {
    io: TcpStream,
    timer: Pin<Box<Sleep>>,
    idle: Duration,
    _slot: OwnedSemaphorePermit,
}

impl IdleStream {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit, idle: Duration) -> Self {
        Self {
            io,
            timer: Box::pin(tokio::time::sleep(idle)),
            idle,
            _slot: slot,
        }
    }

    /// Passes on a result of the stream, restarting the clock when it moved; a pending one
    /// becomes an error once the clock runs out.
    fn watch<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                let next = Instant::now() + self.idle;
                self.timer.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle metrics connection",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for IdleStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.watch(cx, polled)
    }
}

impl AsyncWrite for IdleStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

/// Outside `--metrics-public`, a request must name a loopback host (or none, as HTTP/1.0
/// may): a page on another site that rebinds its name to 127.0.0.1 is turned away.
async fn loopback_host(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if host.is_none_or(is_loopback_host) {
        return next.run(req).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        "herd: this listener answers loopback host names only (see --metrics-public)\n",
    )
        .into_response()
}

/// `localhost`, `127.0.0.1`, `[::1]`… with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The CSP sources that allow each `<tag>` element of `page` by the SHA-256 of its content
/// (`'sha256-…'`, space-separated), or `'none'` when it has none.
fn inline_hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut sources = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        // `<style>` or `<style media=…>`, not `<styles>`.
        if !rest.starts_with(|c: char| c == '>' || c.is_ascii_whitespace()) {
            continue;
        }
        let Some(start) = rest.find('>') else { break };
        let Some(len) = rest[start + 1..].find(&close) else {
            break;
        };
        // The browser hashes the text as parsed, and HTML parsing turns CRLF and CR into LF.
        let text = rest[start + 1..start + 1 + len]
            .replace("\r\n", "\n")
            .replace('\r', "\n");
        let digest = Sha256::digest(text.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        sources.push(format!("'sha256-{b64}'"));
        rest = &rest[start + 1 + len + close.len()..];
    }
    if sources.is_empty() {
        return "'none'".to_string();
    }
    sources.join(" ")
}

/// `GET /`: the dashboard.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// `GET /status.json`: the object `herd status --json` prints.
async fn status_json(State(pool): State<PoolHandle>) -> Response {
    let Some(status) = pool.status().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "herd: the pool has stopped\n",
        )
            .into_response();
    };
    match serde_json::to_string(&status) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the status object");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `GET /metrics`.
async fn scrape(State(pool): State<PoolHandle>) -> Response {
    let Some(status) = pool.status().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "herd: the pool has stopped\n",
        )
            .into_response();
    };
    match render(status) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The snapshot in the OpenMetrics text format.
fn render(status: Status) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("herd");
    registry.register_collector(Box::new(Snapshot(status)));
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)?;
    Ok(body)
}

/// One [`Status`], exported as constant metrics.
#[derive(Debug)]
struct Snapshot(Status);

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;

        // Counters: the encoder appends `_total`.
        let mut m = enc.encode_descriptor(
            "events",
            "Final records, by outcome: ok or the error kind",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in &s.totals {
            ConstCounter::new(*n).encode(m.encode_family(&[("outcome", outcome.as_ref())])?)?;
        }
        let m = enc.encode_descriptor(
            "retries",
            "Retries after retryable handler errors",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.retries).encode(m)?;
        let m = enc.encode_descriptor(
            "chunks",
            "Chunk lines (partial results) written, every attempt counted",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.chunks).encode(m)?;
        let mut m = enc.encode_descriptor(
            "restarts",
            "Worker replacements, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &s.restarts {
            ConstCounter::new(*n).encode(m.encode_family(&[("reason", reason.as_ref())])?)?;
        }

        // Gauges.
        let mut m =
            enc.encode_descriptor("workers", "Worker slots, by state", None, MetricType::Gauge)?;
        let mut states = WORKER_STATES.to_vec();
        for w in &s.workers {
            if !states.contains(&w.state.as_ref()) {
                states.push(&w.state);
            }
        }
        for state in states {
            let n = s.workers.iter().filter(|w| w.state == state).count();
            ConstGauge::new(n as u64).encode(m.encode_family(&[("state", state)])?)?;
        }
        let gauges: [(&str, &str, u64); 5] = [
            (
                "workers_target",
                "Workers the pool is scaled to",
                s.target_workers as u64,
            ),
            (
                "queue_depth",
                "Accepted events waiting for a worker, retries in backoff included",
                s.queued as u64,
            ),
            ("inflight", "Events held by workers", s.inflight as u64),
            ("submissions", "Open submissions", s.submissions as u64),
            (
                "breaker_open",
                "1 while the circuit breaker is open: workers keep dying after their handshake",
                u64::from(s.breaker.is_some()),
            ),
        ];
        for (name, help, v) in gauges {
            ConstGauge::new(v).encode(enc.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        // The default priority always, so that a pool without priorities has the series too.
        let mut by_priority = s.queued_by_priority.clone();
        by_priority.entry(0).or_insert(0);
        let mut m = enc.encode_descriptor(
            "queue_depth_priority",
            "Accepted events waiting for a worker, by priority (higher runs first)",
            None,
            MetricType::Gauge,
        )?;
        for (p, n) in by_priority {
            let label = p.to_string();
            ConstGauge::new(n as u64).encode(m.encode_family(&[("priority", label.as_str())])?)?;
        }
        let m = enc.encode_descriptor(
            "uptime",
            "Time since the pool started",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.uptime_secs).encode(m)?;

        // Sources outside the pool (a broker consumer): connection state and their numbers.
        if !s.sources.is_empty() {
            let mut m = enc.encode_descriptor(
                "source_connected",
                "Whether an event source's connection is up (intake pauses while it is not)",
                None,
                MetricType::Gauge,
            )?;
            for src in &s.sources {
                let up = u64::from(src.connected);
                ConstGauge::new(up).encode(m.encode_family(&[("source", src.name.as_str())])?)?;
            }
            let mut names: Vec<&String> = s.sources.iter().flat_map(|x| x.numbers.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let metric = format!("source_{name}");
                let mut m = enc.encode_descriptor(
                    &metric,
                    "An event source's own number (see the README, Beyond one machine)",
                    None,
                    MetricType::Gauge,
                )?;
                for src in &s.sources {
                    if let Some(&v) = src.numbers.get(name) {
                        ConstGauge::new(v)
                            .encode(m.encode_family(&[("source", src.name.as_str())])?)?;
                    }
                }
            }
        }

        if let Some(a) = &s.autoscale {
            let mut m = enc.encode_descriptor(
                "autoscale_decisions",
                "Autoscaling decisions, by direction",
                None,
                MetricType::Counter,
            )?;
            for (direction, n) in [("grow", a.grows), ("shrink", a.shrinks)] {
                ConstCounter::new(n).encode(m.encode_family(&[("direction", direction)])?)?;
            }
            let gauges: [(&str, &str, u64); 4] = [
                (
                    "autoscale_min",
                    "Fewest workers the pool autoscales to",
                    a.min as u64,
                ),
                (
                    "autoscale_max",
                    "Most workers the pool autoscales to",
                    a.max as u64,
                ),
                (
                    "autoscale_blocked",
                    "1 while growth is held back by the pool memory ceiling",
                    u64::from(a.blocked.is_some()),
                ),
                (
                    "autoscale_penalty",
                    "Factor on the idle interval after a shrink was followed by a grow",
                    u64::from(a.penalty),
                ),
            ];
            for (name, help, v) in gauges {
                ConstGauge::new(v).encode(enc.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            let m = enc.encode_descriptor(
                "pool_rss",
                "Sum of the workers' resident memory",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            ConstGauge::new(a.pool_rss).encode(m)?;
        }

        // The histogram: per-bucket counts go in as they are; the encoder makes them
        // cumulative. The last bucket is `+Inf`.
        let h = &s.durations;
        let buckets: Vec<(f64, u64)> = DURATION_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY))
            .enumerate()
            // `counts` stays empty until the first observation.
            .map(|(i, le)| (le, h.counts.get(i).copied().unwrap_or(0)))
            .collect();
        let mut m = enc.encode_descriptor(
            "task_duration",
            "Task durations, from dispatch (or the start of the worker's turn) to result",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(h.sum_us as f64 / 1e6, h.count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use herd_supervisor::status::{Histogram, WorkerStatus};

    use super::*;

    fn worker(index: usize, state: &'static str) -> WorkerStatus {
        WorkerStatus {
            index,
            pid: Some(100 + index as u32),
            state: state.into(),
            tasks: 0,
            restarts: 0,
            inflight: 0,
            rss: None,
            uptime_secs: None,
        }
    }

    /// A running pool with nothing in it: each test sets only the fields it renders.
    fn empty_status() -> Status {
        Status {
            pid: 1,
            uptime_secs: 0.0,
            phase: "running".into(),
            target_workers: 0,
            workers: vec![],
            queued: 0,
            queued_by_priority: BTreeMap::new(),
            inflight: 0,
            submissions: 0,
            totals: BTreeMap::new(),
            retries: 0,
            chunks: 0,
            restarts: BTreeMap::new(),
            durations: Histogram::default(),
            events: Default::default(),
            history: Default::default(),
            sources: Vec::new(),
            autoscale: None,
            breaker: None,
        }
    }

    #[test]
    fn renders_the_snapshot() {
        let mut durations = Histogram::default();
        for us in [50, 100, 101, 2_000_000, 99_000_000] {
            durations.observe(us);
        }
        let status = Status {
            uptime_secs: 1.5,
            target_workers: 3,
            workers: vec![worker(0, "idle"), worker(1, "busy"), worker(2, "idle")],
            queued: 4,
            queued_by_priority: BTreeMap::from([(-2, 1), (9, 3)]),
            inflight: 1,
            submissions: 2,
            totals: BTreeMap::from([("ok".into(), 7), ("failed".into(), 2)]),
            retries: 3,
            restarts: BTreeMap::from([("crash".into(), 1)]),
            durations,
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "# TYPE herd_events counter",
            "herd_events_total{outcome=\"ok\"} 7",
            "herd_events_total{outcome=\"failed\"} 2",
            "herd_retries_total 3",
            "herd_restarts_total{reason=\"crash\"} 1",
            "# TYPE herd_workers gauge",
            "herd_workers{state=\"idle\"} 2",
            "herd_workers{state=\"busy\"} 1",
            "herd_workers{state=\"backoff\"} 0",
            "herd_workers_target 3",
            "herd_queue_depth 4",
            "# TYPE herd_queue_depth_priority gauge",
            "herd_queue_depth_priority{priority=\"-2\"} 1",
            "herd_queue_depth_priority{priority=\"0\"} 0",
            "herd_queue_depth_priority{priority=\"9\"} 3",
            "herd_inflight 1",
            "herd_submissions 2",
            "herd_uptime_seconds 1.5",
            "# TYPE herd_task_duration_seconds histogram",
            "herd_task_duration_seconds_count 5",
            "herd_task_duration_seconds_sum 101.000251",
            "herd_task_duration_seconds_bucket{le=\"0.0001\"} 2",
            "herd_task_duration_seconds_bucket{le=\"0.00025\"} 3",
            "herd_task_duration_seconds_bucket{le=\"2.5\"} 4",
            "herd_task_duration_seconds_bucket{le=\"10.0\"} 4",
            "herd_task_duration_seconds_bucket{le=\"+Inf\"} 5",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn autoscaling_shows_bounds_decisions_and_memory() {
        let status = Status {
            target_workers: 3,
            autoscale: Some(herd_supervisor::AutoscaleStatus {
                min: 1,
                max: 8,
                target: 3,
                idle_ms: 10_000,
                penalty: 2,
                pool_rss: 3 << 20,
                max_pool_rss: None,
                blocked: Some("max-pool-rss".into()),
                grows: 4,
                shrinks: 2,
                last: None,
            }),
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "herd_workers_target 3",
            "herd_autoscale_min 1",
            "herd_autoscale_max 8",
            "herd_autoscale_decisions_total{direction=\"grow\"} 4",
            "herd_autoscale_decisions_total{direction=\"shrink\"} 2",
            "herd_autoscale_blocked 1",
            "herd_autoscale_penalty 2",
            "herd_pool_rss_bytes 3145728",
        ] {
            assert!(text.lines().any(|l| l == line), "want {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn a_stopped_pool_is_503() {
        let (pool, run) = herd_supervisor::pool(herd_supervisor::PoolConfig::new(["true"]));
        // Never polled: the pool never runs, as after it has stopped.
        drop(run);
        assert_eq!(
            scrape(State(pool)).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn metrics_addresses() {
        let ok = |s: &str| parse_addr(s).unwrap_or_else(|e| panic!("{s}: {e}")).0;
        assert_eq!(ok("9191"), "127.0.0.1:9191");
        assert_eq!(ok(":9191"), "127.0.0.1:9191");
        assert_eq!(ok("localhost:9191"), "localhost:9191");
        assert_eq!(ok("0.0.0.0:80"), "0.0.0.0:80");
        assert_eq!(ok("[::1]:9191"), "[::1]:9191");
        assert_eq!(ok("metrics.internal:0"), "metrics.internal:0");
        for bad in ["", "host:", "host:99999", "::1:80", ":x", "a b:1"] {
            assert!(parse_addr(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "localhost:9187",
            "LOCALHOST.",
            "app.localhost:1",
            "127.0.0.1",
            "127.3.2.1:80",
            "[::1]:9187",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok} refused");
        }
        for bad in [
            "evil.example",
            "evil.example:9187",
            "10.0.0.1:80",
            "[::2]:1",
            "localhost.evil.example",
            "",
            "[",
        ] {
            assert!(!is_loopback_host(bad), "{bad} accepted");
        }
    }

    #[test]
    fn the_dashboard_is_small_and_self_contained() {
        assert!(DASHBOARD.len() < 16 * 1024, "{} bytes", DASHBOARD.len());
        // No CDN: the machines herd runs on often have no internet.
        assert!(!DASHBOARD.contains("src=\"http"), "an external script");
        assert!(!DASHBOARD.contains("href=\"http"), "an external link");
    }

    #[test]
    fn the_policy_names_each_inline_block_by_hash() {
        // Known digests (`printf 'alert(1)' | sha256sum`, in base64); CRLF is hashed as LF.
        let page = "<style>p{}</style><script>alert(1)</script><styles>x</styles>\
                    <script type=module>a\r\nb</script>";
        assert_eq!(
            inline_hashes(page, "script"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI=' \
             'sha256-fhj3NzEbLcOy8mndeDlrA1HxT7Zu+oefdoyyMYGIPHg='"
        );
        assert_eq!(inline_hashes(page, "style").matches("'sha256-").count(), 1);
        assert_eq!(inline_hashes("<p>", "script"), "'none'");
        // The dashboard: one script and one style, and no 'unsafe-inline' anywhere.
        for tag in ["script", "style"] {
            assert_eq!(
                inline_hashes(DASHBOARD, tag).matches("'sha256-").count(),
                DASHBOARD.matches(&format!("<{tag}>")).count(),
                "{tag}"
            );
        }
        assert!(
            !DASHBOARD_CSP.contains("unsafe-inline"),
            "{}",
            *DASHBOARD_CSP
        );
        // Inline `style="…"` attributes would need 'unsafe-inline' (or 'unsafe-hashes').
        assert!(!DASHBOARD.contains(" style="), "an inline style attribute");
    }

    #[test]
    fn sources_show_their_connection_and_numbers() {
        let status = Status {
            target_workers: 1,
            workers: vec![worker(0, "idle")],
            submissions: 1,
            sources: vec![herd_supervisor::SourceStatus {
                name: "jetstream".into(),
                connected: false,
                detail: String::new(),
                numbers: BTreeMap::from([("acked".to_string(), 5), ("held".to_string(), 2)]),
            }],
            ..empty_status()
        };
        let text = render(status).expect("a String never fails to take writes");
        for line in [
            "herd_source_connected{source=\"jetstream\"} 0",
            "herd_source_acked{source=\"jetstream\"} 5",
            "herd_source_held{source=\"jetstream\"} 2",
        ] {
            assert!(text.contains(line), "want {line:?} in\n{text}");
        }
    }

    #[test]
    fn an_empty_histogram_has_every_bucket() {
        let text = render(empty_status()).expect("a String never fails to take writes");
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("herd_task_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, DURATION_BOUNDS_US.len() + 1, "{text}");
        assert!(text.contains("herd_task_duration_seconds_bucket{le=\"+Inf\"} 0"));
    }
}
