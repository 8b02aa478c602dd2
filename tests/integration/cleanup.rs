//! Issue 11: `contactmirror-producer cleanup` (embedded and on RabbitMQ), a changed `TargetFolder` moving the
//! managed copies, and `--allow-mass-delete` lifting the deletion cap for one run, checked on the mailboxes
//! graphsim ends up with.

use std::collections::BTreeMap;

use graphsim::{seed_directory, DirectoryParams, SeededDirectory, Sim};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use serde_json::{json, Value};
use shared::config::Settings;
use shared::message::{FailureReason, Phase};
use shared::sync::CleanupSource;

use crate::directory::{
    assert_all_succeeded, assert_holds_each_once, directory_only, document, mail_of, members_but,
    sim, tenant, tenant_entry, writes,
};
use crate::fleet::{broker_args, embedded_args, run, total};
use crate::support::{self, settings_from, BROKER};

/// What a user sees of a folder, by contact id: every property Outlook returns except what the server changes
/// on any write (change key, etag, last modified), without the hidden extended properties.
fn visible(
    sim: &Sim,
    d: &SeededDirectory,
    user: &str,
    folder: Option<&str>,
) -> BTreeMap<String, Value> {
    sim.contacts(&d.tenant.tenant_id, user, folder)
        .into_iter()
        .map(|mut c| {
            let id = c["id"].as_str().unwrap_or_default().to_owned();
            if let Some(fields) = c.as_object_mut() {
                for key in [
                    "@odata.etag",
                    "changeKey",
                    "lastModifiedDateTime",
                    "singleValueExtendedProperties",
                ] {
                    fields.remove(key);
                }
            }
            (id, c)
        })
        .collect()
}

/// Every user's default Contacts folder, as [`visible`].
fn snapshot(sim: &Sim, d: &SeededDirectory) -> BTreeMap<String, BTreeMap<String, Value>> {
    d.tenant
        .mirror_target_upns
        .iter()
        .map(|user| (user.clone(), visible(sim, d, user, None)))
        .collect()
}

