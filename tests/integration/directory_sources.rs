//! Issue 11, where the directory comes from: another tenant's directory (`Directory.FromTenants`) and the
//! selection by groups and `UserFilter`, checked on the mailboxes graphsim ends up with.

use std::collections::BTreeSet;

use graphsim::{seed_directory, DirectoryParams, SeededDirectory, Sim};
use producer::summary::RunReport;
use serde_json::{json, Value};

use crate::directory::{
    assert_all_succeeded, assert_holds_each_once, directory_only, document, mail_of, members_but,
    sim, tenant, tenant_entry, writes,
};
use crate::fleet::{broker_args, embedded_args, run};
use crate::support::{self, settings_from, BROKER};

fn seeded(sim: &Sim, domain: &str) -> SeededDirectory {
    seed_directory(
        sim,
        DirectoryParams {
            domain: domain.into(),
            ..DirectoryParams::default()
        },
    )
}

/// Tenant A as a pure source (mirror and directory off) whose own filters export the members outside its Sales
/// group, and tenant B, directory-only, receiving its own directory and A's.
fn source_and_receiver(sim: &Sim, a: &SeededDirectory, b: &SeededDirectory) -> Value {
    document(vec![
        tenant_entry(
            sim,
            a,
            json!({
                "Mirror": { "Enabled": false },
                "Directory": { "Enabled": false, "ExcludeGroups": [a.sales_group.clone()] },
            }),
        ),
        tenant_entry(
            sim,
            b,
            directory_only(json!({ "FromTenants": [a.tenant.tenant_id.to_uppercase()] })),
        ),
    ])
}

/// A's members that its filters export: those outside Sales (the second half).
fn exported(a: &SeededDirectory) -> Vec<String> {
    a.members[a.members.len().div_ceil(2)..].to_vec()
}

/// What a receiver of B holds: B's members but itself, and A's exported members.
fn expected_in_b(a: &SeededDirectory, b: &SeededDirectory, receiver: &str) -> BTreeSet<String> {
    let mut expected = members_but(b, receiver);
    expected.extend(exported(a).iter().map(|m| mail_of(m)));
    expected
}

/// No mailbox of tenant A was written (graphsim's per-mailbox counters) or holds a contact.
fn assert_nothing_written_in(sim: &Sim, a: &SeededDirectory) {
    let stats = sim.stats();
    for upn in a
        .tenant
        .user_upns
        .iter()
        .chain([&a.tenant.shared_mailbox_upn])
    {
        assert_eq!(stats.mailbox(upn).writes, 0, "a write in tenant A: {upn}");
        assert!(
            sim.contacts(&a.tenant.tenant_id, upn, None).is_empty(),
            "{upn} of tenant A holds contacts"
        );
    }
}

/// A pure source has no jobs: it is not among the run's tenants.
fn assert_no_jobs_for(report: &RunReport, a: &SeededDirectory) {
    assert!(
        report
            .tenants
            .iter()
            .all(|t| !t.tenant_id.eq_ignore_ascii_case(&a.tenant.tenant_id)),
        "a pure source ran jobs: {:?}",
        report.tenants
    );
}

/// Issue 11: `FromTenants` puts tenant A's people (read with A's credentials and selected by A's own filters,
/// though A's `Directory.Enabled` is off) into tenant B's mailboxes beside B's own directory, each once, with no
/// write in tenant A and no job for A (a pure source); a leaver in A leaves every mailbox of B on the next run,
/// and a run after that writes nothing.
///
/// Failed before FromTenants was distributed: B's mailboxes held only B's people.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_tenants_puts_tenant_as_people_into_tenant_b_with_no_write_in_a() {
    let sim = sim().await;
    let a = seeded(&sim, "directory-fa.onmicrosoft.com");
    let b = seeded(&sim, "directory-fb.onmicrosoft.com");
    let settings = settings_from(&source_and_receiver(&sim, &a, &b));

    let first = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&first);
    assert_no_jobs_for(&first, &a);
    for user in &b.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &b, user, None, &expected_in_b(&a, &b, user));
    }
    assert_nothing_written_in(&sim, &a);

    let leaver = exported(&a)[0].clone();
    let mut props = serde_json::Map::new();
    props.insert("accountEnabled".into(), json!(false));
    sim.update_user(&a.tenant.tenant_id, &leaver, props)
        .expect("disable the leaver in A");
    let second = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&second);
    for user in &b.tenant.mirror_target_upns {
        let mut expected = expected_in_b(&a, &b, user);
        assert!(expected.remove(&mail_of(&leaver)));
        assert_holds_each_once(&sim, &b, user, None, &expected);
    }

    sim.reset_stats();
    let third = run(&settings, &embedded_args()).await;
    assert_all_succeeded(&third);
    assert_eq!(writes(&third), 0, "nothing changed: nothing written");
    assert_nothing_written_in(&sim, &a);
    // The directories are read per run (by the producer and once by the worker process), never per mailbox: one
    // page of contacts per mailbox plus at most 8 listings (users, managers, groups, organisation, ...) per source
    // tenant and reader. Measured: 22 operations for 7 mailboxes.
    let mailboxes = b.tenant.mirror_target_upns.len() as u64;
    let (sources, readers, listings) = (2, 2, 8);
    let operations = sim.stats().graph_operations;
    eprintln!("FromTenants re-run, nothing changed: {operations} Graph operations for {mailboxes} mailboxes of B");
    assert!(
        operations <= mailboxes + sources * readers * listings,
        "{operations} Graph operations for {mailboxes} mailboxes"
    );
}

