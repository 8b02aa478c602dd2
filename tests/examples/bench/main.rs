//! The benchmark harness of issue 6: real syncs through the real fleet code (embedded, and on RabbitMQ with real
//! worker processes) against a seeded graphsim, judged against Graph's throttling floor, against the fewest
//! requests a perfect client needs, and against the PowerShell script it replaces.
//!
//! `cargo run --release -p contactmirror-tests --example bench -- --help` lists the parameters; without any, it
//! runs the default scenario set (under 10 minutes on a 2-core machine) and writes `bench-out/bench.json`.
//! Modules: `estate` (graphsim and the seeded data), `fleet` (running a sync, worker processes, clean-up),
//! `producer_process` (the producer binary as its own process), `probe` (/proc and the phase boundary), `figures`
//! (floors, minimal requests, the script model), `report`.

mod estate;
mod fair;
mod figures;
mod fleet;
mod probe;
mod producer_process;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use estate::{Estate, FolderKey, Shape};
use figures::{Budget, ScriptInput};
use fleet::{FleetOptions, Mode};
use report::Row;

/// The embedded rows run the producer's jobs in this process: with the producer binary's allocator, so they
/// measure what that binary does (graphsim, in this process too, uses it as well).
#[global_allocator]
static ALLOCATOR: worker::heap::Allocator = worker::heap::Allocator;

/// Graph's per-mailbox budget to simulate.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Profile {
    /// Graph's rate in a short window: 100 requests / 6 s per mailbox, 4 in flight.
    Scaled,
    /// Graph's real limits: 10,000 requests / 600 s per mailbox, 4 in flight.
    Real,
}

impl Profile {
    fn budget(self) -> Budget {
        match self {
            Profile::Scaled => Budget::SCALED,
            Profile::Real => Budget::REAL,
        }
    }
}

/// Scenario groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Group {
    /// Initial sync, re-run with no change, re-run after 1% changed, for every --modes entry.
    Sync,
    /// A tenant with one user holding --big-user-contacts contacts: initial sync and re-run.
    BigUser,
    /// --many-tenants tenants at once: initial sync and re-run.
    Tenants,
    /// Latency 0 and no budget, one worker process: Graph requests per worker CPU second.
    Throughput,
    /// Initial sync as users and as contacts grow, with the fitted exponent.
    Scaling,
    /// The client is told ten times graphsim's budget, so it meets 429s: are their Retry-After honoured?
    Throttled,
    /// Issue 6's stated target size: U=200, C=20, scaled budget, one embedded worker per mailbox (about 4
    /// minutes; not in the default set).
    Target,
    /// Issue 11's directory: one directory-only tenant of --directory-users members, every one receiving all the
    /// others; initial sync, a no-change re-run, and a re-run after one user was renamed (real budget; not in the
    /// default set).
    Directory,
    /// Issue 14's mirrored photos: the main shape with a --photo-bytes photo on every user's own contact and
    /// `Photos` on; initial sync, a no-change re-run, a re-run after 1 % of the photos changed (not in the default
    /// set).
    MirrorPhotos,
    /// Issue 10's memory case: one worker process, latency 0, no budget; a central folder of --memory-contacts
    /// (one user holds them) distributed to --memory-users, then a 1%-changed re-run (phase 1 reads every
    /// source, phase 2 every mailbox); then phase 1 with many sources (--memory-sources users x 1 contact,
    /// initial sync and a 1%-changed re-run); the worker's peak RSS is the figure (not in the default set).
    Memory,
    /// Issue 13's fair tenants: one tenant of --fair-large-users beside --fair-small-tenants of
    /// --fair-small-users; each small tenant's time alone, in one run with the large one, and (broker) in runs of
    /// its own started while the large tenant's phase 2 is under way; embedded and --fair-processes worker
    /// processes (not in the default set).
    Fair,
    /// Issue 13's MSP-scale runs: one tenant of --msp-users users with a --msp-central-contact central set
    /// (initial sync, each of --msp-modes), then --msp-tenants tenants of --msp-tenant-users where one user per
    /// tenant holds --msp-few-contacts (initial sync and a no-change re-run); graphsim latency --msp-latency-ms,
    /// real budget; broker modes run the producer binary as its own process, so its peak RSS is its own (not in
    /// the default set: tens of minutes).
    Msp,
    /// Issue 13's simulated slice of the largest customer an MSP meets (a 10,000-user tenant with a 10,000-person
    /// set): --slice-users users of one tenant where one user holds --slice-central-contacts (so every other
    /// mailbox receives about that many creates), real budget, graphsim latency --msp-latency-ms,
    /// --slice-processes worker processes and the producer binary as its own process; initial sync (not in the
    /// default set: each mailbox's creates fill its 10-minute window, so at least 20 minutes; pass
    /// --idle-timeout-secs 1800).
    Slice,
}

