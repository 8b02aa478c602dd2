//! The directory's pure rules: who is selected, what a mailbox receives, how fields map, and the sync id.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::config::{DirectoryOptions, MemberType, MemberTypes};
use crate::model::{EmailAddress, Mailbox, PhysicalAddress};

const TENANT: &str = "contoso.onmicrosoft.com";
const SHARED: &str = "gal-shared@contoso.onmicrosoft.com";

fn user(id: &str) -> UserRecord {
    UserRecord {
        id: id.into(),
        user_principal_name: Some(format!("{id}@contoso.onmicrosoft.com")),
        display_name: Some(format!("User {id}")),
        mail: Some(format!("{id}@contoso.com")),
        user_type: Some("Member".into()),
        account_enabled: Some(true),
        show_in_address_list: Some(true),
        assigned_licenses: vec![AssignedLicense {
            sku_id: Some("sku".into()),
        }],
        ..UserRecord::default()
    }
}

fn guest(id: &str) -> UserRecord {
    UserRecord {
        user_type: Some("Guest".into()),
        assigned_licenses: Vec::new(),
        ..user(id)
    }
}

fn contact(id: &str) -> OrgContactRecord {
    OrgContactRecord {
        id: id.into(),
        display_name: Some(format!("Contact {id}")),
        mail: Some(format!("{id}@partner.example")),
        ..OrgContactRecord::default()
    }
}

fn options(types: &[MemberType]) -> DirectoryOptions {
    DirectoryOptions {
        enabled: true,
        member_types: MemberTypes::new(types.iter().copied()).expect("non-empty"),
        ..DirectoryOptions::default()
    }
}

fn ids(persons: &[DirectoryPerson]) -> Vec<&str> {
    persons.iter().map(|p| p.object_id.as_str()).collect()
}

fn selected(
    users: &[UserRecord],
    contacts: &[OrgContactRecord],
    groups: &GroupFilter,
    options: &DirectoryOptions,
) -> Vec<DirectoryPerson> {
    select(
        &DirectoryRead {
            tenant_id: TENANT,
            users,
            org_contacts: contacts,
            groups,
            organization_name: Some("Contoso"),
            shared_mailbox: Some(SHARED),
        },
        options,
    )
}

fn estate() -> (Vec<UserRecord>, Vec<OrgContactRecord>) {
    let shared = UserRecord {
        user_principal_name: Some(SHARED.into()),
        mail: Some(SHARED.into()),
        assigned_licenses: Vec::new(),
        ..user("shared")
    };
    let licensed_shared = UserRecord {
        assigned_licenses: vec![AssignedLicense::default()],
        ..shared.clone()
    };
    let users = vec![
        user("a"),
        user("b"),
        UserRecord {
            show_in_address_list: Some(false),
            ..user("hidden")
        },
        UserRecord {
            account_enabled: Some(false),
            ..user("disabled")
        },
        UserRecord {
            account_enabled: None,
            ..user("unknown-state")
        },
        UserRecord {
            assigned_licenses: Vec::new(),
            ..user("unlicensed")
        },
        UserRecord {
            user_type: None,
            ..user("old-member")
        },
        guest("g"),
        UserRecord {
            account_enabled: Some(false),
            ..guest("disabled-guest")
        },
        licensed_shared,
    ];
    (users, vec![contact("c1"), contact("c2")])
}

#[test]
fn members_by_default_only_enabled_licensed_visible_and_never_the_shared_mailbox() {
    let (users, contacts) = estate();
    let persons = selected(
        &users,
        &contacts,
        &GroupFilter::default(),
        &DirectoryOptions::default(),
    );
    assert_eq!(ids(&persons), vec!["a", "b", "old-member"]);
    assert!(persons.iter().all(|p| p.kind == MemberType::Member));
}

#[test]
fn guests_and_contacts_only_when_their_member_type_is_listed() {
    let (users, contacts) = estate();
    let none = GroupFilter::default();
    let guests = selected(&users, &contacts, &none, &options(&[MemberType::Guest]));
    assert_eq!(ids(&guests), vec!["g"]);
    assert_eq!(guests[0].kind, MemberType::Guest);
    let org = selected(&users, &contacts, &none, &options(&[MemberType::Contact]));
    assert_eq!(ids(&org), vec!["c1", "c2"]);
    let all = selected(
        &users,
        &contacts,
        &none,
        &options(&[MemberType::Member, MemberType::Guest, MemberType::Contact]),
    );
    assert_eq!(ids(&all), vec!["a", "b", "c1", "c2", "g", "old-member"]);
}

