//! Tests of [`super::cleanup`] and [`super::relocate`]: whole tenants synced with both phases in the
//! [`super::simulate`] model, then cleaned up or moved, checked against what the owners had before.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use crate::config::{DeletionPolicy, MirrorOptions};
use crate::model::{Contact, Mailbox, WriteOp};

use super::identity::{ownership, property_sync_id, Ownership};
use super::simulate::apply;
use super::stamp::{compose, NotesStamp};
use super::tests::contact;
use super::*;

const TENANT: &str = "contoso.onmicrosoft.com";

fn options() -> MirrorOptions {
    MirrorOptions {
        central_folder_name: "All Contacts".into(),
        managed_category: Some("Company".into()),
        stamp_notes: true,
        opt_out_category: "Private".into(),
        update_existing: true,
        fields: Default::default(),
        deletion: DeletionPolicy {
            enabled: true,
            max_share: 0.10,
        },
    }
}

fn mailbox(name: &str) -> Mailbox {
    Mailbox {
        id: format!("id-{name}"),
        upn: format!("{name}@contoso.com"),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0)
        .single()
        .expect("valid time")
}

fn ctx(owner: &Mailbox, minutes: i64) -> PlanContext {
    PlanContext {
        tenant_id: TENANT.into(),
        owner: owner.clone(),
        options: options(),
        now: now() + Duration::minutes(minutes),
        rebuild_central: false,
    }
}

/// A tenant after a full sync (both phases): the central folder and every user's folder.
struct Synced {
    shared: Mailbox,
    central: Vec<Contact>,
    users: Vec<(Mailbox, Vec<Contact>)>,
}

/// Runs phase 1 then phase 2 for every user, each applied by the model.
fn sync(users: Vec<(Mailbox, Vec<Contact>)>) -> Synced {
    let shared = mailbox("shared");
    let sources: Vec<SourceMailbox> = users
        .iter()
        .map(|(mailbox, contacts)| SourceMailbox {
            mailbox: mailbox.clone(),
            contacts: contacts.clone(),
        })
        .collect();
    let mut central = Vec::new();
    let plan = plan_central(&ctx(&shared, 1), &sources, &central);
    apply(&plan, &mut central, now() + Duration::minutes(1)).expect("phase 1 applies");
    let mut synced = Vec::new();
    for (mailbox, mut contacts) in users {
        let plan = plan_distribution(&ctx(&mailbox, 2), &central, &mailbox, &contacts)
            .expect("phase 2 is not refused");
        apply(&plan, &mut contacts, now() + Duration::minutes(2)).expect("phase 2 applies");
        synced.push((mailbox, contacts));
    }
    Synced {
        shared,
        central,
        users: synced,
    }
}

fn cleaned(
    mailbox: &Mailbox,
    folder: &mut Vec<Contact>,
    scope: &CleanupScope<'_>,
    minutes: i64,
) -> Plan {
    let plan = plan_cleanup(&ctx(mailbox, minutes), mailbox, folder, scope);
    apply(&plan, folder, now() + Duration::minutes(minutes)).expect("cleanup applies");
    plan
}

fn own_contacts() -> impl Strategy<Value = Vec<(Mailbox, Vec<Contact>)>> {
    let person = (0usize..6, 0usize..4, proptest::option::of("[a-z ]{0,12}"));
    proptest::collection::vec(proptest::collection::vec(person, 0..5), 1..5).prop_map(|users| {
        users
            .into_iter()
            .enumerate()
            .map(|(u, people)| {
                let owner = mailbox(&format!("u{u}"));
                let contacts = people
                    .into_iter()
                    .enumerate()
                    .map(|(i, (who, minutes, note))| {
                        let mail = format!("p{who}@example.com");
                        let mut c = contact(
                            &format!("c{u}-{i}"),
                            &format!("Person {who}"),
                            &[&mail],
                            minutes as i64,
                        );
                        c.personal_notes = note;
                        c
                    })
                    .collect();
                (owner, contacts)
            })
            .collect()
    })
}

