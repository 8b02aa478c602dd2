//! `status`: every queue of the topology with its ready, unacknowledged and consumer counts, then the last run's
//! progress per tenant (see [`super::last_run`]).
//!
//! Ready and consumer counts come from AMQP passive declares: live, and available on every broker. Unacknowledged
//! (and total) counts come from the management API when it answers; when it does not, they show as `-` and the
//! table says why, rather than failing a command an operator runs precisely when things are broken.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::{Context, Result};
use lapin::Connection;
use serde::Serialize;
use shared::message::{Lane, Phase};
use shared::mq::{self, Topology, RETRY_LEVELS};

use super::cli::StatusArgs;
use super::last_run::{self, LastRun};
use super::management::{ManagedQueue, Management};
use super::table::{self, Align};
use crate::EXIT_OK;

/// One queue's numbers. `None` means "not known", never zero.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueStatus {
    /// Name.
    pub name: String,
    /// What the queue is for (`jobs phase1`, `retry 5s`, `dead letters phase2`, `reports`).
    pub role: String,
    /// False when the queue is not declared (wrong prefix, or nothing has declared the topology yet).
    pub exists: bool,
    /// Messages ready for delivery.
    pub ready: Option<u64>,
    /// Messages delivered and not yet acknowledged (management API only).
    pub unacked: Option<u64>,
    /// Consumers.
    pub consumers: Option<u64>,
}

/// Whether the management API contributed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum ManagementUse {
    /// Its unacked counts are in the table.
    Used {
        /// Base URL (no credentials).
        url: String,
    },
    /// It was asked and did not answer usefully.
    Unavailable {
        /// Base URL (no credentials).
        url: String,
        /// Why.
        error: String,
    },
    /// `--no-management`.
    Disabled,
}

/// The whole status.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The queue prefix.
    pub prefix: String,
    /// Every queue, in topology order (jobs, retries, dead letters, reports, last run).
    pub queues: Vec<QueueStatus>,
    /// Where unacked counts came from.
    pub management: ManagementUse,
    /// The last run's progress per tenant, as its producer last published it.
    pub last_run: LastRun,
}

/// Runs `status`.
pub async fn command(args: StatusArgs) -> Result<ExitCode> {
    let management = if args.no_management {
        None
    } else {
        Some(Management::new(
            &args.broker.amqp_url,
            args.management_url.as_deref(),
        )?)
    };
    let (connection, topology) = super::connect(&args.broker).await?;
    let status = collect(&connection, &topology, management.as_ref()).await;
    super::disconnect(connection).await;
    let status = status?;
    let text = if args.json {
        let json = serde_json::to_string_pretty(&status).context("serialising the status")?;
        format!("{json}\n")
    } else {
        render(&status)
    };
    super::print(&text)?;
    Ok(ExitCode::from(EXIT_OK))
}

/// Reads every queue of `topology`, with unacked counts from `management` when it answers.
pub async fn collect(
    connection: &Connection,
    topology: &Topology,
    management: Option<&Management>,
) -> Result<Status> {
    let (managed, management_use) = match management {
        None => (HashMap::new(), ManagementUse::Disabled),
        Some(api) => match api.queues().await {
            Ok(queues) => (
                queues,
                ManagementUse::Used {
                    url: api.url().to_string(),
                },
            ),
            Err(error) => (
                HashMap::new(),
                ManagementUse::Unavailable {
                    url: api.url().to_string(),
                    error: format!("{error:#}"),
                },
            ),
        },
    };
    let mut queues = Vec::new();
    for (name, role) in roles(topology) {
        let mut status = passive(connection, &name).await?;
        status.role = role;
        status.unacked = managed
            .get(&name)
            .and_then(|q: &ManagedQueue| q.messages_unacknowledged);
        queues.push(status);
    }
    // After the counts, so the runs queue's own line shows the snapshot as ready, not held by this peek.
    let last_run = last_run::peek(connection, topology).await?;
    Ok(Status {
        prefix: topology.prefix().to_owned(),
        queues,
        management: management_use,
        last_run,
    })
}

/// Every queue of the topology with its role, in [`Topology::all_queues`] order.
fn roles(topology: &Topology) -> Vec<(String, String)> {
    let mut roles: HashMap<String, String> = HashMap::new();
    for phase in Phase::ALL {
        for lane in Lane::all() {
            let role = match lane.number() {
                0 => format!("jobs {phase}"),
                n => format!("jobs {phase} lane {n}"),
            };
            roles.insert(topology.lane_queue(phase, lane), role);
        }
        roles.insert(
            topology.dead_letter_queue(phase),
            format!("dead letters {phase}"),
        );
    }
    for level in RETRY_LEVELS {
        let name = topology.retry_queue(level);
        let label = name.rsplit('.').next().unwrap_or_default().to_owned();
        roles.insert(name, format!("retry {label}"));
    }
    roles.insert(topology.reports_queue(), "reports".to_owned());
    roles.insert(topology.runs_queue(), "last run".to_owned());
    topology
        .all_queues()
        .into_iter()
        .map(|name| {
            let role = roles.remove(&name).unwrap_or_default();
            (name, role)
        })
        .collect()
}

