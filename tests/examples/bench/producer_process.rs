//! The producer as its own process (issue 13): the real `contactmirror-producer run` against the bench's graphsim
//! and RabbitMQ, so its memory is its own and not graphsim's estate beside it in the bench process. The run is
//! described once, as the `RunArgs` the in-bench run gets; [`command_line`] turns that into the binary's flags.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use producer::cli::RunArgs;
use producer::summary::RunReport;

use crate::probe::{self, Usage};

/// How often the running producer's `/proc` entry is read: VmHWM only grows, so the last reading before it exits
/// misses at most this much of its life.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// `run`'s flags for `args`, every field written out (destructured, so a new field of `RunArgs` does not compile
/// until it is passed on). A notification URL is refused: it is a secret, and a command line is not.
pub fn command_line(args: &RunArgs) -> Result<Vec<OsString>> {
    let RunArgs {
        config,
        amqp_url,
        workers,
        tenants,
        dry_run,
        report,
        report_html,
        queue_prefix,
        idle_timeout_secs,
        max_attempts,
        state_dir,
        no_state,
        rebuild_central,
        allow_mass_delete,
        history,
        notify,
        strict,
        wait_for_lease,
        tenant_jobs,
        ordered_phases,
    } = args;
    if notify.notify_url.is_some() {
        bail!("a producer process is never given --notify-url: a secret on a command line is visible to every user");
    }
    let mut out: Vec<OsString> = vec!["run".into()];
    let mut value = |flag: &str, v: OsString| {
        out.push(flag.into());
        out.push(v);
    };
    if let Some(config) = config {
        value("--config", config.into());
    }
    if let Some(url) = amqp_url {
        value("--amqp-url", url.into());
    }
    value("--workers", workers.to_string().into());
    for tenant in tenants {
        value("--tenant", tenant.into());
    }
    if let Some(report) = report {
        value("--report", report.into());
    }
    if let Some(html) = report_html {
        value("--report-html", html.into());
    }
    value("--queue-prefix", queue_prefix.into());
    value("--idle-timeout-secs", idle_timeout_secs.to_string().into());
    value("--max-attempts", max_attempts.to_string().into());
    if let Some(dir) = state_dir {
        value("--state-dir", dir.into());
    }
    value("--keep-runs", history.keep_runs.to_string().into());
    let when = notify
        .notify
        .to_possible_value()
        .context("a notification choice without a name")?;
    value("--notify", when.get_name().into());
    value("--wait-for-lease", wait_for_lease.to_string().into());
    if let Some(limit) = tenant_jobs {
        value("--tenant-jobs", limit.to_string().into());
    }
    for (set, flag) in [
        (*dry_run, "--dry-run"),
        (*no_state, "--no-state"),
        (*rebuild_central, "--rebuild-central"),
        (*allow_mass_delete, "--allow-mass-delete"),
        (*strict, "--strict"),
        (*ordered_phases, "--ordered-phases"),
    ] {
        if set {
            out.push(flag.into());
        }
    }
    Ok(out)
}

/// What a producer process left: its report and its own CPU and peak RSS.
pub struct ProducerRun {
    /// The run report it wrote (`--report`).
    pub report: RunReport,
    /// CPU seconds over its life and its VmHWM, from the last reading of `/proc/<pid>` before it exited.
    pub usage: Usage,
}

