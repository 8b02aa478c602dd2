//! Issue 14 through both planners: random tenants (the same worlds as the other property tests, plus home
//! addresses on users' contacts), random `CentralFields` and `Fields`, rounds of edits. What must hold: nothing
//! outside `CentralFields` reaches the central folder or another user's mailbox, a central contact holding more
//! is cleared, `Ignore` fields of existing contacts are never changed and never given to a new copy, `FillEmpty`
//! fields that hold a value are never changed by phase 2, and every run after a round of edits settles.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::config::{CentralFields, FieldPolicies, FieldPolicy, FieldRules};
use crate::model::{Field, FieldSet, PhysicalAddress};
use crate::sync::normalize::normalize;

/// A home address naming whose contact it is.
fn home(owner: &str, id: &str) -> Option<Box<PhysicalAddress>> {
    Some(Box::new(PhysicalAddress {
        street: Some(format!("home of {id} kept by {owner}")),
        ..Default::default()
    }))
}

fn policy() -> impl Strategy<Value = FieldPolicy> {
    prop_oneof![
        Just(FieldPolicy::Overwrite),
        Just(FieldPolicy::FillEmpty),
        Just(FieldPolicy::Ignore)
    ]
}

/// Rules over the fields the worlds vary (job title, business phones, birthday, home address).
fn rules() -> impl Strategy<Value = FieldRules> {
    (
        prop::sample::select(&[0usize, 1, 2][..]),
        policy(),
        policy(),
        policy(),
        policy(),
    )
        .prop_map(|(central, job, phones, birthday, home)| {
            let default = CentralFields::default().set();
            let set = match central {
                0 => default,
                1 => default.with(Field::Birthday).without(Field::JobTitle),
                _ => FieldSet::all().without(Field::HomeAddress),
            };
            FieldRules {
                central: CentralFields::new(set).expect("match fields kept"),
                policy: FieldPolicies::new(&BTreeMap::from([
                    (Field::JobTitle, job),
                    (Field::BusinessPhones, phones),
                    (Field::Birthday, birthday),
                    (Field::HomeAddress, home),
                ]))
                .expect("match fields overwritten"),
            }
        })
}

/// A world whose users' own contacts hold home addresses and whose central folder may hold fields from an
/// earlier configuration (every field travelled then).
fn private_world() -> impl Strategy<Value = World> {
    (world_strategy(), rules()).prop_map(|(mut world, rules)| {
        for (mailbox, contacts) in &mut world.users {
            for c in contacts.iter_mut() {
                c.fields.home_address = home(&mailbox.upn, &c.id);
            }
        }
        for c in &mut world.central {
            c.fields.home_address = home("an earlier run", &c.id);
            c.fields.spouse_name = Some("leaked".into());
        }
        world.options.fields = rules;
        world
    })
}

/// The home addresses `mailbox`'s folder may hold: its own contacts' (or what its user typed).
fn foreign_home(mailbox: &Mailbox, c: &Contact) -> bool {
    c.fields
        .home_address
        .as_ref()
        .and_then(|a| a.street.as_deref())
        .is_some_and(|street| !street.ends_with(&format!("kept by {}", mailbox.upn)))
}

/// Checks one run's effect on every user mailbox against the policy.
fn check_policies(
    rules: &FieldRules,
    before: &[(Mailbox, Vec<Contact>)],
    after: &[(Mailbox, Vec<Contact>)],
    edited: &[(usize, String)],
) -> Result<(), TestCaseError> {
    for (u, ((mailbox, was), (_, now))) in before.iter().zip(after).enumerate() {
        for c in now {
            let norm = normalize(&c.fields);
            match was.iter().find(|b| b.id == c.id) {
                Some(b) if !edited.iter().any(|(eu, id)| *eu == u && id == &c.id) => {
                    let old = normalize(&b.fields);
                    for &field in Field::ALL {
                        let one = FieldSet::empty().with(field);
                        match rules.policy.get(field) {
                            FieldPolicy::Ignore => prop_assert!(
                                !norm.differs_in(&old, one),
                                "{} of {} in {} written under Ignore",
                                field,
                                c.id,
                                mailbox.upn
                            ),
                            FieldPolicy::FillEmpty if !old.is_empty(field) => prop_assert!(
                                !norm.differs_in(&old, one),
                                "{} of {} in {} overwritten under FillEmpty",
                                field,
                                c.id,
                                mailbox.upn
                            ),
                            _ => {}
                        }
                    }
                }
                Some(_) => {}
                None => {
                    for &field in Field::ALL {
                        if rules.policy.get(field) == FieldPolicy::Ignore {
                            prop_assert!(
                                norm.is_empty(field),
                                "{} given to the new {} in {}",
                                field,
                                c.id,
                                mailbox.upn
                            );
                        }
                    }
                }
            }
            prop_assert!(
                !foreign_home(mailbox, c),
                "another user's home address reached {}: {:?}",
                mailbox.upn,
                c
            );
        }
    }
    Ok(())
}

