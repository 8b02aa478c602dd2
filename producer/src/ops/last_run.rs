//! The last run's per-tenant progress for `status`, read from the runs queue without consuming it.
//!
//! A peek is a `basic.get` without auto-ack followed by a nack with requeue; should the command die in between,
//! the broker requeues the unacknowledged message when the channel goes, so the snapshot is never lost. AMQP
//! only: it works where the management plugin is off.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use lapin::options::{BasicGetOptions, BasicNackOptions};
use lapin::Connection;
use serde::Serialize;
use shared::mq::{self, MqError, Topology};
use shared::run_status::RunStatus;

use super::table::{self, Align};

/// More snapshots than this in the queue are not expected (it holds one); the newest of the first ones wins.
const MAX_PEEK: usize = 8;

/// What the runs queue says about the last run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum LastRun {
    /// A snapshot, and how old it was when read.
    Recorded {
        /// The snapshot.
        #[serde(flatten)]
        run: RunStatus,
        /// Seconds between the producer's last publish and this read (0 when the clocks disagree).
        #[serde(rename = "updatedSecsAgo")]
        updated_secs_ago: u64,
    },
    /// No producer has published one on this broker and prefix (or the queue is not declared).
    None,
    /// A message is there but this build cannot read it (another version's schema, or junk).
    Unreadable {
        /// Why.
        error: String,
    },
}

/// Reads the newest snapshot of `topology`'s runs queue and leaves the queue as it was.
pub async fn peek(connection: &Connection, topology: &Topology) -> Result<LastRun> {
    let mut bodies = get_all(connection, &topology.runs_queue()).await?;
    if bodies.is_empty() {
        // Another `status` may hold it for the milliseconds of its own peek.
        tokio::time::sleep(Duration::from_millis(100)).await;
        bodies = get_all(connection, &topology.runs_queue()).await?;
    }
    Ok(newest(&bodies, Utc::now()))
}

/// Takes up to [`MAX_PEEK`] messages unacknowledged, then hands them all back in one nack.
async fn get_all(connection: &Connection, queue: &str) -> Result<Vec<Vec<u8>>> {
    let channel = mq::open_channel(connection, "last run").await?;
    let mut bodies = Vec::new();
    let mut last_tag = None;
    while bodies.len() < MAX_PEEK {
        let get = async {
            channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(mq::amqp(format!("reading {queue}")))
        };
        match mq::bounded(format!("reading {queue}"), get).await {
            Ok(Some(message)) => {
                last_tag = Some(message.delivery.delivery_tag);
                bodies.push(message.delivery.data);
            }
            Ok(None) => break,
            Err(error) if !connection.status().connected() => {
                return Err(error).with_context(|| format!("reading {queue}: connection lost"));
            }
            // A broker that stopped answering says nothing about the queue.
            Err(error @ MqError::TimedOut { .. }) => return Err(error.into()),
            // The queue does not exist (the broker closed the channel): nothing was recorded.
            Err(_) => return Ok(Vec::new()),
        }
    }
    if let Some(tag) = last_tag {
        let what = format!("handing the last run back to {queue}");
        let nack = async {
            channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
                .map_err(mq::amqp(what.clone()))
        };
        mq::bounded(what.clone(), nack).await?;
    }
    // Closing also requeues anything still unacknowledged.
    let _ = mq::close_channel(&channel, "last run read").await;
    Ok(bodies)
}

