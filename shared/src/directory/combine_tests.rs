//! The combined list of both sources: one contact per person, the directory's fields first.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use crate::config::MemberType;
use crate::model::{Contact, ContactFields, EmailAddress, Mailbox};
use crate::sync::normalize::email_keys;
use crate::sync::SyncId;

const TENANT: &str = "contoso.onmicrosoft.com";

fn receiver() -> Mailbox {
    Mailbox {
        id: "receiver-id".into(),
        upn: "receiver@contoso.com".into(),
    }
}

fn emails(addresses: &[String]) -> Vec<EmailAddress> {
    addresses
        .iter()
        .map(|a| EmailAddress {
            name: None,
            address: Some(a.clone()),
        })
        .collect()
}

fn person(id: &str, addresses: &[String], job: Option<&str>) -> DirectoryPerson {
    DirectoryPerson {
        kind: MemberType::Member,
        object_id: id.into(),
        user_principal_name: None,
        sync_id: directory_sync_id(TENANT, id),
        fields: ContactFields {
            display_name: Some(format!("Dir {id}").into()),
            job_title: job.map(Into::into),
            email_addresses: emails(addresses),
            ..ContactFields::default()
        },
    }
}

fn central(id: &str, addresses: &[String], notes: Option<&str>) -> Contact {
    Contact {
        id: id.into(),
        last_modified: Some(
            Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("date"),
        ),
        fields: ContactFields {
            display_name: Some(format!("Mirror {id}").into()),
            job_title: Some("mirror title".into()),
            nick_name: Some("nick".into()),
            email_addresses: emails(addresses),
            ..ContactFields::default()
        },
        personal_notes: notes.map(str::to_owned),
        categories: Vec::new(),
        sync_id_property: Some(SyncId::derive(TENANT, "m", id).as_str().to_owned()),
        owner_property: None,
        photo_hash: None,
        photo_source: None,
        has_picture: false,
        change_key: None,
    }
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0)
        .single()
        .expect("date")
}

#[test]
fn a_person_in_both_sources_is_one_contact_with_the_directorys_fields_and_the_mirrors_identity() {
    let c = central("c1", &["Ann@Contoso.com".into()], None);
    let p = person("u1", &["ann@contoso.com".into()], Some("CEO"));
    let out = combine(
        &receiver(),
        std::slice::from_ref(&c),
        std::slice::from_ref(&p),
        now(),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let one = &out[0];
    assert_eq!(
        one.sync_id_property, c.sync_id_property,
        "copies stay matched"
    );
    assert_eq!(
        one.fields.job_title.as_deref(),
        Some("CEO"),
        "directory wins"
    );
    assert_eq!(one.fields.display_name.as_deref(), Some("Dir u1"));
    assert_eq!(
        one.fields.nick_name.as_deref(),
        Some("nick"),
        "mirror fills"
    );
    assert_eq!(
        one.last_modified,
        Some(now()),
        "the directory reaches copies"
    );
    // A directory person without a value leaves the mirror's.
    let q = person("u1", &["ann@contoso.com".into()], None);
    let out = combine(&receiver(), &[c], std::slice::from_ref(&q), now());
    assert_eq!(out[0].fields.job_title.as_deref(), Some("mirror title"));
}

/// Found by `directory::a_person_in_the_directory_and_in_personal_contacts_is_one_contact_per_mailbox`: a
/// colleague's personal contact of the receiver, mirrored, gave the receiver a contact of themselves.
#[test]
fn nobody_is_given_their_own_entry_from_either_source() {
    let me = DirectoryPerson {
        object_id: "receiver-id".into(),
        ..person("receiver-id", &["me@contoso.com".into()], None)
    };
    let other = person("u2", &["bob@contoso.com".into()], None);
    let c = central("c1", &["ME@contoso.com".into()], None);
    let out = combine(&receiver(), &[c], &[me, other.clone()], now());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].sync_id_property.as_deref(),
        Some(other.sync_id.as_str())
    );
}

