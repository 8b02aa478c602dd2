//! The AMQP worker: consumes every lane of both phase queues and hands each delivery to [`delivery::process`],
//! which runs the job and settles it the same way the embedded queue does. This module is the broker's side of
//! that: the [`Delivery`] for a RabbitMQ message, and the session that consumes, watches and reconnects.
//!
//! Failure handling, in order of appearance:
//! - a message that does not parse, or is larger than [`MAX_JOB_BYTES`], is dead-lettered with reason
//!   `malformed_job` (never retried, never run);
//! - a publish that fails hands the delivery back and ends the session: readiness goes false, the channels are
//!   reopened and the topology declared again (a deleted exchange or queue comes back), with backoff. A worker
//!   never goes on taking jobs it cannot report;
//! - a lost connection, or a consume channel the broker closed (consumer timeout), ends the session too; its
//!   deliveries are back in the queue, so the attempts still running are cancelled at once, and the session
//!   waits for them to stop before reconnecting;
//! - on shutdown, in-flight jobs may finish for the grace period; then they are cancelled the same way.
//!
//! Jobs run at once never exceed `concurrency` (plus `spare_slots`, for tenants other than the busiest: [`Turns`]):
//! the slots belong to the worker, not to a session, so attempts of a session that ended still count until they
//! have stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicQosOptions};
use lapin::Consumer;
use shared::message::{FailureReason, Job, Lane, Phase, Report};
use shared::mq::{
    self, attempt_of, header_str, MqError, Publisher, Topology, CLOSE_WAIT, TENANT_HEADER,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::delivery::{self, Delivery, DeliveryError};
use crate::disposition::RetryPolicy;
use crate::fleet_size;
use crate::job::JobRunner;
use crate::leases::BrokerLeases;
use crate::overlap::relay::Relay;
use crate::turns::Turns;

/// How often a session checks that its connection and channel are still up.
const CONNECTION_CHECK: Duration = Duration::from_secs(2);

/// The largest job message a worker runs. The producer's biggest (a phase-1 job of 10,000 users with their
/// change-feed links) is a few megabytes; anything far beyond is not a job.
pub const MAX_JOB_BYTES: usize = 32 * 1024 * 1024;

/// The largest report a worker publishes (RabbitMQ's own limit is 128 MiB by default, and a message that big
/// closes the channel). Dry-run plan lines are capped long before (`job::MAX_PLANNED_LINES`).
pub const MAX_REPORT_BYTES: usize = 8 * 1024 * 1024;

/// Jobs a worker process runs at once when `--concurrency` is not given (issue 13). A job spends almost all its
/// time waiting on its mailbox's Graph budget (4 in flight, 10,000 requests per 10 minutes), not on the CPU: one
/// process at 32 syncs the benchmark's 30 mailboxes at 1.04x the throttling floor using about 2 % of one core,
/// where at 4 it took 3.57x and four processes still 1.54x. Memory, not CPU, bounds it: a running job holds its
/// plan's writes while it writes them (about 1 KiB per contact created; [`crate::planning_budget`] bounds only the
/// planning), so 32 initial-sync jobs of a 10,000-person central set peak near 400 MiB, within the 512 Mi of
/// `deploy/k8s/worker-deployment.yaml` (`tests/examples/bench/MEASUREMENTS.md`, *Worker concurrency*).
pub const DEFAULT_CONCURRENCY: u16 = 32;

/// Spare slots of a process of `concurrency` slots when `--spare-slots` is not given: a quarter more, taken only by
/// a tenant that runs fewer jobs than the busiest ([`crate::turns`]), so a customer whose run starts while another's
/// long jobs hold every slot starts at once. A tenant alone never takes one, so a process runs more than
/// `concurrency` jobs (and holds their memory) only while two tenants have work in it
/// (`tests/examples/bench/MEASUREMENTS.md`, *Spare slots*).
pub fn default_spare_slots(concurrency: u16) -> u16 {
    concurrency / 4
}

/// How many jobs of a process of `concurrency` slots may wait on a tenant's phase 1 at once: all slots but one,
/// which stays free for phase-1 jobs (a phase-1 attempt run again, or handed back by a worker that died, needs a
/// slot while its tenant's phase-2 jobs wait for it; `overlap::Boards::relay`).
pub fn phase2_places(concurrency: u16) -> usize {
    usize::from(concurrency.max(1)) - 1
}

/// The prefetch of each of `phase`'s lane consumers in a process of `concurrency` slots: enough for one lane to
/// fill the process. Phase 2 runs no more jobs at once than [`phase2_places`] (at least one; `Worker::places`),
/// so a phase-2 job never lands in the slot kept for phase 1: it would find every waiting place taken while its
/// tenant's phase 1 still writes and be put off for `overlap::DEFER_FOR` (5 s; a whole run's tail on a short phase
/// 1, and on a long one a stream of jobs put off and taken again).
///
/// A lane's jobs beyond the free slots wait in the process, unacknowledged, and the session starts the next job
/// of the tenant with the fewest running ([`crate::turns`]), so a run in a lane of its own is not behind another's
/// jobs (fair tenants across runs, issue 13; [`shared::message::Lane`]). On shutdown the waiting ones go back to
/// their queues at once, for other workers, rather than at the end of the grace period.
fn prefetch(phase: Phase, concurrency: u16) -> u16 {
    match phase {
        Phase::Phase1 => concurrency.max(1),
        Phase::Phase2 => u16::try_from(phase2_places(concurrency))
            .unwrap_or(u16::MAX)
            .max(1),
    }
}

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
    /// Jobs run at once; also phase 1's prefetch (phase 2's is one less: [`prefetch`]).
    pub concurrency: u16,
    /// Jobs run at once beyond `concurrency`, by tenants that run fewer than the busiest
    /// ([`default_spare_slots`]).
    pub spare_slots: u16,
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
    /// One per job running; shared by every session, so a reconnect never runs more than `concurrency` at once.
    slots: Arc<Semaphore>,
    /// One per phase-2 job running in a slot ([`phase2_places`]): one slot always stays free for phase 1.
    places: Arc<Semaphore>,
    /// One per job running in a spare slot ([`WorkerConfig::spare_slots`]).
    spare: Arc<Semaphore>,
}

