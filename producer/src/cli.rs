//! The command line. Every option can also come from an environment variable (shown in `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shared::sync::CleanupSource;
use shared::telemetry::LogFormat;

pub use crate::ops::cli::{BrokerArgs, DlqArgs, DlqCommand, StatusArgs};

/// Default number of in-process workers (jobs at once) of an embedded run.
pub const EMBEDDED_WORKERS: usize = 64;

/// contactmirror: one contact list on every phone of a Microsoft 365 organisation.
#[derive(Debug, Parser)]
#[command(name = "contactmirror-producer", version, about)]
pub struct Cli {
    /// Log format: human or json.
    #[arg(
        long,
        env = "CONTACTMIRROR_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sync: phase 1 (users -> central folder) then phase 2 (central folder -> users), per tenant.
    Run(RunArgs),
    /// Show every queue's ready, unacked and consumer counts, and the last run's progress per tenant.
    Status(StatusArgs),
    /// Inspect, requeue or purge dead-lettered jobs.
    Dlq(DlqArgs),
    /// Turn a run report (`run --report FILE`) into a self-contained HTML page.
    Report(ReportArgs),
    /// Show the kept runs (run id, when, duration, per tenant created/updated/deleted/failed), newest first.
    History(crate::history::HistoryArgs),
    /// Check each tenant without writing: token and permissions, shared mailbox, central folder, mailboxes,
    /// and what the first run would cost. Exit 0 when every tenant is ready, 1 otherwise.
    Check(crate::check::CheckArgs),
    /// Try it all on this machine: graphsim in-process, a few hundred mailboxes, two embedded runs.
    Demo(crate::demo::DemoArgs),
    /// Remove every managed copy this tool created in a tenant's mailboxes (users' own contacts and notes stay).
    Cleanup(CleanupArgs),
    /// Print the admin-consent URL of a tenant's app (for the customer's administrator to open once).
    ConsentUrl(ConsentUrlArgs),
}

/// Options of `cleanup`: the run options (configuration, transport, report, `--dry-run`), the tenants named with
/// `--tenant`, which source's copies go, and the confirmation.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// How to run (the same options as `run`; `--tenant` is required).
    #[command(flatten)]
    pub run: RunArgs,
    /// Whose copies to remove: mirror (and the central folder's contacts), directory, or all.
    #[arg(long, default_value = "all", value_parser = clap::builder::ValueParser::new(parse_source))]
    pub source: CleanupSource,
    /// Confirms the cleanup; without it nothing is done.
    #[arg(long)]
    pub yes: bool,
}

fn parse_source(value: &str) -> Result<CleanupSource, String> {
    value.parse()
}

impl CleanupArgs {
    /// Why the cleanup must not start, if it must not: no `--yes`, no `--tenant`, or a `run`-only option.
    pub fn refusal(&self) -> Option<String> {
        if self.run.tenants.is_empty() {
            return Some(
                "name the tenant(s) to clean up with --tenant (cleanup never runs on every tenant by default)"
                    .into(),
            );
        }
        if self.run.rebuild_central {
            return Some("--rebuild-central is an option of run, not of cleanup".into());
        }
        if !self.yes {
            return Some(format!(
                "refusing to clean up {} without --yes: cleanup deletes every managed copy this tool created \
                 (source: {}) in the tenant's mailboxes; users' own contacts and note text are kept. Add --yes \
                 to proceed, or --dry-run --yes to list what it would remove",
                self.run.tenants.join(", "),
                self.source
            ));
        }
        None
    }
}

/// Options of `consent-url`.
#[derive(Debug, Args)]
pub struct ConsentUrlArgs {
    /// Configuration file (the same JSON as AUTOMATION_SYNCCONTACTS_CONFIG_JSON); default: the environment.
    #[arg(long, env = "CONTACTMIRROR_CONFIG")]
    pub config: Option<PathBuf>,
    /// The tenant (its TenantId as configured).
    #[arg(long)]
    pub tenant: String,
}

