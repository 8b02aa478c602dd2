//! `TestUserList` entries naming users by mail or alias, and a mail two users share: what the producer selects,
//! the worker accepts, and nobody else takes part (the forged job outside the selection is
//! `redelivery::forged_and_malformed_jobs_are_dead_lettered_and_write_nothing` and the worker's unit tests).

use std::collections::BTreeSet;

use graphsim::{EstateParams, SimConfig, UserSeed};
use shared::message::Phase;

use crate::fleet::{embedded_args, run};
use crate::support::{self, Estate};

/// Failed before the fix: the producer selected Ann (named by her mail), the seeded user named by alias, and
/// Ann's second account (whose mail is Ann's UPN), but the worker compared job UPNs with the list, so phase 1
/// was dead-lettered `untrusted_job` and the run failed. Now the run succeeds with exactly the users the
/// entries name, the shared `team@` mail selects nobody, and both are reported as warnings (by `check` too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_named_by_mail_or_alias_take_part_and_a_shared_mail_selects_nobody() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 1,
            users_per_tenant: 3,
            contacts_per_user: 2,
            overlap: 0.0,
            seed: 81,
        },
    )
    .await;
    let tenant = &estate.tenants[0];
    let domain = &tenant.tenant_id;
    let user = |local: &str, mail: &str| UserSeed {
        upn: format!("{local}@{domain}"),
        display_name: local.to_owned(),
        mail: Some(format!("{mail}@{domain}")),
        ..UserSeed::default()
    };
    for seed in [
        user("ann", "ann.smith"),
        // Ann's second account: its mail is Ann's UPN.
        user("ann.admin", "ANN"),
        user("cat", "team"),
        user("dan", "team"),
    ] {
        estate.sim.add_user(domain, seed);
    }
    let by_alias = tenant.mirror_target_upns[0].clone();
    let alias = by_alias.split('@').next().expect("an alias").to_uppercase();
    let mut document = estate.config_json();
    document["MicrosoftTenants"][0]["TestUserList"] = serde_json::json!([
        format!("ann.smith@{domain}"),
        alias,
        format!("ann@{domain}"),
        format!("team@{domain}"),
    ]);
    let settings = support::settings_from(&document);

    // `check` tells the operator before any run.
    let (_, table, stderr) = crate::check::producer(&["check"], &document).await;
    assert!(
        table.contains(&format!("team@{domain} is ambiguous")),
        "{table}\n{stderr}"
    );

    let report = run(&settings, &embedded_args()).await;

    assert!(report.succeeded(), "{}", report.human());
    let report = &report.tenants[0];
    let phase2: BTreeSet<String> = report
        .mailboxes
        .iter()
        .filter(|m| m.phase == Phase::Phase2)
        .map(|m| m.mailbox.to_lowercase())
        .collect();
    assert_eq!(
        phase2,
        BTreeSet::from([format!("ann@{domain}"), by_alias.to_lowercase()]),
        "{report:?}"
    );
    let warnings = report.warnings.join("\n");
    assert!(
        warnings.contains(&format!("team@{domain} is ambiguous")),
        "{warnings}"
    );
    assert!(
        warnings.contains(&format!("ann.admin@{domain}")),
        "{warnings}"
    );
    for outside in ["ann.admin", "cat", "dan"] {
        assert!(
            estate
                .sim
                .contacts(domain, &format!("{outside}@{domain}"), None)
                .is_empty(),
            "{outside} is outside the selection and received contacts"
        );
    }
}
