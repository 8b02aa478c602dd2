//! The RabbitMQ topology as data: every exchange, queue, binding and argument the fleet relies on.
//!
//! Declared by the producer (and by workers at start, idempotently) so tests and small installs need no manual
//! setup; `deploy/rabbitmq/definitions.json` holds the same objects for installs that load definitions. A prefix
//! (default `cm`) lets tests run side by side on one broker.

use std::time::Duration;

use uuid::Uuid;

use crate::message::{Job, Lane, Phase};

/// How many times a job may be delivered (crashes included) before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 8;

/// Bound on each job queue, so a runaway producer cannot fill the broker's disk.
pub const MAX_QUEUE_LENGTH: i64 = 1_000_000;

/// Routing key of run-progress snapshots on the report exchange. It does not match the report queue's `report.#`,
/// so snapshots reach only the runs queue.
pub const RUN_STATUS_ROUTING_KEY: &str = "run.status";

/// How long a run's own report queue outlives its last consumer. Longer than the producer's reconnect budget (a
/// broker restart must not lose it), short enough that a producer killed mid-run leaves nothing behind for long.
pub const RUN_REPORTS_EXPIRE: Duration = Duration::from_secs(30 * 60);

/// How long a dead letter is kept: long enough to be looked at and requeued after a holiday, bounded so that
/// known-permanent failures (a mailbox-less user dead-lettered every run) never pile up for ever.
pub const DEAD_LETTER_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// The most dead letters kept per phase; past it the oldest go first (`drop-head`).
pub const DEAD_LETTER_MAX_LENGTH: i64 = 100_000;

/// The delay levels of the retry queues. A retry goes to the smallest level no shorter than the wait it needs.
pub const RETRY_LEVELS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

/// The names of every object, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new("cm")
    }
}

impl Topology {
    /// A topology whose names all start with `prefix` and a dot.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Direct exchange the job queues are bound to (routing key = [`Phase::routing_key`]).
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The job queue of a phase's first lane: the phase's one queue of earlier releases (see [`Lane`]).
    pub fn job_queue(&self, phase: Phase) -> String {
        self.lane_queue(phase, Lane::FIRST)
    }

    /// The job queue of `phase` in `lane`: `<prefix>.<phase>` for lane 0, `<prefix>.<phase>.lane<n>` for the others.
    pub fn lane_queue(&self, phase: Phase, lane: Lane) -> String {
        match lane.number() {
            0 => format!("{}.{}", self.prefix, phase),
            n => format!("{}.{}.lane{n}", self.prefix, phase),
        }
    }

    /// Every job queue of `phase`, lane by lane.
    pub fn lane_queues(&self, phase: Phase) -> Vec<String> {
        Lane::all()
            .map(|lane| self.lane_queue(phase, lane))
            .collect()
    }

    /// Direct exchange for dead letters (routing key = the phase's routing key).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// The dead-letter queue of a phase.
    pub fn dead_letter_queue(&self, phase: Phase) -> String {
        format!("{}.{}.dead", self.prefix, phase)
    }

    /// Topic exchange for reports (`report.<phase>.<outcome>`).
    pub fn reports_exchange(&self) -> String {
        format!("{}.reports", self.prefix)
    }

    /// The queue the producer reads reports from.
    pub fn reports_queue(&self) -> String {
        format!("{}.reports", self.prefix)
    }

    /// A run's own report queue: its jobs name it ([`Job::report_queue`]), so two runs on one broker (two
    /// tenants, or a manual run beside the scheduled one) each receive only their own reports.
    pub fn run_reports_queue(&self, run_id: Uuid) -> String {
        format!("{}.reports.{}", self.prefix, run_id)
    }

    /// The routing key, on the report exchange, of run `run_id`'s reports: only its own queue is bound to it.
    /// (The report exchange, not the default one: a least-privilege user has rights on `<prefix>.*` only.)
    pub fn run_reports_routing_key(run_id: Uuid) -> String {
        format!("run.{run_id}")
    }

    /// Where a worker publishes `job`'s report: the run's own queue when the job names exactly the one of its
    /// run under this prefix, else (`None`) the shared report queue. A job is outside input, so any other name
    /// (another prefix, another run's queue, a job queue) is not published to.
    pub fn report_queue_of(&self, job: &Job) -> Option<String> {
        self.report_queue_named(job.run_id, job.report_queue.as_deref())
    }

