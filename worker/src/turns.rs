//! Which delivered job a worker process starts next, when it holds jobs of several tenants (fair tenants across
//! runs, issue 13).
//!
//! A worker prefetches the jobs of every lane (`shared::message::Lane`: one run's share of a phase's jobs) and
//! starts them as slots free up. Taken in delivery order, a small run's jobs would wait behind the large run's
//! already delivered, and taken lane by lane in turn, runs sharing a lane would still queue behind each other and
//! a small run would get only its lane's share of the slots that free up. Instead the next job comes from the
//! tenant with the fewest jobs running in this process (then the tenant after the one started last), so a
//! newcomer's jobs take the freed slots until it runs as many as the others: the slots are shared evenly between
//! the tenants that have work, whatever their backlog. Within a tenant, phase 1 goes first (its phase 2 depends on
//! it), and each phase keeps its delivery order.
//!
//! Slots free up only as jobs end, and a job that writes hundreds of contacts waits on its mailbox's budget for
//! seconds: a tenant whose run starts while another's long jobs hold every slot would wait for them. So a worker
//! also has a few spare slots ([`Turns::start_spare`]), taken only by a tenant that runs fewer jobs than the
//! busiest one: it starts at once, and a tenant alone still runs in the normal slots only.
//!
//! Pure: no I/O, generic over what is queued, so the rule is tested on its own (the consumer holds lapin
//! deliveries in it, grouped by their `x-tenant` header).

use std::collections::{BTreeMap, VecDeque};

use shared::message::Phase;

/// One tenant's jobs: waiting (phase 1's, then phase 2's) and how many run.
#[derive(Debug)]
struct Tenant<T> {
    waiting: [VecDeque<T>; 2],
    running: usize,
}

impl<T> Default for Tenant<T> {
    fn default() -> Self {
        Self {
            waiting: Default::default(),
            running: 0,
        }
    }
}

/// The jobs a worker process has been delivered and not yet started, by tenant and phase, and how many of each
/// tenant's it runs. A tenant with nothing waiting and nothing running is forgotten.
#[derive(Debug)]
pub struct Turns<T> {
    tenants: BTreeMap<String, Tenant<T>>,
    /// The tenant started last, for ties.
    last: Option<String>,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        Self {
            tenants: BTreeMap::new(),
            last: None,
        }
    }
}

fn index(phase: Phase) -> usize {
    match phase {
        Phase::Phase1 => 0,
        Phase::Phase2 => 1,
    }
}

impl<T> Turns<T> {
    /// Queues a delivered job of `tenant` and `phase`, behind the tenant's others of that phase.
    pub fn push(&mut self, tenant: &str, phase: Phase, job: T) {
        self.tenants.entry(tenant.to_owned()).or_default().waiting[index(phase)].push_back(job);
    }

    /// Whether a phase-1 job waits (it may start in the slot kept free of phase-2 jobs).
    pub fn phase1_waiting(&self) -> bool {
        self.tenants.values().any(|t| !t.waiting[0].is_empty())
    }

    /// Whether any job waits.
    pub fn any_waiting(&self) -> bool {
        self.tenants
            .values()
            .any(|t| t.waiting.iter().any(|jobs| !jobs.is_empty()))
    }

    /// The job to start now, with its tenant and phase, counted as running until [`Turns::finished`]: from the
    /// tenant with the fewest running that has a job it may start (phase 2 only if `phase2_allowed`), on a tie the
    /// first after the tenant started last (in name order, wrapping); phase 1 first within a tenant. `None` if
    /// nothing may start.
    pub fn start(&mut self, phase2_allowed: bool) -> Option<(String, Phase, T)> {
        self.start_below(phase2_allowed, usize::MAX)
    }

    /// Whether a tenant that runs fewer jobs than the busiest tenant has a job waiting: it may start in a spare
    /// slot ([`Turns::start_spare`]).
    pub fn spare_waiting(&self) -> bool {
        let busiest = self.busiest();
        self.tenants
            .values()
            .any(|t| t.running < busiest && t.waiting.iter().any(|jobs| !jobs.is_empty()))
    }