/// Measures contactmirror against Graph's throttling floor, a perfect client and the replaced script.
#[derive(Debug, Parser, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[command(name = "bench")]
struct Cli {
    /// Tenants of the main estate.
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Users per tenant of the main estate.
    #[arg(long, default_value_t = 30)]
    users: usize,
    /// Contacts per user of the main estate.
    #[arg(long, default_value_t = 10)]
    contacts: usize,
    /// Share of seeded contacts that are copies of colleagues.
    #[arg(long, default_value_t = 0.2)]
    overlap: f64,
    /// graphsim latency per Graph operation, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    latency_ms: f64,
    /// Per-mailbox budget for graphsim and the client.
    #[arg(long, value_enum, default_value = "scaled")]
    budget: Profile,
    /// In-process workers in embedded mode (default: the producer's own default).
    #[arg(long, default_value_t = producer::cli::EMBEDDED_WORKERS)]
    embedded_workers: usize,
    /// Jobs each worker process runs at once (default: the worker's own default).
    #[arg(long, default_value_t = worker::consumer::DEFAULT_CONCURRENCY)]
    worker_concurrency: u16,
    /// Spare slots of each worker process (default: the worker's own, a quarter of --worker-concurrency).
    #[arg(long)]
    worker_spare_slots: Option<u16>,
    /// Modes of the sync group: embedded (phases overlapped, the default), embedded-ordered (`run --ordered-phases`), brokerN for N worker processes (overlapped) or brokerN-ordered.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "embedded,broker1,broker2,broker4"
    )]
    modes: Vec<String>,
    /// Scenario groups to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sync,big-user,tenants,throttled,throughput,scaling"
    )]
    scenarios: Vec<Group>,
    /// Share of the users' own contacts changed before the change re-run.
    #[arg(long, default_value_t = 0.01)]
    change_share: f64,
    /// Contacts of the big user.
    #[arg(long, default_value_t = 5000)]
    big_user_contacts: usize,
    /// Budget of the big-user group (a 5,000-request mailbox needs 50 scaled windows, 5 minutes).
    #[arg(long, value_enum, default_value = "real")]
    big_user_budget: Profile,
    /// Tenants of the tenants group.
    #[arg(long, default_value_t = 10)]
    many_tenants: usize,
    /// Users per tenant of the tenants group.
    #[arg(long, default_value_t = 10)]
    many_tenants_users: usize,
    /// Users of the throughput estate.
    #[arg(long, default_value_t = 100)]
    throughput_users: usize,
    /// Contacts per user of the throughput estate.
    #[arg(long, default_value_t = 10)]
    throughput_contacts: usize,
    /// User counts of the scaling series (at --scale-contacts-base contacts).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    scale_users: Vec<usize>,
    /// Contacts of the user series.
    #[arg(long, default_value_t = 1)]
    scale_contacts_base: usize,
    /// Contact counts of the scaling series (at --scale-users-base users).
    #[arg(long, value_delimiter = ',', default_value = "5,50,500")]
    scale_contacts: Vec<usize>,
    /// Users of the contact series.
    #[arg(long, default_value_t = 10)]
    scale_users_base: usize,
    /// Budget of the scaling group (the real one keeps 1,000 users inside the time limit; the scaled one makes
    /// every point budget-bound).
    #[arg(long, value_enum, default_value = "real")]
    scale_budget: Profile,
    /// Contacts of the memory group's central folder (held by one user, so the initial sync fills it).
    #[arg(long, default_value_t = 100_000)]
    memory_contacts: usize,
    /// Users of the memory group (each receives the whole central folder).
    #[arg(long, default_value_t = 2)]
    memory_users: usize,
    /// Users of the memory group's many-sources estate (1 contact each; every mailbox ends holding them all).
    #[arg(long, default_value_t = 300)]
    memory_sources: usize,
    /// The memory group's one worker process: broker1 (phases overlapped, the default) or broker1-ordered.
    #[arg(long, default_value = "broker1")]
    memory_mode: String,
    /// Users of the MSP group's one-tenant run.
    #[arg(long, default_value_t = 1_000)]
    msp_users: usize,
    /// Contacts of the MSP group's central set (one user holds them, so every other mailbox receives them all).
    #[arg(long, default_value_t = 1_000)]
    msp_central_contacts: usize,
    /// Modes of the MSP group's one-tenant run.
    #[arg(long, value_delimiter = ',', default_value = "embedded,broker4")]
    msp_modes: Vec<String>,
    /// Tenants of the MSP group's many-mailbox run.
    #[arg(long, default_value_t = 10)]
    msp_tenants: usize,
    /// Users per tenant of the MSP group's many-mailbox run.
    #[arg(long, default_value_t = 1_000)]
    msp_tenant_users: usize,
    /// Contacts of the one user per tenant who holds any in the many-mailbox run.
    #[arg(long, default_value_t = 10)]
    msp_few_contacts: usize,
    /// graphsim latency per Graph operation in the MSP and slice groups, in milliseconds.
    #[arg(long, default_value_t = 20.0)]
    msp_latency_ms: f64,
    /// Users of the slice group's tenant (a slice of a 10,000-user tenant).
    #[arg(long, default_value_t = 100)]
    slice_users: usize,
    /// Persons of the slice group's central set (one user holds them, so every other mailbox receives them all).
    #[arg(long, default_value_t = 10_000)]
    slice_central_contacts: usize,
    /// Worker processes of the slice group.
    #[arg(long, default_value_t = 4)]
    slice_processes: usize,
    /// Members of the directory group's tenant (each receives every other one).
    #[arg(long, default_value_t = 500)]
    directory_users: usize,
    /// Size of each member's photo in the directory group's "with photos" rows (issue 14); 0 leaves them out.
    #[arg(long, default_value_t = 50_000)]
    photo_bytes: usize,
    /// Users of the fair group's large tenant.
    #[arg(long, default_value_t = 2000)]
    fair_large_users: usize,
    /// Contacts of the fair group's large tenant (one user holds them, so its phase 2 is many short jobs).
    #[arg(long, default_value_t = 20)]
    fair_large_contacts: usize,
    /// Small tenants of the fair group.
    #[arg(long, default_value_t = 9)]
    fair_small_tenants: usize,
    /// Users per small tenant of the fair group.
    #[arg(long, default_value_t = 20)]
    fair_small_users: usize,
    /// Contacts per user of the fair group's small tenants.
    #[arg(long, default_value_t = 2)]
    fair_small_contacts: usize,
    /// Worker processes of the fair group's broker mode.
    #[arg(long, default_value_t = 2)]
    fair_processes: usize,
    /// `--tenant-jobs` of the fair group's broker runs, one set of rows each (default: twice the pool's job
    /// slots, as the README advises).
    #[arg(long, value_delimiter = ',')]
    fair_tenant_jobs: Vec<usize>,
    /// Also measure the broker runs with `--tenant-jobs 1000000`: every job queued at once, as before issue 13.
    #[arg(long)]
    fair_fifo: bool,
    /// Mode of the big-user, tenants, scaling and directory groups.
    #[arg(long, default_value = "embedded")]
    other_mode: String,
    /// Where to write the JSON document.
    #[arg(long, default_value = "bench-out/bench.json")]
    out: PathBuf,
    /// AMQP URL of the broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    #[serde(serialize_with = "redacted")]
    amqp_url: String,
    /// RabbitMQ management API (for the clean-up sweep).
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    management_url: String,
    /// Management API user.
    #[arg(long, default_value = "guest")]
    management_user: String,
    /// Management API password.
    #[arg(long, default_value = "guest")]
    #[serde(skip)]
    management_password: String,
    /// The contactmirror-worker executable (default: built next to this bench, with the same profile).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// The contactmirror-producer executable of the runs with a producer process (msp's broker modes, slice;
    /// default: built next to this bench, with the same profile).
    #[arg(long)]
    producer_bin: Option<PathBuf>,
    /// Do not run `cargo build` for the fleet's binaries (worker and producer) first.
    #[arg(long = "no-build", alias = "no-build-worker")]
    no_build: bool,
    /// RUST_LOG of the worker processes.
    #[arg(long, default_value = "warn")]
    worker_log: String,
    /// The producer gives up after this many seconds without a report.
    #[arg(long, default_value_t = 120)]
    idle_timeout_secs: u64,
    /// Keep the worker logs and configurations (in the system temp dir) after a successful run.
    #[arg(long)]
    keep_scratch: bool,
    /// Keep a broker mode's worker processes up from one run of an estate to the next (initial sync, then its
    /// re-runs), as a deployment keeps its pool up between runs; default: new processes for every run.
    #[arg(long)]
    warm_pool: bool,
}