/// Runs `contactmirror-producer run` with `args` (which must name the report file) to its end. Its log (JSON, the
/// phase boundaries at info) and its console summary go to `log`; each tenant's "starting phase 2" line becomes a
/// phase mark as it is read ([`probe::mark_phase_two`]: a few milliseconds after the producer wrote it, where the
/// bench process's own layer sees it at once).
pub async fn run(bin: &Path, args: &RunArgs, log: &Path) -> Result<ProducerRun> {
    let report_path = args
        .report
        .clone()
        .context("a producer process needs a report file (RunArgs::report)")?;
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let lines = out.try_clone().context("duplicating the log handle")?;
    let mut command = crate::fleet::fleet_command(bin);
    let child = command
        .args(["--log-format", "json"])
        .args(command_line(args)?)
        .env("RUST_LOG", "warn,producer::orchestrate=info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut running = Running(child);
    let stderr = running
        .0
        .stderr
        .take()
        .context("the producer's stderr was not captured")?;
    let reader = std::thread::spawn(move || follow_log(stderr, lines));
    let pid = running.0.id().to_string();
    let mut last: Option<Usage> = None;
    let status = loop {
        if let Some(status) = running.0.try_wait().context("polling the producer")? {
            break status;
        }
        // Between the check and the read it may have exited: the reading before counts.
        if let Ok(usage) = probe::process(&pid) {
            last = Some(usage);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    if reader.join().is_err() {
        bail!("the producer's log reader panicked; log: {}", log.display());
    }
    check_status(status, log)?;
    let usage = last.with_context(|| {
        format!(
            "the producer exited before its /proc entry could be read; log: {}",
            log.display()
        )
    })?;
    let text = std::fs::read(&report_path)
        .with_context(|| format!("reading the producer's report {}", report_path.display()))?;
    let report = serde_json::from_slice(&text)
        .with_context(|| format!("parsing the producer's report {}", report_path.display()))?;
    Ok(ProducerRun { report, usage })
}

/// Copies the producer's stderr to its log file, marking each tenant's phase 2 as its line goes by.
fn follow_log(stderr: impl std::io::Read, mut log: std::fs::File) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(tenant) = probe::phase_two_tenant(&line) {
            probe::mark_phase_two(&tenant);
        }
        // A log line that cannot be kept costs the diagnosis, not the measurement.
        let _ = writeln!(log, "{line}");
    }
}

/// A run with failed mailboxes (the seeded ones Graph cannot serve) exits 1 and is a measured run; anything else
/// but 0 is not.
fn check_status(status: ExitStatus, log: &Path) -> Result<()> {
    match status.code().and_then(|c| u8::try_from(c).ok()) {
        Some(producer::EXIT_OK | producer::EXIT_FAILURES) => Ok(()),
        _ => bail!("the producer ended with {status}; log: {}", log.display()),
    }
}

/// A producer process that is killed if the bench gives up on it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use producer::cli::{Cli, Command};

    use super::*;

    /// Every field away from its default, so a flag left out or misspelt shows as a difference.
    fn unusual() -> RunArgs {
        RunArgs {
            config: Some("/tmp/bench/config.json".into()),
            amqp_url: Some("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
            workers: 7,
            tenants: vec!["a.example".to_owned(), "b.example".to_owned()],
            dry_run: true,
            report: Some("/tmp/bench/report.json".into()),
            report_html: Some("/tmp/bench/report.html".into()),
            queue_prefix: "bench-x".to_owned(),
            idle_timeout_secs: 1800,
            max_attempts: 3,
            state_dir: Some("/tmp/bench/state".into()),
            no_state: true,
            rebuild_central: true,
            allow_mass_delete: true,
            history: producer::history::KeepArgs { keep_runs: 2 },
            notify: producer::notify::NotifyArgs {
                notify_url: None,
                notify: producer::notify::NotifyWhen::Always,
            },
            strict: true,
            wait_for_lease: 9,
            tenant_jobs: std::num::NonZeroUsize::new(11),
            ordered_phases: true,
        }
    }

    fn parsed(args: &RunArgs) -> RunArgs {
        let mut line: Vec<OsString> = vec!["contactmirror-producer".into()];
        line.extend(command_line(args).expect("renders"));
        let cli = Cli::try_parse_from(line).expect("the producer parses the bench's flags");
        let Command::Run(parsed) = cli.command else {
            panic!("not a run")
        };
        parsed
    }

    #[test]
    fn the_producer_binary_reads_back_the_run_the_bench_describes() {
        for args in [unusual(), RunArgs::embedded_default()] {
            assert_eq!(format!("{:?}", parsed(&args)), format!("{args:?}"));
        }
    }

    #[test]
    fn a_notification_url_never_goes_on_a_command_line() {
        let mut args = RunArgs::embedded_default();
        args.notify.notify_url = Some(shared::secret::Secret::new(
            "https://hooks.example/secret-token",
        ));
        let error = command_line(&args).expect_err("refused");
        assert!(!format!("{error:#}").contains("secret-token"));
    }
}
