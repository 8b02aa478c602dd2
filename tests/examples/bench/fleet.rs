//! Running one real sync: embedded (`producer::run::execute` with in-process workers) or on RabbitMQ with real
//! `contactmirror-worker` processes, the producer in the bench process or as its own `contactmirror-producer`
//! process (`producer_process.rs`), measuring wall time, CPU and memory, and leaving no process or queue behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use graphsim::SimStats;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use serde::Serialize;
use shared::config::Settings;
use shared::mq::Topology;

use crate::estate::Estate;
use crate::figures::Budget;
use crate::probe::{self, PhaseMark, Usage};
use crate::producer_process;

/// Where the jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Mode {
    /// In-process workers, no broker.
    Embedded {
        /// Workers.
        workers: usize,
        /// Phases overlapped (the default; `false`: `run --ordered-phases`).
        overlap: bool,
    },
    /// RabbitMQ and this many `contactmirror-worker` processes.
    Broker {
        /// Processes.
        processes: usize,
        /// Where the producer runs.
        producer: ProducerAt,
        /// Phases overlapped (the default; `false`: `run --ordered-phases`).
        overlap: bool,
    },
}

/// Where a broker run's producer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProducerAt {
    /// `producer::run::execute` in the bench process, beside graphsim: its peak RSS includes graphsim's estate.
    Bench,
    /// The `contactmirror-producer` binary as its own process: its peak RSS is its own (issue 13).
    Process,
}

impl Mode {
    /// RabbitMQ with `processes` workers and the producer in the bench process (every group but `msp` and
    /// `slice`, so their rows stay comparable with earlier runs).
    pub fn broker(processes: usize) -> Self {
        Mode::Broker {
            processes,
            producer: ProducerAt::Bench,
            overlap: true,
        }
    }

    /// The same mode with its phases in order (`run --ordered-phases`).
    pub fn ordered(self) -> Self {
        match self {
            Mode::Embedded { workers, .. } => Mode::Embedded {
                workers,
                overlap: false,
            },
            Mode::Broker {
                processes,
                producer,
                ..
            } => Mode::Broker {
                processes,
                producer,
                overlap: false,
            },
        }
    }

    /// The same mode with a broker run's producer as its own process; embedded stays as it is (its producer and
    /// workers are one process by definition).
    pub fn with_producer_process(self) -> Self {
        match self {
            Mode::Broker {
                processes, overlap, ..
            } => Mode::Broker {
                processes,
                producer: ProducerAt::Process,
                overlap,
            },
            embedded => embedded,
        }
    }

    /// Short label for tables.
    pub fn label(&self) -> String {
        let (processes, producer, overlap) = match self {
            Mode::Embedded {
                workers,
                overlap: true,
            } => return format!("embedded x{workers}"),
            Mode::Embedded {
                workers,
                overlap: false,
            } => return format!("embedded x{workers}, ordered"),
            Mode::Broker {
                processes,
                producer,
                overlap,
            } => (*processes, *producer, *overlap),
        };
        let fleet = if processes == 1 {
            "broker, 1 process".to_owned()
        } else {
            format!("broker, {processes} processes")
        };
        let fleet = match producer {
            ProducerAt::Bench => fleet,
            ProducerAt::Process => format!("{fleet}, producer process"),
        };
        if overlap {
            fleet
        } else {
            format!("{fleet}, ordered")
        }
    }
}

/// How to reach the broker and the worker binary.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// AMQP URL for the producer and the workers.
    pub amqp_url: String,
    /// RabbitMQ management API base URL (for the clean-up sweep).
    pub management_url: String,
    /// Management API user and password.
    pub management_auth: (String, String),
    /// The `contactmirror-worker` executable.
    pub worker_bin: PathBuf,
    /// The `contactmirror-producer` executable (for [`ProducerAt::Process`]).
    pub producer_bin: PathBuf,
    /// Jobs each worker process runs at once.
    pub worker_concurrency: u16,
    /// Spare slots of each worker process (`None`: the worker's default).
    pub worker_spare_slots: Option<u16>,
    /// RUST_LOG of the worker processes.
    pub worker_log: String,
    /// Where worker configurations and logs go.
    pub scratch: PathBuf,
    /// The producer gives up after this long without any report.
    pub idle_timeout_secs: u64,
    /// Keep a broker run's worker processes up for the estate's next run (`--warm-pool`).
    pub warm_pool: bool,
}

