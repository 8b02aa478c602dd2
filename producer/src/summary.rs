//! The run report: what every job of every tenant did, aggregated from the workers' reports, as JSON for
//! `--report` and as a short human summary; plus the exit status it implies.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::message::{FailureReason, GraphCounts, Outcome, Phase, Report};
use shared::sync::PlanCounts;
use uuid::Uuid;

/// Counts for one phase of one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Contacts created.
    pub created: u64,
    /// Contacts updated.
    pub updated: u64,
    /// Contacts deleted.
    pub deleted: u64,
    /// Contacts left as they were.
    pub skipped: u64,
    /// Writes Graph refused.
    pub failed: u64,
    /// Mailboxes whose change feeds showed nothing new since the last run, so nothing was read or planned.
    #[serde(default)]
    pub mailboxes_unchanged: u64,
}

impl PhaseCounts {
    fn add(&mut self, counts: &PlanCounts, failed: u64) {
        self.created += counts.created as u64;
        self.updated += counts.updated as u64;
        self.deleted += counts.deleted as u64;
        self.skipped += counts.skipped as u64;
        self.failed += failed;
    }
}

/// The final state of one mailbox in one phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxOutcome {
    /// The mailbox's UPN.
    pub mailbox: String,
    /// The phase.
    pub phase: Phase,
    /// "succeeded" or "failed".
    pub outcome: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// The error text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
}

/// Everything about one tenant in the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TenantReport {
    /// The tenant.
    pub tenant_id: String,
    /// Why the tenant could not run at all, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Users enumerated.
    pub users: usize,
    /// Per phase counts.
    pub phases: BTreeMap<Phase, PhaseCounts>,
    /// Per mailbox and phase outcomes (failures first).
    pub mailboxes: Vec<MailboxOutcome>,
    /// Graph traffic of all attempts.
    pub graph: GraphCounts,
    /// Retries scheduled.
    pub retries: u64,
    /// Wall time from preparation to the last report.
    pub duration_ms: u64,
    /// In a dry run: the plan lines the workers reported (writes only, each job's own capped), at most
    /// [`MAX_TENANT_PLAN_LINES`]; the counts say how much would be written in all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<String>,
    /// Plan lines the workers reported beyond [`MAX_TENANT_PLAN_LINES`], counted instead of kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub planned_left_out: u64,
    /// When 429s happened: one sample per job report that saw any, for the report's throttling-over-time chart.
    /// Costs one entry per throttled attempt and nothing when Graph never throttled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttle_timeline: Vec<ThrottleSample>,
}

/// The most dry-run plan lines one tenant's report keeps. Each job reports at most
/// `worker::job::MAX_PLANNED_LINES` (and counts the rest), but a tenant of 1,000 mailboxes would still gather
/// 200,000; the run report stays a few hundred kilobytes however large the tenant.
pub const MAX_TENANT_PLAN_LINES: usize = 1_000;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// 429s seen by one job attempt, stamped with when its report was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleSample {
    /// When the attempt finished.
    pub at: DateTime<Utc>,
    /// 429 answers it received.
    pub throttled: u64,
}

