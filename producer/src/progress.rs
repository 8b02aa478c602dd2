//! Progress of a run per phase: periodic plain lines (CI logs) so an operator sees the run move.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shared::message::Phase;
use tracing::info;

/// How often a progress line is printed at most.
const EVERY: Duration = Duration::from_secs(2);

/// Counts of jobs per phase.
pub struct Progress {
    phases: BTreeMap<Phase, (u64, u64, u64)>,
    last: Instant,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Starts counting.
    pub fn new() -> Self {
        Self {
            phases: BTreeMap::new(),
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    /// `count` more jobs were queued in `phase`.
    pub fn add(&mut self, phase: Phase, count: u64) {
        self.phases.entry(phase).or_default().0 += count;
    }

    /// One job of `phase` finished.
    pub fn done(&mut self, phase: Phase, succeeded: bool) {
        let entry = self.phases.entry(phase).or_default();
        if succeeded {
            entry.1 += 1;
        } else {
            entry.2 += 1;
        }
        if self.last.elapsed() >= EVERY {
            self.last = Instant::now();
            info!("{}", self.line());
        }
    }

    /// Prints the final line.
    pub fn finish(&self) {
        info!("{}", self.line());
    }

    fn line(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(phase, (total, ok, failed))| {
                format!("{phase} {}/{} done ({} failed)", ok + failed, total, failed)
            })
            .collect();
        format!(
            "progress after {:.0}s: {}",
            self.started.elapsed().as_secs_f64(),
            parts.join(", ")
        )
    }
}
