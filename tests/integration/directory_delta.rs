//! Issue 11, incremental directory reads: the producer keeps the users' change feed (`/users/delta`) like the
//! folder feeds, so a re-run with nothing changed costs one request per receiving mailbox plus a constant per
//! tenant and writes nothing, and a change in the directory (a new user, a leaver, a renamed user) arrives
//! through the feed on the next run; a link Graph no longer knows falls back to a full read.

use std::collections::BTreeSet;

use graphsim::{seed_directory, DirectoryParams, SeededDirectory, Sim, UserSeed};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use serde_json::json;
use shared::config::Settings;
use shared::message::Phase;

use crate::directory::{
    assert_all_succeeded, assert_holds_each_once, directory_only, document, mail_of, sim, tenant,
    tenant_entry, writes,
};
use crate::fleet::{broker_args, embedded_args, run};
use crate::support::{self, settings_from, BROKER};

/// Own contacts of one receiver: three pages of a full read, so reading that mailbox again costs 3 requests.
const OWN_CONTACTS: usize = 2_100;

fn with_state(dir: &std::path::Path) -> RunArgs {
    RunArgs {
        state_dir: Some(dir.to_owned()),
        ..embedded_args()
    }
}

struct Fixture {
    sim: Sim,
    d: SeededDirectory,
    settings: Settings,
    args: RunArgs,
    state: std::path::PathBuf,
    /// The receiver holding [`OWN_CONTACTS`] contacts of its own.
    big: String,
}

async fn fixture() -> Fixture {
    let sim = sim().await;
    let d = seed_directory(
        &sim,
        DirectoryParams {
            members: 12,
            ..DirectoryParams::default()
        },
    );
    let big = d.members[1].clone();
    for i in 0..OWN_CONTACTS {
        sim.add_contact(
            &d.tenant.tenant_id,
            &big,
            None,
            json!({
                "displayName": format!("Own Person {i:04}"),
                "emailAddresses": [{"address": format!("own.{i}@example.net")}],
            }),
        );
    }
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({})),
    )]));
    let state = support::scratch_dir("directory-delta-state");
    Fixture {
        args: with_state(&state),
        sim,
        d,
        settings,
        state,
        big,
    }
}

impl Fixture {
    async fn sync(&self) -> RunReport {
        self.sim.reset_stats();
        let report = run(&self.settings, &self.args).await;
        assert_all_succeeded(&report);
        report
    }

    /// Every receiver holds each of `expected` but its own entry exactly once (the big one besides its own).
    fn assert_everyone_holds(&self, receivers: &[String], expected: &BTreeSet<String>) {
        for user in receivers {
            let mut wanted = expected.clone();
            wanted.remove(&mail_of(user));
            if user.eq_ignore_ascii_case(&self.big) {
                let held = self
                    .sim
                    .contacts(&self.d.tenant.tenant_id, user, None)
                    .len();
                assert_eq!(held, OWN_CONTACTS + wanted.len(), "{user}");
            } else {
                assert_holds_each_once(&self.sim, &self.d, user, None, &wanted);
            }
        }
    }

    /// The re-run with nothing changed: zero writes, every mailbox skipped, at most one request per mailbox (its
    /// feed check; without the feeds the big mailbox alone takes 3) and a constant for the tenant.
    async fn assert_a_quiet_rerun_is_cheap(&self) {
        let quiet = self.sync().await;
        assert_eq!(
            writes(&quiet),
            0,
            "a re-run with nothing changed writes nothing"
        );
        assert_eq!(self.sim.stats().total_writes(), 0);
        let t = tenant(&quiet, &self.d.tenant.tenant_id);
        let skipped = t
            .phases
            .get(&Phase::Phase2)
            .map_or(0, |c| c.mailboxes_unchanged);
        assert_eq!(
            skipped, t.users as u64,
            "every receiving mailbox is skipped"
        );
        let stats = self.sim.stats();
        let per_mailbox: u64 = stats.mailboxes.values().map(|m| m.requests).sum();
        let busiest = stats
            .mailboxes
            .values()
            .map(|m| m.requests)
            .max()
            .unwrap_or(0);
        assert!(busiest <= 2, "a mailbox took {busiest} requests");
        assert!(
            per_mailbox <= 2 * t.users as u64,
            "{per_mailbox} mailbox requests for {} mailboxes",
            t.users
        );
        // The tenant's constant: licensed users, one users delta round, the organisation's name. No worker reads
        // the directory (no mailbox needs it).
        let tenant_wide = stats.graph_operations - per_mailbox;
        assert!(
            tenant_wide <= 4,
            "{tenant_wide} tenant-wide requests: {:#?}",
            self.sim.request_log()
        );
    }

