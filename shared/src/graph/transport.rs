//! Sending one Graph request well: token, mailbox gate, headers, timeout and error mapping, as one attempt of
//! the retry loop in [`pipeline`](super::pipeline).
//!
//! Every Graph call of the client goes through [`TenantInner::send`]. Per attempt it takes a token from the
//! tenant's cache, passes the mailbox [`Gate`](super::limit) (Retry-After block, rate cells, in-flight permits),
//! sends with `Authorization`, `client-request-id` and (for advanced directory queries) `ConsistencyLevel`, and
//! reads the whole body while still holding the permits. A `Retry-After` blocks the whole mailbox for exactly that
//! long; what happens next (wait, send again, look a create up, give up) is [`retry::next_step`](super::retry)'s
//! decision; a 401 refreshes the token once. Non-2xx answers become typed errors in [`api_error`] only.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::{HeaderMap, ACCEPT, RETRY_AFTER};
use reqwest::Method;
use serde_json::Value;
use url::Url;

use super::error::{api_error, GraphError, TransportFailure};
use super::pipeline::{self, Exchange, Step};
use super::retry::{decide, parse_retry_after, Decision, Effect, Failure, Wait, WaitOrigin};
use super::TenantInner;

/// One logical request.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub url: Url,
    pub body: Option<&'a Value>,
    /// Send `ConsistencyLevel: eventual` (advanced directory queries; on every page).
    pub eventual: bool,
    /// The limiter key: the mailbox the request targets, or [`DIRECTORY`].
    pub mailbox: &'a str,
    /// For a `$batch`: how many items it carries (rate cells; up to the cap in permits).
    pub batch_items: Option<u32>,
    /// A `Prefer` header (`odata.maxpagesize=N` for delta pages).
    pub prefer: Option<&'a str>,
    /// A body that is not JSON (a photo's bytes), with its content type; its size is spent from the mailbox's
    /// upload budget. `body` is `None` when this is set.
    pub raw: Option<RawBody<'a>>,
}

impl<'a> Call<'a> {
    /// A request without a body or special headers; the other fields are set with struct update syntax.
    pub fn new(method: Method, url: Url, mailbox: &'a str) -> Self {
        Call {
            method,
            url,
            body: None,
            eventual: false,
            mailbox,
            batch_items: None,
            prefer: None,
            raw: None,
        }
    }
}

/// Bytes sent as they are (a photo), with their `Content-Type`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBody<'a> {
    pub bytes: &'a [u8],
    pub content_type: &'static str,
}

/// The limiter key of directory requests (`/users`), which are not mailbox requests.
pub(crate) const DIRECTORY: &str = "(directory)";

/// A successful answer.
pub(crate) struct Reply {
    pub body: Vec<u8>,
}

/// Classifies a reqwest failure.
pub(crate) fn transport_failure(error: &reqwest::Error) -> TransportFailure {
    if error.is_timeout() {
        TransportFailure::Timeout
    } else if error.is_connect() {
        TransportFailure::Connect
    } else if error.is_request() || error.is_body() || error.is_decode() {
        TransportFailure::Io
    } else {
        TransportFailure::Other
    }
}

/// Parses the `Retry-After` header of an answer.
pub(crate) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()))
}

/// Percent-encodes a path segment (mailbox UPNs, Outlook ids with `/`, `+`, `=`): everything but RFC 3986
/// unreserved characters, `@` and `$` (for `$batch`).
pub(crate) fn encode_segment(segment: &str) -> String {
    encode(segment, b"@$")
}

/// Percent-encodes a query key or value, keeping the OData punctuation that is legal in a query (`$`, quotes,
/// parentheses, `/`, `:`, `,`) and encoding what form decoders would misread (`&`, `=`, `+`, space, `#`).
pub(crate) fn encode_query(text: &str) -> String {
    encode(text, b"$'(),/:@*!;")
}

fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `segments` joined and encoded, with a leading `/` (the form `$batch` item URLs take).
pub(crate) fn relative_path(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| format!("/{}", encode_segment(s)))
        .collect()
}

