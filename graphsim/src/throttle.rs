//! The Outlook throttle model: a sliding request window and a concurrency cap per (app id, mailbox).
//!
//! Every request counts, throttled ones included, as Graph keeps logging usage while a client is throttled.
//! `/users` requests use a per-(app id, tenant) key. Other keys are never affected. Above both, one app may make
//! at most 130,000 requests per 10 s across every tenant and mailbox (Graph's global limit); graphsim keeps the
//! largest count any app reached in that window, so a benchmark can show a whole fleet stayed under it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;
use crate::reply::{errors, Reply};

/// What a request is throttled by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    /// App (client) id.
    pub app: String,
    /// Mailbox user id, or `tenant:<guid>` for directory calls.
    pub scope: String,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Arrival times inside the window, oldest first.
    arrivals: VecDeque<Instant>,
    /// Requests admitted and not yet finished.
    in_flight: u32,
}

/// Shared throttle state.
#[derive(Debug)]
pub struct Throttle {
    config: Mutex<ThrottleConfig>,
    buckets: Mutex<HashMap<ThrottleKey, Bucket>>,
    /// The upload budget: bytes per window (Graph: 150 MB per 5 minutes per app and mailbox).
    upload_budget: Mutex<(u64, Duration)>,
    /// Bytes admitted per key inside the upload window, oldest first.
    uploads: Mutex<HashMap<ThrottleKey, VecDeque<(Instant, u64)>>>,
    /// Uploads refused with 429 because the budget was spent.
    upload_refusals: std::sync::atomic::AtomicU64,
    /// Graph's global limit per app: requests per window, across all tenants and mailboxes.
    app_limit: Mutex<(u32, Duration)>,
    /// Arrivals per app id inside the app window, oldest first.
    app_arrivals: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// The most requests one app made inside one app window.
    app_peak: std::sync::atomic::AtomicU64,
    /// Requests refused with 429 because their app was over its global limit.
    app_refusals: std::sync::atomic::AtomicU64,
}

/// Graph's global limit per app across all tenants: 130,000 requests per 10 s.
pub const DEFAULT_APP_LIMIT: (u32, Duration) = (130_000, Duration::from_secs(10));

/// Graph's upload budget per (app, mailbox): 150 MB per 5 minutes (taken as 150 * 2^20 bytes).
pub const DEFAULT_UPLOAD_BUDGET: (u64, Duration) = (150 * 1024 * 1024, Duration::from_secs(300));

