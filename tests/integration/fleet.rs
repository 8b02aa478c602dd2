//! End to end: the producer's `run` against graphsim, embedded and on RabbitMQ with real workers.
//!
//! The assertions are about the mailboxes graphsim ends up with, not about what the code says it did.

use std::collections::{BTreeMap, BTreeSet};

use graphsim::{EstateParams, SimConfig};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use shared::config::Settings;
use shared::message::Phase;
use shared::mq::Topology;

use crate::support::{self, Estate, BROKER};

/// `run` arguments for an embedded run (no broker).
pub fn embedded_args() -> RunArgs {
    RunArgs {
        workers: 4,
        idle_timeout_secs: 60,
        ..RunArgs::embedded_default()
    }
}

/// `run` arguments for a broker run on `topology`.
pub fn broker_args(topology: &Topology) -> RunArgs {
    RunArgs {
        amqp_url: Some(support::amqp_url()),
        queue_prefix: topology.prefix().to_owned(),
        ..embedded_args()
    }
}

/// Runs one sync.
pub async fn run(settings: &Settings, args: &RunArgs) -> RunReport {
    producer::run::execute(settings, args)
        .await
        .expect("the run completes")
}

/// What a mailbox folder holds, without ids and timestamps: display name and lower-cased addresses per contact.
pub type Snapshot = BTreeMap<String, Vec<(String, Vec<String>)>>;

pub fn folder_view(contacts: &[serde_json::Value]) -> Vec<(String, Vec<String>)> {
    let mut view: Vec<(String, Vec<String>)> = contacts
        .iter()
        .map(|c| {
            let name = c["displayName"].as_str().unwrap_or_default().to_owned();
            (name, addresses_of(c))
        })
        .collect();
    view.sort();
    view
}

/// A contact's addresses, lower-cased and sorted.
pub fn addresses_of(contact: &serde_json::Value) -> Vec<String> {
    let mut emails: Vec<String> = contact["emailAddresses"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e["address"].as_str())
                .map(str::to_lowercase)
                .collect()
        })
        .unwrap_or_default();
    emails.sort();
    emails
}

/// Every target mailbox's default folder and the central folder of every tenant.
pub fn snapshot(estate: &Estate, central_folder: &str) -> Snapshot {
    let mut all = Snapshot::new();
    for tenant in &estate.tenants {
        let central = estate.sim.contacts(
            &tenant.tenant_id,
            &tenant.shared_mailbox_upn,
            Some(central_folder),
        );
        all.insert(
            format!("{}/central", tenant.tenant_id),
            folder_view(&central),
        );
        for user in &tenant.user_upns {
            let contacts = estate.sim.contacts(&tenant.tenant_id, user, None);
            all.insert(
                format!("{}/{user}", tenant.tenant_id),
                folder_view(&contacts),
            );
        }
    }
    all
}

fn emails_of(view: &[(String, Vec<String>)]) -> BTreeSet<String> {
    view.iter().flat_map(|(_, e)| e.iter().cloned()).collect()
}

/// The mirror's promise, checked on graphsim's state: the central folder holds each person once, and every
/// target mailbox can reach everyone in it.
fn assert_mirrored(estate: &Estate, before: &Snapshot) {
    let after = snapshot(estate, "All Contacts");
    for tenant in &estate.tenants {
        let central = &after[&format!("{}/central", tenant.tenant_id)];
        assert!(
            !central.is_empty(),
            "{}: central folder is empty",
            tenant.tenant_id
        );
        let mut seen = BTreeSet::new();
        for (name, emails) in central {
            for email in emails {
                assert!(
                    seen.insert(email.clone()),
                    "{}: {email} ({name}) is in the central folder twice",
                    tenant.tenant_id
                );
            }
        }
        let central_emails = emails_of(central);
        for user in &tenant.mirror_target_upns {
            // A person is the same person when any address matches, so a contact reached the central folder
            // when one of its addresses (or, without any address, its name) is there.
            let own = &before[&format!("{}/{user}", tenant.tenant_id)];
            for (name, emails) in own {
                let reached = if emails.is_empty() {
                    central.iter().any(|(n, _)| n == name)
                } else {
                    emails.iter().any(|e| central_emails.contains(e))
                };
                assert!(
                    reached,
                    "{}: {user}'s contact {name} {emails:?} did not reach the central folder",
                    tenant.tenant_id
                );
            }
            let mine = emails_of(&after[&format!("{}/{user}", tenant.tenant_id)]);
            let missing: Vec<_> = central_emails.difference(&mine).collect();
            assert!(
                missing.is_empty(),
                "{}: {user} lacks {} central contacts, e.g. {:?}",
                tenant.tenant_id,
                missing.len(),
                missing.first()
            );
        }
    }
}