/// Options of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The JSON run report written by `run --report`.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the HTML page.
    #[arg(long)]
    pub html: PathBuf,
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (the same JSON as AUTOMATION_SYNCCONTACTS_CONFIG_JSON); default: the environment.
    #[arg(long, env = "CONTACTMIRROR_CONFIG")]
    pub config: Option<PathBuf>,
    /// RabbitMQ URL. Without it, the run is embedded: in-process workers, no broker.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Jobs run at once in embedded mode. A job mostly waits on its own mailbox's Graph budget and latency, so
    /// many cheap tasks keep many mailboxes busy; the per-mailbox limits hold however many run.
    #[arg(long, env = "CONTACTMIRROR_WORKERS", default_value_t = EMBEDDED_WORKERS)]
    pub workers: usize,
    /// Only these tenants (repeatable); default: every configured tenant.
    #[arg(long = "tenant", env = "CONTACTMIRROR_TENANTS", value_delimiter = ',')]
    pub tenants: Vec<String>,
    /// Plan and report everything, write nothing (also set by the configuration's DryRun or
    /// AUTOMATION_SYNCCONTACTS_DRY_RUN; any of them saying dry run wins, nothing overrides it).
    #[arg(long, env = "CONTACTMIRROR_DRY_RUN")]
    pub dry_run: bool,
    /// Write the run report as JSON to this file.
    #[arg(long, env = "CONTACTMIRROR_REPORT")]
    pub report: Option<PathBuf>,
    /// Write the run report as a self-contained HTML page (table and charts) to this file.
    #[arg(long, env = "CONTACTMIRROR_REPORT_HTML")]
    pub report_html: Option<PathBuf>,
    /// Prefix of every queue and exchange name.
    #[arg(long, env = "CONTACTMIRROR_QUEUE_PREFIX", default_value = "cm")]
    pub queue_prefix: String,
    /// Give up on missing reports after this many seconds without any report (embedded: only while no job runs;
    /// one process loses no report, and a large tenant's phase 1 may write for longer).
    #[arg(long, env = "CONTACTMIRROR_IDLE_TIMEOUT_SECS", default_value_t = 900)]
    pub idle_timeout_secs: u64,
    /// Attempts per job before it is dead-lettered.
    #[arg(long, env = "CONTACTMIRROR_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Where to keep each folder's change feed between runs, so unchanged mailboxes cost one request per phase;
    /// default: $XDG_STATE_HOME/contactmirror or ~/.local/state/contactmirror.
    #[arg(long, env = "CONTACTMIRROR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep no state: read every folder in full on every run.
    #[arg(long, env = "CONTACTMIRROR_NO_STATE")]
    pub no_state: bool,
    /// The central folder was deleted or renamed (a run stops and says so): restore it from the users' contacts.
    #[arg(long)]
    pub rebuild_central: bool,
    /// Lift the deletion cap for this run: a mass leave (more deletions in a mailbox than MaxDeleteShare allows)
    /// is carried out instead of refused. Also `"AllowMassDelete": true` in the configuration.
    #[arg(long, env = "CONTACTMIRROR_ALLOW_MASS_DELETE")]
    pub allow_mass_delete: bool,
    /// How many runs' reports the state directory keeps (`history`).
    #[command(flatten)]
    pub history: crate::history::KeepArgs,
    /// Where and when to send a summary after the run.
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
    /// Fail a licensed user without an Exchange mailbox on every run (by default only the first run that sees it
    /// fails; later runs list it as not applicable).
    #[arg(long, env = "CONTACTMIRROR_STRICT")]
    pub strict: bool,
    /// When another run holds a tenant's lease, wait up to this many seconds for it before leaving the tenant
    /// alone (0: do not wait).
    #[arg(long, env = "CONTACTMIRROR_WAIT_FOR_LEASE", default_value_t = 0)]
    pub wait_for_lease: u64,
    /// Fair tenants: at most this many jobs of one tenant out at once (on the broker, or running embedded); the
    /// tenants' next jobs go in turn as reports come back, so a large tenant never queues every other tenant's
    /// jobs behind its own. Default: every embedded worker; on RabbitMQ 1024, twice the job slots of the largest
    /// pool deploy/k8s scales to (set it to about twice your fleet's workers x concurrency).
    #[arg(long, env = "CONTACTMIRROR_TENANT_JOBS")]
    pub tenant_jobs: Option<std::num::NonZeroUsize>,
    /// Run each tenant's phases one after the other. By default they overlap: a tenant's phase-2 jobs start once
    /// phase 1 has planned and copy each new person as soon as Graph confirmed it in the central folder, then
    /// settle against the folder phase 1 left, so mailboxes end as in an ordered run. Only the plain mirror
    /// overlaps (no directory, photos, TargetFolder or move). On RabbitMQ the phase-1 job's board is a stream the
    /// workers follow; upgrade the workers before the producer.
    #[arg(long, env = "CONTACTMIRROR_ORDERED_PHASES")]
    pub ordered_phases: bool,
}

