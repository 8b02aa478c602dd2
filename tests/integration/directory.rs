//! Issue 11, the directory on every phone: the directory as a source of the same phase-2 jobs, checked on the
//! mailboxes graphsim ends up with (embedded, and one run on RabbitMQ).

use std::collections::BTreeSet;

use graphsim::{seed_directory, DirectoryParams, SeededDirectory, Sim, SimConfig};
use producer::summary::{RunReport, TenantReport};
use serde_json::{json, Value};
use shared::message::Phase;

use crate::fleet::{broker_args, embedded_args, folder_view, run};
use crate::support::{self, settings_from, BROKER};

pub(crate) async fn sim() -> Sim {
    graphsim::spawn(SimConfig::default())
        .await
        .expect("graphsim starts")
}

/// A tenant entry for `d` with `extra` keys (Mirror, Directory, TargetGroups, TargetFolder, ...).
pub(crate) fn tenant_entry(sim: &Sim, d: &SeededDirectory, extra: Value) -> Value {
    let mut entry = json!({
        "TenantId": d.tenant.tenant_id,
        "ClientId": d.tenant.client_id,
        "ClientSecret": d.tenant.client_secret,
        "AuthorityHost": sim.authority_url(),
        "GraphEndpoint": sim.graph_url(),
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        entry[key] = value;
    }
    entry
}

pub(crate) fn document(tenants: Vec<Value>) -> Value {
    json!({ "MicrosoftTenants": tenants, "DryRun": "false" })
}

/// A directory-only tenant: no mirror, no shared mailbox configured.
pub(crate) fn directory_only(extra_directory: Value) -> Value {
    let mut directory = json!({ "Enabled": true });
    for (key, value) in extra_directory.as_object().cloned().unwrap_or_default() {
        directory[key] = value;
    }
    json!({ "Mirror": { "Enabled": false }, "Directory": directory })
}

pub(crate) fn tenant<'a>(report: &'a RunReport, id: &str) -> &'a TenantReport {
    report
        .tenants
        .iter()
        .find(|t| t.tenant_id.eq_ignore_ascii_case(id))
        .expect("tenant in the report")
}

/// Every job of every tenant succeeded.
pub(crate) fn assert_all_succeeded(report: &RunReport) {
    for t in &report.tenants {
        assert_eq!(t.error, None, "{}", t.tenant_id);
        for m in &t.mailboxes {
            assert_eq!(m.outcome, "succeeded", "{}: {m:?}", t.tenant_id);
        }
    }
}

/// Contacts created, updated and deleted in all phases of `report`.
pub(crate) fn writes(report: &RunReport) -> u64 {
    report
        .tenants
        .iter()
        .flat_map(|t| t.phases.values())
        .map(|c| c.created + c.updated + c.deleted)
        .sum()
}

/// The primary address (lower case) of a directory user given by UPN: graphsim's seed uses the UPN's local part.
pub(crate) fn mail_of(upn: &str) -> String {
    upn.to_lowercase()
}

/// `user`'s folder (`None`: default Contacts) holds exactly one contact per address in `expected`, and nothing
/// else.
pub(crate) fn assert_holds_each_once(
    sim: &Sim,
    d: &SeededDirectory,
    user: &str,
    folder: Option<&str>,
    expected: &BTreeSet<String>,
) {
    let view = folder_view(&sim.contacts(&d.tenant.tenant_id, user, folder));
    assert_eq!(view.len(), expected.len(), "{user}: {view:?}");
    for mail in expected {
        let holders = view
            .iter()
            .filter(|(_, emails)| emails.contains(mail))
            .count();
        assert_eq!(holders, 1, "{user} holds {mail} {holders} times: {view:?}");
    }
}

/// The members' addresses but `except`'s.
pub(crate) fn members_but(d: &SeededDirectory, except: &str) -> BTreeSet<String> {
    d.members
        .iter()
        .filter(|m| !m.eq_ignore_ascii_case(except))
        .map(|m| mail_of(m))
        .collect()
}

