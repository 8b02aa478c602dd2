//! Step 1 of a tenant's run: check the credentials, find the shared mailbox, enumerate licensed users, and make
//! sure the central folder exists (never in a dry run).
//!
//! Every failure here stops that tenant alone, with a message naming the setting to fix and the Graph error behind it.

use shared::config::TenantSettings;
use shared::graph::{AuthProblem, ErrorKind, GraphClient, GraphError};
use shared::message::CentralFolder;
use shared::model::Mailbox;
use tracing::info;

/// A tenant ready for its jobs.
#[derive(Debug, Clone)]
pub struct PreparedTenant {
    /// The configured tenant id.
    pub tenant_id: String,
    /// The central folder (its id is `None` only in a dry run before the folder exists).
    pub central: CentralFolder,
    /// The users to mirror, shared mailbox excluded, test list applied.
    pub users: Vec<Mailbox>,
}

/// Prepares one tenant, or says precisely why it cannot run.
pub async fn prepare(
    graph: &GraphClient,
    tenant: &TenantSettings,
    dry_run: bool,
) -> Result<PreparedTenant, String> {
    let client = graph.tenant(tenant);
    let shared_user = client
        .user(&tenant.global_address_book_user_id)
        .await
        .map_err(|e| {
            explain(
                tenant,
                &e,
                "looking up the shared mailbox (GlobalAddressBookUserId)",
            )
        })?;
    let shared_mailbox = shared_user.mailbox();
    let mut users: Vec<Mailbox> = client
        .licensed_users()
        .await
        .map_err(|e| explain(tenant, &e, "listing licensed users"))?
        .into_iter()
        .map(|u| u.mailbox())
        .filter(|m| !m.id.eq_ignore_ascii_case(&shared_mailbox.id))
        .collect();
    if let Some(list) = &tenant.test_user_list {
        users.retain(|m| {
            list.iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(&m.upn))
        });
        if users.is_empty() {
            return Err(format!(
                "tenant {}: none of the TestUserList entries ({}) is a licensed user other than the shared mailbox",
                tenant.tenant_id,
                list.join(", ")
            ));
        }
    }
    if users.is_empty() {
        return Err(format!(
            "tenant {}: no licensed users found (is any user licensed for Exchange Online?)",
            tenant.tenant_id
        ));
    }
    users.sort();
    let folder_name = &tenant.mirror.central_folder_name;
    let folder_id = if dry_run {
        client
            .find_top_level_folder(&shared_mailbox.id, folder_name)
            .await
            .map_err(|e| explain(tenant, &e, "looking for the central folder"))?
            .map(|f| f.id)
    } else {
        Some(
            client
                .ensure_top_level_folder(&shared_mailbox.id, folder_name)
                .await
                .map_err(|e| explain(tenant, &e, "creating the central folder"))?
                .id,
        )
    };
    info!(tenant = %tenant.tenant_id, users = users.len(), shared = %shared_mailbox.upn, "tenant prepared");
    Ok(PreparedTenant {
        tenant_id: tenant.tenant_id.clone(),
        central: CentralFolder {
            mailbox: shared_mailbox,
            folder_id,
        },
        users,
    })
}

/// Turns a Graph error met while preparing a tenant into a message naming the setting to fix.
fn explain(tenant: &TenantSettings, error: &GraphError, doing: &str) -> String {
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
