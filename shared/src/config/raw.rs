//! The configuration as written: a JSON tree that keeps every key (duplicates included) in document order, the
//! location of each value (variable or file, then JSON path) and the scalar readers shared by every form.
//!
//! Nothing here ever quotes a secret: parse errors carry only a position, type errors only a type name, and values
//! are quoted only by callers that know the field is not secret (and even those pass through
//! [`super::ConfigError::scrub`] at the end).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::ConfigError;

/// A JSON value that keeps duplicate keys, so `{"ClientId":..,"ClientId":..}` can be rejected instead of the last
/// one silently winning.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        // JSON cannot spell NaN or infinity, so this is always Some; map the impossible case to null.
        Ok(serde_json::Number::from_f64(v).map_or(Node::Null, Node::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Node>()? {
            entries.push((key, value));
        }
        Ok(Node::Object(entries))
    }
}

impl Node {
    /// What kind of value this is, for "got ..." in errors. Never the value itself.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::String(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }

    /// Every string stored under a `ClientSecret` key (any case, any depth), so errors can be scrubbed of them even
    /// when a secret was pasted into the wrong field.
    pub(super) fn collect_secrets(&self, out: &mut Vec<String>) {
        match self {
            Node::Array(items) => items.iter().for_each(|item| item.collect_secrets(out)),
            Node::Object(entries) => {
                for (key, value) in entries {
                    if key.trim().eq_ignore_ascii_case("ClientSecret") {
                        if let Node::String(secret) = value {
                            out.push(secret.clone());
                        }
                    }
                    value.collect_secrets(out);
                }
            }
            _ => {}
        }
    }
}

/// Parses a JSON document. A syntax error reports only its position: the text may hold a client secret and
/// serde_json's messages may quote it.
pub(super) fn parse(text: &str, at: &Loc) -> Result<Node, ConfigError> {
    serde_json::from_str::<Node>(text).map_err(|error| ConfigError::Json {
        at: at.to_string(),
        kind: match error.classify() {
            serde_json::error::Category::Eof => "unexpected end of input",
            _ => "syntax error",
        },
        line: error.line(),
        column: error.column(),
    })
}

/// Where a value comes from: the variable or file, then the JSON path inside it (empty for the whole value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Loc {
    origin: String,
    path: String,
}

impl Loc {
    /// The whole value of a variable or file.
    pub(super) fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            path: String::new(),
        }
    }

    /// A key of the object at this location.
    pub(super) fn key(&self, key: &str) -> Self {
        let path = if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        };
        Self {
            origin: self.origin.clone(),
            path,
        }
    }

    /// An element of the array at this location.
    pub(super) fn index(&self, index: usize) -> Self {
        Self {
            origin: self.origin.clone(),
            path: format!("{}[{index}]", self.path),
        }
    }

    /// The JSON path part alone (empty at the root).
    pub(super) fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.origin)
        } else {
            write!(f, "{}: {}", self.origin, self.path)
        }
    }
}

