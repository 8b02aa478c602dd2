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
use shared::run_status::RunStatus;
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

/// How long the producer keeps trying to get its broker back before the run fails.
const RECONNECT_FOR: Duration = Duration::from_secs(180);

/// Jobs published to RabbitMQ, reports read back from the report queue.
///
/// A lost connection (broker restart, network) is re-established with backoff and the failed step repeated: jobs
/// and reports are durable, so nothing is lost, and a job published twice has the same id (its second report is
/// ignored by the orchestrator, its second run writes nothing).
pub struct Broker {
    url: String,
    topology: Topology,
    session: Session,
}

/// One connection with its confirm channel and report consumer.
struct Session {
    connection: Connection,
    publisher: Publisher,
    reports: Consumer,
}

impl Session {
    async fn open(url: &str, topology: &Topology) -> Result<Self> {
        let connection = mq::connect(url, "contactmirror-producer").await?;
        let setup = connection
            .create_channel()
            .await
            .context("opening a channel")?;
        mq::declare(&setup, topology).await?;
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
            connection,
            publisher,
            reports,
        })
    }

    /// The next report, `None` after `wait` without one. The wait is sliced so that a connection that died
    /// quietly (a consumer stream that just stops) is noticed within seconds, not after the whole idle timeout.
    async fn next_report(&mut self, wait: Duration) -> Result<Option<Report>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let slice = (deadline - now).min(Duration::from_secs(2));
            let delivery = match tokio::time::timeout(slice, self.reports.next()).await {
                Err(_) if !self.connection.status().connected() => {
                    anyhow::bail!("the broker connection is closed")
                }
                Err(_) => continue,
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
}

impl Broker {
    /// Connects, declares the topology and starts reading reports.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self> {
        let session = Session::open(url, &topology).await?;
        Ok(Self {
            url: url.to_owned(),
            topology,
            session,
        })
    }

    /// Replaces a broken session, retrying with backoff for up to [`RECONNECT_FOR`].
    async fn reconnect(&mut self, cause: &anyhow::Error) -> Result<()> {
        warn!(error = %format!("{cause:#}"), "lost the broker; reconnecting");
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        let mut delay = Duration::from_millis(250);
        loop {
            tokio::time::sleep(delay).await;
            match Session::open(&self.url, &self.topology).await {
                Ok(session) => {
                    self.session = session;
                    warn!("reconnected to the broker");
                    return Ok(());
                }
                Err(error) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %format!("{error:#}"), "broker still unreachable");
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    return Err(error.context(format!(
                        "the broker stayed unreachable for {}s",
                        RECONNECT_FOR.as_secs()
                    )))
                }
            }
        }
    }
}

impl Dispatch for Broker {
    async fn submit(&mut self, job: Job) -> Result<()> {
        loop {
            let published = self
                .session
                .publisher
                .publish_job(&job, 1)
                .await
                .with_context(|| {
                    format!(
                        "publishing the {} job for {}",
                        job.phase(),
                        job.mailbox().upn
                    )
                });
            match published {
                Ok(()) => return Ok(()),
                Err(error) => self.reconnect(&error).await?,
            }
        }
    }

    async fn next_report(&mut self, wait: Duration) -> Result<Option<Report>> {
        loop {
            match self.session.next_report(wait).await {
                Ok(report) => return Ok(report),
                Err(error) => self.reconnect(&error).await?,
            }
        }
    }

    fn mode(&self) -> &'static str {
        "broker"
    }

    /// One confirmed publish, no reconnect: a snapshot is not worth delaying the run for, and the next job or
    /// report wait repairs the session anyway.
    async fn publish_run_status(&mut self, status: &RunStatus) -> Result<()> {
        self.session
            .publisher
            .publish_run_status(status)
            .await
            .with_context(|| {
                format!(
                    "publishing the progress snapshot to {}",
                    self.topology.runs_queue()
                )
            })
    }
}
