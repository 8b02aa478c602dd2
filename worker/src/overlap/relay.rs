//! A fleet's boards on the broker (issue 13): overlapped phases across worker processes.
//!
//! A tenant's board in a run is a RabbitMQ stream (`shared::mq::board`). The phase-1 job's words (its plan's
//! folder in parts, the persons it creates, each batch's confirmed creates, an attempt interrupted, its end) go
//! through the board's [`Outbox`], one task sending them in order; news of the plan goes to the producer after
//! the plan is on the stream, so no phase-2 job can start before it. Each worker process running a phase-2 job
//! of the tenant follows the stream from its first entry ([`follow`]) into the board's memory, which the job then
//! reads as in one process. The producer appends the end too, from phase 1's final report ([`ended_entry`]),
//! and deletes the stream when its run ends.
//!
//! Losing an entry is never a wrong mailbox: a phase-2 job settles against the folder phase 1 left, whatever it
//! sent early (`shared::sync::overlap::settle`). An entry that cannot be sent is logged and dropped: a lost plan
//! or news leaves the tenant's phase 2 to start after phase 1 as in order, a lost confirmation sends a copy later,
//! a lost end is the producer's to say.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde::{Deserialize, Serialize};
use shared::model::Contact;
use shared::mq::{self, board, MqError, Publisher, Topology};
use shared::sync::{PreparedCentral, SyncId};
use shared::telemetry::with_causes;
use tokio::sync::{mpsc, watch, Mutex};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{CentralPlan, Ended, Planned, Stage};
use crate::planning_budget::{Planning, PlanningBudget};

/// Contacts per folder part: a part of a large folder stays far below the broker's message limit
/// (`mq::MAX_MESSAGE_BYTES`; a contact is a few hundred bytes to a few KiB).
const PART_CONTACTS: usize = 1_000;

/// How long a follower tries to get its stream back after the broker went away, before the board counts as lost.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// How long a board may stay silent before it counts as lost: a phase 1 confirms every batch and a run's end
/// deletes the stream, so this long without a word means its producer is gone.
const SILENT_FOR: Duration = Duration::from_secs(60 * 60);

/// One entry of a board stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Entry {
    /// Part of the folder attempt `attempt`'s plan leaves; its [`Entry::Planned`] follows the parts.
    #[serde(rename_all = "camelCase")]
    FolderPart {
        /// The phase-1 attempt.
        attempt: Uuid,
        /// The part's contacts.
        contacts: Vec<Contact>,
    },
    /// Attempt `attempt` planned: the folder is its parts, `contacts` in all.
    #[serde(rename_all = "camelCase")]
    Planned {
        /// The phase-1 attempt.
        attempt: Uuid,
        /// How many contacts its parts hold (a reader that saw another number does not use the plan).
        contacts: usize,
        /// The persons the plan creates.
        created: BTreeSet<SyncId>,
    },
    /// Graph confirmed these persons' central creates of attempt `attempt`.
    #[serde(rename_all = "camelCase")]
    Confirmed {
        /// The phase-1 attempt.
        attempt: Uuid,
        /// The persons.
        persons: Vec<SyncId>,
    },
    /// Attempt `attempt` ended without finishing.
    #[serde(rename_all = "camelCase")]
    Interrupted {
        /// The phase-1 attempt.
        attempt: Uuid,
    },
    /// Phase 1 is over.
    #[serde(rename_all = "camelCase")]
    Ended {
        /// How.
        ended: Ended,
    },
}

/// The stream entry saying phase 1 ended (the producer appends it from phase 1's final report).
pub fn ended_entry(ended: Ended) -> Vec<u8> {
    encode(&Entry::Ended { ended })
}

fn encode(entry: &Entry) -> Vec<u8> {
    // An enum of plain data always serialises.
    serde_json::to_vec(entry).unwrap_or_default()
}

/// What a board's outbox sends, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// An attempt's plan: sent as folder parts, then [`Entry::Planned`].
    Plan {
        /// The phase-1 attempt.
        attempt: Uuid,
        /// The folder the plan leaves.
        folder: Vec<Contact>,
        /// The persons it creates.
        created: BTreeSet<SyncId>,
        /// The planning units the folder weighs, held until it is sent.
        units: Planning,
    },
    /// One entry.
    Entry(Entry),
    /// News of the plan, for the producer.
    News {
        /// The news.
        news: Planned,
        /// The run's report queue, as the job names it.
        report_queue: Option<String>,
    },
}