    /// [`Self::report_queue_of`] for run `run_id` and the queue a job of it names (`named`).
    pub fn report_queue_named(&self, run_id: Uuid, named: Option<&str>) -> Option<String> {
        let expected = self.run_reports_queue(run_id);
        named.filter(|named| *named == expected).map(|_| expected)
    }

    /// The arguments of a run's report queue: classic (one consumer, short-lived), removed by the broker once
    /// unused for [`RUN_REPORTS_EXPIRE`].
    pub fn run_reports_queue_arguments(&self) -> serde_json::Value {
        serde_json::json!({
            "x-queue-type": "classic",
            "x-expires": i64::try_from(RUN_REPORTS_EXPIRE.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// The exclusive queue whose existence is a producer's lease on `tenant_id`: only one connection can hold
    /// it, and the broker deletes it when that connection dies, so a crashed producer never blocks the next run.
    pub fn lease_queue(&self, tenant_id: &str) -> String {
        format!("{}.lease.{}", self.prefix, queue_safe(tenant_id))
    }

    /// The exclusive queue whose existence is a running producer's hold on `lane` (see [`Lane`]): a run takes the
    /// first lane no other run holds, so runs started separately queue their jobs apart. Like
    /// [`Self::lease_queue`], it dies with its holder's connection.
    pub fn lane_hold_queue(&self, lane: Lane) -> String {
        format!("{}.lane-hold.{}", self.prefix, lane.number())
    }

    /// The exclusive queue whose existence lets one worker process read `tenant_id`'s shared mailbox for phase
    /// 2: however many processes run, one reads it at a time, so the mailbox sees at most one process's 4
    /// requests in flight. Like [`Self::lease_queue`], it dies with its holder's connection.
    ///
    /// `slot` numbers the leases of one tenant (see the worker's `leases::CENTRAL_READERS`); slot 0 keeps the name of the
    /// single lease of earlier releases, so during a rolling upgrade an old worker and the new ones still exclude
    /// each other on it.
    pub fn central_lease_queue(&self, tenant_id: &str, slot: u32) -> String {
        let tenant = queue_safe(tenant_id);
        match slot {
            0 => format!("{}.central-lease.{tenant}", self.prefix),
            n => format!("{}.central-lease.{tenant}.{n}", self.prefix),
        }
    }

    /// The exclusive queue whose existence lets one job attempt write mailbox `mailbox_id` of `tenant_id` (its
    /// Entra object id; for phase 1, the shared mailbox), fleet-wide: from before the attempt reads what it plans
    /// against until its last write batch is answered, so a job that came back to another worker (or a second
    /// run's job) reads only once the first attempt is done writing. Like [`Self::lease_queue`], it dies with its
    /// holder's connection. Within the broker's 255 bytes: the tenant's part is cut at 100 characters (the object id,
    /// a GUID, tells mailboxes apart on its own).
    pub fn write_lease_queue(&self, tenant_id: &str, mailbox_id: &str) -> String {
        let tenant: String = queue_safe(tenant_id).chars().take(100).collect();
        format!(
            "{}.write-lease.{tenant}.{}",
            self.prefix,
            queue_safe(mailbox_id)
        )
    }

    /// The stream carrying a tenant's phase-1 board in run `run_id` (overlapped phases in a fleet, issue 13): the
    /// phase-1 job's plan and confirmed creates, and how phase 1 ended, for the tenant's phase-2 jobs on any worker
    /// process. A stream, so a job that starts late reads it from the first entry; the producer deletes it when the
    /// run ends.
    pub fn board_stream(&self, run_id: Uuid, tenant_id: &str) -> String {
        format!("{}.board.{run_id}.{}", self.prefix, queue_safe(tenant_id))
    }

    /// The routing key, on the report exchange, of [`Self::board_stream`]'s entries (published through the report
    /// exchange, not the default one: a least-privilege user has rights on `<prefix>.*` only).
    pub fn board_routing_key(run_id: Uuid, tenant_id: &str) -> String {
        format!("board.{run_id}.{}", queue_safe(tenant_id))
    }

    /// The arguments of a board stream: entries older than a day go (a run lasts hours at most; the producer deletes
    /// the stream at the run's end, this bounds one a crashed producer left), in small segments.
    pub fn board_stream_arguments(&self) -> serde_json::Value {
        serde_json::json!({
            "x-queue-type": "stream",
            "x-max-age": "1D",
            "x-stream-max-segment-size-bytes": 8 * 1024 * 1024,
        })
    }

    /// The queue holding the latest run-progress snapshot (fed from the report exchange, see
    /// [`RUN_STATUS_ROUTING_KEY`]).
    pub fn runs_queue(&self) -> String {
        format!("{}.runs", self.prefix)
    }

    /// The fanout exchange and queue (same name) of a retry level.
    pub fn retry_queue(&self, level: Duration) -> String {
        format!("{}.retry.{}", self.prefix, level_label(level))
    }

    /// Every queue, for status listings: jobs, retries, dead letters, reports, the last run.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues: Vec<String> = Phase::ALL
            .iter()
            .flat_map(|p| self.lane_queues(*p))
            .collect();
        queues.extend(RETRY_LEVELS.iter().map(|l| self.retry_queue(*l)));
        queues.extend(Phase::ALL.iter().map(|p| self.dead_letter_queue(*p)));
        queues.push(self.reports_queue());
        queues.push(self.runs_queue());
        queues
    }
}

/// The kind of an exchange, as RabbitMQ names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes on an exact routing key.
    Direct,
    /// Routes on a routing-key pattern.
    Topic,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeKind {
    /// The name RabbitMQ uses (`direct`, `topic`, `fanout`), as in a definitions file.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
        }
    }
}

/// An exchange as [`declare`](super::declare) creates it (always durable, never auto-deleted, no arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
}