/// Issue 11: a directory-only tenant (no shared mailbox configured) gives every receiving user every directory
/// person except themselves, exactly once (hidden, disabled, unlicensed users, guests and org contacts left out
/// by default), and a re-run writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_only_tenant_gives_every_receiver_everyone_but_themselves_once() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({})),
    )]));

    let first = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&first);
    let t = tenant(&first, &d.tenant.tenant_id);
    assert!(
        !t.phases.contains_key(&Phase::Phase1),
        "no phase 1 without the mirror"
    );
    for user in &d.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &d, user, None, &members_but(&d, user));
    }
    assert!(
        sim.contacts(&d.tenant.tenant_id, &d.tenant.shared_mailbox_upn, None)
            .is_empty(),
        "the shared mailbox is not touched"
    );

    let again = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&again);
    assert_eq!(
        writes(&again),
        0,
        "a re-run with nothing changed writes nothing"
    );
    for user in &d.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &d, user, None, &members_but(&d, user));
    }
    // The directory is read once per worker process, not per mailbox: about one request per mailbox (its one
    // page of contacts) plus a constant (users, managers, organisation).
    let t = tenant(&again, &d.tenant.tenant_id);
    let mailboxes = t.users as u64;
    assert!(
        t.graph.requests <= 2 * mailboxes + 6,
        "{} requests for {mailboxes} mailboxes",
        t.graph.requests
    );
}

/// Issue 11: guests and org contacts arrive only when their member type is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guests_and_org_contacts_only_when_their_member_type_is_listed() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let org_mails: BTreeSet<String> = (0..d.org_contacts.len())
        .map(|i| format!("partner{i}@northwind.example"))
        .collect();
    let guest_mails: BTreeSet<String> = (0..d.guests.len())
        .map(|i| format!("guest{i}@fabrikam.com"))
        .collect();
    let with = |types: Value| {
        settings_from(&document(vec![tenant_entry(&sim, &d, {
            let mut extra = directory_only(json!({ "MemberTypes": types }));
            // Both org contacts leave at once below: a share the cap lets through in one run.
            extra["MaxDeleteShare"] = json!(0.5);
            extra
        })]))
    };

    let report = run(&with(json!(["Member", "Contact"])), &embedded_args()).await;
    assert_all_succeeded(&report);
    let receiver = &d.members[1];
    let mut expected = members_but(&d, receiver);
    expected.extend(org_mails.iter().cloned());
    assert_holds_each_once(&sim, &d, receiver, None, &expected);

    let report = run(&with(json!(["Member", "Guest"])), &embedded_args()).await;
    assert_all_succeeded(&report);
    let mut expected = members_but(&d, receiver);
    expected.extend(guest_mails.iter().cloned());
    assert_holds_each_once(&sim, &d, receiver, None, &expected);
}

/// Issue 11: a leaver (account disabled) disappears from every mailbox on the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leaver_disappears_from_every_mailbox_on_the_next_run() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({})),
    )]));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    let leaver = d.members[2].clone();
    let mut props = serde_json::Map::new();
    props.insert("accountEnabled".into(), json!(false));
    sim.update_user(&d.tenant.tenant_id, &leaver, props)
        .expect("disable the leaver");

    let report = run(&settings, &embedded_args()).await;
    for t in &report.tenants {
        assert_eq!(t.error, None);
    }
    for user in d.tenant.mirror_target_upns.iter().filter(|u| **u != leaver) {
        let mut expected = members_but(&d, user);
        expected.remove(&mail_of(&leaver));
        assert_holds_each_once(&sim, &d, user, None, &expected);
    }
}

/// Issue 11: a person both in the directory and in a user's personal contacts (mirrored through the shared
/// mailbox) is one contact per mailbox, with the directory's fields (the user's own contact too: never deleted,
/// its notes kept); the next run publishes them into the central folder (phase 1 only), and then nothing is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_in_the_directory_and_in_personal_contacts_is_one_contact_per_mailbox() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let owner = d.members[0].clone();
    let person = d.members[1].clone();
    sim.add_contact(
        &d.tenant.tenant_id,
        &owner,
        None,
        json!({
            "displayName": "Colleague (my note)",
            "jobTitle": "Old title",
            "emailAddresses": [{ "address": mail_of(&person), "name": "Colleague" }],
        }),
    );
    let extra = json!({
        "GlobalAddressBookUserId": d.tenant.shared_mailbox_upn,
        "Directory": { "Enabled": true },
    });
    let settings = settings_from(&document(vec![tenant_entry(&sim, &d, extra)]));
    let first = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&first);
    let directory_title = sim
        .contacts(&d.tenant.tenant_id, &d.members[2], None)
        .into_iter()
        .find(|c| c.to_string().to_lowercase().contains(&mail_of(&person)))
        .and_then(|c| c["jobTitle"].as_str().map(str::to_owned))
        .expect("the person reached members[2]");
    assert_ne!(directory_title, "Old title", "the directory's fields win");
    for user in &d.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &d, user, None, &members_but(&d, user));
        if *user != owner && *user != person {
            let copy = sim
                .contacts(&d.tenant.tenant_id, user, None)
                .into_iter()
                .find(|c| c.to_string().to_lowercase().contains(&mail_of(&person)))
                .expect("the person's copy");
            assert_eq!(copy["jobTitle"], json!(directory_title), "{user}");
        }
    }
    let own = sim
        .contacts(&d.tenant.tenant_id, &owner, None)
        .into_iter()
        .find(|c| c.to_string().to_lowercase().contains(&mail_of(&person)))
        .expect("the owner's own contact is kept");
    assert_eq!(
        own["jobTitle"],
        json!(directory_title),
        "the directory wins"
    );

    let again = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&again);
    let phase2 = &again.tenants[0].phases[&Phase::Phase2];
    assert_eq!(
        phase2.created + phase2.updated + phase2.deleted,
        0,
        "{phase2:?}"
    );
    let last = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&last);
    assert_eq!(writes(&last), 0, "{:?}", last.tenants[0].phases);
    for user in &d.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &d, user, None, &members_but(&d, user));
    }
}

