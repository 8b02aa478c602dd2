//! A job's message going back to the queue while its attempt still writes (drain over, connection lost), a
//! broken publish channel, and jobs that are not what the producer wrote: each against the real broker and
//! graphsim, with an in-process worker (or real worker processes where the binary is what is tested).

use std::collections::BTreeSet;
use std::time::Duration;

use graphsim::{EstateParams, SimConfig};
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use shared::config::Settings;
use shared::graph::{ClientOptions, GraphClient};
use shared::message::{CentralFolder, Job, JobKind, Outcome, Phase, Report};
use shared::model::Mailbox;
use shared::mq::{self, Publisher, Topology, REASON_HEADER};
use tokio_util::sync::CancellationToken;
use worker::consumer::{Worker, WorkerConfig};

use crate::support::{self, Estate, BROKER};

/// A phase-1 job as the producer would write it: the configured shared mailbox, its central folder (created
/// here), and every other user as a source.
async fn phase1_job(settings: &Settings) -> Job {
    let tenant = &settings.tenants[0];
    let graph = GraphClient::new(ClientOptions::default()).expect("graph client");
    let client = graph.tenant(tenant);
    let shared = client
        .user(&tenant.global_address_book_user_id)
        .await
        .expect("shared mailbox");
    let folder = client
        .ensure_top_level_folder(&shared.id, &tenant.mirror.central_folder_name)
        .await
        .expect("central folder");
    let sources = client
        .licensed_users()
        .await
        .expect("users")
        .iter()
        .map(|u| u.mailbox())
        .filter(|m| m.id != shared.id)
        .collect();
    Job::new(
        uuid::Uuid::now_v7(),
        &tenant.tenant_id,
        false,
        JobKind::Phase1 {
            central: CentralFolder {
                mailbox: shared.mailbox(),
                folder_id: Some(folder.id),
            },
            sources,
        },
    )
}

/// A worker running one job at a time, with a short drain.
fn one_at_a_time(settings: &Settings, topology: &Topology, name: &str, grace: Duration) -> Worker {
    let config = WorkerConfig {
        grace,
        ..support::worker_config(topology, name, 1)
    };
    Worker::new(config, support::runner(settings))
}

/// Declares `topology` and publishes `body` to the jobs exchange with `phase`'s routing key.
async fn publish_raw(topology: &Topology, phase: Phase, body: &[u8]) {
    let (connection, channel) = support::declared(topology).await;
    channel
        .confirm_select(Default::default())
        .await
        .expect("confirms");
    channel
        .basic_publish(
            topology.jobs_exchange().as_str().into(),
            phase.routing_key().into(),
            Default::default(),
            body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let _ = mq::close_connection(&connection, "done").await;
}

async fn publish(topology: &Topology, job: &Job) {
    let (connection, _channel) = support::declared(topology).await;
    let _ = mq::close_connection(&connection, "done").await;
    publish_declared(topology, job).await;
}

/// Publishes `job` without declaring anything (the topology is as the test left it).
async fn publish_declared(topology: &Topology, job: &Job) {
    let connection = support::connect().await;
    let publisher = Publisher::open(&connection, topology.clone())
        .await
        .expect("publisher");
    publisher.publish_job(job, 1).await.expect("publish job");
    let _ = mq::close_connection(&connection, "done").await;
}

/// Messages ready in `queue`.
async fn ready(queue: &str) -> u32 {
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = mq::close_connection(&connection, "done").await;
    declared.message_count()
}

/// What the management API says at `path` (under `/api/`), for a failure's message; never fails.
async fn management(path: &str) -> String {
    let base = std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned());
    let answer = reqwest::Client::new()
        .get(format!("{base}/api/{path}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await;
    match answer {
        Ok(answer) => answer.text().await.unwrap_or_else(|e| e.to_string()),
        Err(error) => error.to_string(),
    }
}

/// Waits until `condition` holds, failing with `what` after a generous deadline (a guard, not a measurement).
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes messages from `queue` until one satisfies `pick`.
async fn take(queue: &str, mut pick: impl FnMut(&lapin::message::BasicGetMessage) -> bool) {
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    eventually(
        &format!("no matching message arrived in {queue}"),
        async || {
            let got = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            got.is_some_and(|message| pick(&message))
        },
    )
    .await;
    let _ = mq::close_connection(&connection, "done").await;
}

/// The final report of `job` from the topology's report queue.
async fn final_report(topology: &Topology, job: &Job) -> Report {
    let mut found = None;
    take(
        &topology.reports_queue(),
        |message| match Report::from_json(&message.delivery.data) {
            Ok(report) if report.job_id == job.job_id && report.outcome.is_final() => {
                found = Some(report);
                true
            }
            _ => false,
        },
    )
    .await;
    found.expect("a final report")
}

/// First e-mail address of every contact in the central folder.
fn central_emails(estate: &Estate) -> Vec<String> {
    let tenant = &estate.tenants[0];
    estate
        .sim
        .contacts(
            &tenant.tenant_id,
            &tenant.shared_mailbox_upn,
            Some("All Contacts"),
        )
        .iter()
        .filter_map(|c| c["emailAddresses"][0]["address"].as_str())
        .map(str::to_lowercase)
        .collect()
}

/// An estate whose phase 1 writes a few hundred contacts in many batches, each item slowed down.
async fn slow_estate(seed: u64) -> Estate {
    Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 3,
            contacts_per_user: 80,
            overlap: 0.0,
            seed,
        },
    )
    .await
}

