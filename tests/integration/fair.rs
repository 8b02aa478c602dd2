//! Fair tenants (issue 13): a large tenant's jobs no longer hold a small tenant's behind them, in one run and
//! across runs on one broker, and the mailboxes end as when each tenant runs alone.
//!
//! The order is read from graphsim's request log: with one job slot, jobs run one after another, so the writes
//! into a user's mailbox mark when its phase-2 job ran. No timing is asserted.

use std::num::NonZeroUsize;
use std::time::Duration;

use graphsim::{EstateParams, LoggedRequest, SimConfig};
use producer::cli::RunArgs;
use shared::config::Settings;
use shared::mq::Topology;
use tokio_util::sync::CancellationToken;
use worker::consumer::{Worker, WorkerConfig};

use crate::fleet::{self, assert_only_unreachable_failed, broker_args, embedded_args, snapshot};
use crate::support::{self, Estate, BROKER};

/// Users of each small tenant (the large one keeps every seeded user): as many as the per-tenant limit of
/// [`fair_broker_args`], so a small tenant's phase-2 jobs all go out when its phase 1 ends, in one turn. With more,
/// each further turn waits for a report to reach the producer while the one job slot takes the next large job,
/// and how many went ahead depended on the machine's load (seen: 6 of 10 under a loaded CI run).
const SMALL_USERS: usize = 2;

/// One large tenant (index 0) and `tenants - 1` small ones.
fn params(tenants: usize, seed: u64) -> EstateParams {
    EstateParams {
        tenants,
        // Not 16: graphsim's 16th user shares an earlier user's mail, so a `TestUserList` entry naming that mail
        // would select nobody (an ambiguous entry is only warned about).
        users_per_tenant: 15,
        contacts_per_user: 4,
        overlap: 0.0,
        seed,
    }
}

/// A graphsim slow enough (20 ms per request) that the large tenant's jobs are not over before the next run
/// has prepared.
async fn seed(tenants: usize, seed: u64) -> Estate {
    let config = SimConfig {
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    };
    Estate::seed(config, params(tenants, seed)).await
}

/// The small tenants narrowed to their first [`SMALL_USERS`] users by `TestUserList`.
fn settings(estate: &Estate) -> Settings {
    let mut document = estate.config_json();
    let entries = document["MicrosoftTenants"]
        .as_array_mut()
        .expect("a tenant list");
    for (entry, seeded) in entries.iter_mut().zip(&estate.tenants).skip(1) {
        entry["TestUserList"] = serde_json::json!(seeded.user_upns[..SMALL_USERS]);
    }
    support::settings_from(&document)
}

/// One worker process with one job slot, so jobs run in the order the queue hands them out, and `spare_slots`.
fn one_slot_worker(
    settings: &Settings,
    topology: &Topology,
    spare_slots: u16,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let config = WorkerConfig {
        spare_slots,
        ..support::worker_config(topology, "one-slot", 1)
    };
    let worker = Worker::new(config, support::runner(settings));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        worker.run(token).await.expect("worker runs");
    });
    (stop, handle)
}

async fn stop(worker: (CancellationToken, tokio::task::JoinHandle<()>)) {
    worker.0.cancel();
    tokio::time::timeout(Duration::from_secs(30), worker.1)
        .await
        .expect("worker stops")
        .expect("worker task");
}

/// Broker arguments with a small per-tenant limit: about twice the fleet's one job slot, as documented.
fn fair_broker_args(topology: &Topology, tenants: &[&str]) -> RunArgs {
    RunArgs {
        tenant_jobs: NonZeroUsize::new(2),
        tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
        ..broker_args(topology)
    }
}

fn is_write(entry: &LoggedRequest) -> bool {
    entry.method != "GET"
}

/// Log positions of the writes into each of `upns`'s own mailbox (each mailbox's, in log order).
fn writes_into<'a>(
    log: &'a [LoggedRequest],
    upns: &'a [String],
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    log.iter().filter(|e| is_write(e)).filter_map(move |e| {
        let mailbox = e.mailbox.as_deref()?;
        upns.iter()
            .find(|u| u.eq_ignore_ascii_case(mailbox))
            .map(|u| (u.as_str(), e.seq))
    })
}

/// The order check: how many of the large tenant's written mailboxes got their first write after the last write
/// into any small tenant's mailbox, out of how many it wrote.
fn large_mailboxes_after_the_small_tenants(estate: &Estate) -> (usize, usize) {
    let log = estate.sim.request_log();
    let small: Vec<String> = estate.tenants[1..]
        .iter()
        .flat_map(|t| t.user_upns[..SMALL_USERS].iter().cloned())
        .collect();
    let small_done = writes_into(&log, &small)
        .map(|(_, seq)| seq)
        .max()
        .expect("the small tenants' mailboxes were written");
    let mut first = std::collections::BTreeMap::new();
    for (mailbox, seq) in writes_into(&log, &estate.tenants[0].user_upns) {
        first.entry(mailbox).or_insert(seq);
    }
    let after = first.values().filter(|seq| **seq > small_done).count();
    (after, first.len())
}

