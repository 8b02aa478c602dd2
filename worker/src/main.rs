//! `contactmirror-worker`: consumes per-mailbox jobs from RabbitMQ until SIGTERM/SIGINT. Thin wiring around
//! [`worker::consumer::Worker`].

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
use worker::consumer::{Worker, WorkerConfig};
use worker::disposition::RetryPolicy;
use worker::job::JobRunner;

/// Consumes contactmirror jobs from RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "contactmirror-worker", version, about)]
struct Cli {
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL")]
    amqp_url: String,
    /// Configuration file (the same JSON as AUTOMATION_SYNCCONTACTS_CONFIG_JSON); default: the environment.
    #[arg(long, env = "CONTACTMIRROR_CONFIG")]
    config: Option<PathBuf>,
    /// Jobs run at once (and the prefetch).
    #[arg(long, env = "CONTACTMIRROR_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
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
    /// Address of the /metrics, /healthz and /readyz endpoint.
    #[arg(
        long,
        env = "CONTACTMIRROR_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    metrics_addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init(cli.log_format);
    let settings = match &cli.config {
        Some(path) => Settings::from_file(path),
        None => Settings::from_env(),
    };
    let settings = match settings {
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
    let health = worker::health::HealthServer::start(cli.metrics_addr, metrics, worker.readiness())
        .await
        .with_context(|| format!("serving health and metrics on {}", cli.metrics_addr))?;
    let reason = worker.run(shutdown).await;
    if let Err(error) = health.stop().await {
        tracing::warn!(%error, "the health server ended with an error");
    }
    let reason = reason?;
    tracing::info!(?reason, "worker stopped");
    Ok(())
}