/// A binding from an exchange to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingSpec {
    /// The source exchange.
    pub exchange: String,
    /// The routing key (a pattern for topic exchanges, ignored by fanout exchanges).
    pub routing_key: String,
}

/// A queue as [`declare`](super::declare) creates it: name, durability, arguments and the bindings that feed it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// The `x-` arguments, as a JSON object of strings and integers (the shape of a definitions file).
    pub arguments: serde_json::Value,
    /// Where its messages come from.
    pub bindings: Vec<BindingSpec>,
}

/// A broker policy: how an operator sets it (`rabbitmqctl set_policy`, the management API or a definitions file).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Name.
    pub name: String,
    /// Regular expression over queue names.
    pub pattern: String,
    /// What it applies to ("queues").
    pub apply_to: &'static str,
    /// Among policies matching one queue, the highest priority wins.
    pub priority: i64,
    /// The policy keys (`message-ttl`, `max-length`, ...).
    pub definition: serde_json::Value,
}

/// The dead-letter queues' retention: [`DEAD_LETTER_TTL`] and [`DEAD_LETTER_MAX_LENGTH`].
///
/// A policy, not queue arguments: arguments are fixed when a queue is first declared, so a queue from an older
/// release redeclared with new ones fails with PRECONDITION_FAILED (and closes the channel). A policy applies to
/// queues old and new, can be changed at any time, and RabbitMQ 3.10 honours `message-ttl` and `max-length` on
/// quorum queues. It lives in `deploy/rabbitmq/definitions.json`; brokers that do not load that file get it with
/// `rabbitmqctl set_policy` (see deploy/README.md).
pub fn dead_letter_policy(topology: &Topology) -> PolicySpec {
    let phases: Vec<String> = Phase::ALL.iter().map(ToString::to_string).collect();
    PolicySpec {
        name: format!("{}.dead-letter-retention", topology.prefix),
        pattern: format!(
            "^{}\\.({})\\.dead$",
            regex_escape(&topology.prefix),
            phases.join("|")
        ),
        apply_to: "queues",
        priority: 10,
        definition: serde_json::json!({
            "message-ttl": i64::try_from(DEAD_LETTER_TTL.as_millis()).unwrap_or(i64::MAX),
            "max-length": DEAD_LETTER_MAX_LENGTH,
            "overflow": "drop-head",
        }),
    }
}

