//! The operator commands (`status` with the last run's progress, `dlq list|show|requeue|purge`) against the real
//! broker, each test on a private queue prefix. Dead letters are made the way the fleet makes them: a worker's
//! `Publisher::publish_dead_letter` of a delivery taken from the job queue, or the broker's own dead-lettering.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use graphsim::{EstateParams, SimConfig};
use lapin::options::{BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use producer::ops::dead_letter::{Filter, ReasonSource};
use producer::ops::dlq;
use producer::ops::last_run::LastRun;
use producer::ops::management::Management;
use producer::ops::status::{self, ManagementUse};
use producer::summary::RunReport;
use shared::message::{CentralFolder, FailureReason, Job, JobKind, Lane, Phase};
use shared::model::Mailbox;
use shared::mq::{self, attempt_of, header_str, Publisher, Topology, REASON_HEADER};
use shared::run_status::RunStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::support::{
    amqp_url, binary, connect, delete_topology, private_topology, scratch_dir, spawn_worker,
    Estate, Process, BROKER,
};

/// A declared private topology with a confirm-mode publisher on it.
struct Fleet {
    connection: Connection,
    topology: Topology,
    publisher: Publisher,
    channel: Channel,
}

impl Fleet {
    async fn new() -> Self {
        let connection = connect().await;
        let topology = private_topology();
        let channel = connection.create_channel().await.expect("channel");
        mq::declare(&channel, &topology).await.expect("declare");
        let publisher = Publisher::open(&connection, topology.clone())
            .await
            .expect("publisher");
        Self {
            connection,
            topology,
            publisher,
            channel,
        }
    }

    async fn finish(self) {
        let _ = mq::close_connection(&self.connection, "test done").await;
        delete_topology(&self.topology).await;
    }

    /// Dead-letters `job` as a worker does after attempt `attempt` failed for `reason`: publish it to the job
    /// queue, take the delivery, publish the dead letter from it, ack.
    async fn worker_dead_letter(
        &self,
        job: &Job,
        attempt: u32,
        reason: FailureReason,
        error: &str,
    ) {
        self.publisher
            .publish_job(job, attempt)
            .await
            .expect("publish job");
        let delivery = self
            .take(&self.topology.lane_queue(job.phase(), job.lane))
            .await;
        self.publisher
            .publish_dead_letter(
                job.phase(),
                &delivery.data,
                &delivery.properties,
                reason,
                error,
            )
            .await
            .expect("publish dead letter");
        delivery.ack(Default::default()).await.expect("ack");
    }

    /// Dead-letters a message the way the broker does: a consumer rejects it, taken from its lane, without requeue.
    async fn broker_dead_letter(&self, job: &Job) {
        self.publisher
            .publish_job(job, 1)
            .await
            .expect("publish job");
        let delivery = self
            .take(&self.topology.lane_queue(job.phase(), job.lane))
            .await;
        delivery
            .nack(BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            })
            .await
            .expect("reject");
    }

    /// The next message of `queue`, unacknowledged (waits for it briefly).
    async fn take(&self, queue: &str) -> lapin::message::Delivery {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .expect("basic_get");
            if let Some(message) = got {
                return message.delivery;
            }
            assert!(Instant::now() < deadline, "nothing arrived in {queue}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Drains `queue`, returning (job id, attempt, has a dead-letter reason header) of each message in order.
    async fn drain(&self, queue: &str) -> Vec<(String, u32, bool)> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            let job = Job::from_json(&message.delivery.data).expect("a job");
            out.push((
                job.job_id.to_string(),
                attempt_of(&message.delivery.properties),
                header_str(&message.delivery.properties, REASON_HEADER).is_some(),
            ));
        }
        out
    }

    /// Takes every job `queue` holds.
    async fn jobs_in(&self, queue: &str) -> Vec<Job> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic_get")
        {
            out.push(Job::from_json(&message.delivery.data).expect("a job"));
        }
        out
    }

    /// Waits until `queue` holds `expected` ready messages (dead-lettering and channel-close returns are
    /// asynchronous in the broker), and fails if it never does.
    async fn expect_ready(&self, queue: &str, expected: u32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let count = ready(&self.connection, queue).await;
            if count == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} holds {count}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn list(&self, filter: &Filter) -> Vec<String> {
        let scan = dlq::list(&self.connection, &self.topology, filter)
            .await
            .expect("list");
        scan.matched
            .iter()
            .map(|l| l.job_id.clone().expect("job id"))
            .collect()
    }
}

async fn ready(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("queue exists");
    let _ = mq::close_channel(&channel, "done").await;
    declared.message_count()
}

fn job(tenant: &str, user: &str, phase: Phase) -> Job {
    let mailbox = |id: &str| Mailbox {
        id: id.into(),
        upn: format!("{id}@{tenant}"),
    };
    let central = CentralFolder {
        mailbox: mailbox("shared"),
        folder_id: Some("folder".into()),
    };
    let kind = match phase {
        Phase::Phase1 => JobKind::Phase1 {
            central,
            sources: vec![mailbox(user)],
        },
        Phase::Phase2 => JobKind::Phase2 {
            central: Some(central),
            mailbox: mailbox(user),
        },
    };
    Job::new(Uuid::now_v7(), tenant, false, kind)
}

