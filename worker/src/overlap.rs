//! Overlapped phases in one process (issue 13, embedded mode): what a tenant's phase-1 job tells the phase-2 jobs
//! of the same run while it writes the central folder.
//!
//! Why in-process only: the board is memory the phase-1 job and the phase-2 jobs share. Between processes the
//! same needs the planned folder and each confirmation carried by the broker; until then a fleet runs its phases
//! one after the other. The rules (what may go early, how the job settles) are `shared::sync::overlap`'s.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use shared::feed::{Cursors, Generation};
use shared::sync::{PreparedCentral, SyncId};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// A phase-1 job has its plan: the producer may send the tenant's phase-2 jobs now.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The tenant.
    pub tenant_id: String,
    /// The run.
    pub run_id: Uuid,
    /// The phase-1 job.
    pub job_id: Uuid,
    /// The feeds as phase 1 checked them, without the central folder's (no mailbox is in line with what phase 1
    /// is still writing): what the tenant's phase-2 jobs carry, as they would from its final report.
    pub cursors: Cursors,
}

/// What phase 1's plan leaves in the central folder when every write succeeds.
#[derive(Debug)]
pub struct CentralPlan {
    /// The central folder as the plan leaves it (`sync::overlap::planned_folder`), prepared for phase 2.
    pub folder: PreparedCentral,
    /// The persons the plan creates.
    pub created: BTreeSet<SyncId>,
}

/// How phase 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its job succeeded (some writes may have been refused); the central folder is what it is now, in line with
    /// this generation when every write succeeded.
    Written {
        /// What a phase-2 job brings its mailbox in line with.
        in_line_with: Option<Generation>,
    },
    /// Its job failed for good: an ordered run would send no phase-2 job.
    Failed,
}

/// A tenant's phase 1 in this run, as its phase-2 jobs see it.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    /// The plan of the attempt writing now; replaced when a later attempt plans again.
    pub plan: Option<Arc<CentralPlan>>,
    /// Persons of `plan` whose central create Graph confirmed.
    pub confirmed: Arc<BTreeSet<SyncId>>,
    /// The attempt that made `plan` ended without finishing (a later attempt may plan again).
    pub interrupted: bool,
    /// Phase 1 is over.
    pub ended: Option<Ended>,
}

/// One tenant's phase 1 in one run.
#[derive(Debug)]
pub struct Board {
    run_id: Uuid,
    stage: watch::Sender<Stage>,
}

impl Board {
    /// Follows the stage.
    pub fn watch(&self) -> watch::Receiver<Stage> {
        self.stage.subscribe()
    }

    /// An attempt planned: its plan replaces any earlier one, with nothing confirmed yet.
    pub fn planned(&self, plan: CentralPlan) {
        self.stage.send_modify(|stage| {
            stage.plan = Some(Arc::new(plan));
            stage.confirmed = Arc::default();
            stage.interrupted = false;
        });
    }

    /// Graph confirmed these persons' central creates.
    pub fn confirmed(&self, persons: impl IntoIterator<Item = SyncId>) {
        let mut persons = persons.into_iter().peekable();
        if persons.peek().is_none() {
            return;
        }
        self.stage.send_modify(|stage| {
            Arc::make_mut(&mut stage.confirmed).extend(persons);
        });
    }

    /// The attempt writing now ended without finishing.
    pub fn interrupted(&self) {
        self.stage.send_modify(|stage| stage.interrupted = true);
    }

    /// Phase 1 is over.
    pub fn ended(&self, ended: Ended) {
        self.stage.send_modify(|stage| stage.ended = Some(ended));
    }
}

/// Marks the board's attempt interrupted unless [`Publishing::finish`] was called: a phase-1 attempt that returns
/// early, fails or is cancelled after planning never leaves phase-2 jobs waiting for confirmations.
pub struct Publishing<'a>(Option<&'a Board>);

impl<'a> Publishing<'a> {
    /// Publishing on `board` (none: nothing to do).
    pub fn on(board: Option<&'a Board>) -> Self {
        Self(board)
    }

    /// The board, if any.
    pub fn board(&self) -> Option<&'a Board> {
        self.0
    }

    /// Phase 1's job succeeded.
    pub fn finish(mut self, ended: Ended) {
        if let Some(board) = self.0.take() {
            board.ended(ended);
        }
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if let Some(board) = self.0 {
            board.interrupted();
        }
    }
}

