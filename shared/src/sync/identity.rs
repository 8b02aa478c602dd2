//! Who a contact is (its sync id) and whose it is (owner-created or a managed copy).
//!
//! Why this exists: every decision the rules make starts from these two questions, and both must be answered the
//! same way in both phases and on every run. Sync ids are deterministic (UUID v5 of tenant, source mailbox and
//! source contact id) so a job retried after a crash finds what it already created instead of creating it again.
//! Ownership decides what the tool may ever delete: only managed copies, never what the mailbox owner created.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Contact, Mailbox};

use super::stamp::NotesStamp;

/// The UUID v5 namespace of derived sync ids. Fixed forever: changing it would give every contact a new identity.
pub const SYNC_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_2c4e_93a7_4d58_b0e2_7c1d_5a9f_3e60);

/// A contact's identity across mailboxes: a UUID string, compared in lower case. A boxed `str`: a phase-2 plan
/// holds several per contact, so the exact size matters (issue 10, scenario 10).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SyncId(Box<str>);

impl SyncId {
    /// The sync id of a person first published from `contact_id` in `source_mailbox_id`:
    /// UUID v5 in [`SYNC_ID_NAMESPACE`] over `"{tenant lower-cased}|{mailbox id}|{contact id}"`.
    pub fn derive(tenant_id: &str, source_mailbox_id: &str, source_contact_id: &str) -> SyncId {
        let name = format!(
            "{}|{}|{}",
            tenant_id.trim().to_lowercase(),
            source_mailbox_id,
            source_contact_id
        );
        SyncId(
            Uuid::new_v5(&SYNC_ID_NAMESPACE, name.as_bytes())
                .hyphenated()
                .to_string()
                .into_boxed_str(),
        )
    }

    /// A sync id as read from a mailbox (extended property or notes). Trimmed and lower-cased; a GUID in any
    /// accepted spelling (braces, upper case) is brought to its hyphenated form. `None` when blank.
    pub fn parse(value: &str) -> Option<SyncId> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        Some(match Uuid::try_parse(value) {
            Ok(uuid) => SyncId(uuid.hyphenated().to_string().into_boxed_str()),
            Err(_) => SyncId(value.to_lowercase().into_boxed_str()),
        })
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SyncId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A contact's sync id from its extended property, if it has a usable one.
pub fn property_sync_id(contact: &Contact) -> Option<SyncId> {
    contact.sync_id_property.as_deref().and_then(SyncId::parse)
}

/// The identity of a contact: the extended property, else the notes stamp's `SyncId`.
pub fn effective_sync_id(contact: &Contact) -> Option<SyncId> {
    property_sync_id(contact)
        .or_else(|| NotesStamp::parse(contact.personal_notes.as_deref()).sync_id)
}

/// Why a contact counts as created by its mailbox owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerReason {
    /// It carries no sync id at all: the tool never stamped it.
    Unstamped,
    /// Its sync id is the one derived from itself: it is the original the person was first published from.
    OwnOriginal,
    /// Its sync id is only in the notes: anyone can paste a stamp line, and the replaced script stamped owners'
    /// own contacts that way, so a notes stamp proves nothing about who made the contact.
    NotesStampOnly,
    /// Its notes say `CreatedBy=<this mailbox>`, by object id (what the tool writes: it survives a rename) or by
    /// UPN (older stamps).
    CreatedByOwner,
    /// Its owner mark ([`crate::model::OWNER_PROPERTY`]) names this mailbox: the tool stamped it as the owner's,
    /// whatever its notes say now.
    MarkedOwn,
    /// Phase 2 only: it carries the extended property, but its `CreatedBy` is not the central person's (which the
    /// tool copies into every copy it makes), so the tool stamped it as an owner's contact, under a UPN since
    /// renamed.
    StampedAsOwn,
}

/// Whose a contact is, as far as the tool may act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// The mailbox owner created it; the tool never deletes it.
    OwnerCreated(OwnerReason),
    /// A copy the tool distributed; deletable when its person leaves the central folder.
    ManagedCopy,
}

impl Ownership {
    /// Whether this is [`Ownership::OwnerCreated`].
    pub fn is_owner_created(self) -> bool {
        matches!(self, Ownership::OwnerCreated(_))
    }
}

/// Whether a `CreatedBy` stamp value names `mailbox`: its immutable object id, or its UPN (case-insensitive).
pub fn names_mailbox(created_by: &str, mailbox: &Mailbox) -> bool {
    let by = created_by.trim();
    by.eq_ignore_ascii_case(mailbox.id.trim()) || by.eq_ignore_ascii_case(mailbox.upn.trim())
}

