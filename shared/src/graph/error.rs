//! What can go wrong talking to Graph, typed so that callers branch on meaning, not on text.
//!
//! Every non-2xx answer (including `$batch` items) becomes a [`GraphError`] in one place ([`api_error`]), parsed
//! from Graph's `{"error":{"code","message","innerError":{"request-id"}}}` envelope. [`GraphError::kind`] folds
//! status and code into the handful of cases the fleet treats differently (no mailbox, access denied, throttled,
//! transient, ...). No variant ever carries a client secret or an access token: token endpoint texts are scrubbed
//! of the secret before they are stored.

use std::fmt;
use std::time::Duration;

use super::retry::{Wait, WaitOrigin};

/// A failed Graph or token call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Graph answered with an error status (other than a throttling answer).
    #[error("graph answered {status} {code}: {message}{}", RequestId(request_id))]
    Api {
        /// HTTP status.
        status: u16,
        /// Graph's error code (`ErrorItemNotFound`, ...); empty when the body had none.
        code: String,
        /// Graph's message (or the start of a non-JSON body).
        message: String,
        /// Graph's `request-id`, for Microsoft support.
        request_id: Option<String>,
    },
    /// Graph told us to wait: 429, or 503/504 with a `Retry-After`, still failing after the allowed attempts (or
    /// with a wait longer than the client accepts in-process).
    #[error(
        "graph throttled the request ({status} {code}){}{}",
        RetryAfter(retry_after),
        RequestId(request_id)
    )]
    Throttled {
        /// HTTP status (429, 503 or 504).
        status: u16,
        /// Graph's error code (`ApplicationThrottled`, `TooManyRequests`, ...).
        code: String,
        /// Graph's message.
        message: String,
        /// Graph's `request-id`.
        request_id: Option<String>,
        /// The last `Retry-After` Graph sent, if any.
        retry_after: Option<Duration>,
    },
    /// The token endpoint refused the tenant's credentials, or Graph refused a fresh token.
    #[error(
        "token for tenant {tenant_id} (client {client_id}): {problem}{}{}",
        Aadsts(aadsts),
        Detail(problem, description)
    )]
    Auth {
        /// Which setting is wrong.
        problem: AuthProblem,
        /// The tenant as configured.
        tenant_id: String,
        /// The client id as configured.
        client_id: String,
        /// HTTP status of the refusal, if there was an answer.
        status: Option<u16>,
        /// The `AADSTSnnnn` number, if Entra sent one.
        aadsts: Option<u32>,
        /// The first line of Entra's description (never contains the secret).
        description: String,
    },
    /// No usable HTTP answer: connection refused or reset, timeout, TLS failure.
    #[error("{method} {path}: {failure}")]
    Transport {
        /// HTTP method.
        method: String,
        /// URL path (no query).
        path: String,
        /// What kind of failure.
        failure: TransportFailure,
        /// The underlying error (its URL is stripped).
        #[source]
        source: reqwest::Error,
    },
    /// A create that may have been applied (Graph answered 5xx or 408, or never answered) and so was not sent
    /// again blindly (see `retry::Effect`). The caller looks it up, or the job re-reads and re-plans.
    #[error("{method} {path} may have been applied and was not sent again: {source}")]
    Ambiguous {
        /// HTTP method.
        method: String,
        /// URL path (no query).
        path: String,
        /// The wait the failed attempt called for.
        wait: Wait,
        /// How the attempt failed.
        #[source]
        source: Box<GraphError>,
    },
    /// A body did not have the expected shape.
    #[error("could not decode {what} at `{path}`")]
    Decode {
        /// What was being decoded (`contact list page`, ...).
        what: String,
        /// The JSON path of the offending value.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// Graph answered something the protocol does not allow (a foreign `@odata.nextLink`, a `$batch` answer
    /// missing an item, ...).
    #[error("unexpected answer from graph: {0}")]
    Protocol(String),
    /// The client could not be set up (bad endpoint URL, TLS backend).
    #[error("graph client setup: {0}")]
    Setup(String),
}