#[test]
fn hidden_users_are_left_out_unless_exclude_hidden_is_off() {
    let (users, contacts) = estate();
    let mut keep_hidden = options(&[MemberType::Member]);
    keep_hidden.exclude_hidden = false;
    let persons = selected(&users, &contacts, &GroupFilter::default(), &keep_hidden);
    assert_eq!(ids(&persons), vec!["a", "b", "hidden", "old-member"]);
}

#[test]
fn the_shared_mailbox_is_recognised_by_upn_mail_or_id_in_any_case() {
    for shared in [SHARED.to_uppercase(), "SHARED".to_owned()] {
        let users = vec![user("a"), user("shared")];
        let persons = select(
            &DirectoryRead {
                tenant_id: TENANT,
                users: &users,
                org_contacts: &[],
                groups: &GroupFilter::default(),
                organization_name: None,
                shared_mailbox: Some(&shared),
            },
            &DirectoryOptions::default(),
        );
        let expected = if shared == "SHARED" {
            vec!["a"]
        } else {
            vec!["a", "shared"]
        };
        assert_eq!(ids(&persons), expected, "{shared}");
    }
    let mut by_mail = user("x");
    by_mail.mail = Some("Gal-Shared@Contoso.onmicrosoft.com".into());
    by_mail.user_principal_name = Some("other@contoso.onmicrosoft.com".into());
    let persons = selected(
        &[by_mail],
        &[],
        &GroupFilter::default(),
        &DirectoryOptions::default(),
    );
    assert!(persons.is_empty());
}

#[test]
fn include_and_exclude_groups() {
    let (users, contacts) = estate();
    let all = options(&[MemberType::Member, MemberType::Guest, MemberType::Contact]);
    let include = GroupFilter::new(
        Some(vec![
            "A".to_owned(),
            "g".into(),
            "c2".into(),
            "hidden".into(),
            "disabled".into(),
        ]),
        Vec::<String>::new(),
    );
    assert_eq!(
        ids(&selected(&users, &contacts, &include, &all)),
        vec!["a", "c2", "g"]
    );
    let exclude = GroupFilter::new(None::<Vec<String>>, vec!["B".to_owned(), "c1".into()]);
    assert_eq!(
        ids(&selected(&users, &contacts, &exclude, &all)),
        vec!["a", "c2", "g", "old-member"]
    );
    let both = GroupFilter::new(Some(vec!["a".to_owned(), "b".into()]), vec!["a".to_owned()]);
    assert_eq!(ids(&selected(&users, &contacts, &both, &all)), vec!["b"]);
    // Include groups without members select nobody (not everybody).
    let empty = GroupFilter::new(Some(Vec::<String>::new()), Vec::<String>::new());
    assert!(selected(&users, &contacts, &empty, &all).is_empty());
}

#[test]
fn each_person_once_even_when_read_twice() {
    let users = vec![user("a"), user("A"), user("b")];
    let persons = selected(
        &users,
        &[],
        &GroupFilter::default(),
        &DirectoryOptions::default(),
    );
    assert_eq!(persons.len(), 2);
}

#[test]
fn a_mailbox_never_receives_its_own_entry() {
    let (users, contacts) = estate();
    let persons = selected(
        &users,
        &contacts,
        &GroupFilter::default(),
        &options(&[MemberType::Member, MemberType::Contact]),
    );
    let by_id = Mailbox {
        id: "A".into(),
        upn: "someone@contoso.onmicrosoft.com".into(),
    };
    assert_eq!(
        persons_for(&by_id, &persons)
            .iter()
            .map(|p| p.object_id.as_str())
            .collect::<Vec<_>>(),
        vec!["b", "c1", "c2", "old-member"]
    );
    let by_upn = Mailbox {
        id: "other-id".into(),
        upn: "B@Contoso.onmicrosoft.com".into(),
    };
    assert_eq!(persons_for(&by_upn, &persons).len(), persons.len() - 1);
    let stranger = Mailbox {
        id: "z".into(),
        upn: "z@contoso.onmicrosoft.com".into(),
    };
    assert_eq!(persons_for(&stranger, &persons).len(), persons.len());
}

