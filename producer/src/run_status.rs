//! The last-run snapshot behind `status`: per-tenant progress, kept up to date from the jobs and reports the
//! orchestrator exchanges with its transport, and handed to the transport to publish.
//!
//! [`Tracked`] wraps any [`Dispatch`] so the orchestrator only creates it, tells it the prepared tenants, the
//! reports its [`RunLedger`](crate::ledger::RunLedger) accepted and the jobs it gave up on; every job already
//! passes through it. It decides nothing about reports itself, so its counts are the run report's.
//!
//! Cadence: a snapshot goes out before the first wait for reports, then at most every [`EVERY`] while something
//! changes, every [`HEARTBEAT`] while nothing does (so an old `updated` on an unfinished run means the producer
//! is gone, not quiet), and once at the end. Publishing is best effort: a failed snapshot is logged, never fails
//! the run.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use shared::config::TenantSettings;
use shared::message::{Job, JobKind, Outcome, Phase, Report};
use shared::run_status::{Phase1State, Phase2Progress, RunStatus, TenantStatus, SCHEMA_VERSION};
use tokio::time::Instant;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::dispatch::{Dispatch, Event};
use crate::lease::LeaseError;
use crate::ledger::Waiting;
use crate::prepare::PreparedTenant;
use crate::summary::TenantReport;

/// Shortest time between two snapshots while reports arrive.
pub const EVERY: Duration = Duration::from_secs(2);
/// Longest time between two snapshots while nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Per-tenant bookkeeping of one run, with no I/O.
pub struct RunProgress {
    run_id: Uuid,
    mode: String,
    dry_run: bool,
    started_at: DateTime<Utc>,
    finished: bool,
    tenants: Vec<TenantStatus>,
    failed: Vec<BTreeSet<String>>,
}

