//! `herd serve`: the pool as a long-lived daemon behind a control socket.

use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use herd_supervisor::control::{ControlLimits, ControlSocket, Deliveries};

use crate::{signals, PoolArgs};
use herd_http::{Exposure, ListenAddr};

/// Help headings of the daemon's own options (the pool's come with `PoolArgs`).
const METRICS: &str = "Metrics & dashboard";
const CONNECTIONS: &str = "Connection limits (control socket and metrics)";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The control socket (created with mode 0600) that `herd submit`, `herd status` and
    /// `herd ctl` talk to.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Write the daemon's pid to FILE (removed on exit).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Stop at once (as on QUIT) when process PID, herd's parent, exits, however it exits
    /// (SIGKILL included): a daemon owned by a program, as Python's `herd.serve()` starts it
    /// with its own pid. herd does not start if PID is not its parent.
    #[arg(long, value_name = "PID")]
    die_with_parent: Option<u32>,
    /// Serve Prometheus metrics at http://ADDR/metrics, a live dashboard at http://ADDR/ and
    /// the status object at http://ADDR/status.json. ADDR is HOST:PORT, with a host name or
    /// an address (e.g. 127.0.0.1:9187, localhost:9187, [::1]:9187), or a bare PORT or
    /// :PORT for the loopback address. Loopback only, unless --metrics-public.
    #[arg(long, value_name = "ADDR", value_parser = str::parse::<ListenAddr>,
          help_heading = METRICS)]
    metrics: Option<ListenAddr>,
    /// Let --metrics listen on an address that is not loopback (e.g. 0.0.0.0:9187), and
    /// answer any Host. Metrics and dashboard have no authentication: trusted networks only.
    #[arg(long, requires = "metrics", help_heading = METRICS)]
    metrics_public: bool,
    /// Most control connections open at once, and most metrics connections. A control
    /// connection over the cap waits for its turn (unaccepted, in the listen backlog); a
    /// metrics connection over it is refused at once. Lowered if the descriptor limit cannot
    /// hold it beside what the workers need.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65536), help_heading = CONNECTIONS)]
    max_connections: u32,
    /// How long a control connection that is not a submission, or a metrics connection, may
    /// sit idle before it is closed; also the most a request frame may take once begun, and
    /// an HTTP request head in all, however slowly it trickles in.
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = parse_timeout, help_heading = CONNECTIONS)]
    idle_timeout: Duration,
    /// After the pool has stopped, how long connected submitters get to read the records
    /// still owed to them. Past it the daemon gives up on those that do not read, logs how
    /// many records were not delivered, and exits with status 3.
    #[arg(long, value_name = "DUR", default_value = "10s",
          value_parser = parse_timeout)]
    delivery_timeout: Duration,
    #[command(flatten)]
    config: crate::ConfigArgs,
    #[command(flatten)]
    pub pool: PoolArgs,
    #[command(flatten)]
    brokers: BrokerArgs,
}

/// The brokers events may come from beside the control socket.
#[derive(Debug, Args)]
struct BrokerArgs {
    #[cfg(feature = "nats")]
    #[command(flatten)]
    nats: Box<crate::nats::NatsArgs>,
    #[cfg(feature = "redis")]
    #[command(flatten)]
    redis: Box<crate::redis::RedisArgs>,
}

/// The exit status of a daemon that stopped with records it could not deliver to a connected
/// submitter (one that did not read them within `--delivery-timeout`).
const EXIT_UNDELIVERED: u8 = 3;

