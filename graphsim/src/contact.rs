//! The `microsoft.graph.contact` entity: which properties a body may carry, how they are checked and
//! merged. How a stored contact is rendered the way Outlook returns it: [`crate::contact_json`].
//!
//! Property names and types follow `graphsim/graph-data/graph-schemas.json` (`microsoft.graph.contact`), so a
//! misspelt property is a 400 here exactly as it is against Graph.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::reply::{errors, Reply};

/// The entity type name Outlook uses in body errors.
pub const TYPE_NAME: &str = "Microsoft.OutlookServices.Contact";

/// The kind of writable property `name`; `None` when it is not one. Looked up by hash: a folder read asks for
/// every `$select`ed name of every contact.
pub fn property_kind(name: &str) -> Option<Kind> {
    static KINDS: std::sync::OnceLock<std::collections::HashMap<&'static str, Kind>> =
        std::sync::OnceLock::new();
    KINDS
        .get_or_init(|| PROPERTIES.iter().copied().collect())
        .get(name)
        .copied()
}

/// Kind of a writable contact property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `string | null`.
    Text,
    /// `string[]`.
    TextList,
    /// `emailAddress[]`.
    EmailList,
    /// `emailAddress | null`.
    Email,
    /// `physicalAddress | null` (returned as `{}` when unset).
    Address,
}

/// Writable properties in the order Outlook returns them.
pub const PROPERTIES: &[(&str, Kind)] = &[
    ("categories", Kind::TextList),
    ("birthday", Kind::Text),
    ("fileAs", Kind::Text),
    ("displayName", Kind::Text),
    ("givenName", Kind::Text),
    ("initials", Kind::Text),
    ("middleName", Kind::Text),
    ("nickName", Kind::Text),
    ("surname", Kind::Text),
    ("title", Kind::Text),
    ("yomiGivenName", Kind::Text),
    ("yomiSurname", Kind::Text),
    ("yomiCompanyName", Kind::Text),
    ("generation", Kind::Text),
    ("imAddresses", Kind::TextList),
    ("jobTitle", Kind::Text),
    ("companyName", Kind::Text),
    ("department", Kind::Text),
    ("officeLocation", Kind::Text),
    ("profession", Kind::Text),
    ("businessHomePage", Kind::Text),
    ("assistantName", Kind::Text),
    ("manager", Kind::Text),
    ("homePhones", Kind::TextList),
    ("mobilePhone", Kind::Text),
    ("businessPhones", Kind::TextList),
    ("spouseName", Kind::Text),
    ("personalNotes", Kind::Text),
    ("children", Kind::TextList),
    ("emailAddresses", Kind::EmailList),
    ("homeAddress", Kind::Address),
    ("businessAddress", Kind::Address),
    ("otherAddress", Kind::Address),
    ("primaryEmailAddress", Kind::Email),
    ("secondaryEmailAddress", Kind::Email),
    ("tertiaryEmailAddress", Kind::Email),
];

/// Server-managed properties: accepted in bodies (clients echo them back) and ignored.
const READ_ONLY: &[&str] = &[
    "id",
    "changeKey",
    "createdDateTime",
    "lastModifiedDateTime",
    "parentFolderId",
];

/// Properties that exist but are only returned on request (`$expand`) or not at all.
const NAVIGATION: &[&str] = &[
    "singleValueExtendedProperties",
    "multiValueExtendedProperties",
    "extensions",
    "photo",
];

const ADDRESS_KEYS: &[&str] = &["street", "city", "state", "countryOrRegion", "postalCode"];
const EMAIL_KEYS: &[&str] = &["name", "address"];

/// Whether `name` may appear in `$select` on contacts.
pub fn selectable(name: &str) -> bool {
    PROPERTIES.iter().any(|(p, _)| *p == name)
        || READ_ONLY.contains(&name)
        || NAVIGATION.contains(&name)
}

/// A contact body after checking: plain properties plus the extended properties it sets.
#[derive(Debug, Default, Clone)]
pub struct ContactBody {
    /// Writable properties as sent (`null` = clear).
    pub props: Map<String, Value>,
    /// `singleValueExtendedProperties` entries: id -> value.
    pub extended: Vec<(String, Option<String>)>,
    /// `multiValueExtendedProperties` and `extensions`, kept verbatim.
    pub other_navigation: Map<String, Value>,
}

/// Checks a POST/PATCH body against the contact type.
pub fn parse_body(body: &Value) -> Result<ContactBody, Reply> {
    let Value::Object(map) = body else {
        return Err(errors::unreadable_body());
    };
    let mut out = ContactBody::default();
    for (key, value) in map {
        if key.starts_with('@') || key.contains("@odata.") || READ_ONLY.contains(&key.as_str()) {
            continue;
        }
        if key == "singleValueExtendedProperties" {
            out.extended = parse_extended(value)?;
            continue;
        }
        if NAVIGATION.contains(&key.as_str()) {
            if !value.is_array() {
                return Err(errors::wrong_type(key, "Collection"));
            }
            out.other_navigation.insert(key.clone(), value.clone());
            continue;
        }
        let Some((_, kind)) = PROPERTIES.iter().find(|(p, _)| p == key) else {
            return Err(errors::unknown_property(key, TYPE_NAME));
        };
        check_kind(key, *kind, value)?;
        check_entries(key, value)?;
        out.props.insert(key.clone(), value.clone());
    }
    Ok(out)
}

