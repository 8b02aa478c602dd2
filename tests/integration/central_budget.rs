//! The shared (central) mailbox's budget held by the whole fleet (issue 13): however many worker processes read
//! the central folder for their phase-2 jobs, the shared mailbox never has more than 4 requests in flight.

use std::time::Duration;

use graphsim::{EstateParams, SimConfig};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use worker::leases::BrokerLeases;

use crate::fleet::{
    assert_only_unreachable_failed, broker_args, embedded_args, run, snapshot, total,
};
use crate::support::{self, Estate, BROKER};

/// Worker processes: one more than the mailbox's 4 in flight, so their phase-2 reads of the central folder (one
/// page at a time each) overlap beyond the limit as soon as they start together.
const WORKERS: usize = 5;

/// Five worker processes, each with its own Graph client and so its own limit of 4 per mailbox, start a run's
/// phase-2 jobs together and each reads the central folder (two pages): graphsim sees at most 4 requests in flight on
/// the shared mailbox and answers it no 429, and every mailbox ends as in the embedded run.
///
/// Failed before the central lease (`worker/src/leases.rs`): the five reads overlapped, graphsim saw 5 in
/// flight on the shared mailbox and answered 429 `MailboxConcurrency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_worker_processes_keep_the_shared_mailbox_within_4_in_flight() {
    let _broker = BROKER.read().await;
    let params = EstateParams {
        tenants: 1,
        users_per_tenant: 12,
        contacts_per_user: 400,
        overlap: 0.0,
        seed: 1313,
    };
    let embedded = Estate::seed(SimConfig::default(), params.clone()).await;
    let report = run(&embedded.settings(), &embedded_args()).await;
    assert_only_unreachable_failed(&report, &embedded);

    // Latency makes each page read last, so the processes' reads overlap.
    let brokered = Estate::seed(
        SimConfig {
            latency: Duration::from_millis(40),
            ..SimConfig::default()
        },
        params,
    )
    .await;
    let settings = brokered.settings();
    let topology = support::private_topology();
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("central-{i}")))
        .collect();
    let report = run(&settings, &broker_args(&topology)).await;
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    assert_only_unreachable_failed(&report, &brokered);

    let stats = brokered.sim.stats();
    let shared = brokered.tenants[0].shared_mailbox_upn.to_lowercase();
    let central = stats
        .mailboxes
        .get(&shared)
        .expect("the shared mailbox was used");
    assert!(
        central.peak_in_flight <= 4,
        "the shared mailbox had {} requests in flight at once (429s: {})",
        central.peak_in_flight,
        central.throttled
    );
    assert_eq!(central.throttled, 0, "the shared mailbox was answered 429");
    let central_contacts = brokered
        .sim
        .contacts(
            &brokered.tenants[0].tenant_id,
            &shared,
            Some("All Contacts"),
        )
        .len();
    assert!(
        central_contacts > 1000,
        "{central_contacts} central contacts fit one page: the reads are too short to overlap, the test proves nothing"
    );

    // Same seed, same rules: identical mailboxes whichever transport ran the jobs.
    assert_eq!(
        snapshot(&embedded, "All Contacts"),
        snapshot(&brokered, "All Contacts")
    );
}

/// A quiet re-run costs the shared mailbox no more requests with five worker processes than with one: a phase-2
/// job that phase 1 found in line is skipped from the job alone, so a worker process whose jobs all skip never
/// resolves the central folder.
///
/// Failed before (`Job::in_line_report`, applied by the producer and the worker): every worker process that took a job resolved the
/// shared mailbox and its folder first (two requests each, one process after another under the central lease).
/// (The one process was the embedded mode's until its workers took the producer's resolution, `JobRunner::knows`,
/// which a broker's workers never do: the same fleet with one worker process now.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_rerun_costs_the_shared_mailbox_no_more_on_five_processes_than_on_one() {
    let _broker = BROKER.read().await;
    let params = EstateParams {
        tenants: 1,
        // Users 9 and 13 of a seeded tenant have no usable mailbox (their jobs fail with a request, after the
        // trust check); nine users keep every job of the quiet run skippable.
        users_per_tenant: 9,
        contacts_per_user: 3,
        overlap: 0.0,
        seed: 2424,
    };
    let skipped = |report: &RunReport| total(report, |c| c.mailboxes_unchanged);
    let with_state = |args: RunArgs, dir: &std::path::Path| RunArgs {
        state_dir: Some(dir.to_owned()),
        ..args
    };
    // A first run and a quiet one with `processes` worker processes (new ones for each run, as after KEDA scaled
    // the pool to zero between nightly runs: nothing resolved yet); the shared mailbox's requests and the
    // mailboxes skipped in the quiet run.
    let quiet_rerun = |processes: usize| {
        let params = params.clone();
        async move {
            let estate = Estate::seed(SimConfig::default(), params).await;
            let settings = estate.settings();
            let topology = support::private_topology();
            let state = support::scratch_dir("quiet-broker");
            let args = with_state(broker_args(&topology), &state);
            let fleet = |run_name: &str| -> Vec<_> {
                (0..processes)
                    .map(|i| {
                        support::spawn_worker(&settings, &topology, &format!("{run_name}-{i}"))
                    })
                    .collect()
            };
            let workers = fleet("first");
            let first = run(&settings, &args).await;
            support::stop_workers(workers).await;
            assert_only_unreachable_failed(&first, &estate);
            let workers = fleet("quiet");
            estate.sim.reset_stats();
            let quiet = run(&settings, &args).await;
            support::stop_workers(workers).await;
            support::delete_topology(&topology).await;
            assert_only_unreachable_failed(&quiet, &estate);
            assert_eq!(estate.sim.stats().total_writes(), 0, "a quiet run wrote");
            let shared = estate.tenants[0].shared_mailbox_upn.to_lowercase();
            let requests = estate
                .sim
                .stats()
                .mailboxes
                .get(&shared)
                .map_or(0, |m| m.requests);
            std::fs::remove_dir_all(&state).ok();
            (requests, skipped(&quiet))
        }
    };
    let (one_process, skipped_by_one) = quiet_rerun(1).await;
    let (five_processes, skipped_by_five) = quiet_rerun(WORKERS).await;
    assert!(
        skipped_by_one >= 5,
        "only {skipped_by_one} mailboxes were skipped"
    );
    assert_eq!(skipped_by_five, skipped_by_one, "mailboxes skipped");
    assert!(
        five_processes <= one_process,
        "a quiet run sent the shared mailbox {five_processes} requests with five worker processes, {one_process} with one"
    );
}