/// Classifies `contact` as it sits in `mailbox` of tenant `tenant_id`.
///
/// Fail safe: a contact is a managed copy only with proof. The proof is the sync-id extended property, which only
/// this tool writes (on copies of a person the central folder held, and on owners' contacts matched to such a
/// person, which are told apart by `CreatedBy`). Without it (no sync id, or one only in the notes) the contact is
/// the owner's, and so is one whose stamp names this mailbox by object id or UPN.
pub fn ownership(tenant_id: &str, mailbox: &Mailbox, contact: &Contact) -> Ownership {
    let stamp = NotesStamp::parse(contact.personal_notes.as_deref());
    let property = property_sync_id(contact);
    if property.is_none() && stamp.sync_id.is_none() {
        // Decided without the derived id (a SHA-1).
        return Ownership::OwnerCreated(OwnerReason::Unstamped);
    }
    let derived = SyncId::derive(tenant_id, &mailbox.id, &contact.id);
    ownership_of(
        mailbox,
        property.as_ref(),
        &stamp,
        contact.owner_property.as_deref(),
        &derived,
    )
}

/// [`ownership`] from what a caller has computed of the contact already: its property sync id, its parsed notes
/// stamp, its owner mark and its derived sync id (phase 2 needs them for matching, and plans every contact of a
/// mailbox).
pub fn ownership_of(
    mailbox: &Mailbox,
    property: Option<&SyncId>,
    stamp: &NotesStamp,
    mark: Option<&str>,
    derived: &SyncId,
) -> Ownership {
    let Some(id) = property.or(stamp.sync_id.as_ref()) else {
        return Ownership::OwnerCreated(OwnerReason::Unstamped);
    };
    if id == derived {
        return Ownership::OwnerCreated(OwnerReason::OwnOriginal);
    }
    if stamp
        .created_by
        .as_deref()
        .is_some_and(|by| names_mailbox(by, mailbox))
    {
        return Ownership::OwnerCreated(OwnerReason::CreatedByOwner);
    }
    if mark.is_some_and(|by| names_mailbox(by, mailbox)) {
        return Ownership::OwnerCreated(OwnerReason::MarkedOwn);
    }
    if property.is_none() {
        return Ownership::OwnerCreated(OwnerReason::NotesStampOnly);
    }
    Ownership::ManagedCopy
}

/// Whether a contact carrying the extended property was stamped as an owner's own contact rather than copied from
/// its person: the tool copies the person's `CreatedBy` into every copy it makes, so a `CreatedBy` naming someone
/// else (an owner's UPN since renamed) proves an owner's contact ([`OwnerReason::StampedAsOwn`]). `person_creator`
/// is the person's `CreatedBy` as its source holds it, `contact_created_by` the contact's notes stamp's; without
/// one on either side nothing is proven. Phase 2 and cleanup both decide with this.
pub fn stamped_as_own(contact_created_by: Option<&str>, person_creator: Option<&str>) -> bool {
    person_creator
        .zip(contact_created_by)
        .is_some_and(|(creator, by)| !creator.trim().eq_ignore_ascii_case(by.trim()))
}

/// Each person's `CreatedBy` by sync id, as `persons` (the list a mailbox is planned against) hold it; the first
/// by id of several with one sync id, as phase 2 uses.
pub fn creators_of(persons: &[Contact]) -> BTreeMap<SyncId, Option<String>> {
    let mut sorted: Vec<&Contact> = persons.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = BTreeMap::new();
    for person in sorted {
        if let Some(id) = effective_sync_id(person) {
            out.entry(id)
                .or_insert_with(|| NotesStamp::parse(person.personal_notes.as_deref()).created_by);
        }
    }
    out
}

