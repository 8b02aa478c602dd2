//! Runs tenants through their two phases over any job transport: submit each tenant's phase-1 job, and when its
//! final report arrives, that tenant's phase-2 jobs; collect every report into the [`RunReport`].
//!
//! Tenants proceed independently: one tenant's slow or failed phase 1 never holds another back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use shared::config::{Settings, TenantSettings};
use shared::feed::Cursors;
use shared::graph::GraphClient;
use shared::message::{
    CentralFolder, FailureReason, FolderChoice, Job, JobKind, Outcome, Phase, Report, SourceFailure,
};
use shared::model::Mailbox;
use shared::run_status::RunStatus;
use shared::sync::CleanupSource;
use tracing::{info, warn};
use uuid::Uuid;
use worker::overlap::{Ended, Planned};

use crate::fair::{FairQueue, Limits};
use crate::lease::LeaseError;
use crate::ledger::RunLedger;
use crate::prepare::{directory_sources, prepare, CentralExpectation, PreparedTenant};
use crate::progress::Progress;
use crate::run_status::Tracked;
use crate::state::{self, StateStore, TenantMemory};
use crate::summary::{RunReport, TenantReport};

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

impl RunRequest<'_> {
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

    /// A phase-2 job of this run for `mailbox`, carrying `central` when the mirror is a source.
    fn phase2_job(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        dry_run: bool,
        central: Option<CentralFolder>,
        mailbox: &Mailbox,
        move_from: Option<&FolderChoice>,
    ) -> Job {
        let mut job = phase2_job(run_id, tenant_id, dry_run, central, mailbox);
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
    let selected = |name: &str| {
        request.only_tenants.is_empty()
            || request
                .only_tenants
                .iter()
                .any(|id| id.eq_ignore_ascii_case(name))
    };
    let (tenants, disabled): (Vec<_>, Vec<_>) = request
        .settings
        .tenants
        .iter()
        .filter(|t| selected(&t.tenant_id))
        .filter(|t| {
            let receives = t.distribution.receives();
            if !receives {
                info!(tenant = %t.tenant_id, "a pure source (Mirror and Directory off): read only for the tenants naming it in Directory.FromTenants, no jobs of its own");
            }
            receives
        })
        .partition(|t| t.enabled);
    // Any source saying dry run wins: the run's (`--dry-run`, the settings) or the tenant's own.
    let dry = |tenant: &TenantSettings| tenant.dry_run || request.dry_run;
    // The lease comes before anything is read or written (preparing may create the central folder). A dry run
    // writes nothing and keeps no state, so it needs none and can run beside a real one.
    let mut leases = Vec::with_capacity(tenants.len());
    for tenant in &tenants {
        leases.push(if dry(tenant) {
            Ok(())
        } else {
            take_lease(&mut dispatch, &tenant.tenant_id, request.wait_for_lease).await
        });
    }
    let preparations = futures_util::future::join_all(tenants.iter().zip(leases).map(
        |(tenant, lease)| async move {
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
            let dry = dry(tenant) || request.cleanup.is_some();
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
        },
    ))
    .await;
    let mut reports: Vec<TenantReport> = Vec::new();
    let mut prepared: Vec<Option<PreparedTenant>> = Vec::new();
    let mut memories: Vec<Option<TenantMemory>> = Vec::new();
    let mut ledger = RunLedger::new(run_id);
    // Every job goes through the fair queue: tenants take turns, each with a bounded number out.
    let mut fair = FairQueue::new(tenants.len(), dispatch.limits());
    let mut progress = Progress::new();
    // Per tenant: where its copies move from, whether its phase 2 started and whether any of it failed, and (in a
    // cleanup) how many mailbox jobs are still out before the central folder's.
    let move_from: Vec<Option<FolderChoice>> =
        tenants.iter().map(|t| request.move_from(t)).collect();
    let mut phase2_started = vec![false; tenants.len()];
    let mut phase2_failed = vec![false; tenants.len()];
    let mut cleanup_waiting = vec![0usize; tenants.len()];
    // Mailboxes earlier runs found without an Exchange mailbox (read even in a dry run, which saves nothing).
    let known_without_mailbox: Vec<BTreeSet<String>> = tenants
        .iter()
        .map(|t| {
            request
                .state
                .map(|store| store.without_mailbox(&t.tenant_id))
                .unwrap_or_default()
        })
        .collect();
    for (tenant, outcome) in tenants.iter().zip(preparations) {
        let index = reports.len();
        let dry_run = dry(tenant);
        let mut report = TenantReport {
            tenant_id: tenant.tenant_id.clone(),
            dry_run,
            ..TenantReport::default()
        };
        // Once per run: a certificate about to expire (an expired one fails the tenant's token instead).
        if let Some(warning) = shared::credential::expiry_warning(
            &tenant.tenant_id,
            &tenant.credential,
            chrono::Utc::now(),
        ) {
            warn!(tenant = %tenant.tenant_id, "{warning}");
            report.warnings.push(warning);
        }
        match outcome {
            Ok(ready) => {
                dispatch.tenant_prepared(tenant, &ready);
                report.users = ready.users.len();
                report.warnings.extend(ready.warnings.iter().cloned());
                if request.cleanup.is_some() {
                    // Every mailbox first: their jobs judge copies against the central folder, emptied last.
                    progress.add(Phase::Phase2, ready.users.len() as u64);
                    for user in &ready.users {
                        let job = request.phase2_job(
                            run_id,
                            &ready.tenant_id,
                            dry_run,
                            ready.central.clone(),
                            user,
                            None,
                        );
                        ledger.expect(&job, index);
                        fair.push(index, job);
                    }
                    cleanup_waiting[index] = ready.users.len();
                    memories.push(None);
                    prepared.push(Some(ready));
                    reports.push(report);
                    continue;
                }
                let directory_generation = ready.directory.as_ref().and_then(|d| d.generation);
                let Some(central) = ready.central.clone() else {
                    // No mirror: no phase 1; every receiving mailbox's job carries the directory alone, with the
                    // mailbox's kept feed, which the job checks itself.
                    let mut memory = request
                        .state
                        .filter(|_| !dry_run)
                        .map(|store| store.load(&ready.tenant_id, state::directory_scope(tenant)));
                    if let Some(memory) = memory.as_mut() {
                        memory.receivers(&ready.users);
                    }
                    progress.add(Phase::Phase2, ready.users.len() as u64);
                    for user in &ready.users {
                        let mut job = request.phase2_job(
                            run_id,
                            &ready.tenant_id,
                            dry_run,
                            None,
                            user,
                            move_from[index].as_ref(),
                        );
                        if let Some(memory) = &memory {
                            job.cursors = memory.directory_only_cursors(user, directory_generation);
                        }
                        ledger.expect(&job, index);
                        fair.push(index, job);
                    }
                    phase2_started[index] = true;
                    memories.push(memory);
                    prepared.push(Some(ready));
                    reports.push(report);
                    continue;
                };
                let memory = request
                    .state
                    .filter(|_| !dry_run)
                    .map(|store| store.load(&ready.tenant_id, state::scope(tenant, &central)));
                let mut job = Job::new(
                    run_id,
                    &ready.tenant_id,
                    dry_run,
                    JobKind::Phase1 {
                        central,
                        sources: ready.users.clone(),
                    },
                );
                if let Some(memory) = &memory {
                    job.cursors = memory.phase1_cursors(&ready.users);
                }
                job.rebuild_central = request.rebuild_central;
                job.allow_mass_delete = request.allow_mass_delete;
                job.overlapped = dispatch.overlaps_phases()
                    && job.may_overlap(tenant, move_from[index].is_some());
                memories.push(memory);
                ledger.expect(&job, index);
                progress.add(Phase::Phase1, 1);
                fair.push(index, job);
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
    submit_released(&mut fair, &mut dispatch).await?;
    let tenant_started: Vec<Instant> = tenants.iter().map(|_| Instant::now()).collect();
    // Reports of jobs the producer settled itself, taken before the transport's.
    let mut settled_here: VecDeque<Report> = VecDeque::new();
    // The tenant whose phase-2 jobs go out next.
    let mut start_next: Option<Phase1Said> = None;
    loop {
        if let Some(Phase1Said {
            tenant,
            cursors: phase1,
            unreadable,
            overlapped,
        }) = start_next.take()
        {
            if let Some((ready, central)) = prepared[tenant]
                .as_ref()
                .and_then(|ready| Some((ready, ready.central.clone()?)))
            {
                if overlapped {
                    info!(tenant = %ready.tenant_id, users = ready.users.len(), "phase 1 planned; starting phase 2 beside its writes");
                } else {
                    info!(tenant = %ready.tenant_id, users = ready.users.len(), "phase 1 complete; starting phase 2");
                }
                phase2_started[tenant] = true;
                let start = Phase2Start {
                    run_id,
                    tenant: tenants[tenant],
                    index: tenant,
                    ready,
                    central,
                    phase1: &phase1,
                    unreadable: &unreadable,
                    kept: memories[tenant].is_some(),
                    move_from: move_from[tenant].as_ref(),
                    dry_run: dry(tenants[tenant]),
                    overlapped,
                };
                let letters = start.send(
                    &request,
                    &mut ledger,
                    &mut fair,
                    &mut settled_here,
                    &mut dispatch,
                    &mut progress,
                );
                dispatch.dead_letter(letters).await?;
                submit_released(&mut fair, &mut dispatch).await?;
            }
        }
        if ledger.waiting() == 0 {
            break;
        }
        let (report, dispatched) = match settled_here.pop_front() {
            Some(report) => (report, false),
            None => match dispatch.next_event(request.idle_timeout).await? {
                Some(Event::Report(report)) => (*report, true),
                Some(Event::Planned(planned)) => {
                    // An overlapped tenant's phase 1 planned: its phase-2 jobs go out now (once; a later attempt's
                    // plan finds them out already).
                    if let Some(tenant) = ledger.tenant_of(planned.run_id, planned.job_id) {
                        if !phase2_started[tenant] {
                            start_next = Some(Phase1Said {
                                tenant,
                                cursors: planned.cursors,
                                unreadable: planned.source_failures,
                                overlapped: true,
                            });
                        }
                    }
                    continue;
                }
                None => {
                    warn!(
                        missing = ledger.waiting(),
                        "no report for {:?}; giving up on the missing jobs", request.idle_timeout
                    );
                    break;
                }
            },
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
        if dispatched {
            fair.finished(tenant);
            // Whatever this report leads to below, the freed turn goes out first or with it (at the loop's end).
            submit_released(&mut fair, &mut dispatch).await?;
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
        if report.phase == Phase::Phase2 && (!succeeded || report.failed_writes > 0) {
            phase2_failed[tenant] = true;
        }
        if let Some(source) = request.cleanup {
            if report.phase == Phase::Phase2 {
                cleanup_waiting[tenant] = cleanup_waiting[tenant].saturating_sub(1);
                let central = prepared[tenant]
                    .as_ref()
                    .and_then(|ready| ready.central.clone())
                    .filter(|_| source.includes_central());
                if let (0, false, Some(central)) =
                    (cleanup_waiting[tenant], phase2_failed[tenant], central)
                {
                    let mut job = Job::new(
                        run_id,
                        &tenants[tenant].tenant_id,
                        dry(tenants[tenant]),
                        JobKind::Phase1 {
                            central,
                            sources: Vec::new(),
                        },
                    );
                    job.cleanup = Some(source);
                    info!(tenant = %tenants[tenant].tenant_id, "every mailbox cleaned up; cleaning up the central folder");
                    progress.add(Phase::Phase1, 1);
                    ledger.expect(&job, tenant);
                    fair.push(tenant, job);
                    submit_released(&mut fair, &mut dispatch).await?;
                }
            }
            continue;
        }
        if report.phase != Phase::Phase1 {
            continue;
        }
        let Some((ready, central)) = prepared[tenant]
            .as_ref()
            .and_then(|ready| Some((ready, ready.central.clone()?)))
        else {
            continue;
        };
        if phase2_started[tenant] {
            // Overlapped: its phase-2 jobs are out and wait for this.
            let ended = if succeeded {
                Ended::Written {
                    in_line_with: report.cursors.central.as_ref().and_then(|f| f.in_line_with),
                }
            } else {
                warn!(tenant = %ready.tenant_id, "phase 1 failed; its overlapped phase-2 jobs undo what they sent");
                Ended::Failed
            };
            dispatch
                .phase1_ended(&ready.tenant_id, run_id, ended)
                .await?;
        }
        if !succeeded {
            if !phase2_started[tenant] {
                warn!(tenant = %ready.tenant_id, "phase 1 failed; phase 2 not started for this tenant");
            }
            continue;
        }
        if let Some(memory) = memories[tenant].as_mut() {
            memory.phase1_succeeded(&ready.users, &report.cursors);
            memory.filled(&central, &tenants[tenant].mirror.central_folder_name);
        }
        // Unless overlapped (they went out when phase 1 planned), its phase-2 jobs go out now.
        if !phase2_started[tenant] {
            start_next = Some(Phase1Said {
                tenant,
                cursors: report.cursors.clone(),
                unreadable: report.source_failures.clone(),
                overlapped: false,
            });
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
    for job in &lost {
        phase2_failed[job.tenant] = true;
    }
    if let Some(store) = request.state {
        // Every mailbox now has its copies in the configured folder: a later change moves them from there.
        for (i, tenant) in tenants.iter().enumerate() {
            if !phase2_started[i] || phase2_failed[i] || dry(tenant) {
                continue;
            }
            let folder = FolderChoice::from(&tenant.distribution.target_folder);
            if let Err(error) = store.save_target_folder(&tenant.tenant_id, &folder) {
                warn!(tenant = %tenant.tenant_id, error = %format!("{error:#}"), "could not record the target folder");
            }
        }
    }
    // Known-permanent: a licensed user without an Exchange mailbox is failed on the first run that sees it, then
    // listed as not applicable until it gets one (or always failed, with --strict).
    for ((report, known), memory) in reports
        .iter_mut()
        .zip(&known_without_mailbox)
        .zip(&mut memories)
    {
        if !request.strict {
            report.mark_not_applicable(known);
        }
        if let Some(memory) = memory {
            memory.set_without_mailbox(report.still_without_mailbox(known));
        }
    }
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
    for tenant in disabled {
        info!(tenant = %tenant.tenant_id, "tenant disabled (Enabled: false); not run");
        reports.push(TenantReport {
            tenant_id: tenant.tenant_id.clone(),
            disabled: true,
            ..TenantReport::default()
        });
    }
    for invalid in &request.settings.invalid_tenants {
        if selected(&invalid.name) {
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

/// Submits every job the fair queue lets go now, together (the broker then waits for their confirms at once).
async fn submit_released<D: Dispatch>(fair: &mut FairQueue<Job>, dispatch: &mut D) -> Result<()> {
    let released: Vec<Job> = std::iter::from_fn(|| fair.release()).collect();
    if released.is_empty() {
        return Ok(());
    }
    dispatch.submit(released).await
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

/// What a tenant's phase 1 said its phase-2 jobs need: from its final report or, overlapped, from its plan
/// ([`Event::Planned`]).
struct Phase1Said {
    tenant: usize,
    /// The feeds as phase 1 left them.
    cursors: Cursors,
    /// The sources it could not read.
    unreadable: Vec<SourceFailure>,
    /// Said by its plan, while it writes.
    overlapped: bool,
}

/// What a tenant's phase-2 jobs are made from ([`Phase1Said`]).
struct Phase2Start<'a> {
    run_id: Uuid,
    tenant: &'a TenantSettings,
    index: usize,
    ready: &'a PreparedTenant,
    central: CentralFolder,
    phase1: &'a Cursors,
    /// The sources phase 1 could not read: a mailbox among them for a reason it has itself is failed here.
    unreadable: &'a [SourceFailure],
    /// A state is kept: the jobs carry the feeds.
    kept: bool,
    move_from: Option<&'a FolderChoice>,
    dry_run: bool,
    /// Sent while phase 1 writes (`Job::overlapped`).
    overlapped: bool,
}

impl Phase2Start<'_> {
    /// Makes one phase-2 job per user: expected by the ledger, then queued fairly, or settled here when phase 1
    /// found the mailbox in line, or could not read it for a reason the mailbox has itself (no Exchange mailbox,
    /// access refused): the job would fail on its first request, so it fails here with phase 1's reason and is
    /// returned with it, for the transport's dead-letter queue ([`Dispatch::dead_letter`]).
    fn send<D: Dispatch>(
        self,
        request: &RunRequest<'_>,
        ledger: &mut RunLedger,
        fair: &mut FairQueue<Job>,
        settled_here: &mut VecDeque<Report>,
        dispatch: &mut Tracked<'_, D>,
        progress: &mut Progress,
    ) -> Vec<(Job, FailureReason, String)> {
        let ready = self.ready;
        let mut letters = Vec::new();
        // By mailbox id: a look-up per user, not a scan of the list (a large tenant's users × its unreadable ones).
        let unreadable: BTreeMap<&str, &SourceFailure> = self
            .unreadable
            .iter()
            .map(|failure| (failure.mailbox.id.as_str(), failure))
            .collect();
        progress.add(Phase::Phase2, ready.users.len() as u64);
        for user in &ready.users {
            let mut job = request.phase2_job(
                self.run_id,
                &ready.tenant_id,
                self.dry_run,
                Some(self.central.clone()),
                user,
                self.move_from,
            );
            job.overlapped = self.overlapped;
            if self.kept {
                job.cursors = TenantMemory::phase2_cursors(
                    self.phase1,
                    user,
                    ready.directory.as_ref().and_then(|d| d.generation),
                );
            }
            ledger.expect(&job, self.index);
            let unreadable = unreadable
                .get(user.id.as_str())
                .and_then(|failure| Some((job.unreadable_report(failure)?, failure)));
            if let Some((failed, failure)) = unreadable {
                dispatch.settled_here(&job);
                settled_here.push_back(failed);
                letters.push((job, failure.reason, failure.error.clone()));
                continue;
            }
            // A mailbox phase 1 found in line needs no request: settled here, by the rule a worker would apply,
            // so a quiet run sends the broker no phase-2 job at all (8,510 jobs and their reports were most of a
            // 10,000-mailbox quiet run's time).
            let settings = self.tenant;
            match job.in_line_report(
                settings.distribution.receives_directory(),
                &FolderChoice::from(&settings.distribution.target_folder),
            ) {
                Some(settled) => {
                    dispatch.settled_here(&job);
                    settled_here.push_back(settled);
                }
                None => fair.push(self.index, job),
            }
        }
        letters
    }
}
