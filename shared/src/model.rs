//! The contact data contactmirror reasons about, independent of how Graph spells it on the wire.
//!
//! `ContactFields` holds exactly the mirrored fields (serialised with Graph's camelCase names, `null` for an empty
//! value so that a write clears what the source cleared). What belongs to the mailbox owner (personal notes,
//! categories) and what Graph manages (id, timestamps) sits beside it in [`Contact`], so code that copies fields
//! between mailboxes cannot copy a private note by accident.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The id of the single-value extended property that carries a managed contact's sync id.
///
/// A named MAPI property in contactmirror's own property set: invisible in Outlook, kept across user edits, and
/// searchable server-side (`$filter=singleValueExtendedProperties/Any(...)`).
pub const SYNC_ID_PROPERTY: &str = "String {5f3c1a2e-8b7d-4c6e-9a1f-2d4b6c8e0a13} Name SyncId";

/// The id of the single-value extended property that marks a contact the tool stamped as its owner's own: the
/// owner's object id. The same proof as a notes stamp's `CreatedBy` naming the owner, but out of the user's reach:
/// an owner who deletes the stamp lines from a contact's notes (they are plain text in every client) would
/// otherwise leave a contact with the sync id property and nothing else, which reads as a managed copy and goes
/// when its person leaves. Written with the sync id property on every owner's contact the tool stamps.
pub const OWNER_PROPERTY: &str = "String {5f3c1a2e-8b7d-4c6e-9a1f-2d4b6c8e0a13} Name Owner";

/// One mailbox, as the fleet addresses it: Graph's object id plus the UPN used in reports and stamps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mailbox {
    /// Entra object id of the user (what Graph URLs use).
    pub id: String,
    /// User principal name, for humans and for the `CreatedBy`/`LastUpdatedBy` stamps.
    pub upn: String,
}

/// An email address entry of a contact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailAddress {
    /// Display name shown for the address.
    #[serde(default)]
    pub name: Option<String>,
    /// The SMTP address.
    #[serde(default)]
    pub address: Option<String>,
}

/// A postal address (Graph's `physicalAddress`). Boxed in [`ContactFields`]: most contacts have none, and inline
/// the three took 360 bytes of every contact of a 100,000-contact folder (issue 10, scenario 10).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalAddress {
    /// Street line(s).
    #[serde(default)]
    pub street: Option<String>,
    /// City.
    #[serde(default)]
    pub city: Option<String>,
    /// State or province.
    #[serde(default)]
    pub state: Option<String>,
    /// Country or region.
    #[serde(default)]
    pub country_or_region: Option<String>,
    /// Postal code.
    #[serde(default)]
    pub postal_code: Option<String>,
}

/// The mirrored fields of a contact. Everything here is copied between mailboxes; nothing else is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)] // Field names are Graph's property names; Graph's docs describe them.
pub struct ContactFields {
    #[serde(default)]
    pub display_name: Option<Box<str>>,
    #[serde(default)]
    pub given_name: Option<Box<str>>,
    #[serde(default)]
    pub surname: Option<Box<str>>,
    #[serde(default)]
    pub middle_name: Option<Box<str>>,
    #[serde(default)]
    pub nick_name: Option<Box<str>>,
    #[serde(default)]
    pub title: Option<Box<str>>,
    #[serde(default)]
    pub initials: Option<Box<str>>,
    #[serde(default)]
    pub generation: Option<Box<str>>,
    #[serde(default)]
    pub file_as: Option<Box<str>>,
    #[serde(default)]
    pub yomi_given_name: Option<Box<str>>,
    #[serde(default)]
    pub yomi_surname: Option<Box<str>>,
    #[serde(default)]
    pub yomi_company_name: Option<Box<str>>,
    #[serde(default)]
    pub company_name: Option<Box<str>>,
    #[serde(default)]
    pub department: Option<Box<str>>,
    #[serde(default)]
    pub job_title: Option<Box<str>>,
    #[serde(default)]
    pub office_location: Option<Box<str>>,
    #[serde(default)]
    pub profession: Option<Box<str>>,
    #[serde(default)]
    pub manager: Option<Box<str>>,
    #[serde(default)]
    pub assistant_name: Option<Box<str>>,
    #[serde(default)]
    pub business_home_page: Option<Box<str>>,
    #[serde(default)]
    pub email_addresses: Vec<EmailAddress>,
    #[serde(default)]
    pub im_addresses: Vec<String>,
    #[serde(default)]
    pub business_phones: Vec<String>,
    #[serde(default)]
    pub home_phones: Vec<String>,
    #[serde(default)]
    pub mobile_phone: Option<Box<str>>,
    #[serde(default)]
    pub business_address: Option<Box<PhysicalAddress>>,
    #[serde(default)]
    pub home_address: Option<Box<PhysicalAddress>>,
    #[serde(default)]
    pub other_address: Option<Box<PhysicalAddress>>,
    #[serde(default)]
    pub birthday: Option<Box<str>>,
    #[serde(default)]
    pub spouse_name: Option<Box<str>>,
}