/// A worker process resolves a tenant's central folder once, however many of its jobs start together: the jobs a
/// process takes at once (a run's first batch, all published together) wait for one resolution and use it.
///
/// Failed before the fix (`trust::Locations::turn`): each job that started before the first resolution was kept
/// resolved again, so a fresh process taking its slots' worth of phase-2 jobs sent the shared mailbox that many
/// folder lookups.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_starting_together_in_a_process_resolve_the_central_folder_once() {
    let _broker = BROKER.read().await;
    let params = EstateParams {
        tenants: 1,
        users_per_tenant: 18,
        contacts_per_user: 2,
        overlap: 0.0,
        seed: 1818,
    };
    // Latency makes each lookup last, so jobs starting together overlap it.
    let estate = Estate::seed(
        SimConfig {
            latency: Duration::from_millis(30),
            ..SimConfig::default()
        },
        params,
    )
    .await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let processes = 2;
    let workers: Vec<_> = (0..processes)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("resolve-{i}")))
        .collect();
    let report = run(&settings, &broker_args(&topology)).await;
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    assert_only_unreachable_failed(&report, &estate);
    // Lookups of the central folder by its name ("All Contacts", however the query encodes the space).
    let lookups = estate
        .sim
        .request_log()
        .iter()
        .filter(|r| {
            let url = r.url.to_lowercase().replace("%20", " ").replace('+', " ");
            r.method == "GET" && url.contains("/contactfolders?") && url.contains("all contacts")
        })
        .count();
    assert!(lookups >= 1, "no lookup of the central folder was logged");
    // The producer's own lookup, and one per worker process.
    assert!(
        lookups <= 1 + processes,
        "{lookups} lookups of the central folder by the producer and {processes} worker processes"
    );
}

/// A process that took a tenant's central leases and died (its connection gone, as when the pod is killed) does
/// not block the others: the broker drops the leases with the connection and the next process takes one.
///
/// Would fail if a lease outlived its holder's connection (the second `hold` waiting for ever) or if a dropped
/// lease were not given back (the third holder never taking it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_that_dies_does_not_block_the_others() {
    let _broker = BROKER.read().await;
    let topology = support::private_topology();
    let tenant = "contoso.onmicrosoft.com";
    // The dying process holds every one of the tenant's leases.
    let dying_name = format!("dying-{}", uuid::Uuid::new_v4().simple());
    let dying = shared::mq::connect(&support::amqp_url(), &dying_name)
        .await
        .expect("RabbitMQ must run at AMQP_URL");
    let dying_url = crate::redelivery::connection_url(&dying_name).await;
    for slot in 0..worker::leases::CENTRAL_READERS {
        let queue = topology.central_lease_queue(tenant, slot);
        assert!(
            shared::mq::take_lease(&dying, &queue).await.expect("lease"),
            "the lease was free"
        );
    }
    // The survivor takes the first free one, slot 0.
    let queue = topology.central_lease_queue(tenant, 0);
    let leases = BrokerLeases::new(support::amqp_url(), topology.clone(), "survivor");
    let waiting = tokio::spawn(async move {
        let held = leases.hold(tenant).await.expect("lease taken");
        drop(held);
        leases
    });
    // The holder is alive: the other process waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the lease was taken twice");

    // The holder dies: the broker sees its connection go (closed from the broker's side, as when the pod's socket
    // goes; no close handshake of the holder's), and the waiting process gets the lease.
    crate::redelivery::close_connection(dying_url).await;
    let leases = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the lease was freed with its holder's connection")
        .expect("task");

    // Released on drop: a third holder takes it at once, and then the one before waits again.
    let third = support::connect().await;
    let mut taken = false;
    for _ in 0..100 {
        if shared::mq::take_lease(&third, &queue).await.expect("ask") {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "a dropped lease was never released");
    drop(leases);
    let _ = shared::mq::close_connection(&third, "done").await;
}
