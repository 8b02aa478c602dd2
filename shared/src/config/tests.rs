//! Tests of the configuration loader: one per accepted form, one per rejected input, and that no error shows a secret.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;

const SECRET: &str = "s3cr3t~Value.With-Parts_42";
const TENANT: &str = "contoso.onmicrosoft.com";
const GUID_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const CLIENT: &str = "1b2c3d4e-5f60-4718-9a0b-1c2d3e4f5a6b";
const MAILBOX: &str = "contacts@contoso.com";

fn load(vars: &[(&str, String)], file: Option<&Path>) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Settings::from_sources(&|name| map.get(name).cloned(), file)
}

fn load_doc(doc: &serde_json::Value) -> Result<Settings, ConfigError> {
    load(&[(CONFIG_JSON_VAR, doc.to_string())], None)
}

fn tenant_json() -> serde_json::Value {
    json!({
        "TenantId": TENANT,
        "ClientId": CLIENT,
        "ClientSecret": SECRET,
        "GlobalAddressBookUserId": MAILBOX,
    })
}

/// A document with one tenant, `edit` applied to the tenant object.
fn doc_with(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> serde_json::Value {
    let mut tenant = tenant_json();
    if let Some(object) = tenant.as_object_mut() {
        edit(object);
    }
    json!({ "MicrosoftTenants": [tenant] })
}

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(content: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "contactmirror-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).expect("temp file is writable");
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The error of the whole configuration, or else that of its first invalid tenant entry (the other tenants of
/// the document run; see `one_invalid_tenant_is_set_aside_and_the_others_run`).
fn error_of(result: Result<Settings, ConfigError>) -> ConfigError {
    match result {
        Ok(mut settings) if !settings.invalid_tenants.is_empty() => {
            settings.invalid_tenants.remove(0).error
        }
        Ok(settings) => panic!("expected an error, got {settings:?}"),
        Err(error) => error,
    }
}

fn assert_error(result: Result<Settings, ConfigError>, expected: &str) {
    let message = error_of(result).to_string();
    assert_eq!(message, expected);
}

fn assert_error_contains(result: Result<Settings, ConfigError>, parts: &[&str]) {
    let message = error_of(result).to_string();
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

// ---------- accepted forms ----------

#[test]
fn config_json_multi_tenant_form() {
    let doc = json!({
        "MicrosoftTenants": [
            {
                "TenantId": TENANT,
                "ClientId": CLIENT,
                "ClientSecret": SECRET,
                "GlobalAddressBookUserId": MAILBOX,
                "TestUserList": ["user1@contoso.com", "user2@contoso.com"],
            },
            {
                "TenantId": GUID_TENANT,
                "ClientId": CLIENT,
                "ClientSecret": "other",
                "GlobalAddressBookUserId": "gal@fabrikam.com",
            }
        ],
        "DryRun": "true"
    });
    let settings = load_doc(&doc).expect("valid");
    assert!(settings.dry_run);
    assert_eq!(settings.tenants.len(), 2);
    let first = &settings.tenants[0];
    assert_eq!(first.tenant_id, TENANT);
    assert_eq!(first.client_id, CLIENT);
    assert_eq!(
        first
            .credential
            .client_secret()
            .expect("a client secret")
            .expose(),
        SECRET
    );
    assert_eq!(first.global_address_book_user_id, MAILBOX);
    assert_eq!(
        first.test_user_list,
        Some(vec![
            "user1@contoso.com".to_owned(),
            "user2@contoso.com".to_owned()
        ])
    );
    assert_eq!(settings.tenants[1].tenant_id, GUID_TENANT);
    assert_eq!(settings.tenants[1].test_user_list, None);
}

/// `AllowMassDelete` is run-wide (top level), off by default, and read like `DryRun`.
#[test]
fn allow_mass_delete_is_a_run_wide_switch_off_by_default() {
    let mut doc = tenant_json();
    assert!(!load_doc(&doc).expect("valid").allow_mass_delete);
    doc["AllowMassDelete"] = json!("true");
    assert!(load_doc(&doc).expect("valid").allow_mass_delete);
    doc["AllowMassDelete"] = json!("perhaps");
    let error = load_doc(&doc).expect_err("not a boolean").to_string();
    assert!(error.contains("AllowMassDelete"), "{error}");
}

#[test]
fn config_json_flat_single_tenant_form() {
    let mut doc = tenant_json();
    doc["DryRun"] = json!("no");
    let settings = load_doc(&doc).expect("valid");
    assert!(!settings.dry_run);
    assert_eq!(settings.tenants.len(), 1);
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
    assert_eq!(
        settings.tenants[0]
            .credential
            .client_secret()
            .expect("a client secret")
            .expose(),
        SECRET
    );
}

#[test]
fn microsoft_tenants_json_with_dry_run_variable() {
    let settings = load(
        &[
            (
                MICROSOFT_TENANTS_JSON_VAR,
                json!([tenant_json()]).to_string(),
            ),
            (DRY_RUN_VAR, "Y".into()),
        ],
        None,
    )
    .expect("valid");
    assert!(settings.dry_run);
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
}

#[test]
fn microsoft_tenants_json_accepts_a_single_object() {
    // PowerShell's ConvertTo-Json writes a one-element array as the element itself.
    let settings = load(
        &[(MICROSOFT_TENANTS_JSON_VAR, tenant_json().to_string())],
        None,
    )
    .expect("valid");
    assert_eq!(settings.tenants.len(), 1);
    assert!(!settings.dry_run);
}

fn single_vars() -> Vec<(&'static str, String)> {
    vec![
        (TENANT_ID_VAR, TENANT.into()),
        (CLIENT_ID_VAR, CLIENT.into()),
        (CLIENT_SECRET_VAR, SECRET.into()),
        (GLOBAL_ADDRESS_BOOK_USER_ID_VAR, MAILBOX.into()),
    ]
}

#[test]
fn single_tenant_variables() {
    let mut vars = single_vars();
    vars.push((DRY_RUN_VAR, "1".into()));
    let settings = load(&vars, None).expect("valid");
    assert!(settings.dry_run);
    assert_eq!(settings.tenants.len(), 1);
    let tenant = &settings.tenants[0];
    assert_eq!(tenant.tenant_id, TENANT);
    assert_eq!(tenant.client_id, CLIENT);
    assert_eq!(
        tenant
            .credential
            .client_secret()
            .expect("a client secret")
            .expose(),
        SECRET
    );
    assert_eq!(tenant.global_address_book_user_id, MAILBOX);
}

#[test]
fn single_tenant_variables_with_secret_file() {
    let secret = TempFile::new(&format!("{SECRET}\n"));
    let mut vars = single_vars();
    vars.retain(|(k, _)| *k != CLIENT_SECRET_VAR);
    vars.push((CLIENT_SECRET_FILE_VAR, secret.0.display().to_string()));
    let settings = load(&vars, None).expect("valid");
    assert_eq!(
        settings.tenants[0]
            .credential
            .client_secret()
            .expect("a client secret")
            .expose(),
        SECRET
    );
}

#[test]
fn config_json_is_preferred_over_other_variables() {
    let mut vars = single_vars();
    vars[0] = (TENANT_ID_VAR, "ignored.onmicrosoft.com".into());
    vars.push((MICROSOFT_TENANTS_JSON_VAR, "not even json".into()));
    vars.push((CONFIG_JSON_VAR, doc_with(|_| {}).to_string()));
    let settings = load(&vars, None).expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
}

#[test]
fn microsoft_tenants_json_is_preferred_over_single_variables() {
    let mut vars = single_vars();
    vars[0] = (TENANT_ID_VAR, "ignored.onmicrosoft.com".into());
    vars.push((
        MICROSOFT_TENANTS_JSON_VAR,
        json!([tenant_json()]).to_string(),
    ));
    let settings = load(&vars, None).expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
}

#[test]
fn blank_variables_count_as_unset() {
    let mut vars = single_vars();
    vars.push((CONFIG_JSON_VAR, "  ".into()));
    vars.push((MICROSOFT_TENANTS_JSON_VAR, String::new()));
    vars.push((DRY_RUN_VAR, String::new()));
    let settings = load(&vars, None).expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
    assert!(!settings.dry_run);
}

#[test]
fn file_form_wins_over_environment() {
    let mut doc = doc_with(|_| {});
    doc["DryRun"] = json!(true);
    let file = TempFile::new(&serde_json::to_string_pretty(&doc).expect("serialises"));
    let mut vars = single_vars();
    vars[0] = (TENANT_ID_VAR, "ignored.onmicrosoft.com".into());
    vars.push((CONFIG_JSON_VAR, "{}".into()));
    vars.push((DRY_RUN_VAR, "false".into()));
    let settings = load(&vars, Some(&file.0)).expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
    assert!(settings.dry_run, "the file's DryRun wins");
}

#[test]
fn from_file_reads_the_document() {
    let file = TempFile::new(&doc_with(|_| {}).to_string());
    let settings = Settings::from_file(&file.0).expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
}

#[test]
fn dry_run_variable_applies_when_document_is_silent() {
    let settings = load(
        &[
            (CONFIG_JSON_VAR, doc_with(|_| {}).to_string()),
            (DRY_RUN_VAR, "yes".into()),
        ],
        None,
    )
    .expect("valid");
    assert!(settings.dry_run);
}

#[test]
fn keys_match_ignoring_case() {
    let doc = json!({
        "microsoftTenants": [{
            "tenantId": TENANT, "CLIENTID": CLIENT, "clientSecret": SECRET,
            "globalAddressBookUserId": MAILBOX, "testuserlist": ["a@contoso.com"], "maxdeleteshare": 0.5
        }],
        "dryRun": "TRUE"
    });
    let settings = load_doc(&doc).expect("valid");
    assert!(settings.dry_run);
    assert_eq!(settings.tenants[0].client_id, CLIENT);
    assert_eq!(settings.tenants[0].mirror.deletion.max_share, 0.5);
}

#[test]
fn guids_are_normalised_and_tenant_lookup_ignores_case() {
    let doc = doc_with(|t| {
        t.insert(
            "TenantId".into(),
            json!("{72F988BF-86F1-41AF-91AB-2D7CD011DB47}"),
        );
        t.insert(
            "ClientId".into(),
            json!("1B2C3D4E-5F60-4718-9A0B-1C2D3E4F5A6B"),
        );
    });
    let settings = load_doc(&doc).expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, GUID_TENANT);
    assert_eq!(settings.tenants[0].client_id, CLIENT);
    assert!(settings
        .tenant("72F988BF-86F1-41AF-91AB-2D7CD011DB47")
        .is_some());
    assert!(settings.tenant("contoso.onmicrosoft.com").is_none());

    let settings = load_doc(&doc_with(|t| {
        t.insert("TenantId".into(), json!("Contoso.OnMicrosoft.com"));
    }))
    .expect("valid");
    assert_eq!(settings.tenants[0].tenant_id, TENANT);
    assert!(settings.tenant("CONTOSO.onmicrosoft.COM").is_some());
    assert!(settings.tenant("fabrikam.onmicrosoft.com").is_none());
}

// ---------- booleans ----------

#[test]
fn boolean_forms() {
    let cases = [
        (json!("true"), true),
        (json!("TRUE"), true),
        (json!("True"), true),
        (json!("1"), true),
        (json!("yes"), true),
        (json!("YES"), true),
        (json!("y"), true),
        (json!("Y"), true),
        (json!(" yes "), true),
        (json!(true), true),
        (json!(1), true),
        (json!("false"), false),
        (json!("FALSE"), false),
        (json!("0"), false),
        (json!("no"), false),
        (json!("No"), false),
        (json!("n"), false),
        (json!("N"), false),
        (json!(false), false),
        (json!(0), false),
    ];
    for (value, expected) in cases {
        let mut doc = doc_with(|_| {});
        doc["DryRun"] = value.clone();
        let settings = load_doc(&doc).unwrap_or_else(|e| panic!("{value} is a boolean: {e}"));
        assert_eq!(settings.dry_run, expected, "DryRun {value}");
        let settings = load_doc(&doc_with(|t| {
            t.insert("StampNotes".into(), value.clone());
        }))
        .expect("valid");
        assert_eq!(
            settings.tenants[0].mirror.stamp_notes, expected,
            "StampNotes {value}"
        );
    }
}

#[test]
fn empty_or_null_boolean_is_the_default() {
    for value in [json!(""), json!(null)] {
        let mut doc = doc_with(|t| {
            t.insert("DeleteManagedCopies".into(), value.clone());
        });
        doc["DryRun"] = value.clone();
        let settings = load_doc(&doc).expect("valid");
        assert!(!settings.dry_run);
        assert!(settings.tenants[0].mirror.deletion.enabled);
    }
}

#[test]
fn rejects_bad_booleans() {
    for (value, got) in [
        (json!("maybe"), "\"maybe\""),
        (json!(2), "2"),
        (json!("tru"), "\"tru\""),
        (json!([true]), "an array"),
    ] {
        let mut doc = doc_with(|_| {});
        doc["DryRun"] = value;
        assert_error(
            load_doc(&doc),
            &format!(
                "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: DryRun: expected a boolean (true/false, 1/0, yes/no or y/n), got {got}"
            ),
        );
    }
    let mut vars = single_vars();
    vars.push((DRY_RUN_VAR, "perhaps".into()));
    assert_error(
        load(&vars, None),
        "AUTOMATION_SYNCCONTACTS_DRY_RUN: expected a boolean (true/false, 1/0, yes/no or y/n), got \"perhaps\"",
    );
}

// ---------- defaults and options ----------

#[test]
fn defaults() {
    let settings = load_doc(&doc_with(|_| {})).expect("valid");
    assert!(!settings.dry_run);
    let tenant = &settings.tenants[0];
    assert_eq!(
        tenant.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(
        tenant.graph_endpoint.as_str(),
        "https://graph.microsoft.com/"
    );
    assert_eq!(tenant.test_user_list, None);
    assert_eq!(
        tenant.mirror,
        MirrorOptions {
            central_folder_name: "All Contacts".into(),
            managed_category: None,
            stamp_notes: true,
            opt_out_category: "Private".into(),
            deletion: DeletionPolicy {
                enabled: true,
                max_share: 0.10
            },
            update_existing: true,
            fields: Default::default(),
        }
    );
    assert_eq!(tenant.limits, GraphLimits::default());
    assert_eq!(tenant.limits.max_in_flight, 4);
    assert_eq!(tenant.limits.requests_per_window, 10_000);
    assert_eq!(tenant.limits.window, Duration::from_secs(600));
}

#[test]
fn empty_strings_fall_back_to_defaults() {
    let settings = load_doc(&doc_with(|t| {
        t.insert("CentralFolderName".into(), json!(""));
        t.insert("ManagedCategory".into(), json!("  "));
        t.insert("OptOutCategory".into(), json!(null));
        t.insert("MaxDeleteShare".into(), json!(""));
        t.insert("TestUserList".into(), json!(""));
    }))
    .expect("valid");
    let tenant = &settings.tenants[0];
    assert_eq!(tenant.mirror.central_folder_name, "All Contacts");
    assert_eq!(tenant.mirror.managed_category, None);
    assert_eq!(tenant.mirror.opt_out_category, "Private");
    assert_eq!(tenant.mirror.deletion.max_share, 0.10);
    assert_eq!(tenant.test_user_list, None);
}

#[test]
fn every_option_per_tenant() {
    let settings = load_doc(&doc_with(|t| {
        t.insert(
            "AuthorityHost".into(),
            json!("https://login.microsoftonline.us"),
        );
        t.insert("GraphEndpoint".into(), json!("https://graph.microsoft.us/"));
        t.insert("CentralFolderName".into(), json!("Company Contacts"));
        t.insert("ManagedCategory".into(), json!("Managed"));
        t.insert("StampNotes".into(), json!("no"));
        t.insert("OptOutCategory".into(), json!("Personal"));
        t.insert("DeleteManagedCopies".into(), json!(false));
        t.insert("MaxDeleteShare".into(), json!("0.25"));
        t.insert("MaxInFlightPerMailbox".into(), json!(2));
        t.insert("RequestsPerWindow".into(), json!("5000"));
        t.insert("WindowSeconds".into(), json!(300));
    }))
    .expect("valid");
    let tenant = &settings.tenants[0];
    assert_eq!(
        tenant.authority_host.as_str(),
        "https://login.microsoftonline.us/"
    );
    assert_eq!(
        tenant.graph_endpoint.as_str(),
        "https://graph.microsoft.us/"
    );
    assert_eq!(tenant.mirror.central_folder_name, "Company Contacts");
    assert_eq!(tenant.mirror.managed_category.as_deref(), Some("Managed"));
    assert!(!tenant.mirror.stamp_notes);
    assert_eq!(tenant.mirror.opt_out_category, "Personal");
    assert_eq!(
        tenant.mirror.deletion,
        DeletionPolicy {
            enabled: false,
            max_share: 0.25
        }
    );
    assert_eq!(
        tenant.limits,
        GraphLimits {
            max_in_flight: 2,
            requests_per_window: 5000,
            window: Duration::from_secs(300),
            ..GraphLimits::default()
        }
    );
}

#[test]
fn run_wide_defaults_are_overridden_per_tenant() {
    let mut second = tenant_json();
    second["TenantId"] = json!("fabrikam.onmicrosoft.com");
    second["MaxDeleteShare"] = json!(0.5);
    second["GraphEndpoint"] = json!("https://graph.microsoft.com");
    let doc = json!({
        "MicrosoftTenants": [tenant_json(), second],
        "MaxDeleteShare": 0.2,
        "GraphEndpoint": "https://microsoftgraph.chinacloudapi.cn",
        "CentralFolderName": "Shared",
        "MaxInFlightPerMailbox": 3,
    });
    let settings = load_doc(&doc).expect("valid");
    let (a, b) = (&settings.tenants[0], &settings.tenants[1]);
    assert_eq!(a.mirror.deletion.max_share, 0.2);
    assert_eq!(b.mirror.deletion.max_share, 0.5);
    assert_eq!(
        a.graph_endpoint.as_str(),
        "https://microsoftgraph.chinacloudapi.cn/"
    );
    assert_eq!(b.graph_endpoint.as_str(), "https://graph.microsoft.com/");
    assert_eq!(a.mirror.central_folder_name, "Shared");
    assert_eq!(b.mirror.central_folder_name, "Shared");
    assert_eq!(b.limits.max_in_flight, 3);
}

#[test]
fn endpoints_keep_their_path() {
    let settings = load_doc(&doc_with(|t| {
        t.insert("GraphEndpoint".into(), json!("http://127.0.0.1:8080/graph"));
    }))
    .expect("valid");
    assert_eq!(
        settings.tenants[0].graph_endpoint.as_str(),
        "http://127.0.0.1:8080/graph/"
    );
}

#[test]
fn http_only_for_loopback_hosts() {
    for url in [
        "http://localhost:8080",
        "http://LOCALHOST",
        "http://127.0.0.1:1234/",
        "http://127.1.2.3",
        "http://[::1]:9000",
        "https://example.com",
    ] {
        let result = load_doc(&doc_with(|t| {
            t.insert("AuthorityHost".into(), json!(url));
            t.insert("GraphEndpoint".into(), json!(url));
        }));
        assert!(result.is_ok(), "{url}: {result:?}");
    }
    for url in [
        "http://graph.microsoft.com",
        "http://10.0.0.1",
        "http://localhost.example.com",
        "http://[::2]",
    ] {
        assert_error_contains(
            load_doc(&doc_with(|t| {
                t.insert("GraphEndpoint".into(), json!(url));
            })),
            &[
                "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].GraphEndpoint: expected an https URL \
                 (http:// only for a loopback host: localhost, 127.0.0.0/8 or ::1) (or set \
                 CONTACTMIRROR_ALLOW_INSECURE_GRAPH=1 to allow plain http in a lab), got",
                url.trim_end_matches('/'),
            ],
        );
    }
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("GraphEndpoint".into(), json!("ftp://localhost"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].GraphEndpoint: expected an https URL \
         (http:// only for a loopback host: localhost, 127.0.0.0/8 or ::1), got \"ftp://localhost\"",
    );
}

#[test]
fn plain_http_to_a_lab_host_needs_the_explicit_switch() {
    let doc = doc_with(|t| {
        t.insert("AuthorityHost".into(), json!("http://graphsim:8080"));
        t.insert("GraphEndpoint".into(), json!("http://graphsim:8080"));
    });
    let text = doc.to_string();
    assert!(load(&[(CONFIG_JSON_VAR, text.clone())], None).is_err());
    for off in ["0", "false", ""] {
        let refused = load(
            &[
                (CONFIG_JSON_VAR, text.clone()),
                (ALLOW_INSECURE_GRAPH_VAR, off.to_owned()),
            ],
            None,
        );
        assert!(refused.is_err(), "{off:?} must not allow plain http");
    }
    let settings = load(
        &[
            (CONFIG_JSON_VAR, text),
            (ALLOW_INSECURE_GRAPH_VAR, "1".to_owned()),
            (ALLOW_INSECURE_AUTHORITY_VAR, "1".to_owned()),
        ],
        None,
    )
    .expect("allowed with the switches");
    assert_eq!(
        settings.tenants[0].graph_endpoint.as_str(),
        "http://graphsim:8080/"
    );
}

/// Failed before the fix: `CONTACTMIRROR_ALLOW_INSECURE_GRAPH=1` also allowed a plain-http AuthorityHost, so a
/// switch meant for a lab's Graph stand-in sent the client secret unencrypted.
#[test]
fn the_graph_switch_never_allows_a_plain_http_authority() {
    let doc = doc_with(|t| {
        t.insert("AuthorityHost".into(), json!("http://login.example.com"));
    });
    let refused = load(
        &[
            (CONFIG_JSON_VAR, doc.to_string()),
            (ALLOW_INSECURE_GRAPH_VAR, "1".to_owned()),
        ],
        None,
    );
    assert_error_contains(
        refused,
        &[
            "MicrosoftTenants[0].AuthorityHost: expected an https URL",
            "CONTACTMIRROR_ALLOW_INSECURE_AUTHORITY",
        ],
    );
    let lab = load(
        &[
            (CONFIG_JSON_VAR, doc.to_string()),
            (ALLOW_INSECURE_AUTHORITY_VAR, "1".to_owned()),
        ],
        None,
    )
    .expect("the authority's own lab switch");
    assert_eq!(
        lab.tenants[0].authority_host.as_str(),
        "http://login.example.com/"
    );
}

#[test]
fn rejects_malformed_endpoints() {
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("AuthorityHost".into(), json!("login.microsoftonline.com"));
        })),
        &[
            "MicrosoftTenants[0].AuthorityHost: expected an https URL",
            "relative URL without a base",
        ],
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("AuthorityHost".into(), json!("https://user:pw@login.microsoftonline.com"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].AuthorityHost: expected a URL without user name or \
         password, got a URL with user information (not shown)",
    );
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert(
                "GraphEndpoint".into(),
                json!("https://graph.microsoft.com/?x=1"),
            );
        })),
        &["GraphEndpoint: expected a URL without query or fragment"],
    );
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("GraphEndpoint".into(), json!(42));
        })),
        &["GraphEndpoint: expected an https URL", "got a number"],
    );
}

