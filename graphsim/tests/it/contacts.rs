use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

const SYNC_ID: &str = "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name SyncId";

fn contacts_path(user: &str) -> String {
    format!("/users/{user}/contacts")
}

#[tokio::test]
async fn create_read_update_delete() {
    let env = env().await;
    let created = env
        .post(
            &contacts_path(ALICE),
            json!({"givenName": "Zoë", "surname": "Ångström", "homeAddress": {"street": "1 Main", "city": "Oslo"},
                   "emailAddresses": [{"address": "z@example.com", "name": "Zoë"}], "businessPhones": ["+1 555"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let c = &created.body;
    let id = c["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("AAMkAG"));
    assert_eq!(c["displayName"], "Zoë Ångström");
    assert_eq!(c["fileAs"], "");
    assert_eq!(
        c["@odata.etag"],
        format!("W/\"{}\"", c["changeKey"].as_str().unwrap())
    );
    assert_eq!(c["createdDateTime"], c["lastModifiedDateTime"]);
    assert_eq!(c["businessAddress"], json!({}));
    assert_eq!(
        c["parentFolderId"],
        json!(env.sim.default_folder_id(TENANT, ALICE).unwrap())
    );

    // PATCH replaces structured properties whole, null clears, changeKey and lastModified move.
    let patched = env
        .patch(
            &format!("{}/{}", contacts_path(ALICE), enc(&id)),
            json!({"homeAddress": {"city": "Bergen"}, "businessPhones": null, "jobTitle": "CFO"}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["homeAddress"], json!({"city": "Bergen"}));
    assert_eq!(patched.body["businessPhones"], json!([]));
    assert_eq!(patched.body["jobTitle"], "CFO");
    assert_ne!(patched.body["changeKey"], c["changeKey"]);
    assert!(
        patched.body["lastModifiedDateTime"].as_str().unwrap()
            > c["lastModifiedDateTime"].as_str().unwrap()
    );
    // Changing a name part without displayName regenerates displayName.
    let renamed = env
        .patch(
            &format!("{}/{}", contacts_path(ALICE), enc(&id)),
            json!({"givenName": "Zoe"}),
        )
        .await;
    assert_eq!(renamed.body["displayName"], "Zoe Ångström");

    let got = env
        .get(&format!("{}/{}", contacts_path(ALICE), enc(&id)))
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["jobTitle"], "CFO");

    let deleted = env
        .delete(&format!("{}/{}", contacts_path(ALICE), enc(&id)))
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, Value::Null);
    let gone = env
        .get(&format!("{}/{}", contacts_path(ALICE), enc(&id)))
        .await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["error"]["code"], "ErrorItemNotFound");
}

#[tokio::test]
async fn last_modified_strictly_increases_on_rapid_writes() {
    let env = env().await;
    let id = env
        .sim
        .add_contact(TENANT, ALICE, None, json!({"displayName": "x"}));
    let mut last = String::new();
    for i in 0..20 {
        let r = env
            .patch(
                &format!("{}/{}", contacts_path(ALICE), enc(&id)),
                json!({"nickName": format!("n{i}")}),
            )
            .await;
        let m = r.body["lastModifiedDateTime"].as_str().unwrap().to_owned();
        assert!(m > last, "{m} after {last}");
        last = m;
    }
}

#[tokio::test]
async fn errors_for_ids_bodies_and_if_match() {
    let env = env().await;
    let id = env
        .sim
        .add_contact(TENANT, ALICE, None, json!({"displayName": "x"}));
    let malformed = env
        .get(&format!("{}/not-an-id", contacts_path(ALICE)))
        .await;
    assert_eq!(
        (malformed.status, malformed.body["error"]["code"].as_str()),
        (400, Some("ErrorInvalidIdMalformed"))
    );
    // Unencoded ids with '/' break the path: never a 2xx.
    let raw = env
        .get(&format!("{}/{}", contacts_path(ALICE), id.replace('=', "")))
        .await;
    assert!(raw.status >= 400);
    let unknown = env
        .get(&format!(
            "{}/{}",
            contacts_path(ALICE),
            enc(&format!("AAMkAG{}=", "A".repeat(67)))
        ))
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let bad_prop = env
        .post(&contacts_path(ALICE), json!({"nickname": "typo"}))
        .await;
    assert_eq!(bad_prop.status, 400);
    assert_eq!(bad_prop.body["error"]["code"], "RequestBodyRead");
    assert!(bad_prop.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("'nickname'"));
    let bad_type = env
        .post(
            &contacts_path(ALICE),
            json!({"businessPhones": "not-a-list"}),
        )
        .await;
    assert_eq!(bad_type.status, 400);
    let stale = env
        .call_with(
            Method::PATCH,
            &env.url(&format!("{}/{}", contacts_path(ALICE), enc(&id))),
            Some(json!({"nickName": "n"})),
            &[("If-Match", "W/\"stale\"")],
        )
        .await;
    assert_eq!(
        (stale.status, stale.body["error"]["code"].as_str()),
        (412, Some("ErrorIrresolvableConflict"))
    );
    let unknown_user = env
        .get("/users/nobody@contoso.onmicrosoft.com/contacts")
        .await;
    assert_eq!(
        (
            unknown_user.status,
            unknown_user.body["error"]["code"].as_str()
        ),
        (404, Some("ErrorInvalidUser"))
    );
    let bad_select = env
        .get(&format!("{}?$select=nickname", contacts_path(ALICE)))
        .await;
    assert_eq!(bad_select.status, 400);
    let bad_filter = env
        .get(&format!(
            "{}?$filter=displayName eq 'x'",
            contacts_path(ALICE)
        ))
        .await;
    assert_eq!(
        (bad_filter.status, bad_filter.body["error"]["code"].as_str()),
        (400, Some("ErrorInvalidUrlQueryFilter"))
    );
}

#[tokio::test]
async fn users_path_accepts_object_id_and_upn_in_any_case() {
    let env = env().await;
    let id = env.sim.add_user(
        TENANT,
        graphsim::UserSeed::member("carol@contoso.onmicrosoft.com", "Carol C"),
    );
    env.sim
        .add_contact(TENANT, &id, None, json!({"displayName": "x"}));
    for key in [
        id.clone(),
        id.to_uppercase(),
        "CAROL@Contoso.onmicrosoft.com".to_owned(),
    ] {
        let r = env.get(&contacts_path(&key)).await;
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn extended_properties_round_trip_and_filter() {
    let env = env().await;
    let created = env
        .post(&contacts_path(ALICE), json!({"displayName": "A", "singleValueExtendedProperties": [{"id": SYNC_ID, "value": "Sync-1"}]}))
        .await;
    assert_eq!(created.status, 201);
    assert!(
        created.body.get("singleValueExtendedProperties").is_none(),
        "never echoed"
    );
    let id = created.body["id"].as_str().unwrap().to_owned();
    env.sim
        .add_contact(TENANT, ALICE, None, json!({"displayName": "B"}));

    let plain = env
        .get(&format!("{}/{}", contacts_path(ALICE), enc(&id)))
        .await;
    assert!(plain.body.get("singleValueExtendedProperties").is_none());
    let expand = format!("$expand=singleValueExtendedProperties($filter=id eq '{SYNC_ID}')");
    let expanded = env
        .get(&format!("{}/{}?{expand}", contacts_path(ALICE), enc(&id)))
        .await;
    assert_eq!(expanded.status, 200, "{}", expanded.body);
    assert_eq!(
        expanded.body["singleValueExtendedProperties"],
        json!([{"id": SYNC_ID, "value": "Sync-1"}])
    );

    // Value comparison is case-insensitive, the id's name part is case-sensitive.
    let find = |value: &str, id: &str| {
        format!("{}?$filter=singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq '{value}')", contacts_path(ALICE))
    };
    let found = env.get(&find("sync-1", SYNC_ID)).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let ids: Vec<&str> = found.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let wrong_case_id = env
        .get(&find("Sync-1", &SYNC_ID.replace("SyncId", "syncid")))
        .await;
    assert_eq!(wrong_case_id.body["value"].as_array().unwrap().len(), 0);

    // PATCH sets the property on an existing item; the list $expand shows it only where present.
    let patched = env
        .patch(
            &format!("{}/{}", contacts_path(ALICE), enc(&id)),
            json!({"singleValueExtendedProperties": [{"id": SYNC_ID, "value": "Sync-2"}]}),
        )
        .await;
    assert!(patched.body.get("singleValueExtendedProperties").is_none());
    let list = env.get(&format!("{}?{expand}", contacts_path(ALICE))).await;
    let values: Vec<Value> = list.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["singleValueExtendedProperties"].clone())
        .collect();
    assert!(values.contains(&json!([{"id": SYNC_ID, "value": "Sync-2"}])));
    assert!(values.contains(&Value::Null));
    let state = env.sim.contacts(TENANT, ALICE, None);
    assert!(
        state
            .iter()
            .any(|c| c["singleValueExtendedProperties"]
                == json!([{"id": SYNC_ID, "value": "Sync-2"}]))
    );
    let bad_id = env
        .post(
            &contacts_path(ALICE),
            json!({"singleValueExtendedProperties": [{"id": "SyncId", "value": "x"}]}),
        )
        .await;
    assert_eq!(bad_id.status, 400);
}

#[tokio::test]
async fn email_filter_and_select() {
    let env = env().await;
    env.sim.add_contact(
        TENANT,
        ALICE,
        None,
        json!({"displayName": "A", "emailAddresses": [{"address": "Anna@Example.com"}]}),
    );
    env.sim
        .add_contact(TENANT, ALICE, None, json!({"displayName": "B"}));
    let r = env
        .get(&format!(
            "{}?$filter=emailAddresses/any(a:a/address eq 'anna@example.com')",
            contacts_path(ALICE)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["value"].as_array().unwrap().len(), 1);
    let s = env
        .get(&format!(
            "{}?$select=displayName,emailAddresses",
            contacts_path(ALICE)
        ))
        .await;
    let first = s.body["value"][0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["@odata.etag", "displayName", "emailAddresses", "id"]
    );
}

#[tokio::test]
async fn folders_create_filter_conflict_nested_and_contacts() {
    let env = env().await;
    let base = format!("/users/{ALICE}/contactFolders");
    let f = env.post(&base, json!({"displayName": "Colleagues"})).await;
    assert_eq!(f.status, 201);
    let fid = f.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        env.post(&base, json!({"displayName": "colleagues"}))
            .await
            .status,
        409
    );
    let filtered = env
        .get(&format!("{base}?$filter=displayName eq 'Colleagues'"))
        .await;
    assert_eq!(filtered.body["value"].as_array().unwrap().len(), 1);
    let none = env
        .get(&format!("{base}?$filter=displayName eq 'Other'"))
        .await;
    assert_eq!(none.body["value"].as_array().unwrap().len(), 0);
    let root = env.get(&format!("{base}/Contacts")).await;
    assert_eq!(root.body["displayName"], "Contacts");
    let child = env
        .post(
            &format!("{base}/{}/childFolders", enc(&fid)),
            json!({"displayName": "Nested"}),
        )
        .await;
    assert_eq!(child.status, 201);
    assert_eq!(child.body["parentFolderId"], fid);
    let in_folder = env
        .post(
            &format!("{base}/{}/contacts", enc(&fid)),
            json!({"displayName": "In folder"}),
        )
        .await;
    assert_eq!(in_folder.status, 201);
    assert_eq!(in_folder.body["parentFolderId"], fid);
    let cid = in_folder.body["id"].as_str().unwrap().to_owned();
    // Not in the default folder's list, but addressable in its folder and through /contacts/{id}.
    assert_eq!(
        env.get(&contacts_path(ALICE)).await.body["value"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        env.get(&format!("{base}/{}/contacts/{}", enc(&fid), enc(&cid)))
            .await
            .status,
        200
    );
    assert_eq!(
        env.get(&format!("{base}/Contacts/contacts/{}", enc(&cid)))
            .await
            .status,
        404
    );
    assert_eq!(env.sim.contacts(TENANT, ALICE, Some("Colleagues")).len(), 1);
    assert_eq!(env.sim.folders(TENANT, ALICE).len(), 2);
    assert_eq!(
        env.post(&base, json!({"displayName": "x", "color": "red"}))
            .await
            .status,
        400
    );
    let malformed = env.get(&format!("{base}/xyz")).await;
    assert_eq!(malformed.status, 400);
}

async fn read_all(env: &Env, first: &str) -> (Vec<String>, usize) {
    let mut url = env.url(first);
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let r = env.call_with(Method::GET, &url, None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        pages += 1;
        ids.extend(
            r.body["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        match r.body["@odata.nextLink"].as_str() {
            Some(next) => url = next.to_owned(),
            None => break,
        }
    }
    (ids, pages)
}

#[tokio::test]
async fn paging_a_folder_of_2500_contacts() {
    let env = env().await;
    for i in 0..2500 {
        env.sim.add_contact(
            TENANT,
            ALICE,
            Some("Big"),
            json!({"displayName": format!("c{i}")}),
        );
    }
    let folders = env
        .get(&format!(
            "/users/{ALICE}/contactFolders?$filter=displayName eq 'Big'"
        ))
        .await;
    let fid = folders.body["value"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/users/{ALICE}/contactFolders/{}/contacts", enc(&fid));
    let (default_ids, default_pages) = read_all(&env, &path).await;
    assert_eq!(default_pages, 250, "default page size is 10");
    let (top_ids, top_pages) =
        read_all(&env, &format!("{path}?$top=1000&$select=displayName")).await;
    assert_eq!(top_pages, 3);
    for ids in [&default_ids, &top_ids] {
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!((ids.len(), unique.len()), (2500, 2500));
    }
    let (capped, capped_pages) = read_all(&env, &format!("{path}?$top=5000")).await;
    assert_eq!(
        (capped.len(), capped_pages),
        (2500, 3),
        "$top is capped at 1000"
    );
}

#[tokio::test]
async fn an_owner_edit_through_the_rust_api_moves_the_change_markers_and_is_not_counted() {
    let env = env().await;
    let id = env.sim.add_contact(
        TENANT,
        ALICE,
        None,
        json!({"displayName": "Kim", "jobTitle": "Engineer"}),
    );
    let before = env.sim.contacts(TENANT, ALICE, None)[0].clone();
    env.sim
        .update_contact(TENANT, ALICE, &id, json!({"jobTitle": "CFO"}))
        .expect("update");
    let after = env.sim.contacts(TENANT, ALICE, None)[0].clone();
    assert_eq!(after["jobTitle"], "CFO");
    assert_eq!(after["displayName"], "Kim");
    assert_ne!(after["changeKey"], before["changeKey"]);
    assert!(
        after["lastModifiedDateTime"].as_str() > before["lastModifiedDateTime"].as_str(),
        "{before} -> {after}"
    );
    assert_eq!(env.sim.stats().graph_operations, 0);
    assert!(env
        .sim
        .update_contact(TENANT, ALICE, "no-such-id", json!({"jobTitle": "x"}))
        .is_err());
    assert!(env
        .sim
        .update_contact(TENANT, ALICE, &id, json!({"nickname": "x"}))
        .is_err());
}
