//! Overlapped phases (issue 13): what a tenant's phase-1 job tells the phase-2 jobs of the same run while it
//! writes the central folder.
//!
//! One board per tenant and run. In one process (the embedded mode) the board is memory the phase-1 job and the
//! phase-2 jobs share; in a fleet it is a RabbitMQ stream ([`relay`]) the phase-1 job appends to and each worker
//! process follows into the same memory, so a job reads its board the same way in both. The rules (what may go
//! early, how a job settles) are `shared::sync::overlap`'s.

pub mod relay;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::feed::{Cursors, Generation};
use shared::message::SourceFailure;
use shared::model::Contact;
use shared::sync::{PreparedCentral, SyncId};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::planning_budget::{Planning, PlanningBudget};

/// A phase-1 job has its plan: the producer may send the tenant's phase-2 jobs now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
    /// The source mailboxes phase 1 could not read, as its final report will list them: the producer settles
    /// the phase-2 job of each one the reason bars (`Job::unreadable_report`) instead of sending it.
    #[serde(default)]
    pub source_failures: Vec<SourceFailure>,
}

/// What phase 1's plan leaves in the central folder when every write succeeds.
#[derive(Debug)]
pub struct CentralPlan {
    /// The central folder as the plan leaves it (`sync::overlap::planned_folder`), prepared for phase 2.
    pub folder: PreparedCentral,
    /// The persons the plan creates.
    pub created: BTreeSet<SyncId>,
    /// The units of this process's planning budget the folder weighs, given back when the last holder of the plan
    /// lets it go: a phase-2 job waiting for units gets them only once the board no longer holds the plan, so it
    /// never plans early for nothing (the 100,000-contact benchmark's peak: a job planned the whole folder early
    /// while phase 1 was at its last step), and the folder never sits uncounted beside the plans jobs make.
    pub units: Planning,
}

/// How phase 1 ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum Ended {
    /// Its job succeeded (some writes may have been refused); the central folder is what it is now, in line with
    /// this generation when every write succeeded.
    #[serde(rename_all = "camelCase")]
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
    /// The plan of the attempt writing now, held only while a job could still copy something early from it: let
    /// go once every create it makes is confirmed, once its attempt stops, and at phase 1's end, so a large plan's
    /// folder (100,000 contacts: about 140 MiB) is not held through phase 1's last step nor beside the folders
    /// later jobs read.
    pub plan: Option<Arc<CentralPlan>>,
    /// How many plans were made on this board: tells one attempt's plan from the next after `plan` was let go.
    pub plans: u32,
    /// Persons of the latest plan whose central create Graph confirmed.
    pub confirmed: Arc<BTreeSet<SyncId>>,
    /// The attempt that made the latest plan ended without finishing (a later attempt may plan again).
    pub interrupted: bool,
    /// Phase 1 is over.
    pub ended: Option<Ended>,
    /// The board can no longer be followed (a fleet's stream is gone or the broker unreachable): nothing more will
    /// come, and a job waiting on it gives up its early copies and tries again later.
    pub lost: bool,
}

impl Stage {
    /// An attempt planned: its plan replaces any earlier one, with nothing confirmed yet; `None` when this process
    /// holds no copy of it (no planning units were free for its folder), so its jobs copy nothing early. Once
    /// phase 1 is over a plan is of no use (see [`Stage::end`]) and is not kept.
    fn plan(&mut self, plan: Option<CentralPlan>) {
        if self.ended.is_some() {
            return;
        }
        self.plans += 1;
        self.confirmed = Arc::default();
        self.interrupted = false;
        // A plan that creates nobody has nothing to copy early.
        self.plan = plan.filter(|plan| !plan.created.is_empty()).map(Arc::new);
    }

    /// Graph confirmed these persons' central creates; the plan goes once all of its creates are. Words with no
    /// plan held (after its end or its last create) change nothing.
    fn confirm(&mut self, persons: impl IntoIterator<Item = SyncId>) {
        let Some(plan) = &self.plan else {
            return;
        };
        let confirmed = Arc::make_mut(&mut self.confirmed);
        confirmed.extend(persons);
        if plan.created.is_subset(confirmed) {
            self.plan = None;
        }
    }

    /// The attempt that made the latest plan stopped without finishing: nothing more goes early from its plan.
    fn interrupt(&mut self) {
        self.interrupted = true;
        self.plan = None;
    }

    /// Phase 1 is over; the first word counts (the phase-1 job and the producer may both say it). The plan and
    /// its confirmations go: every job from now on plans against the folder as read.
    fn end(&mut self, ended: Ended) {
        self.ended.get_or_insert(ended);
        self.plan = None;
        self.confirmed = Arc::default();
    }
}

