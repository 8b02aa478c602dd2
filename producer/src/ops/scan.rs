//! Walking a dead-letter queue without losing or reordering what stays in it.
//!
//! AMQP has no "peek". The scan takes messages with `basic.get` and manual acks, and settles only the ones it acts
//! on; everything else stays unacknowledged until the scan closes its channel, when the broker hands all of it
//! back. A quorum queue without a delivery limit (which is what the dead-letter queues are) puts returned messages
//! at the *back*, so a scan that stopped half-way would move the messages it read behind the ones it did not. The
//! scan therefore always reads the whole queue as it was when it started, even after its limit is reached: the
//! queue then rotates once, in order, and comes back as it was (a dead letter arriving during the scan ends up
//! ahead of the ones the scan read; nothing is lost). Dead letters arriving during the scan are not read, so it
//! cannot loop. While it runs, the messages it holds are invisible to other readers; nothing consumes the
//! dead-letter queues in normal operation, so this only matters to two operators scanning at once (each then
//! sees part of the queue).
//!
//! Requeue publishes the job with a publisher confirm and only then acks the dead letter. Interrupted between the
//! two, the dead letter comes back to its queue while the job is already in the job queue: a duplicate, which is
//! harmless because job ids are deterministic and Graph writes are idempotent upserts. Interrupted anywhere else,
//! nothing is lost and nothing is duplicated.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::{Channel, Connection};
use shared::message::Phase;
use shared::mq::{self, Publisher, Topology};

use super::dead_letter::{DeadLetter, Filter};

/// What the scan does with a dead letter that matches.
#[derive(Clone, Copy)]
pub enum Action<'a> {
    /// Nothing: it stays where it is.
    Read,
    /// Publish its job to the phase's job queue as attempt 1, then remove it; what to do with a job carrying its
    /// run's one-time confirmation.
    Requeue(&'a Publisher, Confirmations),
    /// Remove it.
    Delete,
}

/// What `Requeue` does with a job carrying its run's one-time confirmation ([`shared::message::Job::run_confirmation`],
/// or a lifted deletion cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmations {
    /// Leave a cleanup's or a rebuild's job in the dead-letter queue, listed in [`Scan::held_back`] (replayed after
    /// later runs, it would undo what they did), and requeue others with the deletion cap in force.
    HoldBack,
    /// Requeue every job as it is (`dlq requeue --replay-confirmations`).
    Replay,
}

impl Confirmations {
    /// Whether `job` goes back with the deletion cap its run lifted in force again.
    pub fn restores_cap(self, job: &shared::message::Job) -> bool {
        self == Confirmations::HoldBack && job.allow_mass_delete
    }
}

/// What a scan saw and did.
#[derive(Debug, Default)]
pub struct Scan {
    /// The matching dead letters, acted on (for `Read`, just read), in queue order.
    pub matched: Vec<DeadLetter>,
    /// Matches `Requeue` left in place because their body is not a job (malformed jobs would only fail again).
    pub skipped: Vec<DeadLetter>,
    /// Matches `Requeue` left in place because their job carries its run's one-time confirmation
    /// ([`Confirmations::HoldBack`]).
    pub held_back: Vec<DeadLetter>,
    /// Each dead-letter queue read and how many messages it held when the scan started.
    pub depths: BTreeMap<String, u32>,
    /// Messages acknowledged (deleted or requeued), i.e. gone from the dead-letter queues.
    pub removed: u32,
}

/// Scans the dead-letter queues `filter` selects, doing `action` to every match.
pub async fn scan(
    connection: &Connection,
    topology: &Topology,
    filter: &Filter,
    action: Action<'_>,
) -> Result<Scan> {
    let mut scan = Scan::default();
    for phase in filter.phases() {
        let channel = mq::open_channel(connection, "dead-letter scan").await?;
        let removed_before = scan.removed;
        let result = scan_queue(&channel, topology, phase, filter, action, &mut scan).await;
        // Closing hands every message read but not acknowledged back to the queue, in the order it was read.
        let closed = mq::close_channel(&channel, "dead-letter scan done").await;
        result?;
        closed.context("closing the dead-letter scan channel")?;
        let queue = topology.dead_letter_queue(phase);
        let expected = scan.depths[&queue].saturating_sub(scan.removed - removed_before);
        settle(connection, &queue, expected).await?;
    }
    Ok(scan)
}

