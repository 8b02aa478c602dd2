//! Phase 2 overlapping phase 1 (issue 13; in one process or across a fleet, `crate::overlap`): the mailbox is read
//! and planned against the folder phase 1's plan leaves, each new person's copy (and the stamp of the owner's
//! original of it) is sent once Graph confirmed its central create, and once phase 1 is over the job settles
//! against the folder it left (`shared::sync::overlap`), so the mailbox ends as an ordered run leaves it. Its own
//! file because it is the one step that waits on another job.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use shared::config::TenantSettings;
use shared::feed::{self, Cursors};
use shared::graph::{FolderRef, TenantClient};
use shared::message::{CentralFolder, FailureReason, FolderChoice, Job, SourceFailure};
use shared::model::{Contact, Mailbox, WriteOp};
use shared::sync::overlap::{self, Settled};
use shared::sync::{self, PlanCounts, Writes};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::apply::{Keep, WRITE_BATCH};
use super::central::only_copies_keys;
use super::folders::feed_after_writes;
use super::{classify, plan_context, Done, JobRunner};
use crate::disposition::AttemptResult;
use crate::overlap::{Board, Ended, Planned, Stage};
use crate::planning_budget::{Planning, PlanningBudget};

/// How long an overlapped job waits for its board to show the plan it was sent for (read from the broker's
/// stream in a fleet: milliseconds); without one it copies nothing early and settles as usual.
const PLAN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What an overlapped phase-2 job works on.
pub(super) struct Step<'a> {
    /// The tenant's central folder, as the job names it.
    pub central: &'a CentralFolder,
    /// The mailbox.
    pub mailbox: &'a Mailbox,
    /// The tenant's phase-1 board.
    pub board: Arc<Board>,
    /// The job's trust check waits for phase 1's end ([`JobRunner::may_trust_later`]).
    pub trust_later: bool,
}