#[test]
fn client_secret_file_trims_trailing_newline() {
    for content in [
        format!("{SECRET}\n"),
        format!("{SECRET}\r\n"),
        SECRET.to_owned(),
    ] {
        let file = TempFile::new(&content);
        let settings = load_doc(&doc_with(|t| {
            t.remove("ClientSecret");
            t.insert(
                "ClientSecretFile".into(),
                json!(file.0.display().to_string()),
            );
        }))
        .expect("valid");
        assert_eq!(
            settings.tenants[0]
                .credential
                .client_secret()
                .expect("a client secret")
                .expose(),
            SECRET
        );
    }
}

#[test]
fn client_secret_file_relative_to_config_file() {
    let secret = TempFile::new(&format!("{SECRET}\n"));
    let name = secret
        .0
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name")
        .to_owned();
    let config = TempFile::new(
        &doc_with(|t| {
            t.remove("ClientSecret");
            t.insert("ClientSecretFile".into(), json!(name));
        })
        .to_string(),
    );
    let settings = load(&[], Some(&config.0)).expect("valid");
    assert_eq!(
        settings.tenants[0]
            .credential
            .client_secret()
            .expect("a client secret")
            .expose(),
        SECRET
    );
}

#[test]
fn rejects_client_secret_file_problems() {
    let missing = std::env::temp_dir().join("contactmirror-config-test-does-not-exist");
    assert_error(
        load_doc(&doc_with(|t| {
            t.remove("ClientSecret");
            t.insert("ClientSecretFile".into(), json!(missing.display().to_string()));
        })),
        &format!(
            "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].ClientSecretFile: cannot read the client secret \
             from {}: no such file",
            missing.display()
        ),
    );
    let empty = TempFile::new("\n");
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.remove("ClientSecret");
            t.insert(
                "ClientSecretFile".into(),
                json!(empty.0.display().to_string()),
            );
        })),
        &[
            "ClientSecretFile: cannot read the client secret from",
            "the file is empty",
        ],
    );
    let file = TempFile::new(SECRET);
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("ClientSecretFile".into(), json!(file.0.display().to_string()));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].ClientSecretFile: both ClientSecret and \
         ClientSecretFile are set, expected exactly one of ClientSecret, ClientSecretFile, CertificateFile, \
         FederatedTokenFile",
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.remove("ClientSecret");
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].ClientSecret: missing, expected a credential: \
         ClientSecret, ClientSecretFile, CertificateFile or FederatedTokenFile",
    );
}