/// Whether any contact of `user`'s folder still carries a sync id in the extended property.
fn carries_a_sync_id(sim: &Sim, d: &SeededDirectory, user: &str, folder: Option<&str>) -> bool {
    sim.contacts(&d.tenant.tenant_id, user, folder)
        .iter()
        .flat_map(|c| {
            c["singleValueExtendedProperties"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .any(|p| p["value"].as_str().is_some_and(|v| !v.is_empty()))
}

/// Own contacts of a few users (notes with and without text, one person two users both know).
fn add_own_contacts(sim: &Sim, d: &SeededDirectory) {
    let t = &d.tenant.tenant_id;
    sim.add_contact(
        t,
        &d.members[0],
        None,
        json!({ "displayName": "My dentist", "personalNotes": "call after 5\r\nnot on Fridays",
                "categories": ["Health"], "emailAddresses": [{ "address": "dentist@example.com" }] }),
    );
    for (user, note) in [(&d.members[1], "ours"), (&d.members[2], "")] {
        let mut body = json!({ "displayName": "Plumber", "mobilePhone": "+41 79 000 00 00",
                               "emailAddresses": [{ "address": "plumber@example.com" }] });
        if !note.is_empty() {
            body["personalNotes"] = json!(note);
        }
        sim.add_contact(t, user, None, body);
    }
    sim.add_contact(
        t,
        &d.members[2],
        None,
        json!({ "displayName": "Grandma", "homePhones": ["+41 44 000 00 00"] }),
    );
}

/// A tenant with both sources: the mirror through the shared mailbox and the directory.
fn both_sources(sim: &Sim, d: &SeededDirectory, extra: Value) -> Settings {
    let mut keys = json!({
        "GlobalAddressBookUserId": d.tenant.shared_mailbox_upn,
        "Directory": { "Enabled": true },
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        keys[key] = value;
    }
    settings_from(&document(vec![tenant_entry(sim, d, keys)]))
}

fn cleanup_args(d: &SeededDirectory, base: RunArgs) -> RunArgs {
    RunArgs {
        tenants: vec![d.tenant.tenant_id.clone()],
        ..base
    }
}

async fn cleanup(settings: &Settings, args: &RunArgs, source: CleanupSource) -> RunReport {
    producer::run::execute_cleanup(settings, args, source)
        .await
        .expect("the cleanup completes")
}

fn deleted(report: &RunReport) -> u64 {
    total(report, |c| c.deleted)
}

/// Issue 11: `cleanup` leaves each mailbox exactly as it was before the first sync (own contacts, their notes and
/// categories byte for byte; no sync id left), empties the central folder, reports what it removed, changes
/// nothing in a dry run, and a second cleanup finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_leaves_every_mailbox_as_it_was_before_the_first_sync() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    add_own_contacts(&sim, &d);
    let before = snapshot(&sim, &d);
    let settings = both_sources(&sim, &d, json!({}));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    let synced = snapshot(&sim, &d);
    assert!(
        synced[&d.members[3]].len() >= d.members.len() + 2,
        "the sync distributed both sources: {:?}",
        synced[&d.members[3]].len()
    );

    let dry = cleanup(
        &settings,
        &cleanup_args(
            &d,
            RunArgs {
                dry_run: true,
                ..embedded_args()
            },
        ),
        CleanupSource::All,
    )
    .await;
    assert_all_succeeded(&dry);
    assert!(deleted(&dry) > 0, "the dry run lists what would go");
    assert!(!dry.tenants[0].planned.is_empty());
    assert_eq!(snapshot(&sim, &d), synced, "a dry run changes nothing");

    let report = cleanup(
        &settings,
        &cleanup_args(&d, embedded_args()),
        CleanupSource::All,
    )
    .await;
    assert_all_succeeded(&report);
    let t = tenant(&report, &d.tenant.tenant_id);
    assert!(t.phases[&Phase::Phase2].deleted > 0, "{:?}", t.phases);
    assert!(
        t.phases[&Phase::Phase1].deleted > 0,
        "the central folder's contacts: {:?}",
        t.phases
    );
    assert!(
        t.planned.iter().any(|line| line
            .to_lowercase()
            .starts_with(&format!("{}: delete", d.members[3].to_lowercase()))),
        "{:?}",
        t.planned
    );
    assert_eq!(
        snapshot(&sim, &d),
        before,
        "every mailbox as before the first sync"
    );
    for user in &d.tenant.mirror_target_upns {
        assert!(!carries_a_sync_id(&sim, &d, user, None), "{user}");
    }
    assert!(sim
        .contacts(
            &d.tenant.tenant_id,
            &d.tenant.shared_mailbox_upn,
            Some("All Contacts")
        )
        .is_empty());

    let again = cleanup(
        &settings,
        &cleanup_args(&d, embedded_args()),
        CleanupSource::All,
    )
    .await;
    assert_all_succeeded(&again);
    assert_eq!(
        writes(&again),
        0,
        "an interrupted cleanup is simply run again"
    );
}

/// Issue 11: `cleanup --source directory` removes the directory's copies only; the mirror's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_of_the_directory_keeps_the_mirrors_copies() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    add_own_contacts(&sim, &d);
    let settings = both_sources(&sim, &d, json!({}));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    let report = cleanup(
        &settings,
        &cleanup_args(&d, embedded_args()),
        CleanupSource::Directory,
    )
    .await;
    assert_all_succeeded(&report);
    assert!(!tenant(&report, &d.tenant.tenant_id)
        .phases
        .contains_key(&Phase::Phase1));
    let receiver = &d.members[4];
    let view = crate::fleet::folder_view(&sim.contacts(&d.tenant.tenant_id, receiver, None));
    let names: Vec<&str> = view.iter().map(|(name, _)| name.as_str()).collect();
    assert!(
        names.contains(&"My dentist") && names.contains(&"Plumber"),
        "{names:?}"
    );
    for member in members_but(&d, receiver) {
        assert!(
            !view.iter().any(|(_, emails)| emails.contains(&member)),
            "{member} left {receiver}: {view:?}"
        );
    }
    assert!(!sim
        .contacts(
            &d.tenant.tenant_id,
            &d.tenant.shared_mailbox_upn,
            Some("All Contacts")
        )
        .is_empty());
}

/// Issue 11 on RabbitMQ: the cleanup jobs go through the broker and real consumers, with the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cleanup_on_rabbitmq() {
    let _broker = BROKER.read().await;
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    add_own_contacts(&sim, &d);
    let before = snapshot(&sim, &d);
    let settings = both_sources(&sim, &d, json!({}));
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("c{i}")))
        .collect();
    let synced = run(&settings, &broker_args(&topology)).await;
    let cleaned = cleanup(
        &settings,
        &cleanup_args(&d, broker_args(&topology)),
        CleanupSource::All,
    )
    .await;
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    assert_all_succeeded(&synced);
    assert_eq!(cleaned.mode, "broker");
    assert_all_succeeded(&cleaned);
    assert!(deleted(&cleaned) > 0);
    assert_eq!(snapshot(&sim, &d), before);
    assert!(sim
        .contacts(
            &d.tenant.tenant_id,
            &d.tenant.shared_mailbox_upn,
            Some("All Contacts")
        )
        .is_empty());
}

