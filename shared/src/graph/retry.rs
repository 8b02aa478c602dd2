//! When to try again and how long to wait, as pure functions over status, `Retry-After` and attempt number.
//!
//! Kept apart from the I/O (reqwest-retry's classify / policy / loop split) so that plain requests, `$batch`
//! items and the token endpoint share one set of rules, and so the rules are tested without a server. Every
//! failed attempt, whoever sent it, is decided by [`next_step`]; `pipeline.rs` applies it to single requests and
//! the token call, `batch.rs` to each `$batch` item.
//!
//! Rules: `Retry-After` first (429/503/504, integer or fractional seconds, or an HTTP date), honoured exactly;
//! without one, 429, 408 and retryable 5xx use exponential backoff with full jitter; timeouts and connection
//! failures likewise; everything else fails at once. A create ([`Effect::Create`]) whose attempt may have been
//! applied is never sent again blindly: [`Next::LookUp`] says to find out first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use super::error::TransportFailure;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Wait exactly this long (Graph said so), then try again.
    RetryAfter(Duration),
    /// Wait a backoff delay, then try again.
    Backoff,
    /// Give up.
    Fail,
}

/// The longest `Retry-After` taken at its word (one day). A longer one, such as `18446744073709551615`, reads as
/// one day: every later sum with an `Instant` stays far from overflowing, and a wait beyond
/// `ClientOptions::max_retry_after` fails the call anyway.
pub(crate) const RETRY_AFTER_CEILING: Duration = Duration::from_secs(86_400);

/// How long to wait before the next attempt, and who asked for it. Carried from the answer into
/// [`GraphError::wait`](super::GraphError::wait), so a requeued job waits what Graph asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// How long.
    pub duration: Duration,
    /// Who set it.
    pub origin: WaitOrigin,
}

/// Where a [`Wait`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOrigin {
    /// Graph's `Retry-After` (honoured exactly; it holds the whole mailbox).
    RetryAfter,
    /// The client's own jittered backoff (Graph gave no wait).
    Backoff,
}

impl Wait {
    /// Graph's requested wait.
    pub fn retry_after(duration: Duration) -> Self {
        Self {
            duration,
            origin: WaitOrigin::RetryAfter,
        }
    }

    /// A backoff wait of the client's choosing.
    pub fn backoff(duration: Duration) -> Self {
        Self {
            duration,
            origin: WaitOrigin::Backoff,
        }
    }

    /// A backoff wait made at least `delay` (a later attempt's); Graph's `Retry-After` stays as Graph asked.
    pub(crate) fn at_least(self, delay: Duration) -> Self {
        match self.origin {
            WaitOrigin::Backoff => Self::backoff(self.duration.max(delay)),
            WaitOrigin::RetryAfter => self,
        }
    }
}

/// Whether sending a request again can apply its effect twice. **The create-is-not-idempotent rule lives here,
/// and only here**: Graph may apply a create and still answer 5xx or never answer, and a second POST would then
/// make a second copy. Reads, PATCH and DELETE (a DELETE answered 404 after an ambiguous attempt is done) and
/// the token call may be sent again as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Sending twice is sending once.
    Idempotent,
    /// Sending twice may create twice: look it up before sending again. Also every write `$batch` envelope, whose
    /// items' resends only the batch can judge (`graph::batch`).
    Create,
}

