//! What `check` found, per tenant: findings in a fixed order, the verdict, and the two renderings (a table for a
//! person, JSON for a pipeline). Pure.

use serde::Serialize;

use super::estimate::Estimate;
use super::permissions::Requirement;
use crate::ops::table::{self, Align};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth a look; does not stop the tenant.
    Warn,
    /// The tenant is not ready.
    Fail,
    /// Not checked (an earlier check failed, or the option is off).
    Skipped,
}

impl Status {
    /// The table's word: failures shout.
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skipped => "skipped",
        }
    }
}

/// What was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// A token could be had.
    Token,
    /// One application permission.
    Permission,
    /// The shared mailbox (`GlobalAddressBookUserId`) answers.
    SharedMailbox,
    /// The central folder exists or would be created.
    CentralFolder,
    /// The receiving mailboxes answer.
    Mailboxes,
    /// The first run's cost.
    Estimate,
}

impl Check {
    fn label(self) -> &'static str {
        match self {
            Check::Token => "token",
            Check::Permission => "permission",
            Check::SharedMailbox => "shared mailbox",
            Check::CentralFolder => "central folder",
            Check::Mailboxes => "mailboxes",
            Check::Estimate => "estimate",
        }
    }
}

/// One line of a tenant's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: Check,
    /// How it came out.
    pub status: Status,
    /// What was found, one line.
    pub detail: String,
    /// What to do about it, one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Further lines (e.g. the mailboxes that did not answer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
}

impl Finding {
    /// A finding without fix or further lines.
    pub fn new(check: Check, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check,
            status,
            detail: detail.into(),
            fix: None,
            more: Vec::new(),
        }
    }

    /// With a fix.
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// A mailbox that answered 403 or 404.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreachable {
    /// Its UPN.
    pub mailbox: String,
    /// Graph's status.
    pub status: u16,
    /// What it means.
    pub reason: String,
}

/// The mailboxes that would take part, and what probing them showed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailboxSurvey {
    /// Receiving mailboxes.
    pub taking_part: usize,
    /// Of which probed.
    pub probed: usize,
    /// Probed mailboxes answering 403 or 404.
    pub unreachable: Vec<Unreachable>,
    /// Probed mailboxes that could not be probed for another reason (throttling, outage).
    pub not_probed: usize,
    /// Contacts per probed mailbox, on average.
    pub contacts_per_mailbox: f64,
}

/// Everything `check` says about one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantCheck {
    /// The tenant, as configured.
    pub tenant_id: String,
    /// No finding failed.
    pub ready: bool,
    /// The token's application roles (`None`: no token).
    pub roles: Option<Vec<String>>,
    /// The permissions its options need that the token lacks.
    pub missing_permissions: Vec<Requirement>,
    /// The receiving mailboxes (`None`: not listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<MailboxSurvey>,
    /// The first run's cost (`None`: no mailbox list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    /// One line per check, in the order they ran.
    pub findings: Vec<Finding>,
}

impl TenantCheck {
    /// Builds the tenant's result; `ready` follows from the findings.
    pub fn new(
        tenant_id: String,
        roles: Option<Vec<String>>,
        missing_permissions: Vec<Requirement>,
        mailboxes: Option<MailboxSurvey>,
        estimate: Option<Estimate>,
        findings: Vec<Finding>,
    ) -> Self {
        let ready = !findings.iter().any(|f| f.status == Status::Fail);
        Self {
            tenant_id,
            ready,
            roles,
            missing_permissions,
            mailboxes,
            estimate,
            findings,
        }
    }
}

/// The whole `check`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    /// Every tenant is ready.
    pub ready: bool,
    /// Per tenant, in configuration order.
    pub tenants: Vec<TenantCheck>,
}

impl CheckReport {
    /// The report of `tenants`.
    pub fn new(tenants: Vec<TenantCheck>) -> Self {
        Self {
            ready: tenants.iter().all(|t| t.ready),
            tenants,
        }
    }

    /// One block per tenant: a heading with the verdict, then a table of CHECK, STATUS, DETAIL, fixes and
    /// further lines indented under their check; a last line counting ready tenants.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for tenant in &self.tenants {
            let verdict = if tenant.ready { "ready" } else { "NOT READY" };
            out.push_str(&format!("tenant {}: {verdict}\n", tenant.tenant_id));
            let mut rows: Vec<Vec<String>> = Vec::new();
            for finding in &tenant.findings {
                rows.push(vec![
                    finding.check.label().to_owned(),
                    finding.status.label().to_owned(),
                    table::one_line(&finding.detail, 400),
                ]);
                for line in &finding.more {
                    rows.push(vec![
                        String::new(),
                        String::new(),
                        table::one_line(line, 400),
                    ]);
                }
                if let Some(fix) = &finding.fix {
                    rows.push(vec![
                        String::new(),
                        String::new(),
                        format!("fix: {}", table::one_line(fix, 400)),
                    ]);
                }
            }
            let rendered = table::render(
                &[
                    ("CHECK", Align::Left),
                    ("STATUS", Align::Left),
                    ("DETAIL", Align::Left),
                ],
                &rows,
            );
            for line in rendered.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        let ready = self.tenants.iter().filter(|t| t.ready).count();
        out.push_str(&format!(
            "{ready} of {} tenant(s) ready\n",
            self.tenants.len()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(findings: Vec<Finding>) -> TenantCheck {
        TenantCheck::new("contoso".into(), Some(vec![]), vec![], None, None, findings)
    }

    #[test]
    fn one_failure_makes_the_tenant_and_the_report_not_ready() {
        let fine = tenant(vec![
            Finding::new(Check::Token, Status::Ok, "issued"),
            Finding::new(Check::SharedMailbox, Status::Skipped, "mirror off"),
            Finding::new(Check::Mailboxes, Status::Warn, "1 not probed"),
        ]);
        assert!(fine.ready);
        let broken = tenant(vec![
            Finding::new(Check::Token, Status::Ok, "issued"),
            Finding::new(Check::Permission, Status::Fail, "X missing"),
        ]);
        assert!(!broken.ready);
        assert!(CheckReport::new(vec![fine.clone()]).ready);
        assert!(!CheckReport::new(vec![fine, broken]).ready);
    }

    #[test]
    fn the_table_puts_fixes_and_details_under_their_check() {
        let mut mailboxes = Finding::new(Check::Mailboxes, Status::Fail, "2 of 3 answer");
        mailboxes
            .more
            .push("403 a@contoso.com: access denied".into());
        let report = CheckReport::new(vec![tenant(vec![
            Finding::new(Check::Token, Status::Ok, "issued"),
            Finding::new(Check::Permission, Status::Fail, "X missing").fix("grant X"),
            mailboxes,
        ])]);
        let text = report.table();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "tenant contoso: NOT READY");
        assert_eq!(lines[1], "  CHECK       STATUS  DETAIL");
        assert_eq!(lines[2], "  token       ok      issued");
        assert_eq!(lines[3], "  permission  FAIL    X missing");
        assert_eq!(lines[4], "                      fix: grant X");
        assert_eq!(lines[5], "  mailboxes   FAIL    2 of 3 answer");
        assert_eq!(
            lines[6],
            "                      403 a@contoso.com: access denied"
        );
        assert_eq!(lines[7], "0 of 1 tenant(s) ready");
    }
}
