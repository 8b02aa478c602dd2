//! How many Graph requests a tenant's first run makes, and how long that takes at Graph's budget. Pure.
//!
//! The model, deliberately simple and stated so an operator can redo it by hand:
//! - Graph's budget is per mailbox: 10,000 requests per 10 minutes (a `$batch` counts each of its items) and
//!   4 requests in flight. Mailboxes do not share it, so different mailboxes work in parallel; the app-wide
//!   limit (130,000 per 10 s) is far above what a tenant's run needs and is ignored.
//! - A first run has no change feed: every folder is read in full, a page per 1,000 contacts (at least one).
//! - Phase 1 (mirror on) reads every source mailbox (16 at a time) and writes every person once into the central
//!   folder, one request per person against the shared mailbox's budget. Persons are at most the sources'
//!   contacts (no overlap assumed: an upper bound).
//! - Phase 2 reads every receiving mailbox and writes every person there (the directory's persons too, as many
//!   as the tenant's own `Directory` settings select now, when it is on): one request per person per mailbox, each against its own budget,
//!   `workers` mailboxes at a time.
//! - Time per mailbox: a read page takes 0.25 s and a `$batch` of 20 writes 1 s, 4 at once; beyond 10,000
//!   requests every further 10,000 waits for the next 10-minute window. The whole run is phase 1 (sources,
//!   then the central writes) plus phase 2 (waves of `workers` mailboxes).
//!
//! Contacts per mailbox come from the mailboxes `check` probed (their `@odata.count`), averaged.

use serde::Serialize;

/// Graph's per-mailbox budget: requests per window.
pub const BUDGET_REQUESTS: u64 = 10_000;
/// Graph's per-mailbox budget window.
pub const BUDGET_WINDOW_SECS: f64 = 600.0;
/// Requests in flight per mailbox.
pub const IN_FLIGHT: f64 = 4.0;
/// Contacts per read page.
const PAGE: u64 = 1_000;
/// Writes per `$batch`.
const BATCH: f64 = 20.0;
/// Assumed latency of a read page.
const READ_SECS: f64 = 0.25;
/// Assumed latency of a `$batch`.
const BATCH_SECS: f64 = 1.0;
/// Source mailboxes a phase-1 job reads at once.
const SOURCES_AT_ONCE: u64 = 16;

/// What a tenant's first run works on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Workload {
    /// Receiving mailboxes.
    pub mailboxes: u64,
    /// Whether the mirror (phase 1, the central folder) is on.
    pub mirror: bool,
    /// The directory persons each receiving mailbox gets (0 when the directory is not distributed).
    pub directory_persons: u64,
    /// Contacts per mailbox, on average.
    pub contacts_per_mailbox: f64,
    /// Mailboxes worked on at once in phase 2.
    pub workers: u64,
}

/// The estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Every request of the run (`$batch` items counted one by one).
    pub requests: u64,
    /// Of which against the shared mailbox (the central folder's budget).
    pub shared_mailbox_requests: u64,
    /// Persons at most (contacts the central folder and each mailbox would get).
    pub persons: u64,
    /// Wall time at Graph's budget.
    pub seconds: u64,
}

/// Pages to read a folder of `contacts`.
fn pages(contacts: u64) -> u64 {
    contacts.div_ceil(PAGE).max(1)
}

/// Seconds one mailbox needs for `reads` pages and `writes` writes at its budget.
fn mailbox_seconds(reads: u64, writes: u64) -> f64 {
    let requests = reads + writes;
    if requests == 0 {
        return 0.0;
    }
    let latency =
        (reads as f64 * READ_SECS + (writes as f64 / BATCH).ceil() * BATCH_SECS) / IN_FLIGHT;
    let full_windows = (requests - 1) / BUDGET_REQUESTS;
    let last_share = (requests - full_windows * BUDGET_REQUESTS) as f64 / requests as f64;
    (full_windows as f64 * BUDGET_WINDOW_SECS + latency * last_share).max(latency)
}