/// Failed before the fix: when the drain's grace ended, the worker closed its channel and returned while the
/// attempt went on writing in the background (graphsim's write count kept rising after `run` returned), so the
/// job was back in the queue, free to run elsewhere, while this attempt still wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_worker_stops_writing_before_its_job_goes_back() {
    // The worker's and lapin's log, shown if this test fails (captured otherwise).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "worker=debug,shared::mq=debug,lapin=debug",
        ))
        .try_init();
    let _broker = BROKER.read().await;
    let estate = slow_estate(71).await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let job = phase1_job(&settings).await;
    // The job must still be writing when the grace ends, however late this test sees its first write on a loaded
    // machine: at 300 ms per request its 240 creates take about 18 s (four at a time), and once writing is seen
    // every further request takes 500 ms. (At 25 ms throughout, the writes took 1.5 s: a poll delayed by load let
    // the job finish inside the 1 s grace and be acknowledged, so it never went back to its queue.)
    estate.sim.set_latency(Duration::from_millis(300));
    let worker = one_at_a_time(&settings, &topology, "drain", Duration::from_secs(1));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    // Making the job created the central folder: a write, not the job's.
    let before_the_job = estate.sim.stats().total_writes();
    publish(&topology, &job).await;
    eventually("the job never started writing", async || {
        estate.sim.stats().total_writes() > before_the_job
    })
    .await;
    estate.sim.set_latency(Duration::from_millis(500));
    shutdown.cancel();
    running.await.expect("worker task").expect("worker stops");
    let when_stopped = estate.sim.stats().total_writes();
    let queue = topology.job_queue(Phase::Phase1);
    // Where the job went instead, should it not come back (this test failed twice in many full runs, cause not
    // yet traced: the counts say whether it was finished, retried or dead-lettered).
    let mut elsewhere = vec![
        topology.reports_queue(),
        topology.dead_letter_queue(Phase::Phase1),
    ];
    elsewhere.extend(
        mq::RETRY_LEVELS
            .iter()
            .map(|level| topology.retry_queue(*level)),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ready(&queue).await != 1 {
        if tokio::time::Instant::now() >= deadline {
            let mut counts = Vec::new();
            for name in &elsewhere {
                counts.push(format!("{name}: {}", ready(name).await));
            }
            panic!(
                "the job did not go back to its queue (writes when stopped: {when_stopped}, now: {}; ready elsewhere: {}; \
                 the job queue as the management API shows it: {}; connections: {})",
                estate.sim.stats().total_writes(),
                counts.join(", "),
                management(&format!("queues/%2F/{queue}")).await,
                management("connections?columns=name,client_properties.connection_name,channels").await,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for several more batches at this latency, had the attempt gone on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        estate.sim.stats().total_writes(),
        when_stopped,
        "the attempt went on writing after the worker stopped and its job went back to the queue"
    );
    assert_eq!(
        ready(&topology.reports_queue()).await,
        0,
        "a report was published: the job finished before the drain, or the stopped attempt went on to the end"
    );
    estate.sim.set_latency(Duration::ZERO);
    support::delete_topology(&topology).await;
}

/// The management API's URL of the AMQP connection named `name`, once the broker lists it.
pub(crate) async fn connection_url(name: &str) -> reqwest::Url {
    let http = reqwest::Client::new();
    let base = std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned());
    let mut found = None;
    eventually(
        &format!("the connection {name} never showed in the management API"),
        async || {
            let Ok(answer) = http
                .get(format!("{base}/api/connections"))
                .basic_auth("guest", Some("guest"))
                .send()
                .await
            else {
                return false;
            };
            let connections: Vec<serde_json::Value> = answer.json().await.unwrap_or_default();
            found = connections
                .iter()
                .find(|c| c["client_properties"]["connection_name"].as_str() == Some(name))
                .and_then(|c| c["name"].as_str())
                .map(str::to_owned);
            found.is_some()
        },
    )
    .await;
    let mut url = reqwest::Url::parse(&format!("{base}/api/connections")).expect("management url");
    url.path_segments_mut()
        .expect("an http url has segments")
        .push(&found.expect("found"));
    url
}

/// Closes a connection through the management API, as a broker or network failure would.
pub(crate) async fn close_connection(url: reqwest::Url) {
    let closed = reqwest::Client::new()
        .delete(url)
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API");
    assert!(
        closed.status().is_success(),
        "closing the connection: {closed:?}"
    );
}

/// A worker of one job slot, named after `what`, started on `topology` until `shutdown`, and `job` published to it;
/// returns once the job started writing, with the worker's task, its connection's address in the management API and
/// its name.
/// Its grace is shorter than the job: a lost connection must not wait for it anyway (the delivery is gone).
async fn writing_on_one_worker(
    estate: &Estate,
    topology: &Topology,
    job: &Job,
    what: &str,
    shutdown: &CancellationToken,
) -> (
    tokio::task::JoinHandle<Result<worker::consumer::StopReason, mq::MqError>>,
    reqwest::Url,
    String,
) {
    let name = format!("{what}-{}", uuid::Uuid::new_v4().simple());
    let worker = one_at_a_time(&estate.settings(), topology, &name, Duration::from_secs(1));
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    let connection = connection_url(&name).await;
    // Making the job created the central folder: a write, not the job's.
    let before_the_job = estate.sim.stats().total_writes();
    publish(topology, job).await;
    eventually("the job never started writing", async || {
        estate.sim.stats().total_writes() > before_the_job
    })
    .await;
    (running, connection, name)
}

/// A lost connection mid-write: the attempt is cancelled (its batch on the wire finishes), the session waits for
/// it before reconnecting, and the redelivered job then completes once, with nobody written twice.
///
/// Note: this does not reliably fail on the code before the fix (there the old attempt usually finished within the
/// grace plus the reconnect delay); `a_drained_worker_stops_writing_before_its_job_goes_back` is the one that
/// does. It did fail on an intermediate version whose connections used lapin's auto-recovery: the recovered
/// connection's consumer held the redelivered job and nobody read it (no report within two minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_connection_stops_the_attempt_before_the_job_runs_again() {
    let _broker = BROKER.read().await;
    let estate = slow_estate(72).await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let job = phase1_job(&settings).await;
    estate.sim.set_latency(Duration::from_millis(50));
    let shutdown = CancellationToken::new();
    let (running, connection, _) =
        writing_on_one_worker(&estate, &topology, &job, "redelivery", &shutdown).await;
    close_connection(connection).await;
    let at_close = central_emails(&estate).len();
    estate.sim.set_latency(Duration::from_millis(5));
    let report = final_report(&topology, &job).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    let emails = central_emails(&estate);
    let unique: BTreeSet<&String> = emails.iter().collect();
    assert_eq!(
        emails.len(),
        unique.len(),
        "people stand twice in the central folder: two attempts wrote at once"
    );
    assert!(
        at_close < emails.len(),
        "the job had finished when the connection was closed; the test proves nothing"
    );
    shutdown.cancel();
    running.await.expect("worker task").expect("worker stops");
    estate.sim.set_latency(Duration::ZERO);
    support::delete_topology(&topology).await;
}

