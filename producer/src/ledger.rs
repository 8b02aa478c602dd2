//! The run's one ledger: which jobs still wait for their final report, and which reports count.
//!
//! Reports arrive at least once (a worker redelivered after a crash, a job published twice across a broker
//! restart, another run's report on an old shared queue), so every consumer of reports (the run report, the
//! progress display, the `status` snapshot, the kept state) must count the same ones, once. They all take their
//! reports from [`RunLedger::accept`], which is the only place that decides. Pure: no I/O.

use std::collections::{HashMap, HashSet};

use shared::message::{Job, Phase, Report};
use uuid::Uuid;

/// A job of this run that has no final report yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The tenant's index in the run.
    pub tenant: usize,
    /// The tenant's id.
    pub tenant_id: String,
    /// The job's phase.
    pub phase: Phase,
    /// The mailbox the job writes (UPN).
    pub mailbox: String,
}

/// A report the ledger accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The tenant's index in the run.
    pub tenant: usize,
    /// The job's final report: nothing more will come for it.
    pub last: bool,
}

/// The jobs of one run and the reports accepted for them.
#[derive(Debug)]
pub struct RunLedger {
    run_id: Uuid,
    waiting: HashMap<Uuid, Waiting>,
    /// Attempts whose retry report was accepted, so a redelivered copy is not counted twice. (A final report
    /// ends the wait, which is what keeps its copies out.)
    attempts: HashSet<(Uuid, u32)>,
}

impl RunLedger {
    /// An empty ledger for run `run_id`.
    pub fn new(run_id: Uuid) -> Self {
        Self {
            run_id,
            waiting: HashMap::new(),
            attempts: HashSet::new(),
        }
    }

    /// `job`, of the run's tenant number `tenant`, now waits for its reports.
    pub fn expect(&mut self, job: &Job, tenant: usize) {
        self.waiting.insert(
            job.job_id,
            Waiting {
                tenant,
                tenant_id: job.tenant_id.clone(),
                phase: job.phase(),
                mailbox: job.mailbox().upn.clone(),
            },
        );
    }

    /// Whether `report` counts: it is of this run, for a job still waiting, and not a copy of an attempt already
    /// accepted. A final report ends the job's wait, so any later copy is ignored.
    pub fn accept(&mut self, report: &Report) -> Option<Accepted> {
        if report.run_id != self.run_id {
            return None;
        }
        let tenant = self.waiting.get(&report.job_id)?.tenant;
        let last = report.outcome.is_final();
        if last {
            self.waiting.remove(&report.job_id);
        } else if !self.attempts.insert((report.job_id, report.attempt)) {
            return None;
        }
        Some(Accepted { tenant, last })
    }

    /// The tenant (index) of a job of `run_id` still waiting for its final report.
    pub fn tenant_of(&self, run_id: Uuid, job_id: Uuid) -> Option<usize> {
        (run_id == self.run_id)
            .then(|| self.waiting.get(&job_id).map(|job| job.tenant))
            .flatten()
    }

    /// Jobs still waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Gives up on every job still waiting and returns them (in a stable order), for the report to name.
    pub fn give_up(&mut self) -> Vec<Waiting> {
        let mut lost: Vec<Waiting> = self.waiting.drain().map(|(_, job)| job).collect();
        lost.sort_by(|a, b| (a.tenant, a.phase, &a.mailbox).cmp(&(b.tenant, b.phase, &b.mailbox)));
        lost
    }
}

#[cfg(test)]
mod tests {
    use shared::message::{CentralFolder, JobKind, Outcome};
    use shared::model::Mailbox;

    use super::*;

    fn job(run: Uuid, user: &str) -> Job {
        let mailbox = |id: &str| Mailbox {
            id: id.into(),
            upn: format!("{id}@x"),
        };
        Job::new(
            run,
            "x",
            false,
            JobKind::Phase2 {
                central: Some(CentralFolder {
                    mailbox: mailbox("shared"),
                    folder_id: None,
                }),
                mailbox: mailbox(user),
            },
        )
    }

    fn report(job: &Job, attempt: u32, outcome: Outcome) -> Report {
        Report {
            duration_ms: 1,
            ..Report::of(job, attempt, outcome)
        }
    }

    #[test]
    fn each_report_counts_once_and_only_for_a_waiting_job_of_this_run() {
        let run = Uuid::now_v7();
        let mut ledger = RunLedger::new(run);
        let (a, b) = (job(run, "a"), job(run, "b"));
        ledger.expect(&a, 0);
        ledger.expect(&b, 1);
        let retry = Outcome::Retrying {
            after_secs: 1,
            error: "503".into(),
        };
        let first = report(&a, 1, retry);
        assert_eq!(
            ledger.accept(&first),
            Some(Accepted {
                tenant: 0,
                last: false
            })
        );
        assert_eq!(ledger.accept(&first), None, "a redelivered attempt");
        let done = report(&a, 2, Outcome::Succeeded);
        assert_eq!(
            ledger.accept(&done),
            Some(Accepted {
                tenant: 0,
                last: true
            })
        );
        assert_eq!(ledger.accept(&done), None, "a second final copy");
        assert_eq!(
            ledger.accept(&report(&a, 3, Outcome::Succeeded)),
            None,
            "a job published twice ran twice"
        );
        assert_eq!(
            ledger.accept(&report(&job(Uuid::now_v7(), "b"), 1, Outcome::Succeeded)),
            None,
            "another run's report"
        );
        assert_eq!(ledger.waiting(), 1);
        let lost = ledger.give_up();
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].tenant, lost[0].mailbox.as_str()), (1, "b@x"));
        assert_eq!(ledger.waiting(), 0);
    }
}
