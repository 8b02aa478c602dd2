use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use crate::support::*;
use graphsim::{SimConfig, ThrottleConfig};

#[tokio::test]
async fn more_than_four_concurrent_requests_get_429_with_the_exact_body() {
    let env = env_with(SimConfig {
        latency: Duration::from_millis(800),
        ..SimConfig::default()
    })
    .await;
    let path = format!("/users/{ALICE}/contacts");
    let results = join_all((0..8).map(|_| env.get(&path))).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let throttled: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, throttled.len()), (4, 4));
    for r in throttled {
        assert_eq!(r.headers["retry-after"], "1");
        let e = &r.body["error"];
        assert_eq!(e["code"], "ApplicationThrottled");
        assert_eq!(
            e["message"],
            "Application is over its MailboxConcurrency limit."
        );
        assert!(e["innerError"]["request-id"].is_string());
        assert!(e["innerError"]["date"].is_string());
    }
    let stats = env.sim.stats().mailbox(ALICE);
    assert_eq!((stats.requests, stats.throttled), (8, 4));
    assert!(stats.peak_in_flight >= 5, "{stats:?}");
}

#[tokio::test]
async fn other_mailboxes_are_unaffected_by_concurrency() {
    let env = env_with(SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let alice = format!("/users/{ALICE}/contacts");
    let bob = format!("/users/{BOB}/contacts");
    let mut calls: Vec<_> = (0..4).map(|_| env.get(&alice)).collect();
    calls.extend((0..4).map(|_| env.get(&bob)));
    let results = join_all(calls).await;
    assert!(results.iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn a_burst_over_the_window_gets_429_and_retry_after_when_honoured_succeeds() {
    let throttle = ThrottleConfig {
        requests_per_window: 5,
        window: Duration::from_secs(3),
        max_in_flight: 4,
    };
    let env = env_with(SimConfig {
        throttle,
        ..SimConfig::default()
    })
    .await;
    let path = format!("/users/{ALICE}/contacts");
    for _ in 0..5 {
        assert_eq!(env.get(&path).await.status, 200);
    }
    let throttled = env.get(&path).await;
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.body["error"]["code"], "ApplicationThrottled");
    let retry: u64 = throttled.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("integer seconds");
    assert!((1..=3).contains(&retry), "{retry}");
    // Another mailbox of the same app is unaffected; so is the tenant-level /users key.
    assert_eq!(env.get(&format!("/users/{BOB}/contacts")).await.status, 200);
    assert_eq!(env.get("/users").await.status, 200);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(
        env.get(&path).await.status,
        200,
        "honouring Retry-After succeeds"
    );
    assert_eq!(
        env.sim.stats().early_retries,
        0,
        "a client that waited is not early"
    );
}

#[tokio::test]
async fn requests_before_retry_after_has_run_out_are_early_retries_of_that_mailbox() {
    let throttle = ThrottleConfig {
        requests_per_window: 2,
        window: Duration::from_secs(30),
        max_in_flight: 4,
    };
    let env = env_with(SimConfig {
        throttle,
        ..SimConfig::default()
    })
    .await;
    let path = format!("/users/{ALICE}/contacts");
    for _ in 0..2 {
        assert_eq!(env.get(&path).await.status, 200);
    }
    assert_eq!(
        env.sim.stats().early_retries,
        0,
        "no 429 yet, nothing early"
    );
    assert_eq!(env.get(&path).await.status, 429);
    // The 429 said to wait about 30 s; two more calls right away are early, Bob's is not.
    env.get(&path).await;
    env.get(&path).await;
    assert_eq!(env.get(&format!("/users/{BOB}/contacts")).await.status, 200);
    let stats = env.sim.stats();
    assert_eq!(stats.mailbox(ALICE).early_retries, 2);
    assert_eq!(stats.mailbox(BOB).early_retries, 0);
    assert_eq!(stats.early_retries, 2);
}

#[tokio::test]
async fn throttled_requests_count_so_hammering_prolongs_throttling() {
    let throttle = ThrottleConfig {
        requests_per_window: 3,
        window: Duration::from_secs(3),
        max_in_flight: 4,
    };
    let env = env_with(SimConfig {
        throttle,
        ..SimConfig::default()
    })
    .await;
    let path = format!("/users/{ALICE}/contacts");
    for _ in 0..3 {
        assert_eq!(env.get(&path).await.status, 200);
    }
    // Keep calling while throttled: every call counts.
    let mut throttled = 0;
    for _ in 0..6 {
        if env.get(&path).await.status == 429 {
            throttled += 1;
        }
    }
    assert_eq!(throttled, 6);
    assert_eq!(env.sim.stats().mailbox(ALICE).throttled, 6);
    let retry: u64 = env.get(&path).await.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(env.get(&path).await.status, 200);
}

#[tokio::test]
async fn batch_items_are_counted_and_throttled_individually() {
    let throttle = ThrottleConfig {
        requests_per_window: 3,
        window: Duration::from_secs(60),
        max_in_flight: 4,
    };
    let env = env_with(SimConfig {
        throttle,
        ..SimConfig::default()
    })
    .await;
    let requests: Vec<_> = (0..5)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{ALICE}/contacts"), "dependsOn": if i > 0 { json!([(i - 1).to_string()]) } else { json!([]) }}))
        .collect();
    let r = env.post("/$batch", json!({"requests": requests})).await;
    assert_eq!(r.status, 200);
    let statuses: Vec<u64> = r.body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 424]);
    let item = &r.body["responses"][3];
    assert!(item["headers"]["Retry-After"].is_string());
    assert_eq!(item["body"]["error"]["code"], "ApplicationThrottled");
    assert_eq!(
        env.sim.stats().mailbox(ALICE).requests,
        4,
        "the 424 item never ran"
    );
}

#[tokio::test]
async fn items_of_an_envelope_sent_before_the_429_are_not_early_but_the_next_request_is() {
    let throttle = ThrottleConfig {
        requests_per_window: 2,
        window: Duration::from_secs(30),
        max_in_flight: 4,
    };
    let env = env_with(SimConfig {
        throttle,
        ..SimConfig::default()
    })
    .await;
    let requests: Vec<_> = (0..6)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{ALICE}/contacts")}))
        .collect();
    let r = env.post("/$batch", json!({"requests": requests})).await;
    assert_eq!(r.status, 200);
    let throttled = r.body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["status"] == 429)
        .count();
    assert_eq!(throttled, 4);
    assert_eq!(
        env.sim.stats().early_retries,
        0,
        "the whole envelope was sent before any 429"
    );
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contacts")).await.status,
        429
    );
    let stats = env.sim.stats();
    assert_eq!(stats.early_retries, 1);
    assert!(stats.early_retry_max_lateness_ms < 30_000.0, "{stats:?}");
}
