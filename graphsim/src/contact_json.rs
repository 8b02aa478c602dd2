//! A stored contact as Outlook returns it, serialised straight from the store.
//!
//! Why not a `serde_json::Value`: a folder read renders up to 1,000 contacts a page, and building each one as a
//! map of cloned values, then serialising and dropping it, was most of graphsim's CPU in the benchmark's changed
//! re-runs, CPU that the client being measured shares. The bytes are those of that map: the same names and values,
//! in the order a `serde_json::Map` writes them (sorted by name; the crate is built without `preserve_order`), a
//! name given twice written once with its last value.

use std::sync::OnceLock;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::contact::{property_kind, Contact, Kind, PROPERTIES};

/// Server-managed properties, in the order Outlook lists them when no `$select` is given.
const SERVER: [&str; 4] = [
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "parentFolderId",
];

/// Which members a rendering writes, in order: what the query's `$select` and `$expand` name, sorted by name and
/// each name once (its last source, as a map's insert keeps). Worked out once per answer, not per contact: a page
/// renders up to 1,000 contacts with the same query.
pub struct Layout<'a> {
    members: Vec<(&'a str, Source<'a>)>,
    expand: Option<&'a [String]>,
}

/// Where a member's value comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Etag,
    Id,
    Server,
    /// A writable property of this kind; `selected`: named by `$select`.
    Property(Kind, bool),
    /// `singleValueExtendedProperties`: the `$expand`ed ones the contact has, left out when it has none.
    Extended,
    /// A fixed value beside the properties.
    Annotation(&'a str),
}

impl<'a> Layout<'a> {
    /// The members for the query's `$select` and `$expand` (each `None` when the query has none).
    pub fn new(select: Option<&'a [String]>, expand: Option<&'a [String]>) -> Self {
        let mut members: Vec<(&'a str, Source<'a>)> =
            vec![("@odata.etag", Source::Etag), ("id", Source::Id)];
        match select {
            None => {
                members.extend(SERVER.map(|name| (name, Source::Server)));
                members.extend(
                    PROPERTIES
                        .iter()
                        .map(|&(name, kind)| (name, Source::Property(kind, false))),
                );
            }
            Some(names) => {
                for name in names {
                    if is_server(name) {
                        members.push((name, Source::Server));
                    } else if let Some(kind) = property_kind(name) {
                        members.push((name, Source::Property(kind, true)));
                    }
                }
            }
        }
        if expand.is_some() {
            members.push(("singleValueExtendedProperties", Source::Extended));
        }
        Self { members, expand }.sorted()
    }

    /// The same members with `name: value` beside them (`@odata.context` of a single entity, `@odata.type` of a
    /// delta item).
    pub fn annotated(mut self, name: &'static str, value: &'a str) -> Self {
        self.members.push((name, Source::Annotation(value)));
        self.sorted()
    }

    /// `contact` rendered with these members.
    pub fn of<'c>(&'c self, contact: &'c Contact) -> ContactJson<'c> {
        ContactJson {
            contact,
            layout: self,
        }
    }

    /// Sorted by name (stable, so of equal names the last pushed stays last), each name once: its last source.
    fn sorted(mut self) -> Self {
        self.members.sort_by(|a, b| a.0.cmp(b.0));
        let mut kept: Vec<(&'a str, Source<'a>)> = Vec::with_capacity(self.members.len());
        for member in self.members {
            if kept.last().is_some_and(|(name, _)| *name == member.0) {
                kept.pop();
            }
            kept.push(member);
        }
        self.members = kept;
        self
    }
}

/// One contact rendered with a [`Layout`].
pub struct ContactJson<'a> {
    contact: &'a Contact,
    layout: &'a Layout<'a>,
}

impl ContactJson<'_> {
    /// The rendering as a map, for answers that add to it or embed it (a delta page, the control surface).
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            // Not reached: every member has a string name and a JSON value.
            _ => Map::new(),
        }
    }
}

