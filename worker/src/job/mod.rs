//! One job, start to finish: read, plan with the pure rules, write, and say how it went.
//!
//! This is the code every mode runs: the AMQP consumer and the embedded queue both call [`JobRunner::run`]. It
//! never touches a queue; what happens next is decided from its [`AttemptResult`] by
//! [`crate::disposition`].
//!
//! This file holds the runner, the dispatch of a job to its step, the trust check before it, and the rules every
//! step shares (how a Graph error is classified, the planning context, the dry-run lines). Each step has its own
//! file:
//! - `phase1`: the central folder merged from every source mailbox.
//! - `phase2`: one receiving mailbox brought in line with the central folder and the directory.
//! - `cleanup`: the managed copies removed from a mailbox or the central folder (`Job::cleanup`).
//! - `central`: the central folder read once per worker and run, under the fleet's lease.
//! - `directory`: the directory persons a tenant receives, from itself and its `FromTenants`.
//! - `apply`: a plan written in `$batch`es, counted.
//! - `photos` and `origin_photos`: the photos of phase 2's copies and of phase 1's central persons.
//! - `folders`: the folders a job reads and writes, and their change feeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use shared::config::{Settings, TenantSettings};
use shared::feed::{Cursors, Written};
use shared::graph::{ErrorKind, GraphClient, GraphError, TenantClient};
use shared::message::{
    CentralFolder, FailureReason, FolderChoice, GraphCounts, Job, JobKind, PhotoReport, Report,
    SourceFailure,
};
use shared::model::Mailbox;
use shared::sync::{Plan, PlanContext, PlanCounts, SyncId};
use shared::test_users;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::central_cache::CentralCache;
use crate::central_photos::CentralPhotos;
use crate::directory_cache::DirectoryCache;
use crate::disposition::{AttemptResult, MAX_RETRY_WAIT};
use crate::heap;
use crate::in_flight::InFlight;
use crate::leases::BrokerLeases;
use crate::overlap::Boards;
use crate::planning_budget::PlanningBudget;
use crate::trust::{self, CentralLocation, Locations, Receivers, Resolved};

mod apply;
mod central;
mod cleanup;
mod directory;
mod folders;
mod origin_photos;
mod overlapped;
mod phase1;
mod phase2;
mod photos;

pub use directory::directory_failure;

/// The most plan lines a dry-run report lists (writes only); the rest are counted in one last line. A dry run of
/// 1,000 users x 5,000 contacts so reports a few hundred kilobytes, not gigabytes.
pub const MAX_PLANNED_LINES: usize = 200;

/// Runs jobs against Graph. Cheap to share: one per process.
pub struct JobRunner {
    graph: GraphClient,
    settings: Arc<Settings>,
    central: CentralCache,
    /// The selected directory persons, read once per tenant and run (directory tenants only).
    directory: DirectoryCache,
    /// Where each tenant's central folder is by this worker's configuration (a job is checked against it).
    locations: Locations,
    /// Attempts in progress.
    in_flight: InFlight,
    /// Contacts planned against at once (see [`crate::planning_budget`]).
    planning: PlanningBudget,
    /// The central contacts' photos phase 2 sends, read once per worker and run (`Photos` on).
    central_photos: Arc<CentralPhotos>,
    /// In a fleet, the broker leases: at most four readers of a shared mailbox for phase 2, one attempt writing a
    /// mailbox (unset in one process: its own limit holds the mailbox to 4 in flight, and an attempt ends before
    /// its job runs again).
    leases: std::sync::OnceLock<BrokerLeases>,
    /// Overlapped phases in this process (embedded mode; see [`crate::overlap`]).
    boards: Boards,
}

/// The result of one attempt: the report to publish and what the queue should make of it.
#[derive(Debug)]
pub struct Attempt {
    /// The report (its outcome is filled in by the caller once the next step is known).
    pub report: Report,
    /// How the attempt ended.
    pub result: AttemptResult,
}