/// The keys of one JSON object, matched to the known (canonical, PascalCase) names.
///
/// Matching ignores ASCII case, like PowerShell's `ConvertFrom-Json` property access that the script relied on: the
/// known names differ from each other in more than case, so this is unambiguous. Two keys of one object that are
/// equal ignoring case (`"TenantId"` and `"tenantId"`, or the same key twice) are rejected, as is any unknown key.
pub(super) struct Fields {
    found: Vec<(&'static str, Node, Loc)>,
}

impl Fields {
    /// Reads the object at `at`, accepting only `known` keys; `hint` may explain a key that is known elsewhere.
    pub(super) fn from_object(
        node: &Node,
        at: &Loc,
        known: &[&'static str],
        hint: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Node::Object(entries) = node else {
            return Err(ConfigError::Invalid {
                at: at.to_string(),
                expected: "a JSON object".into(),
                got: node.kind().into(),
            });
        };
        let mut found: Vec<(&'static str, Node, Loc)> = Vec::new();
        let mut spelled: Vec<&str> = Vec::new();
        for (key, value) in entries {
            let trimmed = key.trim();
            let Some(name) = known
                .iter()
                .copied()
                .find(|k| k.eq_ignore_ascii_case(trimmed))
            else {
                let suggestion = hint(trimmed)
                    .or_else(|| closest(trimmed, known).map(|k| format!("did you mean {k:?}?")));
                return Err(ConfigError::UnknownKey {
                    at: at.to_string(),
                    key: key.clone(),
                    hint: suggestion,
                });
            };
            if let Some(pos) = found.iter().position(|(n, _, _)| *n == name) {
                return Err(ConfigError::Conflict {
                    at: at.key(name).to_string(),
                    problem: format!(
                        "key given twice ({:?} and {key:?}), expected it once",
                        spelled[pos]
                    ),
                });
            }
            found.push((name, value.clone(), at.key(name)));
            spelled.push(key);
        }
        Ok(Self { found })
    }

    /// An empty set, filled with [`Fields::insert`] (the single-tenant variables).
    pub(super) fn empty() -> Self {
        Self { found: Vec::new() }
    }

    /// Adds a value under a canonical name.
    pub(super) fn insert(&mut self, name: &'static str, node: Node, at: Loc) {
        self.found.push((name, node, at));
    }

    /// The value of `name`, unless absent, null or an empty (after trimming) string: those count as missing.
    pub(super) fn get(&self, name: &str) -> Option<(&Node, &Loc)> {
        self.found
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, node, at)| (node, at))
            .filter(|(node, _)| !is_blank(node))
    }

    /// Whether `name` is present with a non-missing value.
    pub(super) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Null and empty strings count as missing.
pub(super) fn is_blank(node: &Node) -> bool {
    match node {
        Node::Null => true,
        Node::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a typo.
pub(super) fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&key, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Quotes a non-secret value for an error message.
pub(super) fn quoted(value: &str) -> String {
    format!("{value:?}")
}

/// What a value is, quoting it only when it is a non-secret scalar.
pub(super) fn shown(node: &Node) -> String {
    match node {
        Node::String(s) => quoted(s),
        Node::Number(n) => n.to_string(),
        Node::Bool(b) => b.to_string(),
        other => other.kind().to_owned(),
    }
}

/// A non-secret string value, trimmed. `Ok(None)` when missing.
pub(super) fn string(node: &Node, at: &Loc, expected: &str) -> Result<Option<String>, ConfigError> {
    match node {
        Node::Null => Ok(None),
        Node::String(s) if s.trim().is_empty() => Ok(None),
        Node::String(s) => Ok(Some(s.trim().to_owned())),
        other => Err(ConfigError::Invalid {
            at: at.to_string(),
            expected: expected.to_owned(),
            got: other.kind().into(),
        }),
    }
}

/// What booleans look like, for error messages.
pub(super) const BOOLEAN: &str = "a boolean (true/false, 1/0, yes/no or y/n)";

/// A boolean: JSON true/false, the numbers 1/0, or true/false/1/0/yes/no/y/n in any case. `Ok(None)` when missing.
pub(super) fn boolean(node: &Node, at: &Loc) -> Result<Option<bool>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        at: at.to_string(),
        expected: BOOLEAN.into(),
        got: shown(node),
    };
    match node {
        Node::Null => Ok(None),
        Node::Bool(b) => Ok(Some(*b)),
        Node::Number(n) => match n.as_f64() {
            Some(1.0) => Ok(Some(true)),
            Some(0.0) => Ok(Some(false)),
            _ => Err(invalid()),
        },
        Node::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" | "1" | "yes" | "y" => Ok(Some(true)),
            "false" | "0" | "no" | "n" => Ok(Some(false)),
            _ => Err(invalid()),
        },
        _ => Err(ConfigError::Invalid {
            at: at.to_string(),
            expected: BOOLEAN.into(),
            got: node.kind().into(),
        }),
    }
}

/// A number, from a JSON number or a numeric string. `Ok(None)` when missing.
pub(super) fn number(node: &Node, at: &Loc, expected: &str) -> Result<Option<f64>, ConfigError> {
    let invalid = || ConfigError::Invalid {
        at: at.to_string(),
        expected: expected.to_owned(),
        got: shown(node),
    };
    match node {
        Node::Null => Ok(None),
        Node::Number(n) => n.as_f64().map(Some).ok_or_else(invalid),
        Node::String(s) if s.trim().is_empty() => Ok(None),
        Node::String(s) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(invalid()),
        },
        _ => Err(ConfigError::Invalid {
            at: at.to_string(),
            expected: expected.to_owned(),
            got: node.kind().into(),
        }),
    }
}