// ---------- test users ----------

#[test]
fn test_users_by_tenant_are_merged() {
    let mut second = tenant_json();
    second["TenantId"] = json!(GUID_TENANT);
    second["TestUserList"] = json!(["b@fabrikam.com"]);
    let doc = json!({ "MicrosoftTenants": [tenant_json(), second] });
    let by_tenant = json!({
        "Contoso.onmicrosoft.com": ["user1@contoso.com", "USER1@contoso.com"],
        "72F988BF-86F1-41AF-91AB-2D7CD011DB47": ["c@fabrikam.com", "B@fabrikam.com"],
    });
    let settings = load(
        &[
            (CONFIG_JSON_VAR, doc.to_string()),
            (TEST_USER_LIST_BY_TENANT_JSON_VAR, by_tenant.to_string()),
        ],
        None,
    )
    .expect("valid");
    assert_eq!(
        settings.tenants[0].test_user_list,
        Some(vec!["user1@contoso.com".to_owned()])
    );
    assert_eq!(
        settings.tenants[1].test_user_list,
        Some(vec![
            "b@fabrikam.com".to_owned(),
            "c@fabrikam.com".to_owned()
        ])
    );
}

#[test]
fn test_users_by_tenant_apply_to_single_tenant_variables() {
    let mut vars = single_vars();
    vars.push((
        TEST_USER_LIST_BY_TENANT_JSON_VAR,
        json!({ TENANT: "u@contoso.com" }).to_string(),
    ));
    let settings = load(&vars, None).expect("valid");
    assert_eq!(
        settings.tenants[0].test_user_list,
        Some(vec!["u@contoso.com".to_owned()])
    );
}

#[test]
fn rejects_test_users_for_unknown_tenant() {
    let mut vars = single_vars();
    vars.push((
        TEST_USER_LIST_BY_TENANT_JSON_VAR,
        json!({ "fabrikam.onmicrosoft.com": ["u@fabrikam.com"] }).to_string(),
    ));
    assert_error(
        load(&vars, None),
        "AUTOMATION_SYNCCONTACTS_TEST_USER_LIST_BY_TENANT_JSON: \"fabrikam.onmicrosoft.com\": expected the TenantId, \
         PrimaryDomain or TenantDomain of a configured tenant (contoso.onmicrosoft.com), got \"fabrikam.onmicrosoft.com\"",
    );
}

#[test]
fn rejects_bad_test_user_lists() {
    let mut vars = single_vars();
    vars.push((
        TEST_USER_LIST_BY_TENANT_JSON_VAR,
        json!({ TENANT: ["a@contoso.com", ""] }).to_string(),
    ));
    assert_error(
        load(&vars, None),
        "AUTOMATION_SYNCCONTACTS_TEST_USER_LIST_BY_TENANT_JSON: \"contoso.onmicrosoft.com\"[1]: missing, expected \
         a user (UPN, object id or alias)",
    );
    let mut vars = single_vars();
    vars.push((
        TEST_USER_LIST_BY_TENANT_JSON_VAR,
        json!([TENANT]).to_string(),
    ));
    assert_error_contains(
        load(&vars, None),
        &["expected a JSON object mapping TenantId to a list of users, got an array"],
    );
    let mut vars = single_vars();
    vars.push((
        TEST_USER_LIST_BY_TENANT_JSON_VAR,
        json!({ TENANT: ["a@contoso.com"], "CONTOSO.onmicrosoft.com": ["b@contoso.com"] })
            .to_string(),
    ));
    assert_error_contains(
        load(&vars, None),
        &[
            "the tenant is already listed as",
            "expected each tenant once",
        ],
    );

    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("TestUserList".into(), json!(["a@contoso.com", " "]));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].TestUserList[1]: missing, expected a user (UPN, object id or alias)",
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("TestUserList".into(), json!(["a@contoso.com", 7]));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].TestUserList[1]: expected a user (UPN, object id or alias), got a number",
    );
}