/// Releases an admitted request's in-flight slot when dropped.
#[derive(Debug)]
pub struct Permit {
    throttle: Arc<Throttle>,
    key: ThrottleKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut buckets) = self.throttle.buckets.lock() {
            if let Some(b) = buckets.get_mut(&self.key) {
                b.in_flight = b.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Throttle {
    /// A throttle with the given limits.
    pub fn new(config: ThrottleConfig) -> Arc<Self> {
        Arc::new(Self {
            config: Mutex::new(config),
            buckets: Mutex::new(HashMap::new()),
            upload_budget: Mutex::new(DEFAULT_UPLOAD_BUDGET),
            uploads: Mutex::new(HashMap::new()),
            upload_refusals: std::sync::atomic::AtomicU64::new(0),
            app_limit: Mutex::new(DEFAULT_APP_LIMIT),
            app_arrivals: Mutex::new(HashMap::new()),
            app_peak: std::sync::atomic::AtomicU64::new(0),
            app_refusals: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Changes Graph's global limit per app (requests per window).
    pub fn set_app_limit(&self, requests: u32, window: Duration) {
        if let Ok(mut l) = self.app_limit.lock() {
            *l = (requests, window);
        }
    }

    /// The most requests one app made inside one app window so far.
    pub fn app_peak(&self) -> u64 {
        self.app_peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many requests were refused because their app was over its global limit.
    pub fn app_refusals(&self) -> u64 {
        self.app_refusals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a request against its app's global limit, or answers 429 (a refused request counts too, as
    /// Graph keeps logging usage while it throttles).
    fn admit_app(&self, app: &str) -> Result<(), Reply> {
        let (limit, window) = self
            .app_limit
            .lock()
            .map(|l| *l)
            .unwrap_or(DEFAULT_APP_LIMIT);
        let now = Instant::now();
        let mut apps = self
            .app_arrivals
            .lock()
            .map_err(|_| errors::mailbox_concurrency())?;
        let log = apps.entry(app.to_owned()).or_default();
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            log.pop_front();
        }
        log.push_back(now);
        let count = log.len();
        self.app_peak
            .fetch_max(count as u64, std::sync::atomic::Ordering::SeqCst);
        let limit = limit as usize;
        if count > limit {
            self.app_refusals
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let pivot = log[count - limit.max(1)];
            return Err(errors::app_limit(ceil_secs(
                (pivot + window).saturating_duration_since(now),
            )));
        }
        Ok(())
    }

    /// Changes the upload budget (bytes per window).
    pub fn set_upload_budget(&self, bytes: u64, window: Duration) {
        if let Ok(mut b) = self.upload_budget.lock() {
            *b = (bytes, window);
        }
    }

    /// How many uploads were refused because the budget was spent.
    pub fn upload_refusals(&self) -> u64 {
        self.upload_refusals
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts `bytes` of a request body against `key`'s upload budget, or answers 429 with the wait until they
    /// fit. A refused body is not counted (it was not taken in).
    pub fn admit_upload(&self, key: &ThrottleKey, bytes: u64) -> Result<(), Reply> {
        if bytes == 0 {
            return Ok(());
        }
        let (budget, window) = self
            .upload_budget
            .lock()
            .map(|b| *b)
            .unwrap_or(DEFAULT_UPLOAD_BUDGET);
        let now = Instant::now();
        let mut uploads = self
            .uploads
            .lock()
            .map_err(|_| errors::mailbox_concurrency())?;
        let log = uploads.entry(key.clone()).or_default();
        while log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            log.pop_front();
        }
        let used: u64 = log.iter().map(|(_, n)| n).sum();
        if used.saturating_add(bytes) <= budget {
            log.push_back((now, bytes));
            return Ok(());
        }
        self.upload_refusals
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Room comes when enough of the oldest uploads have left the window.
        let needed = used.saturating_add(bytes).saturating_sub(budget);
        let mut freed = 0;
        let mut wait = window;
        for (at, n) in log.iter() {
            freed += n;
            if freed >= needed {
                wait = (*at + window).saturating_duration_since(now);
                break;
            }
        }
        Err(errors::upload_window(ceil_secs(wait)))
    }

    /// Changes the limits (counts already recorded stay).
    pub fn set_config(&self, config: ThrottleConfig) {
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
    }

    /// Forgets all recorded requests.
    pub fn clear(&self) {
        if let Ok(mut b) = self.buckets.lock() {
            b.retain(|_, bucket| bucket.in_flight > 0);
            for bucket in b.values_mut() {
                bucket.arrivals.clear();
            }
        }
        if let Ok(mut u) = self.uploads.lock() {
            u.clear();
        }
        if let Ok(mut a) = self.app_arrivals.lock() {
            a.clear();
        }
    }

    /// Counts a request against `key` and admits it, or answers 429.
    pub fn admit(self: &Arc<Self>, key: ThrottleKey) -> Result<Permit, Reply> {
        self.admit_app(&key.app)?;
        let config = self.config.lock().map(|c| *c).unwrap_or_default();
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| errors::mailbox_concurrency())?;
        let bucket = buckets.entry(key.clone()).or_default();
        while bucket
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= config.window)
        {
            bucket.arrivals.pop_front();
        }
        bucket.arrivals.push_back(now);
        let limit = config.requests_per_window as usize;
        let count = bucket.arrivals.len();
        if count > limit {
            // With a zero limit every request is throttled for a whole window.
            // The next request is admitted once the arrival at index count - limit has left the window.
            let pivot = bucket.arrivals[count - limit.max(1)];
            let wait = (pivot + config.window).saturating_duration_since(now);
            return Err(errors::request_window(ceil_secs(wait)));
        }
        if bucket.in_flight >= config.max_in_flight {
            return Err(errors::mailbox_concurrency());
        }
        bucket.in_flight += 1;
        Ok(Permit {
            throttle: Arc::clone(self),
            key,
        })
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: &str) -> ThrottleKey {
        ThrottleKey {
            app: "app".into(),
            scope: scope.into(),
        }
    }

    #[test]
    fn one_app_is_capped_across_all_its_mailboxes_and_tenants() {
        let t = Throttle::new(ThrottleConfig::unlimited());
        t.set_app_limit(3, Duration::from_secs(10));
        for scope in ["a", "b", "tenant:x"] {
            drop(t.admit(key(scope)).unwrap());
        }
        let err = t.admit(key("c")).unwrap_err();
        assert_eq!(err.status, 429);
        assert_eq!(t.app_refusals(), 1);
        assert_eq!(t.app_peak(), 4, "the refused request counts too");
        let other_app = ThrottleKey {
            app: "other".into(),
            scope: "a".into(),
        };
        assert!(t.admit(other_app).is_ok(), "another app has its own limit");
    }

    #[test]
    fn concurrency_cap_is_per_key() {
        let t = Throttle::new(ThrottleConfig {
            max_in_flight: 2,
            ..ThrottleConfig::default()
        });
        let a = t.admit(key("a")).unwrap();
        let _b = t.admit(key("a")).unwrap();
        let err = t.admit(key("a")).unwrap_err();
        assert_eq!(err.status, 429);
        assert!(err
            .headers
            .iter()
            .any(|(k, v)| k == "Retry-After" && v == "1"));
        assert!(t.admit(key("other")).is_ok());
        drop(a);
        assert!(t.admit(key("a")).is_ok());
    }

    #[test]
    fn window_overflow_counts_throttled_requests() {
        let t = Throttle::new(ThrottleConfig {
            requests_per_window: 2,
            window: Duration::from_secs(30),
            max_in_flight: 10,
        });
        drop(t.admit(key("a")).unwrap());
        drop(t.admit(key("a")).unwrap());
        let err = t.admit(key("a")).unwrap_err();
        let retry: u64 = err
            .headers
            .iter()
            .find(|(k, _)| k == "Retry-After")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!((29..=30).contains(&retry), "{retry}");
        assert!(t.admit(key("b")).is_ok());
    }

    #[test]
    fn a_zero_limit_throttles_everything_without_panicking() {
        let t = Throttle::new(ThrottleConfig {
            requests_per_window: 0,
            window: Duration::from_secs(5),
            max_in_flight: 4,
        });
        let err = t.admit(key("a")).unwrap_err();
        assert_eq!(err.status, 429);
        assert!(t.admit(key("a")).is_err());
    }
}
