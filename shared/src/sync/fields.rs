//! What travels, field by field (issue 14): the pure rules behind `CentralFields` and `Fields`.
//!
//! Why this exists: phase 1 publishes users' personal contacts to the whole organisation, so only the fields of
//! `CentralFields` may reach the central folder (and, through it, any other mailbox); and `Fields` says per field
//! whether phase 2 overwrites a copy's value, fills it only when empty, or never writes it. Both planners take
//! their data through these functions, so the rules have one home:
//!
//! - [`central_view`]: a personal contact as the central folder may hold it (fields outside `CentralFields`
//!   emptied). Phase 1 compares and writes only this; a central contact holding more (from an earlier run or
//!   configuration) is cleared by an update, never by deleting anyone's contact.
//! - [`newest_wins`] and [`origin_fields`]: which of a member's fields phase 1 takes for its person. The newest
//!   edit wins where the policy overwrites; under `FillEmpty` and `Ignore` a receiving contact may hold its user's
//!   own value, which is not an edit of the person: those fields come only from the person's origin (the contact
//!   it was first published from).
//! - [`for_target`]: what phase 2 makes a receiving contact's fields: written whole (a cleared source field clears
//!   the copy, a phone list replaces the old one), except what the policy leaves, and except that a user's own
//!   contact keeps what the central folder cannot speak for (a field outside `CentralFields` the source lacks).

use crate::config::{CentralFields, FieldPolicy, FieldRules};
use crate::model::{Contact, ContactFields, FieldSet};

use super::normalize::NormalizedFields;

/// `fields` with every field outside `central` emptied: what the central folder may hold of a personal contact.
pub fn central_view(fields: &ContactFields, central: CentralFields) -> ContactFields {
    let mut out = fields.clone();
    for field in central.set().complement().iter() {
        field.clear(&mut out);
    }
    out
}

/// The central folder's contacts as phase 2 may distribute them: each with only its `CentralFields` (a contact
/// still holding more, which phase 1 has not cleared yet, e.g. with `UpdateExisting` off, passes on nothing more).
pub fn central_folder_view(contacts: Vec<Contact>, central: CentralFields) -> Vec<Contact> {
    contacts
        .into_iter()
        .map(|contact| Contact {
            fields: central_view(&contact.fields, central),
            ..contact
        })
        .collect()
}

/// The central fields in which the newest edit of a person wins in phase 1: those the policy overwrites (phase 2
/// makes every copy hold the central value, so a differing one is someone's edit).
pub fn newest_wins(rules: &FieldRules) -> FieldSet {
    rules.central.set().intersection(rules.policy.overwritten())
}

/// The central fields phase 1 takes from a person's origin (the contact it was first published from) whoever edited
/// last: those under `FillEmpty` or `Ignore`. A receiving contact may hold its user's own value there, which is
/// not an edit of the person, and phase 2 never writes them into the origin, so timestamps say nothing about them.
pub fn origin_fields(rules: &FieldRules) -> FieldSet {
    rules
        .central
        .set()
        .intersection(rules.policy.overwritten().complement())
}

/// What phase 1 writes into a central person from `member`: the `from_member` fields from it, the others as the
/// central contact has them, and nothing outside `CentralFields`.
pub fn for_central(
    rules: &FieldRules,
    member: &ContactFields,
    central: &ContactFields,
    from_member: FieldSet,
) -> ContactFields {
    let mut out = central.clone();
    for field in from_member.iter() {
        field.copy(member, &mut out);
    }
    central_view(&out, rules.central)
}

/// A contact's data with its normalised form, as [`for_target`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    /// The fields.
    pub fields: &'a ContactFields,
    /// `normalize(fields)`.
    pub norm: &'a NormalizedFields,
}

/// The existing contact phase 2 writes into.
#[derive(Debug, Clone, Copy)]
pub struct Existing<'a> {
    /// Its data.
    pub data: Data<'a>,
    /// Created by the mailbox owner (not a managed copy): what the central folder cannot speak for stays theirs.
    pub owner_created: bool,
}