/// What a successful attempt did.
#[derive(Default)]
struct Done {
    counts: PlanCounts,
    failed_writes: u64,
    source_failures: Vec<SourceFailure>,
    planned: Vec<String>,
    /// The items Graph created or updated for this attempt, with the change key each write returned.
    written: Written,
    /// Ids of the items this attempt deleted.
    deleted: BTreeSet<String>,
    /// The feeds to keep for the next run.
    cursors: Cursors,
    /// Nothing changed since the last run: nothing was read or planned.
    skipped: bool,
    /// The persons whose contact Graph confirmed created (in a dry run: planned), by sync id: a move deletes an
    /// old copy only once this proves its replacement.
    created: BTreeSet<SyncId>,
    /// The ids Graph gave the copies it created, by sync id (a new copy's photo is sent to it).
    created_ids: BTreeMap<SyncId, String>,
    /// What was done with photos.
    photos: PhotoReport,
    /// Phase 2 was asked, and its plan leaves the folder holding nothing but copies phase 1 does without.
    only_copies: bool,
    /// The plan left a write for a later run (`Plan::defers`): the folder is not in line with its sources.
    defers: bool,
}

impl Done {
    /// Whether the folder written is as the plan meant to leave it: no write refused, none left for a later run.
    /// Only then may its kept feed say it is in line with its sources.
    fn in_line(&self) -> bool {
        self.failed_writes == 0 && !self.defers
    }

    /// Adds what another write step of the same job did (counts, refused writes, plan lines).
    fn absorb(&mut self, other: Done) {
        self.counts.created += other.counts.created;
        self.counts.updated += other.counts.updated;
        self.counts.deleted += other.counts.deleted;
        self.counts.skipped += other.counts.skipped;
        self.failed_writes += other.failed_writes;
        self.defers |= other.defers;
        self.planned.extend(other.planned);
    }
}

impl JobRunner {
    /// A runner for the tenants in `settings`, sharing `graph` (and so its tokens and limits) with other runners.
    pub fn new(graph: GraphClient, settings: Arc<Settings>) -> Self {
        Self {
            graph,
            settings,
            central: CentralCache::default(),
            directory: DirectoryCache::default(),
            locations: Locations::default(),
            in_flight: InFlight::default(),
            planning: PlanningBudget::default(),
            central_photos: Arc::default(),
            leases: std::sync::OnceLock::new(),
            boards: Boards::default(),
        }
    }

    /// The same runner planning within `budget` instead of [`PlanningBudget::default`] (tests: a budget smaller
    /// than their folders makes plans take turns).
    pub fn with_planning_budget(mut self, budget: PlanningBudget) -> Self {
        self.planning = budget;
        self
    }

    /// The budget this runner plans within (a fleet's boards hold their plans' folders within it too).
    pub fn planning_budget(&self) -> &PlanningBudget {
        &self.planning
    }

    /// Overlapped phases: off until the embedded queue's producer enables them ([`Boards::enable`]).
    pub fn boards(&self) -> &Boards {
        &self.boards
    }

    /// Makes phase 2 read a shared mailbox only while holding one of its broker leases, so however many worker
    /// processes run, at most four read it at once, and each attempt write its mailbox only while holding the
    /// mailbox's write lease ([`BrokerLeases::hold_writes`]). The first call wins; the worker sets it once for its
    /// broker.
    pub fn share_leases(&self, leases: BrokerLeases) {
        let _ = self.leases.set(leases);
    }

    /// The write lease of the mailbox `job` writes (phase 1 and central cleanup: the shared mailbox), held from
    /// before the attempt reads until its last write batch is answered; `None` in one process.
    async fn write_lease(&self, job: &Job) -> Result<Option<crate::leases::Held>, AttemptResult> {
        let Some(leases) = self.leases.get() else {
            return Ok(None);
        };
        let mailbox = match &job.kind {
            JobKind::Phase1 { central, .. } => &central.mailbox,
            JobKind::Phase2 { mailbox, .. } => mailbox,
        };
        held_or_retry(
            leases.hold_writes(&job.tenant_id, &mailbox.id),
            &format!("the broker's write lease of {}", mailbox.upn),
        )
        .await
    }

    /// The Graph client (for stats).
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// Attempts of this runner in progress, and the most at once.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }

