//! Phase 1: every source mailbox's contacts merged into the central folder, de-duplicated. Its own file because
//! it is the one step that checks and reads many mailboxes ([`SOURCE_CHECK_CONCURRENCY`] and
//! [`SOURCE_READ_CONCURRENCY`] at a time), skips the merge when no feed changed, and leaves mailboxes holding only
//! copies unchecked once the run is known to change something (their phase-2 jobs read them anyway).

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::stream::{self, StreamExt};
use shared::config::TenantSettings;
use shared::directory;
use shared::feed::{self, CentralBefore, Check, Cursors, FolderFeed, SourceCheck};
use shared::graph::{FolderRef, GraphError, TenantClient};
use shared::message::{CentralFolder, FailureReason, FolderChoice, Job, SourceFailure};
use shared::model::Mailbox;
use shared::sync::photo::OriginPhoto;
use shared::sync::{self, PlanContext, SourceMailbox, SyncId};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::apply::{Keep, WRITE_BATCH};
use super::central::read_central;
use super::folders::{check_feed, feed_after_writes, FeedCheck};
use super::origin_photos::{central_photo_targets, origin_photo};
use super::{classify, plan_context, Done, JobRunner};
use crate::disposition::AttemptResult;
use crate::heap;
use crate::overlap::{Ended, Publishing};

/// How many source mailboxes a phase-1 job checks and reads at once (each has its own Graph budget). At Graph's
/// latency the checks and reads follow one another in rounds of this many: with 16, a 255-mailbox tenant at 200 ms
/// a request took 4.5 s for a no-change re-run and 11.9 s for a 1 %-changed one, with 32 3.1 s and 9.1 s (README,
/// *Phase 1's reads at Graph's latency*). Each read in flight holds one page (up to 1,000 contacts, about 2.5 MB
/// as received and decoded), so 32 keep that under 80 MB beside a large central folder; 64 were faster still but
/// would double it within the worker's 512 Mi.
const SOURCE_READ_CONCURRENCY: usize = 32;

/// How many source mailboxes a phase-1 job checks at once. A check is one delta request per mailbox (each has its
/// own Graph budget) whose answer is a few ids (`$select=id,changeKey`, at most 500 a page, about 100 KB), so
/// checks go four times as wide as reads: at Graph's latency a quiet run is its rounds of checks.
const SOURCE_CHECK_CONCURRENCY: usize = 4 * SOURCE_READ_CONCURRENCY;

/// A source mailbox as phase 1 read it: the contacts that can change the plan, and the origins it holds
/// (`Photos` on; see `origin_photo`).
type SourceRead = (SourceMailbox, Vec<(SyncId, OriginPhoto)>);

