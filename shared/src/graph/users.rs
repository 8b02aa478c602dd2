//! Directory users: who the licensed, enabled members of a tenant are, and one user by id or UPN.
//!
//! "Licensed" needs the advanced query `assignedLicenses/$count ne 0`, which Graph accepts only with
//! `ConsistencyLevel: eventual` and `$count=true`; the header is sent again on every page because Graph does not
//! carry it over to nextLink requests.

use serde::{Deserialize, Serialize};

use super::error::GraphError;
use super::transport::{Call, DIRECTORY};
use super::wire::decode;
use super::TenantClient;
use crate::model::Mailbox;

/// The properties every user read selects.
const USER_SELECT: &str = "id,userPrincipalName,mail,displayName,userType,accountEnabled";

/// A directory user, as far as contactmirror needs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    /// Entra object id.
    pub id: String,
    /// User principal name.
    pub user_principal_name: String,
    /// Primary SMTP address (`null` for users without one).
    #[serde(default)]
    pub mail: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// `Member` or `Guest` (`null` for some old accounts).
    #[serde(default)]
    pub user_type: Option<String>,
}

impl DirectoryUser {
    /// The user as a mailbox address (object id plus UPN).
    pub fn mailbox(&self) -> Mailbox {
        Mailbox {
            id: self.id.clone(),
            upn: self.user_principal_name.clone(),
        }
    }
}

impl TenantClient {
    /// Every enabled user with at least one license (`GET /users` with an advanced query), all pages.
    pub async fn licensed_users(&self) -> Result<Vec<DirectoryUser>, GraphError> {
        let url = self.inner.url(
            &["users"],
            &[
                (
                    "$filter",
                    "assignedLicenses/$count ne 0 and accountEnabled eq true",
                ),
                ("$count", "true"),
                ("$select", USER_SELECT),
                ("$top", "999"),
            ],
        )?;
        self.inner
            .get_all("user list page", url, DIRECTORY, true)
            .await
    }

    /// One user by object id or UPN (`GET /users/{id}`).
    pub async fn user(&self, id_or_upn: &str) -> Result<DirectoryUser, GraphError> {
        let url = self
            .inner
            .url(&["users", id_or_upn], &[("$select", USER_SELECT)])?;
        let reply = self
            .inner
            .send(&Call::new(reqwest::Method::GET, url, DIRECTORY))
            .await?;
        decode("user", &reply.body)
    }
}