    /// Runs attempt number `attempt` of `job`. Never panics on bad input; every failure becomes an
    /// [`AttemptResult`].
    ///
    /// `cancel` stops the attempt at once: a read in progress is dropped, a write batch on the wire is let finish
    /// (so no batch is half-sent), and no further batch starts. Once this returns, the attempt writes nothing
    /// more; its delivery may then run elsewhere.
    pub async fn run(&self, job: &Job, attempt: u32, cancel: &CancellationToken) -> Attempt {
        let _in_flight = self.in_flight.enter();
        let started = Instant::now();
        // A client per job: its tally counts this job's requests only, however many jobs run beside it.
        let mut tally = (0, 0);
        // A dry attempt keeps no feed: a later real run must read and write what this one only planned.
        let tenant = self.settings.tenant(&job.tenant_id);
        let ran_dry = job.dry_run || tenant.is_some_and(|tenant| tenant.dry_run);
        let result = match tenant {
            None => Err(AttemptResult::Permanent {
                reason: FailureReason::UnknownTenant,
                error: format!(
                    "tenant {} is not in this worker's configuration (check the worker's AUTOMATION_SYNCCONTACTS_* settings)",
                    job.tenant_id
                ),
            }),
            Some(tenant) => {
                // The worker's own configuration may say dry run too (a tenant being onboarded): any source that
                // says dry run wins, so a job saying otherwise writes nothing here either.
                let forced;
                let job = if tenant.dry_run && !job.dry_run {
                    forced = Job {
                        dry_run: true,
                        ..job.clone()
                    };
                    &forced
                } else {
                    job
                };
                let client = self.graph.tenant(tenant);
                // The attempt's write batches run as tasks of their own: a cancel drops the attempt at once
                // (reads included) but never a batch half-sent; it is waited for below.
                let writes = TaskTracker::new();
                // Phase 1 found the mailbox in line: nothing to read or write, so no trust check, no shared-mailbox
                // lookup and no write lease either (a forged job gains nothing it did not bring). The producer
                // settles such jobs itself; an older producer's still come here.
                let in_line = job.in_line_report(
                    tenant.distribution.receives_directory(),
                    &FolderChoice::from(&tenant.distribution.target_folder),
                );
                let writes_nothing = in_line.is_some() || job.dry_run;
                let work = async {
                    if let Some(report) = in_line {
                        return Ok(Done {
                            cursors: report.cursors,
                            skipped: true,
                            ..Done::default()
                        });
                    }
                    let trust_later = self.may_trust_later(tenant, job);
                    if !trust_later {
                        self.trusted(tenant, &client, job).await?;
                    }
                    match (&job.kind, job.cleanup) {
                        (JobKind::Phase1 { central, .. }, Some(source)) => {
                            self.cleanup_central(tenant, &client, job, source, central, &writes)
                                .await
                        }
                        (JobKind::Phase2 { central, mailbox }, Some(source)) => {
                            let central = central.as_ref();
                            self.cleanup_mailbox(tenant, &client, job, source, central, mailbox, &writes)
                                .await
                        }
                        (JobKind::Phase1 { central, sources }, None) => {
                            self.phase1(tenant, &client, job, central, sources, &writes)
                                .await
                        }
                        (JobKind::Phase2 { central, mailbox }, None) => {
                            let central = central.as_ref();
                            self.phase2(tenant, &client, job, central, mailbox, trust_later, &writes)
                                .await
                        }
                    }
                };
                // Held until the last batch is answered (below), so no other attempt on the mailbox reads before.
                let mut lease = None;
                let result = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(AttemptResult::Cancelled),
                    result = async {
                        if !writes_nothing {
                            lease = self.write_lease(job).await?;
                        }
                        // A lease lost (its connection dropped, the job's own still up) lets another attempt on the
                        // mailbox read: this one starts no batch more, and the batch on the wire finishes.
                        match &lease {
                            Some(held) => tokio::select! {
                                biased;
                                () = held.lost() => Err(AttemptResult::Transient {
                                    wait: LEASE_RETRY,
                                    error: "the mailbox's write lease ended with its broker connection; the job \
                                            reads the mailbox again"
                                        .into(),
                                }),
                                result = work => result,
                            },
                            None => work.await,
                        }
                    } => result,
                };
                // Once this returns, nothing of this attempt is on the wire any more.
                writes.close();
                writes.wait().await;
                drop(lease);
                tally = client.tally();
                result
            }
        };
        let (done, result) = match result {
            Ok(done) => (done, AttemptResult::Done),
            Err(failure) => (Done::default(), failure),
        };
        // The attempt's plan is gone: a large one's pages go back to the system (see `heap`).
        let c = &done.counts;
        if c.created + c.updated + c.deleted + c.skipped >= heap::LARGE {
            heap::release_freed();
        }
        let report = Report {
            counts: done.counts,
            failed_writes: done.failed_writes,
            source_failures: done.source_failures,
            planned: done.planned,
            graph: GraphCounts {
                requests: tally.0,
                throttled: tally.1,
            },
            cursors: if ran_dry {
                Cursors::default()
            } else {
                done.cursors
            },
            dry_run: ran_dry,
            skipped: done.skipped,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            photos: done.photos,
            ..Report::of(job, attempt, shared::message::Outcome::Succeeded)
        };
        Attempt { report, result }
    }

    /// Whether `job`'s trust check waits until its tenant's phase 1 is over (see [`Self::trusted`]): a fleet's
    /// overlapped phase-2 job in a worker process that has not resolved the tenant (or resolved it before phase 1
    /// made the folder) would otherwise ask the shared mailbox while phase 1 writes it with every request Graph
    /// allows in flight (5 and 429s with five worker processes, `central_budget`). Meanwhile the job only copies into
    /// its own mailbox what the run's phase 1 put on its board, and it checks before anything else, deleting those
    /// copies if refused. Only without a `TestUserList` (who receives is then everyone but the shared mailbox, told
    /// from the configuration alone).
    fn may_trust_later(&self, tenant: &TenantSettings, job: &Job) -> bool {
        let JobKind::Phase2 {
            central: Some(_),
            mailbox,
        } = &job.kind
        else {
            return false;
        };
        job.overlapped
            && job.cleanup.is_none()
            && self.boards.relayed()
            && tenant.test_user_list.is_none()
            && !mailbox
                .upn
                .eq_ignore_ascii_case(&tenant.global_address_book_user_id)
            && self
                .locations
                .get(&tenant.tenant_id)
                .is_none_or(|known| trust::check(job, tenant, &known).is_err())
            && self
                .boards
                .board(&job.tenant_id, job.run_id)
                .is_some_and(|board| board.watch().borrow().ended.is_none())
    }

    /// Takes `tenant`'s shared mailbox and central folder as its producer in this process found them (embedded
    /// mode: the same configuration, resolved moments before), so [`Self::trusted`] need not ask Graph again
    /// before the tenant's first job: two requests, one after the other, at the start of every embedded run. A
    /// `TestUserList` tenant still resolves its users itself. A job that does not fit what is kept resolves again,
    /// as always.
    pub fn knows(&self, tenant: &TenantSettings, central: Option<&CentralFolder>) {
        if tenant.test_user_list.is_some() {
            return;
        }
        let central = central
            .filter(|_| tenant.distribution.mirror_enabled)
            .map(|c| CentralLocation {
                mailbox: c.mailbox.clone(),
                folder_id: c.folder_id.clone(),
            });
        let resolved = Resolved {
            central,
            receivers: Receivers::Everyone,
        };
        self.locations.put(&tenant.tenant_id, resolved);
    }

    /// Refuses a job whose central mailbox or folder is not where this worker's configuration says, or that
    /// names a mailbox the worker does not mirror (see [`crate::trust`]). Resolves the configured location and
    /// the `TestUserList`'s users once per tenant, and again when a job does not match (the folder may have been
    /// created since, a user may have joined).
    pub(super) async fn trusted(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
    ) -> Result<(), AttemptResult> {
        let refuse = |error: String| {
            warn!(%error, "refusing a job that does not match this worker's configuration");
            AttemptResult::Permanent {
                reason: FailureReason::UntrustedJob,
                error,
            }
        };
        let known_and_fits = || {
            self.locations
                .get(&tenant.tenant_id)
                .is_some_and(|known| trust::check(job, tenant, &known).is_ok())
        };
        if known_and_fits() {
            return Ok(());
        }
        // One job of the tenant resolves at a time; the others then find its answer.
        let _turn = self.locations.turn(&tenant.tenant_id).await;
        if known_and_fits() {
            return Ok(());
        }
        // No mirror, no shared mailbox to resolve: the job must name none.
        let central = if tenant.distribution.mirror_enabled {
            let doing = format!(
                "resolving the central folder {:?} of {}",
                tenant.mirror.central_folder_name, tenant.global_address_book_user_id
            );
            // Every worker process resolves it when its first job of the tenant starts: N at once in a fleet.
            let _lease = self
                .shared_mailbox_lease(&tenant.tenant_id, &tenant.global_address_book_user_id)
                .await?;
            let shared = client
                .user(&tenant.global_address_book_user_id)
                .await
                .map_err(|e| classify(&e, &doing))?;
            let folder = client
                .find_top_level_folder(&shared.id, &tenant.mirror.central_folder_name)
                .await
                .map_err(|e| classify(&e, &doing))?;
            Some(CentralLocation {
                mailbox: shared.mailbox(),
                folder_id: folder.map(|f| f.id),
            })
        } else {
            None
        };
        let receivers = match &tenant.test_user_list {
            None => Receivers::Everyone,
            Some(list) => {
                let licensed = client
                    .licensed_users()
                    .await
                    .map_err(|e| classify(&e, "listing licensed users for the TestUserList"))?;
                let candidates =
                    test_users::candidates(licensed, tenant, central.as_ref().map(|c| &c.mailbox));
                Receivers::Selected(test_users::select(&candidates, list))
            }
        };
        let resolved = Resolved { central, receivers };
        self.locations.put(&tenant.tenant_id, resolved.clone());
        trust::check(job, tenant, &resolved).map_err(refuse)
    }
}