impl JobRunner {
    pub(super) async fn phase1(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: &CentralFolder,
        sources: &[Mailbox],
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let prior = &job.cursors;
        // Overlapped phases: this attempt's plan and confirmed creates go on the tenant's board;
        // leaving early in any way tells the waiting phase-2 jobs the attempt is over (`Publishing`'s drop).
        let board = if job.overlapped && job.may_overlap(tenant, false) {
            self.boards.board(&job.tenant_id, job.run_id)
        } else {
            None
        };
        let publishing = Publishing::on(board.as_deref());
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
        let previous = prior.central.as_ref().and_then(|f| f.in_line_with);
        // Sources phase 1 may leave to their phase-2 jobs unchecked if its plan writes the central folder
        // (`feed::source_deferrable`); the plain mirror only (photos and a rebuild read every source, the
        // directory and a target folder are planned against more than the central folder).
        let plain = !tenant.photos
            && !job.rebuild_central
            && !job.dry_run
            && !tenant.distribution.receives_directory()
            && FolderChoice::from(&tenant.distribution.target_folder)
                == FolderChoice::DefaultContacts;
        let (candidates, to_check): (Vec<Mailbox>, Vec<Mailbox>) =
            sources.iter().cloned().partition(|mailbox| {
                plain
                    && feed::source_deferrable(
                        central_check.check,
                        previous,
                        prior.mailboxes.get(&mailbox.id),
                    )
            });
        let mut checked = Checked::new(prior.tracked);
        checked.absorb(prior, check_sources(client, prior, to_check).await)?;
        // The others are checked only until one check shows a change: the rest are left to their phase-2 jobs.
        let (rest, mut deferred) = check_until_changed(
            client,
            prior,
            in_run_order(candidates, job.run_id),
            checked.any_change(),
        )
        .await;
        checked.absorb(prior, rest)?;
        // With nothing else changed this is a quiet run unless one of them changed, which only their checks tell.
        if !deferred.is_empty()
            && feed::phase1_skip(central_check.check, previous, &checked.source_checks).is_some()
        {
            let rest = check_sources(client, prior, std::mem::take(&mut deferred)).await;
            checked.absorb(prior, rest)?;
        }
        let Checked {
            readable,
            source_checks,
            mut source_failures,
            mut cursors,
        } = checked;
        // A rebuild always reads: the feeds say nothing about a folder that was lost.
        let skip = if job.rebuild_central {
            None
        } else {
            feed::phase1_skip(central_check.check, previous, &source_checks)
        };
        if let Some(generation) = skip {
            debug!(mailbox = %central.mailbox.upn, sources = readable.len(), "nothing changed since the last run");
            cursors.central = central_check
                .link
                .map(|link| FolderFeed::at(link, Some(generation)));
            publishing.finish(Ended::Written {
                in_line_with: Some(generation),
            });
            return Ok(Done {
                source_failures,
                cursors,
                skipped: true,
                ..Done::default()
            });
        }

        // A source that holds nothing but copies of the standing generation's persons, unchanged since, is not
        // read: its read would be dropped contact by contact as inert (`feed::source_unread`). Photos are noted
        // from every contact read, and a rebuild publishes copies, so both read everything.
        let (unread, readable): (Vec<_>, Vec<_>) =
            readable.into_iter().partition(|(mailbox, check)| {
                !tenant.photos
                    && !job.rebuild_central
                    && feed::source_unread(
                        central_check.check,
                        previous,
                        *check,
                        cursors.mailboxes.get(&mailbox.id),
                    )
            });
        debug!(mailbox = %central.mailbox.upn, read = readable.len(), unread = unread.len(), "reading the sources that may change the plan");
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
        let reading = Reading {
            client,
            ctx: &ctx,
            keys: &central_keys,
            photos: tenant.photos,
        };
        let readable = readable.into_iter().map(|(mailbox, _)| mailbox).collect();
        // An unread source plans as a read one whose every contact was dropped as inert; so does a deferred one
        // unless the plan says otherwise below.
        let mut sources_read = SourcesRead::unread(unread.into_iter().map(|(mailbox, _)| mailbox));
        sources_read.add_unread(deferred.iter().cloned());
        sources_read.absorb(reading.read(readable).await, &mut cursors)?;
        if job.rebuild_central && tenant.distribution.receives_directory() {
            // A rebuild publishes stamped copies; the directory's copies (any source tenant's) are not mirrored
            // persons.
            for persons in self.received_directory(tenant, client, job).await? {
                for source in &mut sources_read.sources {
                    directory::drop_directory_copies(&mut source.contacts, &persons.persons);
                }
            }
        }
        let mut plan = sync::plan_central(&ctx, sources_read.sorted(), &central_contacts);
        if !deferred.is_empty() {
            // Left to their phase-2 jobs only by a plan that writes, one `$batch` at most (it is then written
            // before any phase-2 job goes: no overlap) and whose persons can be handed on as they were.
            let writes = plan.writes().count();
            let before = previous
                .filter(|_| (1..=WRITE_BATCH).contains(&writes))
                .and_then(|generation| {
                    let persons = sync::superseded(&ctx, &central_contacts, &plan)?;
                    Some(CentralBefore {
                        generation,
                        persons,
                    })
                });
            match before {
                Some(before) => {
                    debug!(mailbox = %central.mailbox.upn, unchecked = deferred.len(), "sources holding only copies left to their phase-2 jobs");
                    for mailbox in &deferred {
                        if let Some(feed) = prior.mailboxes.get(&mailbox.id) {
                            cursors
                                .mailboxes
                                .insert(mailbox.id.clone(), feed.left_unchecked());
                        }
                    }
                    cursors.central_before = Some(Box::new(before));
                }
                None => {
                    // Checked as every other source after all: read where they changed, and planned again.
                    sources_read.forget(&deferred);
                    let mut late = Checked::new(prior.tracked);
                    late.absorb(prior, check_sources(client, prior, deferred).await)?;
                    cursors.mailboxes.append(&mut late.cursors.mailboxes);
                    source_failures.append(&mut late.source_failures);
                    let (unread, readable): (Vec<_>, Vec<_>) =
                        late.readable.into_iter().partition(|(mailbox, check)| {
                            feed::source_unread(
                                central_check.check,
                                previous,
                                *check,
                                cursors.mailboxes.get(&mailbox.id),
                            )
                        });
                    sources_read.add_unread(unread.into_iter().map(|(mailbox, _)| mailbox));
                    let readable = readable.into_iter().map(|(mailbox, _)| mailbox).collect();
                    sources_read.absorb(reading.read(readable).await, &mut cursors)?;
                    plan = sync::plan_central(&ctx, sources_read.sorted(), &central_contacts);
                }
            }
        }
        drop(central_keys);
        let SourcesRead {
            sources: source_mailboxes,
            origins,
            failures,
        } = sources_read;
        source_failures.extend(failures);
        // What the central photo step needs of the folder as read: the persons whose origin was read.
        let central_photos = central_photo_targets(&ctx, &central_contacts, &origins);
        // The plan holds what the writes need: what was read goes before the (long) writing starts, and the
        // planning units are kept for the writes' share only (see `apply`).
        let large = central_contacts.len().max(plan.items.len()) >= heap::LARGE;
        drop(source_mailboxes);
        // Overlapped: the phase-2 jobs go now (the folder as read becomes the folder the plan leaves).
        let overlapping = match publishing.board() {
            Some(board) => super::overlapped::announce_plan(
                job,
                board,
                central_contacts,
                &plan,
                ctx.now,
                &cursors,
            ),
            None => {
                drop(central_contacts);
                None
            }
        };
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
        let mut done = match overlapping {
            Some(board) => {
                let keep = Keep {
                    ids: tenant.photos,
                    confirm: Some(board),
                };
                let writes_to_send = plan.into_writes();
                self.send(
                    client,
                    job,
                    &central.mailbox,
                    &folder,
                    writes_to_send,
                    planning,
                    keep,
                    writes,
                )
                .await?
            }
            None => {
                self.apply(
                    client,
                    job,
                    &central.mailbox,
                    &folder,
                    plan,
                    planning,
                    tenant.photos,
                    writes,
                )
                .await?
            }
        };
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
            // A refused write leaves the folder short of the plan: read it all again next time.
            let in_line_with = (done.failed_writes == 0).then_some(generation);
            cursors.central =
                Some(feed_after_writes(client, &central.mailbox, link, in_line_with, &done).await);
        }
        done.source_failures = source_failures;
        publishing.finish(Ended::Written {
            in_line_with: cursors.central.as_ref().and_then(|f| f.in_line_with),
        });
        done.cursors = cursors;
        Ok(done)
    }
}

