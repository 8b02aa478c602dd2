//! Run history: every run's JSON report (the one `run --report` writes) kept in the state directory as
//! `runs/<started>-<run id>.json`, the newest `--keep-runs` kept, and `history` showing them as a table.
//!
//! Why files next to the state: a CronJob or CI runner has no other memory between runs, and the state
//! directory is already the volume that survives them. The file name starts with the start time (UTC, fixed
//! width), so the names sort by age and pruning needs no parsing. Only files of that form are ever deleted.
//! Keeping history is best effort: a failure is logged and never changes the run's outcome.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use tracing::warn;
use uuid::Uuid;

use crate::ops::table::{self, Align};
use crate::state::StateStore;
use crate::summary::{RunReport, TenantReport};
use crate::{EXIT_OK, EXIT_USAGE};

/// Runs kept by default.
pub const DEFAULT_KEEP: usize = 50;
/// The directory under the state directory.
const RUNS: &str = "runs";
/// Format of the time a file name starts with.
const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";

/// `run`'s history option.
#[derive(Debug, Clone, Args)]
pub struct KeepArgs {
    /// Keep the JSON reports of this many runs in <state dir>/runs (0: keep none); `history` shows them.
    #[arg(long, env = "CONTACTMIRROR_KEEP_RUNS", default_value_t = DEFAULT_KEEP)]
    pub keep_runs: usize,
}

impl Default for KeepArgs {
    fn default() -> Self {
        Self {
            keep_runs: DEFAULT_KEEP,
        }
    }
}

/// Options of `history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The state directory the runs kept their history in; default: as `run`.
    #[arg(long, env = "CONTACTMIRROR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Only this tenant (as configured, case-insensitive).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Show at most this many runs, newest first.
    #[arg(long, default_value_t = 10)]
    pub last: usize,
    /// Print JSON instead of a table.
    #[arg(long, env = "CONTACTMIRROR_JSON")]
    pub json: bool,
}

/// The kept runs of one state directory.
#[derive(Debug, Clone)]
pub struct RunHistory {
    dir: PathBuf,
}

impl RunHistory {
    /// The history kept under `state_dir`.
    pub fn in_state_dir(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(RUNS),
        }
    }

    /// The file `report` is kept in.
    pub fn file_of(&self, report: &RunReport) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.json",
            report.started_at.format(STAMP),
            report.run_id
        ))
    }

    /// Keeps `report` and deletes all but the newest `keep` runs (`keep` 0: keeps nothing, deletes nothing).
    pub fn keep(&self, report: &RunReport, keep: usize) -> Result<()> {
        if keep == 0 {
            return Ok(());
        }
        crate::files::create_private_dir(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.file_of(report);
        let json = serde_json::to_vec_pretty(report).context("serialising the run report")?;
        crate::files::write_atomically(&path, &json)
            .with_context(|| format!("writing {}", path.display()))?;
        let files = self.files()?;
        for old in files.iter().skip(keep) {
            std::fs::remove_file(old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }

    /// The kept reports' files, newest first. A missing directory is an empty history.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let mut files: BTreeSet<PathBuf> = BTreeSet::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading {}", self.dir.display()))?
                .path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_run_file)
            {
                files.insert(path);
            }
        }
        Ok(files.into_iter().rev().collect())
    }

    /// The newest `last` runs (of `tenant`'s, when given, with only that tenant in them), newest first. A
    /// file that cannot be read is skipped with a warning: one damaged file hides nothing else.
    pub fn load(&self, last: usize, tenant: Option<&str>) -> Result<Vec<RunReport>> {
        let mut runs = Vec::new();
        for path in self.files()? {
            if runs.len() >= last {
                break;
            }
            let parsed = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<RunReport>(&bytes)?));
            let mut report = match parsed {
                Ok(report) => report,
                Err(error) => {
                    warn!(file = %path.display(), %error, "skipping an unreadable run report");
                    continue;
                }
            };
            if let Some(wanted) = tenant {
                report
                    .tenants
                    .retain(|t| t.tenant_id.eq_ignore_ascii_case(wanted));
                if report.tenants.is_empty() {
                    continue;
                }
            }
            runs.push(report);
        }
        Ok(runs)
    }
}

