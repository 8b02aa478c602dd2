//! Issue 13's fair tenants: how long a small tenant takes beside a large one, against the time it takes alone.
//!
//! The estate is one large tenant and several small ones ([`Estate::seed_fair`]). Each figure is a fresh estate
//! (every run is an initial sync): the small tenants each alone; all tenants in one producer run; and on RabbitMQ
//! the large tenant's run first, then, once its phase 2 is under way, one run per small tenant beside it (two
//! CronJobs), and the same small runs started together without the large one (what they cost each other). A small
//! tenant's time is from its run's start to its last final report.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use serde::Serialize;

use crate::estate::Estate;
use crate::figures::Budget;
use crate::fleet::{FleetOptions, Mode, Pool};

/// What to seed and how to run it.
#[derive(Debug, Clone, Copy)]
pub struct FairShape {
    /// Users of the large tenant.
    pub large_users: usize,
    /// Contacts of the large tenant (one user holds them).
    pub large_contacts: usize,
    /// Small tenants.
    pub small_tenants: usize,
    /// Users per small tenant.
    pub small_users: usize,
    /// Contacts per small tenant's user.
    pub small_contacts: usize,
}

/// One measured arrangement.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FairRow {
    /// Where the jobs ran.
    pub mode: String,
    /// How the tenants were started.
    pub scenario: String,
    /// `--tenant-jobs` (`None`: the mode's default).
    pub tenant_jobs: Option<usize>,
    /// Each small tenant's seconds, in tenant order.
    pub small_secs: Vec<f64>,
    /// Slowest small tenant's seconds.
    pub small_max_secs: f64,
    /// Largest of each small tenant's time over its time alone (`None` on the alone row).
    pub worst_over_alone: Option<f64>,
    /// The large tenant's seconds (`None` on the alone row).
    pub large_secs: Option<f64>,
    /// One run over every tenant: seconds before any tenant's job went out (every tenant's preparation); runs
    /// started separately: the longest of the small runs' own preparations.
    pub prepared_secs: Option<f64>,
}

/// Runs the group in each mode, with each `--tenant-jobs` of that mode (`None`: the default), and prints its
/// table; the rows go to the bench's JSON document.
pub async fn group(
    shape: FairShape,
    budget: Budget,
    latency: Duration,
    modes: &[(Mode, Vec<Option<usize>>)],
    opts: &FleetOptions,
) -> Result<Vec<FairRow>> {
    let mut rows = Vec::new();
    for (mode, variants) in modes {
        let alone = seeded(shape, budget, latency).await?;
        let mut alone_secs = Vec::new();
        with_transport(&alone, budget, *mode, opts, |args| {
            let alone = &alone;
            let alone_secs = &mut alone_secs;
            async move {
                for tenant in &alone.tenants[1..] {
                    let args = RunArgs {
                        tenants: vec![tenant.tenant_id.clone()],
                        ..args.clone_args()
                    };
                    let (report, wall) = timed(alone, budget, args).await?;
                    check(&report)?;
                    alone_secs.push(wall.as_secs_f64());
                }
                Ok(())
            }
        })
        .await?;
        rows.push(row(
            *mode,
            "each small tenant alone",
            None,
            &alone_secs,
            None,
            None,
        ));
        for tenant_jobs in variants {
            together_and_apart(
                shape,
                (budget, latency),
                (*mode, *tenant_jobs),
                opts,
                &alone_secs,
                &mut rows,
            )
            .await?;
        }
    }
    println!("{}", table(&rows));
    Ok(rows)
}

