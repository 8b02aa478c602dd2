//! Cross-crate integration tests.

// Static checks of deploy/ and docker-compose.yml against the code (no Docker or cluster needed).
mod deploy;
