//! Realistic tenants from a size and a seed: names with diacritics and non-Latin scripts, guests,
//! disabled and unlicensed accounts, users without mailbox, duplicate e-mail addresses that differ only in
//! case, and personal contacts with and without e-mail, notes with user text, several addresses and phones.
//!
//! The same parameters always produce the same directory and mailbox contents (ids aside).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::state::{MailboxState, TenantSeed, UserSeed};
use crate::Sim;

/// Size and shape of a seeded estate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EstateParams {
    /// Number of tenants.
    pub tenants: usize,
    /// Regular users per tenant (the shared mailbox comes on top).
    pub users_per_tenant: usize,
    /// Personal contacts already in each user's default Contacts folder.
    pub contacts_per_user: usize,
    /// Fraction (0..=1) of those contacts that are copies of colleagues (same e-mail, sometimes in another
    /// case), i.e. what a previous mirror run or the user by hand already created.
    pub overlap: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Default for EstateParams {
    fn default() -> Self {
        Self {
            tenants: 1,
            users_per_tenant: 10,
            contacts_per_user: 5,
            overlap: 0.2,
            seed: 1,
        }
    }
}

/// What was created for one tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeededTenant {
    /// Tenant domain (`tenantN-SEED.onmicrosoft.com`); the GUID works too.
    pub tenant_id: String,
    /// Tenant GUID.
    pub tenant_guid: String,
    /// App id.
    pub client_id: String,
    /// App secret.
    pub client_secret: String,
    /// UPN of the shared mailbox (licensed = false, mailbox enabled); clients must exclude it from users.
    pub shared_mailbox_upn: String,
    /// UPNs of all other users, irregular ones included.
    pub user_upns: Vec<String>,
    /// UPNs of the users a mirror should target: enabled, licensed members with a reachable mailbox.
    pub mirror_target_upns: Vec<String>,
}

const GIVEN: &[&str] = &[
    "Anna",
    "Björn",
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "François",
    "Ægir",
    "Chloé",
    "Dvořák",
    "İlkay",
    "Małgorzata",
    "Nguyễn",
    "Ольга",
    "Дмитрий",
    "Αλέξανδρος",
    "Σοφία",
    "美咲",
    "太郎",
    "李",
    "محمد",
    "فاطمة",
    "דוד",
    "Priya",
    "आरव",
    "Kwame",
    "Siobhán",
    "Oisín",
    "Émile",
    "Renée",
    "Jürgen",
    "Åsa",
    "Ümit",
    "Ngozi",
    "Mateo",
    "Chidi",
    "O'Brien",
];
const SURNAMES: &[&str] = &[
    "Müller",
    "García",
    "Nørgaard",
    "Kowalski",
    "Öztürk",
    "Åström",
    "Lefèvre",
    "Smith",
    "Иванова",
    "Петров",
    "Παπαδόπουλος",
    "山田",
    "王",
    "Nguyễn",
    "Al-Hassan",
    "Cohen",
    "Sharma",
    "Okafor",
    "Ó Súilleabháin",
    "d'Artagnan",
    "van der Berg",
    "Ibáñez",
    "Żółkowski",
    "Þórsson",
    "Dubois",
    "Kim",
    "Rossi",
    "Mbeki",
];
const ASCII_GIVEN: &[&str] = &[
    "anna", "bjorn", "zoe", "jose", "lukasz", "soren", "francois", "aegir", "chloe", "marta",
    "ilkay", "gosia", "minh", "olga", "dmitri", "alex", "sofia", "misaki", "taro", "li",
    "mohammed", "fatima", "david", "priya", "aarav", "kwame", "siobhan", "oisin", "emile", "renee",
    "jurgen", "asa", "umit", "ngozi", "mateo", "chidi", "sean",
];
const JOBS: &[&str] = &[
    "Engineer",
    "Accountant",
    "Sales Manager",
    "Recruiter",
    "Designer",
    "Support Lead",
    "CFO",
    "Intern",
];
const DEPTS: &[&str] = &["Engineering", "Finance", "Sales", "HR", "Design", "Support"];
const CITIES: &[(&str, &str, &str)] = &[
    ("Zürich", "ZH", "Switzerland"),
    ("København", "", "Denmark"),
    ("São Paulo", "SP", "Brazil"),
    ("Москва", "", "Russia"),
    ("東京", "", "Japan"),
    ("Kraków", "", "Poland"),
    ("Seattle", "WA", "United States"),
];
const NOTES: &[&str] = &[
    "Met at the conference — likes \"dark\" coffee; call after 5pm.",
    "Kid's birthday 03/04. Allergic to nuts!\nSecond line of notes.",
    "Ancien collègue de François 😀",
    "VIP: <b>not html</b> & keep; semicolons; commas, tabs\tend",
    "Заметка на русском языке",
];

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn phone(rng: &mut StdRng) -> String {
    format!(
        "+{} {} {:03} {:04}",
        rng.random_range(1..99),
        rng.random_range(10..99),
        rng.random_range(0..999),
        rng.random_range(0..9999)
    )
}