/// Which tenant setting a token failure points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthProblem {
    /// AADSTS7000215 (or `invalid_client`): the ClientSecret is wrong.
    BadSecret,
    /// AADSTS7000222: the ClientSecret has expired.
    ExpiredSecret,
    /// AADSTS700016 (or `unauthorized_client`): no app with this ClientId in the tenant.
    UnknownClient,
    /// AADSTS90002 / AADSTS900023 (or `invalid_tenant`): the TenantId names no tenant.
    UnknownTenant,
    /// AADSTS70011 / AADSTS1002012 (or `invalid_scope`): the scope derived from GraphEndpoint is not valid.
    BadScope,
    /// Graph refused a freshly issued token (401 after one refresh).
    TokenRejected,
    /// The token endpoint kept failing (5xx, throttling) after the allowed attempts: transient.
    Unavailable,
    /// AADSTS700027 (the certificate is not among the app's, or the signature does not verify with it).
    CertificateRejected,
    /// The certificate has expired (found before asking, or AADSTS700027 "The key used is expired").
    CertificateExpired,
    /// AADSTS700024: the client assertion is outside its valid time range (this machine's clock).
    AssertionTime,
    /// AADSTS50027: the client assertion was refused as malformed, mostly its audience (the token endpoint).
    AssertionAudience,
    /// The federated token file cannot be read or is empty.
    FederatedTokenUnreadable,
    /// AADSTS700024 for a federated token: it expired (its file is no longer refreshed) or the clock is off.
    FederatedTokenTime,
    /// AADSTS700211: no federated credential on the app trusts the token's issuer.
    FederatedIssuer,
    /// AADSTS700212: no federated credential on the app lists the token's audience.
    FederatedAudience,
    /// AADSTS700213: no federated credential on the app names the token's subject.
    FederatedSubject,
    /// The federated token's signature was refused.
    FederatedSignature,
    /// Any other refusal.
    Other,
}

impl fmt::Display for AuthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthProblem::BadSecret => {
                "the client secret was rejected (check ClientSecret / ClientSecretFile: the secret value, not its id)"
            }
            AuthProblem::ExpiredSecret => "the client secret has expired (check ClientSecret / ClientSecretFile)",
            AuthProblem::UnknownClient => "no application with this ClientId exists in the tenant (check ClientId)",
            AuthProblem::UnknownTenant => "the tenant was not found (check TenantId and AuthorityHost)",
            AuthProblem::BadScope => "the token scope was refused (check GraphEndpoint)",
            AuthProblem::TokenRejected => "graph rejected a freshly issued token",
            AuthProblem::Unavailable => "the token endpoint is unavailable",
            AuthProblem::CertificateRejected => {
                "the certificate was refused: upload the public part of CertificateFile (thumbprint below) to the app \
                 registration (Certificates & secrets), or point CertificateFile at the certificate uploaded there"
            }
            AuthProblem::CertificateExpired => {
                "the certificate has expired: create a new one, upload its public part to the app registration \
                 (Certificates & secrets) and point CertificateFile at it"
            }
            AuthProblem::AssertionTime => {
                "the client assertion is outside its valid time range: set this machine's clock right (NTP)"
            }
            AuthProblem::AssertionAudience => {
                "the client assertion's audience (the token endpoint) was refused: AuthorityHost must be the login \
                 host of the tenant's cloud (https://login.microsoftonline.com, or the national cloud's)"
            }
            AuthProblem::FederatedTokenUnreadable => {
                "the federated token cannot be read: check FederatedTokenFile and the projected token volume"
            }
            AuthProblem::FederatedTokenTime => {
                "the federated token has expired or is not yet valid: check that the token in FederatedTokenFile is \
                 refreshed (a projected service-account token) and this machine's clock"
            }
            AuthProblem::FederatedIssuer => {
                "no federated credential of the app trusts the token's issuer: add one whose Issuer is the \
                 cluster's OIDC issuer URL"
            }
            AuthProblem::FederatedAudience => {
                "the federated token's audience matches no federated credential of the app: project the token with \
                 audience api://AzureADTokenExchange, the audience the federated credential lists"
            }
            AuthProblem::FederatedSubject => {
                "no federated credential of the app names the token's subject: its Subject must be \
                 system:serviceaccount:<namespace>:<service account> (case-sensitive)"
            }
            AuthProblem::FederatedSignature => {
                "the federated token's signature was refused: the federated credential's Issuer must be the issuer \
                 that signs the tokens in FederatedTokenFile"
            }
            AuthProblem::Other => "the token request was refused",
        })
    }
}

