//! `check`: for each tenant, without writing anything, whether a run would work and what it would cost.
//!
//! It asks for a token and reads its `roles` claim (each permission the tenant's options need and lacks is named
//! with its fix), looks up the shared mailbox and the central folder and lists the receiving users through the
//! very reads a run's preparation makes (`crate::prepare`), then probes the receiving mailboxes (a sample, or all)
//! with one request each, which answers 403/404 where a run would fail and counts contacts for the estimate
//! (`estimate`). Exit 0 when every tenant is ready, 1 otherwise, 2 for a configuration error.
//!
//! Layout: [`permissions`] (what the options need), [`estimate`] (the cost model), [`report`] (findings, table,
//! JSON).

pub mod estimate;
pub mod permissions;
pub mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use shared::config::TenantSettings;
use shared::graph::{ClientOptions, ErrorKind, GraphClient, TenantClient};
use shared::model::Mailbox;

use crate::cli::{RunArgs, EMBEDDED_WORKERS};
use crate::prepare;
use crate::{EXIT_FAILURES, EXIT_OK, EXIT_USAGE};
use estimate::{Estimate, Workload};
use report::{Check, CheckReport, Finding, MailboxSurvey, Status, TenantCheck, Unreachable};

/// Mailboxes probed per tenant without `--all`.
pub const DEFAULT_SAMPLE: usize = 20;
/// Mailboxes probed at once (each on its own Graph budget).
const PROBES_AT_ONCE: usize = 8;
/// Unreachable mailboxes named in the table (all are in the JSON).
const NAMED: usize = 10;

/// Options of `check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Configuration file (the same JSON as AUTOMATION_SYNCCONTACTS_CONFIG_JSON); default: the environment.
    #[arg(long, env = "CONTACTMIRROR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Only these tenants (repeatable); default: every configured tenant.
    #[arg(long = "tenant", env = "CONTACTMIRROR_TENANTS", value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Probe every receiving mailbox instead of a sample.
    #[arg(long)]
    pub all: bool,
    /// Mailboxes probed per tenant without --all (spread over the sorted list).
    #[arg(long, default_value_t = DEFAULT_SAMPLE)]
    pub sample: usize,
    /// Print JSON instead of a table.
    #[arg(long, env = "CONTACTMIRROR_JSON")]
    pub json: bool,
}

/// Runs `check` and prints its report.
pub async fn command(args: CheckArgs) -> Result<ExitCode> {
    let settings = match crate::run::load_settings(&RunArgs {
        config: args.config.clone(),
        tenants: args.tenants.clone(),
        ..RunArgs::embedded_default()
    }) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error:#}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let graph = GraphClient::new(ClientOptions::default()).context("building the Graph client")?;
    let sample = (!args.all).then_some(args.sample.max(1));
    let mut tenants = Vec::new();
    for tenant in settings.tenants.iter().filter(|t| {
        args.tenants.is_empty()
            || args
                .tenants
                .iter()
                .any(|wanted| wanted.eq_ignore_ascii_case(&t.tenant_id))
    }) {
        tenants.push(check_tenant(&graph, tenant, sample).await);
    }
    let report = CheckReport::new(tenants);
    let text = if args.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&report).context("serialising the check")?
        )
    } else {
        report.table()
    };
    crate::ops::print(&text)?;
    Ok(ExitCode::from(if report.ready {
        EXIT_OK
    } else {
        EXIT_FAILURES
    }))
}

/// How many directory persons each receiving mailbox would get: the tenant's own directory as its `Directory`
/// settings select now (read here; a few requests), else the receiving users as a stand-in when it cannot be
/// read (the permission finding says why). `FromTenants` sources are not counted.
async fn directory_persons(
    client: &shared::graph::TenantClient,
    tenant: &TenantSettings,
    receiving: usize,
) -> u64 {
    let options = &tenant.distribution.directory;
    if !options.enabled {
        return 0;
    }
    match client
        .read_directory(options, tenant.shared_mailbox())
        .await
    {
        Ok(read) => shared::directory::select(&read.read(), options).len() as u64,
        Err(_) => receiving as u64,
    }
}