#[test]
fn test_user_list_accepts_a_single_string() {
    let settings = load_doc(&doc_with(|t| {
        t.insert("TestUserList".into(), json!("only@contoso.com"));
    }))
    .expect("valid");
    assert_eq!(
        settings.tenants[0].test_user_list,
        Some(vec!["only@contoso.com".to_owned()])
    );
}

// ---------- rejected inputs ----------

#[test]
fn rejects_nothing_configured() {
    assert_eq!(error_of(load(&[], None)), ConfigError::NotConfigured);
    assert_eq!(
        error_of(load(&[(DRY_RUN_VAR, "true".into())], None)),
        ConfigError::NotConfigured
    );
}

#[test]
fn rejects_incomplete_single_tenant_variables() {
    for (missing, expected) in [
        (
            TENANT_ID_VAR,
            "a tenant id (GUID) or verified domain such as contoso.onmicrosoft.com",
        ),
        (CLIENT_ID_VAR, "the app registration's client id (a GUID)"),
        (
            CLIENT_SECRET_VAR,
            "a credential: ClientSecret, ClientSecretFile, CertificateFile or FederatedTokenFile",
        ),
        (
            GLOBAL_ADDRESS_BOOK_USER_ID_VAR,
            "the shared mailbox holding the central folder (UPN or object id)",
        ),
    ] {
        let mut vars = single_vars();
        vars.retain(|(k, _)| *k != missing);
        assert_error(
            load(&vars, None),
            &format!("{missing}: missing, expected {expected}"),
        );
        let mut vars = single_vars();
        for var in vars.iter_mut().filter(|(k, _)| *k == missing) {
            var.1 = " ".into();
        }
        assert_error(
            load(&vars, None),
            &format!("{missing}: missing, expected {expected}"),
        );
    }
}

#[test]
fn rejects_invalid_single_tenant_variables() {
    let mut vars = single_vars();
    vars[1] = (CLIENT_ID_VAR, "abc".into());
    assert_error(
        load(&vars, None),
        "AUTOMATION_SYNCCONTACTS_CLIENT_ID: expected a GUID, got \"abc\"",
    );
    let mut vars = single_vars();
    vars[0] = (TENANT_ID_VAR, "common".into());
    assert_error(
        load(&vars, None),
        "AUTOMATION_SYNCCONTACTS_TENANT_ID: expected a tenant id (GUID) or verified domain such as \
         contoso.onmicrosoft.com, got \"common\"",
    );
}

#[test]
fn rejects_missing_required_keys() {
    for (key, expected) in [
        (
            "TenantId",
            "a tenant id (GUID) or verified domain such as contoso.onmicrosoft.com",
        ),
        ("ClientId", "the app registration's client id (a GUID)"),
        (
            "GlobalAddressBookUserId",
            "the shared mailbox holding the central folder (UPN or object id)",
        ),
    ] {
        for edit in [None, Some(json!("")), Some(json!(null))] {
            let doc = doc_with(|t| match &edit {
                None => {
                    t.remove(key);
                }
                Some(value) => {
                    t.insert(key.into(), value.clone());
                }
            });
            assert_error(
                load_doc(&doc),
                &format!("AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].{key}: missing, expected {expected}"),
            );
        }
    }
}

#[test]
fn rejects_invalid_ids() {
    let doc = json!({ "MicrosoftTenants": [tenant_json(), {
        "TenantId": "fabrikam.onmicrosoft.com", "ClientId": "abc", "ClientSecret": SECRET,
        "GlobalAddressBookUserId": MAILBOX,
    }]});
    assert_error(
        load_doc(&doc),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[1].ClientId: expected a GUID, got \"abc\"",
    );
    for bad in ["common", "contoso", "-bad.com", "conto so.com", "a..b"] {
        assert_error(
            load_doc(&doc_with(|t| {
                t.insert("TenantId".into(), json!(bad));
            })),
            &format!(
                "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].TenantId: expected a tenant id (GUID) or \
                 verified domain such as contoso.onmicrosoft.com, got {bad:?}"
            ),
        );
    }
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("TenantId".into(), json!(12));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].TenantId: expected a tenant id (GUID) or verified \
         domain such as contoso.onmicrosoft.com, got a number",
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("ClientSecret".into(), json!(12345));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].ClientSecret: expected the client secret as a \
         string, got a number",
    );
}

#[test]
fn rejects_duplicate_tenants() {
    let mut second = tenant_json();
    second["TenantId"] = json!("CONTOSO.onmicrosoft.com");
    assert_error(
        load_doc(&json!({ "MicrosoftTenants": [tenant_json(), second] })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].TenantId: tenant \"contoso.onmicrosoft.com\" is \
         configured twice (also at MicrosoftTenants[1].TenantId), expected each tenant once",
    );
}

#[test]
fn rejects_unknown_keys() {
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("ClientSecert".into(), json!("x"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0]: unknown key \"ClientSecert\" (did you mean \
         \"ClientSecret\"?)",
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("MicrosoftTenants".into(), json!([]));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0]: unknown key \"MicrosoftTenants\" (MicrosoftTenants \
         is run-wide: set it at the top level of the document)",
    );
    let mut doc = doc_with(|_| {});
    doc["Colour"] = json!("blue");
    assert_error(
        load_doc(&doc),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: unknown key \"Colour\"",
    );
    let mut flat = tenant_json();
    flat["MaxDeleteShares"] = json!(0.1);
    assert_error(
        load_doc(&flat),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: unknown key \"MaxDeleteShares\" (did you mean \"MaxDeleteShare\"?)",
    );
    let mut tenant = tenant_json();
    tenant["DryRunn"] = json!(true);
    assert_error(
        load(&[(MICROSOFT_TENANTS_JSON_VAR, json!([tenant]).to_string())], None),
        "AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON: [0]: unknown key \"DryRunn\" (did you mean \"DryRun\"?)",
    );
}

#[test]
fn rejects_keys_given_twice() {
    let text = format!(
        r#"{{"MicrosoftTenants":[{{"TenantId":"{TENANT}","tenantid":"x.com","ClientId":"{CLIENT}",
        "ClientSecret":"{SECRET}","GlobalAddressBookUserId":"{MAILBOX}"}}]}}"#
    );
    assert_error(
        load(&[(CONFIG_JSON_VAR, text)], None),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].TenantId: key given twice (\"TenantId\" and \
         \"tenantid\"), expected it once",
    );
    let text = format!(
        r#"{{"TenantId":"{TENANT}","ClientId":"{CLIENT}","ClientSecret":"{SECRET}","ClientSecret":"two",
        "GlobalAddressBookUserId":"{MAILBOX}"}}"#
    );
    assert_error_contains(
        load(&[(CONFIG_JSON_VAR, text)], None),
        &["ClientSecret: key given twice (\"ClientSecret\" and \"ClientSecret\")"],
    );
}

#[test]
fn rejects_tenant_keys_next_to_microsoft_tenants() {
    let mut doc = doc_with(|_| {});
    doc["ClientSecret"] = json!(SECRET);
    assert_error(
        load_doc(&doc),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: ClientSecret: a tenant key next to MicrosoftTenants, expected it inside \
         each MicrosoftTenants entry",
    );
}

