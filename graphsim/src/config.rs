//! Run-time knobs of the simulator: throttle limits, token lifetime, fault injection and latency.
//!
//! Kept apart from the server so tests can build a configuration without starting anything, and so the
//! `/_sim/` control surface and the Rust API share one vocabulary.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything a run of the simulator can be tuned with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The Outlook per-(app, mailbox) throttle model.
    pub throttle: ThrottleConfig,
    /// `expires_in` of issued tokens and their real validity (default 3599 s).
    pub token_lifetime: Duration,
    /// Injected failures (default: none).
    pub faults: FaultConfig,
    /// Latency added to every Graph operation, inside the throttle's in-flight window (default 0).
    pub latency: Duration,
    /// Largest accepted request body in bytes; larger bodies get 413 (default 4 MiB, Graph's limit).
    pub max_body_bytes: usize,
    /// Entries kept in the request log (oldest dropped first; default 100,000).
    pub request_log_capacity: usize,
    /// Unordered `$batch` items run at the same time (default 4, as Graph dispatches them to Outlook today;
    /// 20 reproduces the pre-2023 behaviour where items 5+ for one mailbox hit MailboxConcurrency).
    pub batch_parallelism: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            throttle: ThrottleConfig::default(),
            token_lifetime: Duration::from_secs(3599),
            faults: FaultConfig::default(),
            latency: Duration::ZERO,
            max_body_bytes: 4 * 1024 * 1024,
            request_log_capacity: 100_000,
            batch_parallelism: 4,
        }
    }
}

/// Limits of the Outlook throttle model, applied per (app id, mailbox) and per (app id, tenant) for `/users`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleConfig {
    /// Requests admitted per sliding window (default 10,000). Throttled requests count too.
    pub requests_per_window: u32,
    /// Length of the sliding window (default 600 s).
    #[serde(with = "duration_secs")]
    pub window: Duration,
    /// Concurrent requests allowed per key (default 4); the next one gets 429 MailboxConcurrency.
    pub max_in_flight: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            requests_per_window: 10_000,
            window: Duration::from_secs(600),
            max_in_flight: 4,
        }
    }
}

impl ThrottleConfig {
    /// No throttling at all (for tests that measure something else).
    pub fn unlimited() -> Self {
        Self {
            requests_per_window: u32::MAX,
            window: Duration::from_secs(1),
            max_in_flight: u32::MAX,
        }
    }
}

/// How injected 429/503 answers carry `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "seconds")]
pub enum RetryAfter {
    /// No `Retry-After` header.
    None,
    /// Whole seconds, e.g. `Retry-After: 2`.
    Integer(u32),
    /// Fractional seconds, e.g. `Retry-After: 0.25` (Graph's generic sample shows `2.128`).
    Fractional(f64),
    /// Chosen at random per fault among none / integer / fractional of about this size.
    Mixed(f64),
}

/// Which failure vocabulary injected errors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum FaultProfile {
    /// Real Graph codes (`TooManyRequests`, `serviceNotAvailable`, ...).
    #[default]
    Graph,
    /// Microsoft Dev Proxy's GraphRandomErrorPlugin: spaced reason phrases as codes, 507 for writes,
    /// `Retry-After: 5` on 429 (see `graphsim/graph-data/devproxy-graph-errors.json`).
    DevProxy,
}

/// Injected failures, decided per Graph operation (every HTTP request and every `$batch` item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultConfig {
    /// Probability (0..=1) that an operation is answered with an injected error instead of being run.
    pub rate: f64,
    /// Statuses to choose from (default 429, 500, 502, 503, 504).
    pub statuses: Vec<u16>,
    /// `Retry-After` on injected 429 and 503 answers.
    pub retry_after: RetryAfter,
    /// Probability (0..=1) that a write (POST/PATCH/DELETE) is applied and then answered with a 5xx.
    pub commit_then_fail_rate: f64,
    /// Injected 5xx answers have an empty body.
    pub empty_body: bool,
    /// Error vocabulary.
    pub profile: FaultProfile,
    /// Only operations whose path contains this text are eligible (e.g. `/contacts`).
    pub path_contains: Option<String>,
    /// Seed of the fault dice, for reproducible runs.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            rate: 0.0,
            statuses: vec![429, 500, 502, 503, 504],
            retry_after: RetryAfter::Integer(1),
            commit_then_fail_rate: 0.0,
            empty_body: false,
            profile: FaultProfile::Graph,
            path_contains: None,
            seed: 1,
        }
    }
}

impl FaultConfig {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Dev Proxy's GraphRandomErrorPlugin defaults: 50 % of requests fail with 429/500/502/503/504 (+507 for
    /// POST/PUT/DELETE), 429 with `Retry-After: 5`. `rate` overrides the 50 %.
    pub fn devproxy(rate: f64) -> Self {
        Self {
            rate,
            statuses: vec![429, 500, 502, 503, 504, 507],
            retry_after: RetryAfter::Integer(5),
            profile: FaultProfile::DevProxy,
            ..Self::default()
        }
    }

    /// Whether anything is injected at all.
    pub fn is_active(&self) -> bool {
        self.rate > 0.0 || self.commit_then_fail_rate > 0.0
    }
}

/// One failure to inject into the next matching operation, for deterministic tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptedFault {
    /// Status to answer with.
    pub status: u16,
    /// Raw `Retry-After` header value, if any (e.g. "1" or "0.5").
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Apply the write first, then answer with `status` ("commit then fail").
    #[serde(default)]
    pub commit: bool,
    /// Only an operation whose path contains this text matches (any operation when absent). Text naming
    /// `$batch` aims the fault at a whole `$batch` envelope instead of an item.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Only an operation with this method matches (any method when absent).
    #[serde(default)]
    pub method: Option<String>,
}

/// Serde helper: a `Duration` as (possibly fractional) seconds.
pub mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes seconds as a float.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// Reads seconds from a non-negative finite number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