impl Worker {
    /// A worker that runs jobs with `runner`.
    pub fn new(config: WorkerConfig, runner: Arc<JobRunner>) -> Self {
        // Every process of the fleet reads a shared mailbox under its broker lease (issue 13).
        runner.share_leases(BrokerLeases::new(
            config.amqp_url.clone(),
            config.topology.clone(),
            config.name.clone(),
        ));
        // Overlapped phases across the fleet (issue 13): tenants' phase-1 boards are on the broker, and one job slot
        // stays free of jobs waiting on a phase 1, for phase-1 jobs (`overlap::Boards::relay`).
        runner.boards().relay(
            Relay::new(
                config.amqp_url.clone(),
                config.topology.clone(),
                config.name.clone(),
            ),
            phase2_places(config.concurrency) + usize::from(config.spare_slots),
            runner.planning_budget().clone(),
        );
        let slots = Arc::new(Semaphore::new(usize::from(config.concurrency.max(1))));
        let places = Arc::new(Semaphore::new(phase2_places(config.concurrency).max(1)));
        let spare = Arc::new(Semaphore::new(usize::from(config.spare_slots)));
        Self {
            config,
            runner,
            ready: Arc::new(AtomicBool::new(false)),
            slots,
            places,
            spare,
        }
    }

    /// True while the worker holds a live broker connection and consumes; for `/readyz`.
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Jobs running right now (attempts not yet stopped, whatever session took them).
    pub fn running(&self) -> usize {
        usize::from(self.config.concurrency.max(1)) - self.slots.available_permits()
            + usize::from(self.config.spare_slots)
            - self.spare.available_permits()
    }