fn ids(jobs: &[&Job]) -> Vec<String> {
    jobs.iter().map(|j| j.job_id.to_string()).collect()
}

/// Runs the producer's command line in-process, as `contactmirror-producer <args>`.
pub(crate) async fn producer(args: &[&str]) -> anyhow::Result<ExitCode> {
    let mut argv = vec!["contactmirror-producer"];
    argv.extend_from_slice(args);
    let cli = producer::cli::Cli::try_parse_from(argv).expect("valid command line");
    producer::run::dispatch(cli).await
}

/// A job in a lane other than 0 (a run started beside another) travels in that lane's queue, comes back to it
/// from a retry level, and when the broker dead-letters it, lands in its phase's one dead-letter queue; `dlq
/// requeue` then puts it in the phase's first lane. Fails if a lane's key is left unbound anywhere on that path.
#[tokio::test]
async fn a_lanes_job_is_retried_into_its_lane_and_dead_lettered_into_its_phases_queue() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let lane = Lane::new(2).expect("lane 2");
    let mut laned = job("a.example", "alice", Phase::Phase2);
    laned.lane = lane;
    let lane_queue = fleet.topology.lane_queue(Phase::Phase2, lane);
    let first_lane = fleet.topology.job_queue(Phase::Phase2);

    fleet
        .publisher
        .publish_job(&laned, 1)
        .await
        .expect("publish");
    fleet.expect_ready(&lane_queue, 1).await;
    fleet.expect_ready(&first_lane, 0).await;
    let delivery = fleet.take(&lane_queue).await;
    delivery.ack(Default::default()).await.expect("ack");

    fleet
        .publisher
        .publish_retry(&laned, 2, Duration::from_millis(500))
        .await
        .expect("retry");
    let delivery = fleet.take(&lane_queue).await;
    assert_eq!(attempt_of(&delivery.properties), 2, "the retry came back");
    delivery.ack(Default::default()).await.expect("ack");
    fleet.broker_dead_letter(&laned).await;
    let dead = fleet.topology.dead_letter_queue(Phase::Phase2);
    fleet.expect_ready(&dead, 1).await;

    let selection = Filter {
        phase: Some(Phase::Phase2),
        ..Filter::default()
    };
    let scan = dlq::requeue(
        &fleet.connection,
        &fleet.topology,
        &selection,
        dlq::Confirmations::HoldBack,
    )
    .await
    .expect("requeue");
    assert_eq!(scan.matched.len(), 1);
    fleet.expect_ready(&dead, 0).await;
    let back = Job::from_json(&fleet.take(&first_lane).await.data).expect("a job");
    assert_eq!(
        (back.job_id, back.lane),
        (laned.job_id, Lane::FIRST),
        "requeued into the first lane"
    );
    fleet.expect_ready(&lane_queue, 0).await;
    fleet.finish().await;
}

