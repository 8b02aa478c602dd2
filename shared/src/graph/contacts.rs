//! Personal contacts: reading a whole folder, and writing creates, updates and deletes.
//!
//! Reads use `$top=1000` (Outlook's maximum), a `$select` of exactly the fields the model holds, and an `$expand`
//! that returns only the sync id extended property. A read is all or nothing: an error on any page is an error,
//! never an empty or partial list (an empty list would make the planner create everything again). Writes go
//! through `$batch` (see `batch.rs`).

use super::batch;
use super::error::GraphError;
use super::transport::Call;
use super::wire::{contact_expand, contact_select, decode, sync_id_filter, WireContact};
use super::{TenantClient, TenantInner};
use crate::model::{Contact, WriteOp};

/// Which contact folder of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FolderRef {
    /// The mailbox's default Contacts folder (`/users/{m}/contacts`).
    Default,
    /// A folder by Graph id (`/users/{m}/contactFolders/{id}/contacts`).
    Id(String),
}

impl FolderRef {
    /// The path segments of the folder's contact collection.
    pub(crate) fn contacts_segments<'a>(&'a self, mailbox: &'a str) -> Vec<&'a str> {
        match self {
            FolderRef::Default => vec!["users", mailbox, "contacts"],
            FolderRef::Id(id) => vec!["users", mailbox, "contactFolders", id, "contacts"],
        }
    }
}

/// The result of one write: the contact as Graph stored it (creates and updates), nothing (deletes), or why
/// that item failed.
pub type WriteOutcome = Result<Option<Contact>, GraphError>;

impl TenantInner {
    /// The contact of `folder` carrying `sync_id` in its sync id property, if any (the first, should earlier
    /// faults have left several). How a create in doubt is checked before it is sent again.
    pub(crate) async fn find_by_sync_id(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        sync_id: &str,
    ) -> Result<Option<Contact>, GraphError> {
        let select = contact_select();
        let expand = contact_expand();
        let filter = sync_id_filter(sync_id);
        let url = self.url(
            &folder.contacts_segments(mailbox),
            &[
                ("$filter", &filter),
                ("$select", &select),
                ("$expand", &expand),
            ],
        )?;
        let found: Vec<WireContact> = self
            .get_all("contact lookup page", url, mailbox, false)
            .await?;
        Ok(found.into_iter().next().map(Contact::from))
    }
}

impl TenantClient {
    /// Every contact of `folder` in `mailbox`, across all pages. Any failure on any page is an error.
    pub async fn list_contacts(
        &self,
        mailbox: &str,
        folder: &FolderRef,
    ) -> Result<Vec<Contact>, GraphError> {
        self.list_contacts_where(mailbox, folder, |_| true).await
    }

    /// The contacts of `folder` in `mailbox` that `keep` accepts, judged page by page as they are read: a caller
    /// that needs only some of a large folder never holds all of it. Any failure on any page is an error.
    pub async fn list_contacts_where(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        mut keep: impl FnMut(&Contact) -> bool,
    ) -> Result<Vec<Contact>, GraphError> {
        let select = contact_select();
        let expand = contact_expand();
        let url = self.inner.url(
            &folder.contacts_segments(mailbox),
            &[("$top", "1000"), ("$select", &select), ("$expand", &expand)],
        )?;
        // Each page becomes contacts as it arrives: the wire form of a whole folder is never held beside them.
        self.inner
            .get_each(
                "contact list page",
                url,
                mailbox,
                false,
                |wire: WireContact| Some(Contact::from(wire)).filter(|contact| keep(contact)),
            )
            .await
    }

    /// How many contacts the default Contacts folder of `mailbox` holds (`$count=true`, one item selected): one
    /// request that also proves the mailbox answers, which is how `check` probes mailboxes. Graph's count may
    /// include contact groups, which is close enough for an estimate.
    pub async fn contact_count(&self, mailbox: &str) -> Result<u64, GraphError> {
        #[derive(serde::Deserialize)]
        struct Counted {
            #[serde(rename = "@odata.count", default)]
            count: Option<u64>,
            #[serde(default)]
            value: Vec<serde::de::IgnoredAny>,
        }
        let url = self.inner.url(
            &FolderRef::Default.contacts_segments(mailbox),
            &[("$count", "true"), ("$top", "1"), ("$select", "id")],
        )?;
        let reply = self
            .inner
            .send(&Call::new(reqwest::Method::GET, url, mailbox))
            .await?;
        let counted: Counted = decode("contact count", &reply.body)?;
        // A Graph that leaves the count out still answered: at least what it showed.
        Ok(counted.count.unwrap_or(counted.value.len() as u64))
    }

    /// Applies `ops` to `folder` of `mailbox` through JSON `$batch` (20 per batch), returning one outcome per op in
    /// input order. Items Graph answers with 429/503/504 (or another retryable status) are sent again, after
    /// their own `Retry-After`, up to the attempt limit. The outer error is only for a failure of the whole call
    /// (credentials, or a `$batch` request that kept failing); writes already answered before it may have been
    /// applied. Not cancellation-safe in effect: a dropped call may have written some items.
    pub async fn write(
        &self,
        mailbox: &str,
        folder: &FolderRef,
        ops: &[WriteOp],
    ) -> Result<Vec<WriteOutcome>, GraphError> {
        batch::write(&self.inner, mailbox, folder, ops).await
    }
}