/// CPU and memory of one worker process over one run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerUsage {
    /// CPU seconds from ready to the end of the run.
    pub cpu_secs: f64,
    /// Peak RSS over the process's life, MiB.
    pub peak_rss_mib: f64,
}

/// What one sync produced.
pub struct Synced {
    /// The producer's report.
    pub report: RunReport,
    /// Wall time of `execute`.
    pub wall: Duration,
    /// When `execute` started.
    pub started: Instant,
    /// graphsim's counters for the run.
    pub stats: SimStats,
    /// Phase-2 start per tenant.
    pub marks: HashMap<String, PhaseMark>,
    /// In the bench process: the bench process (producer, embedded workers) minus graphsim's threads, CPU over
    /// the run and peak RSS (graphsim's state included: it lives in this process). As its own process: the
    /// producer process's CPU over its life and its own peak RSS.
    pub producer: Usage,
    /// RSS of the bench process just before the run (mostly graphsim's estate), MiB; 0 for a producer process
    /// (its peak is all its own).
    pub baseline_rss_mib: f64,
    /// graphsim's CPU seconds over the run.
    pub sim_cpu_secs: f64,
    /// Per worker process.
    pub workers: Vec<WorkerUsage>,
}

/// The worker processes kept up between the runs of one estate (`--warm-pool`), as a deployment keeps its pool up
/// between runs (`minReplicaCount: 1` in `deploy/k8s/worker-scaledobject.yaml`): a re-run then finds them running,
/// with their broker connections, tokens and resolved tenants, instead of starting them.
#[derive(Default)]
pub struct Standing(tokio::sync::Mutex<Option<(String, Pool)>>);

impl Standing {
    /// The pool for `key`: the standing one when it was started for the same key, else a new one (a standing pool
    /// of another key is stopped first).
    async fn take(
        &self,
        key: &str,
        start: impl std::future::Future<Output = Result<Pool>>,
    ) -> Result<Pool> {
        let standing = self.0.lock().await.take();
        match standing {
            Some((k, pool)) if k == key => Ok(pool),
            other => {
                if let Some((_, pool)) = other {
                    stop_quietly(pool).await;
                }
                start.await
            }
        }
    }

    /// Keeps `pool` up for the next run of `key`.
    async fn keep(&self, key: String, pool: Pool) {
        if let Some((_, old)) = self.0.lock().await.replace((key, pool)) {
            stop_quietly(old).await;
        }
    }

    /// Stops the standing pool, if any.
    pub async fn stop(&self) {
        if let Some((_, pool)) = self.0.lock().await.take() {
            stop_quietly(pool).await;
        }
    }
}

/// Stops `pool`, reporting a failure as a warning (its runs were measured already).
async fn stop_quietly(pool: Pool) {
    if let Err(error) = pool.stop().await {
        eprintln!("warning: stopping a standing worker pool: {error:#}");
    }
}

