//! contactmirror's producer: enumerates tenants and mailboxes, hands jobs to a transport (the embedded queue or
//! RabbitMQ), and aggregates the workers' reports into the run report. The binary is a thin wrapper around it.
//!
//! Layout:
//! - [`cli`]: the command line.
//! - [`check`]: `check`, whether each tenant is ready to run and what its first run costs (reads only).
//! - [`demo`]: the whole product against an in-process graphsim.
//! - [`consent`]: `consent-url`, the admin-consent URL of a tenant's app.
//! - [`run`]: the `run` command (settings -> transport -> report -> exit status).
//! - [`prepare`]: step 1 of a tenant (credentials, shared mailbox, licensed users, central folder).
//! - [`orchestrate`]: phase 1 then phase 2 per tenant over any [`dispatch::Dispatch`].
//! - [`dispatch`]: the two transports.
//! - [`fair`]: fair tenants: each tenant's jobs handed out in turn, a bounded number out at once.
//! - [`state`]: change feeds kept between runs (one JSON file per tenant).
//! - [`lease`]: one run per tenant at a time (a broker lease or a file lock).
//! - [`ledger`]: the one decision which reports count, feeding summary, progress, status and state.
//! - [`summary`]: the run report and the exit status it implies.
//! - [`progress`]: progress bars on a terminal, plain lines otherwise.
//! - [`run_status`]: per-tenant progress of the run, published on the broker for `status`.
//! - [`html`]: the run report as a self-contained HTML page.
//! - [`history`]: every run's report kept in the state directory, and `history`.
//! - [`notify`]: a summary POSTed to a webhook after a failed (or every) run.
//! - [`ops`]: operator commands on a running fleet (`status`, `dlq list|show|requeue|purge`).
#![deny(missing_docs)]

pub mod check;
pub mod cli;
pub mod consent;
pub mod demo;
pub mod dispatch;
pub mod fair;
pub mod files;
pub mod history;
pub mod html;
pub mod lease;
pub mod ledger;
pub mod notify;
pub mod ops;
pub mod orchestrate;
pub mod prepare;
pub mod progress;
pub mod run;
pub mod run_status;
pub mod state;
pub mod summary;

/// Exit status: every mailbox of every tenant succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: the run finished but something failed (the summary says what).
pub const EXIT_FAILURES: u8 = 1;
/// Exit status: usage or configuration error; nothing was contacted or written.
pub const EXIT_USAGE: u8 = 2;