    /// The users delta requests of the last run: (fresh starts, rounds from a kept link).
    fn users_delta_requests(&self) -> (usize, usize) {
        let log = self.sim.request_log();
        let delta: Vec<_> = log
            .iter()
            .filter(|r| r.url.contains("/users/delta"))
            .collect();
        let kept = delta
            .iter()
            .filter(|r| r.url.contains("deltatoken"))
            .count();
        (delta.len() - kept, kept)
    }
}

/// A re-run with nothing changed makes zero writes and costs at most 2 Graph requests per mailbox plus a constant
/// per tenant; a new user, a leaver (disabled) and a renamed user then arrive through the users delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_rerun_is_cheap_and_directory_changes_arrive_through_the_users_delta() {
    let f = fixture().await;
    let domain = f.d.tenant.tenant_id.clone();
    let first = f.sync().await;
    let receivers = f.d.tenant.mirror_target_upns.clone();
    assert_eq!(tenant(&first, &domain).users, receivers.len());
    let members: BTreeSet<String> = f.d.members.iter().map(|m| mail_of(m)).collect();
    f.assert_everyone_holds(&receivers, &members);
    assert_eq!(
        f.users_delta_requests().0,
        1,
        "the first run starts the users feed"
    );

    f.assert_a_quiet_rerun_is_cheap().await;
    assert_eq!(
        f.users_delta_requests(),
        (0, 1),
        "one round from the kept link"
    );

    // A new colleague, a leaver (disabled, still a user), a renamed colleague.
    let newcomer = format!("newcomer@{domain}");
    f.sim
        .add_user(&domain, UserSeed::member(&newcomer, "Nora Newcomer"));
    let leaver = f.d.members[2].clone();
    let renamed = f.d.members[3].clone();
    let edit = |user: &str, props: serde_json::Value| {
        f.sim
            .update_user(
                &domain,
                user,
                props.as_object().cloned().unwrap_or_default(),
            )
            .expect("user");
    };
    edit(&leaver, json!({"accountEnabled": false}));
    edit(
        &renamed,
        json!({"displayName": "Renamed Colleague", "jobTitle": "Head of Renames"}),
    );

    let changed = f.sync().await;
    assert_eq!(
        f.users_delta_requests(),
        (0, 1),
        "the changes came through the kept link"
    );
    assert!(writes(&changed) > 0);
    let mut expected = members.clone();
    expected.remove(&mail_of(&leaver));
    expected.insert(mail_of(&newcomer));
    let receivers: Vec<String> = receivers
        .iter()
        .filter(|u| **u != leaver)
        .cloned()
        .chain([newcomer.clone()])
        .collect();
    f.assert_everyone_holds(&receivers, &expected);
    let copy = f
        .sim
        .contacts(&domain, &f.d.members[0], None)
        .into_iter()
        .find(|c| c.to_string().to_lowercase().contains(&mail_of(&renamed)))
        .expect("the renamed colleague's copy");
    assert_eq!(copy["displayName"], "Renamed Colleague", "{copy}");
    assert_eq!(copy["jobTitle"], "Head of Renames", "{copy}");

    f.assert_a_quiet_rerun_is_cheap().await;
    std::fs::remove_dir_all(&f.state).ok();
}

/// A kept users delta link Graph no longer knows (410 `SyncStateNotFound`) falls back to listing every user: the
/// run still brings the change (a deleted user) and keeps a new feed, and the run after it is quiet again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_users_delta_link_falls_back_to_a_full_read() {
    let f = fixture().await;
    let domain = f.d.tenant.tenant_id.clone();
    f.sync().await;
    let gone = f.d.members[4].clone();
    f.sim.remove_user(&domain, &gone).expect("user");
    f.sim.invalidate_delta_tokens();

    f.sync().await;
    let log = f.sim.request_log();
    assert!(
        log.iter()
            .any(|r| r.url.contains("/users/delta") && r.status == 410),
        "the kept link was tried and refused"
    );
    assert_eq!(f.users_delta_requests().0, 1, "a new feed was started");
    let mut expected: BTreeSet<String> = f.d.members.iter().map(|m| mail_of(m)).collect();
    expected.remove(&mail_of(&gone));
    let receivers: Vec<String> =
        f.d.tenant
            .mirror_target_upns
            .iter()
            .filter(|u| **u != gone)
            .cloned()
            .collect();
    f.assert_everyone_holds(&receivers, &expected);

    f.assert_a_quiet_rerun_is_cheap().await;
    std::fs::remove_dir_all(&f.state).ok();
}