/// Writes a URL without its password.
fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&shared::mq::redact_url(url))
}

fn parse_mode(text: &str, embedded_workers: usize) -> Result<Mode> {
    if text == "embedded" || text == "embedded-ordered" {
        return Ok(Mode::Embedded {
            workers: embedded_workers,
            overlap: text == "embedded",
        });
    }
    let (fleet, ordered) = match text.strip_suffix("-ordered") {
        Some(fleet) => (fleet, true),
        None => (text, false),
    };
    match fleet.strip_prefix("broker").map(str::parse::<usize>) {
        Some(Ok(processes)) if processes > 0 && ordered => Ok(Mode::broker(processes).ordered()),
        Some(Ok(processes)) if processes > 0 => Ok(Mode::broker(processes)),
        _ => bail!("mode {text:?}: expected embedded, embedded-ordered, brokerN or brokerN-ordered (N worker processes, N >= 1)"),
    }
}

/// The fleet's executables.
#[derive(Debug, Clone)]
struct FleetBinaries {
    /// `contactmirror-worker`.
    worker: PathBuf,
    /// `contactmirror-producer`.
    producer: PathBuf,
}

impl FleetBinaries {
    /// Private copies in `scratch` of the `needed` ones (the others stay as they are, unused): another build into
    /// a shared target directory must not swap a binary mid-run.
    fn copied_to(&self, scratch: &Path, needed: &[&str]) -> Result<FleetBinaries> {
        let copy = |source: &PathBuf, name: &str| -> Result<PathBuf> {
            if !needed.contains(&name) {
                return Ok(source.clone());
            }
            let copy = scratch.join(name);
            std::fs::copy(source, &copy)
                .with_context(|| format!("copying {}", source.display()))?;
            Ok(copy)
        };
        Ok(FleetBinaries {
            worker: copy(&self.worker, WORKER_BIN)?,
            producer: copy(&self.producer, PRODUCER_BIN)?,
        })
    }
}

const WORKER_BIN: &str = "contactmirror-worker";
const PRODUCER_BIN: &str = "contactmirror-producer";

/// Everything a run needs besides the estate.
struct Ctx {
    fleet: FleetOptions,
    /// Worker processes kept up between runs (`--warm-pool`).
    standing: Arc<fleet::Standing>,
    /// The binaries the private copies were taken from (for the record).
    sources: FleetBinaries,
    latency: Duration,
    started: Instant,
}

impl Ctx {
    /// The same context with graphsim at `latency` (groups that set their own).
    fn with_latency(&self, latency: Duration) -> Ctx {
        Ctx {
            fleet: self.fleet.clone(),
            standing: self.standing.clone(),
            latency,
            started: self.started,
            sources: self.sources.clone(),
        }
    }
}