impl TenantInner {
    /// The absolute URL of `segments` under `{graph_endpoint}/v1.0/`, with `query` encoded.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url, GraphError> {
        let base = self.base()?;
        let mut text = base.as_str().trim_end_matches('/').to_owned();
        text.push_str(&relative_path(segments));
        if !query.is_empty() {
            let pairs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
                .collect();
            text.push('?');
            text.push_str(&pairs.join("&"));
        }
        Url::parse(&text).map_err(|e| GraphError::Setup(format!("cannot build a Graph URL: {e}")))
    }

    /// Sends `call` through the one retry loop ([`pipeline::run`]). A create that may have been applied comes
    /// back as [`GraphError::Ambiguous`], never sent twice. Cancellation-safe: dropping the future releases the
    /// mailbox permits; a request already on the wire may still take effect at Graph.
    pub(crate) async fn send(&self, call: &Call<'_>) -> Result<Reply, GraphError> {
        self.send_as(call, Effect::of_method(call.method.as_str()))
            .await
    }

    /// [`send`](Self::send) with the effect given by the caller (a `$batch` is a create only when it carries one).
    pub(crate) async fn send_as(
        &self,
        call: &Call<'_>,
        effect: Effect,
    ) -> Result<Reply, GraphError> {
        let policy = self.shared.policy;
        // Encoded once: its size is what the mailbox's upload budget is charged for a write.
        let json = call
            .body
            .map(|body| serde_json::to_vec(body).unwrap_or_default());
        let mut exchange = GraphExchange {
            inner: self,
            call,
            json,
            token_generation: None,
        };
        pipeline::run(&mut exchange, &policy, effect).await
    }

    /// One HTTP exchange (`json`: the call's JSON body, encoded); the answer's body is read completely.
    async fn send_once(
        &self,
        call: &Call<'_>,
        json: Option<&[u8]>,
        token: &str,
    ) -> Result<(u16, HeaderMap, Vec<u8>), reqwest::Error> {
        let mut request = self
            .shared
            .http
            .request(call.method.clone(), call.url.clone())
            .bearer_auth(token)
            .header(ACCEPT, "application/json")
            .header("client-request-id", uuid::Uuid::new_v4().to_string());
        if call.eventual {
            request = request.header("ConsistencyLevel", "eventual");
        }
        if let Some(prefer) = call.prefer {
            request = request.header("Prefer", prefer);
        }
        if let Some(body) = json {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        if let Some(raw) = call.raw {
            request = request
                .header(reqwest::header::CONTENT_TYPE, raw.content_type)
                .body(raw.bytes.to_vec());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok((status, headers, body))
    }
}

/// One Graph request as the pipeline attempts it.
struct GraphExchange<'a, 'c> {
    inner: &'a TenantInner,
    call: &'a Call<'c>,
    /// The JSON body, encoded once for every attempt.
    json: Option<Vec<u8>>,
    /// The token of the last attempt, to invalidate exactly that one on a 401.
    token_generation: Option<u64>,
}

impl Exchange for GraphExchange<'_, '_> {
    type Output = Reply;

    async fn attempt(&mut self, attempt: u32) -> Step<Reply> {
        let inner = self.inner;
        let call = self.call;
        let policy = inner.shared.policy;
        let counters = &inner.shared.counters;
        let cells = call.batch_items.unwrap_or(1);
        let permits = call
            .batch_items
            .unwrap_or(1)
            .min(inner.limits.max_in_flight());
        let method = call.method.as_str();
        let path = call.url.path();
        if let Some(remaining) = inner.limits.remaining_block(call.mailbox) {
            if remaining > policy.max_retry_after {
                return blocked(remaining);
            }
        }
        let token = match inner.token().await {
            Ok(token) => token,
            // The token call ran its own retries: its failure is this call's.
            Err(error) => return Step::Final(error),
        };
        self.token_generation = Some(token.generation);
        // Outlook counts the bytes of every body written (PATCH, POST, PUT) against the mailbox's upload limit.
        let written = matches!(call.method, Method::POST | Method::PATCH | Method::PUT);
        let body_len = call
            .raw
            .map(|raw| raw.bytes.len())
            .or(self.json.as_ref().map(Vec::len))
            .unwrap_or(0);
        let upload = if written {
            u32::try_from(body_len).unwrap_or(u32::MAX)
        } else {
            0
        };
        let (pass, admission) = match inner
            .limits
            .admit(call.mailbox, cells, permits, upload, policy.max_retry_after)
            .await
        {
            Ok(admitted) => admitted,
            Err(remaining) => return blocked(remaining),
        };
        counters.blocked(&inner.tenant_id, admission.blocked);
        let started = std::time::Instant::now();
        let on_wire = counters.in_flight(&inner.tenant_id);
        let outcome = inner
            .send_once(call, self.json.as_deref(), token.secret.expose())
            .await;
        drop(on_wire);
        drop(pass);
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status, headers, body) = match outcome {
            Ok(answer) => answer,
            Err(error) => {
                let failure = transport_failure(&error);
                counters.request(method, None, call.batch_items);
                inner.tally.request(None, call.batch_items);
                tracing::debug!(method, path, mailbox = call.mailbox, attempt, elapsed_ms, %failure, "graph request failed");
                return Step::Failed {
                    failure: Failure::NoAnswer(failure),
                    error: GraphError::Transport {
                        method: method.to_owned(),
                        path: path.to_owned(),
                        failure,
                        source: error.without_url(),
                    },
                };
            }
        };
        counters.request(method, Some(status), call.batch_items);
        inner.tally.request(Some(status), call.batch_items);
        tracing::debug!(
            method,
            path,
            mailbox = call.mailbox,
            attempt,
            status,
            elapsed_ms,
            "graph request"
        );
        if (200..300).contains(&status) {
            return Step::Done(Reply { body });
        }
        let retry_after = retry_after_header(&headers);
        let request_id = headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let error = api_error(status, &body, request_id, retry_after);
        if status == 401 {
            // The token expired early or was revoked.
            return Step::Refused(error);
        }
        if status == 429 {
            counters.throttled_metric(&inner.tenant_id);
        }
        if let Decision::RetryAfter(wait) = decide(status, retry_after) {
            // Every request for this mailbox waits, not just this one (even when this call gives up).
            inner.limits.block(call.mailbox, wait);
            tracing::debug!(
                method,
                path,
                mailbox = call.mailbox,
                attempt,
                status,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "graph asked to wait"
            );
        }
        Step::Failed {
            failure: Failure::Answered {
                status,
                retry_after,
            },
            error,
        }
    }

    async fn pause(&mut self, wait: Wait) {
        self.inner
            .shared
            .counters
            .retry(&self.inner.tenant_id, retry_after_of(wait));
        pipeline::sleep_for(wait, false).await;
    }

    async fn refresh(&mut self) {
        if let Some(generation) = self.token_generation {
            self.inner.tokens.invalidate(generation).await;
        }
    }

    fn describe(&self) -> (String, String) {
        (
            self.call.method.as_str().to_owned(),
            self.call.url.path().to_owned(),
        )
    }
}

