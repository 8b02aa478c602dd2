//! One delivery, from job to settlement, written once for every queue.
//!
//! The broker ([`crate::consumer`]) and the embedded queue ([`crate::embedded`]) each implement [`Delivery`];
//! [`process`] runs the attempt and carries out the [`Step`] the retry policy chose, in an order that keeps
//! effects exactly-once under at-least-once delivery:
//! - *ack*: the report is published first; only a confirmed report acks (else the delivery goes back and the
//!   re-run, which finds everything written, reports again);
//! - *retry*: the next attempt is published first; once it is confirmed the delivery is acked even if the
//!   (non-final) report then fails, so one attempt never becomes two;
//! - *dead letter*: the final report is published first, then the dead letter; only then the ack. A failure
//!   before the dead letter is confirmed hands the delivery back, so the dead letter is recorded once;
//! - *cancelled*: nothing is published, the delivery goes back (its attempt stopped writing first).

use std::future::Future;
use std::time::{Duration, Instant};

use shared::message::{FailureReason, Job, Phase, Report};
use shared::telemetry::with_causes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::disposition::{RetryPolicy, Step};
use crate::job::{Attempt, JobRunner};

/// Why a publish for a delivery did not go through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The broker did not take the message (channel closed, nacked, unroutable).
    #[error(transparent)]
    Broker(#[from] shared::mq::MqError),
    /// The message is larger than the worker publishes; it was not sent.
    #[error("a {what} of {bytes} bytes is larger than the {max} bytes the worker publishes")]
    TooLarge {
        /// "report", "retry" or "dead letter".
        what: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// Nobody receives reports any more (the embedded run is over).
    #[error("the report receiver is gone")]
    Closed,
}

/// A job delivered by a queue, and what the queue can do with it.
pub trait Delivery: Send {
    /// The attempt number this delivery carries (1 for a fresh job).
    fn attempt(&self) -> u32;
    /// The job, or why it cannot be run (malformed, oversized), with the phase its queue names.
    fn job(&self) -> Result<Job, (Phase, String)>;
    /// Publishes the job again as `attempt`, to run after `wait`; resolves once the queue holds it.
    fn retry(
        &mut self,
        job: &Job,
        attempt: u32,
        wait: Duration,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;
    /// Records the delivery as dead with `reason`; resolves once the queue holds it.
    fn dead_letter(
        &mut self,
        phase: Phase,
        reason: FailureReason,
        error: &str,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;
    /// Publishes the attempt's report (to the queue of the job's run); resolves once the queue holds it.
    fn report(
        &mut self,
        job: &Job,
        report: &Report,
    ) -> impl Future<Output = Result<(), DeliveryError>> + Send;
    /// Done with the delivery: it is removed from the queue.
    fn ack(self) -> impl Future<Output = ()> + Send;
    /// Gives the delivery back to the queue, unchanged, to run again (here or elsewhere).
    fn hand_back(self) -> impl Future<Output = ()> + Send;
}

/// Runs one job attempt; [`JobRunner`] in production, a double in tests.
pub trait Attempts: Send + Sync {
    /// Runs attempt `attempt` of `job`, stopping between writes once `cancel` is cancelled.
    fn run(
        &self,
        job: &Job,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Attempt> + Send;
}

impl Attempts for JobRunner {
    fn run(
        &self,
        job: &Job,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Attempt> + Send {
        JobRunner::run(self, job, attempt, cancel)
    }
}

/// How [`process`] left a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Acknowledged: the queue is done with it.
    Acked,
    /// Given back to the queue.
    HandedBack,
}

/// Runs the delivery's attempt and settles it (see the module doc for the order). `cancel` stops the attempt
/// between writes; a cancelled attempt publishes nothing and is handed back.
pub async fn process<D: Delivery>(
    mut delivery: D,
    runner: &impl Attempts,
    policy: &RetryPolicy,
    cancel: &CancellationToken,
) -> Settled {
    let attempt = delivery.attempt();
    let job = match delivery.job() {
        Ok(job) => job,
        Err((phase, error)) => {
            crate::metrics::record_job(phase, "malformed", Duration::ZERO);
            warn!(%error, "dead-lettering a job that cannot be used");
            let recorded = delivery
                .dead_letter(phase, FailureReason::MalformedJob, &error)
                .await;
            return settle(delivery, recorded).await;
        }
    };
    let started = Instant::now();
    let Attempt { mut report, result } = runner.run(&job, attempt, cancel).await;
    let step = if cancel.is_cancelled() {
        Step::HandBack
    } else {
        policy.next_step(attempt, &result)
    };
    report.outcome = step.outcome(&result);
    let label = crate::metrics::outcome_label(&step);
    crate::metrics::record_job(job.phase(), label, started.elapsed());
    // One line per job: debug, so a run of thousands of mailboxes reads at a glance (the report has it all).
    debug!(
        outcome = label,
        created = report.counts.created,
        updated = report.counts.updated,
        deleted = report.counts.deleted,
        "job finished"
    );
    match step {
        Step::HandBack => {
            info!("attempt cancelled; handing the job back");
            delivery.hand_back().await;
            Settled::HandedBack
        }
        Step::Ack => {
            let reported = delivery.report(&job, &report).await;
            settle(delivery, reported).await
        }
        Step::Retry { attempt, wait } => {
            if let Err(error) = delivery.retry(&job, attempt, wait).await {
                return settle(delivery, Err(error)).await;
            }
            // The retry is in the queue: acking now is what keeps one attempt from becoming two. The report is
            // not final (the retry reports again), so losing it loses nothing.
            if let Err(error) = delivery.report(&job, &report).await {
                warn!(error = %with_causes(&error), "the retry is scheduled but its report was not published");
            }
            settle(delivery, Ok(())).await
        }
        Step::DeadLetter { reason, error } => {
            let recorded = match delivery.report(&job, &report).await {
                Ok(()) => delivery.dead_letter(job.phase(), reason, &error).await,
                Err(error) => Err(error),
            };
            settle(delivery, recorded).await
        }
    }
}

/// Acks when everything was published; otherwise hands the delivery back for another run.
async fn settle<D: Delivery>(delivery: D, published: Result<(), DeliveryError>) -> Settled {
    match published {
        Ok(()) => {
            delivery.ack().await;
            Settled::Acked
        }
        Err(error) => {
            error!(error = %with_causes(&error), "could not publish; handing the job back");
            delivery.hand_back().await;
            Settled::HandedBack
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use shared::message::{CentralFolder, JobKind, Outcome};
    use shared::model::Mailbox;
    use uuid::Uuid;

    use super::*;
    use crate::disposition::AttemptResult;

    /// What the double was asked to do, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Retry(u32),
        DeadLetter(FailureReason),
        Report(&'static str),
        Ack,
        HandBack,
    }

    /// An in-memory delivery that records its calls and fails the publishes it is told to.
    struct Double {
        job: Result<Job, (Phase, String)>,
        attempt: u32,
        calls: Arc<Mutex<Vec<Call>>>,
        fail_report: bool,
        fail_retry: bool,
        fail_dead_letter: bool,
    }

    fn job() -> Job {
        let mailbox = Mailbox {
            id: "alice".into(),
            upn: "alice@contoso.com".into(),
        };
        Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: Some(CentralFolder {
                    mailbox: Mailbox {
                        id: "shared".into(),
                        upn: "shared@contoso.com".into(),
                    },
                    folder_id: Some("folder".into()),
                }),
                mailbox,
            },
        )
    }

    impl Double {
        fn new(attempt: u32) -> (Self, Arc<Mutex<Vec<Call>>>) {
            let calls = Arc::new(Mutex::new(Vec::new()));
            let double = Self {
                job: Ok(job()),
                attempt,
                calls: calls.clone(),
                fail_report: false,
                fail_retry: false,
                fail_dead_letter: false,
            };
            (double, calls)
        }

        fn push(&self, call: Call) {
            self.calls.lock().expect("calls").push(call);
        }

        fn answer(failing: bool) -> Result<(), DeliveryError> {
            if failing {
                Err(DeliveryError::Closed)
            } else {
                Ok(())
            }
        }
    }

    impl Delivery for Double {
        fn attempt(&self) -> u32 {
            self.attempt
        }
        fn job(&self) -> Result<Job, (Phase, String)> {
            self.job.clone()
        }
        async fn retry(
            &mut self,
            _job: &Job,
            attempt: u32,
            _wait: Duration,
        ) -> Result<(), DeliveryError> {
            self.push(Call::Retry(attempt));
            Self::answer(self.fail_retry)
        }
        async fn dead_letter(
            &mut self,
            _phase: Phase,
            reason: FailureReason,
            _error: &str,
        ) -> Result<(), DeliveryError> {
            self.push(Call::DeadLetter(reason));
            Self::answer(self.fail_dead_letter)
        }
        async fn report(&mut self, _job: &Job, report: &Report) -> Result<(), DeliveryError> {
            let outcome = match report.outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Retrying { .. } => "retrying",
                Outcome::Failed { .. } => "failed",
            };
            self.push(Call::Report(outcome));
            Self::answer(self.fail_report)
        }
        async fn ack(self) {
            self.push(Call::Ack);
        }
        async fn hand_back(self) {
            self.push(Call::HandBack);
        }
    }

    /// A runner that answers every attempt with `result`, cancelling `cancel` first when asked to (as a drain
    /// that ends during the attempt would).
    struct Canned {
        result: AttemptResult,
        cancel_during: Option<CancellationToken>,
    }

    fn canned(result: AttemptResult) -> Canned {
        Canned {
            result,
            cancel_during: None,
        }
    }

    impl Attempts for Canned {
        async fn run(&self, job: &Job, attempt: u32, _cancel: &CancellationToken) -> Attempt {
            if let Some(token) = &self.cancel_during {
                token.cancel();
            }
            Attempt {
                report: Report::of(job, attempt, Outcome::Succeeded),
                result: self.result.clone(),
            }
        }
    }

    fn transient() -> AttemptResult {
        AttemptResult::Transient {
            wait: Duration::from_secs(1),
            error: "503".into(),
        }
    }

    fn permanent() -> AttemptResult {
        AttemptResult::Permanent {
            reason: FailureReason::NoMailbox,
            error: "404".into(),
        }
    }

    async fn run(double: Double, runner: &Canned) -> Settled {
        process(
            double,
            runner,
            &RetryPolicy::default(),
            &CancellationToken::new(),
        )
        .await
    }

    fn calls(recorded: &Arc<Mutex<Vec<Call>>>) -> Vec<Call> {
        recorded.lock().expect("calls").clone()
    }

    #[tokio::test]
    async fn a_done_job_is_acked_only_after_its_report() {
        let (double, recorded) = Double::new(1);
        assert_eq!(
            run(double, &canned(AttemptResult::Done)).await,
            Settled::Acked
        );
        assert_eq!(calls(&recorded), [Call::Report("succeeded"), Call::Ack]);

        let (mut double, recorded) = Double::new(1);
        double.fail_report = true;
        let settled = run(double, &canned(AttemptResult::Done)).await;
        assert_eq!(settled, Settled::HandedBack);
        assert_eq!(
            calls(&recorded),
            [Call::Report("succeeded"), Call::HandBack]
        );
    }

    /// Failed before the fix: the broker loop published the retry, then the report, and nacked the delivery when
    /// the report failed, so the confirmed retry and the requeued delivery both ran: two attempts of one job.
    #[tokio::test]
    async fn a_confirmed_retry_is_acked_even_when_its_report_fails() {
        let (mut double, recorded) = Double::new(1);
        double.fail_report = true;
        assert_eq!(run(double, &canned(transient())).await, Settled::Acked);
        assert_eq!(
            calls(&recorded),
            [Call::Retry(2), Call::Report("retrying"), Call::Ack]
        );

        let (mut double, recorded) = Double::new(1);
        double.fail_retry = true;
        assert_eq!(run(double, &canned(transient())).await, Settled::HandedBack);
        assert_eq!(calls(&recorded), [Call::Retry(2), Call::HandBack]);
    }

    /// Failed before the fix: the dead letter was published before the report, and a failed report nacked the
    /// delivery, so the re-run dead-lettered the job a second time.
    #[tokio::test]
    async fn a_dead_letter_is_recorded_once_and_after_its_final_report() {
        let (double, recorded) = Double::new(1);
        assert_eq!(run(double, &canned(permanent())).await, Settled::Acked);
        assert_eq!(
            calls(&recorded),
            [
                Call::Report("failed"),
                Call::DeadLetter(FailureReason::NoMailbox),
                Call::Ack
            ]
        );

        let (mut double, recorded) = Double::new(1);
        double.fail_report = true;
        assert_eq!(run(double, &canned(permanent())).await, Settled::HandedBack);
        assert_eq!(calls(&recorded), [Call::Report("failed"), Call::HandBack]);

        let (mut double, recorded) = Double::new(1);
        double.fail_dead_letter = true;
        assert_eq!(run(double, &canned(permanent())).await, Settled::HandedBack);
        assert_eq!(
            calls(&recorded),
            [
                Call::Report("failed"),
                Call::DeadLetter(FailureReason::NoMailbox),
                Call::HandBack
            ]
        );
    }

    #[tokio::test]
    async fn a_spent_budget_is_dead_lettered_with_its_reason() {
        let (double, recorded) = Double::new(5);
        assert_eq!(run(double, &canned(transient())).await, Settled::Acked);
        assert_eq!(
            calls(&recorded),
            [
                Call::Report("failed"),
                Call::DeadLetter(FailureReason::AttemptsExhausted),
                Call::Ack
            ]
        );
    }

    /// Failed before the fix: an attempt that went on after its delivery was given up (drain over, connection
    /// lost) still published its outcome; here a cancelled attempt publishes nothing and is handed back.
    #[tokio::test]
    async fn a_cancelled_attempt_publishes_nothing_and_is_handed_back() {
        let cancel = CancellationToken::new();
        let runner = Canned {
            result: AttemptResult::Done,
            cancel_during: Some(cancel.clone()),
        };
        let (double, recorded) = Double::new(1);
        let settled = process(double, &runner, &RetryPolicy::default(), &cancel).await;
        assert_eq!(settled, Settled::HandedBack);
        assert_eq!(calls(&recorded), [Call::HandBack]);

        let (double, recorded) = Double::new(1);
        let settled = run(double, &canned(AttemptResult::Cancelled)).await;
        assert_eq!(settled, Settled::HandedBack);
        assert_eq!(calls(&recorded), [Call::HandBack]);
    }

    #[tokio::test]
    async fn a_job_that_cannot_be_used_is_dead_lettered_without_running() {
        let (mut double, recorded) = Double::new(1);
        double.job = Err((Phase::Phase1, "malformed job: expected value".into()));
        assert_eq!(
            run(double, &canned(AttemptResult::Done)).await,
            Settled::Acked
        );
        assert_eq!(
            calls(&recorded),
            [Call::DeadLetter(FailureReason::MalformedJob), Call::Ack]
        );
    }
}