    /// The job to start now in a spare slot: as [`Turns::start`], among the tenants that run fewer jobs than the
    /// busiest one. So a tenant alone, or the busiest, never takes one: spare slots are for the tenants that came
    /// while another's jobs held every slot.
    pub fn start_spare(&mut self) -> Option<(String, Phase, T)> {
        self.start_below(true, self.busiest())
    }

    /// Jobs running of the tenant that runs the most.
    fn busiest(&self) -> usize {
        self.tenants.values().map(|t| t.running).max().unwrap_or(0)
    }

    /// [`Turns::start`] among the tenants that run fewer than `limit` jobs.
    fn start_below(&mut self, phase2_allowed: bool, limit: usize) -> Option<(String, Phase, T)> {
        let startable = |tenant: &Tenant<T>| {
            tenant.running < limit
                && (!tenant.waiting[0].is_empty()
                    || (phase2_allowed && !tenant.waiting[1].is_empty()))
        };
        let after_last = |name: &String| match &self.last {
            Some(last) => name <= last,
            None => false,
        };
        // Names after the last one started come first, then the rest: `false < true`.
        let name = self
            .tenants
            .iter()
            .filter(|(_, tenant)| startable(tenant))
            .min_by_key(|(name, tenant)| (tenant.running, after_last(name), name.as_str()))
            .map(|(name, _)| name.clone())?;
        let tenant = self.tenants.get_mut(&name)?;
        let phase = if tenant.waiting[0].is_empty() {
            Phase::Phase2
        } else {
            Phase::Phase1
        };
        let job = tenant.waiting[index(phase)].pop_front()?;
        tenant.running += 1;
        self.last = Some(name.clone());
        Some((name, phase, job))
    }

    /// A job of `tenant` started by [`Turns::start`] has stopped.
    pub fn finished(&mut self, tenant: &str) {
        if let Some(entry) = self.tenants.get_mut(tenant) {
            entry.running = entry.running.saturating_sub(1);
            if entry.running == 0 && entry.waiting.iter().all(VecDeque::is_empty) {
                self.tenants.remove(tenant);
            }
        }
    }

    /// Every waiting job, tenant by tenant, phase 1 first; none waits after.
    pub fn drain(&mut self) -> Vec<T> {
        let jobs = self
            .tenants
            .values_mut()
            .flat_map(|tenant| tenant.waiting.iter_mut().flat_map(|jobs| jobs.drain(..)))
            .collect();
        self.tenants.retain(|_, tenant| tenant.running > 0);
        jobs
    }