/// Issue 11: `TargetFolder` creates the folder, and a later change of it moves the managed copies of both
/// sources in one run (the cap does not hold a move back), leaving users' own contacts where and as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_target_folder_moves_the_managed_copies_and_no_own_contact() {
    changed_target_folders(None).await;
}

/// Failed before the fix: a licensed user without an Exchange mailbox fails phase 2 on every run (listed as not
/// applicable after the first), which kept the producer from recording the folder the copies were moved to; the
/// next change then moved them from the default folder and left every copy in the middle folder: duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_without_a_mailbox_does_not_keep_a_moved_folder_from_being_recorded() {
    changed_target_folders(Some("nomailbox")).await;
}

/// Runs the sources into the default folder, then into two target folders in turn, checking each move; with
/// `without_mailbox`, the tenant also has a licensed user of that name who has no Exchange mailbox.
async fn changed_target_folders(without_mailbox: Option<&str>) {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let barred = without_mailbox.map(|name| {
        let upn = format!("{name}@{}", d.tenant.tenant_id);
        sim.add_user(
            &d.tenant.tenant_id,
            graphsim::UserSeed {
                upn: upn.clone(),
                display_name: name.into(),
                mailbox: graphsim::MailboxState::NoMailbox,
                user_type: "Member".into(),
                ..graphsim::UserSeed::default()
            },
        );
        upn.to_lowercase()
    });
    let assert_ran = |report: &RunReport| {
        for t in &report.tenants {
            assert_eq!(t.error, None, "{}", t.tenant_id);
            for m in &t.mailboxes {
                let barred = Some(m.mailbox.to_lowercase()) == barred;
                assert!(m.outcome == "succeeded" || barred, "{}: {m:?}", t.tenant_id);
            }
        }
    };
    add_own_contacts(&sim, &d);
    let own = snapshot(&sim, &d);
    let state = std::env::temp_dir().join(format!("cm-move-{}", uuid::Uuid::new_v4().simple()));
    let args = || RunArgs {
        state_dir: Some(state.clone()),
        ..embedded_args()
    };
    let t = &d.tenant.tenant_id;
    assert_ran(&run(&both_sources(&sim, &d, json!({})), &args()).await);
    let stamped_own: BTreeMap<String, BTreeMap<String, Value>> = own
        .iter()
        .map(|(user, contacts)| {
            let now = visible(&sim, &d, user, None);
            (
                user.clone(),
                contacts
                    .keys()
                    .map(|id| (id.clone(), now[id].clone()))
                    .collect(),
            )
        })
        .collect();
    let copies_before: BTreeMap<String, usize> = d
        .tenant
        .mirror_target_upns
        .iter()
        .map(|u| (u.clone(), visible(&sim, &d, u, None).len() - own[u].len()))
        .collect();

    for (folder, previous) in [
        ("Company Directory", None),
        ("Phone Book", Some("Company Directory")),
    ] {
        let settings = both_sources(&sim, &d, json!({ "TargetFolder": folder }));
        let report = run(&settings, &args()).await;
        assert_ran(&report);
        for user in &d.tenant.mirror_target_upns {
            assert_eq!(
                visible(&sim, &d, user, None),
                stamped_own[user],
                "{user}: only the own contacts stay in the default folder, untouched"
            );
            if let Some(previous) = previous {
                // What stays is the copies of the user's own persons: `CreatedBy` names the user, so by the one
                // ownership rule they are the user's and never moved.
                let own_names: Vec<Value> = own[user]
                    .values()
                    .map(|c| c["displayName"].clone())
                    .collect();
                let left = sim.contacts(t, user, Some(previous));
                assert!(
                    left.iter().all(|c| own_names.contains(&c["displayName"])),
                    "{user}: only copies of the user's own persons stay in {previous}: {:?}",
                    crate::fleet::folder_view(&left)
                );
                assert!(left.len() <= own[user].len(), "{user}: {left:?}");
            }
            let moved = sim.contacts(t, user, Some(folder));
            assert!(
                moved.len() >= copies_before[user],
                "{user}: {} copies in {folder}, {} before",
                moved.len(),
                copies_before[user]
            );
            let mut expected = members_but(&d, user);
            expected.insert("plumber@example.com".into());
            let view = crate::fleet::folder_view(&moved);
            for mail in &expected {
                let holders = view.iter().filter(|(_, e)| e.contains(mail)).count();
                assert_eq!(
                    holders, 1,
                    "{user} holds {mail} {holders} times in {folder}: {view:?}"
                );
            }
        }
        let again = run(&settings, &args()).await;
        assert_ran(&again);
        assert_eq!(
            writes(&again),
            0,
            "moved in one run: {:?}",
            again.tenants[0].phases
        );
    }
    let _ = std::fs::remove_dir_all(state);
}

