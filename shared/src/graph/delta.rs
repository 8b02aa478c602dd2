//! Per-folder contact delta, as a change detector: did anything change since a link, and where does the folder's
//! feed stand now.
//!
//! `GET /users/{m}/contactFolders/{f}/contacts/delta` with `$select=id` (the items themselves are not used: plans
//! come from full reads, which carry the sync id property delta cannot expand). A round follows `@odata.nextLink`
//! until `@odata.deltaLink`. The default folder is addressed by its well-known id `Contacts`. Links are followed
//! verbatim and only on the tenant's Graph host. A link Graph no longer knows answers 410 (`SyncStateNotFound`),
//! [`ErrorKind::InvalidDeltaToken`](super::ErrorKind::InvalidDeltaToken): the caller starts a new feed.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use super::contacts::FolderRef;
use super::error::GraphError;
use super::page::{next_url, same_origin_url};
use super::transport::Call;
use super::wire::{decode, Page};
use super::TenantClient;
use crate::feed::{Changes, DeltaLink, OwnWritesCheck};

/// Delta pages as large as Graph serves them for contacts (corso uses 500).
const PREFER_PAGE_SIZE: &str = "odata.maxpagesize=500";

/// How many items one page of a contact delta round holds (the page size the client asks for).
pub const DELTA_PAGE_ITEMS: usize = 500;

/// One round of a folder's feed: what changed, and the link to ask next time.
#[derive(Debug, Clone)]
pub struct DeltaRound {
    /// Item ids created, updated or deleted in the round.
    pub changes: Changes,
    /// Where the feed stands after the round.
    pub link: DeltaLink,
}

impl DeltaRound {
    /// Whether the round showed no change at all.
    pub fn is_empty(&self) -> bool {
        self.changes.changed.is_empty() && self.changes.removed.is_empty()
    }
}

/// A delta item: only its id and whether it was removed matter here.
#[derive(Debug, Deserialize)]
struct DeltaItem {
    id: String,
    #[serde(rename = "@removed", default)]
    removed: Option<serde_json::Value>,
    /// Tells the tool's own write from a later edit of the same item (see `feed::OwnWrites`).
    #[serde(rename = "changeKey", default)]
    change_key: Option<String>,
}

impl TenantClient {
    /// Starts a feed for `folder` of `mailbox`: an initial round over every item (ids only) that ends with the
    /// folder's first delta link. Its `changes` list every item present.
    pub async fn delta_start(
        &self,
        mailbox: &str,
        folder: &FolderRef,
    ) -> Result<DeltaRound, GraphError> {
        let folder_id = match folder {
            FolderRef::Default => "Contacts",
            FolderRef::Id(id) => id.as_str(),
        };
        let url = self.inner.url(
            &[
                "users",
                mailbox,
                "contactFolders",
                folder_id,
                "contacts",
                "delta",
            ],
            &[("$select", "id,changeKey")],
        )?;
        self.delta_round(mailbox, url).await
    }

    /// What changed in the folder behind `link` since Graph issued it.
    pub async fn delta_since(
        &self,
        mailbox: &str,
        link: &DeltaLink,
    ) -> Result<DeltaRound, GraphError> {
        let url = self.kept_link(link)?;
        self.delta_round(mailbox, url).await
    }

    /// One round of the folder behind `link`, each item told to `check` as it goes by, nothing of the round held
    /// (a round after a large write is as long as the write); returns where the feed stands after it.
    pub async fn delta_since_checked(
        &self,
        mailbox: &str,
        link: &DeltaLink,
        check: &mut OwnWritesCheck<'_>,
    ) -> Result<DeltaLink, GraphError> {
        let url = self.kept_link(link)?;
        self.contact_round(mailbox, url, |item| {
            check.saw(&item.id, item.removed.is_some(), item.change_key.as_deref());
        })
        .await
    }

    /// A kept link, followed only on the tenant's Graph host.
    fn kept_link(&self, link: &DeltaLink) -> Result<Url, GraphError> {
        let base = self.inner.base()?;
        same_origin_url(&base, "the kept delta link", link.as_str())
    }

    async fn delta_round(&self, mailbox: &str, first: Url) -> Result<DeltaRound, GraphError> {
        let mut changes = Changes::default();
        let link = self
            .contact_round(mailbox, first, |item| {
                changes.saw(item.id, item.removed.is_some(), item.change_key)
            })
            .await?;
        Ok(DeltaRound { changes, link })
    }

    /// One round of a folder's contact feed from `first`, each item handed to `on_item` in the order Graph sent it.
    async fn contact_round(
        &self,
        mailbox: &str,
        first: Url,
        mut on_item: impl FnMut(DeltaItem),
    ) -> Result<DeltaLink, GraphError> {
        self.follow_delta(
            first,
            mailbox,
            Some(PREFER_PAGE_SIZE),
            "contact delta page",
            |items: Vec<DeltaItem>| items.into_iter().for_each(&mut on_item),
        )
        .await
    }

    /// The one delta round loop, for every feed (a folder's contacts, the tenant's users): GET `first`, hand each
    /// page's items to `on_page`, follow `@odata.nextLink` until `@odata.deltaLink`, which is returned. Every link
    /// is followed only on the tenant's Graph host; a page with neither link is a protocol error, never an end.
    pub(super) async fn follow_delta<T: DeserializeOwned>(
        &self,
        first: Url,
        mailbox: &str,
        prefer: Option<&'static str>,
        what: &'static str,
        mut on_page: impl FnMut(Vec<T>),
    ) -> Result<DeltaLink, GraphError> {
        let base = self.inner.base()?;
        let mut url = first;
        loop {
            let reply = self
                .inner
                .send(&Call {
                    prefer,
                    ..Call::new(reqwest::Method::GET, url.clone(), mailbox)
                })
                .await?;
            let page: Page<T> = decode(what, &reply.body)?;
            on_page(page.value);
            match (page.next_link, page.delta_link) {
                (Some(next), _) => url = next_url(&base, &url, &next)?,
                (None, Some(link)) => {
                    let link = same_origin_url(&base, "@odata.deltaLink", &link)?;
                    return Ok(DeltaLink::new(link.as_str()));
                }
                (None, None) => {
                    return Err(GraphError::Protocol(format!(
                        "a {what} carried neither @odata.nextLink nor @odata.deltaLink"
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_size_asked_for_is_the_one_the_feed_counts_with() {
        assert_eq!(
            PREFER_PAGE_SIZE,
            format!("odata.maxpagesize={DELTA_PAGE_ITEMS}")
        );
    }
}