impl JobRunner {
    /// Phase 2 of `step.mailbox` while phase 1 (on `step.board`) may still be writing.
    pub(super) async fn phase2_overlapped(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        step: Step<'_>,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let Step {
            central,
            mailbox,
            board,
            trust_later,
        } = step;
        let folder = FolderRef::Default;
        let read = || async {
            client
                .list_contacts(&mailbox.id, &folder)
                .await
                .map_err(|e| classify(&e, &format!("reading contacts of {}", mailbox.upn)))
        };
        let standing = job.phase2_standing(true, false, &FolderChoice::DefaultContacts);
        // The feed's link comes before the read: phase 1 checked the folder and its link is in the job.
        let link = match job.cursors.mailboxes.get(&mailbox.id) {
            Some(prior) if standing.feeds_apply => Some(prior.link.clone()),
            _ if standing.feeds_apply => Some(
                client
                    .delta_start(&mailbox.id, &folder)
                    .await
                    .map_err(|e| classify(&e, &format!("checking contacts of {}", mailbox.upn)))?
                    .link,
            ),
            _ => None,
        };
        let ctx = plan_context(tenant, job, mailbox);
        let mut stage = board.watch();
        // The job went out because phase 1 planned, so the plan is on the board; in a fleet this process may only
        // just have started following it (`relay::follow`), so it waits for the plan a little.
        let _ = tokio::time::timeout(
            PLAN_WAIT,
            stage.wait_for(|now| now.plans > 0 || now.ended.is_some() || now.lost),
        )
        .await;
        // The plan, while one can still be copied from (see `Stage::plan`), and which it is.
        let (plan, made) = {
            let now = stage.borrow_and_update();
            (now.plan.clone(), now.plans)
        };
        // The early read and plan take the worker's planning budget as every plan does; without units before the
        // attempt that planned stops writing, the job sends nothing early and plans once, after phase 1.
        let units = match plan.as_ref() {
            Some(plan) => self.early_units(&mut stage, plan, made).await,
            None => None,
        };
        let (mut pending, before, held) = match (plan.as_ref(), units) {
            (Some(plan), Some(units)) => {
                let early = read().await?;
                // The creates of persons phase 1 creates and the stamps of their originals here, planned against
                // the folder its plan leaves (a refusal sends nothing early: the ordered plan below decides). A
                // stamp goes early also for a job whose check waits for phase 1's end (`trust_later`): it is the
                // contact's own derived id on a contact of the mailbox the job names, which no job or board can
                // choose, and checking now would ask the shared mailbox for its folder while phase 1 spends its
                // every request (tried on the largest customer's slice: creates met 429s in every worker, phase 1's
                // attempt ran again, and every receiver's early copies were deleted once its wait timed out).
                let pending = sync::plan_distribution_from(&ctx, &plan.folder, mailbox, &early)
                    .map(|planned| {
                        overlap::early_writes(planned, &plan.created, &ctx.tenant_id, mailbox)
                    })
                    .unwrap_or_default();
                // Of the mailbox as read, only what tells a later change apart is kept through the wait.
                let before: BTreeSet<(String, Option<String>)> =
                    early.iter().map(version).collect();
                let held = units.into_writes(pending.len());
                (pending, before, Some(held))
            }
            _ => (Vec::new(), BTreeSet::new(), None),
        };
        let mut done = Done::default();
        // The creates Graph confirmed, and the originals it stamped (by id).
        let mut sent: Vec<WriteOp> = Vec::new();
        let mut stamped: BTreeSet<String> = BTreeSet::new();
        // Each copy once its person's central create is confirmed, while the attempt that planned still writes.
        while !pending.is_empty() {
            let now = stage.borrow_and_update().clone();
            if !still_writing(&now, made) {
                break;
            }
            let (ready, waiting): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(person, _)| now.confirmed.contains(person));
            pending = waiting;
            if ready.is_empty() {
                if stage.changed().await.is_err() {
                    break;
                }
                continue;
            }
            let ops: Vec<WriteOp> = ready.into_iter().map(|(_, op)| op).collect();
            let batch = Writes {
                counts: PlanCounts::default(),
                ops: ops.clone(),
                defers: false,
            };
            let keep = Keep {
                ids: true,
                confirm: None,
                retry_changed: false,
            };
            let part = self
                .send(
                    client,
                    job,
                    mailbox,
                    &folder,
                    batch,
                    Planning::none(),
                    keep,
                    writes,
                )
                .await?;
            // Only what Graph wrote is in the mailbox; a refused create or stamp (an edit since the read: 412) is
            // the ordered plan's to send again.
            for op in ops {
                match &op {
                    WriteOp::Create(write)
                        if write
                            .sync_id
                            .as_deref()
                            .and_then(sync::SyncId::parse)
                            .is_some_and(|person| part.created_ids.contains_key(&person)) =>
                    {
                        sent.push(op);
                    }
                    WriteOp::Update { id, .. } if part.written.contains_key(id) => {
                        stamped.insert(id.clone());
                    }
                    _ => {}
                }
            }
            done.written.extend(part.written);
            done.created_ids.extend(part.created_ids);
        }
        // Neither the units nor the plan's folder (as large as the central folder) are held through the wait: a
        // phase-1 attempt run again in this process may need the units, and the ordered plan below reads the folder.
        drop((pending, held, plan));
        let waited = wait_for_end(&mut stage, self.boards.wait_limit()).await;
        let early_copies: Vec<String> = done.created_ids.values().cloned().collect();
        debug!(mailbox = %mailbox.upn, early = early_copies.len(), stamped = stamped.len(), ?waited, "done waiting on phase 1");
        // The early copies to take back when phase 1 does not end as planned, from the mailbox as it is now.
        let untouched_now = || async {
            if early_copies.is_empty() {
                return Ok(Vec::new());
            }
            let now = read().await?;
            Ok::<_, AttemptResult>(untouched(&early_copies, &now, &done))
        };
        let in_line_with = match waited {
            Waited::Ended(Ended::Written { in_line_with }) if trust_later => {
                // The check waited for phase 1's end (`JobRunner::may_trust_later`): a refusal takes the copies back.
                if let Err(refused) = self.trusted(tenant, client, job).await {
                    let back = untouched_now().await?;
                    self.undo(client, job, mailbox, &folder, &back, writes)
                        .await?;
                    return Err(refused);
                }
                in_line_with
            }
            Waited::Ended(Ended::Written { in_line_with }) => in_line_with,
            Waited::Ended(Ended::Failed) => {
                let back = untouched_now().await?;
                let undone = self
                    .undo(client, job, mailbox, &folder, &back, writes)
                    .await?;
                return Err(phase1_failed(job, mailbox, undone.len()));
            }
            other => {
                // Nothing is left half-done: the early copies go, and the job comes again.
                let back = untouched_now().await?;
                self.undo(client, job, mailbox, &folder, &back, writes)
                    .await?;
                return Err(not_waiting(job, other));
            }
        };
        // The folder phase 1 left (read once per run and process, shared by its jobs), then the units to plan
        // against it, before the mailbox is read: a job waiting for units holds no mailbox (the 100,000-contact
        // benchmark's second peak was a job holding its 100,000 contacts while it waited).
        let central_contacts = self
            .central_contacts(tenant, client, job, Some(central))
            .await?;
        let planning = self.planning.take(central_contacts.contacts().len()).await;
        // The mailbox as the ordered run reads it: read now (a user's edit during phase 1 is planned with, as an
        // ordered run would), without the early copies. The early copies stand only when nothing else changed since
        // the first read (same ids, same change keys, and exactly those copies).
        let now = read().await?;
        // Nothing sent early (no units, no plan, or nothing to create) leaves nothing to compare.
        let unchanged = early_copies.is_empty() || holds_exactly(&now, &before, &stamped, &done);
        drop(before);
        // Where they do not, the copies the owner left untouched go, and the plan is made without them; a copy the
        // owner edited meanwhile stays in the mailbox the plan is made from, as any copy edited after its create.
        let back = untouched(&early_copies, &now, &done);
        let gone: BTreeSet<&String> = back.iter().collect();
        let base: Vec<Contact> = now.into_iter().filter(|c| !gone.contains(&c.id)).collect();
        let ordered = match sync::plan_distribution_from(&ctx, &central_contacts, mailbox, &base) {
            Ok(plan) => plan,
            Err(refusal) => {
                self.undo(client, job, mailbox, &folder, &back, writes)
                    .await?;
                return Err(AttemptResult::Permanent {
                    reason: FailureReason::DeletionCapExceeded,
                    error: refusal.to_string(),
                });
            }
        };
        let only_copies = only_copies_keys(tenant, job, central, &central_contacts, link.is_some())
            .is_some_and(|keys| keys.leaves_only_inert(&ctx, mailbox, &base, &ordered));
        drop(base);
        let writes_of_ordered = overlap::ordered_writes(ordered, &stamped);
        let settled = if unchanged {
            overlap::settle(&sent, writes_of_ordered)
        } else {
            Settled::Undo(writes_of_ordered)
        };
        let rest = match settled {
            Settled::Rest(rest) => rest,
            Settled::Undo(all) => {
                debug!(mailbox = %mailbox.upn, "early copies are not the ordered plan's: deleted, then the plan whole");
                let undone = self
                    .undo(client, job, mailbox, &folder, &back, writes)
                    .await?;
                for id in &undone {
                    done.written.remove(id);
                }
                done.deleted.extend(undone);
                all
            }
        };
        let keep = Keep {
            ids: false,
            confirm: None,
            retry_changed: true,
        };
        let last = self
            .send(client, job, mailbox, &folder, rest, planning, keep, writes)
            .await?;
        done.counts = last.counts;
        done.failed_writes = last.failed_writes;
        done.defers = last.defers;
        done.written.extend(last.written);
        done.deleted.extend(last.deleted);
        done.created_ids.clear();
        if let Some(link) = link {
            let in_line =
                feed::phase2_sources(true, in_line_with, false, None).filter(|_| done.in_line());
            let feed = feed_after_writes(client, mailbox, link, in_line, &done).await;
            done.cursors = Cursors::of_mailbox(&mailbox.id, feed.holding_only_copies(only_copies));
        }
        Ok(done)
    }

    /// Units of the planning budget for an early read and plan against `plan` (the board's `made`th), waited for
    /// only while the board still holds it: `None` once its attempt stopped (phase 1 over, failed or run again,
    /// the board lost) or every create it makes is confirmed, so a job never waits for units that phase 1 itself
    /// holds, never holds any through its wait for phase 1, and never plans early what it could not send early.
    async fn early_units(
        &self,
        stage: &mut watch::Receiver<Stage>,
        plan: &crate::overlap::CentralPlan,
        made: u32,
    ) -> Option<Planning> {
        let contacts = plan.folder.contacts().len();
        let units = tokio::select! {
            units = self.planning.take(contacts) => units,
            _ = stage.wait_for(|now| !copyable(now, made)) => return None,
        };
        // Units that come once every create of the plan is confirmed come too late: nothing is left to send before
        // phase 1's end, and an early plan would only be a second plan held beside phase 1's last step (the
        // 100,000-contact benchmark: its receiving job got the units phase 1's writes gave back and planned
        // 100,000 creates early, the run's peak).
        copyable(&stage.borrow(), made).then_some(units)
    }

    /// Deletes the copies this job sent early (`ids`); returns those Graph deleted. A copy Graph would not delete
    /// fails the job: it is left for the next attempt to find.
    async fn undo(
        &self,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        ids: &[String],
        writes: &TaskTracker,
    ) -> Result<BTreeSet<String>, AttemptResult> {
        if ids.is_empty() {
            return Ok(BTreeSet::new());
        }
        let deletes = Writes {
            counts: PlanCounts::default(),
            ops: ids
                .iter()
                .map(|id| WriteOp::Delete { id: id.clone() })
                .collect(),
            defers: false,
        };
        let keep = Keep {
            ids: false,
            confirm: None,
            retry_changed: true,
        };
        let undone = self
            .send(
                client,
                job,
                mailbox,
                folder,
                deletes,
                Planning::none(),
                keep,
                writes,
            )
            .await?;
        if undone.failed_writes > 0 {
            return Err(AttemptResult::Transient {
                wait: std::time::Duration::ZERO,
                error: format!(
                    "{} of the copies sent early to {} could not be deleted",
                    undone.failed_writes, mailbox.upn
                ),
            });
        }
        Ok(undone.deleted)
    }
}

