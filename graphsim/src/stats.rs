//! Request counters, peak concurrency per mailbox, 429 counts, early retries and the request log.
//!
//! Tests and benchmarks read these to check the client's behaviour (did it stay within four concurrent
//! requests per mailbox, how many writes did a run cost, how often was it throttled, did it wait out every
//! `Retry-After` it was given).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Counters for one mailbox (keyed by lower-cased UPN in [`SimStats::mailboxes`]).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MailboxStats {
    /// Requests (and batch items) that targeted the mailbox, throttled ones included.
    pub requests: u64,
    /// The same by HTTP method.
    pub by_method: BTreeMap<String, u64>,
    /// Most requests to the mailbox in progress at the same moment (all apps, throttled ones included).
    pub peak_in_flight: u32,
    /// 429 answers served for this mailbox (throttle and injected).
    pub throttled: u64,
    /// POST/PATCH/DELETE requests to the mailbox.
    pub writes: u64,
    /// Writes that changed state (created, updated or deleted something).
    pub applied_writes: u64,
    /// Requests sent while a `Retry-After` graphsim had answered for this mailbox was still running (a batch
    /// item counts as sent when its envelope arrived). A client that honours `Retry-After` sends none; each one
    /// prolongs Graph's penalty.
    pub early_retries: u64,
}

/// A snapshot of all counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// HTTP requests received (token, Graph, `$batch` envelopes; not `/_sim/`).
    pub http_requests: u64,
    /// Graph operations: plain Graph requests plus `$batch` items.
    pub graph_operations: u64,
    /// Token requests.
    pub token_requests: u64,
    /// `$batch` envelopes.
    pub batches: u64,
    /// Operations by method.
    pub by_method: BTreeMap<String, u64>,
    /// Operations by status.
    pub by_status: BTreeMap<u16, u64>,
    /// 429 answers (throttle and injected).
    pub throttled: u64,
    /// Write operations by method (POST/PATCH/DELETE), batch items included.
    pub writes: BTreeMap<String, u64>,
    /// Writes that changed state.
    pub applied_writes: u64,
    /// Injected faults served.
    pub injected_faults: u64,
    /// Early retries of all mailboxes (see [`MailboxStats::early_retries`]).
    pub early_retries: u64,
    /// How long after its `Retry-After` was answered the latest early retry was sent, in milliseconds. A few
    /// milliseconds means a request the client sent before it could read the 429; more means it ignored it.
    pub early_retry_max_lateness_ms: f64,
    /// Per mailbox (lower-cased UPN).
    pub mailboxes: BTreeMap<String, MailboxStats>,
}

impl SimStats {
    /// Total writes of all methods.
    pub fn total_writes(&self) -> u64 {
        self.writes.values().sum()
    }

    /// Counters of one mailbox by UPN (case-insensitive); zeroes if it saw no request.
    pub fn mailbox(&self, upn: &str) -> MailboxStats {
        self.mailboxes
            .get(&upn.to_lowercase())
            .cloned()
            .unwrap_or_default()
    }
}

/// One entry of the request log.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoggedRequest {
    /// Order of arrival.
    pub seq: u64,
    /// Time of the answer (RFC 3339, microseconds).
    pub at: String,
    /// Time the request (or batch item) arrived (RFC 3339, microseconds).
    pub received_at: String,
    /// HTTP method.
    pub method: String,
    /// Path and query as sent (batch items: the item url, prefixed with `/v1.0`).
    pub url: String,
    /// Status answered.
    pub status: u16,
    /// Graph error code, if any.
    pub error_code: Option<String>,
    /// Mailbox UPN (lower-cased), if the operation targeted one.
    pub mailbox: Option<String>,
    /// App id of the caller, if authenticated.
    pub app_id: Option<String>,
    /// Whether this was a `$batch` item.
    pub batch_item: bool,
    /// The client's `client-request-id`, if sent.
    pub client_request_id: Option<String>,
    /// Whether the answer was an injected fault.
    pub injected: bool,
}

#[derive(Debug, Default)]
struct Inner {
    stats: SimStats,
    in_flight: HashMap<String, u32>,
    /// Per mailbox: running `Retry-After` periods (answered at, runs out at).
    retry_periods: HashMap<String, Vec<(Instant, Instant)>>,
    log: VecDeque<LoggedRequest>,
    seq: u64,
}

/// Shared recorder.
#[derive(Debug)]
pub struct Recorder {
    inner: Mutex<Inner>,
    capacity: usize,
}

