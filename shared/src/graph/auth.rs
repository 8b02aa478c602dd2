//! Client-credentials tokens: fetched from Entra, cached per tenant, refreshed before they expire. The app proves
//! itself with its client secret, a client assertion signed with its certificate (built fresh for every request),
//! or a federated token read from its file for every request (the file is rotated underneath us).
//!
//! A run can outlive one token (60-90 minutes), so every request asks the cache, which refreshes five minutes
//! before expiry (or at half the lifetime, if that is earlier). Concurrent callers wait on one async mutex, so a
//! refresh happens once, not once per caller. A 401 from Graph invalidates exactly the token that was refused
//! (by generation), so a burst of 401s still causes a single refresh.
//!
//! Token failures are mapped to the setting that is wrong ([`AuthProblem`]); Entra's description is kept only
//! after the secret has been scrubbed from it. The secret and the token live in [`Secret`]s and never reach a
//! `Debug`, error or log line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::error::{AuthProblem, GraphError};
use super::pipeline::{self, Exchange, Step};
use super::retry::{token_lifetime, token_refresh_after, Effect, Failure, RetryPolicy, Wait};
use super::stats::Counters;
use super::transport::{retry_after_header, retry_after_of, transport_failure};
use super::wire::{decode, TokenErrorResponse, TokenResponse};
use crate::credential::assertion::{client_assertion, JWT_BEARER};
use crate::credential::{Credential, CredentialKind, Expiry};
use crate::secret::Secret;

/// What the token endpoint needs to know about a tenant.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub tenant_id: String,
    pub client_id: String,
    pub credential: Credential,
    /// `{authority}/{tenant}/oauth2/v2.0/token`.
    pub token_url: Url,
    /// `{graph_endpoint}/.default`.
    pub scope: String,
}

/// A token handed to one request, with the generation to name it if Graph refuses it.
#[derive(Debug, Clone)]
pub(crate) struct AccessToken {
    pub secret: Secret,
    pub generation: u64,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
    generation: u64,
}

/// The token cache of one tenant (shared by every [`super::TenantClient`] of that tenant).
#[derive(Default)]
pub(crate) struct TokenCache {
    slot: Mutex<Option<Cached>>,
    generations: AtomicU64,
}

/// Everything a token fetch uses besides the cache.
pub(crate) struct TokenContext<'a> {
    pub http: &'a reqwest::Client,
    pub credentials: &'a Credentials,
    pub policy: &'a RetryPolicy,
    pub counters: &'a Counters,
}

impl TokenCache {
    /// A valid token, fetching one if none is cached or the cached one is due for refresh.
    /// Cancellation-safe: a dropped call leaves the cache as it was.
    pub async fn get(&self, context: &TokenContext<'_>) -> Result<AccessToken, GraphError> {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(AccessToken {
                    secret: cached.token.clone(),
                    generation: cached.generation,
                });
            }
        }
        let requested_at = Instant::now();
        let (token, lifetime) = fetch(context).await?;
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        context
            .counters
            .token_refresh(&context.credentials.tenant_id);
        tracing::debug!(
            tenant = %context.credentials.tenant_id,
            lifetime_s = lifetime.as_secs(),
            generation,
            "access token fetched"
        );
        *slot = Some(Cached {
            token: token.clone(),
            // The lifetime is at most a day (`token_lifetime`); a clock that still cannot add it refreshes now.
            refresh_at: requested_at
                .checked_add(token_refresh_after(lifetime))
                .unwrap_or(requested_at),
            generation,
        });
        Ok(AccessToken {
            secret: token,
            generation,
        })
    }

    /// Forgets the token of `generation` (Graph refused it); a newer token is kept.
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }
}

/// Asks the token endpoint through the one retry loop: 5xx, 429, Entra's throttling codes and connection
/// failures are tried again within the policy; a redirect is never followed (it would carry the secret).
async fn fetch(context: &TokenContext<'_>) -> Result<(Secret, Duration), GraphError> {
    let mut exchange = TokenExchange { context };
    pipeline::run(&mut exchange, context.policy, Effect::Idempotent).await
}

/// The token call as the pipeline attempts it.
struct TokenExchange<'a, 'c> {
    context: &'a TokenContext<'c>,
}

impl Exchange for TokenExchange<'_, '_> {
    type Output = (Secret, Duration);

