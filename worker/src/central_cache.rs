//! The central folder, read once per worker per run and shared by every phase-2 job of that run.
//!
//! Phase-2 reads of the shared mailbox so grow with the number of workers, not with the number of users. A central
//! folder can hold 100,000 contacts (issue 10, scenario 10), so the cache is bounded and emptied: one entry per
//! tenant (a newer run, or another folder, replaces the older entry), only what planning reads is kept, and an
//! entry no job asked for during [`IDLE`] is dropped, so a worker between runs holds no folder.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use shared::message::CentralFolder;
use shared::model::Contact;
use shared::sync::PreparedCentral;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use uuid::Uuid;

/// How long an entry stays after the last job that asked for it: a run's phase-2 jobs follow one another within
/// seconds, so an entry idle this long belongs to a run that ended here.
pub const IDLE: Duration = Duration::from_secs(120);

type Slot = Arc<OnceCell<Arc<PreparedCentral>>>;

/// One tenant's cached folder.
struct Entry {
    run: Uuid,
    folder_id: Option<String>,
    slot: Slot,
    last_used: Instant,
}

type Entries = Mutex<Vec<(String, Entry)>>;

/// A per-process cache of central folder contents: at most one entry per tenant.
pub struct CentralCache {
    entries: Arc<Entries>,
    /// Set while a sweeper task runs (one at a time).
    sweeping: Arc<Mutex<bool>>,
    /// How long an unused entry stays ([`IDLE`]).
    idle: Duration,
}

impl Default for CentralCache {
    fn default() -> Self {
        Self::with_idle(IDLE)
    }
}

impl CentralCache {
    /// A cache whose entries are dropped after `idle` without use.
    pub fn with_idle(idle: Duration) -> Self {
        Self {
            entries: Arc::default(),
            sweeping: Arc::default(),
            idle,
        }
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
        let slot = self.slot(tenant, run, central.folder_id.as_deref(), Instant::now());
        self.ensure_sweeper();
        slot.get_or_try_init(|| async {
            load().await.map(|contacts| {
                Arc::new(PreparedCentral::new(
                    contacts.into_iter().map(slim).collect(),
                ))
            })
        })
        .await
        .cloned()
    }

    /// How many tenants have an entry (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether no tenant has an entry.
    pub fn is_empty(&self) -> bool {
        lock(&self.entries).is_empty()
    }

    /// Drops the entries no job asked for since `now - idle`. Jobs still holding a folder keep it until they end.
    pub fn evict_idle(&self, now: Instant, idle: Duration) {
        evict(&self.entries, now, idle);
    }

    fn slot(&self, tenant: &str, run: Uuid, folder_id: Option<&str>, now: Instant) -> Slot {
        let tenant = tenant.to_ascii_lowercase();
        let mut entries = lock(&self.entries);
        if let Some((_, entry)) = entries.iter_mut().find(|(t, _)| *t == tenant) {
            if entry.run == run && entry.folder_id.as_deref() == folder_id {
                entry.last_used = now;
                return entry.slot.clone();
            }
            // Another run (or folder) of this tenant: the older one is over for this worker.
            *entry = Entry::new(run, folder_id, now);
            return entry.slot.clone();
        }
        let entry = Entry::new(run, folder_id, now);
        let slot = entry.slot.clone();
        entries.push((tenant, entry));
        slot
    }

    /// Starts the task that empties idle entries, unless one runs; it ends when the cache is empty or dropped.
    fn ensure_sweeper(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut sweeping = lock(&self.sweeping);
            if *sweeping {
                return;
            }
            *sweeping = true;
        }
        let entries: Weak<Entries> = Arc::downgrade(&self.entries);
        let sweeping = self.sweeping.clone();
        let idle = self.idle;
        handle.spawn(async move {
            loop {
                tokio::time::sleep(idle / 4).await;
                let Some(entries) = entries.upgrade() else {
                    return;
                };
                evict(&entries, Instant::now(), idle);
                // Checked under the entries' lock, so an entry added meanwhile sees `sweeping` still set.
                let guard = lock(&entries);
                if guard.is_empty() {
                    *lock(&sweeping) = false;
                    return;
                }
            }
        });
    }
}

impl Entry {
    fn new(run: Uuid, folder_id: Option<&str>, now: Instant) -> Self {
        Entry {
            run,
            folder_id: folder_id.map(str::to_owned),
            slot: Slot::default(),
            last_used: now,
        }
    }
}

fn evict(entries: &Entries, now: Instant, idle: Duration) {
    lock(entries).retain(|(_, e)| now.saturating_duration_since(e.last_used) < idle);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
