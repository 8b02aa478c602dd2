//! What happens to a job after an attempt: acknowledge it, schedule a retry, or dead-letter it.
//!
//! Pure, so the rules can be tested without a broker; the AMQP consumer and the embedded queue both carry out
//! the [`Step`] this module returns, which is what makes the two modes behave the same.

use std::time::Duration;

use shared::message::{FailureReason, Outcome};
use shared::mq::RETRY_LEVELS;

/// The longest wait a retry can be scheduled for: the retry queues' longest level. A longer wait Graph asks for
/// (a hostile or broken `Retry-After`) fails that mailbox with [`FailureReason::ThrottledTooLong`] instead of
/// parking the job for ever.
pub const MAX_RETRY_WAIT: Duration = RETRY_LEVELS[RETRY_LEVELS.len() - 1];

/// How an attempt ended, as the job runner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The job is done.
    Done,
    /// A transient failure; try again after at least `wait`.
    Transient {
        /// The shortest wait Graph asked for (Retry-After) or the backoff chose.
        wait: Duration,
        /// What went wrong.
        error: String,
    },
    /// A permanent failure; retrying cannot help.
    Permanent {
        /// The category.
        reason: FailureReason,
        /// What went wrong.
        error: String,
    },
    /// Not now, and not a failure: the job goes back to the queue for `wait` as the same attempt (a phase-2 job
    /// that would wait on its tenant's phase 1 while every place for waiting jobs is taken, see
    /// `overlap::Boards::waiting_place`).
    Deferred {
        /// How long it stays out.
        wait: Duration,
        /// Why, for the report.
        why: String,
    },
    /// The attempt was stopped before it finished (its delivery is going back to the queue: connection lost,
    /// drain over, channel closed); nothing is published for it.
    Cancelled,
}

/// What the queue does with the job next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Acknowledge; nothing more.
    Ack,
    /// Publish the job again as attempt `attempt` after `wait`, then acknowledge this delivery.
    Retry {
        /// The next attempt number.
        attempt: u32,
        /// How long to wait first.
        wait: Duration,
    },
    /// Dead-letter the job with a reason, then acknowledge this delivery.
    DeadLetter {
        /// The category.
        reason: FailureReason,
        /// What went wrong.
        error: String,
    },
    /// Hand the delivery back to the queue untouched (the attempt was cancelled); nothing is published.
    HandBack,
}

/// Retry policy of the queue layer (the Graph client has its own, finer one inside an attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per job before it is dead-lettered as `attempts_exhausted`.
    pub max_attempts: u32,
    /// The first backoff; doubled per attempt.
    pub base: Duration,
    /// The longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_secs(5),
            max: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Decides the next step for attempt number `attempt` (1-based) that ended with `result`.
    pub fn next_step(&self, attempt: u32, result: &AttemptResult) -> Step {
        match result {
            AttemptResult::Done => Step::Ack,
            AttemptResult::Cancelled => Step::HandBack,
            AttemptResult::Deferred { wait, .. } => Step::Retry {
                attempt,
                wait: *wait,
            },
            AttemptResult::Transient { wait, error } if *wait > MAX_RETRY_WAIT => Step::DeadLetter {
                reason: FailureReason::ThrottledTooLong,
                error: format!(
                    "Graph asked to wait {} s, longer than the longest retry ({} s); the mailbox is failed rather than waited for: {error}",
                    wait.as_secs(),
                    MAX_RETRY_WAIT.as_secs()
                ),
            },
            AttemptResult::Transient { wait, error } => {
                if attempt >= self.max_attempts {
                    Step::DeadLetter {
                        reason: FailureReason::AttemptsExhausted,
                        error: format!("gave up after {attempt} attempts: {error}"),
                    }
                } else {
                    Step::Retry {
                        attempt: attempt + 1,
                        wait: (*wait).max(self.backoff(attempt)),
                    }
                }
            }
            AttemptResult::Permanent { reason, error } => Step::DeadLetter {
                reason: *reason,
                error: error.clone(),
            },
        }
    }
}

