//! What a run reads once per worker and shares with every job of that run (the central folder, the directory),
//! bounded and emptied: one entry per tenant (a newer run, or another variant such as another central folder,
//! replaces the older entry), and an entry no job asked for during [`IDLE`] is dropped, so a worker between runs
//! holds nothing. A central folder can hold 100,000 contacts (issue 10, scenario 10); one mechanism keeps every
//! such read within those bounds.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;
use uuid::Uuid;

/// How long an entry stays after the last job that asked for it: a run's phase-2 jobs follow one another within
/// seconds, so an entry idle this long belongs to a run that ended here.
pub const IDLE: Duration = Duration::from_secs(120);

type Slot<V> = Arc<OnceCell<Arc<V>>>;

/// One tenant's cached value.
struct Entry<V> {
    run: Uuid,
    variant: Option<String>,
    slot: Slot<V>,
    last_used: Instant,
}

type Entries<V> = Mutex<Vec<(String, Entry<V>)>>;

/// A per-process cache with at most one entry per tenant.
pub struct RunCache<V> {
    entries: Arc<Entries<V>>,
    /// Set while a sweeper task runs (one at a time).
    sweeping: Arc<Mutex<bool>>,
    /// How long an unused entry stays ([`IDLE`]).
    idle: Duration,
}

impl<V> Default for RunCache<V> {
    fn default() -> Self {
        Self::with_idle(IDLE)
    }
}

impl<V> RunCache<V> {
    /// A cache whose entries are dropped after `idle` without use.
    pub fn with_idle(idle: Duration) -> Self {
        Self {
            entries: Arc::default(),
            sweeping: Arc::default(),
            idle,
        }
    }

    /// How many tenants have an entry (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether no tenant has an entry.
    pub fn is_empty(&self) -> bool {
        lock(&self.entries).is_empty()
    }

    /// Drops the entries no job asked for since `now - idle`. Jobs still holding a value keep it until they end.
    pub fn evict_idle(&self, now: Instant, idle: Duration) {
        evict(&self.entries, now, idle);
    }

    fn slot(&self, tenant: &str, run: Uuid, variant: Option<&str>, now: Instant) -> Slot<V> {
        let tenant = tenant.to_ascii_lowercase();
        let mut entries = lock(&self.entries);
        if let Some((_, entry)) = entries.iter_mut().find(|(t, _)| *t == tenant) {
            if entry.run == run && entry.variant.as_deref() == variant {
                entry.last_used = now;
                return entry.slot.clone();
            }
            // Another run (or variant) of this tenant: the older one is over for this worker.
            *entry = Entry::new(run, variant, now);
            return entry.slot.clone();
        }
        let entry = Entry::new(run, variant, now);
        let slot = entry.slot.clone();
        entries.push((tenant, entry));
        slot
    }
}

impl<V: Send + Sync + 'static> RunCache<V> {
    /// The value of `tenant` in `run` (and `variant`), loaded with `load` by the first caller; concurrent callers
    /// wait for that one load. A failed load is not cached: the next caller tries again.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        tenant: &str,
        run: Uuid,
        variant: Option<&str>,
        load: F,
    ) -> Result<Arc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = self.slot(tenant, run, variant, Instant::now());
        self.ensure_sweeper();
        slot.get_or_try_init(|| async { load().await.map(Arc::new) })
            .await
            .cloned()
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
        let entries: Weak<Entries<V>> = Arc::downgrade(&self.entries);
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

impl<V> Entry<V> {
    fn new(run: Uuid, variant: Option<&str>, now: Instant) -> Self {
        Entry {
            run,
            variant: variant.map(str::to_owned),
            slot: Slot::default(),
            last_used: now,
        }
    }
}

fn evict<V>(entries: &Entries<V>, now: Instant, idle: Duration) {
    lock(entries).retain(|(_, e)| now.saturating_duration_since(e.last_used) < idle);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