impl ContactFields {
    /// The Graph property names of the mirrored fields, for `$select`.
    pub const GRAPH_NAMES: &'static [&'static str] = &[
        "displayName",
        "givenName",
        "surname",
        "middleName",
        "nickName",
        "title",
        "initials",
        "generation",
        "fileAs",
        "yomiGivenName",
        "yomiSurname",
        "yomiCompanyName",
        "companyName",
        "department",
        "jobTitle",
        "officeLocation",
        "profession",
        "manager",
        "assistantName",
        "businessHomePage",
        "emailAddresses",
        "imAddresses",
        "businessPhones",
        "homePhones",
        "mobilePhone",
        "businessAddress",
        "homeAddress",
        "otherAddress",
        "birthday",
        "spouseName",
    ];
}

/// Declares [`Field`] from one table, so the enum, the Graph names and the per-field copy can never disagree.
macro_rules! fields {
    ($($variant:ident => $member:ident, $graph:literal;)*) => {
        /// One mirrored field of [`ContactFields`], by its Graph property name: what the field policy (`Fields`)
        /// and the privacy list (`CentralFields`) are made of.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(missing_docs)] // The variants are Graph's property names.
        pub enum Field {
            $($variant),*
        }

        impl Field {
            /// Every field, in [`ContactFields::GRAPH_NAMES`] order (a field's index is its discriminant).
            pub const ALL: &'static [Field] = &[$(Field::$variant),*];

            /// Graph's property name (`homeAddress`).
            pub fn graph_name(self) -> &'static str {
                match self {
                    $(Field::$variant => $graph),*
                }
            }

            /// Sets this field of `to` to its value in `from`.
            pub fn copy(self, from: &ContactFields, to: &mut ContactFields) {
                match self {
                    $(Field::$variant => to.$member = from.$member.clone()),*
                }
            }

            /// Empties this field of `fields` (`null`, or `[]` for a list: a write then clears it).
            pub fn clear(self, fields: &mut ContactFields) {
                match self {
                    $(Field::$variant => fields.$member = Default::default()),*
                }
            }

            /// The field whose Graph name is exactly `name` (as Graph writes it in a response).
            pub fn from_exact_graph_name(name: &str) -> Option<Field> {
                match name {
                    $($graph => Some(Field::$variant),)*
                    _ => None,
                }
            }

            /// Sets this field of `to` from the value `map` holds next (a response's property, decoded as the
            /// field's type: `null` is an empty scalar, as with the derived decoder).
            pub fn read_value<'de, A: serde::de::MapAccess<'de>>(
                self,
                map: &mut A,
                to: &mut ContactFields,
            ) -> Result<(), A::Error> {
                match self {
                    $(Field::$variant => to.$member = map.next_value()?),*
                }
                Ok(())
            }
        }
    };
}

