//! Comparing contact data the way a person would, and the keys contacts are matched by.
//!
//! Why this exists: an unchanged contact must cost zero writes, forever. Graph and Outlook spell the same data in
//! several ways (null, "" or missing; padded strings; address case; list order; a birthday with or without a
//! time), and the old script re-wrote contacts on such noise or never noticed real edits. Everything the rules
//! compare goes through [`normalize`]; everything they match on goes through [`email_keys`] and [`name_key`].
//!
//! Rules: strings are trimmed and empty means absent; email addresses are compared case-insensitively as a set,
//! with an entry's `name` ignored when empty or equal to its address; phone lists and IM addresses are compared
//! order-insensitively; a postal address whose parts are all empty is absent; a birthday is compared by its date.

use std::collections::BTreeSet;

use crate::model::{ContactFields, EmailAddress, Field, FieldSet, PhysicalAddress};

/// One normalised field value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(Option<String>),
    Emails(BTreeSet<(Option<String>, Option<String>)>),
    List(Vec<String>),
    Address(Option<[Option<String>; 5]>),
}

/// The mirrored fields of a contact after normalisation, one value per [`Field`] in [`Field::ALL`] order; two
/// contacts hold the same data iff these are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedFields(Vec<Value>);

fn text(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn list(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    out.sort_unstable();
    out
}

fn emails(values: &[EmailAddress]) -> BTreeSet<(Option<String>, Option<String>)> {
    values
        .iter()
        .filter_map(|e| {
            let address = text(&e.address).map(|a| a.to_lowercase());
            let name = text(&e.name).filter(|n| Some(n.to_lowercase()) != address);
            (address.is_some() || name.is_some()).then_some((address, name))
        })
        .collect()
}

fn address(value: &Option<PhysicalAddress>) -> Option<[Option<String>; 5]> {
    let a = value.as_ref()?;
    let parts = [
        text(&a.street),
        text(&a.city),
        text(&a.state),
        text(&a.country_or_region),
        text(&a.postal_code),
    ];
    parts.iter().any(Option::is_some).then_some(parts)
}

/// The date part of a birthday (`1974-07-22`, `1974-07-22T00:00:00Z` and `1974-07-22T11:59:00Z` are one date).
fn birthday(value: &Option<String>) -> Option<String> {
    let value = text(value)?;
    let date = value.get(..10).filter(|d| {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_ok()
            && value[10..]
                .chars()
                .next()
                .is_none_or(|c| c == 'T' || c == ' ')
    });
    Some(date.map(str::to_owned).unwrap_or(value))
}

/// The normalised value of one field of `f`.
fn value(field: Field, f: &ContactFields) -> Value {
    use Value::{Address, Emails, List, Text};
    match field {
        Field::DisplayName => Text(text(&f.display_name)),
        Field::GivenName => Text(text(&f.given_name)),
        Field::Surname => Text(text(&f.surname)),
        Field::MiddleName => Text(text(&f.middle_name)),
        Field::NickName => Text(text(&f.nick_name)),
        Field::Title => Text(text(&f.title)),
        Field::Initials => Text(text(&f.initials)),
        Field::Generation => Text(text(&f.generation)),
        Field::FileAs => Text(text(&f.file_as)),
        Field::YomiGivenName => Text(text(&f.yomi_given_name)),
        Field::YomiSurname => Text(text(&f.yomi_surname)),
        Field::YomiCompanyName => Text(text(&f.yomi_company_name)),
        Field::CompanyName => Text(text(&f.company_name)),
        Field::Department => Text(text(&f.department)),
        Field::JobTitle => Text(text(&f.job_title)),
        Field::OfficeLocation => Text(text(&f.office_location)),
        Field::Profession => Text(text(&f.profession)),
        Field::Manager => Text(text(&f.manager)),
        Field::AssistantName => Text(text(&f.assistant_name)),
        Field::BusinessHomePage => Text(text(&f.business_home_page)),
        Field::EmailAddresses => Emails(emails(&f.email_addresses)),
        Field::ImAddresses => List(list(&f.im_addresses)),
        Field::BusinessPhones => List(list(&f.business_phones)),
        Field::HomePhones => List(list(&f.home_phones)),
        Field::MobilePhone => Text(text(&f.mobile_phone)),
        Field::BusinessAddress => Address(address(&f.business_address)),
        Field::HomeAddress => Address(address(&f.home_address)),
        Field::OtherAddress => Address(address(&f.other_address)),
        Field::Birthday => Text(birthday(&f.birthday)),
        Field::SpouseName => Text(text(&f.spouse_name)),
    }
}

impl Value {
    /// Whether the value is absent (what a cleared field normalises to).
    fn is_empty(&self) -> bool {
        match self {
            Value::Text(t) => t.is_none(),
            Value::Emails(e) => e.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Address(a) => a.is_none(),
        }
    }

    /// The absent value of the same kind.
    fn emptied(&self) -> Value {
        match self {
            Value::Text(_) => Value::Text(None),
            Value::Emails(_) => Value::Emails(BTreeSet::new()),
            Value::List(_) => Value::List(Vec::new()),
            Value::Address(_) => Value::Address(None),
        }
    }
}

/// Normalises the mirrored fields for comparison (see the module docs for the rules).
pub fn normalize(f: &ContactFields) -> NormalizedFields {
    NormalizedFields(Field::ALL.iter().map(|&field| value(field, f)).collect())
}

impl NormalizedFields {
    /// Graph names of the fields whose normalised values differ.
    pub fn changed(&self, other: &NormalizedFields) -> Vec<&'static str> {
        self.changed_in(other, FieldSet::all())
    }

    /// Graph names of the fields of `set` whose normalised values differ.
    pub fn changed_in(&self, other: &NormalizedFields, set: FieldSet) -> Vec<&'static str> {
        set.iter()
            .filter(|&f| self.0[f as usize] != other.0[f as usize])
            .map(Field::graph_name)
            .collect()
    }

    /// Whether any field of `set` differs.
    pub fn differs_in(&self, other: &NormalizedFields, set: FieldSet) -> bool {
        set.iter()
            .any(|f| self.0[f as usize] != other.0[f as usize])
    }

    /// Whether `field` is empty (absent, blank, or a list of blanks).
    pub fn is_empty(&self, field: Field) -> bool {
        self.0[field as usize].is_empty()
    }

    /// The fields that hold a value.
    pub fn filled(&self) -> FieldSet {
        Field::ALL
            .iter()
            .copied()
            .filter(|&f| !self.is_empty(f))
            .collect()
    }

    /// The same values with every field outside `keep` emptied: `normalize(f).masked(s)` equals the normalised
    /// `f` with the fields outside `s` cleared.
    #[must_use]
    pub fn masked(mut self, keep: FieldSet) -> NormalizedFields {
        for field in keep.complement().iter() {
            let slot = &mut self.0[field as usize];
            *slot = slot.emptied();
        }
        self
    }
}

