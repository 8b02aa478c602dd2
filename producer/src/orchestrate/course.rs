//! One run's course: each tenant's first jobs, then, report by report, what follows from them (phase 2 once phase 1
//! planned or wrote, the central folder's cleanup once every mailbox's is done), until every job has its final
//! report; then what the run learnt is kept.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use anyhow::Result;
use shared::config::TenantSettings;
use shared::feed::Cursors;
use shared::message::{
    CentralFolder, FailureReason, FolderChoice, Job, JobKind, Outcome, Phase, Report, SourceFailure,
};
use shared::sync::CleanupSource;
use tracing::{info, warn};
use uuid::Uuid;
use worker::overlap::{Ended, Planned};

use super::phase2::Phase2Start;
use super::request::RunRequest;
use crate::dispatch::{Dispatch, Event};
use crate::fair::{FairQueue, Limits};
use crate::ledger::RunLedger;
use crate::prepare::PreparedTenant;
use crate::progress::Progress;
use crate::run_status::Tracked;
use crate::state::{self, TenantMemory};
use crate::summary::TenantReport;

/// A run in progress: its tenants, and what every one of its jobs goes through.
pub(super) struct Course<'r, 'a> {
    run_id: Uuid,
    request: &'r RunRequest<'a>,
    /// In configuration order; a job names its tenant by index here ([`RunLedger::expect`]).
    tenants: Vec<TenantRun<'a>>,
    /// The one place that decides whether a report counts.
    ledger: RunLedger,
    /// Every job goes through it: tenants take turns, each with a bounded number out.
    fair: FairQueue<Job>,
    progress: Progress,
    /// Reports of jobs the producer settled itself, taken before the transport's.
    settled_here: VecDeque<Report>,
}

/// One tenant's course through the run.
struct TenantRun<'a> {
    settings: &'a TenantSettings,
    /// Writes nothing ([`RunRequest::dry`]).
    dry_run: bool,
    report: TenantReport,
    /// What preparing found; `None` when it failed, and the tenant has no jobs.
    ready: Option<PreparedTenant>,
    /// The tenant's feeds as earlier runs left them, updated by this run's reports (a state is kept and the tenant
    /// writes).
    memory: Option<TenantMemory>,
    /// Where its managed copies move from in this run ([`RunRequest::move_from`]).
    move_from: Option<FolderChoice>,
    /// Mailboxes earlier runs found without an Exchange mailbox (read even in a dry run, which saves nothing).
    known_without_mailbox: BTreeSet<String>,
    started: Instant,
    /// Its phase-2 jobs are out.
    phase2_started: bool,
    /// One of its phase-2 jobs failed, failed some writes, ran dry on a worker configured so, or never reported.
    phase2_failed: bool,
    /// A job of this real run ran dry on a worker whose own configuration says so (warned once).
    ran_dry_somewhere: bool,
    /// In a cleanup: how many mailbox jobs are still out before the central folder's.
    cleanup_waiting: usize,
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

impl<'r, 'a> Course<'r, 'a> {
    /// A course for `tenants` tenants, added next ([`Course::add_tenant`]), each with `limits` on its jobs out.
    pub(super) fn new(
        run_id: Uuid,
        request: &'r RunRequest<'a>,
        tenants: usize,
        limits: Limits,
    ) -> Self {
        Self {
            run_id,
            request,
            tenants: Vec::with_capacity(tenants),
            ledger: RunLedger::new(run_id),
            fair: FairQueue::new(tenants, limits),
            progress: Progress::new(),
            settled_here: VecDeque::new(),
        }
    }

