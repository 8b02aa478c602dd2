//! The two job transports behind [`Dispatch`]: the embedded in-process queue (default) and RabbitMQ.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use shared::message::{Job, Report};
use shared::mq::{self, Publisher, Topology};
use tracing::warn;
use worker::disposition::RetryPolicy;
use worker::embedded::EmbeddedQueue;
use worker::job::JobRunner;

use crate::orchestrate::Dispatch;

/// Jobs run by in-process workers.
pub struct Embedded {
    queue: EmbeddedQueue,
}

impl Embedded {
    /// Starts `workers` in-process workers.
    pub fn start(runner: Arc<JobRunner>, workers: usize, retry: RetryPolicy) -> Self {
        Self {
            queue: EmbeddedQueue::start(runner, workers, retry),
        }
    }
}

impl Dispatch for Embedded {
    async fn submit(&mut self, job: Job) -> Result<()> {
        self.queue.submit(job);
        Ok(())
    }

    async fn next_report(&mut self, wait: Duration) -> Result<Option<Report>> {
        Ok(tokio::time::timeout(wait, self.queue.next_report())
            .await
            .ok()
            .flatten())
    }

    fn mode(&self) -> &'static str {
        "embedded"
    }
}

/// Jobs published to RabbitMQ, reports read back from the report queue.
pub struct Broker {
    _connection: Connection,
    publisher: Publisher,
    reports: Consumer,
}

impl Broker {
    /// Connects, declares the topology and starts reading reports.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self> {
        let connection = mq::connect(url, "contactmirror-producer").await?;
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        mq::declare(&setup, &topology).await?;
        let publisher = Publisher::open(&connection, topology.clone()).await?;
        let channel = connection
            .create_channel()
            .await
            .context("opening a report channel")?;
        channel
            .basic_qos(256, BasicQosOptions::default())
            .await
            .context("setting report prefetch")?;
        let reports = channel
            .basic_consume(
                topology.reports_queue().as_str().into(),
                "contactmirror-producer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {}", topology.reports_queue()))?;
        Ok(Self {
            _connection: connection,
            publisher,
            reports,
        })
    }
}

impl Dispatch for Broker {
    async fn submit(&mut self, job: Job) -> Result<()> {
        self.publisher.publish_job(&job, 1).await.with_context(|| {
            format!(
                "publishing the {} job for {}",
                job.phase(),
                job.mailbox().upn
            )
        })
    }

    async fn next_report(&mut self, wait: Duration) -> Result<Option<Report>> {
        loop {
            let delivery = match tokio::time::timeout(wait, self.reports.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => anyhow::bail!("the broker closed the report consumer"),
                Ok(Some(delivery)) => delivery.context("reading the report queue")?,
            };
            // Reports are facts already recorded by the worker; acknowledging before use loses nothing the
            // producer cannot rebuild (a lost report shows up as a job without a final report).
            delivery
                .ack(BasicAckOptions::default())
                .await
                .context("acknowledging a report")?;
            match Report::from_json(&delivery.data) {
                Ok(report) => return Ok(Some(report)),
                Err(error) => warn!(%error, "skipping an unreadable report"),
            }
        }
    }

    fn mode(&self) -> &'static str {
        "broker"
    }
}
