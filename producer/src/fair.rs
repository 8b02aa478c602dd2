//! Fair tenants (issue 13): which of a run's jobs go to the transport now, and which wait their turn.
//!
//! The job queues are first-in-first-out (RabbitMQ 3.10 quorum queues have no priorities), so a tenant whose
//! 2,000 jobs were queued first would hold every other tenant's jobs behind them. Instead the producer keeps each
//! tenant's jobs in a line of its own and hands them out round-robin, at most [`Limits::per_tenant`] of a tenant
//! outstanding (submitted, no final report yet) at a time; the next one goes when a final report comes back. Any
//! job queued later, by this run or another run on the same broker, then waits behind at most that many jobs of
//! each other tenant. [`Limits::total`] bounds the run as a whole: the embedded mode sets it to its worker count,
//! so a released job never waits in the channel and each free worker goes to the next tenant in turn.
//!
//! Across runs on one broker, each run's jobs travel in a lane of their own ([`Lane`], `Broker::begin`), which
//! every worker consumes in turn with the others; [`least_waiting`] picks one when every lane is held.
//!
//! Pure: no I/O. Held jobs are already in the run's ledger (they wait for a report like any other).

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use shared::message::Lane;

/// The lane for a run on RabbitMQ when every lane is held by another run: one with the fewest jobs waiting
/// (`waiting`, lane by lane, both phases added); on a tie, number `pick` of the tied lanes (modulo their number;
/// the caller derives it from the run's id). Several runs started together all see empty lanes beside a large
/// run's, and a fixed choice would put them all in one lane, behind each other (seen: seven of nine in lane 1).
/// A run normally holds a lane of its own (`Broker::choose_lane`), so this is for the fifth run at once.
pub fn least_waiting(waiting: &[u64], pick: usize) -> Lane {
    let Some(fewest) = waiting.iter().take(usize::from(Lane::COUNT)).min() else {
        return Lane::FIRST;
    };
    let tied: Vec<Lane> = Lane::all()
        .zip(waiting)
        .filter(|(_, waiting)| *waiting == fewest)
        .map(|(lane, _)| lane)
        .collect();
    tied.get(pick % tied.len().max(1))
        .copied()
        .unwrap_or(Lane::FIRST)
}

/// How many jobs may be outstanding at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per tenant.
    pub per_tenant: NonZeroUsize,
    /// For the whole run; `None`: only the per-tenant limit.
    pub total: Option<NonZeroUsize>,
}

/// Default per-tenant limit on RabbitMQ: twice the job slots of the largest pool `deploy/k8s` scales to (16
/// workers x 32 jobs, the worker's default concurrency), which is also the phase-2 depth at which KEDA asks for
/// that pool (64 jobs per worker): a lone tenant still fills the whole fleet, and a job queued behind it waits for
/// about one job per slot.
pub const BROKER_PER_TENANT: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => unreachable!(),
};

impl Limits {
    /// The embedded mode's limits: each of `workers` in-process workers takes the next tenant's job in turn when
    /// it frees up; `per_tenant` (`--tenant-jobs`) defaults to all of them, so a lone tenant uses every worker.
    pub fn embedded(workers: usize, per_tenant: Option<NonZeroUsize>) -> Self {
        let workers = NonZeroUsize::new(workers).unwrap_or(NonZeroUsize::MIN);
        Self {
            per_tenant: per_tenant.unwrap_or(workers),
            total: Some(workers),
        }
    }

    /// The broker mode's limits: `per_tenant` (`--tenant-jobs`), by default [`BROKER_PER_TENANT`]; no run-wide
    /// limit (the fleet's size is KEDA's, not the producer's, to know).
    pub fn broker(per_tenant: Option<NonZeroUsize>) -> Self {
        Self {
            per_tenant: per_tenant.unwrap_or(BROKER_PER_TENANT),
            total: None,
        }
    }
}

/// One tenant's jobs: those waiting their turn and how many are out.
#[derive(Debug)]
struct Line<T> {
    held: VecDeque<T>,
    outstanding: usize,
}

/// The run's jobs per tenant, handed out round-robin within [`Limits`].
#[derive(Debug)]
pub struct FairQueue<T> {
    lines: Vec<Line<T>>,
    limits: Limits,
    /// The line asked first on the next release (modulo the lines): the one after the line that released last.
    next: usize,
    outstanding: usize,
}

impl<T> FairQueue<T> {
    /// An empty queue for `tenants` tenants (numbered as in the run).
    pub fn new(tenants: usize, limits: Limits) -> Self {
        Self {
            lines: (0..tenants)
                .map(|_| Line {
                    held: VecDeque::new(),
                    outstanding: 0,
                })
                .collect(),
            limits,
            next: 0,
            outstanding: 0,
        }
    }

    /// Queues `job` of tenant number `tenant` behind that tenant's earlier jobs.
    pub fn push(&mut self, tenant: usize, job: T) {
        if tenant >= self.lines.len() {
            self.lines.resize_with(tenant + 1, || Line {
                held: VecDeque::new(),
                outstanding: 0,
            });
        }
        self.lines[tenant].held.push_back(job);
    }