/// Every mailbox the mirror targets succeeded; the only failures are mailboxes graphsim seeded as unreachable
/// (no Exchange mailbox, blocked by policy), and those are named.
pub fn assert_only_unreachable_failed(report: &RunReport, estate: &Estate) {
    for (tenant, seeded) in report.tenants.iter().zip(&estate.tenants) {
        assert!(
            tenant.error.is_none(),
            "tenant {} failed: {:?}",
            tenant.tenant_id,
            tenant.error
        );
        for mailbox in &tenant.mailboxes {
            let target = seeded
                .mirror_target_upns
                .iter()
                .any(|u| u.eq_ignore_ascii_case(&mailbox.mailbox));
            if target {
                assert_eq!(
                    mailbox.outcome,
                    "succeeded",
                    "target mailbox failed:\n{}",
                    report.human()
                );
            } else if mailbox.outcome == "failed" {
                assert!(
                    mailbox
                        .error
                        .as_deref()
                        .is_some_and(|e| e.contains("MailboxNotEnabledForRESTAPI")
                            || e.contains("ErrorAccessDenied")),
                    "{} failed for an unexpected reason: {:?}",
                    mailbox.mailbox,
                    mailbox.error
                );
            }
        }
    }
}

pub fn total(report: &RunReport, pick: fn(&producer::summary::PhaseCounts) -> u64) -> u64 {
    report
        .tenants
        .iter()
        .flat_map(|t| t.phases.values())
        .map(pick)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_run_mirrors_and_second_run_writes_nothing() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 2,
            users_per_tenant: 12,
            contacts_per_user: 6,
            overlap: 0.3,
            seed: 7,
        },
    )
    .await;
    let before = snapshot(&estate, "All Contacts");
    let settings = estate.settings();

    let first = run(&settings, &embedded_args()).await;
    assert_only_unreachable_failed(&first, &estate);
    assert!(total(&first, |c| c.created) > 0, "nothing was created");
    assert_mirrored(&estate, &before);
    let mirrored = snapshot(&estate, "All Contacts");

    estate.sim.reset_stats();
    let second = run(&settings, &embedded_args()).await;
    assert_only_unreachable_failed(&second, &estate);
    let stats = estate.sim.stats();
    assert_eq!(stats.total_writes(), 0, "the second run wrote: {stats:?}");
    // The report counts each job's own requests, never its neighbours' (8 jobs run at once here).
    let reported: u64 = second.tenants.iter().map(|t| t.graph.requests).sum();
    assert!(
        reported > 0 && reported <= stats.graph_operations,
        "the report claims {reported} Graph requests, graphsim saw {}",
        stats.graph_operations
    );
    assert_eq!(total(&second, |c| c.created + c.updated + c.deleted), 0);
    assert_eq!(
        snapshot(&estate, "All Contacts"),
        mirrored,
        "the second run changed state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_run_reaches_the_same_state_as_embedded() {
    let _broker = BROKER.read().await;
    let params = EstateParams {
        tenants: 2,
        users_per_tenant: 8,
        contacts_per_user: 5,
        overlap: 0.25,
        seed: 11,
    };
    let embedded = Estate::seed(SimConfig::default(), params.clone()).await;
    let brokered = Estate::seed(SimConfig::default(), params).await;

    let report = run(&embedded.settings(), &embedded_args()).await;
    assert_only_unreachable_failed(&report, &embedded);

    let topology = support::private_topology();
    let settings = brokered.settings();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("w{i}")))
        .collect();
    let report = run(&settings, &broker_args(&topology)).await;
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    assert_only_unreachable_failed(&report, &brokered);
    assert_eq!(report.mode, "broker");
    let phase2_jobs = report
        .tenants
        .iter()
        .flat_map(|t| t.mailboxes.iter())
        .filter(|m| m.phase == Phase::Phase2)
        .count();
    assert!(phase2_jobs > 0, "no phase-2 job reported");

    // Same seed, same rules: identical mailboxes whichever transport ran the jobs.
    assert_eq!(
        snapshot(&embedded, "All Contacts"),
        snapshot(&brokered, "All Contacts")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_writes_nothing_and_creates_no_folder() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 6,
            contacts_per_user: 4,
            overlap: 0.2,
            seed: 3,
        },
    )
    .await;
    let before = snapshot(&estate, "All Contacts");
    let args = RunArgs {
        dry_run: true,
        ..embedded_args()
    };
    let settings = support::settings_from(&estate.config_json());
    let mut settings_dry = settings.clone();
    settings_dry.dry_run = true;
    let report = run(&settings_dry, &args).await;
    assert_only_unreachable_failed(&report, &estate);
    assert!(report.dry_run);
    assert!(
        total(&report, |c| c.created) > 0,
        "a dry run still reports what it would create"
    );
    assert_eq!(estate.sim.stats().total_writes(), 0);
    let tenant = &estate.tenants[0];
    assert!(
        estate
            .sim
            .folders(&tenant.tenant_id, &tenant.shared_mailbox_upn)
            .iter()
            .all(|f| f["displayName"] != "All Contacts"),
        "a dry run created the central folder"
    );
    assert_eq!(snapshot(&estate, "All Contacts"), before);
}

