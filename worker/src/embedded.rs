//! The embedded queue: the fleet in one process, with no broker.
//!
//! N tasks take jobs from an in-process channel and run them with the same [`JobRunner`] and the same
//! [`RetryPolicy`] as the AMQP consumer; a retry is a delayed re-submission, a dead letter is kept in memory and
//! reported. This is the default mode of `contactmirror-producer run`.

use std::sync::Arc;

use shared::message::{Job, Report};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tracing::{info_span, Instrument};

use crate::disposition::{RetryPolicy, Step};
use crate::job::JobRunner;

/// A running in-process fleet. Dropping it stops the workers.
pub struct EmbeddedQueue {
    jobs: mpsc::UnboundedSender<(Job, u32)>,
    reports: mpsc::UnboundedReceiver<Report>,
    _workers: JoinSet<()>,
}

impl EmbeddedQueue {
    /// Starts `workers` worker tasks (at least one).
    pub fn start(runner: Arc<JobRunner>, workers: usize, policy: RetryPolicy) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<(Job, u32)>();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut set = JoinSet::new();
        for index in 0..workers.max(1) {
            let jobs_rx = jobs_rx.clone();
            let requeue = jobs_tx.clone();
            let reports_tx = reports_tx.clone();
            let runner = runner.clone();
            set.spawn(async move {
                loop {
                    let next = jobs_rx.lock().await.recv().await;
                    let Some((job, attempt)) = next else { break };
                    let span = info_span!("job", worker = index, run_id = %job.run_id, tenant = %job.tenant_id,
                        mailbox = %job.mailbox().upn, phase = %job.phase(), attempt);
                    let report = run_one(&runner, &policy, &requeue, job, attempt).instrument(span).await;
                    if reports_tx.send(report).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            jobs: jobs_tx,
            reports: reports_rx,
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

async fn run_one(
    runner: &JobRunner,
    policy: &RetryPolicy,
    requeue: &mpsc::UnboundedSender<(Job, u32)>,
    job: Job,
    attempt: u32,
) -> Report {
    let started = std::time::Instant::now();
    let outcome = runner.run(&job, attempt).await;
    let step = policy.next_step(attempt, &outcome.result);
    // The same metrics as the AMQP consumer, so an embedded run scraped by a test or a sidecar reads alike.
    crate::metrics::record_job(
        job.phase(),
        crate::metrics::outcome_label(&step),
        started.elapsed(),
    );
    let mut report = outcome.report;
    report.outcome = step.outcome(&outcome.result);
    if let Step::Retry { attempt, wait } = step {
        let requeue = requeue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = requeue.send((job, attempt));
        });
    }
    report
}
