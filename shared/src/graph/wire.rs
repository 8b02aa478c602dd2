//! Graph's JSON shapes, and the mapping between them and [`crate::model`].
//!
//! Request bodies for contacts are built here and nowhere else, so one test can check every body the client can
//! send against `microsoft.graph.contact.requestBody` (no server-managed property such as `id`, `changeKey` or
//! `lastModifiedDateTime` is ever sent). A response that does not decode is decoded again through
//! `serde_path_to_error` so that a shape mismatch names the JSON path.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::GraphError;
use crate::model::{
    Contact, ContactFields, ContactWrite, Field, FieldSet, PackedFields, OWNER_PROPERTY,
    SYNC_ID_PROPERTY,
};
use crate::sync::photo::{
    PhotoHash, HAS_PICTURE_PROPERTY, PHOTO_HASH_PROPERTY, PHOTO_SOURCE_PROPERTY,
};

/// Decodes `bytes` as `T`, naming the failing path in the error. Decoded plainly first: tracking the path costs
/// more than the decoding itself (about 4 of 7 µs per contact of a folder read), and only a body that does not
/// decode needs it, so only such a body is decoded a second time.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, GraphError> {
    serde_json::from_slice(bytes).or_else(|_| {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(&mut deserializer).map_err(|e| GraphError::Decode {
            what: what.to_owned(),
            path: e.path().to_string(),
            source: e.into_inner(),
        })
    })
}

/// Decodes an already parsed value as `T`, naming the failing path in the error (plainly first, as [`decode`]).
pub(crate) fn decode_value<T: DeserializeOwned>(what: &str, value: Value) -> Result<T, GraphError> {
    T::deserialize(&value).or_else(|_| {
        serde_path_to_error::deserialize(value).map_err(|e| GraphError::Decode {
            what: what.to_owned(),
            path: e.path().to_string(),
            source: e.into_inner(),
        })
    })
}

/// One page of a Graph collection.
#[derive(Debug, Deserialize)]
pub(crate) struct Page<T> {
    /// The items.
    pub value: Vec<T>,
    /// The next page, to be followed verbatim.
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
    /// The end of a delta round: where the folder's change feed now stands.
    #[serde(rename = "@odata.deltaLink", default)]
    pub delta_link: Option<String>,
}

/// The parts of an OData error body the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: MainError,
}

#[derive(Deserialize)]
struct MainError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "innerError", alias = "innererror", default)]
    inner_error: Option<InnerError>,
}

#[derive(Deserialize)]
struct InnerError {
    #[serde(rename = "request-id", default)]
    request_id: Option<String>,
}

/// Parses Graph's `{"error":{...}}` envelope; `None` when the body is something else.
pub(crate) fn parse_error_body(body: &[u8]) -> Option<ErrorBody> {
    let envelope: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    Some(ErrorBody {
        code: envelope.error.code.unwrap_or_default(),
        message: envelope.error.message.unwrap_or_default(),
        request_id: envelope.error.inner_error.and_then(|i| i.request_id),
    })
}

/// A contact as Graph returns it (only what `$select` asks for). Decoded by [`WireContactVisitor`] rather than a
/// derive with `#[serde(flatten)]` for the fields: flatten buffered every property of every contact and searched
/// the buffer once per field, most of a full folder read's CPU (issue 13: a changed re-run reads every mailbox).
#[derive(Debug, Default)]
pub(crate) struct WireContact {
    id: String,
    last_modified_date_time: Option<DateTime<Utc>>,
    personal_notes: Option<String>,
    categories: Option<Vec<String>>,
    single_value_extended_properties: Option<Vec<WireExtendedProperty>>,
    change_key: Option<String>,
    fields: ContactFields,
}

impl<'de> Deserialize<'de> for WireContact {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WireContactVisitor)
    }
}