/// The newest readable snapshot of `bodies`; an unreadable message only matters when nothing else is there.
fn newest(bodies: &[Vec<u8>], now: DateTime<Utc>) -> LastRun {
    let mut error = None;
    let mut best: Option<RunStatus> = None;
    for body in bodies {
        match RunStatus::from_json(body) {
            Ok(run) => {
                if best.as_ref().is_none_or(|b| run.updated_at >= b.updated_at) {
                    best = Some(run);
                }
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    match (best, error) {
        (Some(run), _) => {
            let updated_secs_ago = u64::try_from((now - run.updated_at).num_seconds()).unwrap_or(0);
            LastRun::Recorded {
                run,
                updated_secs_ago,
            }
        }
        (None, Some(error)) => LastRun::Unreadable { error },
        (None, None) => LastRun::None,
    }
}

/// The last run as a heading line and a per-tenant table.
pub fn render(last: &LastRun) -> String {
    let (run, ago) = match last {
        LastRun::None => return "no run recorded on this broker\n".to_owned(),
        LastRun::Unreadable { error } => {
            return format!("last run: snapshot unreadable ({error})\n");
        }
        LastRun::Recorded {
            run,
            updated_secs_ago,
        } => (run, *updated_secs_ago),
    };
    let mut out = format!(
        "last run {} ({}{}) started {}, {}, updated {} ago\n",
        run.run_id,
        run.mode,
        if run.dry_run { ", dry run" } else { "" },
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        if run.finished {
            "finished"
        } else {
            "in progress"
        },
        duration(ago)
    );
    let rows: Vec<Vec<String>> = run
        .tenants
        .iter()
        .map(|t| {
            let phase2 = if t.phase2.total == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}", t.phase2.done, t.phase2.total)
            };
            vec![
                t.tenant_id.clone(),
                t.users.to_string(),
                t.phase1.as_str().to_owned(),
                phase2,
                t.phase2.failed.to_string(),
                t.failed_mailboxes.to_string(),
                t.dead_lettered.to_string(),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &[
            ("TENANT", Align::Left),
            ("USERS", Align::Right),
            ("PHASE1", Align::Left),
            ("PHASE2 DONE", Align::Right),
            ("PHASE2 FAILED", Align::Right),
            ("FAILED MAILBOXES", Align::Right),
            ("DEAD-LETTERED", Align::Right),
        ],
        &rows,
    ));
    if !run.finished && ago > 2 * crate::run_status::HEARTBEAT.as_secs() {
        out.push_str(
            "the producer has not updated this run for a while: it probably stopped before the end\n",
        );
    }
    out
}

/// `42s`, `3m 05s`, `2h 10m`, `3d 4h`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use shared::run_status::{Phase1State, Phase2Progress, TenantStatus, SCHEMA_VERSION};
    use uuid::Uuid;

    use super::*;

    fn run(finished: bool, updated_at: DateTime<Utc>) -> RunStatus {
        let tenant = |id: &str, phase1, phase2, failed, dead| TenantStatus {
            tenant_id: id.into(),
            users: 10,
            phase1,
            phase2,
            failed_mailboxes: failed,
            dead_lettered: dead,
        };
        RunStatus {
            schema: SCHEMA_VERSION,
            run_id: Uuid::nil(),
            mode: "broker".into(),
            dry_run: false,
            started_at: DateTime::parse_from_rfc3339("2025-03-01T08:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
            updated_at,
            finished,
            tenants: vec![
                tenant(
                    "contoso.onmicrosoft.com",
                    Phase1State::Succeeded,
                    Phase2Progress {
                        total: 10,
                        done: 7,
                        failed: 1,
                    },
                    2,
                    1,
                ),
                tenant(
                    "fabrikam.onmicrosoft.com",
                    Phase1State::Queued,
                    Phase2Progress::default(),
                    0,
                    0,
                ),
            ],
        }
    }

    #[test]
    fn the_table_shows_each_tenants_progress_under_a_heading() {
        let last = LastRun::Recorded {
            run: run(false, Utc::now()),
            updated_secs_ago: 185,
        };
        let text = render(&last);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "last run 00000000-0000-0000-0000-000000000000 (broker) started 2025-03-01 08:00:00 UTC, in progress, updated 3m 05s ago",
        );
        let cells: Vec<Vec<&str>> = lines[1..]
            .iter()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            cells[1],
            [
                "contoso.onmicrosoft.com",
                "10",
                "succeeded",
                "7/10",
                "1",
                "2",
                "1"
            ]
        );
        assert_eq!(
            cells[2],
            [
                "fabrikam.onmicrosoft.com",
                "10",
                "queued",
                "-",
                "0",
                "0",
                "0"
            ]
        );
        assert!(
            text.contains("probably stopped"),
            "an unfinished run not updated for minutes is flagged: {text}"
        );

        let fresh = LastRun::Recorded {
            run: run(true, Utc::now()),
            updated_secs_ago: 4,
        };
        let text = render(&fresh);
        assert!(text.contains(", finished, updated 4s ago"), "{text}");
        assert!(!text.contains("probably stopped"), "{text}");
        assert_eq!(render(&LastRun::None), "no run recorded on this broker\n");
    }

    #[test]
    fn the_newest_readable_snapshot_wins() {
        let now = Utc::now();
        let old = run(false, now - chrono::Duration::seconds(50));
        let new = run(true, now - chrono::Duration::seconds(10));
        let bodies = vec![old.to_json(), b"junk".to_vec(), new.to_json()];
        assert_eq!(
            newest(&bodies, now),
            LastRun::Recorded {
                run: new.clone(),
                updated_secs_ago: 10
            }
        );
        assert_eq!(newest(&[], now), LastRun::None);
        assert!(matches!(
            newest(&[b"junk".to_vec()], now),
            LastRun::Unreadable { .. }
        ));
        let json = serde_json::to_value(LastRun::Recorded {
            run: new,
            updated_secs_ago: 10,
        })
        .expect("json");
        assert_eq!(json["state"], "recorded");
        assert_eq!(json["updatedSecsAgo"], 10);
        assert_eq!(json["tenants"][0]["phase2"]["done"], 7);
        assert_eq!(
            serde_json::to_value(LastRun::None).expect("json"),
            serde_json::json!({ "state": "none" })
        );
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m 01s");
        assert_eq!(duration(7260), "2h 01m");
        assert_eq!(duration(90_000), "1d 1h");
    }
}
