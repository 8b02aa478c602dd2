//! One job, start to finish: read, plan with the pure rules, write, and say how it went.
//!
//! This is the code every mode runs: the AMQP consumer and the embedded queue both call [`JobRunner::run`]. It
//! never touches a queue; what happens next is decided from its [`AttemptResult`] by
//! [`crate::disposition`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use shared::config::{Settings, TargetFolder, TenantSettings};
use shared::directory::{self as directory, DirectoryPerson};
use shared::feed::{self, Check, Cursors, DeltaLink, FolderFeed, SourceCheck};
use shared::graph::DirectoryError;
use shared::graph::{ErrorKind, FolderRef, GraphClient, GraphError, TenantClient};
use shared::message::{
    CentralFolder, FailureReason, FolderChoice, GraphCounts, Job, JobKind, PhotoReport, Report,
    SourceFailure, SCHEMA_VERSION,
};
use shared::model::{Contact, Mailbox, WriteOp};
use shared::sync::photo::{
    self, CentralPhoto, CopyPhoto, OriginCheck, OriginPhoto, PhotoAction, SourcePhoto,
};
use shared::sync::{
    self, CleanupScope, CleanupSource, Ownership, Plan, PlanContext, PlanCounts, PreparedCentral,
    SourceMailbox, SyncId, Writes,
};
use shared::test_users;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::central_cache::CentralCache;
use crate::central_lease::CentralLeases;
use crate::central_photos::CentralPhotos;
use crate::directory_cache::{DirectoryCache, Selected};
use crate::disposition::{AttemptResult, MAX_RETRY_WAIT};
use crate::heap;
use crate::in_flight::InFlight;
use crate::planning_budget::{Planning, PlanningBudget};
use crate::trust::{self, CentralLocation, Locations, Receivers, Resolved};

/// How many source mailboxes a phase-1 job reads at once (each has its own Graph budget).
const SOURCE_READ_CONCURRENCY: usize = 16;

/// Writes sent per call to Graph (one `$batch`); a cancelled attempt stops between two of them.
const WRITE_BATCH: usize = 20;

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
    /// In a fleet, the broker leases that let one worker process at a time read a shared mailbox for phase 2
    /// (unset in one process: its own limit already holds the mailbox to 4 in flight).
    central_leases: std::sync::OnceLock<CentralLeases>,
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
    written: feed::Written,
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
}

impl Done {
    /// Adds what another write step of the same job did (counts, refused writes, plan lines).
    fn absorb(&mut self, other: Done) {
        self.counts.created += other.counts.created;
        self.counts.updated += other.counts.updated;
        self.counts.deleted += other.counts.deleted;
        self.counts.skipped += other.counts.skipped;
        self.failed_writes += other.failed_writes;
        self.planned.extend(other.planned);
    }
}