    /// Consumes until `shutdown` is cancelled, reconnecting whenever the connection is lost.
    ///
    /// On shutdown: stops consuming, lets in-flight jobs finish for up to the grace period, then cancels the rest
    /// and hands them back to the broker.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<StopReason, MqError> {
        const FIRST_DELAY: Duration = Duration::from_millis(500);
        let mut delay = FIRST_DELAY;
        loop {
            match self.session(&shutdown).await {
                Ok(reason) => return Ok(reason),
                Err(SessionEnd { error, consumed }) => {
                    // A session that got to consume was a success: the next failure starts the backoff again
                    // (else a worker that lived through a few restarts waited 30 s before each reconnect).
                    if consumed {
                        delay = FIRST_DELAY;
                    }
                    self.ready.store(false, Ordering::SeqCst);
                    metrics::counter!(crate::metrics::AMQP_RECONNECTS_TOTAL).increment(1);
                    // With its causes: the context alone ("declaring queue …") would hide the broker's reason.
                    let error = shared::telemetry::with_causes(&error);
                    error!(%error, retry_in_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
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
    async fn session(&self, shutdown: &CancellationToken) -> Result<StopReason, SessionEnd> {
        // Every step of the set-up is bounded (`mq::OPERATION_WAIT`), and a shutdown does not wait for it.
        let Opened {
            connection,
            publisher,
            channel,
            consumers,
        } = tokio::select! {
            _ = shutdown.cancelled() => return Ok(StopReason::Shutdown),
            opened = self.open() => opened.map_err(|error| SessionEnd { error, consumed: false })?,
        };
        // Every lane's deliveries, each with its phase, into `turns` as they come.
        let mut deliveries = futures_util::stream::select_all(
            consumers
                .into_iter()
                .map(|(phase, consumer)| consumer.map(move |next| (phase, next))),
        );
        let mut turns = Turns::default();
        // A started job's tenant, sent when it stops (before its slot is free again).
        let (stopped, mut stops) = mpsc::unbounded_channel::<String>();
        self.ready.store(true, Ordering::SeqCst);
        info!(
            broker = %mq::redact_url(&self.config.amqp_url),
            concurrency = self.config.concurrency,
            spare_slots = self.config.spare_slots,
            "consuming"
        );
        // Cancelled when this session's deliveries can no longer be settled: their attempts must stop writing.
        let attempts = CancellationToken::new();
        // Cancelled by a delivery whose publish failed: the publish channel is not to be trusted any more.
        let broken = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut watch = Watch::new(&connection, &channel);
        let fleet = fleet_size::follow(&connection, &self.config.topology, self.runner.graph());
        tokio::pin!(fleet);
        let outcome = loop {
            // A job may start once a slot is free and, for a phase-2 job, a place too (one slot stays free for
            // phase 1): with no phase-1 job waiting, wait for both. Dropped unfinished, it gives back what it took.
            let phase2_only = !turns.phase1_waiting();
            // A spare slot is for a tenant that runs fewer jobs than the busiest, and only while no slot would
            // take its job now (a stop wakes the loop, so this is looked at again whenever a job ends).
            let spare_wanted = turns.spare_waiting()
                && (self.slots.available_permits() == 0
                    || (phase2_only && self.places.available_permits() == 0));
            let spare = self.spare.clone().acquire_owned();
            let free = async {
                let slot = self.slots.clone().acquire_owned().await;
                let place = if phase2_only {
                    Some(self.places.clone().acquire_owned().await)
                } else {
                    self.places.clone().try_acquire_owned().ok().map(Ok)
                };
                (slot, place)
            };
            // The job to start, with the permits it gives back when it stops.
            let mut started = None;
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(StopReason::Shutdown),
                _ = broken.cancelled() => break Err(MqError::lost("a publish failed; reopening the channels")),
                error = watch.lost() => break Err(error),
                never = &mut fleet => match never {},
                next = deliveries.next() => match next {
                    // Grouped by the tenant the producer names in the header; a message without one (published
                    // by hand) is grouped with the others like it.
                    Some((phase, Ok(message))) => {
                        let tenant = header_str(&message.properties, TENANT_HEADER).unwrap_or_default();
                        turns.push(&tenant, phase, message);
                    }
                    Some((_, Err(source))) => break Err(MqError::Amqp { context: "consuming jobs".into(), source }),
                    None => break Err(MqError::lost("the broker cancelled the consumers")),
                },
                Some(tenant) = stops.recv() => turns.finished(&tenant),
                (slot, place) = free, if turns.any_waiting() => {
                    let (Ok(slot), Ok(place)) = (slot, place.transpose()) else {
                        break Err(MqError::lost("the job slots were closed"));
                    };
                    while let Ok(tenant) = stops.try_recv() {
                        turns.finished(&tenant);
                    }
                    let Some((tenant, phase, message)) = turns.start(place.is_some()) else {
                        continue;
                    };
                    let place = place.filter(|_| phase == Phase::Phase2);
                    started = Some((tenant, message, (slot, place)));
                }
                spare = spare, if spare_wanted => {
                    let Ok(spare) = spare else {
                        break Err(MqError::lost("the spare job slots were closed"));
                    };
                    while let Ok(tenant) = stops.try_recv() {
                        turns.finished(&tenant);
                    }
                    let Some((tenant, _, message)) = turns.start_spare() else {
                        continue;
                    };
                    started = Some((tenant, message, (spare, None)));
                }
            }
            if let Some((tenant, message, permits)) = started {
                let delivery = Broker {
                    message,
                    publisher: publisher.clone(),
                    broken: broken.clone(),
                };
                let runner = self.runner.clone();
                let retry = self.config.retry;
                let attempts = attempts.clone();
                let stopped = stopped.clone();
                let span = delivery.span();
                tracker.spawn(async move {
                    delivery::process(delivery, runner.as_ref(), &retry, &attempts)
                        .instrument(span)
                        .await;
                    let _ = stopped.send(tenant);
                    drop(permits);
                });
            }
        };
        self.ready.store(false, Ordering::SeqCst);
        tracker.close();
        // On a lost connection or channel the deliveries are (or are about to be) back in the queue and may run
        // elsewhere: no grace, their attempts stop writing now. On shutdown they may finish for the grace period.
        if outcome.is_ok() {
            for (phase, lane) in Lane::of_every_phase() {
                let tag = consumer_tag(&self.config.name, phase, lane);
                let _ = tokio::time::timeout(
                    CLOSE_WAIT,
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
                )
                .await;
            }
            // Jobs delivered and not started go back now: another worker may take them during the grace period.
            let mut waiting = turns.drain();
            while let Some(Some((_, Ok(message)))) = deliveries.next().now_or_never() {
                waiting.push(message);
            }
            for message in waiting {
                let _ = tokio::time::timeout(
                    CLOSE_WAIT,
                    message.nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    }),
                )
                .await;
            }
            // The grace holds only while the deliveries are still this worker's: a connection or channel lost
            // meanwhile put them back in the queue, so their attempts stop at once.
            tokio::select! {
                _ = tracker.wait() => {}
                _ = tokio::time::sleep(self.config.grace) => warn!(
                    grace_secs = self.config.grace.as_secs(),
                    "in-flight jobs did not finish in time; cancelling them and handing them back"
                ),
                error = watch.lost() => warn!(error = %shared::telemetry::with_causes(&error),
                    "the broker took the in-flight jobs back during the grace period; cancelling them"),
            }
        }
        attempts.cancel();
        // Every attempt has stopped once this returns (a cancelled attempt publishes nothing; its hand-back and
        // every publish are bounded by CLOSE_WAIT and mq::OPERATION_WAIT).
        tracker.wait().await;
        // On a connection that is already gone a close may never be answered; it must not keep the worker from
        // reconnecting (or from exiting).
        let _ = mq::close_channel(&channel, "worker stopping").await;
        let _ = mq::close_connection(&connection, "worker stopping").await;
        outcome.map_err(|error| SessionEnd {
            error,
            consumed: true,
        })
    }
}

/// Notices, as soon as lapin reports it, that the broker closed the session's connection or one of its channels
/// (the consume channel closed on a consumer timeout, say): from then on its deliveries are back in the queue.
/// lapin does not always end the consumer stream when the socket dies (seen after a RabbitMQ restart: a reset
/// connection, and the worker waiting on its consumers for ever), so the status is also looked at every
/// [`CONNECTION_CHECK`].
struct Watch<'a> {
    connection: &'a lapin::Connection,
    channel: &'a lapin::Channel,
    events: futures_util::stream::BoxStream<'static, lapin::Event>,
    tick: tokio::time::Interval,
}

