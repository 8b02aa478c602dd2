//! How many contacts a worker plans against and holds writes for at once (issue 10, scenario 10: bounded memory).
//!
//! Reading a mailbox and planning it against a folder of N contacts holds about N contacts' worth of state (the
//! contacts read, their keys, the plan) until the plan is made; the writes that follow hold only the plan's
//! writes, each batch until it is answered. Jobs of a large tenant start together (every phase-2 job follows the
//! one phase 1), so without a bound `--concurrency` jobs would each hold a 100,000-contact folder's state at once.
//! A job takes units for the folder it plans against before reading; once its plan is made it keeps a share of
//! them for its writes (a held write weighs less than a contact being planned) and gives the rest back, and the
//! share shrinks as batches are answered. Small folders plan and write side by side; a folder as large as the
//! budget plans alone, and the next large plan waits for the first's writes instead of holding its own state on
//! top of them (the 100,000-contact benchmark's peak was one phase-2 job planning while the other held its
//! 100,000 writes).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Contacts planned against at once per worker process by default: one 100,000-contact central folder at a time
/// keeps a worker within its 512 MiB (deploy/k8s/worker-deployment.yaml), many small tenants plan side by side.
pub const DEFAULT_CONTACTS: usize = 100_000;

/// The budget of one worker process. Cheap to clone: clones share the budget.
#[derive(Debug, Clone)]
pub struct PlanningBudget {
    units: Arc<Semaphore>,
    capacity: u32,
}

/// Held writes that weigh one unit: a write is held packed (a create about 460 bytes) against 1.0-1.4 KiB per
/// contact of planning state (`shared/tests/planning_memory.rs`). So a worker holds at most 300,000 writes: 30
/// mailboxes receiving a 10,000-person set's creates at once.
const WRITES_PER_UNIT: usize = 3;

/// Units taken for one plan; dropping it gives them back.
#[derive(Debug)]
pub struct Planning(Option<OwnedSemaphorePermit>);

/// The units a job's held writes keep (see [`Planning::into_writes`]); dropping it gives them back.
#[derive(Debug)]
pub struct HeldWrites {
    units: Option<OwnedSemaphorePermit>,
    /// Writes not answered yet.
    left: usize,
}

impl Default for PlanningBudget {
    fn default() -> Self {
        Self::new(DEFAULT_CONTACTS)
    }
}

impl PlanningBudget {
    /// A budget of `contacts` (at least 1).
    pub fn new(contacts: usize) -> Self {
        let capacity = u32::try_from(contacts.max(1)).unwrap_or(u32::MAX);
        Self {
            units: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Waits until a plan against `contacts` contacts fits, then holds its units. A folder larger than the whole
    /// budget takes all of it (it plans alone, never waits for ever).
    pub async fn take(&self, contacts: usize) -> Planning {
        // The semaphore is never closed; were it, planning would go on unbounded rather than fail the job.
        Planning(
            Arc::clone(&self.units)
                .acquire_many_owned(self.units_for(contacts))
                .await
                .ok(),
        )
    }

    /// Units for `contacts` contacts if they are free now, never waiting: for a job that already holds state (a
    /// phase-1 job holding its plan), which must never wait on jobs that may be waiting on it.
    pub fn try_take(&self, contacts: usize) -> Option<Planning> {
        Arc::clone(&self.units)
            .try_acquire_many_owned(self.units_for(contacts))
            .ok()
            .map(|units| Planning(Some(units)))
    }

    /// The units `contacts` contacts weigh: at least one, at most the whole budget (a larger folder plans alone).
    fn units_for(&self, contacts: usize) -> u32 {
        u32::try_from(contacts)
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity)
    }
}

impl Planning {
    /// Units for a job that plans nothing (its writes are few, or were planned elsewhere).
    pub fn none() -> Self {
        Self(None)
    }