/// Waits until the messages a scan handed back are ready again. A quorum queue applies the return through its
/// log, after the channel close is confirmed, so a command run right after a scan could otherwise see them
/// missing.
async fn settle(connection: &Connection, queue: &str, expected: u32) -> Result<()> {
    let channel = mq::open_channel(connection, "dead-letter check").await?;
    for _ in 0..100 {
        if depth(&channel, queue).await? >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = mq::close_channel(&channel, "checked").await;
    Ok(())
}

async fn scan_queue(
    channel: &Channel,
    topology: &Topology,
    phase: Phase,
    filter: &Filter,
    action: Action<'_>,
    scan: &mut Scan,
) -> Result<()> {
    let queue = topology.dead_letter_queue(phase);
    let depth = depth(channel, &queue).await?;
    scan.depths.insert(queue.clone(), depth);
    for _ in 0..depth {
        let options = BasicGetOptions { no_ack: false };
        let get = async {
            channel
                .basic_get(queue.as_str().into(), options)
                .await
                .map_err(mq::amqp(format!("reading {queue}")))
        };
        let Some(message) = mq::bounded(format!("reading {queue}"), get).await? else {
            break; // someone else emptied it meanwhile
        };
        let letter = DeadLetter::from_delivery(&queue, phase, &message.delivery);
        let full = filter.limit.is_some_and(|limit| {
            scan.matched.len() + scan.skipped.len() + scan.held_back.len() >= limit
        });
        if full || !filter.matches(&letter) {
            continue; // stays unacknowledged: back in place when the channel closes
        }
        let ack = || {
            let what = format!("acknowledging a dead letter in {queue}");
            mq::bounded(what.clone(), async {
                message
                    .delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(mq::amqp(what))
            })
        };
        match action {
            Action::Read => scan.matched.push(letter),
            Action::Delete => {
                ack().await?;
                scan.removed += 1;
                scan.matched.push(letter);
            }
            Action::Requeue(publisher, confirmations) => match &letter.job {
                None => scan.skipped.push(letter),
                Some(job)
                    if confirmations == Confirmations::HoldBack
                        && job.run_confirmation().is_some() =>
                {
                    scan.held_back.push(letter)
                }
                Some(job) => {
                    // Into its phase's first lane: the run that chose its lane is over. A deletion cap its run lifted
                    // is not lifted for a replay days later (unless asked): the cap holds, and a refusal says so.
                    let first_lane = shared::message::Job {
                        lane: shared::message::Lane::FIRST,
                        allow_mass_delete: job.allow_mass_delete
                            && !confirmations.restores_cap(job),
                        ..job.clone()
                    };
                    publisher
                        .publish_job(&first_lane, 1)
                        .await
                        .with_context(|| format!("requeueing job {}", job.job_id))?;
                    ack().await?;
                    scan.removed += 1;
                    scan.matched.push(letter);
                }
            },
        }
    }
    Ok(())
}

/// How many ready messages `queue` holds (a passive declare, which fails if the queue does not exist).
async fn depth(channel: &Channel, queue: &str) -> Result<u32> {
    let counts = mq::queue_counts(channel, queue).await.with_context(|| {
        format!(
            "queue {queue} is not there: wrong --queue-prefix, or the topology was never declared"
        )
    })?;
    Ok(counts.ready)
}

/// Empties the dead-letter queues of `phases` in one call each; returns how many messages went.
pub async fn purge_queues(
    connection: &Connection,
    topology: &Topology,
    phases: &[Phase],
) -> Result<u64> {
    let channel = mq::open_channel(connection, "dead-letter purge").await?;
    let mut purged = 0u64;
    for phase in phases {
        let queue = topology.dead_letter_queue(*phase);
        depth(&channel, &queue).await?;
        let purge = async {
            channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await
                .map_err(mq::amqp(format!("purging {queue}")))
        };
        purged += u64::from(mq::bounded(format!("purging {queue}"), purge).await?);
    }
    let _ = mq::close_channel(&channel, "purge done").await;
    Ok(purged)
}