impl Effect {
    /// The effect of one Graph request (a plain request or a `$batch` item): every POST this client sends to
    /// Graph creates something (a contact, a folder).
    pub fn of_method(method: &str) -> Self {
        if method.eq_ignore_ascii_case("POST") {
            Effect::Create
        } else {
            Effect::Idempotent
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// An error status, with its parsed `Retry-After`.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer.
    NoAnswer(TransportFailure),
}

/// Whether a failed attempt may still have been applied: a 5xx or 408 can come after (or while) the server ran
/// it, and a timeout or broken connection leaves it unknown. A 429 or other 4xx is a refusal; a failed connect
/// never reached the server.
pub(crate) fn may_have_applied(failure: Failure) -> bool {
    match failure {
        Failure::Answered { status, .. } => status == 408 || (500..=599).contains(&status),
        Failure::NoAnswer(failure) => {
            matches!(failure, TransportFailure::Timeout | TransportFailure::Io)
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Send again after the wait.
    Retry(Wait),
    /// A create that may have been applied: wait, then look it up; send again only if it is not there.
    LookUp(Wait),
    /// The failure is the call's result.
    Fail,
}

/// Decides attempt number `attempt` (1-based), which failed with `failure`: the one rule for plain requests,
/// `$batch` items and the token call. A `Retry-After` beyond `policy.max_retry_after` fails the call (the wait
/// travels with the error); so does the last attempt.
pub(crate) fn next_step(
    policy: &RetryPolicy,
    attempt: u32,
    effect: Effect,
    failure: Failure,
    rng: &mut impl Rng,
) -> Next {
    let decision = match failure {
        Failure::Answered {
            status,
            retry_after,
        } => decide(status, retry_after),
        Failure::NoAnswer(failure) => decide_transport(failure),
    };
    let wait = match decision {
        Decision::Fail => return Next::Fail,
        Decision::RetryAfter(wait) if wait > policy.max_retry_after => return Next::Fail,
        Decision::RetryAfter(wait) => Wait::retry_after(wait),
        Decision::Backoff => Wait::backoff(policy.backoff.delay(attempt, rng)),
    };
    if effect == Effect::Create && may_have_applied(failure) {
        // Even on the last attempt: finding it written makes the call a success.
        return Next::LookUp(wait);
    }
    if attempt >= policy.max_attempts {
        return Next::Fail;
    }
    Next::Retry(wait)
}

/// Decides what to do with an error status. `retry_after` is the parsed header, if any.
pub(crate) fn decide(status: u16, retry_after: Option<Duration>) -> Decision {
    match status {
        429 | 503 | 504 => retry_after.map_or(Decision::Backoff, Decision::RetryAfter),
        408 | 500 | 502 => Decision::Backoff,
        501 | 505 | 507 => Decision::Fail,
        500..=599 => Decision::Backoff,
        _ => Decision::Fail,
    }
}

/// Decides what to do with a request that got no answer.
pub(crate) fn decide_transport(failure: TransportFailure) -> Decision {
    match failure {
        TransportFailure::Timeout | TransportFailure::Connect | TransportFailure::Io => {
            Decision::Backoff
        }
        TransportFailure::Other => Decision::Fail,
    }
}

/// Parses a `Retry-After` value: delta-seconds (integer or fractional, as Graph sends `2.128`) or an HTTP date
/// (relative to `now`; a date in the past means "now"). Negative, non-finite or unparseable values give `None`.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_seconds(value);
    }
    let date = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    let wait = date
        .signed_duration_since(now)
        .to_std()
        .unwrap_or(Duration::ZERO);
    Some(wait.min(RETRY_AFTER_CEILING))
}

/// Parses `123` or `123.456` exactly (no float rounding): digits after the ninth decimal are dropped.
fn parse_seconds(value: &str) -> Option<Duration> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() || fraction.contains('.') {
        return None;
    }
    let seconds: u64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for digit in fraction.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + u32::from(digit - b'0');
    }
    if seconds >= RETRY_AFTER_CEILING.as_secs() {
        return Some(RETRY_AFTER_CEILING);
    }
    Some(Duration::new(seconds, nanos))
}

/// How many attempts, how to back off, and the longest `Retry-After` worth waiting for in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Attempts per request (or per `$batch` item), the first included.
    pub max_attempts: u32,
    /// Backoff when Graph gives no `Retry-After`.
    pub backoff: Backoff,
    /// A longer `Retry-After` is not waited out in-process: the call fails as throttled (the mailbox stays blocked
    /// for that long in this client) so the job can be requeued with that delay.
    pub max_retry_after: Duration,
}

