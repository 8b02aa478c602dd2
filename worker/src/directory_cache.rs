//! The tenant's selected directory persons, read once per worker per run and shared by every phase-2 job of
//! that run (issue 11): directory reads grow with the number of workers, never with the number of mailboxes.
//! Bounded and emptied like the central folder ([`RunCache`]). A failed load is not cached.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use shared::directory::DirectoryPerson;
use shared::feed::Generation;
use shared::sync::photo::SourcePhoto;
use shared::sync::SyncId;
use uuid::Uuid;

use crate::run_cache::RunCache;

/// The persons a tenant's `Directory` settings select, and their generation (computed once, not per job): what a
/// mailbox brought in line with them reports, so the next run can tell whether the directory changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// The persons, ordered by object id.
    pub persons: Vec<DirectoryPerson>,
    /// [`shared::directory::persons_generation`] of `persons` (with their photos' hashes when `Photos` is on).
    pub generation: Generation,
    /// The users' photos by their copies' sync id (`Photos` on; empty otherwise), bytes kept for the run.
    pub photos: BTreeMap<SyncId, LoadedPhoto>,
}

/// A directory user's photo: what the decision needs and the bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPhoto {
    /// Hash and size.
    pub source: SourcePhoto,
    /// The bytes (shared by every job of the run that sends them).
    pub bytes: Arc<Vec<u8>>,
}

impl Selected {
    /// The persons with their generation (no photos).
    pub fn new(persons: Vec<DirectoryPerson>) -> Self {
        let generation = shared::directory::persons_generation(&persons);
        Self {
            persons,
            generation,
            photos: BTreeMap::new(),
        }
    }

    /// The persons and their photos (`Photos` on), with the generation the producer computes for them too.
    pub fn with_photos(persons: Vec<DirectoryPerson>, photos: BTreeMap<SyncId, Vec<u8>>) -> Self {
        let photos: BTreeMap<SyncId, LoadedPhoto> = photos
            .into_iter()
            .map(|(id, bytes)| {
                let photo = LoadedPhoto {
                    source: SourcePhoto::of(&bytes),
                    bytes: Arc::new(bytes),
                };
                (id, photo)
            })
            .collect();
        let hashes = photos
            .iter()
            .map(|(id, p)| (id.clone(), p.source.hash.clone()))
            .collect();
        let generation = shared::directory::with_photos(
            shared::directory::persons_generation(&persons),
            &hashes,
        );
        Self {
            persons,
            generation,
            photos,
        }
    }
}

/// A per-process cache of the persons each tenant's `Directory` settings select: at most one entry per tenant.
#[derive(Default)]
pub struct DirectoryCache(RunCache<Selected>);

impl DirectoryCache {
    /// The persons of `tenant` in `run`, loaded with `load` by the first caller; concurrent callers wait for that
    /// one load.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        tenant: &str,
        run: Uuid,
        load: F,
    ) -> Result<Arc<Selected>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Selected, E>>,
    {
        self.0.get_or_load(tenant, run, None, load).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn reads_once_per_tenant_and_run_and_never_keeps_a_failure() {
        let cache = DirectoryCache::default();
        let loads = AtomicUsize::new(0);
        let run = Uuid::now_v7();
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, ()>(Selected::new(Vec::new()))
        };
        let (a, b) = tokio::join!(
            cache.get_or_load("T", run, load),
            cache.get_or_load("t", run, load)
        );
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        cache
            .get_or_load("t", Uuid::now_v7(), load)
            .await
            .expect("load");
        assert_eq!(loads.load(Ordering::SeqCst), 2, "a new run reads again");
        let other = Uuid::now_v7();
        assert!(cache
            .get_or_load("t", other, || async { Err::<Selected, _>("403") })
            .await
            .is_err());
        cache
            .get_or_load("t", other, load)
            .await
            .expect("tried again");
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }
}
