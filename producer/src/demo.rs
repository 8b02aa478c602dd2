//! `demo`: the whole product on one machine, no tenant and no broker needed.
//!
//! Starts graphsim in-process, seeds tenants with a few hundred mailboxes (guests, disabled and unlicensed
//! accounts, users without a mailbox, overlapping contacts), runs the embedded sync twice through exactly the code
//! a real run uses, and shows what each run did: the first mirrors everything, the second writes nothing. Beside
//! the mirror tenants, a directory-only tenant (issue 11) gets its directory into every user's "Company Directory".

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use graphsim::{DirectoryParams, EstateParams, SimConfig};
use shared::config::Settings;

use crate::cli::RunArgs;
use crate::run::{execute, finish};
use crate::summary::RunReport;
use crate::{EXIT_FAILURES, EXIT_OK, EXIT_USAGE};
use shared::message::FailureReason;

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Tenants to simulate.
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Users per tenant.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Personal contacts per user.
    #[arg(long, default_value_t = 10)]
    pub contacts: usize,
    /// In-process workers (jobs at once).
    #[arg(long, default_value_t = crate::cli::EMBEDDED_WORKERS)]
    pub workers: usize,
    /// Write the first run's report as JSON here.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Write the first run's report as an HTML page here.
    #[arg(long)]
    pub report_html: Option<std::path::PathBuf>,
}

/// Runs the demo. graphsim seeds a few unreachable mailboxes on purpose (users without an Exchange mailbox, users an
/// application access policy blocks): they are labelled `expected` (and, on the second run, the mailbox-less ones
/// `not_applicable` through the producer's state, as in a real tenant). Exit status 0 when everything else
/// succeeded in both runs, 1 otherwise.
pub async fn command(args: DemoArgs) -> Result<ExitCode> {
    if args.tenants == 0 || args.users == 0 {
        eprintln!("error: --tenants and --users must be at least 1");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let sim = graphsim::spawn(SimConfig::default())
        .await
        .context("starting graphsim on loopback")?;
    let tenants = graphsim::seed_estate(
        &sim,
        EstateParams {
            tenants: args.tenants,
            users_per_tenant: args.users,
            contacts_per_user: args.contacts,
            overlap: 0.2,
            seed: 2026,
        },
    );
    let directory = graphsim::seed_directory(
        &sim,
        DirectoryParams {
            domain: "directory-demo.onmicrosoft.com".into(),
            ..DirectoryParams::default()
        },
    );
    let mailboxes: usize = tenants
        .iter()
        .chain([&directory.tenant])
        .map(|t| t.user_upns.len() + 1)
        .sum();
    println!(
        "graphsim is standing in for Microsoft Graph at {} with {} mirror tenants, a directory-only tenant ({}) \
         and {mailboxes} mailboxes",
        sim.graph_url(),
        tenants.len(),
        directory.tenant.tenant_id
    );
    let mut entries: Vec<serde_json::Value> = tenants
        .iter()
        .map(|t| {
            serde_json::json!({
                "TenantId": t.tenant_id,
                "ClientId": t.client_id,
                "ClientSecret": t.client_secret,
                "GlobalAddressBookUserId": t.shared_mailbox_upn,
                "AuthorityHost": sim.authority_url(),
                "GraphEndpoint": sim.graph_url(),
            })
        })
        .collect();
    let d = &directory.tenant;
    entries.push(serde_json::json!({
        "TenantId": d.tenant_id,
        "ClientId": d.client_id,
        "ClientSecret": d.client_secret,
        "AuthorityHost": sim.authority_url(),
        "GraphEndpoint": sim.graph_url(),
        "Mirror": { "Enabled": false },
        "Directory": { "Enabled": true, "MemberTypes": ["Member", "Contact"] },
        "TargetFolder": "Company Directory",
    }));
    let document = serde_json::json!({ "MicrosoftTenants": entries }).to_string();
    let env =
        move |name: &str| (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| document.clone());
    let settings = Settings::from_sources(&env, None).context("the demo configuration")?;
    // The second run starts from the change feeds the first one kept: unchanged mailboxes cost one request per
    // phase. A directory of the demo's own, so the demo never touches a real run's state.
    let state_dir = std::env::temp_dir().join(format!(
        "contactmirror-demo-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let run_args = RunArgs {
        workers: args.workers.max(1),
        state_dir: Some(state_dir.clone()),
        ..RunArgs::embedded_default()
    };

    println!(
        "\n== first run: mirror every user's contacts through the central folder; the directory tenant's \
         directory into every user's \"Company Directory\"\n"
    );
    // A failure is what the demo intends only for a seeded irregular user (one graphsim lists among the users but
    // not among the mirror's targets) and only for the reasons it was seeded with.
    let irregular: std::collections::BTreeSet<String> = tenants
        .iter()
        .chain([&directory.tenant])
        .flat_map(|t| {
            t.user_upns
                .iter()
                .filter(|u| !t.mirror_target_upns.contains(u))
                .map(|u| u.to_lowercase())
        })
        .collect();
    let expected = move |report: &mut RunReport| {
        for tenant in &mut report.tenants {
            tenant.mark_expected(&|mailbox: &str, reason| {
                matches!(
                    reason,
                    FailureReason::NoMailbox | FailureReason::AccessDenied
                ) && irregular.contains(&mailbox.to_lowercase())
            });
        }
    };
    let mut first = execute(&settings, &run_args).await?;
    expected(&mut first);
    finish(&first, args.report.as_deref(), args.report_html.as_deref())?;
    let first_stats = sim.stats();
    println!(
        "\n(graphsim seeded users without an Exchange mailbox and users an application access policy blocks, on \
         purpose: each is listed as expected with its reason; every other mailbox is mirrored. In a real tenant the \
         first run fails a mailbox-less user and later runs list it as not applicable.)"
    );

    sim.reset_stats();
    println!("\n== second run: nothing changed, so nothing should be written\n");
    let mut second = execute(&settings, &run_args).await?;
    expected(&mut second);
    finish(&second, None, None)?;
    let second_stats = sim.stats();
    let _ = std::fs::remove_dir_all(&state_dir);
    let per_mailbox = |ops: u64| ops as f64 / mailboxes.max(1) as f64;
    println!(
        "\ngraphsim saw, over {mailboxes} mailboxes:\n  first run:  {:>6} writes, {:>6} Graph requests ({:.1} per mailbox)\n  \
         second run: {:>6} writes, {:>6} Graph requests ({:.1} per mailbox: one change check per folder, \
         nothing read in full, except the directory tenant's few mailboxes)",
        first_stats.total_writes(),
        first_stats.graph_operations,
        per_mailbox(first_stats.graph_operations),
        second_stats.total_writes(),
        second_stats.graph_operations,
        per_mailbox(second_stats.graph_operations),
    );
    Ok(ExitCode::from(if first.succeeded() && second.succeeded() {
        EXIT_OK
    } else {
        EXIT_FAILURES
    }))
}
