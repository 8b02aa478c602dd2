//! Photos (issue 14): a directory user's or a contact's photo read, a contact's photo put or removed, and the
//! photo properties written, each one request through the one retry loop. A photo's bytes are spent from the target
//! mailbox's upload budget (`limit.rs`) before it is sent.

use std::collections::BTreeMap;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use reqwest::Method;
use serde_json::json;

use super::contacts::FolderRef;
use super::error::GraphError;
use super::transport::{Call, RawBody};
use super::wire::{decode, WireContact};
use super::TenantClient;
use crate::config::MemberType;
use crate::directory::DirectoryPerson;
use crate::model::Contact;
use crate::sync::photo::{PhotoHash, PHOTO_HASH_PROPERTY, PHOTO_SOURCE_PROPERTY};
use crate::sync::SyncId;

/// Directory users' photos read at once: each from the user's own mailbox budget, so this is about the tenant's
/// users, not one mailbox's 4 in flight.
const PHOTO_READS_AT_ONCE: usize = 16;

/// The `Content-Type` of a photo by its first bytes: PNG's signature, else JPEG (what Graph stores users' and
/// contacts' photos as).
pub fn photo_content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        "image/png"
    } else {
        "image/jpeg"
    }
}

/// Whether `error` says there is no photo: 404 `ImageNotFound` (Graph's answer for a user or contact without
/// one), or a user without a mailbox (whose photo Outlook cannot hold).
fn no_photo(error: &GraphError) -> bool {
    error.status() == Some(404)
        && error.code().is_some_and(|code| {
            code.eq_ignore_ascii_case("ImageNotFound")
                || code.eq_ignore_ascii_case("MailboxNotEnabledForRESTAPI")
                || code.eq_ignore_ascii_case("ErrorItemNotFound")
        })
}

impl TenantClient {
    /// The photo of directory user `user_id` (`GET /users/{id}/photo/$value`), or `None` when the user has none.
    /// Spends the user's own mailbox budget, not the receiving mailboxes'.
    pub async fn user_photo(&self, user_id: &str) -> Result<Option<Vec<u8>>, GraphError> {
        let url = self
            .inner
            .url(&["users", user_id, "photo", "$value"], &[])?;
        let sent = self.inner.send(&Call::new(Method::GET, url, user_id)).await;
        match sent {
            Ok(reply) => Ok(Some(reply.body)),
            Err(error) if no_photo(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The photos of the users among `persons` (org contacts have none), by their copies' sync id: one request
    /// per user, `None` answers left out. Any other failure fails the read (a photo read as missing would be
    /// removed from every copy).
    pub async fn directory_photos(
        &self,
        persons: &[DirectoryPerson],
    ) -> Result<BTreeMap<SyncId, Vec<u8>>, GraphError> {
        // Owned inputs: the futures must not borrow `persons` (they are polled as one `Send` stream).
        let users: Vec<(String, SyncId)> = persons
            .iter()
            .filter(|p| matches!(p.kind, MemberType::Member | MemberType::Guest))
            .map(|p| (p.object_id.clone(), p.sync_id.clone()))
            .collect();
        let reads = users.into_iter().map(|(object_id, sync_id)| {
            let client = self.clone();
            async move {
                let photo = client.user_photo(&object_id).await?;
                Ok::<_, GraphError>(photo.map(|bytes| (sync_id, bytes)))
            }
        });
        let found: Vec<Option<(SyncId, Vec<u8>)>> = stream::iter(reads)
            .buffer_unordered(PHOTO_READS_AT_ONCE)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// The photo of contact `contact_id` (`GET …/contacts/{id}/photo/$value`), or `None` when it has none (404
    /// `ImageNotFound`). Spends `mailbox`'s budget.
    pub async fn contact_photo(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        contact_id: &str,
    ) -> Result<Option<Vec<u8>>, GraphError> {
        let url = self.photo_url(mailbox, folder, contact_id)?;
        match self.inner.send(&Call::new(Method::GET, url, mailbox)).await {
            Ok(reply) => Ok(Some(reply.body)),
            Err(error) if no_photo(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Puts `bytes` as the photo of contact `contact_id` (`PUT …/contacts/{id}/photo/$value`). The caller keeps
    /// photos over Graph's 4 MB request limit back (`sync::photo::decide`).
    pub async fn put_contact_photo(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        contact_id: &str,
        bytes: &[u8],
    ) -> Result<(), GraphError> {
        let url = self.photo_url(mailbox, folder, contact_id)?;
        self.inner
            .send(&Call {
                raw: Some(RawBody {
                    bytes,
                    content_type: photo_content_type(bytes),
                }),
                ..Call::new(Method::PUT, url, mailbox)
            })
            .await
            .map(drop)
    }

    /// Removes the photo of contact `contact_id` (`DELETE …/contacts/{id}/photo/$value`); one already gone is
    /// removed.
    pub async fn delete_contact_photo(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        contact_id: &str,
    ) -> Result<(), GraphError> {
        let url = self.photo_url(mailbox, folder, contact_id)?;
        let sent = self
            .inner
            .send(&Call::new(Method::DELETE, url, mailbox))
            .await;
        match sent {
            Err(error) if !no_photo(&error) => Err(error),
            _ => Ok(()),
        }
    }

    /// Writes `hash` into the contact's photo hash property (an empty value for none: Graph cannot remove an
    /// extended property) and, for a central contact, `source` (the origin's change key its photo was read at)
    /// into [`PHOTO_SOURCE_PROPERTY`], in one PATCH; returns the contact as Graph stored it, whose change key is
    /// the job's own write.
    pub async fn set_photo_hash(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        contact_id: &str,
        hash: Option<&PhotoHash>,
        source: Option<&str>,
    ) -> Result<Contact, GraphError> {
        let mut segments = folder.contacts_segments(mailbox);
        segments.push(contact_id);
        let url = self.inner.url(&segments, &[])?;
        let mut properties = vec![json!({
            "id": PHOTO_HASH_PROPERTY,
            "value": hash.map(PhotoHash::as_str).unwrap_or_default(),
        })];
        if let Some(source) = source {
            properties.push(json!({"id": PHOTO_SOURCE_PROPERTY, "value": source}));
        }
        let body = json!({ "singleValueExtendedProperties": properties });
        let reply = self
            .inner
            .send(&Call {
                body: Some(&body),
                ..Call::new(Method::PATCH, url, mailbox)
            })
            .await?;
        let contact: WireContact = decode("photo hash update", &reply.body)?;
        Ok(contact.into())
    }

    fn photo_url(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        contact_id: &str,
    ) -> Result<url::Url, GraphError> {
        let mut segments = folder.contacts_segments(mailbox);
        segments.extend([contact_id, "photo", "$value"]);
        self.inner.url(&segments, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_is_told_from_jpeg() {
        assert_eq!(photo_content_type(b"\x89PNG\r\n\x1a\n...."), "image/png");
        assert_eq!(photo_content_type(&[0xFF, 0xD8, 0xFF, 0xE0]), "image/jpeg");
    }
}
