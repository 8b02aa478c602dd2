//! `dlq list|show|requeue|purge`: what failed for good, why, and a safe way to replay or drop it.
//!
//! All four select dead letters the same way ([`Filter`]) and walk the queues the same way ([`scan`]), so what
//! `list` shows is exactly what `requeue` or `purge` with the same options acts on.

use std::process::ExitCode;

use anyhow::{Context, Result};
use lapin::Connection;
use serde::Serialize;
use shared::message::Job;
use shared::mq::{Publisher, Topology};

use super::cli::{DlqArgs, DlqCommand, SelectArgs};
use super::dead_letter::{DeadLetter, Filter};
pub use super::scan::Confirmations;
use super::scan::{self, Action, Scan};
use super::table::{self, Align};
use crate::{EXIT_OK, EXIT_USAGE};

/// The widest error text `list` prints (`show` prints it whole).
const ERROR_COLUMN: usize = 60;

/// Runs a `dlq` subcommand.
pub async fn command(args: DlqArgs) -> Result<ExitCode> {
    if let DlqCommand::Purge(purge) = &args.command {
        if !purge.yes {
            eprintln!("{}", purge_refusal());
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    }
    let (connection, topology) = super::connect(&args.broker).await?;
    let output = execute(&connection, &topology, &args.command).await;
    super::disconnect(connection).await;
    super::print(&output?)?;
    Ok(ExitCode::from(EXIT_OK))
}

/// What `dlq purge` says without `--yes`.
pub fn purge_refusal() -> String {
    "refusing to purge without --yes: purged dead letters are gone for good. Check what matches with \
     `dlq list` and the same options first."
        .to_owned()
}

async fn execute(
    connection: &Connection,
    topology: &Topology,
    command: &DlqCommand,
) -> Result<String> {
    match command {
        DlqCommand::List(args) => {
            let scan = list(
                connection,
                topology,
                &filter(&args.select, Some(args.limit)),
            )
            .await?;
            if args.json {
                to_json(&scan.matched)
            } else {
                Ok(render_list(&scan))
            }
        }
        DlqCommand::Show(args) => {
            let scan = list(
                connection,
                topology,
                &filter(&args.select, Some(args.limit)),
            )
            .await?;
            if args.json {
                let detailed: Vec<Detailed<'_>> = scan
                    .matched
                    .iter()
                    .map(|letter| Detailed {
                        letter,
                        job: letter.job.as_ref(),
                    })
                    .collect();
                to_json(&detailed)
            } else {
                Ok(render_show(&scan))
            }
        }
        DlqCommand::Requeue(args) => {
            let confirmations = if args.replay_confirmations {
                Confirmations::Replay
            } else {
                Confirmations::HoldBack
            };
            let selection = filter(&args.change.select, args.change.limit);
            let scan = requeue(connection, topology, &selection, confirmations).await?;
            if args.change.json {
                to_json(&Requeued {
                    requeued: &scan.matched,
                    skipped_not_a_job: &scan.skipped,
                    held_back_confirmations: &scan.held_back,
                    deletion_cap_restored: scan
                        .matched
                        .iter()
                        .filter(|letter| cap_restored(letter, confirmations))
                        .filter_map(|letter| letter.job_id.as_deref())
                        .collect(),
                })
            } else {
                Ok(render_requeue(&scan, topology, confirmations))
            }
        }
        DlqCommand::Purge(args) => {
            let filter = filter(&args.change.select, args.change.limit);
            let purged = purge(connection, topology, &filter).await?;
            if args.change.json {
                to_json(&serde_json::json!({ "purged": purged }))
            } else {
                Ok(format!("purged {purged} dead letter(s)\n"))
            }
        }
    }
}

/// The filter the options describe.
pub fn filter(select: &SelectArgs, limit: Option<usize>) -> Filter {
    Filter {
        tenant: select.tenant.clone(),
        phase: select.phase,
        reason: select.reason.clone(),
        job_id: select.job_id.clone(),
        limit,
    }
}

/// The dead letters `filter` selects, in queue order; the queues are left exactly as they were.
pub async fn list(connection: &Connection, topology: &Topology, filter: &Filter) -> Result<Scan> {
    scan::scan(connection, topology, filter, Action::Read).await
}

/// Moves the dead letters `filter` selects back to their phase's job queue as attempt 1 (confirm, then ack).
/// Matches whose body is not a job stay in the dead-letter queue, listed in [`Scan::skipped`], and so do jobs
/// carrying their run's one-time confirmation unless `confirmations` replays them ([`Scan::held_back`]).
pub async fn requeue(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    confirmations: Confirmations,
) -> Result<Scan> {
    let publisher = Publisher::open(connection, topology.clone()).await?;
    let action = Action::Requeue(&publisher, confirmations);
    scan::scan(connection, topology, filter, action).await
}

/// Deletes the dead letters `filter` selects; returns how many. Without a narrowing filter each selected queue is
/// purged in one call rather than read message by message.
pub async fn purge(connection: &Connection, topology: &Topology, filter: &Filter) -> Result<u64> {
    if filter.selects_whole_queues() {
        return scan::purge_queues(connection, topology, &filter.phases()).await;
    }
    let scan = scan::scan(connection, topology, filter, Action::Delete).await?;
    Ok(scan.matched.len() as u64)
}

/// A dead letter with its job, for `show --json`.
#[derive(Serialize)]
struct Detailed<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    job: Option<&'a Job>,
}

