//! Throughput benchmark: drives an in-process graphsim from reqwest clients over loopback, with the
//! default throttle model on (10,000 requests / 600 s and 4 in flight per app and mailbox), and prints
//! requests per second.
//!
//! `cargo run --release -p graphsim --example graphsim-bench -- [SECONDS] [CLIENTS] [MAILBOXES]`
//! (defaults 10, 32, 64). Each client reads single contacts of its own mailboxes in a loop
//! (`GET /v1.0/users/{upn}/contacts/{id}`), so the per-mailbox limits are never the bottleneck and the
//! figure measures the simulator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graphsim::{SimConfig, TenantSeed, UserSeed};
use serde_json::{json, Value};

const TENANT: &str = "bench.onmicrosoft.com";

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let seconds = arg(1, 10);
    let clients = arg(2, 32) as usize;
    let mailboxes = arg(3, 64) as usize;
    let sim = graphsim::spawn(SimConfig {
        request_log_capacity: 10_000,
        ..SimConfig::default()
    })
    .await
    .expect("graphsim starts");
    sim.add_tenant(TenantSeed::new(TENANT, "bench-app", "bench-secret"));
    let mut targets = Vec::new();
    for m in 0..mailboxes {
        let upn = format!("user{m}@{TENANT}");
        sim.add_user(TENANT, UserSeed::member(&upn, &format!("User {m}")));
        for c in 0..10 {
            let id = sim.add_contact(TENANT, &upn, None, json!({"displayName": format!("Contact {c}"), "emailAddresses": [{"address": format!("c{c}@example.com")}]}));
            let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
            targets.push(format!(
                "{}/v1.0/users/{upn}/contacts/{encoded}",
                sim.graph_url()
            ));
        }
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let token: Value = http
        .post(format!(
            "{}/{TENANT}/oauth2/v2.0/token",
            sim.authority_url()
        ))
        .form(&[
            ("client_id", "bench-app"),
            ("client_secret", "bench-secret"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let token = Arc::new(
        token["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned(),
    );
    let targets = Arc::new(targets);
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, token, targets, ok, other) = (
                http.clone(),
                Arc::clone(&token),
                Arc::clone(&targets),
                Arc::clone(&ok),
                Arc::clone(&other),
            );
            tokio::spawn(async move {
                // Client c owns mailboxes c, c + clients, ...: one request in flight per mailbox.
                let mine: Vec<&String> = targets
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (i / 10) % clients == c)
                    .map(|(_, t)| t)
                    .collect();
                let mut i = 0;
                while Instant::now() < deadline && !mine.is_empty() {
                    let resp = http
                        .get(mine[i % mine.len()])
                        .bearer_auth(token.as_str())
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let other = other.load(Ordering::Relaxed);
    let stats = sim.stats();
    let peak = stats
        .mailboxes
        .values()
        .map(|m| m.peak_in_flight)
        .max()
        .unwrap_or(0);
    println!(
        "graphsim-bench: {ok} ok + {other} other responses in {elapsed:.1} s = {:.0} requests/s ({clients} clients, {mailboxes} mailboxes, throttling on: 10000/600s, 4 in flight; 429s: {}; peak in flight per mailbox: {peak})",
        (ok + other) as f64 / elapsed,
        stats.throttled
    );
}
