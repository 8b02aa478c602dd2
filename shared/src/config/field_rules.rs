//! What travels (issue 14): `CentralFields` (which fields of a user's personal contact may reach the central folder)
//! and `Fields` (how each synchronised field is written into receiving mailboxes).
//!
//! Why this exists: phase 1 publishes users' personal contacts to the whole organisation, and a home address or a
//! birthday a user keeps about someone is not the organisation's business; and some organisations let users keep
//! their own value of a field (`FillEmpty`) or keep the tool out of it (`Ignore`). Both are parsed here into types
//! that cannot hold a setting the planners would have to re-check: [`CentralFields`] always holds the fields people
//! are matched by, and [`FieldPolicies`] always writes them.

use std::collections::BTreeMap;

use super::raw::{self, Loc, Node};
use super::ConfigError;
use crate::model::{Field, FieldSet};

/// The fields people are matched by across mailboxes (`displayName` only when there is no address): they must
/// reach the central folder and be written as they are, or two phases (or two runs) would disagree about who is who.
pub const MATCH_FIELDS: [Field; 2] = [Field::DisplayName, Field::EmailAddresses];

/// The default `CentralFields`: names, company, job title, department, e-mail addresses, business phones, mobile
/// phone and business address. What a colleague needs to reach someone at work; never a home address, home phone,
/// birthday, spouse, nickname, or anything else a user keeps about a contact privately.
pub const DEFAULT_CENTRAL_FIELDS: &[Field] = &[
    Field::DisplayName,
    Field::GivenName,
    Field::Surname,
    Field::MiddleName,
    Field::Title,
    Field::Initials,
    Field::Generation,
    Field::FileAs,
    Field::YomiGivenName,
    Field::YomiSurname,
    Field::YomiCompanyName,
    Field::CompanyName,
    Field::Department,
    Field::JobTitle,
    Field::EmailAddresses,
    Field::BusinessPhones,
    Field::MobilePhone,
    Field::BusinessAddress,
];

const FIELD: &str = "a contact field's Graph name (displayName, jobTitle, businessPhones, ...)";
const FIELD_LIST: &str = "an array of contact fields' Graph names";
const POLICY: &str = "Overwrite, FillEmpty or Ignore";

/// How one synchronised field is written into a receiving mailbox's contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FieldPolicy {
    /// The copy takes the source's value, an emptied source field included (today's behaviour).
    #[default]
    Overwrite,
    /// Written only where the copy's field is empty: a value a user put there stays.
    FillEmpty,
    /// Never written.
    Ignore,
}

impl FieldPolicy {
    const ALL: [FieldPolicy; 3] = [
        FieldPolicy::Overwrite,
        FieldPolicy::FillEmpty,
        FieldPolicy::Ignore,
    ];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldPolicy::Overwrite => "Overwrite",
            FieldPolicy::FillEmpty => "FillEmpty",
            FieldPolicy::Ignore => "Ignore",
        }
    }
}

/// The policy of every field (`Fields`); a field not configured is [`FieldPolicy::Overwrite`], and the
/// [`MATCH_FIELDS`] always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FieldPolicies {
    fill_empty: FieldSet,
    ignore: FieldSet,
}

impl FieldPolicies {
    /// The policies of `configured`, every other field overwritten. `Err` names a match field given another policy.
    pub fn new(configured: &BTreeMap<Field, FieldPolicy>) -> Result<Self, Field> {
        let mut policies = FieldPolicies::default();
        for (&field, &policy) in configured {
            if policy != FieldPolicy::Overwrite && MATCH_FIELDS.contains(&field) {
                return Err(field);
            }
            policies.fill_empty = policies.fill_empty.without(field);
            policies.ignore = policies.ignore.without(field);
            match policy {
                FieldPolicy::Overwrite => {}
                FieldPolicy::FillEmpty => policies.fill_empty = policies.fill_empty.with(field),
                FieldPolicy::Ignore => policies.ignore = policies.ignore.with(field),
            }
        }
        Ok(policies)
    }