/// Issue 11: a tenant whose app lacks `GroupMember.Read.All` (needed by its `IncludeGroups`), and one lacking
/// `OrgContact.Read.All` (needed by `MemberTypes` with `Contact`), each fail with a message
/// naming the permission, before any job; the other tenant completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_permission_fails_only_that_tenant_naming_the_permission() {
    let sim = sim().await;
    let broken = seed_directory(&sim, DirectoryParams::default());
    let healthy = seed_directory(
        &sim,
        DirectoryParams {
            domain: "directory-s2.onmicrosoft.com".into(),
            ..DirectoryParams::default()
        },
    );
    sim.set_app_roles(
        &broken.tenant.tenant_id,
        &[
            "Contacts.ReadWrite",
            "User.Read.All",
            "OrgContact.Read.All",
            "Organization.Read.All",
        ],
    )
    .expect("tenant");
    let settings_document = document(vec![
        tenant_entry(
            &sim,
            &broken,
            directory_only(
                json!({ "IncludeGroups": [format!("staff@{}", broken.tenant.tenant_id)] }),
            ),
        ),
        tenant_entry(&sim, &healthy, directory_only(json!({}))),
    ]);
    let no_org = seed_directory(
        &sim,
        DirectoryParams {
            domain: "directory-s3.onmicrosoft.com".into(),
            ..DirectoryParams::default()
        },
    );
    sim.set_app_roles(
        &no_org.tenant.tenant_id,
        &[
            "Contacts.ReadWrite",
            "User.Read.All",
            "GroupMember.Read.All",
            "Organization.Read.All",
        ],
    )
    .expect("tenant");
    let mut config = settings_document;
    config["MicrosoftTenants"]
        .as_array_mut()
        .expect("tenants")
        .push(tenant_entry(
            &sim,
            &no_org,
            directory_only(json!({ "MemberTypes": ["Member", "Contact"] })),
        ));
    let settings = settings_from(&config);
    let report = run(&settings, &embedded_args()).await;
    let error = tenant(&report, &no_org.tenant.tenant_id)
        .error
        .as_deref()
        .expect("the tenant without OrgContact.Read.All failed");
    assert!(error.contains("OrgContact.Read.All"), "{error}");
    let failed = tenant(&report, &broken.tenant.tenant_id);
    let error = failed.error.as_deref().expect("the tenant failed");
    assert!(error.contains("GroupMember.Read.All"), "{error}");
    assert!(
        failed.mailboxes.is_empty(),
        "no job ran: {:?}",
        failed.mailboxes
    );
    for user in &broken.tenant.mirror_target_upns {
        assert!(sim
            .contacts(&broken.tenant.tenant_id, user, None)
            .is_empty());
    }
    let ok = tenant(&report, &healthy.tenant.tenant_id);
    assert_eq!(ok.error, None);
    assert!(ok.mailboxes.iter().all(|m| m.outcome == "succeeded"));
    for user in &healthy.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &healthy, user, None, &members_but(&healthy, user));
    }
}

/// Issue 11: `TargetGroups` limits who receives, and `TargetFolder` puts the managed copies in that folder
/// (created), leaving the default Contacts folder alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_groups_limit_who_receives_and_target_folder_holds_the_copies() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let receiver = d.members[0].clone();
    sim.add_contact(
        &d.tenant.tenant_id,
        &receiver,
        None,
        json!({ "displayName": "My dentist", "emailAddresses": [{ "address": "dentist@example.com" }] }),
    );
    let before = sim.contacts(&d.tenant.tenant_id, &receiver, None);
    let mut extra = directory_only(json!({}));
    extra["TargetGroups"] = json!([format!("sales@{}", d.tenant.tenant_id)]);
    extra["TargetFolder"] = json!("Company Directory");
    let settings = settings_from(&document(vec![tenant_entry(&sim, &d, extra)]));
    let report = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&report);
    // Sales: the first half of the members (and a guest, who is not a licensed member).
    let sales: BTreeSet<String> = d.members[..d.members.len().div_ceil(2)]
        .iter()
        .cloned()
        .collect();
    assert_eq!(tenant(&report, &d.tenant.tenant_id).users, sales.len());
    for user in &d.tenant.mirror_target_upns {
        let folder = sim.contacts(&d.tenant.tenant_id, user, Some("Company Directory"));
        if sales.contains(user) {
            assert_holds_each_once(
                &sim,
                &d,
                user,
                Some("Company Directory"),
                &members_but(&d, user),
            );
        } else {
            assert!(folder.is_empty(), "{user} is not in TargetGroups");
        }
    }
    assert_eq!(
        folder_view(&sim.contacts(&d.tenant.tenant_id, &receiver, None)),
        folder_view(&before),
        "the default Contacts folder is untouched"
    );
}