/// All tenants in one run, and on RabbitMQ the separate runs, each on a fresh estate.
async fn together_and_apart(
    shape: FairShape,
    (budget, latency): (Budget, Duration),
    (mode, tenant_jobs): (Mode, Option<usize>),
    opts: &FleetOptions,
    alone_secs: &[f64],
    rows: &mut Vec<FairRow>,
) -> Result<()> {
    {
        let together = seeded(shape, budget, latency).await?;
        let report = with_transport(&together, budget, mode, opts, |args| {
            let together = &together;
            async move {
                let args = RunArgs {
                    tenant_jobs: tenant_jobs.and_then(std::num::NonZeroUsize::new),
                    ..args.clone_args()
                };
                Ok(timed(together, budget, args).await?.0)
            }
        })
        .await?;
        check(&report)?;
        // Every tenant's clock starts when the run's preparations end; the preparations (listing every tenant's
        // users at once) count for each tenant too.
        let prepared = preparation_secs(&report);
        let secs: Vec<f64> = report
            .tenants
            .iter()
            .map(|t| prepared + t.duration_ms as f64 / 1000.0)
            .collect();
        let mut together = row(
            mode,
            "all tenants in one run",
            tenant_jobs,
            &secs[1..],
            Some(alone_secs),
            Some(secs[0]),
        );
        together.prepared_secs = Some(prepared);
        rows.push(together);
    }
    if let Mode::Broker { processes, .. } = mode {
        let apart = seeded(shape, budget, latency).await?;
        let pool = Pool::start(&apart, budget, processes, opts, "fair").await?;
        let measured = separate_runs(&apart, &pool, budget, tenant_jobs).await;
        pool.stop().await?;
        let (large, smalls) = measured?;
        let (walls, prepared): (Vec<f64>, Vec<f64>) = smalls.into_iter().unzip();
        let mut apart = row(
            mode,
            "large run first, then one run per small tenant",
            tenant_jobs,
            &walls,
            Some(alone_secs),
            Some(large),
        );
        apart.prepared_secs = Some(prepared.into_iter().fold(0.0, f64::max));
        rows.push(apart);
        // The same small runs started together without the large one: what they cost each other, so the row
        // above tells the large run's share from the fleet's size.
        let smalls_only = seeded(shape, budget, latency).await?;
        let pool = Pool::start(&smalls_only, budget, processes, opts, "fair").await?;
        let measured = small_runs_together(&smalls_only, &pool, budget, tenant_jobs).await;
        pool.stop().await?;
        let (walls, prepared): (Vec<f64>, Vec<f64>) = measured?.into_iter().unzip();
        let mut together = row(
            mode,
            "one run per small tenant, all started together, no large run",
            tenant_jobs,
            &walls,
            Some(alone_secs),
            None,
        );
        together.prepared_secs = Some(prepared.into_iter().fold(0.0, f64::max));
        rows.push(together);
    }
    Ok(())
}

async fn seeded(shape: FairShape, budget: Budget, latency: Duration) -> Result<Estate> {
    Estate::seed_fair(
        (shape.large_users, shape.large_contacts),
        (shape.small_tenants, shape.small_users, shape.small_contacts),
        budget,
        latency,
    )
    .await
}

/// `run` arguments a closure can copy (`RunArgs` is not `Clone`).
trait CloneArgs {
    fn clone_args(&self) -> RunArgs;
}

impl CloneArgs for RunArgs {
    fn clone_args(&self) -> RunArgs {
        RunArgs {
            amqp_url: self.amqp_url.clone(),
            queue_prefix: self.queue_prefix.clone(),
            state_dir: self.state_dir.clone(),
            tenants: self.tenants.clone(),
            workers: self.workers,
            idle_timeout_secs: self.idle_timeout_secs,
            tenant_jobs: self.tenant_jobs,
            ..RunArgs::embedded_default()
        }
    }
}

/// Runs `body` with `run` arguments for `mode`: embedded, or a worker pool started for it and stopped after.
async fn with_transport<T, F, Fut>(
    estate: &Estate,
    budget: Budget,
    mode: Mode,
    opts: &FleetOptions,
    body: F,
) -> Result<T>
where
    F: FnOnce(RunArgs) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    match mode {
        Mode::Embedded { workers, overlap } => {
            body(RunArgs {
                workers,
                ordered_phases: !overlap,
                idle_timeout_secs: opts.idle_timeout_secs,
                state_dir: Some(estate.state_dir.clone()),
                ..RunArgs::embedded_default()
            })
            .await
        }
        Mode::Broker { processes, .. } => {
            let pool = Pool::start(estate, budget, processes, opts, "fair").await?;
            let result = body(pool.args(estate)).await;
            pool.stop().await?;
            result
        }
    }
}

async fn timed(estate: &Estate, budget: Budget, args: RunArgs) -> Result<(RunReport, Duration)> {
    let settings = estate.settings(budget)?;
    estate.sim().reset_throttle();
    let started = Instant::now();
    let report = producer::run::execute(&settings, &args)
        .await
        .context("the producer's run failed")?;
    Ok((report, started.elapsed()))
}

