use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

async fn run_delta(env: &Env, url: &str, page: usize) -> (Vec<Value>, String, usize) {
    let prefer = format!("odata.maxpagesize={page}");
    let mut url = url.to_owned();
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let r = env
            .call_with(Method::GET, &url, None, &[("Prefer", &prefer)])
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        pages += 1;
        assert!(r.body["value"].as_array().unwrap().len() <= page);
        items.extend(r.body["value"].as_array().unwrap().iter().cloned());
        if let Some(next) = r.body["@odata.nextLink"].as_str() {
            assert!(r.body.get("@odata.deltaLink").is_none());
            url = next.to_owned();
        } else {
            return (
                items,
                r.body["@odata.deltaLink"]
                    .as_str()
                    .expect("deltaLink")
                    .to_owned(),
                pages,
            );
        }
    }
}

#[tokio::test]
async fn delta_after_create_update_delete() {
    let env = env().await;
    let ids: Vec<String> = (0..7)
        .map(|i| {
            env.sim
                .add_contact(TENANT, ALICE, None, json!({"displayName": format!("c{i}")}))
        })
        .collect();
    env.sim.add_contact(
        TENANT,
        ALICE,
        Some("Other"),
        json!({"displayName": "elsewhere"}),
    );
    let first = env.url(&format!(
        "/users/{ALICE}/contactFolders/Contacts/contacts/delta?$select=displayName"
    ));
    let (items, delta_link, pages) = run_delta(&env, &first, 3).await;
    assert_eq!((items.len(), pages), (7, 3));
    assert!(
        items
            .iter()
            .all(|i| i.get("jobTitle").is_none() && i["displayName"].is_string()),
        "$select is kept in the token"
    );

    // Nothing changed: empty round.
    let (items, delta_link, _) = run_delta(&env, &delta_link, 3).await;
    assert!(items.is_empty());

    let created = env
        .post(
            &format!("/users/{ALICE}/contacts"),
            json!({"displayName": "new"}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.patch(
        &format!("/users/{ALICE}/contacts/{}", enc(&ids[0])),
        json!({"displayName": "changed"}),
    )
    .await;
    env.delete(&format!("/users/{ALICE}/contacts/{}", enc(&ids[1])))
        .await;
    let (items, delta_link, _) = run_delta(&env, &delta_link, 2).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items
        .iter()
        .any(|i| i["id"] == created.as_str() && i["displayName"] == "new"));
    assert!(items
        .iter()
        .any(|i| i["id"] == ids[0].as_str() && i["displayName"] == "changed"));
    let removed = items.iter().find(|i| i["id"] == ids[1].as_str()).unwrap();
    assert_eq!(removed["@removed"], json!({"reason": "deleted"}));
    assert_eq!(removed["@odata.type"], "#microsoft.graph.contact");

    env.sim.invalidate_delta_tokens();
    let gone = env.call_with(Method::GET, &delta_link, None, &[]).await;
    assert_eq!(
        (gone.status, gone.body["error"]["code"].as_str()),
        (410, Some("SyncStateNotFound"))
    );
    let garbage = env
        .get(&format!(
            "/users/{ALICE}/contactFolders/Contacts/contacts/delta?$deltatoken=xyz"
        ))
        .await;
    assert_eq!(garbage.status, 410);
}