/// One tenant's phase 1 in one run.
pub struct Board {
    run_id: Uuid,
    tenant_id: String,
    stage: Arc<watch::Sender<Stage>>,
    backend: Backend,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("run_id", &self.run_id)
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

/// Where a board's news go and where its stage comes from.
enum Backend {
    /// One process: the board is this memory; plans are announced on the producer's channel.
    InProcess {
        news: mpsc::UnboundedSender<Planned>,
    },
    /// A fleet: the phase-1 job's words go to the tenant's stream; the stage is followed from it once a job reads
    /// it.
    Relayed {
        relay: Arc<relay::Relay>,
        /// This process's planning budget, which the followed plan's folder is held within.
        budget: PlanningBudget,
        /// The phase-1 attempt writing from this process (its words name it).
        attempt: Mutex<Option<Uuid>>,
        outbox: OnceLock<relay::Outbox>,
        following: std::sync::Once,
    },
}

impl Board {
    /// Follows the stage (in a fleet, from the tenant's stream, read from its first entry by this process once).
    pub fn watch(&self) -> watch::Receiver<Stage> {
        if let Backend::Relayed {
            relay,
            following,
            budget,
            ..
        } = &self.backend
        {
            following.call_once(|| {
                relay::follow(
                    relay.clone(),
                    self.run_id,
                    self.tenant_id.clone(),
                    self.stage.clone(),
                    budget.clone(),
                )
            });
        }
        self.stage.subscribe()
    }

    /// An attempt planned `folder` (the central folder as the plan leaves it) creating `created`, holding `units`
    /// of the planning budget for it until the folder is let go: its plan replaces any earlier one, with
    /// nothing confirmed yet; then the producer hears of it (`news`, for the run's report queue `report_queue` as
    /// the job names it), never before.
    pub fn planned(
        &self,
        folder: Vec<Contact>,
        created: BTreeSet<SyncId>,
        units: Planning,
        news: Planned,
        report_queue: Option<String>,
    ) {
        match &self.backend {
            Backend::InProcess { news: producer } => {
                let plan = CentralPlan {
                    folder: PreparedCentral::new(folder),
                    created,
                    units,
                };
                self.stage.send_modify(|stage| stage.plan(Some(plan)));
                // The producer's end is gone only when it stopped listening: nobody then sends phase-2 jobs early.
                let _ = producer.send(news);
            }
            Backend::Relayed { attempt, .. } => {
                let id = Uuid::now_v7();
                if let Ok(mut attempt) = attempt.lock() {
                    *attempt = Some(id);
                }
                self.send(relay::Outgoing::Plan {
                    attempt: id,
                    folder,
                    created,
                    units,
                });
                self.send(relay::Outgoing::News { news, report_queue });
            }
        }
    }

    /// Graph confirmed these persons' central creates.
    pub fn confirmed(&self, persons: impl IntoIterator<Item = SyncId>) {
        let mut persons = persons.into_iter().peekable();
        if persons.peek().is_none() {
            return;
        }
        match &self.backend {
            Backend::InProcess { .. } => self.stage.send_modify(|stage| stage.confirm(persons)),
            Backend::Relayed { .. } => {
                if let Some(attempt) = self.attempt() {
                    let persons = persons.collect();
                    self.send(relay::Entry::Confirmed { attempt, persons });
                }
            }
        }
    }

    /// The attempt writing now ended without finishing.
    pub fn interrupted(&self) {
        match &self.backend {
            Backend::InProcess { .. } => self.stage.send_modify(Stage::interrupt),
            Backend::Relayed { .. } => {
                if let Some(attempt) = self.attempt() {
                    self.send(relay::Entry::Interrupted { attempt });
                }
            }
        }
    }

    /// Phase 1 is over. On the broker, said only by a process that planned on the board: with no plan there, no
    /// phase-2 job follows it but those an earlier attempt's plan sent, and the producer tells them (its
    /// `phase1_ended`), so a run whose phase 1 planned nothing (nothing changed, a plan too small to overlap) puts
    /// no stream on the broker.
    pub fn ended(&self, ended: Ended) {
        match &self.backend {
            Backend::InProcess { .. } => self.stage.send_modify(|stage| stage.end(ended)),
            Backend::Relayed { .. } => {
                if self.attempt().is_some() {
                    self.send(relay::Entry::Ended { ended });
                }
            }
        }
    }

    fn attempt(&self) -> Option<Uuid> {
        match &self.backend {
            Backend::Relayed { attempt, .. } => attempt.lock().ok().and_then(|a| *a),
            Backend::InProcess { .. } => None,
        }
    }