    /// Adds the next tenant with what preparing it gave (`outcome`), and queues its first jobs.
    pub(super) fn add_tenant<D: Dispatch>(
        &mut self,
        settings: &'a TenantSettings,
        outcome: Result<PreparedTenant, String>,
        dispatch: &mut Tracked<'_, D>,
    ) {
        let request = self.request;
        let dry_run = request.dry(settings);
        let mut tenant = TenantRun {
            settings,
            dry_run,
            report: TenantReport {
                tenant_id: settings.tenant_id.clone(),
                dry_run,
                ..TenantReport::default()
            },
            ready: None,
            memory: None,
            move_from: request.move_from(settings),
            known_without_mailbox: request
                .state
                .map(|store| store.without_mailbox(&settings.tenant_id))
                .unwrap_or_default(),
            started: Instant::now(),
            phase2_started: false,
            phase2_failed: false,
            ran_dry_somewhere: false,
            cleanup_waiting: 0,
        };
        // Once per run: a certificate about to expire (an expired one fails the tenant's token instead).
        if let Some(warning) = shared::credential::expiry_warning(
            &settings.tenant_id,
            &settings.credential,
            chrono::Utc::now(),
        ) {
            warn!(tenant = %settings.tenant_id, "{warning}");
            tenant.report.warnings.push(warning);
        }
        match outcome {
            Ok(ready) => {
                dispatch.tenant_prepared(settings, &ready);
                tenant.report.users = ready.users.len();
                tenant
                    .report
                    .warnings
                    .extend(ready.warnings.iter().cloned());
                self.first_jobs(&mut tenant, &ready, dispatch.overlaps_phases());
                tenant.ready = Some(ready);
            }
            Err(error) => {
                warn!(tenant = %settings.tenant_id, %error, "tenant skipped");
                tenant.report.error = Some(error);
            }
        }
        self.tenants.push(tenant);
    }

