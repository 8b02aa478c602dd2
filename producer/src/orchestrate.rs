//! Runs tenants through their two phases over any job transport: submit each tenant's phase-1 job, and when its
//! final report arrives, that tenant's phase-2 jobs; collect every report into the [`RunReport`].
//!
//! Tenants proceed independently: one tenant's slow or failed phase 1 never holds another back.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use shared::config::Settings;
use shared::graph::GraphClient;
use shared::message::{CentralFolder, Job, JobKind, Outcome, Phase, Report};
use shared::model::Mailbox;
use shared::run_status::RunStatus;
use tracing::{info, warn};
use uuid::Uuid;

use crate::lease::LeaseError;
use crate::ledger::RunLedger;
use crate::prepare::{prepare, CentralExpectation, PreparedTenant};
use crate::progress::Progress;
use crate::run_status::Tracked;
use crate::state::{self, StateStore, TenantMemory};
use crate::summary::{RunReport, TenantReport};

/// A job transport: the embedded queue or RabbitMQ.
///
/// Only used from the producer's own task, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Dispatch {
    /// Queues a job (returns once the transport has accepted it).
    async fn submit(&mut self, job: Job) -> Result<()>;
    /// The next report of this run, or `None` if none arrived within `wait`.
    async fn next_report(&mut self, wait: Duration) -> Result<Option<Report>>;
    /// "embedded" or "broker", for the report.
    fn mode(&self) -> &'static str;
    /// Prepares to receive run `run_id`'s reports, before any job is submitted (the broker declares the run's
    /// own report queue and names it in every job, so concurrent runs never take each other's reports).
    async fn begin(&mut self, _run_id: Uuid) -> Result<()> {
        Ok(())
    }
    /// Takes `tenant_id`'s lease for the rest of the run (see [`crate::lease`]), without waiting.
    async fn lease(&mut self, tenant_id: &str) -> Result<(), LeaseError>;
    /// The run is over: gives back what [`Dispatch::begin`] and [`Dispatch::lease`] took.
    async fn end(&mut self) {}
    /// Keeps the run's latest progress where `status` can read it. Nobody but this process can see an embedded
    /// run, so by default there is nothing to do.
    async fn publish_run_status(&mut self, _status: &RunStatus) -> Result<()> {
        Ok(())
    }
}

/// What one run covers.
pub struct RunRequest<'a> {
    /// The validated settings.
    pub settings: &'a Settings,
    /// Only these tenants (all when empty).
    pub only_tenants: &'a [String],
    /// Write nothing.
    pub dry_run: bool,
    /// Give up on jobs whose final report has not come after this long without any report.
    pub idle_timeout: Duration,
    /// Where feeds are kept between runs; `None` reads every folder in full every run. Not used in a dry run.
    pub state: Option<&'a StateStore>,
    /// Restore lost central folders from the users' contacts (`run --rebuild-central`) instead of stopping.
    pub rebuild_central: bool,
    /// How long to wait for a tenant's lease another run holds (`run --wait-for-lease`); zero: not at all.
    pub wait_for_lease: Duration,
}

/// How often a held lease is asked for again while waiting for it.
const LEASE_POLL: Duration = Duration::from_secs(2);

/// Takes `tenant_id`'s lease; while another run holds it, asks again every [`LEASE_POLL`] for up to `wait`.
async fn take_lease<D: Dispatch>(
    dispatch: &mut D,
    tenant_id: &str,
    wait: Duration,
) -> Result<(), LeaseError> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match dispatch.lease(tenant_id).await {
            Err(LeaseError::Held { .. }) if Instant::now() < deadline => {
                if !told {
                    info!(
                        tenant = tenant_id,
                        wait_secs = wait.as_secs(),
                        "another run holds the tenant's lease; waiting for it"
                    );
                    told = true;
                }
                tokio::time::sleep(LEASE_POLL.min(deadline - Instant::now())).await;
            }
            other => return other,
        }
    }
}

