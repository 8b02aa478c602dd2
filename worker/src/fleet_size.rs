//! How many worker processes share Graph's app-wide budget, learned from the broker.
//!
//! Graph caps one app at 130,000 requests per 10 s across every tenant, mailbox and process; each worker
//! process keeps `1 / N` of it, N being the worker processes consuming the job queues now (each consumes every
//! phase queue once, so the largest consumer count of the phase queues is the number of processes). The count is
//! read when a session starts and every [`FLEET_CHECK`] after, so a fleet that KEDA scales up is within its
//! ceiling again within one check; a failed read keeps the last share (never a larger one than was right).

use std::convert::Infallible;
use std::time::Duration;

use shared::graph::GraphClient;
use shared::message::Phase;
use shared::mq::{self, Topology};
use tracing::{debug, info, warn};

/// How often the fleet's size is read again.
pub const FLEET_CHECK: Duration = Duration::from_secs(2);

/// Keeps `graph`'s share of the app-wide rate in step with the worker processes consuming `topology`'s job
/// queues, until dropped (the session that runs it ends).
pub async fn follow(
    connection: &lapin::Connection,
    topology: &Topology,
    graph: &GraphClient,
) -> Infallible {
    let mut known = None;
    let mut tick = tokio::time::interval(FLEET_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match processes(connection, topology).await {
            Ok(processes) if known != Some(processes) => {
                graph.set_fleet_size(processes);
                info!(
                    worker_processes = processes,
                    "keeping 1/{processes} of Graph's app-wide budget"
                );
                known = Some(processes);
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "could not count the worker processes; keeping the last share of the app budget")
            }
        }
    }
}

/// The worker processes consuming the job queues now (at least one: this one).
async fn processes(
    connection: &lapin::Connection,
    topology: &Topology,
) -> Result<u32, mq::MqError> {
    // A channel of its own: a passive declare of a missing queue closes the channel it runs on.
    let channel = mq::open_channel(connection, "fleet size").await?;
    let mut largest = 1;
    for phase in Phase::ALL {
        let counts = mq::queue_counts(&channel, &topology.job_queue(phase)).await?;
        debug!(%phase, consumers = counts.consumers, "job queue consumers");
        largest = largest.max(counts.consumers);
    }
    let _ = mq::close_channel(&channel, "fleet size counted").await;
    Ok(largest)
}