    /// Queues a prepared tenant's first jobs: in a cleanup every mailbox's (the central folder's follows them);
    /// without the mirror every receiving mailbox's; else its phase-1 job (`overlaps`: the transport may start
    /// phase 2 once phase 1 planned).
    fn first_jobs(&mut self, tenant: &mut TenantRun<'a>, ready: &PreparedTenant, overlaps: bool) {
        let request = self.request;
        let index = self.tenants.len();
        if request.cleanup.is_some() {
            // Every mailbox first: their jobs judge copies against the central folder, emptied last.
            self.progress.add(Phase::Phase2, ready.users.len() as u64);
            for user in &ready.users {
                let job = request.phase2_job(
                    self.run_id,
                    &ready.tenant_id,
                    tenant.dry_run,
                    ready.central.clone(),
                    user,
                    None,
                );
                self.ledger.expect(&job, index);
                self.fair.push(index, job);
            }
            tenant.cleanup_waiting = ready.users.len();
            return;
        }
        let Some(central) = ready.central.clone() else {
            // No mirror: no phase 1; every receiving mailbox's job carries the directory alone, with the mailbox's
            // kept feed, which the job checks itself.
            let mut memory = request
                .state
                .filter(|_| !tenant.dry_run)
                .map(|store| store.load(&ready.tenant_id, state::directory_scope(tenant.settings)));
            if let Some(memory) = memory.as_mut() {
                memory.receivers(&ready.users);
            }
            let generation = ready.directory.as_ref().and_then(|d| d.generation);
            self.progress.add(Phase::Phase2, ready.users.len() as u64);
            for user in &ready.users {
                let mut job = request.phase2_job(
                    self.run_id,
                    &ready.tenant_id,
                    tenant.dry_run,
                    None,
                    user,
                    tenant.move_from.as_ref(),
                );
                if let Some(memory) = &memory {
                    job.cursors = memory.directory_only_cursors(user, generation);
                }
                self.ledger.expect(&job, index);
                self.fair.push(index, job);
            }
            tenant.phase2_started = true;
            tenant.memory = memory;
            return;
        };
        let memory = request
            .state
            .filter(|_| !tenant.dry_run)
            .map(|store| store.load(&ready.tenant_id, state::scope(tenant.settings, &central)));
        let mut job = Job::new(
            self.run_id,
            &ready.tenant_id,
            tenant.dry_run,
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
        job.overlapped = overlaps && job.may_overlap(tenant.settings, tenant.move_from.is_some());
        tenant.memory = memory;
        self.ledger.expect(&job, index);
        self.progress.add(Phase::Phase1, 1);
        self.fair.push(index, job);
    }

    /// Each tenant's report as it stands.
    pub(super) fn reports(&self) -> Vec<TenantReport> {
        self.tenants.iter().map(|t| t.report.clone()).collect()
    }

    /// Submits every job the fair queue lets go now, together (the broker then waits for their confirms at once).
    pub(super) async fn submit_released<D: Dispatch>(
        &mut self,
        dispatch: &mut Tracked<'_, D>,
    ) -> Result<()> {
        let released: Vec<Job> = std::iter::from_fn(|| self.fair.release()).collect();
        if released.is_empty() {
            return Ok(());
        }
        dispatch.submit(released).await
    }

    /// Follows the run's events until every job it expects has its final report, or none came for the run's idle
    /// timeout (the missing ones are then given up on by [`Course::finish`]).
    pub(super) async fn follow<D: Dispatch>(
        &mut self,
        dispatch: &mut Tracked<'_, D>,
    ) -> Result<()> {
        // The tenant whose phase-2 jobs go out next.
        let mut start_next: Option<Phase1Said> = None;
        loop {
            if let Some(said) = start_next.take() {
                self.start_phase2(said, dispatch).await?;
            }
            if self.ledger.waiting() == 0 {
                return Ok(());
            }
            let (report, dispatched) = match self.settled_here.pop_front() {
                Some(report) => (report, false),
                None => match dispatch.next_event(self.request.idle_timeout).await? {
                    Some(Event::Report(report)) => (*report, true),
                    Some(Event::Planned(planned)) => {
                        start_next = self.planned(planned);
                        continue;
                    }
                    None => {
                        warn!(
                            missing = self.ledger.waiting(),
                            "no report for {:?}; giving up on the missing jobs",
                            self.request.idle_timeout
                        );
                        return Ok(());
                    }
                },
            };
            start_next = self.reported(report, dispatched, dispatch).await?;
        }
    }

    /// An overlapped tenant's phase 1 planned: its phase-2 jobs go out now (once; a later attempt's plan finds them
    /// out already).
    fn planned(&self, planned: Planned) -> Option<Phase1Said> {
        let tenant = self.ledger.tenant_of(planned.run_id, planned.job_id)?;
        (!self.tenants[tenant].phase2_started).then_some(Phase1Said {
            tenant,
            cursors: planned.cursors,
            unreadable: planned.source_failures,
            overlapped: true,
        })
    }

    /// Sends a tenant's phase-2 jobs: queued fairly, or settled here (their reports come back through
    /// `settled_here`), the ones failed for phase 1's reason also to the transport's dead letters.
    async fn start_phase2<D: Dispatch>(
        &mut self,
        said: Phase1Said,
        dispatch: &mut Tracked<'_, D>,
    ) -> Result<()> {
        let index = said.tenant;
        let tenant = &mut self.tenants[index];
        let Some((ready, central)) = mirrored(&tenant.ready) else {
            return Ok(());
        };
        if said.overlapped {
            info!(tenant = %ready.tenant_id, users = ready.users.len(), "phase 1 planned; starting phase 2 beside its writes");
        } else {
            info!(tenant = %ready.tenant_id, users = ready.users.len(), "phase 1 complete; starting phase 2");
        }
        tenant.phase2_started = true;
        let start = Phase2Start {
            run_id: self.run_id,
            tenant: tenant.settings,
            index,
            ready,
            central,
            phase1: &said.cursors,
            unreadable: &said.unreadable,
            kept: tenant.memory.is_some(),
            move_from: tenant.move_from.as_ref(),
            dry_run: tenant.dry_run,
            overlapped: said.overlapped,
        };
        let letters = start.send(
            self.request,
            &mut self.ledger,
            &mut self.fair,
            &mut self.settled_here,
            dispatch,
            &mut self.progress,
        );
        dispatch.dead_letter(letters).await?;
        self.submit_released(dispatch).await
    }

    /// A report: recorded if the ledger counts it. A job's final report frees its tenant's turn, and may lead to
    /// the tenant's next jobs; returns the tenant whose phase 2 is to start.
    async fn reported<D: Dispatch>(
        &mut self,
        report: Report,
        dispatched: bool,
        dispatch: &mut Tracked<'_, D>,
    ) -> Result<Option<Phase1Said>> {
        // The one place that decides whether a report counts; everything below is fed from it.
        let Some(accepted) = self.ledger.accept(&report) else {
            return Ok(None);
        };
        let index = accepted.tenant;
        self.tenants[index].report.record(&report);
        dispatch.accepted(&report);
        if !accepted.last {
            return Ok(None);
        }
        if dispatched {
            self.fair.finished(index);
            // Whatever this report leads to below, the freed turn goes out first or with it (on the next turn).
            self.submit_released(dispatch).await?;
        }
        self.progress
            .done(report.phase, report.outcome == Outcome::Succeeded);
        self.tenants[index].final_report(&report);
        if let Some(source) = self.request.cleanup {
            if report.phase == Phase::Phase2 {
                self.mailbox_cleaned(index, source, dispatch).await?;
            }
            return Ok(None);
        }
        if report.phase != Phase::Phase1 {
            return Ok(None);
        }
        self.phase1_ended(index, &report, dispatch).await
    }

    /// In a cleanup, a mailbox's job ended: once every one has and none failed, the central folder's job goes out
    /// (when the source cleaned up includes it).
    async fn mailbox_cleaned<D: Dispatch>(
        &mut self,
        index: usize,
        source: CleanupSource,
        dispatch: &mut Tracked<'_, D>,
    ) -> Result<()> {
        let tenant = &mut self.tenants[index];
        tenant.cleanup_waiting = tenant.cleanup_waiting.saturating_sub(1);
        let central = tenant
            .ready
            .as_ref()
            .and_then(|ready| ready.central.clone())
            .filter(|_| source.includes_central());
        let (0, false, Some(central)) = (tenant.cleanup_waiting, tenant.phase2_failed, central)
        else {
            return Ok(());
        };
        let mut job = Job::new(
            self.run_id,
            &tenant.settings.tenant_id,
            tenant.dry_run,
            JobKind::Phase1 {
                central,
                sources: Vec::new(),
            },
        );
        job.cleanup = Some(source);
        info!(tenant = %tenant.settings.tenant_id, "every mailbox cleaned up; cleaning up the central folder");
        self.progress.add(Phase::Phase1, 1);
        self.ledger.expect(&job, index);
        self.fair.push(index, job);
        self.submit_released(dispatch).await
    }

    /// A tenant's phase 1 ended (`report`, its final one): phase-2 jobs already out learn how, the feeds remember
    /// a success, and unless they are out, its phase-2 jobs are to start (returned).
    async fn phase1_ended<D: Dispatch>(
        &mut self,
        index: usize,
        report: &Report,
        dispatch: &mut Tracked<'_, D>,
    ) -> Result<Option<Phase1Said>> {
        let tenant = &mut self.tenants[index];
        let Some((ready, central)) = mirrored(&tenant.ready) else {
            return Ok(None);
        };
        let succeeded = report.outcome == Outcome::Succeeded;
        if tenant.phase2_started {
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
                .phase1_ended(&ready.tenant_id, self.run_id, ended)
                .await?;
        }
        if !succeeded {
            if !tenant.phase2_started {
                warn!(tenant = %ready.tenant_id, "phase 1 failed; phase 2 not started for this tenant");
            }
            return Ok(None);
        }
        if let Some(memory) = tenant.memory.as_mut() {
            memory.phase1_succeeded(&ready.users, &report.cursors);
            memory.filled(&central, &tenant.settings.mirror.central_folder_name);
        }
        // Unless overlapped (they went out when phase 1 planned), its phase-2 jobs go out now.
        Ok((!tenant.phase2_started).then(|| Phase1Said {
            tenant: index,
            cursors: report.cursors.clone(),
            unreadable: report.source_failures.clone(),
            overlapped: false,
        }))
    }

    /// The run is over: the jobs still missing are given up on, each tenant keeps what the run learnt, and the
    /// tenants' reports come back in configuration order.
    pub(super) async fn finish<D: Dispatch>(
        mut self,
        dispatch: &mut Tracked<'_, D>,
    ) -> Vec<TenantReport> {
        let lost = self.ledger.give_up();
        for job in &lost {
            let tenant = &mut self.tenants[job.tenant];
            tenant.report.record_lost(
                &job.mailbox,
                job.phase,
                "no final report arrived (worker crash budget spent, or no worker running): check the dead-letter queues",
            );
            tenant.phase2_failed = true;
        }
        self.progress.finish();
        for tenant in &mut self.tenants {
            tenant.keep(self.request);
        }
        dispatch.finish(&lost).await;
        self.tenants.into_iter().map(|t| t.report).collect()
    }
}

impl TenantRun<'_> {
    /// A final report of one of the tenant's jobs: its phase-2 feed, its time so far, whether phase 2 failed.
    fn final_report(&mut self, report: &Report) {
        let succeeded = report.outcome == Outcome::Succeeded;
        if let (Some(memory), Phase::Phase2) = (self.memory.as_mut(), report.phase) {
            if succeeded {
                memory.phase2_succeeded(&report.mailbox.id, &report.cursors);
            } else {
                memory.phase2_failed(&report.mailbox.id);
            }
        }
        self.report.duration_ms =
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // A user without an Exchange mailbox fails on every run and holds no copies anywhere: it does not keep the
        // run from being the one that brought every copy into the configured folder.
        let without_mailbox = matches!(
            report.outcome,
            Outcome::Failed {
                reason: FailureReason::NoMailbox,
                ..
            }
        );
        if report.phase == Phase::Phase2
            && ((!succeeded && !without_mailbox) || report.failed_writes > 0)
        {
            self.phase2_failed = true;
        }
        // A worker whose own configuration says dry run wrote nothing of this real run's job: nothing of it is kept
        // as done (the worker keeps no feed of it either), and the operator is told once.
        if report.dry_run && !self.dry_run {
            if report.phase == Phase::Phase2 {
                self.phase2_failed = true;
            }
            if !self.ran_dry_somewhere {
                self.ran_dry_somewhere = true;
                self.report.warnings.push(format!(
                    "a worker ran this tenant's jobs dry (its own configuration says DryRun) and wrote nothing \
                     there, first {} in {}: restart the workers with the new configuration",
                    report.mailbox.upn, report.phase
                ));
            }
        }
    }

