//! Progress of a run per phase, shown the way the reader can use it: live bars with counts and an ETA when
//! stderr is a terminal (an operator watching), plain periodic log lines otherwise (CI logs, `kubectl logs`),
//! where redrawn bars would be noise.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::message::Phase;
use tracing::info;

/// How often a plain progress line is printed at most.
const EVERY: Duration = Duration::from_secs(2);

/// The bars on screen, if any: log lines are written around them (see [`LogWriter`]).
static ON_SCREEN: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// The producer's log writer: stderr, with the progress bars lifted while a line is written, so a log line
/// lands above the bars instead of between two copies of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bars = ON_SCREEN.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bars {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Bars on stderr.
    Bars,
    /// Log lines every [`EVERY`] at most.
    Lines,
    /// Bars drawn nowhere (tests of the bar bookkeeping).
    HiddenBars,
}

impl Display {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            Display::Bars
        } else {
            Display::Lines
        }
    }
}

/// Jobs queued, succeeded and failed in one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseProgress {
    /// Jobs queued so far (phase 2 grows as tenants finish phase 1).
    pub total: u64,
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed for good.
    pub failed: u64,
}

impl PhaseProgress {
    fn finished(&self) -> u64 {
        self.succeeded + self.failed
    }
}

/// Counts of jobs per phase, and their display.
pub struct Progress {
    phases: BTreeMap<Phase, PhaseProgress>,
    bars: Option<Bars>,
    last: Instant,
    started: Instant,
}

struct Bars {
    multi: MultiProgress,
    per_phase: BTreeMap<Phase, ProgressBar>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Starts counting, displayed as [`Display::detect`] chooses.
    pub fn new() -> Self {
        Self::with_display(Display::detect())
    }

    /// Starts counting with an explicit display.
    pub fn with_display(display: Display) -> Self {
        let bars = match display {
            Display::Lines => None,
            Display::Bars => {
                let bars = Bars::new(ProgressDrawTarget::stderr());
                *ON_SCREEN.lock().unwrap_or_else(|p| p.into_inner()) = Some(bars.multi.clone());
                Some(bars)
            }
            Display::HiddenBars => Some(Bars::new(ProgressDrawTarget::hidden())),
        };
        Self {
            phases: BTreeMap::new(),
            bars,
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    /// `count` more jobs were queued in `phase`.
    pub fn add(&mut self, phase: Phase, count: u64) {
        self.phases.entry(phase).or_default().total += count;
        if let Some(bars) = &mut self.bars {
            bars.bar(phase).inc_length(count);
        }
    }

    /// One job of `phase` finished.
    pub fn done(&mut self, phase: Phase, succeeded: bool) {
        let entry = self.phases.entry(phase).or_default();
        if succeeded {
            entry.succeeded += 1;
        } else {
            entry.failed += 1;
        }
        let entry = *entry;
        match &mut self.bars {
            Some(bars) => {
                let bar = bars.bar(phase);
                bar.set_message(message(&entry));
                bar.inc(1);
            }
            None if self.last.elapsed() >= EVERY => {
                self.last = Instant::now();
                info!("{}", self.line());
            }
            None => {}
        }
    }

    /// Ends the display: bars are left at their final state; in line mode, the final line.
    pub fn finish(&self) {
        match &self.bars {
            Some(bars) => {
                for (phase, bar) in &bars.per_phase {
                    let counts = self.phases.get(phase).copied().unwrap_or_default();
                    bar.finish_with_message(message(&counts));
                }
                // Later log lines go straight to stderr again.
                *ON_SCREEN.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            None => info!("{}", self.line()),
        }
    }

    /// Counts of `phase` so far.
    pub fn phase(&self, phase: Phase) -> PhaseProgress {
        self.phases.get(&phase).copied().unwrap_or_default()
    }

    /// Where the bar of `phase` stands (position, length), if bars are shown.
    pub fn bar_position(&self, phase: Phase) -> Option<(u64, Option<u64>)> {
        let bar = self.bars.as_ref()?.per_phase.get(&phase)?;
        Some((bar.position(), bar.length()))
    }

    /// The plain progress line: per phase finished/queued, failures, and an ETA from the rate so far.
    pub fn line(&self) -> String {
        let elapsed = self.started.elapsed();
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(phase, p)| {
                let eta = eta(p, elapsed)
                    .map(|eta| format!(", ETA {}s", eta.as_secs()))
                    .unwrap_or_default();
                format!(
                    "{phase} {}/{} done ({} failed{eta})",
                    p.finished(),
                    p.total,
                    p.failed
                )
            })
            .collect();
        format!(
            "progress after {:.0}s: {}",
            elapsed.as_secs_f64(),
            parts.join(", ")
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A run that ends early (an error) must not leave log lines routed around bars nobody draws any more.
        if self.bars.is_some() {
            *ON_SCREEN.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

impl Bars {
    fn new(target: ProgressDrawTarget) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            per_phase: BTreeMap::new(),
        }
    }

    /// The bar of `phase`, created on first use (phase 2 appears when the first tenant reaches it).
    fn bar(&mut self, phase: Phase) -> &ProgressBar {
        let multi = &self.multi;
        self.per_phase.entry(phase).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(0));
            // The template is a constant; should it ever be rejected, the default bar still shows counts.
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>7} [{bar:32.cyan/blue}] {pos}/{len} jobs {msg} · {elapsed_precise} elapsed · ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(phase.to_string());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        })
    }
}

