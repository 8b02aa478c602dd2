//! The numbers a run is judged by: the throttling floor (unordered and phase-ordered), the requests a perfect
//! client would need for the same changes, and the replaced PowerShell script's requests and time for the
//! same estate (`../shared/docs/anchors.md`, §1.7 and §4b).

use std::collections::HashMap;
use std::time::Duration;

use graphsim::{SeededTenant, SimStats};
use serde::Serialize;

use crate::estate::{Changes, FolderKey, Snapshot};
use crate::probe::PhaseMark;

/// Graph's per-(app, mailbox) budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "kind"
)]
pub enum Budget {
    /// `requests` per sliding `window`, `in_flight` at a time.
    Window {
        /// Requests per window.
        requests: u32,
        /// The window.
        #[serde(serialize_with = "secs")]
        window: Duration,
        /// Concurrent requests.
        in_flight: u32,
    },
    /// No throttling (the throughput scenario).
    Unlimited,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Budget {
    /// Graph's time-scaled rate: 10,000 / 600 s is 100 / 6 s, 4 in flight.
    pub const SCALED: Budget = Budget::Window {
        requests: 100,
        window: Duration::from_secs(6),
        in_flight: 4,
    };
    /// Graph's real budget.
    pub const REAL: Budget = Budget::Window {
        requests: 10_000,
        window: Duration::from_secs(600),
        in_flight: 4,
    };

    /// Short label for tables.
    pub fn label(&self) -> String {
        match self {
            Budget::Window {
                requests, window, ..
            } => format!("{requests}/{}s", window.as_secs()),
            Budget::Unlimited => "none".to_owned(),
        }
    }

    /// The least time `n` requests to one mailbox can take: `requests` at once, the next `requests` a whole
    /// window later (throttled requests count, so a perfect client sends none), at most `in_flight` at a time,
    /// each taking `latency`.
    pub fn floor(&self, n: u64, latency: Duration) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        match *self {
            Budget::Unlimited => latency.mul_f64(n.div_ceil(4) as f64),
            Budget::Window {
                requests,
                window,
                in_flight,
            } => {
                let (b, k) = (u64::from(requests.max(1)), u64::from(in_flight.max(1)));
                let full_windows = (n - 1) / b;
                let last = n - full_windows * b;
                let by_budget =
                    window.mul_f64(full_windows as f64) + latency.mul_f64(last.div_ceil(k) as f64);
                let by_concurrency = latency.mul_f64(n.div_ceil(k) as f64);
                by_budget.max(by_concurrency)
            }
        }
    }
}

/// Pages to read `n` items at `page` per page; reading an empty folder still costs one request.
pub fn pages(n: u64, page: u64) -> u64 {
    n.div_ceil(page).max(1)
}

/// The mailboxes of a tenant, lower-cased, with the shared mailbox first.
fn tenant_mailboxes(t: &SeededTenant) -> Vec<String> {
    let mut out = vec![t.shared_mailbox_upn.to_lowercase()];
    out.extend(t.user_upns.iter().map(|u| u.to_lowercase()));
    out
}

/// Floors of one run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Floors {
    /// The busiest mailbox's requests at its budget, ignoring phase order.
    pub unordered_secs: f64,
    /// Phase order respected: per tenant, floor(central mailbox's phase-1 requests) + floor(busiest phase-2
    /// mailbox); the slowest tenant. `None` when a tenant's phase-2 start was not observed.
    pub ordered_secs: Option<f64>,
}

/// Both floors from graphsim's counters and the phase marks.
pub fn floors(
    tenants: &[SeededTenant],
    stats: &SimStats,
    marks: &HashMap<String, PhaseMark>,
    budget: Budget,
    latency: Duration,
) -> Floors {
    let unordered = stats
        .mailboxes
        .values()
        .map(|m| budget.floor(m.requests, latency))
        .max()
        .unwrap_or_default();
    let mut ordered = Some(Duration::ZERO);
    for t in tenants {
        let Some(mark) = marks.get(&t.tenant_id.to_lowercase()) else {
            // A tenant that sent nothing (skipped) does not bound anything.
            let touched = tenant_mailboxes(t)
                .iter()
                .any(|m| stats.mailbox(m).requests > 0);
            if touched {
                ordered = None;
            }
            continue;
        };
        let central = t.shared_mailbox_upn.to_lowercase();
        let phase1 = budget.floor(mark.stats.mailbox(&central).requests, latency);
        let phase2 = tenant_mailboxes(t)
            .iter()
            .map(|m| {
                let n = stats
                    .mailbox(m)
                    .requests
                    .saturating_sub(mark.stats.mailbox(m).requests);
                budget.floor(n, latency)
            })
            .max()
            .unwrap_or_default();
        ordered = ordered.map(|o| o.max(phase1 + phase2));
    }
    Floors {
        unordered_secs: unordered.as_secs_f64(),
        ordered_secs: ordered.map(|d| d.as_secs_f64()),
    }
}