/// Checks each source's feed, [`SOURCE_CHECK_CONCURRENCY`] at a time.
async fn check_sources(
    client: &TenantClient,
    prior: &Cursors,
    sources: Vec<Mailbox>,
) -> Vec<(Mailbox, Result<FeedCheck, GraphError>)> {
    stream::iter(sources)
        .map(|mailbox| async move {
            let feed = prior.mailboxes.get(&mailbox.id);
            let check =
                check_feed(client, &mailbox, &FolderRef::Default, prior.tracked, feed).await;
            (mailbox, check)
        })
        .buffer_unordered(SOURCE_CHECK_CONCURRENCY)
        .collect()
        .await
}

/// Checks `sources` ([`SOURCE_CHECK_CONCURRENCY`] at a time, in order) until one shows a change, or from the start
/// when `changed` already: those not checked then are returned apart, left to their phase-2 jobs. A change is
/// anything but a check showing none (a failure too: errs towards leaving more to phase 2, which always reads).
async fn check_until_changed(
    client: &TenantClient,
    prior: &Cursors,
    sources: Vec<Mailbox>,
    changed: bool,
) -> (Vec<(Mailbox, Result<FeedCheck, GraphError>)>, Vec<Mailbox>) {
    let changed = AtomicBool::new(changed);
    let results: Vec<(Mailbox, Option<Result<FeedCheck, GraphError>>)> = stream::iter(sources)
        .map(|mailbox| {
            let changed = &changed;
            async move {
                if changed.load(Ordering::Relaxed) {
                    return (mailbox, None);
                }
                let feed = prior.mailboxes.get(&mailbox.id);
                let check =
                    check_feed(client, &mailbox, &FolderRef::Default, prior.tracked, feed).await;
                if !matches!(&check, Ok(found) if found.check == Check::Unchanged) {
                    changed.store(true, Ordering::Relaxed);
                }
                (mailbox, Some(check))
            }
        })
        .buffer_unordered(SOURCE_CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut checks = Vec::with_capacity(results.len());
    let mut unchecked = Vec::new();
    for (mailbox, check) in results {
        match check {
            Some(check) => checks.push((mailbox, check)),
            None => unchecked.push(mailbox),
        }
    }
    (checks, unchecked)
}

/// `sources` in an order of this run's own: the ones left unchecked differ from run to run, so no mailbox's
/// owner always waits a run longer than the others'.
fn in_run_order(mut sources: Vec<Mailbox>, run_id: uuid::Uuid) -> Vec<Mailbox> {
    sources.sort_by_cached_key(|mailbox| {
        let mut hasher = DefaultHasher::new();
        (run_id, &mailbox.id).hash(&mut hasher);
        hasher.finish()
    });
    sources
}

/// What the sources' checks found: those that can be read (with their check), what each check says for the
/// skip, those that cannot be read at all, and their feeds as the checks left them.
struct Checked {
    readable: Vec<(Mailbox, Check)>,
    source_checks: Vec<SourceCheck>,
    source_failures: Vec<SourceFailure>,
    cursors: Cursors,
}

impl Checked {
    fn new(tracked: bool) -> Self {
        Self {
            readable: Vec::new(),
            source_checks: Vec::new(),
            source_failures: Vec::new(),
            cursors: Cursors {
                tracked,
                ..Cursors::default()
            },
        }
    }

    /// Whether a check so far showed a change (`feed::sources_changed`).
    fn any_change(&self) -> bool {
        feed::sources_changed(&self.source_checks)
    }

    /// Takes in checks of sources whose feeds `prior` kept; a transient failure retries the whole job.
    fn absorb(
        &mut self,
        prior: &Cursors,
        checks: Vec<(Mailbox, Result<FeedCheck, GraphError>)>,
    ) -> Result<(), AttemptResult> {
        for (mailbox, check) in checks {
            match check {
                Ok(found) => {
                    self.source_checks.push(SourceCheck::Read(found.check));
                    if let Some(link) = found.link {
                        // A source unchanged since it was last brought in line is still in line; phase 2 uses this.
                        let feed = match prior.mailboxes.get(&mailbox.id) {
                            Some(kept) if found.check == Check::Unchanged => {
                                kept.moved_as_left(link)
                            }
                            _ => FolderFeed::at(link, None),
                        };
                        self.cursors.mailboxes.insert(mailbox.id.clone(), feed);
                    }
                    self.readable.push((mailbox, found.check));
                }
                Err(error) => {
                    let failure = source_failure(&mailbox, &error)?;
                    self.source_checks.push(SourceCheck::Unreadable {
                        had_feed: prior.mailboxes.contains_key(&mailbox.id),
                    });
                    self.source_failures.push(failure);
                }
            }
        }
        Ok(())
    }
}

/// How phase 1 reads sources: keeping of each only what can change the plan (`keys`), noting origins with
/// `Photos` on.
struct Reading<'a> {
    client: &'a TenantClient,
    ctx: &'a PlanContext,
    keys: &'a sync::CentralKeys,
    photos: bool,
}

