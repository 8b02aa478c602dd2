//! Both sources into one list for one receiving mailbox: the mirror's central contacts and the directory persons
//! that mailbox gets become the single "central" list `sync::plan_distribution` plans against.
//!
//! Why one list: a person must be one contact per mailbox whichever source knows them, and matching, ownership,
//! the deletion proof and the cap must stay the planner's. A leaver's managed copy goes because its sync id left
//! this list, exactly as a person leaving the central folder.
//!
//! Precedence: a directory person and a central contact sharing any e-mail address (normalised as the matching
//! rules do) are one contact. It keeps the central contact's identity (its sync id, notes stamp, categories), so
//! copies already distributed stay matched; the directory wins for every field it has (it is the organisation's
//! record) and the mirror fills the rest. Like any newer edit of a mirrored person, the directory's fields also
//! reach the users' own contacts of that person (their notes and categories never change, and they are never
//! deleted); a run that reads those mailboxes in full (without kept feeds, every run) publishes them into the
//! central folder, after which nothing is written. With feeds kept, phase 2's own writes are no change to the next
//! check, so the central folder keeps the mirror's values until the mailbox changes otherwise: every phone still
//! gets the directory's, which phase 2 lays over it on each run.
//! Directory persons sharing an address with an earlier one (by object id) are that person (a user and an org
//! contact with one mail): the first is kept.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::model::{Contact, ContactFields, EmailAddress, Mailbox};
use crate::sync::identity::property_sync_id;
use crate::sync::normalize::email_keys;

use super::mapping::MAX_EMAIL_ADDRESSES;
use super::selection::{persons_for, DirectoryPerson};

/// The id a directory person's entry has in the combined list (never a Graph id: it is not written anywhere).
fn entry_id(person: &DirectoryPerson) -> String {
    format!("directory:{}", person.object_id.trim().to_lowercase())
}

/// `directory` where it has a value, else `mirror`.
fn pick<T: Clone>(directory: &Option<T>, mirror: &Option<T>) -> Option<T> {
    directory.clone().or_else(|| mirror.clone())
}

/// `directory` when not empty, else `mirror`.
fn pick_list<T: Clone>(directory: &[T], mirror: &[T]) -> Vec<T> {
    if directory.is_empty() {
        mirror.to_vec()
    } else {
        directory.to_vec()
    }
}

/// The directory's addresses first, then the mirror's others, without duplicates, at most
/// [`MAX_EMAIL_ADDRESSES`].
fn merged_emails(directory: &[EmailAddress], mirror: &[EmailAddress]) -> Vec<EmailAddress> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for email in directory.iter().chain(mirror) {
        let Some(key) = email
            .address
            .as_deref()
            .map(|a| a.trim().to_lowercase())
            .filter(|a| !a.is_empty())
        else {
            continue;
        };
        if out.len() < MAX_EMAIL_ADDRESSES && seen.insert(key) {
            out.push(email.clone());
        }
    }
    out
}

/// The fields of a person both sources know: the directory's mapped fields where it has them, the mirror's for
/// the rest (and for every field the directory does not map).
pub fn overlay(directory: &ContactFields, mirror: &ContactFields) -> ContactFields {
    ContactFields {
        display_name: pick(&directory.display_name, &mirror.display_name),
        given_name: pick(&directory.given_name, &mirror.given_name),
        surname: pick(&directory.surname, &mirror.surname),
        company_name: pick(&directory.company_name, &mirror.company_name),
        department: pick(&directory.department, &mirror.department),
        job_title: pick(&directory.job_title, &mirror.job_title),
        office_location: pick(&directory.office_location, &mirror.office_location),
        manager: pick(&directory.manager, &mirror.manager),
        mobile_phone: pick(&directory.mobile_phone, &mirror.mobile_phone),
        business_address: pick(&directory.business_address, &mirror.business_address),
        business_phones: pick_list(&directory.business_phones, &mirror.business_phones),
        email_addresses: merged_emails(&directory.email_addresses, &mirror.email_addresses),
        ..mirror.clone()
    }
}