/// A run that failed a tenant, or gave up waiting for a job's report, measures nothing.
fn check(report: &RunReport) -> Result<()> {
    if let Some(t) = report.tenants.iter().find(|t| t.error.is_some()) {
        bail!("tenant {} failed: {:?}", t.tenant_id, t.error);
    }
    let lost = report
        .tenants
        .iter()
        .flat_map(|t| t.mailboxes.iter())
        .filter(|m| {
            m.error
                .as_deref()
                .is_some_and(|e| e.starts_with("no final report"))
        })
        .map(|m| format!("{} ({})", m.mailbox, m.phase))
        .collect::<Vec<_>>();
    if !lost.is_empty() {
        bail!("no report for {} job(s), e.g. {}", lost.len(), lost[0]);
    }
    Ok(())
}

/// The large tenant's run, then (once a mailbox of the large tenant was written: its phase 2 is under way) one
/// run per small tenant, all at once. Returns the large run's seconds and each small run's.
async fn separate_runs(
    estate: &Estate,
    pool: &Pool,
    budget: Budget,
    tenant_jobs: Option<usize>,
) -> Result<(f64, Vec<(f64, f64)>)> {
    let per_tenant = tenant_jobs.and_then(std::num::NonZeroUsize::new);
    let only = |tenant: &str| RunArgs {
        tenants: vec![tenant.to_owned()],
        tenant_jobs: per_tenant,
        ..pool.args(estate)
    };
    let large = &estate.tenants[0];
    let large_run = timed(estate, budget, only(&large.tenant_id));
    let users: Vec<String> = large.user_upns.iter().map(|u| u.to_lowercase()).collect();
    let small_runs = async {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let stats = estate.sim().stats();
            let writing = users
                .iter()
                .any(|u| stats.mailboxes.get(u).is_some_and(|m| m.writes > 0));
            if writing {
                break;
            }
            if Instant::now() > deadline {
                bail!("the large tenant's phase 2 did not start within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        small_runs_together(estate, pool, budget, tenant_jobs).await
    };
    let (large, smalls) = tokio::join!(large_run, small_runs);
    let (report, wall) = large?;
    check(&report)?;
    Ok((wall.as_secs_f64(), smalls?))
}

/// One run per small tenant, all started at once: (wall, preparation) seconds of each.
async fn small_runs_together(
    estate: &Estate,
    pool: &Pool,
    budget: Budget,
    tenant_jobs: Option<usize>,
) -> Result<Vec<(f64, f64)>> {
    let runs = estate.tenants[1..].iter().map(|t| {
        let args = RunArgs {
            tenants: vec![t.tenant_id.clone()],
            tenant_jobs: tenant_jobs.and_then(std::num::NonZeroUsize::new),
            ..pool.args(estate)
        };
        timed(estate, budget, args)
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| {
            let (report, wall) = r?;
            check(&report)?;
            Ok((wall.as_secs_f64(), preparation_secs(&report)))
        })
        .collect()
}

/// Seconds of a run before its tenants' jobs went out: the run's time less its longest tenant's.
fn preparation_secs(report: &RunReport) -> f64 {
    let longest = report
        .tenants
        .iter()
        .map(|t| t.duration_ms)
        .max()
        .unwrap_or(0);
    report.duration_ms.saturating_sub(longest) as f64 / 1000.0
}

fn row(
    mode: Mode,
    scenario: &str,
    tenant_jobs: Option<usize>,
    small: &[f64],
    alone: Option<&[f64]>,
    large: Option<f64>,
) -> FairRow {
    let worst = alone.map(|alone| {
        small
            .iter()
            .zip(alone)
            .map(|(t, a)| if *a > 0.0 { t / a } else { f64::INFINITY })
            .fold(0.0, f64::max)
    });
    FairRow {
        mode: mode.label(),
        scenario: scenario.to_owned(),
        tenant_jobs,
        small_secs: small.to_vec(),
        small_max_secs: small.iter().copied().fold(0.0, f64::max),
        worst_over_alone: worst,
        large_secs: large,
        prepared_secs: None,
    }
}

fn table(rows: &[FairRow]) -> String {
    let mut out = String::from(
        "Fair tenants (issue 13):\n\n| mode | scenario | --tenant-jobs | small tenant s, slowest (alone: each) | worst small / alone | large tenant s | of which preparing s |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} |\n",
            r.mode,
            r.scenario,
            r.tenant_jobs
                .map_or("default".to_owned(), |n| n.to_string()),
            r.small_max_secs,
            r.worst_over_alone
                .map_or("-".to_owned(), |v| format!("**{v:.2}**")),
            r.large_secs.map_or("-".to_owned(), |v| format!("{v:.1}")),
            r.prepared_secs
                .map_or("-".to_owned(), |v| format!("{v:.2}")),
        ));
    }
    out
}
