//! How many contacts a worker plans against at once (issue 10, scenario 10: bounded memory).
//!
//! Reading a mailbox and planning it against a folder of N contacts holds about N contacts' worth of state (the
//! contacts read, their keys, the plan) until the plan is made; the writes that follow hold only the plan. Jobs of
//! a large tenant start together (every phase-2 job follows the one phase 1), so without a bound `--concurrency`
//! jobs would each hold a 100,000-contact folder's state at once. A job takes units for the folder it plans
//! against before reading, and gives them back once its plan is made: small folders plan side by side, a folder
//! as large as the budget plans alone, and the long part, writing at Graph's pace, is never held back.

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

/// Units taken for one plan; dropping it gives them back.
#[derive(Debug)]
pub struct Planning(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

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
        let units = u32::try_from(contacts)
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        // The semaphore is never closed; were it, planning would go on unbounded rather than fail the job.
        Planning(Arc::clone(&self.units).acquire_many_owned(units).await.ok())
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
}