/// The combined list `receiver` is planned against: `central` (the mirror's folder; empty without a mirror) and
/// the selected `persons` but the receiver's own entry ([`super::persons_for`]), each person once. A central
/// contact sharing an address with the receiver's own entry is left out too: nobody is given their own entry.
/// `now` is the directory read's time: a directory entry counts as the newest edit, so its data reaches every
/// copy.
pub fn combine(
    receiver: &Mailbox,
    central: &[Contact],
    persons: &[DirectoryPerson],
    now: DateTime<Utc>,
) -> Vec<Contact> {
    let mut mine = persons_for(receiver, persons);
    let own_keys: BTreeSet<String> = persons
        .iter()
        .filter(|p| !mine.iter().any(|m| std::ptr::eq(*m, *p)))
        .flat_map(|p| email_keys(&p.fields))
        .collect();
    // Another entry with one of the receiver's own addresses (an org contact or another tenant's guest for the
    // same person) is the receiver too.
    mine.retain(|p| email_keys(&p.fields).is_disjoint(&own_keys));
    let mut out: Vec<Contact> = central
        .iter()
        .filter(|c| email_keys(&c.fields).is_disjoint(&own_keys))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    let central_keys: Vec<BTreeSet<String>> = out.iter().map(|c| email_keys(&c.fields)).collect();
    // The central contacts already claimed by a directory person, and the addresses directory entries hold.
    let mut claimed = vec![false; out.len()];
    let mut gone = vec![false; out.len()];
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut sorted: Vec<&DirectoryPerson> = mine;
    sorted.sort_by(|a, b| a.object_id.cmp(&b.object_id));
    let mut added = Vec::new();
    for person in sorted {
        let keys = email_keys(&person.fields);
        if keys.iter().any(|k| taken.contains(k)) {
            continue;
        }
        let mut dropped = Vec::new();
        let mut kept: Option<usize> = None;
        for (i, central_keys) in central_keys.iter().enumerate() {
            if claimed[i] || central_keys.is_disjoint(&keys) {
                continue;
            }
            claimed[i] = true;
            match kept {
                None => kept = Some(i),
                // A second central person with one of this person's addresses is this person too.
                Some(_) => dropped.push(i),
            }
        }
        match kept {
            Some(i) => {
                // The addresses of the other central contacts of this person follow (within Outlook's slots).
                let others: Vec<EmailAddress> = dropped
                    .iter()
                    .flat_map(|&d| out[d].fields.email_addresses.clone())
                    .collect();
                let contact = &mut out[i];
                contact.fields = overlay(&person.fields, &contact.fields);
                contact.fields.email_addresses =
                    merged_emails(&contact.fields.email_addresses, &others);
                contact.last_modified = contact.last_modified.max(Some(now));
                taken.extend(email_keys(&contact.fields));
                for &j in dropped.iter().chain([&i]) {
                    taken.extend(central_keys[j].iter().cloned());
                }
            }
            None => {
                taken.extend(keys);
                added.push(Contact {
                    id: entry_id(person),
                    last_modified: Some(now),
                    fields: person.fields.clone(),
                    personal_notes: None,
                    categories: Vec::new(),
                    sync_id_property: Some(person.sync_id.as_str().to_owned()),
                    owner_property: None,
                    photo_hash: None,
                    photo_source: None,
                    has_picture: false,
                    change_key: None,
                });
            }
        }
        for d in dropped {
            gone[d] = true;
        }
    }
    let mut out: Vec<Contact> = out
        .into_iter()
        .zip(gone)
        .filter_map(|(contact, gone)| (!gone).then_some(contact))
        .collect();
    out.extend(added);
    out
}

/// Leaves out of `contacts` the copies of a directory person (their extended property names one of `persons`'
/// sync ids): when phase 1 rebuilds a lost central folder from the copies in users' mailboxes, a directory copy is
/// not a mirrored person. (A leaver's copy is not recognised: its person is no longer read.)
pub fn drop_directory_copies(contacts: &mut Vec<Contact>, persons: &[DirectoryPerson]) {
    let ids: BTreeSet<&str> = persons.iter().map(|p| p.sync_id.as_str()).collect();
    contacts.retain(|c| !property_sync_id(c).is_some_and(|id| ids.contains(id.as_str())));
}
