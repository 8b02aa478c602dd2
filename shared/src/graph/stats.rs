//! Counters of what the client did, for job reports ([`ClientStats`]) and for Prometheus (the `metrics` facade,
//! a no-op unless the process installs an exporter).
//!
//! Metric names: `graph_requests_total{method,status}` (HTTP requests; `status` is `2xx`/`4xx`/`5xx`/`error`),
//! `graph_batch_items_total{method,status}`, `graph_throttled_total{tenant}`, `graph_retries_total{tenant}`,
//! `graph_retry_after_seconds_total{tenant}` (waits Graph ordered, each rounded up to a whole second),
//! `graph_retry_after_wait_seconds{tenant}` (histogram of the time requests actually spent held at a mailbox
//! blocked by a `Retry-After`; its `_sum` is the total wait), `graph_requests_in_flight{tenant}` (gauge) and
//! `graph_token_refresh_total{tenant}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// A snapshot of the client's counters since it was created.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientStats {
    /// Requests sent to Graph: HTTP requests, with a `$batch` counted as its items (the envelope not counted).
    pub requests: u64,
    /// HTTP requests by method, then status class (`2xx`, `4xx`, `5xx`, `error` for no answer); a `$batch`
    /// envelope counts once here as a `POST`.
    pub requests_by_method: BTreeMap<String, BTreeMap<String, u64>>,
    /// `$batch` items by method, then status class.
    pub batch_items_by_method: BTreeMap<String, BTreeMap<String, u64>>,
    /// 429 answers received (HTTP requests and `$batch` items).
    pub throttled: u64,
    /// Attempts repeated after a retryable failure (requests, batch items, token requests).
    pub retries: u64,
    /// Sum of the `Retry-After` waits Graph ordered, in seconds.
    pub retry_after_seconds: f64,
    /// Sum of the time requests spent held at a mailbox blocked by a `Retry-After`, in seconds.
    pub blocked_wait_seconds: f64,
    /// Access tokens fetched.
    pub token_refreshes: u64,
    /// Highest number of concurrent requests per mailbox (`tenant/mailbox`); a `$batch` holds up to the cap.
    pub peak_in_flight: BTreeMap<String, u32>,
}

/// The live counters behind [`ClientStats`].
#[derive(Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    by_method: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    batch_items: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    throttled: AtomicU64,
    retries: AtomicU64,
    retry_after_micros: AtomicU64,
    blocked_micros: AtomicU64,
    token_refreshes: AtomicU64,
}

/// Requests and 429s of one [`super::TenantClient`].
#[derive(Default)]
pub(crate) struct Tally {
    requests: AtomicU64,
    throttled: AtomicU64,
}

