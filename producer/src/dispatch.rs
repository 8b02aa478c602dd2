//! How a run's jobs travel ([`Dispatch`], what the orchestrator asks of a transport) and the two transports: the
//! embedded in-process queue (default) and RabbitMQ.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::{Connection, Consumer};
use shared::config::TenantSettings;
use shared::message::{FailureReason, Job, JobKind, Lane, Phase, Report};
use shared::mq::{self, board, MqError, Publisher, Topology, CLOSE_WAIT};
use shared::run_status::RunStatus;
use shared::telemetry::with_causes;
use tokio::sync::mpsc;
use tracing::{info, warn};
use uuid::Uuid;
use worker::disposition::RetryPolicy;
use worker::embedded::EmbeddedQueue;
use worker::job::JobRunner;
use worker::overlap::{Ended, Planned};

use crate::fair::{self, Limits};
use crate::lease::{FileLeases, LeaseError};
use crate::prepare::PreparedTenant;
use crate::state::StateStore;

/// A job transport: the embedded queue or RabbitMQ.
///
/// Only used from the producer's own task, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Dispatch {
    /// Queues jobs in their order (returns once the transport has accepted every one).
    async fn submit(&mut self, jobs: Vec<Job>) -> Result<()>;
    /// The next report of this run (or, with overlapped phases, news of a phase-1 plan), or `None` if nothing
    /// arrived within `wait`.
    async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>>;
    /// "embedded" or "broker", for the report.
    fn mode(&self) -> &'static str;
    /// How many of the run's jobs may be out at once, per tenant and in all ([`crate::fair`]).
    fn limits(&self) -> Limits {
        Limits::broker(None)
    }
    /// Prepares to receive run `run_id`'s reports, before any job is submitted (the broker declares the run's
    /// own report queue and names it in every job, so concurrent runs never take each other's reports).
    async fn begin(&mut self, _run_id: Uuid) -> Result<()> {
        Ok(())
    }
    /// `tenant` was prepared as `ready`. An in-process transport's workers take its shared mailbox and central
    /// folder as their own resolution (the same configuration, read moments before), instead of asking Graph again
    /// before their first job; a broker's workers never trust what reaches them through it.
    fn tenant_prepared(&mut self, _tenant: &TenantSettings, _ready: &PreparedTenant) {}
    /// Takes `tenant_id`'s lease for the rest of the run (see [`crate::lease`]), without waiting.
    async fn lease(&mut self, tenant_id: &str) -> Result<(), LeaseError>;
    /// The run is over: gives back what [`Dispatch::begin`] and [`Dispatch::lease`] took.
    async fn end(&mut self) {}
    /// Whether a tenant's phase-2 jobs may go out once its phase 1 planned, overlapping its writes (issue 13): the
    /// phase-1 job tells them each confirmed create on its board (`worker::overlap`), in memory or on the broker.
    fn overlaps_phases(&self) -> bool {
        false
    }
    /// An overlapped tenant's phase 1 is over (from its final report): its phase-2 jobs, already out, settle, or
    /// undo what they sent early when it failed. (Its job says so itself when it succeeds; this also covers an
    /// attempt that ended without saying, and a job that failed for good.)
    async fn phase1_ended(&mut self, _tenant_id: &str, _run_id: Uuid, _ended: Ended) -> Result<()> {
        Ok(())
    }
    /// Jobs the producer failed for good without sending them, each with its reason and error (their mailbox is
    /// one this run's phase 1 could not read, see `Job::unreadable_report`): a broker puts each in its phase's
    /// dead-letter queue, where operators find every job that failed for good. An embedded run has no such queue
    /// (the run's summary names them, as it names every failed mailbox).
    async fn dead_letter(&mut self, _letters: Vec<(Job, FailureReason, String)>) -> Result<()> {
        Ok(())
    }
    /// Keeps the run's latest progress where `status` can read it. Nobody but this process can see an embedded
    /// run, so by default there is nothing to do.
    async fn publish_run_status(&mut self, _status: &RunStatus) -> Result<()> {
        Ok(())
    }
}

/// What the transport hands the orchestrator.
#[derive(Debug)]
pub enum Event {
    /// A job's report (boxed: most of a run's events, and a report is large beside a plan's news).
    Report(Box<Report>),
    /// A tenant's phase-1 job made its plan (overlapped phases only): its phase-2 jobs may go out.
    Planned(Planned),
}

