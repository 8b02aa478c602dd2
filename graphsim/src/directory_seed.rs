//! A directory estate for tests of issue 11: one tenant with every kind of entry a directory distribution must
//! tell apart (visible members, a hidden member, a disabled and an unlicensed account, guests, the mirror's shared
//! mailbox, org contacts), nested groups, managers and full address and phone fields.
//!
//! Deterministic: the same parameters give the same names, addresses and memberships (object ids aside).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::directory::GroupSeed;
use crate::seed::{credentials, SeededTenant};
use crate::state::{TenantSeed, UserSeed};
use crate::Sim;

/// Size of a seeded directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DirectoryParams {
    /// Tenant domain (created, with credentials derived from it as [`crate::seed_estate`] does).
    pub domain: String,
    /// Visible, enabled, licensed members (at least 2; the first manages the others).
    pub members: usize,
    /// Enabled guests.
    pub guests: usize,
    /// Organisational contacts.
    pub org_contacts: usize,
}

impl Default for DirectoryParams {
    fn default() -> Self {
        Self {
            domain: "directory-s1.onmicrosoft.com".into(),
            members: 6,
            guests: 2,
            org_contacts: 2,
        }
    }
}

/// What [`seed_directory`] created. UPNs for users, object ids for org contacts and groups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeededDirectory {
    /// The tenant and its credentials; `user_upns` lists every user, `mirror_target_upns` the visible members
    /// and the hidden one (everyone who receives).
    pub tenant: SeededTenant,
    /// Visible, enabled, licensed members, the manager first.
    pub members: Vec<String>,
    /// An enabled, licensed member with `showInAddressList: false`.
    pub hidden: String,
    /// A licensed member with `accountEnabled: false`.
    pub disabled: String,
    /// An enabled member without licence.
    pub unlicensed: String,
    /// Enabled guests (`userType: Guest`, `#EXT#` UPN, external mail).
    pub guests: Vec<String>,
    /// Org contact object ids.
    pub org_contacts: Vec<String>,
    /// Group `sales@{domain}`: the first half of the members (rounded up) and the first guest.
    pub sales_group: String,
    /// Group `staff@{domain}`: the sales group (nested) and the remaining members.
    pub staff_group: String,
    /// Group `external@{domain}`: every guest and every org contact.
    pub external_group: String,
    /// The members with a photo (`/users/{id}/photo/$value`): every other one, the manager first.
    #[serde(default)]
    pub photo_members: Vec<String>,
}

