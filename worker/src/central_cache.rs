//! The central folder, read once per worker per run and shared by every phase-2 job of that run.
//!
//! Phase-2 reads of the shared mailbox so grow with the number of workers, not with the number of users. The
//! bounds and the emptying are [`RunCache`]'s (one entry per tenant, another run or folder replaces it, idle
//! entries dropped); this keeps only what planning reads, sorted and normalised once ([`PreparedCentral`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shared::message::CentralFolder;
use shared::model::Contact;
use shared::sync::PreparedCentral;
use tokio::time::Instant;
use uuid::Uuid;

use crate::run_cache::RunCache;
pub use crate::run_cache::IDLE;

/// A per-process cache of central folder contents: at most one entry per tenant.
#[derive(Default)]
pub struct CentralCache(RunCache<PreparedCentral>);

impl CentralCache {
    /// A cache whose entries are dropped after `idle` without use.
    pub fn with_idle(idle: Duration) -> Self {
        Self(RunCache::with_idle(idle))
    }

    /// The central folder of `tenant` in `run`, loaded with `load` by the first caller; concurrent callers wait
    /// for that one load. A failed load is not cached: the next caller tries again. Only the parts planning reads
    /// are kept (see [`slim`]), sorted and normalised once for every job ([`PreparedCentral`]).
    pub async fn get_or_load<F, Fut, E>(
        &self,
        tenant: &str,
        run: Uuid,
        central: &CentralFolder,
        load: F,
    ) -> Result<Arc<PreparedCentral>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Contact>, E>>,
    {
        self.0
            .get_or_load(tenant, run, central.folder_id.as_deref(), || async {
                load()
                    .await
                    .map(|contacts| PreparedCentral::new(contacts.into_iter().map(slim).collect()))
            })
            .await
    }

    /// How many tenants have an entry (for tests and metrics).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no tenant has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops the entries no job asked for since `now - idle`. Jobs still holding a folder keep it until they end.
    pub fn evict_idle(&self, now: Instant, idle: Duration) {
        self.0.evict_idle(now, idle);
    }
}

/// A central contact as phase 2 plans from it: its change key only tells the job's own writes apart in the
/// central folder's feed, which phase 2 never reads, so it is not kept.
fn slim(contact: Contact) -> Contact {
    Contact {
        change_key: None,
        ..contact
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::model::Mailbox;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn central() -> CentralFolder {
        central_in("folder")
    }

    fn central_in(folder: &str) -> CentralFolder {
        CentralFolder {
            mailbox: Mailbox {
                id: "shared".into(),
                upn: "shared@contoso.com".into(),
            },
            folder_id: Some(folder.into()),
        }
    }

    async fn ok(cache: &CentralCache, tenant: &str, run: Uuid) {
        cache
            .get_or_load(tenant, run, &central(), || async {
                Ok::<_, ()>(Vec::new())
            })
            .await
            .expect("load");
    }

    #[tokio::test]
    async fn loads_once_per_run_even_when_asked_concurrently() {
        let cache = CentralCache::default();
        let loads = AtomicUsize::new(0);
        let run = Uuid::now_v7();
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, ()>(Vec::new())
        };
        let folder = central();
        let (a, b) = tokio::join!(
            cache.get_or_load("t", run, &folder, load),
            cache.get_or_load("t", run, &folder, load)
        );
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        cache
            .get_or_load("t", Uuid::now_v7(), &central(), load)
            .await
            .expect("load");
        assert_eq!(loads.load(Ordering::SeqCst), 2, "a new run reads again");
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = CentralCache::default();
        let run = Uuid::now_v7();
        let failed = cache
            .get_or_load("t", run, &central(), || async {
                Err::<Vec<Contact>, _>("boom")
            })
            .await;
        assert!(failed.is_err());
        let loaded = cache
            .get_or_load("t", run, &central(), || async { Ok::<_, &str>(Vec::new()) })
            .await;
        assert!(loaded.is_ok());
    }

    /// Failed before the fix: the cache kept up to 64 (tenant, run) entries, so a worker that served a few runs
    /// of one tenant held several 100,000-contact folders at once.
    #[tokio::test]
    async fn one_entry_per_tenant_a_newer_run_or_folder_replaces_the_older() {
        let cache = CentralCache::default();
        for _ in 0..5 {
            ok(&cache, "contoso", Uuid::now_v7()).await;
        }
        assert_eq!(cache.len(), 1, "older runs of a tenant are dropped");
        ok(&cache, "fabrikam", Uuid::now_v7()).await;
        assert_eq!(cache.len(), 2, "each tenant has its own entry");

        let loads = AtomicUsize::new(0);
        let run = Uuid::now_v7();
        for folder in ["a", "b", "b"] {
            cache
                .get_or_load("contoso", run, &central_in(folder), || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Vec::new())
                })
                .await
                .expect("load");
        }
        assert_eq!(loads.load(Ordering::SeqCst), 2, "another folder is read");
        assert_eq!(cache.len(), 2);
    }

    /// Failed before the fix: nothing ever emptied the cache, so a worker idle between runs kept the last run's
    /// folders for good.
    #[tokio::test]
    async fn idle_entries_are_emptied_after_the_run() {
        let cache = CentralCache::default();
        let run = Uuid::now_v7();
        ok(&cache, "contoso", run).await;
        ok(&cache, "fabrikam", run).await;
        let start = Instant::now();
        cache.evict_idle(start, IDLE);
        assert_eq!(cache.len(), 2, "a running run keeps its entry");
        cache.evict_idle(start + IDLE, IDLE);
        assert_eq!(cache.len(), 0, "idle entries are dropped");

        // The sweeper does it on its own once the run's jobs stopped asking.
        let idle = Duration::from_millis(20);
        let swept = CentralCache::with_idle(idle);
        for round in [
            "the first sweeper",
            "a sweeper started after the first ended",
        ] {
            ok(&swept, "contoso", run).await;
            emptied(&swept, idle).await;
            assert_eq!(swept.len(), 0, "{round} emptied the cache");
        }
    }

    /// Waits (bounded) until the sweeper emptied `cache`.
    async fn emptied(cache: &CentralCache, idle: Duration) {
        for _ in 0..1000 {
            if cache.is_empty() {
                return;
            }
            tokio::time::sleep(idle / 2).await;
        }
    }

    #[tokio::test]
    async fn cached_contacts_keep_what_planning_reads_only() {
        let cache = CentralCache::default();
        let contact = Contact {
            id: "c1".into(),
            change_key: Some("ck".into()),
            personal_notes: Some("SyncId=x".into()),
            last_modified: None,
            fields: Default::default(),
            categories: Vec::new(),
            sync_id_property: Some("x".into()),
            owner_property: None,
            photo_hash: None,
            photo_source: None,
            has_picture: false,
        };
        let expected = Contact {
            change_key: None,
            ..contact.clone()
        };
        let got = cache
            .get_or_load("t", Uuid::now_v7(), &central(), || async {
                Ok::<_, ()>(vec![contact])
            })
            .await
            .expect("load");
        assert_eq!(got.contacts(), [expected]);
    }
}
