use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;
use graphsim::{MailboxState, TenantSeed, UserSeed};

async fn token_request(env: &Env, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let r = env
        .http
        .post(format!(
            "{}/{tenant}/oauth2/v2.0/token",
            env.sim.authority_url()
        ))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

const SCOPE: &str = "https://graph.microsoft.com/.default";

#[tokio::test]
async fn token_success_by_domain_guid_and_basic_auth() {
    let env = env().await;
    let (guid, _) = env.sim.tenant_ids(TENANT).unwrap();
    for tenant in [TENANT.to_owned(), guid] {
        let (status, body) = token_request(
            &env,
            &tenant,
            &[
                ("client_id", CLIENT),
                ("client_secret", SECRET),
                ("scope", SCOPE),
                ("grant_type", "client_credentials"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3599);
    }
    let r = env
        .http
        .post(format!(
            "{}/{TENANT}/oauth2/v2.0/token",
            env.sim.authority_url()
        ))
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("scope", SCOPE), ("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn token_errors() {
    let env = env().await;
    let form = |id: &'static str, secret: &'static str, scope: &'static str| {
        vec![
            ("client_id", id),
            ("client_secret", secret),
            ("scope", scope),
            ("grant_type", "client_credentials"),
        ]
    };
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str, u64);
    let cases: Vec<Case> = vec![
        (
            TENANT,
            form(CLIENT, "wrong", SCOPE),
            401,
            "invalid_client",
            7000215,
        ),
        (
            "unknown.onmicrosoft.com",
            form(CLIENT, SECRET, SCOPE),
            400,
            "invalid_tenant",
            90002,
        ),
        (
            "bad tenant!",
            form(CLIENT, SECRET, SCOPE),
            400,
            "invalid_request",
            900023,
        ),
        (
            TENANT,
            form("00000000-0000-0000-0000-000000000000", SECRET, SCOPE),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            TENANT,
            form(CLIENT, SECRET, "https://graph.microsoft.com/User.Read.All"),
            400,
            "invalid_scope",
            1002012,
        ),
        (
            TENANT,
            form(CLIENT, SECRET, "https://foo.microsoft.com/.default"),
            400,
            "invalid_scope",
            70011,
        ),
    ];
    for (tenant, form, status, error, code) in cases {
        let tenant = tenant.replace(' ', "%20");
        let (s, body) = token_request(&env, &tenant, &form).await;
        assert_eq!((s, body["error"].as_str()), (status, Some(error)), "{body}");
        assert_eq!(body["error_codes"], json!([code]));
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}: ")));
    }
}

#[tokio::test]
async fn bearer_validation() {
    let env = env().await;
    let url = env.url("/users");
    let missing = env.http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer realm=\"\""));
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let forged = env
        .http
        .get(&url)
        .bearer_auth("eyJ0eXAiOiJKV1QifQ.e30.sig")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    // A token from another simulator (another "tenant authority") is foreign here.
    let other = env_with(graphsim::SimConfig::default()).await;
    let foreign = env
        .http
        .get(&url)
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 401);
}

#[tokio::test]
async fn token_expiry_mid_run_and_lifetime_config() {
    let env = env().await;
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contacts")).await.status,
        200
    );
    env.sim.expire_tokens();
    let expired = env.get(&format!("/users/{ALICE}/contacts")).await;
    assert_eq!(expired.status, 401);
    assert_eq!(
        expired.body["error"]["message"],
        "Access token has expired or is not yet valid."
    );
    assert!(expired.headers.contains_key("www-authenticate"));

    env.sim.set_token_lifetime(Duration::from_secs(1));
    let short = token(&env.sim, &env.http).await;
    let call = |t: String| {
        let url = env.url("/users");
        let http = env.http.clone();
        async move {
            http.get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call(short.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(short).await, 401);
}

#[tokio::test]
async fn no_admin_consent_gets_403() {
    let env = env().await;
    env.sim.add_tenant(TenantSeed {
        admin_consent: false,
        ..TenantSeed::new("noconsent.onmicrosoft.com", "app-2", "sec-2")
    });
    env.sim.add_user(
        "noconsent.onmicrosoft.com",
        UserSeed::member("x@noconsent.onmicrosoft.com", "X"),
    );
    let r = env
        .http
        .post(format!(
            "{}/noconsent.onmicrosoft.com/oauth2/v2.0/token",
            env.sim.authority_url()
        ))
        .form(&[
            ("client_id", "app-2"),
            ("client_secret", "sec-2"),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the token is issued");
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mailbox = env
        .http
        .get(env.url("/users/x@noconsent.onmicrosoft.com/contacts"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(mailbox.status(), 403);
    assert_eq!(
        mailbox.json::<Value>().await.unwrap()["error"]["message"],
        "Access is denied. Check credentials and try again."
    );
    let users = env
        .http
        .get(env.url("/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(users.status(), 403);
    assert_eq!(
        users.json::<Value>().await.unwrap()["error"]["code"],
        "Authorization_RequestDenied"
    );
}

#[tokio::test]
async fn mailbox_states() {
    let env = env().await;
    let mut none = UserSeed::member("nobox@contoso.onmicrosoft.com", "No Box");
    none.mailbox = MailboxState::NoMailbox;
    env.sim.add_user(TENANT, none);
    let mut blocked = UserSeed::member("blocked@contoso.onmicrosoft.com", "Blocked");
    blocked.mailbox = MailboxState::BlockedByPolicy;
    env.sim.add_user(TENANT, blocked);
    let r = env
        .get("/users/nobox@contoso.onmicrosoft.com/contacts")
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("MailboxNotEnabledForRESTAPI"))
    );
    let r = env
        .get("/users/blocked@contoso.onmicrosoft.com/contactFolders")
        .await;
    assert_eq!(
        (r.status, r.body["error"]["message"].as_str()),
        (403, Some("Access to OData is disabled."))
    );
    env.sim.set_mailbox_state(
        TENANT,
        "blocked@contoso.onmicrosoft.com",
        MailboxState::Enabled,
    );
    assert_eq!(
        env.get("/users/blocked@contoso.onmicrosoft.com/contactFolders")
            .await
            .status,
        200
    );
    let me = env.call(Method::GET, "/me/contacts", None).await;
    assert_eq!(me.status, 400);
}

/// The payload of a JWT, decoded.
fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

#[tokio::test]
async fn tokens_carry_entra_app_claims_and_roles_only_when_granted() {
    let env = env().await;
    let form = [
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", SCOPE),
        ("grant_type", "client_credentials"),
    ];
    let (status, body) = token_request(&env, TENANT, &form).await;
    assert_eq!(status, 200, "{body}");
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    let (guid, _) = env.sim.tenant_ids(TENANT).unwrap();
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["tid"], guid.as_str());
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["oid"], claims["sub"]);
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(exp > iat, "{claims}");
    let roles: Vec<&str> = claims["roles"]
        .as_array()
        .expect("roles granted")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(roles, graphsim::DEFAULT_ROLES);

    // No granted role: Entra leaves the claim out (not null, not empty).
    env.sim.set_app_roles(TENANT, &[]).unwrap();
    let (_, body) = token_request(&env, TENANT, &form).await;
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert!(claims.get("roles").is_none(), "{claims}");
    env.sim
        .set_app_roles(TENANT, graphsim::DEFAULT_ROLES)
        .unwrap();
    env.sim.set_admin_consent(TENANT, false);
    let (_, body) = token_request(&env, TENANT, &form).await;
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert!(claims.get("roles").is_none(), "{claims}");
}
