use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn mixed_outcomes_dependencies_and_counting() {
    let env = env().await;
    let existing = env
        .sim
        .add_contact(TENANT, ALICE, None, json!({"displayName": "Existing"}));
    let body = json!({"requests": [
        {"id": "create", "method": "POST", "url": format!("/users/{ALICE}/contacts"), "headers": {"Content-Type": "application/json"},
         "body": {"displayName": "New one"}},
        {"id": "bad", "method": "POST", "url": format!("/users/{ALICE}/contacts"), "headers": {"Content-Type": "application/json"},
         "body": {"nickname": "typo"}, "dependsOn": ["create"]},
        {"id": "after-bad", "method": "GET", "url": format!("/users/{ALICE}/contacts"), "dependsOn": ["bad"]},
        {"id": "patch", "method": "PATCH", "url": format!("/users/{ALICE}/contacts/{}", enc(&existing)),
         "headers": {"Content-Type": "application/json"}, "body": {"jobTitle": "CEO"}, "dependsOn": ["create"]},
        {"id": "missing", "method": "GET", "url": format!("/users/{BOB}/contacts/{}", enc(&existing)), "dependsOn": ["patch"]},
        {"id": "delete", "method": "DELETE", "url": format!("users/{ALICE}/contacts/{}", enc(&existing)), "dependsOn": ["patch"]}
    ]});
    let r = env.post("/$batch", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let by_id = |id: &str| -> Value {
        r.body["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id("create")["status"], 201);
    assert_eq!(by_id("create")["body"]["displayName"], "New one");
    assert_eq!(by_id("bad")["status"], 400);
    assert_eq!(by_id("after-bad")["status"], 424);
    assert_eq!(by_id("patch")["body"]["jobTitle"], "CEO");
    assert_eq!(by_id("missing")["status"], 404);
    assert_eq!(by_id("delete")["status"], 204);
    assert!(by_id("delete").get("body").is_none());
    let stats = env.sim.stats();
    assert_eq!(stats.batches, 1);
    assert_eq!(stats.mailbox(ALICE).writes, 4);
    assert_eq!(stats.mailbox(ALICE).applied_writes, 3);
    assert_eq!(stats.writes.get("POST"), Some(&2));
    assert_eq!(env.sim.contacts(TENANT, ALICE, None).len(), 1);
}

#[tokio::test]
async fn parallel_items_run_at_most_four_at_a_time() {
    let env = env_with(graphsim::SimConfig {
        latency: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let requests: Vec<Value> =
        (0..12).map(|i| json!({"id": format!("{i}"), "method": "GET", "url": format!("/users/{ALICE}/contacts")})).collect();
    let r = env.post("/$batch", json!({"requests": requests})).await;
    assert!(
        r.body["responses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == 200),
        "{}",
        r.body
    );
    assert!(env.sim.stats().mailbox(ALICE).peak_in_flight <= 4);
}

#[tokio::test]
async fn envelope_errors() {
    let env = env().await;
    let item = |id: &str| json!({"id": id, "method": "GET", "url": "/users"});
    let too_many: Vec<Value> = (0..21).map(|i| item(&i.to_string())).collect();
    let r = env.post("/$batch", json!({"requests": too_many})).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        env.post("/$batch", json!({"requests": [item("a"), item("A")]}))
            .await
            .status,
        400
    );
    let no_headers = json!({"requests": [{"id": "1", "method": "POST", "url": "/users/x/contacts", "body": {}}]});
    assert_eq!(env.post("/$batch", no_headers).await.status, 400);
    assert_eq!(
        env.post(
            "/$batch",
            json!({"requests": [{"id": "1", "url": "/users"}]})
        )
        .await
        .status,
        400
    );
    assert_eq!(env.post("/$batch", json!({"nope": 1})).await.status, 400);
    let forward = json!({"requests": [{"id": "1", "method": "GET", "url": "/users", "dependsOn": ["2"]}, item("2")]});
    assert_eq!(env.post("/$batch", forward).await.status, 400);
    let nested = env.post("/$batch", json!({"requests": [{"id": "1", "method": "POST", "url": "/$batch", "headers": {"Content-Type": "application/json"}, "body": {"requests": []}}]})).await;
    assert_eq!(nested.body["responses"][0]["status"], 400);
    let absolute = json!({"requests": [{"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"}]});
    assert_eq!(env.post("/$batch", absolute).await.status, 400);
}

#[tokio::test]
async fn legacy_parallelism_makes_items_beyond_four_hit_mailbox_concurrency() {
    let config = graphsim::SimConfig {
        latency: std::time::Duration::from_millis(200),
        batch_parallelism: 20,
        ..Default::default()
    };
    let env = env_with(config).await;
    let requests: Vec<Value> =
        (0..8).map(|i| json!({"id": format!("{i}"), "method": "GET", "url": format!("/users/{ALICE}/contacts")})).collect();
    let r = env.post("/$batch", json!({"requests": requests})).await;
    let items = r.body["responses"].as_array().unwrap();
    let throttled: Vec<&Value> = items.iter().filter(|i| i["status"] == 429).collect();
    assert_eq!(throttled.len(), 4, "{}", r.body);
    assert_eq!(
        throttled[0]["body"]["error"]["message"],
        "Application is over its MailboxConcurrency limit."
    );
    assert_eq!(throttled[0]["headers"]["Retry-After"], "1");
}
