//! Operator commands on a running fleet: `status` (queue depths, the last run) and `dlq list|show|requeue|purge`.
//!
//! Operators come back to a fleet when something is stuck, usually without the management UI at hand, so every
//! command works over AMQP alone; the management HTTP API only adds numbers AMQP cannot give (unacked counts).
//!
//! Layout:
//! - [`cli`]: the options of both commands (kept here so `crate::cli` only names them).
//! - [`status`]: per-queue counts, as a table or JSON.
//! - [`last_run`]: the last run's per-tenant progress, peeked from the runs queue.
//! - [`dlq`]: the dead-letter commands; [`dead_letter`] reads one dead-lettered message, [`scan`] walks a
//!   dead-letter queue without losing or reordering what it leaves behind.
//! - [`management`]: the small part of the RabbitMQ management HTTP API that `status` uses.
//! - [`table`]: plain-text tables for terminals.

pub mod cli;
pub mod dead_letter;
pub mod dlq;
pub mod last_run;
pub mod management;
pub mod scan;
pub mod status;
pub mod table;

use anyhow::{Context, Result};
use lapin::Connection;
use shared::mq::{self, Topology};

use cli::BrokerArgs;

/// Connects for an operator command; the error names the broker with its password redacted. Like every
/// connection of the fleet (`shared::mq::connect`) it does not recover by itself: an operator command fails at
/// once and can be re-run.
pub async fn connect(broker: &BrokerArgs) -> Result<(Connection, Topology)> {
    let connection = shared::mq::connect(&broker.amqp_url, "contactmirror-producer-ops").await?;
    Ok((connection, Topology::new(broker.queue_prefix.clone())))
}

/// Writes a command's output to stdout. A closed pipe (`status | head`) is not an error: the reader has what it
/// wanted, and the command's work is already done.
pub fn print(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(error).context("writing to stdout")
        }
        _ => Ok(()),
    }
}

/// Closes the connection politely; a failure here changes nothing the command did, so it is ignored.
pub async fn disconnect(connection: Connection) {
    let _ = mq::close_connection(&connection, "operator command done").await;
}
