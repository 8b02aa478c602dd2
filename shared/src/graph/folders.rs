//! The central contact folder: found by name among the top-level folders of a mailbox, created when missing.
//!
//! `/users/{m}/contactFolders` lists only the folders directly under the default Contacts folder, so a
//! same-named nested folder is never picked. Creation handles the race where Graph answers 409
//! `ErrorFolderExists`, and a create in doubt (5xx or no answer: it may have been applied), by looking the folder
//! up again before creating it again.

use serde::{Deserialize, Deserializer, Serialize};

use std::time::Duration;

use super::error::GraphError;
use super::pipeline;
use super::retry::Wait;
use super::transport::Call;
use super::wire::{decode, odata_string};
use super::TenantClient;

/// A contact folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactFolder {
    /// Graph's folder id.
    pub id: String,
    /// The folder's name.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub display_name: String,
    /// The id of the folder it sits in.
    #[serde(default)]
    pub parent_folder_id: Option<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

/// The folder named `name`: an exact match first, else one equal ignoring case (Exchange folder names are
/// case-insensitive, so creating it would fail).
fn pick(folders: Vec<ContactFolder>, name: &str) -> Option<ContactFolder> {
    let exact = folders.iter().position(|f| f.display_name == name);
    let position = exact.or_else(|| {
        folders
            .iter()
            .position(|f| f.display_name.to_lowercase() == name.to_lowercase())
    })?;
    folders.into_iter().nth(position)
}

impl TenantClient {
    /// The top-level contact folder of `mailbox` named `name`, if there is one.
    pub async fn find_top_level_folder(
        &self,
        mailbox: &str,
        name: &str,
    ) -> Result<Option<ContactFolder>, GraphError> {
        let filter = format!("displayName eq '{}'", odata_string(name));
        let url = self.inner.url(
            &["users", mailbox, "contactFolders"],
            &[
                ("$filter", &filter),
                ("$select", "id,displayName,parentFolderId"),
            ],
        )?;
        let folders: Vec<ContactFolder> = self
            .inner
            .get_all("contact folder list page", url, mailbox, false)
            .await?;
        Ok(pick(folders, name))
    }

    /// The top-level contact folder of `mailbox` named `name`, created if missing.
    pub async fn ensure_top_level_folder(
        &self,
        mailbox: &str,
        name: &str,
    ) -> Result<ContactFolder, GraphError> {
        if let Some(folder) = self.find_top_level_folder(mailbox, name).await? {
            return Ok(folder);
        }
        let url = self.inner.url(&["users", mailbox, "contactFolders"], &[])?;
        let body = serde_json::json!({ "displayName": name });
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let created = self
                .inner
                .send(&Call {
                    body: Some(&body),
                    ..Call::new(reqwest::Method::POST, url.clone(), mailbox)
                })
                .await;
            match created {
                Ok(reply) => {
                    let folder: ContactFolder = decode("created contact folder", &reply.body)?;
                    tracing::debug!(mailbox, folder = name, "contact folder created");
                    return Ok(folder);
                }
                Err(error) if error.status() == Some(409) => {
                    tracing::debug!(
                        mailbox,
                        folder = name,
                        "contact folder exists already; looking it up again"
                    );
                    return match self.find_top_level_folder(mailbox, name).await? {
                        Some(folder) => Ok(folder),
                        None => Err(error),
                    };
                }
                // The create may have been applied: look before creating again.
                Err(error @ GraphError::Ambiguous { .. }) => {
                    tracing::debug!(mailbox, folder = name, %error, "folder create in doubt; looking it up");
                    if let Some(folder) = self.find_top_level_folder(mailbox, name).await? {
                        return Ok(folder);
                    }
                    if attempts >= self.inner.shared.policy.max_attempts {
                        return Err(error);
                    }
                    pipeline::sleep_for(
                        error.wait().unwrap_or(Wait::backoff(Duration::ZERO)),
                        false,
                    )
                    .await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(id: &str, name: &str) -> ContactFolder {
        ContactFolder {
            id: id.into(),
            display_name: name.into(),
            parent_folder_id: None,
        }
    }

    #[test]
    fn exact_name_wins_over_case_insensitive() {
        let folders = vec![folder("1", "all contacts"), folder("2", "All Contacts")];
        assert_eq!(
            pick(folders.clone(), "All Contacts").map(|f| f.id),
            Some("2".into())
        );
        assert_eq!(
            pick(folders, "ALL CONTACTS").map(|f| f.id),
            Some("1".into())
        );
        assert_eq!(pick(vec![folder("3", "Other")], "All Contacts"), None);
    }

    #[test]
    fn null_display_name_decodes() {
        let folder: ContactFolder =
            serde_json::from_str(r#"{"id":"f","displayName":null}"#).expect("decodes");
        assert_eq!(folder.display_name, "");
    }
}
