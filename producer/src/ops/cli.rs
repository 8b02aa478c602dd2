//! Options of `status` and `dlq`. Like every option of the producer, each can come from the environment, except
//! `--yes`: a confirmation left behind in an environment would make every later purge unconfirmed.

use clap::{Args, Subcommand};
use shared::message::Phase;

/// Where the fleet's broker is.
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (`amqp://user:password@host:5672/%2f`). The password is never printed.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: String,
    /// Prefix of every queue and exchange name.
    #[arg(long, env = "CONTACTMIRROR_QUEUE_PREFIX", default_value = "cm")]
    pub queue_prefix: String,
}

/// Options of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Management API base URL; default: `http://<amqp host>:15672/` with the AMQP credentials.
    #[arg(long, env = "CONTACTMIRROR_MANAGEMENT_URL", hide_env_values = true)]
    pub management_url: Option<String>,
    /// Use AMQP only, even where the management plugin is enabled.
    #[arg(long, env = "CONTACTMIRROR_NO_MANAGEMENT")]
    pub no_management: bool,
    /// Print JSON instead of a table.
    #[arg(long, env = "CONTACTMIRROR_JSON")]
    pub json: bool,
}

/// Options of `dlq`.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered jobs, one line each (the queue is left exactly as it was).
    List(ListArgs),
    /// Show dead-lettered jobs in full: every header that explains the failure, and the job itself.
    Show(ListArgs),
    /// Move matching dead letters back to their phase's job queue as attempt 1. A job of a cleanup, or of a run with
    /// --rebuild-central, stays, and a run's lifted deletion cap is dropped, unless --replay-confirmations.
    Requeue(RequeueArgs),
    /// Delete matching dead letters for good. Refuses without --yes.
    Purge(PurgeArgs),
}

/// Which dead letters a command acts on. Filters combine with AND.
#[derive(Debug, Clone, Default, Args)]
pub struct SelectArgs {
    /// Only this tenant (as configured, case-insensitive).
    #[arg(long, env = "CONTACTMIRROR_DLQ_TENANT")]
    pub tenant: Option<String>,
    /// Only this phase's dead-letter queue (phase1 or phase2).
    #[arg(long, env = "CONTACTMIRROR_DLQ_PHASE", value_parser = parse_phase)]
    pub phase: Option<Phase>,
    /// Only this reason: a worker's (no_mailbox, access_denied, attempts_exhausted, ...) or the broker's
    /// (delivery_limit, rejected, expired, maxlen).
    #[arg(long, env = "CONTACTMIRROR_DLQ_REASON")]
    pub reason: Option<String>,
    /// Only this job id.
    #[arg(long, env = "CONTACTMIRROR_DLQ_JOB_ID")]
    pub job_id: Option<String>,
}

/// Options of `dlq list` and `dlq show`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub select: SelectArgs,
    /// At most this many dead letters.
    #[arg(long, env = "CONTACTMIRROR_DLQ_LIMIT", default_value_t = 100)]
    pub limit: usize,
    /// Print JSON instead of text.
    #[arg(long, env = "CONTACTMIRROR_JSON")]
    pub json: bool,
}

/// Options of `dlq requeue` and `dlq purge`.
#[derive(Debug, Clone, Args)]
pub struct ChangeArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub select: SelectArgs,
    /// At most this many dead letters; default: every match.
    #[arg(long, env = "CONTACTMIRROR_DLQ_LIMIT")]
    pub limit: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long, env = "CONTACTMIRROR_JSON")]
    pub json: bool,
}

/// Options of `dlq requeue`.
#[derive(Debug, Clone, Args)]
pub struct RequeueArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Requeue jobs carrying their run's one-time confirmation too (a cleanup's, a run's with --rebuild-central),
    /// and every job as it was (a lifted deletion cap kept lifted). Deliberately not settable from the environment.
    #[arg(long)]
    pub replay_confirmations: bool,
}

/// Options of `dlq purge`.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Which dead letters.
    #[command(flatten)]
    pub change: ChangeArgs,
    /// Really delete them. Deliberately not settable from the environment.
    #[arg(long)]
    pub yes: bool,
}

/// Parses `phase1` / `phase2`.
pub fn parse_phase(text: &str) -> Result<Phase, String> {
    Phase::ALL
        .into_iter()
        .find(|phase| phase.to_string().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("unknown phase {text:?} (expected phase1 or phase2)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_by_name_only() {
        assert_eq!(parse_phase("phase2"), Ok(Phase::Phase2));
        assert_eq!(parse_phase("PHASE1"), Ok(Phase::Phase1));
        assert!(parse_phase("3").is_err());
    }
}
