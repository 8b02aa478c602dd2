//! What an access token says about the app: the application roles (`roles` claim) Entra granted it.
//!
//! `check` reads them before anything else, so a missing permission is named up front instead of surfacing as a
//! 403 on the first mailbox. The token is only decoded, never verified: it came straight from the token endpoint
//! over TLS, and Graph verifies it on every call. The token itself never leaves this module.

use base64::Engine;
use serde::Deserialize;

use super::error::GraphError;
use super::TenantClient;

/// The claims `check` looks at.
#[derive(Debug, Default, Deserialize)]
struct Claims {
    /// Absent when the app holds no granted application permission (no admin consent yet).
    #[serde(default)]
    roles: Vec<String>,
}

/// The application roles in a JWT access token's payload (empty when the claim is absent).
pub(crate) fn roles_in(token: &str) -> Result<Vec<String>, GraphError> {
    let malformed =
        |why: &str| GraphError::Protocol(format!("the access token is not a JWT: {why}"));
    let mut parts = token.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return Err(malformed("expected three dot-separated parts")),
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| malformed("its payload is not base64url"))?;
    let claims: Claims = serde_json::from_slice(&bytes)
        .map_err(|_| malformed("its payload is not a JSON object of claims"))?;
    let mut roles = claims.roles;
    roles.sort();
    roles.dedup();
    Ok(roles)
}

impl TenantClient {
    /// The application roles the tenant's token carries (sorted), fetching a token if none is cached.
    pub async fn granted_roles(&self) -> Result<Vec<String>, GraphError> {
        let token = self.inner.token().await?;
        roles_in(token.secret.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64.encode(claims)
        )
    }

    #[test]
    fn roles_are_read_sorted_and_an_absent_claim_is_none() {
        assert_eq!(
            roles_in(&jwt(
                r#"{"roles":["User.Read.All","Contacts.ReadWrite"],"tid":"t"}"#
            ))
            .unwrap(),
            ["Contacts.ReadWrite", "User.Read.All"]
        );
        assert!(roles_in(&jwt(r#"{"tid":"t"}"#)).unwrap().is_empty());
    }

    #[test]
    fn anything_but_a_jwt_is_an_error_that_does_not_show_the_token() {
        for token in ["opaque-token-value", "a.b", "a.!!!.c", "a.b.c.d"] {
            let error = roles_in(token).unwrap_err().to_string();
            assert!(error.contains("not a JWT"), "{error}");
            assert!(!error.contains(token), "{error}");
        }
        let error = roles_in(&jwt("[1,2]")).unwrap_err().to_string();
        assert!(error.contains("not a JSON object"), "{error}");
    }
}
