//! Runs tenants through their two phases over any job transport: submit each tenant's phase-1 job, and when its
//! final report arrives (or, overlapped, its plan), that tenant's phase-2 jobs; collect every report into the
//! [`RunReport`].
//!
//! Tenants proceed independently: one tenant's slow or failed phase 1 never holds another back. [`run`] takes the
//! leases and prepares the tenants; `course` follows the run's jobs to their end; `phase2` makes a tenant's phase-2
//! jobs.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use shared::config::{Settings, TenantSettings};
use shared::graph::GraphClient;
use shared::message::{CentralFolder, FailureReason, FolderChoice, Job, JobKind, Report};
use shared::model::Mailbox;
use shared::run_status::RunStatus;
use shared::sync::CleanupSource;
use tracing::{info, warn};
use uuid::Uuid;
use worker::overlap::{Ended, Planned};

use crate::fair::Limits;
use crate::lease::LeaseError;
use crate::prepare::{directory_sources, prepare, CentralExpectation, PreparedTenant};
use crate::run_status::Tracked;
use crate::state::StateStore;
use crate::summary::{RunReport, TenantReport};

mod course;
mod phase2;

use course::Course;

/// A job transport: the embedded queue or RabbitMQ.
///
/// Only used from the producer's own task, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Dispatch {
    /// Queues jobs in their order (returns once the transport has accepted every one).
    async fn submit(&mut self, jobs: Vec<Job>) -> Result<()>;
    /// The next report of this run (or, with overlapped phases, news of a phase-1 plan), or `None` if nothing
    /// arrived within `wait`.
    async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>>;
    /// "embedded" or "broker", for the report.
    fn mode(&self) -> &'static str;
    /// How many of the run's jobs may be out at once, per tenant and in all ([`crate::fair`]).
    fn limits(&self) -> Limits {
        Limits::broker(None)
    }
    /// Prepares to receive run `run_id`'s reports, before any job is submitted (the broker declares the run's
    /// own report queue and names it in every job, so concurrent runs never take each other's reports).
    async fn begin(&mut self, _run_id: Uuid) -> Result<()> {
        Ok(())
    }
    /// `tenant` was prepared as `ready`. An in-process transport's workers take its shared mailbox and central
    /// folder as their own resolution (the same configuration, read moments before), instead of asking Graph again
    /// before their first job; a broker's workers never trust what reaches them through it.
    fn tenant_prepared(&mut self, _tenant: &TenantSettings, _ready: &PreparedTenant) {}
    /// Takes `tenant_id`'s lease for the rest of the run (see [`crate::lease`]), without waiting.
    async fn lease(&mut self, tenant_id: &str) -> Result<(), LeaseError>;
    /// The run is over: gives back what [`Dispatch::begin`] and [`Dispatch::lease`] took.
    async fn end(&mut self) {}
    /// Whether a tenant's phase-2 jobs may go out once its phase 1 planned, overlapping its writes (issue 13): the
    /// phase-1 job tells them each confirmed create on its board (`worker::overlap`), in memory or on the broker.
    fn overlaps_phases(&self) -> bool {
        false
    }
    /// An overlapped tenant's phase 1 is over (from its final report): its phase-2 jobs, already out, settle, or
    /// undo what they sent early when it failed. (Its job says so itself when it succeeds; this also covers an
    /// attempt that ended without saying, and a job that failed for good.)
    async fn phase1_ended(&mut self, _tenant_id: &str, _run_id: Uuid, _ended: Ended) -> Result<()> {
        Ok(())
    }
    /// Jobs the producer failed for good without sending them, each with its reason and error (their mailbox is
    /// one this run's phase 1 could not read, see `Job::unreadable_report`): a broker puts each in its phase's
    /// dead-letter queue, where operators find every job that failed for good. An embedded run has no such queue
    /// (the run's summary names them, as it names every failed mailbox).
    async fn dead_letter(&mut self, _letters: Vec<(Job, FailureReason, String)>) -> Result<()> {
        Ok(())
    }
    /// Keeps the run's latest progress where `status` can read it. Nobody but this process can see an embedded
    /// run, so by default there is nothing to do.
    async fn publish_run_status(&mut self, _status: &RunStatus) -> Result<()> {
        Ok(())
    }
}