impl<'a> Watch<'a> {
    fn new(connection: &'a lapin::Connection, channel: &'a lapin::Channel) -> Self {
        Self {
            connection,
            channel,
            events: Box::pin(connection.events_listener()),
            tick: tokio::time::interval(CONNECTION_CHECK),
        }
    }

    /// Resolves once the connection or a channel of it is lost, with what was lost.
    async fn lost(&mut self) -> MqError {
        loop {
            tokio::select! {
                event = self.events.next() => match event {
                    Some(lapin::Event::Error(error)) => {
                        return MqError::Amqp {
                            context: "the broker closed the connection or one of its channels".into(),
                            source: error,
                        }
                    }
                    Some(_) => {}
                    // No more events: the connection is gone; the status check below says so.
                    None => self.events = Box::pin(futures_util::stream::pending()),
                },
                _ = self.tick.tick() => {
                    if !self.connection.status().connected() {
                        return MqError::lost("the broker connection was lost");
                    }
                    if !self.channel.status().connected() {
                        return MqError::lost("the broker closed the consume channel (consumer timeout?)");
                    }
                }
            }
        }
    }
}

/// Why a session that must be replaced ended.
struct SessionEnd {
    error: MqError,
    /// Whether it got as far as consuming.
    consumed: bool,
}

