//! Writing a plan: `$batch`es of writes sent as tasks of the attempt (a cancel never leaves one half-sent), their
//! answers counted and reduced to what the feed needs. Its own file because every step writes through it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shared::config::TenantSettings;
use shared::feed;
use shared::graph::{ErrorKind, FolderRef, TenantClient};
use shared::message::{FailureReason, Job};
use shared::model::{Contact, Mailbox, WriteOp};
use shared::sync::{self, CentralKeys, Plan, PreparedCentral, SyncId, Writes};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{classify, plan_context, planned_lines, Done, JobRunner};
use crate::disposition::AttemptResult;
use crate::heap;
use crate::overlap::Board;
use crate::planning_budget::Planning;

/// Writes sent per call to Graph (one `$batch`); a cancelled attempt stops between two of them.
pub(super) const WRITE_BATCH: usize = 20;

impl JobRunner {
    /// Plans `mailbox` against its sources and writes the plan into `folder` (`None`: a dry run's folder that does
    /// not exist yet, so nothing is written). `empty_source`: a directory source (tenant id) that listed nobody
    /// beside the others; a plan that would then delete anything is refused, as a plan against an empty list is.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn plan_and_apply(
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
        only_copies: Option<&CentralKeys>,
        empty_source: Option<&str>,
    ) -> Result<Done, AttemptResult> {
        let ctx = plan_context(tenant, job, mailbox);
        let mut plan =
            sync::plan_distribution_from(&ctx, sources, mailbox, &target).map_err(|refusal| {
                AttemptResult::Permanent {
                    reason: FailureReason::DeletionCapExceeded,
                    error: refusal.to_string(),
                }
            })?;
        let deletes = plan.counts().deleted;
        if let Some(source) = empty_source.filter(|_| deletes > 0 && !job.allow_mass_delete) {
            return Err(AttemptResult::Permanent {
                reason: FailureReason::DeletionCapExceeded,
                error: format!(
                    "refusing to change {}: the directory of {source} lists nobody, and the plan would delete {deletes} \
                     managed contacts; nothing was written (a group emptied or a filter changed? if those people \
                     did leave, run once with --allow-mass-delete)",
                    mailbox.upn
                ),
            });
        }
        if let Some(old) = moving_from {
            sync::carry_over(&ctx, mailbox, &mut plan, old, sources.contacts());
        }
        // Asked: whether the folder will hold nothing but copies phase 1 does without (see `FolderFeed::only_copies`).
        let only_copies =
            only_copies.is_some_and(|keys| keys.leaves_only_inert(&ctx, mailbox, &target, &plan));
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
        done.only_copies = only_copies;
        if moving_from.is_none() {
            done.created.clear();
            return Ok(done);
        }
        done.created.extend(have_copy);
        Ok(done)
    }

    /// Writes the plan (unless the job is a dry run) and counts what happened. `photos`: a photo step follows, so
    /// the ids of created contacts are kept ([`Done::created_ids`]); without one they are not (100,000 creates'
    /// ids and sync ids, held until the job ends: issue 10, scenario 10).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply(
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
        let keep = Keep {
            ids: photos,
            confirm: None,
            retry_changed: true,
        };
        self.send(
            client,
            job,
            mailbox,
            folder,
            plan.into_writes(),
            planning,
            keep,
            writes,
        )
        .await
    }

    /// Sends `writes` (never in a dry run: [`JobRunner::apply`] says what a dry run does) a batch at a time and
    /// counts what happened; `keep` says what is kept of the answers beyond what the feed needs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        writes_to_send: Writes,
        planning: Planning,
        keep: Keep<'_>,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let Writes {
            mut counts,
            ops,
            defers,
        } = writes_to_send;
        // The planning units become the held writes' share, given back as batches are answered (see
        // `planning_budget`): the next large plan waits for these writes rather than adding its state to them.
        let mut held = planning.into_writes(ops.len());
        if ops.is_empty() {
            return Ok(Done {
                counts,
                defers,
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
        // This batch's confirmed creates, told to the overlapping phase-2 jobs once the batch is answered.
        let mut confirmed_here = Vec::new();
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
                            if keep.confirm.is_some() {
                                confirmed_here.push(sync.clone());
                            }
                            if keep.ids {
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
                            _ if keep.retry_changed
                                && matches!(error.kind(), ErrorKind::ChangedSinceRead) =>
                            {
                                retry_wait.get_or_insert(Duration::ZERO);
                                first_transient.get_or_insert(format!(
                                    "a contact of {} changed since it was read ({error}); reading it again",
                                    mailbox.upn
                                ));
                            }
                            _ => {
                                debug!(mailbox = %mailbox.upn, %error, "write refused");
                                failed_writes += 1;
                                // Counted as failed, not also as done.
                                let done = match op {
                                    WriteOp::Create(_) => &mut counts.created,
                                    WriteOp::Update { .. } => &mut counts.updated,
                                    WriteOp::Delete { .. } => &mut counts.deleted,
                                };
                                *done = done.saturating_sub(1);
                            }
                        }
                    }
                }
            }
            let sent = batch.len();
            drop(batch);
            held.answered(sent);
            if let Some(board) = keep.confirm {
                board.confirmed(confirmed_here.drain(..));
            }
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
            defers,
            written,
            deleted,
            created: confirmed,
            created_ids,
            ..Done::default()
        })
    }
}

/// What [`JobRunner::send`] keeps of the answers beyond what the feed needs.
pub(super) struct Keep<'a> {
    /// The ids Graph gave created contacts, by sync id ([`Done::created_ids`]: a photo step or an undo follows).
    pub ids: bool,
    /// Phase 1 of overlapped phases: each batch's confirmed creates are told here.
    pub confirm: Option<&'a Board>,
    /// An update answered 412 (the contact changed since the job read it: every update a plan makes carries the
    /// change key read, as `If-Match`) fails the attempt as transient, so the job reads the mailbox again and plans
    /// with the owner's edit instead of overwriting it. `false` only where a plan later in the same job covers the
    /// contact (the early stamps of overlapped phases): there it is a refused write, left to that plan.
    pub retry_changed: bool,
}

/// A write task's answer, or, when the task itself failed (panicked or was aborted), a transient failure of the job
/// saying what it was `doing`.
pub(super) fn joined<T>(
    answer: Result<T, tokio::task::JoinError>,
    doing: &str,
) -> Result<T, AttemptResult> {
    answer.map_err(|join| AttemptResult::Transient {
        wait: Duration::ZERO,
        error: format!("{doing}: the write task failed: {join}"),
    })
}
