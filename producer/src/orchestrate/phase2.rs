//! A tenant's phase-2 jobs, made from what its phase 1 said: one per receiving mailbox, each sent, or settled by
//! the producer itself when its outcome is already known.

use std::collections::{BTreeMap, VecDeque};

use shared::config::TenantSettings;
use shared::feed::Cursors;
use shared::message::{
    CentralFolder, FailureReason, FolderChoice, Job, Phase, Report, SourceFailure,
};
use uuid::Uuid;

use super::request::RunRequest;
use crate::dispatch::Dispatch;
use crate::fair::FairQueue;
use crate::ledger::RunLedger;
use crate::prepare::PreparedTenant;
use crate::progress::Progress;
use crate::run_status::Tracked;
use crate::state::TenantMemory;

/// What a tenant's phase-2 jobs are made from: the tenant as prepared, and what its phase 1 said.
pub(super) struct Phase2Start<'a> {
    pub(super) run_id: Uuid,
    pub(super) tenant: &'a TenantSettings,
    pub(super) index: usize,
    pub(super) ready: &'a PreparedTenant,
    pub(super) central: CentralFolder,
    pub(super) phase1: &'a Cursors,
    /// The sources phase 1 could not read: a mailbox among them for a reason it has itself is failed here.
    pub(super) unreadable: &'a [SourceFailure],
    /// A state is kept: the jobs carry the feeds.
    pub(super) kept: bool,
    pub(super) move_from: Option<&'a FolderChoice>,
    pub(super) dry_run: bool,
    /// Sent while phase 1 writes (`Job::overlapped`).
    pub(super) overlapped: bool,
}

impl Phase2Start<'_> {
    /// Makes one phase-2 job per user: expected by the ledger, then queued fairly, or settled here when phase 1
    /// found the mailbox in line, or could not read it for a reason the mailbox has itself (no Exchange mailbox,
    /// access refused): the job would fail on its first request, so it fails here with phase 1's reason and is
    /// returned with it, for the transport's dead-letter queue ([`Dispatch::dead_letter`]).
    pub(super) fn send<D: Dispatch>(
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
