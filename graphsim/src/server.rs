//! HTTP framing: turns an axum request into an operation, routes it (token endpoint, Graph, `$batch`,
//! `/_sim/` control), and writes the reply with Graph's common headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::Router;

use crate::config::SimConfig;
use crate::faults::Faults;
use crate::odata::percent_decode;
use crate::reply::{errors, graph_error, Reply, Serialized};
use crate::routes;
use crate::state::Store;
use crate::stats::Recorder;
use crate::throttle::Throttle;

/// Settings that can change while running.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Lifetime of newly issued tokens.
    pub token_lifetime: Duration,
    /// Latency added per operation.
    pub latency: Duration,
    /// Body limit.
    pub max_body_bytes: usize,
    /// Unordered batch items run at once.
    pub batch_parallelism: usize,
    /// Answer every other request to a mailbox-less user with 404 `ResourceNotFound` instead of
    /// `MailboxNotEnabledForRESTAPI`, as Graph has been seen to alternate.
    pub alternate_no_mailbox: bool,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared {
    /// Directory and mailboxes. Read-only requests (list and delta pages, look-ups, the directory) share it, so a
    /// folder read's rendering runs on every thread of the runtime rather than one at a time.
    pub store: RwLock<Store>,
    /// Throttle model.
    pub throttle: Arc<Throttle>,
    /// Counters and log.
    pub recorder: Arc<Recorder>,
    /// Fault injection.
    pub faults: Faults,
    /// Changeable settings.
    pub runtime: Mutex<Runtime>,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    /// Counts answers to mailbox-less users (for the alternating 404 codes).
    pub no_mailbox_answers: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Shared state for a server at `base_url`.
    pub fn new(config: &SimConfig, base_url: String) -> Arc<Self> {
        Arc::new(Self {
            store: RwLock::new(Store::default()),
            throttle: Throttle::new(config.throttle),
            recorder: Recorder::new(config.request_log_capacity),
            faults: Faults::new(config.faults.clone()),
            runtime: Mutex::new(Runtime {
                token_lifetime: config.token_lifetime,
                latency: config.latency,
                max_body_bytes: config.max_body_bytes,
                batch_parallelism: config.batch_parallelism.max(1),
                alternate_no_mailbox: false,
            }),
            base_url,
            no_mailbox_answers: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The store to change, also after a panic elsewhere poisoned its lock (state stays usable).
    pub fn store(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store to read, beside other readers (also after a poisoning panic).
    pub fn store_read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the runtime settings.
    pub fn runtime(&self) -> Runtime {
        self.runtime.lock().map(|r| r.clone()).unwrap_or(Runtime {
            token_lifetime: Duration::from_secs(3599),
            latency: Duration::ZERO,
            max_body_bytes: 4 * 1024 * 1024,
            batch_parallelism: 4,
            alternate_no_mailbox: false,
        })
    }
}

/// One request (or `$batch` item) as the routes see it.
#[derive(Debug, Clone)]
pub struct Op {
    /// Upper-case method.
    pub method: String,
    /// Raw (encoded) path, starting with `/`.
    pub raw_path: String,
    /// Raw query string without `?`.
    pub raw_query: String,
    /// Decoded path segments.
    pub segments: Vec<String>,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Headers with lower-cased names.
    pub headers: HashMap<String, String>,
    /// Body bytes.
    pub body: Bytes,
    /// Parsed JSON body of a `$batch` item (items carry JSON, not bytes).
    pub json_body: Option<serde_json::Value>,
    /// Whether this is a `$batch` item.
    pub batch_item: bool,
    /// When the request (or batch item) arrived.
    pub received: chrono::DateTime<chrono::Utc>,
    /// When the client sent it: the arrival of the HTTP request (for a batch item, of its envelope). Early
    /// retries are judged by this, since a client cannot recall items of an envelope already sent.
    pub sent: std::time::Instant,
}

impl Op {
    /// Builds an operation from its parts.
    pub fn new(
        method: &str,
        path_and_query: &str,
        headers: HashMap<String, String>,
        body: Bytes,
    ) -> Self {
        let (raw_path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (path_and_query.to_owned(), String::new()),
        };
        let segments = raw_path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let query = url::form_urlencoded::parse(raw_query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Self {
            method: method.to_ascii_uppercase(),
            raw_path,
            raw_query,
            segments,
            query,
            headers,
            body,
            json_body: None,
            batch_item: false,
            received: chrono::Utc::now(),
            sent: std::time::Instant::now(),
        }
    }

    /// A query option by name (case-insensitive); the `$` may be omitted by the client.
    pub fn q(&self, name: &str) -> Option<&str> {
        let bare = name.trim_start_matches('$');
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name) || k.eq_ignore_ascii_case(bare))
            .map(|(_, v)| v.as_str())
    }

    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The JSON body, or a Graph 400.
    pub fn json(&self) -> Result<serde_json::Value, Reply> {
        if let Some(v) = &self.json_body {
            return Ok(v.clone());
        }
        serde_json::from_slice(&self.body).map_err(|_| errors::unreadable_body())
    }

    /// Path and query as logged.
    pub fn url(&self) -> String {
        if self.raw_query.is_empty() {
            self.raw_path.clone()
        } else {
            format!("{}?{}", self.raw_path, self.raw_query)
        }
    }
}

/// The axum application.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

const GRAPH_CONTENT_TYPE: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

async fn handle(State(shared): State<Arc<Shared>>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_ascii_lowercase(), v.to_owned()))
        })
        .collect();
    let request_id = uuid::Uuid::new_v4().to_string();
    let client_request_id = headers
        .get("client-request-id")
        .cloned()
        .unwrap_or_else(|| request_id.clone());
    let limit = shared.runtime().max_body_bytes;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let reply = match to_bytes(body, limit).await {
        Err(_) => {
            shared.recorder.http("graph");
            errors::body_too_large(limit)
        }
        Ok(bytes) => {
            let op = Op::new(parts.method.as_str(), &path_and_query, headers, bytes);
            routes::dispatch(&shared, op).await
        }
    };
    write(reply, &request_id, &client_request_id)
}

