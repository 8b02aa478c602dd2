//! Phase 1: every source mailbox's contacts merged into the central folder, de-duplicated. Its own file because
//! it is the one step that checks and reads many mailboxes ([`SOURCE_CHECK_CONCURRENCY`] and
//! [`SOURCE_READ_CONCURRENCY`] at a time) and skips the merge when no feed changed.

use std::collections::BTreeMap;

use futures_util::stream::{self, StreamExt};
use shared::config::TenantSettings;
use shared::directory;
use shared::feed::{self, Check, Cursors, FolderFeed, SourceCheck};
use shared::graph::{FolderRef, GraphError, TenantClient};
use shared::message::{CentralFolder, FailureReason, Job, SourceFailure};
use shared::model::Mailbox;
use shared::sync::photo::OriginPhoto;
use shared::sync::{self, PlanContext, SourceMailbox, SyncId};
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::apply::Keep;
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
        let checks: Vec<(Mailbox, Result<FeedCheck, GraphError>)> =
            stream::iter(sources.iter().cloned())
                .map(|mailbox| async move {
                    let feed = prior.mailboxes.get(&mailbox.id);
                    let check =
                        check_feed(client, &mailbox, &FolderRef::Default, prior.tracked, feed)
                            .await;
                    (mailbox, check)
                })
                .buffer_unordered(SOURCE_CHECK_CONCURRENCY)
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
                        let feed = match prior.mailboxes.get(&mailbox.id) {
                            Some(kept) if found.check == Check::Unchanged => {
                                kept.moved_as_left(link)
                            }
                            _ => FolderFeed::at(link, None),
                        };
                        cursors.mailboxes.insert(mailbox.id.clone(), feed);
                    }
                    readable.push((mailbox, found.check));
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
        let (keys, ctx_ref) = (&central_keys, &ctx);
        // With `Photos` on, each person's origin (the user's own contact its sync id is derived from) is noted as
        // it goes by, inert or not: a photo-only change leaves its data equal to the central person's.
        let photos_on = tenant.photos;
        let reads: Vec<(Mailbox, Result<SourceRead, GraphError>)> = stream::iter(readable)
            .map(|(mailbox, _)| async move {
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
        // An unread source plans as a read one whose every contact was dropped as inert.
        let mut source_mailboxes: Vec<SourceMailbox> = unread
            .into_iter()
            .map(|(mailbox, _)| SourceMailbox {
                mailbox,
                contacts: Vec::new(),
            })
            .collect();
        source_mailboxes.reserve(reads.len());
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
        // What the fleet reads of the shared mailbox once this job ends (the folder as the plan leaves it, at most).
        let fleet_reads =
            super::central::fleet_reads_per_process(central_contacts.len() + plan.items.len());
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
                &self.planning,
                central_contacts,
                &plan,
                ctx.now,
                &cursors,
                &source_failures,
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
                    retry_changed: true,
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
            let in_line_with = done.in_line().then_some(generation);
            cursors.central =
                Some(feed_after_writes(client, &central.mailbox, link, in_line_with, &done).await);
        }
        done.source_failures = source_failures;
        // The fleet's other processes read the shared mailbox as soon as phase 1 ends, counting nothing of its
        // requests: it ends once the mailbox's window has room for their reads, rather than have them meet 429s,
        // where that room comes sooner than the jobs waiting on its end give up.
        let (waited, room) = client
            .make_room_for_fleet(&central.mailbox.id, fleet_reads, crate::overlap::ROOM_WAIT)
            .await;
        if !waited.is_zero() {
            info!(
                mailbox = %central.mailbox.upn,
                waited_ms = waited.as_millis(),
                room,
                "waited for room in the shared mailbox's window for the fleet's reads"
            );
        }
        publishing.finish(Ended::Written {
            in_line_with: cursors.central.as_ref().and_then(|f| f.in_line_with),
        });
        done.cursors = cursors;
        Ok(done)
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