    /// The next job to submit, taken from the next tenant in turn that has one and is under its limit; `None`
    /// while the run is at its limit or every line is empty or full. The job counts as outstanding from now.
    pub fn release(&mut self) -> Option<T> {
        if self
            .limits
            .total
            .is_some_and(|total| self.outstanding >= total.get())
        {
            return None;
        }
        let count = self.lines.len();
        for step in 0..count {
            let index = (self.next + step) % count;
            let line = &mut self.lines[index];
            if line.outstanding >= self.limits.per_tenant.get() {
                continue;
            }
            if let Some(job) = line.held.pop_front() {
                line.outstanding += 1;
                self.outstanding += 1;
                self.next = index + 1;
                return Some(job);
            }
        }
        None
    }

    /// A job of tenant number `tenant` got its final report (or was given up on): the tenant may have another out.
    pub fn finished(&mut self, tenant: usize) {
        if let Some(line) = self.lines.get_mut(tenant) {
            if line.outstanding > 0 {
                line.outstanding -= 1;
                self.outstanding -= 1;
            }
        }
    }

    /// Jobs still waiting their turn.
    pub fn held(&self) -> usize {
        self.lines.iter().map(|line| line.held.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_tenant: usize, total: Option<usize>) -> Limits {
        Limits {
            per_tenant: NonZeroUsize::new(per_tenant).expect("positive"),
            total: total.and_then(NonZeroUsize::new),
        }
    }

    fn drain(queue: &mut FairQueue<(usize, u32)>) -> Vec<(usize, u32)> {
        std::iter::from_fn(|| queue.release()).collect()
    }

    /// A large tenant queued first no longer holds a small one behind all its jobs (fails on a FIFO).
    #[test]
    fn tenants_take_turns_and_each_stays_within_its_limit() {
        let mut queue = FairQueue::new(2, limits(2, None));
        for i in 0..5 {
            queue.push(0, (0, i));
        }
        for i in 0..3 {
            queue.push(1, (1, i));
        }
        assert_eq!(drain(&mut queue), vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
        assert_eq!(queue.held(), 4);
        queue.finished(0);
        assert_eq!(drain(&mut queue), vec![(0, 2)]);
        queue.finished(1);
        queue.finished(1);
        assert_eq!(drain(&mut queue), vec![(1, 2)]);
        for _ in 0..3 {
            queue.finished(0);
        }
        assert_eq!(drain(&mut queue), vec![(0, 3), (0, 4)]);
        assert_eq!(queue.held(), 0);
    }

    #[test]
    fn the_run_limit_hands_each_free_slot_to_the_next_tenant_in_turn() {
        let mut queue = FairQueue::new(3, limits(10, Some(2)));
        for tenant in 0..3 {
            for i in 0..3 {
                queue.push(tenant, (tenant, i));
            }
        }
        assert_eq!(drain(&mut queue), vec![(0, 0), (1, 0)]);
        queue.finished(0);
        assert_eq!(drain(&mut queue), vec![(2, 0)]);
        queue.finished(1);
        assert_eq!(drain(&mut queue), vec![(0, 1)]);
        queue.finished(2);
        queue.finished(0);
        assert_eq!(drain(&mut queue), vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn a_lone_tenant_uses_every_slot_and_late_lines_join_the_turns() {
        let mut queue = FairQueue::new(1, Limits::embedded(3, None));
        for i in 0..5 {
            queue.push(0, (0, i));
        }
        assert_eq!(drain(&mut queue).len(), 3);
        queue.push(1, (1, 0));
        queue.finished(0);
        assert_eq!(drain(&mut queue), vec![(1, 0)], "the newcomer goes first");
        queue.finished(5);
        queue.finished(1);
        assert_eq!(drain(&mut queue), vec![(0, 3)]);
    }

    #[test]
    fn finishing_more_than_was_released_never_lifts_a_limit() {
        let mut queue = FairQueue::new(1, limits(1, None));
        queue.push(0, (0, 0));
        queue.push(0, (0, 1));
        queue.finished(0);
        assert_eq!(drain(&mut queue), vec![(0, 0)]);
        assert_eq!(drain(&mut queue), vec![]);
    }

    #[test]
    fn without_a_lane_of_its_own_a_run_takes_the_least_waiting_one() {
        let lane = |n| Lane::new(n).expect("lane");
        assert_eq!(least_waiting(&[900, 3, 40, 3], 0), lane(1));
        assert_eq!(least_waiting(&[900, 3, 40, 3], 1), lane(3));
        assert_eq!(least_waiting(&[900, 3, 40, 3], 2), lane(1));
        assert_eq!(least_waiting(&[5, 7, 9, 2], 1), lane(3));
        assert_eq!(least_waiting(&[], 3), Lane::FIRST);
    }

    /// Runs started together beside a large one spread over the empty lanes (fails with a fixed tie-break: every
    /// run in lane 1).
    #[test]
    fn runs_that_find_equal_lanes_spread_over_them() {
        let waiting = [1_800, 0, 0, 0];
        let chosen: Vec<u8> = (0..9)
            .map(|pick| least_waiting(&waiting, pick).number())
            .collect();
        assert_eq!(chosen, [1, 2, 3, 1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn limits_default_per_mode() {
        assert_eq!(Limits::embedded(0, None), limits(1, Some(1)));
        assert_eq!(
            Limits::embedded(64, NonZeroUsize::new(8)),
            limits(8, Some(64))
        );
        assert_eq!(Limits::broker(None), limits(1024, None));
    }
}
