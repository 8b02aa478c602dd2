//! An app registration's certificate: the RSA private key that signs client assertions and the X.509 certificate
//! whose public part is uploaded to the app, read from PEM (key and certificate in one file) or PKCS#12.
//!
//! The key never leaves this type: `Debug` and `Display` show the thumbprint, the subject and the expiry, which
//! are public (Entra shows them too).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PSS_SHA256};
use chrono::{DateTime, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate file cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The file holds no certificate.
    #[error("no certificate found, expected a PEM file with -----BEGIN CERTIFICATE----- or a PKCS#12 (.pfx) file")]
    NoCertificate,
    /// The file holds no private key.
    #[error("no private key found, expected the certificate's private key in the same PEM file (-----BEGIN PRIVATE KEY----- or RSA PRIVATE KEY) or a PKCS#12 (.pfx) file")]
    NoPrivateKey,
    /// An encrypted PEM key: give a PKCS#12 with a password instead.
    #[error("the PEM private key is encrypted; use an unencrypted PEM key, or a PKCS#12 (.pfx) file with CertificatePasswordFile")]
    EncryptedPem,
    /// Not an RSA key (Entra signs client assertions with RSA only).
    #[error("the private key is not an RSA key (2048 bits or more), which Entra requires for client assertions")]
    NotRsa,
    /// The key does not belong to any certificate in the file.
    #[error("the private key does not belong to the certificate in the file")]
    KeyMismatch,
    /// PKCS#12 could not be opened.
    #[error("cannot open the PKCS#12 file: wrong CertificatePasswordFile or a damaged file")]
    Pkcs12,
    /// The certificate does not parse.
    #[error("the certificate is not valid X.509: {0}")]
    BadCertificate(String),
}

/// Where a certificate stands against the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Valid for more than the warning period.
    Valid,
    /// Valid, but expires within the warning period: this many whole days are left.
    ExpiresSoon {
        /// Whole days left (0 = expires within a day).
        days_left: i64,
    },
    /// Expired (or not yet valid): Entra refuses assertions signed with it.
    Expired,
}

/// The warning period before a certificate's expiry.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// A client certificate with its private key. Cheap to clone.
#[derive(Clone)]
pub struct ClientCertificate {
    inner: Arc<Inner>,
}

