//! The Microsoft Graph client: tokens, per-mailbox limits, retries, paging and `$batch`, behind a small API.
//!
//! One [`GraphClient`] per process holds the HTTP connection pool, a token cache per tenant, the limiters per
//! (tenant, mailbox) and the counters; [`GraphClient::tenant`] hands out cheap [`TenantClient`]s that share them,
//! so every job of a tenant draws on the same token and the same mailbox budgets, as Graph counts them.
//!
//! Layout (octocrab-style layers):
//! - `transport`: one request (token, gate, headers, error mapping); `pipeline`: the one retry loop;
//!   `page`: nextLink paging.
//! - `auth`: client-credentials tokens; `limit`: Retry-After blocks, rate budget, in-flight cap per mailbox.
//! - `retry`: the pure rules (classify, backoff, `Retry-After` parsing); `error`: [`GraphError`], [`ErrorKind`].
//! - `users`, `folders`, `contacts`, `delta`, `batch`: the typed endpoints; `wire`: Graph's JSON shapes and the mapping
//!   to [`crate::model`]; `stats`: [`ClientStats`] and the `metrics` counters.

mod auth;
mod batch;
mod claims;
mod contacts;
mod delta;
mod directory;
mod error;
mod folders;
mod limit;
mod page;
mod photos;
mod pipeline;
mod retry;
mod stats;
mod transport;
mod users;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use url::Url;

pub use contacts::{FolderRef, WriteOutcome};
pub use delta::{DeltaRound, DELTA_PAGE_ITEMS};
pub use directory::{DirectoryError, DirectoryPermission, UserKind, UsersDeltaRound};
pub use error::{AuthProblem, ErrorKind, GraphError, TransportFailure};
pub use folders::ContactFolder;
pub use photos::photo_content_type;
pub use retry::{Wait, WaitOrigin};
pub use stats::ClientStats;
pub use users::DirectoryUser;

/// The pure parsers of what Graph sends back (`Retry-After` values, paging and delta links), reachable from the
/// fuzz targets in `fuzz/`. Not an API: the client calls them itself.
#[doc(hidden)]
pub mod parsers {
    pub use super::page::same_origin_url;
    pub use super::retry::parse_retry_after;
}

use crate::config::TenantSettings;
use auth::{AccessToken, Credentials, TokenCache, TokenContext};
use limit::{AppRate, Limits};
use retry::{Backoff, RetryPolicy};
use stats::Counters;

/// How the client retries and times out. Build with `ClientOptions { field: value, ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Attempts per request and per `$batch` item, the first included (default 8).
    pub max_attempts: u32,
    /// Timeout of one HTTP exchange, body included (default 30 s).
    pub request_timeout: Duration,
    /// Ceiling of the first backoff wait when Graph gives no `Retry-After` (default 500 ms); doubles per attempt.
    pub backoff_base: Duration,
    /// Largest backoff ceiling (default 60 s).
    pub backoff_max: Duration,
    /// `User-Agent` header (default `contactmirror/<version>`).
    pub user_agent: String,
    /// The longest `Retry-After` waited out inside a call (default 5 min). A longer one fails the call with
    /// [`ErrorKind::Throttled`] carrying the wait, and the mailbox stays blocked in this client until then (a
    /// `Retry-After` beyond one day reads as one day).
    pub max_retry_after: Duration,
    /// Graph's app-wide ceiling, requests per 10 s per app across all tenants (default 130,000; lower in tests).
    /// The whole fleet shares it: see [`GraphClient::set_fleet_size`].
    pub app_requests_per_10_seconds: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            request_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            user_agent: concat!("contactmirror/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_retry_after: Duration::from_secs(300),
            app_requests_per_10_seconds: limit::APP_REQUESTS_PER_10_SECONDS,
        }
    }
}

/// What every [`TenantClient`] of one process shares.
pub(crate) struct Shared {
    http: reqwest::Client,
    options: ClientOptions,
    policy: RetryPolicy,
    counters: Counters,
    /// Token caches by (authority, tenant, client id).
    tokens: Mutex<HashMap<(String, String, String), Arc<TokenCache>>>,
    /// Limits by (tenant, client id): Graph counts per app and mailbox.
    limits: Mutex<HashMap<(String, String), Arc<Limits>>>,
    /// This process's share of each app's app-wide rate, by client id: Graph counts an app across tenants.
    apps: Mutex<HashMap<String, Arc<AppRate>>>,
    /// Processes of the fleet sharing the apps' rates (1 until told otherwise).
    fleet_size: AtomicU32,
}