/// Found by `sync::tests::combined`: another entry with one of the receiver's own addresses (an org contact, or a
/// second tenant's guest of the receiver) was given to the receiver as a contact of themselves.
#[test]
fn another_entry_with_the_receivers_own_address_is_not_given_to_the_receiver() {
    let me = person("receiver-id", &["me@contoso.com".into()], None);
    let my_org_contact = person("org-me", &["ME@contoso.com".into()], None);
    let other = person("u2", &["bob@contoso.com".into()], None);
    let out = combine(
        &receiver(),
        &[],
        &[me, my_org_contact, other.clone()],
        now(),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        out[0].sync_id_property.as_deref(),
        Some(other.sync_id.as_str())
    );
}

#[test]
fn a_directory_only_person_carries_its_directory_sync_id() {
    let p = person("u2", &["bob@contoso.com".into()], None);
    let out = combine(&receiver(), &[], std::slice::from_ref(&p), now());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].sync_id_property.as_deref(), Some(p.sync_id.as_str()));
    assert_eq!(out[0].fields, p.fields);
}

#[test]
fn only_directory_copies_are_dropped() {
    let p = person("u1", &["ann@contoso.com".into()], None);
    let mut copy = central("x1", &["ann@contoso.com".into()], None);
    copy.sync_id_property = Some(p.sync_id.as_str().to_uppercase());
    let mirrored = central("x2", &["bob@contoso.com".into()], None);
    let mut contacts = vec![copy, mirrored.clone()];
    drop_directory_copies(&mut contacts, std::slice::from_ref(&p));
    assert_eq!(contacts, vec![mirrored]);
}

fn address() -> impl Strategy<Value = String> {
    (0u8..6).prop_map(|n| format!("p{n}@contoso.com"))
}

proptest! {
    /// Whatever overlaps, the combined list never holds two contacts with one e-mail address (when the central
    /// folder itself has none: phase 1 guarantees that), every directory address is someone's, and a person
    /// merged with a central contact has the directory's value for every field it has.
    #[test]
    fn never_two_contacts_for_one_address_and_directory_fields_win(
        central_sets in proptest::collection::vec(proptest::collection::vec(address(), 0..3), 0..4),
        person_sets in proptest::collection::vec((proptest::collection::vec(address(), 0..3), proptest::option::of("[a-z]{1,4}")), 0..5),
    ) {
        // A central folder without shared addresses, as phase 1 leaves it.
        let mut used = std::collections::BTreeSet::new();
        let centrals: Vec<Contact> = central_sets.iter().enumerate().filter_map(|(i, set)| {
            let set: Vec<String> = set.iter().filter(|a| used.insert((*a).clone())).cloned().collect();
            (!set.is_empty()).then(|| central(&format!("c{i}"), &set, None))
        }).collect();
        let persons: Vec<DirectoryPerson> = person_sets.iter().enumerate()
            .map(|(i, (set, job))| person(&format!("u{i}"), set, job.as_deref()))
            .collect();
        let out = combine(&receiver(), &centrals, &persons, now());
        let mut seen = std::collections::BTreeSet::new();
        for contact in &out {
            for key in email_keys(&contact.fields) {
                prop_assert!(seen.insert(key.clone()), "two contacts for {key}: {out:?}");
            }
        }
        for p in &persons {
            let keys = email_keys(&p.fields);
            if keys.is_empty() {
                prop_assert!(out.iter().any(|c| c.sync_id_property.as_deref() == Some(p.sync_id.as_str())));
                continue;
            }
            let holder = out.iter().find(|c| !email_keys(&c.fields).is_disjoint(&keys));
            // Without a holder, the person was merged into another through a central contact linking both,
            // whose addresses overflowed Outlook's three slots.
            let Some(holder) = holder else {
                let merged_away = centrals.iter().any(|c| {
                    !email_keys(&c.fields).is_disjoint(&keys) && !out.iter().any(|o| o.id == c.id)
                });
                prop_assert!(merged_away, "{p:?} lost: {out:?}");
                continue;
            };
            if holder.sync_id_property.as_deref() == Some(p.sync_id.as_str()) || holder.fields.display_name == p.fields.display_name {
                if let Some(job) = &p.fields.job_title {
                    prop_assert_eq!(holder.fields.job_title.as_ref(), Some(job));
                }
            }
        }
    }
}
