//! Cleanup (`Job::cleanup`): the managed copies removed from a receiving mailbox or the central folder, judged by
//! the one ownership rule, without cap (an explicit operator command).

use std::borrow::Cow;
use std::collections::BTreeSet;

use chrono::Utc;
use shared::config::TenantSettings;
use shared::directory;
use shared::graph::{FolderRef, TenantClient};
use shared::message::{CentralFolder, FolderChoice, Job};
use shared::model::Mailbox;
use shared::sync::{self, CleanupScope, CleanupSource, Plan, SyncId};
use tokio_util::task::TaskTracker;
use tracing::info;

use super::central::read_central;
use super::directory::{joined_persons, read_directory};
use super::folders::find_folder;
use super::{classify, plan_context, planned_lines, Done, JobRunner};
use crate::disposition::AttemptResult;
use crate::planning_budget::Planning;

impl JobRunner {
    /// Cleanup of one receiving mailbox (`cleanup`): the configured target folder, and the default Contacts folder
    /// too when the target is another (copies made before `TargetFolder` was set). Judged against the persons
    /// phase 2 plans the mailbox against, so ownership is decided as there. No cap: an explicit operator command.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cleanup_mailbox(
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
            let step = self
                .apply_cleanup(client, job, mailbox, &folder, plan, writes)
                .await?;
            done.absorb(step);
        }
        info!(mailbox = %mailbox.upn, %source, removed = done.counts.deleted,
              unstamped = done.counts.updated, "cleaned up");
        Ok(done)
    }

    /// Cleanup of the central folder (`cleanup --source mirror|all`): its managed contacts, by the one ownership
    /// rule judged in the shared mailbox. Sent after every mailbox's cleanup succeeded, which judged copies
    /// against it.
    pub(super) async fn cleanup_central(
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
        let done = self
            .apply_cleanup(client, job, &central.mailbox, &folder, plan, writes)
            .await?;
        info!(mailbox = %central.mailbox.upn, removed = done.counts.deleted, "central folder cleaned up");
        Ok(done)
    }

    /// Writes a cleanup plan (no planning budget, no photos) and reports what it removed, dry run or not: the
    /// run's summary names the mailbox and each removal.
    async fn apply_cleanup(
        &self,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        plan: Plan,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let planned = planned_lines(&plan);
        let mut done = self
            .apply(
                client,
                job,
                mailbox,
                folder,
                plan,
                Planning::none(),
                false,
                writes,
            )
            .await?;
        done.planned = planned;
        Ok(done)
    }
}
