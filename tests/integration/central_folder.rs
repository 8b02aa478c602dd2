//! The central folder deleted or renamed by someone with access to the shared mailbox (issue 10, scenario 6):
//! the tenant stops with an error that says what happened and how to rebuild, and writes nothing; `run
//! --rebuild-central` restores the folder.

use std::collections::{BTreeMap, BTreeSet};

use graphsim::{EstateParams, SimConfig};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use shared::message::{Job, Phase};

use crate::fleet::{assert_only_unreachable_failed, broker_args, embedded_args, run};
use crate::support::{self, user_request, Estate, BROKER};

const CENTRAL: &str = "All Contacts";

async fn seeded(seed: u64) -> Estate {
    Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 6,
            contacts_per_user: 4,
            overlap: 0.3,
            seed,
        },
    )
    .await
}

/// The id of the shared mailbox's folder named `name`, if there is one.
fn folder_id(estate: &Estate, name: &str) -> Option<String> {
    let tenant = &estate.tenants[0];
    estate
        .sim
        .folders(&tenant.tenant_id, &tenant.shared_mailbox_upn)
        .iter()
        .find(|f| f["displayName"] == name)
        .and_then(|f| f["id"].as_str().map(str::to_owned))
}

fn with_state(state: &std::path::Path) -> RunArgs {
    RunArgs {
        state_dir: Some(state.to_owned()),
        ..embedded_args()
    }
}

/// The run stopped the tenant with the explanation, and wrote nothing (no fresh folder either).
fn assert_stopped(report: &RunReport, estate: &Estate, writes_before: u64) {
    let error = report.tenants[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("deleted or renamed")
            && error.contains("--rebuild-central")
            && error.contains(&estate.tenants[0].tenant_id),
        "the tenant was not stopped with the explanation:\n{}",
        report.human()
    );
    assert!(report.tenants[0].mailboxes.is_empty(), "{}", report.human());
    assert_eq!(
        estate.sim.stats().total_writes(),
        writes_before,
        "the run wrote after losing the folder"
    );
    assert_eq!(
        folder_id(estate, CENTRAL),
        None,
        "a fresh folder was created"
    );
}

/// Every sync id of the tenant's central folder, sorted, duplicates kept.
fn central_sync_ids(estate: &Estate) -> Vec<String> {
    let tenant = &estate.tenants[0];
    let mut ids: Vec<String> = estate
        .sim
        .contacts(&tenant.tenant_id, &tenant.shared_mailbox_upn, Some(CENTRAL))
        .iter()
        .filter_map(support::sync_id)
        .collect();
    ids.sort();
    ids
}

/// Each mirrored user's default contacts: the ids of the items, and the sync ids they carry (sorted).
fn mailboxes(estate: &Estate) -> BTreeMap<String, (BTreeSet<String>, Vec<String>)> {
    let tenant = &estate.tenants[0];
    tenant
        .mirror_target_upns
        .iter()
        .map(|upn| {
            let contacts = estate.sim.contacts(&tenant.tenant_id, upn, None);
            let ids = contacts
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect();
            let mut sync_ids: Vec<String> = contacts.iter().filter_map(support::sync_id).collect();
            sync_ids.sort();
            (upn.clone(), (ids, sync_ids))
        })
        .collect()
}

