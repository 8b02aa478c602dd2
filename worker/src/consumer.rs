//! The AMQP worker: consumes both phase queues, runs each job, publishes its report and acts on the
//! [`Step`] the retry policy chose, acknowledging a delivery only after everything it published was confirmed.
//!
//! Failure handling, in order of appearance:
//! - a message that does not parse is dead-lettered with reason `malformed_job` (never retried);
//! - a transient failure is published to the retry level that fits the wait, as the next attempt;
//! - a permanent failure (or the attempt budget spent) is dead-lettered with the reason in its headers;
//! - if a publish fails, the delivery is handed back (`nack` with requeue) and the broker redelivers it; the
//!   queue's `x-delivery-limit` bounds how often that can happen;
//! - a lost connection is re-established with backoff; readiness is false meanwhile, so it is never silent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Consumer;
use shared::message::{FailureReason, Job, Phase};
use shared::mq::{self, attempt_of, MqError, Publisher, Topology};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::disposition::{RetryPolicy, Step};

/// The longest a channel or connection close is waited for at the end of a session.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How often a session checks that its connection is still up.
const CONNECTION_CHECK: Duration = Duration::from_secs(2);
use crate::job::JobRunner;

/// Why [`Worker::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// Shutdown was requested (SIGTERM/SIGINT, or the caller's token).
    Shutdown,
}

/// Settings of an AMQP worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Broker URL (may hold a password: never logged as is).
    pub amqp_url: String,
    /// Queue names.
    pub topology: Topology,
    /// Jobs run at once; also the prefetch.
    pub concurrency: u16,
    /// Queue-level retry policy.
    pub retry: RetryPolicy,
    /// How long in-flight jobs may run on after shutdown is requested before they are handed back.
    pub grace: Duration,
    /// Connection name shown in the management UI.
    pub name: String,
}

/// An AMQP worker.
pub struct Worker {
    config: WorkerConfig,
    runner: Arc<JobRunner>,
    ready: Arc<AtomicBool>,
}

impl Worker {
    /// A worker that runs jobs with `runner`.
    pub fn new(config: WorkerConfig, runner: Arc<JobRunner>) -> Self {
        Self {
            config,
            runner,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True while the worker holds a live broker connection and consumes; for `/readyz`.
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Consumes until `shutdown` is cancelled, reconnecting whenever the connection is lost.
    ///
    /// On shutdown: stops consuming, lets in-flight jobs finish for up to the grace period, then hands the rest
    /// back to the broker by closing the channel (their deliveries return to the queue).
    pub async fn run(&self, shutdown: CancellationToken) -> Result<StopReason, MqError> {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.session(&shutdown).await {
                Ok(reason) => return Ok(reason),
                Err(error) => {
                    self.ready.store(false, Ordering::SeqCst);
                    metrics::counter!(crate::metrics::AMQP_RECONNECTS_TOTAL).increment(1);
                    error!(error = %error, retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(StopReason::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One connection's lifetime: returns `Ok` on shutdown, `Err` when the connection must be re-established.
    async fn session(&self, shutdown: &CancellationToken) -> Result<StopReason, MqError> {
        let connection = mq::connect(&self.config.amqp_url, &self.config.name).await?;
        let setup = connection
            .create_channel()
            .await
            .map_err(|source| MqError::Amqp {
                context: "opening a setup channel".into(),
                source,
            })?;
        mq::declare(&setup, &self.config.topology).await?;
        let publisher = Publisher::open(&connection, self.config.topology.clone()).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|source| MqError::Amqp {
                context: "opening a consume channel".into(),
                source,
            })?;
        channel
            .basic_qos(self.config.concurrency, BasicQosOptions::default())
            .await
            .map_err(|source| MqError::Amqp {
                context: "setting prefetch".into(),
                source,
            })?;
        let mut consumers = Vec::new();
        for phase in Phase::ALL {
            let queue = self.config.topology.job_queue(phase);
            let consumer: Consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}-{}", self.config.name, phase).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| MqError::Amqp {
                    context: format!("consuming {queue}"),
                    source,
                })?;
            consumers.push(consumer);
        }
        let mut deliveries = futures_util::stream::select_all(consumers);
        self.ready.store(true, Ordering::SeqCst);
        info!(broker = %mq::redact_url(&self.config.amqp_url), concurrency = self.config.concurrency, "consuming");
        let slots = Arc::new(Semaphore::new(usize::from(self.config.concurrency.max(1))));
        let tracker = TaskTracker::new();
        // lapin does not always end the consumer stream when the socket dies (seen after a RabbitMQ restart: a
        // reset connection, and the worker waiting on its consumers for ever), so the connection is looked at too.
        let mut watch = tokio::time::interval(CONNECTION_CHECK);
        let outcome = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(StopReason::Shutdown),
                _ = watch.tick() => if !connection.status().connected() {
                    break Err(MqError::Amqp {
                        context: "the broker connection was lost".into(),
                        source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                            lapin::ConnectionState::Closed)),
                    });
                },
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let permit = slots.clone().acquire_owned().await.map_err(|_| MqError::Nacked {
                            exchange: String::new(), routing_key: String::new() })?;
                        let runner = self.runner.clone();
                        let publisher = publisher.clone();
                        let retry = self.config.retry;
                        tracker.spawn(async move {
                            handle(delivery, &runner, &publisher, &retry).await;
                            drop(permit);
                        });
                    }
                    Some(Err(source)) => break Err(MqError::Amqp { context: "consuming jobs".into(), source }),
                    None => break Err(MqError::Amqp {
                        context: "the broker cancelled the consumers".into(),
                        source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                            lapin::ConnectionState::Closed)),
                    }),
                }
            }
        };
        self.ready.store(false, Ordering::SeqCst);
        for phase in Phase::ALL {
            let tag = format!("{}-{}", self.config.name, phase);
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        tracker.close();
        if tokio::time::timeout(self.config.grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                grace_secs = self.config.grace.as_secs(),
                "in-flight jobs did not finish in time; handing them back"
            );
        }
        // On a connection that is already gone a close may never be answered; it must not keep the worker from
        // reconnecting (or from exiting).
        let _ =
            tokio::time::timeout(CLOSE_WAIT, channel.close(200, "worker stopping".into())).await;
        let _ =
            tokio::time::timeout(CLOSE_WAIT, connection.close(200, "worker stopping".into())).await;
        outcome
    }
}

