//! Two producers at once (issue 10, scenario 2): an operator's manual run beside the scheduled one, on one broker
//! or on one host. Each run receives only its own reports, and a tenant is synced by one run at a time.

use std::time::{Duration, Instant};

use graphsim::{EstateParams, SimConfig};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use producer::cli::RunArgs;
use producer::summary::RunReport;
use shared::message::Phase;

use crate::fleet::{assert_only_unreachable_failed, broker_args, embedded_args, run};
use crate::support::{self, Estate, BROKER};

fn params(tenants: usize, seed: u64) -> EstateParams {
    EstateParams {
        tenants,
        users_per_tenant: 6,
        contacts_per_user: 4,
        overlap: 0.3,
        seed,
    }
}

/// `args` narrowed to one tenant.
fn only(args: &RunArgs, tenant: &str) -> RunArgs {
    RunArgs {
        tenants: vec![tenant.to_owned()],
        ..clone_args(args)
    }
}

fn clone_args(args: &RunArgs) -> RunArgs {
    RunArgs {
        config: args.config.clone(),
        amqp_url: args.amqp_url.clone(),
        tenants: args.tenants.clone(),
        report: args.report.clone(),
        report_html: args.report_html.clone(),
        queue_prefix: args.queue_prefix.clone(),
        state_dir: args.state_dir.clone(),
        history: args.history.clone(),
        notify: args.notify.clone(),
        ..*args
    }
}

/// Ready messages of `queue` (a passive declare: the queue must exist).
async fn ready(connection: &lapin::Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    declared.message_count()
}

/// Waits (bounded) until `queue` holds `count` ready messages: the run that published them holds its lease.
async fn await_ready(connection: &lapin::Connection, queue: &str, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if ready(connection, queue).await == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} never held {count} message(s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The refused run's report: the tenant stopped with a message naming it and the lease, nothing done.
fn assert_refused(report: &RunReport, tenant: &str) {
    assert_eq!(report.tenants.len(), 1, "{}", report.human());
    let refused = &report.tenants[0];
    let error = refused.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("another contactmirror run") && error.contains(tenant),
        "the second run was not refused with a clear message:\n{}",
        report.human()
    );
    assert!(refused.mailboxes.is_empty(), "{}", report.human());
    assert!(!report.succeeded());
}

/// Failed before the fix: both runs consumed the one shared report queue, so each took (and discarded) reports of
/// the other's jobs; the runs waited their idle timeout and named the lost jobs `no_report`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_producers_for_two_tenants_on_one_broker_both_receive_every_report() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(SimConfig::default(), params(2, 31)).await;
    let settings = estate.settings();
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("w{i}")))
        .collect();
    let args = broker_args(&topology);
    let first = only(&args, &estate.tenants[0].tenant_id);
    let second = only(&args, &estate.tenants[1].tenant_id);
    let (a, b) = tokio::join!(run(&settings, &first), run(&settings, &second));
    for (report, seeded) in [(&a, &estate.tenants[0]), (&b, &estate.tenants[1])] {
        assert_eq!(report.tenants.len(), 1);
        assert_eq!(report.tenants[0].tenant_id, seeded.tenant_id);
        let lost: Vec<_> = report.tenants[0]
            .mailboxes
            .iter()
            .filter(|m| m.reason == Some(shared::message::FailureReason::NoReport))
            .collect();
        assert!(lost.is_empty(), "reports lost:\n{}", report.human());
        // One phase-1 report and one phase-2 report per user arrived.
        assert_eq!(
            report.tenants[0].mailboxes.len(),
            1 + report.tenants[0].users,
            "{}",
            report.human()
        );
    }
    assert_only_unreachable_failed(&a, &estate);
    for (token, handle) in workers {
        token.cancel();
        let _ = handle.await;
    }
    support::delete_topology(&topology).await;
}