#[tokio::test]
async fn dlq_list_and_show_report_why_and_leave_the_queue_as_it_was() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let a1 = job("a.example", "alice", Phase::Phase2);
    let a2 = job("a.example", "bob", Phase::Phase2);
    let b1 = job("b.example", "carol", Phase::Phase2);
    let b0 = job("b.example", "shared", Phase::Phase1);
    let crashed = job("a.example", "dave", Phase::Phase2);
    fleet
        .worker_dead_letter(
            &a1,
            1,
            FailureReason::NoMailbox,
            "MailboxNotEnabledForRESTAPI",
        )
        .await;
    fleet
        .worker_dead_letter(
            &a2,
            5,
            FailureReason::AttemptsExhausted,
            "gave up after 5 attempts: 503",
        )
        .await;
    fleet
        .worker_dead_letter(
            &b1,
            1,
            FailureReason::AccessDenied,
            "ErrorAccessDenied: policy",
        )
        .await;
    fleet
        .worker_dead_letter(&b0, 2, FailureReason::Authentication, "AADSTS7000215")
        .await;
    fleet.broker_dead_letter(&crashed).await;
    let dlq2 = fleet.topology.dead_letter_queue(Phase::Phase2);
    fleet.expect_ready(&dlq2, 4).await;

    let everything = dlq::list(&fleet.connection, &fleet.topology, &Filter::default())
        .await
        .expect("list");
    let found: Vec<String> = everything
        .matched
        .iter()
        .filter_map(|l| l.job_id.clone())
        .collect();
    assert_eq!(
        found,
        ids(&[&b0, &a1, &a2, &b1, &crashed]),
        "phase 1 queue first, each in queue order"
    );
    let a2_letter = &everything.matched[2];
    assert_eq!(a2_letter.tenant.as_deref(), Some("a.example"));
    assert_eq!(a2_letter.mailbox.as_deref(), Some("bob@a.example"));
    assert_eq!(a2_letter.attempts, 5);
    assert_eq!(a2_letter.reason, "attempts_exhausted");
    assert_eq!(a2_letter.reason_source, ReasonSource::Worker);
    assert_eq!(
        a2_letter.error.as_deref(),
        Some("gave up after 5 attempts: 503")
    );
    let crashed_letter = &everything.matched[4];
    assert_eq!(crashed_letter.reason, "rejected");
    assert_eq!(crashed_letter.reason_source, ReasonSource::Broker);
    assert_eq!(
        crashed_letter.first_death_queue.as_deref(),
        Some(fleet.topology.job_queue(Phase::Phase2).as_str())
    );
    assert!(crashed_letter.first_death_at.is_some());

    let table = dlq::render_list(&everything);
    for expected in [
        "a.example",
        "bob@a.example",
        "attempts_exhausted",
        "MailboxNotEnabledForRESTAPI",
        "rejected",
    ] {
        assert!(
            table.contains(expected),
            "{expected} missing from:\n{table}"
        );
    }

    // Listing read every message and put it back: same messages, same order, nothing left unacknowledged.
    fleet.expect_ready(&dlq2, 4).await;
    fleet
        .expect_ready(&fleet.topology.dead_letter_queue(Phase::Phase1), 1)
        .await;
    assert_eq!(fleet.list(&Filter::default()).await, found);

    let by_tenant = Filter {
        tenant: Some("A.EXAMPLE".into()),
        ..Filter::default()
    };
    assert_eq!(fleet.list(&by_tenant).await, ids(&[&a1, &a2, &crashed]));
    let by_phase = Filter {
        phase: Some(Phase::Phase1),
        ..Filter::default()
    };
    assert_eq!(fleet.list(&by_phase).await, ids(&[&b0]));
    let by_reason = Filter {
        reason: Some("access_denied".into()),
        ..Filter::default()
    };
    assert_eq!(fleet.list(&by_reason).await, ids(&[&b1]));
    let limited = Filter {
        phase: Some(Phase::Phase2),
        limit: Some(2),
        ..Filter::default()
    };
    assert_eq!(fleet.list(&limited).await, ids(&[&a1, &a2]));
    assert_eq!(
        fleet.list(&Filter::default()).await,
        found,
        "a limited scan keeps the order too"
    );

    let one = Filter {
        job_id: Some(b1.job_id.to_string()),
        ..Filter::default()
    };
    let shown = dlq::list(&fleet.connection, &fleet.topology, &one)
        .await
        .expect("show");
    let text = dlq::render_show(&shown);
    for expected in [
        "ErrorAccessDenied: policy",
        "carol@b.example",
        "access_denied (from the worker)",
        "\"phase\": \"phase2\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert_eq!(
        fleet.list(&Filter::default()).await,
        found,
        "show changed nothing either"
    );
    fleet.finish().await;
}

#[tokio::test]
async fn dlq_requeue_moves_exactly_the_selection_back_as_attempt_one() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let a1 = job("a.example", "alice", Phase::Phase2);
    let a2 = job("a.example", "bob", Phase::Phase2);
    let b1 = job("b.example", "carol", Phase::Phase2);
    let a3 = job("a.example", "erin", Phase::Phase2);
    let a0 = job("a.example", "shared", Phase::Phase1);
    fleet
        .worker_dead_letter(&a1, 5, FailureReason::AttemptsExhausted, "503")
        .await;
    fleet
        .worker_dead_letter(&a2, 1, FailureReason::NoMailbox, "404")
        .await;
    fleet
        .worker_dead_letter(&b1, 5, FailureReason::AttemptsExhausted, "503")
        .await;
    fleet
        .worker_dead_letter(&a3, 4, FailureReason::AttemptsExhausted, "429")
        .await;
    fleet
        .worker_dead_letter(&a0, 5, FailureReason::AttemptsExhausted, "503")
        .await;
    // A body that is not a job matches the filter (its tenant header says a.example) but cannot be requeued.
    let mut headers = FieldTable::default();
    headers.insert(
        mq::TENANT_HEADER.into(),
        lapin::types::AMQPValue::LongString("a.example".into()),
    );
    let properties = lapin::BasicProperties::default().with_headers(headers);
    fleet
        .publisher
        .publish_dead_letter(
            Phase::Phase2,
            b"{not a job",
            &properties,
            FailureReason::AttemptsExhausted,
            "?",
        )
        .await
        .expect("malformed dead letter");
    let dlq2 = fleet.topology.dead_letter_queue(Phase::Phase2);
    fleet.expect_ready(&dlq2, 5).await;

    let selection = Filter {
        tenant: Some("a.example".into()),
        phase: Some(Phase::Phase2),
        reason: Some("attempts_exhausted".into()),
        ..Filter::default()
    };
    let scan = dlq::requeue(
        &fleet.connection,
        &fleet.topology,
        &selection,
        dlq::Confirmations::HoldBack,
    )
    .await
    .expect("requeue");
    let requeued: Vec<String> = scan
        .matched
        .iter()
        .filter_map(|l| l.job_id.clone())
        .collect();
    assert_eq!(requeued, ids(&[&a1, &a3]));
    assert_eq!(
        scan.skipped.len(),
        1,
        "the malformed dead letter is reported, not requeued"
    );

    let arrived = fleet.drain(&fleet.topology.job_queue(Phase::Phase2)).await;
    assert_eq!(
        arrived,
        vec![
            (a1.job_id.to_string(), 1, false),
            (a3.job_id.to_string(), 1, false)
        ],
        "exactly the selection, attempt reset, no dead-letter headers"
    );
    assert!(
        fleet
            .drain(&fleet.topology.job_queue(Phase::Phase1))
            .await
            .is_empty(),
        "phase 1 was not selected"
    );
    fleet.expect_ready(&dlq2, 3).await;
    let remaining = dlq::list(&fleet.connection, &fleet.topology, &Filter::default())
        .await
        .expect("list");
    let remaining_ids: Vec<Option<String>> =
        remaining.matched.iter().map(|l| l.job_id.clone()).collect();
    assert_eq!(
        remaining_ids,
        vec![
            Some(a0.job_id.to_string()),
            Some(a2.job_id.to_string()),
            Some(b1.job_id.to_string()),
            None
        ],
        "the rest stays, in order"
    );

    // Through the command line: requeue with a limit takes the first match only.
    let code = producer(&[
        "dlq",
        "--amqp-url",
        &amqp_url(),
        "--queue-prefix",
        fleet.topology.prefix(),
        "requeue",
        "--reason",
        "attempts_exhausted",
        "--limit",
        "1",
    ])
    .await
    .expect("requeue runs");
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        fleet.drain(&fleet.topology.job_queue(Phase::Phase1)).await,
        vec![(a0.job_id.to_string(), 1, false)]
    );
    assert!(fleet
        .drain(&fleet.topology.job_queue(Phase::Phase2))
        .await
        .is_empty());
    fleet.finish().await;
}