/// Failed before the fix: with the report exchange deleted, every report publish failed on a closed channel, the
/// delivery was handed back and taken again by the same still-"ready" worker, for ever; no report arrived. Now a
/// failed publish ends the session: the worker goes unready, reconnects, declares the topology again, and the
/// re-run's report arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_publish_channel_is_reopened_and_the_report_arrives() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 3,
            contacts_per_user: 3,
            overlap: 0.0,
            seed: 73,
        },
    )
    .await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let job = phase1_job(&settings).await;
    let worker = one_at_a_time(&settings, &topology, "reopen", Duration::from_secs(5));
    let ready_flag = worker.readiness();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    eventually("the worker never got ready", async || {
        ready_flag.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    {
        let connection = support::connect().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_delete(
                topology.reports_exchange().as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .expect("delete the report exchange");
        let _ = mq::close_connection(&connection, "done").await;
    }
    publish_declared(&topology, &job).await;
    let report = final_report(&topology, &job).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    shutdown.cancel();
    running.await.expect("worker task").expect("worker stops");
    support::delete_topology(&topology).await;
}

/// A small estate, a private topology and what a forger needs: a genuine phase-1 job, its sources and the first
/// source's default folder (the victim's).
struct Forgery {
    estate: Estate,
    settings: Settings,
    tenant: graphsim::SeededTenant,
    topology: Topology,
    genuine: Job,
    sources: Vec<Mailbox>,
    victim_folder: String,
}

impl Forgery {
    async fn seed(seed: u64) -> Self {
        let estate = Estate::seed(
            SimConfig::default(),
            EstateParams {
                tenants: 1,
                users_per_tenant: 3,
                contacts_per_user: 4,
                overlap: 0.0,
                seed,
            },
        )
        .await;
        let settings = estate.settings();
        let tenant = estate.tenants[0].clone();
        let genuine = phase1_job(&settings).await;
        let JobKind::Phase1 { sources, .. } = &genuine.kind else {
            unreachable!("a phase-1 job")
        };
        let sources = sources.clone();
        let victim_folder = estate
            .sim
            .default_folder_id(&tenant.tenant_id, &sources[0].upn)
            .expect("the victim's default folder");
        Self {
            estate,
            settings,
            tenant,
            topology: support::private_topology(),
            genuine,
            sources,
            victim_folder,
        }
    }
}

/// Failed before the fix: a phase-1 job naming bob's mailbox and default folder as the "central folder" copied
/// the other users' contacts into bob's own contacts. Now it is dead-lettered as `untrusted_job` and writes
/// nothing; a body that is not a job is dead-lettered as `malformed_job`; the worker goes on with the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_malformed_jobs_are_dead_lettered_and_write_nothing() {
    let _broker = BROKER.read().await;
    let Forgery {
        estate,
        settings,
        tenant,
        topology,
        genuine,
        sources,
        victim_folder,
    } = Forgery::seed(74).await;
    let victim: Mailbox = sources[0].clone();
    let forged = Job::new(
        uuid::Uuid::now_v7(),
        &tenant.tenant_id,
        false,
        JobKind::Phase1 {
            central: CentralFolder {
                mailbox: victim.clone(),
                folder_id: Some(victim_folder),
            },
            sources: sources[1..].to_vec(),
        },
    );
    let before = estate
        .sim
        .contacts(&tenant.tenant_id, &victim.upn, None)
        .len();
    let (stop, worker) = support::spawn_worker(&settings, &topology, "untrusted");
    publish_raw(&topology, Phase::Phase1, b"{\"schema\":1,\"phase\":").await;
    publish(&topology, &forged).await;
    let dead = topology.dead_letter_queue(Phase::Phase1);
    let mut reasons = BTreeSet::new();
    take(&dead, |message| {
        if let Some(reason) = mq::header_str(&message.delivery.properties, REASON_HEADER) {
            reasons.insert(reason);
        }
        reasons.len() == 2
    })
    .await;
    assert_eq!(
        reasons,
        BTreeSet::from(["malformed_job".to_owned(), "untrusted_job".to_owned()])
    );
    assert_eq!(
        estate
            .sim
            .contacts(&tenant.tenant_id, &victim.upn, None)
            .len(),
        before,
        "the forged job wrote into the victim's mailbox"
    );
    // The worker is still there and runs the genuine job.
    publish(&topology, &genuine).await;
    let report = final_report(&topology, &genuine).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    stop.cancel();
    worker.await.expect("worker task");
    support::delete_topology(&topology).await;
}

/// Failed before the fix: the second worker started on one host with the README's command (no
/// `--metrics-addr`) exited 1 with `Address already in use`. Now both run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_on_one_host_with_the_default_metrics_address_all_run() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 1,
            contacts_per_user: 1,
            overlap: 0.0,
            seed: 75,
        },
    )
    .await;
    let topology = support::private_topology();
    let config = estate.config_json().to_string();
    let start = || {
        support::Process::start(
            "contactmirror-worker",
            &[
                "--amqp-url",
                &support::amqp_url(),
                "--queue-prefix",
                topology.prefix(),
            ],
            &[("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config.as_str())],
        )
    };
    let mut first = start();
    let mut second = start();
    for worker in [&mut first, &mut second] {
        eventually("a worker did not start consuming", async || {
            worker.output().contains("consuming")
                || worker.child.try_wait().ok().flatten().is_some()
        })
        .await;
        assert!(
            worker.child.try_wait().expect("status").is_none(),
            "a worker exited: {}",
            worker.output()
        );
    }
    let (status, _) = first.terminate();
    assert!(status.success());
    let (status, _) = second.terminate();
    assert!(status.success());
    support::delete_topology(&topology).await;
}

/// A forged overlapped phase-2 job (issue 13, a fleet): its worker process has not resolved the tenant, so its
/// trust check waits for the end of the phase 1 it names (the shared mailbox is not asked while phase 1 writes it).
/// Meanwhile it copies what that board says into its mailbox; once the check refuses it (its "central folder" is
/// another user's default folder), the copy is deleted again and the job dead-lettered `untrusted_job`. Without the
/// check after the wait it went on to read the victim's contacts as the central folder and copy them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_overlapped_job_checked_after_phase_1_takes_its_early_copy_back() {
    let sent = forged_overlapped_job(Board::OneConfirmed).await;
    assert!(sent.creates > 0, "the forged job sent nothing early");
}

