//! The central folder as jobs other than phase 1's read it: once per worker and run (`central_cache`), under the
//! fleet's lease on the shared mailbox (`leases`), and the one read of the folder every step uses.

use std::sync::Arc;

use shared::config::TenantSettings;
use shared::graph::{FolderRef, TenantClient, DELTA_PAGE_ITEMS};
use shared::message::{CentralFolder, Job};
use shared::model::Contact;
use shared::sync::{self, CentralKeys, PreparedCentral};

use super::{classify, held_or_retry, plan_context, JobRunner};
use crate::disposition::AttemptResult;

/// Requests one worker process sends the shared mailbox for a run's phase-2 jobs right after phase 1 wrote a
/// folder of `persons`: the folder's lookup, its pages (a delta round's pages hold the fewest items,
/// [`DELTA_PAGE_ITEMS`]) and one more. Phase 1 ends once the mailbox's window has room for that much per process
/// ([`TenantClient::make_room_for_fleet`]): those processes count nothing of its requests.
pub(super) fn fleet_reads_per_process(persons: usize) -> u32 {
    let pages = persons.div_ceil(DELTA_PAGE_ITEMS).max(1);
    u32::try_from(2 + pages).unwrap_or(u32::MAX)
}

/// The keys a phase-2 job asks whether its plan leaves the mailbox holding nothing but copies phase 1 does without
/// (`FolderFeed::only_copies`), or `None` where phase 1 cannot use the answer (`feed::source_unread`): the folder's
/// feed is not kept (`feeds_kept` false), the directory is received too (the mailbox is in line with a combined
/// generation), photos are on (phase 1 reads every source for them), or a dry run (nothing is written).
pub(super) fn only_copies_keys<'a>(
    tenant: &TenantSettings,
    job: &Job,
    central: &CentralFolder,
    sources: &'a PreparedCentral,
    feeds_kept: bool,
) -> Option<&'a CentralKeys> {
    let asked =
        feeds_kept && !tenant.distribution.receives_directory() && !tenant.photos && !job.dry_run;
    asked.then(|| sources.central_keys(&plan_context(tenant, job, &central.mailbox)))
}

impl JobRunner {
    /// The central folder's contacts prepared for planning (cached per worker and run); none without the mirror.
    /// Phase 2 passes on only what may be published (`CentralFields`), even before phase 1 cleared a contact.
    pub(super) async fn central_contacts(
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
    /// mailbox `mailbox` a worker makes outside phase 1's own job is made under it (see [`crate::leases`]).
    /// A broker that cannot be asked is a transient failure: reading without the lease could put the shared
    /// mailbox over its limit.
    pub(super) async fn shared_mailbox_lease(
        &self,
        tenant_id: &str,
        mailbox: &str,
    ) -> Result<Option<crate::leases::Held>, AttemptResult> {
        let Some(leases) = self.leases.get() else {
            return Ok(None);
        };
        held_or_retry(
            leases.hold(tenant_id),
            &format!("the broker lease to read the shared mailbox {mailbox}"),
        )
        .await
    }
}

pub(super) async fn read_central(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_reads_the_folders_lookup_and_pages_and_one_more() {
        assert_eq!(
            fleet_reads_per_process(0),
            3,
            "an empty folder still answers one page"
        );
        assert_eq!(fleet_reads_per_process(DELTA_PAGE_ITEMS), 3);
        assert_eq!(fleet_reads_per_process(DELTA_PAGE_ITEMS + 1), 4);
        assert_eq!(fleet_reads_per_process(10_000), 22);
    }
}
