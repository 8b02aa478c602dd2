//! How a tenant's app proves who it is to Entra: a client secret, a certificate, or a federated token
//! (workload identity). Exactly one per tenant (`config` checks that).
//!
//! - [`certificate`]: the certificate and its key, read from PEM or PKCS#12; expiry.
//! - [`assertion`]: the signed client assertion (JWT) built from the certificate for each token request.
//! - [`FederatedTokenFile`]: a token another identity provider writes to a file (a Kubernetes projected
//!   service-account token), read again for every token request because it is rotated underneath us.

pub mod assertion;
pub mod certificate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use certificate::{CertificateError, ClientCertificate, Expiry, EXPIRY_WARNING_DAYS};

use crate::secret::Secret;

/// One tenant's credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// `ClientSecret` / `ClientSecretFile`.
    Secret(Secret),
    /// `CertificateFile` (+ `CertificatePasswordFile` for PKCS#12).
    Certificate(ClientCertificate),
    /// `FederatedTokenFile`.
    FederatedToken(FederatedTokenFile),
}

/// Which kind of credential, for messages that name the setting to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A client secret.
    Secret,
    /// A certificate.
    Certificate,
    /// A federated token.
    FederatedToken,
}

impl Credential {
    /// The kind.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Secret(_) => CredentialKind::Secret,
            Credential::Certificate(_) => CredentialKind::Certificate,
            Credential::FederatedToken(_) => CredentialKind::FederatedToken,
        }
    }

    /// The client secret, when the credential is one.
    pub fn client_secret(&self) -> Option<&Secret> {
        match self {
            Credential::Secret(secret) => Some(secret),
            _ => None,
        }
    }

    /// The certificate, when the credential is one.
    pub fn certificate(&self) -> Option<&ClientCertificate> {
        match self {
            Credential::Certificate(certificate) => Some(certificate),
            _ => None,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(secret) => write!(f, "Secret({secret:?})"),
            Credential::Certificate(certificate) => write!(f, "Certificate({certificate:?})"),
            Credential::FederatedToken(file) => write!(f, "FederatedToken({file:?})"),
        }
    }
}

impl fmt::Display for Credential {
    /// `secret [redacted]`, `certificate 1A2B… (CN=…, expires …)` or `federated token file /var/run/…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(secret) => write!(f, "secret {secret}"),
            Credential::Certificate(certificate) => write!(f, "{certificate}"),
            Credential::FederatedToken(file) => {
                write!(f, "federated token file {}", file.path().display())
            }
        }
    }
}

/// The warning a run gives (once, in the log and the run report) for a tenant whose certificate expires within
/// [`EXPIRY_WARNING_DAYS`]; `None` for any other credential or a certificate with time left. An expired one
/// gets no warning: its token request fails the tenant, naming the fix.
pub fn expiry_warning(
    tenant_id: &str,
    credential: &Credential,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let certificate = credential.certificate()?;
    match certificate.expiry(now) {
        Expiry::ExpiresSoon { days_left } => Some(format!(
            "tenant {tenant_id}: the certificate {} expires on {} (in {days_left} day(s)): create a new one, upload \
             its public part to the app registration and point CertificateFile at it before then",
            certificate.thumbprint(),
            certificate.not_after().format("%Y-%m-%d"),
        )),
        Expiry::Valid | Expiry::Expired => None,
    }
}

/// The file a workload-identity token is projected into. Its content is a bearer credential: read only to send
/// it, never shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedTokenFile(PathBuf);

impl FederatedTokenFile {
    /// A token file at `path` (not read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    /// Where the token is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The token as it is now (the file is rotated; read it for every token request). Errors name the file and
    /// the I/O failure, never content.
    pub fn read(&self) -> Result<Secret, String> {
        let text = std::fs::read_to_string(&self.0).map_err(|error| {
            format!(
                "cannot read FederatedTokenFile {}: {}",
                self.0.display(),
                error.kind()
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!(
                "FederatedTokenFile {} is empty, expected the projected service-account token",
                self.0.display()
            ));
        }
        Ok(Secret::new(token))
    }
}