/// Where a folder's feed stands after checking it.
struct FeedCheck {
    check: Check,
    /// `None` only when the folder does not exist yet (a dry run before the central folder is created).
    link: Option<DeltaLink>,
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
            central_leases: std::sync::OnceLock::new(),
        }
    }

    /// Makes phase 2 read a shared mailbox only while holding its broker lease, so however many worker
    /// processes run, one reads it at a time. The first call wins; the worker sets it once for its broker.
    pub fn share_central_reads(&self, leases: CentralLeases) {
        let _ = self.central_leases.set(leases);
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
        let result = match self.settings.tenant(&job.tenant_id) {
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
                let work = async {
                    self.trusted(tenant, &client, job).await?;
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
                            self.phase2(tenant, &client, job, central.as_ref(), mailbox, &writes)
                                .await
                        }
                    }
                };
                let result = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(AttemptResult::Cancelled),
                    result = work => result,
                };
                // Once this returns, nothing of this attempt is on the wire any more.
                writes.close();
                writes.wait().await;
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
            schema: SCHEMA_VERSION,
            job_id: job.job_id,
            run_id: job.run_id,
            tenant_id: job.tenant_id.clone(),
            phase: job.phase(),
            mailbox: job.mailbox().clone(),
            attempt,
            outcome: shared::message::Outcome::Succeeded,
            counts: done.counts,
            failed_writes: done.failed_writes,
            source_failures: done.source_failures,
            planned: done.planned,
            graph: GraphCounts {
                requests: tally.0,
                throttled: tally.1,
            },
            cursors: done.cursors,
            skipped: done.skipped,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            photos: done.photos,
            finished_at: Utc::now(),
        };
        Attempt { report, result }
    }

    /// Refuses a job whose central mailbox or folder is not where this worker's configuration says, or that
    /// names a mailbox the worker does not mirror (see [`crate::trust`]). Resolves the configured location and
    /// the `TestUserList`'s users once per tenant, and again when a job does not match (the folder may have been
    /// created since, a user may have joined).
    async fn trusted(
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
        if let Some(known) = self.locations.get(&tenant.tenant_id) {
            if trust::check(job, tenant, &known).is_ok() {
                return Ok(());
            }
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

    async fn phase1(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: &CentralFolder,
        sources: &[Mailbox],
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let prior = &job.cursors;
        let central_check = match &central.folder_id {
            Some(id) => check_feed(
                client,
                &central.mailbox,
                &FolderRef::Id(id.clone()),
                prior.tracked,
                prior.central.as_ref(),
            )
            .await
            .map_err(|e| {
                classify(
                    &e,
                    &format!("checking the central folder of {}", central.mailbox.upn),
                )
            })?,
            None => FeedCheck {
                check: Check::Unknown,
                link: None,
            },
        };
        let checks: Vec<(Mailbox, Result<FeedCheck, GraphError>)> =
            stream::iter(sources.iter().cloned())
                .map(|mailbox| async move {
                    let feed = prior.mailboxes.get(&mailbox.id);
                    let check =
                        check_feed(client, &mailbox, &FolderRef::Default, prior.tracked, feed)
                            .await;
                    (mailbox, check)
                })
                .buffer_unordered(SOURCE_READ_CONCURRENCY)
                .collect()
                .await;
        let mut readable = Vec::with_capacity(checks.len());
        let mut source_checks = Vec::with_capacity(checks.len());
        let mut source_failures = Vec::new();
        let mut cursors = Cursors {
            tracked: prior.tracked,
            ..Cursors::default()
        };
        for (mailbox, check) in checks {
            match check {
                Ok(found) => {
                    source_checks.push(SourceCheck::Read(found.check));
                    if let Some(link) = found.link {
                        // A source unchanged since it was last brought in line is still in line; phase 2 uses this.
                        let in_line_with = (found.check == Check::Unchanged)
                            .then(|| {
                                prior
                                    .mailboxes
                                    .get(&mailbox.id)
                                    .and_then(|f| f.in_line_with)
                            })
                            .flatten();
                        cursors
                            .mailboxes
                            .insert(mailbox.id.clone(), FolderFeed { link, in_line_with });
                    }
                    readable.push(mailbox);
                }
                Err(error) => {
                    let failure = source_failure(&mailbox, &error)?;
                    source_checks.push(SourceCheck::Unreadable {
                        had_feed: prior.mailboxes.contains_key(&mailbox.id),
                    });
                    source_failures.push(failure);
                }
            }
        }
        let previous = prior.central.as_ref().and_then(|f| f.in_line_with);
        // A rebuild always reads: the feeds say nothing about a folder that was lost.
        let skip = if job.rebuild_central {
            None
        } else {
            feed::phase1_skip(central_check.check, previous, &source_checks)
        };
        if let Some(generation) = skip {
            debug!(mailbox = %central.mailbox.upn, sources = readable.len(), "nothing changed since the last run");
            cursors.central = central_check.link.map(|link| FolderFeed {
                link,
                in_line_with: Some(generation),
            });
            return Ok(Done {
                source_failures,
                cursors,
                skipped: true,
                ..Done::default()
            });
        }

        let central_contacts = read_central(client, central).await?;
        // Held from here until the plan is made (see `planning_budget`).
        let planning = self.planning.take(central_contacts.len()).await;
        let ctx = PlanContext {
            rebuild_central: job.rebuild_central,
            ..plan_context(tenant, job, &central.mailbox)
        };
        // Each source keeps only what can change the plan, judged page by page as it is read (issue 10, scenario
        // 10): a mailbox of distributed copies is never held whole.
        let central_keys = sync::CentralKeys::new(&ctx, &central_contacts);
        let (keys, ctx_ref) = (&central_keys, &ctx);
        // With `Photos` on, each person's origin (the user's own contact its sync id is derived from) is noted as
        // it goes by, inert or not: a photo-only change leaves its data equal to the central person's.
        let photos_on = tenant.photos;
        let reads: Vec<(Mailbox, Result<SourceRead, GraphError>)> = stream::iter(readable)
            .map(|mailbox| async move {
                let mut origins = Vec::new();
                let read = client
                    .list_contacts_where(&mailbox.id, &FolderRef::Default, |contact| {
                        if photos_on {
                            if let Some(origin) = origin_photo(ctx_ref, keys, &mailbox, contact) {
                                origins.push(origin);
                            }
                        }
                        !keys.is_inert(ctx_ref, &mailbox, contact)
                    })
                    .await
                    .map(|contacts| SourceMailbox {
                        mailbox: mailbox.clone(),
                        contacts,
                    });
                (mailbox, read.map(|source| (source, origins)))
            })
            .buffer_unordered(SOURCE_READ_CONCURRENCY)
            .collect()
            .await;
        let mut source_mailboxes = Vec::with_capacity(reads.len());
        let mut origins: BTreeMap<SyncId, OriginPhoto> = BTreeMap::new();
        for (mailbox, read) in reads {
            match read {
                Ok((source, seen)) => {
                    source_mailboxes.push(source);
                    origins.extend(seen);
                }
                Err(error) => {
                    cursors.mailboxes.remove(&mailbox.id);
                    source_failures.push(source_failure(&mailbox, &error)?);
                }
            }
        }
        drop(central_keys);
        source_mailboxes.sort_by(|a, b| a.mailbox.id.cmp(&b.mailbox.id));
        if job.rebuild_central && tenant.distribution.receives_directory() {
            // A rebuild publishes stamped copies; the directory's copies (any source tenant's) are not mirrored
            // persons.
            for persons in self.received_directory(tenant, client, job).await? {
                for source in &mut source_mailboxes {
                    directory::drop_directory_copies(&mut source.contacts, &persons.persons);
                }
            }
        }
        let plan = sync::plan_central(&ctx, &source_mailboxes, &central_contacts);
        // What the central photo step needs of the folder as read: the persons whose origin was read.
        let central_photos = central_photo_targets(&ctx, &central_contacts, &origins);
        // The plan holds what the writes need: what was read goes before the (long) writing starts, and the
        // planning units are kept for the writes' share only (see `apply`).
        let large = central_contacts.len().max(plan.items.len()) >= heap::LARGE;
        drop((source_mailboxes, central_contacts));
        if large {
            heap::release_freed();
        }
        let folder = match &central.folder_id {
            Some(id) => FolderRef::Id(id.clone()),
            None if job.dry_run => FolderRef::Default,
            None => {
                return Err(AttemptResult::Permanent {
                    reason: FailureReason::MalformedJob,
                    error: "phase-1 job without a central folder id outside a dry run".into(),
                })
            }
        };
        // The central photo step names the persons this plan creates with a photo; the plan goes to `apply`.
        let created_names: BTreeMap<String, String> = if tenant.photos && !job.dry_run {
            plan.items
                .iter()
                .filter_map(|item| {
                    let sync_id = item.sync_id.as_ref()?;
                    origins.contains_key(&SyncId::parse(sync_id)?).then(|| {
                        let name = item.display_name.as_deref().unwrap_or_default();
                        (sync_id.clone(), name.to_owned())
                    })
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let mut done = self
            .apply(
                client,
                job,
                &central.mailbox,
                &folder,
                plan,
                planning,
                tenant.photos,
                writes,
            )
            .await?;
        let mut changed = done.written.len() + done.deleted.len();
        if tenant.photos && !job.dry_run {
            let photos = self
                .apply_central_photos(
                    client,
                    &central.mailbox,
                    &folder,
                    central_photos,
                    &created_names,
                    &origins,
                    &done,
                    writes,
                )
                .await?;
            // Only a photo put or removed changes what phase 2 copies; a recorded change key alone does not.
            changed +=
                usize::try_from(photos.photos.sent + photos.photos.removed).unwrap_or(usize::MAX);
            done.failed_writes += photos.failed_writes;
            done.written.extend(photos.written);
            done.photos = photos.photos;
        }
        if let Some(link) = central_check.link {
            let writes = changed;
            let generation = feed::next_generation(central_check.check, previous, writes);
            let link = advance_past_own_writes(client, &central.mailbox, link, &done).await;
            cursors.central = Some(FolderFeed {
                link,
                // A refused write leaves the folder short of the plan: read it all again next time.
                in_line_with: (done.failed_writes == 0).then_some(generation),
            });
        }
        done.source_failures = source_failures;
        done.cursors = cursors;
        Ok(done)
    }

    async fn phase2(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: Option<&CentralFolder>,
        mailbox: &Mailbox,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let directory_on = tenant.distribution.receives_directory();
        let mirror = central.is_some();
        let named_folder = !matches!(
            tenant.distribution.target_folder,
            TargetFolder::DefaultContacts
        );
        let moving = job
            .move_from
            .as_ref()
            .filter(|from| **from != FolderChoice::from(&tenant.distribution.target_folder));
        // The kept feeds follow the default Contacts folder, which phase 1 checks, or, without the mirror, the
        // target folder itself, which this job checks. A mirror tenant writing into another folder has no feed for
        // it, and a pending move reads both folders: the mailbox is read in full.
        let feeds_apply = job.cursors.tracked && (!named_folder || !mirror) && moving.is_none();
        // What the mailbox must have been brought in line with to be skipped: the central generation and/or the
        // directory's content, as the producer found them in this run (none with `FromTenants`: never skipped).
        let in_line_before = feed::phase2_sources(
            mirror,
            job.cursors.central_generation,
            directory_on,
            job.cursors.directory_generation,
        );
        let kept = |link: DeltaLink, in_line_with| Cursors {
            tracked: true,
            mailboxes: [(mailbox.id.clone(), FolderFeed { link, in_line_with })].into(),
            ..Cursors::default()
        };
        let prior = job
            .cursors
            .mailboxes
            .get(&mailbox.id)
            .filter(|_| feeds_apply);
        // Phase 1 of this run checked the default folder, clearing `in_line_with` on any change; without the
        // mirror nobody did, so the job checks it now (one request when nothing changed).
        let prior = match (mirror, prior) {
            (false, Some(prior)) => check_kept(client, mailbox, prior).await?,
            (_, prior) => prior.cloned(),
        };
        if let Some(prior) = prior
            .as_ref()
            .filter(|p| feed::phase2_skip(in_line_before, p))
        {
            debug!(mailbox = %mailbox.upn, "in line with its sources and unchanged since the last run");
            return Ok(Done {
                cursors: kept(prior.link.clone(), in_line_before),
                skipped: true,
                ..Done::default()
            });
        }
        // The folder and its feed come first: a mailbox that cannot be reached fails before anything is loaded
        // for it. `None`: a dry run before the named folder exists (it is empty, so everything would be created).
        let current = FolderChoice::from(&tenant.distribution.target_folder);
        let folder = find_folder(client, job, mailbox, &current, !job.dry_run).await?;
        // The feed's link comes before the read: a change after the read is after the link.
        let link = match (prior, &folder) {
            (Some(prior), _) => Some(prior.link),
            (None, Some(folder)) if feeds_apply => Some(
                client
                    .delta_start(&mailbox.id, folder)
                    .await
                    .map_err(|e| classify(&e, &format!("checking contacts of {}", mailbox.upn)))?
                    .link,
            ),
            (None, _) => None,
        };
        let central_contacts = self.central_contacts(tenant, client, job, central).await?;
        // Without the directory the cached central folder, prepared once, is planned against as it is (no copy per
        // job); with it, the combined list is prepared for this mailbox.
        let combined;
        let mut directory_generation = None;
        let mut photo_lists = Vec::new();
        let sources: &PreparedCentral = if directory_on {
            let lists = self.received_directory(tenant, client, job).await?;
            if tenant.photos {
                photo_lists.clone_from(&lists);
            }
            // One source is planned against as cached; several are put in one list (each source's persons once).
            // Only the tenant's own directory alone has a generation the producer offers (see `prepare`).
            let joined: Vec<DirectoryPerson>;
            let persons: &[DirectoryPerson] = match lists.as_slice() {
                [one] => {
                    if tenant.distribution.directory.from_tenants.is_empty() {
                        directory_generation = Some(one.generation);
                    }
                    &one.persons
                }
                _ => {
                    joined = joined_persons(&lists);
                    &joined
                }
            };
            combined = PreparedCentral::new(directory::combine(
                mailbox,
                central_contacts.contacts(),
                persons,
                Utc::now(),
            ));
            &combined
        } else {
            &central_contacts
        };
        // Held from before the mailbox is read until its plan is made (see `planning_budget`).
        let planning = self.planning.take(sources.contacts().len()).await;
        // The previous folder's contacts are read before anything is written: the new copies carry over what
        // users added to the old ones.
        let old = match moving {
            Some(from) => {
                find_folder(client, job, mailbox, from, false)
                    .await?
                    .map(|folder| async move {
                        let contacts =
                            client
                                .list_contacts(&mailbox.id, &folder)
                                .await
                                .map_err(|e| {
                                    classify(&e, &format!("reading contacts of {}", mailbox.upn))
                                })?;
                        Ok::<_, AttemptResult>((folder, contacts))
                    })
            }
            None => None,
        };
        let old = match old {
            Some(read) => Some(read.await?),
            None => None,
        };
        // What this job brings the mailbox in line with: the sources it planned against.
        let in_line = feed::phase2_sources(
            mirror,
            job.cursors.central_generation,
            directory_on,
            directory_generation,
        );
        let target = match &folder {
            Some(folder) => client
                .list_contacts(&mailbox.id, folder)
                .await
                .map_err(|e| classify(&e, &format!("reading contacts of {}", mailbox.upn)))?,
            // A dry run before the folder exists: it is empty, so everything would be created.
            None => Vec::new(),
        };
        let old_contacts = old.as_ref().map(|(_, contacts)| contacts.as_slice());
        // The photos step needs the copies as read (their photo hashes) after the plan has dropped the folder:
        // with `Photos` on, the contacts carrying a sync id are kept for it.
        let photo_targets: Vec<Contact> = if !tenant.photos {
            Vec::new()
        } else {
            target
                .iter()
                .filter(|c| c.sync_id_property.is_some())
                .cloned()
                .collect()
        };
        let mut done = self
            .plan_and_apply(
                tenant,
                client,
                job,
                sources,
                mailbox,
                folder.as_ref(),
                target,
                old_contacts,
                planning,
                writes,
            )
            .await?;
        // Photos (`Photos` on) once the copies exist; a dry run writes none.
        let photo_folder = folder.as_ref().filter(|_| tenant.photos && !job.dry_run);
        if let Some(folder) = photo_folder {
            let photos = self
                .apply_photos(
                    tenant,
                    client,
                    job,
                    mailbox,
                    folder,
                    &photo_targets,
                    &done,
                    PhotoSources {
                        lists: &photo_lists,
                        central: central.map(|c| (c, sources)),
                    },
                    writes,
                )
                .await?;
            done.failed_writes += photos.failed_writes;
            done.written.extend(photos.written);
            done.photos = photos.photos;
        }
        if let Some((old_folder, old_contacts)) = &old {
            let ctx = plan_context(tenant, job, mailbox);
            let out = sync::plan_move_out(
                &ctx,
                mailbox,
                old_contacts,
                &done.created,
                sources.contacts(),
            )
            .map_err(|refusal| AttemptResult::Permanent {
                reason: FailureReason::DeletionCapExceeded,
                error: refusal.to_string(),
            })?;
            let moved = self
                .apply(
                    client,
                    job,
                    mailbox,
                    old_folder,
                    out,
                    Planning::none(),
                    false,
                    writes,
                )
                .await?;
            info!(mailbox = %mailbox.upn, from = %moving.map(ToString::to_string).unwrap_or_default(),
                  deleted = moved.counts.deleted, "managed copies moved to the target folder");
            done.absorb(moved);
        }
        if let Some(link) = link {
            let link = advance_past_own_writes(client, mailbox, link, &done).await;
            let in_line_with = in_line.filter(|_| done.failed_writes == 0);
            done.cursors = kept(link, in_line_with);
        }
        Ok(done)
    }

    /// The central folder's contacts prepared for planning (cached per worker and run); none without the mirror.
    /// Phase 2 passes on only what may be published (`CentralFields`), even before phase 1 cleared a contact.
    async fn central_contacts(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: Option<&CentralFolder>,
    ) -> Result<Arc<PreparedCentral>, AttemptResult> {
        match central {
            Some(central) => {
                self.central
                    .get_or_load(&job.tenant_id, job.run_id, central, || async {
                        let _lease = self
                            .shared_mailbox_lease(&job.tenant_id, &central.mailbox.upn)
                            .await?;
                        read_central(client, central).await.map(|contacts| {
                            sync::fields::central_folder_view(
                                contacts,
                                tenant.mirror.fields.central,
                            )
                        })
                    })
                    .await
            }
            None => Ok(Arc::new(PreparedCentral::new(Vec::new()))),
        }
    }

    /// `tenant_id`'s central lease when this worker is one of a fleet, held until dropped: every read of the shared
    /// mailbox `mailbox` a worker makes outside phase 1's own job is made under it (see [`crate::central_lease`]).
    /// A broker that cannot be asked is a transient failure: reading without the lease could put the shared
    /// mailbox over its limit.
    async fn shared_mailbox_lease(
        &self,
        tenant_id: &str,
        mailbox: &str,
    ) -> Result<Option<crate::central_lease::Held>, AttemptResult> {
        let Some(leases) = self.central_leases.get() else {
            return Ok(None);
        };
        leases
            .hold(tenant_id)
            .await
            .map(Some)
            .map_err(|error| AttemptResult::Transient {
                wait: Duration::from_secs(5),
                error: format!(
                    "taking the broker lease to read the shared mailbox {mailbox}: {error}"
                ),
            })
    }

    /// The directory persons `tenant`'s mailboxes receive, one list per source tenant
    /// ([`TenantSettings::directory_sources`]: itself when `Directory.Enabled`, then its `FromTenants`). Each
    /// source is read with its own credentials and `Directory` filters from this worker's configuration (a job
    /// never carries credentials), once per worker and run whichever tenant's jobs ask for it, and only read:
    /// nothing is written in a source tenant. A source that cannot be read fails the job, naming that source and
    /// the tenant receiving it: planning without it would take its people for leavers.
    async fn received_directory(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
    ) -> Result<Vec<Arc<Selected>>, AttemptResult> {
        let mut lists = Vec::new();
        for source_id in tenant.directory_sources() {
            if source_id.eq_ignore_ascii_case(&tenant.tenant_id) {
                lists.push(
                    self.directory
                        .get_or_load(&tenant.tenant_id, job.run_id, || {
                            read_directory(tenant, client)
                        })
                        .await?,
                );
                continue;
            }
            let Some(source) = self.settings.tenant(source_id) else {
                return Err(AttemptResult::Permanent {
                    reason: FailureReason::UnknownTenant,
                    error: format!(
                        "tenant {} receives the directory of {source_id} (Directory.FromTenants), which is not in this worker's configuration",
                        tenant.tenant_id
                    ),
                });
            };
            let source_client = self.graph.tenant(source);
            let persons = self
                .directory
                .get_or_load(&source.tenant_id, job.run_id, || {
                    read_directory(source, &source_client)
                })
                .await
                .map_err(|failure| from_source(failure, &tenant.tenant_id))?;
            lists.push(persons);
        }
        Ok(lists)
    }

    /// Plans `mailbox` against its sources and writes the plan into `folder` (`None`: a dry run's folder that does
    /// not exist yet, so nothing is written).
    #[allow(clippy::too_many_arguments)]
    async fn plan_and_apply(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        sources: &PreparedCentral,
        mailbox: &Mailbox,
        folder: Option<&FolderRef>,
        target: Vec<Contact>,
        moving_from: Option<&[Contact]>,
        planning: Planning,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let ctx = plan_context(tenant, job, mailbox);
        let mut plan =
            sync::plan_distribution_from(&ctx, sources, mailbox, &target).map_err(|refusal| {
                AttemptResult::Permanent {
                    reason: FailureReason::DeletionCapExceeded,
                    error: refusal.to_string(),
                }
            })?;
        if let Some(old) = moving_from {
            sync::carry_over(&ctx, mailbox, &mut plan, old, sources.contacts());
        }
        // The plan holds what the writes need: the mailbox's contacts go before the (long) writing starts, and
        // the planning units are kept for the writes' share only (see `apply`).
        let large = target.len().max(plan.items.len()) >= heap::LARGE;
        drop(target);
        if large {
            heap::release_freed();
        }
        // Only a move needs to know which persons have a copy here (the old folder's copies of them go): those
        // the plan matched, and in a dry run those it would create (a real run's confirmed creates come from the
        // writes).
        let mut have_copy = BTreeSet::new();
        if moving_from.is_some() {
            have_copy = sync::matched_persons(&plan);
            if job.dry_run {
                have_copy.extend(plan.writes().filter_map(|op| match op {
                    WriteOp::Create(write) => write.sync_id.as_deref().and_then(SyncId::parse),
                    _ => None,
                }));
            }
        }
        // Only a dry run has no folder, and a dry run writes nothing.
        let folder = folder.cloned().unwrap_or(FolderRef::Default);
        let mut done = self
            .apply(
                client,
                job,
                mailbox,
                &folder,
                plan,
                planning,
                tenant.photos,
                writes,
            )
            .await?;
        if moving_from.is_none() {
            done.created.clear();
            return Ok(done);
        }
        done.created.extend(have_copy);
        Ok(done)
    }

    /// Cleanup of one receiving mailbox (`cleanup`): the configured target folder, and the default Contacts folder
    /// too when the target is another (copies made before `TargetFolder` was set). Judged against the persons
    /// phase 2 plans the mailbox against, so ownership is decided as there. No cap: an explicit operator command.
    #[allow(clippy::too_many_arguments)]
    async fn cleanup_mailbox(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        source: CleanupSource,
        central: Option<&CentralFolder>,
        mailbox: &Mailbox,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let central_contacts = self.central_contacts(tenant, client, job, central).await?;
        // The directory tells its persons' copies from the mirror's; without it every copy is the mirror's.
        // Every directory the tenant receives (its own and its `FromTenants`'); with none, its own as its
        // `Directory` settings select now.
        let receives = tenant.distribution.receives_directory();
        let (persons, directory_ids) = if receives || source == CleanupSource::Directory {
            let lists = if receives {
                self.received_directory(tenant, client, job).await?
            } else {
                vec![
                    self.directory
                        .get_or_load(&job.tenant_id, job.run_id, || {
                            read_directory(tenant, client)
                        })
                        .await?,
                ]
            };
            let persons = joined_persons(&lists);
            let ids: BTreeSet<SyncId> = persons.iter().map(|p| p.sync_id.clone()).collect();
            let combined =
                directory::combine(mailbox, central_contacts.contacts(), &persons, Utc::now());
            (Cow::Owned(combined), ids)
        } else {
            // The cached folder as it is: no copy of it per job.
            (Cow::Borrowed(central_contacts.contacts()), BTreeSet::new())
        };
        let scope = CleanupScope {
            source,
            directory_ids: &directory_ids,
            persons: &persons,
        };
        let current = FolderChoice::from(&tenant.distribution.target_folder);
        let mut folders = vec![current.clone()];
        if current != FolderChoice::DefaultContacts {
            folders.push(FolderChoice::DefaultContacts);
        }
        let ctx = plan_context(tenant, job, mailbox);
        let mut done = Done::default();
        for choice in &folders {
            let Some(folder) = find_folder(client, job, mailbox, choice, false).await? else {
                continue;
            };
            let contacts = client
                .list_contacts(&mailbox.id, &folder)
                .await
                .map_err(|e| classify(&e, &format!("reading contacts of {}", mailbox.upn)))?;
            let plan = sync::plan_cleanup(&ctx, mailbox, &contacts, &scope);
            // Cleanup reports what it removed, dry run or not (the run's summary names the mailbox).
            let planned = planned_lines(&plan);
            let mut step = self
                .apply(
                    client,
                    job,
                    mailbox,
                    &folder,
                    plan,
                    Planning::none(),
                    false,
                    writes,
                )
                .await?;
            step.planned = planned;
            done.absorb(step);
        }
        info!(mailbox = %mailbox.upn, %source, removed = done.counts.deleted,
              unstamped = done.counts.updated, "cleaned up");
        Ok(done)
    }

    /// Cleanup of the central folder (`cleanup --source mirror|all`): its managed contacts, by the one ownership
    /// rule judged in the shared mailbox. Sent after every mailbox's cleanup succeeded, which judged copies
    /// against it.
    async fn cleanup_central(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        source: CleanupSource,
        central: &CentralFolder,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let Some(id) = central
            .folder_id
            .as_ref()
            .filter(|_| source.includes_central())
        else {
            return Ok(Done::default());
        };
        let folder = FolderRef::Id(id.clone());
        let contacts = read_central(client, central).await?;
        let ctx = plan_context(tenant, job, &central.mailbox);
        let none = BTreeSet::new();
        let scope = CleanupScope {
            source: CleanupSource::All,
            directory_ids: &none,
            persons: &[],
        };
        let plan = sync::plan_cleanup(&ctx, &central.mailbox, &contacts, &scope);
        let planned = planned_lines(&plan);
        let mut done = self
            .apply(
                client,
                job,
                &central.mailbox,
                &folder,
                plan,
                Planning::none(),
                false,
                writes,
            )
            .await?;
        done.planned = planned;
        info!(mailbox = %central.mailbox.upn, removed = done.counts.deleted, "central folder cleaned up");
        Ok(done)
    }

    /// Writes the plan (unless the job is a dry run) and counts what happened. `photos`: a photo step follows, so
    /// the ids of created contacts are kept ([`Done::created_ids`]); without one they are not (100,000 creates'
    /// ids and sync ids, held until the job ends: issue 10, scenario 10).
    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        plan: Plan,
        planning: Planning,
        photos: bool,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        if job.dry_run {
            return Ok(Done {
                counts: plan.counts(),
                planned: planned_lines(&plan),
                ..Done::default()
            });
        }
        // Only the writes are held while they are sent, and each batch's writes are dropped once answered,
        // reduced at once to what the feed needs (id and change key): a 100,000-contact plan is neither copied
        // whole nor its answers held whole (issue 10, scenario 10).
        let Writes { counts, ops } = plan.into_writes();
        // The planning units become the held writes' share, given back as batches are answered (see
        // `planning_budget`): the next large plan waits for these writes rather than adding its state to them.
        let mut held = planning.into_writes(ops.len());
        if ops.is_empty() {
            return Ok(Done {
                counts,
                ..Done::default()
            });
        }
        let mut failed_writes = 0u64;
        let mut retry_wait: Option<Duration> = None;
        let mut first_transient = None;
        let (mut written, mut deleted) = (feed::Written::new(), BTreeSet::new());
        let mut confirmed = BTreeSet::new();
        // Every confirmed create's id by sync id: the photos of created copies are sent after the writes.
        let mut created_ids = BTreeMap::new();
        let mut ops = ops.into_iter();
        loop {
            let batch: Vec<WriteOp> = ops.by_ref().take(WRITE_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            // A cancelled attempt is dropped while it awaits a batch; the batch itself runs to its end (see run).
            let sending = writes.spawn({
                let (client, mailbox, folder) =
                    (client.clone(), mailbox.id.clone(), folder.clone());
                async move {
                    let answered = client.write(&mailbox, &folder, &batch).await;
                    (batch, answered)
                }
            });
            let (batch, answered) = joined(sending.await, &format!("writing to {}", mailbox.upn))?;
            let answered =
                answered.map_err(|e| classify(&e, &format!("writing to {}", mailbox.upn)))?;
            for (op, outcome) in batch.iter().zip(answered) {
                match (op, outcome) {
                    (WriteOp::Delete { id }, Ok(_)) => {
                        deleted.insert(id.clone());
                    }
                    (WriteOp::Update { id, .. }, Ok(answer)) => {
                        written.insert(id.clone(), answer.and_then(|c| c.change_key));
                    }
                    (WriteOp::Create(write), Ok(Some(created))) => {
                        if let Some(sync) = write.sync_id.as_deref().and_then(SyncId::parse) {
                            // Kept only for a job that may move copies (see `plan_move_out`).
                            if job.move_from.is_some() {
                                confirmed.insert(sync.clone());
                            }
                            if photos {
                                created_ids.insert(sync, created.id.clone());
                            }
                        }
                        written.insert(created.id, created.change_key);
                    }
                    (_, Ok(_)) => {}
                    (_, Err(error)) => {
                        match classify(&error, &format!("writing to {}", mailbox.upn)) {
                            AttemptResult::Transient { wait, error } => {
                                retry_wait = Some(retry_wait.map_or(wait, |w| w.max(wait)));
                                first_transient.get_or_insert(error);
                            }
                            _ => {
                                debug!(mailbox = %mailbox.upn, %error, "write refused");
                                failed_writes += 1;
                            }
                        }
                    }
                }
            }
            let answered = batch.len();
            drop(batch);
            held.answered(answered);
        }
        if let (Some(wait), Some(error)) = (retry_wait, first_transient) {
            // Re-running the job is safe: sync ids are deterministic and matched first, so what was written is
            // found, not written again.
            return Err(AttemptResult::Transient { wait, error });
        }
        debug!(mailbox = %mailbox.upn, created = counts.created, updated = counts.updated,
              deleted = counts.deleted, failed = failed_writes, "applied");
        Ok(Done {
            counts,
            failed_writes,
            written,
            deleted,
            created: confirmed,
            created_ids,
            ..Done::default()
        })
    }

    /// Brings the central folder's photos in line with their persons' origins (phase 1, `Photos` on): `targets`
    /// the central persons as read (see `central_photo_targets`), `done` what the plan's writes did (created
    /// persons get their origin's photo now, deleted duplicates none). An origin's photo is read (on its own
    /// mailbox's budget) only when [`photo::check_origin`] says so; then the photo is put or removed as
    /// [`photo::decide`] says, and the hash with the origin's change key recorded in one PATCH, as a task of
    /// `writes` (a cancel never leaves one half-done; a failure between the two reads the origin again next run).
    #[allow(clippy::too_many_arguments)]
    async fn apply_central_photos(
        &self,
        client: &TenantClient,
        mailbox: &Mailbox,
        folder: &FolderRef,
        mut targets: BTreeMap<SyncId, (CentralPhoto, String)>,
        created_names: &BTreeMap<String, String>,
        origins: &BTreeMap<SyncId, OriginPhoto>,
        done: &Done,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        targets.retain(|_, (target, _)| !done.deleted.contains(&target.contact_id));
        for (sync_id, id) in &done.created_ids {
            if !origins.contains_key(sync_id) {
                continue;
            }
            let name = created_names
                .get(sync_id.as_str())
                .cloned()
                .unwrap_or_default();
            let created = CentralPhoto {
                contact_id: id.clone(),
                hash: None,
                source: None,
            };
            targets.insert(sync_id.clone(), (created, name));
        }
        let names: BTreeMap<SyncId, String> = targets
            .iter()
            .map(|(sync_id, (_, name))| (sync_id.clone(), name.clone()))
            .collect();
        let central: BTreeMap<SyncId, CentralPhoto> = targets
            .into_iter()
            .map(|(sync_id, (target, _))| (sync_id, target))
            .collect();
        let steps = photo::plan_central_photos(origins, &central);
        let mut tasks = Vec::with_capacity(steps.len());
        for step in steps {
            let name = names.get(&step.sync_id).cloned().unwrap_or_default();
            let (client, mailbox_id, folder) = (client.clone(), mailbox.id.clone(), folder.clone());
            tasks.push((
                name,
                writes.spawn(async move {
                    let (central, origin) = (&step.central, &step.origin);
                    let read = match step.check {
                        OriginCheck::Read => {
                            client
                                .contact_photo(
                                    &origin.mailbox_id,
                                    &FolderRef::Default,
                                    &origin.contact_id,
                                )
                                .await?
                        }
                        OriginCheck::Remove | OriginCheck::Keep => None,
                    };
                    let source = read.as_deref().map(SourcePhoto::of);
                    let action = photo::decide(source.as_ref(), central.hash.as_ref());
                    let id = &central.contact_id;
                    match &action {
                        PhotoAction::Send => {
                            let bytes = read.as_deref().unwrap_or_default();
                            client
                                .put_contact_photo(&mailbox_id, &folder, id, bytes)
                                .await?;
                        }
                        PhotoAction::Remove => {
                            client
                                .delete_contact_photo(&mailbox_id, &folder, id)
                                .await?;
                        }
                        PhotoAction::Keep | PhotoAction::TooLarge { .. } => {}
                    }
                    let hash = match &action {
                        PhotoAction::Send => source.as_ref().map(|s| s.hash.clone()),
                        PhotoAction::Remove => None,
                        PhotoAction::Keep | PhotoAction::TooLarge { .. } => central.hash.clone(),
                    };
                    let read_at = origin.change_key.as_deref().unwrap_or_default();
                    let stored = client
                        .set_photo_hash(&mailbox_id, &folder, id, hash.as_ref(), Some(read_at))
                        .await?;
                    Ok::<_, GraphError>((action, stored))
                }),
            ));
        }
        let mut out = Done::default();
        let mut first_transient = None;
        for (name, task) in tasks {
            let answered = joined(task.await, &format!("writing photos to {}", mailbox.upn))?;
            match answered {
                Ok((action, stored)) => {
                    match action {
                        PhotoAction::Send => out.photos.sent += 1,
                        PhotoAction::Remove => out.photos.removed += 1,
                        PhotoAction::TooLarge { size } => out.photos.skipped.push(format!(
                            "photo of {name} not sent: {size} bytes is over Graph's 4 MB request limit"
                        )),
                        PhotoAction::Keep => {}
                    }
                    out.written
                        .insert(stored.id.clone(), stored.change_key.clone());
                }
                Err(error) => {
                    photo_write_failed(&mut out, &mut first_transient, mailbox, &name, &error)
                }
            }
        }
        photos_done(out, first_transient, mailbox, "central photos")
    }

    /// Brings the photos of the managed copies in `folder` in line with their persons' (`Photos` on): directory
    /// users' photos from `from.lists`, mirrored persons' from the central folder (`from.central`: each central
    /// contact's `PhotoHash` is its person's photo, the bytes read once per worker and run when a copy needs
    /// them). `target` is the folder as read before this job's writes, `done` what they did (created copies get
    /// their photo now). Only managed copies (the sync id property proves them) are touched, never an owner's
    /// contact. Each send is the photo PUT, then the hash written into the copy's property (a failure between the
    /// two sends the photo again next run, which is harmless); the pair runs as a task of `writes`, so a
    /// cancelled attempt never leaves one half-sent. A transient failure fails the attempt (retried: what was
    /// sent is found by its hash); a refused photo is counted as a refused write.
    #[allow(clippy::too_many_arguments)]
    async fn apply_photos(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        target: &[Contact],
        done: &Done,
        from: PhotoSources<'_>,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let mut names: BTreeMap<SyncId, String> = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut bytes: BTreeMap<SyncId, PhotoBytes> = BTreeMap::new();
        // A directory user's photo by each of the user's addresses: a person both sources know (one contact under
        // the mirror's sync id, see `directory::combine`) takes the directory's photo, as it takes its fields.
        let mut directory_photos = BTreeMap::new();
        for list in from.lists {
            for person in &list.persons {
                if let Some(photo) = list.photos.get(&person.sync_id) {
                    for key in shared::sync::normalize::email_keys(&person.fields) {
                        directory_photos.entry(key).or_insert(photo);
                    }
                }
            }
        }
        // The mirror's persons first; the directory's entries, which never share a sync id with a central one, come
        // after.
        if let Some((central, contacts)) = from.central {
            for contact in contacts.contacts() {
                // The directory's own entries in a combined list are not central contacts.
                if contact.id.starts_with("directory:") {
                    continue;
                }
                let Some(sync_id) = sync::effective_sync_id(contact) else {
                    continue;
                };
                let name = contact.fields.display_name.as_deref().unwrap_or_default();
                names.insert(sync_id.clone(), name.to_owned());
                let merged = shared::sync::normalize::email_keys(&contact.fields)
                    .iter()
                    .find_map(|key| directory_photos.get(key).copied());
                if let Some(photo) = merged {
                    sources.insert(sync_id.clone(), photo.source.clone());
                    bytes.insert(sync_id, PhotoBytes::Loaded(photo.bytes.clone()));
                } else if let Some(hash) = &contact.photo_hash {
                    sources.insert(sync_id.clone(), SourcePhoto::central(hash.clone()));
                    let read = CentralPhotoRead {
                        cache: self.central_photos.clone(),
                        tenant: job.tenant_id.clone(),
                        run: job.run_id,
                        mailbox: central.mailbox.id.clone(),
                        folder: central.folder_id.clone(),
                        contact_id: contact.id.clone(),
                    };
                    bytes.insert(sync_id, PhotoBytes::Central(read));
                }
            }
        }
        for list in from.lists {
            for person in &list.persons {
                let name = person
                    .user_principal_name
                    .clone()
                    .unwrap_or_else(|| person.object_id.clone());
                names.insert(person.sync_id.clone(), name);
            }
            for (sync_id, photo) in &list.photos {
                sources.insert(sync_id.clone(), photo.source.clone());
                bytes.insert(sync_id.clone(), PhotoBytes::Loaded(photo.bytes.clone()));
            }
        }
        let mut copies = BTreeMap::new();
        for contact in target {
            let Some(sync_id) = contact.sync_id_property.as_deref().and_then(SyncId::parse) else {
                continue;
            };
            let managed =
                sync::ownership(&tenant.tenant_id, mailbox, contact) == Ownership::ManagedCopy;
            if !managed || !names.contains_key(&sync_id) || done.deleted.contains(&contact.id) {
                continue;
            }
            copies.entry(sync_id).or_insert_with(|| CopyPhoto {
                contact_id: contact.id.clone(),
                hash: contact.photo_hash.clone(),
            });
        }
        for (sync_id, id) in &done.created_ids {
            if names.contains_key(sync_id) {
                copies.insert(
                    sync_id.clone(),
                    CopyPhoto {
                        contact_id: id.clone(),
                        hash: None,
                    },
                );
            }
        }
        let steps = photo::plan_photos(&sources, &copies);
        let mut out = Done::default();
        let mut sending = Vec::new();
        for step in steps {
            let name = names.get(&step.sync_id).cloned().unwrap_or_default();
            match step.action {
                PhotoAction::TooLarge { size } => out.photos.skipped.push(format!(
                    "photo of {name} not sent: {size} bytes is over Graph's 4 MB request limit"
                )),
                PhotoAction::Send | PhotoAction::Remove => {
                    let send = match step.action {
                        PhotoAction::Send => bytes.get(&step.sync_id).cloned(),
                        _ => None,
                    };
                    let hash = sources.get(&step.sync_id).map(|s| s.hash.clone());
                    let (client, mailbox_id, folder) =
                        (client.clone(), mailbox.id.clone(), folder.clone());
                    let id = step.contact_id.clone();
                    sending.push((
                        name,
                        writes.spawn(async move {
                            let stored = match send {
                                Some(photo) => {
                                    // A central photo gone since the folder was read: nothing to send now.
                                    let Some(photo) = photo.get(&client).await? else {
                                        return Ok(None);
                                    };
                                    client
                                        .put_contact_photo(&mailbox_id, &folder, &id, &photo)
                                        .await?;
                                    let stored = client
                                        .set_photo_hash(
                                            &mailbox_id,
                                            &folder,
                                            &id,
                                            hash.as_ref(),
                                            None,
                                        )
                                        .await?;
                                    (true, stored)
                                }
                                None => {
                                    client
                                        .delete_contact_photo(&mailbox_id, &folder, &id)
                                        .await?;
                                    let stored = client
                                        .set_photo_hash(&mailbox_id, &folder, &id, None, None)
                                        .await?;
                                    (false, stored)
                                }
                            };
                            Ok::<_, GraphError>(Some(stored))
                        }),
                    ));
                }
                PhotoAction::Keep => {}
            }
        }
        let mut first_transient = None;
        for (name, task) in sending {
            let answered = joined(task.await, &format!("writing photos to {}", mailbox.upn))?;
            match answered {
                Ok(None) => {}
                Ok(Some((sent, stored))) => {
                    if sent {
                        out.photos.sent += 1;
                    } else {
                        out.photos.removed += 1;
                    }
                    out.written
                        .insert(stored.id.clone(), stored.change_key.clone());
                }
                Err(error) => {
                    photo_write_failed(&mut out, &mut first_transient, mailbox, &name, &error)
                }
            }
        }
        photos_done(out, first_transient, mailbox, "photos")
    }
}

/// A source mailbox as phase 1 read it: the contacts that can change the plan, and the origins it holds
/// (`Photos` on; see `origin_photo`).
type SourceRead = (SourceMailbox, Vec<(SyncId, OriginPhoto)>);

/// Where phase 2's photos come from: the directories' users (their bytes loaded with the persons) and the central
/// folder with the list the mailbox was planned against (its central contacts' `PhotoHash`).
struct PhotoSources<'a> {
    lists: &'a [Arc<Selected>],
    central: Option<(&'a CentralFolder, &'a PreparedCentral)>,
}

/// A photo to send: loaded already (a directory user's), or a central contact's, read once per worker and run.
#[derive(Clone)]
enum PhotoBytes {
    Loaded(Arc<Vec<u8>>),
    Central(CentralPhotoRead),
}

/// How to read a central contact's photo through the worker's cache.
#[derive(Clone)]
struct CentralPhotoRead {
    cache: Arc<CentralPhotos>,
    tenant: String,
    run: uuid::Uuid,
    mailbox: String,
    folder: Option<String>,
    contact_id: String,
}

impl PhotoBytes {
    /// The bytes; `None` when a central contact has no photo any more.
    async fn get(self, client: &TenantClient) -> Result<Option<Arc<Vec<u8>>>, GraphError> {
        match self {
            PhotoBytes::Loaded(bytes) => Ok(Some(bytes)),
            PhotoBytes::Central(read) => {
                let folder = match &read.folder {
                    Some(id) => FolderRef::Id(id.clone()),
                    None => FolderRef::Default,
                };
                read.cache
                    .get_or_read(
                        &read.tenant,
                        read.run,
                        read.folder.as_deref(),
                        &read.contact_id,
                        || client.contact_photo(&read.mailbox, &folder, &read.contact_id),
                    )
                    .await
            }
        }
    }
}

/// The person `contact` of `mailbox` is the origin of, noted for the central photo step (`Photos` on): a user's own
/// contact (never a managed copy, never one carrying the opt-out category) whose derived sync id is a central
/// person's (its photo, or that it has none, is that person's), or that has a photo (a person it starts in this
/// run gets it once created).
/// A write task's answer, or, when the task itself failed (panicked or was aborted), a transient failure of the job
/// saying what it was `doing`.
fn joined<T>(answer: Result<T, tokio::task::JoinError>, doing: &str) -> Result<T, AttemptResult> {
    answer.map_err(|join| AttemptResult::Transient {
        wait: Duration::ZERO,
        error: format!("{doing}: the write task failed: {join}"),
    })
}

/// Files a failed photo write of `name` in `out`: a transient failure is kept in `transient` (the first one fails
/// the job once the others are answered), Graph's 413 is a photo skipped and reported (its request size limit,
/// should it be lower than ours: not a failure), anything else a refused write.
fn photo_write_failed(
    out: &mut Done,
    transient: &mut Option<AttemptResult>,
    mailbox: &Mailbox,
    name: &str,
    error: &GraphError,
) {
    match classify(error, &format!("writing photos to {}", mailbox.upn)) {
        failed @ AttemptResult::Transient { .. } => {
            transient.get_or_insert(failed);
        }
        _ if error.status() == Some(413) => out.photos.skipped.push(format!(
            "photo of {name} not sent: Graph refused it as too large (413)"
        )),
        _ => {
            debug!(mailbox = %mailbox.upn, %error, "photo write refused");
            out.failed_writes += 1;
        }
    }
}

/// What a job's photo writes (`what`: the central folder's or the copies') come to: `out`, or the first transient
/// failure among them.
fn photos_done(
    out: Done,
    transient: Option<AttemptResult>,
    mailbox: &Mailbox,
    what: &str,
) -> Result<Done, AttemptResult> {
    if let Some(transient) = transient {
        return Err(transient);
    }
    debug!(mailbox = %mailbox.upn, sent = out.photos.sent, removed = out.photos.removed,
           skipped = out.photos.skipped.len(), "{what}");
    Ok(out)
}

fn origin_photo(
    ctx: &PlanContext,
    keys: &sync::CentralKeys,
    mailbox: &Mailbox,
    contact: &Contact,
) -> Option<(SyncId, OriginPhoto)> {
    if shared::sync::normalize::has_category(&contact.categories, &ctx.options.opt_out_category)
        || sync::ownership(&ctx.tenant_id, mailbox, contact) == Ownership::ManagedCopy
    {
        return None;
    }
    let derived = SyncId::derive(&ctx.tenant_id, &mailbox.id, &contact.id);
    (contact.has_picture || keys.holds(&derived)).then(|| {
        let origin = OriginPhoto {
            mailbox_id: mailbox.id.clone(),
            contact_id: contact.id.clone(),
            change_key: contact.change_key.clone(),
            has_picture: contact.has_picture,
        };
        (derived, origin)
    })
}

/// The central persons whose origin phase 1 read, with their photo properties and display name: the contact kept
/// in sync for each sync id (the first by id, as `plan_central` keeps it).
fn central_photo_targets(
    ctx: &PlanContext,
    central: &[Contact],
    origins: &BTreeMap<SyncId, OriginPhoto>,
) -> BTreeMap<SyncId, (CentralPhoto, String)> {
    let mut sorted: Vec<&Contact> = central.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = BTreeMap::new();
    for contact in sorted {
        let sync = sync::effective_sync_id(contact)
            .unwrap_or_else(|| SyncId::derive(&ctx.tenant_id, &ctx.owner.id, &contact.id));
        if !origins.contains_key(&sync) || out.contains_key(&sync) {
            continue;
        }
        let target = CentralPhoto {
            contact_id: contact.id.clone(),
            hash: contact.photo_hash.clone(),
            source: contact.photo_source.clone(),
        };
        let name = contact.fields.display_name.as_deref().unwrap_or_default();
        out.insert(sync, (target, name.to_owned()));
    }
    out
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

/// The folder `choice` names in `mailbox`: the default Contacts folder, or the top-level folder of that name,
/// created when `create` (never in a dry run); `None` when it does not exist and is not created.
async fn find_folder(
    client: &TenantClient,
    job: &Job,
    mailbox: &Mailbox,
    choice: &FolderChoice,
    create: bool,
) -> Result<Option<FolderRef>, AttemptResult> {
    let FolderChoice::Named(name) = choice else {
        return Ok(Some(FolderRef::Default));
    };
    let doing = format!("finding the folder {name:?} of {}", mailbox.upn);
    let found = if create && !job.dry_run {
        client
            .ensure_top_level_folder(&mailbox.id, name)
            .await
            .map(Some)
    } else {
        client.find_top_level_folder(&mailbox.id, name).await
    }
    .map_err(|e| classify(&e, &doing))?;
    Ok(found.map(|folder| FolderRef::Id(folder.id)))
}

/// A receiving mailbox's kept feed checked by its own phase-2 job (no phase 1 did): the feed moved to now, still
/// in line only if it shows no change; `None` when the link is not usable any more (Graph no longer knows it, or
/// the folder it follows is gone), which means a full read and a new feed.
async fn check_kept(
    client: &TenantClient,
    mailbox: &Mailbox,
    prior: &FolderFeed,
) -> Result<Option<FolderFeed>, AttemptResult> {
    match client.delta_since(&mailbox.id, &prior.link).await {
        Ok(round) => Ok(Some(FolderFeed {
            in_line_with: prior.in_line_with.filter(|_| round.is_empty()),
            link: round.link,
        })),
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::InvalidDeltaToken | ErrorKind::ItemNotFound
            ) || matches!(error, GraphError::Protocol(_)) =>
        {
            info!(mailbox = %mailbox.upn, %error, "kept delta link not usable; reading the mailbox in full");
            Ok(None)
        }
        Err(error) => Err(classify(
            &error,
            &format!("checking contacts of {}", mailbox.upn),
        )),
    }
}

/// Checks a folder's feed: what changed since `prior`, or, without a usable link, a new feed (and so
/// [`Check::Unknown`]). A link Graph no longer knows, or one that points elsewhere, is dropped, not an error.
/// When the producer keeps no feeds (`tracked` false) nothing is sent and nothing is known.
async fn check_feed(
    client: &TenantClient,
    mailbox: &Mailbox,
    folder: &FolderRef,
    tracked: bool,
    prior: Option<&FolderFeed>,
) -> Result<FeedCheck, GraphError> {
    if !tracked {
        return Ok(FeedCheck {
            check: Check::Unknown,
            link: None,
        });
    }
    if let Some(prior) = prior {
        match client.delta_since(&mailbox.id, &prior.link).await {
            Ok(round) => {
                let check = if round.is_empty() {
                    Check::Unchanged
                } else {
                    Check::Changed
                };
                return Ok(FeedCheck {
                    check,
                    link: Some(round.link),
                });
            }
            Err(error)
                if matches!(error.kind(), ErrorKind::InvalidDeltaToken)
                    || matches!(error, GraphError::Protocol(_)) =>
            {
                debug!(mailbox = %mailbox.upn, %error, "kept delta link not usable; starting a new feed");
            }
            Err(error) => return Err(error),
        }
    }
    let round = client.delta_start(&mailbox.id, folder).await?;
    Ok(FeedCheck {
        check: Check::Unknown,
        link: Some(round.link),
    })
}

/// The feed after the attempt's own writes: moved past them if the feed shows nothing else, else where it was
/// (the next run then reads the folder again, which is always safe).
async fn advance_past_own_writes(
    client: &TenantClient,
    mailbox: &Mailbox,
    before: DeltaLink,
    done: &Done,
) -> DeltaLink {
    if done.written.is_empty() && done.deleted.is_empty() {
        return before;
    }
    match client.delta_since(&mailbox.id, &before).await {
        Ok(round) if feed::only_own_writes(&round.changes, &done.written, &done.deleted) => {
            round.link
        }
        Ok(_) => {
            debug!(mailbox = %mailbox.upn, "changed by someone else meanwhile; the next run reads it again");
            before
        }
        Err(error) => {
            debug!(mailbox = %mailbox.upn, %error, "could not move the feed past this run's writes; the next run reads it again");
            before
        }
    }
}

/// A source mailbox that cannot be read: a permanent failure of that source alone, or a transient one that
/// retries the whole job (a source missing from the merge would unpublish its contacts).
fn source_failure(mailbox: &Mailbox, error: &GraphError) -> Result<SourceFailure, AttemptResult> {
    match classify(error, &format!("reading contacts of {}", mailbox.upn)) {
        AttemptResult::Permanent { reason, error } => {
            debug!(mailbox = %mailbox.upn, %reason, %error, "source mailbox skipped");
            Ok(SourceFailure {
                mailbox: mailbox.clone(),
                reason,
                error,
            })
        }
        transient => Err(transient),
    }
}

/// The persons `tenant`'s `Directory` settings select, read through Graph (a constant number of listings).
async fn read_directory(
    tenant: &TenantSettings,
    client: &TenantClient,
) -> Result<Selected, AttemptResult> {
    let options = &tenant.distribution.directory;
    let snapshot = client
        .read_directory(options, tenant.shared_mailbox())
        .await
        .map_err(|e| directory_failure(&tenant.tenant_id, &e))?;
    let persons = directory::select(&snapshot.read(), options);
    if !tenant.photos {
        return Ok(Selected::new(persons));
    }
    let photos = client
        .directory_photos(&persons)
        .await
        .map_err(|e| classify(&e, "reading the directory users' photos"))?;
    Ok(Selected::with_photos(persons, photos))
}

/// Several sources' persons in one list (each source's persons once, in source order).
fn joined_persons(lists: &[Arc<Selected>]) -> Vec<DirectoryPerson> {
    lists
        .iter()
        .flat_map(|list| list.persons.iter().cloned())
        .collect()
}

/// A failed read of another tenant's directory, said as the receiving tenant's failure (the text already names
/// the source tenant and what to fix there).
fn from_source(failure: AttemptResult, receiver: &str) -> AttemptResult {
    let context = |error: String| format!("{error} (Directory.FromTenants of {receiver})");
    match failure {
        AttemptResult::Permanent { reason, error } => AttemptResult::Permanent {
            reason,
            error: context(error),
        },
        AttemptResult::Transient { wait, error } => AttemptResult::Transient {
            wait,
            error: context(error),
        },
        other => other,
    }
}

/// A failed directory read: a missing permission, a refused `UserFilter` or an unknown group is the tenant's
/// configuration to fix (permanent, the text names it); anything else is classified like any Graph error.
pub fn directory_failure(tenant_id: &str, error: &DirectoryError) -> AttemptResult {
    let doing = format!("reading the directory of {tenant_id}");
    match error {
        DirectoryError::Graph(graph) => classify(graph, &doing),
        DirectoryError::MissingPermission { .. } => AttemptResult::Permanent {
            reason: FailureReason::AccessDenied,
            error: format!("{doing}: {error}"),
        },
        _ => AttemptResult::Permanent {
            reason: FailureReason::GraphRejected,
            error: format!("{doing}: {error}"),
        },
    }
}

async fn read_central(
    client: &TenantClient,
    central: &CentralFolder,
) -> Result<Vec<Contact>, AttemptResult> {
    match &central.folder_id {
        // Dry run before the folder exists: the central folder is empty by definition.
        None => Ok(Vec::new()),
        Some(id) => client
            .list_contacts(&central.mailbox.id, &FolderRef::Id(id.clone()))
            .await
            .map_err(|e| {
                classify(
                    &e,
                    &format!("reading the central folder of {}", central.mailbox.upn),
                )
            }),
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
    use shared::sync::{ActionKind, PlanItem, Reason};

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