fields! {
    DisplayName => display_name, "displayName";
    GivenName => given_name, "givenName";
    Surname => surname, "surname";
    MiddleName => middle_name, "middleName";
    NickName => nick_name, "nickName";
    Title => title, "title";
    Initials => initials, "initials";
    Generation => generation, "generation";
    FileAs => file_as, "fileAs";
    YomiGivenName => yomi_given_name, "yomiGivenName";
    YomiSurname => yomi_surname, "yomiSurname";
    YomiCompanyName => yomi_company_name, "yomiCompanyName";
    CompanyName => company_name, "companyName";
    Department => department, "department";
    JobTitle => job_title, "jobTitle";
    OfficeLocation => office_location, "officeLocation";
    Profession => profession, "profession";
    Manager => manager, "manager";
    AssistantName => assistant_name, "assistantName";
    BusinessHomePage => business_home_page, "businessHomePage";
    EmailAddresses => email_addresses, "emailAddresses";
    ImAddresses => im_addresses, "imAddresses";
    BusinessPhones => business_phones, "businessPhones";
    HomePhones => home_phones, "homePhones";
    MobilePhone => mobile_phone, "mobilePhone";
    BusinessAddress => business_address, "businessAddress";
    HomeAddress => home_address, "homeAddress";
    OtherAddress => other_address, "otherAddress";
    Birthday => birthday, "birthday";
    SpouseName => spouse_name, "spouseName";
}

impl Field {
    /// The field whose Graph name is `name`, ignoring ASCII case.
    pub fn from_graph_name(name: &str) -> Option<Field> {
        Field::ALL
            .iter()
            .copied()
            .find(|f| f.graph_name().eq_ignore_ascii_case(name.trim()))
    }

    /// This field's bit in a [`FieldSet`].
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.graph_name())
    }
}

/// A set of [`Field`]s (a bit per field: cheap to copy and compare, ordered like [`Field::ALL`]).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FieldSet(u32);

impl FieldSet {
    /// No field.
    pub const fn empty() -> Self {
        FieldSet(0)
    }

    /// Every field.
    pub fn all() -> Self {
        Field::ALL.iter().copied().collect()
    }

    /// Whether `field` is in the set.
    pub fn contains(self, field: Field) -> bool {
        self.0 & field.bit() != 0
    }

    /// The set with `field` added.
    #[must_use]
    pub fn with(self, field: Field) -> Self {
        FieldSet(self.0 | field.bit())
    }

    /// The set without `field`.
    #[must_use]
    pub fn without(self, field: Field) -> Self {
        FieldSet(self.0 & !field.bit())
    }

    /// The fields in both sets.
    #[must_use]
    pub fn intersection(self, other: FieldSet) -> Self {
        FieldSet(self.0 & other.0)
    }

    /// The fields not in the set.
    #[must_use]
    pub fn complement(self) -> Self {
        FieldSet(Self::all().0 & !self.0)
    }

    /// Whether the set holds no field.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fields, in [`Field::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Field> {
        Field::ALL
            .iter()
            .copied()
            .filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Field> for FieldSet {
    fn from_iter<I: IntoIterator<Item = Field>>(iter: I) -> Self {
        iter.into_iter().fold(FieldSet::empty(), FieldSet::with)
    }
}

impl std::fmt::Debug for FieldSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Field::graph_name))
            .finish()
    }
}

/// A contact as read from a mailbox folder. Its serde form is the fleet's own (a phase-1 plan's folder on the
/// board stream, `worker::overlap::relay`), not Graph's: Graph's is `graph::wire`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// Graph's item id (opaque; unique within the mailbox).
    pub id: String,
    /// When Exchange last saw the item change (any change, the tool's own writes included).
    pub last_modified: Option<DateTime<Utc>>,
    /// The mirrored data.
    pub fields: ContactFields,
    /// The owner's personal notes, stamps included; never copied between mailboxes.
    pub personal_notes: Option<String>,
    /// The owner's categories; never copied between mailboxes (the managed category is added by the tool).
    pub categories: Vec<String>,
    /// The sync id from the [`SYNC_ID_PROPERTY`] extended property, if the item carries one.
    pub sync_id_property: Option<String>,
    /// The [`OWNER_PROPERTY`] extended property: the object id of the owner the tool stamped this contact as
    /// belonging to, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_property: Option<String>,
    /// The photo hash the tool last put on this copy ([`crate::sync::photo::PHOTO_HASH_PROPERTY`]); `None` when
    /// it has none of the tool's (or the property was emptied).
    pub photo_hash: Option<crate::sync::photo::PhotoHash>,
    /// A central contact only: the change key of the origin (the user's contact the person was first published
    /// from) at which the tool last read its photo ([`crate::sync::photo::PHOTO_SOURCE_PROPERTY`]), so an origin
    /// that did not change since costs no photo read.
    pub photo_source: Option<String>,
    /// Exchange says the contact has a photo (MAPI `PidLidHasPicture`,
    /// [`crate::sync::photo::HAS_PICTURE_PROPERTY`]), read with the contact at no extra request.
    pub has_picture: bool,
    /// Graph's version of the item (`changeKey`): it changes with every edit, so the one a write returned tells
    /// the job's own write from a later edit by the owner. `None` when Graph did not send one.
    pub change_key: Option<String>,
}

