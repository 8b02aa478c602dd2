//! The `graphsim` binary: serves the simulator on a fixed address, optionally seeded, until Ctrl-C or SIGTERM.
//! A thin wrapper over the library (parse -> run -> exit code).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use graphsim::{EstateParams, FaultConfig, RetryAfter, SimConfig, ThrottleConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Profile {
    Graph,
    Devproxy,
}

/// A strict local Microsoft Graph (contacts, users, batch, delta) and Entra token service.
#[derive(Debug, Parser)]
#[command(name = "graphsim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "GRAPHSIM_LISTEN")]
    listen: SocketAddr,
    /// Tenants to seed.
    #[arg(long, default_value_t = 1)]
    seed_tenants: usize,
    /// Users per seeded tenant (0 = seed nothing).
    #[arg(long, default_value_t = 0)]
    seed_users: usize,
    /// Contacts per seeded mailbox.
    #[arg(long, default_value_t = 5)]
    seed_contacts: usize,
    /// Fraction of seeded contacts that copy colleagues.
    #[arg(long, default_value_t = 0.2)]
    seed_overlap: f64,
    /// Generator seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also seed a directory tenant (issue 11: members, a hidden and a disabled user, guests, org contacts,
    /// groups) under this domain, and print what was seeded.
    #[arg(long)]
    seed_directory: Option<String>,
    /// Requests per (app, mailbox) per window.
    #[arg(long, default_value_t = 10_000)]
    requests_per_window: u32,
    /// Window length in seconds.
    #[arg(long, default_value_t = 600.0)]
    window_secs: f64,
    /// Concurrent requests per (app, mailbox).
    #[arg(long, default_value_t = 4)]
    max_in_flight: u32,
    /// Lifetime of issued tokens in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime_secs: u64,
    /// Latency added per operation, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fraction of operations answered with an injected error.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Fraction of writes applied and then answered with a 5xx.
    #[arg(long, default_value_t = 0.0)]
    commit_then_fail_rate: f64,
    /// Error vocabulary of injected faults.
    #[arg(long, value_enum, default_value = "graph")]
    fault_profile: Profile,
    /// Retry-After of injected 429/503, in seconds (fractions allowed; 0 = none).
    #[arg(long, default_value_t = 1.0)]
    fault_retry_after: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("graphsim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config(cli: &Cli) -> anyhow::Result<SimConfig> {
    let window = Duration::try_from_secs_f64(cli.window_secs).context("--window-secs")?;
    let retry_after = match cli.fault_retry_after {
        x if x <= 0.0 => RetryAfter::None,
        x if x.fract() == 0.0 => RetryAfter::Integer(x as u32),
        x => RetryAfter::Fractional(x),
    };
    let mut faults = match cli.fault_profile {
        Profile::Graph => FaultConfig::default(),
        Profile::Devproxy => FaultConfig::devproxy(cli.fault_rate),
    };
    faults.rate = cli.fault_rate;
    faults.commit_then_fail_rate = cli.commit_then_fail_rate;
    if matches!(cli.fault_profile, Profile::Graph) {
        faults.retry_after = retry_after;
    }
    Ok(SimConfig {
        throttle: ThrottleConfig {
            requests_per_window: cli.requests_per_window,
            window,
            max_in_flight: cli.max_in_flight,
        },
        token_lifetime: Duration::from_secs(cli.token_lifetime_secs),
        faults,
        latency: Duration::from_millis(cli.latency_ms),
        ..SimConfig::default()
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let config = config(&cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let sim = graphsim::spawn_at(config, cli.listen).await.with_context(|| format!("listening on {}", cli.listen))?;
        if cli.seed_users > 0 {
            let params = EstateParams {
                tenants: cli.seed_tenants,
                users_per_tenant: cli.seed_users,
                contacts_per_user: cli.seed_contacts,
                overlap: cli.seed_overlap,
                seed: cli.seed,
            };
            let tenants = graphsim::seed_estate(&sim, params);
            println!("{}", serde_json::to_string_pretty(&tenants).context("printing the estate")?);
        }
        if let Some(domain) = &cli.seed_directory {
            let params = graphsim::DirectoryParams {
                domain: domain.clone(),
                ..graphsim::DirectoryParams::default()
            };
            let seeded = graphsim::seed_directory(&sim, params);
            println!("{}", serde_json::to_string_pretty(&seeded).context("printing the directory")?);
        }
        eprintln!("graphsim listening on {} (graph {0}/v1.0, token {0}/{{tenant}}/oauth2/v2.0/token, control {0}/_sim/)", sim.graph_url());
        stop_signal().await?;
        sim.shutdown();
        Ok(())
    })
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what `docker stop` and Kubernetes send).
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
    }
}