impl From<Report> for Event {
    fn from(report: Report) -> Self {
        Event::Report(Box::new(report))
    }
}

/// How long an embedded run waits, at least, for a report once no attempt runs (see `Embedded::next_event`).
const REPORT_GRACE: Duration = Duration::from_secs(1);

/// Jobs run by in-process workers.
pub struct Embedded {
    queue: EmbeddedQueue,
    leases: Option<FileLeases>,
    limits: Limits,
    runner: Arc<JobRunner>,
    /// Phase-1 plans, with overlapped phases on ([`Embedded::overlap_phases`]).
    news: Option<mpsc::UnboundedReceiver<Planned>>,
}

impl Embedded {
    /// Starts `workers` in-process workers; tenant leases are lock files in `lease_dir` (the state directory;
    /// `None`: no lease is taken).
    pub fn start(
        runner: Arc<JobRunner>,
        workers: usize,
        retry: RetryPolicy,
        lease_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            queue: EmbeddedQueue::start(runner.clone(), workers, retry),
            leases: lease_dir.map(FileLeases::new),
            limits: Limits::embedded(workers, None),
            runner,
            news: None,
        }
    }

    /// Overlapped phases (issue 13): a tenant's phase-2 jobs go out once its phase 1 planned, and copy each new
    /// person as Graph confirms its central create (`worker::overlap`, `shared::sync::overlap`).
    pub fn overlap_phases(mut self, on: bool) -> Self {
        if on && self.news.is_none() {
            self.news = self.runner.boards().enable();
        }
        self
    }

    /// At most `per_tenant` jobs of one tenant run at once (`--tenant-jobs`); default: every worker.
    pub fn tenant_jobs(mut self, per_tenant: Option<NonZeroUsize>) -> Self {
        self.limits = Limits {
            per_tenant: per_tenant.unwrap_or(self.limits.per_tenant),
            ..self.limits
        };
        self
    }
}

impl Dispatch for Embedded {
    async fn submit(&mut self, jobs: Vec<Job>) -> Result<()> {
        for job in jobs {
            self.queue.submit(job);
        }
        Ok(())
    }

    /// In one process no report is lost: `wait` passes without one only while no attempt runs (a job that writes
    /// for longer than `--idle-timeout-secs`, say a large tenant's phase 1 in Graph's windows, is waited for; given
    /// up on, its writes would go on after the run released its lease).
    async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>> {
        let Self {
            queue,
            news,
            runner,
            ..
        } = self;
        // Slices of at least a second (the caller's last one may be a sliver: no busy loop while attempts run), and
        // one more second once none runs, for the report of an attempt that just ended (its count drops first).
        let mut slice = wait.max(REPORT_GRACE);
        let mut last = false;
        loop {
            let next = async {
                match news.as_mut() {
                    Some(plans) => tokio::select! {
                        biased;
                        Some(planned) = plans.recv() => Some(Event::Planned(planned)),
                        report = queue.next_report() => report.map(Event::from),
                    },
                    None => queue.next_report().await.map(Event::from),
                }
            };
            match tokio::time::timeout(slice, next).await {
                Ok(event) => return Ok(event),
                Err(_) if runner.in_flight().now() > 0 => {
                    tracing::debug!(
                        running = runner.in_flight().now(),
                        "no report yet; attempts still run"
                    );
                    slice = wait.max(REPORT_GRACE);
                    last = false;
                }
                Err(_) if !last => {
                    slice = REPORT_GRACE;
                    last = true;
                }
                Err(_) => return Ok(None),
            }
        }
    }

    fn overlaps_phases(&self) -> bool {
        self.news.is_some()
    }

    fn tenant_prepared(&mut self, tenant: &TenantSettings, ready: &PreparedTenant) {
        self.runner.knows(tenant, ready.central.as_ref());
    }

    async fn phase1_ended(&mut self, tenant_id: &str, run_id: Uuid, ended: Ended) -> Result<()> {
        self.runner.boards().ended(tenant_id, run_id, ended);
        Ok(())
    }

    fn mode(&self) -> &'static str {
        "embedded"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn lease(&mut self, tenant_id: &str) -> Result<(), LeaseError> {
        match &mut self.leases {
            Some(leases) => leases.take(tenant_id),
            None => Ok(()),
        }
    }