    /// Hands `outgoing` to the board's outbox (started on first use), which sends in order.
    fn send(&self, outgoing: impl Into<relay::Outgoing>) {
        if let Backend::Relayed { relay, outbox, .. } = &self.backend {
            outbox
                .get_or_init(|| relay::Outbox::start(relay.clone(), self.run_id, &self.tenant_id))
                .send(outgoing.into());
        }
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
/// [`Boards::enable`] (embedded) or [`Boards::relay`] (a worker of a fleet).
pub struct Boards {
    by_tenant: Mutex<HashMap<String, Arc<Board>>>,
    news: mpsc::UnboundedSender<Planned>,
    news_rx: Mutex<Option<mpsc::UnboundedReceiver<Planned>>>,
    enabled: std::sync::atomic::AtomicBool,
    /// A fleet's broker and this process's planning budget, once [`Boards::relay`] was called.
    relay: OnceLock<(Arc<relay::Relay>, PlanningBudget)>,
    /// In a fleet, the places of jobs waiting on a board (see [`Boards::waiting_place`]).
    waiting: OnceLock<Arc<Semaphore>>,
}

impl std::fmt::Debug for Boards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boards")
            .field("enabled", &self.enabled())
            .field("relayed", &self.relay.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Boards {
    fn default() -> Self {
        let (news, news_rx) = mpsc::unbounded_channel();
        Self {
            by_tenant: Mutex::default(),
            news,
            news_rx: Mutex::new(Some(news_rx)),
            enabled: std::sync::atomic::AtomicBool::new(false),
            relay: OnceLock::new(),
            waiting: OnceLock::new(),
        }
    }
}

/// How long a job of a fleet waits on its tenant's phase 1 before it deletes its early copies and comes back
/// later ([`DEFER_FOR`]): well within RabbitMQ's `consumer_timeout` (30 minutes by default), past which the broker
/// would take back every delivery of the worker's channel.
pub const FLEET_WAIT: Duration = Duration::from_secs(10 * 60);

/// The longest a phase-1 job of a fleet waits at its end for room in the shared mailbox's window for the other
/// processes' reads (`TenantClient::make_room_for_fleet`): well within [`FLEET_WAIT`], which the jobs waiting on
/// its end count from about its last write. Where the room would come later, phase 1 ends at once and a read that
/// does not fit meets a 429 and waits out its `Retry-After`, as it would without the wait.
pub const ROOM_WAIT: Duration = Duration::from_secs(8 * 60);

// A waiting job must still be waiting when phase 1 ends after its longest wait for room.
const _: () = assert!(ROOM_WAIT.as_secs() + 60 <= FLEET_WAIT.as_secs());

/// How long a job that may not wait now stays out of the way (the shortest retry level but one).
pub const DEFER_FOR: Duration = Duration::from_secs(5);

/// Every place for a job waiting on a board is taken: the job goes back to the queue for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPlace;

impl Boards {
    /// Lets jobs marked `overlapped` overlap in this process; returns where plans are announced (once: `None`
    /// after the first call).
    pub fn enable(&self) -> Option<mpsc::UnboundedReceiver<Planned>> {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.news_rx.lock().ok()?.take()
    }

    /// Lets jobs marked `overlapped` overlap across a fleet: boards live on the broker ([`relay`]). At most `waiting`
    /// jobs of this process wait on a board at once: the rest of its job slots stay free for phase-1 jobs (a
    /// phase-1 attempt run again, or handed back by a worker that died, needs a slot while the tenant's phase-2
    /// jobs wait for it: with every slot of every process waiting, it would never get one). A plan's folder followed
    /// from the broker is held within `budget` (the process's planning budget).
    pub fn relay(&self, relay: relay::Relay, waiting: usize, budget: PlanningBudget) {
        if self.relay.set((Arc::new(relay), budget)).is_ok() {
            let _ = self.waiting.set(Arc::new(Semaphore::new(waiting)));
            self.enabled
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Whether boards are on ([`Boards::enable`] or [`Boards::relay`]).
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether boards are a fleet's ([`Boards::relay`]): a wait on one is bounded, and takes a place.
    pub fn relayed(&self) -> bool {
        self.relay.get().is_some()
    }

    /// How long a job may wait on a board: bounded in a fleet ([`FLEET_WAIT`]), not in one process.
    pub fn wait_limit(&self) -> Option<Duration> {
        self.relayed().then_some(FLEET_WAIT)
    }

    /// A place among the jobs waiting on a board, held while it waits: `Ok(None)` in one process (no limit: the
    /// embedded queue never has more jobs out than workers), [`NoPlace`] when a fleet's are all taken.
    pub fn waiting_place(&self) -> Result<Option<OwnedSemaphorePermit>, NoPlace> {
        match self.waiting.get() {
            None => Ok(None),
            Some(places) => places
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| NoPlace),
        }
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
                let backend = match self.relay.get() {
                    Some((relay, budget)) => Backend::Relayed {
                        relay: relay.clone(),
                        budget: budget.clone(),
                        attempt: Mutex::new(None),
                        outbox: OnceLock::new(),
                        following: std::sync::Once::new(),
                    },
                    None => Backend::InProcess {
                        news: self.news.clone(),
                    },
                };
                let board = Arc::new(Board {
                    run_id,
                    tenant_id: tenant.to_owned(),
                    stage: Arc::new(watch::Sender::new(Stage::default())),
                    backend,
                });
                map.insert(key, board.clone());
                Some(board)
            }
        }
    }

    /// Phase 1 of `tenant` in `run` is over, as its final report says (the embedded producer learns it there; a
    /// fleet's producer appends it to the tenant's stream, [`relay::ended_entry`]).
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
        let news = || Planned {
            tenant_id: "t".into(),
            run_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            cursors: Cursors::default(),
            source_failures: Vec::new(),
        };
        let plan = || (Vec::new(), [person(1)].into(), news(), None);
        {
            let publishing = Publishing::on(Some(&board));
            let (folder, created, news, queue) = plan();
            board.planned(folder, created, Planning::none(), news, queue);
            board.confirmed([person(1)]);
            assert!(watch.borrow().confirmed.contains(&person(1)));
            drop(publishing);
        }
        assert!(watch.borrow().interrupted);
        let (folder, created, news, queue) = plan();
        board.planned(folder, created, Planning::none(), news, queue);
        assert!(!watch.borrow().interrupted);
        assert!(
            watch.borrow().confirmed.is_empty(),
            "a new plan starts over"
        );
        Publishing::on(Some(&board)).finish(Ended::Written { in_line_with: None });
        let stage = watch.borrow().clone();
        assert_eq!(stage.ended, Some(Ended::Written { in_line_with: None }));
        assert!(!stage.interrupted, "finished is not interrupted");
        assert!(
            stage.plan.is_none() && stage.confirmed.is_empty(),
            "phase 1 over: its plan is not held"
        );
        let (folder, created, news, queue) = plan();
        board.planned(folder, created, Planning::none(), news, queue);
        assert!(watch.borrow().plan.is_none(), "nor a plan that came late");
        board.ended(Ended::Failed);
        assert_eq!(
            watch.borrow().ended,
            Some(Ended::Written { in_line_with: None }),
            "the first end stands"
        );
    }

    /// The 100,000-contact benchmark's peak before the fix: the plan's folder stayed on the board through phase 1's
    /// last step (its delta read), after every create it makes was confirmed and nothing was left to copy early.
    #[test]
    fn a_board_lets_its_plan_go_once_nothing_is_left_to_copy_early() {
        let mut stage = Stage::default();
        let plan = |created: &[u128]| {
            Some(CentralPlan {
                folder: PreparedCentral::new(Vec::new()),
                created: created.iter().copied().map(person).collect(),
                units: Planning::none(),
            })
        };
        stage.plan(plan(&[1, 2]));
        stage.confirm([person(1)]);
        assert!(stage.plan.is_some(), "person 2 may still go early");
        stage.confirm([person(2)]);
        assert!(
            stage.plan.is_none(),
            "every create confirmed: the plan went"
        );
        assert_eq!(stage.plans, 1, "which plan it was stays known");
        assert!(
            stage.confirmed.contains(&person(1)) && stage.confirmed.contains(&person(2)),
            "jobs still sending read the confirmations"
        );
        stage.plan(plan(&[]));
        assert!(stage.plan.is_none(), "a plan creating nobody is not held");
        assert_eq!(stage.plans, 2);
        stage.plan(None);
        assert!(
            stage.plan.is_none() && stage.plans == 3,
            "a plan this process holds no copy of counts, and is not held"
        );
        stage.plan(plan(&[3]));
        stage.interrupt();
        assert!(
            stage.plan.is_none() && stage.interrupted,
            "an interrupted attempt's plan is not held"
        );
        stage.confirm([person(3)]);
        assert!(
            stage.confirmed.is_empty(),
            "a word after the plan went changes nothing"
        );
    }

    /// Phase 1's process holds the units its plan's folder weighs until nothing of it is left to copy early: a
    /// phase-2 job of the process cannot get them (and plan early for nothing) before the board let the plan go.
    #[test]
    fn a_plans_units_go_back_once_its_creates_are_confirmed_or_it_stops() {
        let boards = Boards::default();
        boards.enable();
        let board = boards.board("t", Uuid::now_v7()).expect("on");
        let budget = crate::planning_budget::PlanningBudget::new(10);
        let news = || Planned {
            tenant_id: "t".into(),
            run_id: board.run_id,
            job_id: Uuid::now_v7(),
            cursors: Cursors::default(),
            source_failures: Vec::new(),
        };
        let units = budget.try_take(10).expect("free");
        board.planned(
            Vec::new(),
            [person(1), person(2)].into(),
            units,
            news(),
            None,
        );
        board.confirmed([person(1)]);
        assert!(budget.try_take(1).is_none(), "person 2 may still go early");
        board.confirmed([person(2)]);
        assert!(
            board.watch().borrow().plan.is_none(),
            "the board let the plan go"
        );
        assert!(
            budget.try_take(10).is_some(),
            "every create confirmed: the units are back"
        );
        let units = budget.try_take(10).expect("free");
        board.planned(Vec::new(), [person(3)].into(), units, news(), None);
        board.interrupted();
        assert!(
            budget.try_take(10).is_some(),
            "an interrupted attempt gives its plan's units back"
        );
        let units = budget.try_take(10).expect("free");
        board.planned(Vec::new(), [person(5)].into(), units, news(), None);
        let copy = board.watch().borrow().plan.clone();
        board.confirmed([person(5)]);
        assert!(
            budget.try_take(1).is_none(),
            "a job still holding the plan keeps its units"
        );
        drop(copy);
        assert!(
            budget.try_take(10).is_some(),
            "given back with the last copy"
        );
        let units = budget.try_take(10).expect("free");
        board.planned(Vec::new(), [person(4)].into(), units, news(), None);
        board.ended(Ended::Written { in_line_with: None });
        assert!(budget.try_take(10).is_some(), "so does phase 1's end");
    }

    #[test]
    fn a_fleet_keeps_places_for_waiting_jobs_and_bounds_their_wait() {
        let boards = Boards::default();
        assert_eq!(
            boards.waiting_place().map(|p| p.is_some()),
            Ok(false),
            "one process: no limit"
        );
        assert_eq!(boards.wait_limit(), None);
        let relay = relay::Relay::new(
            "amqp://127.0.0.1:5672",
            shared::mq::Topology::new("test"),
            "t",
        );
        boards.relay(relay, 1, PlanningBudget::default());
        assert!(boards.enabled() && boards.relayed());
        let held = boards.waiting_place().expect("one place").expect("limited");
        assert_eq!(
            boards.waiting_place().err(),
            Some(NoPlace),
            "the second job has none"
        );
        drop(held);
        assert!(
            boards.waiting_place().is_ok(),
            "a place given back is free again"
        );
        assert_eq!(boards.wait_limit(), Some(FLEET_WAIT));
    }

    /// Whether the board's outbox (which declares the tenant's stream on the broker) was started.
    fn sends(board: &Board) -> bool {
        matches!(&board.backend, Backend::Relayed { outbox, .. } if outbox.get().is_some())
    }

    /// Failed before the fix: a fleet's phase 1 that planned nothing (a no-change run) still sent its end, which
    /// declared the tenant's stream only for the producer to delete it moments later (once refused by RabbitMQ with
    /// `coordinator_unavailable` after 30 s, holding the run's end).
    #[tokio::test]
    async fn a_fleet_board_stays_off_the_broker_until_a_plan_is_made_there() {
        let boards = Boards::default();
        // Nothing listens there: the outbox, once started, only fails to connect in the background.
        let relay = relay::Relay::new("amqp://127.0.0.1:1", shared::mq::Topology::new("test"), "t");
        boards.relay(relay, 1, PlanningBudget::default());
        let board = boards.board("t", Uuid::now_v7()).expect("on");
        Publishing::on(Some(&board)).finish(Ended::Written { in_line_with: None });
        assert!(
            !sends(&board),
            "a phase 1 that planned nothing (nothing changed) put its end on the broker"
        );
        drop(Publishing::on(Some(&board)));
        assert!(!sends(&board), "nor an interruption");
        let news = Planned {
            tenant_id: "t".into(),
            run_id: board.run_id,
            job_id: Uuid::now_v7(),
            cursors: Cursors::default(),
            source_failures: Vec::new(),
        };
        board.planned(Vec::new(), [person(1)].into(), Planning::none(), news, None);
        Publishing::on(Some(&board)).finish(Ended::Written { in_line_with: None });
        assert!(sends(&board), "a plan and its end go to the broker");
    }
}
