//! The directory persons a tenant's mailboxes receive: its own directory and its `FromTenants`' (each with that
//! tenant's credentials), read once per worker and run, and how a failed read is said.

use std::sync::Arc;

use shared::config::TenantSettings;
use shared::directory::{self, DirectoryPerson};
use shared::graph::{DirectoryError, TenantClient};
use shared::message::{FailureReason, Job};

use super::{classify, JobRunner};
use crate::directory_cache::Selected;
use crate::disposition::AttemptResult;

impl JobRunner {
    /// The directory persons `tenant`'s mailboxes receive, one list per source tenant
    /// ([`TenantSettings::directory_sources`]: itself when `Directory.Enabled`, then its `FromTenants`). Each
    /// source is read with its own credentials and `Directory` filters from this worker's configuration (a job
    /// never carries credentials), once per worker and run whichever tenant's jobs ask for it, and only read:
    /// nothing is written in a source tenant. A source that cannot be read fails the job, naming that source and
    /// the tenant receiving it: planning without it would take its people for leavers.
    pub(super) async fn received_directory(
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
}

/// The persons `tenant`'s `Directory` settings select, read through Graph (a constant number of listings).
pub(super) async fn read_directory(
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
pub(super) fn joined_persons(lists: &[Arc<Selected>]) -> Vec<DirectoryPerson> {
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