/// Phase 1's side: puts on `board` the folder `plan` leaves (from `read`, the folder as read) and the persons
/// it creates, and tells the producer, whose phase-2 jobs then go out carrying `cursors` without the central
/// folder's (no mailbox is in line with what is still being written; they take the generation the folder ends
/// in line with from the board), and the sources it could not read (`source_failures`: their jobs are failed
/// unsent). Returns the board the writes confirm creates on; `None` (nothing announced) for a plan of one batch
/// or less: no copy could go before its first batch is answered, and by then phase 1 is over, so phase-2 jobs
/// would only read their mailboxes twice (a 1 %-changed re-run: 163 requests against 142); and for a plan whose
/// folder does not fit in `budget` now (it is never waited for: phase 1 holds its plan): the run goes in order
/// rather than holding the folder on the board beside what the process plans already.
#[allow(clippy::too_many_arguments)]
pub(super) fn announce_plan<'b>(
    job: &Job,
    board: &'b Board,
    budget: &PlanningBudget,
    read: Vec<Contact>,
    plan: &sync::Plan,
    now: chrono::DateTime<chrono::Utc>,
    cursors: &Cursors,
    source_failures: &[SourceFailure],
) -> Option<&'b Board> {
    // More than one batch of writes.
    plan.writes().nth(WRITE_BATCH)?;
    let folder = overlap::planned_folder(read, plan, now)?;
    let units = budget.try_take(folder.len())?;
    let mut announced = cursors.clone();
    announced.central = None;
    let news = Planned {
        tenant_id: job.tenant_id.clone(),
        run_id: job.run_id,
        job_id: job.job_id,
        cursors: announced,
        source_failures: source_failures.to_vec(),
    };
    board.planned(
        folder,
        overlap::created_persons(plan),
        units,
        news,
        job.report_queue.clone(),
    );
    Some(board)
}