/// Failed before the fix: `dlq requeue` replayed a cleanup's job (or a run's `--rebuild-central` or
/// `--allow-mass-delete`) as it was, days after later runs brought the tenant back: a central cleanup job emptied
/// the central folder. A cleanup's or a rebuild's job now stays in place, named, and a lifted deletion cap is
/// dropped, unless `--replay-confirmations` asks for them as they were.
#[tokio::test]
async fn dlq_requeue_leaves_a_job_carrying_its_runs_confirmation_unless_asked_to_replay_it() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let rebuild = Job {
        rebuild_central: true,
        ..job("a.example", "alice", Phase::Phase1)
    };
    let cleanup = Job {
        cleanup: Some(shared::sync::CleanupSource::Mirror),
        ..job("a.example", "bob", Phase::Phase2)
    };
    let mass_delete = Job {
        allow_mass_delete: true,
        ..job("a.example", "carol", Phase::Phase2)
    };
    let plain = job("a.example", "dave", Phase::Phase2);
    for dead in [&rebuild, &cleanup, &mass_delete, &plain] {
        fleet
            .worker_dead_letter(dead, 5, FailureReason::AttemptsExhausted, "503")
            .await;
    }
    let scan = dlq::requeue(
        &fleet.connection,
        &fleet.topology,
        &Filter::default(),
        dlq::Confirmations::HoldBack,
    )
    .await
    .expect("requeue");
    let job_ids = |letters: &[producer::ops::dead_letter::DeadLetter]| -> Vec<String> {
        letters.iter().filter_map(|l| l.job_id.clone()).collect()
    };
    assert_eq!(job_ids(&scan.matched), ids(&[&mass_delete, &plain]));
    assert_eq!(job_ids(&scan.held_back), ids(&[&rebuild, &cleanup]));
    let requeued: Vec<(String, bool)> = fleet
        .jobs_in(&fleet.topology.job_queue(Phase::Phase2))
        .await
        .iter()
        .map(|job| (job.job_id.to_string(), job.allow_mass_delete))
        .collect();
    assert_eq!(
        requeued,
        vec![
            (mass_delete.job_id.to_string(), false),
            (plain.job_id.to_string(), false)
        ],
        "the replayed job lifted the deletion cap again"
    );
    assert!(fleet
        .drain(&fleet.topology.job_queue(Phase::Phase1))
        .await
        .is_empty());
    fleet
        .expect_ready(&fleet.topology.dead_letter_queue(Phase::Phase1), 1)
        .await;
    fleet
        .expect_ready(&fleet.topology.dead_letter_queue(Phase::Phase2), 1)
        .await;

    // Asked for, through the command line.
    let code = producer(&[
        "dlq",
        "--amqp-url",
        &amqp_url(),
        "--queue-prefix",
        fleet.topology.prefix(),
        "requeue",
        "--replay-confirmations",
    ])
    .await
    .expect("requeue runs");
    assert_eq!(code, ExitCode::SUCCESS);
    let phase1 = fleet.drain(&fleet.topology.job_queue(Phase::Phase1)).await;
    let phase2 = fleet
        .jobs_in(&fleet.topology.job_queue(Phase::Phase2))
        .await;
    assert_eq!(phase1, vec![(rebuild.job_id.to_string(), 1, false)]);
    let phase2: Vec<String> = phase2.iter().map(|job| job.job_id.to_string()).collect();
    assert_eq!(phase2, ids(&[&cleanup]));
    fleet.finish().await;
}