    /// Keeps what the run learnt of the tenant: where its copies now are, which mailboxes have none, its feeds.
    fn keep(&mut self, request: &RunRequest<'_>) {
        let tenant_id = &self.settings.tenant_id;
        if let Some(store) = request.state {
            // Every mailbox now has its copies in the configured folder: a later change moves them from there.
            if self.phase2_started && !self.phase2_failed && !self.dry_run {
                let folder = FolderChoice::from(&self.settings.distribution.target_folder);
                if let Err(error) = store.save_target_folder(tenant_id, &folder) {
                    warn!(tenant = %tenant_id, error = %format!("{error:#}"), "could not record the target folder");
                }
            }
        }
        // Known-permanent: a licensed user without an Exchange mailbox is failed on the first run that sees it,
        // then listed as not applicable until it gets one (or always failed, with --strict).
        if !request.strict {
            self.report.mark_not_applicable(&self.known_without_mailbox);
        }
        if let Some(memory) = self.memory.as_mut() {
            memory.set_without_mailbox(
                self.report
                    .still_without_mailbox(&self.known_without_mailbox),
            );
        }
        if let (Some(store), Some(memory), Some(ready)) = (request.state, &self.memory, &self.ready)
        {
            if let Err(error) = store.save(&ready.tenant_id, memory) {
                // The run itself is done; the next one reads the folders in full.
                warn!(tenant = %ready.tenant_id, error = %format!("{error:#}"), "could not save the state");
            }
        }
    }
}

/// A tenant as prepared, with its central folder: `None` when preparing it failed or its mirror is off (it has no
/// phase 1). Takes the field alone, so the rest of the tenant stays free to change.
fn mirrored(ready: &Option<PreparedTenant>) -> Option<(&PreparedTenant, CentralFolder)> {
    let ready = ready.as_ref()?;
    Some((ready, ready.central.clone()?))
}
