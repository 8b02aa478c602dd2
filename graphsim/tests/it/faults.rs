use serde_json::json;

use crate::support::*;
use graphsim::{FaultConfig, RetryAfter, ScriptedFault};

#[tokio::test]
async fn commit_then_fail_applies_the_write() {
    let env = env().await;
    env.sim.push_fault(ScriptedFault {
        status: 503,
        retry_after: Some("0.5".into()),
        commit: true,
        path_contains: Some("/contacts".into()),
        method: Some("POST".into()),
    });
    let r = env
        .post(
            &format!("/users/{ALICE}/contacts"),
            json!({"displayName": "Once"}),
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "0.5");
    assert_eq!(
        env.sim.contacts(TENANT, ALICE, None).len(),
        1,
        "the write was applied"
    );
    let stats = env.sim.stats();
    assert_eq!((stats.injected_faults, stats.applied_writes), (1, 1));
}

#[tokio::test]
async fn scripted_faults_match_method_and_path() {
    let env = env().await;
    env.sim.push_fault(ScriptedFault {
        status: 429,
        retry_after: Some("2".into()),
        commit: false,
        path_contains: Some("contactFolders".into()),
        method: None,
    });
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contacts")).await.status,
        200
    );
    let r = env.get(&format!("/users/{ALICE}/contactFolders")).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (429, Some("TooManyRequests"))
    );
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contactFolders"))
            .await
            .status,
        200,
        "one-off"
    );
}

#[tokio::test]
async fn random_faults_at_a_rate_with_retry_after_kinds() {
    let env = env().await;
    env.sim.set_faults(FaultConfig {
        rate: 1.0,
        statuses: vec![429, 503],
        retry_after: RetryAfter::Fractional(0.25),
        seed: 7,
        ..FaultConfig::default()
    });
    for _ in 0..10 {
        let r = env.get(&format!("/users/{ALICE}/contacts")).await;
        assert!(r.status == 429 || r.status == 503);
        assert_eq!(r.headers["retry-after"], "0.250");
        assert!(r.body["error"]["innerError"]["request-id"].is_string());
    }
    env.sim.set_faults(FaultConfig {
        rate: 1.0,
        statuses: vec![500, 502, 504],
        retry_after: RetryAfter::None,
        empty_body: true,
        ..FaultConfig::default()
    });
    let r = env.get(&format!("/users/{ALICE}/contacts")).await;
    assert!([500, 502, 504].contains(&r.status));
    assert!(r.body.is_null(), "empty body");
    assert!(r.headers.get("retry-after").is_none());
    env.sim.set_faults(FaultConfig {
        rate: 0.3,
        seed: 3,
        ..FaultConfig::default()
    });
    let mut failed = 0;
    for _ in 0..100 {
        if env.get(&format!("/users/{ALICE}/contacts")).await.status != 200 {
            failed += 1;
        }
    }
    assert!((10..=50).contains(&failed), "{failed}");
    env.sim.set_faults(FaultConfig::none());
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contacts")).await.status,
        200
    );
}

#[tokio::test]
async fn devproxy_profile() {
    let env = env().await;
    env.sim.set_faults(FaultConfig {
        statuses: vec![429],
        ..FaultConfig::devproxy(1.0)
    });
    let r = env.get(&format!("/users/{ALICE}/contacts")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "5");
    assert_eq!(r.body["error"]["code"], "Too Many Requests");
    assert_eq!(r.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn devproxy_retry_after_plugin_throttles_the_key_until_it_elapses() {
    let env = env().await;
    env.sim.set_faults(FaultConfig {
        statuses: vec![429],
        retry_after: RetryAfter::Integer(1),
        path_contains: Some("/contacts".into()),
        ..FaultConfig::devproxy(1.0)
    });
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contacts")).await.status,
        429
    );
    // Random faults only hit /contacts; the plugin blocks the whole key ("users", the segment after /v1.0).
    let early = env.get(&format!("/users/{BOB}/contactFolders")).await;
    assert_eq!(early.status, 429);
    assert_eq!(early.headers["retry-after"], "1");
    assert!(
        early.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Throttling on users"),
        "{}",
        early.body
    );
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        env.get(&format!("/users/{BOB}/contactFolders"))
            .await
            .status,
        200,
        "after Retry-After"
    );
}