/// [`ownership`], completed by [`stamped_as_own`] against the person the contact's property names (`creators`,
/// from [`creators_of`]): how cleanup and moves judge a contact outside phase 2's matching, with phase 2's rule.
pub fn ownership_among(
    tenant_id: &str,
    mailbox: &Mailbox,
    contact: &Contact,
    creators: &BTreeMap<SyncId, Option<String>>,
) -> Ownership {
    let judged = ownership(tenant_id, mailbox, contact);
    let creator = property_sync_id(contact).and_then(|id| creators.get(&id));
    match creator {
        Some(creator)
            if judged == Ownership::ManagedCopy
                && stamped_as_own(
                    NotesStamp::parse(contact.personal_notes.as_deref())
                        .created_by
                        .as_deref(),
                    creator.as_deref(),
                ) =>
        {
            Ownership::OwnerCreated(OwnerReason::StampedAsOwn)
        }
        _ => judged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_tenant_case_insensitive() {
        let a = SyncId::derive("Contoso.onmicrosoft.com", "m1", "c1");
        let b = SyncId::derive("contoso.onmicrosoft.com", "m1", "c1");
        assert_eq!(a, b);
        assert_ne!(a, SyncId::derive("contoso.onmicrosoft.com", "m1", "c2"));
        assert_ne!(a, SyncId::derive("contoso.onmicrosoft.com", "m2", "c1"));
        assert_eq!(SyncId::parse(&a.as_str().to_uppercase()), Some(a.clone()));
        assert_eq!(SyncId::parse(&format!("{{{a}}}")), Some(a));
        assert_eq!(SyncId::parse("  "), None);
    }

    /// Each way a contact is judged, from what it carries (the extended property, the notes stamp's `SyncId` and
    /// `CreatedBy`); phase 2 reaches the same answers through [`ownership_of`] with the parts it computed itself.
    #[test]
    fn ownership_tells_each_kind_of_contact() {
        let mailbox = Mailbox {
            id: "m-dan".into(),
            upn: "dan@contoso.com".into(),
        };
        let person = SyncId::derive(TENANT, "m-ada", "c-ada");
        let marked =
            |property: Option<&SyncId>, stamp_id: Option<&SyncId>, by: Option<&str>, mark: &str| {
                let stamp = NotesStamp {
                    sync_id: stamp_id.cloned(),
                    created_by: by.map(str::to_owned),
                    ..NotesStamp::default()
                };
                Contact {
                    id: "c-dan".into(),
                    last_modified: None,
                    fields: crate::model::ContactFields::default(),
                    personal_notes: Some(stamp.lines().join("\n")).filter(|n| !n.is_empty()),
                    categories: Vec::new(),
                    sync_id_property: property.map(|p| p.as_str().to_owned()),
                    owner_property: Some(mark.to_owned()).filter(|m| !m.is_empty()),
                    photo_hash: None,
                    photo_source: None,
                    has_picture: false,
                    change_key: None,
                }
            };
        let contact = |property: Option<&SyncId>, stamp_id: Option<&SyncId>, by: Option<&str>| {
            marked(property, stamp_id, by, "")
        };
        let own = SyncId::derive(TENANT, "m-dan", "c-dan");
        let cases = [
            (
                contact(None, None, None),
                Ownership::OwnerCreated(OwnerReason::Unstamped),
            ),
            (
                contact(Some(&own), None, Some("ada@contoso.com")),
                Ownership::OwnerCreated(OwnerReason::OwnOriginal),
            ),
            (
                contact(None, Some(&own), None),
                Ownership::OwnerCreated(OwnerReason::OwnOriginal),
            ),
            (
                contact(Some(&person), None, Some("DAN@contoso.com")),
                Ownership::OwnerCreated(OwnerReason::CreatedByOwner),
            ),
            (
                contact(None, Some(&person), Some("ada@contoso.com")),
                Ownership::OwnerCreated(OwnerReason::NotesStampOnly),
            ),
            (
                contact(Some(&person), Some(&person), Some("ada@contoso.com")),
                Ownership::ManagedCopy,
            ),
            (contact(Some(&person), None, None), Ownership::ManagedCopy),
            // The owner deleted the stamp lines from the notes: the mark still says whose it is.
            (
                marked(Some(&person), None, None, "m-dan"),
                Ownership::OwnerCreated(OwnerReason::MarkedOwn),
            ),
            (
                marked(Some(&person), None, Some("ada@contoso.com"), "M-DAN"),
                Ownership::OwnerCreated(OwnerReason::MarkedOwn),
            ),
            // A mark naming someone else proves nothing here.
            (
                marked(Some(&person), None, None, "m-ada"),
                Ownership::ManagedCopy,
            ),
        ];
        for (contact, expected) in cases {
            assert_eq!(
                ownership(TENANT, &mailbox, &contact),
                expected,
                "{contact:?}"
            );
            let stamp = NotesStamp::parse(contact.personal_notes.as_deref());
            let derived = SyncId::derive(TENANT, &mailbox.id, &contact.id);
            assert_eq!(
                ownership_of(
                    &mailbox,
                    property_sync_id(&contact).as_ref(),
                    &stamp,
                    contact.owner_property.as_deref(),
                    &derived
                ),
                expected,
                "{contact:?}"
            );
        }
    }

    const TENANT: &str = "contoso.onmicrosoft.com";
}