impl TenantReport {
    /// Records one report (any attempt).
    pub fn record(&mut self, report: &Report) {
        self.graph.requests += report.graph.requests;
        self.graph.throttled += report.graph.throttled;
        if report.graph.throttled > 0 {
            self.throttle_timeline.push(ThrottleSample {
                at: report.finished_at,
                throttled: report.graph.throttled,
            });
        }
        match &report.outcome {
            Outcome::Retrying { .. } => self.retries += 1,
            Outcome::Succeeded => {
                self.phases
                    .entry(report.phase)
                    .or_default()
                    .add(&report.counts, report.failed_writes);
                if report.skipped {
                    self.phases
                        .entry(report.phase)
                        .or_default()
                        .mailboxes_unchanged += 1;
                }
                let room = MAX_TENANT_PLAN_LINES.saturating_sub(self.planned.len());
                let kept = report.planned.len().min(room);
                self.planned.extend(report.planned[..kept].iter().cloned());
                self.planned_left_out +=
                    u64::try_from(report.planned.len() - kept).unwrap_or(u64::MAX);
                let failed = report.failed_writes > 0;
                self.mailboxes.push(MailboxOutcome {
                    mailbox: report.mailbox.upn.clone(),
                    phase: report.phase,
                    outcome: if failed { "failed" } else { "succeeded" }.to_owned(),
                    reason: failed.then_some(FailureReason::GraphRejected),
                    error: failed
                        .then(|| format!("{} writes refused by Graph", report.failed_writes)),
                    attempts: report.attempt,
                });
                for failure in &report.source_failures {
                    self.mailboxes.push(MailboxOutcome {
                        mailbox: failure.mailbox.upn.clone(),
                        phase: report.phase,
                        outcome: "failed".to_owned(),
                        reason: Some(failure.reason),
                        error: Some(failure.error.clone()),
                        attempts: report.attempt,
                    });
                }
            }
            Outcome::Failed { reason, error } => self.mailboxes.push(MailboxOutcome {
                mailbox: report.mailbox.upn.clone(),
                phase: report.phase,
                outcome: "failed".to_owned(),
                reason: Some(*reason),
                error: Some(error.clone()),
                attempts: report.attempt,
            }),
        }
    }

    /// Records a job whose final report never came.
    pub fn record_lost(&mut self, mailbox: &str, phase: Phase, why: &str) {
        self.mailboxes.push(MailboxOutcome {
            mailbox: mailbox.to_owned(),
            phase,
            outcome: "failed".to_owned(),
            reason: Some(FailureReason::NoReport),
            error: Some(why.to_owned()),
            attempts: 0,
        });
    }

    /// Whether anything in this tenant failed.
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.mailboxes.iter().any(|m| m.outcome == "failed")
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The run id (also on every job and report).
    pub run_id: Uuid,
    /// "embedded" or "broker".
    pub mode: String,
    /// Whether the run wrote nothing.
    pub dry_run: bool,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
    /// Wall time.
    pub duration_ms: u64,
    /// Per tenant.
    pub tenants: Vec<TenantReport>,
}

impl RunReport {
    /// Whether every mailbox of every tenant succeeded.
    pub fn succeeded(&self) -> bool {
        !self.tenants.iter().any(TenantReport::failed)
    }

