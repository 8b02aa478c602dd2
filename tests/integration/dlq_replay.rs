//! The operator's loop end to end: a mailbox fails, its job waits in the dead-letter queue with the reason,
//! `dlq list` shows it, the cause is fixed, `dlq requeue` sends it back, and a real worker completes it.

use std::time::Duration;

use graphsim::{EstateParams, MailboxState, SimConfig};
use shared::message::Phase;

use crate::fleet::{broker_args, run};
use crate::support::{self, Estate, BROKER};

fn emails(estate: &Estate, tenant: &str, user: &str, folder: Option<&str>) -> Vec<String> {
    let mut all: Vec<String> = estate
        .sim
        .contacts(tenant, user, folder)
        .iter()
        .flat_map(|c| {
            c["emailAddresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| e["address"].as_str().map(str::to_lowercase))
        })
        .collect();
    all.sort();
    all.dedup();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_lettered_job_requeued_after_the_fix_completes() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 6,
            contacts_per_user: 5,
            overlap: 0.2,
            seed: 61,
        },
    )
    .await;
    let tenant = estate.tenants[0].clone();
    let victim = tenant.mirror_target_upns[0].clone();
    estate
        .sim
        .set_mailbox_state(&tenant.tenant_id, &victim, MailboxState::BlockedByPolicy);

    let topology = support::private_topology();
    let settings = estate.settings();
    let (stop, worker) = support::spawn_worker(&settings, &topology, "replay");
    let report = run(&settings, &broker_args(&topology)).await;
    assert!(!report.succeeded(), "the blocked mailbox must fail the run");

    // The job waits in the phase-2 dead-letter queue, and `dlq list --json` says why.
    let url = support::amqp_url();
    let prefix = topology.prefix().to_owned();
    let listed = tokio::task::spawn_blocking({
        let (url, prefix) = (url.clone(), prefix.clone());
        move || {
            std::process::Command::new(support::binary("contactmirror-producer"))
                .args([
                    "dlq",
                    "--amqp-url",
                    &url,
                    "--queue-prefix",
                    &prefix,
                    "list",
                    "--json",
                ])
                .output()
                .expect("dlq list runs")
        }
    })
    .await
    .expect("task");
    let listed_text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.status.success(), "dlq list failed: {listed:?}");
    assert!(
        listed_text.contains(&victim) && listed_text.contains("access_denied"),
        "dlq list does not show {victim} with its reason: {listed_text}"
    );
    let central = emails(
        &estate,
        &tenant.tenant_id,
        &tenant.shared_mailbox_upn,
        Some("All Contacts"),
    );
    assert!(!central.is_empty());
    let missing_before = central
        .iter()
        .filter(|e| !emails(&estate, &tenant.tenant_id, &victim, None).contains(e))
        .count();
    assert!(
        missing_before > 0,
        "{victim} already holds the central contacts"
    );

    // The administrator fixes the access policy; the operator requeues.
    estate
        .sim
        .set_mailbox_state(&tenant.tenant_id, &victim, MailboxState::Enabled);
    let status = crate::ops::producer(&[
        "dlq",
        "--amqp-url",
        &url,
        "--queue-prefix",
        &prefix,
        "requeue",
        "--phase",
        "phase2",
        "--reason",
        "access_denied",
    ])
    .await
    .expect("dlq requeue runs");
    assert_eq!(status, std::process::ExitCode::SUCCESS);

    // The worker picks it up and the mailbox gets every central contact.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mine = emails(&estate, &tenant.tenant_id, &victim, None);
        if central.iter().all(|e| mine.contains(e)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the requeued job did not complete for {victim}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let dead = channel
        .queue_declare(
            topology.dead_letter_queue(Phase::Phase2).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("dead-letter queue");
    assert_eq!(dead.message_count(), 0, "the dead letter is still there");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
}