/// What a perfect client needs for the changes this run made.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minimal {
    /// Contacts created, updated, deleted (content compared before and after), plus a created central folder.
    pub writes: u64,
    /// The changes behind `writes`.
    pub changes: Changes,
    /// Fewest reads at 1,000 per page: directory and folder look-ups, then every folder once: in full on a first
    /// run, through a kept delta link (one request, plus a page per 1,000 changes) on a re-run.
    pub reads: u64,
    /// The same with every folder read in full (no delta link kept).
    pub reads_without_delta: u64,
}

impl Minimal {
    /// The fewest reads of a directory-only tenant (issue 11): the licensed-user list and the organisation's name,
    /// the directory's users (every user at 999 per page on a first run, one delta request on a re-run), then every
    /// receiving mailbox once (in full, or one delta request). No shared mailbox, no central folder.
    fn add_directory_reads(
        &mut self,
        t: &SeededTenant,
        stats: &SimStats,
        before: &Snapshot,
        first_run: bool,
    ) {
        let users: Vec<String> = t
            .user_upns
            .iter()
            .map(|u| u.to_lowercase())
            .filter(|u| stats.mailboxes.contains_key(u))
            .collect();
        let all_users = t.user_upns.len() as u64;
        let fixed = pages(all_users, 999) + 1;
        let mut full = fixed + pages(all_users, 999);
        for u in &users {
            full += pages(before.size(&FolderKey::new(u, false)) as u64, 1000);
        }
        let delta = fixed + 1 + users.len() as u64;
        self.reads_without_delta += full;
        self.reads += if first_run { full } else { delta };
    }

    /// Writes plus reads.
    pub fn total(&self) -> u64 {
        self.writes + self.reads
    }
}

/// Counts [`Minimal`] for one run from the snapshots around it. `first_run` says no delta link exists yet.
/// Mailboxes are the ones the fleet addressed (`stats`), which is the set a perfect client must read too.
pub fn minimal(
    tenants: &[SeededTenant],
    stats: &SimStats,
    before: &Snapshot,
    after: &Snapshot,
    first_run: bool,
    directory: bool,
) -> Minimal {
    let changes = before.changes(after);
    let mut m = Minimal::default();
    for t in tenants {
        if directory {
            m.add_directory_reads(t, stats, before, first_run);
            continue;
        }
        let central = FolderKey {
            mailbox: t.shared_mailbox_upn.to_lowercase(),
            central: true,
        };
        let users: Vec<String> = t
            .user_upns
            .iter()
            .map(|u| u.to_lowercase())
            .filter(|u| stats.mailboxes.contains_key(u))
            .collect();
        if users.is_empty() {
            continue;
        }
        // Shared mailbox look-up, the licensed-user list (999 per page), the central folder look-up.
        let fixed = 1 + pages(users.len() as u64, 999) + 1;
        let folder_created = u64::from(!before.has(&central) && after.has(&central));
        let mut full = fixed + pages(before.size(&central) as u64, 1000);
        // Through delta links: one request per folder. Owners change a handful of contacts between runs, far
        // below a page; the central folder only changes through the client's own writes, which it knows.
        let delta = fixed + 1 + users.len() as u64;
        for u in &users {
            let key = FolderKey {
                mailbox: u.clone(),
                central: false,
            };
            full += pages(before.size(&key) as u64, 1000);
        }
        m.reads_without_delta += full;
        m.reads += if first_run { full } else { delta };
        m.writes += folder_created;
    }
    for c in changes.values() {
        m.changes.add(*c);
    }
    m.writes += m.changes.total();
    m
}