impl Step {
    /// The outcome to report for this step.
    pub fn outcome(&self, result: &AttemptResult) -> Outcome {
        match (self, result) {
            (Step::Ack, _) => Outcome::Succeeded,
            (Step::Retry { wait, .. }, AttemptResult::Transient { error, .. }) => {
                Outcome::Retrying {
                    after_secs: wait.as_secs(),
                    error: error.clone(),
                }
            }
            (Step::Retry { wait, .. }, AttemptResult::Deferred { why, .. }) => Outcome::Retrying {
                after_secs: wait.as_secs(),
                error: why.clone(),
            },
            (Step::Retry { wait, .. }, _) => Outcome::Retrying {
                after_secs: wait.as_secs(),
                error: String::new(),
            },
            (Step::DeadLetter { reason, error }, _) => Outcome::Failed {
                reason: *reason,
                error: error.clone(),
            },
            // Never published: a handed-back delivery runs again and reports then.
            (Step::HandBack, _) => Outcome::Retrying {
                after_secs: 0,
                error: "cancelled".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(wait_secs: u64) -> AttemptResult {
        AttemptResult::Transient {
            wait: Duration::from_secs(wait_secs),
            error: "429".into(),
        }
    }

    #[test]
    fn done_is_acked() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.next_step(1, &AttemptResult::Done), Step::Ack);
        assert_eq!(Step::Ack.outcome(&AttemptResult::Done), Outcome::Succeeded);
    }

    #[test]
    fn transient_retries_no_sooner_than_asked_and_backs_off() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.next_step(1, &transient(40)),
            Step::Retry {
                attempt: 2,
                wait: Duration::from_secs(40)
            }
        );
        assert_eq!(
            policy.next_step(3, &transient(0)),
            Step::Retry {
                attempt: 4,
                wait: Duration::from_secs(20)
            }
        );
        assert_eq!(policy.backoff(30), Duration::from_secs(600));
    }

    #[test]
    fn transient_past_the_budget_is_dead_lettered() {
        let policy = RetryPolicy::default();
        match policy.next_step(5, &transient(1)) {
            Step::DeadLetter { reason, error } => {
                assert_eq!(reason, FailureReason::AttemptsExhausted);
                assert!(error.contains("5 attempts"), "{error}");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    /// Failed before the fix: a `Retry-After` of 9999999999 s became a retry parked in the longest level again
    /// and again, so the run never ended for that mailbox.
    #[test]
    fn a_wait_beyond_the_longest_retry_level_fails_the_mailbox() {
        let policy = RetryPolicy::default();
        match policy.next_step(1, &transient(9_999_999_999)) {
            Step::DeadLetter { reason, error } => {
                assert_eq!(reason, FailureReason::ThrottledTooLong);
                assert!(error.contains("9999999999 s"), "{error}");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert!(matches!(
            policy.next_step(1, &transient(MAX_RETRY_WAIT.as_secs())),
            Step::Retry { .. }
        ));
    }

    #[test]
    fn a_deferred_job_comes_back_as_the_same_attempt_even_at_the_last() {
        let policy = RetryPolicy::default();
        let deferred = AttemptResult::Deferred {
            wait: Duration::from_secs(5),
            why: "waiting places taken".into(),
        };
        let step = policy.next_step(policy.max_attempts, &deferred);
        assert_eq!(
            step,
            Step::Retry {
                attempt: policy.max_attempts,
                wait: Duration::from_secs(5)
            }
        );
        match step.outcome(&deferred) {
            Outcome::Retrying {
                after_secs: 5,
                error,
            } => assert_eq!(error, "waiting places taken"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_cancelled_attempt_is_handed_back() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.next_step(1, &AttemptResult::Cancelled),
            Step::HandBack
        );
    }

    #[test]
    fn permanent_is_dead_lettered_at_once() {
        let policy = RetryPolicy::default();
        let result = AttemptResult::Permanent {
            reason: FailureReason::NoMailbox,
            error: "MailboxNotEnabledForRESTAPI".into(),
        };
        let step = policy.next_step(1, &result);
        assert!(matches!(
            step,
            Step::DeadLetter {
                reason: FailureReason::NoMailbox,
                ..
            }
        ));
        assert!(matches!(
            step.outcome(&result),
            Outcome::Failed {
                reason: FailureReason::NoMailbox,
                ..
            }
        ));
    }
}
