//! One row per measured run, the markdown tables, the scaling fit and the JSON document.

use serde::Serialize;

use crate::estate::Shape;
use crate::figures::{Floors, Minimal, Script};
use crate::fleet::WorkerUsage;
use crate::probe::Usage;

/// What one mailbox saw of the limits.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxPressure {
    /// Most requests in flight at once.
    pub peak_in_flight: u32,
    /// 429 answers.
    pub throttled: u64,
    /// Requests sent inside a Retry-After.
    pub early_retries: u64,
}

/// Everything measured about one run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Scenario group (sync, big-user, tenants, throughput, scaling).
    pub group: String,
    /// What the run was.
    pub scenario: String,
    /// Where the jobs ran.
    pub mode: String,
    /// The estate.
    pub shape: Shape,
    /// The budget profile label.
    pub budget: String,
    /// graphsim latency per operation, ms.
    pub latency_ms: f64,
    /// Wall time of the producer's run.
    pub wall_secs: f64,
    /// Wall time until the last tenant started phase 2 (`None` if not seen).
    pub phase1_wall_secs: Option<f64>,
    /// The floors.
    pub floors: Floors,
    /// Which floor `wall_over_floor` uses: "ordered", or "unordered" when the phase boundary was not seen.
    pub ratio_basis: String,
    /// Wall time over that floor (`None` when the floor is zero).
    pub wall_over_floor: Option<f64>,
    /// Graph operations graphsim served (plain requests and `$batch` items; token requests excluded).
    pub requests: u64,
    /// HTTP requests (a `$batch` envelope is one).
    pub http_requests: u64,
    /// Write operations sent (POST/PATCH/DELETE).
    pub writes: u64,
    /// Mailboxes that received requests.
    pub mailboxes: usize,
    /// Requests of the busiest mailbox.
    pub max_per_mailbox: u64,
    /// Mean requests per mailbox that received any.
    pub mean_per_mailbox: f64,
    /// Requests of the busiest user mailbox (shared mailboxes left out: they carry the per-tenant constant).
    pub max_per_user_mailbox: u64,
    /// What a perfect client needs.
    pub minimal: Minimal,
    /// `requests` / minimal total.
    pub sent_over_minimal: Option<f64>,
    /// 429 answers.
    pub throttled: u64,
    /// Requests sent while a Retry-After for their mailbox was running.
    pub early_retries: u64,
    /// How long after its Retry-After the latest early retry was sent, ms (a few: sent before the 429 was read).
    pub early_retry_max_lateness_ms: f64,
    /// Most requests in flight at once to one mailbox.
    pub peak_in_flight: u32,
    /// The mailboxes that saw more than 4 requests in flight, a 429 or an early retry, and the shared mailboxes
    /// always (issue 13: which mailbox went over, and is it the shared one).
    pub mailbox_pressure: std::collections::BTreeMap<String, MailboxPressure>,
    /// The bench process without graphsim's threads (producer, plus the workers in embedded mode), or the
    /// producer process's own figures when it runs as one (`fleet::ProducerAt::Process`).
    pub producer: Usage,
    /// RSS before the run (graphsim's estate and the runtime), MiB; 0 with a producer process.
    pub baseline_rss_mib: f64,
    /// graphsim's own CPU seconds.
    pub sim_cpu_secs: f64,
    /// Worker processes (broker mode).
    pub workers: Vec<WorkerUsage>,
    /// Graph operations per worker CPU second (broker mode).
    pub requests_per_worker_cpu_sec: Option<f64>,
    /// The replaced script for the same run.
    pub script: Script,
    /// Central folder size after the run, per tenant (max).
    pub central_contacts: u64,
    /// Mailboxes (and phase) that failed, e.g. the seeded users without a reachable mailbox.
    pub failed_mailboxes: usize,
    /// Contacts edited and added by owners before this run.
    pub edited: usize,
    /// See `edited`.
    pub added: usize,
}

fn num(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// Seconds with two decimals below 10 s (short runs), one above.
fn secs(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// Below this floor, fixed costs (token, directory, process start-up of the run) dominate and wall/floor
/// says nothing about throttling.
pub const MEANINGFUL_FLOOR_SECS: f64 = 0.5;

/// A row's wall / floor, or "-" where the floor is too small for the ratio to mean anything.
fn wall_over_floor(r: &Row) -> String {
    let floor = r.floors.ordered_secs.unwrap_or(r.floors.unordered_secs);
    if floor < MEANINGFUL_FLOOR_SECS {
        "-".to_owned()
    } else {
        opt(r.wall_over_floor, 2)
    }
}

/// The timing and request table.
pub fn timing_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | mode | budget | wall s | floor s (ordered) | floor s (unordered) | wall/floor | Graph requests | max / mean per mailbox | minimal | sent/minimal | 429s | early retries | peak in flight |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let ratio = wall_over_floor(r);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {}{} | {} | {} / {:.1} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.mode,
            r.budget,
            secs(r.wall_secs),
            r.floors.ordered_secs.map_or("n/a".to_owned(), secs),
            secs(r.floors.unordered_secs),
            ratio,
            if r.ratio_basis == "unordered" {
                " (u)"
            } else {
                ""
            },
            num(r.requests),
            num(r.max_per_mailbox),
            r.mean_per_mailbox,
            num(r.minimal.total()),
            opt(r.sent_over_minimal, 2),
            r.throttled,
            if r.early_retries == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{} (latest {:.0} ms in)",
                    r.early_retries, r.early_retry_max_lateness_ms
                )
            },
            r.peak_in_flight,
        ));
    }
    out
}