impl RunProgress {
    /// A run with no tenant yet.
    pub fn new(run_id: Uuid, mode: &str, dry_run: bool, started_at: DateTime<Utc>) -> Self {
        Self {
            run_id,
            mode: mode.to_owned(),
            dry_run,
            started_at,
            finished: false,
            tenants: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn tenant(&mut self, tenant_id: &str) -> usize {
        if let Some(index) = self.tenants.iter().position(|t| t.tenant_id == tenant_id) {
            return index;
        }
        self.tenants.push(TenantStatus {
            tenant_id: tenant_id.to_owned(),
            users: 0,
            phase1: Phase1State::NotStarted,
            phase2: Phase2Progress::default(),
            failed_mailboxes: 0,
            dead_lettered: 0,
        });
        self.failed.push(BTreeSet::new());
        self.tenants.len() - 1
    }

    /// A job was handed to the transport.
    pub fn submitted(&mut self, job: &Job) {
        let tenant = self.tenant(&job.tenant_id);
        let entry = &mut self.tenants[tenant];
        match &job.kind {
            JobKind::Phase1 { sources, .. } => {
                entry.phase1 = Phase1State::Queued;
                entry.users = sources.len() as u64;
            }
            JobKind::Phase2 { .. } => entry.phase2.total += 1,
        }
    }

    /// Every tenant of the run, prepared or not, in configuration order (tenants whose preparation failed have
    /// no job to be learnt from).
    pub fn prepared(&mut self, reports: &[TenantReport]) {
        for report in reports {
            let index = self.tenant(&report.tenant_id);
            if report.error.is_none() {
                self.tenants[index].users = report.users as u64;
            }
        }
        let order = |id: &str| {
            reports
                .iter()
                .position(|r| r.tenant_id == id)
                .unwrap_or(usize::MAX)
        };
        let mut indexed: Vec<(usize, TenantStatus, BTreeSet<String>)> = self
            .tenants
            .drain(..)
            .zip(self.failed.drain(..))
            .enumerate()
            .map(|(old, (tenant, failed))| (old, tenant, failed))
            .collect();
        indexed.sort_by_key(|(old, tenant, _)| (order(&tenant.tenant_id), *old));
        for (_, tenant, failed) in indexed {
            self.tenants.push(tenant);
            self.failed.push(failed);
        }
    }

    /// A report the run's ledger accepted (see [`crate::ledger::RunLedger::accept`]).
    pub fn reported(&mut self, report: &Report) {
        let (tenant, phase) = (self.tenant(&report.tenant_id), report.phase);
        let entry = &mut self.tenants[tenant];
        let failed = &mut self.failed[tenant];
        match &report.outcome {
            Outcome::Retrying { .. } => {
                if phase == Phase::Phase1 && entry.phase1 == Phase1State::Queued {
                    entry.phase1 = Phase1State::Running;
                }
                return;
            }
            Outcome::Succeeded => {
                let refused = report.failed_writes > 0;
                if refused {
                    failed.insert(report.mailbox.upn.clone());
                }
                for source in &report.source_failures {
                    failed.insert(source.mailbox.upn.clone());
                }
                match phase {
                    Phase::Phase1 => entry.phase1 = Phase1State::Succeeded,
                    Phase::Phase2 => {
                        entry.phase2.done += 1;
                        entry.phase2.failed += u64::from(refused);
                    }
                }
            }
            Outcome::Failed { .. } => {
                failed.insert(report.mailbox.upn.clone());
                entry.dead_lettered += 1;
                match phase {
                    Phase::Phase1 => entry.phase1 = Phase1State::Failed,
                    Phase::Phase2 => {
                        entry.phase2.done += 1;
                        entry.phase2.failed += 1;
                    }
                }
            }
        }
        entry.failed_mailboxes = failed.len() as u64;
    }

    /// The run is over; `lost` are the jobs the ledger gave up on (no final report).
    pub fn finish(&mut self, lost: &[Waiting]) {
        for job in lost {
            let tenant = self.tenant(&job.tenant_id);
            let entry = &mut self.tenants[tenant];
            self.failed[tenant].insert(job.mailbox.clone());
            entry.failed_mailboxes = self.failed[tenant].len() as u64;
            match job.phase {
                Phase::Phase1 => entry.phase1 = Phase1State::Failed,
                Phase::Phase2 => {
                    entry.phase2.done += 1;
                    entry.phase2.failed += 1;
                }
            }
        }
        self.finished = true;
    }

    /// The snapshot as of `now`.
    pub fn snapshot(&self, now: DateTime<Utc>) -> RunStatus {
        RunStatus {
            schema: SCHEMA_VERSION,
            run_id: self.run_id,
            mode: self.mode.clone(),
            dry_run: self.dry_run,
            started_at: self.started_at,
            updated_at: now,
            finished: self.finished,
            tenants: self.tenants.clone(),
        }
    }
}

/// A [`Dispatch`] that keeps a [`RunProgress`] of everything passing through and publishes it through the
/// transport's [`Dispatch::publish_run_status`].
pub struct Tracked<'a, D> {
    inner: &'a mut D,
    progress: RunProgress,
    changed: bool,
    last_published: Option<Instant>,
    failures: u64,
}

impl<'a, D: Dispatch> Tracked<'a, D> {
    /// `job` was settled by the producer without the transport (see `Job::in_line_report`): counted as submitted.
    pub fn settled_here(&mut self, job: &Job) {
        self.progress.submitted(job);
        self.changed = true;
    }

    /// Starts tracking run `run_id` over `inner`.
    pub fn new(inner: &'a mut D, run_id: Uuid, started_at: DateTime<Utc>, dry_run: bool) -> Self {
        let progress = RunProgress::new(run_id, inner.mode(), dry_run, started_at);
        Self {
            inner,
            progress,
            changed: true,
            last_published: None,
            failures: 0,
        }
    }

    /// Every tenant of the run is known (see [`RunProgress::prepared`]).
    pub fn prepared(&mut self, reports: &[TenantReport]) {
        self.progress.prepared(reports);
        self.changed = true;
    }

    /// A report the run's ledger accepted.
    pub fn accepted(&mut self, report: &Report) {
        self.progress.reported(report);
        self.changed = true;
    }

    /// The run is over (`lost`: the jobs given up on): publishes the final snapshot, then lets the transport
    /// give back the run's leases and report queue.
    pub async fn finish(&mut self, lost: &[Waiting]) {
        self.progress.finish(lost);
        self.publish().await;
        self.inner.end().await;
    }

    async fn publish_if_due(&mut self) {
        let due = match self.last_published {
            None => true,
            Some(at) => (self.changed && at.elapsed() >= EVERY) || at.elapsed() >= HEARTBEAT,
        };
        if due {
            self.publish().await;
        }
    }

