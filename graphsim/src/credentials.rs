//! What an app registration trusts besides its secret: uploaded certificates (Entra's `keyCredentials`) and
//! federated identity credentials (issuer, subject, audiences), and the checks of a client assertion (a JWT)
//! against them, answering the AADSTS code Entra uses for each mistake.
//!
//! Real Entra fetches a federated issuer's keys from its OIDC discovery document; here the issuer's signing
//! certificate is registered with the federated credential instead.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    UnparsedPublicKey, VerificationAlgorithm, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
};
use base64::Engine;
use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The audience Entra expects in federated tokens unless the credential lists another.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// How far a client's clock may be off (Entra allows a few minutes).
const CLOCK_SKEW_SECS: i64 = 300;

/// A federated identity credential of an app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedCredentialSeed {
    /// The external issuer (`iss`), e.g. a cluster's OIDC issuer URL. Compared exactly.
    pub issuer: String,
    /// The subject (`sub`), e.g. `system:serviceaccount:contactmirror:contactmirror`. Compared exactly.
    pub subject: String,
    /// Accepted audiences (default `api://AzureADTokenExchange`).
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// PEM certificate of the issuer's signing key (stands for the issuer's published JWKS).
    pub issuer_certificate: String,
}

fn default_audiences() -> Vec<String> {
    vec![TOKEN_EXCHANGE_AUDIENCE.to_owned()]
}

/// A certificate uploaded to an app registration (only its public part).
#[derive(Debug, Clone)]
pub struct AppCertificate {
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    /// RSAPublicKey DER.
    public_key: Vec<u8>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl AppCertificate {
    /// Reads the first certificate of a PEM text (a private key in the same text is ignored, as the portal
    /// only keeps the public part).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .filter_map(Result::ok)
            .next()
            .ok_or_else(|| "no -----BEGIN CERTIFICATE----- block".to_owned())?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let time = |t: &x509_parser::time::ASN1Time| {
            DateTime::<Utc>::from_timestamp(t.timestamp(), 0)
                .ok_or_else(|| "validity out of range".to_owned())
        };
        Ok(Self {
            sha1: digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der.as_ref())
                .as_ref()
                .to_vec(),
            sha256: digest::digest(&digest::SHA256, der.as_ref())
                .as_ref()
                .to_vec(),
            public_key: parsed.public_key().subject_public_key.data.to_vec(),
            not_before: time(&parsed.validity().not_before)?,
            not_after: time(&parsed.validity().not_after)?,
        })
    }

    fn found_key(&self) -> String {
        format!(
            "Found key 'Start={}, End={}'",
            self.not_before.format("%m/%d/%Y %H:%M:%S"),
            self.not_after.format("%m/%d/%Y %H:%M:%S")
        )
    }
}

/// A registered federated credential, its issuer key parsed.
#[derive(Debug, Clone)]
pub struct FederatedCredential {
    /// As registered.
    pub seed: FederatedCredentialSeed,
    issuer_key: AppCertificate,
}

impl FederatedCredential {
    /// Parses the issuer certificate.
    pub fn new(seed: FederatedCredentialSeed) -> Result<Self, String> {
        let issuer_key = AppCertificate::from_pem(&seed.issuer_certificate)?;
        Ok(Self { seed, issuer_key })
    }
}

/// An Entra refusal: HTTP status, `error`, AADSTS code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// OAuth `error`.
    pub error: &'static str,
    /// AADSTS number.
    pub code: u32,
    /// The description after `AADSTSnnnn: `.
    pub text: String,
}

fn refuse(status: u16, error: &'static str, code: u32, text: String) -> Refusal {
    Refusal {
        status,
        error,
        code,
        text,
    }
}

/// A decoded JWT.
struct Jwt {
    header: Value,
    claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

fn decode(token: &str) -> Option<Jwt> {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&engine.decode(h).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&engine.decode(c).ok()?).ok()?;
    Some(Jwt {
        header,
        claims,
        signing_input: format!("{h}.{c}"),
        signature: engine.decode(s).ok()?,
    })
}

impl Jwt {
    fn claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    fn time(&self, name: &str) -> Option<i64> {
        self.claims.get(name).and_then(Value::as_i64)
    }

    /// RS256 or PS256 with `public_key` (RSAPublicKey DER).
    fn verifies_with(&self, public_key: &[u8]) -> bool {
        let algorithm: &dyn VerificationAlgorithm =
            match self.header.get("alg").and_then(Value::as_str) {
                Some("RS256") => &RSA_PKCS1_2048_8192_SHA256,
                Some("PS256") => &RSA_PSS_2048_8192_SHA256,
                _ => return false,
            };
        UnparsedPublicKey::new(algorithm, public_key)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .is_ok()
    }

    /// `nbf`..`exp` around now, with Entra's skew; AADSTS700024 otherwise.
    fn check_time(&self, now: DateTime<Utc>) -> Result<(), Refusal> {
        let (Some(exp), nbf) = (self.time("exp"), self.time("nbf")) else {
            return Err(malformed());
        };
        let at = now.timestamp();
        let fmt = |t: i64| entra_time(DateTime::<Utc>::from_timestamp(t, 0).unwrap_or_default());
        if at > exp + CLOCK_SKEW_SECS || nbf.is_some_and(|nbf| at + CLOCK_SKEW_SECS < nbf) {
            return Err(refuse(
                401,
                "invalid_client",
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, \
                     expiry time of assertion {}. Review the documentation at \
                     https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    entra_time(now),
                    fmt(nbf.unwrap_or(0)),
                    fmt(exp)
                ),
            ));
        }
        Ok(())
    }
}

