//! Issue 14 end to end: what travels. Under the default `CentralFields` a home address (and a birthday, a spouse)
//! in a user's personal contact never reaches the central folder or any other mailbox, and what an earlier
//! configuration let through is cleared by the next run, never by deleting anyone's contact; under `Fields`,
//! `FillEmpty` never overwrites a user's value, `Ignore` never writes its field, and a changed phone number
//! replaces the old one on every copy.
//!
//! The assertions are about the folders graphsim ends up with; each scenario ends with a run that writes nothing.

use graphsim::{EstateParams, SeededTenant, SimConfig};
use producer::cli::RunArgs;
use serde_json::{json, Value};
use shared::config::Settings;

use crate::fleet::{embedded_args, run};
use crate::support::{self, settings_from, Estate};

async fn estate(seed: u64) -> Estate {
    Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 6,
            contacts_per_user: 2,
            overlap: 0.0,
            seed,
        },
    )
    .await
}

/// The estate's configuration with `edit` applied to its tenant.
fn settings_with(
    estate: &Estate,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> Settings {
    let mut doc = estate.config_json();
    if let Some(tenant) = doc["MicrosoftTenants"][0].as_object_mut() {
        edit(tenant);
    }
    settings_from(&doc)
}

fn with_state(dir: &std::path::Path) -> RunArgs {
    RunArgs {
        state_dir: Some(dir.to_owned()),
        ..embedded_args()
    }
}

/// Runs until a run writes nothing (at most `limit` runs), asserting each succeeds.
async fn settle(estate: &Estate, settings: &Settings, args: &RunArgs, limit: usize) {
    for _ in 0..limit {
        estate.sim.reset_stats();
        let report = run(settings, args).await;
        assert!(report.succeeded(), "{}", report.human());
        if estate.sim.stats().total_writes() == 0 {
            return;
        }
    }
    panic!("no run without writes after {limit} runs");
}

/// The contact holding `address` in `upn`'s default folder (`folder` for the central one).
fn find(
    estate: &Estate,
    t: &SeededTenant,
    upn: &str,
    folder: Option<&str>,
    address: &str,
) -> Value {
    estate
        .sim
        .contacts(&t.tenant_id, upn, folder)
        .into_iter()
        .find(|c| {
            c["emailAddresses"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["address"] == address))
        })
        .unwrap_or_else(|| panic!("{address} not in {upn} ({folder:?})"))
}

/// Whether a field as graphsim answers it is empty (`null`, `""`, `[]`, or an address without any part).
fn empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(parts) => parts.values().all(empty),
        _ => false,
    }
}

const PRIVATE: &str = "pia.private@example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_home_address_never_reaches_the_central_folder_or_another_mailbox_and_earlier_ones_are_cleared(
) {
    let estate = estate(141).await;
    let t = estate.tenants[0].clone();
    let users = t.mirror_target_upns.clone();
    let owner = &users[0];
    let own_id = estate.sim.add_contact(
        &t.tenant_id,
        owner,
        None,
        json!({
            "displayName": "Pia Private",
            "emailAddresses": [{"address": PRIVATE}],
            "mobilePhone": "+1 555 0142",
            "jobTitle": "Notary",
            "homeAddress": {"street": "1 Home Lane", "city": "Hometown", "postalCode": "12345"},
            "birthday": "1980-05-04T11:59:00Z",
            "spouseName": "Sam",
            "nickName": "Pip",
        }),
    );
    // Every contact users made themselves (seeded ones included); anything else in their folders is the tool's.
    let mut own_ids: Vec<String> = users
        .iter()
        .flat_map(|u| estate.sim.contacts(&t.tenant_id, u, None))
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    let state = support::scratch_dir("field-rules-privacy");
    let args = with_state(&state);

    // Before issue 14 every field travelled: an administrator may list them all.
    let everything: Vec<&str> = shared::model::ContactFields::GRAPH_NAMES.to_vec();
    let open = settings_with(&estate, |t| {
        t.insert("CentralFields".into(), json!(everything));
    });
    settle(&estate, &open, &args, 3).await;
    let central = find(
        &estate,
        &t,
        &t.shared_mailbox_upn,
        Some("All Contacts"),
        PRIVATE,
    );
    assert_eq!(
        central["homeAddress"]["street"], "1 Home Lane",
        "the open list lets it through"
    );
    assert_eq!(
        find(&estate, &t, &users[1], None, PRIVATE)["spouseName"],
        "Sam"
    );

    // The default: the next run clears the central contact (an update, the same contact) and every copy; the kept
    // feeds do not let the changed configuration skip anything.
    let default = settings_with(&estate, |_| {});
    settle(&estate, &default, &args, 3).await;
    let cleared = find(
        &estate,
        &t,
        &t.shared_mailbox_upn,
        Some("All Contacts"),
        PRIVATE,
    );
    assert_eq!(
        cleared["id"], central["id"],
        "cleared in place, not deleted and created again"
    );
    for holder in std::iter::once(&t.shared_mailbox_upn).chain(&users[1..]) {
        let folder = (holder == &t.shared_mailbox_upn).then_some("All Contacts");
        let c = find(&estate, &t, holder, folder, PRIVATE);
        for private in ["homeAddress", "birthday", "spouseName", "nickName"] {
            assert!(empty(&c[private]), "{private} of Pia reached {holder}: {c}");
        }
        assert_eq!(
            c["mobilePhone"], "+1 555 0142",
            "work data still travels to {holder}"
        );
        assert_eq!(c["jobTitle"], "Notary");
    }
    let own = estate
        .sim
        .contacts(&t.tenant_id, owner, None)
        .into_iter()
        .find(|c| c["id"] == own_id.as_str())
        .expect("the owner's own contact is kept");
    assert_eq!(
        own["homeAddress"]["street"], "1 Home Lane",
        "the owner's own data stays"
    );
    assert_eq!(own["spouseName"], "Sam");
    assert!(!empty(&own["birthday"]));

    // A user who joins later, and a new private contact: under the default nothing private ever travels.
    let hal = estate.sim.add_contact(
        &t.tenant_id,
        &users[2],
        None,
        json!({
            "displayName": "Hal Home",
            "emailAddresses": [{"address": "hal.home@example.org"}],
            "homeAddress": {"street": "2 Home Lane"},
            "homePhones": ["+1 555 0177"],
        }),
    );
    own_ids.push(hal);
    settle(&estate, &default, &args, 3).await;
    for holder in std::iter::once(&t.shared_mailbox_upn).chain(&users) {
        let folder = (holder == &t.shared_mailbox_upn).then_some("All Contacts");
        for c in estate.sim.contacts(&t.tenant_id, holder, folder) {
            if c["id"]
                .as_str()
                .is_some_and(|id| own_ids.iter().any(|o| o == id))
            {
                continue;
            }
            assert!(
                empty(&c["homeAddress"]),
                "a home address reached {holder}: {c}"
            );
            assert!(
                empty(&c["homePhones"]),
                "a home phone reached {holder}: {c}"
            );
            assert!(empty(&c["birthday"]), "a birthday reached {holder}: {c}");
        }
    }
    let _ = std::fs::remove_dir_all(&state);
}

