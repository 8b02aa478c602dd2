//! Issue 12, per-tenant isolation and lifecycle: one invalid tenant entry fails alone, any source saying dry run
//! wins, `UpdateExisting: false` never updates, a mailbox-less user is not applicable after the first run that saw
//! it, the dead-letter queues' retention policy, and the demo ends with exit status 0.

use std::collections::BTreeSet;
use std::time::Duration;

use graphsim::{EstateParams, SeededTenant, SimConfig};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use producer::cli::RunArgs;
use producer::summary::{RunReport, NOT_APPLICABLE};
use serde_json::{json, Value};
use shared::config::Settings;
use shared::message::{FailureReason, Phase};
use shared::mq::topology::dead_letter_policy;

use crate::fleet::{broker_args, embedded_args, run};
use crate::support::{self, Estate, Process, BROKER};

fn estate_params(tenants: usize, users: usize) -> EstateParams {
    EstateParams {
        tenants,
        users_per_tenant: users,
        contacts_per_user: 3,
        overlap: 0.3,
        seed: 12,
    }
}

/// One tenant's entry, narrowed to the users the mirror can reach (so a clean run succeeds).
fn entry(estate: &Estate, tenant: &SeededTenant) -> Value {
    json!({
        "TenantId": tenant.tenant_id,
        "ClientId": tenant.client_id,
        "ClientSecret": tenant.client_secret,
        "GlobalAddressBookUserId": tenant.shared_mailbox_upn,
        "AuthorityHost": estate.sim.authority_url(),
        "GraphEndpoint": estate.sim.graph_url(),
        "TestUserList": tenant.mirror_target_upns,
    })
}

/// An entry that parses but cannot run: its ClientId is no GUID.
fn broken_entry(estate: &Estate) -> Value {
    json!({
        "TenantId": "broken.onmicrosoft.com",
        "ClientId": "not-a-guid",
        "ClientSecret": "whatever",
        "GlobalAddressBookUserId": "shared@broken.onmicrosoft.com",
        "AuthorityHost": estate.sim.authority_url(),
        "GraphEndpoint": estate.sim.graph_url(),
    })
}

fn load(document: &Value, extra: &[(&str, &str)]) -> Settings {
    let text = document.to_string();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let env = move |name: &str| {
        if name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON" {
            return Some(text.clone());
        }
        extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Settings::from_sources(&env, None).expect("the configuration loads")
}

