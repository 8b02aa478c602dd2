//! Injected failures: random 429/5xx answers at a configured rate, scripted one-off faults, and
//! "commit then fail" (the write is applied, then a 5xx is returned) so clients' idempotency can be tested.
//!
//! Two vocabularies: real Graph codes, and Microsoft Dev Proxy's (`graphsim/graph-data/devproxy-graph-errors.json`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::config::{FaultConfig, FaultProfile, RetryAfter, ScriptedFault};
use crate::reply::{graph_error, Reply};

/// A decision to fail an operation.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The answer to send.
    pub reply: Reply,
    /// Run the operation first (writes only), then answer with `reply`.
    pub commit: bool,
}

/// Fault injection state.
#[derive(Debug)]
pub struct Faults {
    config: Mutex<FaultConfig>,
    rng: Mutex<StdRng>,
    scripted: Mutex<VecDeque<ScriptedFault>>,
    /// Dev Proxy's RetryAfterPlugin: throttle key -> time until which every call with that key gets 429.
    devproxy_blocked: Mutex<HashMap<String, Instant>>,
}

/// Dev Proxy's throttle key: the first path segment after the version (`users` for `/v1.0/users/...`).
fn devproxy_key(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .nth(1)
        .unwrap_or_default()
        .to_lowercase()
}