/// Checks one tenant; reads only. `sample`: mailboxes to probe (`None`: all).
pub async fn check_tenant(
    graph: &GraphClient,
    tenant: &TenantSettings,
    sample: Option<usize>,
) -> TenantCheck {
    let client = graph.tenant(tenant);
    let mut findings = Vec::new();
    let roles = match client.granted_roles().await {
        Ok(roles) => roles,
        Err(error) => {
            findings.push(Finding::new(
                Check::Token,
                Status::Fail,
                prepare::explain(tenant, &error, "getting a token"),
            ));
            findings.push(Finding::new(
                Check::Mailboxes,
                Status::Skipped,
                "not checked without a token",
            ));
            return TenantCheck::new(
                tenant.tenant_id.clone(),
                None,
                Vec::new(),
                None,
                None,
                findings,
            );
        }
    };
    findings.push(Finding::new(
        Check::Token,
        Status::Ok,
        if roles.is_empty() {
            "issued, carrying no application role".to_owned()
        } else {
            format!("issued; roles: {}", roles.join(", "))
        },
    ));
    let needed = permissions::required(tenant);
    let missing = permissions::missing(&needed, &roles);

    let shared = shared_mailbox_findings(&client, tenant, &mut findings).await;
    let (survey, estimate) = match prepare::receiving_users(&client, tenant, shared.as_ref()).await
    {
        Ok((users, warnings)) => {
            // A TestUserList entry matching nobody or several users: worth fixing before the run.
            findings.extend(
                warnings
                    .into_iter()
                    .map(|warning| Finding::new(Check::Mailboxes, Status::Warn, warning)),
            );
            let survey = survey(&client, &users, sample).await;
            findings.push(mailbox_finding(&survey));
            let estimate = estimate::estimate(&Workload {
                mailboxes: users.len() as u64,
                mirror: tenant.distribution.mirror_enabled,
                directory_persons: directory_persons(&client, tenant, users.len()).await,
                contacts_per_mailbox: survey.contacts_per_mailbox,
                workers: EMBEDDED_WORKERS as u64,
            });
            findings.push(estimate_finding(&estimate, &survey));
            (Some(survey), Some(estimate))
        }
        Err(error) => {
            findings.push(Finding::new(Check::Mailboxes, Status::Fail, error));
            (None, None)
        }
    };
    // Permissions go right after the token; a Contacts.ReadWrite absent from the token but with every probed
    // mailbox answering is granted another way (Exchange RBAC for Applications does not show in the token).
    let answered = survey
        .as_ref()
        .is_some_and(|s| s.probed > 0 && s.unreachable.is_empty() && s.not_probed == 0);
    let permission_findings = missing.iter().map(|r| {
        let rbac = r.permission == "Contacts.ReadWrite" && answered;
        let status = if rbac { Status::Warn } else { Status::Fail };
        let detail = if rbac {
            format!(
                "{} not in the token, yet every probed mailbox answers: granted through Exchange RBAC for \
                 Applications? (writes are not probed)",
                r.permission
            )
        } else {
            format!("{} missing (needed for {})", r.permission, r.needed_for)
        };
        Finding::new(Check::Permission, status, detail).fix(permissions::fix(r.permission, &tenant.client_id))
    });
    let mut permission_findings: Vec<Finding> = permission_findings.collect();
    if permission_findings.is_empty() {
        let names: Vec<&str> = needed.iter().map(|r| r.permission).collect();
        permission_findings.push(Finding::new(
            Check::Permission,
            Status::Ok,
            format!("all needed: {}", names.join(", ")),
        ));
    }
    findings.splice(1..1, permission_findings);
    TenantCheck::new(
        tenant.tenant_id.clone(),
        Some(roles),
        missing,
        survey,
        estimate,
        findings,
    )
}

/// The shared mailbox and the central folder (when the mirror is on), through preparation's reads.
async fn shared_mailbox_findings(
    client: &TenantClient,
    tenant: &TenantSettings,
    findings: &mut Vec<Finding>,
) -> Option<Mailbox> {
    if !tenant.distribution.mirror_enabled {
        findings.push(Finding::new(
            Check::SharedMailbox,
            Status::Skipped,
            "Mirror.Enabled is false: no shared mailbox, no central folder",
        ));
        return None;
    }
    let shared = match prepare::shared_mailbox(client, tenant).await {
        Ok(shared) => shared?,
        Err(error) => {
            findings.push(Finding::new(Check::SharedMailbox, Status::Fail, error));
            findings.push(Finding::new(
                Check::CentralFolder,
                Status::Skipped,
                "not checked without the shared mailbox",
            ));
            return None;
        }
    };
    findings.push(Finding::new(
        Check::SharedMailbox,
        Status::Ok,
        format!("{} ({})", shared.upn, shared.id),
    ));
    let name = &tenant.mirror.central_folder_name;
    findings.push(match client.find_top_level_folder(&shared.id, name).await {
        Ok(Some(_)) => Finding::new(
            Check::CentralFolder,
            Status::Ok,
            format!("\"{name}\" exists"),
        ),
        Ok(None) => Finding::new(
            Check::CentralFolder,
            Status::Ok,
            format!("\"{name}\" does not exist yet: the first run creates it"),
        ),
        Err(error) => Finding::new(
            Check::CentralFolder,
            Status::Fail,
            prepare::explain(tenant, &error, "looking for the central folder"),
        ),
    });
    Some(shared)
}