impl From<Entry> for Outgoing {
    fn from(entry: Entry) -> Self {
        Outgoing::Entry(entry)
    }
}

/// The broker a fleet's boards live on, reached on a connection of their own opened when first needed.
pub struct Relay {
    amqp_url: String,
    topology: Topology,
    name: String,
    session: Mutex<Option<Session>>,
}

#[derive(Clone)]
struct Session {
    connection: Arc<Connection>,
    publisher: Publisher,
}

impl Relay {
    /// Boards on the broker at `amqp_url` (may hold a password: never logged as is), among `topology`'s queues;
    /// `name` names the connection in the management UI.
    pub fn new(amqp_url: impl Into<String>, topology: Topology, name: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            topology,
            name: format!("{} boards", name.into()),
            session: Mutex::new(None),
        }
    }

    /// The open session, opened again when its connection died.
    async fn session(&self) -> Result<Session, MqError> {
        let mut session = self.session.lock().await;
        if let Some(open) = session.as_ref() {
            if open.connection.status().connected() {
                return Ok(open.clone());
            }
        }
        let connection = Arc::new(mq::connect(&self.amqp_url, &self.name).await?);
        let publisher = Publisher::open(&connection, self.topology.clone()).await?;
        let open = Session {
            connection,
            publisher,
        };
        *session = Some(open.clone());
        Ok(open)
    }

    /// Forgets `failed` (the next use opens a new session) and closes its connection, unless another board already
    /// replaced it: one failure never takes down the session the others moved on to.
    async fn forget(&self, failed: &Session) {
        let mut session = self.session.lock().await;
        if session
            .as_ref()
            .is_some_and(|now| Arc::ptr_eq(&now.connection, &failed.connection))
        {
            *session = None;
        }
        drop(session);
        let _ = mq::close_connection(&failed.connection, "replaced").await;
    }
}

/// A board's sender: one task sends its words in order.
#[derive(Debug)]
pub struct Outbox(mpsc::UnboundedSender<Outgoing>);

impl Outbox {
    /// Starts `tenant`'s outbox for run `run_id`.
    pub fn start(relay: Arc<Relay>, run_id: Uuid, tenant: &str) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(deliver(relay, run_id, tenant.to_owned(), rx));
        Self(tx)
    }

    /// Queues `outgoing`.
    pub fn send(&self, outgoing: Outgoing) {
        // The task ends only with the runtime.
        let _ = self.0.send(outgoing);
    }
}

/// A message of the outbox, encoded.
enum Message {
    Entry(Vec<u8>),
    News {
        job_id: Uuid,
        report_queue: Option<String>,
        body: Vec<u8>,
    },
}

/// `outgoing` as the messages that carry it, each encoded only when it is next to go, a plan's contacts let go
/// part by part as they are: a process following its own board reads the folder back while it is sent, and a
/// 100,000-contact plan encoded whole at once was two more copies of its folder (the parts, about 100 MB of JSON)
/// beside the one read back.
fn messages(outgoing: Outgoing) -> Box<dyn Iterator<Item = Message> + Send> {
    match outgoing {
        Outgoing::Plan {
            attempt,
            folder,
            created,
            units,
        } => {
            let contacts = folder.len();
            let mut rest = folder.into_iter();
            let parts = std::iter::from_fn(move || {
                let part: Vec<Contact> = rest.by_ref().take(PART_CONTACTS).collect();
                (!part.is_empty()).then(|| {
                    Message::Entry(encode(&Entry::FolderPart {
                        attempt,
                        contacts: part,
                    }))
                })
            });
            let planned = std::iter::once_with(move || {
                // Every part is encoded: the folder is let go.
                drop(units);
                Message::Entry(encode(&Entry::Planned {
                    attempt,
                    contacts,
                    created,
                }))
            });
            Box::new(parts.chain(planned))
        }
        Outgoing::Entry(entry) => Box::new(std::iter::once(Message::Entry(encode(&entry)))),
        Outgoing::News { news, report_queue } => Box::new(std::iter::once(Message::News {
            job_id: news.job_id,
            report_queue,
            // A struct of plain data always serialises.
            body: serde_json::to_vec(&news).unwrap_or_default(),
        })),
    }
}

