//! Graph's app-wide ceiling (130,000 requests per 10 s per app, across all tenants) held by the whole fleet.

use std::sync::Arc;
use std::time::Duration;

use graphsim::{EstateParams, SimConfig};
use shared::graph::{ClientOptions, GraphClient};
use tokio_util::sync::CancellationToken;
use worker::consumer::Worker;
use worker::job::JobRunner;

use crate::fleet::{assert_only_unreachable_failed, broker_args, run};
use crate::support::{self, Estate, BROKER};

/// The ceiling the workers are told (scaled down from Graph's 130,000 so a small estate reaches it).
const CEILING: u32 = 200;
/// graphsim's ceiling: the workers' plus room for the producer's own few requests (users, folders), which are
/// not part of the workers' shares.
const SIM_CEILING: u32 = 230;

/// Two worker processes, each able to spend the whole ceiling alone, share it: graphsim never refuses a request
/// for the app's global limit and never counts more than its ceiling in 10 s.
///
/// Failed before each worker kept `1 / processes` of the ceiling: each kept all of it, the two together sent
/// about twice the ceiling per 10 s in phase 2, and graphsim refused requests with 429 `TooManyRequests`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_worker_processes_stay_within_the_apps_ceiling_together() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 10,
            contacts_per_user: 16,
            overlap: 0.0,
            seed: 131,
        },
    )
    .await;
    estate
        .sim
        .set_app_limit(SIM_CEILING, Duration::from_secs(10));
    let settings = estate.settings();
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let options = ClientOptions {
                app_requests_per_10_seconds: CEILING,
                ..ClientOptions::default()
            };
            let graph = GraphClient::new(options).expect("graph client");
            let runner = Arc::new(JobRunner::new(graph.clone(), Arc::new(settings.clone())));
            let worker = Worker::new(
                support::worker_config(&topology, &format!("app-budget-{i}"), 4),
                runner,
            );
            let stop = CancellationToken::new();
            let handle = tokio::spawn({
                let stop = stop.clone();
                async move { worker.run(stop).await.expect("worker runs") }
            });
            (stop, handle, graph)
        })
        .collect();
    // Each worker learns the fleet's size when it starts consuming and every few seconds after; the test is
    // about two processes sharing the ceiling, not about one that starts while the other already runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !workers.iter().all(|(_, _, graph)| graph.fleet_size() == 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workers never counted each other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = run(&settings, &broker_args(&topology)).await;
    support::stop_workers(
        workers
            .into_iter()
            .map(|(stop, handle, _)| (stop, handle))
            .collect(),
    )
    .await;
    support::delete_topology(&topology).await;
    assert_only_unreachable_failed(&report, &estate);
    let requests = estate.sim.stats().graph_operations;
    assert!(
        requests > u64::from(SIM_CEILING * 3 / 2),
        "the sync made {requests} requests: too few to reach the ceiling, the test proves nothing"
    );
    assert_eq!(
        estate.sim.app_refusals(),
        0,
        "graphsim refused requests for the app's global limit (peak {} in 10 s)",
        estate.sim.app_peak()
    );
    assert!(estate.sim.app_peak() <= u64::from(SIM_CEILING));
}