    async fn attempt(&mut self, attempt: u32) -> Step<(Secret, Duration)> {
        let credentials = self.context.credentials;
        // What proves the app this time: the secret, a fresh assertion, or the token file as it is now.
        let proof = match proof(credentials) {
            Ok(proof) => proof,
            Err(error) => return Step::Final(error),
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", credentials.client_id.as_str()),
            ("scope", credentials.scope.as_str()),
        ];
        match credentials.credential.kind() {
            CredentialKind::Secret => form.push(("client_secret", proof.expose())),
            CredentialKind::Certificate | CredentialKind::FederatedToken => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", proof.expose()));
            }
        }
        let sent = self
            .context
            .http
            .post(credentials.token_url.clone())
            .form(&form)
            .send()
            .await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after_header(response.headers());
                response
                    .bytes()
                    .await
                    .map(|body| (status, retry_after, body))
            }
            Err(e) => Err(e),
        };
        let (status, retry_after, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                let failure = transport_failure(&e);
                tracing::debug!(tenant = %credentials.tenant_id, attempt, %failure, "token request failed");
                return Step::Failed {
                    failure: Failure::NoAnswer(failure),
                    error: GraphError::Transport {
                        method: "POST".into(),
                        path: credentials.token_url.path().to_owned(),
                        failure,
                        source: e.without_url(),
                    },
                };
            }
        };
        tracing::debug!(tenant = %credentials.tenant_id, attempt, status, "token request answered");
        if (200..300).contains(&status) {
            return match decode::<TokenResponse>("token response", &body) {
                Ok(token) => {
                    let lifetime =
                        token_lifetime(token.expires_in.as_ref().and_then(|e| e.as_u64()));
                    Step::Done((Secret::new(token.access_token), lifetime))
                }
                Err(error) => Step::Final(error),
            };
        }
        let refusal: TokenErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
        let mut problem = auth_problem_for(
            credentials.credential.kind(),
            &refusal.error,
            &refusal.error_codes,
            &refusal.error_description,
        );
        let transient = problem == AuthProblem::Unavailable || status == 429 || status >= 500;
        // Entra's throttling codes may come with any status: decided as the 503 they mean.
        let decided_status = if transient && status < 500 && status != 429 {
            503
        } else {
            status
        };
        if transient {
            problem = AuthProblem::Unavailable;
        }
        let description = if refusal.error_description.is_empty() {
            String::from_utf8_lossy(&body).into_owned()
        } else {
            refusal.error_description.clone()
        };
        Step::Failed {
            failure: Failure::Answered {
                status: decided_status,
                retry_after,
            },
            error: GraphError::Auth {
                problem,
                tenant_id: credentials.tenant_id.clone(),
                client_id: credentials.client_id.clone(),
                status: Some(status),
                aadsts: refusal
                    .error_codes
                    .first()
                    .copied()
                    .or_else(|| aadsts_in(&refusal.error_description)),
                description: match credentials.credential.certificate() {
                    // The portal lists uploaded certificates by SHA-1 thumbprint: name ours the same way.
                    Some(certificate) => format!(
                        "CertificateFile holds certificate {} ({}); {}",
                        certificate.thumbprint(),
                        certificate.subject(),
                        scrub(&description, &proof)
                    ),
                    None => scrub(&description, &proof),
                },
            },
        }
    }

    async fn pause(&mut self, wait: Wait) {
        let context = self.context;
        context
            .counters
            .retry(&context.credentials.tenant_id, retry_after_of(wait));
        // No mailbox gate here: a Retry-After is slept out too.
        pipeline::sleep_for(wait, true).await;
    }

    fn describe(&self) -> (String, String) {
        (
            "POST".into(),
            self.context.credentials.token_url.path().to_owned(),
        )
    }
}

/// The credential's proof for one token request: the client secret, a client assertion signed now, or the
/// federated token as its file holds it now. An expired certificate or an unreadable token file ends the call
/// here (Entra would refuse it; nothing is sent), naming the fix.
fn proof(credentials: &Credentials) -> Result<Secret, GraphError> {
    let refused = |problem: AuthProblem, description: String| GraphError::Auth {
        problem,
        tenant_id: credentials.tenant_id.clone(),
        client_id: credentials.client_id.clone(),
        status: None,
        aadsts: None,
        description,
    };
    match &credentials.credential {
        Credential::Secret(secret) => Ok(secret.clone()),
        Credential::Certificate(certificate) => {
            let now = chrono::Utc::now();
            if certificate.expiry(now) == Expiry::Expired {
                return Err(refused(
                    AuthProblem::CertificateExpired,
                    format!(
                        "certificate {} ({}) is valid until {}, now is {}",
                        certificate.thumbprint(),
                        certificate.subject(),
                        certificate.not_after().format("%Y-%m-%d %H:%M:%SZ"),
                        now.format("%Y-%m-%d %H:%M:%SZ")
                    ),
                ));
            }
            let jti = uuid::Uuid::new_v4().to_string();
            client_assertion(
                certificate,
                &credentials.client_id,
                credentials.token_url.as_str(),
                now,
                &jti,
            )
            .map(Secret::new)
            .map_err(|e| GraphError::Setup(format!("cannot sign the client assertion: {e}")))
        }
        Credential::FederatedToken(file) => file
            .read()
            .map_err(|reason| refused(AuthProblem::FederatedTokenUnreadable, reason)),
    }
}

