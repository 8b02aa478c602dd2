//! The run report: what every job of every tenant did, aggregated from the workers' reports, as JSON for
//! `--report` and as a short human summary; plus the exit status it implies.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Photos put on copies (`Photos` on).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub photos_sent: u64,
    /// Photos removed from copies.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub photos_removed: u64,
}

/// At most this many photo lines (a photo not sent, and why) are kept per tenant as warnings.
const MAX_PHOTO_WARNINGS: usize = 100;

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
    /// "succeeded", "failed", "not_applicable" (a licensed user without an Exchange mailbox that an earlier run
    /// already saw: listed and counted, not a failure) or "expected" (a failure the demo seeded on purpose).
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
    /// Configured with `Enabled: false`: not run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// This tenant wrote nothing (its own `DryRun`, or the run's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// What the operator should know that did not stop the tenant (a test user matching nobody, a
    /// certificate about to expire).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
                let phase = self.phases.entry(report.phase).or_default();
                phase.photos_sent += report.photos.sent;
                phase.photos_removed += report.photos.removed;
                for line in &report.photos.skipped {
                    // Every mailbox meets the same too-large photo: the tenant says it once.
                    if self.warnings.len() < MAX_PHOTO_WARNINGS && !self.warnings.contains(line) {
                        self.warnings.push(line.clone());
                    }
                }
                if report.skipped {
                    self.phases
                        .entry(report.phase)
                        .or_default()
                        .mailboxes_unchanged += 1;
                }
                let room = MAX_TENANT_PLAN_LINES.saturating_sub(self.planned.len());
                let kept = report.planned.len().min(room);
                self.planned.extend(
                    report.planned[..kept]
                        .iter()
                        .map(|line| format!("{}: {line}", report.mailbox.upn)),
                );
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

    /// Relabels the failures of mailboxes earlier runs already found without an Exchange mailbox (`known`: UPNs,
    /// lowercase) as `not_applicable`: listed and counted, but no longer failing every run.
    pub fn mark_not_applicable(&mut self, known: &BTreeSet<String>) {
        for m in &mut self.mailboxes {
            if m.outcome == "failed"
                && m.reason == Some(FailureReason::NoMailbox)
                && known.contains(&m.mailbox.to_lowercase())
            {
                m.outcome = NOT_APPLICABLE.to_owned();
            }
        }
    }

    /// The mailboxes this run found without an Exchange mailbox (UPNs, lowercase), for the next run.
    pub fn without_mailbox(&self) -> BTreeSet<String> {
        self.mailboxes
            .iter()
            .filter(|m| m.reason == Some(FailureReason::NoMailbox))
            .map(|m| m.mailbox.to_lowercase())
            .collect()
    }

    /// What the next run should know as mailbox-less: this run's, plus the ones known before that this run did
    /// not reach (a failed phase 1 starts no phase 2); a mailbox that succeeded is forgotten.
    pub fn still_without_mailbox(&self, known: &BTreeSet<String>) -> BTreeSet<String> {
        let succeeded: BTreeSet<String> = self
            .mailboxes
            .iter()
            .filter(|m| m.outcome == "succeeded")
            .map(|m| m.mailbox.to_lowercase())
            .collect();
        let mut still = self.without_mailbox();
        still.extend(known.iter().filter(|m| !succeeded.contains(*m)).cloned());
        still
    }

    /// Relabels the failures `expected` says were meant to happen (the demo's seeded mailboxes) as `expected`.
    pub fn mark_expected(&mut self, expected: &dyn Fn(&str, FailureReason) -> bool) {
        for m in &mut self.mailboxes {
            if let (true, Some(reason)) = (m.outcome == "failed", m.reason) {
                if expected(&m.mailbox, reason) {
                    m.outcome = EXPECTED.to_owned();
                }
            }
        }
    }

    /// The tenant's one summary line (after the run id header).
    fn line(&self, verb: &str) -> String {
        let name = &self.tenant_id;
        if self.disabled {
            return format!("[disabled] {name}: Enabled is false, not run");
        }
        let status = if self.failed() {
            "[FAILED]  "
        } else {
            "[ok]      "
        };
        let mut parts = vec![format!("{} users", self.users)];
        if let Some(error) = &self.error {
            return format!("{status}{name}: {error}");
        }
        for (phase, c) in &self.phases {
            let mut part = format!(
                "{phase} {} {verb}created, {} {verb}updated, {} {verb}deleted",
                c.created, c.updated, c.deleted
            );
            if c.failed > 0 {
                part.push_str(&format!(", {} writes refused", c.failed));
            }
            if c.photos_sent + c.photos_removed > 0 {
                part.push_str(&format!(
                    ", {} photos sent, {} removed",
                    c.photos_sent, c.photos_removed
                ));
            }
            match c.mailboxes_unchanged {
                0 => {}
                1 => part.push_str(" (1 mailbox unchanged)"),
                n => part.push_str(&format!(" ({n} mailboxes unchanged)")),
            }
            parts.push(part);
        }
        parts.push(format!(
            "{} requests ({} throttled, {} retries)",
            self.graph.requests, self.graph.throttled, self.retries
        ));
        let dry = if self.dry_run { " (dry run)" } else { "" };
        format!("{status}{name}{dry}: {}", parts.join("; "))
    }
}

