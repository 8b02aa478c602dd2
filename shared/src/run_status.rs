//! The progress of the last run, as the producer publishes it to `<prefix>.runs` and `status` reads it back.
//!
//! Nothing else remembers a run once its producer exits (reports are consumed, jobs acked), and an operator who
//! comes back to a stuck fleet needs to know which tenants got how far. So the producer keeps one snapshot on the
//! broker: counts and states only, never free text, so no secret or error message can travel in it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of the snapshot schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The AMQP `type` property of a snapshot message.
pub const MESSAGE_TYPE: &str = "contactmirror.run-status.v1";

/// Where one run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// The run id (also on every job, report and the run report).
    pub run_id: Uuid,
    /// "broker" (the only transport that publishes snapshots) or "embedded".
    pub mode: String,
    /// Whether the run writes nothing.
    pub dry_run: bool,
    /// When the producer started the run.
    pub started_at: DateTime<Utc>,
    /// When the producer last published this snapshot: it republishes while it waits, so an old value on an
    /// unfinished run means the producer is gone.
    pub updated_at: DateTime<Utc>,
    /// The producer has every final report (or gave up on the missing ones).
    pub finished: bool,
    /// Per tenant, in configuration order.
    pub tenants: Vec<TenantStatus>,
}

/// Where one tenant of the run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The tenant as configured.
    pub tenant_id: String,
    /// Licensed users enumerated (0 when preparation failed).
    pub users: u64,
    /// The tenant's phase-1 job.
    pub phase1: Phase1State,
    /// The tenant's phase-2 jobs (queued once phase 1 succeeded).
    pub phase2: Phase2Progress,
    /// Distinct mailboxes with a failure in this run (either phase), as the run report counts them.
    pub failed_mailboxes: u64,
    /// Jobs a worker dead-lettered (final report `failed`); `dlq list --tenant` shows them.
    pub dead_lettered: u64,
}

/// The state of a tenant's single phase-1 job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase1State {
    /// Preparation failed (credentials, shared mailbox, user list): no job was queued. The run report says why.
    NotStarted,
    /// Queued, no report yet.
    Queued,
    /// Attempted at least once and scheduled for a retry.
    Running,
    /// Done; phase 2 was queued.
    Succeeded,
    /// Dead-lettered, or no final report came before the idle timeout; phase 2 was not queued.
    Failed,
}

impl Phase1State {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase1State::NotStarted => "not_started",
            Phase1State::Queued => "queued",
            Phase1State::Running => "running",
            Phase1State::Succeeded => "succeeded",
            Phase1State::Failed => "failed",
        }
    }
}

/// A tenant's phase-2 jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase2Progress {
    /// Jobs queued.
    pub total: u64,
    /// Jobs with a final outcome, failures included.
    pub done: u64,
    /// Of those, jobs whose mailbox failed (dead-lettered, writes refused, or no report).
    pub failed: u64,
}

/// A snapshot that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunStatusError {
    /// Not valid JSON for a snapshot.
    #[error("malformed run status: {0}")]
    Malformed(String),
    /// Written by a build with another schema.
    #[error("unsupported run status schema version {found} (this build reads {SCHEMA_VERSION})")]
    UnsupportedSchema {
        /// The version found.
        found: u32,
    },
}

impl RunStatus {
    /// Serialises the snapshot for the wire.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a snapshot from the wire, refusing other schema versions. The version is read first, so a snapshot
    /// of another build says so instead of failing on a field it renamed.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RunStatusError> {
        #[derive(Deserialize)]
        struct Versioned {
            schema: u32,
        }
        let malformed = |e: serde_json::Error| RunStatusError::Malformed(e.to_string());
        let Versioned { schema } = serde_json::from_slice(bytes).map_err(malformed)?;
        if schema != SCHEMA_VERSION {
            return Err(RunStatusError::UnsupportedSchema { found: schema });
        }
        serde_json::from_slice(bytes).map_err(malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunStatus {
        RunStatus {
            schema: SCHEMA_VERSION,
            run_id: Uuid::now_v7(),
            mode: "broker".into(),
            dry_run: false,
            started_at: Utc::now(),
            updated_at: Utc::now(),
            finished: false,
            tenants: vec![TenantStatus {
                tenant_id: "contoso.onmicrosoft.com".into(),
                users: 12,
                phase1: Phase1State::Succeeded,
                phase2: Phase2Progress {
                    total: 12,
                    done: 5,
                    failed: 1,
                },
                failed_mailboxes: 1,
                dead_lettered: 1,
            }],
        }
    }

    #[test]
    fn round_trips_in_camel_case() {
        let status = sample();
        let bytes = status.to_json();
        let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(value["tenants"][0]["failedMailboxes"], 1);
        assert_eq!(value["tenants"][0]["phase1"], "succeeded");
        assert!(value.get("runId").is_some(), "{value}");
        assert_eq!(RunStatus::from_json(&bytes), Ok(status));
    }

    #[test]
    fn other_schemas_and_junk_are_refused() {
        let mut value = serde_json::to_value(sample()).expect("value");
        value["schema"] = serde_json::json!(2);
        let bytes = serde_json::to_vec(&value).expect("bytes");
        assert_eq!(
            RunStatus::from_json(&bytes),
            Err(RunStatusError::UnsupportedSchema { found: 2 })
        );
        assert_eq!(
            RunStatus::from_json(br#"{"schema": 3, "renamed": true}"#),
            Err(RunStatusError::UnsupportedSchema { found: 3 }),
            "the version is checked before the fields"
        );
        assert!(matches!(
            RunStatus::from_json(b"{not json"),
            Err(RunStatusError::Malformed(_))
        ));
    }

    #[test]
    fn state_names_match_the_wire() {
        for state in [
            Phase1State::NotStarted,
            Phase1State::Queued,
            Phase1State::Running,
            Phase1State::Succeeded,
            Phase1State::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(state).expect("value"),
                serde_json::json!(state.as_str())
            );
        }
    }
}