/// Failed before the fix: the second run created a fresh "All Contacts" and went on as if every person had left
/// the central folder. `--rebuild-central` then restores every person under the sync id it had, once, creates and
/// deletes nothing in users' mailboxes, and leaves a tenant whose next run writes nothing. (The planner's rebuild
/// rule itself, for copies whose originals are gone, is `sync::tests::a_rebuild_restores_the_central_folder_under_the_same_sync_ids`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_central_folder_stops_the_tenant_until_it_is_rebuilt() {
    let estate = seeded(61).await;
    let settings = estate.settings();
    let state = support::scratch_dir("central-deleted");
    let first = run(&settings, &with_state(&state)).await;
    assert_only_unreachable_failed(&first, &estate);
    let tenant = &estate.tenants[0];
    let folder = folder_id(&estate, CENTRAL).expect("the first run made the folder");
    let central_before = central_sync_ids(&estate);
    assert!(!central_before.is_empty(), "the first run published nobody");
    let mailboxes_before = mailboxes(&estate);
    user_request(
        &estate,
        tenant,
        reqwest::Method::DELETE,
        &[
            "users",
            &tenant.shared_mailbox_upn,
            "contactFolders",
            &folder,
        ],
        None,
    )
    .await;

    let writes = estate.sim.stats().total_writes();
    let stopped = run(&settings, &with_state(&state)).await;
    assert_stopped(&stopped, &estate, writes);
    // Still stopped on the next run: nothing was forgotten.
    let again = run(&settings, &with_state(&state)).await;
    assert_stopped(&again, &estate, writes);

    let rebuilt = run(
        &settings,
        &RunArgs {
            rebuild_central: true,
            ..with_state(&state)
        },
    )
    .await;
    assert!(rebuilt.tenants[0].error.is_none(), "{}", rebuilt.human());
    assert!(folder_id(&estate, CENTRAL).is_some(), "no folder rebuilt");
    assert_eq!(
        central_sync_ids(&estate),
        central_before,
        "the rebuilt folder does not hold every person once under the sync id it had"
    );
    let deleted: u64 = rebuilt.tenants[0].phases.values().map(|p| p.deleted).sum();
    assert_eq!(deleted, 0, "the rebuild deleted:\n{}", rebuilt.human());
    assert_eq!(
        mailboxes(&estate),
        mailboxes_before,
        "the rebuild created or deleted contacts in users' mailboxes"
    );
    // And the tenant is back to normal: the next run finds nothing to do.
    let writes = estate.sim.stats().total_writes();
    let after = run(&settings, &with_state(&state)).await;
    assert_only_unreachable_failed(&after, &estate);
    assert_eq!(
        estate.sim.stats().total_writes(),
        writes,
        "{}",
        after.human()
    );
    std::fs::remove_dir_all(&state).ok();
}

/// Failed before the fix: a renamed folder was left aside and a fresh one created under the configured name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renamed_central_folder_stops_the_tenant_until_its_name_is_back() {
    let estate = seeded(62).await;
    let settings = estate.settings();
    let state = support::scratch_dir("central-renamed");
    let first = run(&settings, &with_state(&state)).await;
    assert_only_unreachable_failed(&first, &estate);
    let tenant = &estate.tenants[0];
    let folder = folder_id(&estate, CENTRAL).expect("the first run made the folder");
    let rename = |name: &str| serde_json::json!({ "displayName": name });
    let path = [
        "users",
        &tenant.shared_mailbox_upn,
        "contactFolders",
        &folder,
    ];
    user_request(
        &estate,
        tenant,
        reqwest::Method::PATCH,
        &path,
        Some(rename("Old contacts")),
    )
    .await;

    let writes = estate.sim.stats().total_writes();
    let stopped = run(&settings, &with_state(&state)).await;
    assert_stopped(&stopped, &estate, writes);

    user_request(
        &estate,
        tenant,
        reqwest::Method::PATCH,
        &path,
        Some(rename(CENTRAL)),
    )
    .await;
    let back = run(&settings, &with_state(&state)).await;
    assert_only_unreachable_failed(&back, &estate);
    assert_eq!(folder_id(&estate, CENTRAL), Some(folder));
    std::fs::remove_dir_all(&state).ok();
}

/// `--rebuild-central` reaches the worker: the phase-1 job carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_central_is_carried_in_the_phase1_job() {
    let _broker = BROKER.read().await;
    let estate = seeded(63).await;
    let settings = estate.settings();
    let topology = support::private_topology();
    // No worker: the run gives up after a second, leaving its phase-1 job in the queue to look at.
    let args = RunArgs {
        rebuild_central: true,
        idle_timeout_secs: 1,
        ..broker_args(&topology)
    };
    let _ = run(&settings, &args).await;
    let connection = support::connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let message = channel
        .basic_get(
            topology.job_queue(Phase::Phase1).as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .expect("get")
        .expect("the phase-1 job");
    message
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    let job = Job::from_json(&message.delivery.data).expect("a job");
    assert!(job.rebuild_central);
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
}