fn check_central(world: &World) -> Result<(), TestCaseError> {
    let outside = world.options.fields.central.set().complement();
    for c in &world.central {
        let norm = normalize(&c.fields);
        prop_assert!(
            outside.iter().all(|f| norm.is_empty(f)),
            "the central folder holds {:?} of {}",
            norm.filled().intersection(outside),
            c.id
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn what_travels_follows_the_rules_and_every_round_settles(
        mut world in private_world(),
        rounds in prop::collection::vec(prop::collection::vec(change(), 1..4), 0..3),
    ) {
        let rules = world.options.fields;
        let before = world.users.clone();
        world.run();
        check_central(&world)?;
        check_policies(&rules, &before, &world.users, &[])?;
        let mut serial = 0;
        for round in rounds {
            let mut edited = Vec::new();
            for change in &round {
                serial += 1;
                // The user's own edit is theirs: it is checked by the runs that follow, not held against them.
                let users_before = world.users.clone();
                world.change(change, serial);
                for (u, ((_, was), (_, now))) in users_before.iter().zip(&world.users).enumerate() {
                    for c in now {
                        if was.iter().find(|b| b.id == c.id) != Some(c) {
                            edited.push((u, c.id.clone()));
                        }
                    }
                }
            }
            world.refusals.clear();
            let before = world.users.clone();
            world.run();
            check_central(&world)?;
            check_policies(&rules, &before, &world.users, &edited)?;
            let settled = world.clone();
            let again = world.run();
            if again != 0 {
                let mut replay = settled.clone();
                let p1 = replay.phase1();
                let p2 = replay.phase2();
                let writes: Vec<_> = std::iter::once(&p1).chain(&p2)
                    .flat_map(|p| p.items.iter().filter(|i| i.op.is_some()))
                    .map(|i| format!("{:?} {:?} {:?} {:?}", i.action, i.reason, i.contact_id, i.changed_fields))
                    .collect();
                prop_assert!(false, "did not settle under {:?}: {:#?}\nbefore: {}", rules, writes, describe(&settled));
            }
        }
    }
}

/// A central contact holding fields outside `CentralFields` from an earlier run is cleared by an update (never
/// deleted), the owners' own contacts keep theirs, and the managed copies lose them.
#[test]
fn fields_outside_central_fields_are_cleared_from_the_central_folder_and_the_copies() {
    let mut ann = contact("a1", "Bob", &["bob@x.com"], 10);
    ann.fields.home_address = home("ann@contoso.com", "a1");
    ann.fields.birthday = Some("1970-01-01".into());
    let mut world = World::new(vec![
        (mailbox("ann"), vec![ann]),
        (mailbox("cat"), Vec::new()),
    ]);
    // An earlier release: every field travelled.
    world.options.fields = FieldRules::everything();
    world.run();
    assert!(world.central[0].fields.home_address.is_some());
    assert!(world.user("cat")[0].fields.home_address.is_some());

    world.options.fields = FieldRules::default();
    let plan = world.phase1();
    let item = plan
        .items
        .iter()
        .find(|i| i.op.is_some())
        .expect("an update");
    assert_eq!(item.action, ActionKind::Update);
    assert_eq!(item.reason, Reason::OutsideCentralFields);
    assert_eq!(item.changed_fields, vec!["homeAddress", "birthday"]);
    world.phase2();
    assert_eq!(world.central.len(), 1);
    assert_eq!(world.central[0].fields.home_address, None);
    assert_eq!(
        world.user("cat")[0].fields.home_address,
        None,
        "the copy is cleared"
    );
    assert_eq!(world.user("cat")[0].fields.birthday, None);
    assert!(
        world.user("ann")[0].fields.home_address.is_some(),
        "the owner keeps hers"
    );
    assert_eq!(
        world.user("ann")[0].fields.birthday.as_deref(),
        Some("1970-01-01")
    );
    assert_eq!(world.run(), 0);
}

/// A user's own value under `FillEmpty` stays, an empty field is filled, and phone numbers are replaced as a set.
#[test]
fn fill_empty_keeps_the_users_value_and_phones_are_replaced_whole() {
    let mut bob = contact("b1", "Bob", &["bob@x.com"], 10);
    bob.fields.job_title = Some("Dev".into());
    bob.fields.business_phones = vec!["+1 555 0100".into()];
    let mut world = World::new(vec![
        (mailbox("bob"), vec![bob]),
        (mailbox("cat"), Vec::new()),
        (mailbox("dan"), Vec::new()),
    ]);
    world.options.fields.policy =
        FieldPolicies::new(&BTreeMap::from([(Field::JobTitle, FieldPolicy::FillEmpty)]))
            .expect("valid");
    world.run();
    // Cat types her own job title into her copy; dan's copy has it emptied.
    let now = world.tick();
    let copy = &mut world.user_mut("cat")[0];
    copy.fields.job_title = Some("Our plumber".into());
    copy.last_modified = Some(now);
    let copy = &mut world.user_mut("dan")[0];
    copy.fields.job_title = None;
    copy.last_modified = Some(now);
    // Bob changes his own contact: a new title and a new number.
    let now = world.tick();
    let own = &mut world.user_mut("bob")[0];
    own.fields.job_title = Some("CTO".into());
    own.fields.business_phones = vec!["+1 555 0199".into()];
    own.last_modified = Some(now);
    world.run();
    assert_eq!(world.central[0].fields.job_title.as_deref(), Some("CTO"));
    assert_eq!(
        world.user("cat")[0].fields.job_title.as_deref(),
        Some("Our plumber")
    );
    assert_eq!(
        world.user("dan")[0].fields.job_title.as_deref(),
        Some("CTO")
    );
    for user in ["cat", "dan"] {
        assert_eq!(
            world.user(user)[0].fields.business_phones,
            vec!["+1 555 0199".to_owned()]
        );
    }
    assert_eq!(world.run(), 0);
}
