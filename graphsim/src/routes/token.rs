//! The Entra ID v2.0 token endpoint, client-credentials grant with a client secret (form body or HTTP
//! Basic) or a client assertion (a JWT signed with one of the app's certificates, or a federated token; checked
//! in `crate::credentials`), answering AADSTS error bodies exactly as `graph-facts.md` §1 lists them.

use base64::Engine;
use serde_json::json;

use crate::reply::Reply;
use crate::server::{Op, Shared};

/// Builds an AADSTS error body.
pub fn aadsts(status: u16, error: &str, code: u32, text: &str) -> Reply {
    let trace = uuid::Uuid::new_v4().to_string();
    let correlation = uuid::Uuid::new_v4().to_string();
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let mut reply = Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    );
    reply.plain_json = true;
    reply
}

fn valid_tenant_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 253
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !t.starts_with('.')
        && !t.ends_with('.')
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub fn handle(shared: &Shared, op: &Op) -> Reply {
    if op.method != "POST" {
        return aadsts(
            400,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests. Received a GET request.",
        );
    }
    let tenant_key = op.segments[0].clone();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&op.body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (mut client_id, mut secret) = (field("client_id"), field("client_secret"));
    if let Some(basic) = op.header("authorization").and_then(|a| {
        a.strip_prefix("Basic ")
            .or_else(|| a.strip_prefix("basic "))
    }) {
        if let Some(decoded) = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            if let Some((id, s)) = decoded.split_once(':') {
                let dec = |x: &str| {
                    url::form_urlencoded::parse(format!("x={x}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                client_id = client_id.or(Some(dec(id)));
                secret = secret.or(Some(dec(s)));
            }
        }
    }
    if !valid_tenant_name(&tenant_key) {
        return aadsts(
            400,
            "invalid_request",
            900023,
            &format!("Specified tenant identifier '{tenant_key}' is neither a valid DNS name, nor a valid external domain."),
        );
    }
    match field("grant_type").as_deref() {
        Some("client_credentials") => {}
        None => {
            return aadsts(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        }
        Some(other) => {
            return aadsts(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{other}'."),
            )
        }
    }
    let Some(client_id) = client_id else {
        return aadsts(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let Some(scope) = field("scope") else {
        return aadsts(
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'scope'.",
        );
    };
    let mut store = shared.store();
    let Some(tenant) = store.tenant(&tenant_key) else {
        return aadsts(
            400,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant_key}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
        );
    };
    let t = &store.tenants[tenant];
    if !t.client_id.eq_ignore_ascii_case(&client_id) {
        return aadsts(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory 'Default Directory'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
        );
    }
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.len() != 1 || !scopes[0].eq_ignore_ascii_case("https://graph.microsoft.com/.default")
    {
        return aadsts(
            400,
            "invalid_scope",
            if scopes.iter().all(|s| s.ends_with("/.default")) { 70011 } else { 1002012 },
            &format!("The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."),
        );
    }
    if let Some(assertion) = field("client_assertion") {
        if field("client_assertion_type").as_deref()
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return aadsts(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_assertion_type'.",
            );
        }
        let checked = crate::credentials::check_assertion(
            &assertion,
            &client_id,
            op.header("host").unwrap_or_default(),
            &tenant_key,
            &t.certificates,
            &t.federated,
            chrono::Utc::now(),
        );
        if let Err(refusal) = checked {
            return aadsts(refusal.status, refusal.error, refusal.code, &refusal.text);
        }
    } else if secret.as_deref() != Some(t.client_secret.as_str()) {
        return aadsts(
            401,
            "invalid_client",
            7000215,
            &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
        );
    }
    let lifetime = shared.runtime().token_lifetime;
    let token = store.issue_token(tenant, lifetime);
    let expires_in = lifetime.as_secs().max(1);
    let mut reply = Reply::json(
        200,
        json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}),
    );
    reply.plain_json = true;
    reply
}
