//! `contactmirror-worker`: consumes per-mailbox jobs from RabbitMQ until SIGTERM/SIGINT. Thin wiring around
//! [`worker::consumer::Worker`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use shared::config::Settings;
use shared::graph::{ClientOptions, GraphClient};
use shared::mq::Topology;
use shared::telemetry::LogFormat;
use worker::consumer::{default_spare_slots, Worker, WorkerConfig, DEFAULT_CONCURRENCY};
use worker::disposition::RetryPolicy;
use worker::job::JobRunner;

#[global_allocator]
static ALLOCATOR: worker::heap::Allocator = worker::heap::Allocator;

/// Consumes contactmirror jobs from RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "contactmirror-worker", version, about)]
struct Cli {
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    amqp_url: String,
    /// Configuration file (the same JSON as AUTOMATION_SYNCCONTACTS_CONFIG_JSON); default: the environment.
    #[arg(long, env = "CONTACTMIRROR_CONFIG")]
    config: Option<PathBuf>,
    /// Jobs run at once (and the prefetch).
    #[arg(long, env = "CONTACTMIRROR_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Job slots beyond --concurrency, taken only by a tenant that runs fewer jobs here than the busiest one: a
    /// customer whose run starts while another's long jobs hold every slot starts at once. Default: a quarter of
    /// --concurrency. A tenant alone never uses them.
    #[arg(long, env = "CONTACTMIRROR_SPARE_SLOTS")]
    spare_slots: Option<u16>,
    /// Prefix of every queue and exchange name.
    #[arg(long, env = "CONTACTMIRROR_QUEUE_PREFIX", default_value = "cm")]
    queue_prefix: String,
    /// Attempts per job before it is dead-lettered.
    #[arg(long, env = "CONTACTMIRROR_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: u32,
    /// Seconds in-flight jobs may run on after SIGTERM before they are handed back.
    #[arg(long, env = "CONTACTMIRROR_GRACE_SECS", default_value_t = 60)]
    grace_secs: u64,
    /// Log format: human or json.
    #[arg(long, env = "CONTACTMIRROR_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    /// Address of the /metrics, /healthz and /readyz endpoint. Default: 127.0.0.1:9090, or a free loopback port
    /// when another worker on the host has it (containers and Kubernetes pass 0.0.0.0:9090 explicitly).
    #[arg(long, env = "CONTACTMIRROR_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// Loopback by default: the endpoint is unauthenticated, and outside a container nothing should scrape a worker
/// from another host unless the operator says so.
const DEFAULT_METRICS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init(cli.log_format);
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    match run(cli, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: Settings) -> Result<()> {
    let graph = GraphClient::new(ClientOptions::default()).context("building the Graph client")?;
    let runner = Arc::new(JobRunner::new(graph, Arc::new(settings)));
    let name = format!(
        "contactmirror-worker-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| std::process::id().to_string())
    );
    let config = WorkerConfig {
        amqp_url: cli.amqp_url.clone(),
        topology: Topology::new(cli.queue_prefix.clone()),
        concurrency: cli.concurrency.max(1),
        spare_slots: cli
            .spare_slots
            .unwrap_or_else(|| default_spare_slots(cli.concurrency.max(1))),
        retry: RetryPolicy {
            max_attempts: cli.max_attempts.max(1),
            ..RetryPolicy::default()
        },
        grace: Duration::from_secs(cli.grace_secs),
        name,
    };
    let worker = Worker::new(config, runner);
    let shutdown = shared::shutdown::on_signal();
    let metrics = worker::health::install_recorder().map_err(anyhow::Error::msg)?;
    // The health server outlives the shutdown signal: /readyz turns false while the worker drains, and /metrics
    // and /healthz keep answering until the drain is over.
    let health = serve_health(cli.metrics_addr, metrics, worker.readiness()).await?;
    let reason = worker.run(shutdown).await;
    if let Err(error) = health.stop().await {
        tracing::warn!(%error, "the health server ended with an error");
    }
    let reason = reason?;
    tracing::info!(?reason, "worker stopped");
    Ok(())
}

/// Starts the health server on `explicit`, or on [`DEFAULT_METRICS_ADDR`]; several workers started on one host
/// with the default all run: when the default port is taken, a free loopback port is used (and logged).
async fn serve_health(
    explicit: Option<SocketAddr>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<worker::health::HealthServer> {
    use worker::health::HealthServer;
    if let Some(addr) = explicit {
        return HealthServer::start(addr, metrics, ready)
            .await
            .with_context(|| format!("serving health and metrics on {addr}"));
    }
    match HealthServer::start(DEFAULT_METRICS_ADDR, metrics.clone(), ready.clone()).await {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            let any_port = SocketAddr::new(DEFAULT_METRICS_ADDR.ip(), 0);
            let server = HealthServer::start(any_port, metrics, ready)
                .await
                .with_context(|| format!("serving health and metrics on {any_port}"))?;
            tracing::warn!(taken = %DEFAULT_METRICS_ADDR, addr = %server.local_addr(),
                "the default metrics port is taken (another worker on this host?); serving on a free port instead");
            Ok(server)
        }
        started => {
            started.with_context(|| format!("serving health and metrics on {DEFAULT_METRICS_ADDR}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Failed before the fix: clap's help shows an option's environment value unless told not to, so `--help`
    /// printed the broker's password (`[env: AMQP_URL=amqp://u:pw@…]`).
    #[test]
    fn help_never_shows_the_brokers_url() {
        let command = <Cli as clap::CommandFactory>::command();
        let amqp = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|name| name == "AMQP_URL"))
            .expect("an option reads AMQP_URL");
        assert!(
            amqp.is_hide_env_values_set(),
            "--help shows AMQP_URL's value"
        );
    }
}