#[tokio::test]
async fn dlq_purge_refuses_without_yes_and_deletes_only_the_selection_with_it() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let a1 = job("a.example", "alice", Phase::Phase2);
    let b1 = job("b.example", "bob", Phase::Phase2);
    let b0 = job("b.example", "shared", Phase::Phase1);
    fleet
        .worker_dead_letter(&a1, 1, FailureReason::NoMailbox, "404")
        .await;
    fleet
        .worker_dead_letter(&b1, 1, FailureReason::NoMailbox, "404")
        .await;
    fleet
        .worker_dead_letter(&b0, 1, FailureReason::Authentication, "401")
        .await;
    let dlq1 = fleet.topology.dead_letter_queue(Phase::Phase1);
    let dlq2 = fleet.topology.dead_letter_queue(Phase::Phase2);
    fleet.expect_ready(&dlq2, 2).await;
    let prefix = fleet.topology.prefix().to_owned();
    let url = amqp_url();
    let base = [
        "dlq",
        "--amqp-url",
        url.as_str(),
        "--queue-prefix",
        prefix.as_str(),
        "purge",
    ];

    let refused = producer(&base).await.expect("purge answers");
    assert_eq!(refused, ExitCode::from(producer::EXIT_USAGE));
    assert!(dlq::purge_refusal().contains("--yes"));
    fleet.expect_ready(&dlq2, 2).await;
    fleet.expect_ready(&dlq1, 1).await;

    let only_a = [&base[..], &["--tenant", "a.example", "--yes"]].concat();
    assert_eq!(
        producer(&only_a).await.expect("purge runs"),
        ExitCode::SUCCESS
    );
    fleet.expect_ready(&dlq2, 1).await;
    assert_eq!(fleet.list(&Filter::default()).await, ids(&[&b0, &b1]));

    let everything = [&base[..], &["--yes"]].concat();
    assert_eq!(
        producer(&everything).await.expect("purge runs"),
        ExitCode::SUCCESS
    );
    fleet.expect_ready(&dlq2, 0).await;
    fleet.expect_ready(&dlq1, 0).await;
    fleet.finish().await;
}

/// `rabbitmqctl list_queues` for the queues of `prefix`: name -> (ready, unacked, consumers).
fn rabbitmqctl(prefix: &str) -> std::collections::HashMap<String, (u64, u64, u64)> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output()
        .expect("rabbitmqctl runs (it comes with the RabbitMQ the tests need)");
    assert!(
        output.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            let name = fields.first()?;
            name.starts_with(&format!("{prefix}."))
                .then(|| Some((name.to_string(), (number(1)?, number(2)?, number(3)?))))?
        })
        .collect()
}

#[tokio::test]
async fn status_numbers_match_the_brokers_own() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    for user in ["u1", "u2", "u3"] {
        fleet
            .publisher
            .publish_job(&job("a.example", user, Phase::Phase2), 1)
            .await
            .expect("publish");
    }
    fleet
        .worker_dead_letter(
            &job("a.example", "u4", Phase::Phase1),
            1,
            FailureReason::NoMailbox,
            "404",
        )
        .await;
    // One job in progress (unacknowledged) and a consumer on the report queue.
    let held = fleet.take(&fleet.topology.job_queue(Phase::Phase2)).await;
    let consumer_channel = fleet.connection.create_channel().await.expect("channel");
    consumer_channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let _consumer = consumer_channel
        .basic_consume(
            fleet.topology.reports_queue().as_str().into(),
            "status-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let management = Management::new(&amqp_url(), None).expect("management client");
    // The management API samples its statistics: wait until it has caught up with what was just done.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = status::collect(&fleet.connection, &fleet.topology, Some(&management))
            .await
            .expect("status");
        let unacked = status
            .queues
            .iter()
            .find(|q| q.name == fleet.topology.job_queue(Phase::Phase2))
            .and_then(|q| q.unacked);
        // A queue the API has not sampled yet has no message counts at all (seen under load for a retry queue).
        let every_queue_sampled = status.queues.iter().all(|q| q.unacked.is_some());
        if unacked == Some(1) && every_queue_sampled {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the management API never reported the unacked job (is the management plugin enabled?): {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        matches!(status.management, ManagementUse::Used { .. }),
        "{:?}",
        status.management
    );
    assert_eq!(status.queues.len(), fleet.topology.all_queues().len());
    let broker = rabbitmqctl(fleet.topology.prefix());
    assert_eq!(broker.len(), status.queues.len(), "{broker:?}");
    for queue in &status.queues {
        assert!(queue.exists, "{}", queue.name);
        let (ready, unacked, consumers) = broker[&queue.name];
        assert_eq!(queue.ready, Some(ready), "ready of {}", queue.name);
        assert_eq!(queue.unacked, Some(unacked), "unacked of {}", queue.name);
        assert_eq!(
            queue.consumers,
            Some(consumers),
            "consumers of {}",
            queue.name
        );
    }
    let by_name = |name: String| {
        status
            .queues
            .iter()
            .find(|q| q.name == name)
            .expect("listed")
            .clone()
    };
    let phase2 = by_name(fleet.topology.job_queue(Phase::Phase2));
    assert_eq!((phase2.ready, phase2.unacked), (Some(2), Some(1)));
    assert_eq!(
        by_name(fleet.topology.dead_letter_queue(Phase::Phase1)).ready,
        Some(1)
    );
    assert_eq!(by_name(fleet.topology.reports_queue()).consumers, Some(1));
    let table = status::render(&status);
    let phase2_line: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with(&format!("{} ", phase2.name)))
        .map(|line| line.split_whitespace().collect())
        .unwrap_or_default();
    let consumers = phase2.consumers.map(|c| c.to_string()).unwrap_or_default();
    assert_eq!(
        phase2_line,
        vec![
            phase2.name.as_str(),
            "jobs",
            "phase2",
            "2",
            "1",
            consumers.as_str()
        ],
        "{table}"
    );
    assert!(!table.contains("guest:guest"), "{table}");

    drop(held);
    let _ = mq::close_channel(&consumer_channel, "done").await;
    fleet.finish().await;
}