/// How soon an attempt that could not take, or lost, a broker lease is tried again.
const LEASE_RETRY: Duration = Duration::from_secs(5);

/// The broker lease `taking` gives (`what` names it), as an attempt needs it: a broker that cannot be asked fails
/// the attempt as transient, tried again after [`LEASE_RETRY`], for going on without the lease could break the fleet-wide rule it
/// keeps (the shared mailbox's readers, one writer per mailbox).
async fn held_or_retry(
    taking: impl std::future::Future<Output = Result<crate::leases::Held, shared::mq::MqError>>,
    what: &str,
) -> Result<Option<crate::leases::Held>, AttemptResult> {
    taking
        .await
        .map(Some)
        .map_err(|error| AttemptResult::Transient {
            wait: LEASE_RETRY,
            error: format!("taking {what}: {error}"),
        })
}

/// The planning context of a job writing `owner`: the tenant's policy, with the deletion cap lifted when the run
/// allows a mass deletion (`run --allow-mass-delete`).
fn plan_context(tenant: &TenantSettings, job: &Job, owner: &Mailbox) -> PlanContext {
    let mut options = tenant.mirror.clone();
    if job.allow_mass_delete {
        options.deletion.max_share = 1.0;
    }
    PlanContext {
        tenant_id: job.tenant_id.clone(),
        owner: owner.clone(),
        options,
        now: Utc::now(),
        rebuild_central: false,
    }
}

