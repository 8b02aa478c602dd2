use serde_json::{json, Value};

use graphsim::{EstateParams, MailboxState};

#[tokio::test]
async fn control_surface_seeds_reads_and_configures() {
    let sim = graphsim::spawn(graphsim::SimConfig::default())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let c = |p: &str| format!("{}/_sim/{p}", sim.graph_url());
    let seeded: Value = http
        .post(c("seed"))
        .json(&json!({"tenants": 2, "usersPerTenant": 5, "contactsPerUser": 3, "overlap": 0.5, "seed": 9}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seeded.as_array().unwrap().len(), 2);
    let t = &seeded[0];
    let tenant = t["tenantId"].as_str().unwrap();
    let upn = t["userUpns"][0].as_str().unwrap();
    let contacts: Value = http
        .get(c(&format!("tenants/{tenant}/users/{upn}/contacts")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(contacts.as_array().unwrap().len(), 3);
    let added = http
        .post(c(&format!("tenants/{tenant}/users/{upn}/contacts?folder=Mirror")))
        .json(&json!({"displayName": "x", "singleValueExtendedProperties": [{"id": "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name SyncId", "value": "v"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let in_folder: Value = http
        .get(c(&format!(
            "tenants/{tenant}/users/{upn}/contacts?folder=Mirror"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        in_folder[0]["singleValueExtendedProperties"][0]["value"],
        "v"
    );
    let bad = http
        .post(c(&format!("tenants/{tenant}/users/{upn}/contacts")))
        .json(&json!({"nickname": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let garbage = http.put(c("throttle")).body("nope").send().await.unwrap();
    assert_eq!(garbage.status(), 400);
    let ok = http
        .put(c("throttle"))
        .json(&json!({"requestsPerWindow": 10, "window": 1.5, "maxInFlight": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    for (m, p, b) in [
        ("PUT", "faults", json!({"rate": 0.0})),
        ("PUT", "token-lifetime", json!({"seconds": 60})),
        ("PUT", "latency", json!({"seconds": 0})),
        ("POST", "delta/invalidate", json!({})),
        ("POST", "tokens/expire", json!({})),
        ("POST", "stats/reset", json!({})),
        (
            "PUT",
            &format!("tenants/{tenant}/users/{upn}/mailbox"),
            json!({"state": "NoMailbox"}),
        ),
    ] {
        let r = http
            .request(m.parse().unwrap(), c(p))
            .json(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m} {p}");
    }
    let stats: Value = http
        .get(c("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["mailboxes"].is_object());
    let log: Value = http
        .get(c("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(log.is_array());
    let dir: Value = http
        .get(c("tenants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dir.as_array().unwrap().len(), 2);
    assert_eq!(http.post(c("reset")).send().await.unwrap().status(), 200);
    let dir: Value = http
        .get(c("tenants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dir.as_array().unwrap().len(), 0);
    let _ = MailboxState::Enabled;
}

#[tokio::test]
async fn seed_generator_is_realistic_and_deterministic() {
    let sim = graphsim::spawn(graphsim::SimConfig::default())
        .await
        .unwrap();
    let params = EstateParams {
        tenants: 1,
        users_per_tenant: 40,
        contacts_per_user: 8,
        overlap: 0.3,
        seed: 42,
    };
    let tenants = graphsim::seed_estate(&sim, params.clone());
    let t = &tenants[0];
    assert!(!t.user_upns.contains(&t.shared_mailbox_upn));
    assert!(t.user_upns.iter().any(|u| u.contains("#EXT#")));
    assert!(t.mirror_target_upns.len() < t.user_upns.len());
    let mut all_text = String::new();
    let mut without_email = 0;
    let mut multi_address = 0;
    for upn in &t.user_upns {
        for c in sim.contacts(&t.tenant_id, upn, None) {
            all_text.push_str(&c.to_string());
            if c["emailAddresses"].as_array().unwrap().is_empty() {
                without_email += 1;
            }
            if c["otherAddress"].as_object().is_some_and(|o| !o.is_empty())
                && c["homePhones"].as_array().unwrap().len() > 1
            {
                multi_address += 1;
            }
        }
    }
    assert!(without_email > 0 && multi_address > 0);
    assert!(
        all_text
            .chars()
            .any(|c| ('\u{0400}'..='\u{04FF}').contains(&c)),
        "Cyrillic"
    );
    assert!(
        all_text
            .chars()
            .any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c)
                || ('\u{0370}'..='\u{03FF}').contains(&c)),
        "CJK or Greek"
    );
    assert!(all_text.contains("personalNotes"));
    // Duplicate e-mail differing only in case across users.
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.authority_url(),
            t.tenant_id
        ))
        .form(&[
            ("client_id", t.client_id.as_str()),
            ("client_secret", t.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let users: Value = http
        .get(format!(
            "{}/v1.0/users?$top=999&$select=mail",
            sim.graph_url()
        ))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mails: Vec<&str> = users["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["mail"].as_str())
        .collect();
    let lower: std::collections::HashSet<String> = mails.iter().map(|m| m.to_lowercase()).collect();
    let exact: std::collections::HashSet<&&str> = mails.iter().collect();
    assert!(
        lower.len() < exact.len(),
        "a duplicate in another case exists"
    );

    let again = graphsim::spawn(graphsim::SimConfig::default())
        .await
        .unwrap();
    let tenants2 = graphsim::seed_estate(&again, params);
    assert_eq!(tenants, tenants2);
    let strip = |v: Vec<Value>| -> Vec<Value> {
        v.into_iter()
            .map(|mut c| {
                for k in [
                    "id",
                    "changeKey",
                    "@odata.etag",
                    "createdDateTime",
                    "lastModifiedDateTime",
                    "parentFolderId",
                ] {
                    c.as_object_mut().unwrap().remove(k);
                }
                c
            })
            .collect()
    };
    let u = &t.user_upns[0];
    assert_eq!(
        strip(sim.contacts(&t.tenant_id, u, None)),
        strip(again.contacts(&t.tenant_id, u, None))
    );
}

/// deploy/compose/config.json relies on these values: the app id and secret are derived from the domain.
#[tokio::test]
async fn seeded_credentials_are_stable() {
    let sim = graphsim::spawn(graphsim::SimConfig::default())
        .await
        .unwrap();
    let tenants = graphsim::seed_estate(
        &sim,
        EstateParams {
            tenants: 2,
            users_per_tenant: 1,
            contacts_per_user: 0,
            ..Default::default()
        },
    );
    assert_eq!(tenants[0].tenant_id, "tenant0-s1.onmicrosoft.com");
    assert_eq!(tenants[0].client_id, "14caad47-ee75-55b4-9472-754eb85095bf");
    assert_eq!(
        tenants[0].client_secret,
        "sec~5c99545246485c53a1c06b45f72d7173"
    );
    assert_eq!(
        tenants[0].shared_mailbox_upn,
        "gal-shared@tenant0-s1.onmicrosoft.com"
    );
    assert_eq!(tenants[1].client_id, "14cd857f-472e-53cb-b0ce-1f9ebd398ca0");
}