/// [`ContactFields`] held compactly: only the values present, as one JSON object without `null`s and empty lists
/// (about 150 bytes for a contact of five fields, against 488 for the struct and its strings beside it). What a
/// job holds between planning a write and sending it (issue 10, scenario 10: a 100,000-contact mailbox's creates
/// are held while the next mailbox is planned); [`PackedFields::unpack`] gives back exactly the fields packed
/// (`None`, `Some("")` and `[]` kept apart: an absent key reads back as `None` or `[]`, as Graph's own JSON does).
#[derive(Clone, PartialEq, Eq)]
pub struct PackedFields(Box<[u8]>);

impl PackedFields {
    /// `fields`, packed.
    pub fn pack(fields: &ContactFields) -> Self {
        // A struct of strings and lists always serialises (as `wire::fields_object` relies on too).
        let mut value = serde_json::to_value(fields).unwrap_or_default();
        drop_absent(&mut value);
        PackedFields(value.to_string().into_bytes().into_boxed_slice())
    }

    /// The fields packed.
    ///
    /// # Panics
    /// Never: only [`PackedFields::pack`] makes the bytes, from a `ContactFields`, and they always read back
    /// (proptest `packed_fields_read_back_exactly`). Were they ever not to, failing the job is safe and writing
    /// empty fields (clearing a contact) is not, so this does not fall back to a default.
    pub fn unpack(&self) -> ContactFields {
        serde_json::from_slice(&self.0).expect("packed fields read back")
    }
}

impl From<ContactFields> for PackedFields {
    fn from(fields: ContactFields) -> Self {
        PackedFields::pack(&fields)
    }
}

impl std::fmt::Debug for PackedFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.unpack().fmt(f)
    }
}

/// Removes from `value` every `null` and empty list that is an object's member: what deserialising reads back as
/// `None` or `[]` anyway (every member of [`ContactFields`] and its parts is `#[serde(default)]`).
fn drop_absent(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, member| {
                !(member.is_null() || member.as_array().is_some_and(Vec::is_empty))
            });
            map.values_mut().for_each(drop_absent);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_absent),
        _ => {}
    }
}

/// What to write into a contact: the parts set to `Some` are written, the rest left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactWrite {
    /// All mirrored fields, written whole (a `None` inside clears that field at the target). Packed: a plan holds
    /// every item at once and a job holds its writes until each batch is answered, so inline (1 KiB) or boxed
    /// (488 bytes, mostly empty slots) fields made each create of a 100,000-contact plan cost that much
    /// (issue 10, scenario 10).
    pub fields: Option<PackedFields>,
    /// Mirrored fields of `fields` the write leaves as the contact has them (not sent): where the field policy keeps
    /// the copy's own value (`Ignore`, a filled `FillEmpty`), so it is never written, not even unchanged.
    pub unchanged: FieldSet,
    /// The new personal notes (the owner's text with the stamp lines rewritten).
    pub personal_notes: Option<String>,
    /// The new categories.
    pub categories: Option<Vec<String>>,
    /// The sync id to store in the [`SYNC_ID_PROPERTY`] extended property.
    pub sync_id: Option<String>,
    /// The owner's object id to store in the [`OWNER_PROPERTY`] extended property (empty: cleared).
    pub owner: Option<String>,
}

