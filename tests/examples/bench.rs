//! The benchmark harness: real embedded syncs against graphsim, judged against Graph's throttling floor and
//! against the PowerShell script's request pattern for the same estate.
//!
//! `cargo run --release -p contactmirror-tests --example bench -- [USERS] [CONTACTS] [TENANTS] [WORKERS]`
//! (defaults 200, 20, 1, 8). Writes `bench-out/bench.json` and prints a table. Time-scaled profile: each mailbox
//! gets Graph's rate (10,000 requests per 600 s = 16.7/s) over a 6 s window (100 requests per 6 s), 4 in flight,
//! and graphsim answers every request after 2 ms.

use std::time::{Duration, Instant};

use graphsim::{EstateParams, SimConfig, ThrottleConfig};
use producer::cli::RunArgs;
use serde_json::json;

/// The time-scaled per-mailbox budget: Graph's rate over a short window.
const BUDGET: u32 = 100;
const WINDOW: Duration = Duration::from_secs(6);
const LATENCY: Duration = Duration::from_millis(2);

struct Measured {
    scenario: &'static str,
    wall: Duration,
    requests: u64,
    max_per_mailbox: u64,
    mean_per_mailbox: f64,
    writes: u64,
    throttled: u64,
    peak_in_flight: u32,
    floor: Duration,
    mailboxes: usize,
}

fn measure(scenario: &'static str, sim: &graphsim::Sim, wall: Duration) -> Measured {
    let stats = sim.stats();
    let per: Vec<u64> = stats.mailboxes.values().map(|m| m.requests).collect();
    let max = per.iter().copied().max().unwrap_or(0);
    // A mailbox can do BUDGET requests per WINDOW (the first BUDGET at once) and 4 at a time; the busiest one
    // bounds the whole run.
    let by_budget =
        WINDOW.mul_f64(max.saturating_sub(u64::from(BUDGET)) as f64 / f64::from(BUDGET));
    let by_concurrency = LATENCY.mul_f64(max as f64 / 4.0);
    let floor = by_budget.max(by_concurrency);
    Measured {
        scenario,
        wall,
        requests: stats.graph_operations,
        max_per_mailbox: max,
        mean_per_mailbox: per.iter().sum::<u64>() as f64 / per.len().max(1) as f64,
        writes: stats.total_writes(),
        throttled: stats.throttled,
        peak_in_flight: stats
            .mailboxes
            .values()
            .map(|m| m.peak_in_flight)
            .max()
            .unwrap_or(0),
        floor,
        mailboxes: per.len(),
    }
}