/// What kind of transport failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportFailure {
    /// The request timed out.
    Timeout,
    /// The connection could not be established.
    Connect,
    /// The connection failed while sending or receiving.
    Io,
    /// Anything else (TLS configuration, redirect loop, ...): not retried.
    Other,
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportFailure::Timeout => "timed out",
            TransportFailure::Connect => "could not connect",
            TransportFailure::Io => "connection failed",
            TransportFailure::Other => "request failed",
        })
    }
}

/// The cases the fleet treats differently, from [`GraphError::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The user has no Exchange Online mailbox reachable by REST (404 `MailboxNotEnabledForRESTAPI`,
    /// `ResourceNotFound`, `ErrorInvalidUser`).
    MailboxNotEnabled,
    /// Denied by permissions, consent or an application access policy (any 403).
    AccessDenied,
    /// The item (or directory object) does not exist (404 `ErrorItemNotFound`, `Request_ResourceNotFound`).
    ItemNotFound,
    /// Graph asked us to wait (429, or 503/504 with `Retry-After`).
    Throttled {
        /// Graph's requested wait, if it sent one.
        retry_after: Option<Duration>,
    },
    /// A server or network failure that may pass (5xx, 408, timeout, connection).
    Transient,
    /// A create may or may not have been applied: re-read before writing again (transient).
    Ambiguous,
    /// The delta token is no longer valid: start again with a full read (410 `SyncStateNotFound`, ...).
    InvalidDeltaToken,
    /// A write sent with `If-Match` found the item changed since it was read (412 `ErrorIrresolvableConflict`):
    /// nothing was written; read it again before deciding anything.
    ChangedSinceRead,
    /// The tenant's credentials are wrong.
    Auth(AuthProblem),
    /// Any other refusal (other 4xx): retrying will not help.
    Permanent,
    /// Graph's answer could not be understood.
    Decode,
}