proptest! {
    /// Cleanup after a sync leaves each mailbox with exactly its owner's contacts (same ids), each note text as
    /// before and no sync id; it empties the central folder, and a second cleanup plans nothing.
    #[test]
    fn cleanup_gives_every_mailbox_back_its_own_contacts_and_notes(users in own_contacts()) {
        let before: BTreeMap<String, BTreeMap<String, String>> = users
            .iter()
            .map(|(m, contacts)| {
                let notes = contacts
                    .iter()
                    .map(|c| (c.id.clone(), c.personal_notes.clone().unwrap_or_default()))
                    .collect();
                (m.id.clone(), notes)
            })
            .collect();
        let mut synced = sync(users);
        let ids = BTreeSet::new();
        let scope = CleanupScope { source: CleanupSource::All, directory_ids: &ids, persons: &synced.central };
        for (mailbox, folder) in &mut synced.users {
            cleaned(mailbox, folder, &scope, 3);
            let notes: BTreeMap<String, String> = folder
                .iter()
                .map(|c| (c.id.clone(), c.personal_notes.clone().unwrap_or_default()))
                .collect();
            prop_assert_eq!(&notes, &before[&mailbox.id]);
            prop_assert!(folder.iter().all(|c| property_sync_id(c).is_none()));
            prop_assert!(folder.iter().all(|c| !c.categories.iter().any(|k| k == "Company")));
            let again = plan_cleanup(&ctx(mailbox, 4), mailbox, folder, &scope);
            prop_assert!(again.is_empty(), "{:?}", again);
        }
        let central_scope = CleanupScope { source: CleanupSource::Mirror, directory_ids: &ids, persons: &[] };
        let shared = synced.shared.clone();
        cleaned(&shared, &mut synced.central, &central_scope, 5);
        prop_assert!(synced.central.is_empty());
    }

    /// A changed target folder: the managed copies move (created in the new folder, then deleted from the old one,
    /// whatever the cap), owners' own contacts stay where they are untouched, and planning the new folder again
    /// plans nothing.
    #[test]
    fn a_move_takes_every_managed_copy_and_no_owner_contact(users in own_contacts()) {
        let synced = sync(users);
        for (mailbox, old) in &synced.users {
            let c = ctx(mailbox, 3);
            let mut new_folder = Vec::new();
            let mut plan = plan_distribution(&c, &synced.central, mailbox, &new_folder).expect("no deletion");
            carry_over(&c, mailbox, &mut plan, old, &synced.central);
            apply(&plan, &mut new_folder, c.now).expect("applies");
            let mut replaced = matched_persons(&plan);
            replaced.extend(plan.writes().filter_map(|op| match op {
                WriteOp::Create(w) => w.sync_id.as_deref().and_then(SyncId::parse),
                _ => None,
            }));
            let out = plan_move_out(&c, mailbox, old, &replaced, &synced.central).expect("a move is not refused");
            let mut old_after = old.clone();
            apply(&out, &mut old_after, c.now).expect("applies");
            for contact in old {
                let owners = ownership(TENANT, mailbox, contact).is_owner_created();
                let kept = old_after.iter().find(|k| k.id == contact.id);
                if owners {
                    prop_assert_eq!(kept, Some(contact), "owner's contact untouched");
                } else {
                    prop_assert!(kept.is_none(), "managed copy {} moved", contact.id);
                }
            }
            let again = plan_distribution(&ctx(mailbox, 4), &synced.central, mailbox, &new_folder).expect("plans");
            prop_assert!(again.is_empty(), "{:?}", again);
        }
    }
}

fn stamped(mut c: Contact, sync: &SyncId, created_by: &str, property: bool) -> Contact {
    let stamp = NotesStamp {
        sync_id: Some(sync.clone()),
        created_by: Some(created_by.into()),
        ..NotesStamp::default()
    };
    c.personal_notes = Some(compose(c.personal_notes.as_deref().unwrap_or(""), &stamp));
    if property {
        c.sync_id_property = Some(sync.to_string());
    }
    c
}

/// Cleanup never deletes a user's own contact, even one carrying a stamp: a pasted notes stamp is left alone, an
/// owner's contact the tool stamped (by object id, or under a UPN since renamed) is unstamped with its note text
/// kept, and a copy holding the owner's note is handed over, not deleted.
#[test]
fn cleanup_never_deletes_an_own_contact_even_a_stamped_one() {
    let bob = mailbox("bob");
    let person = SyncId::derive(TENANT, "id-alice", "a1");
    let central = vec![stamped(
        contact("central-1", "Ann", &["ann@example.com"], 0),
        &person,
        "id-alice",
        true,
    )];
    let folder = vec![
        // A pasted stamp line: notes only, no property.
        stamped(
            contact("b1", "Ann", &["ann@example.com"], 0),
            &person,
            "x",
            false,
        ),
        // Stamped by the tool as bob's own (object id).
        stamped(
            contact("b2", "Ann", &["ann@example.com"], 0),
            &person,
            "id-bob",
            true,
        ),
        // Stamped by the tool as bob's own under his UPN before a rename.
        stamped(
            contact("b3", "Ann", &["ann@example.com"], 0),
            &person,
            "old-bob@contoso.com",
            true,
        ),
        // A managed copy with bob's own note.
        {
            let mut c = contact("b4", "Ann", &["ann@example.com"], 0);
            c.personal_notes = Some("met at the fair".into());
            c.categories = vec!["Company".into(), "VIP".into()];
            stamped(c, &person, "id-alice", true)
        },
        // A plain managed copy.
        stamped(
            contact("b5", "Ann", &["ann@example.com"], 0),
            &person,
            "id-alice",
            true,
        ),
    ];
    let ids = BTreeSet::new();
    let scope = CleanupScope {
        source: CleanupSource::All,
        directory_ids: &ids,
        persons: &central,
    };
    let plan = plan_cleanup(&ctx(&bob, 0), &bob, &folder, &scope);
    let by_id: BTreeMap<&str, (ActionKind, Reason)> = plan
        .items
        .iter()
        .map(|i| (i.contact_id.as_deref().unwrap_or(""), (i.action, i.reason)))
        .collect();
    assert_eq!(by_id["b1"], (ActionKind::Skip, Reason::OwnerCreated));
    assert_eq!(by_id["b2"], (ActionKind::Update, Reason::Unstamped));
    assert_eq!(
        ownership(TENANT, &bob, &folder[2]),
        Ownership::ManagedCopy,
        "alone, the renamed stamp looks like a copy"
    );
    assert_eq!(by_id["b3"], (ActionKind::Update, Reason::Unstamped));
    assert_eq!(by_id["b4"], (ActionKind::Update, Reason::HandedOver));
    assert_eq!(by_id["b5"], (ActionKind::Delete, Reason::CleanedUp));
    let mut after = folder.clone();
    apply(&plan, &mut after, now()).expect("applies");
    let b4 = after.iter().find(|c| c.id == "b4").expect("handed over");
    assert_eq!(b4.personal_notes.as_deref(), Some("met at the fair"));
    assert_eq!(b4.categories, vec!["VIP".to_owned()]);
    assert!(after.iter().all(|c| property_sync_id(c).is_none()));
    assert_eq!(after.len(), 4);
}

