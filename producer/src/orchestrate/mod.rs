//! Runs tenants through their two phases over any job transport: submit each tenant's phase-1 job, and when its
//! final report arrives (or, overlapped, its plan), that tenant's phase-2 jobs; collect every report into the
//! [`RunReport`].
//!
//! Tenants proceed independently: one tenant's slow or failed phase 1 never holds another back. [`run`] takes the
//! leases and prepares the tenants; `course` follows the run's jobs to their end; `phase2` makes a tenant's phase-2
//! jobs; `request` says what the run covers.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use shared::config::TenantSettings;
use shared::graph::GraphClient;
use tracing::{info, warn};
use uuid::Uuid;

use crate::dispatch::Dispatch;
use crate::lease::LeaseError;
use crate::prepare::{directory_sources, prepare, CentralExpectation, PreparedTenant};
use crate::run_status::Tracked;
use crate::summary::{RunReport, TenantReport};

mod course;
mod phase2;
mod request;

use course::Course;
pub use request::RunRequest;

/// How often a held lease is asked for again while waiting for it.
const LEASE_POLL: Duration = Duration::from_secs(2);

/// Takes `tenant_id`'s lease; while another run holds it, asks again every [`LEASE_POLL`] for up to `wait`.
async fn take_lease<D: Dispatch>(
    dispatch: &mut D,
    tenant_id: &str,
    wait: Duration,
) -> Result<(), LeaseError> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        match dispatch.lease(tenant_id).await {
            Err(LeaseError::Held { .. }) if Instant::now() < deadline => {
                if !told {
                    info!(
                        tenant = tenant_id,
                        wait_secs = wait.as_secs(),
                        "another run holds the tenant's lease; waiting for it"
                    );
                    told = true;
                }
                tokio::time::sleep(LEASE_POLL.min(deadline - Instant::now())).await;
            }
            other => return other,
        }
    }
}

/// Runs every selected tenant to the end and returns the report.
pub async fn run<D: Dispatch>(
    dispatch: &mut D,
    graph: &GraphClient,
    request: RunRequest<'_>,
) -> Result<RunReport> {
    let run_id = Uuid::now_v7();
    let started_at = Utc::now();
    let started = Instant::now();
    let mut dispatch = Tracked::new(dispatch, run_id, started_at, request.dry_run);
    dispatch.begin(run_id).await?;
    let (tenants, disabled) = request.tenants();
    let preparations = prepare_tenants(&mut dispatch, graph, &request, &tenants).await;
    let mut course = Course::new(run_id, &request, tenants.len(), dispatch.limits());
    for (tenant, outcome) in tenants.into_iter().zip(preparations) {
        course.add_tenant(tenant, outcome, &mut dispatch);
    }
    dispatch.prepared(&course.reports());
    course.submit_released(&mut dispatch).await?;
    course.follow(&mut dispatch).await?;
    let mut reports = course.finish(&mut dispatch).await;
    for tenant in disabled {
        info!(tenant = %tenant.tenant_id, "tenant disabled (Enabled: false); not run");
        reports.push(TenantReport {
            tenant_id: tenant.tenant_id.clone(),
            disabled: true,
            ..TenantReport::default()
        });
    }
    for invalid in &request.settings.invalid_tenants {
        if request.selects(&invalid.name) {
            reports.push(TenantReport {
                tenant_id: invalid.name.clone(),
                error: Some(format!("configuration: {}", invalid.error)),
                ..TenantReport::default()
            });
        }
    }
    for report in &mut reports {
        report.mailboxes.sort_by(|a, b| {
            (b.outcome == "failed")
                .cmp(&(a.outcome == "failed"))
                .then(a.mailbox.cmp(&b.mailbox))
        });
    }
    Ok(RunReport {
        run_id,
        mode: dispatch.mode().to_owned(),
        dry_run: request.dry_run,
        started_at,
        finished_at: Utc::now(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        tenants: reports,
    })
}

/// Takes each tenant's lease, one after another, then prepares the tenants together (shared mailbox, central
/// folder, receiving users, directory): what each tenant's jobs are made from, or why it has none.
///
/// The lease comes before anything is read or written (preparing may create the central folder). A dry run writes
/// nothing and keeps no state, so it needs none and can run beside a real one.
async fn prepare_tenants(
    dispatch: &mut impl Dispatch,
    graph: &GraphClient,
    request: &RunRequest<'_>,
    tenants: &[&TenantSettings],
) -> Vec<Result<PreparedTenant, String>> {
    let mut leases = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        leases.push(if request.dry(tenant) {
            Ok(())
        } else {
            take_lease(dispatch, &tenant.tenant_id, request.wait_for_lease).await
        });
    }
    futures_util::future::join_all(tenants.iter().zip(leases).map(|(tenant, lease)| async move {
        let expected = if request.cleanup.is_some() {
            // Cleanup creates nothing and empties the folder it finds.
            CentralExpectation::Unknown
        } else if request.rebuild_central {
            CentralExpectation::Rebuild
        } else {
            request
                .state
                .and_then(|store| store.filled_central(&tenant.tenant_id))
                .map_or(CentralExpectation::Unknown, CentralExpectation::Filled)
        };
        // The users feed an earlier run kept (a dry run or a cleanup keeps none, so it lists every user).
        // Cleanup never creates a folder: it is prepared as a dry run is.
        let dry = request.dry(tenant) || request.cleanup.is_some();
        let store = request.state.filter(|_| !dry);
        let kept = store
            .filter(|_| tenant.distribution.directory.enabled)
            .and_then(|store| store.load_users(tenant));
        let ready = match lease {
            Ok(()) => match directory_sources(request.settings, tenant) {
                Ok(sources) => prepare(graph, tenant, &sources, dry, &expected, kept).await,
                Err(error) => Err(error),
            },
            Err(refused) => Err(refused.to_string()),
        };
        if let (Ok(ready), Some(store)) = (&ready, store) {
            if let Some(users) = ready.directory.as_ref().and_then(|d| d.users.as_ref()) {
                // Kept at once: it describes the directory, whatever the jobs do. A failure to keep it only
                // makes the next run list every user.
                if let Err(error) = store.save_users(tenant, users) {
                    warn!(tenant = %tenant.tenant_id, error = %format!("{error:#}"), "could not keep the users feed");
                }
            }
        }
        ready
    }))
    .await
}
