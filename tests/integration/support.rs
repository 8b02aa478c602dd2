//! Shared set-up for the integration tests: a seeded graphsim, settings pointing at it, and a RabbitMQ
//! connection with a private queue prefix per test.
//!
//! RabbitMQ is part of the test environment (`.ci/run` starts it): an unreachable broker fails the test loudly
//! with instructions, it never skips.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use graphsim::{EstateParams, FaultConfig, RetryAfter, SeededTenant, Sim, SimConfig};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use shared::config::Settings;
use shared::graph::{ClientOptions, GraphClient};
use shared::message::Phase;
use shared::mq::{self, Topology, RETRY_LEVELS};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio_util::sync::CancellationToken;
use worker::consumer::{Worker, WorkerConfig};
use worker::disposition::RetryPolicy;
use worker::job::JobRunner;

/// Broker-disruptive tests (restarting RabbitMQ) take this for writing; every other broker test for reading.
pub static BROKER: BrokerTurns = BrokerTurns(RwLock::const_new(()));

/// Turns on the test broker: many tests share it (`read`), a test that restarts it or changes a node-wide setting
/// holds it alone (`write`). Each turn is watched: see [`TURN_LIMIT`].
pub struct BrokerTurns(RwLock<()>);

impl BrokerTurns {
    /// A turn shared with the other tests that only add their own queues.
    pub async fn read(&'static self) -> Turn<RwLockReadGuard<'static, ()>> {
        let guard = self.0.read().await;
        Turn::watched(guard)
    }

    /// The broker alone, until the turn is dropped.
    pub async fn write(&'static self) -> Turn<RwLockWriteGuard<'static, ()>> {
        let guard = self.0.write().await;
        Turn::watched(guard)
    }
}

/// The longest a test may hold its turn on the broker; the slowest tests take one to two minutes here. A test
/// that hangs while holding a turn holds every test waiting for the broker alone, and with it the whole run, until
/// CI's own limit kills it with nothing said. Past this limit the test binary aborts, naming the test.
const TURN_LIMIT: Duration = Duration::from_secs(600);

/// A turn on the broker, watched by a thread of its own until it is dropped.
#[must_use = "the turn ends when this is dropped"]
pub struct Turn<G> {
    _guard: G,
    /// Dropped with the turn, which tells the watching thread the test got past its turn.
    _done: std::sync::mpsc::Sender<()>,
}

impl<G> Turn<G> {
    fn watched(guard: G) -> Self {
        // libtest runs each test on a thread named after it, and `#[tokio::test]` polls the test body there.
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let (done, watched) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watched.recv_timeout(TURN_LIMIT)
            {
                // Straight to stderr: libtest captures what `eprintln!` prints, and the abort would lose it.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{test} held its turn on the broker for {} s without finishing: it hangs. Aborting the test \
                     binary so the run fails here, naming it, instead of waiting for CI's time limit.",
                    TURN_LIMIT.as_secs_f32()
                );
                std::process::abort();
            }
        });
        Self {
            _guard: guard,
            _done: done,
        }
    }
}

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A connection to the test broker with a channel on which `topology` is declared.
pub async fn declared(topology: &Topology) -> (lapin::Connection, lapin::Channel) {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    mq::declare(&channel, topology).await.expect("declare");
    (connection, channel)
}

/// Connects to the test broker or fails with a message that says what to do.
pub async fn connect() -> lapin::Connection {
    match mq::connect(&amqp_url(), "contactmirror-tests").await {
        Ok(connection) => connection,
        Err(error) => panic!(
            "RabbitMQ is required for the integration tests and is not reachable at {} ({error}). \
             Start it with `rabbitmq-server -detached` or run `bash .ci/run`, which installs and starts it.",
            mq::redact_url(&amqp_url())
        ),
    }
}

/// A topology with a prefix no other test uses.
pub fn private_topology() -> Topology {
    Topology::new(format!("test-{}", uuid::Uuid::new_v4().simple()))
}

