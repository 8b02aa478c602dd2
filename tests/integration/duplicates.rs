//! Issue 10 end to end, the rules' part: copies sharing a sync id (left in graphsim's folders by an earlier fault,
//! such as a create Graph applied and then answered with an error) are reduced to one by the next run, and a user's
//! own contact carrying a stamp from elsewhere is published, never deleted.
//!
//! The assertions are about the folders graphsim ends up with.

use std::collections::BTreeMap;

use graphsim::{EstateParams, SimConfig};
use serde_json::Value;

use crate::fleet::{embedded_args, run};
use crate::support::{sync_id, Estate};

/// Sync ids held by more than one contact of `contacts`.
fn shared_sync_ids(contacts: &[Value]) -> Vec<String> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for id in contacts.iter().filter_map(sync_id) {
        *count.entry(id).or_default() += 1;
    }
    count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

/// Failed before the fix: the extra copies (two in the central folder, one in a user's mailbox) were kept for
/// ever (`DuplicateSyncId` skips), and the user's own contact stamped with a sync id the central folder never held
/// was skipped as "removed centrally" instead of published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_sharing_a_sync_id_are_reduced_to_one_and_stamped_own_contacts_are_published() {
    reduced_to_one(&embedded_args(), 2, 1).await;
}

/// The same with feeds kept, and more extra copies than the deletion cap lets go in one run. Failed before the fix:
/// the run that deleted what the cap allowed reported the folders in line, so the next run found nothing changed,
/// skipped them, and the rest of the extra copies stayed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extra_copies_the_cap_leaves_for_later_go_on_later_runs_with_feeds_kept() {
    let state = crate::support::scratch_dir("duplicates-state");
    let args = producer::cli::RunArgs {
        state_dir: Some(state.clone()),
        ..embedded_args()
    };
    reduced_to_one(&args, 6, 4).await;
    let _ = std::fs::remove_dir_all(state);
}

/// Seeds `central_extra` extra copies of a central person and `user_extra` of a managed copy in a user's mailbox,
/// plus an owner's contact stamped from elsewhere, then runs with `args` until nothing is written.
async fn reduced_to_one(args: &producer::cli::RunArgs, central_extra: usize, user_extra: usize) {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 6,
            contacts_per_user: 5,
            overlap: 0.3,
            seed: 11,
        },
    )
    .await;
    let settings = estate.settings();
    run(&settings, args).await;
    let tenant = &estate.tenants[0];
    let (tid, shared) = (&tenant.tenant_id, &tenant.shared_mailbox_upn);
    let central = estate.sim.contacts(tid, shared, Some("All Contacts"));
    assert!(shared_sync_ids(&central).is_empty());

    // Creates applied twice: two extra copies of a central contact, one of a managed copy in a user's mailbox.
    let resent = central
        .iter()
        .find(|c| sync_id(c).is_some())
        .expect("a stamped central contact");
    for _ in 0..central_extra {
        estate
            .sim
            .add_contact(tid, shared, Some("All Contacts"), resent.clone());
    }
    let user = &tenant.mirror_target_upns[0];
    let managed_copy = estate
        .sim
        .contacts(tid, user, None)
        .into_iter()
        .find(|c| {
            let notes = c["personalNotes"].as_str().unwrap_or_default();
            sync_id(c).is_some()
                && notes.contains("CreatedBy=")
                && !notes.to_lowercase().contains(&user.to_lowercase())
                && notes
                    .lines()
                    .any(|l| l.starts_with("CreatedBy=") && l.contains('@'))
        })
        .expect("a managed copy in the first user's mailbox");
    for _ in 0..user_extra {
        estate
            .sim
            .add_contact(tid, user, None, managed_copy.clone());
    }

    // Another user's own contact carrying a stamp line the central folder never held.
    let owner = &tenant.mirror_target_upns[1];
    let pasted = serde_json::json!({
        "displayName": "Pasted Person",
        "emailAddresses": [{"address": "pasted.person@example.org"}],
        "personalNotes": format!(
            "met at the fair\r\nSyncId=0f8fad5b-d9cb-469f-a165-70867728950e;CreatedBy={user}"
        ),
    });
    let pasted_id = estate.sim.add_contact(tid, owner, None, pasted);

    // The deletion cap (10% of a folder's managed copies per run) lets the extra copies go over a few runs.
    let mut runs = 0;
    loop {
        estate.sim.reset_stats();
        let report = run(&settings, args).await;
        assert!(report.succeeded(), "{}", report.human());
        runs += 1;
        if estate.sim.stats().total_writes() == 0 {
            break;
        }
        assert!(
            runs < 8,
            "no fixed point after {runs} runs: {}",
            report.human()
        );
    }

    let central = estate.sim.contacts(tid, shared, Some("All Contacts"));
    assert!(
        shared_sync_ids(&central).is_empty(),
        "central duplicates left"
    );
    for upn in &tenant.mirror_target_upns {
        let contacts = estate.sim.contacts(tid, upn, None);
        assert!(
            shared_sync_ids(&contacts).is_empty(),
            "duplicates left in {upn}"
        );
    }
    let published = central
        .iter()
        .filter(|c| c["displayName"] == "Pasted Person")
        .count();
    assert_eq!(published, 1, "the stamped own contact is published once");
    let own = estate.sim.contacts(tid, owner, None);
    let kept = own
        .iter()
        .find(|c| c["id"] == pasted_id.as_str())
        .expect("the owner's contact is still there");
    assert_eq!(kept["displayName"], "Pasted Person");
    assert!(kept["personalNotes"]
        .as_str()
        .unwrap_or_default()
        .starts_with("met at the fair"));
}