#[test]
fn rejects_bad_document_shapes() {
    assert_error(
        load_doc(&json!([tenant_json()])),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: expected a JSON object, got an array",
    );
    assert_error(
        load_doc(&json!({ "MicrosoftTenants": [] })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants: expected at least one tenant, got an empty array",
    );
    assert_error(
        load_doc(&json!({ "MicrosoftTenants": "contoso" })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants: expected an array of tenant objects, got a string",
    );
    assert_error(
        load_doc(&json!({ "MicrosoftTenants": [tenant_json(), 5] })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[1]: expected a JSON object, got a number",
    );
    assert_error(
        load(&[(MICROSOFT_TENANTS_JSON_VAR, "[]".into())], None),
        "AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON: expected at least one tenant, got an empty array",
    );
    assert_error(
        load_doc(&json!({ "DryRun": true })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: TenantId: missing, expected a tenant id (GUID) or verified domain \
         such as contoso.onmicrosoft.com",
    );
}

#[test]
fn rejects_invalid_json_with_position_only() {
    let text = format!("{{\n  \"TenantId\": \"{TENANT}\",\n  \"ClientSecret\": \"{SECRET}\"\n  \"ClientId\": 1\n}}");
    assert_error(
        load(&[(CONFIG_JSON_VAR, text)], None),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: not valid JSON: syntax error at line 4, column 3",
    );
    let text = format!("{{\"ClientSecret\": \"{SECRET}");
    assert_error_contains(
        load(&[(CONFIG_JSON_VAR, text)], None),
        &["AUTOMATION_SYNCCONTACTS_CONFIG_JSON: not valid JSON: unexpected end of input at line 1"],
    );
    assert_error_contains(
        load(&[(MICROSOFT_TENANTS_JSON_VAR, "[{".into())], None),
        &["AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON: not valid JSON"],
    );
    let mut vars = single_vars();
    vars.push((TEST_USER_LIST_BY_TENANT_JSON_VAR, "{oops}".into()));
    assert_error_contains(
        load(&vars, None),
        &["AUTOMATION_SYNCCONTACTS_TEST_USER_LIST_BY_TENANT_JSON: not valid JSON: syntax error at line 1, column 2"],
    );
}

#[test]
fn rejects_unreadable_or_empty_config_file() {
    let missing = std::env::temp_dir().join("contactmirror-config-test-no-such-config.json");
    assert_error(
        load(&single_vars(), Some(&missing)),
        &format!(
            "{}: cannot read the configuration file: no such file",
            missing.display()
        ),
    );
    let empty = TempFile::new("");
    assert_error_contains(
        load(&single_vars(), Some(&empty.0)),
        &[": missing, expected a JSON object"],
    );
    let broken = TempFile::new("{\"ClientSecret\": ");
    assert_error_contains(
        load(&[], Some(&broken.0)),
        &[&format!("{}: not valid JSON", broken.0.display())],
    );
}

#[test]
fn rejects_out_of_range_options() {
    let cases = [
        (
            "MaxDeleteShare",
            json!(0),
            "a share greater than 0 and at most 1 (0.1 allows 10%)",
            "0",
        ),
        (
            "MaxDeleteShare",
            json!(1.5),
            "a share greater than 0 and at most 1 (0.1 allows 10%)",
            "1.5",
        ),
        (
            "MaxDeleteShare",
            json!("10%"),
            "a share greater than 0 and at most 1 (0.1 allows 10%)",
            "\"10%\"",
        ),
        (
            "MaxDeleteShare",
            json!(-0.1),
            "a share greater than 0 and at most 1 (0.1 allows 10%)",
            "-0.1",
        ),
        (
            "MaxInFlightPerMailbox",
            json!(0),
            "a whole number from 1 to 4 (Graph allows 4)",
            "0",
        ),
        (
            "MaxInFlightPerMailbox",
            json!(5),
            "a whole number from 1 to 4 (Graph allows 4)",
            "5",
        ),
        (
            "MaxInFlightPerMailbox",
            json!(2.5),
            "a whole number from 1 to 4 (Graph allows 4)",
            "2.5",
        ),
        (
            "RequestsPerWindow",
            json!(0),
            "a whole number of requests, at least 1",
            "0",
        ),
        (
            "RequestsPerWindow",
            json!(5_000_000_000_u64),
            "a whole number of requests, at least 1",
            "5000000000",
        ),
        (
            "WindowSeconds",
            json!(0),
            "a whole number of seconds from 1 to 86400",
            "0",
        ),
        (
            "WindowSeconds",
            json!("soon"),
            "a whole number of seconds from 1 to 86400",
            "\"soon\"",
        ),
        (
            "StampNotes",
            json!("sometimes"),
            "a boolean (true/false, 1/0, yes/no or y/n)",
            "\"sometimes\"",
        ),
        (
            "CentralFolderName",
            json!(["a"]),
            "a folder name",
            "an array",
        ),
    ];
    for (key, value, expected, got) in cases {
        assert_error(
            load_doc(&doc_with(|t| {
                t.insert(key.into(), value.clone());
            })),
            &format!("AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].{key}: expected {expected}, got {got}"),
        );
    }
    // Run-wide defaults are validated too, even when every tenant overrides them.
    let mut doc = doc_with(|t| {
        t.insert("MaxDeleteShare".into(), json!(0.1));
    });
    doc["MaxDeleteShare"] = json!(2);
    assert_error(
        load_doc(&doc),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MaxDeleteShare: expected a share greater than 0 and at most 1 (0.1 \
         allows 10%), got 2",
    );
}

#[test]
fn rejects_managed_category_equal_to_opt_out_category() {
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("ManagedCategory".into(), json!("private"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0]: ManagedCategory and OptOutCategory are both \
         \"private\", expected different categories (managed copies would count as opted out)",
    );
}

// ---------- secrets ----------

/// Every rejected input above that can carry the secret, plus the secret pasted into the wrong fields.
fn rejected_inputs(secret_file: &Path) -> Vec<(String, Vec<(&'static str, String)>)> {
    let doc = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        vec![(CONFIG_JSON_VAR, doc_with(|t| edit(t)).to_string())]
    };
    let mut cases: Vec<(String, Vec<(&'static str, String)>)> = vec![
        (
            "syntax error".into(),
            vec![(
                CONFIG_JSON_VAR,
                format!("{{\"ClientSecret\": \"{SECRET}\" \"x\"}}"),
            )],
        ),
        (
            "syntax error inside the secret".into(),
            vec![(
                CONFIG_JSON_VAR,
                format!("{{\"ClientSecret\": \"{SECRET}\\q\"}}"),
            )],
        ),
        (
            "truncated".into(),
            vec![(CONFIG_JSON_VAR, format!("{{\"ClientSecret\": \"{SECRET}"))],
        ),
        (
            "tenants syntax error".into(),
            vec![(
                MICROSOFT_TENANTS_JSON_VAR,
                format!("[{{\"ClientSecret\": {SECRET}}}]"),
            )],
        ),
        (
            "secret as client id".into(),
            doc(&|t| {
                t.insert("ClientId".into(), json!(SECRET));
            }),
        ),
        (
            "secret as tenant id".into(),
            doc(&|t| {
                t.insert("TenantId".into(), json!(SECRET));
            }),
        ),
        (
            "secret as endpoint".into(),
            doc(&|t| {
                t.insert("GraphEndpoint".into(), json!(SECRET));
            }),
        ),
        (
            "secret as boolean".into(),
            doc(&|t| {
                t.insert("StampNotes".into(), json!(SECRET));
            }),
        ),
        (
            "secret as key".into(),
            doc(&|t| {
                t.insert(SECRET.into(), json!(1));
            }),
        ),
        (
            "secret in url".into(),
            doc(&|t| {
                t.insert(
                    "AuthorityHost".into(),
                    json!(format!("https://app:{SECRET}@login.microsoftonline.com")),
                );
            }),
        ),
        (
            "bad client id".into(),
            doc(&|t| {
                t.insert("ClientId".into(), json!("abc"));
            }),
        ),
        (
            "bad tenant id".into(),
            doc(&|t| {
                t.insert("TenantId".into(), json!("common"));
            }),
        ),
        (
            "missing mailbox".into(),
            doc(&|t| {
                t.remove("GlobalAddressBookUserId");
            }),
        ),
        (
            "both secret forms".into(),
            doc(&|t| {
                t.insert(
                    "ClientSecretFile".into(),
                    json!(secret_file.display().to_string()),
                );
            }),
        ),
        (
            "unknown key".into(),
            doc(&|t| {
                t.insert("ClientSecretValue".into(), json!(SECRET));
            }),
        ),
        (
            "bad share".into(),
            doc(&|t| {
                t.insert("MaxDeleteShare".into(), json!(3));
            }),
        ),
        (
            "http endpoint".into(),
            doc(&|t| {
                t.insert("GraphEndpoint".into(), json!("http://graph.microsoft.com"));
            }),
        ),
        (
            "empty test user".into(),
            doc(&|t| {
                t.insert("TestUserList".into(), json!([""]));
            }),
        ),
        (
            "secret as test user".into(),
            doc(&|t| {
                t.insert("TestUserList".into(), json!([[SECRET]]));
            }),
        ),
        (
            "bad dry run".into(),
            vec![
                (CONFIG_JSON_VAR, doc_with(|_| {}).to_string()),
                (DRY_RUN_VAR, SECRET.to_owned()),
            ],
        ),
        (
            "duplicate keys".into(),
            vec![(
                CONFIG_JSON_VAR,
                format!(r#"{{"ClientSecret":"{SECRET}","clientsecret":"{SECRET}"}}"#),
            )],
        ),
    ];
    let mut duplicate = tenant_json();
    duplicate["ClientSecret"] = json!(format!("{SECRET}-other"));
    cases.push((
        "duplicate tenant".into(),
        vec![(
            CONFIG_JSON_VAR,
            json!({ "MicrosoftTenants": [tenant_json(), duplicate] }).to_string(),
        )],
    ));
    let mut vars = single_vars();
    vars[1] = (CLIENT_ID_VAR, SECRET.into());
    cases.push(("single variables, secret as client id".into(), vars));
    let mut vars = single_vars();
    vars.push((
        TEST_USER_LIST_BY_TENANT_JSON_VAR,
        json!({ SECRET: ["a@b.c"] }).to_string(),
    ));
    cases.push(("secret as test-user tenant".into(), vars));
    let mut vars = single_vars();
    vars.retain(|(k, _)| *k != TENANT_ID_VAR);
    cases.push(("single variables, tenant missing".into(), vars));
    cases
}

#[test]
fn no_error_contains_a_secret() {
    let secret_file = TempFile::new(&format!("{SECRET}\n"));
    for (name, vars) in rejected_inputs(&secret_file.0) {
        let error = error_of(load(&vars, None));
        let display = error.to_string();
        let debug = format!("{error:?}");
        let alternate = format!("{error:#?}");
        for text in [&display, &debug, &alternate] {
            assert!(!text.contains(SECRET), "{name}: {text}");
            assert!(!text.contains("s3cr3t"), "{name}: {text}");
        }
        assert!(!display.ends_with('.'), "{name}: {display}");
        assert!(
            display.chars().next().is_some_and(|c| !c.is_uppercase())
                || display.starts_with("AUTOMATION_"),
            "{name}: {display}"
        );
    }
}

#[test]
fn secret_file_content_never_appears_in_errors() {
    // The secret file is read, then a later field fails.
    let secret_file = TempFile::new(&format!("{SECRET}\n"));
    let doc = doc_with(|t| {
        t.remove("ClientSecret");
        t.insert(
            "ClientSecretFile".into(),
            json!(secret_file.0.display().to_string()),
        );
        t.insert("GlobalAddressBookUserId".into(), json!(SECRET));
        t.insert("MaxDeleteShare".into(), json!(SECRET));
    });
    let error = error_of(load_doc(&doc));
    assert!(!error.to_string().contains(SECRET), "{error}");
    assert!(!format!("{error:?}").contains(SECRET), "{error:?}");
}

#[test]
fn debug_and_display_of_settings_hide_the_secret() {
    let settings = load_doc(&doc_with(|t| {
        t.insert("ManagedCategory".into(), json!("Managed"));
    }))
    .expect("valid");
    let tenant = &settings.tenants[0];
    for text in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{settings}"),
        format!("{tenant}"),
        tenant.redacted_summary(),
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }
    let summary = tenant.redacted_summary();
    assert!(summary.contains(TENANT), "{summary}");
    assert!(summary.contains(CLIENT), "{summary}");
    assert!(summary.contains("[redacted]"), "{summary}");
    assert!(summary.contains("\"All Contacts\""), "{summary}");
    assert!(summary.contains("cap 10%"), "{summary}");
}

// ---- What a tenant distributes and where (issue 11): Mirror, Directory, TargetGroups, TargetFolder ----

const GROUP_ID: &str = "0F6C1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B";

#[test]
fn distribution_defaults_are_todays_mirror() {
    let settings = load_doc(&doc_with(|_| {})).expect("valid");
    let tenant = &settings.tenants[0];
    assert_eq!(tenant.distribution, Distribution::default());
    assert!(tenant.distribution.mirror_enabled);
    assert!(!tenant.distribution.directory.enabled);
    assert_eq!(
        tenant
            .distribution
            .directory
            .member_types
            .iter()
            .collect::<Vec<_>>(),
        vec![MemberType::Member]
    );
    assert!(tenant.distribution.directory.exclude_hidden);
    assert_eq!(tenant.distribution.target_groups, None);
    assert_eq!(
        tenant.distribution.target_folder,
        TargetFolder::DefaultContacts
    );
    assert_eq!(tenant.shared_mailbox(), Some(MAILBOX));
}

fn two_tenants(
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> serde_json::Value {
    let mut first = tenant_json();
    if let Some(object) = first.as_object_mut() {
        edit(object);
    }
    let mut second = tenant_json();
    second["TenantId"] = json!("fabrikam.onmicrosoft.com");
    json!({ "MicrosoftTenants": [first, second] })
}

#[test]
fn every_directory_key_is_read_ignoring_case() {
    let doc = two_tenants(|t| {
        t.insert(
            "directory".into(),
            json!({
                "enabled": "yes",
                "memberTypes": ["member", "GUEST", "Contact", "guest"],
                "IncludeGroups": [GROUP_ID, "Sales@Contoso.com"],
                "excludegroups": "hidden@contoso.com",
                "UserFilter": "  department eq 'Sales' and startswith(displayName,'A&B')  ",
                "ExcludeHidden": false,
                "FromTenants": ["Fabrikam.onmicrosoft.com"],
            }),
        );
        t.insert("targetGroups".into(), json!(["phones@contoso.com"]));
        t.insert("TargetFolder".into(), json!(" Company Directory "));
        t.insert("mirror".into(), json!({"enabled": false}));
    });
    let settings = load_doc(&doc).expect("valid");
    let d = &settings.tenants[0].distribution;
    assert!(!d.mirror_enabled);
    assert!(d.directory.enabled);
    assert_eq!(
        d.directory.member_types.iter().collect::<Vec<_>>(),
        vec![MemberType::Member, MemberType::Guest, MemberType::Contact]
    );
    assert_eq!(
        d.directory.include_groups,
        vec![
            GroupRef::Id(GROUP_ID.to_lowercase()),
            GroupRef::Mail("sales@contoso.com".into())
        ]
    );
    assert_eq!(
        d.directory.exclude_groups,
        vec![GroupRef::Mail("hidden@contoso.com".into())]
    );
    assert_eq!(
        d.directory.user_filter.as_ref().map(UserFilter::as_str),
        Some("department eq 'Sales' and startswith(displayName,'A&B')")
    );
    assert!(!d.directory.exclude_hidden);
    assert_eq!(d.directory.from_tenants, vec!["fabrikam.onmicrosoft.com"]);
    assert_eq!(
        d.target_groups,
        Some(vec![GroupRef::Mail("phones@contoso.com".into())])
    );
    match &d.target_folder {
        TargetFolder::Named(name) => assert_eq!(name.as_str(), "Company Directory"),
        other => panic!("expected a named folder, got {other:?}"),
    }
    assert!(
        settings.tenants[0].to_string().ends_with(
            "mirror off, directory on (Member, Guest, Contact; 2 include group(s); 1 exclude group(s); user filter; \
             hidden users included; from 1 tenant(s)), receivers: 1 group(s), folder \"Company Directory\""
        ),
        "{}",
        settings.tenants[0]
    );
    // The second tenant sets nothing: today's behaviour.
    assert_eq!(settings.tenants[1].distribution, Distribution::default());
}

#[test]
fn directory_only_tenant_needs_no_shared_mailbox() {
    let settings = load_doc(&doc_with(|t| {
        t.remove("GlobalAddressBookUserId");
        t.insert("Mirror".into(), json!({"Enabled": false}));
        t.insert("Directory".into(), json!({"Enabled": true}));
    }))
    .expect("valid");
    let tenant = &settings.tenants[0];
    assert!(!tenant.distribution.mirror_enabled);
    assert_eq!(tenant.shared_mailbox(), None);
    // With the mirror on (the default), the shared mailbox is still required.
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.remove("GlobalAddressBookUserId");
            t.insert("Directory".into(), json!({"Enabled": true}));
        })),
        &["MicrosoftTenants[0].GlobalAddressBookUserId", "missing"],
    );
}

#[test]
fn directory_defaults_at_the_top_level_merge_key_by_key() {
    let mut doc = two_tenants(|t| {
        t.insert("Directory".into(), json!({"Enabled": true}));
        t.insert("TargetFolder".into(), json!("Own Folder"));
    });
    doc["Directory"] = json!({"MemberTypes": ["Contact"], "ExcludeHidden": false});
    doc["TargetFolder"] = json!("Company Directory");
    doc["Mirror"] = json!({"Enabled": "0"});
    let settings = load_doc(&doc).expect("valid");
    let first = &settings.tenants[0].distribution;
    assert!(first.directory.enabled);
    assert!(!first.directory.exclude_hidden);
    assert!(first.directory.member_types.contains(MemberType::Contact));
    assert!(!first.directory.member_types.contains(MemberType::Member));
    assert!(!first.mirror_enabled);
    assert!(matches!(&first.target_folder, TargetFolder::Named(n) if n.as_str() == "Own Folder"));
    let second = &settings.tenants[1].distribution;
    assert!(!second.directory.enabled);
    assert!(second.directory.member_types.contains(MemberType::Contact));
    assert!(
        matches!(&second.target_folder, TargetFolder::Named(n) if n.as_str() == "Company Directory")
    );
}

fn with_directory(directory: serde_json::Value) -> Result<Settings, ConfigError> {
    load_doc(&two_tenants(|t| {
        t.insert("Directory".into(), directory);
    }))
}

#[test]
fn rejects_bad_member_types() {
    assert_error(
        with_directory(json!({"MemberTypes": ["Member", "Staff"]})),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].Directory.MemberTypes[1]: expected Member, \
         Guest or Contact, got \"Staff\"",
    );
    assert_error(
        with_directory(json!({"MemberTypes": []})),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].Directory.MemberTypes: expected at least one \
         member type (leave the key out for Member), got an empty array",
    );
    assert_error_contains(
        with_directory(json!({"MemberTypes": 3})),
        &[
            "Directory.MemberTypes",
            "an array of member types",
            "got a number",
        ],
    );
}