/// Issue 11 on RabbitMQ: a directory-only tenant's jobs through the broker and real consumers reach the same
/// mailboxes, and a re-run writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_only_tenant_on_rabbitmq() {
    let _broker = BROKER.read().await;
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({})),
    )]));
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("d{i}")))
        .collect();
    let first = run(&settings, &broker_args(&topology)).await;
    let again = run(&settings, &broker_args(&topology)).await;
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    assert_eq!(first.mode, "broker");
    assert_all_succeeded(&first);
    assert_all_succeeded(&again);
    assert_eq!(writes(&again), 0);
    for user in &d.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &d, user, None, &members_but(&d, user));
    }
}

/// Issue 11: a mass leave beyond the deletion cap is refused and reported per mailbox, naming it and how many
/// deletions were refused; nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mass_leave_beyond_the_cap_is_refused_and_reported() {
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
    let report = run(&settings, &embedded_args()).await;
    let t = tenant(&report, &d.tenant.tenant_id);
    let receiver = &d.members[0];
    let refused = t
        .mailboxes
        .iter()
        .find(|m| m.mailbox.eq_ignore_ascii_case(receiver))
        .expect("the receiver's job");
    assert_eq!(refused.outcome, "failed");
    assert_eq!(
        refused.reason,
        Some(shared::message::FailureReason::DeletionCapExceeded)
    );
    let error = refused.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(receiver.as_str()) && error.contains(&format!("delete {}", leavers.len())),
        "{error}"
    );
    assert_holds_each_once(&sim, &d, receiver, None, &members_but(&d, receiver));
}

/// Issue 11: include and exclude groups with nesting select exactly the expected persons (Staff holds Sales
/// nested, so Staff without Sales is the second half of the members).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn include_and_exclude_groups_with_nesting_select_exactly_the_expected_persons() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let domain = &d.tenant.tenant_id;
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({
            "IncludeGroups": [format!("staff@{domain}")],
            "ExcludeGroups": [d.sales_group.clone()],
        })),
    )]));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    let second_half: Vec<String> = d.members[d.members.len().div_ceil(2)..].to_vec();
    for user in &d.tenant.mirror_target_upns {
        let expected: BTreeSet<String> = second_half
            .iter()
            .filter(|m| !m.eq_ignore_ascii_case(user))
            .map(|m| mail_of(m))
            .collect();
        assert_holds_each_once(&sim, &d, user, None, &expected);
    }
}

/// Issue 11 with the mirror on: `run --rebuild-central` restores the central folder from the copies in users'
/// mailboxes, and the directory's copies there are not mirrored persons.
///
/// Failed before the fix: the rebuild published every directory copy into the central folder as a mirrored
/// person, so a later leaver would have stayed in every mailbox through the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuilt_central_folder_holds_no_directory_copy() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let owner = d.members[0].clone();
    sim.add_contact(
        &d.tenant.tenant_id,
        &owner,
        None,
        json!({ "displayName": "My dentist", "emailAddresses": [{ "address": "dentist@example.com" }] }),
    );
    let extra = json!({
        "GlobalAddressBookUserId": d.tenant.shared_mailbox_upn,
        "Directory": { "Enabled": true },
    });
    let settings = settings_from(&document(vec![tenant_entry(&sim, &d, extra)]));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    let rebuilt = run(
        &settings,
        &producer::cli::RunArgs {
            rebuild_central: true,
            ..embedded_args()
        },
    )
    .await;
    assert_all_succeeded(&rebuilt);
    let central = folder_view(&sim.contacts(
        &d.tenant.tenant_id,
        &d.tenant.shared_mailbox_upn,
        Some("All Contacts"),
    ));
    assert_eq!(
        central,
        vec![(
            "My dentist".to_owned(),
            vec!["dentist@example.com".to_owned()]
        )]
    );
}