/// The same forged job, its confirmed person claiming one of the mailbox's own contacts as the original it was
/// published from (the person's sync id is that contact's derived one), so the early plan stamps that contact
/// before the job is checked (its check waits for phase 1's end). What a forged job and board can get written
/// that way is bounded: the contact's own identity, on a contact of the mailbox the job names, its data and notes
/// text as they were (`overlap::early_writes` takes no other update). The job is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_overlapped_job_can_stamp_an_original_only_with_its_own_identity() {
    let sent = forged_overlapped_job(Board::ClaimsAnOriginal).await;
    assert_eq!(sent.patches, 1, "the original was not stamped early");
}

/// The same forged job on a board whose creates are all confirmed: phase 1's writes are done, so the job sends
/// nothing early (its early plan would only be a second one held beside phase 1's last step) and is refused once
/// phase 1 ends. Reproduces the 100,000-contact benchmark's peak: before `JobRunner::early_units` declined such
/// units, the job planned early and sent both creates (2 POSTs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overlapped_job_whose_plan_is_all_confirmed_sends_nothing_early() {
    let sent = forged_overlapped_job(Board::AllConfirmed).await;
    assert_eq!(
        sent.creates, 0,
        "copies went early after every create was confirmed"
    );
}

/// The forged board of [`forged_overlapped_job`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Board {
    /// Two created persons, the first confirmed.
    OneConfirmed,
    /// Both confirmed.
    AllConfirmed,
    /// As `OneConfirmed`, the first person's sync id derived from one of the receiving mailbox's own contacts.
    ClaimsAnOriginal,
}