#[test]
fn rejects_bad_group_references() {
    for bad in [
        "Sales",
        "sales@",
        "@contoso.com",
        "sales@contoso",
        "a b@contoso.com",
        "1234-5678",
    ] {
        assert_error_contains(
            with_directory(json!({"ExcludeGroups": [GROUP_ID, bad]})),
            &[
                "MicrosoftTenants[0].Directory.ExcludeGroups[1]",
                "a group object id (GUID) or mail address",
                &format!("{bad:?}"),
            ],
        );
    }
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("TargetGroups".into(), json!([]));
        })),
        &[
            "MicrosoftTenants[0].TargetGroups",
            "at least one group",
            "an empty array",
        ],
    );
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("TargetGroups".into(), json!(["not a group"]));
        })),
        &["MicrosoftTenants[0].TargetGroups[0]", "a group object id"],
    );
}

#[test]
fn user_filters_are_checked_at_config_time() {
    for good in [
        "department eq 'Sales'",
        "surname eq 'O''Brien'",
        "(department eq 'Sales' or department eq 'HR') and accountEnabled eq true",
        "startswith(displayName,'A&B (Ltd)')",
        "assignedLicenses/$count ne 0",
        "jobTitle eq 'What?#'",
    ] {
        let settings = with_directory(json!({"UserFilter": good})).expect(good);
        assert_eq!(
            settings.tenants[0]
                .distribution
                .directory
                .user_filter
                .as_ref()
                .map(UserFilter::as_str),
            Some(good)
        );
    }
    for (bad, why) in [
        ("department eq 'Sales", "unterminated string"),
        ("(department eq 'Sales'", "'(' without its ')'"),
        ("department eq 'Sales')", "')' without its '('"),
        ("department eq 'Sales'&$top=1", "'&' outside a string"),
        ("department eq 'Sales' $select=id", "'$' outside a string"),
        ("department eq 'Sales'?x", "'?' outside a string"),
        ("department eq 'Sales'\nor true", "control character"),
    ] {
        assert_error_contains(
            with_directory(json!({"UserFilter": bad})),
            &[
                "MicrosoftTenants[0].Directory.UserFilter",
                "an OData $filter expression",
                why,
            ],
        );
    }
}

#[test]
fn from_tenants_must_name_another_configured_tenant() {
    let settings =
        with_directory(json!({"FromTenants": "FABRIKAM.onmicrosoft.com"})).expect("valid");
    assert_eq!(
        settings.tenants[0].distribution.directory.from_tenants,
        vec!["fabrikam.onmicrosoft.com"]
    );
    assert_error_contains(
        with_directory(json!({"FromTenants": ["northwind.onmicrosoft.com"]})),
        &[
            "MicrosoftTenants[0].Directory.FromTenants",
            "a configured tenant (contoso.onmicrosoft.com, fabrikam.onmicrosoft.com)",
            "\"northwind.onmicrosoft.com\"",
        ],
    );
    assert_error_contains(
        with_directory(json!({"FromTenants": ["Contoso.onmicrosoft.com"]})),
        &[
            "MicrosoftTenants[0].Directory.FromTenants",
            "not tenant contoso.onmicrosoft.com itself",
        ],
    );
}

