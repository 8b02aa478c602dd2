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
    run(&settings, &embedded_args()).await;
    let tenant = &estate.tenants[0];
    let (tid, shared) = (&tenant.tenant_id, &tenant.shared_mailbox_upn);
    let central = estate.sim.contacts(tid, shared, Some("All Contacts"));
    assert!(shared_sync_ids(&central).is_empty());

    // Creates applied twice: two extra copies of a central contact, one of a managed copy in a user's mailbox.
    let resent = central
        .iter()
        .find(|c| sync_id(c).is_some())
        .expect("a stamped central contact");
    for _ in 0..2 {
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
    estate.sim.add_contact(tid, user, None, managed_copy);

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
        let report = run(&settings, &embedded_args()).await;
        assert!(report.succeeded(), "{}", report.human());
        runs += 1;
        if estate.sim.stats().total_writes() == 0 {
            break;
        }
        assert!(
            runs < 5,
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
