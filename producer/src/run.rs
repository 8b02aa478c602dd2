//! The `run` command: load settings, pick the transport, run every tenant, print and save the report.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shared::config::Settings;
use shared::graph::{ClientOptions, GraphClient};
use shared::mq::Topology;
use shared::sync::CleanupSource;
use worker::disposition::RetryPolicy;
use worker::job::JobRunner;

use crate::cli::{CleanupArgs, Cli, Command, ReportArgs, RunArgs};
use crate::dispatch::{Broker, Embedded};
use crate::notify::Notifier;
use crate::orchestrate::{self, RunRequest};
use crate::state::StateStore;
use crate::summary::RunReport;
use crate::{EXIT_FAILURES, EXIT_OK, EXIT_USAGE};

/// Runs the parsed command.
pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Report(args) => report(&args),
        Command::Demo(args) => crate::demo::command(args).await,
        Command::Status(args) => crate::ops::status::command(args).await,
        Command::Dlq(args) => crate::ops::dlq::command(args).await,
        Command::Cleanup(args) => cleanup(args).await,
        Command::Check(args) => crate::check::command(args).await,
        Command::History(args) => crate::history::command(args),
        Command::ConsentUrl(args) => crate::consent::command(&args),
    }
}

/// `cleanup`: refuses without `--yes` or `--tenant` (exit 2, nothing contacted); otherwise runs the cleanup jobs
/// through the same transport as `run`, prints what each mailbox lost and writes the report where asked.
async fn cleanup(args: CleanupArgs) -> Result<ExitCode> {
    if let Some(refusal) = args.refusal().or_else(|| args.run.output_refusal()) {
        eprintln!("cleanup: {refusal}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let mut run = args.run;
    if run.state_dir.is_none() {
        run.state_dir = StateStore::default_dir();
    }
    let settings = match load_settings(&run) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if let Some(refusal) = run.lock_refusal(settings.dry_run || run.dry_run) {
        eprintln!("cleanup: {refusal}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let report = execute_cleanup(&settings, &run, args.source).await?;
    for tenant in &report.tenants {
        for line in &tenant.planned {
            println!("{} {}: {line}", tenant.tenant_id, args.source);
        }
    }
    finish(&report, run.report.as_deref(), run.report_html.as_deref())
}

async fn run(mut args: RunArgs) -> Result<ExitCode> {
    // Even a run that keeps no state takes its tenant leases in the state directory (embedded mode).
    if args.state_dir.is_none() {
        args.state_dir = StateStore::default_dir();
    }
    let settings = match load_settings(&args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let refusal = args
        .output_refusal()
        .or_else(|| args.lock_refusal(settings.dry_run || args.dry_run));
    if let Some(refusal) = refusal {
        eprintln!("run: {refusal}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let notifier = match Notifier::new(&args.notify) {
        Ok(notifier) => notifier,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let report = execute(&settings, &args).await?;
    let code = finish(&report, args.report.as_deref(), args.report_html.as_deref());
    crate::history::keep_after_run(&report, args.state_dir.as_deref(), args.history.keep_runs);
    if let Some(notifier) = notifier {
        notifier.after_run(&report).await;
    }
    code
}

/// `report`: the JSON run report of an earlier run, as an HTML page. A missing or unreadable input is a usage
/// error (exit 2), with the reason.
fn report(args: &ReportArgs) -> Result<ExitCode> {
    let parsed = std::fs::read(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))
        .and_then(|bytes| {
            serde_json::from_slice::<RunReport>(&bytes).with_context(|| {
                format!(
                    "{} is not a contactmirror run report (as written by run --report)",
                    args.input.display()
                )
            })
        });
    let report = match parsed {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    write_html(&report, &args.html)?;
    println!("wrote {}", args.html.display());
    Ok(ExitCode::from(EXIT_OK))
}

/// Renders and writes the HTML page of `report`.
fn write_html(report: &RunReport, path: &std::path::Path) -> Result<()> {
    crate::files::write_atomically(path, crate::html::render(report).as_bytes())
        .with_context(|| format!("writing the HTML report to {}", path.display()))
}

/// Loads settings from `--config` or the environment; `--dry-run` can only add dryness, never remove it. Invalid
/// tenant entries come back in [`Settings::invalid_tenants`]: the run fails them and runs the others.
pub fn load_settings(args: &RunArgs) -> Result<Settings> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if args.dry_run {
        settings.force_dry_run();
    }
    for wanted in &args.tenants {
        if !settings.names_tenant(wanted) {
            anyhow::bail!("--tenant {wanted}: no such tenant in the configuration");
        }
    }
    Ok(settings)
}

/// Runs one sync with `settings` on the transport `args` select, keeping feeds in `args.state_dir` (none: every
/// folder is read in full).
pub async fn execute(settings: &Settings, args: &RunArgs) -> Result<RunReport> {
    execute_as(settings, args, None).await
}

/// Runs `cleanup --source source` of the tenants `args` name, on the transport `args` select: every receiving
/// mailbox first, then the central folder. Keeps no feeds. The deletion cap does not apply.
pub async fn execute_cleanup(
    settings: &Settings,
    args: &RunArgs,
    source: CleanupSource,
) -> Result<RunReport> {
    anyhow::ensure!(
        !args.tenants.is_empty(),
        "cleanup needs the tenants named (--tenant)"
    );
    execute_as(settings, args, Some(source)).await
}

async fn execute_as(
    settings: &Settings,
    args: &RunArgs,
    cleanup: Option<CleanupSource>,
) -> Result<RunReport> {
    let store = args
        .state_dir
        .as_ref()
        .filter(|_| !args.no_state)
        .map(StateStore::new);
    let graph = GraphClient::new(ClientOptions::default()).context("building the Graph client")?;
    let retry = RetryPolicy {
        max_attempts: args.max_attempts.max(1),
        ..RetryPolicy::default()
    };
    let request = RunRequest {
        settings,
        only_tenants: &args.tenants,
        dry_run: settings.dry_run || args.dry_run,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs.max(1)),
        state: store.as_ref(),
        rebuild_central: args.rebuild_central,
        allow_mass_delete: args.allow_mass_delete || settings.allow_mass_delete,
        cleanup,
        strict: args.strict,
        wait_for_lease: Duration::from_secs(args.wait_for_lease),
    };
    match &args.amqp_url {
        None => {
            let runner = Arc::new(JobRunner::new(graph.clone(), Arc::new(settings.clone())));
            // Leases are lock files in the state directory (`run` has one unless it writes nothing: `lock_refusal`);
            // a library caller without one
            // (tests, the demo: a private graphsim) takes none.
            let mut embedded = Embedded::start(runner, args.workers, retry, args.state_dir.clone())
                .tenant_jobs(args.tenant_jobs)
                .overlap_phases(!args.ordered_phases);
            orchestrate::run(&mut embedded, &graph, request).await
        }
        Some(url) => {
            let mut broker = Broker::connect(url, Topology::new(args.queue_prefix.clone()))
                .await?
                .tenant_jobs(args.tenant_jobs)
                .overlap_phases(!args.ordered_phases)
                // Kept with `--no-state` too: like the leases, this is about the broker, not about feeds.
                .note_boards_in(args.state_dir.clone().map(StateStore::new));
            orchestrate::run(&mut broker, &graph, request).await
        }
    }
}

/// Prints the summary, writes the JSON report and the HTML page (where asked; each tried even if the other
/// failed, the first failure returned), and maps the result to the exit status.
pub fn finish(
    report: &RunReport,
    path: Option<&std::path::Path>,
    html: Option<&std::path::Path>,
) -> Result<ExitCode> {
    print!("{}", report.human());
    let json = path.map(|path| {
        let json = serde_json::to_vec_pretty(report).context("serialising the run report")?;
        crate::files::write_atomically(path, &json)
            .with_context(|| format!("writing the run report to {}", path.display()))
    });
    let page = html.map(|html| write_html(report, html));
    json.transpose()?;
    page.transpose()?;
    Ok(ExitCode::from(if report.succeeded() {
        EXIT_OK
    } else {
        EXIT_FAILURES
    }))
}