/// Runs one sync of every tenant of `estate` in `mode`; with `--warm-pool` (`opts.warm_pool`) a broker run's
/// worker processes stay up in `standing` for the estate's next run.
pub async fn sync(
    estate: &Estate,
    budget: Budget,
    mode: Mode,
    opts: &FleetOptions,
    label: &str,
    standing: &Standing,
) -> Result<Synced> {
    let settings = &estate.settings(budget)?;
    match mode {
        Mode::Embedded { workers, overlap } => {
            let args = RunArgs {
                workers,
                ordered_phases: !overlap,
                idle_timeout_secs: opts.idle_timeout_secs,
                state_dir: Some(estate.state_dir.clone()),
                ..RunArgs::embedded_default()
            };
            measured(estate, Producer::Bench(settings), &args, &mut []).await
        }
        Mode::Broker {
            processes,
            producer,
            overlap,
        } => {
            let key = format!(
                "{}|{budget:?}|{processes}|{label}",
                estate.state_dir.display()
            );
            let start = Pool::start(estate, budget, processes, opts, label);
            let mut pool = if opts.warm_pool {
                standing.take(&key, start).await?
            } else {
                start.await?
            };
            let args = RunArgs {
                ordered_phases: !overlap,
                ..pool.args(estate)
            };
            let producer = match producer {
                ProducerAt::Bench => Producer::Bench(settings),
                ProducerAt::Process => Producer::Process {
                    bin: &opts.producer_bin,
                    log: opts.scratch.join(format!("{}-producer.log", pool.prefix)),
                },
            };
            let result = measured(estate, producer, &args, &mut pool.workers).await;
            if opts.warm_pool && result.is_ok() {
                // The peaks were taken at the run's end (each worker's was reset at its start).
                standing.keep(key, pool).await;
                return result;
            }
            let stopped = pool.stop().await;
            let mut synced = result?;
            for (slot, usage) in synced.workers.iter_mut().zip(stopped?) {
                slot.peak_rss_mib = usage.peak_rss_mib;
            }
            Ok(synced)
        }
    }
}

/// Worker processes on a queue prefix of their own. [`sync`] starts one per run; issue 13's fair-tenants group
/// starts several producer runs against one.
pub struct Pool {
    workers: Vec<WorkerProcess>,
    prefix: String,
    /// The configuration document the workers (and a producer process) read.
    config: PathBuf,
    opts: FleetOptions,
}

