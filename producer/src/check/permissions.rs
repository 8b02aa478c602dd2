//! Which Microsoft Graph application permissions a tenant's options need, and which of them its token lacks.
//! Pure: the options and the token's `roles` claim in, the missing permissions (with why and how to fix) out.

use serde::Serialize;
use shared::config::{MemberType, TenantSettings};

/// One application permission a tenant needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Requirement {
    /// The least-privileged permission, as the Entra portal names it.
    pub permission: &'static str,
    /// The option or step that needs it.
    pub needed_for: &'static str,
    /// Higher-privileged roles that grant the same (Graph accepts any of them).
    #[serde(skip)]
    pub also_granted_by: &'static [&'static str],
}

/// The roles besides `User.Read.All` that let an app read users (as Graph accepts them).
const USER_READERS: &[&str] = &[
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const GROUP_READERS: &[&str] = &[
    "Group.Read.All",
    "Group.ReadWrite.All",
    "GroupMember.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const DIRECTORY_READERS: &[&str] = &["Directory.Read.All", "Directory.ReadWrite.All"];
const ORGANIZATION_READERS: &[&str] = &[
    "Organization.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

/// The permissions `tenant`'s options need, least privileged first named: every tenant lists licensed users
/// and writes contacts; `TargetGroups` and directory group filters read group members; the directory reads the
/// organisation, and org contacts when `MemberTypes` has `Contact`.
pub fn required(tenant: &TenantSettings) -> Vec<Requirement> {
    let distribution = &tenant.distribution;
    let directory = &distribution.directory;
    let mut needs = vec![
        Requirement {
            permission: "Contacts.ReadWrite",
            needed_for: if distribution.mirror_enabled {
                "reading and writing contacts (central folder and users' mailboxes)"
            } else {
                "writing contacts into users' mailboxes"
            },
            also_granted_by: &[],
        },
        Requirement {
            permission: "User.Read.All",
            needed_for: "listing licensed users",
            also_granted_by: USER_READERS,
        },
    ];
    let groups = distribution.target_groups.is_some()
        || (directory.enabled
            && (!directory.include_groups.is_empty() || !directory.exclude_groups.is_empty()));
    if groups {
        needs.push(Requirement {
            permission: "GroupMember.Read.All",
            needed_for: "TargetGroups / Directory.IncludeGroups / Directory.ExcludeGroups",
            also_granted_by: GROUP_READERS,
        });
    }
    if directory.enabled && directory.member_types.contains(MemberType::Contact) {
        needs.push(Requirement {
            permission: "OrgContact.Read.All",
            needed_for: "Directory.MemberTypes Contact",
            also_granted_by: DIRECTORY_READERS,
        });
    }
    if directory.enabled {
        needs.push(Requirement {
            permission: "Organization.Read.All",
            needed_for: "Directory (the organisation's name)",
            also_granted_by: ORGANIZATION_READERS,
        });
    }
    needs
}

/// The requirements none of `granted` (the token's roles) satisfies, in the order given.
pub fn missing(required: &[Requirement], granted: &[String]) -> Vec<Requirement> {
    let has = |role: &str| granted.iter().any(|g| g.eq_ignore_ascii_case(role));
    required
        .iter()
        .filter(|r| !has(r.permission) && !r.also_granted_by.iter().any(|role| has(role)))
        .copied()
        .collect()
}

/// The one-line fix for a missing permission of app `client_id`.
pub fn fix(permission: &str, client_id: &str) -> String {
    format!(
        "Entra admin center > App registrations > {client_id} > API permissions: add Microsoft Graph \
         application permission {permission}, then \"Grant admin consent\""
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tenant(extra: serde_json::Value) -> TenantSettings {
        let mut entry = json!({
            "TenantId": "contoso.onmicrosoft.com",
            "ClientId": "11111111-2222-3333-4444-555555555555",
            "ClientSecret": "a-test-secret-value",
            "GlobalAddressBookUserId": "gal@contoso.onmicrosoft.com",
        });
        if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
            entry.extend(extra.clone());
        }
        let text = json!({ "MicrosoftTenants": [entry] }).to_string();
        let env =
            move |name: &str| (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| text.clone());
        let settings = shared::config::Settings::from_sources(&env, None).expect("valid");
        settings.tenants[0].clone()
    }

    fn names(requirements: &[Requirement]) -> Vec<&'static str> {
        requirements.iter().map(|r| r.permission).collect()
    }

    #[test]
    fn the_mirror_needs_contacts_and_users_only() {
        assert_eq!(
            names(&required(&tenant(json!({})))),
            ["Contacts.ReadWrite", "User.Read.All"]
        );
    }

    #[test]
    fn groups_org_contacts_and_the_directory_add_their_permissions() {
        let groups = tenant(json!({ "TargetGroups": ["sales@contoso.com"] }));
        assert!(names(&required(&groups)).contains(&"GroupMember.Read.All"));
        let directory = tenant(json!({
            "Directory": { "Enabled": true, "MemberTypes": ["Member", "Contact"] }
        }));
        assert_eq!(
            names(&required(&directory)),
            [
                "Contacts.ReadWrite",
                "User.Read.All",
                "OrgContact.Read.All",
                "Organization.Read.All"
            ]
        );
    }

    #[test]
    fn a_higher_privileged_role_satisfies_a_requirement_but_nothing_else_does() {
        let needs = required(&tenant(json!({
            "TargetGroups": ["sales@contoso.com"],
            "Directory": { "Enabled": true, "MemberTypes": ["Contact"] }
        })));
        let granted =
            |roles: &[&str]| -> Vec<String> { roles.iter().map(|r| (*r).to_owned()).collect() };
        assert_eq!(
            names(&missing(
                &needs,
                &granted(&["contacts.readwrite", "Directory.Read.All"])
            )),
            Vec::<&str>::new(),
            "Directory.Read.All reads users, groups, org contacts and the organisation"
        );
        assert_eq!(
            names(&missing(
                &needs,
                &granted(&["Contacts.Read", "User.Read.All"])
            )),
            [
                "Contacts.ReadWrite",
                "GroupMember.Read.All",
                "OrgContact.Read.All",
                "Organization.Read.All"
            ]
        );
        assert_eq!(missing(&needs, &[]).len(), needs.len());
    }

    #[test]
    fn the_fix_names_the_permission_and_the_app() {
        let line = fix("GroupMember.Read.All", "1111-app");
        assert!(
            line.contains("GroupMember.Read.All") && line.contains("1111-app"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