fn address(rng: &mut StdRng) -> Value {
    let (city, state, country) = CITIES[rng.random_range(0..CITIES.len())];
    json!({"street": format!("{} Hauptstraße", rng.random_range(1..300)), "city": city, "state": state,
        "countryOrRegion": country, "postalCode": format!("{:05}", rng.random_range(1000..99999))})
}

/// Seeds `params.tenants` tenants and returns what was created.
pub fn seed_estate(sim: &Sim, params: EstateParams) -> Vec<SeededTenant> {
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut out = Vec::new();
    for t in 0..params.tenants {
        let domain = format!("tenant{t}-s{}.onmicrosoft.com", params.seed);
        let (client_id, client_secret) = credentials(&domain);
        sim.add_tenant(TenantSeed::new(&domain, &client_id, &client_secret));
        let tenant_guid = sim.tenant_ids(&domain).map(|(g, _)| g).unwrap_or_default();

        let shared_upn = format!("gal-shared@{domain}");
        let shared = UserSeed {
            upn: shared_upn.clone(),
            display_name: "Global Address Book".into(),
            mail: Some(shared_upn.clone()),
            licensed: false,
            ..UserSeed::default()
        };
        sim.add_user(&domain, shared);

        let mut user_upns = Vec::new();
        let mut targets = Vec::new();
        let mut people: Vec<(String, String, Option<String>)> = Vec::new(); // display, upn, mail
        for i in 0..params.users_per_tenant {
            let given = pick(&mut rng, GIVEN);
            let surname = pick(&mut rng, SURNAMES);
            let ascii = pick(&mut rng, ASCII_GIVEN);
            let local = format!("{ascii}.{i}");
            let kind = i % 20;
            let mut seed = UserSeed {
                upn: format!("{local}@{domain}"),
                display_name: format!("{given} {surname}"),
                mail: Some(format!("{}@{domain}", capitalise(&local))),
                ..UserSeed::default()
            };
            let mut props = Map::new();
            props.insert("givenName".into(), json!(given));
            props.insert("surname".into(), json!(surname));
            props.insert("jobTitle".into(), json!(pick(&mut rng, JOBS)));
            props.insert("department".into(), json!(pick(&mut rng, DEPTS)));
            props.insert("businessPhones".into(), json!([phone(&mut rng)]));
            props.insert(
                "mobilePhone".into(),
                if rng.random_bool(0.7) {
                    json!(phone(&mut rng))
                } else {
                    Value::Null
                },
            );
            props.insert(
                "officeLocation".into(),
                json!(CITIES[rng.random_range(0..CITIES.len())].0),
            );
            props.insert("companyName".into(), json!("Contoso"));
            match kind {
                3 => seed.account_enabled = false,
                5 => {
                    seed.user_type = "Guest".into();
                    seed.upn = format!("{local}_fabrikam.com#EXT#@{domain}");
                    seed.mail = Some(format!("{local}@fabrikam.com"));
                    seed.licensed = false;
                }
                7 => seed.licensed = false,
                9 => seed.mailbox = MailboxState::NoMailbox,
                11 => seed.mail = None,
                13 => seed.mailbox = MailboxState::BlockedByPolicy,
                15 if !people.is_empty() => {
                    // Same address as an earlier colleague, different case (a second account of one person).
                    let earlier = people[rng.random_range(0..people.len())].2.clone();
                    seed.mail = earlier.map(|m| m.to_uppercase());
                }
                17 => seed.user_type = String::new(),
                _ => {}
            }
            seed.properties = props;
            let regular = seed.account_enabled
                && seed.licensed
                // An empty (null) userType is what older directory-synced members carry: still a member.
                && (seed.user_type == "Member" || seed.user_type.is_empty())
                && seed.mailbox == MailboxState::Enabled;
            people.push((
                seed.display_name.clone(),
                seed.upn.clone(),
                seed.mail.clone(),
            ));
            user_upns.push(seed.upn.clone());
            if regular {
                targets.push(seed.upn.clone());
            }
            sim.add_user(&domain, seed);
        }

        let mut mailboxes: Vec<String> = user_upns.clone();
        mailboxes.push(shared_upn.clone());
        for upn in &mailboxes {
            for c in 0..params.contacts_per_user {
                let body = if !people.is_empty() && rng.random_bool(params.overlap.clamp(0.0, 1.0))
                {
                    let (display, _, mail) = &people[rng.random_range(0..people.len())];
                    let mut emails = Vec::new();
                    if let Some(m) = mail {
                        let m = if rng.random_bool(0.3) {
                            m.to_lowercase()
                        } else {
                            m.clone()
                        };
                        emails.push(json!({"name": display, "address": m}));
                    }
                    json!({"displayName": display, "emailAddresses": emails, "companyName": "Contoso"})
                } else {
                    personal_contact(&mut rng, c)
                };
                sim.add_contact(&domain, upn, None, body);
            }
        }
        out.push(SeededTenant {
            tenant_id: domain,
            tenant_guid,
            client_id,
            client_secret,
            shared_mailbox_upn: shared_upn,
            user_upns,
            mirror_target_upns: targets,
        });
    }
    out
}