/// FromTenants: a receiver who is a guest in the source tenant (another object id and UPN there, its own address
/// as mail) is not given that guest entry.
#[test]
fn a_mailbox_never_receives_its_own_guest_entry_from_another_tenant() {
    let mut as_guest = guest("guest-of-fabrikam");
    as_guest.user_principal_name = Some("bob_contoso.com#EXT#@fabrikam.onmicrosoft.com".into());
    as_guest.mail = Some("Bob@Contoso.com".into());
    let persons = select(
        &DirectoryRead {
            tenant_id: "fabrikam.onmicrosoft.com",
            users: &[as_guest, guest("carol")],
            org_contacts: &[],
            groups: &GroupFilter::default(),
            organization_name: None,
            shared_mailbox: None,
        },
        &options(&[MemberType::Guest]),
    );
    assert_eq!(persons.len(), 2);
    let bob = Mailbox {
        id: "bob-id-in-contoso".into(),
        upn: "bob@contoso.com".into(),
    };
    assert_eq!(
        ids(&persons_for(&bob, &persons)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()),
        vec!["carol"]
    );
}

#[test]
fn sync_ids_are_deterministic_per_source_tenant_and_object() {
    let a = directory_sync_id(TENANT, "0F6C1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B");
    assert_eq!(
        a,
        directory_sync_id(
            " Contoso.onmicrosoft.com ",
            "0f6c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
        )
    );
    assert_ne!(
        a,
        directory_sync_id(
            "fabrikam.onmicrosoft.com",
            "0f6c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
        )
    );
    assert_ne!(
        a,
        directory_sync_id(TENANT, "0f6c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5c")
    );
    // Never the id a mirrored personal contact would get: the mailbox slot is the fixed namespace.
    assert_eq!(
        a,
        crate::sync::SyncId::derive(
            TENANT,
            DIRECTORY_SYNC_NAMESPACE,
            "0f6c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
        )
    );
    assert_eq!(crate::sync::SyncId::parse(a.as_str()), Some(a.clone()));
    let persons = selected(
        &[user("a")],
        &[],
        &GroupFilter::default(),
        &DirectoryOptions::default(),
    );
    assert_eq!(persons[0].sync_id, directory_sync_id(TENANT, "a"));
    let write = persons[0].contact_write();
    assert_eq!(write.sync_id.as_deref(), Some(persons[0].sync_id.as_str()));
    assert_eq!(
        write.fields.map(|f| f.unpack()),
        Some(persons[0].fields.clone())
    );
    assert_eq!(
        (write.personal_notes, write.categories),
        (None, None),
        "never a note or category"
    );
}

fn full_user() -> UserRecord {
    serde_json::from_value(json!({
        "id": "u1",
        "userPrincipalName": "ada@contoso.onmicrosoft.com",
        "displayName": "Ada Lovelace",
        "givenName": "Ada",
        "surname": "Lovelace",
        "jobTitle": "Analyst",
        "department": "Engineering",
        "companyName": null,
        "officeLocation": "Building 1",
        "businessPhones": ["+41 44 668 1000", " "],
        "mobilePhone": "+41 79 555 2000",
        "mail": "Ada@contoso.com",
        "proxyAddresses": ["smtp:ada.l@contoso.com", "X500:/o=ExchangeLabs/cn=ada", "SMTP:ada@contoso.com", "smtp:lovelace@contoso.com", "smtp:a@contoso.com"],
        "streetAddress": "1 Bahnhofstrasse",
        "city": "Zürich",
        "state": "ZH",
        "postalCode": "8001",
        "country": "Switzerland",
        "userType": "Member",
        "accountEnabled": true,
        "showInAddressList": null,
        "assignedLicenses": [{"skuId": "6fd2c87f-b296-42f0-b197-1e91e994b900", "disabledPlans": []}],
        "manager": {"@odata.type": "#microsoft.graph.user", "id": "m1", "displayName": "Charles Babbage"}
    }))
    .expect("a Graph user decodes")
}