struct Inner {
    key: RsaKeyPair,
    sha1: [u8; 20],
    sha256: [u8; 32],
    subject: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl ClientCertificate {
    /// Reads a PEM file (key and certificate) or, when the bytes are not PEM, a PKCS#12 file opened with
    /// `password` (empty when none is given).
    pub fn from_bytes(bytes: &[u8], password: Option<&str>) -> Result<Self, CertificateError> {
        let looks_pem = bytes
            .windows(b"-----BEGIN".len())
            .any(|w| w == b"-----BEGIN");
        if looks_pem {
            Self::from_pem(bytes)
        } else {
            Self::from_pkcs12(bytes, password.unwrap_or(""))
        }
    }

    /// A PEM file holding an unencrypted RSA private key (PKCS#8 or PKCS#1) and its certificate (a chain may
    /// follow; the certificate matching the key is used).
    pub fn from_pem(pem: &[u8]) -> Result<Self, CertificateError> {
        let text = String::from_utf8_lossy(pem);
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || text.contains("Proc-Type: 4,ENCRYPTED")
        {
            return Err(CertificateError::EncryptedPem);
        }
        let key = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .map_err(|_| CertificateError::NotRsa)?,
            Ok(PrivateKeyDer::Pkcs1(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|_| CertificateError::NotRsa)?,
            Ok(_) => return Err(CertificateError::NotRsa),
            Err(_) => return Err(CertificateError::NoPrivateKey),
        };
        let certificates: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .map(|der| der.as_ref().to_vec())
            .collect();
        Self::pair(key, &certificates)
    }

    /// A PKCS#12 (.pfx) file with its password.
    pub fn from_pkcs12(bytes: &[u8], password: &str) -> Result<Self, CertificateError> {
        let store = p12_keystore::KeyStore::from_pkcs12(bytes, password)
            .map_err(|_| CertificateError::Pkcs12)?;
        let Some((_, chain)) = store.private_key_chain() else {
            return Err(CertificateError::NoPrivateKey);
        };
        let key = RsaKeyPair::from_pkcs8(chain.key())
            .or_else(|_| RsaKeyPair::from_der(chain.key()))
            .map_err(|_| CertificateError::NotRsa)?;
        let certificates: Vec<Vec<u8>> =
            chain.chain().iter().map(|c| c.as_der().to_vec()).collect();
        Self::pair(key, &certificates)
    }

    /// The key with the certificate whose public key is the key's.
    fn pair(key: RsaKeyPair, certificates: &[Vec<u8>]) -> Result<Self, CertificateError> {
        if certificates.is_empty() {
            return Err(CertificateError::NoCertificate);
        }
        let public = key.public_key().as_ref().to_vec();
        let mut first_error = None;
        for der in certificates {
            match parse(der) {
                Ok(parsed) if parsed.public_key == public => {
                    let mut sha1 = [0u8; 20];
                    sha1.copy_from_slice(
                        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
                    );
                    let mut sha256 = [0u8; 32];
                    sha256.copy_from_slice(digest::digest(&digest::SHA256, der).as_ref());
                    return Ok(Self {
                        inner: Arc::new(Inner {
                            key,
                            sha1,
                            sha256,
                            subject: parsed.subject,
                            not_before: parsed.not_before,
                            not_after: parsed.not_after,
                        }),
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or(CertificateError::KeyMismatch))
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Entra portal lists uploaded certificates.
    pub fn thumbprint(&self) -> String {
        hex_upper(&self.inner.sha1)
    }

    /// `x5t#S256`: base64url of the SHA-256 of the certificate.
    pub fn x5t_s256(&self) -> String {
        crate::credential::assertion::b64url(&self.inner.sha256)
    }

    /// The certificate's subject (`CN=contactmirror`).
    pub fn subject(&self) -> &str {
        &self.inner.subject
    }

    /// End of validity.
    pub fn not_after(&self) -> DateTime<Utc> {
        self.inner.not_after
    }

    /// Where the certificate stands at `now`.
    pub fn expiry(&self, now: DateTime<Utc>) -> Expiry {
        if now >= self.inner.not_after || now < self.inner.not_before {
            return Expiry::Expired;
        }
        let left = self.inner.not_after - now;
        if left < chrono::Duration::days(EXPIRY_WARNING_DAYS) {
            Expiry::ExpiresSoon {
                days_left: left.num_days(),
            }
        } else {
            Expiry::Valid
        }
    }

    /// RSASSA-PSS with SHA-256 (JWT `PS256`) over `message`.
    pub(crate) fn sign_ps256(&self, message: &[u8]) -> Result<Vec<u8>, CertificateError> {
        let mut signature = vec![0u8; self.inner.key.public_modulus_len()];
        self.inner
            .key
            .sign(
                &RSA_PSS_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| CertificateError::NotRsa)?;
        Ok(signature)
    }
}

impl PartialEq for ClientCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.inner.sha256 == other.inner.sha256
    }
}

impl Eq for ClientCertificate {}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("thumbprint", &self.thumbprint())
            .field("subject", &self.inner.subject)
            .field("not_after", &self.inner.not_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ClientCertificate {
    /// `certificate 1A2B… (CN=…, expires 2027-01-01)`; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate {} ({}, expires {})",
            self.thumbprint(),
            self.inner.subject,
            self.inner.not_after.format("%Y-%m-%d")
        )
    }
}

/// What is read from a certificate.
struct Parsed {
    public_key: Vec<u8>,
    subject: String,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

fn parse(der: &[u8]) -> Result<Parsed, CertificateError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertificateError::BadCertificate(e.to_string()))?;
    let time = |t: &x509_parser::time::ASN1Time| {
        DateTime::<Utc>::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| CertificateError::BadCertificate("validity out of range".into()))
    };
    let validity = certificate.validity();
    Ok(Parsed {
        public_key: certificate.public_key().subject_public_key.data.to_vec(),
        subject: certificate.subject().to_string(),
        not_before: time(&validity.not_before)?,
        not_after: time(&validity.not_after)?,
    })
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}
