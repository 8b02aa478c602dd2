//! Staying inside Outlook's per-mailbox limits: a request budget, a concurrency cap and Graph's "wait" orders.
//!
//! Graph throttles per (app, mailbox): 10,000 requests per 10 minutes and 4 concurrent requests; a throttled
//! request still counts, so sending before `Retry-After` has passed only prolongs the penalty. Every request for
//! one mailbox therefore passes one [`Gate`] that (in this order) waits while the mailbox is blocked by a
//! `Retry-After`, takes its cells from a governor keyed rate limiter (one cell per request, one per `$batch`
//! item), takes its permits from the mailbox's semaphore (held until the answer is read) and checks the block
//! again, in case a concurrent answer set one meanwhile.
//!
//! The rate budget is a GCRA whose burst is half the window's allowance and whose refill spreads the other half
//! over the window, so no sliding window of that length ever sees more than `requests_per_window` requests.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::GraphLimits;

/// The limits of one app in one tenant: a keyed rate limiter plus one [`Gate`] per mailbox. Mailbox keys compare
/// case-insensitively; a caller should address one mailbox consistently (by id or by UPN, not both).
pub(crate) struct Limits {
    /// `None` when the configured window or budget is zero (no rate limiting).
    rate: Option<DefaultKeyedRateLimiter<String>>,
    /// The most cells one wait may take (the limiter's burst).
    burst: u32,
    /// Permits per mailbox.
    max_in_flight: u32,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
}

/// The state of one mailbox.
pub(crate) struct Gate {
    semaphore: Arc<Semaphore>,
    /// No request may be sent before this instant (Graph's `Retry-After`).
    blocked_until: Mutex<Option<Instant>>,
    in_flight: AtomicU32,
    peak_in_flight: AtomicU32,
}

/// Held while a request is on the wire: its permits and its share of the in-flight count.
pub(crate) struct Pass {
    _permit: OwnedSemaphorePermit,
    gate: Arc<Gate>,
    permits: u32,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate
            .in_flight
            .fetch_sub(self.permits, Ordering::SeqCst);
    }
}

/// What passing the gate cost.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Admission {
    /// Time spent waiting because the mailbox was blocked by a `Retry-After`.
    pub blocked: Duration,
}