    async fn end(&mut self) {
        if let Some(leases) = &mut self.leases {
            leases.release();
        }
    }
}

/// How long the producer keeps trying to get its broker back before the run fails.
const RECONNECT_FOR: Duration = Duration::from_secs(180);

/// How often one job is published before the run gives up on the broker: a publish that keeps failing on fresh
/// connections (a refused or unroutable message) will not succeed by trying for ever.
const PUBLISH_ATTEMPTS: u32 = 5;

/// Jobs published to RabbitMQ, reports read back from the run's own report queue.
///
/// A lost connection (broker restart, network) is re-established with backoff and the failed step repeated: jobs
/// and reports are durable, so nothing is lost, and a job published twice has the same id (its second report is
/// ignored by the orchestrator, its second run writes nothing). The reconnect is this type's alone (lapin's own
/// recovery is off, see [`mq::connect`]): the replaced connection is closed, so no consumer of it is left to
/// take reports nobody reads. Tenant leases and the run's report queue are taken again on the new connection.
pub struct Broker {
    url: String,
    topology: Topology,
    session: Session,
    /// The run and its own report queue, once [`Dispatch::begin`] declared it.
    run: Option<(Uuid, String)>,
    /// Tenants whose lease this run holds, with their lease queue.
    leases: Vec<(String, String)>,
    /// The job queues this run's jobs travel in ([`Lane`]), chosen when it begins.
    lane: Lane,
    limits: Limits,
    /// Overlapped phases across the fleet ([`Broker::overlap_phases`]).
    overlap: bool,
    /// The tenants whose phase-1 job went out overlapped this run: each may have a board on the broker, deleted at
    /// the run's end.
    boards: Vec<String>,
    /// Where the boards that may be on the broker are noted per tenant ([`Broker::note_boards_in`]).
    board_notes: Option<StateStore>,
}

/// One connection with its confirm channel and, once the run began, its report consumer.
struct Session {
    connection: Connection,
    publisher: Publisher,
    reports: Option<Consumer>,
}

impl Session {
    async fn open(url: &str, topology: &Topology) -> Result<Self> {
        // Every step here and in `consume` is bounded (`mq::OPERATION_WAIT`): a broker caught mid-restart that
        // takes the socket and never answers fails the step, and the reconnect loop tries again.
        let connection = mq::connect(url, "contactmirror-producer").await?;
        let setup = mq::open_channel(&connection, "setup").await?;
        mq::declare(&setup, topology).await?;
        let publisher = Publisher::open(&connection, topology.clone()).await?;
        Ok(Self {
            connection,
            publisher,
            reports: None,
        })
    }

    /// Declares the run's report queue `run_id` and starts reading it.
    async fn consume(&mut self, topology: &Topology, run_id: Uuid) -> Result<String> {
        let channel = mq::open_channel(&self.connection, "report").await?;
        let queue = mq::declare_run_reports(&channel, topology, run_id).await?;
        let prefetch = async {
            channel
                .basic_qos(256, BasicQosOptions::default())
                .await
                .map_err(mq::amqp("setting report prefetch"))
        };
        mq::bounded("setting report prefetch", prefetch).await?;
        let reports = mq::consume(&channel, &queue, "contactmirror-producer").await?;
        self.reports = Some(reports);
        Ok(queue)
    }

    /// The next report (or news of a phase-1 plan), `None` after `wait` without one. The wait is sliced so that a connection that died
    /// quietly (a consumer stream that just stops) is noticed within seconds, not after the whole idle timeout.
    async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>> {
        let Some(reports) = self.reports.as_mut() else {
            anyhow::bail!("no report queue: the run has not begun");
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let slice = (deadline - now).min(Duration::from_secs(2));
            let delivery = match tokio::time::timeout(slice, reports.next()).await {
                Err(_) if !self.connection.status().connected() => {
                    anyhow::bail!("the broker connection is closed")
                }
                Err(_) => continue,
                Ok(None) => anyhow::bail!("the broker closed the report consumer"),
                Ok(Some(delivery)) => delivery.context("reading the report queue")?,
            };
            let planned = delivery
                .properties
                .kind()
                .as_ref()
                .is_some_and(|kind| kind.as_str() == board::PLANNED_TYPE);
            let event = if planned {
                serde_json::from_slice::<Planned>(&delivery.data)
                    .map(Event::Planned)
                    .map_err(|error| error.to_string())
            } else {
                Report::from_json(&delivery.data)
                    .map(Event::from)
                    .map_err(|error| error.to_string())
            };
            // A report in hand is used even when its ack fails (the connection dying under it): the broker may
            // have taken the ack, and then this is the only copy. If it did not, the report comes again and the
            // ledger ignores the second copy of a final report.
            match tokio::time::timeout(CLOSE_WAIT, delivery.ack(BasicAckOptions::default())).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    warn!(error = %with_causes(&error), "could not acknowledge a report; it may be delivered again")
                }
                Err(_) => warn!("acknowledging a report took too long; it may be delivered again"),
            }
            match event {
                Ok(event) => return Ok(Some(event)),
                Err(error) => warn!(%error, "skipping an unreadable report"),
            }
        }
    }

    /// Closes the connection, waiting [`mq::CLOSE_WAIT`] at most.
    async fn close(&self, why: &str) {
        let _ = mq::close_connection(&self.connection, why).await;
    }
}