/// A property name of a contact response, told apart without allocating.
enum ContactKey {
    Id,
    LastModified,
    PersonalNotes,
    Categories,
    ExtendedProperties,
    ChangeKey,
    Field(Field),
    /// Anything else (`@odata.etag`, a property not selected): skipped, as Graph may add properties.
    Other,
}

impl<'de> Deserialize<'de> for ContactKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = ContactKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a contact property name")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ContactKey, E> {
                Ok(match name {
                    "id" => ContactKey::Id,
                    "lastModifiedDateTime" => ContactKey::LastModified,
                    "personalNotes" => ContactKey::PersonalNotes,
                    "categories" => ContactKey::Categories,
                    "singleValueExtendedProperties" => ContactKey::ExtendedProperties,
                    "changeKey" => ContactKey::ChangeKey,
                    other => Field::from_exact_graph_name(other)
                        .map_or(ContactKey::Other, ContactKey::Field),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// Reads a contact object property by property, each value decoded straight into its place.
struct WireContactVisitor;

impl<'de> serde::de::Visitor<'de> for WireContactVisitor {
    type Value = WireContact;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a contact object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<WireContact, A::Error> {
        let mut contact = WireContact::default();
        let mut id = None;
        while let Some(key) = map.next_key::<ContactKey>()? {
            match key {
                ContactKey::Id => id = Some(map.next_value()?),
                ContactKey::LastModified => contact.last_modified_date_time = map.next_value()?,
                ContactKey::PersonalNotes => contact.personal_notes = map.next_value()?,
                ContactKey::Categories => contact.categories = map.next_value()?,
                ContactKey::ExtendedProperties => {
                    contact.single_value_extended_properties = map.next_value()?;
                }
                ContactKey::ChangeKey => contact.change_key = map.next_value()?,
                ContactKey::Field(field) => field.read_value(&mut map, &mut contact.fields)?,
                ContactKey::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        contact.id = id.ok_or_else(|| serde::de::Error::missing_field("id"))?;
        Ok(contact)
    }
}

/// A single-value extended property.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireExtendedProperty {
    id: String,
    #[serde(default)]
    value: Option<String>,
}

impl From<WireContact> for Contact {
    fn from(wire: WireContact) -> Self {
        // Each property once, its value moved to the first of ours it names (the first such property wins).
        let mut values: [Option<Option<String>>; 5] = Default::default();
        let ours = [
            SYNC_ID_PROPERTY,
            PHOTO_HASH_PROPERTY,
            PHOTO_SOURCE_PROPERTY,
            HAS_PICTURE_PROPERTY,
            OWNER_PROPERTY,
        ];
        for property in wire.single_value_extended_properties.unwrap_or_default() {
            let slot = ours
                .iter()
                .position(|id| same_property_id(&property.id, id));
            if let Some(slot) = slot.filter(|&i| values[i].is_none()) {
                values[slot] = Some(property.value);
            }
        }
        let [sync_id_property, photo_hash, photo_source, has_picture, owner_property] =
            values.map(Option::flatten);
        // An emptied mark (cleanup) is no mark.
        let owner_property = owner_property.filter(|v| !v.trim().is_empty());
        let photo_hash = photo_hash.and_then(|v| PhotoHash::parse(&v));
        let photo_source = photo_source.filter(|v| !v.trim().is_empty());
        // Exchange answers a Boolean property as "true"/"false"; absent means no photo was ever put.
        let has_picture = has_picture.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Contact {
            id: wire.id,
            last_modified: wire.last_modified_date_time,
            fields: wire.fields,
            personal_notes: wire.personal_notes,
            categories: wire.categories.unwrap_or_default(),
            sync_id_property,
            owner_property,
            photo_hash,
            photo_source,
            has_picture,
            change_key: wire.change_key,
        }
    }
}

/// Whether two extended property ids name the same property: `{type} {guid} Name {name}` where the type, the
/// GUID and the `Name` keyword compare case-insensitively and the name itself exactly (as Exchange does).
pub(crate) fn same_property_id(a: &str, b: &str) -> bool {
    // Compared word by word without copying: every property of every contact read comes through here, most of
    // them spelled exactly as asked for.
    if a == b {
        return !a.trim().is_empty();
    }
    let (count, other) = (a.split_whitespace().count(), b.split_whitespace().count());
    if count != other || count == 0 {
        return false;
    }
    let last = count - 1;
    // A property named by number (`Id 0x8015`) compares its hex digits in any case.
    let by_number = last > 0
        && a.split_whitespace()
            .nth(last - 1)
            .is_some_and(|w| w.eq_ignore_ascii_case("Id"));
    a.split_whitespace()
        .zip(b.split_whitespace())
        .enumerate()
        .all(|(i, (x, y))| {
            if i == last && !by_number {
                x == y
            } else {
                x.eq_ignore_ascii_case(y)
            }
        })
}

/// The `$select` list for contact reads: what the model needs and nothing else.
pub(crate) fn contact_select() -> String {
    let mut names = vec![
        "id",
        "lastModifiedDateTime",
        "changeKey",
        "personalNotes",
        "categories",
    ];
    names.extend_from_slice(ContactFields::GRAPH_NAMES);
    names.join(",")
}

/// The `$expand` that returns the sync id, the photo properties and whether Exchange holds a photo
/// (`PidLidHasPicture`) with each contact: one list request tells which contacts' photos may have changed.
pub(crate) fn contact_expand() -> String {
    format!(
        "singleValueExtendedProperties($filter=id eq '{}' or id eq '{}' or id eq '{}' or id eq '{}' or id eq '{}')",
        odata_string(SYNC_ID_PROPERTY),
        odata_string(PHOTO_HASH_PROPERTY),
        odata_string(PHOTO_SOURCE_PROPERTY),
        odata_string(HAS_PICTURE_PROPERTY),
        odata_string(OWNER_PROPERTY)
    )
}

/// The `$filter` that finds the contacts carrying `sync_id` in the sync id property (Graph's documented form).
pub(crate) fn sync_id_filter(sync_id: &str) -> String {
    format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{}' and ep/value eq '{}')",
        odata_string(SYNC_ID_PROPERTY),
        odata_string(sync_id)
    )
}

/// Escapes a value for an OData string literal (`'` doubles).
pub(crate) fn odata_string(value: &str) -> String {
    value.replace('\'', "''")
}

/// The body of a POST that creates a contact: every mirrored field (`null` or `[]` when empty), the notes, the
/// categories and the sync id property.
pub(crate) fn create_body(write: &ContactWrite) -> Value {
    let mut body = fields_object(
        &write
            .fields
            .as_ref()
            .map(PackedFields::unpack)
            .unwrap_or_default(),
        write.unchanged,
    );
    body.insert(
        "personalNotes".into(),
        write
            .personal_notes
            .clone()
            .map_or(Value::Null, Value::String),
    );
    body.insert(
        "categories".into(),
        Value::from(write.categories.clone().unwrap_or_default()),
    );
    if let Some(properties) = stamp_properties(write) {
        body.insert("singleValueExtendedProperties".into(), properties);
    }
    Value::Object(body)
}

/// The body of a PATCH: only the parts the write sets. Fields are written whole, so a field cleared at the
/// source is sent as `null` (or `[]`) and cleared at the target.
pub(crate) fn update_body(write: &ContactWrite) -> Value {
    let mut body = match &write.fields {
        Some(fields) => fields_object(&fields.unpack(), write.unchanged),
        None => Map::new(),
    };
    if let Some(notes) = &write.personal_notes {
        // Empty notes are cleared: a contact that had none before the tool stamped it reads as it did.
        let notes = if notes.is_empty() {
            Value::Null
        } else {
            Value::String(notes.clone())
        };
        body.insert("personalNotes".into(), notes);
    }
    if let Some(categories) = &write.categories {
        body.insert("categories".into(), Value::from(categories.clone()));
    }
    if let Some(properties) = stamp_properties(write) {
        body.insert("singleValueExtendedProperties".into(), properties);
    }
    Value::Object(body)
}

/// The mirrored fields as a JSON object, without the `unchanged` ones (the field policy leaves them alone).
fn fields_object(fields: &ContactFields, unchanged: FieldSet) -> Map<String, Value> {
    let mut map = match serde_json::to_value(fields) {
        Ok(Value::Object(map)) => map,
        // ContactFields is a plain struct of strings and lists: it always serialises to an object.
        _ => Map::new(),
    };
    for field in unchanged.iter() {
        map.remove(field.graph_name());
    }
    map
}

/// The extended properties `write` sets: its sync id and its owner mark, each when present.
fn stamp_properties(write: &ContactWrite) -> Option<Value> {
    let properties: Vec<Value> = [
        (SYNC_ID_PROPERTY, &write.sync_id),
        (OWNER_PROPERTY, &write.owner),
    ]
    .into_iter()
    .filter_map(|(id, value)| {
        value
            .as_ref()
            .map(|value| serde_json::json!({ "id": id, "value": value }))
    })
    .collect();
    (!properties.is_empty()).then_some(Value::Array(properties))
}

/// A `$batch` request body.
#[derive(Debug, Serialize)]
pub(crate) struct BatchRequest {
    pub requests: Vec<BatchItem>,
}

/// One request inside a `$batch`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BatchItem {
    pub id: String,
    pub method: &'static str,
    /// Relative to the version, e.g. `/users/{id}/contacts`.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HashMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// A `$batch` response body.
#[derive(Debug, Deserialize)]
pub(crate) struct BatchResponse {
    pub responses: Vec<BatchItemResponse>,
}

/// One answer inside a `$batch` response.
#[derive(Debug, Deserialize)]
pub(crate) struct BatchItemResponse {
    pub id: String,
    pub status: u16,
    #[serde(default)]
    pub headers: Option<HashMap<String, Value>>,
    #[serde(default)]
    pub body: Option<Value>,
}

impl BatchItemResponse {
    /// A header of this item, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        let headers = self.headers.as_ref()?;
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    }
}

/// A successful token response.
#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    /// Seconds; some endpoints send it as a string. Anything else (negative, fractional, missing) is kept as
    /// unknown rather than failing the token.
    #[serde(default)]
    pub expires_in: Option<NumberOrString>,
}