impl Limits {
    /// Limits from a tenant's settings.
    pub fn new(limits: &GraphLimits) -> Self {
        let (rate, burst) = match quota(limits) {
            Some((quota, burst)) => (Some(RateLimiter::keyed(quota)), burst),
            None => (None, u32::MAX),
        };
        Self {
            rate,
            burst,
            max_in_flight: limits.max_in_flight.max(1),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// Permits a mailbox has.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    fn gate(&self, mailbox: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .entry(mailbox.to_lowercase())
            .or_insert_with(|| {
                Arc::new(Gate {
                    semaphore: Arc::new(Semaphore::new(self.max_in_flight as usize)),
                    blocked_until: Mutex::new(None),
                    in_flight: AtomicU32::new(0),
                    peak_in_flight: AtomicU32::new(0),
                })
            })
            .clone()
    }

    /// Waits until a request for `mailbox` may be sent, taking `cells` from the rate budget and `permits` of the
    /// mailbox's concurrency. Cancellation-safe: dropping the future gives back what it took (except rate cells).
    pub async fn admit(&self, mailbox: &str, cells: u32, permits: u32) -> (Pass, Admission) {
        let gate = self.gate(mailbox);
        let mut admission = Admission::default();
        admission.blocked += gate.wait_unblocked().await;
        if let Some(rate) = &self.rate {
            let cells = cells.clamp(1, self.burst);
            if let Some(n) = NonZeroU32::new(cells) {
                // `until_key_n_ready` only fails when n exceeds the burst, which the clamp rules out.
                let _ = rate.until_key_n_ready(&mailbox.to_lowercase(), n).await;
            }
        }
        let permits = permits.clamp(1, self.max_in_flight);
        loop {
            admission.blocked += gate.wait_unblocked().await;
            let permit = match gate.semaphore.clone().acquire_many_owned(permits).await {
                Ok(permit) => permit,
                // The semaphore is never closed; if it were, go on without the cap rather than hang.
                Err(_) => continue,
            };
            if gate.remaining_block().is_some() {
                drop(permit);
                continue;
            }
            let now = gate.in_flight.fetch_add(permits, Ordering::SeqCst) + permits;
            gate.peak_in_flight.fetch_max(now, Ordering::SeqCst);
            return (
                Pass {
                    _permit: permit,
                    gate,
                    permits,
                },
                admission,
            );
        }
    }

    /// Blocks every request for `mailbox` for `wait` from now (never shortens an existing block).
    pub fn block(&self, mailbox: &str, wait: Duration) {
        let gate = self.gate(mailbox);
        let until = Instant::now() + wait;
        let mut blocked = gate.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.is_none_or(|current| current < until) {
            *blocked = Some(until);
        }
    }

    /// How long `mailbox` stays blocked, if it is.
    pub fn remaining_block(&self, mailbox: &str) -> Option<Duration> {
        self.gate(mailbox).remaining_block()
    }

    /// The highest number of permits held at once, per mailbox.
    pub fn peaks(&self) -> Vec<(String, u32)> {
        let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates
            .iter()
            .map(|(mailbox, gate)| (mailbox.clone(), gate.peak_in_flight.load(Ordering::SeqCst)))
            .collect()
    }
}

impl Gate {
    fn remaining_block(&self) -> Option<Duration> {
        let blocked = self.blocked_until.lock().unwrap_or_else(|p| p.into_inner());
        let until = (*blocked)?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Sleeps until no block is in force; returns the time slept.
    async fn wait_unblocked(&self) -> Duration {
        let mut slept = Duration::ZERO;
        while let Some(wait) = self.remaining_block() {
            tokio::time::sleep(wait).await;
            slept += wait;
        }
        slept
    }
}

/// The GCRA quota for a window budget, and its burst. `None` when the limits disable rate limiting.
pub(crate) fn quota(limits: &GraphLimits) -> Option<(Quota, u32)> {
    let budget = limits.requests_per_window;
    if budget == 0 || limits.window.is_zero() {
        return None;
    }
    let burst = (budget / 2).max(1);
    let refill = budget - burst;
    let period = if refill == 0 {
        limits.window
    } else {
        limits.window / refill
    };
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))?
        .allow_burst(NonZeroU32::new(burst)?);
    Some((quota, burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_quota_fits_the_window() {
        let (quota, burst) = quota(&GraphLimits::default()).expect("quota");
        assert_eq!(burst, 5_000);
        assert_eq!(quota.replenish_interval(), Duration::from_millis(120));
        // Burst plus what refills over the window never exceeds the window's budget.
        let refilled = Duration::from_secs(600).as_nanos() / quota.replenish_interval().as_nanos();
        assert!(u128::from(burst) + refilled <= 10_000);
    }

    #[test]
    fn zero_budget_disables_rate_limiting() {
        let limits = GraphLimits {
            requests_per_window: 0,
            ..GraphLimits::default()
        };
        assert!(quota(&limits).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_capped_and_peak_recorded() {
        let limits = Arc::new(Limits::new(&GraphLimits::default()));
        let mut passes = Vec::new();
        for _ in 0..4 {
            passes.push(limits.admit("m", 1, 1).await.0);
        }
        let fifth = {
            let limits = limits.clone();
            tokio::spawn(async move { limits.admit("m", 1, 1).await.0 })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!fifth.is_finished());
        // Another mailbox is not affected.
        let other = limits.admit("other", 1, 1).await.0;
        passes.pop();
        let fifth = fifth.await.expect("task");
        drop((passes, fifth, other));
        let peaks: HashMap<String, u32> = limits.peaks().into_iter().collect();
        assert_eq!(peaks["m"], 4);
        assert_eq!(peaks["other"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_block_holds_every_request_of_the_mailbox() {
        let limits = Limits::new(&GraphLimits::default());
        limits.block("m", Duration::from_millis(1500));
        limits.block("m", Duration::from_millis(500)); // never shortens
        let start = Instant::now();
        let (_pass, admission) = limits.admit("m", 1, 1).await;
        assert!(start.elapsed() >= Duration::from_millis(1500));
        assert!(admission.blocked >= Duration::from_millis(1500));
        let start = Instant::now();
        let _other = limits.admit("other", 1, 1).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_permits_are_clamped_to_the_cap() {
        let limits = Limits::new(&GraphLimits::default());
        let (pass, _) = limits.admit("m", 20, 20).await;
        assert_eq!(pass.permits, 4);
    }
}