    async fn publish(&mut self) {
        let snapshot = self.progress.snapshot(Utc::now());
        self.last_published = Some(Instant::now());
        self.changed = false;
        if let Err(error) = self.inner.publish_run_status(&snapshot).await {
            self.failures += 1;
            // Once is enough to tell the operator; the run goes on either way.
            if self.failures == 1 {
                warn!(error = %format!("{error:#}"), "could not publish the run's progress for `status`");
            } else {
                debug!(error = %format!("{error:#}"), "could not publish the run's progress");
            }
        }
    }
}

impl<D: Dispatch> Dispatch for Tracked<'_, D> {
    async fn submit(&mut self, jobs: Vec<Job>) -> Result<()> {
        for job in &jobs {
            self.progress.submitted(job);
        }
        self.changed = true;
        self.inner.submit(jobs).await
    }

    /// Waits in slices of [`EVERY`] at most, publishing a due snapshot between them. A `None` before the slice
    /// ran out means the transport has nothing more to give (the embedded workers are gone), not a timeout.
    async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + wait;
        loop {
            self.publish_if_due().await;
            let slice_end = deadline.min(Instant::now() + EVERY);
            let slice = slice_end.saturating_duration_since(Instant::now());
            match self.inner.next_event(slice).await? {
                Some(event) => return Ok(Some(event)),
                None if Instant::now() >= deadline || Instant::now() < slice_end => {
                    return Ok(None)
                }
                None => {}
            }
        }
    }

    fn mode(&self) -> &'static str {
        self.inner.mode()
    }

    fn limits(&self) -> crate::fair::Limits {
        self.inner.limits()
    }

    fn overlaps_phases(&self) -> bool {
        self.inner.overlaps_phases()
    }

    async fn phase1_ended(
        &mut self,
        tenant_id: &str,
        run_id: Uuid,
        ended: worker::overlap::Ended,
    ) -> Result<()> {
        self.inner.phase1_ended(tenant_id, run_id, ended).await
    }

    async fn begin(&mut self, run_id: Uuid) -> Result<()> {
        self.inner.begin(run_id).await
    }

    async fn dead_letter(
        &mut self,
        letters: Vec<(Job, shared::message::FailureReason, String)>,
    ) -> Result<()> {
        self.inner.dead_letter(letters).await
    }

    fn tenant_prepared(&mut self, tenant: &TenantSettings, ready: &PreparedTenant) {
        self.inner.tenant_prepared(tenant, ready);
    }

    async fn lease(&mut self, tenant_id: &str) -> Result<(), LeaseError> {
        self.inner.lease(tenant_id).await
    }

    async fn end(&mut self) {
        self.inner.end().await
    }
}

#[cfg(test)]
mod tests {
    use shared::message::{CentralFolder, FailureReason, SourceFailure};
    use shared::model::Mailbox;

    use super::*;

    use crate::ledger::RunLedger;

    /// A job handed to the transport, as the orchestrator records it.
    fn submit(ledger: &mut RunLedger, progress: &mut RunProgress, job: &Job) {
        ledger.expect(job, 0);
        progress.submitted(job);
    }

    /// A report as the orchestrator passes it on: only when the ledger accepts it.
    fn feed(ledger: &mut RunLedger, progress: &mut RunProgress, report: &Report) -> bool {
        let accepted = ledger.accept(report).is_some();
        if accepted {
            progress.reported(report);
        }
        accepted
    }

    fn mailbox(upn: &str) -> Mailbox {
        Mailbox {
            id: upn.into(),
            upn: upn.into(),
        }
    }

    fn central() -> CentralFolder {
        CentralFolder {
            mailbox: mailbox("shared@a"),
            folder_id: Some("f".into()),
        }
    }

    fn phase1(run: Uuid, tenant: &str, users: &[&str]) -> Job {
        let sources = users.iter().map(|u| mailbox(u)).collect();
        Job::new(
            run,
            tenant,
            false,
            JobKind::Phase1 {
                central: central(),
                sources,
            },
        )
    }

    fn phase2(run: Uuid, tenant: &str, user: &str) -> Job {
        Job::new(
            run,
            tenant,
            false,
            JobKind::Phase2 {
                central: Some(central()),
                mailbox: mailbox(user),
            },
        )
    }

    fn report(job: &Job, outcome: Outcome) -> Report {
        Report {
            duration_ms: 1,
            ..Report::of(job, 1, outcome)
        }
    }

