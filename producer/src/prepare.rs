//! Step 1 of a tenant's run: check the credentials, find the shared mailbox, enumerate licensed users, and make
//! sure the central folder exists (never in a dry run). A directory-only tenant (`Mirror.Enabled: false`) has no
//! shared mailbox and no central folder; every directory the tenant receives (its own, and its `FromTenants`' with
//! their own credentials) is read once here, so a missing permission stops the tenant before any job, naming the
//! permission and the source tenant.
//!
//! Every failure here stops that tenant alone, with a message naming the setting to fix and the Graph error behind it.

use std::collections::BTreeSet;

use shared::config::{Settings, TenantSettings};
use shared::directory::KeptUsers;
use shared::feed::Generation;
use shared::graph::{
    AuthProblem, DirectoryError, DirectoryUser, ErrorKind, GraphClient, GraphError, TenantClient,
};
use shared::message::CentralFolder;
use shared::model::Mailbox;
use shared::test_users;
use tracing::{info, warn};

use crate::state::KnownCentral;

/// A tenant ready for its jobs.
#[derive(Debug, Clone)]
pub struct PreparedTenant {
    /// The configured tenant id.
    pub tenant_id: String,
    /// The central folder (its id is `None` only in a dry run before the folder exists); `None` when the tenant's
    /// mirror is off: then there is no phase 1 and the phase-2 jobs carry the directory alone.
    pub central: Option<CentralFolder>,
    /// The receiving users: licensed, shared mailbox excluded, test list and `TargetGroups` applied.
    pub users: Vec<Mailbox>,
    /// What the operator should know but does not stop the tenant (a test user matching nobody).
    pub warnings: Vec<String>,
    /// The tenant's own directory as read for this run, when the tenant distributes it.
    pub directory: Option<PreparedDirectory>,
}

/// The directory as the producer read it for this run (issue 11).
#[derive(Debug, Clone)]
pub struct PreparedDirectory {
    /// The generation of the selected persons, which a receiving mailbox's phase 2 compares with the one it was
    /// last brought in line with. `None` with `FromTenants`: the other tenants' directories are read by the
    /// workers only, so no mailbox can be proved in line.
    pub generation: Option<Generation>,
    /// The users feed to keep for the next run (`None` with a `UserFilter`: no feed is used).
    pub users: Option<KeptUsers>,
}

/// What the producer knows of the central folder before preparing a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CentralExpectation {
    /// No earlier run is known to have filled it (first run, no state): find it, or create it.
    Unknown,
    /// Earlier runs filled this folder: it must still be the folder by the configured name.
    Filled(KnownCentral),
    /// The operator asked to rebuild it (`run --rebuild-central`): find or create it, whatever the state says.
    Rebuild,
}

impl CentralExpectation {
    /// The folder earlier runs filled, if `found` (the folder now by the configured name in `mailbox_id`) is not
    /// it: it was deleted or renamed. A fresh folder then would look to phase 2 as if every person had left it.
    /// A changed shared mailbox or folder name (configuration) is a new start, not a loss.
    pub fn lost<'a>(
        &'a self,
        mailbox_id: &str,
        folder_name: &str,
        found: Option<&str>,
    ) -> Option<&'a KnownCentral> {
        match self {
            CentralExpectation::Filled(known)
                if known.mailbox_id.eq_ignore_ascii_case(mailbox_id)
                    && known.folder_name == folder_name
                    && found != Some(known.folder_id.as_str()) =>
            {
                Some(known)
            }
            _ => None,
        }
    }
}

/// The configured tenants whose directory `tenant`'s mailboxes receive ([`TenantSettings::directory_sources`]:
/// itself when `Directory.Enabled`, then its `FromTenants`), each with its own credentials and filters.
pub fn directory_sources<'a>(
    settings: &'a Settings,
    tenant: &TenantSettings,
) -> Result<Vec<&'a TenantSettings>, String> {
    tenant
        .directory_sources()
        .into_iter()
        .map(|id| {
            settings.tenant(id).ok_or_else(|| {
                format!(
                    "tenant {}: Directory.FromTenants names {id}, which is not a configured tenant",
                    tenant.tenant_id
                )
            })
        })
        .collect()
}