impl Serialize for ContactJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.contact;
        // No length: a member can be left out for this contact (an unset e-mail property, no extended one).
        let mut map = serializer.serialize_map(None)?;
        for &(name, source) in &self.layout.members {
            let member = match source {
                Source::Etag => Member::Owned(c.etag()),
                Source::Id => Member::Text(&c.id),
                Source::Server => match server_value(c, name) {
                    Some(value) => Member::Text(value),
                    None => continue,
                },
                Source::Property(kind, selected) => match property(c, name, kind, selected) {
                    Some(member) => member,
                    None => continue,
                },
                Source::Extended => {
                    let found: Vec<Extended<'_>> = self
                        .layout
                        .expand
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|id| c.extended.get(id).map(|value| Extended { id, value }))
                        .collect();
                    if found.is_empty() {
                        continue;
                    }
                    Member::Extended(found)
                }
                Source::Annotation(value) => Member::Text(value),
            };
            map.serialize_entry(name, &member)?;
        }
        map.end()
    }
}

/// Whether `name` is a server-managed property (its value is [`server_value`]'s).
fn is_server(name: &str) -> bool {
    SERVER.contains(&name)
}

/// Everything stored of `contact`, for [`crate::Sim::contacts`]: its full rendering, the other navigation data kept
/// from bodies, and every extended property.
pub fn full_state(contact: &Contact) -> Value {
    // One layout for every call: the bench snapshots hundreds of thousands of contacts this way.
    static EVERYTHING: OnceLock<Layout<'static>> = OnceLock::new();
    let everything = EVERYTHING.get_or_init(|| Layout::new(None, None));
    let mut out = everything.of(contact).to_map();
    for (k, v) in &contact.other_navigation {
        out.insert(k.clone(), v.clone());
    }
    out.insert(
        "singleValueExtendedProperties".into(),
        Value::Array(
            contact
                .extended
                .iter()
                .map(|(id, v)| serde_json::json!({"id": id, "value": v}))
                .collect(),
        ),
    );
    Value::Object(out)
}

/// The value of server-managed property `name`; `None` when `name` is not one.
fn server_value<'a>(c: &'a Contact, name: &str) -> Option<&'a str> {
    match name {
        "createdDateTime" => Some(&c.created),
        "lastModifiedDateTime" => Some(&c.modified),
        "changeKey" => Some(&c.change_key),
        "parentFolderId" => Some(&c.folder_id),
        _ => None,
    }
}

/// Writable property `name` as Outlook renders it when unset (`selected`: named by `$select`, where an unset
/// e-mail property is `null` rather than left out); `None` when it is left out.
fn property<'a>(c: &'a Contact, name: &str, kind: Kind, selected: bool) -> Option<Member<'a>> {
    Some(match (c.props.get(name), kind) {
        (Some(v), _) => Member::Value(v),
        (None, Kind::TextList | Kind::EmailList) => Member::EmptyList,
        (None, Kind::Address) => Member::EmptyObject,
        (None, Kind::Text) if name == "fileAs" => Member::Text(""),
        (None, Kind::Email) if !selected => return None,
        (None, _) => Member::Null,
    })
}

/// One member's value, borrowed from the stored contact where it can be.
enum Member<'a> {
    Text(&'a str),
    Owned(String),
    Value(&'a Value),
    EmptyList,
    EmptyObject,
    Null,
    Extended(Vec<Extended<'a>>),
}

impl Serialize for Member<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Member::Text(text) => serializer.serialize_str(text),
            Member::Owned(text) => serializer.serialize_str(text),
            Member::Value(value) => value.serialize(serializer),
            Member::EmptyList => serializer.collect_seq(std::iter::empty::<()>()),
            Member::EmptyObject => serializer.collect_map(std::iter::empty::<((), ())>()),
            Member::Null => serializer.serialize_unit(),
            Member::Extended(found) => serializer.collect_seq(found),
        }
    }
}

/// A `singleValueExtendedProperties` item (`id` before `value`, as a map writes them).
#[derive(serde::Serialize)]
struct Extended<'a> {
    id: &'a str,
    value: &'a Option<String>,
}

#[cfg(test)]
mod tests;
