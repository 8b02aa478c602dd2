//! Certificate and federated credentials end to end: configuration files -> the Graph client -> graphsim's
//! token endpoint, which checks the assertions as Entra does. Each mistake an operator can make fails with a
//! message naming the fix, and no key, assertion or token ever shows in an error.
//!
//! Certificates and tokens are generated at test time (`graphsim::test_credentials`); nothing secret is committed.

use std::path::{Path, PathBuf};

use graphsim::credentials::FederatedCredentialSeed;
use graphsim::test_credentials::{federated_token, TestCertificate};
use graphsim::{Sim, SimConfig, TenantSeed, UserSeed};
use serde_json::{json, Value};
use shared::config::{ConfigError, Settings, TenantSettings};
use shared::credential::{CredentialKind, Expiry};
use shared::graph::{AuthProblem, ClientOptions, ErrorKind, GraphClient, GraphError};

const TENANT: &str = "fabrikam.onmicrosoft.com";
const CLIENT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const ALICE: &str = "alice@fabrikam.onmicrosoft.com";
const ISSUER: &str = "https://oidc.cluster.example/abc123";
const SUBJECT: &str = "system:serviceaccount:contactmirror:contactmirror";

/// A scratch directory of its own per test.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-credentials-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn sim() -> Sim {
    let sim = graphsim::spawn(SimConfig::default())
        .await
        .expect("graphsim starts");
    sim.add_tenant(TenantSeed::new(
        TENANT,
        CLIENT,
        "the-secret-is-not-used-here",
    ));
    sim.add_user(TENANT, UserSeed::member(ALICE, "Alice"));
    sim
}

/// Loads one tenant whose credential keys are `credential` from a configuration file in `dir`.
fn load(sim: &Sim, dir: &Path, credential: Value) -> Result<TenantSettings, ConfigError> {
    let mut tenant = json!({
        "TenantId": TENANT,
        "ClientId": CLIENT,
        "GlobalAddressBookUserId": ALICE,
        "AuthorityHost": sim.authority_url(),
        "GraphEndpoint": sim.graph_url(),
    });
    for (key, value) in credential.as_object().expect("credential keys") {
        tenant[key] = value.clone();
    }
    let path = dir.join("config.json");
    std::fs::write(&path, json!({"MicrosoftTenants": [tenant]}).to_string()).expect("config");
    Settings::from_sources(&|_| None, Some(&path)).map(|s| s.tenants[0].clone())
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    path.display().to_string()
}

fn client() -> GraphClient {
    GraphClient::new(ClientOptions {
        max_attempts: 2,
        ..ClientOptions::default()
    })
    .expect("client")
}

/// Reads Alice through Graph: a token is needed first.
async fn read_alice(settings: &TenantSettings) -> Result<(), GraphError> {
    client().tenant(settings).user(ALICE).await.map(|_| ())
}

fn auth_problem(error: &GraphError) -> AuthProblem {
    match error.kind() {
        ErrorKind::Auth(problem) => problem,
        other => panic!("expected an authentication error, got {other:?}: {error}"),
    }
}

/// The base64 body lines of every PEM block in `pem` (key material), long enough to be unmistakable.
fn pem_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

fn assert_shows_none(text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(!text.contains(secret.as_str()), "a secret shows in: {text}");
    }
}

#[tokio::test]
async fn a_certificate_in_pem_authenticates_with_a_signed_assertion() {
    let sim = sim().await;
    let dir = scratch();
    let certificate = TestCertificate::valid_for_days("contactmirror", 365);
    sim.add_app_certificate(TENANT, &certificate.certificate_pem)
        .expect("upload");
    let file = write(&dir, "app.pem", &certificate.key_and_certificate_pem);
    let settings = load(&sim, &dir, json!({"CertificateFile": "app.pem"})).expect("loads");
    assert_eq!(settings.credential.kind(), CredentialKind::Certificate);
    read_alice(&settings)
        .await
        .expect("a token from the certificate");
    assert_eq!(sim.stats().token_requests, 1);
    // The configuration shows the thumbprint, never the key.
    let shown = format!("{settings} {settings:?}");
    assert!(
        shown.contains(
            &settings
                .credential
                .certificate()
                .expect("cert")
                .thumbprint()
        ),
        "{shown}"
    );
    assert_shows_none(
        &shown,
        &pem_lines(&certificate.key_and_certificate_pem)[..3],
    );
    drop(file);
}