/// Prepares one tenant, or says precisely why it cannot run. `sources` ([`directory_sources`]) are read once
/// here, each with its own credentials, so a missing permission or bad credentials of any source stops the
/// tenant before any job, naming the source tenant and what to fix; nothing is written in a source tenant.
/// The tenant's own directory is brought up to date from `kept_users`, the users feed an earlier run kept.
pub async fn prepare(
    graph: &GraphClient,
    tenant: &TenantSettings,
    sources: &[&TenantSettings],
    dry_run: bool,
    expected: &CentralExpectation,
    mut kept_users: Option<KeptUsers>,
) -> Result<PreparedTenant, String> {
    let client = graph.tenant(tenant);
    let shared_mailbox = shared_mailbox(&client, tenant).await?;
    let (users, warnings) = receiving_users(&client, tenant, shared_mailbox.as_ref()).await?;
    let mut directory = None;
    for source in sources {
        let own = source.tenant_id.eq_ignore_ascii_case(&tenant.tenant_id);
        let options = &source.distribution.directory;
        let source_client = graph.tenant(source);
        let failed = |e: DirectoryError| {
            let doing = if own {
                "reading the directory".to_owned()
            } else {
                format!(
                        "reading the directory of tenant {} (Directory.FromTenants) with that tenant's own \
                         ClientId and credential",
                        source.tenant_id
                    )
            };
            match &e {
                DirectoryError::Graph(graph) => explain(tenant, graph, &doing),
                _ => format!("tenant {}: {doing}: {e}", tenant.tenant_id),
            }
        };
        let persons = if own {
            let (read, users) = source_client
                .read_directory_kept(options, source.shared_mailbox(), kept_users.take())
                .await
                .map_err(failed)?;
            let persons = shared::directory::select(&read.read(), options);
            let mut generation = shared::directory::persons_generation(&persons);
            if tenant.photos {
                // The photos are part of what a mailbox is in line with: a changed one plans its holders
                // again. Read once per run here (one request per user), hashed, the bytes dropped.
                let photos = source_client
                    .directory_photos(&persons)
                    .await
                    .map_err(|e| failed(DirectoryError::Graph(e)))?;
                let hashes = photos
                    .iter()
                    .map(|(id, bytes)| (id.clone(), shared::sync::photo::PhotoHash::of(bytes)))
                    .collect();
                generation = shared::directory::with_photos(generation, &hashes);
            }
            directory = Some(PreparedDirectory {
                generation: tenant
                    .distribution
                    .directory
                    .from_tenants
                    .is_empty()
                    .then_some(generation),
                users,
            });
            persons
        } else {
            let read = source_client
                .read_directory(options, source.shared_mailbox())
                .await
                .map_err(failed)?;
            shared::directory::select(&read.read(), options)
        };
        info!(tenant = %tenant.tenant_id, source = %source.tenant_id, persons = persons.len(), "directory read");
    }
    let Some(shared_mailbox) = shared_mailbox else {
        info!(tenant = %tenant.tenant_id, users = users.len(), "directory-only tenant prepared");
        return Ok(PreparedTenant {
            tenant_id: tenant.tenant_id.clone(),
            central: None,
            users,
            warnings,
            directory,
        });
    };
    let folder_name = &tenant.mirror.central_folder_name;
    // Looked up once: what the check for a lost folder found is the folder (or its absence) the run goes on with.
    let mut looked_up: Option<Option<String>> = None;
    if !matches!(expected, CentralExpectation::Unknown) {
        let found = client
            .find_top_level_folder(&shared_mailbox.id, folder_name)
            .await
            .map_err(|e| explain(tenant, &e, "looking for the central folder"))?
            .map(|f| f.id);
        if let Some(known) = expected.lost(&shared_mailbox.id, folder_name, found.as_deref()) {
            return Err(format!(
                "tenant {}: the central folder \"{folder_name}\" in {} that earlier runs filled (id {}) is gone: \
                 it was deleted or renamed. Nothing was written. If it was renamed, give it its name back; \
                 otherwise rebuild it from the users' contacts with `contactmirror-producer run \
                 --rebuild-central --tenant {}`",
                tenant.tenant_id, shared_mailbox.upn, known.folder_id, tenant.tenant_id
            ));
        }
        looked_up = Some(found);
    }
    let folder_id = match (looked_up, dry_run) {
        (Some(Some(found)), _) => Some(found),
        (Some(None), true) => None,
        (None, true) => client
            .find_top_level_folder(&shared_mailbox.id, folder_name)
            .await
            .map_err(|e| explain(tenant, &e, "looking for the central folder"))?
            .map(|f| f.id),
        (_, false) => Some(
            client
                .ensure_top_level_folder(&shared_mailbox.id, folder_name)
                .await
                .map_err(|e| explain(tenant, &e, "creating the central folder"))?
                .id,
        ),
    };
    info!(tenant = %tenant.tenant_id, users = users.len(), shared = %shared_mailbox.upn, "tenant prepared");
    Ok(PreparedTenant {
        tenant_id: tenant.tenant_id.clone(),
        central: Some(CentralFolder {
            mailbox: shared_mailbox,
            folder_id,
        }),
        users,
        warnings,
        directory,
    })
}