/// `<stamp>-<uuid>.json`, as [`RunHistory::file_of`] names it.
fn is_run_file(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".json") else {
        return false;
    };
    let Some((stamp, id)) = stem.split_once('-') else {
        return false;
    };
    stamp.len() == "20260101T000000.000Z".len()
        && stamp.starts_with(|c: char| c.is_ascii_digit())
        && Uuid::parse_str(id).is_ok()
}

/// Keeps `report` in `state_dir`'s history (when there is a state directory); a failure is only logged.
pub fn keep_after_run(report: &RunReport, state_dir: Option<&Path>, keep: usize) {
    let Some(dir) = state_dir else { return };
    if let Err(error) = RunHistory::in_state_dir(dir).keep(report, keep) {
        warn!(
            error = format!("{error:#}"),
            "could not keep the run in the history"
        );
    }
}

/// What a tenant's run amounts to, phases added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Contacts created (or, in a dry run, that would be).
    pub created: u64,
    /// Contacts updated.
    pub updated: u64,
    /// Contacts deleted.
    pub deleted: u64,
    /// Mailboxes that failed (each counted once, whatever its phases).
    pub failed: u64,
}

/// The totals of one tenant's report.
pub fn totals(tenant: &TenantReport) -> Totals {
    let mut totals = Totals::default();
    for counts in tenant.phases.values() {
        totals.created += counts.created;
        totals.updated += counts.updated;
        totals.deleted += counts.deleted;
    }
    let failed: BTreeSet<&str> = tenant
        .mailboxes
        .iter()
        .filter(|m| m.outcome == "failed")
        .map(|m| m.mailbox.as_str())
        .collect();
    totals.failed = failed.len() as u64;
    totals
}

/// One run as `history --json` prints it.
#[derive(Debug, Serialize)]
struct RunLine<'a> {
    run_id: Uuid,
    started_at: chrono::DateTime<chrono::Utc>,
    duration_ms: u64,
    dry_run: bool,
    succeeded: bool,
    tenants: Vec<TenantLine<'a>>,
}

#[derive(Debug, Serialize)]
struct TenantLine<'a> {
    tenant_id: &'a str,
    #[serde(flatten)]
    totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The runs as a table: one row per run and tenant, newest first.
pub fn table(runs: &[RunReport]) -> String {
    let mut rows = Vec::new();
    for run in runs {
        for (i, tenant) in run.tenants.iter().enumerate() {
            let t = totals(tenant);
            let status = match (tenant.failed(), run.dry_run) {
                (true, _) => "FAILED",
                (false, true) => "ok (dry run)",
                (false, false) => "ok",
            };
            let first = i == 0;
            rows.push(vec![
                if first {
                    run.run_id.to_string()
                } else {
                    String::new()
                },
                if first {
                    run.started_at.format("%Y-%m-%d %H:%M:%S").to_string()
                } else {
                    String::new()
                },
                if first {
                    format!("{:.1}s", run.duration_ms as f64 / 1000.0)
                } else {
                    String::new()
                },
                tenant.tenant_id.clone(),
                t.created.to_string(),
                t.updated.to_string(),
                t.deleted.to_string(),
                t.failed.to_string(),
                status.to_owned(),
            ]);
        }
    }
    table::render(
        &[
            ("RUN", Align::Left),
            ("STARTED (UTC)", Align::Left),
            ("DURATION", Align::Right),
            ("TENANT", Align::Left),
            ("CREATED", Align::Right),
            ("UPDATED", Align::Right),
            ("DELETED", Align::Right),
            ("FAILED", Align::Right),
            ("STATUS", Align::Left),
        ],
        &rows,
    )
}