/// The stamp lines are plain text in every client's notes, so an owner may delete them. Here the owner's own contact
/// was matched by address to another user's person (stamped with that person's sync id), the owner deletes the stamp
/// lines, and an administrator then removes the person from the central folder: the owner's contact stays, with the
/// owner's words, and only the copies go. Through graphsim, so the owner mark (`model::OWNER_PROPERTY`) is written
/// and read on Graph's wire. Failed before the mark: the contact read as a managed copy and was deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_owners_contact_whose_stamp_lines_were_deleted_stays_when_its_person_goes() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 4,
            contacts_per_user: 2,
            overlap: 0.0,
            seed: 12,
        },
    )
    .await;
    let settings = estate.settings();
    let tenant = estate.tenants[0].clone();
    let (tid, shared) = (&tenant.tenant_id, &tenant.shared_mailbox_upn);
    let (ann, cat, dan) = (
        &tenant.mirror_target_upns[0],
        &tenant.mirror_target_upns[1],
        &tenant.mirror_target_upns[2],
    );
    let address = "pat.person@example.org";
    let with_address = |contacts: Vec<Value>| -> Vec<Value> {
        contacts
            .into_iter()
            .filter(|c| c.to_string().contains(address))
            .collect()
    };
    // Two users' own contacts for one person: the person is published from one of them (its origin), and the other
    // is matched by address and stamped with the person's sync id as its owner's.
    let mut own_ids = Vec::new();
    for (upn, name) in [(ann, "Pat Person"), (cat, "Pat (met at the fair)")] {
        own_ids.push(estate.sim.add_contact(
            tid,
            upn,
            None,
            serde_json::json!({
                "displayName": name,
                "emailAddresses": [{"address": address}],
                "personalNotes": "my own words",
            }),
        ));
    }
    assert!(run(&settings, &embedded_args()).await.succeeded());
    let central = with_address(estate.sim.contacts(tid, shared, Some("All Contacts")));
    let [person] = &central[..] else {
        panic!("one person: {central:#?}")
    };
    let person_notes = person["personalNotes"].as_str().unwrap_or_default();
    // The origin's owner is the person's `CreatedBy`; the other owner's contact is the one matched by address.
    let (owner, matched) = if person_notes.contains(&format!("CreatedBy={ann}")) {
        (cat, own_ids[1].clone())
    } else {
        (ann, own_ids[0].clone())
    };
    let read = |estate: &Estate| {
        estate
            .sim
            .contacts(tid, owner, None)
            .into_iter()
            .find(|c| c["id"] == matched.as_str())
    };
    let stamped = read(&estate).expect("the owner's contact");
    let person = sync_id(&stamped)
        .unwrap_or_else(|| panic!("matched and stamped with the person's sync id: {stamped:#}"));
    let delete_stamp_lines = || {
        crate::support::patch_contact(
            &estate,
            &tenant,
            owner,
            &matched,
            serde_json::json!({"personalNotes": "my own words"}),
        )
    };

    // The owner deletes the stamp lines; the next run puts them back as the owner's, not a copy's.
    delete_stamp_lines().await;
    assert!(run(&settings, &embedded_args()).await.succeeded());
    let restamped = read(&estate).expect("the owner's contact");
    let notes = restamped["personalNotes"].as_str().unwrap_or_default();
    // A copy's `CreatedBy` is the person's creator's UPN; an owner's contact names its owner by object id.
    let created_by = notes
        .lines()
        .find_map(|line| line.strip_prefix("CreatedBy="))
        .unwrap_or_else(|| panic!("stamped again: {notes}"));
    assert!(
        notes.starts_with("my own words") && !created_by.contains('@'),
        "restamped as the owner's, not as a copy: {notes}"
    );

    // Deleted again, and the administrator removes the person from the central folder.
    delete_stamp_lines().await;
    let entry = estate
        .sim
        .contacts(tid, shared, Some("All Contacts"))
        .iter()
        .find(|c| sync_id(c).as_deref() == Some(person.as_str()))
        .and_then(|c| c["id"].as_str())
        .expect("the person in the central folder")
        .to_owned();
    crate::support::delete_contact(&estate, &tenant, shared, &entry).await;
    let report = run(&settings, &embedded_args()).await;
    assert!(report.succeeded(), "{}", report.human());

    let kept = read(&estate).expect("the owner's contact is still there");
    assert!(kept["personalNotes"]
        .as_str()
        .unwrap_or_default()
        .starts_with("my own words"));
    assert!(
        with_address(estate.sim.contacts(tid, dan, None)).is_empty(),
        "dan's copy goes"
    );
}