/// [`auth_problem`] for a credential kind: the same code means a different fix for a certificate or a
/// federated token than for a secret.
pub(crate) fn auth_problem_for(
    kind: CredentialKind,
    error: &str,
    codes: &[u32],
    description: &str,
) -> AuthProblem {
    let code = codes
        .first()
        .copied()
        .or_else(|| aadsts_in(description))
        .unwrap_or(0);
    match kind {
        CredentialKind::Secret => auth_problem(error, codes),
        CredentialKind::Certificate => match code {
            700_027 | 50_013 if description.contains("key used is expired") => {
                AuthProblem::CertificateExpired
            }
            700_027 | 50_013 | 50_012 => AuthProblem::CertificateRejected,
            700_024 => AuthProblem::AssertionTime,
            50_027 => AuthProblem::AssertionAudience,
            _ => match auth_problem(error, codes) {
                AuthProblem::BadSecret | AuthProblem::ExpiredSecret => {
                    AuthProblem::CertificateRejected
                }
                other => other,
            },
        },
        CredentialKind::FederatedToken => match code {
            700_024 => AuthProblem::FederatedTokenTime,
            700_211 => AuthProblem::FederatedIssuer,
            700_212 => AuthProblem::FederatedAudience,
            700_213 | 7_002_137 | 7_002_138 | 70_021 => AuthProblem::FederatedSubject,
            700_027 | 50_027 => AuthProblem::FederatedSignature,
            _ => match auth_problem(error, codes) {
                AuthProblem::BadSecret | AuthProblem::ExpiredSecret => {
                    AuthProblem::FederatedSignature
                }
                other => other,
            },
        },
    }
}

/// Maps Entra's `error_codes` (preferred) or `error` to the setting that is wrong.
pub(crate) fn auth_problem(error: &str, codes: &[u32]) -> AuthProblem {
    for code in codes {
        let problem = match code {
            7_000_215 => AuthProblem::BadSecret,
            7_000_222 => AuthProblem::ExpiredSecret,
            700_016 => AuthProblem::UnknownClient,
            90_002 | 900_023 => AuthProblem::UnknownTenant,
            70_011 | 1_002_012 => AuthProblem::BadScope,
            90_055 | 90_024 => AuthProblem::Unavailable,
            _ => continue,
        };
        return problem;
    }
    match error {
        "invalid_client" => AuthProblem::BadSecret,
        "unauthorized_client" => AuthProblem::UnknownClient,
        "invalid_tenant" => AuthProblem::UnknownTenant,
        "invalid_scope" => AuthProblem::BadScope,
        "temporarily_unavailable" => AuthProblem::Unavailable,
        _ => AuthProblem::Other,
    }
}