/// What a session consumes and publishes through.
struct Opened {
    connection: lapin::Connection,
    publisher: Publisher,
    channel: lapin::Channel,
    /// One consumer per lane of each phase.
    consumers: Vec<(Phase, Consumer)>,
}

/// The consumer tag of `phase`'s `lane` in worker `name`: lane 0 keeps the tag of earlier releases.
fn consumer_tag(name: &str, phase: Phase, lane: Lane) -> String {
    match lane.number() {
        0 => format!("{name}-{phase}"),
        n => format!("{name}-{phase}-lane{n}"),
    }
}

impl Worker {
    /// Connects, declares the topology, opens the publish channel and consumes both phase queues; each step
    /// bounded, so a broker that takes a socket and goes quiet makes the session fail and reconnect.
    async fn open(&self) -> Result<Opened, MqError> {
        let half_open = HalfOpen(Some(
            mq::connect(&self.config.amqp_url, &self.config.name).await?,
        ));
        let Some(connection) = half_open.0.as_ref() else {
            return Err(MqError::lost(
                "the connection was gone before it was set up",
            ));
        };
        let setup = mq::open_channel(connection, "setup").await?;
        mq::declare(&setup, &self.config.topology).await?;
        let publisher = Publisher::open(connection, self.config.topology.clone()).await?;
        let channel = mq::open_channel(connection, "consume").await?;
        let mut consumers = Vec::new();
        for (phase, lane) in Lane::of_every_phase() {
            // Each consumer gets the prefetch set before it (RabbitMQ's per-consumer `basic.qos`).
            let prefetch = prefetch(phase, self.config.concurrency);
            mq::bounded("setting prefetch", async {
                channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await
                    .map_err(mq::amqp("setting prefetch"))
            })
            .await?;
            let queue = self.config.topology.lane_queue(phase, lane);
            let tag = consumer_tag(&self.config.name, phase, lane);
            consumers.push((phase, mq::consume(&channel, &queue, &tag).await?));
        }
        let Some(connection) = half_open.keep() else {
            return Err(MqError::lost(
                "the connection was gone before it was set up",
            ));
        };
        Ok(Opened {
            connection,
            publisher,
            channel,
            consumers,
        })
    }
}

