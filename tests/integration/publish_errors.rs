//! Permanent publish errors on the producer's side (issue 10, scenario 7): a job the broker can never take is
//! refused before it is sent, with an error naming the job, instead of being retried for ever.

use std::time::Duration;

use producer::dispatch::Broker;
use producer::dispatch::Dispatch;
use shared::message::{CentralFolder, Job, JobKind, Phase};
use shared::model::Mailbox;
use shared::mq::MAX_MESSAGE_BYTES;
use uuid::Uuid;

use crate::support::{self, BROKER};

fn mailbox(i: usize) -> Mailbox {
    Mailbox {
        id: format!("{i:0>120}"),
        upn: format!("user{i:0>60}@contoso.onmicrosoft.com"),
    }
}

/// A phase-2 job of run `run_id` for `mailbox(number)`.
fn phase2_job(run_id: Uuid, number: usize) -> Job {
    Job::new(
        run_id,
        "contoso.onmicrosoft.com",
        false,
        JobKind::Phase2 {
            central: Some(CentralFolder {
                mailbox: mailbox(1),
                folder_id: Some("folder".into()),
            }),
            mailbox: mailbox(number),
        },
    )
}

/// A producer's broker on a private topology with a run begun (its report queue declared).
async fn begun_run() -> (Broker, shared::mq::Topology, Uuid) {
    let topology = support::private_topology();
    let mut broker = Broker::connect(&support::amqp_url(), topology.clone())
        .await
        .expect("connects");
    let run_id = Uuid::now_v7();
    broker.begin(run_id).await.expect("begins");
    (broker, topology, run_id)
}

/// Failed before the fix: a job over the fleet's message limit was sent as it was (RabbitMQ 4 refuses it by
/// closing the channel, and the producer reconnected and sent it again, for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_job_is_refused_at_once_with_an_error_naming_it() {
    let _broker = BROKER.read().await;
    let (mut broker, topology, run_id) = begun_run().await;
    let per_source = mailbox(0).id.len() + mailbox(0).upn.len();
    let sources: Vec<Mailbox> = (0..MAX_MESSAGE_BYTES / per_source + 1)
        .map(mailbox)
        .collect();
    let job = Job::new(
        run_id,
        "contoso.onmicrosoft.com",
        false,
        JobKind::Phase1 {
            central: CentralFolder {
                mailbox: mailbox(1),
                folder_id: Some("folder".into()),
            },
            sources,
        },
    );
    assert!(job.to_json().len() > MAX_MESSAGE_BYTES);
    let job_id = job.job_id;
    let refused = tokio::time::timeout(Duration::from_secs(120), broker.submit(vec![job]))
        .await
        .expect("the producer gave up instead of retrying for ever")
        .expect_err("an oversized job must be refused");
    let text = format!("{refused:#}");
    assert!(
        text.contains(&job_id.to_string()) && text.contains("limit"),
        "{text}"
    );
    // Nothing reached the queue, and the connection is still usable for the next job.
    let small = phase2_job(run_id, 2);
    broker
        .submit(vec![small])
        .await
        .expect("a normal job still goes out");
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let phase1 = channel
        .queue_declare(
            topology.job_queue(Phase::Phase1).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("phase-1 queue");
    assert_eq!(phase1.message_count(), 0);
    broker.end().await;
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
}

/// Jobs submitted together go out in their order, each once, though their confirms are waited for together
/// (`mq::Publisher::publish_jobs`): the fair queue's order is the order workers see them in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_together_arrive_once_each_in_their_order() {
    let _broker = BROKER.read().await;
    let (mut broker, topology, run_id) = begun_run().await;
    let jobs: Vec<Job> = (0..300).map(|i| phase2_job(run_id, 10 + i)).collect();
    let ids: Vec<String> = jobs.iter().map(|job| job.job_id.to_string()).collect();
    broker.submit(jobs).await.expect("submitted");
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = topology.job_queue(Phase::Phase2);
    let mut arrived = Vec::new();
    while let Some(message) = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("get")
    {
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string)
            .expect("every job carries its id");
        arrived.push(id);
    }
    assert_eq!(arrived, ids);
    broker.end().await;
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
}

/// Where a worker's report goes: the run's own queue when the job names exactly that, the shared queue for a name
/// outside the worker's prefix (a forged job cannot make a worker write into another queue), and nowhere, without
/// an error, when the run's queue is gone (its producer ended: failing would only run the job again for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_go_to_the_runs_own_queue_and_only_inside_the_prefix() {
    let _broker = BROKER.read().await;
    let (topology, other) = (support::private_topology(), support::private_topology());
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    for declared in [&topology, &other] {
        shared::mq::declare(&channel, declared)
            .await
            .expect("declare");
    }
    let publisher = shared::mq::Publisher::open(&connection, topology.clone())
        .await
        .expect("publisher");
    let run_id = Uuid::now_v7();
    let own = shared::mq::declare_run_reports(&channel, &topology, run_id)
        .await
        .expect("run queue");
    let foreign = shared::mq::declare_run_reports(&channel, &other, run_id)
        .await
        .expect("another prefix's run queue");
    let mut job = phase2_job(run_id, 2);
    let report = report_of(&job);
    let count = |queue: String| {
        let channel = channel.clone();
        async move {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .expect("queue")
                .message_count()
        }
    };

    job.report_queue = Some(own.clone());
    publisher.publish_report(&job, &report).await.expect("own");
    job.report_queue = Some(foreign.clone());
    publisher
        .publish_report(&job, &report)
        .await
        .expect("forged");
    assert_eq!(count(own.clone()).await, 1);
    assert_eq!(
        count(foreign.clone()).await,
        0,
        "a forged name was honoured"
    );
    assert_eq!(count(topology.reports_queue()).await, 1);

    channel
        .queue_delete(own.as_str().into(), Default::default())
        .await
        .expect("delete");
    job.report_queue = Some(own);
    publisher
        .publish_report(&job, &report)
        .await
        .expect("a gone run's report is dropped, not an error");

    let _ = channel
        .queue_delete(foreign.as_str().into(), Default::default())
        .await;
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
    support::delete_topology(&other).await;
}

fn report_of(job: &Job) -> shared::message::Report {
    shared::message::Report {
        duration_ms: 1,
        ..shared::message::Report::of(job, 1, shared::message::Outcome::Succeeded)
    }
}