    /// The policy of `field`.
    pub fn get(&self, field: Field) -> FieldPolicy {
        if self.ignore.contains(field) {
            FieldPolicy::Ignore
        } else if self.fill_empty.contains(field) {
            FieldPolicy::FillEmpty
        } else {
            FieldPolicy::Overwrite
        }
    }

    /// The fields under [`FieldPolicy::Overwrite`].
    pub fn overwritten(&self) -> FieldSet {
        self.fill_empty
            .complement()
            .intersection(self.ignore.complement())
    }

    /// Whether every field is overwritten (today's behaviour).
    pub fn all_overwritten(&self) -> bool {
        self.fill_empty.is_empty() && self.ignore.is_empty()
    }
}

/// The fields of a user's personal contact that may reach the central folder (`CentralFields`). Always holds the
/// [`MATCH_FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CentralFields(FieldSet);

impl CentralFields {
    /// `set` as the central fields; `Err` names a match field it lacks.
    pub fn new(set: FieldSet) -> Result<Self, Field> {
        match MATCH_FIELDS.iter().find(|f| !set.contains(**f)) {
            Some(missing) => Err(*missing),
            None => Ok(CentralFields(set)),
        }
    }

    /// Every field (the behaviour before issue 14).
    pub fn all() -> Self {
        CentralFields(FieldSet::all())
    }

    /// The fields.
    pub fn set(&self) -> FieldSet {
        self.0
    }
}

impl Default for CentralFields {
    fn default() -> Self {
        CentralFields(DEFAULT_CENTRAL_FIELDS.iter().copied().collect())
    }
}

/// What travels: `CentralFields` and `Fields` together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FieldRules {
    /// Which fields of a personal contact reach the central folder (phase 1), and so any other mailbox.
    pub central: CentralFields,
    /// How each field is written into receiving mailboxes (phase 2).
    pub policy: FieldPolicies,
}

impl FieldRules {
    /// Every field travels and is overwritten: the behaviour before issue 14.
    pub fn everything() -> Self {
        FieldRules {
            central: CentralFields::all(),
            policy: FieldPolicies::default(),
        }
    }
}

/// The field a configuration names, or an error naming the closest known one.
fn field(name: &str, at: &Loc) -> Result<Field, ConfigError> {
    Field::from_graph_name(name).ok_or_else(|| ConfigError::Invalid {
        at: at.to_string(),
        expected: FIELD.into(),
        got: match field_hint(name) {
            Some(hint) => format!("{} ({hint})", raw::quoted(name)),
            None => raw::quoted(name),
        },
    })
}