/// The same on RabbitMQ with two worker processes' worth of workers: the kept users feed and the mailboxes' feeds
/// travel in the jobs, a rename arrives, and the quiet run after it skips every mailbox and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_rabbitmq_a_rename_arrives_and_a_quiet_rerun_skips_every_mailbox() {
    let _broker = BROKER.read().await;
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let domain = d.tenant.tenant_id.clone();
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({})),
    )]));
    let state = support::scratch_dir("directory-delta-broker");
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("dd{i}")))
        .collect();
    let args = RunArgs {
        state_dir: Some(state.clone()),
        ..broker_args(&topology)
    };
    let first = run(&settings, &args).await;
    let renamed = d.members[3].clone();
    sim.update_user(
        &domain,
        &renamed,
        json!({"displayName": "Renamed On Broker"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
    .expect("user");
    let changed = run(&settings, &args).await;
    sim.reset_stats();
    let quiet = run(&settings, &args).await;
    let quiet_stats = sim.stats();
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    std::fs::remove_dir_all(&state).ok();
    for report in [&first, &changed, &quiet] {
        assert_eq!(report.mode, "broker");
        assert_all_succeeded(report);
    }
    assert!(writes(&changed) > 0);
    let copy = sim
        .contacts(&domain, &d.members[0], None)
        .into_iter()
        .find(|c| c.to_string().to_lowercase().contains(&mail_of(&renamed)))
        .expect("the renamed colleague's copy");
    assert_eq!(copy["displayName"], "Renamed On Broker", "{copy}");
    assert_eq!(writes(&quiet), 0);
    assert_eq!(quiet_stats.total_writes(), 0);
    let t = tenant(&quiet, &domain);
    let skipped = t
        .phases
        .get(&Phase::Phase2)
        .map_or(0, |c| c.mailboxes_unchanged);
    assert_eq!(
        skipped, t.users as u64,
        "every receiving mailbox is skipped"
    );
    let busiest = quiet_stats
        .mailboxes
        .values()
        .map(|m| m.requests)
        .max()
        .unwrap_or(0);
    assert!(busiest <= 1, "a mailbox took {busiest} requests");
}

/// A `TargetFolder` tenant's first run moves nothing (no copies exist anywhere yet), so its very next run already
/// skips every mailbox with one request each.
///
/// Failed before the fix: with a state directory but no target folder recorded yet, the first run was taken for a
/// move from the default Contacts folder; a move keeps no feeds, so the second run read every mailbox in full
/// (the README's quick start: 25 requests for 7 mailboxes instead of 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_folder_tenants_second_run_already_skips_every_mailbox() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let mut extra = directory_only(json!({}));
    extra["TargetFolder"] = json!("Company Directory");
    let settings = settings_from(&document(vec![tenant_entry(&sim, &d, extra)]));
    let state = support::scratch_dir("directory-target-folder-state");
    let args = with_state(&state);

    let first = run(&settings, &args).await;
    assert_all_succeeded(&first);
    assert!(writes(&first) > 0, "the first run fills the folders");

    sim.reset_stats();
    let second = run(&settings, &args).await;
    assert_all_succeeded(&second);
    assert_eq!(writes(&second), 0);
    let t = tenant(&second, &d.tenant.tenant_id);
    let skipped = t
        .phases
        .get(&Phase::Phase2)
        .map_or(0, |c| c.mailboxes_unchanged);
    assert_eq!(
        skipped, t.users as u64,
        "every receiving mailbox is skipped"
    );
    let busiest = sim
        .stats()
        .mailboxes
        .values()
        .map(|m| m.requests)
        .max()
        .unwrap_or(0);
    assert_eq!(busiest, 1, "one feed check per mailbox");
    let _ = std::fs::remove_dir_all(&state);
}