fn message(p: &PhaseProgress) -> String {
    if p.failed == 0 {
        String::new()
    } else {
        format!("({} failed)", p.failed)
    }
}

/// Time left at the rate so far; `None` before the first job finished or once all are done.
fn eta(p: &PhaseProgress, elapsed: Duration) -> Option<Duration> {
    let finished = p.finished();
    let left = p.total.checked_sub(finished).filter(|left| *left > 0)?;
    if finished == 0 {
        return None;
    }
    Some(elapsed.mul_f64(left as f64 / finished as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_track_queued_and_finished_jobs() {
        let mut progress = Progress::with_display(Display::HiddenBars);
        progress.add(Phase::Phase1, 2);
        progress.done(Phase::Phase1, true);
        progress.add(Phase::Phase2, 10);
        progress.add(Phase::Phase2, 5);
        progress.done(Phase::Phase2, false);
        progress.done(Phase::Phase2, true);
        assert_eq!(progress.bar_position(Phase::Phase1), Some((1, Some(2))));
        assert_eq!(progress.bar_position(Phase::Phase2), Some((2, Some(15))));
        assert_eq!(
            progress.phase(Phase::Phase2),
            PhaseProgress {
                total: 15,
                succeeded: 1,
                failed: 1
            }
        );
        progress.finish();
    }

    #[test]
    fn lines_show_counts_and_failures() {
        let mut progress = Progress::with_display(Display::Lines);
        progress.add(Phase::Phase1, 1);
        progress.done(Phase::Phase1, true);
        progress.add(Phase::Phase2, 4);
        progress.done(Phase::Phase2, false);
        assert_eq!(progress.bar_position(Phase::Phase1), None);
        let line = progress.line();
        assert!(line.contains("phase1 1/1 done (0 failed)"), "{line}");
        assert!(line.contains("phase2 1/4 done (1 failed, ETA "), "{line}");
    }

    #[test]
    fn eta_is_proportional_to_the_rate() {
        let p = PhaseProgress {
            total: 10,
            succeeded: 4,
            failed: 1,
        };
        assert_eq!(
            eta(&p, Duration::from_secs(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(eta(&PhaseProgress::default(), Duration::from_secs(1)), None);
        let done = PhaseProgress {
            total: 2,
            succeeded: 2,
            failed: 0,
        };
        assert_eq!(eta(&done, Duration::from_secs(1)), None);
    }
}