/// Requests the replaced PowerShell script sends for the same estate (`../shared/docs/anchors.md`): one request
/// at a time, 100 per page, the central folder re-read for every user in both steps, one request per write.
fn script_requests(users: u64, contacts: u64, central: u64, writes: u64) -> u64 {
    let pages = |n: u64| n.div_ceil(100).max(1);
    let step1 = users * (pages(contacts) + pages(central));
    let step2 = users * (pages(central) + pages(contacts + central));
    1 + users.div_ceil(100) + step1 + step2 + writes
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (users, contacts, tenants, workers) = (arg(1, 200), arg(2, 20), arg(3, 1), arg(4, 8));
    let sim = graphsim::spawn(SimConfig {
        throttle: ThrottleConfig {
            requests_per_window: BUDGET,
            window: WINDOW,
            max_in_flight: 4,
        },
        latency: LATENCY,
        ..SimConfig::default()
    })
    .await?;
    let seeded = graphsim::seed_estate(
        &sim,
        EstateParams {
            tenants,
            users_per_tenant: users,
            contacts_per_user: contacts,
            overlap: 0.2,
            seed: 9,
        },
    );
    let document = json!({
        "MicrosoftTenants": seeded.iter().map(|t| json!({
            "TenantId": t.tenant_id, "ClientId": t.client_id, "ClientSecret": t.client_secret,
            "GlobalAddressBookUserId": t.shared_mailbox_upn,
            "AuthorityHost": sim.authority_url(), "GraphEndpoint": sim.graph_url(),
        })).collect::<Vec<_>>(),
        "RequestsPerWindow": BUDGET, "WindowSeconds": WINDOW.as_secs(),
    })
    .to_string();
    let env =
        move |name: &str| (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| document.clone());
    let settings = shared::config::Settings::from_sources(&env, None)?;
    let args = RunArgs {
        workers,
        ..RunArgs::embedded_default()
    };

    let mut rows = Vec::new();
    for scenario in ["initial sync", "re-run, no change", "re-run, 1% new"] {
        if scenario == "re-run, 1% new" {
            for t in &seeded {
                let n = (t.mirror_target_upns.len() * contacts).div_ceil(100);
                for i in 0..n {
                    let user = &t.mirror_target_upns[i % t.mirror_target_upns.len()];
                    sim.add_contact(
                        &t.tenant_id,
                        user,
                        None,
                        json!({"displayName": format!("New Person {i}"),
                               "emailAddresses": [{"address": format!("new.{i}@example.org")}]}),
                    );
                }
            }
        }
        sim.reset_stats();
        // Let the previous scenario's requests leave every mailbox's window.
        tokio::time::sleep(WINDOW).await;
        let started = Instant::now();
        let report = producer::run::execute(&settings, &args).await?;
        rows.push((measure(scenario, &sim, started.elapsed()), report));
    }

    let central: u64 = seeded
        .iter()
        .map(|t| {
            sim.contacts(&t.tenant_id, &t.shared_mailbox_upn, Some("All Contacts"))
                .len() as u64
        })
        .max()
        .unwrap_or(0);
    let targets: u64 = seeded
        .iter()
        .map(|t| t.mirror_target_upns.len() as u64)
        .sum();
    println!(
        "contactmirror bench: {tenants} tenant(s) x {users} users x {contacts} contacts, {workers} in-process workers; budget {BUDGET}/{}s per \
         mailbox, 4 in flight, {} ms latency",
        WINDOW.as_secs(),
        LATENCY.as_millis()
    );
    println!(
        "{:<20} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8} {:>7} {:>6} {:>5} {:>10} {:>11}",
        "scenario",
        "wall s",
        "floor s",
        "ratio",
        "requests",
        "max/mbx",
        "mean/mbx",
        "writes",
        "429s",
        "peak",
        "script req",
        "script s"
    );
    let mut json_rows = Vec::new();
    for (m, _report) in &rows {
        let script = script_requests(targets, contacts as u64, central, m.writes);
        // The script sends one request at a time: at best one latency each, and never faster than the budget
        // of the central mailbox it re-reads.
        let script_time = LATENCY.mul_f64(script as f64);
        let ratio = m.wall.as_secs_f64() / m.floor.as_secs_f64().max(0.001);
        println!(
            "{:<20} {:>8.1} {:>8.1} {:>6.2} {:>9} {:>8} {:>8.1} {:>7} {:>6} {:>5} {:>10} {:>11.1}",
            m.scenario,
            m.wall.as_secs_f64(),
            m.floor.as_secs_f64(),
            ratio,
            m.requests,
            m.max_per_mailbox,
            m.mean_per_mailbox,
            m.writes,
            m.throttled,
            m.peak_in_flight,
            script,
            script_time.as_secs_f64()
        );
        json_rows.push(json!({
            "scenario": m.scenario, "wallSeconds": m.wall.as_secs_f64(), "floorSeconds": m.floor.as_secs_f64(),
            "requests": m.requests, "maxPerMailbox": m.max_per_mailbox, "meanPerMailbox": m.mean_per_mailbox,
            "writes": m.writes, "throttled": m.throttled, "peakInFlight": m.peak_in_flight,
            "mailboxes": m.mailboxes, "scriptRequests": script,
        }));
    }
    std::fs::create_dir_all("bench-out")?;
    let out = json!({"users": users, "contacts": contacts, "tenants": tenants, "rows": json_rows,
                     "budget": {"requests": BUDGET, "windowSeconds": WINDOW.as_secs()}});
    std::fs::write("bench-out/bench.json", serde_json::to_vec_pretty(&out)?)?;
    println!("wrote bench-out/bench.json");
    Ok(())
}