/// Handles one delivery to the end: ack, retry, dead letter, or hand back.
async fn handle(
    delivery: Delivery,
    runner: &JobRunner,
    publisher: &Publisher,
    retry: &RetryPolicy,
) {
    let attempt = attempt_of(&delivery.properties);
    let phase = if delivery.routing_key.as_str() == Phase::Phase1.routing_key() {
        Phase::Phase1
    } else {
        Phase::Phase2
    };
    let job = match Job::from_json(&delivery.data) {
        Ok(job) => job,
        Err(error) => {
            // No run id, tenant or mailbox can be trusted from a body that does not parse; the delivery tag
            // and phase are what an operator can find the message by.
            let span =
                info_span!("job", phase = %phase, attempt, delivery_tag = delivery.delivery_tag);
            span.in_scope(|| {
                crate::metrics::record_job(phase, "malformed", std::time::Duration::ZERO);
                warn!(%error, "dead-lettering a malformed job");
            });
            let published = publisher
                .publish_dead_letter(
                    phase,
                    &delivery.data,
                    &delivery.properties,
                    FailureReason::MalformedJob,
                    &error.to_string(),
                )
                .instrument(span.clone())
                .await;
            settle(&delivery, published).instrument(span).await;
            return;
        }
    };
    let span = info_span!("job", run_id = %job.run_id, tenant = %job.tenant_id, mailbox = %job.mailbox().upn,
        phase = %job.phase(), attempt);
    async {
        let started = std::time::Instant::now();
        let attempt_result = runner.run(&job, attempt).await;
        let step = retry.next_step(attempt, &attempt_result.result);
        let mut report = attempt_result.report;
        report.outcome = step.outcome(&attempt_result.result);
        let outcome_label = crate::metrics::outcome_label(&step);
        crate::metrics::record_job(job.phase(), outcome_label, started.elapsed());
        let published = async {
            match &step {
                Step::Ack => {}
                Step::Retry { attempt, wait } => {
                    publisher.publish_retry(&job, *attempt, *wait).await?
                }
                Step::DeadLetter { reason, error } => {
                    publisher
                        .publish_dead_letter(
                            job.phase(),
                            &delivery.data,
                            &delivery.properties,
                            *reason,
                            error,
                        )
                        .await?
                }
            }
            publisher.publish_report(&job, &report).await
        }
        .await;
        info!(
            outcome = outcome_label,
            created = report.counts.created,
            updated = report.counts.updated,
            deleted = report.counts.deleted,
            "job finished"
        );
        settle(&delivery, published).await;
    }
    .instrument(span)
    .await;
}

/// Acknowledges when everything was published; otherwise hands the delivery back for redelivery.
async fn settle(delivery: &Delivery, published: Result<(), MqError>) {
    let settled = match published {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(error) => {
            error!(%error, "could not publish; handing the job back to the broker");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    if let Err(error) = settled {
        // The channel is gone; the broker requeues unacknowledged deliveries by itself.
        warn!(%error, "could not settle a delivery; the broker will redeliver it");
    }
}