/// What the transport hands the orchestrator.
#[derive(Debug)]
pub enum Event {
    /// A job's report (boxed: most of a run's events, and a report is large beside a plan's news).
    Report(Box<Report>),
    /// A tenant's phase-1 job made its plan (overlapped phases only): its phase-2 jobs may go out.
    Planned(Planned),
}

impl From<Report> for Event {
    fn from(report: Report) -> Self {
        Event::Report(Box::new(report))
    }
}

/// What one run covers.
pub struct RunRequest<'a> {
    /// The validated settings.
    pub settings: &'a Settings,
    /// Only these tenants (all when empty).
    pub only_tenants: &'a [String],
    /// Write nothing in any tenant (a tenant's own `DryRun` makes that tenant alone dry).
    pub dry_run: bool,
    /// Give up on jobs whose final report has not come after this long without any report.
    pub idle_timeout: Duration,
    /// Where feeds are kept between runs; `None` reads every folder in full every run. Not used in a dry run.
    pub state: Option<&'a StateStore>,
    /// Restore lost central folders from the users' contacts (`run --rebuild-central`) instead of stopping.
    pub rebuild_central: bool,
    /// Lift the deletion cap for this run (`run --allow-mass-delete`, `AllowMassDelete`).
    pub allow_mass_delete: bool,
    /// `cleanup --source`: instead of syncing, every receiving mailbox's cleanup job, then (when all succeeded)
    /// the central folder's. No feeds are kept.
    pub cleanup: Option<CleanupSource>,
    /// Count a licensed user without an Exchange mailbox as failed on every run (`run --strict`), not only on the
    /// first run that saw it.
    pub strict: bool,
    /// How long to wait for a tenant's lease another run holds (`run --wait-for-lease`); zero: not at all.
    pub wait_for_lease: Duration,
}

impl<'a> RunRequest<'a> {
    /// Whether the run covers the tenant named `name` (`--tenant`; every tenant when none is named).
    fn selects(&self, name: &str) -> bool {
        self.only_tenants.is_empty()
            || self
                .only_tenants
                .iter()
                .any(|id| id.eq_ignore_ascii_case(name))
    }

    /// The selected tenants that receive contacts: the enabled ones, then the disabled ones.
    fn tenants(&self) -> (Vec<&'a TenantSettings>, Vec<&'a TenantSettings>) {
        self.settings
            .tenants
            .iter()
            .filter(|t| self.selects(&t.tenant_id))
            .filter(|t| {
                let receives = t.distribution.receives();
                if !receives {
                    info!(tenant = %t.tenant_id, "a pure source (Mirror and Directory off): read only for the tenants naming it in Directory.FromTenants, no jobs of its own");
                }
                receives
            })
            .partition(|t| t.enabled)
    }

    /// Whether `tenant` writes nothing in this run: any source saying dry run wins, the run's (`--dry-run`, the
    /// settings) or the tenant's own.
    fn dry(&self, tenant: &TenantSettings) -> bool {
        tenant.dry_run || self.dry_run
    }

    /// Where `tenant`'s managed copies move from in this run: the folder recorded as last completed
    /// ([`StateStore::target_folder`]; the default Contacts folder when a state is kept but names none, as
    /// before `TargetFolder` existed) when the configured one is another. Nothing moves without a state, on a
    /// tenant's first run (no copies anywhere yet) or in a cleanup.
    fn move_from(&self, tenant: &TenantSettings) -> Option<FolderChoice> {
        let store = self
            .state
            .filter(|store| self.cleanup.is_none() && store.knows(&tenant.tenant_id))?;
        let current = FolderChoice::from(&tenant.distribution.target_folder);
        let previous = store
            .target_folder(&tenant.tenant_id)
            .unwrap_or(FolderChoice::DefaultContacts);
        (previous != current).then_some(previous)
    }