/// Whether two contacts hold the same mirrored data after normalisation.
pub fn same_data(a: &ContactFields, b: &ContactFields) -> bool {
    normalize(a) == normalize(b)
}

/// Graph names of the mirrored fields that differ between `a` and `b` after normalisation.
pub fn changed_fields(a: &ContactFields, b: &ContactFields) -> Vec<&'static str> {
    normalize(a).changed(&normalize(b))
}

/// Every email address of the contact, trimmed and lower-cased (blank ones dropped): the email match keys.
pub fn email_keys(f: &ContactFields) -> BTreeSet<String> {
    f.email_addresses
        .iter()
        .filter_map(|e| text(&e.address))
        .map(|a| a.to_lowercase())
        .collect()
}

/// The displayName match key (trimmed, lower-cased), offered only by a contact without any email address:
/// people are matched by name only when neither side has an address.
pub fn name_key(f: &ContactFields) -> Option<String> {
    if !email_keys(f).is_empty() {
        return None;
    }
    text(&f.display_name).map(|n| n.to_lowercase())
}

/// Whether `categories` contains `category` (trimmed, case-insensitive).
pub fn has_category(categories: &[String], category: &str) -> bool {
    let wanted = category.trim().to_lowercase();
    !wanted.is_empty() && categories.iter().any(|c| c.trim().to_lowercase() == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(address: &str, name: Option<&str>) -> EmailAddress {
        EmailAddress {
            address: Some(address.into()),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn noise_is_not_a_change() {
        let a = ContactFields {
            display_name: Some("Ann Lee".into()),
            job_title: Some("".into()),
            email_addresses: vec![email("Ann@X.com", None), email("b@y.org", Some("b@Y.org"))],
            business_phones: vec!["2".into(), "1 ".into()],
            home_address: Some(PhysicalAddress::default()),
            birthday: Some("1974-07-22T11:59:00Z".into()),
            ..Default::default()
        };
        let b = ContactFields {
            display_name: Some(" Ann Lee ".into()),
            job_title: None,
            email_addresses: vec![email(" b@y.org", Some("")), email("ann@x.com", None)],
            business_phones: vec!["1".into(), "2".into()],
            home_address: None,
            birthday: Some("1974-07-22".into()),
            ..Default::default()
        };
        assert!(same_data(&a, &b), "{:?}", changed_fields(&a, &b));
        let mut c = b.clone();
        c.display_name = Some("ann lee".into());
        c.birthday = Some("1974-07-23".into());
        assert_eq!(changed_fields(&a, &c), vec!["displayName", "birthday"]);
    }

    #[test]
    fn keys() {
        let f = ContactFields {
            display_name: Some(" Max Müller ".into()),
            ..Default::default()
        };
        assert_eq!(name_key(&f).as_deref(), Some("max müller"));
        let g = ContactFields {
            email_addresses: vec![email(" MAX@x.com ", None)],
            ..f.clone()
        };
        assert_eq!(name_key(&g), None);
        assert_eq!(
            email_keys(&g).into_iter().collect::<Vec<_>>(),
            vec!["max@x.com"]
        );
        assert!(has_category(&["private ".into()], "Private"));
        assert!(!has_category(&["Work".into()], "Private"));
    }
}