/// `text` with every regular-expression metacharacter escaped (a prefix may hold dots or dashes).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every exchange of `topology`, in declaration order.
pub fn exchanges(topology: &Topology) -> Vec<ExchangeSpec> {
    let exchange = |name: String, kind| ExchangeSpec {
        name,
        kind,
        durable: true,
    };
    let mut all = vec![
        exchange(topology.jobs_exchange(), ExchangeKind::Direct),
        exchange(topology.dead_letter_exchange(), ExchangeKind::Direct),
        exchange(topology.reports_exchange(), ExchangeKind::Topic),
    ];
    all.extend(
        RETRY_LEVELS
            .iter()
            .map(|level| exchange(topology.retry_queue(*level), ExchangeKind::Fanout)),
    );
    all
}

/// Every queue of `topology` with its arguments and bindings, in the order of [`Topology::all_queues`].
///
/// This is the single source of truth for `declare` and for `deploy/rabbitmq/definitions.json` (a test compares
/// the two). Queue arguments are immutable on the broker: changing one here means deleting and redeclaring the
/// queue (or overriding it with a policy) on every existing install.
pub fn queue_arguments(topology: &Topology) -> Vec<QueueSpec> {
    let queue = |name: String,
                 arguments: serde_json::Value,
                 exchange: String,
                 routing_key: &str| QueueSpec {
        name,
        durable: true,
        arguments,
        bindings: vec![BindingSpec {
            exchange,
            routing_key: routing_key.to_owned(),
        }],
    };
    let mut all: Vec<QueueSpec> = Lane::of_every_phase()
        .map(|(phase, lane)| {
            // A job that reaches its delivery limit is dead-lettered with its routing key: its phase's dead-letter
            // queue is bound to every lane's key.
            let arguments = serde_json::json!({
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": topology.dead_letter_exchange(),
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-max-length": MAX_QUEUE_LENGTH,
            });
            queue(
                topology.lane_queue(phase, lane),
                arguments,
                topology.jobs_exchange(),
                &lane.routing_key(phase),
            )
        })
        .collect();
    all.extend(RETRY_LEVELS.iter().map(|level| {
        let name = topology.retry_queue(*level);
        let ttl = i64::try_from(level.as_millis()).unwrap_or(i64::MAX);
        // No x-dead-letter-routing-key: an expired retry keeps its original routing key (`sync.<phase>[.lane<n>]`),
        // so it goes back to its own phase queue, in its own lane.
        let arguments = serde_json::json!({
            "x-queue-type": "quorum",
            "x-message-ttl": ttl,
            "x-dead-letter-exchange": topology.jobs_exchange(),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-max-length": MAX_QUEUE_LENGTH,
        });
        queue(name.clone(), arguments, name, "")
    }));
    all.extend(Phase::ALL.iter().map(|phase| {
        QueueSpec {
            name: topology.dead_letter_queue(*phase),
            durable: true,
            arguments: serde_json::json!({ "x-queue-type": "quorum" }),
            bindings: Lane::all()
                .map(|lane| BindingSpec {
                    exchange: topology.dead_letter_exchange(),
                    routing_key: lane.routing_key(*phase),
                })
                .collect(),
        }
    }));
    all.push(queue(
        topology.reports_queue(),
        serde_json::json!({ "x-queue-type": "quorum" }),
        topology.reports_exchange(),
        "report.#",
    ));
    // Holds only the newest snapshot: a new publish drops the older one (default overflow `drop-head`). Classic,
    // and said so explicitly (a vhost default may be quorum): `status` peeks by get-and-requeue, and a quorum
    // queue counts each requeue as a delivery, so under a delivery limit (RabbitMQ 4 sets one by default) enough
    // peeks would drop the snapshot.
    all.push(queue(
        topology.runs_queue(),
        serde_json::json!({ "x-queue-type": "classic", "x-max-length": 1 }),
        topology.reports_exchange(),
        RUN_STATUS_ROUTING_KEY,
    ));
    all
}

/// The retry level for a wait: the smallest level no shorter than `wait`, or the longest level.
pub fn retry_level_for(wait: Duration) -> Duration {
    RETRY_LEVELS
        .iter()
        .copied()
        .find(|level| *level >= wait)
        .unwrap_or(RETRY_LEVELS[RETRY_LEVELS.len() - 1])
}

