//! The central folder, read once per worker per run and shared by every phase-2 job of that run.
//!
//! Phase-2 reads of the shared mailbox so grow with the number of workers, not with the number of users. Entries
//! are keyed by tenant, run and folder; only the most recent runs are kept.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use shared::message::CentralFolder;
use shared::model::Contact;
use tokio::sync::OnceCell;
use uuid::Uuid;

/// How many (tenant, run) entries are kept; older ones are dropped.
const MAX_ENTRIES: usize = 64;

type Key = (String, Uuid, Option<String>);
type Slot = Arc<OnceCell<Arc<Vec<Contact>>>>;

/// A per-process cache of central folder contents.
#[derive(Default)]
pub struct CentralCache {
    entries: Mutex<VecDeque<(Key, Slot)>>,
}

impl CentralCache {
    /// The central folder of `tenant` in `run`, loaded with `load` by the first caller; concurrent callers wait
    /// for that one load. A failed load is not cached: the next caller tries again.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        tenant: &str,
        run: Uuid,
        central: &CentralFolder,
        load: F,
    ) -> Result<Arc<Vec<Contact>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Contact>, E>>,
    {
        let key: Key = (tenant.to_ascii_lowercase(), run, central.folder_id.clone());
        let slot = self.slot(key);
        slot.get_or_try_init(|| async { load().await.map(Arc::new) })
            .await
            .cloned()
    }

    fn slot(&self, key: Key) -> Slot {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, slot)) = entries.iter().find(|(k, _)| *k == key) {
            return slot.clone();
        }
        let slot: Slot = Arc::default();
        entries.push_back((key, slot.clone()));
        while entries.len() > MAX_ENTRIES {
            entries.pop_front();
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::model::Mailbox;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn central() -> CentralFolder {
        CentralFolder {
            mailbox: Mailbox {
                id: "shared".into(),
                upn: "shared@contoso.com".into(),
            },
            folder_id: Some("folder".into()),
        }
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
}