/// The result of `requeue --json`.
#[derive(Serialize)]
struct Requeued<'a> {
    requeued: &'a [DeadLetter],
    skipped_not_a_job: &'a [DeadLetter],
    held_back_confirmations: &'a [DeadLetter],
    /// The requeued jobs whose run had lifted the deletion cap, requeued with it in force.
    deletion_cap_restored: Vec<&'a str>,
}

/// Whether `letter`'s job went back with the deletion cap its run had lifted in force again.
fn cap_restored(letter: &DeadLetter, confirmations: Confirmations) -> bool {
    letter
        .job
        .as_ref()
        .is_some_and(|job| confirmations.restores_cap(job))
}

fn to_json(value: &impl Serialize) -> Result<String> {
    let text = serde_json::to_string_pretty(value).context("serialising the output")?;
    Ok(format!("{text}\n"))
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// One line per dead letter, then how much each queue holds.
pub fn render_list(scan: &Scan) -> String {
    let rows: Vec<Vec<String>> = scan
        .matched
        .iter()
        .map(|letter| {
            vec![
                or_dash(letter.job_id.as_deref()),
                or_dash(letter.tenant.as_deref()),
                or_dash(letter.mailbox.as_deref()),
                letter.phase.to_string(),
                letter.attempts.to_string(),
                letter.reason.clone(),
                table::one_line(letter.error.as_deref().unwrap_or("-"), ERROR_COLUMN),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            ("JOB", Align::Left),
            ("TENANT", Align::Left),
            ("MAILBOX", Align::Left),
            ("PHASE", Align::Left),
            ("ATTEMPTS", Align::Right),
            ("REASON", Align::Left),
            ("ERROR", Align::Left),
        ],
        &rows,
    );
    out.push_str(&footer(scan));
    out
}

/// Every dead letter in full.
pub fn render_show(scan: &Scan) -> String {
    let mut out = String::new();
    for letter in &scan.matched {
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
        };
        let lines = [
            ("job", or_dash(letter.job_id.as_deref())),
            ("run", or_dash(letter.run_id.as_deref())),
            ("queue", letter.queue.clone()),
            ("tenant", or_dash(letter.tenant.as_deref())),
            ("mailbox", or_dash(letter.mailbox.as_deref())),
            ("phase", letter.phase.to_string()),
            ("attempts", letter.attempts.to_string()),
            (
                "reason",
                format!("{} (from the {:?})", letter.reason, letter.reason_source).to_lowercase(),
            ),
            (
                "first death queue",
                or_dash(letter.first_death_queue.as_deref()),
            ),
            ("first death at", time(letter.first_death_at)),
            ("enqueued at", time(letter.enqueued_at)),
            ("error", or_dash(letter.error.as_deref())),
        ];
        for (label, value) in lines {
            out.push_str(&format!("{label:<18} {value}\n"));
        }
        match (&letter.job, &letter.body_error) {
            (Some(job), _) => {
                let body = serde_json::to_string_pretty(job).unwrap_or_default();
                out.push_str(&format!("{:<18} {body}\n", "job body"));
            }
            (None, Some(error)) => out.push_str(&format!("{:<18} {error}\n", "body")),
            (None, None) => {}
        }
        out.push('\n');
    }
    out.push_str(&footer(scan));
    out
}

fn render_requeue(scan: &Scan, topology: &Topology, confirmations: Confirmations) -> String {
    let mut out = String::new();
    for letter in &scan.matched {
        let capped = cap_restored(letter, confirmations);
        out.push_str(&format!(
            "requeued {} ({} {} {}) to {} as attempt 1{}\n",
            or_dash(letter.job_id.as_deref()),
            or_dash(letter.tenant.as_deref()),
            or_dash(letter.mailbox.as_deref()),
            letter.phase,
            topology.job_queue(letter.phase),
            if capped {
                ", with the deletion cap its run lifted in force again (--replay-confirmations keeps it lifted)"
            } else {
                ""
            },
        ));
    }
    for letter in &scan.skipped {
        out.push_str(&format!(
            "left {} in {}: its body is not a job ({}); purge it once understood\n",
            or_dash(letter.job_id.as_deref()),
            letter.queue,
            letter.body_error.as_deref().unwrap_or("unreadable"),
        ));
    }
    for letter in &scan.held_back {
        let confirmation = letter.job.as_ref().and_then(|job| job.run_confirmation());
        out.push_str(&format!(
            "left {} ({} {}) in {}: it carries its run's {}; replayed after later runs it would undo what they \
             did. Run the command again, or requeue with --replay-confirmations\n",
            or_dash(letter.job_id.as_deref()),
            or_dash(letter.tenant.as_deref()),
            or_dash(letter.mailbox.as_deref()),
            letter.queue,
            confirmation.unwrap_or("confirmation"),
        ));
    }
    out.push_str(&format!(
        "{} dead letter(s) requeued, {} left in place\n",
        scan.matched.len(),
        scan.skipped.len() + scan.held_back.len()
    ));
    out
}

fn footer(scan: &Scan) -> String {
    let depths: Vec<String> = scan
        .depths
        .iter()
        .map(|(queue, depth)| format!("{queue} holds {depth}"))
        .collect();
    format!(
        "{} dead letter(s) match; {}\n",
        scan.matched.len(),
        depths.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use shared::message::Phase;

    use super::*;

    #[test]
    fn list_shows_reason_and_error_on_one_line() {
        let mut letter = DeadLetter::from_parts(
            "t.phase2.dead",
            Phase::Phase2,
            &BasicProperties::default(),
            b"x",
        );
        letter.reason = "access_denied".into();
        letter.error = Some("line one\nline two".into());
        letter.tenant = Some("contoso".into());
        let mut scan = Scan::default();
        scan.depths.insert("t.phase2.dead".into(), 4);
        scan.matched.push(letter);
        let text = render_list(&scan);
        assert!(text.contains("access_denied  line one line two"), "{text}");
        assert!(
            text.contains("1 dead letter(s) match; t.phase2.dead holds 4"),
            "{text}"
        );
        assert!(
            render_show(&scan).contains("malformed job"),
            "{}",
            render_show(&scan)
        );
    }
}