impl Broker {
    /// Connects and declares the topology; reports are read once the run begins.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self> {
        let session = Session::open(url, &topology).await?;
        Ok(Self {
            url: url.to_owned(),
            topology,
            session,
            run: None,
            leases: Vec::new(),
            lane: Lane::FIRST,
            limits: Limits::broker(None),
            overlap: false,
            boards: Vec::new(),
            board_notes: None,
        })
    }

    /// Notes each tenant's board in `store` while it may be on the broker, so that a run that could not delete
    /// its boards (the producer crashed, or lost the broker at its end) has them deleted by the tenant's next run,
    /// once that run holds the tenant's lease. `None` (no state kept): such a board stays until deleted by hand.
    pub fn note_boards_in(mut self, store: Option<StateStore>) -> Self {
        self.board_notes = store;
        self
    }

    /// Adds `stream` to (or removes it from) `tenant_id`'s note; a failure only warns (the board is then deleted
    /// at the run's end as always, or by hand after a crash).
    fn note_board(&self, tenant_id: &str, stream: &str, on_broker: bool) {
        let Some(store) = &self.board_notes else {
            return;
        };
        let mut streams = store.boards(tenant_id);
        let changed = if on_broker {
            streams.insert(stream.to_owned())
        } else {
            streams.remove(stream)
        };
        if changed {
            if let Err(error) = store.save_boards(tenant_id, &streams) {
                warn!(tenant = tenant_id, error = %format!("{error:#}"), "could not note the tenant's phase-1 board");
            }
        }
    }

    /// Deletes the boards earlier runs of `tenant_id` noted and left (called under the tenant's lease: no other
    /// run of the tenant is live, so nobody follows them).
    async fn delete_left_boards(&self, tenant_id: &str) {
        let Some(left) = self.board_notes.as_ref().map(|s| s.boards(tenant_id)) else {
            return;
        };
        if left.is_empty() {
            return;
        }
        // On a connection of its own, and bounded: a broker that refuses (a stream's coordinator busy closes the
        // connection) must not take the run's session, which holds the lease, with it, nor hold the run up.
        let left: Vec<(String, String)> = left
            .into_iter()
            .map(|stream| (tenant_id.to_owned(), stream))
            .collect();
        let deleted = async {
            let connection = mq::connect(&self.url, "contactmirror-producer (boards)").await?;
            let deleted = self.delete_boards(&connection, &left).await;
            let _ = mq::close_connection(&connection, "boards deleted").await;
            deleted
        };
        match tokio::time::timeout(CLOSE_WAIT, deleted).await {
            Ok(Ok(())) => {
                info!(
                    tenant = tenant_id,
                    boards = left.len(),
                    "deleted the phase-1 boards earlier runs left"
                )
            }
            Ok(Err(error)) => {
                warn!(tenant = tenant_id, error = %with_causes(&error), "could not delete the phase-1 boards an earlier run left; the next run tries again")
            }
            Err(_) => {
                warn!(tenant = tenant_id, "deleting the phase-1 boards an earlier run left took too long; the next run tries again")
            }
        }
    }

    /// Deletes `boards` (tenant, stream) on `connection`, taking each off its tenant's note once it is gone.
    async fn delete_boards(
        &self,
        connection: &Connection,
        boards: &[(String, String)],
    ) -> Result<(), MqError> {
        let channel = mq::open_channel(connection, "board").await?;
        for (tenant, stream) in boards {
            board::delete_board(&channel, stream).await?;
            self.note_board(tenant, stream, false);
        }
        let _ = mq::close_channel(&channel, "boards deleted").await;
        Ok(())
    }

    /// Overlapped phases across the fleet (issue 13): a tenant's phase-2 jobs go out once its phase 1 planned, and
    /// follow its board on the broker (`worker::overlap::relay`); the producer appends phase 1's end to it and
    /// deletes it when the run ends.
    pub fn overlap_phases(mut self, on: bool) -> Self {
        self.overlap = on;
        self
    }

    /// At most `per_tenant` jobs of one tenant on the broker at once (`--tenant-jobs`); default
    /// [`crate::fair::BROKER_PER_TENANT`].
    pub fn tenant_jobs(mut self, per_tenant: Option<NonZeroUsize>) -> Self {
        self.limits = Limits::broker(per_tenant);
        self
    }

    /// The lane of the job queues this run's jobs travel in: the first one no other run holds, now held by this
    /// run's connection (fair tenants across runs, issue 13: a run started beside another does not queue its
    /// jobs behind the other's); when every lane is held, the one with the fewest jobs waiting, ties spread by the
    /// run's id.
    async fn choose_lane(&self, run_id: Uuid) -> Result<Lane> {
        let connection = &self.session.connection;
        for lane in Lane::all() {
            if mq::take_lease(connection, &self.topology.lane_hold_queue(lane)).await? {
                return Ok(lane);
            }
        }
        let channel = mq::open_channel(connection, "lane depths").await?;
        let mut waiting = Vec::new();
        for lane in Lane::all() {
            let mut jobs = 0;
            for phase in Phase::ALL {
                let queue = self.topology.lane_queue(phase, lane);
                jobs += u64::from(mq::queue_counts(&channel, &queue).await?.ready);
            }
            waiting.push(jobs);
        }
        let _ = mq::close_channel(&channel, "lane depths read").await;
        // UUID v7: its last bits are random.
        let pick = usize::try_from(run_id.as_u128() % 1024).unwrap_or(0);
        Ok(fair::least_waiting(&waiting, pick))
    }

    /// Replaces a broken session, retrying with backoff for up to [`RECONNECT_FOR`], and takes the run's leases
    /// and report queue again. A lease another run took meanwhile ends this run: it may no longer write.
    async fn reconnect(&mut self, cause: &anyhow::Error) -> Result<()> {
        warn!(error = %format!("{cause:#}"), "lost the broker; reconnecting");
        self.session.close("replaced after a broker failure").await;
        let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
        let mut delay = Duration::from_millis(250);
        loop {
            tokio::time::sleep(delay).await;
            match self.reopen().await {
                Ok(session) => {
                    self.session = session;
                    warn!("reconnected to the broker");
                    return Ok(());
                }
                Err(error) if error.downcast_ref::<LeaseError>().is_some() => return Err(error),
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

    /// A new session holding everything the run held on the old one.
    async fn reopen(&self) -> Result<Session> {
        let mut session = Session::open(&self.url, &self.topology).await?;
        for (tenant, queue) in &self.leases {
            if !mq::take_lease(&session.connection, queue).await? {
                session.close("lease lost").await;
                return Err(LeaseError::Held {
                    tenant: tenant.clone(),
                    holder: format!(
                        "the broker queue {queue}, taken while this run was reconnecting"
                    ),
                }
                .into());
            }
        }
        if let Some((run_id, _)) = &self.run {
            session.consume(&self.topology, *run_id).await?;
            // Held again if still free; if another run took it meanwhile, both share it: only fairness suffers.
            let _ = mq::take_lease(
                &session.connection,
                &self.topology.lane_hold_queue(self.lane),
            )
            .await?;
        }
        Ok(session)
    }
}

/// What the producer publishes and must see confirmed: jobs for the workers, and jobs it failed itself for the
/// dead-letter queue.
trait Outgoing: Sized {
    /// The job it carries.
    fn job(&self) -> &Job;
    /// Publishes `items` in order, one result each.
    async fn publish(publisher: &Publisher, items: &[Self]) -> Vec<Result<(), MqError>>;
    /// What could not be done, for the error.
    fn failing(&self) -> String;
}

impl Outgoing for Job {
    fn job(&self) -> &Job {
        self
    }

    async fn publish(publisher: &Publisher, items: &[Self]) -> Vec<Result<(), MqError>> {
        publisher.publish_jobs(items, 1).await
    }

    fn failing(&self) -> String {
        "publish".into()
    }
}

impl Outgoing for (Job, FailureReason, String) {
    fn job(&self) -> &Job {
        &self.0
    }

    async fn publish(publisher: &Publisher, items: &[Self]) -> Vec<Result<(), MqError>> {
        publisher.dead_letter_unsent(items).await
    }

    fn failing(&self) -> String {
        format!("dead-letter ({})", self.1)
    }
}

impl Broker {
    /// Publishes `pending` and waits for the broker's confirms, reconnecting as needed and sending again only what
    /// was not confirmed, each at most [`PUBLISH_ATTEMPTS`] times; a message the broker can never take (too large)
    /// fails at once. Either way the error names the job. The one publishing loop of jobs and dead letters.
    async fn publish_confirmed<T: Outgoing>(&mut self, mut pending: Vec<T>) -> Result<()> {
        let mut attempt = 1;
        loop {
            let results = T::publish(&self.session.publisher, &pending).await;
            let mut failed = Vec::new();
            let mut cause = None;
            for (item, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => {}
                    Err(error) if error.is_permanent() || attempt >= PUBLISH_ATTEMPTS => {
                        let job = item.job();
                        return Err(anyhow::Error::new(error).context(format!(
                            "could not {} the {} job {} for {} (tenant {}) after {attempt} attempt(s)",
                            item.failing(),
                            job.phase(),
                            job.job_id,
                            job.mailbox().upn,
                            job.tenant_id
                        )));
                    }
                    Err(error) => {
                        cause.get_or_insert(error);
                        failed.push(item);
                    }
                }
            }
            let Some(cause) = cause else {
                return Ok(());
            };
            // Those confirmed are on the broker; the others go again on a new connection (a job published twice
            // has the same id: its second copy writes nothing).
            pending = failed;
            attempt += 1;
            self.reconnect(&cause.into()).await?;
        }
    }
}

impl Dispatch for Broker {
    /// Publishes in order and waits for the confirms together ([`mq::Publisher::publish_jobs`], through
    /// `Broker::publish_confirmed`).
    async fn submit(&mut self, jobs: Vec<Job>) -> Result<()> {
        let report_queue = self.run.as_ref().map(|(_, queue)| queue.clone());
        // An overlapped phase-1 job may put a board on the broker (whether or not its news arrives): deleted at the
        // run's end.
        for job in &jobs {
            let overlapped_phase1 = job.overlapped && matches!(job.kind, JobKind::Phase1 { .. });
            if overlapped_phase1 && !self.boards.contains(&job.tenant_id) {
                if let Some((run_id, _)) = &self.run {
                    let stream = self.topology.board_stream(*run_id, &job.tenant_id);
                    self.note_board(&job.tenant_id, &stream, true);
                }
                self.boards.push(job.tenant_id.clone());
            }
        }
        let pending: Vec<Job> = jobs
            .into_iter()
            .map(|job| Job {
                report_queue: report_queue.clone(),
                lane: self.lane,
                ..job
            })
            .collect();
        self.publish_confirmed(pending).await
    }

    async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>> {
        loop {
            match self.session.next_event(wait).await {
                Ok(event) => return Ok(event),
                Err(error) => self.reconnect(&error).await?,
            }
        }
    }

    fn overlaps_phases(&self) -> bool {
        self.overlap
    }

    /// Publishes the letters as jobs are published (`Broker::publish_confirmed`).
    async fn dead_letter(&mut self, letters: Vec<(Job, FailureReason, String)>) -> Result<()> {
        // Named as a sent job is: a letter requeued while the run lasts reports to it.
        let report_queue = self.run.as_ref().map(|(_, queue)| queue.clone());
        let pending: Vec<_> = letters
            .into_iter()
            .map(|(job, reason, error)| {
                let job = Job {
                    report_queue: report_queue.clone(),
                    ..job
                };
                (job, reason, error)
            })
            .collect();
        self.publish_confirmed(pending).await
    }

    /// Appends phase 1's end to the tenant's board, reconnecting as for a job: the phase-2 jobs following it
    /// wait for this (or for the phase-1 job's own word, which a job that failed for good never says).
    async fn phase1_ended(&mut self, tenant_id: &str, run_id: Uuid, ended: Ended) -> Result<()> {
        let entry = worker::overlap::relay::ended_entry(ended);
        let mut attempt = 1;
        loop {
            let appended = async {
                let channel = mq::open_channel(&self.session.connection, "board").await?;
                board::declare_board(&channel, &self.topology, run_id, tenant_id).await?;
                let _ = mq::close_channel(&channel, "declared").await;
                self.session
                    .publisher
                    .publish_board(run_id, tenant_id, entry.clone())
                    .await
            };
            match appended.await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_permanent() || attempt >= PUBLISH_ATTEMPTS => {
                    return Err(anyhow::Error::new(error).context(format!(
                        "could not tell tenant {tenant_id}'s phase-2 jobs that its phase 1 ended"
                    )))
                }
                Err(error) => {
                    attempt += 1;
                    self.reconnect(&error.into()).await?;
                }
            }
        }
    }

    fn mode(&self) -> &'static str {
        "broker"
    }

    fn limits(&self) -> Limits {
        self.limits
    }

    async fn begin(&mut self, run_id: Uuid) -> Result<()> {
        loop {
            let begun = async {
                let queue = self.session.consume(&self.topology, run_id).await?;
                let lane = self.choose_lane(run_id).await?;
                Ok::<_, anyhow::Error>((queue, lane))
            };
            match begun.await {
                Ok((queue, lane)) => {
                    info!(run = %run_id, %lane, "this run's jobs go in their own lane of the job queues");
                    self.run = Some((run_id, queue));
                    self.lane = lane;
                    return Ok(());
                }
                Err(error) => self.reconnect(&error).await?,
            }
        }
    }

    async fn lease(&mut self, tenant_id: &str) -> Result<(), LeaseError> {
        let queue = self.topology.lease_queue(tenant_id);
        match mq::take_lease(&self.session.connection, &queue).await {
            Ok(true) => {
                self.leases.push((tenant_id.to_owned(), queue));
                self.delete_left_boards(tenant_id).await;
                Ok(())
            }
            Ok(false) => Err(LeaseError::Held {
                tenant: tenant_id.to_owned(),
                holder: format!(
                    "the exclusive broker queue {queue}; the management UI shows the connection that owns it"
                ),
            }),
            Err(error) => Err(LeaseError::Unavailable {
                tenant: tenant_id.to_owned(),
                detail: error.to_string(),
            }),
        }
    }

    /// Deletes the run's boards and report queue and closes the connection, which releases the leases.
    async fn end(&mut self) {
        let run = self.run.take();
        let boards = std::mem::take(&mut self.boards);
        if let (Some((run_id, _)), false) = (&run, boards.is_empty()) {
            let boards: Vec<(String, String)> = boards
                .into_iter()
                .map(|tenant| {
                    let stream = self.topology.board_stream(*run_id, &tenant);
                    (tenant, stream)
                })
                .collect();
            let deleted = self.delete_boards(&self.session.connection, &boards);
            // Bounded: a board left behind stays noted, and the tenant's next run deletes it.
            match tokio::time::timeout(CLOSE_WAIT, deleted).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    warn!(error = %with_causes(&error), run = %run_id, "could not delete the run's phase-1 boards; the tenants' next runs will")
                }
                Err(_) => {
                    warn!(run = %run_id, "deleting the run's phase-1 boards took too long; the tenants' next runs will")
                }
            }
        }
        if let Some((_, queue)) = run {
            let deleted = async {
                let channel =
                    mq::open_channel(&self.session.connection, "report queue deletion").await?;
                let deleted = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .map_err(mq::amqp(format!("deleting the run's report queue {queue}")));
                // Closed here, not on drop: lapin closes a dropped channel in the background, which then races
                // the connection's close below and logs a connection error.
                let _ = mq::close_channel(&channel, "report queue deleted").await;
                deleted
            };
            // A failure is harmless: the broker removes the queue once it has been unused for a while.
            match tokio::time::timeout(CLOSE_WAIT, deleted).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    warn!(error = %with_causes(&error), queue = %queue, "could not delete the run's report queue")
                }
                Err(_) => warn!(queue = %queue, "deleting the run's report queue took too long"),
            }
        }
        self.leases.clear();
        self.session.close("run finished").await;
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