    /// A short human summary, one block per tenant, failures named with their reason.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run { "would be " } else { "" };
        out.push_str(&format!(
            "run {} ({}{}) finished in {:.1}s\n",
            self.run_id,
            self.mode,
            if self.dry_run {
                ", dry run: nothing written"
            } else {
                ""
            },
            self.duration_ms as f64 / 1000.0
        ));
        for tenant in &self.tenants {
            let status = if tenant.failed() { "FAILED" } else { "ok" };
            out.push_str(&format!(
                "tenant {} [{}]: {} users\n",
                tenant.tenant_id, status, tenant.users
            ));
            if let Some(error) = &tenant.error {
                out.push_str(&format!("  error: {error}\n"));
            }
            for (phase, c) in &tenant.phases {
                out.push_str(&format!(
                    "  {phase}: {} {verb}created, {} {verb}updated, {} {verb}deleted, {} unchanged, {} failed",
                    c.created, c.updated, c.deleted, c.skipped, c.failed
                ));
                if c.mailboxes_unchanged > 0 {
                    out.push_str(&format!(
                        "; {} mailbox(es) unchanged since the last run, not read",
                        c.mailboxes_unchanged
                    ));
                }
                out.push('\n');
            }
            out.push_str(&format!(
                "  graph: {} requests, {} throttled (429), {} retries\n",
                tenant.graph.requests, tenant.graph.throttled, tenant.retries
            ));
            // A mailbox that cannot be reached fails both phases for the same reason: one line for it, not two.
            let mut failures: Vec<(&MailboxOutcome, Vec<Phase>)> = Vec::new();
            for m in tenant.mailboxes.iter().filter(|m| m.outcome == "failed") {
                match failures
                    .iter_mut()
                    .find(|(f, _)| f.mailbox == m.mailbox && f.reason == m.reason)
                {
                    Some((_, phases)) => phases.push(m.phase),
                    None => failures.push((m, vec![m.phase])),
                }
            }
            if !failures.is_empty() {
                let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
                for (m, _) in &failures {
                    *by_reason
                        .entry(m.reason.map(|r| r.as_str()).unwrap_or("unknown"))
                        .or_default() += 1;
                }
                let reasons: Vec<String> =
                    by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
                out.push_str(&format!(
                    "  {} mailbox(es) failed ({}):\n",
                    failures.len(),
                    reasons.join(", ")
                ));
            }
            for (m, phases) in failures {
                let phases: Vec<String> = phases.iter().map(Phase::to_string).collect();
                out.push_str(&format!(
                    "  failed: {} ({}): {}: {}\n",
                    m.mailbox,
                    phases.join(", "),
                    m.reason.map(|r| r.as_str()).unwrap_or("unknown"),
                    m.error.as_deref().unwrap_or("")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(mailbox: &str, phase: Phase, reason: FailureReason) -> MailboxOutcome {
        MailboxOutcome {
            mailbox: mailbox.into(),
            phase,
            outcome: "failed".into(),
            reason: Some(reason),
            error: Some(format!("{mailbox} says no")),
            attempts: 1,
        }
    }

    #[test]
    fn a_mailbox_failing_both_phases_for_one_reason_is_one_line() {
        let tenant = TenantReport {
            tenant_id: "contoso.onmicrosoft.com".into(),
            users: 3,
            mailboxes: vec![
                failed("a@contoso.com", Phase::Phase1, FailureReason::NoMailbox),
                failed("a@contoso.com", Phase::Phase2, FailureReason::NoMailbox),
                failed("b@contoso.com", Phase::Phase2, FailureReason::AccessDenied),
                failed("b@contoso.com", Phase::Phase1, FailureReason::NoReport),
            ],
            ..TenantReport::default()
        };
        let report = RunReport {
            run_id: Uuid::nil(),
            mode: "embedded".into(),
            dry_run: false,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_ms: 10,
            tenants: vec![tenant],
        };
        let text = report.human();
        assert!(text.contains("3 mailbox(es) failed (1 access_denied, 1 no_mailbox, 1 no_report):"));
        assert!(text.contains(
            "  failed: a@contoso.com (phase1, phase2): no_mailbox: a@contoso.com says no\n"
        ));
        assert!(text.contains("  failed: b@contoso.com (phase2): access_denied:"));
        assert!(text.contains("  failed: b@contoso.com (phase1): no_report:"));
        assert_eq!(text.matches("failed: a@contoso.com").count(), 1);
    }

    /// Failed before the fix: every job's plan lines were appended, so a dry run of 1,000 mailboxes kept 201,000
    /// lines in memory and in the JSON report.
    #[test]
    fn a_tenants_plan_lines_are_capped_and_the_rest_counted() {
        let report = |lines: usize| Report {
            schema: shared::message::SCHEMA_VERSION,
            job_id: Uuid::nil(),
            run_id: Uuid::nil(),
            tenant_id: "t".into(),
            phase: Phase::Phase2,
            mailbox: shared::model::Mailbox {
                id: "m".into(),
                upn: "m@t".into(),
            },
            attempt: 1,
            outcome: Outcome::Succeeded,
            counts: PlanCounts::default(),
            failed_writes: 0,
            source_failures: vec![],
            planned: (0..lines).map(|i| format!("create {i}")).collect(),
            graph: GraphCounts::default(),
            cursors: Default::default(),
            skipped: false,
            duration_ms: 0,
            finished_at: Utc::now(),
        };
        let mut tenant = TenantReport::default();
        for _ in 0..7 {
            tenant.record(&report(201));
        }
        assert_eq!(tenant.planned.len(), MAX_TENANT_PLAN_LINES);
        assert_eq!(tenant.planned_left_out, 7 * 201 - 1_000);
        // The JSON report says so too; a report without plan lines leaves both out.
        let json = serde_json::to_value(&tenant).expect("json");
        assert_eq!(json["planned_left_out"].as_u64(), Some(407));
        assert_eq!(json["planned"].as_array().map(Vec::len), Some(1_000));
        let quiet = serde_json::to_value(TenantReport::default()).expect("json");
        assert!(quiet.get("planned").is_none() && quiet.get("planned_left_out").is_none());
    }
}