/// Contacts of one folder as graphsim stores them (ids, notes and all).
fn full(estate: &Estate, tenant: &str, user: &str, folder: Option<&str>) -> Vec<serde_json::Value> {
    estate.sim.contacts(tenant, user, folder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_tenants_mirror_each_person_once_and_edits_propagate() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 2,
            users_per_tenant: 30,
            contacts_per_user: 8,
            overlap: 0.3,
            seed: 2026,
        },
    )
    .await;
    let t0 = estate.tenants[0].clone();
    let big_user = t0.mirror_target_upns[0].clone();
    for i in 0..1_100 {
        estate.sim.add_contact(
            &t0.tenant_id,
            &big_user,
            None,
            serde_json::json!({
                "displayName": format!("Bulk Person {i:04}"),
                "emailAddresses": [{"address": format!("Bulk.{i}@Example.net")}],
            }),
        );
    }
    let editor = t0.mirror_target_upns[1].clone();
    let edited_id = estate.sim.add_contact(
        &t0.tenant_id,
        &editor,
        None,
        serde_json::json!({
            "displayName": "Edit Me",
            "emailAddresses": [{"address": "edit.me@example.org"}],
            "jobTitle": "Before",
            "personalNotes": "met at the 2019 offsite, ask about the dog",
        }),
    );
    // Every user's own notes, to check they stay intact and private.
    let mut own_notes: Vec<(String, String, String, String)> = Vec::new();
    for tenant in &estate.tenants {
        for user in &tenant.mirror_target_upns {
            for c in full(&estate, &tenant.tenant_id, user, None) {
                if let Some(note) = c["personalNotes"].as_str().filter(|n| !n.is_empty()) {
                    own_notes.push((
                        tenant.tenant_id.clone(),
                        user.clone(),
                        c["id"].as_str().unwrap_or_default().to_owned(),
                        note.to_owned(),
                    ));
                }
            }
        }
    }
    assert!(!own_notes.is_empty(), "the estate has no notes to protect");
    let own_contacts: BTreeMap<String, Vec<serde_json::Value>> = estate
        .tenants
        .iter()
        .flat_map(|t| t.mirror_target_upns.iter().map(move |u| (t, u)))
        .map(|(t, u)| (u.clone(), full(&estate, &t.tenant_id, u, None)))
        .collect();
    let before = snapshot(&estate, "All Contacts");
    let settings = estate.settings();

    let first = run(&settings, &embedded_args()).await;
    assert_only_unreachable_failed(&first, &estate);
    assert_mirrored(&estate, &before);

    let stats = estate.sim.stats();
    for (mailbox, counters) in &stats.mailboxes {
        assert!(
            counters.peak_in_flight <= 4,
            "{mailbox} saw {} concurrent requests",
            counters.peak_in_flight
        );
    }
    for tenant in &estate.tenants {
        let central = full(
            &estate,
            &tenant.tenant_id,
            &tenant.shared_mailbox_upn,
            Some("All Contacts"),
        );
        if tenant.tenant_id == t0.tenant_id {
            assert!(
                central.len() > 1_100,
                "the 1,100 contacts of {big_user} did not all arrive"
            );
        }
        let mut nameless_names = BTreeSet::new();
        for c in &central {
            if addresses_of(c).is_empty() {
                let name = c["displayName"].as_str().unwrap_or_default().to_owned();
                assert!(
                    nameless_names.insert(name.clone()),
                    "{name} (no e-mail) is central twice"
                );
            }
        }
        // Every user holds every central contact exactly once: the mirror adds a copy only where the user had
        // none (duplicates a user made by hand are theirs, and stay).
        for user in &tenant.mirror_target_upns {
            let mine = full(&estate, &tenant.tenant_id, user, None);
            for c in &central {
                let emails = addresses_of(c);
                let same = |m: &&serde_json::Value| {
                    if emails.is_empty() {
                        addresses_of(m).is_empty() && m["displayName"] == c["displayName"]
                    } else {
                        addresses_of(m).iter().any(|a| emails.contains(a))
                    }
                };
                let had = own_contacts[user].iter().filter(same).count();
                let copies = mine.iter().filter(same).count();
                assert_eq!(
                    copies,
                    had.max(1),
                    "{user} holds {copies} copies of {} {emails:?} (had {had})",
                    c["displayName"]
                );
            }
        }
        // Notes are private: none reaches the central folder.
        for c in &central {
            let notes = c["personalNotes"].as_str().unwrap_or_default();
            for (_, _, _, note) in own_notes.iter().filter(|n| n.0 == tenant.tenant_id) {
                assert!(
                    !notes.contains(note.as_str()),
                    "a user's note reached the central folder: {note}"
                );
            }
        }
    }
    // ... and each note is still where its owner left it.
    for (tenant, user, id, note) in &own_notes {
        let mine = full(&estate, tenant, user, None);
        let kept = mine.iter().find(|c| c["id"] == id.as_str());
        assert!(
            kept.is_some_and(|c| c["personalNotes"]
                .as_str()
                .unwrap_or_default()
                .contains(note.as_str())),
            "{user}'s note on {id} was lost or changed"
        );
    }

    // An edit in one mailbox reaches the central folder and every user, with no other write.
    support::patch_contact(
        &estate,
        &t0,
        &editor,
        &edited_id,
        serde_json::json!({"jobTitle": "After"}),
    )
    .await;
    estate.sim.reset_stats();
    let after_edit = run(&settings, &embedded_args()).await;

    assert_only_unreachable_failed(&after_edit, &estate);
    let stats = estate.sim.stats();
    let central = full(
        &estate,
        &t0.tenant_id,
        &t0.shared_mailbox_upn,
        Some("All Contacts"),
    );
    let copy = central
        .iter()
        .find(|c| addresses_of(c) == ["edit.me@example.org"])
        .expect("the edited contact is central");
    assert_eq!(
        copy["jobTitle"], "After",
        "the edit did not reach the central folder"
    );
    for user in &t0.mirror_target_upns {
        let mine = full(&estate, &t0.tenant_id, user, None);
        let copy = mine
            .iter()
            .find(|c| addresses_of(c) == ["edit.me@example.org"])
            .unwrap_or_else(|| panic!("{user} lost the edited contact"));
        assert_eq!(copy["jobTitle"], "After", "the edit did not reach {user}");
    }
    let expected_writes = t0.mirror_target_upns.len() as u64; // central + every user but the editor
    assert_eq!(
        stats.total_writes(),
        expected_writes,
        "an edit of one contact should write the central copy and each other user's copy once: {:?}",
        stats.writes
    );
    for (mailbox, counters) in &stats.mailboxes {
        assert!(
            counters.writes <= 1,
            "{mailbox} got {} writes for one edit",
            counters.writes
        );
    }
}