/// The most entries Exchange takes in a multi-value contact property (a contact with more is refused whole:
/// microsoft-graph-docs#15276, "The multi value property BusinessPhones has 3 entries, that exceeds the max allowed
/// value of 2"; "EmailAddresses has 4 entries, … max allowed value of 3"). Home phones are two in Outlook as well.
const MAX_ENTRIES: &[(&str, &str, usize)] = &[
    ("emailAddresses", "EmailAddresses", 3),
    ("businessPhones", "BusinessPhones", 2),
    ("homePhones", "HomePhones", 2),
];

fn check_entries(key: &str, value: &Value) -> Result<(), Reply> {
    let Some(&(_, name, max)) = MAX_ENTRIES.iter().find(|(k, _, _)| *k == key) else {
        return Ok(());
    };
    match value.as_array() {
        Some(entries) if entries.len() > max => {
            Err(errors::too_many_entries(name, entries.len(), max))
        }
        _ => Ok(()),
    }
}

fn check_kind(key: &str, kind: Kind, value: &Value) -> Result<(), Reply> {
    let ok = match kind {
        Kind::Text => value.is_string() || value.is_null(),
        Kind::TextList => {
            value.is_null()
                || value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string))
        }
        Kind::EmailList => {
            value.is_null()
                || value
                    .as_array()
                    .is_some_and(|a| a.iter().all(|v| complex_ok(v, EMAIL_KEYS)))
        }
        Kind::Email => value.is_null() || complex_ok(value, EMAIL_KEYS),
        Kind::Address => value.is_null() || complex_ok(value, ADDRESS_KEYS),
    };
    if ok {
        return Ok(());
    }
    // An unknown member of a complex value is reported like an unknown property of its type.
    if let Some(bad) = unknown_member(value, kind) {
        let type_name = match kind {
            Kind::Address => "Microsoft.OutlookServices.PhysicalAddress",
            _ => "Microsoft.OutlookServices.EmailAddress",
        };
        return Err(errors::unknown_property(&bad, type_name));
    }
    let expected = match kind {
        Kind::Text => "Edm.String",
        Kind::TextList => "Collection(Edm.String)",
        Kind::EmailList => "Collection(Microsoft.OutlookServices.EmailAddress)",
        Kind::Email => "Microsoft.OutlookServices.EmailAddress",
        Kind::Address => "Microsoft.OutlookServices.PhysicalAddress",
    };
    Err(errors::wrong_type(key, expected))
}

fn complex_ok(value: &Value, keys: &[&str]) -> bool {
    value.as_object().is_some_and(|o| {
        o.iter().all(|(k, v)| {
            k.starts_with('@') || (keys.contains(&k.as_str()) && (v.is_string() || v.is_null()))
        })
    })
}

fn unknown_member(value: &Value, kind: Kind) -> Option<String> {
    let keys = if kind == Kind::Address {
        ADDRESS_KEYS
    } else {
        EMAIL_KEYS
    };
    let objects: Vec<&Value> = match value {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    objects
        .iter()
        .filter_map(|v| v.as_object())
        .flat_map(|o| o.keys())
        .find(|k| !k.starts_with('@') && !keys.contains(&k.as_str()))
        .cloned()
}

fn parse_extended(value: &Value) -> Result<Vec<(String, Option<String>)>, Reply> {
    let Some(items) = value.as_array() else {
        return Err(errors::wrong_type(
            "singleValueExtendedProperties",
            "Collection(Microsoft.OutlookServices.SingleValueLegacyExtendedProperty)",
        ));
    };
    let mut out = Vec::new();
    for item in items {
        let Some(obj) = item.as_object() else {
            return Err(errors::wrong_type(
                "singleValueExtendedProperties",
                "Microsoft.OutlookServices.SingleValueLegacyExtendedProperty",
            ));
        };
        if let Some(bad) = obj
            .keys()
            .find(|k| !k.starts_with('@') && *k != "id" && *k != "value")
        {
            return Err(errors::unknown_property(
                bad,
                "Microsoft.OutlookServices.SingleValueLegacyExtendedProperty",
            ));
        }
        let Some(id) = obj.get("id").and_then(Value::as_str) else {
            return Err(crate::reply::graph_error(
                400,
                "ErrorInvalidProperty",
                "The extended property id is missing.",
            ));
        };
        if !extended_id_valid(id) {
            return Err(crate::reply::graph_error(
                400,
                "ErrorInvalidExtendedPropertyValue",
                &format!("The extended property id '{id}' is not valid."),
            ));
        }
        let value = match obj.get("value") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(errors::wrong_type("value", "Edm.String")),
        };
        out.push((id.to_owned(), value));
    }
    Ok(out)
}

