//! Cross-crate integration tests.

// Static checks of deploy/ and docker-compose.yml against the code (no Docker or cluster needed).
mod deploy;
// Shared set-up (broker, private topologies, graphsim estates); each test module uses part of it.
#[allow(dead_code)]
mod support;

// The operator commands (status, dlq list|show|requeue|purge) against the real broker.
mod ops;