/// Deletes every queue and exchange of `topology`.
pub async fn delete_topology(topology: &Topology) {
    let connection = connect().await;
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    for queue in topology.all_queues() {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let mut exchanges = vec![
        topology.jobs_exchange(),
        topology.dead_letter_exchange(),
        topology.reports_exchange(),
    ];
    exchanges.extend(RETRY_LEVELS.iter().map(|l| topology.retry_queue(*l)));
    for exchange in exchanges {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = mq::close_connection(&connection, "done").await;
}

/// A graphsim with a seeded estate.
pub struct Estate {
    /// The simulator.
    pub sim: Sim,
    /// What was seeded.
    pub tenants: Vec<SeededTenant>,
}

impl Estate {
    /// Seeds `tenants` tenants of `users` users holding `contacts` contacts each.
    pub async fn seed(config: SimConfig, params: EstateParams) -> Self {
        let sim = graphsim::spawn(config).await.expect("graphsim starts");
        let tenants = graphsim::seed_estate(&sim, params);
        Self { sim, tenants }
    }

    /// The configuration document (AUTOMATION_SYNCCONTACTS_CONFIG_JSON form) for every tenant.
    pub fn config_json(&self) -> serde_json::Value {
        let tenants: Vec<serde_json::Value> = self
            .tenants
            .iter()
            .map(|t| {
                serde_json::json!({
                    "TenantId": t.tenant_id,
                    "ClientId": t.client_id,
                    "ClientSecret": t.client_secret,
                    "GlobalAddressBookUserId": t.shared_mailbox_upn,
                    "AuthorityHost": self.sim.authority_url(),
                    "GraphEndpoint": self.sim.graph_url(),
                })
            })
            .collect();
        serde_json::json!({ "MicrosoftTenants": tenants, "DryRun": "false" })
    }

    /// Settings for every tenant, through the real configuration loader.
    pub fn settings(&self) -> Settings {
        settings_from(&self.config_json())
    }
}

/// Loads settings from a configuration document, as `AUTOMATION_SYNCCONTACTS_CONFIG_JSON`.
pub fn settings_from(document: &serde_json::Value) -> Settings {
    let text = document.to_string();
    let env =
        move |name: &str| (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| text.clone());
    Settings::from_sources(&env, None).expect("valid test configuration")
}

/// A retry policy fast enough for tests.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(200),
        max: Duration::from_secs(2),
    }
}

/// A job runner for `settings`.
pub fn runner(settings: &Settings) -> Arc<JobRunner> {
    Arc::new(runner_of(settings))
}

/// [`runner`], not yet shared (to set it up further first).
pub fn runner_of(settings: &Settings) -> JobRunner {
    let graph = GraphClient::new(ClientOptions::default()).expect("graph client");
    JobRunner::new(graph, Arc::new(settings.clone()))
}

/// An in-process AMQP worker; cancel the token to stop it.
pub fn spawn_worker(
    settings: &Settings,
    topology: &Topology,
    name: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    spawn_worker_of(worker(settings, topology, name))
}

/// Starts `worker`; cancel the token to stop it.
pub fn spawn_worker_of(worker: Worker) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move {
        worker.run(stop).await.expect("worker runs");
    });
    (token, handle)
}

/// Stops workers started by [`spawn_worker`] and waits for each to end (a guard of 30 s each).
pub async fn stop_workers<T>(workers: Vec<(CancellationToken, tokio::task::JoinHandle<T>)>) {
    for (stop, handle) in workers {
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("worker stops")
            .expect("worker task");
    }
}

/// An AMQP worker on the test broker, not started (for tests that need its readiness flag first).
pub fn worker(settings: &Settings, topology: &Topology, name: &str) -> Worker {
    // Not the worker's default (`DEFAULT_CONCURRENCY`): tests that start several workers need the jobs spread over
    // all of them (a few slots each), or one worker would take every job of a small estate.
    worker_with_slots(settings, topology, name, 4)
}

