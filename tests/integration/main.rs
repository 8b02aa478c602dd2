//! Cross-crate integration tests.

// Static checks of deploy/ and docker-compose.yml against the code (no Docker or cluster needed).
mod deploy;

// Shared set-up: graphsim estates, settings, RabbitMQ helpers.
mod support;

// The producer's run, embedded and on RabbitMQ, checked on graphsim's mailboxes.
mod fleet;

// Unreachable mailboxes, killed workers, a restarting broker, Graph faults; secrets never leak.
mod failures;