/// `2024-10-02T22:05:03.6755165Z`: Entra's seven fractional digits.
fn entra_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// AADSTS50027, Entra's answer to an assertion it cannot use as a JWT for this request (status assumed 400).
fn malformed() -> Refusal {
    refuse(
        400,
        "invalid_request",
        50027,
        "JWT token is invalid or malformed.".to_owned(),
    )
}

/// Checks a client assertion for `client_id` sent to `token_url` (scheme aside: the URL the client was told
/// to use, as seen from the `Host` header).
pub fn check_assertion(
    assertion: &str,
    client_id: &str,
    token_url_host: &str,
    tenant_in_path: &str,
    certificates: &[AppCertificate],
    federated: &[FederatedCredential],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let jwt = decode(assertion).ok_or_else(malformed)?;
    let issuer = jwt.claim("iss").unwrap_or_default();
    if issuer.eq_ignore_ascii_case(client_id) {
        check_certificate_assertion(
            &jwt,
            client_id,
            token_url_host,
            tenant_in_path,
            certificates,
            now,
        )
    } else {
        check_federated_token(&jwt, federated, now)
    }
}

/// The app's own assertion, signed with one of its certificates.
fn check_certificate_assertion(
    jwt: &Jwt,
    client_id: &str,
    host: &str,
    tenant_in_path: &str,
    certificates: &[AppCertificate],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if !jwt
        .claim("sub")
        .is_some_and(|s| s.eq_ignore_ascii_case(client_id))
    {
        return Err(refuse(
            401,
            "invalid_client",
            50048,
            "Subject must match the issuer claim in the client assertion.".to_owned(),
        ));
    }
    let audience_ok = jwt
        .claim("aud")
        .and_then(|a| url::Url::parse(a).ok())
        .is_some_and(|aud| {
            let authority = match aud.port() {
                Some(port) => format!("{}:{port}", aud.host_str().unwrap_or_default()),
                None => aud.host_str().unwrap_or_default().to_owned(),
            };
            authority.eq_ignore_ascii_case(host)
                && aud
                    .path()
                    .eq_ignore_ascii_case(&format!("/{tenant_in_path}/oauth2/v2.0/token"))
        });
    if !audience_ok {
        return Err(malformed());
    }
    jwt.check_time(now)?;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let by_s256 = jwt
        .header
        .get("x5t#S256")
        .and_then(Value::as_str)
        .and_then(|t| engine.decode(t).ok());
    let by_sha1 = jwt
        .header
        .get("x5t")
        .and_then(Value::as_str)
        .and_then(|t| engine.decode(t).ok());
    let shown = by_s256
        .as_deref()
        .or(by_sha1.as_deref())
        .map(|b| b.iter().map(|x| format!("{x:02X}")).collect::<String>())
        .unwrap_or_default();
    let found = certificates.iter().find(|c| {
        by_s256.as_deref() == Some(c.sha256.as_slice())
            || by_sha1.as_deref() == Some(c.sha1.as_slice())
    });
    let invalid = |reason: &str, found: Option<&AppCertificate>| {
        refuse(
            401,
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - {reason}, Thumbprint of key used by client: \
                 '{shown}', {}Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured \
                 keys for app Id '{client_id}'.]",
                found.map(|c| format!("{}, ", c.found_key())).unwrap_or_default()
            ),
        )
    };
    let Some(certificate) = found else {
        return Err(invalid("The key was not found.", None));
    };
    if now >= certificate.not_after || now < certificate.not_before {
        return Err(invalid("The key used is expired.", Some(certificate)));
    }
    if !jwt.verifies_with(&certificate.public_key) {
        return Err(invalid(
            "The provided signature value did not match the expected signature value.",
            Some(certificate),
        ));
    }
    Ok(())
}

/// A token of an external issuer, matched against the app's federated credentials.
fn check_federated_token(
    jwt: &Jwt,
    federated: &[FederatedCredential],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let issuer = jwt.claim("iss").unwrap_or_default();
    let subject = jwt.claim("sub").unwrap_or_default();
    let check = "Please check your federated identity credential Subject, Audience and Issuer against the presented \
                 assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation";
    let by_issuer: Vec<&FederatedCredential> = federated
        .iter()
        .filter(|f| f.seed.issuer == issuer)
        .collect();
    if by_issuer.is_empty() {
        return Err(refuse(
            401,
            "invalid_client",
            700211,
            format!("No matching federated identity record found for presented assertion issuer '{issuer}'. {check}"),
        ));
    }
    if !by_issuer
        .iter()
        .any(|f| jwt.verifies_with(&f.issuer_key.public_key))
    {
        return Err(refuse(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation.".to_owned(),
        ));
    }
    jwt.check_time(now)?;
    let by_subject: Vec<&&FederatedCredential> = by_issuer
        .iter()
        .filter(|f| f.seed.subject == subject)
        .collect();
    if by_subject.is_empty() {
        return Err(refuse(
            401,
            "invalid_client",
            700213,
            format!("No matching federated identity record found for presented assertion subject '{subject}'. {check}"),
        ));
    }
    let audiences: Vec<&str> = match jwt.claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let matched = by_subject.iter().any(|f| {
        audiences
            .iter()
            .any(|a| f.seed.audiences.iter().any(|want| want == a))
    });
    if !matched {
        return Err(refuse(
            401,
            "invalid_client",
            700212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'. {check}",
                audiences.join(",")
            ),
        ));
    }
    Ok(())
}