/// One write against a folder of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// POST a new contact.
    Create(ContactWrite),
    /// PATCH an existing contact.
    Update {
        /// Graph id of the contact to change.
        id: String,
        /// What to change.
        write: ContactWrite,
        /// The change key the contact must still have, sent as `If-Match` (Graph answers 412
        /// `ErrorIrresolvableConflict` otherwise): the one read, on every update a plan of a user's contacts makes
        /// (phase 2, cleanup, the early identity stamps of `sync::overlap::early_writes`), so an edit the owner made
        /// since the read is never overwritten.
        if_match: Option<Box<str>>,
    },
    /// DELETE a contact.
    Delete {
        /// Graph id of the contact to delete.
        id: String,
    },
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Packed fields read back exactly: every value, `None`, `Some("")`, padded text and lists kept apart.
        #[test]
        fn packed_fields_read_back_exactly(fields in crate::sync::normalize::tests::any_fields()) {
            prop_assert_eq!(PackedFields::pack(&fields).unpack(), fields);
        }
    }

    #[test]
    fn graph_names_match_serde_names() {
        let value = serde_json::to_value(ContactFields::default()).expect("serialise");
        let mut names: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut listed: Vec<&str> = ContactFields::GRAPH_NAMES.to_vec();
        listed.sort_unstable();
        assert_eq!(names, listed);
    }

    #[test]
    fn fields_are_the_graph_names_in_order_and_copy_only_themselves() {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.graph_name()).collect();
        assert_eq!(names, ContactFields::GRAPH_NAMES);
        for (i, field) in Field::ALL.iter().enumerate() {
            assert_eq!(*field as usize, i);
            assert_eq!(
                Field::from_graph_name(&field.graph_name().to_uppercase()),
                Some(*field)
            );
            // Copying one field from a full contact into an empty one changes exactly that Graph property.
            let full = ContactFields {
                display_name: Some("x".into()),
                given_name: Some("x".into()),
                surname: Some("x".into()),
                middle_name: Some("x".into()),
                nick_name: Some("x".into()),
                title: Some("x".into()),
                initials: Some("x".into()),
                generation: Some("x".into()),
                file_as: Some("x".into()),
                yomi_given_name: Some("x".into()),
                yomi_surname: Some("x".into()),
                yomi_company_name: Some("x".into()),
                company_name: Some("x".into()),
                department: Some("x".into()),
                job_title: Some("x".into()),
                office_location: Some("x".into()),
                profession: Some("x".into()),
                manager: Some("x".into()),
                assistant_name: Some("x".into()),
                business_home_page: Some("x".into()),
                email_addresses: vec![EmailAddress::default()],
                im_addresses: vec!["x".into()],
                business_phones: vec!["x".into()],
                home_phones: vec!["x".into()],
                mobile_phone: Some("x".into()),
                business_address: Some(Box::default()),
                home_address: Some(Box::default()),
                other_address: Some(Box::default()),
                birthday: Some("x".into()),
                spouse_name: Some("x".into()),
            };
            let mut one = ContactFields::default();
            field.copy(&full, &mut one);
            let json = serde_json::to_value(&one).expect("serialise");
            let empty = serde_json::to_value(ContactFields::default()).expect("serialise");
            let differing: Vec<&String> = json
                .as_object()
                .expect("object")
                .iter()
                .filter(|(k, v)| empty[k.as_str()] != **v)
                .map(|(k, _)| k)
                .collect();
            assert_eq!(differing, vec![field.graph_name()]);
            field.clear(&mut one);
            assert_eq!(one, ContactFields::default());
        }
        assert_eq!(Field::from_graph_name("homeadress"), None);
    }

    #[test]
    fn field_sets() {
        let set: FieldSet = [Field::HomeAddress, Field::Birthday].into_iter().collect();
        assert!(set.contains(Field::Birthday) && !set.contains(Field::JobTitle));
        assert_eq!(set.complement().complement(), set);
        assert_eq!(set.complement().intersection(set), FieldSet::empty());
        assert_eq!(FieldSet::all().iter().count(), Field::ALL.len());
        assert_eq!(
            set.without(Field::Birthday).iter().collect::<Vec<_>>(),
            vec![Field::HomeAddress]
        );
        assert_eq!(format!("{set:?}"), r#"{"homeAddress", "birthday"}"#);
    }
}