/// Marks a mailbox request in progress; dropping it ends it.
#[derive(Debug)]
pub struct InFlight {
    recorder: Arc<Recorder>,
    mailbox: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.recorder.inner.lock() {
            if let Some(n) = inner.in_flight.get_mut(&self.mailbox) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// What to record about a finished operation.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    /// Method.
    pub method: &'a str,
    /// Url as logged.
    pub url: &'a str,
    /// Status.
    pub status: u16,
    /// Error code.
    pub error_code: Option<&'a str>,
    /// Mailbox UPN (lower-cased).
    pub mailbox: Option<&'a str>,
    /// Caller.
    pub app_id: Option<&'a str>,
    /// Batch item.
    pub batch_item: bool,
    /// Client's id.
    pub client_request_id: Option<&'a str>,
    /// Injected fault.
    pub injected: bool,
    /// Write that changed state.
    pub applied: bool,
    /// Arrival time.
    pub received: chrono::DateTime<chrono::Utc>,
    /// The `Retry-After` the answer carries, if any.
    pub retry_after: Option<Duration>,
}

impl Recorder {
    /// A recorder keeping `capacity` log entries.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            capacity,
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> Option<R> {
        self.inner.lock().ok().map(|mut i| f(&mut i))
    }

    /// Counts an HTTP request of a kind: "graph", "token" or "batch".
    pub fn http(&self, kind: &str) {
        self.with(|i| {
            i.stats.http_requests += 1;
            match kind {
                "token" => i.stats.token_requests += 1,
                "batch" => i.stats.batches += 1,
                _ => {}
            }
        });
    }

    /// Marks a request to `mailbox` in progress, sent now.
    pub fn enter(self: &Arc<Self>, mailbox: &str) -> InFlight {
        self.enter_at(mailbox, Instant::now())
    }

    /// Marks a request to `mailbox`, sent by the client at `sent`, in progress; counts it as an early retry if
    /// it was sent inside a `Retry-After` period answered for the mailbox before.
    pub fn enter_at(self: &Arc<Self>, mailbox: &str, sent: Instant) -> InFlight {
        self.with(|i| {
            let lateness = i.retry_periods.get_mut(mailbox).and_then(|periods| {
                let now = Instant::now();
                periods.retain(|(_, until)| *until > now || *until > sent);
                periods
                    .iter()
                    .filter(|(issued, until)| *issued <= sent && sent < *until)
                    .map(|(issued, _)| sent.duration_since(*issued))
                    .max()
            });
            let n = i.in_flight.entry(mailbox.to_owned()).or_default();
            *n += 1;
            let now = *n;
            let m = i.stats.mailboxes.entry(mailbox.to_owned()).or_default();
            m.peak_in_flight = m.peak_in_flight.max(now);
            if let Some(late) = lateness {
                m.early_retries += 1;
                i.stats.early_retries += 1;
                let ms = late.as_secs_f64() * 1000.0;
                i.stats.early_retry_max_lateness_ms = i.stats.early_retry_max_lateness_ms.max(ms);
            }
        });
        InFlight {
            recorder: Arc::clone(self),
            mailbox: mailbox.to_owned(),
        }
    }

    /// Records a finished Graph operation.
    pub fn finish(&self, o: Outcome<'_>) {
        self.finish_at(o, Instant::now());
    }