    /// A phase-2 job of this run bringing `mailbox` in line with its sources: the central folder when the mirror
    /// is on (`central`), and the directory when the tenant's configuration enables it (the worker reads it).
    fn phase2_job(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        dry_run: bool,
        central: Option<CentralFolder>,
        mailbox: &Mailbox,
        move_from: Option<&FolderChoice>,
    ) -> Job {
        let mut job = Job::new(
            run_id,
            tenant_id,
            dry_run,
            JobKind::Phase2 {
                central,
                mailbox: mailbox.clone(),
            },
        );
        job.allow_mass_delete = self.allow_mass_delete;
        job.cleanup = self.cleanup;
        job.move_from = move_from.cloned();
        job
    }
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
    let (tenants, disabled) = request.tenants();
    let preparations = prepare_tenants(&mut dispatch, graph, &request, &tenants).await;
    let mut course = Course::new(run_id, &request, tenants.len(), dispatch.limits());
    for (tenant, outcome) in tenants.into_iter().zip(preparations) {
        course.add_tenant(tenant, outcome, &mut dispatch);
    }
    dispatch.prepared(&course.reports());
    course.submit_released(&mut dispatch).await?;
    course.follow(&mut dispatch).await?;
    let mut reports = course.finish(&mut dispatch).await;
    for tenant in disabled {
        info!(tenant = %tenant.tenant_id, "tenant disabled (Enabled: false); not run");
        reports.push(TenantReport {
            tenant_id: tenant.tenant_id.clone(),
            disabled: true,
            ..TenantReport::default()
        });
    }
    for invalid in &request.settings.invalid_tenants {
        if request.selects(&invalid.name) {
            reports.push(TenantReport {
                tenant_id: invalid.name.clone(),
                error: Some(format!("configuration: {}", invalid.error)),
                ..TenantReport::default()
            });
        }
    }
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

/// Takes each tenant's lease, one after another, then prepares the tenants together (shared mailbox, central
/// folder, receiving users, directory): what each tenant's jobs are made from, or why it has none.
///
/// The lease comes before anything is read or written (preparing may create the central folder). A dry run writes
/// nothing and keeps no state, so it needs none and can run beside a real one.
async fn prepare_tenants(
    dispatch: &mut impl Dispatch,
    graph: &GraphClient,
    request: &RunRequest<'_>,
    tenants: &[&TenantSettings],
) -> Vec<Result<PreparedTenant, String>> {
    let mut leases = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        leases.push(if request.dry(tenant) {
            Ok(())
        } else {
            take_lease(dispatch, &tenant.tenant_id, request.wait_for_lease).await
        });
    }
    futures_util::future::join_all(tenants.iter().zip(leases).map(|(tenant, lease)| async move {
        let expected = if request.cleanup.is_some() {
            // Cleanup creates nothing and empties the folder it finds.
            CentralExpectation::Unknown
        } else if request.rebuild_central {
            CentralExpectation::Rebuild
        } else {
            request
                .state
                .and_then(|store| store.filled_central(&tenant.tenant_id))
                .map_or(CentralExpectation::Unknown, CentralExpectation::Filled)
        };
        // The users feed an earlier run kept (a dry run or a cleanup keeps none, so it lists every user).
        // Cleanup never creates a folder: it is prepared as a dry run is.
        let dry = request.dry(tenant) || request.cleanup.is_some();
        let store = request.state.filter(|_| !dry);
        let kept = store
            .filter(|_| tenant.distribution.directory.enabled)
            .and_then(|store| store.load_users(tenant));
        let ready = match lease {
            Ok(()) => match directory_sources(request.settings, tenant) {
                Ok(sources) => prepare(graph, tenant, &sources, dry, &expected, kept).await,
                Err(error) => Err(error),
            },
            Err(refused) => Err(refused.to_string()),
        };
        if let (Ok(ready), Some(store)) = (&ready, store) {
            if let Some(users) = ready.directory.as_ref().and_then(|d| d.users.as_ref()) {
                // Kept at once: it describes the directory, whatever the jobs do. A failure to keep it only
                // makes the next run list every user.
                if let Err(error) = store.save_users(tenant, users) {
                    warn!(tenant = %tenant.tenant_id, error = %format!("{error:#}"), "could not keep the users feed");
                }
            }
        }
        ready
    }))
    .await
}