/// `history`: the kept runs, newest first.
pub fn command(args: HistoryArgs) -> Result<ExitCode> {
    let Some(state_dir) = args.state_dir.clone().or_else(StateStore::default_dir) else {
        eprintln!("error: no state directory: give --state-dir (or CONTACTMIRROR_STATE_DIR)");
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let runs = RunHistory::in_state_dir(&state_dir).load(args.last, args.tenant.as_deref())?;
    let text = if args.json {
        let lines: Vec<RunLine> = runs
            .iter()
            .map(|run| RunLine {
                run_id: run.run_id,
                started_at: run.started_at,
                duration_ms: run.duration_ms,
                dry_run: run.dry_run,
                succeeded: run.succeeded(),
                tenants: run
                    .tenants
                    .iter()
                    .map(|t| TenantLine {
                        tenant_id: &t.tenant_id,
                        totals: totals(t),
                        error: t.error.as_deref(),
                    })
                    .collect(),
            })
            .collect();
        format!("{}\n", serde_json::to_string_pretty(&lines)?)
    } else if runs.is_empty() {
        format!(
            "no runs kept in {}\n",
            RunHistory::in_state_dir(&state_dir).dir.display()
        )
    } else {
        table(&runs)
    };
    crate::ops::print(&text)?;
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{MailboxOutcome, PhaseCounts};
    use chrono::{Duration, TimeZone, Utc};
    use shared::message::{FailureReason, Phase};

    fn report(minute: i64, tenants: &[&str]) -> RunReport {
        let started =
            Utc.with_ymd_and_hms(2026, 12, 5, 8, 0, 0).unwrap() + Duration::minutes(minute);
        RunReport {
            run_id: Uuid::new_v4(),
            mode: "embedded".into(),
            dry_run: false,
            started_at: started,
            finished_at: started + Duration::seconds(3),
            duration_ms: 3_000,
            tenants: tenants
                .iter()
                .map(|t| TenantReport {
                    tenant_id: (*t).into(),
                    ..TenantReport::default()
                })
                .collect(),
        }
    }

    #[test]
    fn the_newest_runs_are_kept_and_listed_first_and_nothing_else_is_touched() {
        let dir = std::env::temp_dir().join(format!("cm-history-{}", Uuid::new_v4().simple()));
        let history = RunHistory::in_state_dir(&dir);
        std::fs::create_dir_all(dir.join(RUNS)).unwrap();
        std::fs::write(dir.join(RUNS).join("notes.json"), "{}").unwrap();
        let runs: Vec<RunReport> = (0..4).map(|m| report(m, &["a", "b"])).collect();
        for run in &runs {
            history.keep(run, 2).unwrap();
        }
        let kept: Vec<Uuid> = history
            .load(10, None)
            .unwrap()
            .iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(kept, [runs[3].run_id, runs[2].run_id]);
        assert!(
            dir.join(RUNS).join("notes.json").exists(),
            "a foreign file is left alone"
        );
        let only_b = history.load(1, Some("B")).unwrap();
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].tenants.len(), 1);
        assert!(history.load(5, Some("c")).unwrap().is_empty());
        history.keep(&report(9, &["a"]), 0).unwrap();
        assert_eq!(
            history.files().unwrap().len(),
            2,
            "keep 0 keeps nothing new"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_file_is_skipped_not_fatal() {
        let dir = std::env::temp_dir().join(format!("cm-history-{}", Uuid::new_v4().simple()));
        let history = RunHistory::in_state_dir(&dir);
        let good = report(1, &["a"]);
        history.keep(&good, 5).unwrap();
        let damaged = history.file_of(&report(2, &["a"]));
        std::fs::write(&damaged, "{ not json").unwrap();
        let loaded = history.load(5, None).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].run_id, good.run_id);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn totals_add_phases_and_count_a_failed_mailbox_once() {
        let mut tenant = TenantReport {
            tenant_id: "a".into(),
            ..TenantReport::default()
        };
        tenant.phases.insert(
            Phase::Phase1,
            PhaseCounts {
                created: 2,
                updated: 1,
                ..PhaseCounts::default()
            },
        );
        tenant.phases.insert(
            Phase::Phase2,
            PhaseCounts {
                created: 5,
                deleted: 3,
                ..PhaseCounts::default()
            },
        );
        for phase in Phase::ALL {
            tenant.mailboxes.push(MailboxOutcome {
                mailbox: "x@a".into(),
                phase,
                outcome: "failed".into(),
                reason: Some(FailureReason::NoMailbox),
                error: None,
                attempts: 1,
            });
        }
        assert_eq!(
            totals(&tenant),
            Totals {
                created: 7,
                updated: 1,
                deleted: 3,
                failed: 1
            }
        );
        let mut run = report(0, &[]);
        run.tenants.push(tenant);
        let text = table(&[run.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RUN"), "{text}");
        assert!(lines[1].starts_with(&run.run_id.to_string()), "{text}");
        assert!(lines[1].contains("2026-12-05 08:00:00"), "{text}");
        assert!(
            lines[1].ends_with("7        1        3       1  FAILED"),
            "{text}"
        );
    }
}
