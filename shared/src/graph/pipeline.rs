//! The one retry loop: send, classify, wait, send again, for plain Graph requests and the token call.
//!
//! An [`Exchange`] knows how to make one attempt (and what waiting means for it: a Graph request's `Retry-After`
//! already blocked its mailbox at the gate, the token call just sleeps); [`run`] owns the loop and asks
//! [`next_step`] after every failure, so attempts, `Retry-After`, backoff and the create rule are decided in one
//! place. `$batch` items are decided by the same [`next_step`], item by item, in `batch.rs`.

use super::error::GraphError;
use super::retry::{next_step, Effect, Failure, Next, RetryPolicy, Wait, WaitOrigin};

/// What one attempt came to.
pub(crate) enum Step<T> {
    /// Success.
    Done(T),
    /// A failure, to be decided by [`next_step`].
    Failed { failure: Failure, error: GraphError },
    /// A failure that ends the call as it is (it was decided elsewhere, e.g. the token call's own loop).
    Final(GraphError),
    /// Graph refused the access token: fetch a new one and send again, once per call, without spending an
    /// attempt.
    Refused(GraphError),
}

/// One kind of request, attempted by [`run`].
pub(crate) trait Exchange {
    type Output;

    /// Makes attempt number `attempt` (1-based).
    async fn attempt(&mut self, attempt: u32) -> Step<Self::Output>;

    /// Waits before the next attempt.
    async fn pause(&mut self, wait: Wait);

    /// Drops the access token Graph refused (no-op for the token call itself).
    async fn refresh(&mut self) {}

    /// `METHOD path` of the request, for an [`GraphError::Ambiguous`].
    fn describe(&self) -> (String, String);
}

/// Runs `exchange` within `policy`. A create whose attempt may have been applied ends the loop with
/// [`GraphError::Ambiguous`]: it is never sent again from here.
pub(crate) async fn run<E: Exchange>(
    exchange: &mut E,
    policy: &RetryPolicy,
    effect: Effect,
) -> Result<E::Output, GraphError> {
    let mut attempt = 0u32;
    let mut refreshed = false;
    loop {
        attempt = attempt.saturating_add(1);
        let (failure, error) = match exchange.attempt(attempt).await {
            Step::Done(output) => return Ok(output),
            Step::Final(error) => return Err(error),
            Step::Refused(error) if refreshed => return Err(error),
            Step::Refused(_) => {
                refreshed = true;
                attempt -= 1;
                exchange.refresh().await;
                continue;
            }
            Step::Failed { failure, error } => (failure, error),
        };
        // Bound before any await: the thread-local rng must not live across one.
        let next = next_step(policy, attempt, effect, failure, &mut rand::rng());
        match next {
            Next::Retry(wait) => exchange.pause(wait).await,
            Next::LookUp(wait) => {
                let (method, path) = exchange.describe();
                return Err(GraphError::Ambiguous {
                    method,
                    path,
                    wait,
                    source: Box::new(error),
                });
            }
            Next::Fail => return Err(error),
        }
    }
}

/// Sleeps a backoff wait; a `Retry-After` is waited out at the mailbox gate instead (it holds every request of
/// the mailbox, not just this one), unless `sleep_retry_after` (the token call has no gate).
pub(crate) async fn sleep_for(wait: Wait, sleep_retry_after: bool) {
    if wait.origin == WaitOrigin::Backoff || sleep_retry_after {
        tokio::time::sleep(wait.duration).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::error::TransportFailure;
    use crate::graph::retry::Backoff;
    use std::time::Duration;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(2),
            },
            max_retry_after: Duration::from_secs(5),
        }
    }

    /// Answers with the scripted failures, then succeeds; counts attempts and refreshes.
    struct Scripted {
        failures: Vec<Failure>,
        refuse_first: bool,
        sent: u32,
        refreshes: u32,
        paused: Vec<Wait>,
    }

    impl Scripted {
        fn new(failures: Vec<Failure>) -> Self {
            Self {
                failures,
                refuse_first: false,
                sent: 0,
                refreshes: 0,
                paused: Vec::new(),
            }
        }
    }

    impl Exchange for Scripted {
        type Output = u32;

        async fn attempt(&mut self, attempt: u32) -> Step<u32> {
            self.sent += 1;
            if self.refuse_first && self.refreshes == 0 {
                return Step::Refused(GraphError::Protocol("401".into()));
            }
            match self
                .failures
                .get(self.sent as usize - 1 - self.refreshes as usize)
            {
                Some(&failure) => Step::Failed {
                    failure,
                    error: GraphError::Protocol(format!("attempt {attempt}")),
                },
                None => Step::Done(attempt),
            }
        }

        async fn pause(&mut self, wait: Wait) {
            self.paused.push(wait);
        }

        async fn refresh(&mut self) {
            self.refreshes += 1;
        }

        fn describe(&self) -> (String, String) {
            ("POST".into(), "/x".into())
        }
    }

    fn status(status: u16, retry_after: Option<u64>) -> Failure {
        Failure::Answered {
            status,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_idempotent_requests_with_the_answers_wait() {
        let mut exchange = Scripted::new(vec![status(429, Some(2)), status(500, None)]);
        let done = run(&mut exchange, &policy(), Effect::Idempotent).await;
        assert_eq!(done.expect("third attempt"), 3);
        assert_eq!(
            exchange.paused[0],
            Wait::retry_after(Duration::from_secs(2))
        );
        assert_eq!(exchange.paused[1].origin, WaitOrigin::Backoff);
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_that_may_have_been_applied_is_never_sent_again() {
        for failure in [
            status(500, None),
            status(503, Some(1)),
            status(504, None),
            status(408, None),
            Failure::NoAnswer(TransportFailure::Timeout),
            Failure::NoAnswer(TransportFailure::Io),
        ] {
            let mut exchange = Scripted::new(vec![failure]);
            let error = run(&mut exchange, &policy(), Effect::Create)
                .await
                .expect_err("ambiguous");
            assert!(matches!(error, GraphError::Ambiguous { .. }), "{failure:?}");
            assert_eq!(exchange.sent, 1, "{failure:?} was resent");
            assert!(error.is_transient());
        }
        // A refusal (429, failed connect) did not apply it: sent again as usual.
        let mut exchange = Scripted::new(vec![
            status(429, Some(1)),
            Failure::NoAnswer(TransportFailure::Connect),
        ]);
        assert_eq!(
            run(&mut exchange, &policy(), Effect::Create)
                .await
                .expect("ok"),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_and_long_waits_end_the_call() {
        let mut exchange = Scripted::new(vec![status(502, None); 5]);
        assert!(run(&mut exchange, &policy(), Effect::Idempotent)
            .await
            .is_err());
        assert_eq!(exchange.sent, 3);
        let mut exchange = Scripted::new(vec![status(429, Some(9_999_999_999))]);
        assert!(run(&mut exchange, &policy(), Effect::Idempotent)
            .await
            .is_err());
        assert_eq!(exchange.sent, 1);
        assert!(exchange.paused.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_refreshed_once_without_spending_an_attempt() {
        let mut exchange = Scripted::new(vec![status(500, None), status(500, None)]);
        exchange.refuse_first = true;
        assert_eq!(
            run(&mut exchange, &policy(), Effect::Idempotent)
                .await
                .expect("third counted attempt"),
            3
        );
        assert_eq!(exchange.refreshes, 1);
        assert_eq!(exchange.sent, 4);
    }
}