/// FromTenants: a tenant receives its own directory (when enabled) first, then each source once; a tenant with the
/// mirror and the directory off and no source is a pure source (no jobs), one with a source still receives.
#[test]
fn directory_sources_list_the_tenant_itself_then_its_from_tenants_and_pure_sources_receive_nothing()
{
    let settings = with_directory(json!({
        "Enabled": true,
        "FromTenants": ["Fabrikam.onmicrosoft.com", "fabrikam.onmicrosoft.com"],
    }))
    .expect("valid");
    let receiver = &settings.tenants[0];
    assert_eq!(
        receiver.directory_sources(),
        vec!["contoso.onmicrosoft.com", "fabrikam.onmicrosoft.com"]
    );
    assert!(receiver.distribution.receives_directory());
    let source = &settings.tenants[1];
    assert!(source.directory_sources().is_empty());
    assert!(source.distribution.receives(), "the mirror is on");

    let mut pure = source.distribution.clone();
    pure.mirror_enabled = false;
    assert!(!pure.receives_directory() && !pure.receives());
    pure.directory.from_tenants = vec!["contoso.onmicrosoft.com".into()];
    assert!(pure.receives_directory() && pure.receives());

    let only_others =
        with_directory(json!({ "FromTenants": ["fabrikam.onmicrosoft.com"] })).expect("valid");
    assert_eq!(
        only_others.tenants[0].directory_sources(),
        vec!["fabrikam.onmicrosoft.com"],
        "its own directory is not distributed unless enabled"
    );
}

#[test]
fn target_folder_is_one_plain_name_other_than_the_central_folder() {
    for (bad, why) in [
        ("Company/Directory", "a path"),
        ("Company\\Directory", "a path"),
        ("all contacts", "the central folder's name"),
        ("Contacts", "the default folder's name"),
    ] {
        assert_error_contains(
            load_doc(&doc_with(|t| {
                t.insert("TargetFolder".into(), json!(bad));
            })),
            &[
                "MicrosoftTenants[0].TargetFolder",
                "a top-level contact folder name",
                why,
            ],
        );
    }
    // The check follows a renamed central folder.
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("CentralFolderName".into(), json!("Everyone"));
            t.insert("TargetFolder".into(), json!("EVERYONE"));
        })),
        &["TargetFolder", "the central folder's name \"Everyone\""],
    );
    let settings = load_doc(&doc_with(|t| {
        t.insert("TargetFolder".into(), json!(""));
    }))
    .expect("an empty name is the default");
    assert_eq!(
        settings.tenants[0].distribution.target_folder,
        TargetFolder::DefaultContacts
    );
}

#[test]
fn unknown_keys_inside_mirror_and_directory_are_refused() {
    assert_error(
        with_directory(json!({"MemberType": ["Member"]})),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].Directory: unknown key \"MemberType\" (did you \
         mean \"MemberTypes\"?)",
    );
    assert_error_contains(
        with_directory(json!({"TargetFolder": "X"})),
        &["unknown key \"TargetFolder\"", "belongs next to Directory"],
    );
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("Mirror".into(), json!({"Enable": false}));
        })),
        &["MicrosoftTenants[0].Mirror: unknown key \"Enable\""],
    );
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("Directory".into(), json!(true));
        })),
        &["MicrosoftTenants[0].Directory", "expected a JSON object"],
    );
}

/// Failed before the fix: a secret mounted from a file ends with a newline, an error quotes a value trimmed, and
/// only the secret as given was scrubbed, so a client id wired to the same key showed the secret.
#[test]
fn a_secret_ending_in_a_newline_never_shows_where_an_error_quotes_it_trimmed() {
    let mounted = format!("{SECRET}\n");
    let from_variables = load(
        &[
            (TENANT_ID_VAR, TENANT.to_owned()),
            (CLIENT_ID_VAR, mounted.clone()),
            (CLIENT_SECRET_VAR, mounted.clone()),
            (GLOBAL_ADDRESS_BOOK_USER_ID_VAR, MAILBOX.to_owned()),
        ],
        None,
    );
    let from_document = load_doc(&doc_with(|t| {
        t.insert("ClientId".into(), json!(mounted));
        t.insert("ClientSecret".into(), json!(mounted));
    }));
    for result in [from_variables, from_document] {
        let message = error_of(result).to_string();
        assert!(
            message.contains("ClientId") || message.contains(CLIENT_ID_VAR),
            "{message}"
        );
        assert!(!message.contains(SECRET), "{message}");
        assert!(message.contains("[redacted]"), "{message}");
    }
}

#[test]
fn a_secret_pasted_into_a_directory_key_never_shows() {
    for directory in [
        json!({"UserFilter": format!("mail eq '{SECRET}")}),
        json!({"IncludeGroups": [SECRET]}),
        json!({"MemberTypes": [SECRET]}),
    ] {
        let message = error_of(with_directory(directory)).to_string();
        assert!(!message.contains(SECRET), "{message}");
        assert!(message.contains("[redacted]"), "{message}");
    }
}

// ---------- per-tenant isolation and lifecycle (issue 12) ----------

fn second_tenant() -> serde_json::Value {
    json!({
        "TenantId": "fabrikam.onmicrosoft.com",
        "ClientId": CLIENT,
        "ClientSecret": SECRET,
        "GlobalAddressBookUserId": "contacts@fabrikam.com",
    })
}

#[test]
fn one_invalid_tenant_is_set_aside_and_the_others_run() {
    let mut broken = second_tenant();
    broken["ClientId"] = json!(SECRET);
    let doc = json!({ "MicrosoftTenants": [tenant_json(), broken, "not a tenant", second_tenant_named("woodgrove.com")] });
    let settings = load_doc(&doc).expect("the valid tenants run");
    let ids: Vec<&str> = settings
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    assert_eq!(ids, [TENANT, "woodgrove.com"]);
    let invalid: Vec<(String, String)> = settings
        .invalid_tenants
        .iter()
        .map(|t| (t.name.clone(), t.error.to_string()))
        .collect();
    assert_eq!(
        invalid,
        [
            (
                "fabrikam.onmicrosoft.com".to_owned(),
                "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[1].ClientId: expected a GUID, got \"[redacted]\""
                    .to_owned()
            ),
            (
                "MicrosoftTenants[2]".to_owned(),
                "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[2]: expected a JSON object, got a string"
                    .to_owned()
            ),
        ]
    );
    assert!(settings.names_tenant("FABRIKAM.onmicrosoft.com"));
    assert!(!settings.names_tenant("other.onmicrosoft.com"));
}

fn second_tenant_named(id: &str) -> serde_json::Value {
    let mut tenant = second_tenant();
    tenant["TenantId"] = json!(id);
    tenant
}

#[test]
fn malformed_json_a_bad_run_wide_setting_or_no_valid_tenant_fails_the_whole_configuration() {
    assert!(matches!(
        load(
            &[(CONFIG_JSON_VAR, "{\"MicrosoftTenants\": [".into())],
            None
        ),
        Err(ConfigError::Json { .. })
    ));
    let mut doc = json!({ "MicrosoftTenants": [tenant_json(), second_tenant()] });
    doc["MaxDeleteShare"] = json!(3);
    assert_error(
        load_doc(&doc),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MaxDeleteShare: expected a share greater than 0 and at most 1 \
         (0.1 allows 10%), got 3",
    );
    let mut broken = tenant_json();
    broken["ClientId"] = json!("nope");
    assert!(load_doc(&json!({ "MicrosoftTenants": [broken] })).is_err());
    // An invalid dry-run variable is run-wide: it never silently means "write".
    let vars = [
        (
            CONFIG_JSON_VAR,
            json!({ "MicrosoftTenants": [tenant_json()], "DryRun": true }).to_string(),
        ),
        (DRY_RUN_VAR, "perhaps".into()),
    ];
    assert!(load(&vars, None).is_err());
}

#[test]
fn any_source_saying_dry_run_wins_and_nothing_overrides_it() {
    let mut quiet = second_tenant();
    quiet["DryRun"] = json!(false);
    let doc = json!({ "MicrosoftTenants": [tenant_json(), quiet], "DryRun": false });
    for env in ["true", "1", "yes"] {
        let settings = load(
            &[
                (CONFIG_JSON_VAR, doc.to_string()),
                (DRY_RUN_VAR, env.into()),
            ],
            None,
        )
        .expect("valid");
        assert!(
            settings.dry_run,
            "the variable {env} wins over the document's false"
        );
        assert!(
            settings.tenants.iter().all(|t| t.dry_run),
            "no tenant's false overrides it"
        );
    }
    let file = TempFile::new(&doc.to_string());
    let settings = load(&[(DRY_RUN_VAR, "true".into())], Some(&file.0)).expect("valid");
    assert!(settings.dry_run && settings.tenants.iter().all(|t| t.dry_run));
    // A tenant onboarded in dry run while the others write.
    let mut onboarding = second_tenant();
    onboarding["DryRun"] = json!("yes");
    let mut settings =
        load_doc(&json!({ "MicrosoftTenants": [tenant_json(), onboarding] })).expect("valid");
    assert!(!settings.dry_run);
    assert_eq!(
        settings
            .tenants
            .iter()
            .map(|t| t.dry_run)
            .collect::<Vec<_>>(),
        [false, true]
    );
    // `--dry-run` adds dryness everywhere.
    settings.force_dry_run();
    assert!(settings.dry_run && settings.tenants.iter().all(|t| t.dry_run));
    // The document's own true holds against the variable's false.
    let settings = load(
        &[
            (
                CONFIG_JSON_VAR,
                json!({ "MicrosoftTenants": [tenant_json()], "DryRun": true }).to_string(),
            ),
            (DRY_RUN_VAR, "false".into()),
        ],
        None,
    )
    .expect("valid");
    assert!(settings.dry_run && settings.tenants[0].dry_run);
}

