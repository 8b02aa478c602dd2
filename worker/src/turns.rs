//! Which delivered job a worker process starts next, when it holds jobs of several lanes (fair tenants across
//! runs, issue 13; `shared::message::Lane`).
//!
//! Each lane is one run's share of a phase's jobs. A worker prefetches every lane's jobs and starts them as slots
//! free up; taking the lanes in turn would give a small run started beside a large one only its lane's share of
//! the slots that free up, so its 20 jobs would wait behind a dozen of the large run's each. Instead the next job
//! comes from the lane with the fewest jobs running in this process (then the one after the lane started last),
//! so a newcomer's jobs take the freed slots until it runs as many as the others: the slots are shared evenly
//! between the runs that have work, whatever their backlog. Within a lane, phase 1 goes first (its tenant's phase
//! 2 depends on it), and each phase keeps its delivery order.
//!
//! Pure: no I/O, generic over what is queued, so the rule is tested on its own (the consumer holds lapin
//! deliveries in it).

use std::collections::VecDeque;

use shared::message::{Lane, Phase};

/// The jobs a worker process has been delivered and not yet started, by lane and phase, and how many of each
/// lane's it runs.
#[derive(Debug)]
pub struct Turns<T> {
    /// Per lane: phase 1's waiting jobs, then phase 2's.
    waiting: Vec<[VecDeque<T>; 2]>,
    running: Vec<usize>,
    /// The lane started last, for ties.
    last: usize,
}

impl<T> Default for Turns<T> {
    fn default() -> Self {
        let lanes = usize::from(Lane::COUNT);
        Self {
            waiting: (0..lanes).map(|_| Default::default()).collect(),
            running: vec![0; lanes],
            last: lanes - 1,
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
    /// Queues a delivered job of `phase` in `lane`, behind the others of the same lane and phase.
    pub fn push(&mut self, phase: Phase, lane: Lane, job: T) {
        self.waiting[usize::from(lane.number())][index(phase)].push_back(job);
    }

    /// Whether a phase-1 job waits (it may start in the slot kept free of phase-2 jobs).
    pub fn phase1_waiting(&self) -> bool {
        self.waiting.iter().any(|phases| !phases[0].is_empty())
    }

    /// Whether any job waits.
    pub fn any_waiting(&self) -> bool {
        self.waiting
            .iter()
            .any(|phases| phases.iter().any(|jobs| !jobs.is_empty()))
    }

    /// The job to start now, counted as running in its lane until [`Turns::finished`]: from the lane with the
    /// fewest running that has a job it may start (phase 2 only if `phase2_allowed`), the lane after the last one
    /// started on a tie; phase 1 first within a lane. `None` if nothing may start.
    pub fn start(&mut self, phase2_allowed: bool) -> Option<(Phase, Lane, T)> {
        let lanes = self.waiting.len();
        let startable = |phases: &[VecDeque<T>; 2]| {
            !phases[0].is_empty() || (phase2_allowed && !phases[1].is_empty())
        };
        let lane = (1..=lanes)
            .map(|step| (self.last + step) % lanes)
            .filter(|lane| startable(&self.waiting[*lane]))
            .min_by_key(|lane| self.running[*lane])?;
        let phase = if self.waiting[lane][0].is_empty() {
            Phase::Phase2
        } else {
            Phase::Phase1
        };
        let job = self.waiting[lane][index(phase)].pop_front()?;
        self.running[lane] += 1;
        self.last = lane;
        let number = u8::try_from(lane).ok().and_then(Lane::new)?;
        Some((phase, number, job))
    }

    /// Every waiting job, in lane order, phase 1 first; none waits after.
    pub fn drain(&mut self) -> Vec<T> {
        self.waiting
            .iter_mut()
            .flat_map(|phases| phases.iter_mut().flat_map(|jobs| jobs.drain(..)))
            .collect()
    }

    /// A job of `lane` started by [`Turns::start`] has stopped.
    pub fn finished(&mut self, lane: Lane) {
        let running = &mut self.running[usize::from(lane.number())];
        *running = running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(n: u8) -> Lane {
        Lane::new(n).expect("lane")
    }

    fn started(turns: &mut Turns<u32>, phase2_allowed: bool) -> Option<(Phase, u8, u32)> {
        turns
            .start(phase2_allowed)
            .map(|(phase, lane, job)| (phase, lane.number(), job))
    }

    /// A newcomer's jobs take the freed slots until it runs as many as the lane that was there first (fails when
    /// the lanes only take turns: the large lane would get every other slot).
    #[test]
    fn the_lane_with_the_fewest_running_goes_first() {
        let mut turns = Turns::default();
        for job in 0..10 {
            turns.push(Phase::Phase2, lane(0), job);
        }
        for _ in 0..4 {
            assert_eq!(started(&mut turns, true).map(|s| s.1), Some(0));
        }
        for job in 100..103 {
            turns.push(Phase::Phase2, lane(2), job);
        }
        turns.finished(lane(0));
        turns.finished(lane(0));
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 2, 100)));
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 2, 101)));
        // 2 running each now: ties go to the lane after the one started last.
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 0, 4)));
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 2, 102)));
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 0, 5)));
    }

    #[test]
    fn phase_1_goes_first_within_a_lane_and_alone_when_phase_2_may_not_start() {
        let mut turns = Turns::default();
        turns.push(Phase::Phase2, lane(1), 20);
        turns.push(Phase::Phase1, lane(1), 10);
        turns.push(Phase::Phase2, lane(3), 30);
        assert!(turns.phase1_waiting());
        assert_eq!(started(&mut turns, false), Some((Phase::Phase1, 1, 10)));
        assert!(!turns.phase1_waiting());
        assert_eq!(started(&mut turns, false), None, "no place for phase 2");
        assert!(turns.any_waiting());
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 3, 30)));
        assert_eq!(started(&mut turns, true), Some((Phase::Phase2, 1, 20)));
        assert!(!turns.any_waiting());
        assert_eq!(started(&mut turns, true), None);
        turns.push(Phase::Phase2, lane(2), 40);
        turns.push(Phase::Phase1, lane(2), 41);
        turns.push(Phase::Phase2, lane(0), 42);
        assert_eq!(turns.drain(), vec![42, 41, 40]);
        assert!(!turns.any_waiting());
    }

    #[test]
    fn finishing_more_than_was_started_never_goes_below_zero() {
        let mut turns = Turns::default();
        turns.finished(lane(1));
        turns.push(Phase::Phase2, lane(0), 1);
        turns.push(Phase::Phase2, lane(0), 2);
        turns.push(Phase::Phase2, lane(1), 3);
        assert_eq!(started(&mut turns, true).map(|s| s.1), Some(0));
        assert_eq!(started(&mut turns, true).map(|s| s.1), Some(1));
        assert_eq!(started(&mut turns, true).map(|s| s.1), Some(0));
    }
}