/// [`worker`] running at most `concurrency` jobs at once.
pub fn worker_with_slots(
    settings: &Settings,
    topology: &Topology,
    name: &str,
    concurrency: u16,
) -> Worker {
    Worker::new(worker_config(topology, name, concurrency), runner(settings))
}

/// [`worker_with_slots`] planning within `budget` (a budget smaller than the folders makes plans take turns).
pub fn worker_with_budget(
    settings: &Settings,
    topology: &Topology,
    name: &str,
    concurrency: u16,
    budget: worker::planning_budget::PlanningBudget,
) -> Worker {
    let runner = runner_of(settings).with_planning_budget(budget);
    Worker::new(worker_config(topology, name, concurrency), Arc::new(runner))
}

/// The settings of a test worker named `name` on the test broker, running `concurrency` jobs at once.
pub fn worker_config(topology: &Topology, name: &str, concurrency: u16) -> WorkerConfig {
    WorkerConfig {
        amqp_url: amqp_url(),
        topology: topology.clone(),
        concurrency,
        spare_slots: worker::consumer::default_spare_slots(concurrency),
        retry: quick_retry(),
        grace: Duration::from_secs(10),
        name: name.to_owned(),
    }
}

/// A fresh scratch directory under the system temp dir (removed by the test when it is done).
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "contactmirror-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// The queue names of a phase, for assertions.
pub fn dead_letter_queue(topology: &Topology, phase: Phase) -> String {
    topology.dead_letter_queue(phase)
}

/// Changes a contact the way a user's phone or Outlook would: a PATCH through graphsim's Graph API with the
/// tenant's own app token.
pub async fn patch_contact(
    estate: &Estate,
    tenant: &SeededTenant,
    mailbox: &str,
    contact_id: &str,
    body: serde_json::Value,
) {
    user_request(
        estate,
        tenant,
        reqwest::Method::PATCH,
        &["users", mailbox, "contacts", contact_id],
        Some(body),
    )
    .await;
}

/// The contact id a request's URL ends with, decoded (Graph ids hold `=`, `/` and `+`, sent percent-encoded).
pub fn contact_id_in(url: &str) -> String {
    let segment = url.rsplit('/').next().unwrap_or_default();
    reqwest::Url::parse(&format!("http://x/?id={segment}"))
        .ok()
        .and_then(|u| u.query_pairs().next().map(|(_, v)| v.into_owned()))
        .expect("the contact's id")
}

/// Deletes a contact the way its owner would, through graphsim's Graph API.
pub async fn delete_contact(
    estate: &Estate,
    tenant: &SeededTenant,
    mailbox: &str,
    contact_id: &str,
) {
    user_request(
        estate,
        tenant,
        reqwest::Method::DELETE,
        &["users", mailbox, "contacts", contact_id],
        None,
    )
    .await;
}

/// Puts (`Some`) or removes (`None`) the photo of a contact the way its owner's Outlook would, through graphsim's
/// Graph API (`PUT|DELETE …/contacts/{id}/photo/$value`).
pub async fn set_contact_photo(
    sim: &Sim,
    tenant: &SeededTenant,
    mailbox: &str,
    contact_id: &str,
    photo: Option<&[u8]>,
) {
    let segments = ["users", mailbox, "contacts", contact_id, "photo", "$value"];
    match photo {
        Some(bytes) => {
            let body = RequestBody::Bytes(bytes.to_vec(), "image/jpeg");
            send_as_app(sim, tenant, reqwest::Method::PUT, &segments, body).await;
        }
        None => {
            let method = reqwest::Method::DELETE;
            send_as_app(sim, tenant, method, &segments, RequestBody::None).await;
        }
    }
}

/// One Graph request under `/v1.0/` with the tenant's own app token, as a user's client would send it; a
/// failure fails the test.
pub async fn user_request(
    estate: &Estate,
    tenant: &SeededTenant,
    method: reqwest::Method,
    segments: &[&str],
    body: Option<serde_json::Value>,
) {
    let body = body.map_or(RequestBody::None, RequestBody::Json);
    send_as_app(&estate.sim, tenant, method, segments, body).await;
}

