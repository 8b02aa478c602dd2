//! Notifications: after a run that failed (or after every run, `--notify always`), one JSON summary POSTed to
//! `--notify-url` (`CONTACTMIRROR_NOTIFY_URL`), with a `text` field Microsoft Teams and Slack incoming webhooks
//! show as the message.
//!
//! The summary holds the run id, per-tenant counts and failures grouped by reason (with the first mailboxes
//! named), never a secret, a plan line or any contact's data. A webhook URL is itself a credential (Teams and
//! Slack put the key in the path), so it is a [`Secret`]: never printed, logged or put in an error, and never
//! followed to another host by a redirect. Delivery is best effort: retried with backoff on a failure that may
//! pass (no answer, 408, 429, 5xx), then given up with a warning; a notification never changes the run's
//! outcome or exit status.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use shared::secret::Secret;
use tracing::{info, warn};
use url::Url;
use uuid::Uuid;

use crate::history::{totals, Totals};
use crate::summary::RunReport;

/// Attempts per notification.
const ATTEMPTS: u32 = 4;
/// First wait between attempts; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest an attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Mailboxes named per tenant and reason (the count says how many there were).
const NAMED: usize = 5;

/// When to notify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum NotifyWhen {
    /// Only after a run in which something failed.
    #[default]
    Failure,
    /// After every run.
    Always,
}

/// `run`'s notification options.
#[derive(Debug, Clone, Default, Args)]
pub struct NotifyArgs {
    /// POST a JSON summary of the run here (Teams/Slack webhooks welcome). Treated as a secret: never printed.
    #[arg(long, env = "CONTACTMIRROR_NOTIFY_URL", hide_env_values = true, value_parser = parse_secret)]
    pub notify_url: Option<Secret>,
    /// When to notify: failure (a run in which something failed) or always.
    #[arg(long, env = "CONTACTMIRROR_NOTIFY", value_enum, default_value_t = NotifyWhen::Failure)]
    pub notify: NotifyWhen,
}

/// Takes the URL as given; checked by [`Notifier::new`], whose error never repeats it (clap's would).
fn parse_secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(text))
}

/// Why a notification target is unusable; the message names the option, never the URL.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// Not a URL at all.
    #[error("--notify-url (CONTACTMIRROR_NOTIFY_URL) is not a URL")]
    NotAUrl,
    /// Another scheme than http(s).
    #[error("--notify-url (CONTACTMIRROR_NOTIFY_URL) must be an http:// or https:// URL")]
    Scheme,
}

/// Where notifications go: the URL (secret) and its host, the only part ever logged.
#[derive(Debug, Clone)]
pub struct Notifier {
    url: Secret,
    host: String,
    when: NotifyWhen,
    http: reqwest::Client,
}

impl Notifier {
    /// The notifier `args` configure, `None` when no URL is given; an unusable URL is an error.
    pub fn new(args: &NotifyArgs) -> Result<Option<Self>, TargetError> {
        let Some(url) = &args.notify_url else {
            return Ok(None);
        };
        let parsed = Url::parse(url.expose()).map_err(|_| TargetError::NotAUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(TargetError::Scheme);
        }
        let host = parsed.host_str().ok_or(TargetError::NotAUrl)?.to_owned();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|_| TargetError::NotAUrl)?;
        Ok(Some(Self {
            url: url.clone(),
            host,
            when: args.notify,
            http,
        }))
    }

    /// Whether `report` is to be notified.
    pub fn wants(&self, report: &RunReport) -> bool {
        self.when == NotifyWhen::Always || !report.succeeded()
    }

    /// Sends the summary of `report` when it is wanted. Never fails: a notification that cannot be delivered
    /// is logged (host only) and dropped.
    pub async fn after_run(&self, report: &RunReport) {
        if !self.wants(report) {
            return;
        }
        let body = Summary::of(report);
        let mut wait = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let outcome = self.http.post(self.url.expose()).json(&body).send().await;
            let (retry, what) = match outcome {
                Ok(response) if response.status().is_success() => {
                    info!(host = %self.host, attempt, "run notification sent");
                    return;
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    (
                        status == 408 || status == 429 || status >= 500,
                        format!("answered {status}"),
                    )
                }
                // Without the URL: reqwest's errors carry it.
                Err(error) => (true, error.without_url().to_string()),
            };
            if !retry || attempt == ATTEMPTS {
                warn!(host = %self.host, attempt, %what, "run notification not delivered; giving up");
                return;
            }
            warn!(host = %self.host, attempt, %what, "run notification failed; trying again");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
}

/// The JSON POSTed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// One paragraph for chat tools (Teams, Slack).
    pub text: String,
    /// The run.
    pub run_id: Uuid,
    /// "succeeded" or "failed".
    pub status: &'static str,
    /// Whether the run wrote nothing.
    pub dry_run: bool,
    /// Start.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Wall time.
    pub duration_ms: u64,
    /// Per tenant.
    pub tenants: Vec<TenantSummary>,
}

/// One tenant in the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantSummary {
    /// The tenant.
    pub tenant_id: String,
    /// "succeeded" or "failed".
    pub status: &'static str,
    /// Created, updated, deleted contacts and failed mailboxes.
    #[serde(flatten)]
    pub totals: Totals,
    /// Why the tenant could not run at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed mailboxes by reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureGroup>,
}

/// Failed mailboxes sharing a reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureGroup {
    /// The reason (`no_mailbox`, `access_denied`, ...).
    pub reason: String,
    /// How many mailboxes.
    pub count: usize,
    /// The first few of them.
    pub mailboxes: Vec<String>,
}

