//! Issue 10, scenario 4: a worker never runs more than `--concurrency` jobs at once, also when the broker takes
//! its deliveries back while their attempts still run (a lost connection, a consumer timeout), and the run still
//! ends with every mailbox as a clean run leaves it (nobody twice, nobody missing).
//!
//! The count is the worker's own (`JobRunner::in_flight`: attempts inside `JobRunner::run`, apart from the job
//! slots that enforce the limit); the mailboxes are graphsim's.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use graphsim::{EstateParams, SimConfig};
use producer::cli::RunArgs;
use shared::message::FailureReason;
use tokio_util::sync::CancellationToken;
use worker::consumer::Worker;
use worker::job::JobRunner;

use crate::failures::reference_state;
use crate::fleet::{broker_args, run, snapshot};
use crate::redelivery::{close_connection, connection_url};
use crate::support::{self, Estate, BROKER};

/// The limit under test: three slots, of which phase 2 takes two (one stays free for phase-1 jobs,
/// `worker::consumer::phase2_places`), so two phase-2 jobs write at once and a second session's jobs beside them
/// would show as more than two.
const CONCURRENCY: u16 = 3;

/// Phase-2 jobs a worker of [`CONCURRENCY`] slots runs at once.
fn phase2_at_once() -> usize {
    worker::consumer::phase2_places(CONCURRENCY)
}

/// Ten users whose phase-2 jobs each write for a few seconds at this latency.
fn params(seed: u64) -> EstateParams {
    EstateParams {
        tenants: 1,
        users_per_tenant: 10,
        contacts_per_user: 20,
        overlap: 0.2,
        seed,
    }
}

/// An in-process worker running at most [`CONCURRENCY`] jobs, its runner (to read the count from), and a
/// watcher counting how often it stopped consuming (a session ended).
struct Watched {
    runner: Arc<JobRunner>,
    sessions_ended: Arc<AtomicUsize>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Watched {
    fn start(estate: &Estate, topology: &shared::mq::Topology, name: &str) -> Self {
        let runner = support::runner(&estate.settings());
        let worker = Worker::new(
            support::worker_config(topology, name, CONCURRENCY),
            runner.clone(),
        );
        let ready = worker.readiness();
        let sessions_ended = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            let ready = ready.clone();
            let ended = sessions_ended.clone();
            async move {
                let watch = async {
                    let mut was = false;
                    loop {
                        let now = ready.load(Ordering::SeqCst);
                        if was && !now {
                            ended.fetch_add(1, Ordering::SeqCst);
                        }
                        was = now;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                tokio::select! {
                    stopped = worker.run(stop) => { stopped.expect("the worker stops cleanly"); }
                    () = watch => {}
                }
            }
        });
        Self {
            runner,
            sessions_ended,
            ready,
            stop,
            handle,
        }
    }

    async fn until_ready(&self) {
        wait_for("the worker never (re)started consuming", || {
            self.ready.load(Ordering::SeqCst)
        })
        .await;
    }

    async fn stop(self) -> (usize, usize) {
        self.stop.cancel();
        self.handle.await.expect("worker task");
        (
            self.runner.in_flight().peak(),
            self.sessions_ended.load(Ordering::SeqCst),
        )
    }
}

/// Waits (bounded: a guard, not a measurement) until `condition` holds.
async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether graphsim has seen writes to a user's own mailbox (phase 2 is under way).
fn phase2_writing(estate: &Estate) -> bool {
    let shared = estate.tenants[0].shared_mailbox_upn.to_lowercase();
    estate
        .sim
        .stats()
        .mailboxes
        .iter()
        .any(|(upn, m)| *upn != shared && m.writes > 0)
}

/// A seeded estate whose Graph answers slowly enough that phase-2 jobs overlap the faults.
async fn slow_estate(seed: u64) -> Estate {
    Estate::seed(
        SimConfig {
            // Slow enough that phase 2 is still running after two reconnects on a loaded machine (at 20 ms a full
            // test suite beside it once let phase 2 finish before the second one).
            latency: Duration::from_millis(60),
            ..SimConfig::default()
        },
        params(seed),
    )
    .await
}

/// The run completed with every report and every mailbox as the clean run left them.
fn assert_clean_outcome(
    report: &producer::summary::RunReport,
    estate: &Estate,
    expected: &crate::fleet::Snapshot,
) {
    let lost: Vec<_> = report
        .tenants
        .iter()
        .flat_map(|t| &t.mailboxes)
        .filter(|m| m.reason == Some(FailureReason::NoReport))
        .collect();
    assert!(lost.is_empty(), "reports lost:\n{}", report.human());
    assert!(
        report.tenants.iter().all(|t| t.error.is_none()),
        "{}",
        report.human()
    );
    assert_eq!(
        &snapshot(estate, "All Contacts"),
        expected,
        "the mailboxes differ from a clean run's: a contact is duplicated or missing"
    );
}

/// The worker's connection is closed by the broker twice while two phase-2 jobs write: each time the attempts
/// are cancelled and waited for before the session reconnects, so no more than two ever run at once.
///
/// Did not fail on the code before this test (the job slots already belonged to the worker, not to a session):
/// it pins the promise down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_never_exceeds_the_limit_across_lost_connections() {
    let _broker = BROKER.read().await;
    let expected = reference_state(params(81)).await;
    let estate = slow_estate(81).await;
    let topology = support::private_topology();
    let name = format!("concurrency-{}", uuid::Uuid::new_v4().simple());
    let worker = Watched::start(&estate, &topology, &name);
    worker.until_ready().await;
    let settings = estate.settings();
    // Phases in order: the faults must fall while two phase-2 jobs write, which overlapped phases (a job waiting on
    // phase 1 holds a slot, others deferred) make a matter of timing.
    let args = RunArgs {
        ordered_phases: true,
        ..broker_args(&topology)
    };
    let producer = tokio::spawn(async move { run(&settings, &args).await });