/// A connection [`Worker::open`] is still setting up. Should the set-up fail or be dropped half-way (a shutdown
/// does not wait for it), the connection is closed: lapin keeps a dropped connection open, and one whose first
/// consumer was already registered held its prefetched jobs unacknowledged, in no queue, until the process
/// exited (seen in `redelivery::a_drained_worker_stops_writing_before_its_job_goes_back`: a shutdown between the
/// two phases' `basic_consume`).
struct HalfOpen(Option<lapin::Connection>);

impl HalfOpen {
    /// The set-up is done: the connection is the session's.
    fn keep(mut self) -> Option<lapin::Connection> {
        self.0.take()
    }
}

impl Drop for HalfOpen {
    fn drop(&mut self) {
        let Some(connection) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = mq::close_connection(&connection, "worker stopping").await;
            });
        }
    }
}

/// A RabbitMQ delivery and the publisher its outcome goes through.
struct Broker {
    message: lapin::message::Delivery,
    publisher: Publisher,
    /// Cancelled when a publish fails, so the session reopens its channels before taking more jobs.
    broken: CancellationToken,
}

impl Broker {
    /// The phase its routing key names; phase 2 for a key no producer makes (a message published by hand).
    fn phase(&self) -> Phase {
        Lane::of_routing_key(self.message.routing_key.as_str())
            .map_or(Phase::Phase2, |(phase, _)| phase)
    }

    /// The job's span; before the body is parsed, the delivery tag and phase are what an operator can find the
    /// message by (no run id, tenant or mailbox can be trusted from a body that may not parse).
    fn span(&self) -> tracing::Span {
        let attempt = attempt_of(&self.message.properties);
        match self.job() {
            Ok(job) => info_span!("job", run_id = %job.run_id, tenant = %job.tenant_id,
                mailbox = %job.mailbox().upn, phase = %job.phase(), attempt),
            Err((phase, _)) => info_span!("job", phase = %phase, attempt,
                delivery_tag = self.message.delivery_tag),
        }
    }

    /// Waits for a publish (bounded by `mq::OPERATION_WAIT`); a failure marks the publish channel broken.
    async fn published(
        &self,
        publish: impl std::future::Future<Output = Result<(), MqError>>,
    ) -> Result<(), DeliveryError> {
        let result = publish.await.map_err(DeliveryError::from);
        if result.is_err() {
            self.broken.cancel();
        }
        result
    }
}

impl Delivery for Broker {
    fn attempt(&self) -> u32 {
        attempt_of(&self.message.properties)
    }

    fn job(&self) -> Result<Job, (Phase, String)> {
        parse_job(&self.message.data).map_err(|error| (self.phase(), error))
    }

    async fn retry(
        &mut self,
        job: &Job,
        attempt: u32,
        wait: Duration,
    ) -> Result<(), DeliveryError> {
        self.published(self.publisher.publish_retry(job, attempt, wait))
            .await
    }

    async fn dead_letter(
        &mut self,
        phase: Phase,
        reason: FailureReason,
        error: &str,
    ) -> Result<(), DeliveryError> {
        let publish = self.publisher.publish_dead_letter(
            phase,
            &self.message.data,
            &self.message.properties,
            reason,
            error,
        );
        self.published(publish).await
    }