impl Summary {
    /// The summary of `report`.
    pub fn of(report: &RunReport) -> Self {
        let tenants: Vec<TenantSummary> = report
            .tenants
            .iter()
            .map(|tenant| {
                let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for m in tenant.mailboxes.iter().filter(|m| m.outcome == "failed") {
                    let reason = m.reason.map_or("unknown", |r| r.as_str()).to_owned();
                    let list = by_reason.entry(reason).or_default();
                    if !list.contains(&m.mailbox) {
                        list.push(m.mailbox.clone());
                    }
                }
                TenantSummary {
                    tenant_id: tenant.tenant_id.clone(),
                    status: if tenant.failed() {
                        "failed"
                    } else {
                        "succeeded"
                    },
                    totals: totals(tenant),
                    error: tenant.error.clone(),
                    failures: by_reason
                        .into_iter()
                        .map(|(reason, mailboxes)| FailureGroup {
                            reason,
                            count: mailboxes.len(),
                            mailboxes: mailboxes.into_iter().take(NAMED).collect(),
                        })
                        .collect(),
                }
            })
            .collect();
        let failed = tenants.iter().filter(|t| t.status == "failed").count();
        let mut text = format!(
            "contactmirror run {} {}{}: {} of {} tenant(s) failed",
            report.run_id,
            if failed > 0 { "FAILED" } else { "succeeded" },
            if report.dry_run { " (dry run)" } else { "" },
            failed,
            tenants.len()
        );
        for t in &tenants {
            text.push_str(&format!(
                "\n- {} [{}]: {} created, {} updated, {} deleted, {} mailbox(es) failed",
                t.tenant_id,
                t.status,
                t.totals.created,
                t.totals.updated,
                t.totals.deleted,
                t.totals.failed
            ));
            if let Some(error) = &t.error {
                text.push_str(&format!("; {error}"));
            }
            for group in &t.failures {
                text.push_str(&format!(
                    "\n  - {} {}: {}{}",
                    group.count,
                    group.reason,
                    group.mailboxes.join(", "),
                    if group.count > group.mailboxes.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ));
            }
        }
        Self {
            text,
            run_id: report.run_id,
            status: if report.succeeded() {
                "succeeded"
            } else {
                "failed"
            },
            dry_run: report.dry_run,
            started_at: report.started_at,
            duration_ms: report.duration_ms,
            tenants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{MailboxOutcome, TenantReport};
    use chrono::Utc;
    use shared::message::{FailureReason, Phase};

    fn run(failures: usize) -> RunReport {
        let mut tenant = TenantReport {
            tenant_id: "contoso".into(),
            users: 10,
            planned: vec!["would create \"Jane Doe\" in a@contoso".into()],
            ..TenantReport::default()
        };
        for i in 0..failures {
            for phase in Phase::ALL {
                tenant.mailboxes.push(MailboxOutcome {
                    mailbox: format!("user{i}@contoso"),
                    phase,
                    outcome: "failed".into(),
                    reason: Some(FailureReason::NoMailbox),
                    error: Some("MailboxNotEnabledForRESTAPI".into()),
                    attempts: 1,
                });
            }
        }
        RunReport {
            run_id: Uuid::new_v4(),
            mode: "embedded".into(),
            dry_run: false,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            duration_ms: 1,
            tenants: vec![tenant],
        }
    }

    fn notifier(url: &str, when: NotifyWhen) -> Result<Option<Notifier>, TargetError> {
        Notifier::new(&NotifyArgs {
            notify_url: Some(Secret::new(url)),
            notify: when,
        })
    }

    #[test]
    fn failures_are_grouped_by_reason_and_capped_and_no_plan_line_leaves() {
        let summary = Summary::of(&run(7));
        assert_eq!(summary.status, "failed");
        let tenant = &summary.tenants[0];
        assert_eq!(tenant.totals.failed, 7);
        assert_eq!(tenant.failures.len(), 1);
        assert_eq!(tenant.failures[0].reason, "no_mailbox");
        assert_eq!(tenant.failures[0].count, 7);
        assert_eq!(tenant.failures[0].mailboxes.len(), NAMED);
        assert!(
            summary.text.contains("FAILED: 1 of 1 tenant(s) failed"),
            "{}",
            summary.text
        );
        assert!(
            summary.text.contains("7 no_mailbox: user0@contoso,"),
            "{}",
            summary.text
        );
        let json = serde_json::to_string(&summary).unwrap();
        assert!(!json.contains("Jane Doe"), "{json}");
    }

    #[test]
    fn by_default_only_a_failed_run_is_notified() {
        let failure = notifier("https://hooks.example/x", NotifyWhen::Failure)
            .unwrap()
            .unwrap();
        assert!(failure.wants(&run(1)));
        assert!(!failure.wants(&run(0)));
        let always = notifier("https://hooks.example/x", NotifyWhen::Always)
            .unwrap()
            .unwrap();
        assert!(always.wants(&run(0)));
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        assert_eq!(
            notifier("hooks/s3cret", NotifyWhen::Failure).unwrap_err(),
            TargetError::NotAUrl
        );
        let error = notifier("ftp://user:s3cret@host/x", NotifyWhen::Failure).unwrap_err();
        assert_eq!(error, TargetError::Scheme);
        assert!(!error.to_string().contains("s3cret"));
        assert!(Notifier::new(&NotifyArgs::default()).unwrap().is_none());
        let shown = format!(
            "{:?}",
            notifier("https://u:s3cret@hooks.example/k3y", NotifyWhen::Always)
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y"),
            "{shown}"
        );
    }
}
