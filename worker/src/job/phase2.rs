//! Phase 2: one receiving mailbox brought in line with its sources (the central folder, the directories it
//! receives), skipped when its feed shows no change since it was last in line; a changed `TargetFolder` moves the
//! managed copies. Its own file because it decides what the mailbox is planned against and in which folder.

use chrono::Utc;
use shared::config::TenantSettings;
use shared::directory::{self, DirectoryPerson};
use shared::feed::{self, Cursors, FolderFeed, Generation};
use shared::graph::TenantClient;
use shared::message::{CentralFolder, FailureReason, FolderChoice, Job};
use shared::model::{Contact, Mailbox};
use shared::sync::{self, PreparedCentral};
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::central::only_copies_keys;
use super::directory::joined_persons;
use super::folders::{check_kept, feed_after_writes, find_folder};
use super::overlapped;
use super::photos::PhotoSources;
use super::{classify, plan_context, Done, JobRunner};
use crate::disposition::AttemptResult;
use crate::planning_budget::Planning;

impl JobRunner {
    // `trust_later` is `run`'s answer, taken once: asked again here it could change with the board.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn phase2(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: Option<&CentralFolder>,
        mailbox: &Mailbox,
        trust_later: bool,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        // Sent while phase 1 writes (overlapped phases): the overlapped step (see `overlapped`) while phase 1 still
        // writes. Once it is over (a job that started late), or for a job the rule does not let overlap (it waits for
        // that, never reading a central folder still being written), an ordered job with the generation the folder
        // ended in line with: reading and planning the mailbox twice would buy nothing.
        let board = central
            .filter(|_| job.overlapped)
            .and_then(|_| self.boards.board(&job.tenant_id, job.run_id));
        let after_phase1;
        let job = match (central, board) {
            (Some(central), Some(board)) => {
                let ended = board.watch().borrow().ended;
                // A job about to wait takes a place among the waiting (a fleet keeps slots free for phase 1).
                let _place = match ended {
                    None => self
                        .boards
                        .waiting_place()
                        .map_err(|_| overlapped::no_place(job))?,
                    Some(_) => None,
                };
                if ended.is_none() && job.may_overlap(tenant, false) {
                    let step = overlapped::Step {
                        central,
                        mailbox,
                        board,
                        trust_later,
                    };
                    return self
                        .phase2_overlapped(tenant, client, job, step, writes)
                        .await;
                }
                let ended = match ended {
                    Some(ended) => ended,
                    None => {
                        match overlapped::wait_for_end(&mut board.watch(), self.boards.wait_limit())
                            .await
                        {
                            overlapped::Waited::Ended(ended) => ended,
                            other => return Err(overlapped::not_waiting(job, other)),
                        }
                    }
                };
                if trust_later {
                    self.trusted(tenant, client, job).await?;
                }
                after_phase1 = overlapped::after_phase1(job, mailbox, ended)?;
                &after_phase1
            }
            _ => {
                if trust_later {
                    self.trusted(tenant, client, job).await?;
                }
                job
            }
        };
        let directory_on = tenant.distribution.receives_directory();
        let mirror = central.is_some();
        let current = FolderChoice::from(&tenant.distribution.target_folder);
        let standing = job.phase2_standing(mirror, directory_on, &current);
        let moving = standing.moving;
        let feeds_apply = standing.feeds_apply;
        let in_line_before = standing.in_line_before;
        let kept = |feed: FolderFeed| Cursors::of_mailbox(&mailbox.id, feed);
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
        if let Some(done) = prior
            .as_ref()
            .and_then(|p| skipped(mailbox, in_line_before, p))
        {
            return Ok(done);
        }
        // The folder and its feed come first: a mailbox that cannot be reached fails before anything is loaded
        // for it. `None`: a dry run before the named folder exists (it is empty, so everything would be created).
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
        // A directory source that lists nobody beside other sources (the mirror, other tenants): the combined list
        // is not empty, so the plan's empty-list refusal cannot see it, and its people would go as leavers.
        let mut empty_source = None;
        let sources: &PreparedCentral = if directory_on {
            let lists = self.received_directory(tenant, client, job).await?;
            if mirror || lists.len() > 1 {
                empty_source = tenant
                    .directory_sources()
                    .into_iter()
                    .zip(&lists)
                    .find(|(_, list)| list.persons.is_empty())
                    .map(|(source, _)| source.to_owned());
            }
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
        let only_copies =
            central.and_then(|c| only_copies_keys(tenant, job, c, sources, link.is_some()));
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
                only_copies,
                empty_source.as_deref(),
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
                        persons: sources.contacts(),
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
            let in_line_with = in_line.filter(|_| done.in_line());
            let feed = feed_after_writes(client, mailbox, link, in_line_with, &done).await;
            done.cursors = kept(feed.holding_only_copies(done.only_copies));
        }
        Ok(done)
    }
}

/// The mailbox is in line with its sources and unchanged since: nothing to read, plan or write.
fn skipped(
    mailbox: &Mailbox,
    in_line_before: Option<Generation>,
    prior: &FolderFeed,
) -> Option<Done> {
    let cursors = feed::phase2_skipped(&mailbox.id, in_line_before, prior)?;
    debug!(mailbox = %mailbox.upn, "in line with its sources and unchanged since the last run");
    Some(Done {
        cursors,
        skipped: true,
        ..Done::default()
    })
}