impl GraphError {
    /// The case this error falls in.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GraphError::Api { status, code, .. } => classify_api(*status, code),
            GraphError::Throttled { retry_after, .. } => ErrorKind::Throttled {
                retry_after: *retry_after,
            },
            GraphError::Auth {
                problem: AuthProblem::Unavailable,
                ..
            } => ErrorKind::Transient,
            GraphError::Auth { problem, .. } => ErrorKind::Auth(*problem),
            GraphError::Transport { failure, .. } => match failure {
                TransportFailure::Other => ErrorKind::Permanent,
                _ => ErrorKind::Transient,
            },
            GraphError::Ambiguous { .. } => ErrorKind::Ambiguous,
            GraphError::Decode { .. } | GraphError::Protocol(_) => ErrorKind::Decode,
            GraphError::Setup(_) => ErrorKind::Permanent,
        }
    }

    /// Whether trying again later may succeed (throttling and transient failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Throttled { .. } | ErrorKind::Transient | ErrorKind::Ambiguous
        )
    }

    /// Graph's requested wait, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.wait()
            .filter(|w| w.origin == WaitOrigin::RetryAfter)
            .map(|w| w.duration)
    }

    /// The wait this failure calls for before trying again: Graph's `Retry-After`, or the backoff of an ambiguous
    /// create. `None` when there is nothing to wait for.
    pub fn wait(&self) -> Option<Wait> {
        match self {
            GraphError::Throttled { retry_after, .. } => retry_after.map(Wait::retry_after),
            GraphError::Ambiguous { wait, .. } => Some(*wait),
            _ => None,
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } | GraphError::Throttled { status, .. } => Some(*status),
            GraphError::Auth { status, .. } => *status,
            _ => None,
        }
    }

    /// Graph's error code, when there was one.
    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Api { code, .. } | GraphError::Throttled { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Folds an error status and Graph code into an [`ErrorKind`]. Codes compare case-insensitively (Graph spells
/// `itemNotFound` and `ErrorItemNotFound`).
pub(crate) fn classify_api(status: u16, code: &str) -> ErrorKind {
    let is = |name: &str| code.eq_ignore_ascii_case(name);
    match status {
        401 => ErrorKind::Auth(AuthProblem::TokenRejected),
        403 => ErrorKind::AccessDenied,
        404 if is("MailboxNotEnabledForRESTAPI")
            || is("ResourceNotFound")
            || is("ErrorInvalidUser") =>
        {
            ErrorKind::MailboxNotEnabled
        }
        404 if is("ErrorItemNotFound") || is("itemNotFound") || is("Request_ResourceNotFound") => {
            ErrorKind::ItemNotFound
        }
        410 => ErrorKind::InvalidDeltaToken,
        412 => ErrorKind::ChangedSinceRead,
        _ if is("SyncStateNotFound") || is("SyncStateInvalid") || is("ResyncRequired") => {
            ErrorKind::InvalidDeltaToken
        }
        429 => ErrorKind::Throttled { retry_after: None },
        408 => ErrorKind::Transient,
        501 | 505 | 507 => ErrorKind::Permanent,
        500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    }
}

/// Builds the error for a non-2xx answer: [`GraphError::Throttled`] for 429 (and 503/504 carrying a
/// `Retry-After`), [`GraphError::Api`] otherwise.
pub(crate) fn api_error(
    status: u16,
    body: &[u8],
    header_request_id: Option<String>,
    retry_after: Option<Duration>,
) -> GraphError {
    let parsed = crate::graph::wire::parse_error_body(body);
    let (code, message, body_request_id) = match parsed {
        Some(e) => (e.code, e.message, e.request_id),
        None => (String::new(), snippet(body), None),
    };
    let request_id = body_request_id.or(header_request_id);
    if status == 429 || (matches!(status, 503 | 504) && retry_after.is_some()) {
        GraphError::Throttled {
            status,
            code,
            message,
            request_id,
            retry_after,
        }
    } else {
        GraphError::Api {
            status,
            code,
            message,
            request_id,
        }
    }
}

/// The start of a non-JSON body, for an error message.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

/// Formats ` (request-id ...)` when present.
struct RequestId<'a>(&'a Option<String>);

impl fmt::Display for RequestId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => write!(f, " (request-id {id})"),
            None => Ok(()),
        }
    }
}

/// Formats `, retry after 1.5s` when present.
struct RetryAfter<'a>(&'a Option<Duration>);

impl fmt::Display for RetryAfter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(wait) => write!(f, ", retry after {:.3}s", wait.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// Formats ` [AADSTSnnnn]` when present.
/// Entra's (scrubbed) description where it helps the fix: for certificate and federated problems it names the
/// thumbprint, the validity or the issuer/subject/audience Entra saw.
struct Detail<'a>(&'a AuthProblem, &'a String);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = matches!(
            self.0,
            AuthProblem::CertificateRejected
                | AuthProblem::CertificateExpired
                | AuthProblem::AssertionTime
                | AuthProblem::AssertionAudience
                | AuthProblem::FederatedTokenUnreadable
                | AuthProblem::FederatedTokenTime
                | AuthProblem::FederatedIssuer
                | AuthProblem::FederatedAudience
                | AuthProblem::FederatedSubject
                | AuthProblem::FederatedSignature
        );
        if shown && !self.1.is_empty() {
            write!(f, "; {}", self.1)
        } else {
            Ok(())
        }
    }
}

