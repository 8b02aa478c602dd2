//! The directory side of issue 11: users with every mapped field and their manager, groups with nested
//! membership, org contacts, `/organization`, `/users/delta`, and a 403 per missing application permission. Every
//! answer that has a schema in `graph-schemas.json` is validated against it.

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::conformance::Schemas;
use crate::support::*;
use graphsim::{seed_directory, DirectoryParams, SeededDirectory, SimConfig};

async fn directory_env() -> (Env, SeededDirectory) {
    let sim = graphsim::spawn(SimConfig::default())
        .await
        .expect("sim starts");
    let seeded = seed_directory(&sim, DirectoryParams::default());
    let http = reqwest::Client::new();
    let token = token_for(&sim, &http, &seeded).await;
    (Env { sim, http, token }, seeded)
}

async fn token_for(sim: &graphsim::Sim, http: &reqwest::Client, d: &SeededDirectory) -> String {
    let resp = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.authority_url(),
            d.tenant.tenant_id
        ))
        .form(&[
            ("client_id", d.tenant.client_id.as_str()),
            ("client_secret", d.tenant.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.expect("token json");
    body["access_token"].as_str().expect("token").to_owned()
}

fn assert_valid(schemas: &mut Schemas, def: &str, body: &Value) {
    let errors = schemas.errors(def, body);
    assert!(errors.is_empty(), "{}\n{body:#}", errors.join("\n"));
}

/// Every page of a collection, following nextLinks; checks each page against `def` when given.
async fn all_pages(env: &Env, first: &str, def: Option<&str>, schemas: &mut Schemas) -> Vec<Value> {
    let mut url = env.url(first);
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let r = env.call_with(Method::GET, &url, None, &[]).await;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        if let Some(def) = def {
            assert_valid(schemas, def, &r.body);
        }
        pages += 1;
        items.extend(r.body["value"].as_array().cloned().unwrap_or_default());
        match r.body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    items
}

fn strs(items: &[Value], key: &str) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| i[key].as_str().map(str::to_owned))
        .collect()
}

const FIELDS: &str = "id,displayName,givenName,surname,jobTitle,department,companyName,officeLocation,\
businessPhones,mobilePhone,mail,proxyAddresses,streetAddress,city,state,postalCode,country,userType,\
accountEnabled,showInAddressList,assignedLicenses";

#[tokio::test]
async fn users_carry_every_mapped_field_and_their_manager() {
    let (env, d) = directory_env().await;
    let mut schemas = Schemas::load();
    let path = format!("/users?$select={FIELDS}&$expand=manager($select=id,displayName)&$top=3");
    let users = all_pages(&env, &path, None, &mut schemas).await;
    assert_eq!(
        users.len(),
        d.tenant.user_upns.len() + 1,
        "every user and the shared mailbox"
    );
    let manager_name = users
        .iter()
        .find(|u| {
            u["mail"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&d.members[0]))
        })
        .map(|u| u["displayName"].clone())
        .expect("the manager is listed");
    for user in &users {
        let mut plain = user.clone();
        let manager = plain.as_object_mut().and_then(|m| m.remove("manager"));
        assert_valid(&mut schemas, "microsoft.graph.user", &plain);
        if let Some(manager) = manager {
            assert_valid(&mut schemas, "microsoft.graph.user", &manager);
            assert_eq!(manager["@odata.type"], "#microsoft.graph.user");
            assert_eq!(manager["displayName"], manager_name);
            assert!(manager["id"].is_string());
            assert!(
                manager.get("mail").is_none(),
                "only the selected properties"
            );
        }
    }
    let second = users
        .iter()
        .find(|u| {
            u["mail"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&d.members[1]))
        })
        .expect("member 1");
    for field in [
        "givenName",
        "surname",
        "jobTitle",
        "department",
        "officeLocation",
        "mobilePhone",
        "streetAddress",
        "city",
        "state",
        "postalCode",
        "country",
    ] {
        assert!(second[field].is_string(), "{field}: {second}");
    }
    assert_eq!(second["businessPhones"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["showInAddressList"], true);
    assert_eq!(second["accountEnabled"], true);
    assert_eq!(second["userType"], "Member");
    assert!(second["proxyAddresses"][1]
        .as_str()
        .is_some_and(|p| p.starts_with("SMTP:")));
    assert!(second.get("manager").is_some());
    let hidden = users
        .iter()
        .find(|u| {
            u["mail"]
                .as_str()
                .is_some_and(|m| m.to_lowercase().starts_with("hidden@"))
        })
        .expect("hidden user listed (Graph lists them; the client filters)");
    assert_eq!(hidden["showInAddressList"], false);

    // One user with its manager, and the manager navigation itself.
    let one = env
        .get(&format!(
            "/users/{}?$select=displayName&$expand=manager($select=displayName)",
            d.members[2]
        ))
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["manager"]["displayName"], manager_name);
    let m = env.get(&format!("/users/{}/manager", d.members[2])).await;
    assert_eq!(m.status, 200);
    assert_eq!(m.body["displayName"], manager_name);
    let none = env.get(&format!("/users/{}/manager", d.members[0])).await;
    assert_eq!(none.status, 404);
    assert_eq!(none.body["error"]["code"], "Request_ResourceNotFound");
    assert_valid(&mut schemas, "odata.error", &none.body);
}