/// The date format of `innerError.date`.
pub fn inner_date() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Prepares a reply for sending: fills `innerError`, returns the serialised body.
pub fn finish_reply(reply: &mut Reply, request_id: &str, client_request_id: &str) {
    reply.stamp_inner_error(request_id, client_request_id, &inner_date());
}

fn write(mut reply: Reply, request_id: &str, client_request_id: &str) -> Response<Body> {
    finish_reply(&mut reply, request_id, client_request_id);
    let has_json_body = reply.has_json_body();
    let (body, raw_type) = match reply.raw.take() {
        Some(Serialized::Json(text)) => (text, None),
        Some(Serialized::Other(bytes, content_type)) => (bytes, Some(content_type)),
        None => (
            reply
                .body
                .as_ref()
                .map(|b| serde_json::to_vec(b).unwrap_or_default())
                .unwrap_or_default(),
            None,
        ),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = response.headers_mut();
    let mut put = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, v);
        }
    };
    put("request-id", request_id);
    put("client-request-id", client_request_id);
    put(
        "date",
        &chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    );
    if reply.plain_json {
        put("cache-control", "no-store, no-cache");
        if has_json_body {
            put("content-type", "application/json; charset=utf-8");
        }
    } else {
        put("strict-transport-security", "max-age=31536000");
        put(
            "x-ms-ags-diagnostic",
            r#"{"ServerInfo":{"DataCenter":"Local","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"GRAPHSIM"}}"#,
        );
        put("cache-control", "private");
        put("odata-version", "4.0");
        if has_json_body {
            put("content-type", GRAPH_CONTENT_TYPE);
        }
        if let Some(content_type) = &raw_type {
            put("content-type", content_type);
        }
    }
    for (name, value) in &reply.headers {
        put(&name.to_ascii_lowercase(), value);
    }
    response
}

/// A Graph 400 for a path outside `/v1.0`.
pub fn invalid_version(segment: &str) -> Reply {
    graph_error(400, "BadRequest", &format!("Invalid version: {segment}"))
}
