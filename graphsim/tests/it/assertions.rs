//! Client assertions at the token endpoint: certificates uploaded to the app and federated credentials, each
//! mistake answered with Entra's AADSTS code and error body shape.

use chrono::Utc;
use serde_json::{json, Value};

use crate::support::*;
use graphsim::credentials::FederatedCredentialSeed;
use graphsim::test_credentials::{federated_token, TestCertificate};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const SCOPE: &str = "https://graph.microsoft.com/.default";

async fn send(env: &Env, assertion: &str) -> (u16, Value) {
    let r = env
        .http
        .post(format!(
            "{}/{TENANT}/oauth2/v2.0/token",
            env.sim.authority_url()
        ))
        .form(&[
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Entra's error body: every field, the description starting with the code and carrying the trace lines.
fn assert_refused(answer: &(u16, Value), status: u16, error: &str, code: u32) -> String {
    let (s, body) = answer;
    assert_eq!(
        (*s, body["error"].as_str()),
        (status, Some(error)),
        "{body}"
    );
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    let description = body["error_description"].as_str().unwrap().to_owned();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("\r\nTrace ID: "), "{description}");
    for key in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    description
}

fn token_url(env: &Env) -> String {
    format!("{}/{TENANT}/oauth2/v2.0/token", env.sim.authority_url())
}

/// An assertion as Microsoft's libraries build it, with `alter` applied to the claims.
fn assertion(
    env: &Env,
    signer: &TestCertificate,
    named: &TestCertificate,
    alter: impl FnOnce(&mut Value),
) -> String {
    let now = Utc::now().timestamp();
    let mut claims = json!({
        "aud": token_url(env), "iss": CLIENT, "sub": CLIENT, "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now, "iat": now, "exp": now + 600,
    });
    alter(&mut claims);
    signer.sign_jwt_with(
        &json!({"alg": "RS256", "typ": "JWT", "x5t": named.x5t()}),
        &claims,
    )
}

#[tokio::test]
async fn an_assertion_signed_with_an_uploaded_certificate_gets_a_token() {
    let env = env().await;
    let cert = TestCertificate::valid_for_days("app", 365);
    env.sim
        .add_app_certificate(TENANT, &cert.certificate_pem)
        .unwrap();
    let (status, body) = send(&env, &assertion(&env, &cert, &cert, |_| {})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    // The same through the control surface, as an operator uploads with curl.
    let other = TestCertificate::valid_for_days("uploaded-by-curl", 365);
    let r = env
        .http
        .post(format!(
            "{}/_sim/tenants/{TENANT}/certificates",
            env.sim.authority_url()
        ))
        .body(other.certificate_pem.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        send(&env, &assertion(&env, &other, &other, |_| {})).await.0,
        200
    );
}

#[tokio::test]
async fn each_certificate_mistake_gets_entras_code() {
    let env = env().await;
    let uploaded = TestCertificate::valid_for_days("uploaded", 365);
    let stranger = TestCertificate::valid_for_days("stranger", 365);
    let expired = TestCertificate::expired_since_days("expired", 2);
    env.sim
        .add_app_certificate(TENANT, &uploaded.certificate_pem)
        .unwrap();
    env.sim
        .add_app_certificate(TENANT, &expired.certificate_pem)
        .unwrap();
    let before = env.sim.stats().token_requests;

    let text = assert_refused(
        &send(&env, &assertion(&env, &stranger, &stranger, |_| {})).await,
        401,
        "invalid_client",
        700027,
    );
    assert!(text.contains("The key was not found."), "{text}");
    assert!(text.contains("Thumbprint of key used by client"), "{text}");

    let text = assert_refused(
        &send(&env, &assertion(&env, &expired, &expired, |_| {})).await,
        401,
        "invalid_client",
        700027,
    );
    assert!(text.contains("The key used is expired."), "{text}");
    assert!(text.contains("Found key 'Start="), "{text}");

    // Names the uploaded certificate but was signed by another key.
    let text = assert_refused(
        &send(&env, &assertion(&env, &stranger, &uploaded, |_| {})).await,
        401,
        "invalid_client",
        700027,
    );
    assert!(
        text.contains("did not match the expected signature value"),
        "{text}"
    );

    let stale = assertion(&env, &uploaded, &uploaded, |c| {
        let past = Utc::now().timestamp() - 3600;
        c["nbf"] = json!(past - 600);
        c["iat"] = json!(past - 600);
        c["exp"] = json!(past);
    });
    let text = assert_refused(&send(&env, &stale).await, 401, "invalid_client", 700024);
    assert!(
        text.contains("Client assertion is not within its valid time range. Current time: "),
        "{text}"
    );

    let elsewhere = assertion(&env, &uploaded, &uploaded, |c| {
        c["aud"] = json!(format!(
            "https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
        ));
    });
    assert_refused(&send(&env, &elsewhere).await, 400, "invalid_request", 50027);

    let two_audiences = assertion(&env, &uploaded, &uploaded, |c| {
        let own = c["aud"].clone();
        c["aud"] = json!([own, "https://elsewhere/v2.0"]);
    });
    assert_refused(
        &send(&env, &two_audiences).await,
        400,
        "invalid_request",
        50027,
    );

    let foreign_subject = assertion(&env, &uploaded, &uploaded, |c| {
        c["sub"] = json!("someone-else")
    });
    assert_refused(
        &send(&env, &foreign_subject).await,
        401,
        "invalid_client",
        50048,
    );

    assert_refused(
        &send(&env, "not-a-jwt").await,
        400,
        "invalid_request",
        50027,
    );
    assert_eq!(
        env.sim.stats().token_requests,
        before + 8,
        "each refusal was answered"
    );
}

#[tokio::test]
async fn federated_tokens_are_matched_on_issuer_signature_time_subject_and_audience() {
    let env = env().await;
    let issuer_key = TestCertificate::valid_for_days("issuer", 365);
    let issuer = "https://oidc.example/cluster";
    let subject = "system:serviceaccount:cm:cm";
    let r = env
        .http
        .post(format!(
            "{}/_sim/tenants/{TENANT}/federated-credentials",
            env.sim.authority_url()
        ))
        .json(&FederatedCredentialSeed {
            issuer: issuer.into(),
            subject: subject.into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            issuer_certificate: issuer_key.certificate_pem.clone(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let aud = "api://AzureADTokenExchange";
    let good = federated_token(&issuer_key, issuer, subject, aud, 3600);
    assert_eq!(send(&env, &good).await.0, 200);

    let text = assert_refused(
        &send(
            &env,
            &federated_token(&issuer_key, "https://other", subject, aud, 3600),
        )
        .await,
        401,
        "invalid_client",
        700211,
    );
    assert!(
        text.contains("presented assertion issuer 'https://other'"),
        "{text}"
    );
    let forged = TestCertificate::valid_for_days("forger", 30);
    assert_refused(
        &send(&env, &federated_token(&forged, issuer, subject, aud, 3600)).await,
        401,
        "invalid_client",
        700027,
    );
    assert_refused(
        &send(
            &env,
            &federated_token(&issuer_key, issuer, subject, aud, -600),
        )
        .await,
        401,
        "invalid_client",
        700024,
    );
    let text = assert_refused(
        &send(
            &env,
            &federated_token(&issuer_key, issuer, "system:serviceaccount:x:y", aud, 3600),
        )
        .await,
        401,
        "invalid_client",
        700213,
    );
    assert!(
        text.contains("subject 'system:serviceaccount:x:y'"),
        "{text}"
    );
    let text = assert_refused(
        &send(
            &env,
            &federated_token(&issuer_key, issuer, subject, "kubernetes", 3600),
        )
        .await,
        401,
        "invalid_client",
        700212,
    );
    assert!(text.contains("audience 'kubernetes'"), "{text}");
}

#[tokio::test]
async fn a_secret_is_still_required_without_an_assertion_and_a_bad_upload_is_refused() {
    let env = env().await;
    let r = env
        .http
        .post(format!(
            "{}/_sim/tenants/{TENANT}/certificates",
            env.sim.authority_url()
        ))
        .body("not a certificate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, body) = {
        let r = env
            .http
            .post(token_url(&env))
            .form(&[
                ("client_id", CLIENT),
                ("scope", SCOPE),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (status, body["error_codes"].clone()),
        (401, json!([7000215]))
    );
}