/// The resources and script table.
pub fn resources_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | mode | producer CPU s | producer peak RSS MiB (before run) | graphsim CPU s | worker CPU s (each) | worker peak RSS MiB (max) | Graph req / worker CPU s | script requests | script s (floor-bound) | ours / script requests |\n\
         |---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let workers = if r.workers.is_empty() {
            "-".to_owned()
        } else {
            r.workers
                .iter()
                .map(|w| secs(w.cpu_secs))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let worker_rss = r
            .workers
            .iter()
            .map(|w| w.peak_rss_mib)
            .fold(None::<f64>, |m, v| Some(m.map_or(v, |m| m.max(v))));
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} ({:.0}) | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.mode,
            secs(r.producer.cpu_secs),
            r.producer.peak_rss_mib,
            r.baseline_rss_mib,
            secs(r.sim_cpu_secs),
            workers,
            opt(worker_rss, 0),
            opt(r.requests_per_worker_cpu_sec, 0),
            num(r.script.requests),
            secs(r.script.secs),
            opt(
                (r.script.requests > 0).then(|| r.requests as f64 / r.script.requests as f64),
                2
            ),
        ));
    }
    out
}

/// Issue 13's MSP-scale figures per row: what a run costs per mailbox and per 1,000 mailboxes. The producer's
/// memory is a producer process's own peak RSS, or, with the producer in the bench process, the bench process's
/// peak RSS over its RSS before the run (an upper bound: graphsim's growth during the run included).
pub fn scale_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | mode | mailboxes | wall s | wall/floor | Graph requests | per mailbox (mean) | producer peak RSS MiB (a producer process: its own; in the bench: over its start) | worker peak RSS MiB (max) | CPU s per 1,000 mailboxes (producer + workers, graphsim excluded) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let worker_rss = r
            .workers
            .iter()
            .map(|w| w.peak_rss_mib)
            .fold(None::<f64>, |m, v| Some(m.map_or(v, |m| m.max(v))));
        let cpu = r.producer.cpu_secs + r.workers.iter().map(|w| w.cpu_secs).sum::<f64>();
        let per_thousand = (r.mailboxes > 0).then(|| cpu * 1_000.0 / r.mailboxes as f64);
        let ratio = wall_over_floor(r);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.0} | {} | {} |\n",
            r.scenario,
            r.mode,
            num(r.mailboxes as u64),
            secs(r.wall_secs),
            ratio,
            num(r.requests),
            r.mean_per_mailbox,
            (r.producer.peak_rss_mib - r.baseline_rss_mib).max(0.0),
            opt(worker_rss, 0),
            opt(per_thousand, 2),
        ));
    }
    out
}

/// Issue 13's slice of the largest customer: what the fleet sent per worker CPU second, and each process's peak
/// RSS (the producer's its own: it runs as its own process there).
pub fn slice_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | mode | wall s | floor s (ordered) | wall/floor | Graph requests | Graph requests / worker CPU s | worker CPU s (all) | worker peak RSS MiB (each) | producer peak RSS MiB | producer CPU s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for r in rows {
        let workers: Vec<String> = r
            .workers
            .iter()
            .map(|w| format!("{:.0}", w.peak_rss_mib))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.0} | {} |\n",
            r.scenario,
            r.mode,
            secs(r.wall_secs),
            opt(r.floors.ordered_secs, 1),
            wall_over_floor(r),
            num(r.requests),
            opt(r.requests_per_worker_cpu_sec, 0),
            r.workers.iter().map(|w| w.cpu_secs).sum::<f64>(),
            workers.join(" / "),
            (r.producer.peak_rss_mib - r.baseline_rss_mib).max(0.0),
            secs(r.producer.cpu_secs),
        ));
    }
    out
}