/// The replaced script's requests for one run (anchors.md §1.7: sequential, 100 per page, the central folder
/// re-read for every user in both steps, one request per write, no delta, no `$batch`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Script {
    /// Every request.
    pub requests: u64,
    /// Of which writes.
    pub writes: u64,
    /// Requests to the shared mailbox.
    pub central_requests: u64,
    /// Its floor-bound time: one request at a time, and never faster than the shared mailbox's budget or the sum
    /// of each user's step-2 budget (users are handled one after another).
    pub secs: f64,
}

/// What the script would meet: per tenant the users it processes, their default-folder sizes, and the central
/// folder before and after.
pub struct ScriptInput {
    /// Default-folder sizes of the users it processes, before the run.
    pub user_sizes: Vec<u64>,
    /// The licensed users it lists.
    pub listed: u64,
    /// Central folder size before the run.
    pub central_before: u64,
    /// Central folder size after the run (ours: the script's dedup is close enough to count pages).
    pub central_after: u64,
    /// Whether the central folder had to be created.
    pub create_folder: bool,
    /// Contacts added by owners since the last run (each one costs the script one write per user plus one).
    pub added: u64,
    /// A first run (every source contact is written to the central folder once).
    pub first_run: bool,
}

/// Counts the script's requests and time for one run.
pub fn script(inputs: &[ScriptInput], budget: Budget, latency: Duration) -> Script {
    let mut s = Script::default();
    let mut elapsed = Duration::ZERO;
    for t in inputs {
        let u = t.user_sizes.len() as u64;
        let page = |n: u64| pages(n, 100);
        // Users list, the shared mailbox's folder tree (root listing + one childFolders per folder, here one),
        // and the folder create on a first run.
        let fixed_central = 2 + u64::from(t.create_folder);
        let fixed = pages(t.listed, 999) + fixed_central;
        let s_end = t.central_after;
        let mut step1_central = 0;
        let mut step1_reads = 0;
        for (i, c) in t.user_sizes.iter().enumerate() {
            step1_reads += page(*c);
            // The central folder grows as users are merged in, and is re-read for every one of them.
            let grown = if t.first_run {
                t.central_before + (s_end.saturating_sub(t.central_before)) * i as u64 / u.max(1)
            } else {
                s_end
            };
            step1_central += page(grown);
        }
        let (writes1, writes2) = if t.first_run {
            // Every source contact is POSTed or PATCHed into the central folder; every central contact is
            // written to every user (POST for others', PATCH stamping their own).
            (t.user_sizes.iter().sum::<u64>(), u * s_end)
        } else {
            // Field edits never propagate (anchors §1.5); a new contact is POSTed once centrally, then to
            // every user (a PATCH for its owner).
            (t.added, t.added * u)
        };
        let step2_central = u * page(s_end);
        let step2_user_reads: u64 = t.user_sizes.iter().map(|c| page(*c)).sum();
        let central = fixed_central + step1_central + writes1 + step2_central;
        let total = fixed
            + step1_reads
            + step1_central
            + writes1
            + step2_central
            + step2_user_reads
            + writes2;
        s.requests += total;
        s.writes += writes1 + writes2;
        s.central_requests += central;
        // Step 2, user by user: each user's own read plus its writes, at that user's budget, one after another.
        let per_user_writes = writes2 / u.max(1);
        let step2: Duration = t
            .user_sizes
            .iter()
            .map(|c| budget.floor(page(*c) + per_user_writes, latency))
            .sum();
        // Tenants run one after another too (the newer multi-tenant version loops over them).
        elapsed += latency
            .mul_f64(total as f64)
            .max(budget.floor(central, latency))
            .max(step2);
    }
    s.secs = elapsed.as_secs_f64();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_spends_the_window_then_waits_whole_windows() {
        let b = Budget::SCALED;
        let l = Duration::from_millis(2);
        assert_eq!(b.floor(0, l), Duration::ZERO);
        // 100 at once, 4 in flight: 25 rounds of 2 ms.
        assert_eq!(b.floor(100, l), Duration::from_millis(50));
        // The 101st waits for the first window to pass.
        assert_eq!(b.floor(101, l), Duration::from_millis(6_002));
        assert_eq!(b.floor(250, l), Duration::from_millis(12_026));
    }
}
