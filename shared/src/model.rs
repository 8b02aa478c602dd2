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
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub middle_name: Option<String>,
    #[serde(default)]
    pub nick_name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub initials: Option<String>,
    #[serde(default)]
    pub generation: Option<String>,
    #[serde(default)]
    pub file_as: Option<String>,
    #[serde(default)]
    pub yomi_given_name: Option<String>,
    #[serde(default)]
    pub yomi_surname: Option<String>,
    #[serde(default)]
    pub yomi_company_name: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub office_location: Option<String>,
    #[serde(default)]
    pub profession: Option<String>,
    #[serde(default)]
    pub manager: Option<String>,
    #[serde(default)]
    pub assistant_name: Option<String>,
    #[serde(default)]
    pub business_home_page: Option<String>,
    #[serde(default)]
    pub email_addresses: Vec<EmailAddress>,
    #[serde(default)]
    pub im_addresses: Vec<String>,
    #[serde(default)]
    pub business_phones: Vec<String>,
    #[serde(default)]
    pub home_phones: Vec<String>,
    #[serde(default)]
    pub mobile_phone: Option<String>,
    #[serde(default)]
    pub business_address: Option<Box<PhysicalAddress>>,
    #[serde(default)]
    pub home_address: Option<Box<PhysicalAddress>>,
    #[serde(default)]
    pub other_address: Option<Box<PhysicalAddress>>,
    #[serde(default)]
    pub birthday: Option<String>,
    #[serde(default)]
    pub spouse_name: Option<String>,
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

/// A contact as read from a mailbox folder.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Graph's version of the item (`changeKey`): it changes with every edit, so the one a write returned tells
    /// the job's own write from a later edit by the owner. `None` when Graph did not send one.
    pub change_key: Option<String>,
}

/// What to write into a contact: the parts set to `Some` are written, the rest left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactWrite {
    /// All mirrored fields, written whole (a `None` inside clears that field at the target). Boxed: a plan holds
    /// every item at once, and most carry no fields (skips, stamp-only updates, deletes), so an inline 1 KiB of
    /// fields made each of a 100,000-contact plan's items cost that much (issue 10, scenario 10).
    pub fields: Option<Box<ContactFields>>,
    /// The new personal notes (the owner's text with the stamp lines rewritten).
    pub personal_notes: Option<String>,
    /// The new categories.
    pub categories: Option<Vec<String>>,
    /// The sync id to store in the [`SYNC_ID_PROPERTY`] extended property.
    pub sync_id: Option<String>,
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
    },
    /// DELETE a contact.
    Delete {
        /// Graph id of the contact to delete.
        id: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
