//! Leases on the broker across a fleet's worker processes: at most [`CENTRAL_READERS`] readers of a tenant's shared
//! mailbox for phase 2 at once (issue 13), and one writer per mailbox ([`BrokerLeases::hold_writes`]).
//!
//! Each process reads the central folder once per run ([`crate::central_cache`]) within its own limit of 4 requests
//! in flight per mailbox; N processes starting a run's phase-2 jobs together would give the shared mailbox up to 4N.
//! Before reading, a reader takes one of the tenant's central leases on the broker
//! ([`Topology::central_lease_queue`], exclusive queues, the producer's lease mechanism [`mq::take_lease`]) and gives
//! it up once done. A reader sends one request at a time, so the mailbox sees at most [`CENTRAL_READERS`] in flight. The
//! leases live on a connection of their own: a worker killed while reading releases them with its socket (the broker
//! drops exclusive queues with their connection), and a session reconnecting for its jobs does not take a read's
//! lease away.
//!
//! The write lease: a job attempt is cancelled when its worker loses the delivery (the connection dropped, the
//! consumer timed out), but a write batch already started is let finish, Graph's `Retry-After` waits included, so
//! it is never half-sent. Meanwhile the job may run again on another worker, which would read the mailbox without
//! that batch's creates and plan them again: duplicates (`redelivery::a_job_taken_by_another_worker_…`, 6 people
//! twice before). Two runs of one tenant can meet the same way once the first gave up waiting for reports. So an
//! attempt holds its mailbox's write lease from before it reads until its last batch is answered, and another
//! attempt on that mailbox waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::Connection;
use shared::mq::{self, MqError, Topology};
use shared::telemetry::with_causes;
use tokio::sync::Mutex;
use tracing::debug;

/// How soon a taken lease is first asked for again; each refusal doubles the wait up to [`POLL_MAX`]. A small
/// tenant's folder is read in one page (milliseconds), so a fixed 100 ms made every process after the first wait
/// most of a poll for nothing: with 4 worker processes a no-change re-run of the benchmark's 30 users took 0.34 s
/// against 0.19 s with 10 ms (issue 13). Each attempt is a refused declare on a channel of its own, which RabbitMQ
/// logs, so the wait grows rather than staying short.
const POLL_FIRST: Duration = Duration::from_millis(10);

/// The longest wait between two attempts (a read of a 5,000-contact folder takes 5 pages).
const POLL_MAX: Duration = Duration::from_millis(100);

/// How many holders may read a tenant's shared mailbox at once, fleet-wide: Graph's 4 requests in flight per
/// mailbox. Each holder sends one request at a time (the central folder's pages follow one another, and a
/// process resolves the folder once: `trust::Locations::turn`), so 4 leases hold the mailbox to 4 in flight
/// however many processes run, and 4 processes read at once instead of one after another (with many processes and
/// a large folder, each read takes seconds).
pub const CENTRAL_READERS: u32 = 4;

/// The broker leases on tenants' shared mailboxes, taken on a connection this value opens when first needed.
pub struct BrokerLeases {
    amqp_url: String,
    name: String,
    topology: Topology,
    connection: Current,
    /// The leases this process holds, one slot per queue, one holder each. The broker cannot tell this process's
    /// holders apart (the same connection may declare its exclusive queue again), so a lease held here is skipped
    /// here. A slot has a lock of its own: leases on different queues (every mailbox's write lease) are asked for
    /// at once, not one after another (a process-wide lock held over each declare added 50-70 ms to a 30-mailbox
    /// re-run in a fleet).
    held: std::sync::Mutex<HashMap<String, Slot>>,
}

/// Who in this process holds one lease queue, if anyone. A release runs under its lock, so a holder arriving
/// meanwhile takes the lease again only once it is given up (else the release would delete the queue under it).
type Slot = Arc<Mutex<Weak<Lease>>>;

/// The connection new leases are taken on; `None` until first needed, and again once it failed or was retired.
type Current = Arc<Mutex<Option<Arc<LeaseConnection>>>>;

/// The connection leases live on, closed once nobody uses it any more: neither [`BrokerLeases`] (which lets go of
/// a connection that failed or was retired) nor a lease on it. Closing ends every lease on it, so a connection is
/// closed only when it holds none this process still relies on.
struct LeaseConnection(Option<Connection>);

impl std::ops::Deref for LeaseConnection {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match &self.0 {
            Some(connection) => connection,
            None => unreachable!("only drop takes the connection"),
        }
    }
}