/// An overlapped job that runs once phase 1 is over, as the ordered job it then is: not overlapped, with the
/// generation the central folder ended in line with. A phase 1 that failed for good fails it, the mailbox as it was
/// (an ordered run sends no phase-2 job then).
pub(super) fn after_phase1(
    job: &Job,
    mailbox: &Mailbox,
    ended: Ended,
) -> Result<Job, AttemptResult> {
    match ended {
        Ended::Written { in_line_with } => Ok(Job {
            overlapped: false,
            cursors: Cursors {
                central_generation: in_line_with,
                ..job.cursors.clone()
            },
            ..job.clone()
        }),
        Ended::Failed => Err(phase1_failed(job, mailbox, 0)),
    }
}

/// The failure of a job whose tenant's phase 1 failed for good, having deleted the `undone` copies it sent early.
/// It does not say the mailbox is as it was: an earlier attempt's early copies (their ids went with it) and copies
/// their users edited stay, each of a person whose central create Graph confirmed, which the next run matches.
fn phase1_failed(job: &Job, mailbox: &Mailbox, undone: usize) -> AttemptResult {
    AttemptResult::Permanent {
        reason: FailureReason::Phase1Failed,
        error: format!(
            "phase 1 of tenant {} failed; nothing more written to {} ({undone} copies sent early deleted again)",
            job.tenant_id, mailbox.upn
        ),
    }
}

/// Whether the attempt that made the board's `made`th plan still writes: no later plan, not interrupted, phase 1
/// not over, the board still followed.
fn still_writing(stage: &Stage, made: u32) -> bool {
    stage.plans == made && !stage.interrupted && stage.ended.is_none() && !stage.lost
}