#[test]
fn user_fields_follow_the_mapping_table() {
    let fields = user_fields(&full_user(), Some("Contoso Ltd"));
    assert_eq!(fields.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(fields.given_name.as_deref(), Some("Ada"));
    assert_eq!(fields.surname.as_deref(), Some("Lovelace"));
    assert_eq!(fields.job_title.as_deref(), Some("Analyst"));
    assert_eq!(fields.department.as_deref(), Some("Engineering"));
    assert_eq!(
        fields.company_name.as_deref(),
        Some("Contoso Ltd"),
        "the organisation's name"
    );
    assert_eq!(fields.office_location.as_deref(), Some("Building 1"));
    assert_eq!(fields.business_phones, vec!["+41 44 668 1000"]);
    assert_eq!(fields.mobile_phone.as_deref(), Some("+41 79 555 2000"));
    assert_eq!(fields.manager.as_deref(), Some("Charles Babbage"));
    let named = |a: &str| EmailAddress {
        name: Some("Ada Lovelace".into()),
        address: Some(a.into()),
    };
    // mail first; the primary proxy repeats it (ignoring case) so it is skipped; then the others; X500 never; 3 at most.
    assert_eq!(
        fields.email_addresses,
        vec![
            named("Ada@contoso.com"),
            named("ada.l@contoso.com"),
            named("lovelace@contoso.com")
        ]
    );
    assert_eq!(
        fields.business_address.as_deref(),
        Some(&PhysicalAddress {
            street: Some("1 Bahnhofstrasse".into()),
            city: Some("Zürich".into()),
            state: Some("ZH".into()),
            country_or_region: Some("Switzerland".into()),
            postal_code: Some("8001".into()),
        })
    );
    // Personal fields never come from the directory.
    assert_eq!(fields.home_address, None);
    assert_eq!(fields.birthday, None);
    assert!(fields.home_phones.is_empty());

    let mut own_company = full_user();
    own_company.company_name = Some("Contoso Research".into());
    assert_eq!(
        user_fields(&own_company, Some("Contoso Ltd"))
            .company_name
            .as_deref(),
        Some("Contoso Research")
    );
    assert_eq!(
        user_fields(
            &UserRecord {
                company_name: None,
                ..full_user()
            },
            None
        )
        .company_name,
        None
    );
}

#[test]
fn sparse_users_map_to_empty_fields_and_a_usable_name() {
    let bare: UserRecord = serde_json::from_value(json!({
        "id": "u2", "displayName": null, "givenName": "Grace", "surname": null, "businessPhones": null,
        "proxyAddresses": null, "mail": null, "assignedLicenses": null
    }))
    .expect("nulls decode as empty");
    let fields = user_fields(&bare, Some("  "));
    assert_eq!(fields.display_name.as_deref(), Some("Grace"));
    assert_eq!(fields.company_name, None);
    assert!(fields.email_addresses.is_empty());
    assert_eq!(fields.business_address, None);
    assert_eq!(fields.manager, None);
    let only_mail = UserRecord {
        id: "u3".into(),
        mail: Some("x@contoso.com".into()),
        ..UserRecord::default()
    };
    assert_eq!(
        user_fields(&only_mail, None).display_name.as_deref(),
        Some("x@contoso.com")
    );
    // Only the primary proxy: it comes right after mail (or first without mail).
    let proxies_only = UserRecord {
        id: "u4".into(),
        proxy_addresses: vec!["smtp:b@x.com".into(), "SMTP:a@x.com".into()],
        ..UserRecord::default()
    };
    let addresses: Vec<_> = user_fields(&proxies_only, None)
        .email_addresses
        .into_iter()
        .filter_map(|e| e.address)
        .collect();
    assert_eq!(addresses, vec!["a@x.com", "b@x.com"]);
}

/// Failed before the fix: every business and home number of an org contact went into its copies, and Graph refuses
/// a contact with more than two of either, so such a person failed in every mailbox.
#[test]
fn an_org_contact_with_many_numbers_keeps_the_first_two_of_each_kind() {
    let c: OrgContactRecord = serde_json::from_value(json!({
        "id": "c2", "displayName": "Many Numbers",
        "phones": [{"type": "business", "number": "+1 1"}, {"type": "business", "number": "+1 2"},
                   {"type": "business", "number": "+1 3"}, {"type": "home", "number": "+2 1"},
                   {"type": "home", "number": "+2 2"}, {"type": "home", "number": "+2 3"}]
    }))
    .expect("an orgContact decodes");
    let f = org_contact_fields(&c);
    assert_eq!(f.business_phones, vec!["+1 1", "+1 2"]);
    assert_eq!(f.home_phones, vec!["+2 1", "+2 2"]);
    let user = UserRecord {
        id: "u9".into(),
        business_phones: vec!["+3 1".into(), "+3 2".into(), "+3 3".into()],
        ..UserRecord::default()
    };
    assert_eq!(
        user_fields(&user, None).business_phones,
        vec!["+3 1", "+3 2"]
    );
}

#[test]
fn org_contacts_map_their_own_fields() {
    let c: OrgContactRecord = serde_json::from_value(json!({
        "id": "c1", "displayName": "Pat Partner (Northwind)", "givenName": "Pat", "surname": "Partner",
        "mail": "pat@northwind.example", "companyName": "Northwind Traders", "department": "Sales",
        "jobTitle": "Account Manager", "proxyAddresses": ["SMTP:pat@northwind.example", "smtp:p@northwind.example"],
        "phones": [{"type": "business", "number": "+44 20 7946 0000"}, {"type": "mobile", "number": "+44 7700 900000"},
                   {"type": "mobile", "number": "+44 7700 900001"}, {"type": "home", "number": "+44 1 2"},
                   {"type": "businessFax", "number": "+44 9"}],
        "addresses": [{"street": "1 Partner Way", "city": "London", "state": null, "postalCode": "EC1A 1BB",
                       "countryOrRegion": "United Kingdom", "officeLocation": "Floor 3"}],
        "onPremisesSyncEnabled": null
    }))
    .expect("an orgContact decodes");
    let f = org_contact_fields(&c);
    assert_eq!(f.display_name.as_deref(), Some("Pat Partner (Northwind)"));
    assert_eq!(f.company_name.as_deref(), Some("Northwind Traders"));
    assert_eq!(f.job_title.as_deref(), Some("Account Manager"));
    assert_eq!(f.department.as_deref(), Some("Sales"));
    assert_eq!(f.business_phones, vec!["+44 20 7946 0000"]);
    assert_eq!(f.mobile_phone.as_deref(), Some("+44 7700 900000"));
    assert_eq!(f.home_phones, vec!["+44 1 2"]);
    assert_eq!(f.office_location.as_deref(), Some("Floor 3"));
    assert_eq!(
        f.email_addresses
            .iter()
            .filter_map(|e| e.address.as_deref())
            .collect::<Vec<_>>(),
        vec!["pat@northwind.example", "p@northwind.example"]
    );
    let address = f.business_address.expect("an address");
    assert_eq!(address.city.as_deref(), Some("London"));
    assert_eq!(address.state, None);
    assert_eq!(address.country_or_region.as_deref(), Some("United Kingdom"));
    assert_eq!(f.manager, None);
    let persons = selected(
        &[],
        &[c],
        &GroupFilter::default(),
        &options(&[MemberType::Contact]),
    );
    assert_eq!(
        persons[0].fields.company_name.as_deref(),
        Some("Northwind Traders")
    );
    assert_eq!(persons[0].user_principal_name, None);
}

fn arb_user(pool: &'static [&'static str]) -> impl Strategy<Value = UserRecord> {
    (
        prop::sample::select(pool),
        any::<bool>(),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(&["Member", "Guest", "guest", ""][..])),
        any::<bool>(),
    )
        .prop_map(|(id, upper, enabled, visible, user_type, licensed)| {
            let id = if upper {
                id.to_uppercase()
            } else {
                id.to_owned()
            };
            let mut u = user(&id);
            if id.eq_ignore_ascii_case("shared") {
                u.user_principal_name = Some(SHARED.into());
            }
            u.account_enabled = enabled;
            u.show_in_address_list = visible;
            u.user_type = user_type.map(str::to_owned);
            if !licensed {
                u.assigned_licenses.clear();
            }
            u
        })
}