    async fn report(&mut self, job: &Job, report: &Report) -> Result<(), DeliveryError> {
        publish_report(self, job, report).await
    }

    async fn ack(self) {
        let acked =
            tokio::time::timeout(CLOSE_WAIT, self.message.ack(BasicAckOptions::default())).await;
        if !matches!(acked, Ok(Ok(_))) {
            // The channel is gone; the broker requeues unacknowledged deliveries by itself.
            warn!("could not acknowledge a delivery; the broker will redeliver it");
        }
    }

    async fn hand_back(self) {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let nacked = tokio::time::timeout(CLOSE_WAIT, self.message.nack(options)).await;
        if !matches!(nacked, Ok(Ok(_))) {
            warn!("could not hand a delivery back; the broker requeues it when the channel goes");
        }
    }
}

/// The one place a worker publishes a report: its size is checked first (an oversized message would close the
/// publish channel), then it goes to the queue of the job's run with a confirm.
async fn publish_report(
    delivery: &Broker,
    job: &Job,
    report: &Report,
) -> Result<(), DeliveryError> {
    let fitted;
    let report = if report.to_json().len() > MAX_REPORT_BYTES {
        fitted = without_plan_lines(report);
        &fitted
    } else {
        report
    };
    let bytes = report.to_json().len();
    if bytes > MAX_REPORT_BYTES {
        return Err(DeliveryError::TooLarge {
            what: "report",
            bytes,
            max: MAX_REPORT_BYTES,
        });
    }
    delivery
        .published(delivery.publisher.publish_report(job, report))
        .await
}

/// `report` without its dry-run lines (the counts stay), for a report too large to publish whole.
fn without_plan_lines(report: &Report) -> Report {
    let mut smaller = report.clone();
    let left_out = smaller.planned.len();
    smaller.planned = vec![format!(
        "{left_out} plan lines left out: the report was larger than {MAX_REPORT_BYTES} bytes"
    )];
    smaller
}