/// `--source directory` removes the directory persons' copies only, `--source mirror` every other copy.
#[test]
fn each_source_removes_its_own_copies_only() {
    let bob = mailbox("bob");
    let mirrored = SyncId::derive(TENANT, "id-alice", "a1");
    let listed = crate::directory::directory_sync_id(TENANT, "obj-1");
    let folder = vec![
        stamped(
            contact("m", "Ann", &["ann@example.com"], 0),
            &mirrored,
            "id-alice",
            true,
        ),
        {
            let mut c = contact("d", "Dan", &["dan@example.com"], 0);
            c.sync_id_property = Some(listed.to_string());
            c
        },
    ];
    let ids: BTreeSet<SyncId> = [listed].into();
    let deleted = |source| {
        let scope = CleanupScope {
            source,
            directory_ids: &ids,
            persons: &[],
        };
        plan_cleanup(&ctx(&bob, 0), &bob, &folder, &scope)
            .items
            .iter()
            .filter(|i| i.action == ActionKind::Delete)
            .filter_map(|i| i.contact_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(deleted(CleanupSource::Directory), vec!["d".to_owned()]);
    assert_eq!(deleted(CleanupSource::Mirror), vec!["m".to_owned()]);
    assert_eq!(
        deleted(CleanupSource::All),
        vec!["d".to_owned(), "m".to_owned()]
    );
    assert!(!CleanupSource::Directory.includes_central());
    assert_eq!("ALL".parse::<CleanupSource>(), Ok(CleanupSource::All));
    assert!("everything".parse::<CleanupSource>().is_err());
}

/// An old copy goes only once its replacement exists; a leaver's old copy goes within the cap, and beyond it the
/// move is refused naming the mailbox and the count, while moved copies never count against the cap.
#[test]
fn old_copies_wait_for_their_replacement_and_leavers_stay_within_the_cap() {
    let bob = mailbox("bob");
    let persons: Vec<Contact> = (0..20)
        .map(|i| {
            let sync = SyncId::derive(TENANT, "id-alice", &format!("a{i}"));
            stamped(
                contact(&format!("p{i}"), "P", &[&format!("p{i}@x.com")], 0),
                &sync,
                "id-alice",
                true,
            )
        })
        .collect();
    let old: Vec<Contact> = persons
        .iter()
        .enumerate()
        .map(|(i, p)| Contact {
            id: format!("old{i:02}"),
            ..p.clone()
        })
        .collect();
    let c = ctx(&bob, 0);
    let all: BTreeSet<SyncId> = persons.iter().filter_map(property_sync_id).collect();
    let plan =
        plan_move_out(&c, &bob, &old, &all, &persons).expect("a move is not a mass deletion");
    assert_eq!(plan.counts().deleted, 20);
    assert!(plan.items.iter().all(|i| i.reason == Reason::Moved));

    let none = BTreeSet::new();
    let plan = plan_move_out(&c, &bob, &old, &none, &persons).expect("nothing to delete");
    assert!(plan.is_empty());
    assert!(plan
        .items
        .iter()
        .all(|i| i.reason == Reason::AwaitingReplacement));

    // Two of twenty left the sources: the cap (10% of 20) lets both go; three are refused.
    let plan = plan_move_out(&c, &bob, &old, &none, &persons[2..]).expect("within the cap");
    assert_eq!(plan.counts().deleted, 2);
    match plan_move_out(&c, &bob, &old, &none, &persons[3..]) {
        Err(PlanRefusal::TooManyDeletions {
            mailbox, deletes, ..
        }) => {
            assert_eq!((mailbox.as_str(), deletes), ("bob@contoso.com", 3));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