/// Runs every selected tenant to the end and returns the report.
pub async fn run<D: Dispatch>(
    dispatch: &mut D,
    graph: &GraphClient,
    request: RunRequest<'_>,
) -> Result<RunReport> {
    let run_id = Uuid::now_v7();
    let started_at = Utc::now();
    let started = Instant::now();
    let mut dispatch = Tracked::new(dispatch, run_id, started_at, request.dry_run);
    dispatch.begin(run_id).await?;
    let tenants: Vec<_> = request
        .settings
        .tenants
        .iter()
        .filter(|t| {
            request.only_tenants.is_empty()
                || request
                    .only_tenants
                    .iter()
                    .any(|id| id.eq_ignore_ascii_case(&t.tenant_id))
        })
        .collect();
    // The lease comes before anything is read or written (preparing may create the central folder). A dry run
    // writes nothing and keeps no state, so it needs none and can run beside a real one.
    let mut leases = Vec::with_capacity(tenants.len());
    for tenant in &tenants {
        leases.push(if request.dry_run {
            Ok(())
        } else {
            take_lease(&mut dispatch, &tenant.tenant_id, request.wait_for_lease).await
        });
    }
    let preparations = futures_util::future::join_all(tenants.iter().zip(leases).map(
        |(tenant, lease)| async move {
            let expected = if request.rebuild_central {
                CentralExpectation::Rebuild
            } else {
                request
                    .state
                    .and_then(|store| store.filled_central(&tenant.tenant_id))
                    .map_or(CentralExpectation::Unknown, CentralExpectation::Filled)
            };
            match lease {
                Ok(()) => prepare(graph, tenant, request.dry_run, &expected).await,
                Err(refused) => Err(refused.to_string()),
            }
        },
    ))
    .await;
    let mut reports: Vec<TenantReport> = Vec::new();
    let mut prepared: Vec<Option<PreparedTenant>> = Vec::new();
    let mut memories: Vec<Option<TenantMemory>> = Vec::new();
    let mut ledger = RunLedger::new(run_id);
    let mut progress = Progress::new();
    for (tenant, outcome) in tenants.iter().zip(preparations) {
        let index = reports.len();
        let mut report = TenantReport {
            tenant_id: tenant.tenant_id.clone(),
            ..TenantReport::default()
        };
        match outcome {
            Ok(ready) => {
                report.users = ready.users.len();
                let Some(central) = ready.central.clone() else {
                    // No mirror: no phase 1; every receiving mailbox's job carries the directory alone. No feeds
                    // are kept for it (each run reads the mailboxes in full).
                    progress.add(Phase::Phase2, ready.users.len() as u64);
                    for user in &ready.users {
                        let job = phase2_job(run_id, &ready.tenant_id, request.dry_run, None, user);
                        ledger.expect(&job, index);
                        dispatch.submit(job).await?;
                    }
                    memories.push(None);
                    prepared.push(Some(ready));
                    reports.push(report);
                    continue;
                };
                let memory = request
                    .state
                    .filter(|_| !request.dry_run)
                    .map(|store| store.load(&ready.tenant_id, state::scope(tenant, &central)));
                let mut job = Job::new(
                    run_id,
                    &ready.tenant_id,
                    request.dry_run,
                    JobKind::Phase1 {
                        central,
                        sources: ready.users.clone(),
                    },
                );
                if let Some(memory) = &memory {
                    job.cursors = memory.phase1_cursors(&ready.users);
                }
                job.rebuild_central = request.rebuild_central;
                memories.push(memory);
                ledger.expect(&job, index);
                progress.add(Phase::Phase1, 1);
                dispatch.submit(job).await?;
                prepared.push(Some(ready));
            }
            Err(error) => {
                warn!(tenant = %tenant.tenant_id, %error, "tenant skipped");
                report.error = Some(error);
                prepared.push(None);
                memories.push(None);
            }
        }
        reports.push(report);
    }
    dispatch.prepared(&reports);
    let tenant_started: Vec<Instant> = tenants.iter().map(|_| Instant::now()).collect();
    while ledger.waiting() > 0 {
        let Some(report) = dispatch.next_report(request.idle_timeout).await? else {
            warn!(
                missing = ledger.waiting(),
                "no report for {:?}; giving up on the missing jobs", request.idle_timeout
            );
            break;
        };
        // The one place that decides whether a report counts; everything below is fed from it.
        let Some(accepted) = ledger.accept(&report) else {
            continue;
        };
        let tenant = accepted.tenant;
        reports[tenant].record(&report);
        dispatch.accepted(&report);
        if !accepted.last {
            continue;
        }
        let succeeded = matches!(report.outcome, Outcome::Succeeded);
        if let (Some(memory), Phase::Phase2) = (memories[tenant].as_mut(), report.phase) {
            if succeeded {
                memory.phase2_succeeded(&report.mailbox.id, &report.cursors);
            } else {
                memory.phase2_failed(&report.mailbox.id);
            }
        }
        progress.done(report.phase, matches!(report.outcome, Outcome::Succeeded));
        reports[tenant].duration_ms =
            u64::try_from(tenant_started[tenant].elapsed().as_millis()).unwrap_or(u64::MAX);
        if report.phase != Phase::Phase1 {
            continue;
        }
        let Some((ready, central)) = prepared[tenant]
            .as_ref()
            .and_then(|ready| Some((ready, ready.central.clone()?)))
        else {
            continue;
        };
        if !matches!(report.outcome, Outcome::Succeeded) {
            warn!(tenant = %ready.tenant_id, "phase 1 failed; phase 2 not started for this tenant");
            continue;
        }
        if let Some(memory) = memories[tenant].as_mut() {
            memory.phase1_succeeded(&ready.users, &report.cursors);
            memory.filled(&central, &tenants[tenant].mirror.central_folder_name);
        }
        info!(tenant = %ready.tenant_id, users = ready.users.len(), "phase 1 complete; starting phase 2");
        progress.add(Phase::Phase2, ready.users.len() as u64);
        for user in &ready.users {
            let mut job = phase2_job(
                run_id,
                &ready.tenant_id,
                request.dry_run,
                Some(central.clone()),
                user,
            );
            if memories[tenant].is_some() {
                job.cursors = TenantMemory::phase2_cursors(&report.cursors, user);
            }
            ledger.expect(&job, tenant);
            dispatch.submit(job).await?;
        }
    }
    let lost = ledger.give_up();
    for job in &lost {
        reports[job.tenant].record_lost(
            &job.mailbox,
            job.phase,
            "no final report arrived (worker crash budget spent, or no worker running): check the dead-letter queues",
        );
    }
    progress.finish();
    if let Some(store) = request.state {
        for (memory, ready) in memories.iter().zip(&prepared) {
            if let (Some(memory), Some(ready)) = (memory, ready) {
                if let Err(error) = store.save(&ready.tenant_id, memory) {
                    // The run itself is done; the next one reads the folders in full.
                    warn!(tenant = %ready.tenant_id, error = %format!("{error:#}"), "could not save the state");
                }
            }
        }
    }
    dispatch.finish(&lost).await;
    for report in &mut reports {
        report.mailboxes.sort_by(|a, b| {
            (b.outcome == "failed")
                .cmp(&(a.outcome == "failed"))
                .then(a.mailbox.cmp(&b.mailbox))
        });
    }
    Ok(RunReport {
        run_id,
        mode: dispatch.mode().to_owned(),
        dry_run: request.dry_run,
        started_at,
        finished_at: Utc::now(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        tenants: reports,
    })
}

/// The job bringing `mailbox` in line with its sources: the central folder when the mirror is on (`central`), and
/// the directory when the tenant's configuration enables it (the worker reads it).
fn phase2_job(
    run_id: Uuid,
    tenant_id: &str,
    dry_run: bool,
    central: Option<CentralFolder>,
    mailbox: &Mailbox,
) -> Job {
    Job::new(
        run_id,
        tenant_id,
        dry_run,
        JobKind::Phase2 {
            central,
            mailbox: mailbox.clone(),
        },
    )
}
