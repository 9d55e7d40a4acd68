//! `[admin] bind`: Prometheus metrics and health endpoints for the host's monitoring,
//! on their own address (not the review UI's, not the proxy's).
//!
//! ```text
//!  GET /metrics  Prometheus text format (docs/operations.md lists every series)
//!  GET /healthz  200 while the process runs
//!  GET /readyz   200 when the listeners are up, the archive takes appends and the
//!                upstream server accepts a TCP connection; else 503 naming what is not
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use custos_archive::Archive;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long `/readyz` waits for the upstream's TCP handshake.
const UPSTREAM_PROBE: Duration = Duration::from_secs(2);

/// Installs the process's metrics recorder (once, before anything records).
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let latency = [
        0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let sizes = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), &sizes))
        .context("configuring the metrics histograms")?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct Readiness {
    /// Set once every proxy listener is bound.
    pub listening: Arc<AtomicBool>,
    /// Set once the archive is open (when one is configured).
    pub archive: Arc<OnceLock<Archive>>,
    pub archive_configured: bool,
    /// `host:port` of the upstream server.
    pub upstream: Option<String>,
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    ready: Readiness,
}

/// Binds the admin address now (a bad address fails start-up) and serves until
/// `shutdown`.
pub async fn start(
    bind: SocketAddr,
    metrics: PrometheusHandle,
    ready: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("[admin] bind: cannot listen on {bind}"))?;
    let addr = listener.local_addr().unwrap_or(bind);
    info!(%addr, "admin endpoints listening");
    let upkeep = metrics.clone();
    let stop = shutdown.clone();
    // Histograms are folded into their buckets by the upkeep, not on every sample.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { metrics, ready });
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(cause = %e, "admin endpoints stopped");
        }
    }))
}

async fn metrics_page(State(s): State<AdminState>) -> Response {
    // Levels are read when asked, so they are current at every scrape.
    if let Some(a) = s.ready.archive.get() {
        metrics::gauge!("custos_index_lag_records").set(a.index_lag() as f64);
        metrics::gauge!("custos_archive_writable").set(if a.write_health().is_none() {
            1.0
        } else {
            0.0
        });
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let mut not = Vec::new();
    if !s.ready.listening.load(Ordering::Acquire) {
        not.push("the proxy listeners are not up yet".to_string());
    }
    match s.ready.archive.get() {
        Some(a) => {
            if let Some(why) = a.write_health() {
                not.push(format!("the archive refuses appends: {why}"));
            }
        }
        None if s.ready.archive_configured => not.push("the archive is not open yet".into()),
        None => {}
    }
    if let Some(up) = &s.ready.upstream {
        match tokio::time::timeout(UPSTREAM_PROBE, tokio::net::TcpStream::connect(up)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => not.push(format!("the upstream server {up} is unreachable: {e}")),
            Err(_) => not.push(format!(
                "the upstream server {up} did not answer within {} s",
                UPSTREAM_PROBE.as_secs()
            )),
        }
    }
    if not.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    metrics::counter!("custos_readyz_unready_total").increment(1);
    let body: String = not.iter().map(|n| format!("not ready: {n}\n")).collect();
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}
