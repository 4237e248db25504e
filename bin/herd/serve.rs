//! `herd serve`: the pool as a long-lived daemon behind a control socket.

use std::path::PathBuf;
use std::pin::pin;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use herd_supervisor::control::ControlSocket;

use crate::metrics::MetricsServer;
use crate::{signals, PoolArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The control socket (created with mode 0600) that `herd submit`, `herd status` and
    /// `herd ctl` talk to.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Write the daemon's pid to FILE (removed on exit).
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9187) at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Removes the pid file when the daemon exits.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let cfg = args.pool.config()?;
    let workers = cfg.workers;
    // One thread runs everything: workers' parent-death signal is tied to the spawning thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        let control = ControlSocket::bind(&args.control)?;
        let metrics = match args.metrics {
            Some(addr) => Some(MetricsServer::bind(addr).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(MetricsServer::local_addr);
        let _pid_file = match &args.pid_file {
            Some(p) => {
                std::fs::write(p, format!("{}\n", std::process::id()))
                    .with_context(|| format!("cannot write pid file {}", p.display()))?;
                Some(PidFile(p.clone()))
            }
            None => None,
        };
        let (pool, run_pool) = herd_supervisor::pool(cfg);
        signals::forward(pool.clone(), true)?;
        let mut run_pool = pin!(run_pool);
        let mut serve_control = pin!(control.serve(pool.clone()));
        let mut serve_metrics = pin!(async {
            match metrics {
                Some(m) => m.serve(pool.clone()).await,
                None => std::future::pending().await,
            }
        });
        let mut ready = pin!(pool.ready());
        let mut announced = false;
        let result = loop {
            tokio::select! {
                r = &mut run_pool => break r,
                pids = &mut ready, if !announced => {
                    announced = true;
                    if let Some(pids) = pids {
                        tracing::info!(
                            control = %control.path().display(),
                            metrics = metrics_addr.map(tracing::field::display),
                            ?pids,
                            "ready"
                        );
                        notify(&[
                            sd_notify::NotifyState::Ready,
                            sd_notify::NotifyState::Status(&format!("serving with {workers} workers")),
                        ]);
                    }
                }
                () = &mut serve_control => {}
                () = &mut serve_metrics => {}
            }
        };
        notify(&[sd_notify::NotifyState::Stopping]);

        anyhow::Ok(result?)
    })?;
    drop(runtime);
    crate::log_summary(&summary, started.elapsed().as_secs_f64(), "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) how the service is doing.
fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}
