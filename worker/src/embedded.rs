//! The embedded queue: the fleet in one process, with no broker.
//!
//! N tasks take jobs from an in-process channel and run them through the same [`delivery::process`] as the AMQP
//! consumer; a retry is a delayed re-submission, a dead letter is the final report (there is no dead-letter
//! queue to keep). This is the default mode of `contactmirror-producer run`.

use std::sync::Arc;
use std::time::Duration;

use shared::message::{FailureReason, Job, Phase, Report};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, Instrument};

use crate::delivery::{self, Delivery, DeliveryError};
use crate::disposition::RetryPolicy;
use crate::job::JobRunner;

type Queued = (Job, u32);

/// A running in-process fleet. Dropping it stops the workers and cancels their attempts.
pub struct EmbeddedQueue {
    jobs: mpsc::UnboundedSender<Queued>,
    reports: mpsc::UnboundedReceiver<Report>,
    _stop: tokio_util::sync::DropGuard,
    _workers: JoinSet<()>,
}

impl EmbeddedQueue {
    /// Starts `workers` worker tasks (at least one).
    pub fn start(runner: Arc<JobRunner>, workers: usize, policy: RetryPolicy) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Queued>();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let stop = CancellationToken::new();
        let mut set = JoinSet::new();
        for index in 0..workers.max(1) {
            let jobs_rx = jobs_rx.clone();
            let requeue = jobs_tx.clone();
            let reports = reports_tx.clone();
            let runner = runner.clone();
            let stop = stop.clone();
            set.spawn(async move {
                loop {
                    let next = jobs_rx.lock().await.recv().await;
                    let Some((job, attempt)) = next else { break };
                    let span = info_span!("job", worker = index, run_id = %job.run_id, tenant = %job.tenant_id,
                        mailbox = %job.mailbox().upn, phase = %job.phase(), attempt);
                    let delivery = Embedded {
                        job,
                        attempt,
                        requeue: requeue.clone(),
                        reports: reports.clone(),
                        stop: stop.clone(),
                    };
                    delivery::process(delivery, runner.as_ref(), &policy, &stop)
                        .instrument(span)
                        .await;
                    if reports.is_closed() || stop.is_cancelled() {
                        break;
                    }
                }
            });
        }
        Self {
            jobs: jobs_tx,
            reports: reports_rx,
            _stop: stop.drop_guard(),
            _workers: set,
        }
    }

    /// Queues a job as its first attempt.
    pub fn submit(&self, job: Job) {
        // The receiver lives as long as the workers, which live as long as `self`.
        let _ = self.jobs.send((job, 1));
    }

    /// The next report, in completion order; `None` once every worker has stopped.
    pub async fn next_report(&mut self) -> Option<Report> {
        self.reports.recv().await
    }
}

/// A job taken from the in-process channel.
struct Embedded {
    job: Job,
    attempt: u32,
    requeue: mpsc::UnboundedSender<Queued>,
    reports: mpsc::UnboundedSender<Report>,
    stop: CancellationToken,
}

impl Delivery for Embedded {
    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn job(&self) -> Result<Job, (Phase, String)> {
        Ok(self.job.clone())
    }

    async fn retry(
        &mut self,
        job: &Job,
        attempt: u32,
        wait: Duration,
    ) -> Result<(), DeliveryError> {
        let requeue = self.requeue.clone();
        let stop = self.stop.clone();
        let job = job.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(wait) => { let _ = requeue.send((job, attempt)); }
            }
        });
        Ok(())
    }

    async fn dead_letter(
        &mut self,
        _phase: Phase,
        _reason: FailureReason,
        _error: &str,
    ) -> Result<(), DeliveryError> {
        // The final report carries the reason; an embedded run has no dead-letter queue to replay from.
        Ok(())
    }

    async fn report(&mut self, _job: &Job, report: &Report) -> Result<(), DeliveryError> {
        self.reports
            .send(report.clone())
            .map_err(|_| DeliveryError::Closed)
    }

    async fn ack(self) {}

    async fn hand_back(self) {
        // Only a cancelled attempt (the queue is being dropped) or a lost report receiver gets here; the job goes
        // back to the channel in case a worker is still taking jobs.
        let _ = self.requeue.send((self.job, self.attempt));
    }
}
