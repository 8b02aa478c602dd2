//! `check` against graphsim, through the real binary: a ready tenant is ready and nothing is written; a missing
//! role, an unreachable shared mailbox, blocked mailboxes and a wrong secret are each named with their fix, as
//! a person reads them in the table; exit codes and the `--json` shape.

use graphsim::{EstateParams, SimConfig};
use serde_json::Value;

use crate::support::{self, Estate};

/// Runs `contactmirror-producer` with `args` and the configuration document `config`; exit code and stdout.
pub async fn producer(args: &[&str], config: &Value) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let config = config.to_string();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(support::binary("contactmirror-producer"))
            .args(&args)
            .env("AUTOMATION_SYNCCONTACTS_CONFIG_JSON", config)
            .env("CONTACTMIRROR_STATE_DIR", support::scratch_dir("state"))
            .env("RUST_LOG", "debug")
            .output()
            .expect("the producer starts");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("the producer finishes")
}

fn params(users: usize, tenants: usize, seed: u64) -> EstateParams {
    EstateParams {
        tenants,
        users_per_tenant: users,
        contacts_per_user: 5,
        overlap: 0.3,
        seed,
    }
}

/// The line of `text` that starts (after indentation) with `start`, or a panic showing the text.
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_tenant_is_ready_nothing_is_written_and_json_says_so() {
    // Four users: three licensed mailboxes that answer (the fourth is disabled).
    let estate = Estate::seed(SimConfig::default(), params(4, 1, 81)).await;
    let tenant = estate.tenants[0].clone();
    let config = estate.config_json();

    let (code, table, stderr) = producer(&["check"], &config).await;
    assert_eq!(code, 0, "{table}\n{stderr}");
    assert_eq!(
        line(&table, "tenant "),
        format!("tenant {}: ready", tenant.tenant_id)
    );
    assert!(
        line(&table, "token").contains("roles: Contacts.ReadWrite,"),
        "{table}"
    );
    assert_eq!(
        line(&table, "permission")
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "permission",
            "ok",
            "all",
            "needed:",
            "Contacts.ReadWrite,",
            "User.Read.All"
        ]
    );
    assert!(
        line(&table, "shared mailbox").contains(&tenant.shared_mailbox_upn),
        "{table}"
    );
    assert!(
        line(&table, "central folder")
            .contains("\"All Contacts\" does not exist yet: the first run creates it"),
        "{table}"
    );
    assert!(
        line(&table, "mailboxes").ends_with("3 take part; all 3 probed: all answer"),
        "{table}"
    );
    assert!(
        line(&table, "estimate").contains("first run: about "),
        "{table}"
    );
    assert_eq!(table.lines().last(), Some("1 of 1 tenant(s) ready"));

    let (code, json, _) = producer(&["check", "--json"], &config).await;
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["ready"], true);
    let t = &json["tenants"][0];
    assert_eq!(t["tenant_id"], tenant.tenant_id.as_str());
    assert_eq!(t["ready"], true);
    assert!(t["roles"]
        .as_array()
        .unwrap()
        .contains(&Value::from("User.Read.All")));
    assert_eq!(t["missing_permissions"], serde_json::json!([]));
    assert_eq!(t["mailboxes"]["taking_part"], 3);
    assert_eq!(t["mailboxes"]["probed"], 3);
    assert_eq!(t["mailboxes"]["unreachable"], serde_json::json!([]));
    // Every user and the shared mailbox hold 5 contacts: the estimate is made of them.
    assert_eq!(t["mailboxes"]["contacts_per_mailbox"], 5.0);
    assert!(t["estimate"]["requests"].as_u64().unwrap() > 3 * 15);
    let checks: Vec<&str> = t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        [
            "token",
            "permission",
            "shared_mailbox",
            "central_folder",
            "mailboxes",
            "estimate"
        ]
    );

    // Nothing written: no folder, and nothing but reads (and token requests) reached graphsim.
    let folders = estate
        .sim
        .folders(&tenant.tenant_id, &tenant.shared_mailbox_upn);
    assert!(
        !folders.iter().any(|f| f["displayName"] == "All Contacts"),
        "{folders:?}"
    );
    let writes: Vec<String> = estate
        .sim
        .request_log()
        .into_iter()
        .filter(|r| r.method != "GET" && !r.url.contains("/oauth2/"))
        .map(|r| format!("{} {}", r.method, r.url))
        .collect();
    assert!(writes.is_empty(), "check wrote: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_role_an_unreachable_shared_mailbox_and_blocked_mailboxes_are_named_with_their_fix(
) {
    // Sixteen users per tenant, among them one without a mailbox (user 9) and one outside the app's scope (13).
    let estate = Estate::seed(SimConfig::default(), params(16, 2, 82)).await;
    let (broken, locked) = (estate.tenants[0].clone(), estate.tenants[1].clone());
    estate
        .sim
        .set_app_roles(
            &broken.tenant_id,
            &[
                "Contacts.ReadWrite",
                "User.Read.All",
                "Organization.Read.All",
            ],
        )
        .unwrap();
    let mut config = estate.config_json();
    let first = &mut config["MicrosoftTenants"][0];
    first["GlobalAddressBookUserId"] = Value::from(format!("nobody@{}", broken.tenant_id));
    first["Directory"] =
        serde_json::json!({ "Enabled": true, "MemberTypes": ["Member", "Contact"] });
    config["MicrosoftTenants"][1]["ClientSecret"] = Value::from("not-the-secret-of-this-app");

    let (code, table, stderr) = producer(&["check", "--all"], &config).await;
    assert_eq!(code, 1, "{table}\n{stderr}");
    assert_eq!(
        line(&table, "tenant "),
        format!("tenant {}: NOT READY", broken.tenant_id)
    );
    assert_eq!(
        line(&table, "permission").trim(),
        "permission      FAIL     OrgContact.Read.All missing (needed for Directory.MemberTypes Contact)"
    );
    assert!(
        line(&table, "fix: Entra admin center").ends_with(&format!(
            "fix: Entra admin center > App registrations > {} > API permissions: add Microsoft Graph \
             application permission OrgContact.Read.All, then \"Grant admin consent\"",
            broken.client_id
        )),
        "{table}"
    );
    let shared = line(&table, "shared mailbox");
    assert!(shared.contains("FAIL"), "{table}");
    assert!(
        shared.contains("looking up the shared mailbox (GlobalAddressBookUserId): not found: check GlobalAddressBookUserId"),
        "{table}"
    );
    assert!(
        line(&table, "central folder").contains("skipped  not checked without the shared mailbox"),
        "{table}"
    );
    let mailboxes = line(&table, "mailboxes");
    assert!(mailboxes.contains("FAIL"), "{table}");
    assert!(
        mailboxes.contains("probed: 2 answer 403/404 and would fail every run"),
        "{table}"
    );
    let no_mailbox = broken.user_upns.iter().find(|u| u.contains(".9@")).unwrap();
    let blocked = broken
        .user_upns
        .iter()
        .find(|u| u.contains(".13@"))
        .unwrap();
    assert!(
        line(&table, &format!("404 {no_mailbox}"))
            .ends_with("no Exchange Online mailbox (licensed without one, or not provisioned yet)"),
        "{table}"
    );
    assert!(
        line(&table, &format!("403 {blocked}"))
            .ends_with("access denied: outside the app's RBAC scope or application access policy"),
        "{table}"
    );
    // The second tenant stops at its token, naming the setting.
    let locked_block = table
        .split(&format!("tenant {}: NOT READY", locked.tenant_id))
        .nth(1)
        .unwrap_or_else(|| panic!("no block for {}:\n{table}", locked.tenant_id));
    assert!(
        line(locked_block, "token")
            .contains("getting a token: the ClientSecret is wrong or expired"),
        "{table}"
    );
    assert!(
        !table.contains("not-the-secret-of-this-app")
            && !stderr.contains("not-the-secret-of-this-app")
    );
    assert_eq!(table.lines().last(), Some("0 of 2 tenant(s) ready"));

    let (code, json, _) = producer(
        &["check", "--all", "--json", "--tenant", &broken.tenant_id],
        &config,
    )
    .await;
    assert_eq!(code, 1);
    let json: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["ready"], false);
    assert_eq!(
        json["tenants"].as_array().unwrap().len(),
        1,
        "--tenant narrows"
    );
    let t = &json["tenants"][0];
    assert_eq!(
        t["missing_permissions"][0]["permission"],
        "OrgContact.Read.All"
    );
    let unreachable: Vec<(u64, &str)> = t["mailboxes"]["unreachable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["status"].as_u64().unwrap(),
                u["mailbox"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(unreachable.len(), 2, "{unreachable:?}");
    assert!(unreachable.contains(&(404, no_mailbox.as_str())));
    assert!(unreachable.contains(&(403, blocked.as_str())));
}