/// A one-shot HTTP server answering the management API's queue list with `body`; returns its port and the
/// request it received.
async fn fake_management(body: String) -> (u16, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buffer).await.expect("read");
            assert!(n > 0, "client hung up");
            request.extend_from_slice(&buffer[..n]);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, handle)
}

#[tokio::test]
async fn status_uses_the_management_credentials_and_falls_back_to_amqp_without_it() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let phase1 = fleet.topology.job_queue(Phase::Phase1);
    let body =
        serde_json::json!([{ "name": phase1, "messages_unacknowledged": 7, "consumers": 3 }])
            .to_string();
    let (port, request) = fake_management(body).await;
    let url = format!("http://monitor:pw@127.0.0.1:{port}/");
    let management = Management::new(&amqp_url(), Some(&url)).expect("management client");
    let status = status::collect(&fleet.connection, &fleet.topology, Some(&management))
        .await
        .expect("status");
    let request = request.await.expect("request served");
    assert!(
        request.starts_with("GET /api/queues/%2F?columns="),
        "{request}"
    );
    // base64("monitor:pw")
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: basic bw9uaxrvcjpwdw=="),
        "{request}"
    );
    let first = &status.queues[0];
    assert_eq!(first.name, phase1);
    assert_eq!(
        first.unacked,
        Some(7),
        "unacked comes from the management API"
    );
    assert_eq!(
        first.consumers,
        Some(0),
        "consumers come from AMQP, which is live"
    );
    assert_eq!(
        status.queues[1].unacked, None,
        "a queue the API did not list is unknown, not zero"
    );
    let table = status::render(&status);
    assert!(
        table.contains(&format!("http://127.0.0.1:{port}/")) && !table.contains("pw@"),
        "{table}"
    );

    // Nothing listens on port 1: status still answers from AMQP and says why unacked counts are missing.
    let closed =
        Management::new(&amqp_url(), Some("http://127.0.0.1:1/")).expect("management client");
    let status = status::collect(&fleet.connection, &fleet.topology, Some(&closed))
        .await
        .expect("status");
    assert!(
        matches!(status.management, ManagementUse::Unavailable { .. }),
        "{:?}",
        status.management
    );
    assert!(status
        .queues
        .iter()
        .all(|q| q.exists && q.ready == Some(0) && q.unacked.is_none()));
    fleet.finish().await;
}

#[tokio::test]
async fn an_unreachable_broker_is_named_without_its_password() {
    let error = producer(&[
        "status",
        "--amqp-url",
        "amqp://ops:s3cret@127.0.0.1:1/%2f",
        "--no-management",
    ])
    .await
    .expect_err("nothing listens on port 1");
    let text = format!("{error:#}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let error = producer(&[
        "dlq",
        "--amqp-url",
        "amqp://ops:s3cret@127.0.0.1:1/%2f",
        "list",
    ])
    .await
    .expect_err("nothing listens on port 1");
    assert!(!format!("{error:#}").contains("s3cret"));
}

