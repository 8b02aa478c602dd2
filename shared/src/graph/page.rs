//! Reading whole collections: follow `@odata.nextLink` verbatim until there is none.
//!
//! A nextLink carries an opaque `$skiptoken`/`$skip`; rebuilding it from parts loses data, so it is used exactly as
//! given, but only if it points at the same Graph host (a link elsewhere would receive the bearer token). Any
//! failure on any page fails the whole read: a partial list must never be mistaken for the mailbox's content.

use serde::de::DeserializeOwned;
use url::Url;

use super::error::GraphError;
use super::transport::Call;
use super::wire::{decode, Page};
use super::TenantInner;

/// Checks a nextLink and turns it into the next URL: absolute, same scheme, host and port as `base`, and not the
/// page just read (which would loop forever).
pub(crate) fn next_url(base: &Url, current: &Url, link: &str) -> Result<Url, GraphError> {
    let next = same_origin_url(base, "@odata.nextLink", link)?;
    if next == *current {
        return Err(GraphError::Protocol(
            "@odata.nextLink repeats the page just read".into(),
        ));
    }
    Ok(next)
}

/// `link` as a URL, if it is absolute and has the scheme, host and port of `base`: a link elsewhere would receive
/// the bearer token.
pub fn same_origin_url(base: &Url, what: &str, link: &str) -> Result<Url, GraphError> {
    let url =
        Url::parse(link).map_err(|e| GraphError::Protocol(format!("{what} is not a URL ({e})")))?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    if !same_origin {
        return Err(GraphError::Protocol(format!(
            "{what} points at another host ({}), not following it",
            url.host_str().unwrap_or("none")
        )));
    }
    Ok(url)
}

impl TenantInner {
    /// Every item of the collection at `first`, across all pages.
    pub(crate) async fn get_all<T: DeserializeOwned>(
        &self,
        what: &str,
        first: Url,
        mailbox: &str,
        eventual: bool,
    ) -> Result<Vec<T>, GraphError> {
        self.get_each(what, first, mailbox, eventual, Some).await
    }

    /// What `keep` makes of each item of the collection at `first`, across all pages, dropping the `None`s. Each
    /// page is reduced as it arrives, so a large collection is never held whole in its wire form (issue 10).
    pub(crate) async fn get_each<T: DeserializeOwned, U>(
        &self,
        what: &str,
        first: Url,
        mailbox: &str,
        eventual: bool,
        mut keep: impl FnMut(T) -> Option<U>,
    ) -> Result<Vec<U>, GraphError> {
        let base = self.base()?;
        let mut url = first;
        let mut items = Vec::new();
        let mut pages = 0u32;
        loop {
            let reply = self
                .send(&Call {
                    eventual,
                    ..Call::new(reqwest::Method::GET, url.clone(), mailbox)
                })
                .await?;
            let page: Page<T> = decode(what, &reply.body)?;
            drop(reply);
            pages += 1;
            items.extend(page.value.into_iter().filter_map(&mut keep));
            match page.next_link {
                None => {
                    tracing::debug!(what, pages, items = items.len(), "collection read");
                    items.shrink_to_fit();
                    return Ok(items);
                }
                Some(link) => url = next_url(&base, &url, &link)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn next_links_are_followed_verbatim_on_the_same_host() {
        let base = url("https://graph.microsoft.com/v1.0/");
        let current = url("https://graph.microsoft.com/v1.0/users/a/contacts?$top=1000");
        let link = "https://graph.microsoft.com/v1.0/users/a/contacts?%24top=1000&%24skip=1000";
        let next = next_url(&base, &current, link).expect("same host");
        assert_eq!(next.as_str(), link);
    }

    #[test]
    fn foreign_or_looping_links_are_refused() {
        let base = url("http://127.0.0.1:8080/v1.0/");
        let current = url("http://127.0.0.1:8080/v1.0/users");
        assert!(next_url(&base, &current, "http://evil.example/v1.0/users?skip=1").is_err());
        assert!(next_url(&base, &current, "http://127.0.0.1:9090/v1.0/users?skip=1").is_err());
        assert!(next_url(&base, &current, "https://127.0.0.1:8080/v1.0/users?skip=1").is_err());
        assert!(next_url(&base, &current, "/v1.0/users?skip=1").is_err());
        assert!(next_url(&base, &current, "http://127.0.0.1:8080/v1.0/users").is_err());
    }
}
