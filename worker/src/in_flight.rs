//! Attempts in progress. `--concurrency` promises that a worker never runs more jobs at once, also across a lost
//! connection or a consumer timeout (when the broker takes deliveries back while their attempts still run). The
//! job slots in [`crate::consumer`] enforce it; this counts it where attempts actually run ([`crate::job::JobRunner::run`]),
//! apart from the slots, so the promise can be checked: the `jobs_in_flight` gauge, and [`InFlight::peak`] for
//! tests.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Attempts in progress now, and the most there ever were at once.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// One attempt in progress; dropping it ends it.
#[derive(Debug)]
pub struct Entered<'a>(&'a InFlight);

impl InFlight {
    /// Counts an attempt in until the returned guard is dropped.
    pub fn enter(&self) -> Entered<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        record(now);
        Entered(self)
    }

    /// Attempts in progress now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    /// The most attempts that were ever in progress at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let now = self.0.now.fetch_sub(1, Ordering::SeqCst) - 1;
        record(now);
    }
}

fn record(now: usize) {
    metrics::gauge!(crate::metrics::JOBS_IN_FLIGHT).set(now as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_attempts_until_their_guard_goes_and_keeps_the_peak() {
        let in_flight = InFlight::default();
        let first = in_flight.enter();
        {
            let _second = in_flight.enter();
            assert_eq!(in_flight.now(), 2);
        }
        assert_eq!(in_flight.now(), 1);
        let _third = in_flight.enter();
        drop(first);
        assert_eq!((in_flight.now(), in_flight.peak()), (1, 2));
    }
}