impl Faults {
    /// Faults per `config`.
    pub fn new(config: FaultConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self {
            config: Mutex::new(config),
            rng: Mutex::new(rng),
            scripted: Mutex::new(VecDeque::new()),
            devproxy_blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the configuration and reseeds the dice.
    pub fn set(&self, config: FaultConfig) {
        if let Ok(mut rng) = self.rng.lock() {
            *rng = StdRng::seed_from_u64(config.seed);
        }
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
        if let Ok(mut b) = self.devproxy_blocked.lock() {
            b.clear();
        }
    }

    /// Queues a one-off fault for the next matching operation.
    pub fn push(&self, fault: ScriptedFault) {
        if let Ok(mut q) = self.scripted.lock() {
            q.push_back(fault);
        }
    }

    /// Drops queued faults.
    pub fn clear_scripted(&self) {
        if let Ok(mut q) = self.scripted.lock() {
            q.clear();
        }
    }

    /// Decides whether to fail a whole `$batch` envelope. Only a fault whose `path_contains` names `$batch`
    /// applies (an item's path never does, so faults aimed at items keep reaching items): a scripted one, or the
    /// configured `commit_then_fail_rate`. With `commit` the items run first and their answers are lost, as when
    /// Graph fails after running them.
    pub fn decide_envelope(&self, method: &str, path: &str) -> Option<Fault> {
        if let Some(fault) = self.take_scripted_envelope(method, path) {
            return Some(fault);
        }
        let config = self.config.lock().ok()?.clone();
        let aimed = config
            .path_contains
            .as_ref()
            .is_some_and(|p| p.contains("$batch") && path.contains(p.as_str()));
        if !aimed || !is_write(method) || config.commit_then_fail_rate <= 0.0 {
            return None;
        }
        let mut rng = self.rng.lock().ok()?;
        if !rng.random_bool(config.commit_then_fail_rate.clamp(0.0, 1.0)) {
            return None;
        }
        let status = [500u16, 502, 503, 504][rng.random_range(0..4)];
        let reply = decorate(
            error_reply(status, config.profile, config.empty_body),
            &config,
            &mut rng,
        );
        Some(Fault {
            reply,
            commit: true,
        })
    }

    fn take_scripted_envelope(&self, method: &str, path: &str) -> Option<Fault> {
        let mut q = self.scripted.lock().ok()?;
        let pos = q.iter().position(|f| {
            f.path_contains
                .as_ref()
                .is_some_and(|p| p.contains("$batch") && path.contains(p.as_str()))
                && f.method
                    .as_ref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        let f = q.remove(pos)?;
        let mut reply = error_reply(f.status, FaultProfile::Graph, false);
        if let Some(ra) = f.retry_after {
            reply = reply.with_header("Retry-After", ra);
        }
        Some(Fault {
            reply,
            commit: f.commit,
        })
    }

    /// Decides whether to fail an operation.
    pub fn decide(&self, method: &str, path: &str) -> Option<Fault> {
        if let Some(f) = self.take_scripted(method, path) {
            let mut reply = error_reply(f.status, FaultProfile::Graph, false);
            if let Some(ra) = f.retry_after {
                reply = reply.with_header("Retry-After", ra);
            }
            return Some(Fault {
                reply,
                commit: f.commit && is_write(method),
            });
        }
        let config = self.config.lock().ok()?.clone();
        if !config.is_active() {
            return None;
        }
        if config.profile == FaultProfile::DevProxy {
            if let Some(reply) = self.devproxy_retry_after(path, &config) {
                return Some(Fault {
                    reply,
                    commit: false,
                });
            }
        }
        if config
            .path_contains
            .as_ref()
            .is_some_and(|p| !path.contains(p.as_str()))
        {
            return None;
        }
        let mut rng = self.rng.lock().ok()?;
        if is_write(method)
            && config.commit_then_fail_rate > 0.0
            && rng.random_bool(config.commit_then_fail_rate.clamp(0.0, 1.0))
        {
            let status = [500u16, 502, 503, 504][rng.random_range(0..4)];
            let reply = decorate(
                error_reply(status, config.profile, config.empty_body),
                &config,
                &mut rng,
            );
            return Some(Fault {
                reply,
                commit: true,
            });
        }
        if config.rate <= 0.0 || !rng.random_bool(config.rate.clamp(0.0, 1.0)) {
            return None;
        }
        let allowed: Vec<u16> = config
            .statuses
            .iter()
            .copied()
            .filter(|s| {
                config.profile != FaultProfile::DevProxy
                    || *s != 507
                    || matches!(method, "POST" | "PUT" | "DELETE")
            })
            .collect();
        if allowed.is_empty() {
            return None;
        }
        let status = allowed[rng.random_range(0..allowed.len())];
        let reply = decorate(
            error_reply(status, config.profile, config.empty_body),
            &config,
            &mut rng,
        );
        if config.profile == FaultProfile::DevProxy && status == 429 {
            self.devproxy_block(path, &config);
        }
        Some(Fault {
            reply,
            commit: false,
        })
    }

    fn devproxy_seconds(config: &FaultConfig) -> f64 {
        match config.retry_after {
            RetryAfter::Integer(n) => f64::from(n),
            RetryAfter::Fractional(f) | RetryAfter::Mixed(f) => f,
            RetryAfter::None => 0.0,
        }
    }

    fn devproxy_block(&self, path: &str, config: &FaultConfig) {
        let secs = Self::devproxy_seconds(config);
        if let (Ok(mut b), Ok(d)) = (
            self.devproxy_blocked.lock(),
            Duration::try_from_secs_f64(secs),
        ) {
            b.insert(devproxy_key(path), Instant::now() + d);
        }
    }

    /// A call before Retry-After elapsed for its key: 429 again, and the wait starts over.
    fn devproxy_retry_after(&self, path: &str, config: &FaultConfig) -> Option<Reply> {
        let key = devproxy_key(path);
        let blocked = self.devproxy_blocked.lock().ok()?.get(&key).copied()?;
        if Instant::now() >= blocked {
            return None;
        }
        self.devproxy_block(path, config);
        let secs = Self::devproxy_seconds(config).ceil().max(1.0) as u64;
        let date = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S").to_string();
        let message = format!(
            "Calling {path} before waiting for the Retry-After period. Request will be throttled. Throttling on {key}."
        );
        let reply = Reply::json(
            429,
            json!({"error": {"code": "Too Many Requests", "innerError": {"date": date, "request-id": uuid::Uuid::new_v4().to_string()}, "message": message}}),
        )
        .with_header("Cache-Control", "no-store")
        .with_header("Retry-After", secs.to_string());
        Some(reply)
    }

    fn take_scripted(&self, method: &str, path: &str) -> Option<ScriptedFault> {
        let mut q = self.scripted.lock().ok()?;
        let pos = q.iter().position(|f| {
            f.path_contains
                .as_ref()
                .is_none_or(|p| path.contains(p.as_str()))
                && f.method
                    .as_ref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        })?;
        q.remove(pos)
    }
}

fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PATCH" | "PUT" | "DELETE")
}

fn decorate(mut reply: Reply, config: &FaultConfig, rng: &mut StdRng) -> Reply {
    if reply.status != 429 && reply.status != 503 {
        return reply;
    }
    let value = match config.retry_after {
        RetryAfter::None => None,
        RetryAfter::Integer(n) => Some(n.to_string()),
        RetryAfter::Fractional(f) => Some(format!("{f:.3}")),
        RetryAfter::Mixed(f) => match rng.random_range(0..3) {
            0 => None,
            1 => Some(format!("{}", f.ceil().max(1.0) as u64)),
            _ => Some(format!("{:.3}", f * rng.random_range(0.5..1.5))),
        },
    };
    if let Some(v) = value {
        reply = reply.with_header("Retry-After", v);
    }
    reply
}

/// The answer for an injected status.
pub fn error_reply(status: u16, profile: FaultProfile, empty_body: bool) -> Reply {
    if profile == FaultProfile::DevProxy {
        let phrase = match status {
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            507 => "Insufficient Storage",
            _ => "Error",
        };
        let date = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S").to_string();
        let mut r = Reply::json(
            status,
            json!({"error": {"code": phrase, "innerError": {"date": date, "request-id": uuid::Uuid::new_v4().to_string()},
                "message": "Some error was generated by the proxy."}}),
        )
        .with_header("Cache-Control", "no-store");
        r.headers.push(("x-devproxy".into(), "1".into()));
        return r;
    }
    if empty_body && status >= 500 {
        return Reply::empty(status);
    }
    let (code, message) = match status {
        429 => ("TooManyRequests", "Please retry again later."),
        500 => ("generalException", "General exception while processing."),
        502 => ("BadGateway", "The server received an invalid response from an upstream server."),
        503 => ("serviceNotAvailable", "The service is temporarily unavailable. Please retry after the delay in the Retry-After header."),
        504 => ("gatewayTimeout", "The gateway did not receive a timely response from the upstream server."),
        507 => ("ErrorQuotaExceeded", "The mailbox quota has been exceeded."),
        _ => ("UnknownError", "An injected error occurred."),
    };
    graph_error(status, code, message)
}