/// Persons one [`Entry::Confirmed`] carries at most (about 40 bytes each in JSON).
const CONFIRMED_PER_ENTRY: usize = 10_000;

/// `first`, with the confirmations queued right behind it merged in when it is one: each entry is sent and
/// confirmed by the broker in turn, so a 100,000-person plan's 5,000 batches, one entry each, put the followers
/// seconds behind phase 1 (the benchmark: 6 s), and a phase-2 job acted on a plan its phase 1 had finished writing.
/// Anything else queued stops the merge and is returned as the next to send, so the order stays as said.
fn coalesce(
    first: Outgoing,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> (Outgoing, Option<Outgoing>) {
    let Outgoing::Entry(Entry::Confirmed {
        attempt,
        mut persons,
    }) = first
    else {
        return (first, None);
    };
    let mut next = None;
    while persons.len() < CONFIRMED_PER_ENTRY {
        match rx.try_recv() {
            Ok(Outgoing::Entry(Entry::Confirmed {
                attempt: same,
                persons: more,
            })) if same == attempt => persons.extend(more),
            Ok(other) => {
                next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    let merged = Outgoing::Entry(Entry::Confirmed { attempt, persons });
    (merged, next)
}

/// The outbox task: declares the stream, then sends each message, trying once more on a fresh connection.
async fn deliver(
    relay: Arc<Relay>,
    run_id: Uuid,
    tenant: String,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let mut declared = false;
    let mut next = None;
    loop {
        let outgoing = match next.take() {
            Some(outgoing) => outgoing,
            None => match rx.recv().await {
                Some(outgoing) => outgoing,
                None => break,
            },
        };
        let (outgoing, after) = coalesce(outgoing, &mut rx);
        next = after;
        for message in messages(outgoing) {
            for attempt in 1..=2 {
                let sent = match relay.session().await {
                    Ok(session) => send(&relay, &session, run_id, &tenant, &mut declared, &message)
                        .await
                        .map_err(|error| (Some(session), error)),
                    Err(error) => Err((None, error)),
                };
                match sent {
                    Ok(()) => break,
                    Err((session, error)) if attempt == 1 => {
                        debug!(error = %with_causes(&error), %tenant, "board entry not sent; reconnecting");
                        if let Some(session) = session {
                            relay.forget(&session).await;
                        }
                        declared = false;
                    }
                    Err((_, error)) => {
                        warn!(error = %with_causes(&error), %tenant, "a board entry could not be sent; phase 2 settles without it")
                    }
                }
            }
        }
    }
}

async fn send(
    relay: &Relay,
    session: &Session,
    run_id: Uuid,
    tenant: &str,
    declared: &mut bool,
    message: &Message,
) -> Result<(), MqError> {
    if !*declared {
        let channel = mq::open_channel(&session.connection, "board").await?;
        board::declare_board(&channel, &relay.topology, run_id, tenant).await?;
        let _ = mq::close_channel(&channel, "declared").await;
        *declared = true;
    }
    match message {
        Message::Entry(body) => {
            session
                .publisher
                .publish_board(run_id, tenant, body.clone())
                .await
        }
        Message::News {
            job_id,
            report_queue,
            body,
        } => {
            session
                .publisher
                .publish_planned(run_id, *job_id, report_queue.as_deref(), body.clone())
                .await
        }
    }
}

/// What a reader keeps between entries: the attempt it follows and the folder parts read so far.
#[derive(Debug, Default)]
pub struct Reader {
    attempt: Option<Uuid>,
    parts: Vec<Contact>,
    /// This process's planning budget, which a plan's folder is held within (see [`CentralPlan::units`]).
    budget: PlanningBudget,
}

impl Reader {
    /// A reader holding plans' folders within `budget`.
    pub fn within(budget: PlanningBudget) -> Self {
        Self {
            budget,
            ..Self::default()
        }
    }

    /// Applies `entry` to `stage`; returns whether the stage changed (a folder part alone does not).
    pub fn apply(&mut self, stage: &mut Stage, entry: Entry) -> bool {
        match entry {
            Entry::FolderPart { attempt, contacts } => {
                if self.attempt != Some(attempt) {
                    self.attempt = Some(attempt);
                    self.parts.clear();
                }
                self.parts.extend(contacts);
                false
            }
            Entry::Planned {
                attempt,
                contacts,
                created,
            } => {
                let folder = if self.attempt == Some(attempt) {
                    std::mem::take(&mut self.parts)
                } else {
                    Vec::new()
                };
                self.attempt = Some(attempt);
                if folder.len() == contacts {
                    // Without units free for the folder this process keeps no copy: its jobs copy nothing early.
                    let plan = self.budget.try_take(contacts).map(|units| CentralPlan {
                        folder: PreparedCentral::new(folder),
                        created,
                        units,
                    });
                    if plan.is_none() {
                        debug!(contacts, "no planning units free for a board's plan: this process copies nothing early from it");
                    }
                    stage.plan(plan);
                } else {
                    // Parts missing: nothing of this plan goes early (the earlier plan's attempt is over).
                    warn!(
                        expected = contacts,
                        read = folder.len(),
                        "a board's plan came incomplete; nothing is sent early"
                    );
                    stage.interrupt();
                }
                true
            }
            Entry::Confirmed { attempt, persons } => {
                let current = self.attempt == Some(attempt) && stage.plan.is_some();
                if current {
                    stage.confirm(persons);
                }
                current
            }
            Entry::Interrupted { attempt } => {
                let current = self.attempt == Some(attempt);
                if current {
                    stage.interrupt();
                }
                current
            }
            Entry::Ended { ended } => {
                stage.end(ended);
                true
            }
        }
    }
}

/// Follows `tenant`'s stream of run `run_id` into `stage` until phase 1 ended, the stream is gone or the broker
/// stays away (then the stage is marked lost).
pub fn follow(
    relay: Arc<Relay>,
    run_id: Uuid,
    tenant: String,
    stage: Arc<watch::Sender<Stage>>,
    budget: PlanningBudget,
) {
    tokio::spawn(async move {
        let mut reader = Reader::within(budget);
        let mut next = 0u64;
        let mut broken_since: Option<tokio::time::Instant> = None;
        let mut delay = Duration::from_millis(100);
        loop {
            let followed = match relay.session().await {
                Ok(session) => {
                    let followed = follow_once(
                        &relay,
                        &session,
                        run_id,
                        &tenant,
                        &stage,
                        &mut reader,
                        &mut next,
                    )
                    .await;
                    // A channel closed on a live connection needs only a new channel.
                    if matches!(followed, Err(Stop::Broken(_)))
                        && !session.connection.status().connected()
                    {
                        relay.forget(&session).await;
                    }
                    followed
                }
                Err(error) => Err(Stop::Broken(error)),
            };
            match followed {
                Ok(()) => return,
                Err(Stop::Lost(why)) => {
                    warn!(%tenant, %run_id, why, "lost the tenant's phase-1 board");
                    stage.send_modify(|stage| stage.lost = true);
                    return;
                }
                Err(Stop::Broken(error)) => {
                    let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > RECONNECT_FOR {
                        warn!(%tenant, %run_id, error = %with_causes(&error), "lost the tenant's phase-1 board: the broker stayed away");
                        stage.send_modify(|stage| stage.lost = true);
                        return;
                    }
                    debug!(%tenant, error = %with_causes(&error), "following a board again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
}

/// Why following stopped before phase 1's end.
enum Stop {
    /// For good: the stream is gone or silent.
    Lost(&'static str),
    /// The connection or channel broke: follow again from the next entry.
    Broken(MqError),
}

impl From<MqError> for Stop {
    fn from(error: MqError) -> Self {
        Stop::Broken(error)
    }
}

async fn follow_once(
    relay: &Relay,
    session: &Session,
    run_id: Uuid,
    tenant: &str,
    stage: &watch::Sender<Stage>,
    reader: &mut Reader,
    next: &mut u64,
) -> Result<(), Stop> {
    let stream = relay.topology.board_stream(run_id, tenant);
    // Passive: a stream that is not there was deleted with its run (a declare would make an empty one).
    let channel = mq::open_channel(&session.connection, "board").await?;
    let exists = mq::bounded(format!("looking up the board stream {stream}"), async {
        Ok(channel
            .queue_declare(
                stream.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await)
    })
    .await?;
    if exists.is_err() {
        return Err(Stop::Lost("its stream is gone"));
    }
    let followed = read_entries(&channel, &stream, &relay.name, session, stage, reader, next).await;
    // Closed whichever way it ended: one channel a board would otherwise be left per run on a long-lived connection.
    let _ = mq::close_channel(&channel, "board done").await;
    followed
}

/// Reads board entries from `next` into `stage` until phase 1 ended.
async fn read_entries(
    channel: &lapin::Channel,
    stream: &str,
    name: &str,
    session: &Session,
    stage: &watch::Sender<Stage>,
    reader: &mut Reader,
    next: &mut u64,
) -> Result<(), Stop> {
    let tag = format!("{name}-{}", Uuid::now_v7());
    let mut entries = board::follow_board(channel, stream, &tag, *next).await?;
    loop {
        let delivery = match tokio::time::timeout(SILENT_FOR, entries.next()).await {
            Err(_) => return Err(Stop::Lost("it stayed silent")),
            Ok(None) if !session.connection.status().connected() => {
                return Err(Stop::Broken(MqError::lost("the connection was lost")))
            }
            // The broker cancels the consumer when the stream is deleted.
            Ok(None) => return Err(Stop::Lost("its stream was deleted")),
            Ok(Some(Err(source))) => {
                return Err(Stop::Broken(MqError::Amqp {
                    context: format!("reading the board stream {stream}"),
                    source,
                }))
            }
            Ok(Some(Ok(delivery))) => delivery,
        };
        if let Some(offset) = board::offset_of(&delivery.properties) {
            *next = offset + 1;
        }
        let entry = serde_json::from_slice::<Entry>(&delivery.data);
        let _ = delivery.ack(BasicAckOptions::default()).await;
        match entry {
            Ok(entry) => {
                stage.send_if_modified(|stage| reader.apply(stage, entry));
            }
            Err(error) => warn!(%error, %stream, "skipping an unreadable board entry"),
        }
        if stage.borrow().ended.is_some() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(n: u128) -> SyncId {
        SyncId::parse(&Uuid::from_u128(n).to_string()).expect("a uuid is a sync id")
    }

    fn contact(id: &str) -> Contact {
        Contact {
            id: id.into(),
            last_modified: None,
            fields: Default::default(),
            personal_notes: Some("notes".into()),
            categories: vec!["c".into()],
            sync_id_property: Some(Uuid::from_u128(7).to_string()),
            owner_property: None,
            photo_hash: None,
            photo_source: None,
            has_picture: false,
            change_key: Some("k".into()),
        }
    }

    /// What the outbox sends for `outgoing`, read back as entries.
    fn sent(outgoing: Outgoing) -> Vec<Entry> {
        messages(outgoing)
            .map(|message| match message {
                Message::Entry(body) => serde_json::from_slice(&body).expect("an entry reads back"),
                Message::News { .. } => panic!("only entries expected"),
            })
            .collect()
    }

    #[test]
    fn a_plan_travels_in_parts_and_reads_back_whole() {
        let attempt = Uuid::now_v7();
        let folder: Vec<Contact> = (0..2_500).map(|n| contact(&format!("id{n}"))).collect();
        let entries = sent(Outgoing::Plan {
            attempt,
            folder: folder.clone(),
            created: [person(1)].into(),
            units: Planning::none(),
        });
        assert_eq!(
            entries.len(),
            4,
            "three parts of at most 1,000, then the plan"
        );
        let mut reader = Reader::default();
        let mut stage = Stage::default();
        for entry in entries {
            reader.apply(&mut stage, entry);
        }
        let plan = stage.plan.expect("planned");
        assert_eq!(plan.created, [person(1)].into());
        let mut expected = folder;
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            plan.folder.contacts(),
            expected,
            "contacts read back as sent"
        );
    }

    #[test]
    fn confirmations_count_only_for_the_attempt_planned_last_and_the_first_end_stands() {
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        let plan = |attempt| Entry::Planned {
            attempt,
            contacts: 0,
            created: [person(1), person(2)].into(),
        };
        let mut reader = Reader::default();
        let mut stage = Stage::default();
        reader.apply(&mut stage, plan(first));
        reader.apply(
            &mut stage,
            Entry::Confirmed {
                attempt: first,
                persons: vec![person(1)],
            },
        );
        assert!(stage.confirmed.contains(&person(1)));
        reader.apply(&mut stage, Entry::Interrupted { attempt: first });
        assert!(stage.interrupted);
        reader.apply(&mut stage, plan(second));
        assert!(
            !stage.interrupted && stage.confirmed.is_empty(),
            "a new plan starts over"
        );
        let late = Entry::Confirmed {
            attempt: first,
            persons: vec![person(2)],
        };
        assert!(
            !reader.apply(&mut stage, late),
            "the first attempt's word is stale"
        );
        assert!(stage.confirmed.is_empty());
        reader.apply(
            &mut stage,
            Entry::Ended {
                ended: Ended::Failed,
            },
        );
        reader.apply(
            &mut stage,
            serde_json::from_slice(&ended_entry(Ended::Written { in_line_with: None }))
                .expect("reads back"),
        );
        assert_eq!(stage.ended, Some(Ended::Failed), "the first end stands");
    }

    /// Failed before the merge: each batch's confirmation was its own entry, sent and confirmed in turn.
    #[test]
    fn queued_confirmations_go_as_one_entry_in_order() {
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        let confirmed = |attempt, n| {
            Outgoing::Entry(Entry::Confirmed {
                attempt,
                persons: vec![person(n)],
            })
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        for outgoing in [
            confirmed(first, 2),
            confirmed(first, 3),
            Outgoing::Entry(Entry::Interrupted { attempt: first }),
            confirmed(second, 4),
        ] {
            tx.send(outgoing).expect("open");
        }
        let (merged, next) = coalesce(confirmed(first, 1), &mut rx);
        let Outgoing::Entry(Entry::Confirmed { attempt, persons }) = merged else {
            panic!("a confirmation stays one");
        };
        assert_eq!(attempt, first);
        assert_eq!(persons, vec![person(1), person(2), person(3)]);
        assert!(
            matches!(next, Some(Outgoing::Entry(Entry::Interrupted { .. }))),
            "what stopped the merge goes next"
        );
        let queued = rx
            .try_recv()
            .expect("the second attempt's word is still queued");
        let (alone, next) = coalesce(queued, &mut rx);
        assert!(next.is_none());
        assert!(
            matches!(alone, Outgoing::Entry(Entry::Confirmed { attempt, ref persons }) if attempt == second && persons == &vec![person(4)]),
            "another attempt's word is not merged into the first's"
        );
        let (other, next) = coalesce(
            Outgoing::Entry(Entry::Interrupted { attempt: first }),
            &mut rx,
        );
        assert!(matches!(other, Outgoing::Entry(Entry::Interrupted { .. })) && next.is_none());
    }

    /// A follower holds a plan's folder within its process's planning budget: without units free it keeps no copy
    /// (the process's jobs copy nothing early), and the units it took go back once the board lets the plan go.
    #[test]
    fn a_followed_plan_is_held_within_the_planning_budget() {
        let budget = PlanningBudget::new(10);
        let plan = |attempt| {
            [
                Entry::FolderPart {
                    attempt,
                    contacts: vec![contact("a"), contact("b")],
                },
                Entry::Planned {
                    attempt,
                    contacts: 2,
                    created: [person(1)].into(),
                },
            ]
        };
        let mut reader = Reader::within(budget.clone());
        let mut stage = Stage::default();
        let spent = budget.try_take(9).expect("free");
        for entry in plan(Uuid::now_v7()) {
            reader.apply(&mut stage, entry);
        }
        assert!(
            stage.plan.is_none() && stage.plans == 1,
            "no units free: no copy kept, the plan still counted"
        );
        drop(spent);
        let attempt = Uuid::now_v7();
        for entry in plan(attempt) {
            reader.apply(&mut stage, entry);
        }
        assert!(stage.plan.is_some(), "units free: the plan is held");
        assert!(budget.try_take(9).is_none(), "its folder's units are taken");
        reader.apply(
            &mut stage,
            Entry::Confirmed {
                attempt,
                persons: vec![person(1)],
            },
        );
        assert!(stage.plan.is_none());
        assert!(
            budget.try_take(10).is_some(),
            "every create confirmed: the units are back"
        );
    }

    #[test]
    fn a_plan_whose_parts_went_missing_sends_nothing_early() {
        let attempt = Uuid::now_v7();
        let mut reader = Reader::default();
        let mut stage = Stage::default();
        reader.apply(
            &mut stage,
            Entry::FolderPart {
                attempt,
                contacts: vec![contact("a")],
            },
        );
        reader.apply(
            &mut stage,
            Entry::Planned {
                attempt,
                contacts: 2,
                created: [person(1)].into(),
            },
        );
        assert!(stage.plan.is_none());
        assert!(stage.interrupted);
    }
}
