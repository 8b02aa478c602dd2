use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::Layout;
use crate::contact::{property_kind, Contact, Kind, PROPERTIES};

/// The rendering as graphsim built it before [`ContactJson`]: a map of cloned values, the extended properties and
/// the annotation inserted into it. What `ContactJson` must write byte for byte.
fn rendered_as_a_map(
    c: &Contact,
    select: Option<&[String]>,
    expand: Option<&[String]>,
    annotation: Option<(&str, &str)>,
) -> Value {
    let server = |out: &mut Map<String, Value>, name: &str| -> bool {
        let value = match name {
            "createdDateTime" => &c.created,
            "lastModifiedDateTime" => &c.modified,
            "changeKey" => &c.change_key,
            "parentFolderId" => &c.folder_id,
            _ => return false,
        };
        out.insert(name.into(), Value::String(value.clone()));
        true
    };
    let property = |out: &mut Map<String, Value>, name: &str, kind: Kind, selected: bool| {
        let value = match (c.props.get(name), kind) {
            (Some(v), _) => v.clone(),
            (None, Kind::TextList | Kind::EmailList) => Value::Array(Vec::new()),
            (None, Kind::Address) => Value::Object(Map::new()),
            (None, Kind::Text) if name == "fileAs" => Value::String(String::new()),
            (None, Kind::Email) if !selected => return,
            (None, _) => Value::Null,
        };
        out.insert(name.into(), value);
    };
    let mut out = Map::new();
    out.insert("@odata.etag".into(), Value::String(c.etag()));
    out.insert("id".into(), Value::String(c.id.clone()));
    match select {
        None => {
            for name in [
                "createdDateTime",
                "lastModifiedDateTime",
                "changeKey",
                "parentFolderId",
            ] {
                server(&mut out, name);
            }
            for &(name, kind) in PROPERTIES {
                property(&mut out, name, kind, false);
            }
        }
        Some(names) => {
            for name in names {
                if !server(&mut out, name) {
                    if let Some(kind) = property_kind(name) {
                        property(&mut out, name, kind, true);
                    }
                }
            }
        }
    }
    if let Some(ids) = expand {
        let found: Vec<Value> = ids
            .iter()
            .filter_map(|id| c.extended.get(id).map(|v| json!({"id": id, "value": v})))
            .collect();
        if !found.is_empty() {
            out.insert("singleValueExtendedProperties".into(), Value::Array(found));
        }
    }
    if let Some((name, value)) = annotation {
        out.insert(name.into(), Value::String(value.into()));
    }
    Value::Object(out)
}

fn contact(props: Map<String, Value>, extended: BTreeMap<String, Option<String>>) -> Contact {
    Contact {
        id: "AAMkAGI2TG93AAA=".into(),
        folder_id: "AAMkAGI2F0lder=".into(),
        change_key: "EQAAABYAAAC".into(),
        created: "2026-01-01T00:00:00.000000Z".into(),
        modified: "2026-01-02T00:00:00.000001Z".into(),
        props,
        extended,
        other_navigation: Map::new(),
        version: 1,
        seq: 1,
    }
}

/// Text with what JSON must escape or may not: quotes, backslashes, control characters, non-ASCII.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-zA-Z .'-]{1,12}",
        "[\"\\\\\u{0}-\u{1f}é漢😀a]{1,6}",
    ]
}

fn value_of(kind: Kind) -> BoxedStrategy<Value> {
    let email =
        (text(), text()).prop_map(|(name, address)| json!({"name": name, "address": address}));
    match kind {
        Kind::Text => prop_oneof![text().prop_map(Value::String), Just(Value::Null)].boxed(),
        Kind::TextList => prop::collection::vec(text(), 0..3)
            .prop_map(|v| json!(v))
            .boxed(),
        Kind::EmailList => prop::collection::vec(email, 0..3)
            .prop_map(Value::Array)
            .boxed(),
        Kind::Email => email.boxed(),
        Kind::Address => prop::collection::btree_map(
            prop::sample::select(vec![
                "street",
                "city",
                "state",
                "countryOrRegion",
                "postalCode",
            ]),
            text(),
            0..5,
        )
        .prop_map(|m| json!(m))
        .boxed(),
    }
}