#[tokio::test]
async fn a_password_protected_pkcs12_authenticates() {
    let sim = sim().await;
    let dir = scratch();
    let certificate = TestCertificate::valid_for_days("contactmirror-pfx", 365);
    sim.add_app_certificate(TENANT, &certificate.certificate_pem)
        .expect("upload");
    let chain = p12_keystore::PrivateKeyChain::new(
        certificate.key_pkcs8_der.clone(),
        [1u8; 20],
        [p12_keystore::Certificate::from_der(&certificate.certificate_der).expect("der")],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("app", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    let pfx = store.writer("pfx-password-1").write().expect("pkcs12");
    write(&dir, "app.pfx", &pfx);
    write(&dir, "app.pfx.password", "pfx-password-1\n");
    let settings = load(
        &sim,
        &dir,
        json!({"CertificateFile": "app.pfx", "CertificatePasswordFile": "app.pfx.password"}),
    )
    .expect("loads");
    read_alice(&settings)
        .await
        .expect("a token from the PKCS#12 certificate");

    // A wrong password is a configuration error naming the key and the fix, without the password.
    write(&dir, "app.pfx.password", "not-the-password\n");
    let error = load(
        &sim,
        &dir,
        json!({"CertificateFile": "app.pfx", "CertificatePasswordFile": "app.pfx.password"}),
    )
    .expect_err("a wrong password");
    let shown = error.to_string();
    assert!(shown.contains("CertificateFile"), "{shown}");
    assert!(shown.contains("CertificatePasswordFile"), "{shown}");
    assert!(!shown.contains("not-the-password"), "{shown}");
}

#[tokio::test]
async fn a_certificate_not_uploaded_to_the_app_fails_naming_the_upload_and_thumbprint() {
    let sim = sim().await;
    let dir = scratch();
    let uploaded = TestCertificate::valid_for_days("uploaded", 365);
    let other = TestCertificate::valid_for_days("other", 365);
    sim.add_app_certificate(TENANT, &uploaded.certificate_pem)
        .expect("upload");
    write(&dir, "app.pem", &other.key_and_certificate_pem);
    let settings = load(&sim, &dir, json!({"CertificateFile": "app.pem"})).expect("loads");
    let error = read_alice(&settings)
        .await
        .expect_err("the wrong certificate");
    assert_eq!(auth_problem(&error), AuthProblem::CertificateRejected);
    let shown = format!("{error}");
    assert!(shown.contains("AADSTS700027"), "{shown}");
    assert!(
        shown.contains("upload the public part of CertificateFile"),
        "{shown}"
    );
    // Entra names the key it was given: the operator compares it with the portal's list.
    let thumbprint = settings
        .credential
        .certificate()
        .expect("cert")
        .thumbprint();
    assert!(
        shown.contains("Thumbprint of key used by client"),
        "{shown}"
    );
    assert!(!thumbprint.is_empty());
    assert_shows_none(
        &format!("{error} {error:?}"),
        &pem_lines(&other.key_and_certificate_pem),
    );
}

#[tokio::test]
async fn an_expired_certificate_fails_before_asking_naming_the_renewal() {
    let sim = sim().await;
    let dir = scratch();
    let expired = TestCertificate::expired_since_days("expired", 3);
    sim.add_app_certificate(TENANT, &expired.certificate_pem)
        .expect("upload");
    write(&dir, "app.pem", &expired.key_and_certificate_pem);
    // It loads (so the other tenants of the document still run) ...
    let settings = load(&sim, &dir, json!({"CertificateFile": "app.pem"})).expect("loads");
    let certificate = settings.credential.certificate().expect("cert");
    assert_eq!(certificate.expiry(chrono::Utc::now()), Expiry::Expired);
    // ... and fails this tenant's token, naming the fix, without asking Entra.
    let error = read_alice(&settings).await.expect_err("expired");
    assert_eq!(auth_problem(&error), AuthProblem::CertificateExpired);
    let shown = error.to_string();
    assert!(shown.contains("has expired"), "{shown}");
    assert!(
        shown.contains("create a new one, upload its public part"),
        "{shown}"
    );
    assert!(shown.contains(&certificate.thumbprint()), "{shown}");
    assert_eq!(sim.stats().token_requests, 0, "nothing was sent");
}

#[test]
fn a_certificate_expiring_within_thirty_days_is_flagged() {
    let soon = TestCertificate::valid_for_days("soon", 10);
    let later = TestCertificate::valid_for_days("later", 90);
    let load =
        |pem: &str| shared::credential::ClientCertificate::from_pem(pem.as_bytes()).expect("pem");
    let now = chrono::Utc::now();
    assert!(matches!(
        load(&soon.key_and_certificate_pem).expiry(now),
        Expiry::ExpiresSoon { days_left } if (8..=10).contains(&days_left)
    ));
    assert_eq!(
        load(&later.key_and_certificate_pem).expiry(now),
        Expiry::Valid
    );
}

#[test]
fn unusable_certificate_files_are_refused_naming_what_is_wrong() {
    use shared::credential::{CertificateError, ClientCertificate};
    let a = TestCertificate::valid_for_days("a", 30);
    let b = TestCertificate::valid_for_days("b", 30);
    assert_eq!(
        ClientCertificate::from_pem(a.certificate_pem.as_bytes()).err(),
        Some(CertificateError::NoPrivateKey)
    );
    let key_only = a.key_and_certificate_pem.replace(&a.certificate_pem, "");
    assert_eq!(
        ClientCertificate::from_pem(key_only.as_bytes()).err(),
        Some(CertificateError::NoCertificate)
    );
    let mismatched = a
        .key_and_certificate_pem
        .replace(&a.certificate_pem, &b.certificate_pem);
    assert_eq!(
        ClientCertificate::from_pem(mismatched.as_bytes()).err(),
        Some(CertificateError::KeyMismatch)
    );
    let encrypted =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
    assert_eq!(
        ClientCertificate::from_pem(encrypted.as_bytes()).err(),
        Some(CertificateError::EncryptedPem)
    );
}

#[tokio::test]
async fn two_credentials_or_none_are_a_configuration_error_naming_the_keys() {
    let sim = sim().await;
    let dir = scratch();
    let certificate = TestCertificate::valid_for_days("two", 30);
    write(&dir, "app.pem", &certificate.key_and_certificate_pem);
    write(&dir, "token", "x.y.z");
    let both = load(
        &sim,
        &dir,
        json!({"ClientSecret": "abc-secret-value", "CertificateFile": "app.pem"}),
    )
    .expect_err("two credentials");
    let shown = both.to_string();
    assert!(
        shown.contains("both ClientSecret and CertificateFile"),
        "{shown}"
    );
    assert!(!shown.contains("abc-secret-value"), "{shown}");
    let both = load(
        &sim,
        &dir,
        json!({"CertificateFile": "app.pem", "FederatedTokenFile": "token"}),
    )
    .expect_err("two credentials");
    assert!(
        both.to_string()
            .contains("both CertificateFile and FederatedTokenFile"),
        "{both}"
    );
    let none = load(&sim, &dir, json!({})).expect_err("no credential");
    let shown = none.to_string();
    for key in ["ClientSecret", "CertificateFile", "FederatedTokenFile"] {
        assert!(shown.contains(key), "{shown}");
    }
    let stray = load(
        &sim,
        &dir,
        json!({"ClientSecret": "abc-secret-value", "CertificatePasswordFile": "token"}),
    )
    .expect_err("a password without a certificate");
    assert!(
        stray
            .to_string()
            .contains("CertificatePasswordFile is set without CertificateFile"),
        "{stray}"
    );
}

/// graphsim trusts tokens of `ISSUER` for `SUBJECT` with the default audience.
fn trust_issuer(sim: &Sim, issuer_key: &TestCertificate) {
    sim.add_federated_credential(
        TENANT,
        FederatedCredentialSeed {
            issuer: ISSUER.into(),
            subject: SUBJECT.into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            issuer_certificate: issuer_key.certificate_pem.clone(),
        },
    )
    .expect("federated credential");
}

#[tokio::test]
async fn a_federated_token_authenticates_and_its_file_is_read_again_for_every_token() {
    let sim = sim().await;
    let dir = scratch();
    let issuer_key = TestCertificate::valid_for_days("cluster-issuer", 365);
    trust_issuer(&sim, &issuer_key);
    let good = federated_token(
        &issuer_key,
        ISSUER,
        SUBJECT,
        "api://AzureADTokenExchange",
        3600,
    );
    write(&dir, "token", &good);
    let settings = load(&sim, &dir, json!({"FederatedTokenFile": "token"})).expect("loads");
    let graph = client();
    let tenant = graph.tenant(&settings);
    tenant
        .user(ALICE)
        .await
        .expect("a token from the federated token");

    // The kubelet rotates the file; the next token request must send what the file holds then.
    let foreign = federated_token(
        &issuer_key,
        ISSUER,
        "system:serviceaccount:other:other",
        "api://AzureADTokenExchange",
        3600,
    );
    write(&dir, "token", &foreign);
    sim.expire_tokens();
    let error = tenant
        .user(ALICE)
        .await
        .expect_err("the rotated token names another subject");
    assert_eq!(auth_problem(&error), AuthProblem::FederatedSubject);
    let shown = format!("{error} {error:?}");
    assert!(
        shown.contains("system:serviceaccount:<namespace>:<service account>"),
        "{shown}"
    );
    assert_shows_none(&shown, &[foreign.clone(), good.clone()]);
    assert_shows_none(
        &shown,
        &foreign
            .split('.')
            .map(str::to_owned)
            .filter(|p| p.len() > 40)
            .collect::<Vec<_>>(),
    );
}

#[tokio::test]
async fn a_federated_token_with_the_wrong_audience_fails_naming_the_audience_to_project() {
    let sim = sim().await;
    let dir = scratch();
    let issuer_key = TestCertificate::valid_for_days("cluster-issuer", 365);
    trust_issuer(&sim, &issuer_key);
    let token = federated_token(
        &issuer_key,
        ISSUER,
        SUBJECT,
        "https://kubernetes.default.svc",
        3600,
    );
    write(&dir, "token", &token);
    let settings = load(&sim, &dir, json!({"FederatedTokenFile": "token"})).expect("loads");
    let error = read_alice(&settings).await.expect_err("wrong audience");
    assert_eq!(auth_problem(&error), AuthProblem::FederatedAudience);
    let shown = error.to_string();
    assert!(shown.contains("AADSTS700212"), "{shown}");
    assert!(
        shown.contains("audience api://AzureADTokenExchange"),
        "{shown}"
    );
    assert_shows_none(&shown, &[token]);
}

#[tokio::test]
async fn an_expired_federated_token_or_an_unknown_issuer_fails_naming_the_fix() {
    let sim = sim().await;
    let dir = scratch();
    let issuer_key = TestCertificate::valid_for_days("cluster-issuer", 365);
    trust_issuer(&sim, &issuer_key);
    write(
        &dir,
        "token",
        federated_token(
            &issuer_key,
            ISSUER,
            SUBJECT,
            "api://AzureADTokenExchange",
            -900,
        ),
    );
    let settings = load(&sim, &dir, json!({"FederatedTokenFile": "token"})).expect("loads");
    let error = read_alice(&settings).await.expect_err("expired token");
    assert_eq!(auth_problem(&error), AuthProblem::FederatedTokenTime);
    assert!(error.to_string().contains("AADSTS700024"), "{error}");

    write(
        &dir,
        "token",
        federated_token(
            &issuer_key,
            "https://another.issuer",
            SUBJECT,
            "api://AzureADTokenExchange",
            3600,
        ),
    );
    let error = read_alice(&settings).await.expect_err("unknown issuer");
    assert_eq!(auth_problem(&error), AuthProblem::FederatedIssuer);
    assert!(
        error.to_string().contains("cluster's OIDC issuer URL"),
        "{error}"
    );

    // A token signed by someone else under the trusted issuer's name.
    let impostor = TestCertificate::valid_for_days("impostor", 365);
    write(
        &dir,
        "token",
        federated_token(
            &impostor,
            ISSUER,
            SUBJECT,
            "api://AzureADTokenExchange",
            3600,
        ),
    );
    let error = read_alice(&settings).await.expect_err("forged token");
    assert_eq!(auth_problem(&error), AuthProblem::FederatedSignature);

    // The file gone: named, nothing sent.
    std::fs::remove_file(dir.join("token")).expect("remove");
    let before = sim.stats().token_requests;
    let error = read_alice(&settings).await.expect_err("no file");
    assert_eq!(auth_problem(&error), AuthProblem::FederatedTokenUnreadable);
    assert!(error.to_string().contains("FederatedTokenFile"), "{error}");
    assert_eq!(sim.stats().token_requests, before);
}

#[tokio::test]
async fn a_missing_federated_token_file_is_a_configuration_error() {
    let sim = sim().await;
    let dir = scratch();
    let error =
        load(&sim, &dir, json!({"FederatedTokenFile": "nowhere/token"})).expect_err("no such file");
    let shown = error.to_string();
    assert!(shown.contains("FederatedTokenFile"), "{shown}");
    assert!(shown.contains("nowhere/token"), "{shown}");
}