/// The shared mailbox (`GlobalAddressBookUserId`) looked up, when the tenant's mirror is on; `None` without it.
pub async fn shared_mailbox(
    client: &TenantClient,
    tenant: &TenantSettings,
) -> Result<Option<Mailbox>, String> {
    match tenant
        .shared_mailbox()
        .filter(|_| tenant.distribution.mirror_enabled)
    {
        Some(shared) => Ok(Some(
            client
                .user(shared)
                .await
                .map_err(|e| {
                    explain(
                        tenant,
                        &e,
                        "looking up the shared mailbox (GlobalAddressBookUserId)",
                    )
                })?
                .mailbox(),
        )),
        None => Ok(None),
    }
}

/// The receiving users, sorted: licensed, the shared mailbox (`shared_mailbox`, or by its configured name
/// without the mirror) left out, `TestUserList` and `TargetGroups` applied; an empty result is an error. Also the
/// warnings the operator should see (test-list entries matching nobody or several users, see [`test_users`]).
pub async fn receiving_users(
    client: &TenantClient,
    tenant: &TenantSettings,
    shared_mailbox: Option<&Mailbox>,
) -> Result<(Vec<Mailbox>, Vec<String>), String> {
    let licensed = test_users::candidates(
        client
            .licensed_users()
            .await
            .map_err(|e| explain(tenant, &e, "listing licensed users"))?,
        tenant,
        shared_mailbox,
    );
    let mut warnings = Vec::new();
    let mut licensed = match &tenant.test_user_list {
        Some(list) => {
            let selection = test_users::select(&licensed, list);
            for warning in selection.warnings() {
                warn!(tenant = %tenant.tenant_id, "{warning}");
                warnings.push(warning);
            }
            if selection.is_empty() {
                return Err(format!(
                    "tenant {}: none of the TestUserList entries ({}) names one licensed user other than the \
                     shared mailbox",
                    tenant.tenant_id,
                    list.join(", ")
                ));
            }
            licensed
                .into_iter()
                .filter(|u| selection.contains(&u.mailbox()))
                .collect()
        }
        None => licensed,
    };
    if let Some(groups) = &tenant.distribution.target_groups {
        let members: BTreeSet<String> = client
            .members_of_any(groups)
            .await
            .map_err(|e| format!("tenant {}: resolving TargetGroups: {e}", tenant.tenant_id))?
            .into_iter()
            .map(|id| id.to_lowercase())
            .collect();
        licensed.retain(|u| members.contains(&u.id.to_lowercase()));
    }
    let mut users: Vec<Mailbox> = licensed.iter().map(DirectoryUser::mailbox).collect();
    if users.is_empty() {
        return Err(format!(
            "tenant {}: no licensed users found (is any user licensed for Exchange Online, and in TargetGroups?)",
            tenant.tenant_id
        ));
    }
    users.sort();
    Ok((users, warnings))
}

/// Turns a Graph error met while preparing a tenant into a message naming the setting to fix.
pub fn explain(tenant: &TenantSettings, error: &GraphError, doing: &str) -> String {
    let hint = match error.kind() {
        ErrorKind::Auth(AuthProblem::BadSecret) => "the ClientSecret is wrong or expired",
        ErrorKind::Auth(AuthProblem::UnknownClient) => "the ClientId is not an app registered in this tenant",
        ErrorKind::Auth(AuthProblem::UnknownTenant) => "the TenantId names no tenant",
        ErrorKind::Auth(_) => "the tenant's credentials were rejected",
        ErrorKind::AccessDenied => {
            "access denied: grant admin consent for Contacts.ReadWrite and User.Read.All, and check application access policies"
        }
        ErrorKind::MailboxNotEnabled | ErrorKind::ItemNotFound => {
            "not found: check GlobalAddressBookUserId (the shared mailbox's UPN or object id)"
        }
        _ => "Graph failed",
    };
    format!("tenant {}: {doing}: {hint} ({error})", tenant.tenant_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled() -> CentralExpectation {
        CentralExpectation::Filled(KnownCentral {
            mailbox_id: "Shared".into(),
            folder_id: "F1".into(),
            folder_name: "All Contacts".into(),
        })
    }

    #[test]
    fn a_filled_folder_that_is_missing_or_another_is_lost() {
        let name = "All Contacts";
        assert!(filled().lost("shared", name, Some("F1")).is_none());
        assert!(
            filled().lost("shared", name, None).is_some(),
            "deleted or renamed"
        );
        assert!(
            filled().lost("shared", name, Some("F2")).is_some(),
            "a new folder by that name"
        );
        // Another shared mailbox or folder name (a configuration change) is a new start.
        assert!(filled().lost("other", name, None).is_none());
        assert!(filled().lost("shared", "Firm", None).is_none());
        assert!(CentralExpectation::Unknown
            .lost("shared", name, None)
            .is_none());
        assert!(CentralExpectation::Rebuild
            .lost("shared", name, None)
            .is_none());
    }
}