/// Checks the documented id formats: `{type} {guid} Name {name}`, `{type} {guid} Id 0x..`, `{type} 0x..`.
pub fn extended_id_valid(id: &str) -> bool {
    let parts: Vec<&str> = id.splitn(4, ' ').collect();
    let type_ok = |t: &str| {
        [
            "String",
            "Integer",
            "Boolean",
            "SystemTime",
            "Binary",
            "Double",
            "Float",
            "Long",
            "Short",
            "CLSID",
            "Currency",
            "Object",
        ]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(t))
    };
    let guid_ok = |g: &str| {
        g.strip_prefix('{')
            .and_then(|g| g.strip_suffix('}'))
            .is_some_and(|g| uuid::Uuid::parse_str(g).is_ok())
    };
    let hex_ok = |h: &str| {
        h.strip_prefix("0x")
            .or_else(|| h.strip_prefix("0X"))
            .is_some_and(|x| !x.is_empty() && u32::from_str_radix(x, 16).is_ok())
    };
    match parts.as_slice() {
        [t, tag] => type_ok(t) && hex_ok(tag),
        [t, g, kind, rest] => {
            type_ok(t)
                && guid_ok(g)
                && ((kind.eq_ignore_ascii_case("Name") && !rest.is_empty())
                    || (kind.eq_ignore_ascii_case("Id") && hex_ok(rest)))
        }
        _ => false,
    }
}

/// A stored contact.
#[derive(Debug, Clone)]
pub struct Contact {
    /// Server id.
    pub id: String,
    /// Id of the folder holding it.
    pub folder_id: String,
    /// Current change key.
    pub change_key: String,
    /// Creation time (RFC 3339, microseconds, `Z`).
    pub created: String,
    /// Last write time (strictly increasing per write).
    pub modified: String,
    /// Writable properties that are set (absent = default).
    pub props: Map<String, Value>,
    /// Single-value extended properties: id -> value. Never rendered unless expanded.
    pub extended: BTreeMap<String, Option<String>>,
    /// Other navigation data kept from bodies (not rendered).
    pub other_navigation: Map<String, Value>,
    /// Mailbox change counter at the last write (for delta).
    pub version: u64,
    /// Creation order within the mailbox (for listing).
    pub seq: u64,
}

impl Contact {
    /// Applies a checked body: POST (`replace_all`) or PATCH (merge; structured properties replaced whole;
    /// `null` clears).
    pub fn apply(&mut self, body: ContactBody) {
        let touches_name = ["givenName", "surname", "middleName"]
            .iter()
            .any(|k| body.props.contains_key(*k));
        let sets_display = body.props.contains_key("displayName");
        for (key, value) in body.props {
            if value.is_null() {
                self.props.remove(&key);
            } else {
                self.props.insert(key, value);
            }
        }
        for (id, value) in body.extended {
            self.extended.insert(id, value);
        }
        for (key, value) in body.other_navigation {
            self.other_navigation.insert(key, value);
        }
        // Outlook regenerates displayName from the name parts unless the update carries it.
        if touches_name && !sets_display {
            let generated = ["givenName", "middleName", "surname"]
                .iter()
                .filter_map(|k| self.props.get(*k).and_then(Value::as_str))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            self.props
                .insert("displayName".into(), Value::String(generated));
        }
    }

    /// The etag Graph returns (`W/"<changeKey>"`).
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Failed before the check: graphsim took any number of phones and addresses, so the directory's org contacts
    /// with three business numbers passed here and would fail on every mailbox against Graph.
    #[test]
    fn a_contact_over_exchanges_entry_limits_is_refused() {
        let phones = |n: usize| json!((0..n).map(|i| format!("+1 555 010{i}")).collect::<Vec<_>>());
        let emails = |n: usize| {
            json!((0..n)
                .map(|i| json!({"address": format!("p{i}@example.com")}))
                .collect::<Vec<_>>())
        };
        for body in [
            json!({"businessPhones": phones(3)}),
            json!({"homePhones": phones(3)}),
            json!({"emailAddresses": emails(4)}),
        ] {
            let err = parse_body(&body).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.error_code(), Some("ErrorInvalidArgument"));
        }
        parse_body(&json!({"businessPhones": phones(2), "homePhones": phones(2), "emailAddresses": emails(3)}))
            .expect("at the limits");
    }

    #[test]
    fn unknown_property_is_rejected() {
        let err = parse_body(&json!({"nickname": "x"})).unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(err.error_code(), Some("RequestBodyRead"));
    }

    #[test]
    fn unknown_address_member_is_rejected() {
        let err = parse_body(&json!({"homeAddress": {"town": "x"}})).unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn extended_ids() {
        assert!(extended_id_valid(
            "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name SyncId"
        ));
        assert!(extended_id_valid("String 0x4001"));
        assert!(extended_id_valid(
            "Integer {66f5a359-4659-4830-9070-00040ec6ac6e} Id 0x8001"
        ));
        assert!(!extended_id_valid("SyncId"));
        assert!(!extended_id_valid("String {nope} Name X"));
    }
}
