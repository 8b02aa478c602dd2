//! The worker's Prometheus metrics: their names, help texts, and the one place a job's outcome is counted.
//!
//! Recording goes through the `metrics` facade, a no-op until [`crate::health::install_recorder`] installs the
//! exporter; so the embedded queue and the AMQP consumer can both record without caring whether anyone scrapes.
//!
//! | metric | type | labels | recorded in |
//! | --- | --- | --- | --- |
//! | `jobs_total` | counter | `phase`, `outcome` (`succeeded`, `retrying`, `failed`, `malformed`, `cancelled`) | [`record_job`] |
//! | `job_duration_seconds` | histogram | `phase`, `outcome` | [`record_job`] |
//! | `amqp_reconnects_total` | counter | | [`crate::consumer`] |
//! | `jobs_in_flight` | gauge | | [`crate::in_flight`] (attempts in progress; never above `--concurrency` + `--spare-slots`) |
//! | `graph_requests_total` | counter | `method`, `status` (class) | `shared::graph` |
//! | `graph_batch_items_total` | counter | `method`, `status` (class) | `shared::graph` |
//! | `graph_throttled_total` | counter | `tenant` | `shared::graph` (every 429) |
//! | `graph_retries_total` | counter | `tenant` | `shared::graph` |
//! | `graph_retry_after_seconds_total` | counter | `tenant` | `shared::graph` (waits Graph ordered) |
//! | `graph_retry_after_wait_seconds` | histogram | `tenant` | `shared::graph` (time held at a blocked mailbox) |
//! | `graph_requests_in_flight` | gauge | `tenant` | `shared::graph` |
//! | `graph_token_refresh_total` | counter | `tenant` | `shared::graph` |

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use shared::message::Phase;

use crate::disposition::Step;

/// Jobs finished, by phase and outcome.
pub const JOBS_TOTAL: &str = "jobs_total";
/// Wall time of one attempt, by phase and outcome.
pub const JOB_DURATION_SECONDS: &str = "job_duration_seconds";
/// Broker sessions lost and re-established.
pub const AMQP_RECONNECTS_TOTAL: &str = "amqp_reconnects_total";
/// Job attempts in progress.
pub const JOBS_IN_FLIGHT: &str = "jobs_in_flight";

/// Histogram buckets in seconds: sub-second Graph round trips up to phase-1 jobs of large tenants, which read
/// every mailbox and may wait out several `Retry-After`s (an hour is the top bucket before `+Inf`).
pub const BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
    3600.0,
];

/// Registers help texts, and makes the counters that are often zero (reconnects) appear at 0 from the first
/// scrape, so dashboards and alerts see the series before the first event rather than "no data".
pub fn describe() {
    describe_counter!(JOBS_TOTAL, "Jobs finished, by phase and outcome.");
    describe_histogram!(
        JOB_DURATION_SECONDS,
        Unit::Seconds,
        "Wall time of one job attempt, by phase and outcome."
    );
    describe_gauge!(
        JOBS_IN_FLIGHT,
        "Job attempts in progress (a worker never runs more than --concurrency + --spare-slots at once)."
    );
    describe_counter!(
        AMQP_RECONNECTS_TOTAL,
        "Broker sessions lost and re-established."
    );
    describe_counter!(
        "graph_requests_total",
        "HTTP requests sent to Microsoft Graph, by method and status class."
    );
    describe_counter!(
        "graph_batch_items_total",
        "$batch items answered by Microsoft Graph, by method and status class."
    );
    describe_counter!(
        "graph_throttled_total",
        "HTTP 429 answers from Microsoft Graph, per tenant."
    );
    describe_counter!(
        "graph_retries_total",
        "Graph requests repeated after a retryable failure, per tenant."
    );
    describe_counter!(
        "graph_retry_after_seconds_total",
        Unit::Seconds,
        "Retry-After waits ordered by Microsoft Graph (each rounded up to a second), per tenant."
    );
    describe_histogram!(
        "graph_retry_after_wait_seconds",
        Unit::Seconds,
        "Time requests were held at a mailbox blocked by a Retry-After, per tenant."
    );
    describe_gauge!(
        "graph_requests_in_flight",
        "Graph requests on the wire right now, per tenant."
    );
    describe_counter!(
        "graph_token_refresh_total",
        "Access tokens fetched, per tenant."
    );
    metrics::counter!(AMQP_RECONNECTS_TOTAL).absolute(0);
}

/// The `outcome` label of a job whose attempt ended in `step`.
pub fn outcome_label(step: &Step) -> &'static str {
    match step {
        Step::Ack => "succeeded",
        Step::Retry { .. } => "retrying",
        Step::DeadLetter { .. } => "failed",
        Step::HandBack => "cancelled",
    }
}

/// Counts one finished attempt of a `phase` job and its wall time.
pub fn record_job(phase: Phase, outcome: &'static str, elapsed: Duration) {
    let phase = phase.to_string();
    metrics::counter!(JOBS_TOTAL, "phase" => phase.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!(JOB_DURATION_SECONDS, "phase" => phase, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}