/// The `nnnn` of the first `AADSTSnnnn` in a description.
fn aadsts_in(description: &str) -> Option<u32> {
    let start = description.find("AADSTS")? + "AADSTS".len();
    let digits: String = description[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The first line of `text`, at most 300 characters, with any occurrence of the secret replaced.
pub(crate) fn scrub(text: &str, secret: &Secret) -> String {
    // An assertion's signature part alone is enough to recognise it in an echo: scrub the whole and each part.
    let value = secret.expose();
    if value.matches('.').count() == 2 {
        let mut line = scrub_one(text, secret);
        for part in value.split('.').filter(|p| p.len() >= 16) {
            line = line.replace(part, "[redacted]");
        }
        return line;
    }
    scrub_one(text, secret)
}

fn scrub_one(text: &str, secret: &Secret) -> String {
    let first_line = text.lines().next().unwrap_or("").trim();
    let mut line: String = first_line.chars().take(300).collect();
    let value = secret.expose();
    if !value.is_empty() {
        line = line.replace(value, "[redacted]");
        // A secret cut by the 300-character limit could leave a prefix of itself; drop a trailing prefix.
        for cut in (4..value.len()).rev() {
            if let Some(prefix) = value.get(..cut) {
                if line.ends_with(prefix) {
                    line.truncate(line.len() - prefix.len());
                    line.push_str("[redacted]");
                    break;
                }
            }
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_codes_name_the_wrong_setting() {
        assert_eq!(
            auth_problem("invalid_client", &[7_000_215]),
            AuthProblem::BadSecret
        );
        assert_eq!(
            auth_problem("invalid_client", &[7_000_222]),
            AuthProblem::ExpiredSecret
        );
        assert_eq!(
            auth_problem("unauthorized_client", &[700_016]),
            AuthProblem::UnknownClient
        );
        assert_eq!(
            auth_problem("invalid_tenant", &[90_002]),
            AuthProblem::UnknownTenant
        );
        assert_eq!(
            auth_problem("invalid_request", &[900_023]),
            AuthProblem::UnknownTenant
        );
        assert_eq!(
            auth_problem("invalid_scope", &[70_011]),
            AuthProblem::BadScope
        );
        assert_eq!(auth_problem("invalid_client", &[]), AuthProblem::BadSecret);
        assert_eq!(
            auth_problem("invalid_tenant", &[]),
            AuthProblem::UnknownTenant
        );
        assert_eq!(
            auth_problem("server_error", &[90_055]),
            AuthProblem::Unavailable
        );
        assert_eq!(auth_problem("something", &[1]), AuthProblem::Other);
    }

    #[test]
    fn the_same_code_names_the_fix_of_the_credential_in_use() {
        use CredentialKind::{Certificate, FederatedToken, Secret};
        let cert = |codes: &[u32], text: &str| {
            auth_problem_for(Certificate, "invalid_client", codes, text)
        };
        assert_eq!(
            cert(&[700_027], "AADSTS700027: ... The key was not found."),
            AuthProblem::CertificateRejected
        );
        assert_eq!(
            cert(&[700_027], "AADSTS700027: Client assertion contains an invalid signature. [Reason - The key used is expired., ...]"),
            AuthProblem::CertificateExpired
        );
        assert_eq!(cert(&[700_024], ""), AuthProblem::AssertionTime);
        assert_eq!(cert(&[50_027], ""), AuthProblem::AssertionAudience);
        // No code: the description's, then `error`; a certificate is never called a bad secret.
        assert_eq!(
            cert(&[], "AADSTS50027: JWT token is invalid or malformed."),
            AuthProblem::AssertionAudience
        );
        assert_eq!(cert(&[], ""), AuthProblem::CertificateRejected);
        assert_eq!(cert(&[700_016], ""), AuthProblem::UnknownClient);
        let federated = |code: u32| auth_problem_for(FederatedToken, "invalid_client", &[code], "");
        assert_eq!(federated(700_024), AuthProblem::FederatedTokenTime);
        assert_eq!(federated(700_211), AuthProblem::FederatedIssuer);
        assert_eq!(federated(700_212), AuthProblem::FederatedAudience);
        assert_eq!(federated(700_213), AuthProblem::FederatedSubject);
        assert_eq!(federated(700_027), AuthProblem::FederatedSignature);
        assert_eq!(federated(90_002), AuthProblem::UnknownTenant);
        assert_eq!(
            auth_problem_for(Secret, "invalid_client", &[7_000_215], ""),
            AuthProblem::BadSecret
        );
    }

    #[test]
    fn an_assertion_echoed_in_a_description_is_scrubbed_part_by_part() {
        let assertion = Secret::new(format!(
            "{}.{}.{}",
            "h".repeat(20),
            "c".repeat(30),
            "s".repeat(40)
        ));
        let clean = scrub(
            &format!("bad signature {} here", "s".repeat(40)),
            &assertion,
        );
        assert!(!clean.contains(&"s".repeat(40)), "{clean}");
        assert!(clean.contains("[redacted]"), "{clean}");
    }

    #[test]
    fn aadsts_number_is_found() {
        assert_eq!(
            aadsts_in("AADSTS7000215: Invalid client secret provided."),
            Some(7_000_215)
        );
        assert_eq!(aadsts_in("nothing"), None);
    }

    #[test]
    fn scrub_removes_the_secret_and_keeps_one_line() {
        let secret = Secret::new("s3cr3t-value-123");
        let text = "AADSTS7000215: bad s3cr3t-value-123 given\r\nTrace ID: abc";
        let clean = scrub(text, &secret);
        assert_eq!(clean, "AADSTS7000215: bad [redacted] given");
        let long = format!("{}s3cr3t-val", "x".repeat(290));
        let clean = scrub(&long, &secret);
        assert!(!clean.contains("s3cr3t-val"), "{clean}");
    }

    #[test]
    fn auth_errors_never_show_the_secret() {
        let secret = Secret::new("hunter2hunter2");
        let error = GraphError::Auth {
            problem: AuthProblem::BadSecret,
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: "app".into(),
            status: Some(401),
            aadsts: Some(7_000_215),
            description: scrub(
                "AADSTS7000215: Invalid client secret hunter2hunter2",
                &secret,
            ),
        };
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("ClientSecret"), "{shown}");
        assert!(shown.contains("AADSTS7000215"), "{shown}");
    }
}