const POOL: &[&str] = &["a", "b", "c", "d", "shared", "m"];

proptest! {
    /// Whatever the directory holds and however a tenant is configured: never the receiving mailbox itself,
    /// never the shared mailbox, never a hidden user when ExcludeHidden, never a disabled account, each person once.
    #[test]
    fn selection_never_gives_the_receiver_itself_the_shared_mailbox_or_hidden_users(
        users in prop::collection::vec(arb_user(POOL), 0..12),
        contacts in prop::collection::vec(prop::sample::select(POOL), 0..4),
        types in prop::collection::btree_set(prop::sample::select(&[MemberType::Member, MemberType::Guest, MemberType::Contact][..]), 1..=3),
        exclude_hidden in any::<bool>(),
        include in prop::option::of(prop::collection::vec(prop::sample::select(POOL), 0..6)),
        exclude in prop::collection::vec(prop::sample::select(POOL), 0..3),
        receiver in prop::sample::select(POOL),
        receiver_upper in any::<bool>(),
    ) {
        let contacts: Vec<OrgContactRecord> = contacts.into_iter().map(|id| contact(&format!("c-{id}"))).collect();
        let groups = GroupFilter::new(
            include.map(|ids| ids.into_iter().flat_map(|i| [i.to_owned(), format!("c-{i}")]).collect::<Vec<_>>()),
            exclude.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>(),
        );
        let options = DirectoryOptions {
            enabled: true,
            member_types: MemberTypes::new(types).expect("non-empty"),
            exclude_hidden,
            ..DirectoryOptions::default()
        };
        let persons = selected(&users, &contacts, &groups, &options);
        let mut seen = std::collections::BTreeSet::new();
        for p in &persons {
            prop_assert!(seen.insert(p.object_id.to_lowercase()), "twice: {}", p.object_id);
            prop_assert!(!p.object_id.eq_ignore_ascii_case("shared"));
            prop_assert!(p.user_principal_name.as_deref() != Some(SHARED));
            prop_assert!(!exclude.iter().any(|e| e.eq_ignore_ascii_case(&p.object_id)));
            prop_assert!(options.member_types.contains(p.kind));
            if p.kind != MemberType::Contact {
                // Some record of that id is enabled and, with ExcludeHidden, not hidden.
                let admissible = users.iter().any(|u| {
                    u.id.eq_ignore_ascii_case(&p.object_id)
                        && u.account_enabled == Some(true)
                        && !(exclude_hidden && u.show_in_address_list == Some(false))
                });
                prop_assert!(admissible, "{} selected without an admissible record", p.object_id);
            }
        }
        let receiver_id = if receiver_upper { receiver.to_uppercase() } else { receiver.to_owned() };
        let mailbox = Mailbox { id: receiver_id, upn: format!("{receiver}@contoso.onmicrosoft.com") };
        for p in persons_for(&mailbox, &persons) {
            prop_assert!(!p.object_id.eq_ignore_ascii_case(&mailbox.id));
            prop_assert!(p.user_principal_name.as_deref().is_none_or(|u| !u.eq_ignore_ascii_case(&mailbox.upn)));
        }
        prop_assert_eq!(persons_for(&mailbox, &persons).len() + usize::from(persons.iter().any(|p| p.object_id.eq_ignore_ascii_case(receiver))), persons.len());
    }
}

#[test]
fn manager_names_are_resolved_from_the_users_read() {
    let mut users = vec![
        UserRecord {
            manager: Some(ManagerRef {
                id: Some("B".into()),
                display_name: None,
            }),
            ..user("a")
        },
        user("b"),
        UserRecord {
            manager: Some(ManagerRef {
                id: Some("outside".into()),
                display_name: None,
            }),
            ..user("c")
        },
        UserRecord {
            manager: Some(ManagerRef {
                id: Some("b".into()),
                display_name: Some("Kept".into()),
            }),
            ..user("d")
        },
    ];
    resolve_manager_names(&mut users);
    let names: Vec<Option<&str>> = users
        .iter()
        .map(|u| u.manager.as_ref().and_then(|m| m.display_name.as_deref()))
        .collect();
    assert_eq!(names, vec![Some("User b"), None, None, Some("Kept")]);
}