/// Runs the producer binary on `document` (embedded) and returns its exit code and output.
fn run_binary(document: &str, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let dir = support::scratch_dir("isolation-config");
    let file = dir.join("config.json");
    std::fs::write(&file, document).expect("config file");
    let path = file.display().to_string();
    let mut all = vec!["run", "--config", path.as_str(), "--workers", "4"];
    all.extend_from_slice(args);
    let mut process = Process::start("contactmirror-producer", &all, env);
    let status = process.child.wait().expect("the producer ends");
    (status.code(), process.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_invalid_tenant_entry_fails_alone_and_the_others_run() {
    let estate = Estate::seed(SimConfig::default(), estate_params(2, 10)).await;
    let entries = |broken: bool| {
        let mut list = vec![entry(&estate, &estate.tenants[0])];
        if broken {
            list.push(broken_entry(&estate));
        }
        list.push(entry(&estate, &estate.tenants[1]));
        json!({ "MicrosoftTenants": list }).to_string()
    };
    let document = entries(true);
    let (code, output) = tokio::task::spawn_blocking(move || run_binary(&document, &[], &[]))
        .await
        .expect("joins");
    assert_eq!(code, Some(1), "one invalid tenant fails the run:\n{output}");
    assert!(
        output.contains("[FAILED]  broken.onmicrosoft.com: configuration: ")
            && output.contains("MicrosoftTenants[1].ClientId: expected a GUID, got \"not-a-guid\""),
        "the invalid tenant is named with the key at fault:\n{output}"
    );
    for tenant in &estate.tenants {
        assert!(
            output.contains(&format!("[ok]      {}:", tenant.tenant_id)),
            "{} ran:\n{output}",
            tenant.tenant_id
        );
        let target = &tenant.mirror_target_upns[0];
        assert!(
            !estate
                .sim
                .contacts(&tenant.tenant_id, target, None)
                .is_empty(),
            "{target} received contacts"
        );
    }
    // The same document without the broken entry succeeds: the failure above is the broken entry's alone.
    let document = entries(false);
    let (code, output) =
        tokio::task::spawn_blocking(move || run_binary(&document, &[], &["--no-state"]))
            .await
            .expect("joins");
    assert_eq!(code, Some(0), "{output}");
    // Malformed JSON stays a configuration error of the whole run.
    let (code, output) =
        tokio::task::spawn_blocking(|| run_binary("{\"MicrosoftTenants\": [", &[], &[]))
            .await
            .expect("joins");
    assert_eq!(code, Some(2), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dry_run_variable_cannot_be_overridden_by_the_document() {
    let estate = Estate::seed(SimConfig::default(), estate_params(1, 8)).await;
    let mut tenant = entry(&estate, &estate.tenants[0]);
    tenant["DryRun"] = json!(false);
    let document = json!({ "MicrosoftTenants": [tenant], "DryRun": false }).to_string();
    estate.sim.reset_stats();
    let (code, output) = tokio::task::spawn_blocking(move || {
        run_binary(
            &document,
            &[("AUTOMATION_SYNCCONTACTS_DRY_RUN", "true")],
            &[],
        )
    })
    .await
    .expect("joins");
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        estate.sim.stats().total_writes(),
        0,
        "a document saying DryRun false wrote despite AUTOMATION_SYNCCONTACTS_DRY_RUN=true:\n{output}"
    );
    assert!(output.contains("dry run: nothing written"), "{output}");
    assert!(
        output.contains("    would create \""),
        "the plan is printed per mailbox:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_in_dry_run_writes_nothing_while_the_others_write() {
    let estate = Estate::seed(SimConfig::default(), estate_params(2, 8)).await;
    let mut onboarding = entry(&estate, &estate.tenants[0]);
    onboarding["DryRun"] = json!(true);
    let settings = load(
        &json!({ "MicrosoftTenants": [onboarding, entry(&estate, &estate.tenants[1])] }),
        &[],
    );
    estate.sim.reset_stats();
    let report = run(&settings, &embedded_args()).await;
    assert!(report.succeeded(), "{}", report.human());
    let stats = estate.sim.stats();
    let writes = |tenant: &SeededTenant| -> u64 {
        tenant
            .user_upns
            .iter()
            .chain([&tenant.shared_mailbox_upn])
            .map(|upn| stats.mailbox(upn).writes)
            .sum()
    };
    assert_eq!(writes(&estate.tenants[0]), 0, "{}", report.human());
    assert!(writes(&estate.tenants[1]) > 0, "{}", report.human());
    assert!(report.tenants[0].dry_run && !report.tenants[1].dry_run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_existing_false_creates_what_is_missing_and_never_updates() {
    let estate = Estate::seed(SimConfig::default(), estate_params(1, 8)).await;
    let tenant = &estate.tenants[0];
    let first = run(
        &load(
            &json!({ "MicrosoftTenants": [entry(&estate, tenant)] }),
            &[],
        ),
        &embedded_args(),
    )
    .await;
    assert!(first.succeeded(), "{}", first.human());
    // A user edits one of their own contacts (an update would follow) and adds a new one (a create would).
    let ann = &tenant.mirror_target_upns[0];
    let own = estate
        .sim
        .contacts(&tenant.tenant_id, ann, None)
        .into_iter()
        .find(|c| support::sync_id(c).is_none())
        .or_else(|| estate.sim.contacts(&tenant.tenant_id, ann, None).pop())
        .expect("ann has contacts");
    let id = own["id"].as_str().expect("id").to_owned();
    support::patch_contact(
        &estate,
        tenant,
        ann,
        &id,
        json!({ "jobTitle": "Chief Edits" }),
    )
    .await;
    support::user_request(
        &estate,
        tenant,
        reqwest::Method::POST,
        &["users", ann, "contacts"],
        Some(json!({
            "displayName": "Newly Met",
            "emailAddresses": [{ "address": "newly.met@example.com", "name": "Newly Met" }],
        })),
    )
    .await;
    let mut create_only = entry(&estate, tenant);
    create_only["UpdateExisting"] = json!(false);
    estate.sim.reset_stats();
    let second = run(
        &load(&json!({ "MicrosoftTenants": [create_only] }), &[]),
        &embedded_args(),
    )
    .await;
    assert!(second.succeeded(), "{}", second.human());
    let stats = estate.sim.stats();
    assert_eq!(
        stats.writes.get("PATCH").copied().unwrap_or(0),
        0,
        "UpdateExisting false sent updates: {:?}\n{}",
        stats.writes,
        second.human()
    );
    assert!(
        stats.writes.get("POST").copied().unwrap_or(0) > 0,
        "the new contact was not created: {:?}",
        stats.writes
    );
    let shared = estate.sim.contacts(
        &tenant.tenant_id,
        &tenant.shared_mailbox_upn,
        Some("All Contacts"),
    );
    assert!(shared.iter().any(|c| c["displayName"] == "Newly Met"));
    assert!(!shared.iter().any(|c| c["jobTitle"] == "Chief Edits"));
}

fn mailboxes_failing(report: &RunReport, reason: FailureReason) -> BTreeSet<String> {
    report
        .tenants
        .iter()
        .flat_map(|t| &t.mailboxes)
        .filter(|m| m.outcome == "failed" && m.reason == Some(reason))
        .map(|m| m.mailbox.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_without_a_mailbox_is_not_applicable_after_the_first_run_unless_strict() {
    let estate = Estate::seed(SimConfig::default(), estate_params(1, 20)).await;
    let tenant = &estate.tenants[0];
    let state = support::scratch_dir("isolation-state");
    let args = RunArgs {
        state_dir: Some(state.clone()),
        ..embedded_args()
    };
    let mut narrowed = entry(&estate, tenant);
    // Every licensed user: the mailbox-less ones among them.
    narrowed
        .as_object_mut()
        .expect("object")
        .remove("TestUserList");
    let first = run(
        &load(&json!({ "MicrosoftTenants": [narrowed.clone()] }), &[]),
        &args,
    )
    .await;
    let without = mailboxes_failing(&first, FailureReason::NoMailbox);
    assert!(!without.is_empty(), "graphsim seeds mailbox-less users");
    assert!(
        !first.succeeded(),
        "the first run that sees them fails them"
    );
    // From now on: the reachable users and the mailbox-less ones (not the policy-blocked ones, which stay failures).
    let mut users: Vec<String> = tenant.mirror_target_upns.clone();
    users.extend(without.iter().cloned());
    narrowed["TestUserList"] = json!(users);
    let settings = load(&json!({ "MicrosoftTenants": [narrowed] }), &[]);
    let second = run(&settings, &args).await;
    assert!(second.succeeded(), "{}", second.human());
    let listed: BTreeSet<String> = second.tenants[0]
        .mailboxes
        .iter()
        .filter(|m| m.outcome == NOT_APPLICABLE)
        .map(|m| m.mailbox.clone())
        .collect();
    assert_eq!(listed, without, "{}", second.human());
    assert!(second
        .human()
        .contains("not applicable (no Exchange mailbox"));
    let strict = run(
        &settings,
        &RunArgs {
            strict: true,
            ..args.clone_for_test()
        },
    )
    .await;
    assert!(!strict.succeeded(), "--strict fails them every run");
    assert_eq!(
        mailboxes_failing(&strict, FailureReason::NoMailbox),
        without
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// A mailbox phase 1 could not read for a reason of its own (no Exchange mailbox, access refused by policy) is
/// failed in phase 2 with that reason without a second request: its one Graph request of a run is phase 1's. Both
/// ways phase 2 learns it: from phase 1's plan (the first run overlaps, its plan writes many batches) and from its
/// final report (the quiet second run's plan writes nothing, so its phase-2 jobs wait for the report).
/// Reproduces phase 2 sending each such mailbox a job that read once and failed as phase 1 had (100 requests and
/// jobs of a 1,000-user quiet run).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mailbox_phase1_could_not_read_is_failed_in_phase2_without_a_request() {
    let estate = Estate::seed(SimConfig::default(), estate_params(1, 20)).await;
    let tenant = &estate.tenants[0];
    let mut everyone = entry(&estate, tenant);
    everyone
        .as_object_mut()
        .expect("object")
        .remove("TestUserList");
    let settings = load(&json!({ "MicrosoftTenants": [everyone] }), &[]);
    for (run_name, expect_writes) in [("first (overlapped)", true), ("quiet", false)] {
        estate.sim.reset_stats();
        let report = run(&settings, &embedded_args()).await;
        let stats = estate.sim.stats();
        assert_eq!(
            stats.total_writes() > 0,
            expect_writes,
            "{run_name} run: {}",
            report.human()
        );
        let unreadable: Vec<_> = report.tenants[0]
            .mailboxes
            .iter()
            .filter(|m| {
                m.phase == Phase::Phase2
                    && m.outcome == "failed"
                    && m.reason.is_some_and(FailureReason::bars_the_mailbox)
            })
            .collect();
        let reasons: BTreeSet<&str> = unreadable
            .iter()
            .filter_map(|m| m.reason.map(FailureReason::as_str))
            .collect();
        assert_eq!(
            reasons,
            ["access_denied", "no_mailbox"].into(),
            "{run_name} run: graphsim seeds both kinds: {}",
            report.human()
        );
        for failed in unreadable {
            assert_eq!(
                stats.mailbox(&failed.mailbox).requests,
                1,
                "{run_name} run: {} ({:?}) was sent more than phase 1's read",
                failed.mailbox,
                failed.reason
            );
            assert!(
                failed
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains(&failed.mailbox)),
                "{run_name} run: phase 1's error, naming the mailbox: {failed:?}"
            );
        }
    }
}

/// `RunArgs` is not `Clone`; the fields these tests set, copied.
trait CloneForTest {
    fn clone_for_test(&self) -> RunArgs;
}

impl CloneForTest for RunArgs {
    fn clone_for_test(&self) -> RunArgs {
        RunArgs {
            state_dir: self.state_dir.clone(),
            ..embedded_args()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_rabbitmq_an_invalid_tenant_fails_alone_and_the_others_get_every_report() {
    let _shared = BROKER.read().await;
    let estate = Estate::seed(SimConfig::default(), estate_params(2, 6)).await;
    let topology = support::private_topology();
    let document = json!({
        "MicrosoftTenants": [
            entry(&estate, &estate.tenants[0]),
            broken_entry(&estate),
            entry(&estate, &estate.tenants[1]),
        ]
    });
    let settings = load(&document, &[]);
    let (stop, worker) = support::spawn_worker(&settings, &topology, "isolation");
    let report = run(&settings, &broker_args(&topology)).await;
    stop.cancel();
    let _ = worker.await;
    support::delete_topology(&topology).await;
    assert!(!report.succeeded());
    let names: Vec<(&str, bool)> = report
        .tenants
        .iter()
        .map(|t| (t.tenant_id.as_str(), t.failed()))
        .collect();
    assert_eq!(
        names,
        [
            (estate.tenants[0].tenant_id.as_str(), false),
            (estate.tenants[1].tenant_id.as_str(), false),
            ("broken.onmicrosoft.com", true),
        ],
        "{}",
        report.human()
    );
    for tenant in &report.tenants[..2] {
        assert_eq!(
            tenant.mailboxes.len(),
            tenant.users + 1,
            "phase 1 and every phase 2 reported: {}",
            report.human()
        );
    }
}

/// `rabbitmqctl ARGS` (it comes with the RabbitMQ the tests need), asserting success.
fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_expires_dead_letters_by_the_retention_policy_and_redeclares_unchanged() {
    let _shared = BROKER.read().await;
    let topology = support::private_topology();
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    shared::mq::declare(&channel, &topology)
        .await
        .expect("declares");
    // The topology's own policy, set the way deploy/README.md says, with a TTL short enough to watch.
    let mut policy = dead_letter_policy(&topology);
    policy.definition["message-ttl"] = json!(1_000);
    let definition = policy.definition.to_string();
    let priority = policy.priority.to_string();
    rabbitmqctl(&[
        "-q",
        "set_policy",
        "--apply-to",
        policy.apply_to,
        "--priority",
        &priority,
        &policy.name,
        &policy.pattern,
        &definition,
    ]);
    let dead = topology.dead_letter_queue(Phase::Phase2);
    // The broker applies a policy shortly after it is set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    channel
        .basic_publish(
            "".into(),
            dead.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publishes")
        .await
        .expect("confirmed");
    let depth = |channel: lapin::Channel, name: String| async move {
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists")
            .message_count()
    };
    let mut left = depth(channel.clone(), dead.clone()).await;
    for _ in 0..40 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = depth(channel.clone(), dead.clone()).await;
    }
    // An existing install redeclares its queues unchanged under the policy (no PRECONDITION_FAILED).
    let redeclared = shared::mq::declare(&channel, &topology).await;
    rabbitmqctl(&["-q", "clear_policy", &policy.name]);
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
    assert_eq!(left, 0, "the dead letter outlived the policy's message-ttl");
    redeclared.expect("the topology redeclares unchanged under the retention policy");
}

/// An install whose queue was changed by hand: the first jobs queue already exists as a plain classic queue, which
/// RabbitMQ refuses to redeclare with the topology's arguments (PRECONDITION_FAILED, inequivalent arg). Declaring
/// the topology (as the producer and every worker do on connecting) fails with an error that names that queue and
/// keeps the broker's reason, and the worker's log says both, so the operator knows what to delete or migrate.
/// Reproduces a worker log that said only "declaring queue …" (its error's context, the reason in its source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_changed_by_hand_is_named_with_the_brokers_reason_when_the_topology_is_declared() {
    let _shared = BROKER.read().await;
    let topology = support::private_topology();
    let connection = support::connect().await;
    let refused = topology.job_queue(Phase::ALL[0]);
    let by_hand = connection.create_channel().await.expect("channel");
    by_hand
        .queue_declare(
            refused.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a classic queue of the same name");
    let channel = connection.create_channel().await.expect("channel");
    let declared = shared::mq::declare(&channel, &topology).await;
    // A worker declares the same topology on connecting: it stays unready and says why in its log.
    let estate = Estate::seed(SimConfig::default(), estate_params(1, 1)).await;
    let worker = Process::worker(&estate.config_json(), &topology);
    let mut logged = String::new();
    for _ in 0..100 {
        logged = worker.output();
        if logged.contains("broker session ended") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(worker);
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
    let reason = logged
        .lines()
        .find(|line| line.contains("broker session ended"))
        .unwrap_or_else(|| panic!("the worker logged no failed session in 10 s:\n{logged}"));
    assert!(
        reason.contains(&format!("declaring queue {refused}"))
            && reason.contains("PRECONDITION_FAILED"),
        "the worker's log names the queue and the broker's reason: {reason}"
    );
    let error = declared
        .expect_err("a plain classic queue cannot be redeclared with the topology's arguments");
    let message = shared::telemetry::with_causes(&error);
    assert!(
        error
            .to_string()
            .contains(&format!("declaring queue {refused}")),
        "the error names the refused queue: {message}"
    );
    assert!(
        message.contains("PRECONDITION_FAILED") || message.contains("inequivalent"),
        "the broker's reason is kept: {message}"
    );
}

#[test]
fn the_demo_ends_with_exit_status_0() {
    let mut process = Process::start(
        "contactmirror-producer",
        &[
            "demo",
            "--tenants",
            "1",
            "--users",
            "20",
            "--contacts",
            "2",
            "--workers",
            "8",
        ],
        &[],
    );
    let status = process.child.wait().expect("the demo ends");
    let output = process.output();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("expected (no_mailbox, seeded by the demo)"),
        "{output}"
    );
    assert!(!output.contains("[FAILED]"), "{output}");
}