/// Failed before the fix: the second run of a tenant published its own phase-1 job beside the first run's, and
/// both wrote the central folder from the same snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_broker_run_of_a_tenant_is_refused_while_the_first_holds_the_lease() {
    let _broker = BROKER.read().await;
    let estate = Estate::seed(SimConfig::default(), params(1, 32)).await;
    let settings = estate.settings();
    let tenant = estate.tenants[0].tenant_id.clone();
    let topology = support::private_topology();
    let connection = support::connect().await;
    let setup = connection.create_channel().await.expect("channel");
    shared::mq::declare(&setup, &topology)
        .await
        .expect("declare");
    let args = broker_args(&topology);

    // No worker yet: the first run holds the lease and waits for its phase-1 report.
    let first = {
        let settings = settings.clone();
        let args = clone_args(&args);
        tokio::spawn(async move { run(&settings, &args).await })
    };
    let phase1 = topology.job_queue(Phase::Phase1);
    await_ready(&connection, &phase1, 1).await;

    let second = run(&settings, &args).await;
    assert_refused(&second, &tenant);
    assert_eq!(
        ready(&connection, &phase1).await,
        1,
        "the refused run published a job"
    );

    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("w{i}")))
        .collect();
    let first = first.await.expect("the first run");
    assert_only_unreachable_failed(&first, &estate);
    // The lease went with the first run: a third run may sync the tenant.
    let third = run(&settings, &args).await;
    assert_only_unreachable_failed(&third, &estate);
    for (token, handle) in workers {
        token.cancel();
        let _ = handle.await;
    }
    let _ = shared::mq::close_connection(&connection, "done").await;
    support::delete_topology(&topology).await;
}

/// Failed before the fix: two embedded runs of one tenant on one host (one state directory) both ran, both
/// writing the central folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_embedded_run_of_a_tenant_is_refused_while_the_first_holds_the_lease() {
    let estate = Estate::seed(SimConfig::default(), params(1, 33)).await;
    let settings = estate.settings();
    let tenant = estate.tenants[0].tenant_id.clone();
    let state = support::scratch_dir("lease");
    let args = RunArgs {
        state_dir: Some(state.clone()),
        ..embedded_args()
    };
    // Every Graph answer takes a while, so the first run is still busy when the second starts.
    estate.sim.set_latency(Duration::from_millis(300));
    let first = {
        let settings = settings.clone();
        let args = clone_args(&args);
        tokio::spawn(async move { run(&settings, &args).await })
    };
    // The first run takes its lease before its first Graph request.
    let deadline = Instant::now() + Duration::from_secs(60);
    while estate.sim.request_log().is_empty() {
        assert!(Instant::now() < deadline, "the first run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = run(&settings, &args).await;
    let first = first.await.expect("the first run");
    assert_refused(&second, &tenant);
    estate.sim.set_latency(Duration::ZERO);
    assert_only_unreachable_failed(&first, &estate);
    let third = run(&settings, &args).await;
    assert_only_unreachable_failed(&third, &estate);
    std::fs::remove_dir_all(&state).ok();
}

/// `run --wait-for-lease`: a run that finds its tenant's lease held waits for it and syncs the tenant once the
/// holder lets go (the same run without the wait is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_told_to_wait_for_a_held_lease_syncs_once_it_is_released() {
    let estate = Estate::seed(SimConfig::default(), params(1, 34)).await;
    let settings = estate.settings();
    let tenant = estate.tenants[0].tenant_id.clone();
    let state = support::scratch_dir("lease-wait");
    // Another run holds the tenant (its lock file) and lets go a few seconds later.
    let mut holder = producer::lease::FileLeases::new(&state);
    holder.take(&tenant).expect("the lease is free");
    let args = RunArgs {
        state_dir: Some(state.clone()),
        ..embedded_args()
    };
    let refused = run(&settings, &args).await;
    assert_refused(&refused, &tenant);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        holder.release();
    });
    let waiting = RunArgs {
        wait_for_lease: 120,
        ..clone_args(&args)
    };
    let report = run(&settings, &waiting).await;
    release.await.expect("the holder lets go");
    assert_only_unreachable_failed(&report, &estate);
    assert!(
        !report.tenants[0].mailboxes.is_empty(),
        "the tenant was not synced:\n{}",
        report.human()
    );
    std::fs::remove_dir_all(&state).ok();
}

/// The binary run where neither `HOME` nor `XDG_STATE_HOME` is set (a system service, `env -i`) and no
/// `--state-dir` is given refuses to write, naming the fix. Failed before the fix: it found no state directory, so
/// it took no tenant lock at all (two such runs at once both wrote the central folder) and kept no state, silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_state_directory_refuses_rather_than_run_unlocked() {
    let estate = Estate::seed(SimConfig::default(), params(1, 83)).await;
    let config = estate.config_json().to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::binary("contactmirror-producer"))
            .arg("run")
            .env("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config)
            .env_remove("HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("CONTACTMIRROR_STATE_DIR")
            .env_remove("AMQP_URL")
            .output()
            .expect("the producer starts")
    })
    .await
    .expect("the producer finishes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--state-dir"), "{stderr}");
    assert_eq!(
        estate.sim.stats().total_writes(),
        0,
        "the refused run wrote: {stderr}"
    );
}