impl RunArgs {
    /// Why an embedded run that writes (`dry_run` false) must not start: it has no state directory for its tenant
    /// locks (none given, and neither `HOME` nor `XDG_STATE_HOME` set), and without a lock two runs of a tenant at
    /// once would both write its central folder. A run on RabbitMQ takes its leases on the broker.
    pub fn lock_refusal(&self, dry_run: bool) -> Option<String> {
        (self.amqp_url.is_none() && self.state_dir.is_none() && !dry_run).then(|| {
            "no state directory for the tenant locks: give --state-dir (or CONTACTMIRROR_STATE_DIR), or set HOME \
             (without a lock, two runs of a tenant at once would both write its central folder)"
                .to_owned()
        })
    }

    /// Why the run must not start, if it must not: a `--report` or `--report-html` file that could not be written
    /// (its directory missing, or the path a directory). Found after the run, its writes would be done and the
    /// report lost.
    pub fn output_refusal(&self) -> Option<String> {
        [
            ("--report", &self.report),
            ("--report-html", &self.report_html),
        ]
        .into_iter()
        .find_map(|(option, path)| {
            let path = path.as_deref()?;
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => std::path::Path::new("."),
            };
            if path.is_dir() {
                Some(format!(
                    "{option} {}: is a directory, not a file",
                    path.display()
                ))
            } else if !directory.is_dir() {
                Some(format!(
                    "{option} {}: the directory {} does not exist",
                    path.display(),
                    directory.display()
                ))
            } else {
                None
            }
        })
    }

    /// `run` with every option at its default and no broker: what the demo and the tests use.
    pub fn embedded_default() -> Self {
        Self {
            config: None,
            amqp_url: None,
            workers: EMBEDDED_WORKERS,
            tenants: Vec::new(),
            dry_run: false,
            report: None,
            report_html: None,
            queue_prefix: "cm".to_owned(),
            idle_timeout_secs: 900,
            max_attempts: 5,
            state_dir: None,
            no_state: false,
            rebuild_central: false,
            allow_mass_delete: false,
            history: crate::history::KeepArgs::default(),
            notify: crate::notify::NotifyArgs::default(),
            strict: false,
            wait_for_lease: 0,
            tenant_jobs: None,
            ordered_phases: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn embedded_default_matches_the_command_line_defaults() {
        let cli = Cli::try_parse_from([
            "contactmirror-producer",
            "run",
            "--amqp-url",
            "x",
            "--config",
            "x",
        ])
        .expect("parses");
        let Command::Run(mut parsed) = cli.command else {
            panic!("not run")
        };
        // The two options given above only keep environment variables of this machine out of the comparison.
        parsed.amqp_url = None;
        parsed.config = None;
        let defaults = RunArgs::embedded_default();
        assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"));
    }

    /// Failed before the fix: clap's help shows an option's environment value (`[env: AMQP_URL=amqp://u:pw@…]`)
    /// unless told not to, so `run --help` printed the broker's password.
    #[test]
    fn help_never_shows_the_value_of_a_variable_that_may_hold_a_password() {
        fn hidden(command: &clap::Command, out: &mut Vec<(String, bool)>) {
            for arg in command.get_arguments() {
                if let Some(name) = arg.get_env() {
                    out.push((
                        name.to_string_lossy().into_owned(),
                        arg.is_hide_env_values_set(),
                    ));
                }
            }
            command.get_subcommands().for_each(|sub| hidden(sub, out));
        }
        let mut found = Vec::new();
        hidden(&<Cli as clap::CommandFactory>::command(), &mut found);
        for secret in [
            "AMQP_URL",
            "CONTACTMIRROR_MANAGEMENT_URL",
            "CONTACTMIRROR_NOTIFY_URL",
        ] {
            let options: Vec<bool> = found
                .iter()
                .filter(|(name, _)| name == secret)
                .map(|(_, hidden)| *hidden)
                .collect();
            assert!(!options.is_empty(), "no option reads {secret}");
            assert!(
                options.iter().all(|&h| h),
                "an option's help shows {secret}'s value"
            );
        }
    }

    /// Failed before the fix: an embedded run with no state directory took no tenant lock at all, silently.
    #[test]
    fn an_embedded_run_without_a_state_directory_refuses_to_write() {
        let without = RunArgs {
            state_dir: None,
            ..RunArgs::embedded_default()
        };
        let refused = without.lock_refusal(false).expect("refused");
        assert!(refused.contains("--state-dir"), "{refused}");
        assert_eq!(without.lock_refusal(true), None, "a dry run takes no lock");
        let on_a_broker = RunArgs {
            amqp_url: Some("amqp://rabbit".into()),
            ..without
        };
        assert_eq!(on_a_broker.lock_refusal(false), None);
        let with = RunArgs {
            state_dir: Some("state".into()),
            ..RunArgs::embedded_default()
        };
        assert_eq!(with.lock_refusal(false), None);
    }

    /// Failed before the fix: a report path in a missing directory was found only after the run had written.
    #[test]
    fn a_report_file_that_cannot_be_written_refuses_the_run_before_it_starts() {
        let here = std::env::temp_dir();
        let with = |report: Option<&std::path::Path>, html: Option<&std::path::Path>| RunArgs {
            report: report.map(Into::into),
            report_html: html.map(Into::into),
            ..RunArgs::embedded_default()
        };
        assert_eq!(with(None, None).output_refusal(), None);
        assert_eq!(
            with(
                Some(&here.join("r.json")),
                Some(std::path::Path::new("r.html"))
            )
            .output_refusal(),
            None
        );
        let missing = here.join("contactmirror-no-such-directory").join("r.json");
        let refused = with(Some(&missing), None)
            .output_refusal()
            .expect("refused");
        assert!(
            refused.starts_with("--report ") && refused.contains("does not exist"),
            "{refused}"
        );
        let refused = with(None, Some(&here)).output_refusal().expect("refused");
        assert!(
            refused.starts_with("--report-html ") && refused.contains("is a directory"),
            "{refused}"
        );
    }

    #[test]
    fn cleanup_refuses_without_yes_or_a_tenant() {
        let parse = |args: &[&str]| {
            let mut all = vec!["contactmirror-producer", "cleanup"];
            all.extend_from_slice(args);
            match Cli::try_parse_from(all).expect("parses").command {
                Command::Cleanup(args) => args,
                _ => panic!("not cleanup"),
            }
        };
        let refused = parse(&["--tenant", "contoso.onmicrosoft.com"])
            .refusal()
            .expect("refused without --yes");
        assert!(
            refused.contains("without --yes") && refused.contains("contoso.onmicrosoft.com"),
            "{refused}"
        );
        let refused = parse(&["--yes"])
            .refusal()
            .expect("refused without a tenant");
        assert!(refused.contains("--tenant"), "{refused}");
        let ok = parse(&[
            "--tenant",
            "t",
            "--yes",
            "--source",
            "directory",
            "--dry-run",
        ]);
        assert_eq!(ok.refusal(), None);
        assert_eq!(ok.source, CleanupSource::Directory);
        assert!(ok.run.dry_run);
        assert!(
            Cli::try_parse_from(["contactmirror-producer", "cleanup", "--source", "both"]).is_err()
        );
    }
}