/// A small JPEG-shaped photo (SOI marker, `size` bytes in all, EOI marker) whose content follows `tag`: equal tags
/// give equal bytes, different tags different ones.
pub fn sample_jpeg(tag: &str, size: usize) -> Vec<u8> {
    let size = size.max(8);
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let seed = tag.bytes().fold(0x811C_9DC5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let mut state = seed;
    while bytes.len() < size - 2 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.push(state.to_le_bytes()[0]);
    }
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

const GIVEN: &[&str] = &[
    "Anna",
    "Björn",
    "Zoë",
    "José",
    "Ольга",
    "美咲",
    "Siobhán",
    "Kwame",
    "Priya",
    "Émile",
];
const SURNAMES: &[&str] = &[
    "Müller",
    "García",
    "Nørgaard",
    "O'Brien",
    "Иванова",
    "山田",
    "Okafor",
    "Dubois",
];

/// Seeds one directory tenant. Users carry `proxyAddresses` with a secondary `smtp:` alias listed before the
/// primary `SMTP:` one and an `X500:` entry, so a mapping must order and filter them.
pub fn seed_directory(sim: &Sim, params: DirectoryParams) -> SeededDirectory {
    let domain = params.domain.to_lowercase();
    let (client_id, client_secret) = credentials(&domain);
    sim.add_tenant(TenantSeed::new(&domain, &client_id, &client_secret));
    let tenant_guid = sim.tenant_ids(&domain).map(|(g, _)| g).unwrap_or_default();

    let shared = format!("gal-shared@{domain}");
    sim.add_user(
        &domain,
        UserSeed {
            upn: shared.clone(),
            display_name: "Global Address Book".into(),
            mail: Some(shared.clone()),
            licensed: false,
            ..UserSeed::default()
        },
    );
    let person = |n: usize| {
        let given = GIVEN[n % GIVEN.len()];
        let surname = SURNAMES[(n * 3 + 1) % SURNAMES.len()];
        (given, surname)
    };
    let add = |n: usize, local: &str, edit: &dyn Fn(&mut UserSeed)| {
        let (given, surname) = person(n);
        let upn = format!("{local}@{domain}");
        let mut seed = UserSeed::member(&upn, &format!("{given} {surname}"));
        seed.mail = Some(format!("{}@{domain}", capitalised(local)));
        seed.properties = full_profile(n, given, surname);
        // The primary SMTP proxy address is the mail address.
        seed.properties.insert(
            "proxyAddresses".into(),
            json!([
                format!("smtp:alias{n}@{domain}"),
                format!("SMTP:{}@{domain}", capitalised(local)),
                format!("X500:/o=ExchangeLabs/cn=Recipients/cn=alias{n}"),
            ]),
        );
        edit(&mut seed);
        sim.add_user(&domain, seed);
        upn
    };
    let members: Vec<String> = (0..params.members.max(2))
        .map(|i| add(i, &format!("member{i}"), &|_| {}))
        .collect();
    let n = members.len();
    let hidden = add(n, "hidden", &|s| {
        s.properties
            .insert("showInAddressList".into(), json!(false));
    });
    let disabled = add(n + 1, "disabled", &|s| s.account_enabled = false);
    let unlicensed = add(n + 2, "unlicensed", &|s| s.licensed = false);
    let guests: Vec<String> = (0..params.guests)
        .map(|i| {
            let (given, surname) = person(n + 3 + i);
            let upn = format!("guest{i}_fabrikam.com#EXT#@{domain}");
            let mut seed = UserSeed::member(&upn, &format!("{given} {surname} (Fabrikam)"));
            seed.user_type = "Guest".into();
            seed.licensed = false;
            seed.mail = Some(format!("guest{i}@fabrikam.com"));
            seed.properties
                .insert("companyName".into(), json!("Fabrikam"));
            sim.add_user(&domain, seed);
            upn
        })
        .collect();
    let org_contacts: Vec<String> = (0..params.org_contacts)
        .map(|i| {
            let (given, surname) = person(n + 20 + i);
            let mail = format!("partner{i}@northwind.example");
            let mut seed = Map::new();
            seed.insert("displayName".into(), json!(format!("{given} {surname} (Northwind)")));
            seed.insert("givenName".into(), json!(given));
            seed.insert("surname".into(), json!(surname));
            seed.insert("mail".into(), json!(mail));
            seed.insert("companyName".into(), json!("Northwind Traders"));
            seed.insert("jobTitle".into(), json!("Account Manager"));
            seed.insert("proxyAddresses".into(), json!([format!("SMTP:{mail}")]));
            seed.insert(
                "phones".into(),
                json!([{"type": "business", "number": format!("+44 20 7946 {i:04}")}, {"type": "mobile", "number": format!("+44 7700 900{i:03}")}]),
            );
            seed.insert(
                "addresses".into(),
                json!([{"street": "1 Partner Way", "city": "London", "state": null, "postalCode": "EC1A 1BB", "countryOrRegion": "United Kingdom", "officeLocation": null}]),
            );
            sim.add_org_contact(&domain, seed)
                .unwrap_or_else(|e| panic!("graphsim: {e}"))
        })
        .collect();
    for member in &members[1..] {
        sim.set_manager(&domain, member, Some(&members[0]))
            .unwrap_or_else(|e| panic!("graphsim: {e}"));
    }
    let half = n.div_ceil(2);
    let group = |name: &str, members: Vec<String>| {
        sim.add_group(
            &domain,
            GroupSeed {
                display_name: name.to_owned(),
                mail: Some(format!("{}@{domain}", name.to_lowercase())),
                members,
            },
        )
        .unwrap_or_else(|e| panic!("graphsim: {e}"))
    };
    let mut sales_members = members[..half].to_vec();
    sales_members.extend(guests.first().cloned());
    let sales_group = group("Sales", sales_members);
    let mut staff_members = vec![sales_group.clone()];
    staff_members.extend(members[half..].iter().cloned());
    let staff_group = group("Staff", staff_members);
    let mut external = guests.clone();
    external.extend(org_contacts.iter().cloned());
    let external_group = group("External", external);

    let photo_members: Vec<String> = members.iter().step_by(2).cloned().collect();
    for member in &photo_members {
        sim.set_user_photo(&domain, member, Some(sample_jpeg(member, 2_048)));
    }
    let mut user_upns = members.clone();
    user_upns.extend([hidden.clone(), disabled.clone(), unlicensed.clone()]);
    user_upns.extend(guests.iter().cloned());
    let mut targets = members.clone();
    targets.push(hidden.clone());
    SeededDirectory {
        tenant: SeededTenant {
            tenant_id: domain,
            tenant_guid,
            client_id,
            client_secret,
            shared_mailbox_upn: shared,
            user_upns,
            mirror_target_upns: targets,
        },
        members,
        hidden,
        disabled,
        unlicensed,
        guests,
        org_contacts,
        sales_group,
        staff_group,
        external_group,
        photo_members,
    }
}

/// Every field the directory maps to a contact.
fn full_profile(n: usize, given: &str, surname: &str) -> Map<String, Value> {
    let local = format!("alias{n}");
    let mut p = Map::new();
    p.insert("givenName".into(), json!(given));
    p.insert("surname".into(), json!(surname));
    p.insert(
        "jobTitle".into(),
        json!(["Engineer", "Accountant", "Sales Manager"][n % 3]),
    );
    p.insert(
        "department".into(),
        json!(["Engineering", "Finance", "Sales"][n % 3]),
    );
    p.insert(
        "companyName".into(),
        if n.is_multiple_of(2) {
            json!("Contoso Ltd")
        } else {
            Value::Null
        },
    );
    p.insert(
        "officeLocation".into(),
        json!(format!("Building {}", n % 4 + 1)),
    );
    p.insert(
        "businessPhones".into(),
        json!([format!("+41 44 668 {:04}", 1000 + n)]),
    );
    p.insert(
        "mobilePhone".into(),
        if n % 3 == 2 {
            Value::Null
        } else {
            json!(format!("+41 79 555 {:04}", 2000 + n))
        },
    );
    p.insert(
        "streetAddress".into(),
        json!(format!("{} Bahnhofstrasse", n + 1)),
    );
    p.insert("city".into(), json!("Zürich"));
    p.insert("state".into(), json!("ZH"));
    p.insert("postalCode".into(), json!("8001"));
    p.insert("country".into(), json!("Switzerland"));
    p.insert("showInAddressList".into(), json!(true));
    p.insert("mailNickname".into(), json!(local));
    p
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