/// Every tenant's board of the latest run this process saw, and the producer's news of plans. Off until
/// [`Boards::enable`] (a worker in a fleet never enables it: its jobs' phases follow one another).
#[derive(Debug)]
pub struct Boards {
    by_tenant: Mutex<HashMap<String, Arc<Board>>>,
    news: mpsc::UnboundedSender<Planned>,
    news_rx: Mutex<Option<mpsc::UnboundedReceiver<Planned>>>,
    enabled: std::sync::atomic::AtomicBool,
}

impl Default for Boards {
    fn default() -> Self {
        let (news, news_rx) = mpsc::unbounded_channel();
        Self {
            by_tenant: Mutex::default(),
            news,
            news_rx: Mutex::new(Some(news_rx)),
            enabled: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Boards {
    /// Lets jobs marked `overlapped` overlap; returns where plans are announced (once: `None` after the first
    /// call).
    pub fn enable(&self) -> Option<mpsc::UnboundedReceiver<Planned>> {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.news_rx.lock().ok()?.take()
    }

    /// Whether [`Boards::enable`] was called.
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `tenant`'s board for `run`, made when missing; a newer run replaces an older one's (whose jobs keep theirs).
    pub fn board(&self, tenant: &str, run_id: Uuid) -> Option<Arc<Board>> {
        if !self.enabled() {
            return None;
        }
        let mut map = self.by_tenant.lock().ok()?;
        let key = tenant.to_ascii_lowercase();
        match map.get(&key) {
            Some(board) if board.run_id == run_id => Some(board.clone()),
            _ => {
                let board = Arc::new(Board {
                    run_id,
                    stage: watch::Sender::new(Stage::default()),
                });
                map.insert(key, board.clone());
                Some(board)
            }
        }
    }

    /// Tells the producer a phase-1 job planned.
    pub fn announce(&self, planned: Planned) {
        // The producer's end is gone only when it stopped listening: nobody then sends phase-2 jobs early.
        let _ = self.news.send(planned);
    }

    /// Phase 1 of `tenant` in `run` is over, as its final report says (the producer learns it there).
    pub fn ended(&self, tenant: &str, run_id: Uuid, ended: Ended) {
        if let Some(board) = self.board(tenant, run_id) {
            board.ended(ended);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(n: u128) -> SyncId {
        SyncId::parse(&Uuid::from_u128(n).to_string()).expect("a uuid is a sync id")
    }

    #[test]
    fn a_board_exists_only_once_enabled_and_per_tenant_and_run() {
        let boards = Boards::default();
        let run = Uuid::now_v7();
        assert!(boards.board("t", run).is_none(), "off by default");
        assert!(boards.enable().is_some());
        assert!(boards.enable().is_none(), "the news go to one listener");
        let a = boards.board("T", run).expect("on");
        let b = boards.board("t", run).expect("on");
        assert!(Arc::ptr_eq(&a, &b), "one board per tenant and run");
        let later = boards.board("t", Uuid::now_v7()).expect("on");
        assert!(!Arc::ptr_eq(&a, &later), "a newer run has its own");
    }

    #[test]
    fn an_attempt_that_stops_without_finishing_says_so_and_a_new_plan_starts_over() {
        let boards = Boards::default();
        boards.enable();
        let board = boards.board("t", Uuid::now_v7()).expect("on");
        let watch = board.watch();
        let plan = || CentralPlan {
            folder: PreparedCentral::new(Vec::new()),
            created: [person(1)].into(),
        };
        {
            let publishing = Publishing::on(Some(&board));
            board.planned(plan());
            board.confirmed([person(1)]);
            assert!(watch.borrow().confirmed.contains(&person(1)));
            drop(publishing);
        }
        assert!(watch.borrow().interrupted);
        board.planned(plan());
        assert!(!watch.borrow().interrupted);
        assert!(
            watch.borrow().confirmed.is_empty(),
            "a new plan starts over"
        );
        Publishing::on(Some(&board)).finish(Ended::Written { in_line_with: None });
        let stage = watch.borrow().clone();
        assert_eq!(stage.ended, Some(Ended::Written { in_line_with: None }));
        assert!(!stage.interrupted, "finished is not interrupted");
    }
}