/// A number that may arrive as a JSON string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrString {
    Number(u64),
    Text(String),
    /// Neither: a negative or fractional number, `null`, an object.
    Other(serde::de::IgnoredAny),
}

impl NumberOrString {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::Text(s) => s.trim().parse().ok(),
            NumberOrString::Other(_) => None,
        }
    }
}

/// A token endpoint refusal.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenErrorResponse {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
    #[serde(default)]
    pub error_codes: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EmailAddress, PhysicalAddress};

    fn schema_validator() -> jsonschema::Validator {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../graphsim/graph-data/graph-schemas.json"
        );
        let text = std::fs::read_to_string(path).expect("graphsim/graph-data/graph-schemas.json");
        let document: Value = serde_json::from_str(&text).expect("schema JSON");
        let schema = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$defs": document["$defs"].clone(),
            "$ref": "#/$defs/microsoft.graph.contact.requestBody",
        });
        jsonschema::validator_for(&schema).expect("schema compiles")
    }

    fn assert_valid(validator: &jsonschema::Validator, body: &Value) {
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "body {body} is not a valid contact request body: {errors:?}"
        );
    }

    fn address(tag: &str) -> PhysicalAddress {
        PhysicalAddress {
            street: Some(format!("{tag} street 1")),
            city: Some("Springfield".into()),
            state: Some("IL".into()),
            country_or_region: Some("USA".into()),
            postal_code: Some("62701".into()),
        }
    }

    fn every_field() -> ContactFields {
        ContactFields {
            display_name: Some("Ada Lovelace".into()),
            given_name: Some("Ada".into()),
            surname: Some("Lovelace".into()),
            middle_name: Some("Augusta".into()),
            nick_name: Some("Countess".into()),
            title: Some("Lady".into()),
            initials: Some("A.A.L.".into()),
            generation: Some("I".into()),
            file_as: Some("Lovelace, Ada".into()),
            yomi_given_name: Some("ada".into()),
            yomi_surname: Some("raburesu".into()),
            yomi_company_name: Some("anaritikaru".into()),
            company_name: Some("Analytical Engines".into()),
            department: Some("Research".into()),
            job_title: Some("Programmer".into()),
            office_location: Some("London".into()),
            profession: Some("Mathematician".into()),
            manager: Some("Charles Babbage".into()),
            assistant_name: Some("Mary".into()),
            business_home_page: Some("https://example.com".into()),
            email_addresses: vec![
                EmailAddress {
                    name: Some("Ada".into()),
                    address: Some("ada@example.com".into()),
                },
                EmailAddress {
                    name: None,
                    address: Some("countess@example.com".into()),
                },
            ],
            im_addresses: vec!["sip:ada@example.com".into()],
            business_phones: vec!["+44 20 1234 5678".into()],
            home_phones: vec!["+44 20 8765 4321".into(), "+44 20 0000 0000".into()],
            mobile_phone: Some("+44 7700 900000".into()),
            business_address: Some(Box::new(address("business"))),
            home_address: Some(Box::new(address("home"))),
            other_address: Some(Box::default()),
            birthday: Some("1815-12-10T00:00:00Z".into()),
            spouse_name: Some("William King".into()),
        }
    }

    fn every_part() -> ContactWrite {
        ContactWrite {
            unchanged: FieldSet::empty(),
            fields: Some(PackedFields::pack(&every_field())),
            personal_notes: Some("Met at the Royal Society.\nSyncId=6c1b...".into()),
            categories: Some(vec!["Managed".into(), "VIP".into()]),
            sync_id: Some("0b8f7b52-3c4f-5d6e-8f90-123456789abc".into()),
            owner: Some("7d1e9c3a-2b4f-4e6d-8a0c-1f3b5d7e9a2c".into()),
        }
    }

    const FORBIDDEN: &[&str] = &[
        "id",
        "changeKey",
        "createdDateTime",
        "lastModifiedDateTime",
        "parentFolderId",
        "@odata.etag",
        "@odata.type",
        "@odata.context",
    ];

    fn assert_no_server_managed(body: &Value) {
        let object = body.as_object().expect("object body");
        for key in FORBIDDEN {
            assert!(
                !object.contains_key(*key),
                "body sends server-managed {key}: {body}"
            );
        }
        assert!(
            !object.keys().any(|k| k.starts_with('@')),
            "body sends an annotation: {body}"
        );
    }

    #[test]
    fn create_with_every_field_validates() {
        let validator = schema_validator();
        let body = create_body(&every_part());
        assert_valid(&validator, &body);
        assert_no_server_managed(&body);
        assert_eq!(body["displayName"], "Ada Lovelace");
        assert_eq!(body["otherAddress"]["street"], Value::Null);
        assert_eq!(
            body["singleValueExtendedProperties"],
            serde_json::json!([
                {"id": SYNC_ID_PROPERTY, "value": "0b8f7b52-3c4f-5d6e-8f90-123456789abc"},
                {"id": OWNER_PROPERTY, "value": "7d1e9c3a-2b4f-4e6d-8a0c-1f3b5d7e9a2c"},
            ])
        );
        assert_eq!(
            body["personalNotes"],
            "Met at the Royal Society.\nSyncId=6c1b..."
        );
        assert_eq!(body["categories"], serde_json::json!(["Managed", "VIP"]));
    }

    #[test]
    fn create_with_nothing_set_validates_and_sends_nulls() {
        let validator = schema_validator();
        let body = create_body(&ContactWrite::default());
        assert_valid(&validator, &body);
        assert_no_server_managed(&body);
        for name in ContactFields::GRAPH_NAMES {
            assert!(body.get(*name).is_some(), "create omits {name}");
        }
        assert_eq!(body["displayName"], Value::Null);
        assert_eq!(body["emailAddresses"], serde_json::json!([]));
        assert_eq!(body["personalNotes"], Value::Null);
        assert!(body.get("singleValueExtendedProperties").is_none());
    }

    #[test]
    fn update_clearing_fields_validates() {
        let validator = schema_validator();
        let write = ContactWrite {
            unchanged: FieldSet::empty(),
            fields: Some(PackedFields::pack(&ContactFields::default())),
            personal_notes: Some(String::new()),
            categories: Some(Vec::new()),
            sync_id: None,
            owner: None,
        };
        let body = update_body(&write);
        assert_valid(&validator, &body);
        assert_no_server_managed(&body);
        assert_eq!(body["businessAddress"], Value::Null);
        assert_eq!(body["mobilePhone"], Value::Null);
        assert_eq!(body["businessPhones"], serde_json::json!([]));
        assert_eq!(body["categories"], serde_json::json!([]));
        // Cleanup taking the stamp off notes that had no text: cleared, as before the stamp.
        assert_eq!(body["personalNotes"], Value::Null);
    }

    #[test]
    fn fields_the_policy_leaves_alone_are_not_sent() {
        let validator = schema_validator();
        let unchanged: FieldSet = [
            crate::model::Field::JobTitle,
            crate::model::Field::HomeAddress,
        ]
        .into_iter()
        .collect();
        let write = ContactWrite {
            unchanged,
            ..every_part()
        };
        for body in [update_body(&write), create_body(&write)] {
            assert_valid(&validator, &body);
            assert!(
                body.get("jobTitle").is_none() && body.get("homeAddress").is_none(),
                "{body}"
            );
            assert_eq!(
                body["department"],
                every_field().department.expect("set").as_ref()
            );
        }
    }

    #[test]
    fn update_sends_only_the_parts_set() {
        let validator = schema_validator();
        let notes_only = ContactWrite {
            personal_notes: Some("text".into()),
            ..ContactWrite::default()
        };
        let body = update_body(&notes_only);
        assert_valid(&validator, &body);
        assert_eq!(body, serde_json::json!({"personalNotes": "text"}));

        let sync_only = ContactWrite {
            sync_id: Some("abc".into()),
            ..ContactWrite::default()
        };
        let body = update_body(&sync_only);
        assert_valid(&validator, &body);
        assert_eq!(
            body,
            serde_json::json!({"singleValueExtendedProperties": [{"id": SYNC_ID_PROPERTY, "value": "abc"}]})
        );

        let everything = update_body(&every_part());
        assert_valid(&validator, &everything);
        assert_no_server_managed(&everything);
        assert_valid(&validator, &update_body(&ContactWrite::default()));
    }

    #[test]
    fn the_schema_rejects_what_graph_would() {
        let validator = schema_validator();
        assert!(!validator.is_valid(&serde_json::json!({"nickname": "x"})));
        assert!(!validator.is_valid(&serde_json::json!({"id": "x"})));
    }

    #[test]
    fn response_contact_maps_to_model() {
        let body = serde_json::json!({
            "@odata.etag": "W/\"EQAAABYAAAA\"",
            "id": "AAMkAGI2TG93AAA=",
            "lastModifiedDateTime": "2026-01-02T03:04:05Z",
            "displayName": "Ada Lovelace",
            "emailAddresses": [{"name": "Ada", "address": "ada@example.com"}],
            "businessPhones": [],
            "homeAddress": {},
            "personalNotes": "note",
            "categories": ["VIP"],
            "singleValueExtendedProperties": [
                {"id": "String {5F3C1A2E-8B7D-4C6E-9A1F-2D4B6C8E0A13} name SyncId", "value": "sync-1"}
            ]
        });
        let wire: WireContact = decode_value("contact", body).expect("decodes");
        let contact = Contact::from(wire);
        assert_eq!(contact.id, "AAMkAGI2TG93AAA=");
        assert_eq!(contact.fields.display_name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(contact.fields.home_address, Some(Box::default()));
        assert_eq!(contact.personal_notes.as_deref(), Some("note"));
        assert_eq!(contact.categories, vec!["VIP".to_string()]);
        assert_eq!(contact.sync_id_property.as_deref(), Some("sync-1"));
        assert_eq!(
            contact.last_modified.map(|t| t.to_rfc3339()),
            Some("2026-01-02T03:04:05+00:00".to_string())
        );
    }

    /// A value of `field`'s type that is not its default, found by asking the derived decoder of
    /// [`ContactFields`] which shape it takes.
    fn sample_value(field: Field) -> Value {
        let shapes = [
            serde_json::json!(format!("{field} value")),
            serde_json::json!(["one", "two"]),
            serde_json::json!([{"name": "Ada", "address": "ada@example.com"}]),
            serde_json::json!({"street": "1 Main St", "city": "Springfield", "postalCode": "12345"}),
        ];
        shapes
            .into_iter()
            .find(|value| {
                let body = serde_json::json!({ field.graph_name(): value });
                serde_json::from_value::<ContactFields>(body)
                    .is_ok_and(|f| f != ContactFields::default())
            })
            .unwrap_or_else(|| panic!("no sample shape decodes as {field}"))
    }

    /// The hand-written decoder puts every mirrored field where the derived decoder of [`ContactFields`] puts it,
    /// one field at a time and all at once, and skips what it does not know (`@odata.etag`, `parentFolderId`).
    #[test]
    fn every_field_decodes_as_the_derived_decoder_decodes_it() {
        let mut all = Map::new();
        for &field in Field::ALL {
            let value = sample_value(field);
            all.insert(field.graph_name().into(), value.clone());
            let body = serde_json::json!({"id": "c1", "@odata.etag": "W/\"x\"", field.graph_name(): value});
            let expected: ContactFields = serde_json::from_value(body.clone()).expect("derived");
            let wire: WireContact =
                decode("contact", body.to_string().as_bytes()).expect("decodes");
            assert_eq!(Contact::from(wire).fields, expected, "{field}");
        }
        let expected: ContactFields =
            serde_json::from_value(Value::Object(all.clone())).expect("derived");
        all.insert("id".into(), serde_json::json!("c1"));
        all.insert("parentFolderId".into(), serde_json::json!("f1"));
        all.insert(
            "createdDateTime".into(),
            serde_json::json!("2026-01-02T03:04:05Z"),
        );
        let wire: WireContact = decode_value("contact", Value::Object(all)).expect("decodes");
        assert_eq!(Contact::from(wire).fields, expected);
    }

    /// Microsoft's own answer to a create (nulls, an empty `fileAs`, server properties) decodes; a contact without
    /// an id, or a field of the wrong type, is an error naming what is wrong.
    #[test]
    fn graphs_sample_contact_decodes_and_bad_shapes_are_named() {
        let samples: Value = serde_json::from_str(include_str!(
            "../../../graphsim/graph-data/sample-payloads.json"
        ))
        .expect("sample payloads");
        let created = samples["samples"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["name"] == "graph.contact.created"))
            .map(|s| s["body"].clone())
            .expect("graph.contact.created");
        let wire: WireContact = decode_value("written contact", created).expect("decodes");
        let contact = Contact::from(wire);
        assert_eq!(contact.id, "AAMkADh6v5AAAvgTCEAAA=");
        assert_eq!(
            contact.change_key.as_deref(),
            Some("EQAAABYAAACv7At+UNVFRLhGciJGF6v5AAAve7fW")
        );
        assert_eq!(contact.fields.file_as.as_deref(), Some(""));
        assert_eq!(contact.fields.birthday, None);

        let missing =
            decode::<WireContact>("contact", br#"{"displayName":"Ada"}"#).expect_err("no id");
        let why = std::error::Error::source(&missing)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(why.contains("missing field `id`"), "{missing}: {why}");
        let wrong = decode::<Page<WireContact>>("page", br#"{"value":[{"id":"a","surname":7}]}"#)
            .expect_err("a number is no surname");
        assert!(wrong.to_string().contains("value[0].surname"), "{wrong}");
    }

    #[test]
    fn property_ids_compare_like_exchange() {
        let upper = "String {5F3C1A2E-8B7D-4C6E-9A1F-2D4B6C8E0A13} Name SyncId";
        assert!(same_property_id(upper, SYNC_ID_PROPERTY));
        assert!(!same_property_id(
            "String {5f3c1a2e-8b7d-4c6e-9a1f-2d4b6c8e0a13} Name syncid",
            SYNC_ID_PROPERTY
        ));
        assert!(!same_property_id(
            "String {00000000-8b7d-4c6e-9a1f-2d4b6c8e0a13} Name SyncId",
            SYNC_ID_PROPERTY
        ));
        assert!(!same_property_id("", SYNC_ID_PROPERTY));
        assert!(same_property_id(
            "Boolean {00062004-0000-0000-c000-000000000046} Id 0X8015",
            HAS_PICTURE_PROPERTY
        ));
    }

    /// Exchange's `PidLidHasPicture` and the photo properties are read with the contact: "true" in any case is a
    /// photo, "false" or absence none; an emptied source change key is none.
    #[test]
    fn photo_properties_are_read_with_the_contact() {
        let read = |props: Value| -> Contact {
            let body = serde_json::json!({"id": "c1", "singleValueExtendedProperties": props});
            Contact::from(
                decode::<WireContact>("contact", body.to_string().as_bytes()).expect("decodes"),
            )
        };
        let with = read(serde_json::json!([
            {"id": "Boolean {00062004-0000-0000-c000-000000000046} Id 0x8015", "value": "True"},
            {"id": PHOTO_SOURCE_PROPERTY, "value": "ck-1"},
        ]));
        assert!(with.has_picture);
        assert_eq!(with.photo_source.as_deref(), Some("ck-1"));
        let without = read(serde_json::json!([
            {"id": HAS_PICTURE_PROPERTY, "value": "false"},
            {"id": PHOTO_SOURCE_PROPERTY, "value": ""},
        ]));
        assert!(!without.has_picture);
        assert_eq!(without.photo_source, None);
        assert!(!read(serde_json::json!([])).has_picture);
    }

    #[test]
    fn decode_errors_name_the_path() {
        let body = br#"{"value":[{"id":"a"},{"id":"b","emailAddresses":"oops"}]}"#;
        let error = decode::<Page<WireContact>>("contact list page", body).expect_err("must fail");
        let text = error.to_string();
        assert!(text.contains("value[1]"), "{text}");
    }

    #[test]
    fn error_bodies() {
        let parsed = parse_error_body(br#"{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{"code":"429","request-id":"r1"}}}"#);
        assert_eq!(
            parsed,
            Some(ErrorBody {
                code: "TooManyRequests".into(),
                message: "Please retry again later.".into(),
                request_id: Some("r1".into()),
            })
        );
        assert_eq!(parse_error_body(b"<html>"), None);
    }

    #[test]
    fn select_lists_exactly_the_needed_fields() {
        let select = contact_select();
        assert!(select
            .starts_with("id,lastModifiedDateTime,changeKey,personalNotes,categories,displayName"));
        assert_eq!(
            select.split(',').count(),
            5 + ContactFields::GRAPH_NAMES.len()
        );
        assert_eq!(odata_string("O'Brien"), "O''Brien");
    }
}
