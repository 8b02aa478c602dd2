//! Issue 10, scenario 7: a dry run's report stays bounded however many mailboxes would be written. Each job lists
//! at most `worker::job::MAX_PLANNED_LINES` plan lines (and counts the rest in one line), and a tenant keeps at
//! most `producer::summary::MAX_TENANT_PLAN_LINES` of them (and counts the rest): in the run report and in the
//! JSON file alike. Counted in lines, not timed.

use clap::Parser;
use graphsim::{EstateParams, SimConfig, UserSeed};
use producer::cli::Cli;
use producer::summary::RunReport;
use producer::summary::MAX_TENANT_PLAN_LINES;
use worker::job::MAX_PLANNED_LINES;

use crate::fleet::{assert_only_unreachable_failed, embedded_args, run};
use crate::support::{self, Estate};

/// New (empty) mailboxes added after the first run: each would receive every person of the central folder.
const NEW_USERS: usize = 8;

/// Failed before the fix: the tenant's report gathered every job's plan lines, so the JSON report of this run
/// held 8 x 201 lines (and one of 1,000 users x 5,000 contacts 201,000); now it keeps 1,000 and counts the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_report_stays_bounded_however_many_mailboxes_would_be_written() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 6,
            contacts_per_user: 160,
            overlap: 0.0,
            seed: 91,
        },
    )
    .await;
    let settings = estate.settings();
    let first = run(&settings, &embedded_args()).await;
    assert_only_unreachable_failed(&first, &estate);
    let tenant = &estate.tenants[0];
    let people = estate
        .sim
        .contacts(
            &tenant.tenant_id,
            &tenant.shared_mailbox_upn,
            Some("All Contacts"),
        )
        .len();
    assert!(
        people > MAX_PLANNED_LINES,
        "{people} people: fewer than one job lists"
    );
    for n in 0..NEW_USERS {
        estate.sim.add_user(
            &tenant.tenant_id,
            UserSeed {
                upn: format!("newcomer{n}@{}", tenant.tenant_id),
                display_name: format!("Newcomer {n}"),
                mail: Some(format!("newcomer{n}@{}", tenant.tenant_id)),
                ..UserSeed::default()
            },
        );
    }
    let writes_before = estate.sim.stats().total_writes();
    let dir = support::scratch_dir("dry-run");
    let path = dir.join("report.json");
    let config = dir.join("config.json");
    std::fs::write(&config, estate.config_json().to_string()).expect("config file");
    let text = |p: &std::path::Path| p.to_str().expect("UTF-8 temp path").to_owned();
    // The command line an operator runs, in-process: the JSON file is what it writes.
    let argv = [
        "contactmirror-producer".to_owned(),
        "run".to_owned(),
        "--dry-run".to_owned(),
        "--config".to_owned(),
        text(&config),
        "--report".to_owned(),
        text(&path),
        "--state-dir".to_owned(),
        text(&dir),
        "--workers".to_owned(),
        "4".to_owned(),
    ];
    let cli = Cli::try_parse_from(&argv).expect("command line");
    producer::run::dispatch(cli)
        .await
        .expect("the run completes");
    let report: RunReport =
        serde_json::from_slice(&std::fs::read(&path).expect("the JSON report")).expect("a report");
    assert_only_unreachable_failed(&report, &estate);
    assert_eq!(
        estate.sim.stats().total_writes(),
        writes_before,
        "a dry run wrote"
    );

    // Each newcomer's job lists its first MAX_PLANNED_LINES creates and one line counting the rest.
    let listed_per_job = MAX_PLANNED_LINES + 1;
    let reported = NEW_USERS * listed_per_job;
    assert!(
        reported > MAX_TENANT_PLAN_LINES,
        "the test must plan more lines than a tenant keeps"
    );
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the JSON report")).expect("JSON");
    let tenant_json = &file["tenants"][0];
    let lines = tenant_json["planned"].as_array().expect("plan lines");
    assert_eq!(lines.len(), MAX_TENANT_PLAN_LINES);
    assert_eq!(
        tenant_json["planned_left_out"].as_u64(),
        Some((reported - MAX_TENANT_PLAN_LINES) as u64)
    );
    assert!(
        lines
            .iter()
            .filter_map(|l| l.as_str())
            .filter(|l| l.contains("more planned writes not listed"))
            .count()
            >= 1,
        "no job counted its unlisted lines"
    );
    // The counts still say how much would be written in all: every newcomer gets every person.
    let would_create: u64 = report.tenants[0].phases.values().map(|c| c.created).sum();
    assert_eq!(
        would_create,
        (NEW_USERS * people) as u64,
        "{}",
        report.human()
    );
    std::fs::remove_dir_all(&dir).ok();
}
