//! The worker's HTTP endpoint for Kubernetes and Prometheus: `/metrics`, `/healthz` (the process answers) and
//! `/readyz` (a broker connection is up and consuming).
//!
//! The server has its own lifetime, apart from the worker's shutdown signal: on SIGTERM the worker drains
//! (readiness goes false at once, so Kubernetes stops counting the pod), but `/metrics` and `/healthz` keep
//! answering until the process exits, so the last scrape sees the drain and the liveness probe never kills a pod
//! that is finishing its jobs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::{describe, BUCKETS};

/// Installs the process-wide Prometheus recorder (every `metrics::counter!` etc. lands there) and returns its
/// handle. Idempotent: the recorder is global, so a second call (another test in the same process) gets the
/// first call's handle instead of an error.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
}

#[derive(Clone)]
struct Health {
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
}

/// The router, separate from the listener so tests can drive it.
pub fn router(metrics: PrometheusHandle, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Health { metrics, ready })
}

/// A running health server; it serves until [`HealthServer::stop`] (or until dropped with the runtime).
pub struct HealthServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl HealthServer {
    /// Binds `addr` (port 0 picks a free port) and serves in the background.
    pub async fn start(
        addr: SocketAddr,
        metrics: PrometheusHandle,
        ready: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(metrics, ready))
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        Ok(Self { addr, stop, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for open requests to finish.
    pub async fn stop(self) -> std::io::Result<()> {
        self.stop.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join)),
        }
    }
}

async fn render_metrics(State(health): State<Health>) -> String {
    health.metrics.run_upkeep();
    health.metrics.render()
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not consuming: not connected to the broker yet, reconnecting, or draining\n",
        )
    }
}