    fn tenant_report(id: &str, users: usize, error: Option<&str>) -> TenantReport {
        TenantReport {
            tenant_id: id.into(),
            users,
            error: error.map(str::to_owned),
            ..TenantReport::default()
        }
    }

    fn dead(reason: FailureReason) -> Outcome {
        Outcome::Failed {
            reason,
            error: "x".into(),
        }
    }

    #[test]
    fn counts_follow_jobs_and_final_reports_per_tenant() {
        let run = Uuid::now_v7();
        let mut progress = RunProgress::new(run, "broker", false, Utc::now());
        let mut ledger = RunLedger::new(run);
        let a1 = phase1(run, "a", &["u1@a", "u2@a", "u3@a"]);
        let b1 = phase1(run, "b", &["v1@b"]);
        submit(&mut ledger, &mut progress, &a1);
        submit(&mut ledger, &mut progress, &b1);
        progress.prepared(&[
            tenant_report("c", 0, Some("bad secret")),
            tenant_report("a", 3, None),
            tenant_report("b", 1, None),
        ]);
        let snap = progress.snapshot(Utc::now());
        let ids: Vec<&str> = snap.tenants.iter().map(|t| t.tenant_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"], "configuration order");
        assert_eq!(snap.tenants[0].phase1, Phase1State::NotStarted);
        assert_eq!(snap.tenants[1].phase1, Phase1State::Queued);
        assert_eq!(snap.tenants[1].users, 3);

        let retry = Outcome::Retrying {
            after_secs: 1,
            error: "503".into(),
        };
        assert!(feed(&mut ledger, &mut progress, &report(&a1, retry)));
        assert_eq!(
            progress.snapshot(Utc::now()).tenants[1].phase1,
            Phase1State::Running
        );
        let mut a1_done = report(&a1, Outcome::Succeeded);
        a1_done.source_failures.push(SourceFailure {
            mailbox: mailbox("u3@a"),
            reason: FailureReason::NoMailbox,
            error: "404".into(),
        });
        assert!(feed(&mut ledger, &mut progress, &a1_done));
        assert!(
            !feed(&mut ledger, &mut progress, &a1_done),
            "a duplicate final report changes nothing"
        );
        let jobs: Vec<Job> = ["u1@a", "u2@a", "u3@a"]
            .iter()
            .map(|u| phase2(run, "a", u))
            .collect();
        for job in &jobs {
            submit(&mut ledger, &mut progress, job);
        }
        assert!(feed(
            &mut ledger,
            &mut progress,
            &report(&jobs[0], Outcome::Succeeded)
        ));
        let mut refused = report(&jobs[1], Outcome::Succeeded);
        refused.failed_writes = 2;
        assert!(feed(&mut ledger, &mut progress, &refused));
        assert!(feed(
            &mut ledger,
            &mut progress,
            &report(&jobs[2], dead(FailureReason::NoMailbox))
        ));
        assert!(feed(
            &mut ledger,
            &mut progress,
            &report(&b1, dead(FailureReason::Authentication))
        ));
        let other_run = phase2(Uuid::now_v7(), "a", "u1@a");
        assert!(!feed(
            &mut ledger,
            &mut progress,
            &report(&other_run, Outcome::Succeeded)
        ));

        progress.finish(&ledger.give_up());
        let snap = progress.snapshot(Utc::now());
        assert!(snap.finished);
        let a = &snap.tenants[1];
        assert_eq!(a.phase1, Phase1State::Succeeded);
        assert_eq!(
            a.phase2,
            Phase2Progress {
                total: 3,
                done: 3,
                failed: 2
            }
        );
        assert_eq!(a.failed_mailboxes, 2, "u2 (refused writes) and u3 (twice)");
        assert_eq!(a.dead_lettered, 1);
        let b = &snap.tenants[2];
        assert_eq!(b.phase1, Phase1State::Failed);
        assert_eq!(b.phase2.total, 0);
        assert_eq!((b.failed_mailboxes, b.dead_lettered), (1, 1));
    }

    #[test]
    fn jobs_without_a_final_report_count_as_failed_at_the_end() {
        let run = Uuid::now_v7();
        let mut progress = RunProgress::new(run, "broker", false, Utc::now());
        let mut ledger = RunLedger::new(run);
        let a1 = phase1(run, "a", &["u1@a"]);
        let b1 = phase1(run, "b", &["v1@b", "v2@b"]);
        submit(&mut ledger, &mut progress, &a1);
        submit(&mut ledger, &mut progress, &b1);
        feed(&mut ledger, &mut progress, &report(&b1, Outcome::Succeeded));
        let lost = phase2(run, "b", "v1@b");
        submit(&mut ledger, &mut progress, &lost);
        let snap = progress.snapshot(Utc::now());
        assert!(!snap.finished);
        assert_eq!(snap.tenants[1].phase2.done, 0);
        progress.finish(&ledger.give_up());
        let snap = progress.snapshot(Utc::now());
        assert_eq!(snap.tenants[0].phase1, Phase1State::Failed);
        assert_eq!(
            snap.tenants[0].dead_lettered, 0,
            "lost is not dead-lettered"
        );
        assert_eq!(
            snap.tenants[1].phase2,
            Phase2Progress {
                total: 1,
                done: 1,
                failed: 1
            }
        );
        assert_eq!(snap.tenants[1].failed_mailboxes, 1);
    }

    /// A transport that records what it was asked to publish.
    #[derive(Default)]
    struct Recorder {
        reports: Vec<Report>,
        published: Vec<RunStatus>,
        /// Answers `None` at once, like the embedded queue once its workers are gone.
        closed: bool,
        /// Calls of `next_event` while closed.
        closed_calls: u32,
    }

    impl Dispatch for Recorder {
        async fn submit(&mut self, _jobs: Vec<Job>) -> Result<()> {
            Ok(())
        }

        async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>> {
            match self.reports.pop() {
                Some(report) => Ok(Some(Event::from(report))),
                None => {
                    if self.closed {
                        self.closed_calls += 1;
                    }
                    // Past a few calls even a closed transport lets (paused) time pass, so a caller that keeps
                    // asking fails the test below instead of spinning forever.
                    if !self.closed || self.closed_calls > 3 {
                        tokio::time::sleep(wait).await;
                    }
                    Ok(None)
                }
            }
        }

        fn mode(&self) -> &'static str {
            "broker"
        }

        async fn lease(&mut self, _tenant_id: &str) -> Result<(), LeaseError> {
            Ok(())
        }

        async fn publish_run_status(&mut self, status: &RunStatus) -> Result<()> {
            self.published.push(status.clone());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn snapshots_go_out_first_then_throttled_with_heartbeats_and_at_the_end() {
        let run = Uuid::now_v7();
        let a1 = phase1(run, "a", &["u1@a"]);
        let mut recorder = Recorder {
            reports: vec![report(&a1, Outcome::Succeeded)],
            ..Recorder::default()
        };
        {
            let mut tracked = Tracked::new(&mut recorder, run, Utc::now(), false);
            tracked.submit(vec![a1.clone()]).await.expect("submit");
            tracked.prepared(&[tenant_report("a", 1, None)]);
            let got = tracked.next_event(Duration::from_secs(60)).await;
            let Ok(Some(Event::Report(got))) = got else {
                panic!("no report: {got:?}")
            };
            tracked.accepted(&got);
            assert_eq!(tracked.inner.published.len(), 1, "one before waiting");
            assert_eq!(
                tracked.inner.published[0].tenants[0].phase1,
                Phase1State::Queued
            );
            // The change is published after EVERY, then only heartbeats while nothing changes.
            let none = tracked.next_event(Duration::from_secs(65)).await;
            assert!(matches!(none, Ok(None)));
            let published = &tracked.inner.published;
            assert_eq!(published.len(), 4, "change + 2 heartbeats: {published:?}");
            assert_eq!(published[1].tenants[0].phase1, Phase1State::Succeeded);
            tracked.finish(&[]).await;
        }
        let last = recorder.published.last().expect("final snapshot");
        assert!(last.finished);
        assert_eq!(recorder.published.len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transport_that_closed_ends_the_wait_at_once() {
        let mut recorder = Recorder {
            closed: true,
            ..Recorder::default()
        };
        let mut tracked = Tracked::new(&mut recorder, Uuid::now_v7(), Utc::now(), false);
        let started = Instant::now();
        let got = tracked.next_event(Duration::from_secs(900)).await;
        assert!(matches!(got, Ok(None)));
        assert_eq!(tracked.inner.closed_calls, 1);
        assert!(
            started.elapsed() < EVERY,
            "waited {:?} on a closed transport",
            started.elapsed()
        );
    }
}