/// A job from a message body, or why it is not one: the size is checked before the body is parsed.
fn parse_job(body: &[u8]) -> Result<Job, String> {
    let bytes = body.len();
    if bytes > MAX_JOB_BYTES {
        return Err(format!(
            "a job message of {bytes} bytes is larger than the {MAX_JOB_BYTES} bytes a worker runs"
        ));
    }
    Job::from_json(body).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phase 2's consumer never fills the slot kept for phase 1, and a process of one slot still takes both.
    #[test]
    fn phase_2_takes_no_more_jobs_than_may_wait_and_phase_1_every_slot() {
        for concurrency in [1u16, 2, 3, 4, 32, 256] {
            let phase2 = usize::from(prefetch(Phase::Phase2, concurrency));
            assert_eq!(prefetch(Phase::Phase1, concurrency), concurrency);
            assert!(phase2 >= 1, "prefetch 0 is unlimited to RabbitMQ");
            assert!(
                phase2 <= phase2_places(concurrency).max(1),
                "{concurrency} slots: phase 2 takes {phase2} jobs, {} may wait",
                phase2_places(concurrency)
            );
        }
        assert_eq!(prefetch(Phase::Phase2, 32), 31);
    }

    /// The test broker (RabbitMQ at 127.0.0.1:5672 unless `AMQP_URL` says otherwise).
    fn amqp_url() -> String {
        std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    /// Ready messages of `queue`, asked on a connection of its own.
    async fn ready(queue: &str) -> u32 {
        let connection = mq::connect(&amqp_url(), "half-open-test-probe")
            .await
            .expect("RabbitMQ must run at AMQP_URL (default 127.0.0.1:5672)");
        let channel = connection.create_channel().await.expect("channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = mq::close_connection(&connection, "done").await;
        declared.message_count()
    }

    /// Failed before the fix (the drain test, about one run in ten under load): a shutdown while the session
    /// was being set up dropped the half-open connection after its first consumer had taken a job; lapin kept the
    /// connection open and the job stayed unacknowledged, in no queue, until the process exited. Dropping a
    /// [`HalfOpen`] now closes it and the job is back in its queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_half_open_connection_dropped_gives_its_delivered_jobs_back() {
        let queue = format!("half-open-{}", uuid::Uuid::new_v4().simple());
        let admin = mq::connect(&amqp_url(), "half-open-test-admin")
            .await
            .expect("RabbitMQ must run at AMQP_URL (default 127.0.0.1:5672)");
        let admin_channel = admin.create_channel().await.expect("channel");
        admin_channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare");
        admin_channel
            .confirm_select(Default::default())
            .await
            .expect("confirms");
        admin_channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                Default::default(),
                b"job",
                Default::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");

        let half_open = HalfOpen(Some(
            mq::connect(&amqp_url(), "half-open-test")
                .await
                .expect("connect"),
        ));
        let channel = half_open
            .0
            .as_ref()
            .expect("just connected")
            .create_channel()
            .await
            .expect("channel");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("prefetch");
        let mut consumer = mq::consume(&channel, &queue, "half-open")
            .await
            .expect("consume");
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("the job is delivered")
            .expect("a delivery")
            .expect("not an error");
        assert_eq!(delivery.data, b"job");
        assert_eq!(ready(&queue).await, 0, "the consumer holds the job");
        // The shutdown comes while the next queue's `basic_consume` is on the wire: its future is dropped after
        // sending it (lapin then keeps the connection alive), then everything the `open` future held.
        let abandoned = futures_util::FutureExt::now_or_never(mq::consume(
            &channel,
            &queue,
            "half-open-second",
        ));
        assert!(abandoned.is_none(), "the second consume was not in flight");
        drop((delivery, consumer, channel, half_open));
        let mut waited = Duration::ZERO;
        while ready(&queue).await != 1 {
            assert!(
                waited < Duration::from_secs(30),
                "the job did not go back to its queue: the half-open connection kept it"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        let _ = admin_channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
        let _ = mq::close_connection(&admin, "done").await;
    }

    /// Failed before the fix: any body was handed to the JSON parser whatever its size.
    #[test]
    fn an_oversized_or_malformed_body_is_refused_with_a_reason() {
        let huge = vec![b' '; MAX_JOB_BYTES + 1];
        let refused = parse_job(&huge).expect_err("too large");
        assert!(refused.contains("larger than"), "{refused}");
        let refused = parse_job(b"{\"schema\":1,\"phase\":").expect_err("malformed");
        assert!(refused.starts_with("malformed job"), "{refused}");
    }

    #[test]
    fn a_report_too_large_keeps_its_counts_and_loses_its_plan_lines() {
        let report = Report {
            schema: shared::message::SCHEMA_VERSION,
            job_id: uuid::Uuid::nil(),
            run_id: uuid::Uuid::nil(),
            tenant_id: "t".into(),
            phase: Phase::Phase1,
            mailbox: shared::model::Mailbox {
                id: "m".into(),
                upn: "m@t".into(),
            },
            attempt: 1,
            outcome: shared::message::Outcome::Succeeded,
            counts: shared::sync::PlanCounts {
                created: 3,
                ..Default::default()
            },
            failed_writes: 0,
            source_failures: vec![],
            planned: vec!["x".repeat(1_000); 10],
            graph: Default::default(),
            cursors: Default::default(),
            dry_run: false,
            skipped: false,
            duration_ms: 0,
            photos: Default::default(),
            finished_at: chrono::Utc::now(),
        };
        let smaller = without_plan_lines(&report);
        assert_eq!(smaller.counts, report.counts);
        assert_eq!(smaller.planned.len(), 1);
        assert!(smaller.planned[0].starts_with("10 plan lines left out"));
    }
}
