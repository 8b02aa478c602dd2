//! What goes wrong in real fleets: unreachable mailboxes, killed workers, a restarting broker, Graph faults.
//! Each ends in the same mailboxes a clean run leaves, with failures named and nothing secret leaked.

use std::time::Duration;

use graphsim::{EstateParams, RetryAfter, SimConfig};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use shared::message::{FailureReason, Phase};
use shared::mq::{self, Topology};

use crate::fleet::{broker_args, embedded_args, run, snapshot};
use crate::support::{self, Estate, Process, BROKER};

/// Estates of 16 users include one without an Exchange mailbox and one blocked by an access policy.
fn estate_params(seed: u64) -> EstateParams {
    EstateParams {
        tenants: 1,
        users_per_tenant: 16,
        contacts_per_user: 6,
        overlap: 0.3,
        seed,
    }
}

/// A queue that receives a copy of every message routed anywhere in `topology`, to inspect afterwards.
async fn tap(connection: &lapin::Connection, topology: &Topology) -> String {
    let channel = connection.create_channel().await.expect("channel");
    mq::declare(&channel, topology).await.expect("declare");
    let name = format!("{}.tap", topology.prefix());
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("tap queue");
    for queue in mq::topology::queue_arguments(topology) {
        for binding in queue.bindings {
            channel
                .queue_bind(
                    name.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("tap binding");
        }
    }
    name
}

/// Every message of `queue` (body and headers as text), removed from it.
async fn drain(connection: &lapin::Connection, queue: &str) -> Vec<(String, String)> {
    let channel = connection.create_channel().await.expect("channel");
    let mut all = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
    {
        let headers = render_headers(&message.delivery.properties);
        all.push((
            String::from_utf8_lossy(&message.delivery.data).into_owned(),
            headers,
        ));
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    all
}

/// Headers as `name=value` lines, string values as text (lapin's `Debug` shows them as bytes).
fn render_headers(properties: &lapin::BasicProperties) -> String {
    let Some(headers) = properties.headers() else {
        return String::new();
    };
    headers
        .inner()
        .iter()
        .map(|(name, value)| match value {
            AMQPValue::LongString(text) => {
                format!("{name}={}\n", String::from_utf8_lossy(text.as_bytes()))
            }
            other => format!("{name}={other:?}\n"),
        })
        .collect()
}

fn assert_no_secret(secret: &str, place: &str, text: &str) {
    assert!(
        !text.contains(secret),
        "the client secret appears in {place}"
    );
}

/// A fleet run over an estate with a mailbox-less user and a policy-blocked one: only those two fail, each with
/// its reason, in the summary and in the phase-2 dead-letter queue (the producer puts them there: phase 1 found
/// them unreadable, so their jobs are never sent), and no secret crosses the broker or reaches a log or report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_mailboxes_fail_alone_are_dead_lettered_and_nothing_leaks() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(SimConfig::default(), estate_params(21)).await;
    let tenant = estate.tenants[0].clone();
    let config = estate.config_json();
    let topology = support::private_topology();
    let connection = support::connect().await;
    let tap = tap(&connection, &topology).await;

    let workers = [
        Process::worker(&config, &topology),
        Process::worker(&config, &topology),
    ];
    let report_path =
        std::env::temp_dir().join(format!("cm-report-{}.json", uuid::Uuid::new_v4().simple()));
    let config_text = config.to_string();
    let url = support::amqp_url();
    let report_arg = report_path.to_string_lossy().into_owned();
    let producer = tokio::task::spawn_blocking(move || {
        let mut process = Process::start(
            "contactmirror-producer",
            &[
                "run",
                "--amqp-url",
                &url,
                "--queue-prefix",
                topology.prefix(),
                "--report",
                &report_arg,
                "--idle-timeout-secs",
                "120",
            ],
            &[
                ("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config_text.as_str()),
                ("RUST_LOG", "debug"),
            ],
        );
        let status = process.child.wait().expect("producer exits");
        (status, process.output(), topology)
    });
    let (status, producer_output, topology) =
        tokio::time::timeout(Duration::from_secs(240), producer)
            .await
            .expect("the producer finishes")
            .expect("producer task");

    let mut worker_output = String::new();
    for worker in workers {
        let (status, output) = worker.terminate();
        assert!(
            status.success(),
            "a worker did not stop cleanly on SIGTERM: {status}\n{output}"
        );
        worker_output.push_str(&output);
    }

    assert_eq!(
        status.code(),
        Some(1),
        "exit status 1 when some mailbox failed:\n{producer_output}"
    );
    let report_text = std::fs::read_to_string(&report_path).expect("the JSON report was written");
    let report: serde_json::Value = serde_json::from_str(&report_text).expect("report is JSON");
    let mailboxes = report["tenants"][0]["mailboxes"]
        .as_array()
        .expect("mailbox outcomes");
    let failed: Vec<(String, String)> = mailboxes
        .iter()
        .filter(|m| m["outcome"] == "failed" && m["phase"] == "phase2")
        .map(|m| {
            (
                m["mailbox"].as_str().unwrap_or_default().to_owned(),
                m["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut reasons: Vec<&str> = failed.iter().map(|(_, r)| r.as_str()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["access_denied", "no_mailbox"],
        "report: {report_text}"
    );
    for target in &tenant.mirror_target_upns {
        assert!(
            mailboxes.iter().any(|m| m["mailbox"]
                .as_str()
                .is_some_and(|u| u.eq_ignore_ascii_case(target))
                && m["phase"] == "phase2"
                && m["outcome"] == "succeeded"),
            "{target} did not complete: {report_text}"
        );
    }
    assert!(
        producer_output.contains(&failed[0].0),
        "the summary names the failed mailbox {}:\n{producer_output}",
        failed[0].0
    );

    // Phase 1 found both unreadable; the producer failed their phase-2 jobs without sending them (their one
    // request is phase 1's read) and dead-lettered them as a worker would.
    let stats = estate.sim.stats();
    for (mailbox, reason) in &failed {
        assert_eq!(
            stats.mailbox(mailbox).requests,
            1,
            "{mailbox} ({reason}) was sent more than phase 1's read"
        );
    }

    // Both jobs wait in the phase-2 dead-letter queue with their reason.
    let dead = drain(&connection, &topology.dead_letter_queue(Phase::Phase2)).await;
    assert_eq!(dead.len(), 2, "dead letters: {dead:?}");
    for (mailbox, reason) in &failed {
        assert!(
            dead.iter()
                .any(|(body, headers)| body.contains(mailbox.as_str())
                    && headers.contains(reason.as_str())),
            "no dead letter for {mailbox} ({reason}): {dead:?}"
        );
    }

    // No secret in any message that crossed the broker, in any log line, or in the report.
    let tapped = drain(&connection, &tap).await;
    assert!(
        tapped.len() > tenant.mirror_target_upns.len(),
        "the tap saw {} messages",
        tapped.len()
    );
    for (body, headers) in tapped.iter().chain(&dead) {
        assert_no_secret(&tenant.client_secret, "a queue message", body);
        assert_no_secret(&tenant.client_secret, "message headers", headers);
    }
    assert!(
        worker_output.lines().count() > 10,
        "the workers logged almost nothing; the secret check would prove nothing:\n{worker_output}"
    );
    assert_no_secret(
        &tenant.client_secret,
        "the producer's log",
        &producer_output,
    );
    assert_no_secret(&tenant.client_secret, "a worker's log", &worker_output);
    assert_no_secret(&tenant.client_secret, "the report", &report_text);
    assert!(
        !worker_output.contains("Bearer ey") && !worker_output.contains("access_token"),
        "a token appears in a worker's log"
    );
    let _ = mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
    let _ = std::fs::remove_file(report_path);
}

/// The final state of a clean embedded run of `params`, to compare disrupted runs with.
pub(crate) async fn reference_state(params: EstateParams) -> crate::fleet::Snapshot {
    let estate = Estate::seed(SimConfig::default(), params).await;
    let report = run(&estate.settings(), &embedded_args()).await;
    assert!(
        report.tenants.iter().all(|t| t.error.is_none()),
        "{}",
        report.human()
    );
    snapshot(&estate, "All Contacts")
}

/// Waits until graphsim has seen at least `writes` writes (the run is well under way).
async fn wait_for_writes(estate: &Estate, writes: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while estate.sim.stats().total_writes() < writes {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_run_changes_nothing_in_the_end() {
    let _broker = BROKER.read().await;
    let params = EstateParams {
        users_per_tenant: 24,
        ..estate_params(31)
    };
    let expected = reference_state(params.clone()).await;
    let estate = Estate::seed(
        SimConfig {
            latency: Duration::from_millis(15),
            ..SimConfig::default()
        },
        params,
    )
    .await;
    let config = estate.config_json();
    let topology = support::private_topology();
    let victim = Process::worker(&config, &topology);
    let survivor = Process::worker(&config, &topology);
    let settings = estate.settings();
    let args = broker_args(&topology);
    let producer = tokio::spawn(async move { run(&settings, &args).await });

    wait_for_writes(&estate, 40).await;
    victim.kill();
    let replacement = Process::worker(&config, &topology);
    let report = tokio::time::timeout(Duration::from_secs(300), producer)
        .await
        .expect("the run finishes")
        .expect("producer task");
    for worker in [survivor, replacement] {
        let (status, output) = worker.terminate();
        assert!(status.success(), "{output}");
    }
    support::delete_topology(&topology).await;
    assert!(
        report.tenants.iter().all(|t| t.error.is_none()),
        "{}",
        report.human()
    );
    assert_eq!(
        snapshot(&estate, "All Contacts"),
        expected,
        "a killed worker changed the outcome"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_restart_mid_run_changes_nothing_in_the_end() {
    // Restarting RabbitMQ disturbs every broker test: run alone.
    let _broker = BROKER.write().await;
    let params = EstateParams {
        users_per_tenant: 24,
        ..estate_params(41)
    };
    let expected = reference_state(params.clone()).await;
    let estate = Estate::seed(
        SimConfig {
            latency: Duration::from_millis(15),
            ..SimConfig::default()
        },
        params,
    )
    .await;
    let config = estate.config_json();
    let topology = support::private_topology();
    let workers = [
        Process::worker(&config, &topology),
        Process::worker(&config, &topology),
    ];
    let settings = estate.settings();
    let args = broker_args(&topology);
    let producer = tokio::spawn(async move { run(&settings, &args).await });

    wait_for_writes(&estate, 40).await;
    restart_rabbitmq().await;
    let report = tokio::time::timeout(Duration::from_secs(300), producer)
        .await
        .expect("the run finishes")
        .expect("producer task");
    // Every report arrived: none given up on.
    let lost: Vec<_> = report
        .tenants
        .iter()
        .flat_map(|t| &t.mailboxes)
        .filter(|m| m.reason == Some(FailureReason::NoReport))
        .collect();
    assert!(lost.is_empty(), "reports lost:\n{}", report.human());
    // Exactly the consumers the two live workers hold (one per phase queue each), no recovered leftovers of the
    // connections the restart broke, and the run's own report queue gone with the run.
    assert_consumers_settle(&topology, 2).await;
    for worker in workers {
        let (status, output) = worker.terminate();
        assert!(status.success(), "{output}");
    }
    support::delete_topology(&topology).await;
    assert!(
        report.tenants.iter().all(|t| t.error.is_none()),
        "{}",
        report.human()
    );
    assert_eq!(
        snapshot(&estate, "All Contacts"),
        expected,
        "a broker restart changed the outcome"
    );
}

/// Waits (bounded: the management API samples its statistics) until every queue of `topology` shows the
/// consumers of `workers` live workers and nothing else, then asserts it.
async fn assert_consumers_settle(topology: &Topology, workers: u64) {
    let management =
        producer::ops::management::Management::new(&support::amqp_url(), None).expect("management");
    let expected = |name: &str| {
        if Phase::ALL
            .iter()
            .any(|p| topology.lane_queues(*p).iter().any(|lane| lane == name))
        {
            workers
        } else {
            0
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Right after a restart the management listener may not answer yet.
        let queues = match management.queues().await {
            Ok(queues) => queues,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "management API: {error:#}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let ours: Vec<_> = queues
            .values()
            .filter(|q| q.name.starts_with(&format!("{}.", topology.prefix())))
            .collect();
        let wrong: Vec<_> = ours
            .iter()
            .filter(|q| q.consumers != Some(expected(&q.name)))
            .map(|q| (q.name.clone(), q.consumers))
            .collect();
        let leftover: Vec<_> = ours
            .iter()
            .filter(|q| {
                q.name
                    .starts_with(&format!("{}.", topology.reports_queue()))
            })
            .map(|q| q.name.clone())
            .collect();
        if wrong.is_empty() && leftover.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unexpected consumers {wrong:?} or leftover run queues {leftover:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Stops and starts the RabbitMQ application (every connection drops; durable queues survive).
async fn restart_rabbitmq() {
    tokio::task::spawn_blocking(|| {
        for args in [
            &["stop_app"][..],
            &["start_app"][..],
            &["await_startup", "--timeout", "60"][..],
        ] {
            let status = std::process::Command::new("rabbitmqctl")
                .args(args)
                .status()
                .expect("rabbitmqctl");
            assert!(status.success(), "rabbitmqctl {args:?} failed");
        }
    })
    .await
    .expect("restart task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graph_throttling_and_server_errors_change_timing_not_the_result() {
    let params = EstateParams {
        users_per_tenant: 10,
        contacts_per_user: 4,
        ..estate_params(51)
    };
    let expected = reference_state(params.clone()).await;
    let estate = Estate::seed(
        SimConfig {
            faults: support::devproxy_faults(RetryAfter::Integer(1)),
            ..SimConfig::default()
        },
        params,
    )
    .await;
    let report = run(&estate.settings(), &embedded_args()).await;
    let stats = estate.sim.stats();
    assert!(
        stats.injected_faults > 10,
        "too few faults injected: {stats:?}"
    );
    assert!(stats.throttled > 0, "no 429 injected: {stats:?}");
    assert!(
        report.tenants.iter().all(|t| t.error.is_none()),
        "{}",
        report.human()
    );
    let refused: u64 = report
        .tenants
        .iter()
        .flat_map(|t| t.phases.values())
        .map(|c| c.failed)
        .sum();
    assert_eq!(refused, 0, "faults made writes fail:\n{}", report.human());
    assert_eq!(
        snapshot(&estate, "All Contacts"),
        expected,
        "faults changed the outcome"
    );
}

/// An owner edits a contact while a run's update of it waits to be sent (here: its first `PATCH` answered 503
/// with `Retry-After: 1`). The update carries the change key read (`If-Match`), so Graph answers the retry 412;
/// the job reads the mailbox again and plans with the edit instead of overwriting it (fields are written whole,
/// so the overwrite cleared the number the owner had just added, and the feed then took the changed contact for
/// the job's own write).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owners_edit_made_while_the_runs_update_waits_is_not_overwritten() {
    let (estate, settings) = synced_small_estate(23).await;
    let tenant = estate.tenants[0].clone();
    let (tid, shared) = (tenant.tenant_id.clone(), tenant.shared_mailbox_upn.clone());
    // An administrator retitles every person: each copy and original gets an update.
    retitle_all(&estate, &shared, Some("All Contacts"));
    // The first updates of users' contacts are refused once, to be sent again a second later.
    hold_up_patches(&estate, 5, "/contacts/");
    let number = "+1 555 0100";
    let edit = async {
        // The first update refused: its contact, edited by its owner before the update is sent again.
        let (mailbox, id) = loop {
            let refused = estate.sim.request_log().into_iter().find(|e| {
                e.method == "PATCH" && e.status == 503 && !e.url.contains("/contactFolders/")
            });
            if let Some(entry) = refused {
                let id = support::contact_id_in(&entry.url);
                break (entry.mailbox.expect("a mailbox"), id);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        estate
            .sim
            .update_contact(
                &tid,
                &mailbox,
                &id,
                serde_json::json!({"mobilePhone": number}),
            )
            .expect("the owner's edit");
        (mailbox, id)
    };
    let args = embedded_args();
    let (report, (mailbox, id)) = tokio::join!(run(&settings, &args), edit);
    assert!(report.succeeded(), "{}", report.human());
    assert_edit_kept_after_412(&estate, &mailbox, None, &id, number);
}

/// A tenant of four users with six contacts each, none shared, synced once.
async fn synced_small_estate(seed: u64) -> (Estate, shared::config::Settings) {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 4,
            contacts_per_user: 6,
            overlap: 0.0,
            seed,
        },
    )
    .await;
    let settings = estate.settings();
    assert!(run(&settings, &embedded_args()).await.succeeded());
    (estate, settings)
}

/// Every contact of `mailbox`'s `folder` retitled as its owner would (outside the app's requests), so the next run
/// updates each person.
fn retitle_all(estate: &Estate, mailbox: &str, folder: Option<&str>) {
    let tid = &estate.tenants[0].tenant_id;
    for contact in estate.sim.contacts(tid, mailbox, folder) {
        let id = contact["id"].as_str().expect("id");
        let retitled = serde_json::json!({"jobTitle": "Retitled"});
        estate
            .sim
            .update_contact(tid, mailbox, id, retitled)
            .expect("the edit");
    }
}

/// The next `n` PATCHes to a path holding `path` are refused with 503 and `Retry-After: 1`: each update waits a
/// second before it is sent again.
fn hold_up_patches(estate: &Estate, n: usize, path: &str) {
    for _ in 0..n {
        estate.sim.push_fault(graphsim::ScriptedFault {
            status: 503,
            retry_after: Some("1".into()),
            commit: false,
            path_contains: Some(path.into()),
            method: Some("PATCH".into()),
        });
    }
}

/// The contact `id` in `mailbox`'s `folder` still holds the `mobilePhone` an edit gave it, and an update met that
/// edit (412): else the test shows nothing.
fn assert_edit_kept_after_412(
    estate: &Estate,
    mailbox: &str,
    folder: Option<&str>,
    id: &str,
    number: &str,
) {
    let edited = estate
        .sim
        .contacts(&estate.tenants[0].tenant_id, mailbox, folder)
        .into_iter()
        .find(|c| c["id"] == id)
        .expect("the edited contact");
    assert_eq!(
        edited["mobilePhone"], number,
        "the edit was overwritten: {edited:#}"
    );
    let refused_again = estate
        .sim
        .request_log()
        .iter()
        .filter(|e| e.method == "PATCH" && e.status == 412)
        .count();
    assert!(
        refused_again > 0,
        "no update met the edit: the test shows nothing"
    );
}

/// An administrator edits a person in the central folder while phase 1's update of it waits to be sent (its first
/// `PATCH` answered 503 with `Retry-After: 1`). Failed before the fix: phase 1's updates carried no `If-Match`, so
/// the source's older edit was written over the administrator's and sent to every mailbox. Now the retry meets 412,
/// the job reads the folder again, and the administrator's edit, the newest, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edit_in_the_central_folder_made_while_phase_1s_update_waits_is_not_overwritten() {
    let (estate, settings) = synced_small_estate(29).await;
    let tenant = estate.tenants[0].clone();
    let (tid, shared) = (tenant.tenant_id.clone(), tenant.shared_mailbox_upn.clone());
    // A user retitles their own contacts: phase 1 updates their persons in the central folder.
    let owner = tenant.mirror_target_upns[0].clone();
    retitle_all(&estate, &owner, None);
    // The first updates of the central folder are refused once, to be sent again a second later.
    hold_up_patches(&estate, 3, "/contactFolders/");
    let number = "+1 555 0199";
    let edit = async {
        // The first central update refused: its person, edited by an administrator before it is sent again.
        let id = loop {
            let refused = estate.sim.request_log().into_iter().find(|e| {
                e.method == "PATCH" && e.status == 503 && e.url.contains("/contactFolders/")
            });
            if let Some(entry) = refused {
                let id = support::contact_id_in(&entry.url);
                break id;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        estate
            .sim
            .update_contact(
                &tid,
                &shared,
                &id,
                serde_json::json!({"mobilePhone": number}),
            )
            .expect("the administrator's edit");
        id
    };
    let args = embedded_args();
    let (report, id) = tokio::join!(run(&settings, &args), edit);
    assert!(report.succeeded(), "{}", report.human());
    assert_edit_kept_after_412(&estate, &shared, Some("All Contacts"), &id, number);
}

/// Graph refuses two of phase 1's creates for good (400). Failed before the fix: the report counted them as created
/// and as failed, so "created" said more than the central folder held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_write_is_counted_as_failed_not_also_as_done() {
    let estate = Estate::seed(SimConfig::default(), estate_params(53)).await;
    for _ in 0..2 {
        estate.sim.push_fault(graphsim::ScriptedFault {
            status: 400,
            retry_after: None,
            commit: false,
            path_contains: Some("/contactFolders/".into()),
            method: Some("POST".into()),
        });
    }
    let report = run(&estate.settings(), &embedded_args()).await;
    let phase1 = &report.tenants[0].phases[&Phase::Phase1];
    assert_eq!(phase1.failed, 2, "{}", report.human());
    let tenant = &estate.tenants[0];
    let central = estate
        .sim
        .contacts(
            &tenant.tenant_id,
            &tenant.shared_mailbox_upn,
            Some("All Contacts"),
        )
        .len() as u64;
    assert_eq!(
        phase1.created,
        central,
        "created counts writes Graph refused:\n{}",
        report.human()
    );
}

/// A worker whose own configuration still says DryRun (not restarted since the tenant was switched on) runs a real
/// run's jobs dry. Failed before the fix: those jobs reported their feeds and the producer kept them, so the next
/// run, with the worker restarted, found every mailbox in line and wrote nothing: an empty central folder, run
/// after run, reported as success.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_a_worker_ran_dry_are_not_kept_as_done() {
    let _broker = BROKER.read().await;
    let params = EstateParams {
        users_per_tenant: 6,
        contacts_per_user: 3,
        ..estate_params(57)
    };
    let expected = reference_state(params.clone()).await;
    let estate = Estate::seed(SimConfig::default(), params).await;
    let settings = estate.settings();
    let mut dry = settings.clone();
    dry.force_dry_run();
    let topology = support::private_topology();
    let state = support::scratch_dir("forced-dry");
    let args = producer::cli::RunArgs {
        state_dir: Some(state.clone()),
        ..broker_args(&topology)
    };
    let worker = support::spawn_worker(&dry, &topology, "still-dry");
    let first = run(&settings, &args).await;
    support::stop_workers(vec![worker]).await;
    let warnings = &first.tenants[0].warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("ran this tenant's jobs dry")),
        "the operator was not told: {warnings:?}"
    );
    assert!(
        snapshot(&estate, "All Contacts") != expected,
        "the dry worker wrote: the test shows nothing"
    );
    let worker = support::spawn_worker(&settings, &topology, "restarted");
    let second = run(&settings, &args).await;
    support::stop_workers(vec![worker]).await;
    assert!(second.succeeded(), "{}", second.human());
    assert_eq!(
        snapshot(&estate, "All Contacts"),
        expected,
        "the run after the dry one did not write what it only planned"
    );
    support::delete_topology(&topology).await;
    let _ = std::fs::remove_dir_all(state);
}

/// An embedded run's job that writes for longer than `--idle-timeout-secs` (a large tenant's phase 1 in Graph's
/// windows) is waited for. Failed before the fix: the run gave up on every job as lost ("check the dead-letter
/// queues", which one process has none of), cut their attempts off, and exited 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_job_longer_than_the_idle_timeout_is_waited_for() {
    let params = EstateParams {
        users_per_tenant: 6,
        contacts_per_user: 6,
        ..estate_params(59)
    };
    let expected = reference_state(params.clone()).await;
    let estate = Estate::seed(SimConfig::default(), params).await;
    estate.sim.set_latency(Duration::from_millis(400));
    let args = producer::cli::RunArgs {
        idle_timeout_secs: 1,
        ..embedded_args()
    };
    let started = std::time::Instant::now();
    let report = run(&estate.settings(), &args).await;
    estate.sim.set_latency(Duration::ZERO);
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "the run was too quick to show anything"
    );
    assert!(report.succeeded(), "{}", report.human());
    assert_eq!(snapshot(&estate, "All Contacts"), expected);
}