impl Reading<'_> {
    /// Reads `sources`, [`SOURCE_READ_CONCURRENCY`] at a time.
    async fn read(&self, sources: Vec<Mailbox>) -> Vec<(Mailbox, Result<SourceRead, GraphError>)> {
        stream::iter(sources)
            .map(|mailbox| async move {
                let mut origins = Vec::new();
                let read = self
                    .client
                    .list_contacts_where(&mailbox.id, &FolderRef::Default, |contact| {
                        // With `Photos` on, each person's origin (the user's own contact its sync id is derived
                        // from) is noted as it goes by, inert or not: a photo-only change leaves its data equal
                        // to the central person's.
                        if self.photos {
                            if let Some(origin) =
                                origin_photo(self.ctx, self.keys, &mailbox, contact)
                            {
                                origins.push(origin);
                            }
                        }
                        !self.keys.is_inert(self.ctx, &mailbox, contact)
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
            .await
    }
}

/// The sources as phase 1 plans them: each read one with what can change the plan, each one not read (or left
/// unchecked) with nothing, and the origins seen; sources that could not be read are left out and named.
struct SourcesRead {
    sources: Vec<SourceMailbox>,
    origins: BTreeMap<SyncId, OriginPhoto>,
    failures: Vec<SourceFailure>,
}

impl SourcesRead {
    fn unread(mailboxes: impl IntoIterator<Item = Mailbox>) -> Self {
        let mut read = Self {
            sources: Vec::new(),
            origins: BTreeMap::new(),
            failures: Vec::new(),
        };
        read.add_unread(mailboxes);
        read
    }

    /// Sources planned as read ones whose every contact was dropped as inert.
    fn add_unread(&mut self, mailboxes: impl IntoIterator<Item = Mailbox>) {
        self.sources
            .extend(mailboxes.into_iter().map(|mailbox| SourceMailbox {
                mailbox,
                contacts: Vec::new(),
            }));
    }

    /// Takes in reads; a source that could not be read loses its feed (read in full next time).
    fn absorb(
        &mut self,
        reads: Vec<(Mailbox, Result<SourceRead, GraphError>)>,
        cursors: &mut Cursors,
    ) -> Result<(), AttemptResult> {
        self.sources.reserve(reads.len());
        for (mailbox, read) in reads {
            match read {
                Ok((source, seen)) => {
                    self.sources.push(source);
                    self.origins.extend(seen);
                }
                Err(error) => {
                    cursors.mailboxes.remove(&mailbox.id);
                    self.failures.push(source_failure(&mailbox, &error)?);
                }
            }
        }
        Ok(())
    }

    /// Leaves `mailboxes` out again.
    fn forget(&mut self, mailboxes: &[Mailbox]) {
        self.sources
            .retain(|source| mailboxes.iter().all(|m| m.id != source.mailbox.id));
    }

    /// The sources in mailbox-id order, as the plan takes them.
    fn sorted(&mut self) -> &[SourceMailbox] {
        self.sources.sort_by(|a, b| a.mailbox.id.cmp(&b.mailbox.id));
        &self.sources
    }
}

/// A source mailbox that cannot be read: a permanent failure of that source alone, or a transient one that
/// retries the whole job (a source missing from the merge would unpublish its contacts).
pub(super) fn source_failure(
    mailbox: &Mailbox,
    error: &GraphError,
) -> Result<SourceFailure, AttemptResult> {
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