/// Issue 11 on RabbitMQ: the workers read tenant A's directory with A's credentials from their own configuration
/// (a job carries none) and reach the same mailboxes; nothing is written in A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_tenants_on_rabbitmq() {
    let _broker = BROKER.read().await;
    let sim = sim().await;
    let a = seeded(&sim, "directory-fa.onmicrosoft.com");
    let b = seeded(&sim, "directory-fb.onmicrosoft.com");
    let settings = settings_from(&source_and_receiver(&sim, &a, &b));
    let topology = support::private_topology();
    let workers: Vec<_> = (0..2)
        .map(|i| support::spawn_worker(&settings, &topology, &format!("ft{i}")))
        .collect();
    let first = run(&settings, &broker_args(&topology)).await;
    let again = run(&settings, &broker_args(&topology)).await;
    support::stop_workers(workers).await;
    support::delete_topology(&topology).await;
    assert_eq!(first.mode, "broker");
    assert_all_succeeded(&first);
    assert_all_succeeded(&again);
    assert_no_jobs_for(&first, &a);
    assert_eq!(writes(&again), 0);
    for user in &b.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &b, user, None, &expected_in_b(&a, &b, user));
    }
    assert_nothing_written_in(&sim, &a);
}

/// Issue 11: a source tenant whose app lacks a permission its filters need (`GroupMember.Read.All` for A's
/// `ExcludeGroups`), or whose secret is wrong, fails the receiving tenant before any job, naming tenant A and
/// what to fix; another tenant of the run completes, and nothing is written in B or A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_tenants_missing_permission_or_bad_secret_fails_the_receiver_naming_the_source() {
    let sim = sim().await;
    let a = seeded(&sim, "directory-fa.onmicrosoft.com");
    let b = seeded(&sim, "directory-fb.onmicrosoft.com");
    let c = seeded(&sim, "directory-fc.onmicrosoft.com");
    sim.set_app_roles(
        &a.tenant.tenant_id,
        &[
            "Contacts.ReadWrite",
            "User.Read.All",
            "OrgContact.Read.All",
            "Organization.Read.All",
        ],
    )
    .expect("tenant");
    let mut config = source_and_receiver(&sim, &a, &b);
    config["MicrosoftTenants"]
        .as_array_mut()
        .expect("tenants")
        .push(tenant_entry(&sim, &c, directory_only(json!({}))));
    let check = |report: &RunReport, what: &str| {
        let failed = tenant(report, &b.tenant.tenant_id);
        let error = failed.error.as_deref().expect("tenant B failed");
        assert!(
            error.contains(&a.tenant.tenant_id) && error.contains(what),
            "{error}"
        );
        assert!(failed.mailboxes.is_empty(), "no job ran for B");
        for user in &b.tenant.mirror_target_upns {
            assert!(sim.contacts(&b.tenant.tenant_id, user, None).is_empty());
        }
        let ok = tenant(report, &c.tenant.tenant_id);
        assert_eq!(ok.error, None);
        assert!(ok.mailboxes.iter().all(|m| m.outcome == "succeeded"));
        for user in &c.tenant.mirror_target_upns {
            assert_holds_each_once(&sim, &c, user, None, &members_but(&c, user));
        }
        assert_nothing_written_in(&sim, &a);
    };

    let report = run(&settings_from(&config), &embedded_args()).await;
    check(&report, "GroupMember.Read.All");

    config["MicrosoftTenants"][0]["ClientSecret"] = json!("not-the-secret");
    let report = run(&settings_from(&config), &embedded_args()).await;
    check(&report, "ClientSecret");
}