/// One queue's live counts by passive declare, on a channel of its own: a missing queue closes the channel.
async fn passive(connection: &Connection, name: &str) -> Result<QueueStatus> {
    let channel = mq::open_channel(connection, "queue counts").await?;
    let status = match mq::queue_counts(&channel, name).await {
        Ok(counts) => {
            let _ = mq::close_channel(&channel, "status read").await;
            QueueStatus {
                name: name.to_owned(),
                role: String::new(),
                exists: true,
                ready: Some(u64::from(counts.ready)),
                unacked: None,
                consumers: Some(u64::from(counts.consumers)),
            }
        }
        // A lost connection is an error; otherwise the broker answered NOT_FOUND and closed the channel.
        Err(error) if !connection.status().connected() => {
            return Err(error).with_context(|| format!("reading queue {name}: connection lost"));
        }
        // A broker that stopped answering says nothing about the queue.
        Err(error @ mq::MqError::TimedOut { .. }) => return Err(error.into()),
        Err(_) => QueueStatus {
            name: name.to_owned(),
            role: String::new(),
            exists: false,
            ready: None,
            unacked: None,
            consumers: None,
        },
    };
    Ok(status)
}

/// The status as a table, with a line on where the unacked counts came from, then the last run.
pub fn render(status: &Status) -> String {
    let rows: Vec<Vec<String>> = status
        .queues
        .iter()
        .map(|q| {
            vec![
                q.name.clone(),
                q.role.clone(),
                if q.exists {
                    table::count(q.ready)
                } else {
                    "missing".to_owned()
                },
                table::count(q.unacked),
                table::count(q.consumers),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            ("QUEUE", Align::Left),
            ("ROLE", Align::Left),
            ("READY", Align::Right),
            ("UNACKED", Align::Right),
            ("CONSUMERS", Align::Right),
        ],
        &rows,
    );
    match &status.management {
        ManagementUse::Used { url } => {
            out.push_str(&format!(
                "unacked counts from the management API at {url}\n"
            ));
        }
        ManagementUse::Unavailable { url, error } => out.push_str(&format!(
            "unacked counts unknown (-): management API at {url} unavailable: {error}\n"
        )),
        ManagementUse::Disabled => {
            out.push_str("unacked counts unknown (-): management API not used (--no-management)\n");
        }
    }
    let missing = status.queues.iter().filter(|q| !q.exists).count();
    if missing > 0 {
        out.push_str(&format!(
            "{missing} queue(s) missing: check --queue-prefix ({}), or run the producer once to declare the topology\n",
            status.prefix
        ));
    }
    out.push('\n');
    out.push_str(&last_run::render(&status.last_run));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_gets_a_role_in_topology_order() {
        let topology = Topology::new("t");
        let roles = roles(&topology);
        assert_eq!(
            roles
                .iter()
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>(),
            topology.all_queues()
        );
        assert!(roles.iter().all(|(_, role)| !role.is_empty()), "{roles:?}");
        assert!(roles.contains(&("t.retry.2m".to_owned(), "retry 2m".to_owned())));
        assert!(roles.contains(&("t.phase2.dead".to_owned(), "dead letters phase2".to_owned())));
        assert!(roles.contains(&("t.runs".to_owned(), "last run".to_owned())));
    }

    #[test]
    fn unknown_numbers_and_missing_queues_are_shown_as_such() {
        let status = Status {
            prefix: "t".into(),
            queues: vec![
                QueueStatus {
                    name: "t.phase1".into(),
                    role: "jobs phase1".into(),
                    exists: true,
                    ready: Some(4),
                    unacked: None,
                    consumers: Some(2),
                },
                QueueStatus {
                    name: "t.reports".into(),
                    role: "reports".into(),
                    exists: false,
                    ready: None,
                    unacked: None,
                    consumers: None,
                },
            ],
            management: ManagementUse::Unavailable {
                url: "http://127.0.0.1:15672/".into(),
                error: "connection refused".into(),
            },
            last_run: LastRun::None,
        };
        let text = render(&status);
        assert!(
            text.contains("t.phase1   jobs phase1        4        -          2"),
            "{text}"
        );
        assert!(text.contains("missing"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("1 queue(s) missing"), "{text}");
        assert!(
            text.ends_with("\nno run recorded on this broker\n"),
            "the last run comes under the queue table: {text}"
        );
    }
}