impl Drop for LeaseConnection {
    fn drop(&mut self) {
        let (Some(connection), Ok(runtime)) =
            (self.0.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let _ = mq::close_connection(&connection, "leases given up").await;
        });
    }
}

/// A lease this process holds on the broker; given up when the last [`Held`] of it is dropped.
struct Lease {
    connection: Arc<LeaseConnection>,
    queue: String,
    slot: Slot,
    /// Where new leases are taken, to retire this lease's connection should its release fail.
    current: Current,
}

/// A held lease: given up when dropped (or when its connection dies).
#[must_use = "the lease is given up when this is dropped"]
pub struct Held(Arc<Lease>);

/// How often [`Held::lost`] looks at the lease's connection.
const LOST_POLL: Duration = Duration::from_millis(200);

impl Held {
    /// Resolves once the lease has ended without being given up: its connection closed or failed, so the broker
    /// dropped the lease queue and another process may hold it now.
    pub async fn lost(&self) {
        while self.0.connection.status().connected() {
            tokio::time::sleep(LOST_POLL).await;
        }
    }
}

impl BrokerLeases {
    /// Leases on the broker at `amqp_url` (may hold a password: never logged as is), among `topology`'s queues;
    /// `name` names the connection in the management UI.
    pub fn new(amqp_url: impl Into<String>, topology: Topology, name: impl Into<String>) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            name: format!("{} central leases", name.into()),
            topology,
            connection: Current::default(),
            held: std::sync::Mutex::default(),
        }
    }

    /// Waits until this caller holds the write lease of mailbox `mailbox_id` of `tenant_id`, fleet-wide: one attempt
    /// at a time writes a mailbox. A broker that cannot be reached is an error; dropping the future gives up.
    pub async fn hold_writes(&self, tenant_id: &str, mailbox_id: &str) -> Result<Held, MqError> {
        let queue = self.topology.write_lease_queue(tenant_id, mailbox_id);
        self.hold_one_of(std::slice::from_ref(&queue), "the mailbox's write lease")
            .await
    }

    /// Waits until this caller holds one of `tenant_id`'s [`CENTRAL_READERS`] central leases. A broker that cannot be
    /// reached is an error (reading without a lease could put the shared mailbox over its limit); dropping the
    /// future gives up.
    pub async fn hold(&self, tenant_id: &str) -> Result<Held, MqError> {
        let queues: Vec<String> = (0..CENTRAL_READERS)
            .map(|slot| self.topology.central_lease_queue(tenant_id, slot))
            .collect();
        self.hold_one_of(&queues, "every central lease").await
    }

    /// Waits until this caller holds the lease of one of `queues`, asking again after [`POLL_FIRST`], doubling up
    /// to [`POLL_MAX`]; `what` names them in the log while all are held.
    async fn hold_one_of(&self, queues: &[String], what: &str) -> Result<Held, MqError> {
        let mut poll = POLL_FIRST;
        loop {
            {
                for queue in queues {
                    let slot = self.slot(queue);
                    let mut holder = slot.lock().await;
                    // Held by another caller of this process (one request at a time each): the next one. A lease
                    // whose connection died is no lease any more: take it again on a new connection.
                    if holder
                        .upgrade()
                        .is_some_and(|lease| lease.connection.status().connected())
                    {
                        continue;
                    }
                    let connection = self.connection().await?;
                    let asking = Asking {
                        connection: connection.clone(),
                        queue: queue.clone(),
                        slot: slot.clone(),
                        unanswered: true,
                    };
                    let taken = mq::take_lease(&connection, queue).await;
                    asking.answered();
                    match taken {
                        Ok(true) => {
                            let lease = Arc::new(Lease {
                                connection,
                                queue: queue.clone(),
                                slot: slot.clone(),
                                current: self.connection.clone(),
                            });
                            *holder = Arc::downgrade(&lease);
                            return Ok(Held(lease));
                        }
                        Ok(false) => {}
                        Err(error) => {
                            // The next call opens a new connection; this one is not to be trusted any more (it
                            // closes once the leases still on it are given up).
                            retire(&self.connection, &connection).await;
                            return Err(error);
                        }
                    }
                }
                debug!(queue = ?queues.first(), "{what} is held; waiting");
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// The slot of lease queue `queue` (made on first use; a process keeps one per queue it ever asked for: a few
    /// hundred bytes per mailbox it wrote).
    fn slot(&self, queue: &str) -> Slot {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(queue.to_owned()).or_default().clone()
    }

    /// The lease connection, opened again when it was lost or retired.
    async fn connection(&self) -> Result<Arc<LeaseConnection>, MqError> {
        let mut guard = self.connection.lock().await;
        if let Some(connection) = guard.as_ref() {
            if connection.status().connected() {
                return Ok(connection.clone());
            }
        }
        let connection = Arc::new(LeaseConnection(Some(
            mq::connect(&self.amqp_url, &self.name).await?,
        )));
        *guard = Some(connection.clone());
        Ok(connection)
    }
}

/// Takes no new lease on `connection` any more: the next one opens another, and `connection` closes once the leases
/// still on it are given up.
async fn retire(current: &Current, connection: &Arc<LeaseConnection>) {
    let mut guard = current.lock().await;
    if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
        *guard = None;
    }
}

/// A lease asked for and not yet answered. Should the asking future be dropped (its job cancelled) after the
/// declare went out, the broker may have given the lease to the shared lease connection with nobody in this process
/// holding it: every other process would wait for it until this one exited. Dropped unanswered, it gives the lease
/// up as a [`Lease`] would, except that a failed delete (the lease was someone else's, or the connection is gone)
/// leaves the shared connection, and this process's other leases on it, alone.
struct Asking {
    connection: Arc<LeaseConnection>,
    queue: String,
    slot: Slot,
    /// False once the broker answered.
    unanswered: bool,
}

impl Asking {
    /// The broker answered: whatever it said, the caller knows and acts on it.
    fn answered(mut self) {
        self.unanswered = false;
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        if self.unanswered {
            give_up(
                self.connection.clone(),
                std::mem::take(&mut self.queue),
                self.slot.clone(),
                Unreleased::Leave,
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        give_up(
            self.connection.clone(),
            std::mem::take(&mut self.queue),
            self.slot.clone(),
            Unreleased::Retire(self.current.clone()),
        );
    }
}

/// What giving a lease up does when the broker would not delete its queue.
enum Unreleased {
    /// Retire the lease connection (a lease this process held): closing it ends the lease, and it closes once the
    /// other leases on it are given up. Closing it at once would end those too while their attempts still write:
    /// another worker could then read a mailbox whose last batch is still on its way.
    Retire(Current),
    /// Nothing: the lease was another process's, or the connection is gone (a request nobody heard answered).
    Leave,
}

/// Deletes the lease queue in the background, unless this process took the lease again meanwhile.
fn give_up(connection: Arc<LeaseConnection>, queue: String, slot: Slot, unreleased: Unreleased) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let holder = slot.lock().await;
        if holder.upgrade().is_some() {
            return;
        }
        let Err(error) = mq::release_lease(&connection, &queue).await else {
            return;
        };
        match unreleased {
            Unreleased::Retire(current) => {
                debug!(error = %with_causes(&error), %queue, "could not release the lease; retiring its connection");
                retire(&current, &connection).await;
            }
            Unreleased::Leave => {
                debug!(error = %with_causes(&error), %queue, "an abandoned lease request left nothing to give up");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp_url() -> String {
        std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    /// Four holders read at once, wherever they are; a fifth waits until one of them is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn four_hold_a_tenants_leases_at_once_and_a_fifth_waits_for_one() {
        let topology = Topology::new(format!("test-{}", uuid::Uuid::new_v4().simple()));
        let leases = Arc::new(BrokerLeases::new(amqp_url(), topology.clone(), "one"));
        let other = BrokerLeases::new(amqp_url(), topology.clone(), "other");
        let mut holding = Vec::new();
        for _ in 0..3 {
            holding.push(
                tokio::time::timeout(Duration::from_secs(30), leases.hold("tenant"))
                    .await
                    .expect("a free lease was waited for")
                    .expect("RabbitMQ must run at AMQP_URL (default 127.0.0.1:5672)"),
            );
        }
        // The fourth from another process.
        let fourth = tokio::time::timeout(Duration::from_secs(30), other.hold("tenant"))
            .await
            .expect("a free lease was waited for")
            .expect("broker");
        let fifth = {
            let leases = leases.clone();
            tokio::spawn(async move { leases.hold("tenant").await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!fifth.is_finished(), "a fifth holder got a lease");
        drop(fourth);
        tokio::time::timeout(Duration::from_secs(30), fifth)
            .await
            .expect("a given-up lease was never taken again")
            .expect("task")
            .expect("broker");
        drop(holding);
    }

    /// Failed before the fix (the second lease was taken elsewhere while its holder still held it): a release the
    /// broker refused closed the lease connection at once, ending every other lease on it while their attempts
    /// still wrote. The connection is now retired: new leases go on another, and it closes once its last lease is
    /// given up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_release_ends_no_other_lease_of_its_connection() {
        let topology = Topology::new(format!("test-{}", uuid::Uuid::new_v4().simple()));
        let leases = BrokerLeases::new(amqp_url(), topology.clone(), "one");
        let hold = |mailbox: &'static str| {
            tokio::time::timeout(
                Duration::from_secs(30),
                leases.hold_writes("tenant", mailbox),
            )
        };
        let first = hold("first")
            .await
            .expect("a free lease was waited for")
            .expect("RabbitMQ must run at AMQP_URL (default 127.0.0.1:5672)");
        let second = hold("second").await.expect("waited").expect("broker");
        let connection = leases.connection().await.expect("connection");
        let used = Arc::downgrade(&connection);
        // The first lease's queue goes to another connection behind this process's back: its release is refused.
        let first_queue = topology.write_lease_queue("tenant", "first");
        mq::release_lease(&connection, &first_queue)
            .await
            .expect("delete");
        drop(connection);
        let elsewhere = mq::connect(&amqp_url(), "elsewhere")
            .await
            .expect("connect");
        assert!(mq::take_lease(&elsewhere, &first_queue)
            .await
            .expect("declare"));
        drop(first);
        let second_queue = topology.write_lease_queue("tenant", "second");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                !mq::take_lease(&elsewhere, &second_queue)
                    .await
                    .expect("declare"),
                "a lease still held was ended by another lease's refused release"
            );
            let current = leases.connection.lock().await.clone();
            if current.is_none_or(|c| Arc::as_ptr(&c) != used.as_ptr()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the refused release never retired its connection"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let third = hold("third").await.expect("waited").expect("broker");
        assert!(
            !mq::take_lease(&elsewhere, &second_queue)
                .await
                .expect("declare"),
            "the second lease ended when a third was taken"
        );
        assert!(
            used.upgrade().is_some(),
            "the retired connection went while a lease was on it"
        );
        drop(second);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while used.strong_count() > 0
            || !mq::take_lease(&elsewhere, &second_queue)
                .await
                .expect("declare")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the retired connection's last lease was never given up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(third);
        let _ = mq::close_connection(&elsewhere, "done").await;
    }

    /// Failed before the fix (another process waited for the lease for ever): the broker gave the lease to a
    /// request whose future was dropped before the answer was read (its job cancelled), so the lease sat on the
    /// shared lease connection with nobody holding it. Dropped unanswered, the request now gives it up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_asked_for_and_abandoned_is_given_up() {
        let topology = Topology::new(format!("test-{}", uuid::Uuid::new_v4().simple()));
        let abandoning = BrokerLeases::new(amqp_url(), topology.clone(), "abandoning");
        let connection = abandoning
            .connection()
            .await
            .expect("RabbitMQ must run at AMQP_URL (default 127.0.0.1:5672)");
        let queue = topology.central_lease_queue("tenant", 0);
        let asking = Asking {
            connection: connection.clone(),
            queue: queue.clone(),
            slot: abandoning.slot(&queue),
            unanswered: true,
        };
        // The declare went out and the broker said yes, but nobody read the answer.
        assert!(mq::take_lease(&connection, &queue).await.expect("declare"));
        drop(asking);
        // The other slots are held by readers elsewhere: only the abandoned one can become free.
        let elsewhere = mq::connect(&amqp_url(), "elsewhere")
            .await
            .expect("connect");
        for slot in 1..CENTRAL_READERS {
            let queue = topology.central_lease_queue("tenant", slot);
            assert!(mq::take_lease(&elsewhere, &queue).await.expect("declare"));
        }
        let other = BrokerLeases::new(amqp_url(), topology.clone(), "other");
        let held = tokio::time::timeout(Duration::from_secs(30), other.hold("tenant"))
            .await
            .expect("the abandoned lease was never given up")
            .expect("broker");
        drop(held);
        let _ = mq::close_connection(&connection, "done").await;
        let _ = mq::close_connection(&elsewhere, "done").await;
    }
}