/// `contactmirror-producer status` (the real binary) on `prefix`, AMQP only: its stdout, or a panic with stderr.
fn status_command(prefix: &str, json: bool) -> String {
    let url = amqp_url();
    let mut args = vec![
        "status",
        "--amqp-url",
        url.as_str(),
        "--queue-prefix",
        prefix,
        "--no-management",
    ];
    if json {
        args.push("--json");
    }
    let output = std::process::Command::new(binary("contactmirror-producer"))
        .args(&args)
        .output()
        .expect("status runs");
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `status --json`'s `lastRun`, and the ready count of the runs queue in the same output.
fn last_run(prefix: &str) -> (serde_json::Value, u64) {
    let text = status_command(prefix, true);
    let status: serde_json::Value = serde_json::from_str(&text).expect("status --json is JSON");
    let runs = format!("{prefix}.runs");
    let ready = status["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == runs.as_str())
        .and_then(|q| q["ready"].as_u64())
        .expect("the runs queue is listed with a ready count");
    (status["lastRun"].clone(), ready)
}

fn snapshot(n: i64) -> RunStatus {
    let at = |secs: i64| {
        chrono::DateTime::from_timestamp(1_750_000_000 + secs, 0).expect("valid timestamp")
    };
    RunStatus {
        schema: shared::run_status::SCHEMA_VERSION,
        run_id: Uuid::now_v7(),
        mode: "broker".into(),
        dry_run: false,
        started_at: at(0),
        updated_at: at(n),
        finished: false,
        tenants: Vec::new(),
    }
}

fn recorded_run_id(last: &LastRun) -> Option<Uuid> {
    match last {
        LastRun::Recorded { run, .. } => Some(run.run_id),
        _ => None,
    }
}

#[tokio::test]
async fn the_runs_queue_keeps_only_the_newest_snapshot_and_status_never_consumes_it() {
    let _broker = BROKER.read().await;
    let fleet = Fleet::new().await;
    let runs = fleet.topology.runs_queue();
    let read = || status::collect(&fleet.connection, &fleet.topology, None);

    let empty = read().await.expect("status");
    assert_eq!(empty.last_run, LastRun::None);
    assert!(
        status::render(&empty).contains("no run recorded on this broker"),
        "{}",
        status::render(&empty)
    );

    // x-max-length 1 with the default overflow (drop-head): each publish pushes the older snapshot out.
    let all: Vec<RunStatus> = (1..=3).map(snapshot).collect();
    for s in &all {
        fleet
            .publisher
            .publish_run_status(s)
            .await
            .expect("publish");
    }
    fleet.expect_ready(&runs, 1).await;
    for _ in 0..3 {
        let status = read().await.expect("status");
        assert_eq!(recorded_run_id(&status.last_run), Some(all[2].run_id));
        fleet.expect_ready(&runs, 1).await;
    }

    // A peek in flight while the producer publishes: the held snapshot comes back behind the new one, and the
    // reader still picks the newest; the next publish trims the queue to one again.
    let held = fleet.take(&runs).await;
    let fourth = snapshot(4);
    fleet
        .publisher
        .publish_run_status(&fourth)
        .await
        .expect("publish");
    held.nack(BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    })
    .await
    .expect("requeue");
    let after_requeue = ready(&fleet.connection, &runs).await;
    assert!(
        (1..=2).contains(&after_requeue),
        "{runs} holds {after_requeue}"
    );
    let status = read().await.expect("status");
    assert_eq!(recorded_run_id(&status.last_run), Some(fourth.run_id));
    let fifth = snapshot(5);
    fleet
        .publisher
        .publish_run_status(&fifth)
        .await
        .expect("publish");
    fleet.expect_ready(&runs, 1).await;
    assert_eq!(
        recorded_run_id(&read().await.expect("status").last_run),
        Some(fifth.run_id)
    );

    // A snapshot this build cannot read is reported as such, not as "no run".
    fleet
        .channel
        .basic_publish(
            fleet.topology.reports_exchange().as_str().into(),
            mq::RUN_STATUS_ROUTING_KEY.into(),
            lapin::options::BasicPublishOptions::default(),
            b"{\"schema\": 99}",
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish junk")
        .await
        .expect("routed");
    fleet.expect_ready(&runs, 1).await;
    let status = read().await.expect("status");
    assert!(
        matches!(&status.last_run, LastRun::Unreadable { error } if error.contains("schema")),
        "{:?}",
        status.last_run
    );
    fleet.finish().await;
}

/// Tenant A: 10 users, the tenth without an Exchange mailbox (graphsim seeds every tenth user that way); tenant
/// B: 9 users, all reachable. One graphsim serves both.
async fn two_tenants_one_failing() -> Estate {
    let params = |users_per_tenant, seed| EstateParams {
        tenants: 1,
        users_per_tenant,
        contacts_per_user: 3,
        overlap: 0.2,
        seed,
    };
    let mut estate = Estate::seed(SimConfig::default(), params(10, 51)).await;
    let second = graphsim::seed_estate(&estate.sim, params(9, 52));
    estate.tenants.extend(second);
    estate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_shows_the_last_runs_progress_per_tenant_as_the_run_report_counts_it() {
    let _broker = BROKER.read().await;
    let estate = two_tenants_one_failing().await;
    let topology = private_topology();
    let (stop, worker) = spawn_worker(&estate.settings(), &topology, "last-run-worker");
    let report_path = scratch_dir("last-run").join("report.json");
    let config = estate.config_json().to_string();
    let url = amqp_url();
    let prefix = topology.prefix().to_owned();
    let report_arg = report_path.to_string_lossy().into_owned();
    let producer = tokio::task::spawn_blocking(move || {
        let mut process = Process::start(
            "contactmirror-producer",
            &[
                "run",
                "--amqp-url",
                &url,
                "--queue-prefix",
                &prefix,
                "--report",
                &report_arg,
                "--idle-timeout-secs",
                "120",
            ],
            &[("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config.as_str())],
        );
        let status = process.child.wait().expect("producer exits");
        (status, process.output())
    });
    let (exit, output) = tokio::time::timeout(Duration::from_secs(240), producer)
        .await
        .expect("the producer finishes")
        .expect("producer task");
    stop.cancel();
    worker.await.expect("worker stops");
    assert_eq!(exit.code(), Some(1), "one mailbox fails:\n{output}");
    let report: RunReport =
        serde_json::from_slice(&std::fs::read(&report_path).expect("the run report was written"))
            .expect("a run report");

    let (last, ready) = last_run(topology.prefix());
    assert_eq!(ready, 1, "the snapshot is still there after status read it");
    assert_eq!(last["state"], "recorded", "{last}");
    assert_eq!(last["runId"], report.run_id.to_string());
    assert_eq!(last["mode"], "broker");
    assert_eq!(last["finished"], true, "{last}");
    let tenants = last["tenants"].as_array().expect("tenants");
    assert_eq!(tenants.len(), report.tenants.len(), "{last}");
    let connection = connect().await;
    let mut failures_seen = 0;
    for (shown, reported) in tenants.iter().zip(&report.tenants) {
        let id = reported.tenant_id.as_str();
        assert_eq!(shown["tenantId"], id);
        assert_eq!(shown["users"], reported.users as u64, "{id}");
        assert_eq!(shown["phase1"], "succeeded", "{id}");
        let phase2: Vec<&producer::summary::MailboxOutcome> = reported
            .mailboxes
            .iter()
            .filter(|m| m.phase == Phase::Phase2)
            .collect();
        let failed2 = phase2.iter().filter(|m| m.outcome == "failed").count();
        assert_eq!(shown["phase2"]["total"], phase2.len() as u64, "{id}");
        assert_eq!(shown["phase2"]["done"], phase2.len() as u64, "{id}");
        assert_eq!(shown["phase2"]["failed"], failed2 as u64, "{id}");
        let failed_mailboxes: std::collections::BTreeSet<&str> = reported
            .mailboxes
            .iter()
            .filter(|m| m.outcome == "failed")
            .map(|m| m.mailbox.as_str())
            .collect();
        assert_eq!(
            shown["failedMailboxes"],
            failed_mailboxes.len() as u64,
            "{id}"
        );
        let dead = dlq::list(
            &connection,
            &topology,
            &Filter {
                tenant: Some(id.to_owned()),
                ..Filter::default()
            },
        )
        .await
        .expect("dlq list");
        assert_eq!(shown["deadLettered"], dead.matched.len() as u64, "{id}");
        failures_seen += failed_mailboxes.len();
    }
    // What the estate was built to produce, so the comparisons above are not all zeros.
    assert_eq!(
        (
            tenants[0]["failedMailboxes"].as_u64(),
            tenants[0]["deadLettered"].as_u64()
        ),
        (Some(1), Some(1)),
        "{last}"
    );
    assert_eq!(tenants[1]["failedMailboxes"], 0, "{last}");
    assert_eq!(failures_seen, 1);

    let table = status_command(topology.prefix(), false);
    let heading = format!("last run {} (broker) started ", report.run_id);
    assert!(
        table.contains(&heading) && table.contains(", finished, updated "),
        "{table}"
    );
    for tenant in &report.tenants {
        let line = table
            .lines()
            .find(|l| l.starts_with(&tenant.tenant_id))
            .unwrap_or_else(|| panic!("no line for {}:\n{table}", tenant.tenant_id));
        assert!(line.contains("succeeded"), "{line}");
    }
    for seeded in &estate.tenants {
        assert!(!table.contains(&seeded.client_secret), "a secret in status");
        assert!(
            !last.to_string().contains(&seeded.client_secret),
            "a secret in the snapshot"
        );
    }
    let (again, ready) = last_run(topology.prefix());
    assert_eq!(
        (again["runId"].clone(), ready),
        (last["runId"].clone(), 1),
        "reading twice changes nothing"
    );
    let _ = mq::close_connection(&connection, "done").await;
    delete_topology(&topology).await;
    let _ = std::fs::remove_dir_all(report_path.parent().expect("scratch dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_progress_shows_in_status_before_any_worker_took_a_job() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 2,
            users_per_tenant: 4,
            contacts_per_user: 2,
            overlap: 0.0,
            seed: 61,
        },
    )
    .await;
    let topology = private_topology();
    let config = estate.config_json().to_string();
    // No worker: the phase-1 jobs wait in the queue and the producer waits for their reports.
    let producer = Process::start(
        "contactmirror-producer",
        &[
            "run",
            "--amqp-url",
            &amqp_url(),
            "--queue-prefix",
            topology.prefix(),
            "--idle-timeout-secs",
            "600",
        ],
        &[("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config.as_str())],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        // Until the producer has declared the topology, status says the queues are missing and no run.
        let text = status_command(topology.prefix(), true);
        let status: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        if status["lastRun"]["state"] == "recorded" {
            break status["lastRun"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot while the run waits:\n{text}\n{}",
            producer.output()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(last["finished"], false, "{last}");
    let tenants = last["tenants"].as_array().expect("tenants");
    let ids: Vec<&str> = tenants
        .iter()
        .map(|t| t["tenantId"].as_str().unwrap_or_default())
        .collect();
    let seeded: Vec<&str> = estate
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    assert_eq!(ids, seeded, "{last}");
    for (shown, seeded) in tenants.iter().zip(&estate.tenants) {
        assert_eq!(shown["phase1"], "queued", "{last}");
        assert_eq!(
            shown["users"],
            seeded.mirror_target_upns.len() as u64,
            "{last}"
        );
        assert_eq!(shown["phase2"]["total"], 0, "{last}");
        assert_eq!(shown["deadLettered"], 0, "{last}");
    }
    let table = status_command(topology.prefix(), false);
    assert!(table.contains(", in progress, updated "), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" queued ")).count(),
        2,
        "{table}"
    );
    // The two phase-1 jobs are where the snapshot says they are.
    let connection = connect().await;
    assert_eq!(
        ready(&connection, &topology.job_queue(Phase::Phase1)).await,
        2
    );
    drop(producer);
    let _ = mq::close_connection(&connection, "done").await;
    delete_topology(&topology).await;
}