/// Why a name is not a field: the closest Graph name, or where a known non-field belongs.
fn field_hint(name: &str) -> Option<String> {
    let name = name.trim();
    if ["personalNotes", "categories"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
    {
        return Some(format!(
            "{name} never leaves its mailbox, so it is not a synchronised field"
        ));
    }
    raw::closest(name, crate::model::ContactFields::GRAPH_NAMES)
        .map(|k| format!("did you mean {k:?}?"))
}

/// `CentralFields`: an array of Graph names (a single name counts as a one-element array).
pub(super) fn read_central_fields(node: &Node, at: &Loc) -> Result<CentralFields, ConfigError> {
    let mut set = FieldSet::empty();
    for (name, item_at) in super::distribution::strings(node, at, FIELD_LIST, FIELD)? {
        set = set.with(field(&name, &item_at)?);
    }
    CentralFields::new(set).map_err(|missing| ConfigError::Invalid {
        at: at.to_string(),
        expected: format!(
            "a list including {} (people are matched across mailboxes by them)",
            MATCH_FIELDS.map(Field::graph_name).join(" and ")
        ),
        got: format!("a list without {missing}"),
    })
}

/// `Fields`: an object from Graph names to policies. Keys match ignoring case; a key given twice is refused.
pub(super) fn read_field_policies(
    node: &Node,
    at: &Loc,
) -> Result<BTreeMap<Field, FieldPolicy>, ConfigError> {
    let Node::Object(entries) = node else {
        return Err(ConfigError::Invalid {
            at: at.to_string(),
            expected: format!("an object from contact fields to {POLICY}, such as {{\"jobTitle\": \"FillEmpty\"}}"),
            got: node.kind().into(),
        });
    };
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let Some(field) = Field::from_graph_name(key) else {
            return Err(ConfigError::UnknownKey {
                at: at.to_string(),
                key: key.clone(),
                hint: field_hint(key).or_else(|| Some(format!("expected {FIELD}"))),
            });
        };
        let value_at = at.key(field.graph_name());
        let Some(text) = raw::string(value, &value_at, POLICY)? else {
            return Err(ConfigError::Missing {
                at: value_at.to_string(),
                expected: POLICY.into(),
            });
        };
        let Some(policy) = FieldPolicy::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(&text))
        else {
            let suggestion = raw::closest(&text, &FieldPolicy::ALL.map(FieldPolicy::as_str))
                .map(|p| format!(" (did you mean {p:?}?)"))
                .unwrap_or_default();
            return Err(ConfigError::Invalid {
                at: value_at.to_string(),
                expected: POLICY.into(),
                got: format!("{}{suggestion}", raw::quoted(&text)),
            });
        };
        if out.insert(field, policy).is_some() {
            return Err(ConfigError::Conflict {
                at: value_at.to_string(),
                problem: "field given twice, expected it once".into(),
            });
        }
    }
    FieldPolicies::new(&out).map_err(|field| ConfigError::Invalid {
        at: at.key(field.graph_name()).to_string(),
        expected: format!(
            "Overwrite ({field} is how people are matched across mailboxes: every copy must hold the source's)"
        ),
        got: raw::quoted(out.get(&field).map_or("", |p| p.as_str())),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_central_fields_keep_private_data_home() {
        let set = CentralFields::default().set();
        for private in [
            Field::HomeAddress,
            Field::HomePhones,
            Field::Birthday,
            Field::SpouseName,
            Field::NickName,
            Field::OtherAddress,
        ] {
            assert!(!set.contains(private), "{private} travels by default");
        }
        for work in [
            Field::JobTitle,
            Field::CompanyName,
            Field::Department,
            Field::BusinessPhones,
            Field::MobilePhone,
            Field::BusinessAddress,
            Field::GivenName,
            Field::Surname,
        ] {
            assert!(set.contains(work), "{work} does not travel by default");
        }
        assert!(MATCH_FIELDS.iter().all(|f| set.contains(*f)));
    }

    #[test]
    fn policies_default_to_overwrite_and_the_last_setting_wins() {
        let policies = FieldPolicies::new(&BTreeMap::from([
            (Field::JobTitle, FieldPolicy::FillEmpty),
            (Field::HomePhones, FieldPolicy::Ignore),
        ]))
        .expect("valid");
        assert_eq!(policies.get(Field::JobTitle), FieldPolicy::FillEmpty);
        assert_eq!(policies.get(Field::HomePhones), FieldPolicy::Ignore);
        assert_eq!(policies.get(Field::Surname), FieldPolicy::Overwrite);
        assert!(!policies.overwritten().contains(Field::JobTitle));
        assert!(policies.overwritten().contains(Field::Surname));
        assert!(!policies.all_overwritten());
        assert!(FieldPolicies::default().all_overwritten());
        assert_eq!(
            FieldPolicies::new(&BTreeMap::from([(
                Field::EmailAddresses,
                FieldPolicy::Ignore
            )])),
            Err(Field::EmailAddresses)
        );
        assert_eq!(
            CentralFields::new(FieldSet::all().without(Field::DisplayName)),
            Err(Field::DisplayName)
        );
    }
}