/// The stable app id and secret of a seeded tenant: the UUID v5 (URL namespace) of `app:{domain}`, and `sec~` +
/// the simple UUID v5 of `secret:{domain}` (`deploy/compose/config.json` relies on them).
pub(crate) fn credentials(domain: &str) -> (String, String) {
    let client_id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("app:{domain}").as_bytes(),
    )
    .to_string();
    let client_secret = format!(
        "sec~{}",
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("secret:{domain}").as_bytes()
        )
        .simple()
    );
    (client_id, client_secret)
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn personal_contact(rng: &mut StdRng, n: usize) -> Value {
    let given = pick(rng, GIVEN);
    let surname = pick(rng, SURNAMES);
    let mut body = json!({
        "givenName": given,
        "surname": surname,
        "displayName": format!("{given} {surname}"),
        "mobilePhone": phone(rng),
    });
    match n % 4 {
        0 => {
            // No e-mail at all.
            body["personalNotes"] = json!(pick(rng, NOTES));
        }
        1 => {
            body["emailAddresses"] = json!([
                {"name": format!("{given} {surname}"), "address": format!("{}.{}@example.org", pick(rng, ASCII_GIVEN), n)},
                {"name": "private", "address": format!("P{n}@Example.NET")}
            ]);
            body["homePhones"] = json!([phone(rng), phone(rng)]);
            body["businessPhones"] = json!([phone(rng)]);
            body["homeAddress"] = address(rng);
            body["businessAddress"] = address(rng);
            body["otherAddress"] = address(rng);
        }
        2 => {
            body["emailAddresses"] = json!([{"name": given, "address": format!("{}{}@example.com", pick(rng, ASCII_GIVEN), n)}]);
            body["personalNotes"] = json!(pick(rng, NOTES));
            body["companyName"] = json!("Fabrikam");
            body["jobTitle"] = json!(pick(rng, JOBS));
        }
        _ => {
            body["emailAddresses"] = json!([{"address": format!("x{n}@example.com")}]);
            body["categories"] = json!(["Family"]);
            body["businessHomePage"] = json!("https://example.com/ü");
        }
    }
    body
}