/// `MailboxOutcome::outcome` of a known mailbox-less user.
pub const NOT_APPLICABLE: &str = "not_applicable";
/// `MailboxOutcome::outcome` of a failure the demo seeded on purpose.
pub const EXPECTED: &str = "expected";
/// Mailboxes named per group in the console summary; the rest are counted.
const NAMED: usize = 3;
/// Dry-run plan lines printed on the console per tenant; the rest are counted (all are in `--report`).
const PLAN_LINES: usize = 10;

/// `mailbox a, b, c and 4 more`.
fn named(mut mailboxes: Vec<&str>) -> String {
    mailboxes.sort_unstable();
    mailboxes.dedup();
    let more = mailboxes.len().saturating_sub(NAMED);
    let mut text = mailboxes
        .iter()
        .take(NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// A worker's plan line (`create "Ann" sync=…: new person`) in the mailbox `upn`, as the console shows it:
/// `would create "Ann" in upn`. `None` for the worker's "… and N more" line.
fn console_plan_line(upn: &str, line: &str) -> Option<String> {
    let (action, rest) = line.split_once(' ')?;
    if !rest.starts_with('"') {
        return None;
    }
    let mut escaped = false;
    let end = rest.char_indices().skip(1).find_map(|(i, c)| match c {
        '\\' if !escaped => {
            escaped = true;
            None
        }
        '"' if !escaped => Some(i),
        _ => {
            escaped = false;
            None
        }
    })?;
    Some(format!("would {action} {} in {upn}", &rest[..=end]))
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

    /// The console summary: one line per tenant, then under it the failures grouped by reason (the first few
    /// mailboxes named, the rest counted), not-applicable and expected mailboxes the same way, warnings, and in a
    /// dry run the first plan lines. Every detail stays in the JSON report.
    pub fn human(&self) -> String {
        let verb = if self.dry_run { "would be " } else { "" };
        let failed = self.tenants.iter().filter(|t| t.failed()).count();
        let mut out = format!(
            "run {} ({}{}) finished in {:.1}s: {} tenant(s), {} ok, {} failed\n",
            self.run_id,
            self.mode,
            if self.dry_run {
                ", dry run: nothing written"
            } else {
                ""
            },
            self.duration_ms as f64 / 1000.0,
            self.tenants.len(),
            self.tenants.len() - failed,
            failed,
        );
        for tenant in &self.tenants {
            let verb = if tenant.dry_run { "would be " } else { verb };
            out.push_str(&tenant.line(verb));
            out.push('\n');
            for warning in &tenant.warnings {
                out.push_str(&format!("    warning: {warning}\n"));
            }
            // One group per (outcome, reason); a mailbox failing both phases for one reason counts once.
            let mut groups: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
            for m in tenant.mailboxes.iter().filter(|m| m.outcome != "succeeded") {
                let reason = m.reason.map_or("unknown", FailureReason::as_str);
                groups
                    .entry((m.outcome.as_str(), reason))
                    .or_default()
                    .push(&m.mailbox);
            }
            for ((outcome, reason), mut mailboxes) in groups {
                mailboxes.sort_unstable();
                mailboxes.dedup();
                let label = match outcome {
                    NOT_APPLICABLE => {
                        "not applicable (no Exchange mailbox, known from earlier runs)".to_owned()
                    }
                    EXPECTED => format!("expected ({reason}, seeded by the demo)"),
                    _ => format!("failed: {reason}"),
                };
                out.push_str(&format!(
                    "    {label}: {} mailbox(es): {}\n",
                    mailboxes.len(),
                    named(mailboxes)
                ));
            }
            let plan: Vec<String> = tenant
                .planned
                .iter()
                .filter_map(|line| {
                    let (upn, line) = line.split_once(": ")?;
                    console_plan_line(upn, line)
                })
                .collect();
            for line in plan.iter().take(PLAN_LINES) {
                out.push_str(&format!("    {line}\n"));
            }
            let writes: u64 = tenant
                .phases
                .values()
                .map(|c| c.created + c.updated + c.deleted)
                .sum();
            let shown = plan.len().min(PLAN_LINES) as u64;
            if tenant.dry_run && writes > shown {
                out.push_str(&format!(
                    "    … and {} more planned writes (every line in --report)\n",
                    writes - shown
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

    fn run(tenants: Vec<TenantReport>, dry_run: bool) -> RunReport {
        RunReport {
            run_id: Uuid::nil(),
            mode: "embedded".into(),
            dry_run,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_ms: 10,
            tenants,
        }
    }

    #[test]
    fn one_line_per_tenant_and_failures_grouped_by_reason_with_the_first_few_named() {
        let mut mailboxes: Vec<MailboxOutcome> = ["e", "d", "c", "b", "a"]
            .iter()
            .flat_map(|m| {
                let upn = format!("{m}@contoso.com");
                [
                    failed(&upn, Phase::Phase1, FailureReason::NoMailbox),
                    failed(&upn, Phase::Phase2, FailureReason::NoMailbox),
                ]
            })
            .collect();
        mailboxes.push(failed(
            "x@contoso.com",
            Phase::Phase2,
            FailureReason::AccessDenied,
        ));
        let tenant = TenantReport {
            tenant_id: "contoso.onmicrosoft.com".into(),
            users: 30,
            mailboxes,
            warnings: vec!["TestUserList: 1 match(es) no licensed user: nobody".into()],
            ..TenantReport::default()
        };
        let fine = TenantReport {
            tenant_id: "fabrikam.onmicrosoft.com".into(),
            users: 2,
            ..TenantReport::default()
        };
        let off = TenantReport {
            tenant_id: "woodgrove.com".into(),
            disabled: true,
            ..TenantReport::default()
        };
        let text = run(vec![tenant, fine, off], false).human();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("3 tenant(s), 2 ok, 1 failed"), "{text}");
        assert!(
            lines[1].starts_with("[FAILED]  contoso.onmicrosoft.com: 30 users;"),
            "{text}"
        );
        assert_eq!(
            lines[2],
            "    warning: TestUserList: 1 match(es) no licensed user: nobody"
        );
        assert_eq!(
            lines[3],
            "    failed: access_denied: 1 mailbox(es): x@contoso.com"
        );
        assert_eq!(
            lines[4],
            "    failed: no_mailbox: 5 mailbox(es): a@contoso.com, b@contoso.com, c@contoso.com and 2 more"
        );
        assert!(
            lines[5].starts_with("[ok]      fabrikam.onmicrosoft.com: 2 users;"),
            "{text}"
        );
        assert_eq!(
            lines[6],
            "[disabled] woodgrove.com: Enabled is false, not run"
        );
        assert_eq!(lines.len(), 7, "{text}");
    }

    /// Failed before the fix: every quiet run's summary said "(1 mailboxes unchanged)" for phase 1.
    #[test]
    fn unchanged_mailboxes_are_counted_in_words_that_agree() {
        let counts = |n: u64| PhaseCounts {
            mailboxes_unchanged: n,
            ..PhaseCounts::default()
        };
        let tenant = TenantReport {
            tenant_id: "contoso.onmicrosoft.com".into(),
            users: 76,
            phases: [(Phase::Phase1, counts(1)), (Phase::Phase2, counts(75))].into(),
            ..TenantReport::default()
        };
        let text = run(vec![tenant], false).human();
        assert!(
            text.contains("phase1 0 created, 0 updated, 0 deleted (1 mailbox unchanged);"),
            "{text}"
        );
        assert!(text.contains("(75 mailboxes unchanged);"), "{text}");
    }

    #[test]
    fn a_known_mailbox_less_user_is_not_applicable_listed_and_not_a_failure() {
        let mut tenant = TenantReport {
            tenant_id: "contoso.onmicrosoft.com".into(),
            mailboxes: vec![
                failed("Ann@contoso.com", Phase::Phase1, FailureReason::NoMailbox),
                failed("Ann@contoso.com", Phase::Phase2, FailureReason::NoMailbox),
                failed("bob@contoso.com", Phase::Phase2, FailureReason::NoMailbox),
            ],
            ..TenantReport::default()
        };
        assert_eq!(
            tenant.without_mailbox(),
            BTreeSet::from(["ann@contoso.com".to_owned(), "bob@contoso.com".to_owned()])
        );
        tenant.mark_not_applicable(&BTreeSet::from(["ann@contoso.com".to_owned()]));
        assert!(tenant.failed(), "bob is seen for the first time");
        tenant.mark_not_applicable(&BTreeSet::from(["bob@contoso.com".to_owned()]));
        assert!(!tenant.failed());
        // Still remembered for the next run, and listed; one that got a mailbox since is forgotten, one this run
        // did not reach is kept.
        assert_eq!(tenant.without_mailbox().len(), 2);
        tenant.mailboxes.push(MailboxOutcome {
            outcome: "succeeded".into(),
            reason: None,
            error: None,
            ..failed("cat@contoso.com", Phase::Phase2, FailureReason::NoMailbox)
        });
        let known = BTreeSet::from(["cat@contoso.com".to_owned(), "dan@contoso.com".to_owned()]);
        assert_eq!(
            tenant.still_without_mailbox(&known),
            BTreeSet::from([
                "ann@contoso.com".to_owned(),
                "bob@contoso.com".to_owned(),
                "dan@contoso.com".to_owned()
            ])
        );
        let text = run(vec![tenant], false).human();
        assert!(text.contains(
            "    not applicable (no Exchange mailbox, known from earlier runs): 2 mailbox(es): Ann@contoso.com, bob@contoso.com\n"
        ), "{text}");
        assert!(text.contains("[ok]"), "{text}");
    }

    #[test]
    fn a_dry_run_prints_its_plan_per_mailbox_capped_with_a_count() {
        let mut tenant = TenantReport {
            tenant_id: "contoso.onmicrosoft.com".into(),
            dry_run: true,
            ..TenantReport::default()
        };
        tenant.phases.insert(
            Phase::Phase2,
            PhaseCounts {
                created: 14,
                updated: 1,
                ..PhaseCounts::default()
            },
        );
        for i in 0..14 {
            tenant.planned.push(format!(
                "u{i}@contoso.com: create \"Ann \\\"A\\\" {i}\" sync=1 contact=2: new person"
            ));
        }
        tenant
            .planned
            .push("u1@contoso.com: … and 1 more planned writes not listed".into());
        let text = run(vec![tenant], true).human();
        assert!(
            text.contains("    would create \"Ann \\\"A\\\" 0\" in u0@contoso.com\n"),
            "{text}"
        );
        assert_eq!(text.matches("    would ").count(), 10, "{text}");
        assert!(
            text.contains("    … and 5 more planned writes (every line in --report)\n"),
            "{text}"
        );
        assert!(
            text.contains("14 would be created, 1 would be updated"),
            "{text}"
        );
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
            dry_run: false,
            skipped: false,
            duration_ms: 0,
            photos: Default::default(),
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

    /// Issue 14: photo counts add up per phase, and a photo every mailbox could not be sent is one warning.
    #[test]
    fn photo_counts_add_up_and_a_skipped_photo_is_one_warning() {
        let report = |n: u64| Report {
            schema: shared::message::SCHEMA_VERSION,
            job_id: Uuid::nil(),
            run_id: Uuid::nil(),
            tenant_id: "t".into(),
            phase: Phase::Phase2,
            mailbox: shared::model::Mailbox {
                id: format!("m{n}"),
                upn: format!("m{n}@t"),
            },
            attempt: 1,
            outcome: Outcome::Succeeded,
            counts: PlanCounts::default(),
            failed_writes: 0,
            source_failures: vec![],
            planned: vec![],
            graph: GraphCounts::default(),
            cursors: Default::default(),
            dry_run: false,
            skipped: false,
            duration_ms: 0,
            photos: shared::message::PhotoReport {
                sent: n,
                removed: 1,
                skipped: vec![
                    "photo of big@t not sent: 5000000 bytes is over Graph's 4 MB request limit"
                        .into(),
                ],
            },
            finished_at: Utc::now(),
        };
        let mut tenant = TenantReport::default();
        for n in 1..=3 {
            tenant.record(&report(n));
        }
        let phase = tenant.phases[&Phase::Phase2];
        assert_eq!((phase.photos_sent, phase.photos_removed), (6, 3));
        assert_eq!(tenant.warnings.len(), 1, "{:?}", tenant.warnings);
        assert!(
            tenant.line("").contains("6 photos sent, 3 removed"),
            "{}",
            tenant.line("")
        );
        assert!(tenant.mailboxes.iter().all(|m| m.outcome == "succeeded"));
        let json = serde_json::to_value(TenantReport::default()).expect("json");
        assert!(
            json.to_string().find("photos").is_none(),
            "no photo keys without photos: {json}"
        );
    }
}