#[test]
fn enabled_and_update_existing_default_to_true_and_layer() {
    let settings = load_doc(&doc_with(|_| {})).expect("valid");
    assert!(settings.tenants[0].enabled);
    assert!(settings.tenants[0].mirror.update_existing);
    let mut off = second_tenant();
    off["Enabled"] = json!(false);
    off["UpdateExisting"] = json!(true);
    let doc = json!({ "MicrosoftTenants": [tenant_json(), off], "UpdateExisting": "no" });
    let settings = load_doc(&doc).expect("valid");
    assert_eq!(
        settings
            .tenants
            .iter()
            .map(|t| (t.enabled, t.mirror.update_existing))
            .collect::<Vec<_>>(),
        [(true, false), (false, true)]
    );
    assert!(settings.tenants[0]
        .to_string()
        .contains("creates only (UpdateExisting false)"));
    assert!(settings.tenants[1].to_string().contains("disabled"));
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("Enabled".into(), json!("sometimes"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].Enabled: expected a boolean (true/false, 1/0, \
         yes/no or y/n), got \"sometimes\"",
    );
}

#[test]
fn photos_default_off_layer_per_tenant_and_name_a_bad_value() {
    let settings = load_doc(&doc_with(|_| {})).expect("valid");
    assert!(!settings.tenants[0].photos);
    assert_eq!(
        settings.tenants[0].limits.upload_bytes_per_window,
        150_000_000
    );
    assert_eq!(
        settings.tenants[0].limits.upload_window,
        Duration::from_secs(300)
    );
    let mut off = second_tenant();
    off["Photos"] = json!(false);
    off["UploadBytesPerWindow"] = json!(1_000_000);
    off["UploadWindowSeconds"] = json!(5);
    let doc = json!({ "MicrosoftTenants": [tenant_json(), off], "Photos": "yes" });
    let settings = load_doc(&doc).expect("valid");
    assert!(settings.tenants[0].photos && !settings.tenants[1].photos);
    assert!(settings.tenants[0].to_string().contains(", photos"));
    assert_eq!(
        settings.tenants[1].limits.upload_bytes_per_window,
        1_000_000
    );
    assert_eq!(
        settings.tenants[1].limits.upload_window,
        Duration::from_secs(5)
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("Photos".into(), json!("always"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].Photos: expected a boolean (true/false, 1/0, \
         yes/no or y/n), got \"always\"",
    );
    assert_error_contains(
        load_doc(&doc_with(|t| {
            t.insert("UploadBytesPerWindow".into(), json!(0));
        })),
        &["MicrosoftTenants[0].UploadBytesPerWindow", "at least 1"],
    );
}

#[test]
fn test_users_are_looked_up_by_tenant_id_primary_domain_or_tenant_domain() {
    let mut first = tenant_json();
    first["TenantId"] = json!(GUID_TENANT);
    first["PrimaryDomain"] = json!("Contoso.com");
    let mut second = second_tenant();
    second["TenantDomain"] = json!("fabrikam.com");
    let vars = [
        (
            CONFIG_JSON_VAR,
            json!({ "MicrosoftTenants": [first, second] }).to_string(),
        ),
        (
            TEST_USER_LIST_BY_TENANT_JSON_VAR,
            json!({ "contoso.com": ["ann@contoso.com"], "FABRIKAM.com": ["bob"] }).to_string(),
        ),
    ];
    let settings = load(&vars, None).expect("valid");
    assert_eq!(settings.tenants[0].domains, ["contoso.com"]);
    assert_eq!(
        settings.tenants[0].test_user_list,
        Some(vec!["ann@contoso.com".to_owned()])
    );
    assert_eq!(
        settings.tenants[1].test_user_list,
        Some(vec!["bob".to_owned()])
    );
    assert_error(
        load_doc(&doc_with(|t| {
            t.insert("PrimaryDomain".into(), json!("not a domain"));
        })),
        "AUTOMATION_SYNCCONTACTS_CONFIG_JSON: MicrosoftTenants[0].PrimaryDomain: expected a verified domain such \
         as contoso.com, got \"not a domain\"",
    );
}

#[test]
fn an_empty_test_user_list_means_every_user() {
    let settings = load_doc(&doc_with(|t| {
        t.insert("TestUserList".into(), json!([]));
    }))
    .expect("valid");
    assert_eq!(settings.tenants[0].test_user_list, None);
}

// Issue 14: `CentralFields` and `Fields`.

fn tenant_of(doc: &serde_json::Value) -> TenantSettings {
    let settings = load_doc(doc).expect("valid configuration");
    assert!(
        settings.invalid_tenants.is_empty(),
        "{:?}",
        settings.invalid_tenants
    );
    settings.tenants[0].clone()
}

#[test]
fn field_rules_default_to_the_privacy_list_and_overwrite() {
    let tenant = tenant_of(&doc_with(|_| {}));
    assert_eq!(tenant.mirror.fields, FieldRules::default());
    let central = tenant.mirror.fields.central.set();
    assert!(!central.contains(crate::model::Field::HomeAddress));
    assert!(central.contains(crate::model::Field::MobilePhone));
    assert!(tenant.mirror.fields.policy.all_overwritten());
}

#[test]
fn central_fields_and_fields_are_read_per_tenant_and_run_wide() {
    use crate::model::Field;
    let mut doc = doc_with(|t| {
        t.insert(
            "fields".into(),
            json!({"JobTitle": "fillempty", "homePhones": "Ignore"}),
        );
    });
    doc["CentralFields"] = json!(["displayName", "EMAILADDRESSES", "birthday"]);
    doc["Fields"] = json!({"jobTitle": "Ignore", "businessPhones": "FillEmpty"});
    let tenant = tenant_of(&doc);
    let rules = tenant.mirror.fields;
    assert_eq!(
        rules.central.set().iter().collect::<Vec<_>>(),
        vec![Field::DisplayName, Field::EmailAddresses, Field::Birthday]
    );
    // Key by key: the tenant's own policy of a field wins, the run-wide ones it does not name stay.
    assert_eq!(rules.policy.get(Field::JobTitle), FieldPolicy::FillEmpty);
    assert_eq!(rules.policy.get(Field::HomePhones), FieldPolicy::Ignore);
    assert_eq!(
        rules.policy.get(Field::BusinessPhones),
        FieldPolicy::FillEmpty
    );
    assert_eq!(rules.policy.get(Field::Surname), FieldPolicy::Overwrite);
    let shown = tenant.to_string();
    assert!(
        shown.contains("jobTitle FillEmpty") && shown.contains("homePhones Ignore"),
        "{shown}"
    );
    assert!(
        shown.contains(r#"CentralFields {"displayName", "emailAddresses", "birthday"}"#),
        "{shown}"
    );
    assert!(!tenant_of(&doc_with(|_| {}))
        .to_string()
        .contains("CentralFields"));
    // A tenant's own CentralFields replaces the run-wide list; a single name is a one-element list.
    let mut doc = doc_with(|t| {
        t.insert(
            "CentralFields".into(),
            json!(["displayName", "emailAddresses", "jobTitle"]),
        );
    });
    doc["CentralFields"] = json!(["displayName", "emailAddresses", "homeAddress"]);
    let set = tenant_of(&doc).mirror.fields.central.set();
    assert!(set.contains(Field::JobTitle) && !set.contains(Field::HomeAddress));
}

#[test]
fn field_rule_mistakes_name_the_key_and_suggest_the_field() {
    let err = |edit: serde_json::Value| {
        let doc = doc_with(|t| {
            for (k, v) in edit.as_object().expect("object") {
                t.insert(k.clone(), v.clone());
            }
        });
        error_of(load_doc(&doc)).to_string()
    };
    let unknown = err(json!({"Fields": {"homeAdress": "Ignore"}}));
    assert!(unknown.contains("MicrosoftTenants[0].Fields"), "{unknown}");
    assert!(
        unknown.contains("\"homeAdress\"") && unknown.contains("did you mean \"homeAddress\"?"),
        "{unknown}"
    );
    let unknown = err(json!({"CentralFields": ["displayName", "emailAddresses", "jobtitel"]}));
    assert!(
        unknown.contains("CentralFields[2]") && unknown.contains("did you mean \"jobTitle\"?"),
        "{unknown}"
    );
    let notes = err(json!({"CentralFields": ["displayName", "emailAddresses", "personalNotes"]}));
    assert!(
        notes.contains("personalNotes never leaves its mailbox"),
        "{notes}"
    );
    let policy = err(json!({"Fields": {"jobTitle": "FillEmtpy"}}));
    assert!(
        policy.contains("Fields.jobTitle")
            && policy.contains("Overwrite, FillEmpty or Ignore")
            && policy.contains("did you mean \"FillEmpty\"?"),
        "{policy}"
    );
    let matched = err(json!({"Fields": {"emailAddresses": "FillEmpty"}}));
    assert!(
        matched.contains("Fields.emailAddresses") && matched.contains("matched"),
        "{matched}"
    );
    let missing = err(json!({"CentralFields": ["displayName", "jobTitle"]}));
    assert!(
        missing.contains("CentralFields") && missing.contains("without emailAddresses"),
        "{missing}"
    );
    let twice = err(json!({"Fields": {"jobTitle": "Ignore", "JOBTITLE": "Overwrite"}}));
    assert!(twice.contains("given twice"), "{twice}");
    let shape = err(json!({"Fields": ["jobTitle"]}));
    assert!(
        shape.contains("Fields") && shape.contains("an array"),
        "{shape}"
    );
    let shape = err(json!({"CentralFields": {"jobTitle": true}}));
    assert!(
        shape.contains("CentralFields") && shape.contains("an object"),
        "{shape}"
    );
}