    for _ in 0..2 {
        wait_for("phase 2 never started writing", || phase2_writing(&estate)).await;
        wait_for("the worker never ran two jobs at once", || {
            worker.runner.in_flight().now() == phase2_at_once()
        })
        .await;
        close_connection(connection_url(&name).await).await;
        wait_for("the worker never noticed its connection was closed", || {
            !worker.ready.load(Ordering::SeqCst)
        })
        .await;
        worker.until_ready().await;
    }
    let report = tokio::time::timeout(Duration::from_secs(300), producer)
        .await
        .expect("the run finishes")
        .expect("producer task");
    let (peak, sessions_ended) = worker.stop().await;
    support::delete_topology(&topology).await;
    assert!(
        sessions_ended >= 2,
        "the connection was never lost: {sessions_ended} sessions ended"
    );
    assert_eq!(
        peak,
        phase2_at_once(),
        "phase-2 attempts in progress at once (phase 2 takes {} of the {CONCURRENCY} slots)",
        phase2_at_once()
    );
    assert_clean_outcome(&report, &estate, &expected);
}

/// Sets a RabbitMQ application variable for as long as it lives and puts back the value it had. RabbitMQ 3.10
/// knows the consumer timeout only node-wide (`consumer_timeout`; a per-queue `x-consumer-timeout` came in
/// 3.11.15), read when a channel opens, and checks it on each channel's tick (`channel_tick_interval`).
struct BrokerSetting {
    key: &'static str,
    before: String,
}

impl BrokerSetting {
    fn set(key: &'static str, value: u64) -> Self {
        let before = rabbitmqctl_eval(&format!("application:get_env(rabbit, {key})."));
        rabbitmqctl_eval(&format!("application:set_env(rabbit, {key}, {value})."));
        Self { key, before }
    }
}

impl Drop for BrokerSetting {
    fn drop(&mut self) {
        let key = self.key;
        let restore = match self.before.trim().strip_prefix("{ok,") {
            Some(value) => format!(
                "application:set_env(rabbit, {key}, {}).",
                value.trim_end_matches('}')
            ),
            None => format!("application:unset_env(rabbit, {key})."),
        };
        rabbitmqctl_eval(&restore);
    }
}

/// Evaluates an Erlang expression on the test broker's node, returning what it printed.
fn rabbitmqctl_eval(expression: &str) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["eval", expression])
        .output()
        .expect("rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl eval {expression}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The broker closes the worker's consume channel because two phase-2 deliveries stayed unacknowledged longer
/// than the consumer timeout (PRECONDITION_FAILED, both back in the queue while their attempts run): the attempts
/// are cancelled before the session is replaced, no more than two ever run at once, and the redelivered jobs
/// complete with the mailboxes as a clean run leaves them.
///
/// The timeout is node-wide in 3.10, so this test holds the broker alone (like the broker restart test) and puts
/// the setting back however it ends. Did not fail on the code before this test (the session already noticed a
/// closed consume channel within 2 s and waited for its attempts); it now notices at once, from lapin's
/// connection events, and the test pins the promise down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_never_exceeds_the_limit_across_a_consumer_timeout() {
    let _broker = BROKER.write().await;
    let expected = reference_state(params(82)).await;
    let estate = slow_estate(82).await;
    let topology = support::private_topology();
    let name = format!("consumer-timeout-{}", uuid::Uuid::new_v4().simple());
    let worker = Watched::start(&estate, &topology, &name);
    worker.until_ready().await;
    let settings = estate.settings();
    // Phases in order: the faults must fall while two phase-2 jobs write, which overlapped phases (a job waiting on
    // phase 1 holds a slot, others deferred) make a matter of timing.
    let args = RunArgs {
        ordered_phases: true,
        ..broker_args(&topology)
    };
    let producer = tokio::spawn(async move { run(&settings, &args).await });

    wait_for("phase 2 never started writing", || phase2_writing(&estate)).await;
    // Slow enough that two jobs are still unacknowledged when the timeout comes.
    estate.sim.set_latency(Duration::from_millis(300));
    // Channels opened from now on time out after one second; a short tick makes the broker look every 200 ms.
    let tick = BrokerSetting::set("channel_tick_interval", 200);
    let timeout = BrokerSetting::set("consumer_timeout", 1_000);
    // A new session, so its consume channel carries the short timeout.
    close_connection(connection_url(&name).await).await;
    wait_for("the worker never noticed its connection was closed", || {
        !worker.ready.load(Ordering::SeqCst)
    })
    .await;
    worker.until_ready().await;
    // Channels opened later (the next session's) get the usual timeout again; this one keeps its second.
    drop(timeout);
    wait_for("the broker never timed the consumer out", || {
        worker.sessions_ended.load(Ordering::SeqCst) >= 2
    })
    .await;
    estate.sim.set_latency(Duration::from_millis(5));
    let report = tokio::time::timeout(Duration::from_secs(300), producer)
        .await
        .expect("the run finishes")
        .expect("producer task");
    drop(tick);
    let (peak, _) = worker.stop().await;
    support::delete_topology(&topology).await;
    assert_eq!(
        peak,
        phase2_at_once(),
        "phase-2 attempts in progress at once (phase 2 takes {} of the {CONCURRENCY} slots)",
        phase2_at_once()
    );
    assert_clean_outcome(&report, &estate, &expected);
}