impl Pool {
    /// Starts `processes` workers configured for `estate` and waits until each consumes.
    pub async fn start(
        estate: &Estate,
        budget: Budget,
        processes: usize,
        opts: &FleetOptions,
        label: &str,
    ) -> Result<Self> {
        let prefix = format!(
            "bench-{}-{label}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let config = opts.scratch.join(format!("{prefix}.json"));
        let mut pool = Self {
            workers: Vec::new(),
            prefix,
            config,
            opts: opts.clone(),
        };
        let started = async {
            std::fs::write(&pool.config, estate.config_json(budget).to_string())
                .with_context(|| format!("writing {}", pool.config.display()))?;
            for n in 0..processes {
                pool.workers
                    .push(WorkerProcess::start(opts, &pool.config, &pool.prefix, n)?);
            }
            for w in &mut pool.workers {
                w.wait_ready(Duration::from_secs(30)).await?;
            }
            anyhow::Ok(())
        }
        .await;
        match started {
            Ok(()) => Ok(pool),
            Err(error) => {
                let _ = pool.stop().await;
                Err(error)
            }
        }
    }

    /// `run` arguments for a producer on this pool's queues, keeping `estate`'s state: the one description of a
    /// broker run. A producer in the bench process is given the settings of the same document the configuration
    /// file holds (`Estate::settings`, `Estate::config_json`) and writes no report file; a producer process reads
    /// the file and writes the report there ([`crate::producer_process::command_line`]).
    pub fn args(&self, estate: &Estate) -> RunArgs {
        RunArgs {
            config: Some(self.config.clone()),
            report: Some(
                self.opts
                    .scratch
                    .join(format!("{}-report.json", self.prefix)),
            ),
            amqp_url: Some(self.opts.amqp_url.clone()),
            queue_prefix: self.prefix.clone(),
            idle_timeout_secs: self.opts.idle_timeout_secs,
            state_dir: Some(estate.state_dir.clone()),
            ..RunArgs::embedded_default()
        }
    }

    /// Stops every worker (their last samples) and, whatever happened, deletes the pool's queues.
    pub async fn stop(self) -> Result<Vec<Usage>> {
        let stopped: Result<Vec<Usage>> =
            self.workers.into_iter().map(WorkerProcess::stop).collect();
        if let Err(error) = delete_topology(&self.opts, &self.prefix).await {
            eprintln!(
                "warning: cleaning up the queues of {}: {error:#}",
                self.prefix
            );
        }
        stopped
    }
}

/// Where [`measured`] runs the producer.
enum Producer<'a> {
    /// `producer::run::execute` in the bench process, with these settings.
    Bench(&'a Settings),
    /// `contactmirror-producer run` as its own process, its log in `log`.
    Process { bin: &'a Path, log: PathBuf },
}

/// Runs the producer with every figure around it; `workers` are sampled at the start and the end.
async fn measured(
    estate: &Estate,
    producer: Producer<'_>,
    args: &RunArgs,
    workers: &mut [WorkerProcess],
) -> Result<Synced> {
    let sim = estate.sim();
    sim.reset_throttle();
    sim.reset_stats();
    let worker_start: Vec<Usage> = workers.iter().map(|w| w.usage()).collect::<Result<_>>()?;
    // A standing pool's workers ran earlier runs: each peak covers this run only.
    for w in workers.iter() {
        probe::reset_peak_rss_of(&w.pid());
    }
    probe::reset_peak_rss();
    let bench_start = probe::process("self")?;
    let sim_start = probe::threads_cpu(&estate.host.threads)?;
    probe::watch_phases(sim);
    let started = Instant::now();
    let (report, own) = match producer {
        Producer::Bench(settings) => (producer::run::execute(settings, args).await, None),
        Producer::Process { bin, log } => match producer_process::run(bin, args, &log).await {
            Ok(run) => (Ok(run.report), Some(run.usage)),
            Err(error) => (Err(error), None),
        },
    };
    let wall = started.elapsed();
    let marks = probe::take_phases();
    let bench_end = probe::process("self")?;
    let sim_end = probe::threads_cpu(&estate.host.threads)?;
    let stats = sim.stats();
    let mut worker_usage = Vec::new();
    for (w, start) in workers.iter().zip(&worker_start) {
        let end = w.usage()?;
        worker_usage.push(WorkerUsage {
            cpu_secs: end.cpu_secs - start.cpu_secs,
            peak_rss_mib: end.peak_rss_mib,
        });
    }
    let report = report.context("the producer's run failed")?;
    let sim_cpu_secs = sim_end - sim_start;
    let (producer, baseline_rss_mib) = match own {
        Some(usage) => (usage, 0.0),
        None => (
            Usage {
                cpu_secs: (bench_end.cpu_secs - bench_start.cpu_secs - sim_cpu_secs).max(0.0),
                peak_rss_mib: bench_end.peak_rss_mib,
                rss_mib: bench_end.rss_mib,
            },
            bench_start.rss_mib,
        ),
    };
    Ok(Synced {
        report,
        wall,
        started,
        stats,
        marks,
        producer,
        baseline_rss_mib,
        sim_cpu_secs,
        workers: worker_usage,
    })
}

/// A running `contactmirror-worker`.
struct WorkerProcess {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl WorkerProcess {
    fn start(opts: &FleetOptions, config: &Path, prefix: &str, n: usize) -> Result<Self> {
        let metrics_port = free_port()?;
        let log = opts.scratch.join(format!("{prefix}-worker{n}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log handle")?;
        let child = fleet_command(&opts.worker_bin)
            .arg("--amqp-url")
            .arg(&opts.amqp_url)
            .arg("--config")
            .arg(config)
            .arg("--queue-prefix")
            .arg(prefix)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--concurrency")
            .arg(opts.worker_concurrency.to_string())
            .args(
                opts.worker_spare_slots
                    .map(|spare| ["--spare-slots".to_owned(), spare.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--grace-secs")
            .arg("10")
            .env("RUST_LOG", &opts.worker_log)
            .env("HOSTNAME", format!("{prefix}-{n}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", opts.worker_bin.display()))?;
        Ok(Self {
            child,
            metrics_port,
            log,
        })
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn usage(&self) -> Result<Usage> {
        probe::process(&self.pid()).with_context(|| {
            format!(
                "sampling worker {} (log: {})",
                self.pid(),
                self.log.display()
            )
        })
    }

    /// Waits until the worker's `/readyz` says it consumes.
    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().context("polling a worker")? {
                bail!(
                    "worker exited during start-up ({status}); log: {}",
                    self.log.display()
                );
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "worker not ready after {limit:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Samples memory, sends SIGTERM and waits (SIGKILL after 30 s); returns the last sample.
    fn stop(mut self) -> Result<Usage> {
        let last = self.usage();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid()])
            .status()
            .context("running kill")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for a worker")? {
                break Some(status);
            }
            if !sent.success() || Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match status {
            Some(s) if s.success() => last,
            Some(s) => bail!(
                "worker {} ended with {s}; log: {}",
                self.pid(),
                self.log.display()
            ),
            None => bail!(
                "worker {} ignored SIGTERM and was killed; log: {}",
                self.pid(),
                self.log.display()
            ),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command for one of the fleet's binaries, without the settings of this shell: they must not leak into the
/// measured fleet (every setting comes from the bench's configuration file and flags).
pub fn fleet_command(bin: &Path) -> Command {
    let mut command = Command::new(bin);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("AUTOMATION_SYNCCONTACTS_")
            || name.starts_with("CONTACTMIRROR_")
            || name == "AMQP_URL"
        {
            command.env_remove(&name);
        }
    }
    command
}

/// A port that was free a moment ago (the worker binds it right after).
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free metrics port")?;
    Ok(listener.local_addr().context("reading the port")?.port())
}

/// Deletes every queue and exchange of `prefix`: the known names through AMQP, then anything else with the
/// prefix through the management API.
async fn delete_topology(opts: &FleetOptions, prefix: &str) -> Result<()> {
    let topology = Topology::new(prefix.to_owned());
    let connection = shared::mq::connect(&opts.amqp_url, "contactmirror-bench-cleanup")
        .await
        .context("connecting to RabbitMQ for the clean-up")?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a channel")?;
    for queue in topology.all_queues() {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in shared::mq::topology::exchanges(&topology) {
        let _ = channel
            .exchange_delete(
                exchange.name.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = shared::mq::close_connection(&connection, "done").await;
    sweep(opts, prefix).await
}

/// Deletes leftovers named `prefix*` through the management API.
async fn sweep(opts: &FleetOptions, prefix: &str) -> Result<()> {
    let http = reqwest::Client::new();
    let (user, password) = &opts.management_auth;
    for kind in ["queues", "exchanges"] {
        for name in names_with_prefix(&http, opts, kind, prefix).await? {
            let mut url =
                reqwest::Url::parse(&opts.management_url).context("the management URL")?;
            url.path_segments_mut()
                .map_err(|()| anyhow::anyhow!("the management URL cannot have a path"))?
                .extend(["api", kind, "/", &name]);
            http.delete(url)
                .basic_auth(user, Some(password))
                .send()
                .await
                .with_context(|| format!("deleting {kind} {name}"))?;
        }
    }
    Ok(())
}

/// Whether any queue or exchange named `prefix*` is left (for the clean-up check at the end).
pub async fn leftovers(opts: &FleetOptions, prefix: &str) -> Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut left = Vec::new();
    for kind in ["queues", "exchanges"] {
        left.extend(names_with_prefix(&http, opts, kind, prefix).await?);
    }
    Ok(left)
}

/// The names of the management API's `kind` ("queues", "exchanges") in vhost `/` that start with `prefix`.
async fn names_with_prefix(
    http: &reqwest::Client,
    opts: &FleetOptions,
    kind: &str,
    prefix: &str,
) -> Result<Vec<String>> {
    let (user, password) = &opts.management_auth;
    let url = format!("{}/api/{kind}/%2F?columns=name", opts.management_url);
    let names: Vec<serde_json::Value> = http
        .get(&url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .with_context(|| format!("listing {kind} at {url}"))?
        .error_for_status()
        .with_context(|| format!("listing {kind}"))?
        .json()
        .await
        .with_context(|| format!("reading the {kind} listing"))?;
    Ok(names
        .iter()
        .filter_map(|v| v["name"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}