/// Issue 11: a mass leave beyond the cap is refused and reported (the mailbox and how many deletions), and
/// `run --allow-mass-delete` lifts the cap for that run: the leavers go from every mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_mass_delete_lifts_the_cap_for_one_run() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({})),
    )]));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    let leavers = &d.members[3..];
    for leaver in leavers {
        let mut props = serde_json::Map::new();
        props.insert("accountEnabled".into(), json!(false));
        sim.update_user(&d.tenant.tenant_id, leaver, props)
            .expect("disable");
    }
    let receiver = &d.members[0];
    let refused = run(&settings, &embedded_args()).await;
    let outcome = tenant(&refused, &d.tenant.tenant_id)
        .mailboxes
        .iter()
        .find(|m| m.mailbox.eq_ignore_ascii_case(receiver))
        .cloned()
        .expect("the receiver's job");
    assert_eq!(outcome.reason, Some(FailureReason::DeletionCapExceeded));
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains(receiver.as_str()) && error.contains(&format!("delete {}", leavers.len())),
        "{error}"
    );
    assert_holds_each_once(&sim, &d, receiver, None, &members_but(&d, receiver));

    let allowed = run(
        &settings,
        &RunArgs {
            allow_mass_delete: true,
            ..embedded_args()
        },
    )
    .await;
    assert_all_succeeded(&allowed);
    for user in d
        .tenant
        .mirror_target_upns
        .iter()
        .filter(|u| !leavers.contains(u))
    {
        let mut expected = members_but(&d, user);
        for leaver in leavers {
            expected.remove(&mail_of(leaver));
        }
        assert_holds_each_once(&sim, &d, user, None, &expected);
    }
}
