//! What the operating system and the producer's own log can tell about a run: CPU seconds and peak RSS from
//! `/proc`, and the moment each tenant's phase 2 starts (so the ordered floor can split each mailbox's requests
//! into phase 1 and phase 2).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};
use graphsim::{Sim, SimStats};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer};

/// CPU time and memory of one process (or of a set of its threads).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// User plus system CPU seconds.
    pub cpu_secs: f64,
    /// Peak resident set (VmHWM), MiB; 0 for thread sets.
    pub peak_rss_mib: f64,
    /// Current resident set (VmRSS), MiB; 0 for thread sets.
    pub rss_mib: f64,
}

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`, 100 on every Linux this runs on).
fn ticks_per_sec() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// utime + stime of a `stat` file, in seconds. The command name may contain spaces and parentheses, so fields
/// are counted from the last `)`.
fn stat_cpu(path: &Path) -> Result<f64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .with_context(|| format!("{} has no command field", path.display()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, so utime (field 14) and stime (field 15) are at 11 and 12.
    let field = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{} field {} is missing", path.display(), i + 3))
    };
    Ok((field(11)? + field(12)?) / ticks_per_sec())
}

fn status_kib(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
}

/// CPU and memory of a process (`self` or a pid).
pub fn process(pid: &str) -> Result<Usage> {
    let base = Path::new("/proc").join(pid);
    let cpu_secs = stat_cpu(&base.join("stat"))?;
    let status = std::fs::read_to_string(base.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(Usage {
        cpu_secs,
        peak_rss_mib: status_kib(&status, "VmHWM:").unwrap_or(0.0) / 1024.0,
        rss_mib: status_kib(&status, "VmRSS:").unwrap_or(0.0) / 1024.0,
    })
}

/// CPU seconds of this process's threads whose name starts with `prefix` (graphsim's runtime threads), so the
/// simulator's share can be taken out of the bench process's total.
pub fn threads_cpu(prefix: &str) -> Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let dir = entry.context("reading /proc/self/task")?.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim_end().starts_with(prefix) {
            // A thread that ended between the listing and the read has nothing left to count.
            total += stat_cpu(&dir.join("stat")).unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// Resets this process's peak RSS to its current RSS, so the next VmHWM reading covers one scenario only.
pub fn reset_peak_rss() {
    reset_peak_rss_of("self");
}

/// The same for process `pid` (this user's).
pub fn reset_peak_rss_of(pid: &str) {
    // "5" resets VmHWM (Linux >= 4.0); without it the peak covers the whole process lifetime, which only
    // overstates the figure.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// One tenant's phase boundary: when the producer started its phase 2, and graphsim's counters at that moment.
#[derive(Debug, Clone)]
pub struct PhaseMark {
    /// When the producer logged the start of phase 2.
    pub at: Instant,
    /// Counters then: every request a mailbox had by then belongs to phase 1 (or the preparation before it).
    pub stats: SimStats,
}

#[derive(Default)]
struct Marks {
    sim: Option<Arc<Sim>>,
    by_tenant: HashMap<String, PhaseMark>,
}

fn marks() -> &'static Mutex<Marks> {
    static MARKS: OnceLock<Mutex<Marks>> = OnceLock::new();
    MARKS.get_or_init(Mutex::default)
}

/// Starts recording phase marks against `sim` (forgets earlier ones).
pub fn watch_phases(sim: &Arc<Sim>) {
    let mut m = marks().lock().unwrap_or_else(|p| p.into_inner());
    m.sim = Some(Arc::clone(sim));
    m.by_tenant.clear();
}

/// Stops recording and returns the marks by lower-cased tenant id.
pub fn take_phases() -> HashMap<String, PhaseMark> {
    let mut m = marks().lock().unwrap_or_else(|p| p.into_inner());
    m.sim = None;
    std::mem::take(&mut m.by_tenant)
}

/// The text of the producer's log line that opens a tenant's phase 2 (`Course::start_phase2`,
/// producer/src/orchestrate/course.rs). If it changes, no marks arrive and the bench reports the ordered floor as
/// unknown instead of guessing.
pub const PHASE_TWO_MESSAGE: &str = "starting phase 2";

/// A tracing layer that snapshots graphsim's counters when the producer starts a tenant's phase 2.
pub struct PhaseLayer;

#[derive(Default)]
struct Fields {
    message: String,
    tenant: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "tenant" => self.tenant = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "tenant" => self.tenant = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for PhaseLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !fields.message.contains(PHASE_TWO_MESSAGE) || fields.tenant.is_empty() {
            return;
        }
        // In the bench process the mark is taken before the producer submits the tenant's first phase-2 job
        // (the line is logged just before).
        mark_phase_two(&fields.tenant);
    }
}

/// Records that `tenant`'s phase 2 starts now, with graphsim's counters at this moment (the first mark of a
/// tenant counts). Fed by [`PhaseLayer`] in the bench process and by a producer process's log lines
/// ([`phase_two_tenant`]).
pub fn mark_phase_two(tenant: &str) {
    let at = Instant::now();
    let mut m = marks().lock().unwrap_or_else(|p| p.into_inner());
    let Some(sim) = m.sim.clone() else {
        return;
    };
    let stats = sim.stats();
    m.by_tenant
        .entry(tenant.to_lowercase())
        .or_insert(PhaseMark { at, stats });
}

/// The tenant whose phase 2 a producer process's JSON log line (`--log-format json`) opens, if it is that line.
pub fn phase_two_tenant(line: &str) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let message = event.get("message")?.as_str()?;
    let tenant = event.get("tenant")?.as_str()?;
    (message.contains(PHASE_TWO_MESSAGE) && !tenant.is_empty()).then(|| tenant.to_owned())
}

#[cfg(test)]
mod tests {
    use shared::telemetry::{CapturedLog, LogFormat};
    use tracing_subscriber::filter::EnvFilter;

    use super::*;

    #[test]
    fn a_producer_processs_json_phase_line_names_its_tenant_and_no_other_line_does() {
        let captured = CapturedLog::default();
        // The subscriber the producer binary installs, in the format the bench asks it for.
        let subscriber = shared::telemetry::subscriber(
            LogFormat::Json,
            EnvFilter::new("info"),
            captured.clone(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("run", run_id = "r1");
            let _entered = span.enter();
            tracing::info!(tenant = %"Contoso-ID", users = 3, "phase 1 complete; starting phase 2");
            tracing::info!(tenant = %"Contoso-ID", "phase 1 job submitted");
        });
        let text = captured.text();
        let found: Vec<Option<String>> = text.lines().map(phase_two_tenant).collect();
        assert_eq!(found, vec![Some("Contoso-ID".to_owned()), None]);
        assert_eq!(phase_two_tenant("starting phase 2 tenant=x"), None);
    }
}