/// The dry-run lines of `plan`: only the items that would write, at most [`MAX_PLANNED_LINES`], then one line
/// counting the ones left out (the counts stay exact in the report's `counts`).
pub fn planned_lines(plan: &Plan) -> Vec<String> {
    let mut writes = plan.items.iter().filter(|item| item.op.is_some());
    let mut lines: Vec<String> = writes
        .by_ref()
        .take(MAX_PLANNED_LINES)
        .map(|item| item.to_string())
        .collect();
    let more = writes.count();
    if more > 0 {
        lines.push(format!("… and {more} more planned writes not listed"));
    }
    lines
}

/// Maps a Graph error to retry-or-not, keeping the error's text and Graph's requested wait.
pub fn classify(error: &GraphError, doing: &str) -> AttemptResult {
    let text = format!("{doing}: {error}");
    let permanent = |reason| AttemptResult::Permanent {
        reason,
        error: text.clone(),
    };
    match error.kind() {
        ErrorKind::MailboxNotEnabled => permanent(FailureReason::NoMailbox),
        ErrorKind::AccessDenied => permanent(FailureReason::AccessDenied),
        ErrorKind::Auth(_) => permanent(FailureReason::Authentication),
        // A wait beyond the longest retry level is that mailbox's failure, not a job parked for ever; as a
        // permanent failure it also skips just that source in phase 1.
        _ if error.is_transient() => match error.retry_after().unwrap_or(Duration::ZERO) {
            wait if wait > MAX_RETRY_WAIT => AttemptResult::Permanent {
                reason: FailureReason::ThrottledTooLong,
                error: format!(
                    "{text} (Graph asked to wait {} s, longer than the longest retry, {} s)",
                    wait.as_secs(),
                    MAX_RETRY_WAIT.as_secs()
                ),
            },
            wait => AttemptResult::Transient { wait, error: text },
        },
        _ => permanent(FailureReason::GraphRejected),
    }
}