/// The counters' view of a wait: Graph's `Retry-After`, or none for a backoff.
pub(crate) fn retry_after_of(wait: Wait) -> Option<Duration> {
    (wait.origin == WaitOrigin::RetryAfter).then_some(wait.duration)
}

/// The step for a mailbox blocked longer than the client waits in-process: a throttling answer that is final.
fn blocked<T>(remaining: Duration) -> Step<T> {
    Step::Failed {
        failure: Failure::Answered {
            status: 429,
            retry_after: Some(remaining),
        },
        error: blocked_error(remaining),
    }
}

/// The error for a mailbox blocked for longer than the client waits in-process.
pub(crate) fn blocked_error(remaining: Duration) -> GraphError {
    GraphError::Throttled {
        status: 429,
        code: "ApplicationThrottled".into(),
        message: format!(
            "the mailbox is blocked by an earlier Retry-After for another {:.3}s",
            remaining.as_secs_f64()
        ),
        request_id: None,
        retry_after: Some(remaining),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("adele@contoso.com"), "adele@contoso.com");
        assert_eq!(encode_segment("AAMk/AGI+2=="), "AAMk%2FAGI%2B2%3D%3D");
        assert_eq!(
            encode_segment("x_y.com#EXT#@t.onmicrosoft.com"),
            "x_y.com%23EXT%23@t.onmicrosoft.com"
        );
        assert_eq!(
            relative_path(&["users", "a b", "contacts"]),
            "/users/a%20b/contacts"
        );
    }

    #[test]
    fn query_values_keep_odata_punctuation() {
        assert_eq!(
            encode_query("assignedLicenses/$count ne 0 and accountEnabled eq true"),
            "assignedLicenses/$count%20ne%200%20and%20accountEnabled%20eq%20true"
        );
        assert_eq!(
            encode_query("displayName eq 'A&B + C'"),
            "displayName%20eq%20'A%26B%20%2B%20C'"
        );
        assert_eq!(encode_query("$top"), "$top");
    }
}