/// What a request made by [`send_as_app`] carries.
enum RequestBody {
    None,
    Json(serde_json::Value),
    Bytes(Vec<u8>, &'static str),
}

async fn send_as_app(
    sim: &Sim,
    tenant: &SeededTenant,
    method: reqwest::Method,
    segments: &[&str],
    body: RequestBody,
) {
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            sim.authority_url(),
            tenant.tenant_id
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", tenant.client_id.as_str()),
            ("client_secret", tenant.client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token body");
    let access = token["access_token"].as_str().expect("access token");
    let mut url = reqwest::Url::parse(&sim.graph_url()).expect("graphsim URL");
    url.path_segments_mut()
        .expect("base URL")
        .push("v1.0")
        .extend(segments);
    let mut request = http.request(method.clone(), url).bearer_auth(access);
    request = match body {
        RequestBody::None => request,
        RequestBody::Json(body) => request.json(&body),
        RequestBody::Bytes(bytes, content_type) => {
            request.header("content-type", content_type).body(bytes)
        }
    };
    let response = request.send().await.expect("Graph request");
    assert!(
        response.status().is_success(),
        "{method} failed: {}",
        response.text().await.unwrap_or_default()
    );
}

/// Path of one of the workspace's binaries (`cargo test --workspace` builds them next to the test executables).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` before `cargo test --workspace` (as .ci/run does)",
        path.display()
    );
    path
}

/// A running binary whose stdout and stderr go to files, so tests can read its logs afterwards.
pub struct Process {
    /// The child.
    pub child: std::process::Child,
    /// Where its output goes.
    pub log: std::path::PathBuf,
}

impl Process {
    /// Starts `name` with `args` and `env`, logging to a temporary file.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log =
            std::env::temp_dir().join(format!("cm-{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        // Each process keeps its change feeds (producer state) in a directory of its own, not in $HOME.
        let state =
            std::env::temp_dir().join(format!("cm-state-{}", uuid::Uuid::new_v4().simple()));
        let child = std::process::Command::new(binary(name))
            .args(args)
            .env("CONTACTMIRROR_STATE_DIR", &state)
            .envs(env.iter().copied())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { child, log }
    }

    /// A real `contactmirror-worker` process on `topology` with the configuration document `config`.
    pub fn worker(config: &serde_json::Value, topology: &Topology) -> Self {
        let config = config.to_string();
        Self::start(
            "contactmirror-worker",
            &[
                "--amqp-url",
                &amqp_url(),
                "--queue-prefix",
                topology.prefix(),
                "--metrics-addr",
                "127.0.0.1:0",
                "--grace-secs",
                "20",
                // A few slots each, as `worker` above: a test killing one of two workers needs both holding jobs.
                "--concurrency",
                "4",
            ],
            &[
                ("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config.as_str()),
                ("RUST_LOG", "debug"),
            ],
        )
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal {pid}");
        let status = self.child.wait().expect("wait");
        (status, self.output())
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        self.output()
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sync id in a contact's extended property, as graphsim stores it (lower case).
pub fn sync_id(contact: &serde_json::Value) -> Option<String> {
    contact["singleValueExtendedProperties"]
        .as_array()?
        .iter()
        .find(|p| {
            p["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(shared::model::SYNC_ID_PROPERTY))
        })
        .and_then(|p| p["value"].as_str())
        .map(str::to_lowercase)
}

/// Dev Proxy's vocabulary and rate of throttling and transient 5xx (8 %), each answer asking to wait `retry_after`.
/// (Its random 507 on writes is left out: on Graph 507 means a full mailbox, which the fleet reports as a refused
/// write, not retries.)
pub fn devproxy_faults(retry_after: RetryAfter) -> FaultConfig {
    FaultConfig {
        statuses: vec![429, 500, 502, 503, 504],
        retry_after,
        ..FaultConfig::devproxy(0.08)
    }
}