/// The process-wide Graph client. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct GraphClient {
    shared: Arc<Shared>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client with `options`. Fails only if the HTTP stack cannot be built.
    pub fn new(options: ClientOptions) -> Result<Self, GraphError> {
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(10)))
            .user_agent(options.user_agent.clone())
            // A redirect would carry the client secret (token call) or the bearer token (Graph) to wherever it
            // points: never follow one; the 3xx is answered as an error.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GraphError::Setup(format!("cannot build the HTTP client: {e}")))?;
        let policy = RetryPolicy {
            max_attempts: options.max_attempts.max(1),
            backoff: Backoff {
                base: options.backoff_base,
                max: options.backoff_max.max(options.backoff_base),
            },
            max_retry_after: options.max_retry_after,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                http,
                options,
                policy,
                counters: Counters::default(),
                tokens: Mutex::new(HashMap::new()),
                limits: Mutex::new(HashMap::new()),
                apps: Mutex::new(HashMap::new()),
                fleet_size: AtomicU32::new(1),
            }),
        })
    }

    /// A client for one tenant. Cheap; its token cache and mailbox limits are shared with every other
    /// `TenantClient` of the same tenant (the limits of the first one created apply).
    pub fn tenant(&self, settings: &TenantSettings) -> TenantClient {
        let tenant_key = settings.tenant_id.to_lowercase();
        let client_key = settings.client_id.to_lowercase();
        let authority = settings
            .authority_host
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        let endpoint = settings
            .graph_endpoint
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        let tokens = {
            let mut caches = self.shared.tokens.lock().unwrap_or_else(|p| p.into_inner());
            caches
                .entry((authority.clone(), tenant_key.clone(), client_key.clone()))
                .or_default()
                .clone()
        };
        let app = {
            let mut apps = self.shared.apps.lock().unwrap_or_else(|p| p.into_inner());
            apps.entry(client_key.clone())
                .or_insert_with(|| {
                    Arc::new(AppRate::new(
                        self.shared.options.app_requests_per_10_seconds,
                        self.shared.fleet_size.load(Ordering::SeqCst),
                    ))
                })
                .clone()
        };
        let limits = {
            let mut all = self.shared.limits.lock().unwrap_or_else(|p| p.into_inner());
            all.entry((tenant_key, client_key))
                .or_insert_with(|| Arc::new(Limits::new(&settings.limits, app)))
                .clone()
        };
        let token_url = format!(
            "{authority}/{}/oauth2/v2.0/token",
            transport::encode_segment(&settings.tenant_id)
        );
        let credentials = Url::parse(&token_url)
            .map(|token_url| Credentials {
                tenant_id: settings.tenant_id.clone(),
                client_id: settings.client_id.clone(),
                credential: settings.credential.clone(),
                token_url,
                scope: token_scope(&settings.graph_endpoint),
            })
            .map_err(|e| format!("AuthorityHost gives no valid token URL: {e}"));
        let base = Url::parse(&format!("{endpoint}/v1.0/"))
            .map_err(|e| format!("GraphEndpoint is not usable: {e}"));
        TenantClient {
            inner: Arc::new(TenantInner {
                shared: self.shared.clone(),
                tenant_id: settings.tenant_id.clone(),
                credentials,
                base,
                tokens,
                limits,
                tally: stats::Tally::default(),
            }),
        }
    }

    /// The fleet now has `processes` processes using the same apps (at least one): from now on this process
    /// keeps `1 / processes` of each app's app-wide rate, so the fleet together stays within Graph's ceiling.
    pub fn set_fleet_size(&self, processes: u32) {
        let processes = processes.max(1);
        self.shared.fleet_size.store(processes, Ordering::SeqCst);
        let apps = self.shared.apps.lock().unwrap_or_else(|p| p.into_inner());
        for app in apps.values() {
            app.set_processes(processes);
        }
    }

    /// The processes this one shares each app's app-wide rate with, itself included.
    pub fn fleet_size(&self) -> u32 {
        self.shared.fleet_size.load(Ordering::SeqCst)
    }

    /// What the client has done since it was created.
    pub fn stats(&self) -> ClientStats {
        let mut peaks = BTreeMap::new();
        {
            let all = self.shared.limits.lock().unwrap_or_else(|p| p.into_inner());
            for ((tenant, _client), limits) in all.iter() {
                for (mailbox, peak) in limits.peaks() {
                    peaks.insert(format!("{tenant}/{mailbox}"), peak);
                }
            }
        }
        self.shared.counters.snapshot(peaks)
    }
}

/// The client-credentials scope for a Graph endpoint: its origin plus `/.default` (national clouds have their
/// own resource, e.g. `https://graph.microsoft.us/.default`). A loopback endpoint is a local stand-in for the
/// public cloud, so it asks for the public Graph resource.
pub(crate) fn token_scope(endpoint: &Url) -> String {
    let loopback = match endpoint.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if loopback {
        return "https://graph.microsoft.com/.default".to_owned();
    }
    format!("{}/.default", endpoint.origin().ascii_serialization())
}

/// A Graph client bound to one tenant's credentials and limits. Cheap to clone.
#[derive(Clone)]
pub struct TenantClient {
    inner: Arc<TenantInner>,
}