/// What one measured run is.
struct Run<'a> {
    group: &'a str,
    scenario: String,
    /// The budget the client is configured with, when it differs from graphsim's.
    client_budget: Option<Budget>,
    first_run: bool,
    edited: usize,
    added: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")));
    let phases = probe::PhaseLayer
        .with_filter(Targets::new().with_target("producer::orchestrate", tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(logs)
        .with(phases)
        .init();

    let started = Instant::now();
    let sync_modes: Vec<Mode> = cli
        .modes
        .iter()
        .map(|m| parse_mode(m, cli.embedded_workers))
        .collect::<Result<_>>()?;
    let other_mode = parse_mode(&cli.other_mode, cli.embedded_workers)?;
    let needs_workers = cli.scenarios.contains(&Group::Throughput)
        || (cli.scenarios.contains(&Group::Sync)
            && sync_modes.iter().any(|m| matches!(m, Mode::Broker { .. })))
        || cli.scenarios.contains(&Group::Memory)
        || cli.scenarios.contains(&Group::Fair)
        || cli.scenarios.contains(&Group::Msp)
        || cli.scenarios.contains(&Group::Slice)
        || matches!(other_mode, Mode::Broker { .. });
    let scratch = std::env::temp_dir().join(format!(
        "contactmirror-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // The groups whose broker runs start the producer binary (`Mode::with_producer_process`).
    let needs_producer =
        cli.scenarios.contains(&Group::Msp) || cli.scenarios.contains(&Group::Slice);
    let needed: Vec<&str> = [(WORKER_BIN, needs_workers), (PRODUCER_BIN, needs_producer)]
        .into_iter()
        .filter_map(|(name, needed)| needed.then_some(name))
        .collect();
    let sources = fleet_binaries(&cli, &needed)?;
    let binaries = sources.copied_to(&scratch, &needed)?;
    let latency = Duration::try_from_secs_f64(cli.latency_ms / 1000.0)
        .context("--latency-ms must be a non-negative number")?;
    let ctx = Ctx {
        fleet: FleetOptions {
            amqp_url: cli.amqp_url.clone(),
            management_url: cli.management_url.trim_end_matches('/').to_owned(),
            management_auth: (cli.management_user.clone(), cli.management_password.clone()),
            worker_bin: binaries.worker,
            producer_bin: binaries.producer,
            worker_concurrency: cli.worker_concurrency.max(1),
            worker_spare_slots: cli.worker_spare_slots,
            worker_log: cli.worker_log.clone(),
            scratch: scratch.clone(),
            idle_timeout_secs: cli.idle_timeout_secs.max(1),
            warm_pool: cli.warm_pool,
        },
        latency,
        started,
        sources,
        standing: Arc::default(),
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut fair_rows: Vec<fair::FairRow> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let main_shape = Shape {
        tenants: cli.tenants,
        users: cli.users,
        contacts: cli.contacts,
        overlap: cli.overlap,
        big_user_contacts: 0,
        big_user_in_every_tenant: false,
    };
    for group in &cli.scenarios {
        let result = match group {
            Group::Sync => {
                let mut result = Ok(());
                for mode in &sync_modes {
                    result = sync_group(&ctx, &cli, main_shape, *mode, &mut rows).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
            Group::BigUser => {
                let shape = Shape {
                    tenants: 1,
                    users: 1,
                    contacts: cli.contacts,
                    overlap: cli.overlap,
                    big_user_contacts: cli.big_user_contacts,
                    big_user_in_every_tenant: false,
                };
                let name = format!("1 user, {} contacts", cli.big_user_contacts);
                two_runs(
                    &ctx,
                    shape,
                    cli.big_user_budget.budget(),
                    other_mode,
                    ("big-user", &name),
                    &mut rows,
                )
                .await
            }
            Group::Tenants => {
                let shape = Shape {
                    tenants: cli.many_tenants,
                    users: cli.many_tenants_users,
                    ..main_shape
                };
                let name = format!("{} tenants", cli.many_tenants);
                two_runs(
                    &ctx,
                    shape,
                    cli.budget.budget(),
                    other_mode,
                    ("tenants", &name),
                    &mut rows,
                )
                .await
            }
            Group::Throughput => throughput(&ctx, &cli, &mut rows).await,
            Group::Throttled => throttled(&ctx, &cli, other_mode, &mut rows).await,
            Group::Target => {
                let shape = Shape {
                    tenants: 1,
                    users: 200,
                    contacts: 20,
                    ..main_shape
                };
                two_runs(
                    &ctx,
                    shape,
                    Budget::SCALED,
                    Mode::Embedded {
                        workers: 256,
                        overlap: true,
                    },
                    ("target", "U=200 C=20"),
                    &mut rows,
                )
                .await
            }
            Group::Scaling => scaling(&ctx, &cli, other_mode, &mut rows).await,
            Group::Memory => memory(&ctx, &cli, &mut rows).await,
            Group::Directory => directory(&ctx, &cli, other_mode, &mut rows).await,
            Group::MirrorPhotos => {
                mirror_photos(&ctx, &cli, main_shape, other_mode, &mut rows).await
            }
            Group::Msp => msp(&ctx, &cli, &mut rows).await,
            Group::Slice => slice(&ctx, &cli, &mut rows).await,
            Group::Fair => fair_group(&ctx, &cli)
                .await
                .map(|measured| fair_rows = measured),
        };
        if let Err(error) = result {
            let text = format!("{group:?}: {error:#}");
            eprintln!("error: {text}");
            errors.push(text);
        }
    }

    ctx.standing.stop().await;
    let elapsed = started.elapsed();
    print_and_write(&cli, &ctx, (&rows, &fair_rows), &errors, elapsed)?;
    let leftovers = fleet::leftovers(&ctx.fleet, "bench-")
        .await
        .unwrap_or_default();
    if !leftovers.is_empty() {
        eprintln!(
            "warning: RabbitMQ still has bench queues or exchanges: {}",
            leftovers.join(", ")
        );
    }
    if errors.is_empty() && !cli.keep_scratch {
        let _ = std::fs::remove_dir_all(&scratch);
    } else {
        eprintln!("worker logs and configurations: {}", scratch.display());
    }
    if !errors.is_empty() {
        bail!("{} scenario group(s) failed", errors.len());
    }
    Ok(())
}

/// The fleet's executables, each the one given (`--worker-bin`, `--producer-bin`) or the one next to this bench;
/// of the `needed` ones, those not given are built first with the bench's profile (unless `--no-build`) so a
/// stale binary is never measured.
fn fleet_binaries(cli: &Cli, needed: &[&str]) -> Result<FleetBinaries> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    // <target>/<profile>/examples/bench
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench executable is not inside a cargo target directory")?;
    let given = [
        (WORKER_BIN, cli.worker_bin.as_ref()),
        (PRODUCER_BIN, cli.producer_bin.as_ref()),
    ];
    let [worker, producer] =
        given.map(|(name, path)| path.cloned().unwrap_or_else(|| profile_dir.join(name)));
    let binaries = FleetBinaries { worker, producer };
    // Each binary's package is named as the binary.
    let to_build: Vec<&str> = given
        .iter()
        .filter(|(name, path)| path.is_none() && needed.contains(name))
        .map(|(name, _)| *name)
        .collect();
    if !cli.no_build && !to_build.is_empty() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet"]);
        for name in &to_build {
            build.args(["-p", name, "--bin", name]);
        }
        build.arg("--manifest-path").arg(&manifest);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                build.arg("--release");
            }
            Some(other) => {
                build.args(["--profile", other]);
            }
            None => {}
        }
        if let Some(target) = profile_dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        eprintln!(
            "building {} ({})",
            to_build.join(", "),
            profile_dir.display()
        );
        let status = build
            .status()
            .context("running cargo build for the fleet's binaries")?;
        if !status.success() {
            bail!("building {} failed ({status})", to_build.join(", "));
        }
    }
    for (bin, name, flag) in [
        (&binaries.worker, WORKER_BIN, "--worker-bin"),
        (&binaries.producer, PRODUCER_BIN, "--producer-bin"),
    ] {
        if needed.contains(&name) && !bin.exists() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p contactmirror-worker -p \
                 contactmirror-producer --bins` or pass {flag}",
                bin.display()
            );
        }
    }
    Ok(binaries)
}

/// Issue 13's fair tenants, embedded and on RabbitMQ (see `fair.rs`).
async fn fair_group(ctx: &Ctx, cli: &Cli) -> Result<Vec<fair::FairRow>> {
    let shape = fair::FairShape {
        large_users: cli.fair_large_users,
        large_contacts: cli.fair_large_contacts,
        small_tenants: cli.fair_small_tenants.max(1),
        small_users: cli.fair_small_users,
        small_contacts: cli.fair_small_contacts,
    };
    let processes = cli.fair_processes.max(1);
    let slots = processes * usize::from(ctx.fleet.worker_concurrency);
    let mut broker: Vec<Option<usize>> = cli.fair_tenant_jobs.iter().copied().map(Some).collect();
    if broker.is_empty() {
        broker.push(Some(2 * slots));
    }
    if cli.fair_fifo {
        broker.push(Some(1_000_000));
    }
    let modes = [
        (
            Mode::Embedded {
                workers: cli.embedded_workers,
                overlap: true,
            },
            vec![None],
        ),
        (Mode::broker(processes), broker),
    ];
    fair::group(shape, cli.budget.budget(), ctx.latency, &modes, &ctx.fleet).await
}

/// Initial sync, re-run with no change, re-run after `change_share` changed, on a fresh estate.
async fn sync_group(
    ctx: &Ctx,
    cli: &Cli,
    shape: Shape,
    mode: Mode,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let budget = cli.budget.budget();
    let estate = Estate::seed(shape, budget, ctx.latency).await?;
    rows.push(measure(ctx, &estate, budget, mode, first("sync", "initial sync")).await?);
    rows.push(
        measure(
            ctx,
            &estate,
            budget,
            mode,
            again("sync", "re-run, no change"),
        )
        .await?,
    );
    let (edited, added) = estate.change(cli.change_share)?;
    let pct = cli.change_share * 100.0;
    let run = Run {
        edited,
        added,
        ..again("sync", &format!("re-run, {pct}% changed"))
    };
    rows.push(measure(ctx, &estate, budget, mode, run).await?);
    Ok(())
}

/// Initial sync and a no-change re-run of `shape`.
async fn two_runs(
    ctx: &Ctx,
    shape: Shape,
    budget: Budget,
    mode: Mode,
    (group, name): (&str, &str),
    rows: &mut Vec<Row>,
) -> Result<()> {
    let estate = Estate::seed(shape, budget, ctx.latency).await?;
    let initial = first(group, &format!("{name}: initial sync"));
    rows.push(measure(ctx, &estate, budget, mode, initial).await?);
    let rerun = again(group, &format!("{name}: re-run, no change"));
    rows.push(measure(ctx, &estate, budget, mode, rerun).await?);
    Ok(())
}

/// Issue 14: users' own contacts with photos, mirrored through the central folder to every copy; initial sync,
/// a no-change re-run, and a re-run after 1 % of the photos changed.
async fn mirror_photos(
    ctx: &Ctx,
    cli: &Cli,
    shape: Shape,
    mode: Mode,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let budget = cli.budget.budget();
    let estate = Estate::seed(shape, budget, ctx.latency)
        .await?
        .with_personal_photos(cli.photo_bytes)?;
    let name = format!(
        "{} users x {} contacts, each with a photo ({} bytes)",
        shape.users, shape.contacts, cli.photo_bytes
    );
    let initial = first("mirror-photos", &format!("{name}: initial sync"));
    rows.push(measure(ctx, &estate, budget, mode, initial).await?);
    let rerun = again("mirror-photos", &format!("{name}: re-run, no change"));
    rows.push(measure(ctx, &estate, budget, mode, rerun).await?);
    let edited = estate.change_personal_photos(0.01, cli.photo_bytes)?;
    let changed = Run {
        edited,
        ..again(
            "mirror-photos",
            &format!("{name}: re-run, 1 % of photos changed"),
        )
    };
    rows.push(measure(ctx, &estate, budget, mode, changed).await?);
    Ok(())
}

/// Issue 11: a directory-only tenant, initial sync, no-change re-run (the users delta and one feed check per
/// mailbox), and a re-run after one user was renamed.
async fn directory(ctx: &Ctx, cli: &Cli, mode: Mode, rows: &mut Vec<Row>) -> Result<()> {
    let budget = Budget::REAL;
    let estate = Estate::seed_directory(cli.directory_users, budget, ctx.latency, None).await?;
    let name = format!("directory, {} users", cli.directory_users);
    let initial = first("directory", &format!("{name}: initial sync"));
    rows.push(measure(ctx, &estate, budget, mode, initial).await?);
    let rerun = again("directory", &format!("{name}: re-run, no change"));
    rows.push(measure(ctx, &estate, budget, mode, rerun).await?);
    let edited = estate.rename_directory_users(1)?;
    let renamed = Run {
        edited,
        ..again("directory", &format!("{name}: re-run, 1 user renamed"))
    };
    rows.push(measure(ctx, &estate, budget, mode, renamed).await?);
    if cli.photo_bytes == 0 {
        return Ok(());
    }
    // Issue 14: the same tenant with `Photos` on, every member with a photo.
    let estate = Estate::seed_directory(
        cli.directory_users,
        budget,
        ctx.latency,
        Some(cli.photo_bytes),
    )
    .await?;
    let name = format!("{name}, with photos ({} bytes each)", cli.photo_bytes);
    let initial = first("directory", &format!("{name}: initial sync"));
    rows.push(measure(ctx, &estate, budget, mode, initial).await?);
    let rerun = again("directory", &format!("{name}: re-run, no change"));
    rows.push(measure(ctx, &estate, budget, mode, rerun).await?);
    Ok(())
}

/// The zero-latency, no-budget initial sync with one worker process.
async fn throughput(ctx: &Ctx, cli: &Cli, rows: &mut Vec<Row>) -> Result<()> {
    let shape = Shape {
        tenants: 1,
        users: cli.throughput_users,
        contacts: cli.throughput_contacts,
        overlap: cli.overlap,
        big_user_contacts: 0,
        big_user_in_every_tenant: false,
    };
    let quick = ctx.with_latency(Duration::ZERO);
    let estate = Estate::seed(shape, Budget::Unlimited, Duration::ZERO).await?;
    let run = first(
        "throughput",
        "throughput: initial sync, latency 0, no budget",
    );
    rows.push(measure(&quick, &estate, Budget::Unlimited, Mode::broker(1), run).await?);
    Ok(())
}

/// The MSP and slice groups' graphsim latency.
fn msp_latency(cli: &Cli) -> Result<Duration> {
    Duration::try_from_secs_f64(cli.msp_latency_ms / 1000.0)
        .context("--msp-latency-ms must be a non-negative number")
}

/// One tenant of `users` where one user holds `central` persons and the others none, so every other reachable
/// mailbox receives the whole central set (the MSP group's one-tenant run and the slice).
fn one_tenant_with_central_set(users: usize, central: usize) -> Shape {
    Shape {
        tenants: 1,
        users,
        contacts: 0,
        overlap: 0.0,
        big_user_contacts: central,
        big_user_in_every_tenant: false,
    }
}

/// Issue 13's MSP-scale runs (see [`Group::Msp`]), each on a fresh estate with the real budget; a broker mode's
/// producer runs as its own process.
async fn msp(ctx: &Ctx, cli: &Cli, rows: &mut Vec<Row>) -> Result<()> {
    let latency = msp_latency(cli)?;
    let msp_ctx = ctx.with_latency(latency);
    let budget = Budget::REAL;
    let one_tenant = one_tenant_with_central_set(cli.msp_users, cli.msp_central_contacts);
    let name = format!(
        "1 tenant x {} users, {}-contact central set: initial sync",
        cli.msp_users, cli.msp_central_contacts
    );
    for mode in &cli.msp_modes {
        let mode = parse_mode(mode, cli.embedded_workers)?.with_producer_process();
        let estate = Estate::seed(one_tenant, budget, latency).await?;
        rows.push(measure(&msp_ctx, &estate, budget, mode, first("msp", &name)).await?);
    }
    let many = Shape {
        tenants: cli.msp_tenants,
        users: cli.msp_tenant_users,
        contacts: 0,
        overlap: 0.0,
        big_user_contacts: cli.msp_few_contacts,
        big_user_in_every_tenant: true,
    };
    let name = format!(
        "{} tenants x {} users, one user per tenant with {} contacts",
        cli.msp_tenants, cli.msp_tenant_users, cli.msp_few_contacts
    );
    let mode = match cli.msp_modes.last() {
        Some(mode) => parse_mode(mode, cli.embedded_workers)?.with_producer_process(),
        None => Mode::Embedded {
            workers: cli.embedded_workers,
            overlap: true,
        },
    };
    two_runs(&msp_ctx, many, budget, mode, ("msp", &name), rows).await
}

/// The least idle timeout for the slice: its phase-1 job writes the whole central set to the shared mailbox, more
/// than one 10-minute window of requests, before it reports anything.
const SLICE_IDLE_TIMEOUT_SECS: u64 = 1200;

/// Issue 13's simulated slice of the largest customer (see [`Group::Slice`]): one initial sync.
async fn slice(ctx: &Ctx, cli: &Cli, rows: &mut Vec<Row>) -> Result<()> {
    if ctx.fleet.idle_timeout_secs < SLICE_IDLE_TIMEOUT_SECS {
        bail!(
            "the slice needs --idle-timeout-secs of at least {SLICE_IDLE_TIMEOUT_SECS} (1800 advised): its \
             phase-1 job writes {} contacts to the shared mailbox, more than its 10-minute window, before it reports",
            cli.slice_central_contacts
        );
    }
    let latency = msp_latency(cli)?;
    let budget = Budget::REAL;
    let shape = one_tenant_with_central_set(cli.slice_users, cli.slice_central_contacts);
    let mode = Mode::broker(cli.slice_processes.max(1)).with_producer_process();
    let estate = Estate::seed(shape, budget, latency).await?;
    let name = format!(
        "slice of a 10,000-user tenant: {} users, {}-person central set: initial sync",
        cli.slice_users, cli.slice_central_contacts
    );
    rows.push(
        measure(
            &ctx.with_latency(latency),
            &estate,
            budget,
            mode,
            first("slice", &name),
        )
        .await?,
    );
    Ok(())
}

/// Issue 10's memory case in one real worker process (its VmHWM is the figure; graphsim stays in the bench
/// process): the initial sync of a --memory-contacts central folder to --memory-users, then a 1%-changed re-run,
/// which reads every folder again.
async fn memory(ctx: &Ctx, cli: &Cli, rows: &mut Vec<Row>) -> Result<()> {
    let shape = Shape {
        tenants: 1,
        users: cli.memory_users.max(1),
        contacts: 1,
        overlap: 0.0,
        big_user_contacts: cli.memory_contacts,
        big_user_in_every_tenant: false,
    };
    let quick = ctx.with_latency(Duration::ZERO);
    let budget = Budget::Unlimited;
    let mode = match parse_mode(&cli.memory_mode, cli.embedded_workers)? {
        mode @ Mode::Broker { processes: 1, .. } => mode,
        _ => bail!(
            "--memory-mode {:?}: the memory group measures one worker process (broker1 or broker1-ordered)",
            cli.memory_mode
        ),
    };
    let estate = Estate::seed(shape, budget, Duration::ZERO).await?;
    let name = format!(
        "{} central contacts, {} users",
        cli.memory_contacts, shape.users
    );
    let initial = first("memory", &format!("{name}: initial sync"));
    rows.push(measure(&quick, &estate, budget, mode, initial).await?);
    let (edited, added) = estate.change(0.01)?;
    let run = Run {
        edited,
        added,
        ..again("memory", &format!("{name}: re-run, 1% changed"))
    };
    rows.push(measure(&quick, &estate, budget, mode, run).await?);
    drop(estate);

    // Phase 1 with many sources: on the re-run every mailbox holds a copy of everyone.
    let shape = Shape {
        users: cli.memory_sources.max(1),
        big_user_contacts: 0,
        big_user_in_every_tenant: false,
        ..shape
    };
    let estate = Estate::seed(shape, budget, Duration::ZERO).await?;
    let name = format!("{} sources x 1 contact", shape.users);
    let initial = first("memory", &format!("{name}: initial sync"));
    rows.push(measure(&quick, &estate, budget, mode, initial).await?);
    let (edited, added) = estate.change(0.01)?;
    let run = Run {
        edited,
        added,
        ..again("memory", &format!("{name}: re-run, 1% changed"))
    };
    rows.push(measure(&quick, &estate, budget, mode, run).await?);
    Ok(())
}

/// An initial sync whose client believes it has ten times graphsim's budget.
async fn throttled(ctx: &Ctx, cli: &Cli, mode: Mode, rows: &mut Vec<Row>) -> Result<()> {
    let shape = Shape {
        tenants: 1,
        users: 20,
        contacts: 30,
        overlap: cli.overlap,
        big_user_contacts: 0,
        big_user_in_every_tenant: false,
    };
    let budget = Budget::SCALED;
    let estate = Estate::seed(shape, budget, ctx.latency).await?;
    let client = Budget::Window {
        requests: 1000,
        window: Duration::from_secs(6),
        in_flight: 4,
    };
    let run = Run {
        client_budget: Some(client),
        ..first(
            "throttled",
            &format!("client told {}: initial sync", client.label()),
        )
    };
    rows.push(measure(ctx, &estate, budget, mode, run).await?);
    Ok(())
}

/// Initial syncs as users grow and as contacts grow.
async fn scaling(ctx: &Ctx, cli: &Cli, mode: Mode, rows: &mut Vec<Row>) -> Result<()> {
    let budget = cli.scale_budget.budget();
    for (axis, values) in [
        ("users", &cli.scale_users),
        ("contacts", &cli.scale_contacts),
    ] {
        for v in values {
            let shape = if axis == "users" {
                Shape {
                    tenants: 1,
                    users: *v,
                    contacts: cli.scale_contacts_base,
                    overlap: cli.overlap,
                    big_user_contacts: 0,
                    big_user_in_every_tenant: false,
                }
            } else {
                Shape {
                    tenants: 1,
                    users: cli.scale_users_base,
                    contacts: *v,
                    overlap: cli.overlap,
                    big_user_contacts: 0,
                    big_user_in_every_tenant: false,
                }
            };
            let estate = Estate::seed(shape, budget, ctx.latency).await?;
            let name = format!("scaling {axis}: U={} C={}", shape.users, shape.contacts);
            let group = format!("scaling-{axis}");
            let run = first(&group, &name);
            rows.push(measure(ctx, &estate, budget, mode, run).await?);
        }
    }
    Ok(())
}

fn first<'a>(group: &'a str, scenario: &str) -> Run<'a> {
    Run {
        group,
        scenario: scenario.to_owned(),
        client_budget: None,
        first_run: true,
        edited: 0,
        added: 0,
    }
}

fn again<'a>(group: &'a str, scenario: &str) -> Run<'a> {
    Run {
        first_run: false,
        ..first(group, scenario)
    }
}

/// Runs one sync and turns it into a row.
async fn measure(
    ctx: &Ctx,
    estate: &Estate,
    budget: Budget,
    mode: Mode,
    run: Run<'_>,
) -> Result<Row> {
    let before = estate.snapshot();
    // Every run starts with fresh budgets: graphsim's throttle is reset, and every run builds a new client.
    let label = run.group.replace(' ', "-");
    let client = run.client_budget.unwrap_or(budget);
    let synced = fleet::sync(estate, client, mode, &ctx.fleet, &label, &ctx.standing)
        .await
        .with_context(|| format!("{} ({})", run.scenario, mode.label()))?;
    let after = estate.snapshot();
    let stats = &synced.stats;
    let tenants = &estate.tenants;

    let per: Vec<u64> = stats
        .mailboxes
        .values()
        .map(|m| m.requests)
        .filter(|n| *n > 0)
        .collect();
    let floors = figures::floors(tenants, stats, &synced.marks, budget, ctx.latency);
    let (basis, floor) = match floors.ordered_secs {
        Some(f) => ("ordered", f),
        None => ("unordered", floors.unordered_secs),
    };
    let wall = synced.wall.as_secs_f64();
    let minimal = figures::minimal(
        tenants,
        stats,
        &before,
        &after,
        run.first_run,
        estate.directory,
    );
    let inputs: Vec<ScriptInput> = tenants
        .iter()
        .map(|t| {
            let central = FolderKey {
                mailbox: t.shared_mailbox_upn.to_lowercase(),
                central: true,
            };
            let user_sizes: Vec<u64> = t
                .user_upns
                .iter()
                .map(|u| u.to_lowercase())
                .filter(|u| stats.mailboxes.contains_key(u))
                .map(|u| {
                    before.size(&FolderKey {
                        mailbox: u,
                        central: false,
                    }) as u64
                })
                .collect();
            ScriptInput {
                listed: user_sizes.len() as u64,
                user_sizes,
                central_before: before.size(&central) as u64,
                central_after: after.size(&central) as u64,
                create_folder: !before.has(&central),
                added: (run.added as u64).div_ceil(tenants.len().max(1) as u64),
                first_run: run.first_run,
            }
        })
        .collect();
    // The replaced script had no directory source: nothing to compare a directory tenant with.
    let script = if estate.directory {
        figures::Script::default()
    } else {
        figures::script(&inputs, budget, ctx.latency)
    };
    let central_contacts = inputs.iter().map(|i| i.central_after).max().unwrap_or(0);
    let failed_mailboxes = synced
        .report
        .tenants
        .iter()
        .map(|t| {
            usize::from(t.error.is_some())
                + t.mailboxes.iter().filter(|m| m.outcome == "failed").count()
        })
        .sum();
    // A failure is a finding, not a figure: say why beside the row, by reason with one example each (the seeded
    // estates hold unreachable mailboxes on purpose: access denied, no mailbox).
    let mut reasons: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    for tenant in &synced.report.tenants {
        if let Some(error) = &tenant.error {
            eprintln!("  failed: tenant {}: {error}", tenant.tenant_id);
        }
        for m in tenant.mailboxes.iter().filter(|m| m.outcome == "failed") {
            let reason = reasons
                .entry(format!("{:?} {:?}", m.phase, m.reason))
                .or_insert_with(|| (0, m.error.clone().unwrap_or_default()));
            reason.0 += 1;
        }
    }
    for (reason, (count, example)) in &reasons {
        eprintln!("  failed: {count} x {reason}, e.g. {example}");
    }
    let worker_cpu: f64 = synced.workers.iter().map(|w| w.cpu_secs).sum();
    let row = Row {
        group: run.group.to_owned(),
        scenario: run.scenario,
        mode: mode.label(),
        shape: estate.shape,
        budget: budget.label(),
        latency_ms: ctx.latency.as_secs_f64() * 1000.0,
        wall_secs: wall,
        phase1_wall_secs: synced
            .marks
            .values()
            .map(|m| m.at.duration_since(synced.started).as_secs_f64())
            .reduce(f64::max),
        floors,
        ratio_basis: basis.to_owned(),
        wall_over_floor: (floor > 0.0).then(|| wall / floor),
        requests: stats.graph_operations,
        http_requests: stats.http_requests,
        writes: stats.total_writes(),
        mailboxes: per.len(),
        max_per_mailbox: per.iter().copied().max().unwrap_or(0),
        mean_per_mailbox: per.iter().sum::<u64>() as f64 / per.len().max(1) as f64,
        max_per_user_mailbox: {
            let shared: Vec<String> = tenants
                .iter()
                .map(|t| t.shared_mailbox_upn.to_lowercase())
                .collect();
            stats
                .mailboxes
                .iter()
                .filter(|(upn, _)| !shared.contains(upn))
                .map(|(_, m)| m.requests)
                .max()
                .unwrap_or(0)
        },
        sent_over_minimal: (minimal.total() > 0)
            .then(|| stats.graph_operations as f64 / minimal.total() as f64),
        minimal,
        throttled: stats.throttled,
        early_retries: stats.early_retries,
        early_retry_max_lateness_ms: stats.early_retry_max_lateness_ms,
        peak_in_flight: stats
            .mailboxes
            .values()
            .map(|m| m.peak_in_flight)
            .max()
            .unwrap_or(0),
        mailbox_pressure: stats
            .mailboxes
            .iter()
            .filter(|(upn, m)| {
                m.peak_in_flight > 4
                    || m.throttled > 0
                    || m.early_retries > 0
                    || tenants
                        .iter()
                        .any(|t| t.shared_mailbox_upn.eq_ignore_ascii_case(upn))
            })
            .map(|(upn, m)| {
                (
                    upn.clone(),
                    report::MailboxPressure {
                        peak_in_flight: m.peak_in_flight,
                        throttled: m.throttled,
                        early_retries: m.early_retries,
                    },
                )
            })
            .collect(),
        producer: synced.producer,
        baseline_rss_mib: synced.baseline_rss_mib,
        sim_cpu_secs: synced.sim_cpu_secs,
        requests_per_worker_cpu_sec: (worker_cpu > 0.0)
            .then(|| stats.graph_operations as f64 / worker_cpu),
        workers: synced.workers,
        script,
        central_contacts,
        failed_mailboxes,
        edited: run.edited,
        added: run.added,
    };
    eprintln!(
        "[{:>5.0}s] {} / {}: wall {:.1}s, floor {} s, {} Graph requests, {} failed mailboxes",
        ctx.started.elapsed().as_secs_f64(),
        row.scenario,
        row.mode,
        row.wall_secs,
        row.floors
            .ordered_secs
            .map_or("n/a".to_owned(), |f| format!("{f:.1}")),
        row.requests,
        row.failed_mailboxes
    );
    Ok(row)
}

/// Prints the tables and writes the JSON document.
fn print_and_write(
    cli: &Cli,
    ctx: &Ctx,
    (rows, fair_rows): (&[Row], &[fair::FairRow]),
    errors: &[String],
    elapsed: Duration,
) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "contactmirror bench: {cores} cores ({cpu}), {build} build, finished in {:.0} s",
        elapsed.as_secs_f64()
    );
    println!(
        "main estate: {} tenant(s) x {} users x {} contacts, overlap {}; graphsim latency {} ms; budget {}; \
         embedded x{} workers; worker processes run {} jobs each, {} spare slots\n",
        cli.tenants,
        cli.users,
        cli.contacts,
        cli.overlap,
        cli.latency_ms,
        cli.budget.budget().label(),
        cli.embedded_workers,
        cli.worker_concurrency,
        cli.worker_spare_slots
            .unwrap_or_else(|| worker::consumer::default_spare_slots(cli.worker_concurrency))
    );
    let main_rows: Vec<Row> = rows
        .iter()
        .filter(|r| !r.group.starts_with("scaling"))
        .cloned()
        .collect();
    println!("{}", report::timing_table(&main_rows));
    println!("{}", report::resources_table(&main_rows));
    println!(
        "wall/floor uses the phase-ordered floor: floor(central mailbox's phase-1 requests) + floor(busiest \
         mailbox's phase-2 requests), per tenant; (u) marks rows where the phase boundary was not seen and the \
         unordered floor (busiest mailbox's requests at its budget) is used; - marks a floor under 0.5 s, where fixed \
         costs dominate and the ratio means nothing. Minimal = creates + updates + deletes \
         (content compared before and after) + the fewest reads at 1,000 per page (re-runs: one delta request per \
         folder). Producer = the bench process minus graphsim's threads; its RSS includes graphsim's estate."
    );
    let msp_rows: Vec<Row> = rows.iter().filter(|r| r.group == "msp").cloned().collect();
    if !msp_rows.is_empty() {
        println!(
            "\nIssue 13's MSP-scale runs (in embedded mode the producer's figures include the workers and graphsim; \
             with a producer process they are its own):\n"
        );
        println!("{}", report::scale_table(&msp_rows));
    }
    let slice_rows: Vec<Row> = rows
        .iter()
        .filter(|r| r.group == "slice")
        .cloned()
        .collect();
    if !slice_rows.is_empty() {
        println!("\nIssue 13's slice of the largest customer (the producer as its own process):\n");
        println!("{}", report::slice_table(&slice_rows));
    }
    let mut fits = json!({});
    for axis in ["users", "contacts"] {
        let series: Vec<&Row> = rows
            .iter()
            .filter(|r| r.group == format!("scaling-{axis}"))
            .collect();
        if series.is_empty() {
            continue;
        }
        let x = |r: &Row| {
            if axis == "users" {
                r.shape.users as f64
            } else {
                r.shape.contacts as f64
            }
        };
        let f = report::fits(&series, x);
        println!(
            "\nScaling with {axis}:\n\n{}",
            report::scaling_table(axis, &series, &f)
        );
        fits[axis] = serde_json::to_value(&f).context("serialising the fit")?;
    }
    for r in rows.iter().filter(|r| r.group == "throughput") {
        let cpu: f64 = r.workers.iter().map(|w| w.cpu_secs).sum();
        println!(
            "\nThroughput, one worker process, graphsim latency 0, no budget: {} Graph operations ({} HTTP requests; \
             $batch items count one each) in {cpu:.2} worker CPU seconds = {} operations per CPU second \
             ({} HTTP requests per CPU second); target >= 2,000.",
            r.requests,
            r.http_requests,
            r.requests_per_worker_cpu_sec
                .map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            if cpu > 0.0 {
                format!("{:.0}", r.http_requests as f64 / cpu)
            } else {
                "n/a".to_owned()
            },
        );
    }
    println!(
        "\nIssue 6 targets (the scaled-profile target is stated for U=200, C=20; these rows are the sizes run):\n\n{}",
        report::targets(rows)
    );
    for e in errors {
        println!("FAILED: {e}");
    }
    let document = json!({
        "machine": {"cores": cores, "cpu": cpu, "build": build},
        "parameters": cli,
        "budgets": {"main": cli.budget.budget(), "bigUser": cli.big_user_budget.budget(),
                    "scaling": cli.scale_budget.budget()},
        "workerBinary": ctx.sources.worker,
        "producerBinary": ctx.sources.producer,
        "elapsedSeconds": elapsed.as_secs_f64(),
        "rows": rows,
        "scalingFits": fits,
        "fair": fair_rows,
        "errors": errors,
    });
    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(
        &cli.out,
        serde_json::to_vec_pretty(&document).context("serialising the results")?,
    )
    .with_context(|| format!("writing {}", cli.out.display()))?;
    println!("\nwrote {}", cli.out.display());
    Ok(())
}
