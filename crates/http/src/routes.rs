//! The routes: `GET /metrics`, `GET /status.json` and `GET /` (the dashboard), each asking the
//! [`StatusSource`] for a fresh snapshot; and, on loopback, the `Host` check against DNS
//! rebinding.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::dashboard::{DASHBOARD, DASHBOARD_CSP};
use crate::openmetrics::{render, CONTENT_TYPE};
use crate::{Exposure, StatusSource};

/// The service every connection runs.
pub(crate) fn router<S: StatusSource>(source: S, exposure: Exposure) -> axum::Router {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape::<S>))
        .route("/status.json", axum::routing::get(status_json::<S>))
        .route("/", axum::routing::get(dashboard))
        .with_state(source);
    match exposure {
        Exposure::Loopback => app.layer(axum::middleware::from_fn(loopback_host)),
        Exposure::Public => app,
    }
}

/// On loopback ([`Exposure::Loopback`]), a request must name a loopback host (or none, as HTTP/1.0
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
async fn status_json<S: StatusSource>(State(pool): State<S>) -> Response {
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
async fn scrape<S: StatusSource>(State(pool): State<S>) -> Response {
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
#[cfg(test)]
mod tests {
    use super::*;

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
}