/// The fields phase 2 gives a receiving contact of the person `source`: a new one (`target` `None`) gets the
/// source's data without its `Ignore` fields; an existing one the source's data where the policy overwrites, its
/// own where the policy is `Ignore` or `FillEmpty` finds a value, and, when it is the owner's own contact, its own
/// wherever the source lacks a field outside `CentralFields` (the central folder never holds those, so an empty
/// one there says nothing). Idempotent: applied to its own result it changes nothing. Also returns the fields
/// left as the target has them (for a new contact, the `Ignore` ones): a write does not send them.
pub fn for_target(
    rules: &FieldRules,
    source: Data<'_>,
    target: Option<Existing<'_>>,
) -> (ContactFields, FieldSet) {
    let mut out = source.fields.clone();
    let mut kept = FieldSet::empty();
    let private = rules.central.set().complement();
    for &field in crate::model::Field::ALL {
        let policy = rules.policy.get(field);
        let Some(existing) = target else {
            if policy == FieldPolicy::Ignore {
                field.clear(&mut out);
                kept = kept.with(field);
            }
            continue;
        };
        let keep = match policy {
            FieldPolicy::Ignore => true,
            FieldPolicy::FillEmpty => !existing.data.norm.is_empty(field),
            FieldPolicy::Overwrite => {
                existing.owner_created && private.contains(field) && source.norm.is_empty(field)
            }
        };
        if keep {
            field.copy(existing.data.fields, &mut out);
            kept = kept.with(field);
        }
    }
    (out, kept)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{FieldPolicies, MATCH_FIELDS};
    use crate::model::{EmailAddress, Field, PhysicalAddress};
    use crate::sync::normalize::normalize;

    fn text() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            "[a-c]{1,2}".prop_map(Some)
        ]
    }

    fn phones() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec("[0-3]{1,2}", 0..3)
    }

    fn address() -> impl Strategy<Value = Option<PhysicalAddress>> {
        prop_oneof![
            Just(None),
            text().prop_map(|street| Some(PhysicalAddress {
                street,
                ..Default::default()
            }))
        ]
    }

    /// Contacts varying in a sample of every kind of field (text, list, address, e-mail).
    fn fields() -> impl Strategy<Value = ContactFields> {
        (
            (text(), text(), text(), text()),
            (phones(), phones(), text()),
            (address(), address(), text()),
            prop::collection::vec("[a-b]@x", 0..2),
        )
            .prop_map(
                |(
                    (display_name, job_title, nick_name, birthday),
                    (business_phones, home_phones, mobile_phone),
                    (home_address, business_address, spouse_name),
                    emails,
                )| ContactFields {
                    display_name: display_name.map(Into::into),
                    job_title: job_title.map(Into::into),
                    nick_name: nick_name.map(Into::into),
                    birthday: birthday.map(Into::into),
                    business_phones,
                    home_phones,
                    mobile_phone: mobile_phone.map(Into::into),
                    home_address: home_address.map(Box::new),
                    business_address: business_address.map(Box::new),
                    spouse_name: spouse_name.map(Into::into),
                    email_addresses: emails
                        .into_iter()
                        .map(|a| EmailAddress {
                            name: None,
                            address: Some(a),
                        })
                        .collect(),
                    ..Default::default()
                },
            )
    }

    fn policy() -> impl Strategy<Value = FieldPolicy> {
        prop_oneof![
            Just(FieldPolicy::Overwrite),
            Just(FieldPolicy::FillEmpty),
            Just(FieldPolicy::Ignore)
        ]
    }

    /// Any valid rules: a random central set holding the match fields, random policies (match fields overwritten).
    fn rules() -> impl Strategy<Value = FieldRules> {
        (
            prop::collection::vec(any::<bool>(), Field::ALL.len()),
            prop::collection::vec(policy(), Field::ALL.len()),
        )
            .prop_map(|(central, policies)| {
                let set: FieldSet = Field::ALL
                    .iter()
                    .zip(central)
                    .filter(|(f, keep)| *keep || MATCH_FIELDS.contains(f))
                    .map(|(f, _)| *f)
                    .collect();
                let configured: BTreeMap<Field, FieldPolicy> = Field::ALL
                    .iter()
                    .zip(policies)
                    .filter(|(f, _)| !MATCH_FIELDS.contains(f))
                    .map(|(f, p)| (*f, p))
                    .collect();
                FieldRules {
                    central: CentralFields::new(set).expect("holds the match fields"),
                    policy: FieldPolicies::new(&configured).expect("match fields overwritten"),
                }
            })
    }

    fn written(
        rules: &FieldRules,
        source: &ContactFields,
        target: Option<(&ContactFields, bool)>,
    ) -> (ContactFields, FieldSet) {
        let source_norm = normalize(source);
        let target_norm = target.map(|(t, _)| normalize(t));
        for_target(
            rules,
            Data {
                fields: source,
                norm: &source_norm,
            },
            target
                .zip(target_norm.as_ref())
                .map(|((t, owner_created), norm)| Existing {
                    data: Data { fields: t, norm },
                    owner_created,
                }),
        )
    }

    proptest! {
        /// Nothing outside `CentralFields` survives the central view, everything inside does, and masking the
        /// normalised form is the same as normalising the view.
        #[test]
        fn the_central_view_holds_exactly_the_central_fields(rules in rules(), f in fields()) {
            let view = central_view(&f, rules.central);
            let norm = normalize(&view);
            for &field in Field::ALL {
                if rules.central.set().contains(field) {
                    prop_assert_eq!(norm.changed_in(&normalize(&f), FieldSet::empty().with(field)).len(), 0);
                } else {
                    prop_assert!(norm.is_empty(field), "{} kept", field);
                }
            }
            prop_assert_eq!(normalize(&f).masked(rules.central.set()), norm);
        }

        /// Each policy does what it says on every field: `Overwrite` takes the source's value (an empty one too,
        /// except a private field of the owner's own contact), `FillEmpty` keeps a value the copy has, `Ignore`
        /// always keeps the copy's (and a new copy never gets it); a list is taken whole, never merged.
        #[test]
        fn each_field_follows_its_policy(
            rules in rules(),
            source in fields(),
            target in fields(),
            owner_created in any::<bool>(),
        ) {
            let (out, kept) = written(&rules, &source, Some((&target, owner_created)));
            let out = normalize(&out);
            let (created, created_kept) = written(&rules, &source, None);
            let created = normalize(&created);
            let (s, t) = (normalize(&source), normalize(&target));
            let one = |f: Field| FieldSet::empty().with(f);
            for &field in Field::ALL {
                let from_source = !out.differs_in(&s, one(field));
                let from_target = !out.differs_in(&t, one(field));
                // A field left unsent holds the target's value; an `Ignore` field is never sent.
                if kept.contains(field) {
                    prop_assert!(from_target);
                }
                prop_assert_eq!(created_kept.contains(field), rules.policy.get(field) == FieldPolicy::Ignore);
                match rules.policy.get(field) {
                    FieldPolicy::Ignore => {
                        prop_assert!(kept.contains(field), "{} sent", field);
                        prop_assert!(from_target, "{} written", field);
                        prop_assert!(created.is_empty(field), "{} created", field);
                    }
                    FieldPolicy::FillEmpty => {
                        if t.is_empty(field) { prop_assert!(from_source) } else { prop_assert!(from_target) }
                        prop_assert!(!created.differs_in(&s, one(field)));
                    }
                    FieldPolicy::Overwrite => {
                        let protected = owner_created
                            && !rules.central.set().contains(field)
                            && s.is_empty(field);
                        if protected { prop_assert!(from_target) } else { prop_assert!(from_source, "{}", field) }
                        prop_assert!(!created.differs_in(&s, one(field)));
                    }
                }
            }
        }

        /// Writing what `for_target` gives and planning again writes nothing more.
        #[test]
        fn the_target_rule_is_a_fixed_point(
            rules in rules(),
            source in fields(),
            target in fields(),
            owner_created in any::<bool>(),
        ) {
            let (once, _) = written(&rules, &source, Some((&target, owner_created)));
            let (twice, _) = written(&rules, &source, Some((&once, owner_created)));
            prop_assert_eq!(normalize(&once), normalize(&twice));
        }

        /// What phase 1 writes into the central folder never holds a field outside `CentralFields`; the newest edit
        /// gives the overwritten fields, the origin the `FillEmpty` and `Ignore` ones, and nothing else.
        #[test]
        fn the_central_folder_takes_only_published_fields(
            rules in rules(),
            member in fields(),
            central in fields(),
            origin in any::<bool>(),
        ) {
            let from = if origin { origin_fields(&rules) } else { newest_wins(&rules) };
            let out = normalize(&for_central(&rules, &member, &central, from));
            let (m, c) = (normalize(&member), normalize(&central));
            for &field in Field::ALL {
                let one = FieldSet::empty().with(field);
                if !rules.central.set().contains(field) {
                    prop_assert!(out.is_empty(field), "{} reached the central folder", field);
                } else if origin != (rules.policy.get(field) == FieldPolicy::Overwrite) {
                    prop_assert!(!out.differs_in(&m, one));
                } else {
                    prop_assert!(!out.differs_in(&c, one), "{} taken from the wrong contact", field);
                }
            }
        }
    }

    #[test]
    fn a_changed_phone_list_replaces_the_old_one() {
        let rules = FieldRules::default();
        let source = ContactFields {
            business_phones: vec!["+1 555 0100".into()],
            ..Default::default()
        };
        let target = ContactFields {
            business_phones: vec!["+1 555 0199".into(), "+1 555 0100".into()],
            mobile_phone: Some("+1 555 0111".into()),
            ..Default::default()
        };
        let (out, kept) = written(&rules, &source, Some((&target, false)));
        assert!(kept.is_empty(), "everything is overwritten by default");
        assert_eq!(out.business_phones, vec!["+1 555 0100".to_owned()]);
        assert_eq!(
            out.mobile_phone, None,
            "a cleared source field clears the copy"
        );
    }
}