/// A whole number in `min..=max`, from a JSON number or a numeric string. `Ok(None)` when missing.
pub(super) fn integer(
    node: &Node,
    at: &Loc,
    min: u64,
    max: u64,
    expected: &str,
) -> Result<Option<u64>, ConfigError> {
    let Some(value) = number(node, at, expected)? else {
        return Ok(None);
    };
    // Exact for every integer up to 2^53, far above any limit configured here.
    if value.fract() == 0.0 && value >= min as f64 && value <= max as f64 {
        Ok(Some(value as u64))
    } else {
        Err(ConfigError::Invalid {
            at: at.to_string(),
            expected: expected.to_owned(),
            got: shown(node),
        })
    }
}

/// What one test user looks like, for error messages.
pub(super) const USER: &str = "a user (UPN, object id or alias)";

/// A list of users (non-empty strings); a single string counts as a one-element list (PowerShell's `ConvertTo-Json`
/// writes a one-element array that way). Duplicates (ignoring case) are dropped. `Ok(None)` when missing or an empty
/// array: the script's `"TestUserList": []` means every user.
pub(super) fn user_list(node: &Node, at: &Loc) -> Result<Option<Vec<String>>, ConfigError> {
    let items: Vec<(&Node, Loc)> = match node {
        Node::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| (n, at.index(i)))
            .collect(),
        Node::String(_) | Node::Null => {
            return Ok(string(node, at, "an array of users (UPNs)")?.map(|s| vec![s]));
        }
        other => {
            return Err(ConfigError::Invalid {
                at: at.to_string(),
                expected: "an array of users (UPNs)".into(),
                got: other.kind().into(),
            })
        }
    };
    if items.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (item, item_at) in items {
        let Some(value) = string(item, &item_at, USER)? else {
            return Err(ConfigError::Missing {
                at: item_at.to_string(),
                expected: USER.into(),
            });
        };
        if !out.iter().any(|known| known.eq_ignore_ascii_case(&value)) {
            out.push(value);
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_kept() {
        let node = parse(r#"{"a":1,"a":2}"#, &Loc::new("X")).expect("parses");
        assert_eq!(
            node,
            Node::Object(vec![
                ("a".into(), Node::Number(1.into())),
                ("a".into(), Node::Number(2.into()))
            ])
        );
    }

    #[test]
    fn typo_suggestions() {
        assert_eq!(
            closest("TenantID", &["TenantId", "ClientId"]),
            Some("TenantId")
        );
        assert_eq!(
            closest("ClientSecert", &["ClientSecret", "ClientId"]),
            Some("ClientSecret")
        );
        assert_eq!(closest("Whatever", &["TenantId"]), None);
    }

    #[test]
    fn locations() {
        let at = Loc::new("VAR")
            .key("MicrosoftTenants")
            .index(1)
            .key("ClientId");
        assert_eq!(at.to_string(), "VAR: MicrosoftTenants[1].ClientId");
        assert_eq!(Loc::new("VAR").index(0).to_string(), "VAR: [0]");
        assert_eq!(Loc::new("VAR").to_string(), "VAR");
    }
}