/// Exponential backoff with full jitter: attempt `n` (1-based) waits a uniform random time in
/// `[0, min(max, base * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The largest wait after attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let factor = 1u64 << exponent;
        let base = u64::try_from(self.base.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(base.saturating_mul(factor)).min(self.max)
    }

    /// A random wait after attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }
}

/// A token's lifetime from its `expires_in`: at least 1 s, at most one day (so no sum with an `Instant` can
/// overflow), and 5 minutes when the value is missing, negative or not a number (a 401 still refreshes a token
/// that dies sooner).
pub(crate) fn token_lifetime(expires_in: Option<u64>) -> Duration {
    match expires_in {
        Some(seconds) => Duration::from_secs(seconds.clamp(1, 86_400)),
        None => Duration::from_secs(300),
    }
}

/// The moment a token should be refreshed, measured from when it was requested: five minutes before it expires,
/// or at half its lifetime when that is earlier (short-lived tokens in tests, odd clocks).
pub(crate) fn token_refresh_after(lifetime: Duration) -> Duration {
    let margin = Duration::from_secs(300).min(lifetime / 2);
    lifetime.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("date")
            .with_timezone(&Utc)
    }

    #[test]
    fn retry_after_integer_and_fractional() {
        assert_eq!(
            parse_retry_after("10", now()),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(" 1 ", now()),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_retry_after("2.128", now()),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(
            parse_retry_after("0.5", now()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after("0", now()), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_http_date() {
        assert_eq!(
            parse_retry_after("Fri, 02 Jan 2026 03:04:35 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Fri, 02 Jan 2026 03:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_rejects_garbage() {
        for bad in [
            "",
            "-1",
            "abc",
            "1.2.3",
            "NaN",
            "inf",
            "1e3",
            "99999999999999999999999999",
        ] {
            assert_eq!(parse_retry_after(bad, now()), None, "{bad}");
        }
    }

    #[test]
    fn decisions() {
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            decide(429, wait),
            Decision::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(decide(429, None), Decision::Backoff);
        assert_eq!(
            decide(503, wait),
            Decision::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(decide(504, None), Decision::Backoff);
        assert_eq!(decide(500, wait), Decision::Backoff);
        assert_eq!(decide(502, None), Decision::Backoff);
        assert_eq!(decide(408, None), Decision::Backoff);
        assert_eq!(decide(507, None), Decision::Fail);
        assert_eq!(decide(501, None), Decision::Fail);
        for status in [400, 401, 403, 404, 409, 410, 412] {
            assert_eq!(decide(status, wait), Decision::Fail, "{status}");
        }
        assert_eq!(
            decide_transport(TransportFailure::Timeout),
            Decision::Backoff
        );
        assert_eq!(
            decide_transport(TransportFailure::Connect),
            Decision::Backoff
        );
        assert_eq!(decide_transport(TransportFailure::Io), Decision::Backoff);
        assert_eq!(decide_transport(TransportFailure::Other), Decision::Fail);
    }

    #[test]
    fn absurd_retry_after_values_read_as_one_day() {
        for absurd in ["18446744073709551615", "9999999999", "86401.5"] {
            assert_eq!(
                parse_retry_after(absurd, now()),
                Some(RETRY_AFTER_CEILING),
                "{absurd}"
            );
        }
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now()),
            Some(RETRY_AFTER_CEILING)
        );
    }

    #[test]
    fn creates_in_doubt_are_looked_up_and_refusals_retried() {
        let policy = RetryPolicy {
            max_attempts: 2,
            backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_millis(10),
            },
            max_retry_after: Duration::from_secs(60),
        };
        let mut rng = rand::rng();
        let answered = |status, secs: Option<u64>| Failure::Answered {
            status,
            retry_after: secs.map(Duration::from_secs),
        };
        let wait = Wait::retry_after(Duration::from_secs(3));
        assert_eq!(
            next_step(&policy, 1, Effect::Create, answered(503, Some(3)), &mut rng),
            Next::LookUp(wait)
        );
        // Even on the last attempt: finding it written makes the call a success.
        assert!(matches!(
            next_step(&policy, 2, Effect::Create, answered(500, None), &mut rng),
            Next::LookUp(_)
        ));
        assert_eq!(
            next_step(&policy, 1, Effect::Create, answered(429, Some(3)), &mut rng),
            Next::Retry(wait)
        );
        assert_eq!(
            next_step(
                &policy,
                1,
                Effect::Idempotent,
                answered(503, Some(3)),
                &mut rng
            ),
            Next::Retry(wait)
        );
        assert_eq!(
            next_step(
                &policy,
                2,
                Effect::Idempotent,
                answered(503, Some(3)),
                &mut rng
            ),
            Next::Fail
        );
        assert_eq!(
            next_step(
                &policy,
                1,
                Effect::Idempotent,
                answered(429, Some(61)),
                &mut rng
            ),
            Next::Fail
        );
        assert_eq!(
            next_step(&policy, 1, Effect::Create, answered(400, None), &mut rng),
            Next::Fail
        );
        assert_eq!(Effect::of_method("POST"), Effect::Create);
        assert_eq!(Effect::of_method("PATCH"), Effect::Idempotent);
    }

    #[test]
    fn backoff_ceiling_doubles_then_caps() {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.ceiling(1), Duration::from_millis(500));
        assert_eq!(backoff.ceiling(2), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(2));
        assert_eq!(backoff.ceiling(8), Duration::from_secs(60));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn token_refresh_point() {
        assert_eq!(
            token_refresh_after(Duration::from_secs(3599)),
            Duration::from_secs(3299)
        );
        assert_eq!(
            token_refresh_after(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(
            token_refresh_after(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
        assert_eq!(token_refresh_after(Duration::ZERO), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn backoff_delay_is_within_bounds(attempt in 1u32..100, base_ms in 1u64..5_000, max_ms in 1u64..120_000, seed: u64) {
            use rand::SeedableRng;
            let backoff = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let delay = backoff.delay(attempt, &mut rng);
            prop_assert!(delay <= backoff.ceiling(attempt));
            prop_assert!(delay <= Duration::from_millis(max_ms));
            prop_assert!(backoff.ceiling(attempt) <= backoff.ceiling(attempt + 1));
        }

        /// Failed before the fix: `18446744073709551615` parsed to a wait that overflowed `Instant + Duration`.
        #[test]
        fn retry_after_never_panics_and_stays_bounded(value in any::<String>()) {
            if let Some(wait) = parse_retry_after(&value, now()) {
                prop_assert!(wait <= RETRY_AFTER_CEILING);
                prop_assert!(std::time::Instant::now().checked_add(wait).is_some());
            }
        }

        #[test]
        fn numeric_retry_after_is_clamped(seconds: u64, fraction in 0u32..1_000_000_000) {
            let wait = parse_retry_after(&format!("{seconds}.{fraction:09}"), now()).expect("a number");
            prop_assert!(wait <= RETRY_AFTER_CEILING);
            let far = parse_retry_after(&seconds.to_string(), now()).expect("a number");
            prop_assert_eq!(far, Duration::from_secs(seconds).min(RETRY_AFTER_CEILING));
        }

        #[test]
        fn token_lifetimes_are_bounded(seconds in proptest::option::of(any::<u64>())) {
            let lifetime = token_lifetime(seconds);
            prop_assert!(lifetime >= Duration::from_secs(1) && lifetime <= Duration::from_secs(86_400));
            prop_assert!(token_refresh_after(lifetime) <= lifetime);
        }

        #[test]
        fn fractional_seconds_round_trip(millis in 0u64..10_000_000) {
            let text = format!("{}.{:03}", millis / 1000, millis % 1000);
            prop_assert_eq!(parse_retry_after(&text, now()), Some(Duration::from_millis(millis)));
        }
    }
}