/// Which of `count` sorted mailboxes to probe: all, or `n` spread evenly (deterministic, so two checks agree).
pub fn sample_indices(count: usize, sample: Option<usize>) -> Vec<usize> {
    match sample {
        Some(n) if n < count => (0..n).map(|i| i * count / n).collect(),
        _ => (0..count).collect(),
    }
}

/// Probes the sampled mailboxes, a few at a time.
async fn survey(client: &TenantClient, users: &[Mailbox], sample: Option<usize>) -> MailboxSurvey {
    let picked: Vec<&Mailbox> = sample_indices(users.len(), sample)
        .into_iter()
        .filter_map(|i| users.get(i))
        .collect();
    let probes: Vec<(&Mailbox, Result<u64, shared::graph::GraphError>)> =
        futures_util::stream::iter(picked.iter().copied())
            .map(|user| async move { (user, client.contact_count(&user.id).await) })
            .buffered(PROBES_AT_ONCE)
            .collect()
            .await;
    let mut unreachable = Vec::new();
    let (mut counted, mut contacts, mut not_probed) = (0u64, 0u64, 0usize);
    for (user, probe) in probes {
        match probe {
            Ok(count) => {
                counted += 1;
                contacts += count;
            }
            Err(error) => match (error.kind(), error.status()) {
                (ErrorKind::AccessDenied, _) | (_, Some(403)) => unreachable.push(Unreachable {
                    mailbox: user.upn.clone(),
                    status: 403,
                    reason: "access denied: outside the app's RBAC scope or application access policy"
                        .into(),
                }),
                (ErrorKind::MailboxNotEnabled | ErrorKind::ItemNotFound, _) | (_, Some(404)) => {
                    unreachable.push(Unreachable {
                        mailbox: user.upn.clone(),
                        status: 404,
                        reason: "no Exchange Online mailbox (licensed without one, or not provisioned yet)"
                            .into(),
                    })
                }
                _ => {
                    tracing::debug!(mailbox = %user.upn, %error, "mailbox probe failed");
                    not_probed += 1;
                }
            },
        }
    }
    MailboxSurvey {
        taking_part: users.len(),
        probed: picked.len(),
        unreachable,
        not_probed,
        contacts_per_mailbox: if counted == 0 {
            0.0
        } else {
            contacts as f64 / counted as f64
        },
    }
}

/// The mailboxes line: how many take part, how many were probed, which did not answer.
fn mailbox_finding(survey: &MailboxSurvey) -> Finding {
    let probed = if survey.probed == survey.taking_part {
        format!("all {} probed", survey.probed)
    } else {
        format!("{} probed (--all probes every one)", survey.probed)
    };
    if !survey.unreachable.is_empty() {
        let mut finding = Finding::new(
            Check::Mailboxes,
            Status::Fail,
            format!(
                "{} take part; {probed}: {} answer 403/404 and would fail every run",
                survey.taking_part,
                survey.unreachable.len()
            ),
        )
        .fix(
            "give the app access to these mailboxes (RBAC scope / access policy), or leave them out \
             (TestUserList, TargetGroups)",
        );
        finding.more = survey
            .unreachable
            .iter()
            .take(NAMED)
            .map(|u| format!("{} {}: {}", u.status, u.mailbox, u.reason))
            .collect();
        if survey.unreachable.len() > NAMED {
            finding.more.push(format!(
                "... and {} more (--json lists all)",
                survey.unreachable.len() - NAMED
            ));
        }
        finding
    } else if survey.not_probed > 0 {
        Finding::new(
            Check::Mailboxes,
            Status::Warn,
            format!(
                "{} take part; {probed}: {} could not be probed (throttled or Graph failing; try again)",
                survey.taking_part, survey.not_probed
            ),
        )
    } else {
        Finding::new(
            Check::Mailboxes,
            Status::Ok,
            format!("{} take part; {probed}: all answer", survey.taking_part),
        )
    }
}

/// The estimate line.
fn estimate_finding(estimate: &Estimate, survey: &MailboxSurvey) -> Finding {
    Finding::new(
        Check::Estimate,
        Status::Ok,
        format!(
            "first run: about {} requests ({} on the shared mailbox), {} at Graph's budget \
             ({:.0} contacts per mailbox on average, no overlap assumed; folder lookups and change feeds add a \
             few per mailbox)",
            estimate::thousands(estimate.requests),
            estimate::thousands(estimate.shared_mailbox_requests),
            estimate::human_duration(estimate.seconds),
            survey.contacts_per_mailbox
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_the_list_and_all_means_all() {
        assert_eq!(sample_indices(10, Some(5)), [0, 2, 4, 6, 8]);
        assert_eq!(sample_indices(3, Some(20)), [0, 1, 2]);
        assert_eq!(sample_indices(4, None), [0, 1, 2, 3]);
        assert!(sample_indices(0, Some(5)).is_empty());
        let picked = sample_indices(1_000, Some(20));
        assert_eq!(picked.len(), 20);
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
    }
}
