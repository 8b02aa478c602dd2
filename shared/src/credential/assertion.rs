//! The signed client assertion (a JWT) that replaces the client secret in the token request when the app
//! authenticates with a certificate (Entra's "certificate credentials").
//!
//! Built fresh for every token request: `aud` is the token endpoint the request goes to, `iss` = `sub` = the
//! client id, a new `jti`, `nbf` = `iat` = now and `exp` ten minutes later; header `PS256` with `x5t#S256` (the
//! SHA-256 of the certificate) so Entra finds the certificate among the app's uploaded ones.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::certificate::{CertificateError, ClientCertificate};

/// How long an assertion is valid: Entra wants a short one (10 minutes is what Microsoft's libraries send).
pub const ASSERTION_LIFETIME_SECS: i64 = 600;

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A signed assertion for `client_id` at `audience` (the token endpoint URL), issued at `now` with id `jti`.
pub fn client_assertion(
    certificate: &ClientCertificate,
    client_id: &str,
    audience: &str,
    now: DateTime<Utc>,
    jti: &str,
) -> Result<String, CertificateError> {
    let header = json!({"alg": "PS256", "typ": "JWT", "x5t#S256": certificate.x5t_s256()});
    let issued = now.timestamp();
    let claims = json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": jti,
        "nbf": issued,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = certificate.sign_ps256(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64url(&signature)))
}

/// Unpadded base64url, as JWTs use it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