/// After the pool has stopped, how long broker intake gets to settle what it holds (its last
/// records' PubAcks and acknowledgements); what is left comes back after the ack wait (or
/// is claimed after the claim time).
const INTAKE_SETTLE: Duration = Duration::from_secs(15);

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match crate::parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}` is zero: connections need some time")),
        d => Ok(d),
    }
}

/// Removes the pid file when the daemon exits.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything `herd check` can check without starting: the pool's and the daemon's settings.
pub fn check(args: ServeArgs) -> anyhow::Result<herd_supervisor::PoolConfig> {
    let cfg = args.pool.config()?;
    let intake = Intake::configure(&args.brokers, cfg.retry_backoff)?;
    #[cfg(feature = "redis")]
    if let Intake::Redis(c) = intake {
        herd_redis::Redis::new(c)?;
    }
    #[cfg(not(feature = "redis"))]
    let _ = intake;
    Ok(cfg)
}

/// Where events come from beside the control socket: a broker, if any.
enum Intake {
    None,
    #[cfg(feature = "nats")]
    Nats(herd_jetstream::Config),
    #[cfg(feature = "redis")]
    Redis(herd_redis::Config),
}

impl Intake {
    fn configure(args: &BrokerArgs, retry_backoff: Duration) -> anyhow::Result<Self> {
        #[cfg(feature = "nats")]
        let nats = args.nats.config(retry_backoff)?;
        #[cfg(not(feature = "nats"))]
        let nats: Option<()> = None;
        #[cfg(feature = "redis")]
        let redis = args.redis.config(retry_backoff);
        #[cfg(not(feature = "redis"))]
        let redis: Option<()> = None;
        let _ = (args, retry_backoff);
        match (nats, redis) {
            (Some(_), Some(_)) => anyhow::bail!("give --nats or --redis, not both"),
            #[cfg(feature = "nats")]
            (Some(c), None) => Ok(Intake::Nats(c)),
            #[cfg(feature = "redis")]
            (None, Some(c)) => Ok(Intake::Redis(c)),
            _ => Ok(Intake::None),
        }
    }

    /// What the logs call it.
    fn name(&self) -> &'static str {
        match self {
            Intake::None => "no",
            #[cfg(feature = "nats")]
            Intake::Nats(_) => "JetStream",
            #[cfg(feature = "redis")]
            Intake::Redis(_) => "Redis",
        }
    }
}

/// A broker intake, ready to run.
enum Running {
    #[cfg(feature = "nats")]
    Nats(Box<herd_jetstream::JetStream>),
    #[cfg(feature = "redis")]
    Redis(Box<herd_redis::Redis>),
}

impl Running {
    async fn start(intake: Intake) -> anyhow::Result<Option<Self>> {
        Ok(match intake {
            Intake::None => None,
            #[cfg(feature = "nats")]
            Intake::Nats(c) => Some(Running::Nats(Box::new(
                herd_jetstream::JetStream::new(c).await?,
            ))),
            #[cfg(feature = "redis")]
            Intake::Redis(c) => Some(Running::Redis(Box::new(herd_redis::Redis::new(c)?))),
        })
    }

    /// Until the pool stops taking events and the intake has settled what it holds.
    #[cfg_attr(not(any(feature = "nats", feature = "redis")), allow(unused_variables))]
    async fn run(self, pool: herd_supervisor::PoolHandle) -> anyhow::Result<()> {
        match self {
            #[cfg(feature = "nats")]
            Running::Nats(js) => js.run(pool).await.map_err(anyhow::Error::from),
            #[cfg(feature = "redis")]
            Running::Redis(r) => r.run(pool).await.map_err(anyhow::Error::from),
        }
    }
}

/// Runs the daemon; `on_hup` (with `--config`) re-reads the file on HUP.
pub fn serve(args: ServeArgs, on_hup: Option<signals::OnHup>) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let cfg = args.pool.config()?;
    let intake = Intake::configure(&args.brokers, cfg.retry_backoff)?;
    let intake_name = intake.name();
    let workers = cfg.workers;
    let max_connections = herd_supervisor::control::connection_cap(
        args.max_connections as usize,
        // Descriptors for as many workers as autoscaling may start.
        cfg.max_workers(),
        if args.metrics.is_some() { 2 } else { 1 },
    );
    let limits = ControlLimits {
        // The pool's own limit (as `herd run` reads lines).
        max_line: cfg.max_line(),
        max_connections,
        idle_timeout: args.idle_timeout,
        ..ControlLimits::default()
    };
    // One thread runs everything: workers' parent-death signal is tied to the spawning thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        // Before anything is made that would have to be cleaned up.
        let parent = args
            .die_with_parent
            .map(herd_supervisor::parent::Parent::watch)
            .transpose()?;
        let control = ControlSocket::bind(&args.control)?;
        let metrics = match &args.metrics {
            Some(addr) => Some(bind_metrics(addr, args.metrics_public).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(herd_http::Server::local_addr);
        let metrics_limits = herd_http::Limits {
            max_connections,
            idle_timeout: args.idle_timeout,
        };
        let _pid_file = match &args.pid_file {
            Some(p) => {
                std::fs::write(p, format!("{}\n", std::process::id()))
                    .with_context(|| format!("cannot write pid file {}", p.display()))?;
                Some(PidFile(p.clone()))
            }
            None => None,
        };
        let broker = Running::start(intake).await?;
        let (pool, run_pool) = herd_supervisor::pool(cfg);
        signals::forward(pool.clone(), true, on_hup)?;
        let mut run_pool = pin!(run_pool);
        // The control socket takes submissions from now on (they wait for the workers): a
        // client that starts this daemon may connect before READY=1, when every worker is up
        // (herd.Executor does, so that its workers start while its first calls are made).
        notify(&[sd_notify::NotifyState::Custom("X_HERD_LISTENING=1")]);
        // Broker intake (JetStream or Redis), beside the control socket; it ends once the pool
        // stops taking events and it has settled what it holds.
        let broker_on = broker.is_some();
        let mut intake = pin!(async {
            match broker {
                Some(b) => b.run(pool.clone()).await,
                None => std::future::pending::<anyhow::Result<()>>().await,
            }
        });
        let mut intake_done = !broker_on;
        let mut intake_failed = None;
        let deliveries = Deliveries::new();
        let mut serve_control = pin!(control.serve(pool.clone(), limits, deliveries.clone()));
        let mut serve_metrics = pin!(async {
            match metrics {
                Some(m) => m.serve(pool.clone(), metrics_limits, std::future::pending()).await,
                None => std::future::pending().await,
            }
        });
        let mut ready = pin!(pool.ready());
        let mut announced = false;
        let mut parent_exited = pin!(async {
            match &parent {
                Some(p) => p.exited().await,
                None => std::future::pending().await,
            }
        });
        let mut orphaned = false;
        let result = loop {
            tokio::select! {
                r = &mut run_pool => break r,
                pids = &mut ready, if !announced => {
                    announced = true;
                    if let Some(pids) = pids {
                        tracing::info!(
                            control = %control.path().display(),
                            metrics = metrics_addr.map(tracing::field::display),
                            dashboard = metrics_addr.map(|a| format!("http://{a}/")),
                            ?pids,
                            "ready"
                        );
                        notify(&[
                            sd_notify::NotifyState::Ready,
                            sd_notify::NotifyState::Status(&format!("serving with {workers} workers")),
                        ]);
                    }
                }
                () = &mut parent_exited, if !orphaned => {
                    orphaned = true;
                    tracing::info!(parent = args.die_with_parent, "parent process exited: stopping");
                    pool.command(herd_supervisor::Command::Stop { fast: true });
                }
                () = &mut serve_control => {}
                () = &mut serve_metrics => {}
                r = &mut intake, if !intake_done => {
                    intake_done = true;
                    if let Err(e) = r {
                        tracing::error!(error = format!("{e:#}"), "{intake_name} intake cannot run; stopping");
                        intake_failed = Some(e);
                        pool.command(herd_supervisor::Command::Stop { fast: false });
                    }
                }
            }
        };
        notify(&[sd_notify::NotifyState::Stopping]);
        // The pool's last records are still on their way to the submitters; no new connection
        // is accepted meanwhile (the accept loop is no longer polled).
        let delivery_timeout = args.delivery_timeout;
        let delivered =
            tokio::spawn(async move { deliveries.finish(delivery_timeout).await });
        if !intake_done {
            // The pool's last records still need to be stored and their events acknowledged.
            match tokio::time::timeout(INTAKE_SETTLE, &mut intake).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => intake_failed = Some(e),
                Err(_) => tracing::warn!(
                    "{intake_name} intake could not settle every event in time; the rest come \
                     back to the consumer after their ack wait or claim time"
                ),
            }
        }
        let undelivered = delivered.await.unwrap_or(0);
        if let Some(e) = intake_failed {
            return Err(e);
        }
        anyhow::Ok((result?, undelivered))
    })?;
    drop(runtime);
    let (summary, undelivered) = summary;
    crate::log_summary(&summary, started.elapsed().as_secs_f64(), "stopped");
    if undelivered > 0 {
        tracing::error!(
            undelivered,
            timeout = %humantime::format_duration(args.delivery_timeout),
            "submitters did not read all their records before --delivery-timeout; \
             those records were not delivered"
        );
        return Ok(ExitCode::from(EXIT_UNDELIVERED));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--metrics ADDR` bound; off loopback only with `--metrics-public`.