/// At least `share` of the large tenant's mailboxes were written after the small tenants were done.
fn assert_small_tenants_not_behind(estate: &Estate, share: f64) {
    let (after, written) = large_mailboxes_after_the_small_tenants(estate);
    assert!(
        written >= 8,
        "the large tenant wrote only {written} mailboxes"
    );
    // FIFO dispatch runs every large job queued first (none after); fair dispatch lets at most the limit of
    // them go ahead of each small job.
    assert!(
        after > 0 && after as f64 >= share * written as f64,
        "the small tenants finished after {} of the large tenant's {written} mailboxes: they waited behind it",
        written - after
    );
}

/// Fails on FIFO dispatch: every large phase-2 job was queued before the small tenants' phase 1 ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_rabbitmq_one_runs_small_tenants_are_not_all_behind_the_large_one() {
    let _broker = BROKER.read().await;
    let estate = seed(3, 1301).await;
    let settings = settings(&estate);
    let topology = support::private_topology();
    let worker = one_slot_worker(&settings, &topology, 0);
    let report = fleet::run(&settings, &fair_broker_args(&topology, &[])).await;
    stop(worker).await;
    support::delete_topology(&topology).await;
    assert!(report.tenants.iter().all(|t| t.error.is_none()));
    assert_small_tenants_not_behind(&estate, 0.5);
}

/// Fails on FIFO dispatch (the embedded channel took every job at once, in submission order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_one_runs_small_tenants_are_not_all_behind_the_large_one() {
    let estate = seed(3, 1302).await;
    let settings = settings(&estate);
    let args = RunArgs {
        workers: 1,
        ..embedded_args()
    };
    let report = fleet::run(&settings, &args).await;
    assert!(report.tenants.iter().all(|t| t.error.is_none()));
    assert_small_tenants_not_behind(&estate, 0.5);
}

/// The large tenant's run starts first (its CronJob); the small tenants' runs start once its phase 2 has begun.
/// Every run keeps the default per-tenant limit, so the large run queues all its phase-2 jobs at once. Fails
/// without lanes (every run's jobs in one first-in-first-out queue: the small runs' jobs behind all of the large
/// run's) and on a worker that does not take the lanes in turn. The mailboxes then end as when each tenant ran
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_rabbitmq_runs_started_after_a_large_one_are_not_behind_it_and_end_as_alone() {
    let _broker = BROKER.read().await;
    let estate = seed(3, 1303).await;
    small_runs_after_a_large_one(&estate, 0).await;
    // The small runs prepare and run phase 1 while the large run goes on, so only some of it is left.
    assert_small_tenants_not_behind(&estate, 0.0);

    assert_ends_as_each_tenant_alone(&estate, seed(3, 1303).await).await;
}

/// A small tenant's run started while the large tenant's job holds the worker's one slot runs in its spare slot
/// at once: writes into its mailboxes come between the first and last write of a large job (fails with no spare
/// slot: with one slot, jobs run one after another), while the large tenant alone kept to its one slot. The
/// mailboxes then end as when each tenant ran alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_rabbitmq_a_run_started_while_long_jobs_hold_every_slot_starts_in_a_spare_slot() {
    let _broker = BROKER.read().await;
    let estate = seed(2, 1305).await;
    small_runs_after_a_large_one(&estate, 1).await;

    let log = estate.sim.request_log();
    let mut large_jobs = std::collections::BTreeMap::<&str, (u64, u64)>::new();
    for (mailbox, seq) in writes_into(&log, &estate.tenants[0].user_upns) {
        let span = large_jobs.entry(mailbox).or_insert((seq, seq));
        span.1 = seq;
    }
    let small = &estate.tenants[1].user_upns[..SMALL_USERS];
    let small_writes: Vec<u64> = writes_into(&log, small).map(|(_, seq)| seq).collect();
    assert!(
        !small_writes.is_empty(),
        "the small tenant was not mirrored"
    );
    let during = small_writes
        .iter()
        .filter(|seq| {
            large_jobs
                .values()
                .any(|(first, last)| first < *seq && *seq < last)
        })
        .count();
    assert!(
        during > 0,
        "none of the small tenant's {} writes came during one of the large tenant's {} jobs: it waited for a slot",
        small_writes.len(),
        large_jobs.len()
    );

    // Alone, the large tenant kept to its one slot: the jobs it started before the small one came ran one after
    // another. Two things keep it so: its lane's prefetch (a lone tenant is delivered no more jobs than its slots
    // take) and the spare rule (`turns::tests` checks the rule alone).
    let small_came = log
        .iter()
        .filter(|e| {
            e.mailbox
                .as_deref()
                .is_some_and(|m| small.iter().any(|u| u.eq_ignore_ascii_case(m)))
        })
        .map(|e| e.seq)
        .min()
        .expect("the small tenant's mailboxes were read");
    let mut alone: Vec<(u64, u64)> = large_jobs
        .values()
        .copied()
        .filter(|(first, _)| *first < small_came)
        .collect();
    alone.sort_unstable();
    assert!(
        alone.len() >= 2,
        "the large tenant wrote {} mailboxes alone",
        alone.len()
    );
    assert!(
        alone.windows(2).all(|pair| pair[0].1 < pair[1].0),
        "two of the large tenant's jobs ran at once while it was alone: {alone:?}"
    );

    assert_ends_as_each_tenant_alone(&estate, seed(2, 1305).await).await;
}