fn level_label(level: Duration) -> String {
    let secs = level.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A tenant id as a queue-name part: lower case, anything but letters, digits, dots and dashes replaced, at most
/// 200 characters (a queue name holds 255 bytes).
fn queue_safe(tenant_id: &str) -> String {
    tenant_id
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_level_is_never_shorter_than_the_wait() {
        for millis in [
            0u64, 1, 999, 1000, 1001, 4_500, 5_000, 29_999, 31_000, 600_000,
        ] {
            let wait = Duration::from_millis(millis);
            let level = retry_level_for(wait);
            assert!(level >= wait, "{wait:?} -> {level:?}");
        }
        assert_eq!(
            retry_level_for(Duration::from_millis(1500)),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_level_for(Duration::from_secs(3600)),
            Duration::from_secs(600)
        );
    }

    /// Every lane has a queue bound to its own key, and a job dead-lettered from any lane reaches its phase's
    /// dead-letter queue (fails if a lane's key is left unbound there).
    #[test]
    fn every_lane_has_its_queue_and_reaches_its_dead_letter_queue() {
        let t = Topology::new("t1");
        let specs = queue_arguments(&t);
        for phase in Phase::ALL {
            for lane in Lane::all() {
                let name = t.lane_queue(phase, lane);
                let spec = specs.iter().find(|q| q.name == name).expect("declared");
                assert_eq!(spec.bindings.len(), 1);
                assert_eq!(spec.bindings[0].exchange, t.jobs_exchange());
                assert_eq!(spec.bindings[0].routing_key, lane.routing_key(phase));
                let dead = specs
                    .iter()
                    .find(|q| q.name == t.dead_letter_queue(phase))
                    .expect("dead-letter queue");
                assert!(
                    dead.bindings
                        .iter()
                        .any(|b| b.exchange == t.dead_letter_exchange()
                            && b.routing_key == lane.routing_key(phase)),
                    "{name}'s dead letters are routed"
                );
            }
        }
        assert_eq!(t.lane_queue(Phase::Phase2, Lane::FIRST), "t1.phase2");
        assert_eq!(
            t.lane_queue(Phase::Phase2, Lane::new(3).expect("lane 3")),
            "t1.phase2.lane3"
        );
        let all = t.all_queues();
        assert_eq!(
            all.iter().filter(|q| q.starts_with("t1.phase")).count(),
            2 * usize::from(Lane::COUNT) + 2,
            "every lane and the dead-letter queues are listed: {all:?}"
        );
    }

    #[test]
    fn names_follow_the_prefix() {
        let t = Topology::new("t1");
        assert_eq!(t.job_queue(Phase::Phase1), "t1.phase1");
        assert_eq!(t.dead_letter_queue(Phase::Phase2), "t1.phase2.dead");
        assert_eq!(t.retry_queue(Duration::from_secs(120)), "t1.retry.2m");
        assert_eq!(t.retry_queue(Duration::from_secs(5)), "t1.retry.5s");
        assert_eq!(t.runs_queue(), "t1.runs");
        assert_eq!(
            t.all_queues().len(),
            2 * usize::from(Lane::COUNT) + RETRY_LEVELS.len() + 2 + 1 + 1
        );
    }

    #[test]
    fn a_worker_publishes_only_to_the_report_queue_of_the_jobs_own_run() {
        use crate::message::{CentralFolder, JobKind};
        use crate::model::Mailbox;
        let t = Topology::new("t1");
        let mailbox = Mailbox {
            id: "a".into(),
            upn: "a@x".into(),
        };
        let run = Uuid::now_v7();
        let mut job = Job::new(
            run,
            "x",
            false,
            JobKind::Phase2 {
                central: Some(CentralFolder {
                    mailbox: mailbox.clone(),
                    folder_id: None,
                }),
                mailbox,
            },
        );
        assert_eq!(t.report_queue_of(&job), None);
        job.report_queue = Some(t.run_reports_queue(run));
        assert_eq!(t.report_queue_of(&job), Some(format!("t1.reports.{run}")));
        for forged in [
            Topology::new("t2").run_reports_queue(run),
            t.run_reports_queue(Uuid::now_v7()),
            t.job_queue(Phase::Phase1),
            t.reports_queue(),
        ] {
            job.report_queue = Some(forged.clone());
            assert_eq!(t.report_queue_of(&job), None, "{forged}");
        }
        assert_eq!(
            t.lease_queue("Contoso.onmicrosoft.com"),
            "t1.lease.contoso.onmicrosoft.com"
        );
        assert_eq!(t.lease_queue("a b/c"), "t1.lease.a_b_c");
        assert_eq!(
            t.central_lease_queue("Contoso.onmicrosoft.com", 0),
            "t1.central-lease.contoso.onmicrosoft.com"
        );
        assert_eq!(
            t.central_lease_queue("Contoso.onmicrosoft.com", 3),
            "t1.central-lease.contoso.onmicrosoft.com.3"
        );
        assert_eq!(
            t.write_lease_queue("Contoso.onmicrosoft.com", "5F1E-9a"),
            "t1.write-lease.contoso.onmicrosoft.com.5f1e-9a"
        );
        assert!(t.write_lease_queue(&"x".repeat(400), &"y".repeat(36)).len() <= 255);
        // Neither the shared report queue (`report.#`) nor the runs queue sees a run's reports.
        let key = Topology::run_reports_routing_key(run);
        assert!(!key.starts_with("report.") && key != RUN_STATUS_ROUTING_KEY);
    }

    #[test]
    fn queue_specs_cover_every_queue_and_bind_to_declared_exchanges() {
        let t = Topology::new("t1");
        let specs = queue_arguments(&t);
        let names: Vec<String> = specs.iter().map(|q| q.name.clone()).collect();
        assert_eq!(names, t.all_queues());
        let exchange_names: Vec<String> = exchanges(&t).into_iter().map(|e| e.name).collect();
        for spec in &specs {
            assert!(spec.durable, "{}", spec.name);
            let kind = if spec.name == t.runs_queue() {
                "classic"
            } else {
                "quorum"
            };
            assert_eq!(spec.arguments["x-queue-type"], kind, "{}", spec.name);
            let bindings = if spec.name.ends_with(".dead") {
                usize::from(Lane::COUNT)
            } else {
                1
            };
            assert_eq!(spec.bindings.len(), bindings, "{}", spec.name);
            for binding in &spec.bindings {
                assert!(exchange_names.contains(&binding.exchange), "{}", spec.name);
            }
        }
        let phase1 = &specs[0];
        assert_eq!(phase1.arguments["x-delivery-limit"], DELIVERY_LIMIT);
        assert_eq!(phase1.arguments["x-dead-letter-exchange"], "t1.dlx");
        let retry = specs
            .iter()
            .find(|q| q.name == "t1.retry.2m")
            .expect("retry queue");
        assert_eq!(retry.arguments["x-message-ttl"], 120_000);
        assert_eq!(retry.arguments["x-dead-letter-exchange"], "t1.jobs");
        assert!(retry.arguments.get("x-dead-letter-routing-key").is_none());
        let runs = specs.last().expect("runs queue");
        assert_eq!(runs.name, "t1.runs");
        assert_eq!(runs.arguments["x-max-length"], 1);
        assert_eq!(runs.bindings[0].exchange, "t1.reports");
        assert_ne!(
            runs.bindings[0].routing_key, "report.#",
            "snapshots must not reach the report queue"
        );
    }

    #[test]
    fn dead_letter_retention_is_a_policy_over_exactly_the_dead_letter_queues() {
        let policy = dead_letter_policy(&Topology::new("cm"));
        assert_eq!(policy.name, "cm.dead-letter-retention");
        assert_eq!(policy.pattern, r"^cm\.(phase1|phase2)\.dead$");
        assert_eq!(policy.apply_to, "queues");
        assert_eq!(policy.definition["message-ttl"], 1_209_600_000_i64);
        assert_eq!(policy.definition["max-length"], DEAD_LETTER_MAX_LENGTH);
        assert_eq!(policy.definition["overflow"], "drop-head");
        // The queues themselves keep their arguments, so an existing install redeclares them unchanged.
        let topology = Topology::new("cm");
        for spec in queue_arguments(&topology) {
            if Phase::ALL
                .iter()
                .any(|p| spec.name == topology.dead_letter_queue(*p))
            {
                assert_eq!(
                    spec.arguments,
                    serde_json::json!({ "x-queue-type": "quorum" })
                );
            }
        }
        assert_eq!(
            dead_letter_policy(&Topology::new("it-1.a")).pattern,
            r"^it\-1\.a\.(phase1|phase2)\.dead$"
        );
    }
}