/// What a forged job wrote into its mailbox (answered 2xx).
struct Sent {
    creates: usize,
    patches: usize,
}

/// Runs a forged overlapped phase-2 job against a forged `board`, ends phase 1, and checks it is dead-lettered
/// `untrusted_job` with its mailbox as it was; returns what it wrote into that mailbox.
async fn forged_overlapped_job(board: Board) -> Sent {
    let confirm_all = board == Board::AllConfirmed;
    use worker::overlap::relay::Entry;
    use worker::overlap::Ended;

    let _broker = BROKER.read().await;
    let Forgery {
        estate,
        settings,
        tenant,
        topology,
        sources,
        victim_folder,
        ..
    } = Forgery::seed(75).await;
    let (victim, receiver) = (sources[0].clone(), sources[1].clone());
    let before = estate.sim.contacts(&tenant.tenant_id, &receiver.upn, None);

    // A board for a run of the forger's: two persons created, one of them confirmed (a plan whose creates are all
    // confirmed sends nothing early: phase 1's writes are done).
    let run_id = uuid::Uuid::now_v7();
    let attempt = uuid::Uuid::now_v7();
    let forged_as = |n: usize, name: &str, person: String| {
        let contact: shared::model::Contact = serde_json::from_value(serde_json::json!({
            "id": format!("forged-central-item-{n}"),
            "lastModified": null,
            "fields": { "displayName": name },
            "personalNotes": null,
            "categories": [],
            "syncIdProperty": person,
            "photoHash": null,
            "photoSource": null,
            "hasPicture": false,
            "changeKey": null
        }))
        .expect("a contact");
        (
            contact,
            shared::sync::SyncId::parse(&person).expect("a sync id"),
        )
    };
    let forged_person = |n: usize, name: &str| {
        let person = uuid::Uuid::new_v4().to_string();
        forged_as(n, name, person)
    };
    let (contact, sync_id) = match board {
        Board::ClaimsAnOriginal => {
            let original = &before[0];
            let id = original["id"].as_str().expect("an id");
            let person = shared::sync::SyncId::derive(&tenant.tenant_id, &receiver.id, id);
            let name = original["displayName"].as_str().unwrap_or_default();
            forged_as(1, name, person.to_string())
        }
        _ => forged_person(1, "Forged Person"),
    };
    let (unconfirmed_contact, unconfirmed) = forged_person(2, "Forged Person Unconfirmed");
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    mq::declare(&channel, &topology).await.expect("declare");
    mq::board::declare_board(&channel, &topology, run_id, &tenant.tenant_id)
        .await
        .expect("board");
    let publisher = Publisher::open(&connection, topology.clone())
        .await
        .expect("publisher");
    let append = |entry: Entry| {
        let publisher = publisher.clone();
        let tenant_id = tenant.tenant_id.clone();
        async move {
            let body = serde_json::to_vec(&entry).expect("an entry");
            publisher
                .publish_board(run_id, &tenant_id, body)
                .await
                .expect("appended");
        }
    };
    append(Entry::FolderPart {
        attempt,
        contacts: vec![contact, unconfirmed_contact],
    })
    .await;
    append(Entry::Planned {
        attempt,
        contacts: 2,
        created: [sync_id.clone(), unconfirmed.clone()].into(),
    })
    .await;
    let confirmed = if confirm_all {
        vec![sync_id, unconfirmed.clone()]
    } else {
        vec![sync_id]
    };
    append(Entry::Confirmed {
        attempt,
        persons: confirmed,
    })
    .await;

    let mut forged = Job::new(
        run_id,
        &tenant.tenant_id,
        false,
        JobKind::Phase2 {
            central: Some(CentralFolder {
                mailbox: victim.clone(),
                folder_id: Some(victim_folder),
            }),
            mailbox: receiver.clone(),
        },
    );
    forged.overlapped = true;
    // With every create confirmed, the job gets its planning units only once its board shows them all (the test
    // holds them meanwhile), as in a large run where phase 1's writes gave them back. (Its process's copy of the
    // board is held within the same budget: with none free it keeps none, and it lets one go once every create is
    // confirmed; either way nothing may go early.)
    let budget = worker::planning_budget::PlanningBudget::new(10);
    let held = if confirm_all {
        Some(budget.take(10).await)
    } else {
        None
    };
    let (stop, worker) = support::spawn_worker_of(support::worker_with_budget(
        &settings,
        &topology,
        "forged-overlap",
        4,
        budget,
    ));
    // Only the job's own requests are counted.
    estate.sim.reset_stats();
    publish_declared(&topology, &forged).await;
    let names = |estate: &Estate| -> Vec<String> {
        estate
            .sim
            .contacts(&tenant.tenant_id, &receiver.upn, None)
            .iter()
            .filter_map(|c| c["displayName"].as_str().map(String::from))
            .collect()
    };
    if let Some(held) = held {
        // Time for the job to read its whole board, then for it to copy, were it to.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(held);
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else if board == Board::ClaimsAnOriginal {
        let stamped = || {
            estate
                .sim
                .contacts(&tenant.tenant_id, &receiver.upn, None)
                .iter()
                .any(|c| support::sync_id(c).is_some())
        };
        eventually("the forged job stamped nothing early", async || stamped()).await;
    } else {
        eventually("the forged job copied nothing early", async || {
            names(&estate).iter().any(|n| n == "Forged Person")
        })
        .await;
    }
    append(Entry::Ended {
        ended: Ended::Written { in_line_with: None },
    })
    .await;
    let dead = topology.dead_letter_queue(Phase::Phase2);
    let mut reason = None;
    take(&dead, |message| {
        reason = mq::header_str(&message.delivery.properties, REASON_HEADER);
        reason.is_some()
    })
    .await;
    assert_eq!(reason.as_deref(), Some("untrusted_job"));
    let after = estate.sim.contacts(&tenant.tenant_id, &receiver.upn, None);
    assert_eq!(
        after.len(),
        before.len(),
        "the early copy stayed, or the victim's contacts were copied: {:?}",
        names(&estate)
    );
    // Every contact holds its data as before; a sync id on one is its own derived id, and its notes keep their
    // text with the stamp lines added.
    let data = |c: &serde_json::Value| {
        (
            c["id"].clone(),
            c["displayName"].clone(),
            c["emailAddresses"].clone(),
        )
    };
    let mut was: Vec<_> = before.iter().map(data).collect();
    let mut is: Vec<_> = after.iter().map(data).collect();
    was.sort_by_key(|d| d.0.to_string());
    is.sort_by_key(|d| d.0.to_string());
    assert_eq!(is, was, "a contact's data changed");
    for contact in &after {
        let id = contact["id"].as_str().unwrap_or_default();
        if let Some(sync) = support::sync_id(contact) {
            let own = shared::sync::SyncId::derive(&tenant.tenant_id, &receiver.id, id);
            assert_eq!(
                sync,
                own.to_string(),
                "{id} was stamped with another identity"
            );
            let notes_before = before
                .iter()
                .find(|c| c["id"] == contact["id"])
                .and_then(|c| c["personalNotes"].as_str())
                .unwrap_or_default();
            let notes = contact["personalNotes"].as_str().unwrap_or_default();
            assert!(
                notes.contains(notes_before.trim()),
                "{id}'s notes lost their text: {notes:?}"
            );
        }
    }
    let receiver_upn = receiver.upn.to_lowercase();
    let log = estate.sim.request_log();
    let answered = |method: &str| {
        log.iter()
            .filter(|r| {
                r.method == method
                    && (200..300).contains(&r.status)
                    && r.mailbox.as_deref() == Some(receiver_upn.as_str())
                    && r.url.contains("/contacts")
            })
            .count()
    };
    let sent = Sent {
        creates: answered("POST"),
        patches: answered("PATCH"),
    };
    stop.cancel();
    worker.await.expect("worker task");
    let stream = topology.board_stream(run_id, &tenant.tenant_id);
    let _ = mq::board::delete_board(&channel, &stream).await;
    let _ = mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
    sent
}

/// The job comes back to another worker while the first one's batch still waits on Graph's `Retry-After`: the first
/// attempt is cancelled, but a batch already started is let finish (never half-sent), so it writes after the
/// second attempt read the folder. Each attempt holds its mailbox's write lease on the broker until its last batch
/// is answered (`worker::leases`), so the second reads only once the first is done, and nobody stands twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_taken_by_another_worker_waits_for_the_first_attempts_last_batch() {
    let _broker = BROKER.read().await;
    let estate = slow_estate(74).await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let job = phase1_job(&settings).await;
    estate.sim.set_latency(Duration::from_millis(20));
    let shutdown = CancellationToken::new();
    let (first_running, connection, _) =
        writing_on_one_worker(&estate, &topology, &job, "first", &shutdown).await;
    // The next batch of creates is answered 429 with a wait of 3 s: the first attempt's batch waits in its client.
    for _ in 0..20 {
        estate.sim.push_fault(graphsim::ScriptedFault {
            status: 429,
            retry_after: Some("3".into()),
            commit: false,
            path_contains: Some("/contactFolders/".into()),
            method: Some("POST".into()),
        });
    }
    eventually("no batch met the 429", async || {
        estate
            .sim
            .request_log()
            .iter()
            .any(|e| e.method == "POST" && e.status == 429)
    })
    .await;
    // A second worker, idle, takes the job the moment the first one's connection is gone.
    let second = one_at_a_time(&settings, &topology, "second", Duration::from_secs(1));
    let second_running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { second.run(shutdown).await }
    });
    close_connection(connection).await;
    estate.sim.set_latency(Duration::from_millis(2));
    let report = final_report(&topology, &job).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    let emails = central_emails(&estate);
    let unique: BTreeSet<&String> = emails.iter().collect();
    assert_eq!(
        emails.len(),
        unique.len(),
        "people stand twice in the central folder: two attempts wrote at once"
    );
    shutdown.cancel();
    for running in [first_running, second_running] {
        running.await.expect("worker task").expect("worker stops");
    }
    estate.sim.set_latency(Duration::ZERO);
    support::delete_topology(&topology).await;
}