impl Tally {
    /// One HTTP request (or `batch_items` items) answered with `status`.
    pub fn request(&self, status: Option<u16>, batch_items: Option<u32>) {
        self.requests
            .fetch_add(batch_items.map_or(1, u64::from), Ordering::Relaxed);
        if status == Some(429) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One `$batch` item answered with `status` (the envelope was counted by [`Tally::request`]).
    pub fn batch_item(&self, status: u16) {
        if status == 429 {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (requests, throttled).
    pub fn get(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.throttled.load(Ordering::Relaxed),
        )
    }
}

/// A request on the wire, for the `graph_requests_in_flight` gauge.
pub(crate) struct InFlight {
    gauge: metrics::Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// `2xx`, `4xx`, ... for a status, `error` for no answer.
pub(crate) fn status_class(status: Option<u16>) -> String {
    match status {
        Some(status) => format!("{}xx", status / 100),
        None => "error".to_owned(),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn bump(map: &Mutex<BTreeMap<String, BTreeMap<String, u64>>>, method: &str, class: &str) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(method.to_owned())
        .or_default()
        .entry(class.to_owned())
        .or_default() += 1;
}

impl Counters {
    /// One HTTP request answered with `status` (or not answered); `items` is the item count of a `$batch`.
    pub fn request(&self, method: &str, status: Option<u16>, batch_items: Option<u32>) {
        let class = status_class(status);
        self.requests
            .fetch_add(batch_items.map_or(1, u64::from), Ordering::Relaxed);
        bump(&self.by_method, method, &class);
        metrics::counter!("graph_requests_total", "method" => method.to_owned(), "status" => class)
            .increment(1);
        if status == Some(429) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One `$batch` item answered with `status`.
    pub fn batch_item(&self, method: &str, status: u16) {
        let class = status_class(Some(status));
        bump(&self.batch_items, method, &class);
        metrics::counter!("graph_batch_items_total", "method" => method.to_owned(), "status" => class).increment(1);
        if status == 429 {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A 429 for `tenant` (the per-tenant metric; [`Counters::request`] counts the total).
    pub fn throttled_metric(&self, tenant: &str) {
        metrics::counter!("graph_throttled_total", "tenant" => tenant.to_owned()).increment(1);
    }

    /// A retry, after Graph ordered `retry_after` (if it did).
    pub fn retry(&self, tenant: &str, retry_after: Option<Duration>) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("graph_retries_total", "tenant" => tenant.to_owned()).increment(1);
        if let Some(wait) = retry_after {
            self.retry_after_micros
                .fetch_add(micros(wait), Ordering::Relaxed);
            metrics::counter!("graph_retry_after_seconds_total", "tenant" => tenant.to_owned())
                .increment(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
    }

    /// Time a request of `tenant` spent at a mailbox blocked by a `Retry-After`: what an operator pays for
    /// throttling, as opposed to what Graph asked for ([`Counters::retry`]).
    pub fn blocked(&self, tenant: &str, wait: Duration) {
        if !wait.is_zero() {
            self.blocked_micros
                .fetch_add(micros(wait), Ordering::Relaxed);
            metrics::histogram!("graph_retry_after_wait_seconds", "tenant" => tenant.to_owned())
                .record(wait.as_secs_f64());
        }
    }

    /// Counts a request of `tenant` as on the wire until the returned guard drops (also when the request's
    /// future is cancelled, so the gauge never drifts upwards).
    pub fn in_flight(&self, tenant: &str) -> InFlight {
        let gauge = metrics::gauge!("graph_requests_in_flight", "tenant" => tenant.to_owned());
        gauge.increment(1.0);
        InFlight { gauge }
    }

    /// A token fetched.
    pub fn token_refresh(&self, tenant: &str) {
        self.token_refreshes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("graph_token_refresh_total", "tenant" => tenant.to_owned()).increment(1);
    }

    /// The snapshot, with the peaks gathered by the caller.
    pub fn snapshot(&self, peak_in_flight: BTreeMap<String, u32>) -> ClientStats {
        let lock = |m: &Mutex<BTreeMap<String, BTreeMap<String, u64>>>| {
            m.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        ClientStats {
            requests: self.requests.load(Ordering::Relaxed),
            requests_by_method: lock(&self.by_method),
            batch_items_by_method: lock(&self.batch_items),
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            retry_after_seconds: Duration::from_micros(
                self.retry_after_micros.load(Ordering::Relaxed),
            )
            .as_secs_f64(),
            blocked_wait_seconds: Duration::from_micros(
                self.blocked_micros.load(Ordering::Relaxed),
            )
            .as_secs_f64(),
            token_refreshes: self.token_refreshes.load(Ordering::Relaxed),
            peak_in_flight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method_and_class() {
        let counters = Counters::default();
        counters.request("GET", Some(200), None);
        counters.request("GET", Some(429), None);
        counters.request("POST", Some(200), Some(20));
        counters.request("GET", None, None);
        counters.batch_item("POST", 429);
        counters.retry("t", Some(Duration::from_millis(1500)));
        let stats = counters.snapshot(BTreeMap::new());
        assert_eq!(stats.requests, 23);
        assert_eq!(stats.requests_by_method["GET"]["2xx"], 1);
        assert_eq!(stats.requests_by_method["GET"]["4xx"], 1);
        assert_eq!(stats.requests_by_method["GET"]["error"], 1);
        assert_eq!(stats.batch_items_by_method["POST"]["4xx"], 1);
        assert_eq!(stats.throttled, 2);
        assert_eq!(stats.retries, 1);
        assert!((stats.retry_after_seconds - 1.5).abs() < 1e-9);
        let json = serde_json::to_value(&stats).expect("serialise");
        assert_eq!(json["requests"], 23);
    }
}