impl fmt::Debug for TenantClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantClient")
            .field("tenant_id", &self.inner.tenant_id)
            .finish_non_exhaustive()
    }
}

/// The state behind a [`TenantClient`].
pub(crate) struct TenantInner {
    shared: Arc<Shared>,
    tenant_id: String,
    credentials: Result<Credentials, String>,
    /// `{graph_endpoint}/v1.0/`.
    base: Result<Url, String>,
    tokens: Arc<TokenCache>,
    limits: Arc<Limits>,
    /// What this client alone sent: a job's own figures, exact even while other jobs share the process.
    tally: stats::Tally,
}

impl TenantInner {
    /// `{graph_endpoint}/v1.0/`, or why the endpoint is unusable.
    pub(crate) fn base(&self) -> Result<Url, GraphError> {
        self.base.clone().map_err(GraphError::Setup)
    }

    /// A valid access token for this tenant.
    async fn token(&self) -> Result<AccessToken, GraphError> {
        let credentials = self
            .credentials
            .as_ref()
            .map_err(|e| GraphError::Setup(e.clone()))?;
        self.tokens
            .get(&TokenContext {
                http: &self.shared.http,
                credentials,
                policy: &self.shared.policy,
                counters: &self.shared.counters,
            })
            .await
    }
}

impl TenantClient {
    /// Requests (`$batch` items counted one by one) and 429s sent through this client, not its siblings.
    pub fn tally(&self) -> (u64, u64) {
        self.inner.tally.get()
    }

    /// The tenant this client works for, as configured.
    pub fn tenant_id(&self) -> &str {
        &self.inner.tenant_id
    }

    /// Waits until `mailbox`'s request window has room for `per_process` requests of each process of the fleet,
    /// this one's included (at once while it is alone), unless it would come after `max_wait`; returns the time
    /// waited and whether the room is there. For a mailbox whose window this process may have filled while the
    /// others send to it next, counting nothing of its requests: the shared mailbox, which the fleet reads as soon
    /// as phase 1 ends.
    pub async fn make_room_for_fleet(
        &self,
        mailbox: &str,
        per_process: u32,
        max_wait: Duration,
    ) -> (Duration, bool) {
        self.inner
            .limits
            .make_room(mailbox, per_process, max_wait)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn scope_follows_the_cloud() {
        assert_eq!(
            token_scope(&url("https://graph.microsoft.com")),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            token_scope(&url("https://graph.microsoft.us/")),
            "https://graph.microsoft.us/.default"
        );
        assert_eq!(
            token_scope(&url("https://microsoftgraph.chinacloudapi.cn")),
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
        assert_eq!(
            token_scope(&url("http://127.0.0.1:8080/")),
            "https://graph.microsoft.com/.default"
        );
        assert_eq!(
            token_scope(&url("http://localhost:8080/")),
            "https://graph.microsoft.com/.default"
        );
    }

    fn settings() -> TenantSettings {
        TenantSettings {
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "app".into(),
            credential: crate::credential::Credential::Secret(crate::secret::Secret::new(
                "very-secret-value",
            )),
            global_address_book_user_id: "shared@contoso.com".into(),
            test_user_list: None,
            domains: Vec::new(),
            enabled: true,
            dry_run: false,
            authority_host: url("https://login.microsoftonline.com"),
            graph_endpoint: url("https://graph.microsoft.com"),
            mirror: crate::config::MirrorOptions {
                central_folder_name: "All Contacts".into(),
                managed_category: None,
                stamp_notes: true,
                opt_out_category: "Private".into(),
                deletion: crate::config::DeletionPolicy {
                    enabled: true,
                    max_share: 0.1,
                },
                update_existing: true,
                fields: Default::default(),
            },
            limits: crate::config::GraphLimits::default(),
            photos: false,
            distribution: Default::default(),
        }
    }

    #[test]
    fn debug_output_hides_credentials() {
        let client = GraphClient::new(ClientOptions::default()).expect("client");
        let tenant = client.tenant(&settings());
        let shown = format!("{client:?} {tenant:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert_eq!(tenant.tenant_id(), "contoso.onmicrosoft.com");
    }

    fn assert_send<T: Send>(_: T) {}

    #[test]
    fn futures_are_send() {
        let client = GraphClient::new(ClientOptions::default()).expect("client");
        let tenant = client.tenant(&settings());
        assert_send(tenant.licensed_users());
        assert_send(tenant.user("u"));
        assert_send(tenant.find_top_level_folder("m", "f"));
        assert_send(tenant.ensure_top_level_folder("m", "f"));
        assert_send(tenant.list_contacts("m", &FolderRef::Default));
        assert_send(tenant.write("m", &FolderRef::Default, &[]));
        assert_send(client.clone());
        assert_send(tenant.clone());
    }
}
