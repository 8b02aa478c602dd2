use reqwest::Method;
use serde_json::Value;

use crate::support::*;
use graphsim::{MailboxState, UserSeed};

async fn directory_env() -> Env {
    let env = env().await;
    let mut disabled = UserSeed::member("old@contoso.onmicrosoft.com", "Old Account");
    disabled.account_enabled = false;
    env.sim.add_user(TENANT, disabled);
    let mut guest = UserSeed::member("g_fabrikam.com#EXT#@contoso.onmicrosoft.com", "Guest User");
    guest.user_type = "Guest".into();
    guest.licensed = false;
    guest.mail = None;
    env.sim.add_user(TENANT, guest);
    let mut unlicensed = UserSeed::member("room@contoso.onmicrosoft.com", "Room");
    unlicensed.licensed = false;
    unlicensed.mailbox = MailboxState::NoMailbox;
    env.sim.add_user(TENANT, unlicensed);
    env
}

fn upns(body: &Value) -> Vec<String> {
    body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["userPrincipalName"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn default_properties_and_select() {
    let env = directory_env().await;
    let r = env.get("/users").await;
    assert_eq!(r.status, 200);
    let first = r.body["value"][0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "businessPhones",
            "displayName",
            "givenName",
            "id",
            "jobTitle",
            "mail",
            "mobilePhone",
            "officeLocation",
            "preferredLanguage",
            "surname",
            "userPrincipalName"
        ]
    );
    assert!(r.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["mail"].is_null()));
    let s = env
        .get("/users?$select=id,accountEnabled,userType,assignedLicenses")
        .await;
    let u = s.body["value"][0].as_object().unwrap();
    assert_eq!(u.len(), 4);
    assert!(u["assignedLicenses"].is_array());
    assert_eq!(env.get("/users?$select=nope").await.status, 400);
}

#[tokio::test]
async fn filters_and_the_advanced_query_gate() {
    let env = directory_env().await;
    let q = |f: &str| format!("/users?$filter={f}&$select=userPrincipalName");
    let enabled = env.get(&q("accountEnabled eq true")).await;
    assert_eq!(upns(&enabled.body).len(), 4);
    let members = env
        .get(&q("userType eq 'Member' and accountEnabled eq true"))
        .await;
    assert_eq!(upns(&members.body).len(), 3);
    let licensed = env
        .get(&q(&format!(
            "assignedLicenses/any(x:x/skuId eq {})",
            graphsim::LICENSE_SKU
        )))
        .await;
    assert_eq!(licensed.status, 200, "{}", licensed.body);
    assert_eq!(upns(&licensed.body).len(), 3);

    let count = q("assignedLicenses/$count ne 0");
    let gated = env.get(&count).await;
    assert_eq!(
        (gated.status, gated.body["error"]["code"].as_str()),
        (400, Some("Request_UnsupportedQuery"))
    );
    let no_count = env
        .call_with(
            Method::GET,
            &env.url(&count),
            None,
            &[("ConsistencyLevel", "eventual")],
        )
        .await;
    assert_eq!(no_count.status, 400, "the header alone is not enough");
    let ok = env
        .call_with(
            Method::GET,
            &env.url(&format!("{count}&$count=true")),
            None,
            &[("ConsistencyLevel", "eventual")],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["@odata.count"], 3);
    assert_eq!(upns(&ok.body).len(), 3);

    assert_eq!(
        env.get(&q("accountEnabled eq 'true'")).await.body["error"]["code"],
        "BadRequest"
    );
    assert_eq!(
        env.get(&q("favouriteColour eq 'red'")).await.body["error"]["code"],
        "Request_UnsupportedQuery"
    );
    assert_eq!(env.get(&q("endsWith(mail,'@x.com')")).await.status, 400);
    // A collection compared as a whole is refused, not matched against nobody (a `UserFilter` written so would
    // otherwise select no user and look like a directory emptied).
    for collection in [
        "proxyAddresses eq 'smtp:a@x.com'",
        "proxyAddresses in ('smtp:a@x.com')",
        "startswith(proxyAddresses,'smtp:')",
    ] {
        assert_eq!(env.get(&q(collection)).await.status, 400, "{collection}");
    }
    assert_eq!(env.get(&q("userType eq")).await.status, 400);
    // $count=true without the header is silently ignored.
    let ignored = env.get("/users?$count=true").await;
    assert_eq!(ignored.status, 200);
    assert!(ignored.body.get("@odata.count").is_none());
}

#[tokio::test]
async fn top_and_skiptoken_paging() {
    let env = env().await;
    for i in 0..250 {
        env.sim.add_user(
            TENANT,
            UserSeed::member(
                &format!("u{i}@contoso.onmicrosoft.com"),
                &format!("User {i}"),
            ),
        );
    }
    let mut url = env.url("/users");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = env.call_with(Method::GET, &url, None, &[]).await;
        assert_eq!(r.status, 200);
        pages += 1;
        seen.extend(upns(&r.body));
        match r.body["@odata.nextLink"].as_str() {
            Some(n) => {
                assert!(n.contains("$skiptoken="), "{n}");
                url = n.to_owned();
            }
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (252, 3));
    let top = env.get("/users?$top=999").await;
    assert_eq!(upns(&top.body).len(), 252);
    assert_eq!(env.get("/users?$top=1000").await.status, 400);
    assert_eq!(env.get("/users?$top=0").await.status, 400);
    let bad = env.get("/users?$skiptoken=garbage").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn single_user_by_id_or_upn() {
    let env = env().await;
    let r = env.get(&format!("/users/{}", ALICE.to_uppercase())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["userPrincipalName"], ALICE);
    let missing = env.get("/users/ghost@contoso.onmicrosoft.com").await;
    assert_eq!(
        (missing.status, missing.body["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
}