#[tokio::test]
async fn expand_is_refused_with_advanced_queries_and_unknown_navigation() {
    let (env, _) = directory_env().await;
    let r = env
        .call_with(
            Method::GET,
            &env.url("/users?$filter=assignedLicenses/$count ne 0&$count=true&$expand=manager"),
            None,
            &[("ConsistencyLevel", "eventual")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "Request_UnsupportedQuery");
    let r = env.get("/users?$expand=directReports").await;
    assert_eq!(r.status, 400, "{}", r.body);
    // The advanced members query itself still works without $expand.
    let r = env
        .call_with(
            Method::GET,
            &env.url("/users?$filter=assignedLicenses/$count ne 0 and accountEnabled eq true&$count=true&$select=id,userType"),
            None,
            &[("ConsistencyLevel", "eventual")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn groups_resolve_by_mail_and_flatten_nested_membership() {
    let (env, d) = directory_env().await;
    let mut schemas = Schemas::load();
    let domain = &d.tenant.tenant_id;
    let by_mail = env
        .get(&format!(
            "/groups?$filter=mail eq 'Staff@{domain}'&$select=id,mail"
        ))
        .await;
    assert_eq!(by_mail.status, 200, "{}", by_mail.body);
    assert_valid(&mut schemas, "collectionResponse", &by_mail.body);
    assert_eq!(
        strs(by_mail.body["value"].as_array().expect("value"), "id"),
        vec![d.staff_group.clone()]
    );
    let missing = env
        .get("/groups?$filter=mail eq 'nobody@example.com'")
        .await;
    assert_eq!(missing.body["value"], json!([]));

    // Staff = Sales (nested: half the members and the first guest) + the other members.
    let members = all_pages(
        &env,
        &format!("/groups/{}/transitiveMembers?$top=2", d.staff_group),
        Some("collectionResponse"),
        &mut schemas,
    )
    .await;
    let types: Vec<&str> = members
        .iter()
        .filter_map(|m| m["@odata.type"].as_str())
        .collect();
    assert!(types.contains(&"#microsoft.graph.group"), "{types:?}");
    let users = all_pages(
        &env,
        &format!(
            "/groups/{}/transitiveMembers/microsoft.graph.user?$select=id,userPrincipalName&$top=2",
            d.staff_group
        ),
        Some("userCollectionResponse"),
        &mut schemas,
    )
    .await;
    let mut upns: Vec<String> = strs(&users, "userPrincipalName");
    upns.sort();
    let mut expected: Vec<String> = d.members.clone();
    expected.push(d.guests[0].clone());
    expected.sort();
    assert_eq!(upns, expected);
    let contacts = all_pages(
        &env,
        &format!(
            "/groups/{}/transitiveMembers/microsoft.graph.orgContact",
            d.external_group
        ),
        Some("orgContactCollectionResponse"),
        &mut schemas,
    )
    .await;
    let mut ids = strs(&contacts, "id");
    ids.sort();
    let mut want = d.org_contacts.clone();
    want.sort();
    assert_eq!(ids, want);

    let unknown = env
        .get("/groups/00000000-0000-0000-0000-000000000001/transitiveMembers")
        .await;
    assert_eq!(unknown.status, 404);
    assert_valid(&mut schemas, "odata.error", &unknown.body);
}

#[tokio::test]
async fn org_contacts_and_the_organisation() {
    let (env, d) = directory_env().await;
    let mut schemas = Schemas::load();
    let contacts = all_pages(
        &env,
        "/contacts?$top=1",
        Some("orgContactCollectionResponse"),
        &mut schemas,
    )
    .await;
    assert_eq!(strs(&contacts, "id"), d.org_contacts);
    assert_eq!(contacts[0]["phones"][0]["type"], "business");
    let selected = env.get("/contacts?$select=displayName,mail").await;
    assert_valid(&mut schemas, "orgContactCollectionResponse", &selected.body);
    assert!(selected.body["value"][0].get("phones").is_none());
    let one = env.get(&format!("/contacts/{}", d.org_contacts[0])).await;
    assert_eq!(one.status, 200);
    let mut body = one.body.clone();
    body.as_object_mut().map(|m| m.remove("@odata.context"));
    assert_valid(&mut schemas, "microsoft.graph.orgContact", &body);
    assert_eq!(env.get("/contacts?$select=nickname").await.status, 400);

    env.sim
        .set_organization_name(&d.tenant.tenant_id, "Contoso Holdings AG")
        .expect("tenant");
    let org = env.get("/organization").await;
    assert_eq!(org.status, 200);
    assert_eq!(org.body["value"][0]["displayName"], "Contoso Holdings AG");
    assert_eq!(org.body["value"][0]["id"], d.tenant.tenant_guid.as_str());
}

/// One delta round from `url` (absolute), every page validated; returns the items and the deltaLink.
async fn delta_round(
    env: &Env,
    url: &str,
    schemas: &mut Schemas,
    prefer: &str,
) -> (Vec<Value>, String) {
    let mut url = url.to_owned();
    let mut items = Vec::new();
    loop {
        let r = env
            .call_with(Method::GET, &url, None, &[("Prefer", prefer)])
            .await;
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        // `manager` is a navigation property, outside the entity's schema: checked on its own.
        let mut page = r.body.clone();
        for item in page["value"].as_array_mut().into_iter().flatten() {
            if let Some(manager) = item.as_object_mut().and_then(|m| m.remove("manager")) {
                assert_valid(schemas, "microsoft.graph.user", &manager);
            }
        }
        assert_valid(schemas, "userCollectionResponse", &page);
        items.extend(r.body["value"].as_array().cloned().unwrap_or_default());
        match (
            r.body["@odata.nextLink"].as_str(),
            r.body["@odata.deltaLink"].as_str(),
        ) {
            (Some(next), None) => url = next.to_owned(),
            (None, Some(link)) => return (items, link.to_owned()),
            other => panic!("a delta page needs exactly one link: {other:?}"),
        }
    }
}

#[tokio::test]
async fn users_delta_pages_then_reports_disabled_changed_and_deleted_users() {
    let (env, d) = directory_env().await;
    let mut schemas = Schemas::load();
    let tenant = &d.tenant.tenant_id;
    let start = env.url("/users/delta?$select=displayName,accountEnabled,mail,manager");
    let (all, link) = delta_round(&env, &start, &mut schemas, "odata.maxpagesize=3").await;
    assert_eq!(all.len(), d.tenant.user_upns.len() + 1);
    assert!(
        all.iter().all(|u| u.get("jobTitle").is_none()),
        "only selected properties"
    );
    // The manager navigation property comes as `manager@delta`: ids only.
    let boss_id = all
        .iter()
        .find(|u| {
            u["mail"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(&d.members[0]))
        })
        .map(|u| u["id"].clone())
        .expect("the manager");
    let managed = all
        .iter()
        .filter(|u| u["manager@delta"][0]["id"] == boss_id)
        .count();
    assert_eq!(managed, d.members.len() - 1);
    assert!(all
        .iter()
        .filter(|u| u["manager@delta"].is_array())
        .all(|u| u["manager@delta"][0]["@odata.type"] == "#microsoft.graph.user"));

    let (nothing, link) = delta_round(&env, &link, &mut schemas, "odata.maxpagesize=3").await;
    assert!(nothing.is_empty(), "{nothing:?}");

    // A change to an unselected property does not surface; a disabled user is a change, not a removal.
    let mut job = Map::new();
    job.insert("jobTitle".into(), json!("CTO"));
    env.sim
        .update_user(tenant, &d.members[1], job)
        .expect("user");
    let mut off = Map::new();
    off.insert("accountEnabled".into(), json!(false));
    env.sim
        .update_user(tenant, &d.members[2], off)
        .expect("user");
    env.sim.remove_user(tenant, &d.members[3]).expect("user");
    let (changes, link) = delta_round(&env, &link, &mut schemas, "odata.maxpagesize=3").await;
    assert_eq!(changes.len(), 2, "{changes:#?}");
    let disabled = changes
        .iter()
        .find(|c| c.get("@removed").is_none())
        .expect("the disabled user");
    assert_eq!(disabled["accountEnabled"], false);
    let removed = changes
        .iter()
        .find(|c| c.get("@removed").is_some())
        .expect("the deleted user");
    assert_eq!(removed["@removed"]["reason"], "deleted");
    assert_eq!(
        env.get(&format!("/users/{}", d.members[3])).await.status,
        404
    );

    // A new manager is a change of the selected navigation property.
    env.sim
        .set_manager(tenant, &d.members[4], Some(&d.members[1]))
        .expect("users");
    let (managed, _) = delta_round(&env, &link, &mut schemas, "odata.maxpagesize=3").await;
    assert_eq!(managed.len(), 1);

    // $deltatoken=latest: no items, just a link that sees later changes only.
    let latest = env
        .get("/users/delta?$deltatoken=latest&$select=displayName")
        .await;
    assert_eq!(latest.status, 200, "{}", latest.body);
    assert_eq!(latest.body["value"], json!([]));
    assert!(latest.body["@odata.deltaLink"].is_string());

    // Unsupported options and foreign tokens.
    assert_eq!(env.get("/users/delta?$top=5").await.status, 400);
    assert_eq!(
        env.get("/users/delta?$expand=manager").await.status,
        400,
        "graph-facts.md: no $expand on /users/delta"
    );
    assert_eq!(
        env.get("/users/delta?$filter=accountEnabled eq true")
            .await
            .status,
        400
    );
    let gone = env.get("/users/delta?$deltatoken=bogus").await;
    assert_eq!(gone.status, 410, "{}", gone.body);
    env.sim.invalidate_delta_tokens();
    let expired = env.call_with(Method::GET, &link, None, &[]).await;
    assert_eq!(expired.status, 410);
}

#[tokio::test]
async fn each_call_needs_its_permission() {
    let (mut env, d) = directory_env().await;
    let mut schemas = Schemas::load();
    let tenant = d.tenant.tenant_id.clone();
    let denied = |r: &Resp| {
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "Authorization_RequestDenied");
        assert_eq!(
            r.body["error"]["message"],
            "Insufficient privileges to complete the operation."
        );
    };
    let groups = format!("/groups/{}/transitiveMembers", d.staff_group);
    let group_by_mail = format!("/groups?$filter=mail eq 'staff@{tenant}'");

    env.sim
        .set_app_roles(
            &tenant,
            &["Contacts.ReadWrite", "User.Read.All", "OrgContact.Read.All"],
        )
        .expect("tenant");
    env.token = token_for(&env.sim, &env.http, &d).await;
    let r = env.get(&groups).await;
    denied(&r);
    assert_valid(&mut schemas, "odata.error", &r.body);
    denied(&env.get(&group_by_mail).await);
    assert_eq!(env.get("/contacts").await.status, 200);
    assert_eq!(env.get("/users").await.status, 200);
    denied(&env.get("/organization").await);

    env.sim
        .set_app_roles(
            &tenant,
            &[
                "Contacts.ReadWrite",
                "User.Read.All",
                "GroupMember.Read.All",
            ],
        )
        .expect("tenant");
    env.token = token_for(&env.sim, &env.http, &d).await;
    denied(&env.get("/contacts").await);
    assert_eq!(env.get(&groups).await.status, 200);

    env.sim
        .set_app_roles(&tenant, &["Contacts.ReadWrite", "GroupMember.Read.All"])
        .expect("tenant");
    env.token = token_for(&env.sim, &env.http, &d).await;
    denied(&env.get("/users").await);
    denied(&env.get("/users/delta").await);
    denied(&env.get(&format!("/users/{}/manager", d.members[1])).await);
    assert_eq!(
        env.get(&format!("/users/{}/contacts", d.members[1]))
            .await
            .status,
        200
    );

    // Directory.Read.All covers every directory read; without Contacts.ReadWrite a write is refused.
    env.sim
        .set_app_roles(&tenant, &["Directory.Read.All", "Contacts.Read"])
        .expect("tenant");
    env.token = token_for(&env.sim, &env.http, &d).await;
    for path in [groups.as_str(), "/contacts", "/users", "/organization"] {
        assert_eq!(env.get(path).await.status, 200, "{path}");
    }
    assert_eq!(
        env.get(&format!("/users/{}/contacts", d.members[1]))
            .await
            .status,
        200
    );
    let write = env
        .post(
            &format!("/users/{}/contacts", d.members[1]),
            json!({"displayName": "x"}),
        )
        .await;
    assert_eq!(write.status, 403, "{}", write.body);
    assert_eq!(write.body["error"]["code"], "ErrorAccessDenied");

    // A token issued before a grant keeps the roles it was issued with, as Entra's do.
    let old = env.token.clone();
    env.sim
        .set_app_roles(&tenant, graphsim::DEFAULT_ROLES)
        .expect("tenant");
    env.token = old;
    let still = env
        .post(
            &format!("/users/{}/contacts", d.members[1]),
            json!({"displayName": "x"}),
        )
        .await;
    assert_eq!(still.status, 403);
}

#[tokio::test]
async fn seeded_directory_has_every_kind_of_entry() {
    let sim = graphsim::spawn(SimConfig::default())
        .await
        .expect("sim starts");
    let d = seed_directory(
        &sim,
        DirectoryParams {
            members: 4,
            guests: 1,
            org_contacts: 3,
            ..DirectoryParams::default()
        },
    );
    assert_eq!(d.members.len(), 4);
    assert_eq!(d.guests.len(), 1);
    assert_eq!(d.org_contacts.len(), 3);
    assert_eq!(
        d.tenant.mirror_target_upns.len(),
        5,
        "members and the hidden user receive"
    );
    let again = graphsim::spawn(SimConfig::default())
        .await
        .expect("sim starts");
    let e = seed_directory(
        &again,
        DirectoryParams {
            members: 4,
            guests: 1,
            org_contacts: 3,
            ..DirectoryParams::default()
        },
    );
    assert_eq!(d.members, e.members, "deterministic names");
    assert_eq!(d.tenant.client_secret, e.tenant.client_secret);
}

#[tokio::test]
async fn the_control_surface_builds_and_edits_a_directory() {
    let env = env().await;
    let sim_url = |path: &str| format!("{}/_sim/{path}", env.sim.graph_url());
    let call = |method: Method, path: &str, body: Value| {
        let req = env.http.request(method, sim_url(path)).json(&body);
        async move {
            let resp = req.send().await.expect("control request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, seeded) = call(
        Method::POST,
        "seed-directory",
        json!({"domain": "lab.onmicrosoft.com", "members": 3, "guests": 1, "orgContacts": 1}),
    )
    .await;
    assert_eq!(status, 200, "{seeded}");
    assert_eq!(seeded["members"].as_array().map(Vec::len), Some(3));
    let t = "lab.onmicrosoft.com";
    let member = seeded["members"][1].as_str().expect("member").to_owned();
    let (status, group) = call(
        Method::POST,
        &format!("tenants/{t}/groups"),
        json!({"displayName": "Phones", "mail": format!("phones@{t}"), "members": [member, seeded["staffGroup"]]}),
    )
    .await;
    assert_eq!(status, 201, "{group}");
    let (status, _) = call(
        Method::POST,
        &format!("tenants/{t}/groups"),
        json!({"displayName": "Bad", "members": ["nobody@nowhere"]}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, contact) = call(
        Method::POST,
        &format!("tenants/{t}/org-contacts"),
        json!({"displayName": "Vendor", "mail": "v@vendor.example"}),
    )
    .await;
    assert_eq!(status, 201, "{contact}");
    assert_eq!(
        call(
            Method::POST,
            &format!("tenants/{t}/org-contacts"),
            json!({"nickname": "x"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        call(
            Method::PATCH,
            &format!("tenants/{t}/users/{member}"),
            json!({"accountEnabled": false})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            Method::PUT,
            &format!("tenants/{t}/users/{member}/manager"),
            json!({"manager": null})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            Method::PUT,
            &format!("tenants/{t}/roles"),
            json!({"roles": ["User.Read.All"]})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            Method::DELETE,
            &format!("tenants/{t}/users/{member}"),
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            Method::DELETE,
            &format!("tenants/{t}/users/{member}"),
            json!({})
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn malformed_directory_requests_get_graph_errors_not_crashes() {
    let (env, d) = directory_env().await;
    let staff = &d.staff_group;
    let cases = [
        "/groups?$filter=((".to_owned(),
        "/groups?$filter=displayName ne 'x'".to_owned(),
        "/groups?$top=0".to_owned(),
        "/groups?$skiptoken=garbage".to_owned(),
        format!("/groups/{staff}/transitiveMembers?$top=abc"),
        format!("/groups/{staff}/transitiveMembers/microsoft.graph.device"),
        format!("/groups/{staff}/transitiveMembers?$filter=id eq 'x'"),
        format!("/groups/{staff}/owners"),
        "/contacts?$top=1000".to_owned(),
        "/contacts?$filter=mail eq 'x'".to_owned(),
        "/contacts/not-a-guid".to_owned(),
        "/contacts/00000000-0000-0000-0000-000000000000/manager".to_owned(),
        "/users/delta?$deltatoken=".to_owned(),
        "/users/delta?$skiptoken=GSU1%%%".to_owned(),
        "/users/delta?$select=bogus".to_owned(),
        format!("/users/{}/manager?$select=bogus", d.members[1]),
        "/users/nobody@nowhere/manager".to_owned(),
        "/users?$expand=manager(".to_owned(),
        "/users?$expand=manager($top=1)".to_owned(),
        "/organization/extra".to_owned(),
    ];
    for path in &cases {
        let r = env.get(path).await;
        assert!(
            (400..500).contains(&r.status),
            "{path}: {} {}",
            r.status,
            r.body
        );
        assert!(r.body["error"]["code"].is_string(), "{path}: {}", r.body);
    }
    for method in [Method::POST, Method::PATCH, Method::DELETE] {
        let r = env.call(method.clone(), "/contacts", Some(json!({}))).await;
        assert_eq!(r.status, 405, "{method} /contacts: {}", r.body);
    }
}