const PAT: &str = "pat.policy@example.org";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fill_empty_keeps_users_values_ignore_never_writes_and_a_new_phone_replaces_the_old_one() {
    let estate = estate(142).await;
    let t = estate.tenants[0].clone();
    let users = t.mirror_target_upns.clone();
    let (owner, editor, clearer, bystander) = (&users[0], &users[1], &users[2], &users[3]);
    let own_id = estate.sim.add_contact(
        &t.tenant_id,
        owner,
        None,
        json!({
            "displayName": "Pat Policy",
            "emailAddresses": [{"address": PAT}],
            "jobTitle": "Engineer",
            "department": "R&D",
            "businessPhones": ["+1 555 0100"],
            "mobilePhone": "+1 555 0101",
        }),
    );
    let settings = settings_with(&estate, |t| {
        t.insert(
            "Fields".into(),
            json!({"jobTitle": "FillEmpty", "department": "Ignore"}),
        );
    });
    let state = support::scratch_dir("field-rules-policy");
    let args = with_state(&state);
    settle(&estate, &settings, &args, 3).await;
    for user in [editor, clearer, bystander] {
        let copy = find(&estate, &t, user, None, PAT);
        assert_eq!(
            copy["jobTitle"], "Engineer",
            "FillEmpty fills an empty field"
        );
        assert!(
            empty(&copy["department"]),
            "Ignore never writes, not even a new copy: {copy}"
        );
    }
    assert_eq!(
        find(
            &estate,
            &t,
            &t.shared_mailbox_upn,
            Some("All Contacts"),
            PAT
        )["department"],
        "R&D",
        "the central folder keeps the person's value"
    );

    // Users edit their copies; then the owner changes the person: a new title, department and number.
    let copy = find(&estate, &t, editor, None, PAT);
    support::patch_contact(
        &estate,
        &t,
        editor,
        copy["id"].as_str().expect("id"),
        json!({"jobTitle": "Our plumber", "department": "Plumbing"}),
    )
    .await;
    let copy = find(&estate, &t, clearer, None, PAT);
    support::patch_contact(
        &estate,
        &t,
        clearer,
        copy["id"].as_str().expect("id"),
        json!({"jobTitle": null}),
    )
    .await;
    support::patch_contact(
        &estate,
        &t,
        owner,
        &own_id,
        json!({"jobTitle": "CTO", "department": "Board", "businessPhones": ["+1 555 0199"], "mobilePhone": null}),
    )
    .await;
    settle(&estate, &settings, &args, 3).await;

    let central = find(
        &estate,
        &t,
        &t.shared_mailbox_upn,
        Some("All Contacts"),
        PAT,
    );
    assert_eq!(
        central["jobTitle"], "CTO",
        "the owner's edit is the person's"
    );
    assert_eq!(central["department"], "Board");
    let edited = find(&estate, &t, editor, None, PAT);
    assert_eq!(
        edited["jobTitle"], "Our plumber",
        "FillEmpty never overwrites a user's value"
    );
    assert_eq!(edited["department"], "Plumbing", "Ignore never writes");
    assert_eq!(
        find(&estate, &t, clearer, None, PAT)["jobTitle"],
        "CTO",
        "an emptied field is filled"
    );
    assert_eq!(
        find(&estate, &t, bystander, None, PAT)["jobTitle"],
        "Engineer"
    );
    for user in [editor, clearer, bystander] {
        let copy = find(&estate, &t, user, None, PAT);
        assert_eq!(
            copy["businessPhones"],
            json!(["+1 555 0199"]),
            "the new number replaces the old one in {user}"
        );
        assert!(
            empty(&copy["mobilePhone"]),
            "a cleared number is cleared under Overwrite in {user}"
        );
        if user != editor {
            assert!(empty(&copy["department"]), "Ignore never writes: {copy}");
        }
    }
    let _ = std::fs::remove_dir_all(&state);
}