struct Aadsts<'a>(&'a Option<u32>);

impl fmt::Display for Aadsts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(code) => write!(f, " [AADSTS{code}]"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_status_and_code() {
        assert_eq!(
            classify_api(404, "MailboxNotEnabledForRESTAPI"),
            ErrorKind::MailboxNotEnabled
        );
        assert_eq!(
            classify_api(404, "ResourceNotFound"),
            ErrorKind::MailboxNotEnabled
        );
        assert_eq!(
            classify_api(404, "ErrorItemNotFound"),
            ErrorKind::ItemNotFound
        );
        assert_eq!(classify_api(404, "itemNotFound"), ErrorKind::ItemNotFound);
        assert_eq!(
            classify_api(403, "ErrorAccessDenied"),
            ErrorKind::AccessDenied
        );
        assert_eq!(
            classify_api(403, "Authorization_RequestDenied"),
            ErrorKind::AccessDenied
        );
        assert_eq!(
            classify_api(410, "SyncStateNotFound"),
            ErrorKind::InvalidDeltaToken
        );
        assert_eq!(
            classify_api(400, "resyncRequired"),
            ErrorKind::InvalidDeltaToken
        );
        assert_eq!(classify_api(500, ""), ErrorKind::Transient);
        assert_eq!(classify_api(502, ""), ErrorKind::Transient);
        assert_eq!(
            classify_api(507, "ErrorQuotaExceeded"),
            ErrorKind::Permanent
        );
        assert_eq!(
            classify_api(400, "ErrorInvalidIdMalformed"),
            ErrorKind::Permanent
        );
        assert_eq!(classify_api(409, "ErrorFolderExists"), ErrorKind::Permanent);
        assert_eq!(
            classify_api(412, "ErrorIrresolvableConflict"),
            ErrorKind::ChangedSinceRead
        );
        assert_eq!(
            classify_api(401, "InvalidAuthenticationToken"),
            ErrorKind::Auth(AuthProblem::TokenRejected)
        );
    }

    #[test]
    fn error_body_is_parsed_with_request_id() {
        let body = br#"{"error":{"code":"ErrorItemNotFound","message":"The specified object was not found in the store.","innerError":{"date":"2020-08-18T12:51:51","request-id":"0f1e2d3c-0000-4000-8000-000000000001"}}}"#;
        let error = api_error(404, body, Some("header-id".into()), None);
        match &error {
            GraphError::Api {
                status,
                code,
                request_id,
                ..
            } => {
                assert_eq!(*status, 404);
                assert_eq!(code, "ErrorItemNotFound");
                assert_eq!(
                    request_id.as_deref(),
                    Some("0f1e2d3c-0000-4000-8000-000000000001")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(error.kind(), ErrorKind::ItemNotFound);
        assert!(!error.is_transient());
    }

    #[test]
    fn throttling_answers_carry_their_wait() {
        let body = br#"{"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}"#;
        let error = api_error(429, body, None, Some(Duration::from_millis(1500)));
        assert_eq!(
            error.kind(),
            ErrorKind::Throttled {
                retry_after: Some(Duration::from_millis(1500))
            }
        );
        assert!(error.is_transient());
        assert_eq!(error.retry_after(), Some(Duration::from_millis(1500)));
        let text = error.to_string();
        assert!(text.contains("retry after 1.500s"), "{text}");

        let unavailable = api_error(503, b"", Some("rid".into()), Some(Duration::from_secs(2)));
        assert!(matches!(
            unavailable,
            GraphError::Throttled { status: 503, .. }
        ));
        let plain = api_error(503, b"", None, None);
        assert!(matches!(plain, GraphError::Api { status: 503, .. }));
        assert!(plain.is_transient());
    }

    #[test]
    fn non_json_bodies_become_a_short_message() {
        let long = "x".repeat(1000);
        let error = api_error(502, long.as_bytes(), None, None);
        let text = error.to_string();
        assert!(text.len() < 300, "{text}");
    }
}