/// Issue 6's targets, judged row by row: (target, row, measured, met).
pub fn targets(rows: &[Row]) -> String {
    let mut out = String::from("| target | run | measured | met |\n|---|---|---|---|\n");
    let mut line = |target: &str, r: &Row, measured: String, met: bool| {
        out.push_str(&format!(
            "| {target} | {} / {} | {measured} | {} |\n",
            r.scenario,
            r.mode,
            if met { "yes" } else { "**no**" }
        ));
    };
    for r in rows {
        if r.group == "throughput" {
            if let Some(v) = r.requests_per_worker_cpu_sec {
                line(
                    ">= 2,000 Graph requests per worker CPU second",
                    r,
                    format!("{v:.0}"),
                    v >= 2000.0,
                );
            }
            continue;
        }
        if r.scenario.ends_with("initial sync") && !r.group.starts_with("scaling") {
            let floor = r.floors.ordered_secs.unwrap_or(r.floors.unordered_secs);
            if floor >= MEANINGFUL_FLOOR_SECS {
                if let Some(ratio) = r.wall_over_floor {
                    line(
                        "initial sync within 1.25x of the floor",
                        r,
                        format!("{ratio:.2}x"),
                        ratio <= 1.25,
                    );
                }
            }
            if let Some(ratio) = r.sent_over_minimal {
                line(
                    "initial sync: sent / minimal <= 1.10",
                    r,
                    format!("{ratio:.2}"),
                    ratio <= 1.10,
                );
            }
        }
        if r.scenario.contains("no change") {
            line(
                "no-change re-run: <= 2 requests per user mailbox, 0 writes",
                r,
                format!(
                    "max {} per user mailbox, {} writes",
                    r.max_per_user_mailbox, r.writes
                ),
                r.max_per_user_mailbox <= 2 && r.writes == 0,
            );
        }
        if r.early_retries > 0 || r.peak_in_flight > 4 {
            line(
                "0 early retries, peak in flight <= 4",
                r,
                format!("{} early, peak {}", r.early_retries, r.peak_in_flight),
                false,
            );
        }
    }
    let clean = rows
        .iter()
        .filter(|r| r.early_retries == 0 && r.peak_in_flight <= 4)
        .count();
    out.push_str(&format!(
        "| 0 early retries, peak in flight <= 4 | all other runs | {clean} of {} runs clean | {} |\n",
        rows.len(),
        if clean == rows.len() { "yes" } else { "see above" }
    ));
    out
}

/// A least-squares fit of log(y) = a + k log(x).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fit {
    /// The quantity.
    pub of: String,
    /// The exponent k.
    pub exponent: Option<f64>,
}

/// The exponent of y against x on a log-log scale (`None` with fewer than two usable points).
pub fn exponent(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mx = logs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = logs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Reads one quantity off a row.
type Measure = dyn Fn(&Row) -> f64;

/// Exponents of wall time, requests, minimal requests and the floor against `x` for a series of rows.
pub fn fits(rows: &[&Row], x: impl Fn(&Row) -> f64) -> Vec<Fit> {
    let series: [(&str, &Measure); 5] = [
        ("wall time", &|r| r.wall_secs),
        ("Graph requests", &|r| r.requests as f64),
        ("max requests per mailbox", &|r| r.max_per_mailbox as f64),
        ("minimal requests", &|r| r.minimal.total() as f64),
        ("floor (ordered)", &|r| {
            r.floors.ordered_secs.unwrap_or(r.floors.unordered_secs)
        }),
    ];
    series
        .iter()
        .map(|(name, y)| Fit {
            of: (*name).to_owned(),
            exponent: exponent(&rows.iter().map(|r| (x(r), y(r))).collect::<Vec<_>>()),
        })
        .collect()
}

/// The scaling table for one axis.
pub fn scaling_table(axis: &str, rows: &[&Row], fits: &[Fit]) -> String {
    let mut out = String::from(
        "| users | contacts | budget | wall s | floor s (ordered) | Graph requests | max per mailbox | minimal | central contacts | producer CPU s | graphsim CPU s |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.shape.users,
            r.shape.contacts,
            r.budget,
            secs(r.wall_secs),
            r.floors.ordered_secs.map_or("n/a".to_owned(), secs),
            num(r.requests),
            num(r.max_per_mailbox),
            num(r.minimal.total()),
            num(r.central_contacts),
            secs(r.producer.cpu_secs),
            secs(r.sim_cpu_secs),
        ));
    }
    let line: Vec<String> = fits
        .iter()
        .map(|f| format!("{} {}", f.of, opt(f.exponent, 2)))
        .collect();
    out.push_str(&format!(
        "\nFitted exponent against {axis} (least squares on log-log): {}\n",
        line.join("; ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent_of_a_power_law_is_recovered() {
        let pts: Vec<(f64, f64)> = [10.0, 100.0, 1000.0]
            .iter()
            .map(|x: &f64| (*x, 3.0 * x.powi(2)))
            .collect();
        let k = exponent(&pts).expect("fit");
        assert!((k - 2.0).abs() < 1e-9, "{k}");
        assert_eq!(exponent(&pts[..1]), None);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(num(1_234_567), "1,234,567");
        assert_eq!(num(999), "999");
    }
}