/// Runs the large tenant (index 0) alone, and once two of its mailboxes are written (its phase 2 is under way)
/// one run per small tenant, each in its phases' order; every run error-free, on a private topology consumed by
/// one worker with one job slot and `spare_slots`.
///
/// Phases in order: with one job slot an overlapped phase-2 job finds no place to wait for its phase 1 and is put
/// off for 5 s, behind whatever is queued then, which would reorder the jobs without any lane.
async fn small_runs_after_a_large_one(estate: &Estate, spare_slots: u16) {
    let settings = settings(estate);
    let topology = support::private_topology();
    let worker = one_slot_worker(&settings, &topology, spare_slots);
    let ids: Vec<String> = estate.tenants.iter().map(|t| t.tenant_id.clone()).collect();
    let run_args = |tenant: &str| RunArgs {
        tenants: vec![tenant.to_owned()],
        ordered_phases: true,
        ..broker_args(&topology)
    };
    let large = {
        let settings = settings.clone();
        let args = run_args(&ids[0]);
        tokio::spawn(async move { fleet::run(&settings, &args).await })
    };
    let large_users = estate.tenants[0].user_upns.clone();
    // Two of its mailboxes written: its phase 2 is under way (on FIFO dispatch, every phase-2 job is queued).
    let mut waited = 0;
    while writes_into(&estate.sim.request_log(), &large_users)
        .map(|(mailbox, _)| mailbox)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        < 2
    {
        assert!(waited < 3_000, "the large tenant's phase 2 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    let smalls = ids[1..].iter().map(|id| {
        let args = run_args(id);
        let settings = &settings;
        async move { fleet::run(settings, &args).await }
    });
    let small_reports = futures_util::future::join_all(smalls).await;
    let large_report = large.await.expect("the large run");
    stop(worker).await;
    support::delete_topology(&topology).await;
    for report in small_reports.iter().chain([&large_report]) {
        assert!(report.tenants.iter().all(|t| t.error.is_none()));
    }
}

/// `together`'s mailboxes equal those of `alone`, the same seed, after each of its tenants ran alone.
async fn assert_ends_as_each_tenant_alone(together: &Estate, alone: Estate) {
    let settings_alone = settings(&alone);
    for tenant in &alone.tenants {
        let args = RunArgs {
            tenants: vec![tenant.tenant_id.clone()],
            ..embedded_args()
        };
        let report = fleet::run(&settings_alone, &args).await;
        assert!(report.tenants.iter().all(|t| t.error.is_none()));
    }
    let together = snapshot(together, "All Contacts");
    assert!(
        together.values().any(|folder| !folder.is_empty()),
        "nothing was mirrored"
    );
    assert_eq!(together, snapshot(&alone, "All Contacts"));
}

/// Same seed, same rules: the mailboxes after one fair run over every tenant (two workers, one job of a tenant
/// out at a time) equal those after each tenant ran alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fair_run_over_every_tenant_ends_as_each_tenant_run_alone() {
    let _broker = BROKER.read().await;
    let together = seed(3, 1304).await;
    let alone = seed(3, 1304).await;

    let settings_together = settings(&together);
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings_together, &topology, &format!("fair{i}")))
        .collect();
    let args = RunArgs {
        tenant_jobs: NonZeroUsize::new(1),
        ..broker_args(&topology)
    };
    let report = fleet::run(&settings_together, &args).await;
    for worker in workers {
        stop(worker).await;
    }
    support::delete_topology(&topology).await;
    assert_only_unreachable_failed(&report, &together);
    assert_ends_as_each_tenant_alone(&together, alone).await;
}