/// Whether something of the board's `made`th plan may still be copied early: its attempt still writes and the
/// board still holds the plan (some of its creates are not confirmed yet).
fn copyable(stage: &Stage, made: u32) -> bool {
    still_writing(stage, made) && stage.plan.is_some()
}

/// How a wait on phase 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waited {
    /// Phase 1 is over.
    Ended(Ended),
    /// The board was lost (a fleet's stream gone, or the broker away): nobody will say.
    Lost,
    /// The wait's limit passed first (a fleet: [`crate::overlap::FLEET_WAIT`]).
    TimedOut,
}

/// Waits until phase 1 is over, the board is lost, or `limit` passed.
pub(super) async fn wait_for_end(
    stage: &mut watch::Receiver<Stage>,
    limit: Option<std::time::Duration>,
) -> Waited {
    let wait = async {
        loop {
            {
                let now = stage.borrow_and_update();
                if let Some(ended) = now.ended {
                    return Waited::Ended(ended);
                }
                if now.lost {
                    return Waited::Lost;
                }
            }
            if stage.changed().await.is_err() {
                return Waited::Lost;
            }
        }
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Waited::TimedOut),
        None => wait.await,
    }
}

/// A job that stopped waiting on its tenant's phase 1 without its end (`waited`): it comes again, as the same
/// attempt when only the wait's limit passed, as a new one when the board was lost.
pub(super) fn not_waiting(job: &Job, waited: Waited) -> AttemptResult {
    match waited {
        Waited::TimedOut => AttemptResult::Deferred {
            wait: crate::overlap::DEFER_FOR,
            why: format!(
                "phase 1 of tenant {} still writing after {} min; this mailbox comes again later",
                job.tenant_id,
                crate::overlap::FLEET_WAIT.as_secs() / 60
            ),
        },
        _ => AttemptResult::Transient {
            wait: crate::overlap::DEFER_FOR,
            error: format!(
                "lost the board of tenant {}'s phase 1 (its stream is gone or the broker unreachable)",
                job.tenant_id
            ),
        },
    }
}

/// A job that would wait on its tenant's phase 1 while every waiting place of its worker process is taken.
pub(super) fn no_place(job: &Job) -> AttemptResult {
    AttemptResult::Deferred {
        wait: crate::overlap::DEFER_FOR,
        why: format!(
            "every place for jobs waiting on phase 1 is taken (tenant {}); the worker keeps a slot for phase-1 jobs",
            job.tenant_id
        ),
    }
}

/// Of the copies sent early (`early`), those the owner has not changed since Graph created them, by the mailbox read
/// `now`: a copy read at another change key than its create returned was edited (a note, the opt-out category, a
/// field) and is the owner's to keep, as a copy edited after an ordered run's create is; taking it back would lose
/// the edit. A copy not read (the owner deleted it) is not taken back either: there is nothing to delete, and a
/// delete answered 404 would fail the attempt. One whose create returned no change key counts as untouched.
fn untouched(early: &[String], now: &[Contact], done: &Done) -> Vec<String> {
    let read: HashMap<&str, Option<&str>> = now
        .iter()
        .map(|c| (c.id.as_str(), c.change_key.as_deref()))
        .collect();
    early
        .iter()
        .filter(|id| {
            let created = done.written.get(*id).and_then(Option::as_deref);
            match (read.get(id.as_str()), created) {
                (None, _) => false,
                (Some(now), Some(created)) => *now == Some(created),
                (Some(_), None) => true,
            }
        })
        .cloned()
        .collect()
}

/// What tells a contact's version apart: its id and change key.
fn version(contact: &Contact) -> (String, Option<String>) {
    (contact.id.clone(), contact.change_key.clone())
}

/// Whether the mailbox read `now` holds exactly the versions read `before` and what the job wrote since: the copies
/// it created and the originals it `stamped` (ids and change keys as Graph answered the writes).
fn holds_exactly(
    now: &[Contact],
    before: &BTreeSet<(String, Option<String>)>,
    stamped: &BTreeSet<String>,
    done: &Done,
) -> bool {
    let written = done
        .created_ids
        .values()
        .chain(stamped)
        .map(|id| (id.clone(), done.written.get(id).cloned().flatten()));
    let expected: BTreeSet<(String, Option<String>)> = before
        .iter()
        .filter(|(id, _)| !stamped.contains(id))
        .cloned()
        .chain(written)
        .collect();
    let found: BTreeSet<(String, Option<String>)> = now.iter().map(version).collect();
    now.len() == expected.len() && found == expected
}