/// Some of the writable properties set, each with a value of its kind.
fn props() -> impl Strategy<Value = Map<String, Value>> {
    let each: Vec<BoxedStrategy<Option<(String, Value)>>> = PROPERTIES
        .iter()
        .map(|&(name, kind)| {
            prop::option::of(value_of(kind).prop_map(move |v| (name.to_owned(), v))).boxed()
        })
        .collect();
    each.prop_map(|set| set.into_iter().flatten().collect())
}

const EXTENDED_IDS: [&str; 3] = [
    "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name SyncId",
    "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name CreatedBy",
    "String 0x4001",
];

fn extended() -> impl Strategy<Value = BTreeMap<String, Option<String>>> {
    prop::collection::btree_map(
        prop::sample::select(EXTENDED_IDS.to_vec()).prop_map(str::to_owned),
        prop::option::of(text()),
        0..3,
    )
}

/// `$select` lists: writable and server names, names no contact has, repeats.
fn select() -> impl Strategy<Value = Option<Vec<String>>> {
    let mut names: Vec<&str> = PROPERTIES.iter().map(|(n, _)| *n).collect();
    names.extend([
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "parentFolderId",
        "singleValueExtendedProperties",
        "noSuchProperty",
    ]);
    prop::option::of(prop::collection::vec(
        prop::sample::select(names).prop_map(str::to_owned),
        0..12,
    ))
}

fn expand() -> impl Strategy<Value = Option<Vec<String>>> {
    let mut ids = EXTENDED_IDS.to_vec();
    ids.push("String {00000000-0000-0000-0000-000000000000} Name Unset");
    prop::option::of(prop::collection::vec(
        prop::sample::select(ids).prop_map(str::to_owned),
        0..4,
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every contact, `$select`, `$expand` and annotation: the same bytes as the map graphsim built before.
    #[test]
    fn writes_the_bytes_of_the_map_it_replaces(
        props in props(),
        extended in extended(),
        select in select(),
        expand in expand(),
        annotation in prop::sample::select(vec![None, Some("@odata.context"), Some("@odata.type")]),
    ) {
        let c = contact(props, extended);
        let mut layout = Layout::new(select.as_deref(), expand.as_deref());
        let annotation = annotation.map(|name| (name, "https://graph.microsoft.com/v1.0/$metadata#x"));
        if let Some((name, value)) = annotation {
            layout = layout.annotated(name, value);
        }
        let json = layout.of(&c);
        let expected = rendered_as_a_map(&c, select.as_deref(), expand.as_deref(), annotation);
        let written = serde_json::to_vec(&json).expect("serialises");
        let wanted = serde_json::to_vec(&expected).expect("serialises");
        prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&wanted));
        prop_assert_eq!(Value::Object(json.to_map()), expected);
    }
}

/// Outlook's rendering: without `$select` every property (an unset e-mail property left out, `parentFolderId`
/// given); with it exactly the listed names besides `@odata.etag` and `id` (an unset e-mail property `null`).
#[test]
fn renders_what_select_names() {
    let c = contact(
        serde_json::from_value(json!({"displayName": "Ada"})).expect("map"),
        BTreeMap::new(),
    );
    let all = Layout::new(None, None).of(&c).to_map();
    assert_eq!(all["parentFolderId"], json!("AAMkAGI2F0lder="));
    assert_eq!(all["changeKey"], json!("EQAAABYAAAC"));
    assert_eq!(all["fileAs"], json!(""));
    assert_eq!(all["businessPhones"], json!([]));
    assert!(!all.contains_key("primaryEmailAddress"));
    assert_eq!(all.len(), 2 + 4 + PROPERTIES.len() - 3);

    let select: Vec<String> = [
        "displayName",
        "primaryEmailAddress",
        "homeAddress",
        "lastModifiedDateTime",
    ]
    .map(String::from)
    .to_vec();
    let some = Layout::new(Some(&select), None).of(&c).to_map();
    let keys: Vec<&str> = some.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "@odata.etag",
            "displayName",
            "homeAddress",
            "id",
            "lastModifiedDateTime",
            "primaryEmailAddress"
        ]
    );
    assert_eq!(some["primaryEmailAddress"], Value::Null);
    assert_eq!(some["homeAddress"], json!({}));
    assert_eq!(some["displayName"], json!("Ada"));
}
