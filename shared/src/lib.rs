//! contactmirror's library: everything a job needs, without the process around it.
//!
//! Layout:
//! - [`config`]: the `AUTOMATION_SYNCCONTACTS_*` variables and config files, validated into [`config::Settings`].
//! - [`secret`]: a string type that never prints.
//! - [`credential`]: a tenant's client secret, certificate or federated token, and the client assertion.
//! - [`model`]: the contact data the rules reason about.
//! - [`directory`]: the directory as a source (issue 11): selection, field mapping, sync ids. No I/O.
//! - [`sync`]: the pure mirroring rules (what to create, update, skip or delete). No I/O.
//! - [`graph`]: the Microsoft Graph client (token, limits, retries, paging, `$batch`).
//! - [`feed`]: change feeds kept between runs, and the pure rules for skipping what did not change.
//! - [`message`]: job and report messages exchanged over the queues.
//! - [`mq`]: RabbitMQ topology and confirmed publishing.
//! - [`run_status`]: the last run's per-tenant progress, kept on the broker for `status`.
//! - [`test_users`]: which users a `TestUserList` names, one rule for the producer and the worker.
#![deny(missing_docs)]

pub mod config;
pub mod credential;
pub mod directory;
pub mod feed;
pub mod graph;
pub mod message;
pub mod model;
pub mod mq;
pub mod run_status;
pub mod secret;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
pub mod test_users;