    /// [`Recorder::finish`] with an explicit answer time (tests).
    pub fn finish_at(&self, o: Outcome<'_>, answered: Instant) {
        let capacity = self.capacity;
        self.with(|i| {
            if let (Some(mb), Some(wait)) = (o.mailbox, o.retry_after) {
                i.retry_periods
                    .entry(mb.to_owned())
                    .or_default()
                    .push((answered, answered + wait));
            }
            let s = &mut i.stats;
            s.graph_operations += 1;
            *s.by_method.entry(o.method.to_owned()).or_default() += 1;
            *s.by_status.entry(o.status).or_default() += 1;
            let write = matches!(o.method, "POST" | "PATCH" | "DELETE" | "PUT");
            if o.status == 429 {
                s.throttled += 1;
            }
            if write {
                *s.writes.entry(o.method.to_owned()).or_default() += 1;
            }
            if o.applied {
                s.applied_writes += 1;
            }
            if o.injected {
                s.injected_faults += 1;
            }
            if let Some(mb) = o.mailbox {
                let m = s.mailboxes.entry(mb.to_owned()).or_default();
                m.requests += 1;
                *m.by_method.entry(o.method.to_owned()).or_default() += 1;
                if o.status == 429 {
                    m.throttled += 1;
                }
                if write {
                    m.writes += 1;
                }
                if o.applied {
                    m.applied_writes += 1;
                }
            }
            i.seq += 1;
            if capacity > 0 {
                if i.log.len() >= capacity {
                    i.log.pop_front();
                }
                let entry = LoggedRequest {
                    seq: i.seq,
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    received_at: o
                        .received
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    method: o.method.to_owned(),
                    url: o.url.to_owned(),
                    status: o.status,
                    error_code: o.error_code.map(str::to_owned),
                    mailbox: o.mailbox.map(str::to_owned),
                    app_id: o.app_id.map(str::to_owned),
                    batch_item: o.batch_item,
                    client_request_id: o.client_request_id.map(str::to_owned),
                    injected: o.injected,
                };
                i.log.push_back(entry);
            }
        });
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> SimStats {
        self.with(|i| i.stats.clone()).unwrap_or_default()
    }

    /// Zeroes counters, empties the log and forgets running `Retry-After` periods, so the next measurement
    /// starts clean (requests in progress keep being tracked).
    pub fn reset(&self) {
        self.with(|i| {
            i.stats = SimStats::default();
            i.retry_periods.clear();
            i.log.clear();
        });
    }

    /// The request log, oldest first.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.with(|i| i.log.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(mailbox: &str, status: u16, retry_after: Option<Duration>) -> Outcome<'_> {
        Outcome {
            method: "GET",
            url: "/v1.0/users/a/contacts",
            status,
            error_code: None,
            mailbox: Some(mailbox),
            app_id: Some("app"),
            batch_item: false,
            client_request_id: None,
            injected: false,
            applied: false,
            received: chrono::Utc::now(),
            retry_after,
        }
    }

    #[test]
    fn requests_inside_a_retry_after_are_early_and_later_ones_are_not() {
        let r = Recorder::new(0);
        let t0 = Instant::now();
        drop(r.enter_at("a", t0));
        r.finish_at(outcome("a", 429, Some(Duration::from_secs(2))), t0);
        // Inside the two seconds: early, for this mailbox only.
        drop(r.enter_at("a", t0 + Duration::from_millis(1_999)));
        drop(r.enter_at("b", t0 + Duration::from_millis(10)));
        // At and after the end: on time.
        drop(r.enter_at("a", t0 + Duration::from_secs(2)));
        drop(r.enter_at("a", t0 + Duration::from_secs(5)));
        let s = r.snapshot();
        assert_eq!(s.mailbox("a").early_retries, 1);
        assert_eq!(s.mailbox("b").early_retries, 0);
        assert_eq!(s.early_retries, 1);
    }

    #[test]
    fn a_shorter_retry_after_never_shortens_a_running_one() {
        let r = Recorder::new(0);
        let t0 = Instant::now();
        r.finish_at(outcome("a", 429, Some(Duration::from_secs(10))), t0);
        r.finish_at(
            outcome("a", 429, Some(Duration::from_secs(1))),
            t0 + Duration::from_secs(1),
        );
        drop(r.enter_at("a", t0 + Duration::from_secs(5)));
        assert_eq!(r.snapshot().mailbox("a").early_retries, 1);
    }

    #[test]
    fn a_request_sent_before_the_429_was_answered_is_not_early() {
        // A batch envelope sent at t0 whose first item was throttled at t0 + 5 ms: its later items arrive inside
        // the period but were sent before it began.
        let r = Recorder::new(0);
        let t0 = Instant::now();
        r.finish_at(
            outcome("a", 429, Some(Duration::from_secs(6))),
            t0 + Duration::from_millis(5),
        );
        drop(r.enter_at("a", t0));
        assert_eq!(r.snapshot().early_retries, 0);
        drop(r.enter_at("a", t0 + Duration::from_millis(505)));
        let s = r.snapshot();
        assert_eq!(s.early_retries, 1);
        assert!((s.early_retry_max_lateness_ms - 500.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn answers_without_retry_after_set_no_period_and_reset_forgets_one() {
        let r = Recorder::new(0);
        let t0 = Instant::now();
        r.finish_at(outcome("a", 500, None), t0);
        drop(r.enter_at("a", t0 + Duration::from_millis(1)));
        assert_eq!(r.snapshot().early_retries, 0);
        r.finish_at(outcome("a", 429, Some(Duration::from_secs(60))), t0);
        r.reset();
        drop(r.enter_at("a", t0 + Duration::from_millis(2)));
        assert_eq!(r.snapshot().early_retries, 0);
    }
}