#[cfg(test)]
mod tests {
    use shared::model::WriteOp;
    use shared::sync::{ActionKind, PlanItem, Reason};

    use super::phase1::source_failure;
    use super::*;

    fn item(index: usize, write: bool) -> PlanItem {
        PlanItem {
            op: write.then(|| WriteOp::Delete {
                id: format!("id-{index}"),
            }),
            action: if write {
                ActionKind::Delete
            } else {
                ActionKind::Skip
            },
            reason: if write {
                Reason::NoLongerCentral
            } else {
                Reason::Unchanged
            },
            sync_id: None,
            display_name: Some(format!("Person {index}").into()),
            contact_id: Some(format!("id-{index}")),
            source: None,
            changed_fields: Vec::new(),
        }
    }

    fn throttled(wait_secs: u64) -> GraphError {
        GraphError::Throttled {
            status: 429,
            code: "TooManyRequests".into(),
            message: "slow down".into(),
            request_id: None,
            retry_after: Some(Duration::from_secs(wait_secs)),
        }
    }

    /// Failed before the fix: `Retry-After: 9999999999` became a transient failure retried in the longest retry
    /// level again and again; a phase-1 source throttled like that held the whole tenant's merge back.
    #[test]
    fn a_wait_beyond_the_longest_retry_is_that_mailboxs_failure() {
        match classify(
            &throttled(9_999_999_999),
            "reading contacts of a@contoso.com",
        ) {
            AttemptResult::Permanent { reason, error } => {
                assert_eq!(reason, FailureReason::ThrottledTooLong);
                assert!(error.contains("9999999999 s"), "{error}");
            }
            other => panic!("expected a permanent failure, got {other:?}"),
        }
        let source = Mailbox {
            id: "a".into(),
            upn: "a@contoso.com".into(),
        };
        let skipped = source_failure(&source, &throttled(9_999_999_999)).expect("skipped alone");
        assert_eq!(skipped.reason, FailureReason::ThrottledTooLong);
        assert!(matches!(
            classify(&throttled(30), "reading"),
            AttemptResult::Transient { .. }
        ));
    }

    /// Failed before the fix: a dry run reported every plan item, skips included, so a dry run of 1,000 users x
    /// 5,000 contacts held millions of lines in memory and in one report.
    #[test]
    fn a_dry_run_lists_only_writes_capped_with_the_rest_counted() {
        let mut items: Vec<PlanItem> = (0..5_000).map(|i| item(i, false)).collect();
        items.extend((0..MAX_PLANNED_LINES + 7).map(|i| item(i, true)));
        let lines = planned_lines(&Plan { items });
        assert_eq!(lines.len(), MAX_PLANNED_LINES + 1);
        assert!(lines[..MAX_PLANNED_LINES]
            .iter()
            .all(|line| line.starts_with("delete")));
        assert_eq!(
            lines[MAX_PLANNED_LINES],
            "… and 7 more planned writes not listed"
        );
        let few = planned_lines(&Plan {
            items: vec![item(1, false), item(2, true)],
        });
        assert_eq!(few.len(), 1, "{few:?}");
    }
}