/// The first run's requests and time for `work`.
pub fn estimate(work: &Workload) -> Estimate {
    let contacts = work.contacts_per_mailbox.max(0.0).round() as u64;
    let m = work.mailboxes;
    let mirrored = if work.mirror { contacts * m } else { 0 };
    let persons = mirrored + work.directory_persons;
    let (phase1_requests, shared_requests, phase1_secs) = if work.mirror {
        let source_reads = m * pages(contacts);
        let central = 1 + mirrored;
        let secs = m.div_ceil(SOURCES_AT_ONCE) as f64 * mailbox_seconds(pages(contacts), 0)
            + mailbox_seconds(1, mirrored);
        (source_reads + central, central, secs)
    } else {
        (0, 0, 0.0)
    };
    let per_mailbox_reads = pages(contacts);
    let phase2_requests = m * (per_mailbox_reads + persons);
    let waves = m.div_ceil(work.workers.max(1));
    let phase2_secs = waves as f64 * mailbox_seconds(per_mailbox_reads, persons);
    Estimate {
        requests: phase1_requests + phase2_requests,
        shared_mailbox_requests: shared_requests,
        persons,
        seconds: (phase1_secs + phase2_secs).ceil() as u64,
    }
}

/// A duration for people: `under 1 min`, `≈ 14 min`, `≈ 2 h 5 min`.
pub fn human_duration(seconds: u64) -> String {
    if seconds < 60 {
        return "under 1 min".to_owned();
    }
    let minutes = seconds.div_ceil(60);
    if minutes < 60 {
        format!("≈ {minutes} min")
    } else {
        format!("≈ {} h {} min", minutes / 60, minutes % 60)
    }
}

/// A count with thousands separators: `9,876,543`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(mailboxes: u64, contacts: f64) -> Workload {
        Workload {
            mailboxes,
            mirror: true,
            directory_persons: 0,
            contacts_per_mailbox: contacts,
            workers: 64,
        }
    }

    #[test]
    fn requests_follow_the_model_by_hand() {
        // 10 mailboxes of 50 contacts: phase 1 reads 10 pages and writes 500 persons after reading the empty
        // central folder (501 on the shared mailbox); phase 2 reads 1 page and writes 500 in each of 10.
        let e = estimate(&work(10, 50.0));
        assert_eq!(e.persons, 500);
        assert_eq!(e.shared_mailbox_requests, 501);
        assert_eq!(e.requests, 10 + 501 + 10 * (1 + 500));
    }

    #[test]
    fn a_mailbox_beyond_its_budget_waits_for_the_next_window() {
        assert!(mailbox_seconds(1, 9_999) < BUDGET_WINDOW_SECS);
        let over = mailbox_seconds(1, 10_000);
        assert!(over >= BUDGET_WINDOW_SECS, "{over}");
        assert!(mailbox_seconds(1, 25_000) >= 2.0 * BUDGET_WINDOW_SECS);
        assert_eq!(mailbox_seconds(0, 0), 0.0);
    }

    #[test]
    fn more_mailboxes_or_contacts_never_make_it_cheaper() {
        let mut last = estimate(&work(1, 0.0));
        for (m, c) in [(2, 0.0), (2, 10.0), (50, 10.0), (50, 300.0), (500, 300.0)] {
            let next = estimate(&work(m, c));
            assert!(
                next.requests >= last.requests && next.seconds >= last.seconds,
                "{m} {c}"
            );
            last = next;
        }
    }

    #[test]
    fn without_the_mirror_nothing_is_asked_of_the_shared_mailbox() {
        let e = estimate(&Workload {
            mirror: false,
            directory_persons: 20,
            ..work(20, 100.0)
        });
        assert_eq!(e.shared_mailbox_requests, 0);
        assert_eq!(e.persons, 20);
        assert_eq!(e.requests, 20 * (1 + 20));
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human_duration(0), "under 1 min");
        assert_eq!(human_duration(59), "under 1 min");
        assert_eq!(human_duration(60), "≈ 1 min");
        assert_eq!(human_duration(61), "≈ 2 min");
        assert_eq!(human_duration(3_900), "≈ 1 h 5 min");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(9_876_543), "9,876,543");
    }
}
