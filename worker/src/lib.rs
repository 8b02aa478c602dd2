//! contactmirror's worker library: the job runner every mode shares, the AMQP consumer, and the embedded queue.
//!
//! Layout:
//! - [`job`]: one job from read to write ([`job::JobRunner`]); no queue code.
//! - [`disposition`]: the pure retry/dead-letter rules ([`disposition::RetryPolicy`]).
//! - [`delivery`]: one delivery from job to ack, written once for the broker and the embedded queue.
//! - [`trust`]: a job is checked against the worker's own configuration before it runs.
//! - [`central_cache`]: the central folder read once per worker per run.
//! - [`leases`]: broker leases across the fleet: at most 4 readers of a shared mailbox, one writer per mailbox.
//! - [`consumer`]: the RabbitMQ worker ([`consumer::Worker`]).
//! - [`embedded`]: the same jobs in one process, no broker ([`embedded::EmbeddedQueue`]).
//! - [`in_flight`]: attempts in progress, counted where they run (the `--concurrency` promise, checked).
//! - [`planning_budget`]: how many contacts a worker plans against at once (bounded memory).
//! - [`health`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`heap`]: the allocator kept close to what the worker holds (bounded memory).
//! - [`metrics`]: the Prometheus metric names and where each is recorded.
#![deny(missing_docs)]

pub mod central_cache;
pub mod central_photos;
pub mod consumer;
pub mod delivery;
pub mod directory_cache;
pub mod disposition;
pub mod embedded;
pub mod fleet_size;
pub mod health;
pub mod heap;
pub mod in_flight;
pub mod job;
pub mod leases;
pub mod metrics;
pub mod overlap;
pub mod planning_budget;
pub mod run_cache;
pub mod trust;
pub mod turns;