    /// Tenants known (waiting or running).
    #[cfg(test)]
    fn tenants(&self) -> usize {
        self.tenants.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(turns: &mut Turns<u32>, phase2_allowed: bool) -> Option<(String, Phase, u32)> {
        turns.start(phase2_allowed)
    }

    /// What [`Turns::start`] returns for `tenant`'s job `n` of `phase`.
    fn job(tenant: &str, phase: Phase, n: u32) -> Option<(String, Phase, u32)> {
        Some((tenant.to_owned(), phase, n))
    }

    fn tenant_of(turns: &mut Turns<u32>) -> Option<String> {
        started(turns, true).map(|(tenant, _, _)| tenant)
    }

    /// A newcomer's jobs take the freed slots until it runs as many as the tenant that was there first, whatever
    /// the order they were delivered in (fails in delivery order, and when tenants only take turns: the large one
    /// would get every other slot).
    #[test]
    fn the_tenant_with_the_fewest_running_goes_first() {
        let mut turns = Turns::default();
        for job in 0..10 {
            turns.push("large", Phase::Phase2, job);
        }
        for _ in 0..4 {
            assert_eq!(tenant_of(&mut turns).as_deref(), Some("large"));
        }
        for job in 100..103 {
            turns.push("small", Phase::Phase2, job);
        }
        turns.finished("large");
        turns.finished("large");
        let order: Vec<_> = (0..5).map(|_| started(&mut turns, true)).collect();
        assert_eq!(
            order,
            vec![
                job("small", Phase::Phase2, 100),
                job("small", Phase::Phase2, 101),
                // 2 running each now: ties go to the tenant after the one started last, wrapping.
                job("large", Phase::Phase2, 4),
                job("small", Phase::Phase2, 102),
                job("large", Phase::Phase2, 5),
            ]
        );
    }

    #[test]
    fn phase_1_goes_first_within_a_tenant_and_alone_when_phase_2_may_not_start() {
        let mut turns = Turns::default();
        turns.push("b", Phase::Phase2, 20);
        turns.push("b", Phase::Phase1, 10);
        turns.push("d", Phase::Phase2, 30);
        assert!(turns.phase1_waiting());
        assert_eq!(started(&mut turns, false), job("b", Phase::Phase1, 10));
        assert!(!turns.phase1_waiting());
        assert_eq!(started(&mut turns, false), None, "no place for phase 2");
        assert!(turns.any_waiting());
        assert_eq!(started(&mut turns, true), job("d", Phase::Phase2, 30));
        assert_eq!(started(&mut turns, true), job("b", Phase::Phase2, 20));
        assert!(!turns.any_waiting());
        assert_eq!(started(&mut turns, true), None);
        turns.push("c", Phase::Phase2, 40);
        turns.push("c", Phase::Phase1, 41);
        turns.push("a", Phase::Phase2, 42);
        assert_eq!(turns.drain(), vec![42, 41, 40]);
        assert!(!turns.any_waiting());
    }

    /// A tenant alone, or the busiest, never takes a spare slot; one that runs fewer does, until it runs as many
    /// (fails when spare slots go to any tenant: the large one would take them first, its jobs came first).
    #[test]
    fn spare_slots_go_only_to_tenants_that_run_fewer_than_the_busiest() {
        let mut turns = Turns::default();
        for job in 0..10 {
            turns.push("large", Phase::Phase2, job);
        }
        assert!(!turns.spare_waiting(), "nothing runs yet");
        assert_eq!(turns.start_spare(), None);
        assert_eq!(tenant_of(&mut turns).as_deref(), Some("large"));
        assert_eq!(tenant_of(&mut turns).as_deref(), Some("large"));
        assert!(!turns.spare_waiting(), "the large tenant is the busiest");
        assert_eq!(turns.start_spare(), None);
        turns.push("small", Phase::Phase2, 100);
        turns.push("small", Phase::Phase1, 101);
        turns.push("small", Phase::Phase2, 102);
        assert!(turns.spare_waiting());
        assert_eq!(
            turns.start_spare(),
            job("small", Phase::Phase1, 101),
            "phase 1 first, and phase 2 may follow in a spare slot"
        );
        assert_eq!(turns.start_spare(), job("small", Phase::Phase2, 100));
        assert!(!turns.spare_waiting(), "2 running each");
        assert_eq!(turns.start_spare(), None);
        turns.finished("small");
        assert_eq!(turns.start_spare(), job("small", Phase::Phase2, 102));
        assert!(!turns.spare_waiting());
        // The large one's jobs still wait for a slot of its own.
        assert_eq!(tenant_of(&mut turns).as_deref(), Some("large"));
    }

    #[test]
    fn a_tenant_with_nothing_left_is_forgotten_and_counts_never_go_below_zero() {
        let mut turns = Turns::default();
        turns.finished("nobody");
        turns.push("a", Phase::Phase2, 1);
        turns.push("a", Phase::Phase2, 2);
        turns.push("b", Phase::Phase2, 3);
        assert_eq!(tenant_of(&mut turns).as_deref(), Some("a"));
        assert_eq!(tenant_of(&mut turns).as_deref(), Some("b"));
        assert_eq!(tenant_of(&mut turns).as_deref(), Some("a"));
        assert_eq!(turns.tenants(), 2);
        turns.finished("b");
        turns.finished("b");
        assert_eq!(turns.tenants(), 1, "b has nothing left");
        turns.finished("a");
        turns.finished("a");
        assert_eq!(turns.tenants(), 0);
    }
}
