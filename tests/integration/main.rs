//! Cross-crate integration tests.

// Static checks of deploy/ and docker-compose.yml against the code (no Docker or cluster needed).
mod deploy;

// Shared set-up: graphsim estates, settings, RabbitMQ workers. Not every test file uses every helper.
#[allow(dead_code)]
mod support;

// /metrics, /healthz, /readyz and JSON log spans of a worker running real jobs.
mod observability;

// The HTML run report, rendered by headless Chromium.
mod report_html;

// The producer's run, embedded and on RabbitMQ, checked on graphsim's mailboxes.
mod fleet;

// Graph's app-wide ceiling held by the whole fleet: each worker process keeps its share.
mod app_budget;

// The shared mailbox's 4 in flight held by the whole fleet: one worker process at a time reads it (broker lease).
mod central_budget;

// Copies sharing a sync id reduced to one; stamped own contacts published, never deleted (issue 10, rules).
mod duplicates;

// Overlapped phases (embedded): copies sent as phase 1 confirms each person, mailboxes as an ordered run's.
mod overlap;

// Runs from kept change feeds: cheap when nothing changed, the same result as full reads when something did.
mod incremental;

// The directory's users feed kept between runs: quiet re-runs cost a request per mailbox; changes arrive.
mod directory_delta;

// Unreachable mailboxes, killed workers, a restarting broker, Graph faults; secrets never leak.
mod failures;

// The operator commands (status, dlq list|show|requeue|purge) against the real broker.
mod ops;

// Poisoned job -> dead letter -> dlq list -> fix -> dlq requeue -> a worker completes it.
mod dlq_replay;

// Two producers at once: per-run report queues and per-tenant leases.
mod concurrent_runs;

// Fair tenants: a large tenant's jobs never hold the small tenants' behind them (issue 13).
mod fair;

// A job the broker can never take fails at once, naming the job.
mod publish_errors;

// The central folder deleted or renamed: the tenant stops and says how to rebuild.
mod central_folder;

// A job's message back in the queue while its attempt writes, a broken publish channel, forged jobs, metrics ports.
mod redelivery;

// A broker connection that goes silent: every wait on it is bounded, the producer reconnects and goes on.
mod silent_broker;

// A worker never runs more than --concurrency jobs at once, across a lost connection and a consumer timeout.
mod concurrency;

// A dry run's report stays bounded however many mailboxes would be written (issue 10, scenario 7).
mod dry_run;

// Issue 11: the directory as a source of the phase-2 jobs (directory-only tenants, both sources, leavers).
mod directory;

// Issue 11: another tenant's directory (FromTenants), and the selection by groups and UserFilter.
mod directory_sources;

// Issue 11: `cleanup`, TargetFolder moves and `--allow-mass-delete`.
mod cleanup;

// `check`: a ready tenant, and a missing role, an unreachable shared mailbox, blocked mailboxes named with fixes.
mod check;

// Run history in the state directory (`history`) and notifications after a run (`--notify-url`).
mod history_notify;

// Issue 12: one invalid tenant fails alone, the dry-run rule, UpdateExisting, not_applicable, DLQ retention, demo.
mod isolation;

// TestUserList entries by mail or alias: what the producer selects, the worker accepts; shared mails select nobody.
mod test_users;

// Issue 12: certificate tenants in one run; each certificate mistake fails only its tenant.
mod credentials;

// Issue 14: what travels: the privacy default of phase 1 (`CentralFields`) and the field policy (`Fields`).
mod field_rules;

// Issue 14: directory users' photos on every copy, sent only when changed, within the upload budget.
mod photos;