async fn bind_metrics(addr: &ListenAddr, public: bool) -> anyhow::Result<herd_http::Server> {
    let exposure = if public {
        Exposure::Public
    } else {
        Exposure::Loopback
    };
    herd_http::Server::bind(addr, exposure)
        .await
        .map_err(|e| match e {
            herd_http::Error::NotLoopback { .. } => anyhow::anyhow!(
                "{e}. Use a loopback address (127.0.0.1:PORT, [::1]:PORT, or just PORT) and a \
             tunnel or a reverse proxy, or pass --metrics-public to serve them to the network"
            ),
            e => e.into(),
        })
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) how the service is doing.
fn notify(state: &[sd_notify::NotifyState]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    match send_notify(&path, state) {
        Ok(()) => {}
        // Nobody listens any more: herd.serve() stops listening once herd is ready, so its
        // STOPPING=1 finds no one. Not worth a warning on every stop.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ) =>
        {
            tracing::debug!(error = %e, "sd_notify: no listener");
        }
        Err(e) => tracing::warn!(error = %e, "sd_notify failed"),
    }
}

/// One datagram of `KEY=VALUE` lines to `path`, as sd_notify(3) does: a name starting with `@`
/// is in the abstract namespace (sd-notify 0.4 takes it for a file). Python's `herd.serve()`
/// waits for READY=1 on such a socket, which leaves no file behind whatever happens.
fn send_notify(path: &std::ffi::OsStr, state: &[sd_notify::NotifyState]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(name) = path.as_bytes().strip_prefix(b"@") else {
        return sd_notify::notify(false, state);
    };
    let msg: String = state.iter().map(|s| format!("{s}\n")).collect();
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(msg.as_bytes(), &SocketAddr::from_abstract_name(name)?)?;
    Ok(())
}
