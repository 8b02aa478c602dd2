//! Certificates and tokens for tests and labs, made when asked (no private key is ever committed): a
//! self-signed RSA certificate for an app registration, and a federated token signed like a Kubernetes
//! cluster's service-account token.

use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use serde_json::json;

/// A generated certificate: the PEM a client is configured with (private key then certificate) and the
/// certificate alone (what is uploaded to the app registration).
#[derive(Clone)]
pub struct TestCertificate {
    /// `-----BEGIN PRIVATE KEY-----` … then `-----BEGIN CERTIFICATE-----` ….
    pub key_and_certificate_pem: String,
    /// The certificate alone.
    pub certificate_pem: String,
    /// The private key alone (PKCS#8 DER), e.g. to build a PKCS#12 file.
    pub key_pkcs8_der: Vec<u8>,
    /// The certificate DER.
    pub certificate_der: Vec<u8>,
    key: std::sync::Arc<rcgen::KeyPair>,
}

impl std::fmt::Debug for TestCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCertificate")
    }
}

impl TestCertificate {
    /// A 2048-bit RSA certificate for `CN=<common_name>`, valid from `not_before` to `not_after` (whole days).
    pub fn new(common_name: &str, not_before: DateTime<Utc>, not_after: DateTime<Utc>) -> Self {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key generation");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = rcgen::date_time_ymd(
            not_before.year(),
            not_before.month() as u8,
            not_before.day() as u8,
        );
        params.not_after = rcgen::date_time_ymd(
            not_after.year(),
            not_after.month() as u8,
            not_after.day() as u8,
        );
        let certificate = params.self_signed(&key).expect("self-signed certificate");
        let certificate_pem = certificate.pem();
        Self {
            key_and_certificate_pem: format!("{}{}", key.serialize_pem(), certificate_pem),
            certificate_pem,
            key_pkcs8_der: key.serialize_der(),
            certificate_der: certificate.der().to_vec(),
            key: std::sync::Arc::new(key),
        }
    }

    /// Valid from yesterday for `days` days.
    pub fn valid_for_days(common_name: &str, days: i64) -> Self {
        let now = Utc::now();
        Self::new(
            common_name,
            now - chrono::Duration::days(1),
            now + chrono::Duration::days(days),
        )
    }

    /// Expired since `days` days.
    pub fn expired_since_days(common_name: &str, days: i64) -> Self {
        let now = Utc::now();
        Self::new(
            common_name,
            now - chrono::Duration::days(days + 365),
            now - chrono::Duration::days(days),
        )
    }

    /// `x5t`: base64url of the certificate's SHA-1.
    pub fn x5t(&self) -> String {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &self.certificate_der,
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// `x5t#S256`: base64url of the certificate's SHA-256.
    pub fn x5t_s256(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.certificate_der);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// An RS256 JWT with these claims, signed with this certificate's key (a federated issuer's token).
    pub fn sign_jwt(&self, claims: &serde_json::Value) -> String {
        self.sign_jwt_with(
            &json!({"alg": "RS256", "typ": "JWT", "kid": "test"}),
            claims,
        )
    }

    /// An RS256 JWT with this header and these claims, signed with this certificate's key.
    pub fn sign_jwt_with(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            engine.encode(header.to_string()),
            engine.encode(claims.to_string())
        );
        let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&self.key.serialize_der())
            .expect("RSA key");
        let mut signature = vec![0u8; pair.public_modulus_len()];
        pair.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .expect("signing");
        format!("{input}.{}", engine.encode(signature))
    }
}

/// A Kubernetes-style service-account token from `issuer` for `subject`, with `audience`, valid from now for
/// `lifetime_secs` (negative: already expired).
pub fn federated_token(
    issuer_key: &TestCertificate,
    issuer: &str,
    subject: &str,
    audience: &str,
    lifetime_secs: i64,
) -> String {
    let now = Utc::now().timestamp();
    let (nbf, exp) = if lifetime_secs >= 0 {
        (now, now + lifetime_secs)
    } else {
        (now + lifetime_secs - 3600, now + lifetime_secs)
    };
    issuer_key.sign_jwt(&json!({
        "iss": issuer, "sub": subject, "aud": [audience], "iat": nbf, "nbf": nbf, "exp": exp,
        "kubernetes.io": {"namespace": "contactmirror", "serviceaccount": {"name": "contactmirror"}},
    }))
}