/// The worker's lease connection drops while its job connection stays up: the mailbox's write lease is gone, so
/// another attempt on the mailbox could read now. The attempt writing starts no batch more (the one on the wire
/// finishes) and the job runs again, completing once with nobody written twice. Failed before the fix: the first
/// attempt wrote on to its end without the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempt_whose_write_lease_ends_starts_no_batch_more() {
    let _broker = BROKER.read().await;
    let estate = slow_estate(75).await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let job = phase1_job(&settings).await;
    // Slow enough that the job still writes once the management API lists its new lease connection (seconds).
    estate.sim.set_latency(Duration::from_millis(250));
    let shutdown = CancellationToken::new();
    let (running, _, name) =
        writing_on_one_worker(&estate, &topology, &job, "lease-lost", &shutdown).await;
    close_connection(connection_url(&format!("{name} central leases")).await).await;
    let at_close = central_emails(&estate).len();
    estate.sim.set_latency(Duration::from_millis(5));
    let report = final_report(&topology, &job).await;
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert!(
        report.attempt > 1,
        "the attempt wrote on without its mailbox's write lease"
    );
    let emails = central_emails(&estate);
    let unique: BTreeSet<&String> = emails.iter().collect();
    assert_eq!(
        emails.len(),
        unique.len(),
        "people stand twice in the central folder"
    );
    assert!(
        at_close < emails.len(),
        "the job had finished when the lease ended; the test proves nothing"
    );
    shutdown.cancel();
    running.await.expect("worker task").expect("worker stops");
    estate.sim.set_latency(Duration::ZERO);
    support::delete_topology(&topology).await;
}