/// Issue 11: `IncludeGroups` (Staff, which holds Sales nested), `ExcludeGroups` (Sales) and `UserFilter`
/// (ANDed into the user query by Graph) together select exactly the members in Staff, outside Sales and in the
/// filtered departments; every receiver gets exactly those but itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_with_nesting_and_a_user_filter_select_exactly_the_expected_persons() {
    let sim = sim().await;
    let d = seed_directory(&sim, DirectoryParams::default());
    let domain = &d.tenant.tenant_id;
    let settings = settings_from(&document(vec![tenant_entry(
        &sim,
        &d,
        directory_only(json!({
            "IncludeGroups": [format!("staff@{domain}")],
            "ExcludeGroups": [d.sales_group.clone()],
            "UserFilter": "department eq 'Finance' or department eq 'Sales'",
        })),
    )]));
    assert_all_succeeded(&run(&settings, &embedded_args()).await);
    // graphsim's seed gives member i the department ["Engineering", "Finance", "Sales"][i % 3]; Sales holds the
    // first half of the members.
    let selected: Vec<&String> = d
        .members
        .iter()
        .enumerate()
        .skip(d.members.len().div_ceil(2))
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, m)| m)
        .collect();
    assert!(
        selected.len() >= 2,
        "the estate selects someone: {selected:?}"
    );
    for user in &d.tenant.mirror_target_upns {
        let expected: BTreeSet<String> = selected
            .iter()
            .filter(|m| !m.eq_ignore_ascii_case(user))
            .map(|m| mail_of(m))
            .collect();
        assert_holds_each_once(&sim, &d, user, None, &expected);
    }
}

/// Issue 11: a `UserFilter` Graph refuses (400, an unsupported property) fails that tenant before any job with a
/// configuration error naming the key; the other tenant completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_filter_graph_refuses_fails_that_tenant_naming_the_key() {
    let sim = sim().await;
    let bad = seed_directory(&sim, DirectoryParams::default());
    let good = seeded(&sim, "directory-s2.onmicrosoft.com");
    let settings = settings_from(&document(vec![
        tenant_entry(
            &sim,
            &bad,
            directory_only(json!({ "UserFilter": "favouriteColour eq 'blue'" })),
        ),
        tenant_entry(&sim, &good, directory_only(json!({}))),
    ]));
    let report = run(&settings, &embedded_args()).await;
    let failed = tenant(&report, &bad.tenant.tenant_id);
    let error = failed.error.as_deref().expect("the tenant failed");
    assert!(
        error.contains("Directory.UserFilter") && error.contains("favouriteColour"),
        "{error}"
    );
    assert!(failed.mailboxes.is_empty(), "no job ran");
    for user in &bad.tenant.mirror_target_upns {
        assert!(sim.contacts(&bad.tenant.tenant_id, user, None).is_empty());
    }
    let ok = tenant(&report, &good.tenant.tenant_id);
    assert_eq!(ok.error, None);
    for user in &good.tenant.mirror_target_upns {
        assert_holds_each_once(&sim, &good, user, None, &members_but(&good, user));
    }
}

/// A source that lists nobody beside another source: tenant A's filter changed to select no one (a group emptied, a
/// filter edited by mistake). B's combined list still holds its own people, so the plan's empty-list refusal cannot
/// see it, and with the cap lifted by `MaxDeleteShare` every copy of A's people would go as a leaver. The job is
/// refused instead, naming A, and the copies stay; `--allow-mass-delete` takes them out when the leave is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_tenant_listing_nobody_deletes_nothing_unless_the_leave_is_confirmed() {
    let sim = sim().await;
    let a = seeded(&sim, "directory-ea.onmicrosoft.com");
    let b = seeded(&sim, "directory-eb.onmicrosoft.com");
    let receiver = |a_directory: Value| {
        let mut b_entry = tenant_entry(
            &sim,
            &b,
            directory_only(json!({ "FromTenants": [a.tenant.tenant_id.clone()] })),
        );
        b_entry["MaxDeleteShare"] = json!(1.0);
        settings_from(&document(vec![
            tenant_entry(
                &sim,
                &a,
                json!({ "Mirror": { "Enabled": false }, "Directory": a_directory }),
            ),
            b_entry,
        ]))
    };
    let exporting = receiver(json!({ "Enabled": false }));
    assert_all_succeeded(&run(&exporting, &embedded_args()).await);
    let user = b.tenant.mirror_target_upns[0].clone();
    let mut everyone = members_but(&b, &user);
    everyone.extend(a.members.iter().map(|m| mail_of(m)));
    assert_holds_each_once(&sim, &b, &user, None, &everyone);

    let nobody = receiver(json!({ "Enabled": false, "UserFilter": "department eq 'Nobody'" }));
    let refused = run(&nobody, &embedded_args()).await;
    let error = tenant(&refused, &b.tenant.tenant_id)
        .mailboxes
        .iter()
        .find_map(|m| m.error.clone())
        .unwrap_or_else(|| panic!("no mailbox of B was refused:\n{}", refused.human()));
    assert!(
        error.contains(&a.tenant.tenant_id) && error.contains("lists nobody"),
        "{error}"
    );
    assert_holds_each_once(&sim, &b, &user, None, &everyone);

    let confirmed = run(
        &nobody,
        &producer::cli::RunArgs {
            allow_mass_delete: true,
            ..embedded_args()
        },
    )
    .await;
    assert_all_succeeded(&confirmed);
    assert_holds_each_once(&sim, &b, &user, None, &members_but(&b, &user));
}