    /// The plan is made and `writes` writes follow: keeps their share of the units and gives the rest back. Never
    /// more than was taken for planning: a job holding a plan never waits for units, so no two jobs wait on each
    /// other.
    pub fn into_writes(self, writes: usize) -> HeldWrites {
        let mut held = HeldWrites {
            units: self.0,
            left: writes,
        };
        held.answered(0);
        held
    }
}

impl HeldWrites {
    /// `n` held writes were answered (and dropped): their share of the units goes back.
    pub fn answered(&mut self, n: usize) {
        self.left = self.left.saturating_sub(n);
        let Some(units) = &mut self.units else { return };
        let keep = self.left.div_ceil(WRITES_PER_UNIT);
        let surplus = units.num_permits().saturating_sub(keep);
        if surplus > 0 {
            drop(units.split(surplus));
        }
    }

    /// Units still held.
    #[cfg(test)]
    fn units(&self) -> usize {
        self.units
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn small_plans_share_the_budget_and_a_large_one_plans_alone() {
        let budget = PlanningBudget::new(100);
        let a = budget.take(40).now_or_never().expect("fits");
        let b = budget
            .take(60)
            .now_or_never()
            .expect("fits beside the first");
        assert!(
            budget.take(1).now_or_never().is_none(),
            "the budget is spent"
        );
        drop((a, b));
        let large = budget
            .take(1_000_000)
            .now_or_never()
            .expect("a folder larger than the budget takes all of it, never waits for ever");
        assert!(budget.take(1).now_or_never().is_none(), "it plans alone");
        drop(large);
        let empty = budget.take(0).now_or_never().expect("an empty folder fits");
        drop(empty);
    }

    #[tokio::test]
    async fn a_waiting_plan_starts_when_units_come_back() {
        let budget = PlanningBudget::new(10);
        let first = budget.take(10).now_or_never().expect("fits");
        let mut second = Box::pin(budget.take(5));
        assert!((&mut second).now_or_never().is_none(), "waits");
        drop(first);
        assert!(second.now_or_never().is_some(), "starts once given back");
    }

    #[tokio::test]
    async fn trying_never_waits_and_takes_nothing_when_short() {
        let budget = PlanningBudget::new(10);
        let held = budget.try_take(4).expect("free");
        assert!(budget.try_take(7).is_none(), "6 free: 7 are not taken");
        let rest = budget.try_take(6).expect("the 6 left");
        assert!(budget.try_take(1).is_none(), "spent");
        drop((held, rest));
        assert!(
            budget.try_take(1_000).is_some(),
            "a folder larger than the budget takes all of it once free"
        );
    }

    /// Failed before held writes kept units: the second large plan started at once, beside the first's writes.
    #[tokio::test]
    async fn held_writes_keep_their_share_until_answered() {
        let budget = PlanningBudget::new(100);
        let planning = budget.take(100).now_or_never().expect("fits");
        let mut writes = planning.into_writes(100);
        assert_eq!(writes.units(), 34, "100 held writes weigh 34 units");
        let small = budget
            .take(66)
            .now_or_never()
            .expect("what the writes gave back plans at once");
        drop(small);
        let mut next_large = Box::pin(budget.take(100));
        assert!(
            (&mut next_large).now_or_never().is_none(),
            "a large plan waits for the writes"
        );
        writes.answered(60);
        assert_eq!(writes.units(), 14, "40 writes left");
        assert!((&mut next_large).now_or_never().is_none(), "still waits");
        writes.answered(40);
        assert_eq!(writes.units(), 0, "every write answered");
        assert!(
            next_large.now_or_never().is_some(),
            "the large plan starts once every write was answered"
        );
    }

    #[tokio::test]
    async fn held_writes_never_keep_more_than_the_plan_took() {
        let budget = PlanningBudget::new(100);
        let writes = budget
            .take(10)
            .now_or_never()
            .expect("fits")
            .into_writes(1_000);
        assert_eq!(writes.units(), 10);
        let unplanned = Planning::none().into_writes(1_000);
        assert_eq!(unplanned.units(), 0);
        assert!(budget.take(90).now_or_never().is_some());
        drop(writes);
        assert!(budget.take(100).now_or_never().is_some(), "all given back");
    }
}
