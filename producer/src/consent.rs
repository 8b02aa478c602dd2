//! `consent-url --tenant T`: the admin-consent URL of a tenant's app, for the customer's administrator to open
//! once (it grants the application permissions the app registration requests, tenant-wide).

use std::process::ExitCode;

use anyhow::Result;
use shared::config::{Settings, TenantSettings};
use url::Url;

use crate::cli::ConsentUrlArgs;
use crate::{EXIT_OK, EXIT_USAGE};

/// `{AuthorityHost}/{TenantId}/adminconsent?client_id={ClientId}`: the tenant's own cloud, so national clouds
/// get their login host.
pub fn consent_url(tenant: &TenantSettings) -> Url {
    let mut url = tenant.authority_host.clone();
    url.path_segments_mut()
        .map(|mut segments| {
            segments
                .pop_if_empty()
                .push(&tenant.tenant_id)
                .push("adminconsent");
        })
        .ok();
    url.query_pairs_mut()
        .clear()
        .append_pair("client_id", &tenant.client_id);
    url
}

/// Prints the URL; an unknown tenant or a bad configuration is a usage error (exit 2).
pub fn command(args: &ConsentUrlArgs) -> Result<ExitCode> {
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let Some(tenant) = settings.tenant(&args.tenant) else {
        eprintln!(
            "--tenant {}: no such tenant in the configuration",
            args.tenant
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    println!("{}", consent_url(tenant));
    Ok(ExitCode::from(EXIT_OK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(authority: &str) -> TenantSettings {
        let document = serde_json::json!({ "MicrosoftTenants": [{
            "TenantId": "Contoso.onmicrosoft.com",
            "ClientId": "00000000-0000-0000-0000-0000000000AB",
            "ClientSecret": "not-a-real-secret",
            "GlobalAddressBookUserId": "shared@contoso.com",
            "AuthorityHost": authority,
        }]})
        .to_string();
        let env = move |name: &str| {
            (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| document.clone())
        };
        Settings::from_sources(&env, None).expect("valid").tenants[0].clone()
    }

    #[test]
    fn the_consent_url_names_the_tenant_and_client_on_its_cloud() {
        assert_eq!(
            consent_url(&tenant("https://login.microsoftonline.com")).as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/adminconsent?client_id=00000000-0000-0000-0000-0000000000ab"
        );
        assert_eq!(
            consent_url(&tenant("https://login.microsoftonline.us/")).as_str(),
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/adminconsent?client_id=00000000-0000-0000-0000-0000000000ab"
        );
    }
}
