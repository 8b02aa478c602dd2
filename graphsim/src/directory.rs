//! The tenant's directory beyond users' mailboxes: groups with nested membership, organisational contacts, the
//! organisation's name, the app's granted roles, and the change log behind `/users/delta`.
//!
//! Every directory change bumps the tenant's directory version and remembers, per user, which property changed at
//! which version, so a delta round can show exactly the users whose *selected* properties changed (Graph does not
//! surface changes to unselected properties).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The application permissions an app registration gets by default: everything contactmirror may need.
pub const DEFAULT_ROLES: &[&str] = &[
    "Contacts.ReadWrite",
    "User.Read.All",
    "GroupMember.Read.All",
    "OrgContact.Read.All",
    "Organization.Read.All",
];

/// A group to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GroupSeed {
    /// Display name.
    pub display_name: String,
    /// Mail address (mail-enabled groups); `None` renders `"mail": null`.
    pub mail: Option<String>,
    /// Direct members: users (UPN or id), groups (id or mail) and org contacts (id or mail), resolved when added.
    pub members: Vec<String>,
}

/// An organisational contact to create: `microsoft.graph.orgContact` properties (displayName, mail, givenName,
/// surname, companyName, department, jobTitle, phones, addresses, proxyAddresses, ...). `id` is generated unless
/// given.
pub type OrgContactSeed = Map<String, Value>;

/// A group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Mail address.
    pub mail: Option<String>,
    /// Direct member object ids (users, groups, org contacts).
    pub members: Vec<String>,
}

impl Group {
    /// Graph's rendering (the subset of `microsoft.graph.group` a directory read needs).
    pub fn render(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "displayName": self.display_name,
            "mail": self.mail,
            "mailEnabled": self.mail.is_some(),
            "securityEnabled": self.mail.is_none(),
            "groupTypes": [],
            "description": null,
            "deletedDateTime": null,
        })
    }
}

/// When each property of a user last changed.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    /// Directory version at which the user was created (or last replaced).
    pub created: u64,
    /// Property name -> version of its last change (after creation).
    pub props: HashMap<String, u64>,
}

/// Directory state of one tenant besides the users themselves.
#[derive(Debug, Clone)]
pub struct DirectoryState {
    /// The organisation's display name (`GET /organization`).
    pub organization_name: String,
    /// Application roles granted to the tenant's app (carried by tokens issued afterwards).
    pub roles: Vec<String>,
    /// Groups in creation order.
    pub groups: Vec<Group>,
    /// Organisational contacts in creation order, rendered with every property.
    pub org_contacts: Vec<Map<String, Value>>,
    /// User id -> manager's user id.
    pub managers: HashMap<String, String>,
    /// Change counter of the directory (users).
    pub version: u64,
    /// User id (lowercase) -> when what changed.
    pub changes: HashMap<String, UserChanges>,
    /// Deleted users: (version, id).
    pub removed: Vec<(u64, String)>,
}

impl DirectoryState {
    /// An empty directory named after the tenant's domain.
    pub fn new(domain: &str) -> Self {
        let name = domain.split('.').next().unwrap_or(domain);
        Self {
            organization_name: capitalised(name),
            roles: DEFAULT_ROLES.iter().map(|r| (*r).to_owned()).collect(),
            groups: Vec::new(),
            org_contacts: Vec::new(),
            managers: HashMap::new(),
            version: 0,
            changes: HashMap::new(),
            removed: Vec::new(),
        }
    }

    /// Records a user created (or replaced as a whole).
    pub fn user_created(&mut self, id: &str) {
        self.version += 1;
        self.changes.insert(
            id.to_lowercase(),
            UserChanges {
                created: self.version,
                props: HashMap::new(),
            },
        );
        self.removed.retain(|(_, r)| !r.eq_ignore_ascii_case(id));
    }

    /// Records changed properties of a user.
    pub fn user_changed(&mut self, id: &str, props: impl IntoIterator<Item = String>) {
        self.version += 1;
        let version = self.version;
        let entry = self.changes.entry(id.to_lowercase()).or_default();
        for p in props {
            entry.props.insert(p, version);
        }
    }

    /// Records a deleted user.
    pub fn user_removed(&mut self, id: &str) {
        self.version += 1;
        self.changes.remove(&id.to_lowercase());
        self.managers.remove(id);
        self.managers.retain(|_, m| m != id);
        self.removed.push((self.version, id.to_owned()));
    }

    /// Whether user `id` shows in a delta round over `(since, upto]` with `select` (`None` = default properties:
    /// any property change counts) and, with `manager` (`$expand=manager`), a change of manager.
    pub fn user_in_round(
        &self,
        id: &str,
        since: u64,
        upto: u64,
        select: Option<&[String]>,
        manager: bool,
    ) -> bool {
        let Some(changes) = self.changes.get(&id.to_lowercase()) else {
            return false;
        };
        let within = |v: u64| v > since && v <= upto;
        if within(changes.created) {
            return true;
        }
        changes.props.iter().any(|(name, v)| {
            within(*v)
                && if name == "manager" {
                    manager
                } else {
                    select.is_none_or(|list| list.iter().any(|s| s.eq_ignore_ascii_case(name)))
                }
        })
    }

    /// Index of a group by object id or mail address (case-insensitive).
    pub fn group_index(&self, key: &str) -> Option<usize> {
        self.groups.iter().position(|g| {
            g.id.eq_ignore_ascii_case(key)
                || g.mail
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(key))
        })
    }

    /// Index of an org contact by object id or mail address (case-insensitive).
    pub fn org_contact_index(&self, key: &str) -> Option<usize> {
        self.org_contacts.iter().position(|c| {
            ["id", "mail"].iter().any(|p| {
                c.get(*p)
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.eq_ignore_ascii_case(key))
            })
        })
    }

    /// Every object id reachable from group `index` through nested groups (each once, cycles tolerated), groups
    /// included, in breadth-first order.
    pub fn transitive_members(&self, index: usize) -> Vec<String> {
        let mut seen_groups = BTreeSet::from([index]);
        let mut queue = vec![index];
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        while let Some(g) = queue.first().copied() {
            queue.remove(0);
            for member in &self.groups[g].members {
                if seen.insert(member.to_lowercase()) {
                    out.push(member.clone());
                }
                if let Some(nested) = self.group_index(member) {
                    if seen_groups.insert(nested) {
                        queue.push(nested);
                    }
                }
            }
        }
        out
    }
}

fn capitalised(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

/// The directory side of the simulator: groups, org contacts, managers, user changes and deletions, the app's
/// roles and the organisation's name. Each returns an error naming what does not exist.
impl crate::Sim {
    fn with_tenant<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&mut crate::state::Tenant) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut store = self.store();
        let index = store
            .tenant(tenant)
            .ok_or_else(|| format!("unknown tenant {tenant}"))?;
        f(&mut store.tenants[index])
    }

    /// Adds a group; members (users by UPN or id, groups and org contacts by id or mail) must exist already.
    /// Returns the group's object id.
    pub fn add_group(&self, tenant: &str, seed: GroupSeed) -> Result<String, String> {
        self.with_tenant(tenant, |t| {
            let members = seed
                .members
                .iter()
                .map(|m| member_id(t, m))
                .collect::<Result<Vec<_>, _>>()?;
            let id = uuid::Uuid::new_v4().to_string();
            t.dir.groups.push(Group {
                id: id.clone(),
                display_name: seed.display_name,
                mail: seed.mail,
                members,
            });
            Ok(id)
        })
    }

    /// Adds a direct member (user, group or org contact, by id, UPN or mail) to a group (by id or mail).
    pub fn add_group_member(&self, tenant: &str, group: &str, member: &str) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            let id = member_id(t, member)?;
            let g = t
                .dir
                .group_index(group)
                .ok_or_else(|| format!("unknown group {group}"))?;
            if !t.dir.groups[g].members.contains(&id) {
                t.dir.groups[g].members.push(id);
            }
            Ok(())
        })
    }

    /// Removes a direct member from a group (by id, UPN or mail).
    pub fn remove_group_member(
        &self,
        tenant: &str,
        group: &str,
        member: &str,
    ) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            let id = member_id(t, member)?;
            let g = t
                .dir
                .group_index(group)
                .ok_or_else(|| format!("unknown group {group}"))?;
            t.dir.groups[g].members.retain(|m| m != &id);
            Ok(())
        })
    }

    /// Adds an organisational contact (`microsoft.graph.orgContact` properties only); returns its object id.
    pub fn add_org_contact(&self, tenant: &str, seed: OrgContactSeed) -> Result<String, String> {
        if let Some(bad) = seed.keys().find(|k| {
            !crate::routes::directory::ORG_CONTACT_PROPERTIES
                .iter()
                .any(|p| p == k)
        }) {
            return Err(format!(
                "{bad} is not a property of microsoft.graph.orgContact"
            ));
        }
        self.with_tenant(tenant, |t| {
            let id = seed
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            let mut contact = match serde_json::json!({
                "id": id, "deletedDateTime": null, "addresses": [], "companyName": null, "department": null,
                "displayName": null, "givenName": null, "jobTitle": null, "mail": null, "mailNickname": null,
                "onPremisesLastSyncDateTime": null, "onPremisesProvisioningErrors": [],
                "onPremisesSyncEnabled": null, "phones": [], "proxyAddresses": [],
                "serviceProvisioningErrors": [], "surname": null,
            }) {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            for (k, v) in seed {
                contact.insert(k, v);
            }
            t.dir.org_contacts.push(contact);
            Ok(id)
        })
    }

    /// Sets (or with `None` clears) a user's manager; shows in `/users/delta` as a change of `manager`.
    pub fn set_manager(
        &self,
        tenant: &str,
        user: &str,
        manager: Option<&str>,
    ) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            let u = t
                .user_index(user)
                .ok_or_else(|| format!("unknown user {user}"))?;
            let id = t.users[u].id.clone();
            match manager {
                Some(m) => {
                    let b = t.user_index(m).ok_or_else(|| format!("unknown user {m}"))?;
                    let boss = t.users[b].id.clone();
                    t.dir.managers.insert(id.clone(), boss);
                }
                None => {
                    t.dir.managers.remove(&id);
                }
            }
            t.dir.user_changed(&id, ["manager".to_owned()]);
            Ok(())
        })
    }

    /// Changes directory properties of a user (an admin's edit, e.g. `{"accountEnabled": false}` to disable
    /// them); shows in `/users/delta` for rounds selecting a changed property.
    pub fn update_user(
        &self,
        tenant: &str,
        user: &str,
        props: Map<String, Value>,
    ) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            let u = t
                .user_index(user)
                .ok_or_else(|| format!("unknown user {user}"))?;
            let mut changed = Vec::new();
            for (k, v) in props {
                if k == "id" || k == "userPrincipalName" {
                    return Err(format!("{k} cannot be changed"));
                }
                if t.users[u].directory.get(&k) != Some(&v) {
                    changed.push(k.clone());
                    t.users[u].directory.insert(k, v);
                }
            }
            let id = t.users[u].id.clone();
            if !changed.is_empty() {
                t.dir.user_changed(&id, changed);
            }
            Ok(())
        })
    }

    /// Deletes a user (and their mailbox); `/users/delta` shows `@removed {"reason": "deleted"}`.
    pub fn remove_user(&self, tenant: &str, user: &str) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            let u = t
                .user_index(user)
                .ok_or_else(|| format!("unknown user {user}"))?;
            let removed = t.users.remove(u);
            t.index.clear();
            for (i, other) in t.users.iter().enumerate() {
                t.index.insert(other.upn.to_lowercase(), i);
                t.index.insert(other.id.to_lowercase(), i);
            }
            for g in &mut t.dir.groups {
                g.members.retain(|m| m != &removed.id);
            }
            t.dir.user_removed(&removed.id);
            Ok(())
        })
    }

    /// Sets the application roles granted to the tenant's app (`User.Read.All`, `GroupMember.Read.All`,
    /// `OrgContact.Read.All`, `Organization.Read.All`, `Contacts.ReadWrite`, ...); affects tokens issued
    /// afterwards. Default: [`DEFAULT_ROLES`].
    pub fn set_app_roles(&self, tenant: &str, roles: &[&str]) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            t.dir.roles = roles.iter().map(|r| (*r).to_owned()).collect();
            Ok(())
        })
    }

    /// Sets the organisation's display name (`GET /organization`).
    pub fn set_organization_name(&self, tenant: &str, name: &str) -> Result<(), String> {
        self.with_tenant(tenant, |t| {
            t.dir.organization_name = name.to_owned();
            Ok(())
        })
    }
}

/// The object id of a user (UPN or id), group (id or mail) or org contact (id or mail).
fn member_id(t: &crate::state::Tenant, key: &str) -> Result<String, String> {
    if let Some(u) = t.user_index(key) {
        return Ok(t.users[u].id.clone());
    }
    if let Some(g) = t.dir.group_index(key) {
        return Ok(t.dir.groups[g].id.clone());
    }
    if let Some(c) = t.dir.org_contact_index(key) {
        if let Some(id) = t.dir.org_contacts[c].get("id").and_then(Value::as_str) {
            return Ok(id.to_owned());
        }
    }
    Err(format!("no user, group or org contact {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, members: &[&str]) -> Group {
        Group {
            id: id.into(),
            display_name: id.into(),
            mail: Some(format!("{id}@x.com")),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn nested_membership_is_flattened_once_even_with_cycles() {
        let mut d = DirectoryState::new("contoso.onmicrosoft.com");
        d.groups = vec![
            group("g1", &["u1", "g2", "u2"]),
            group("g2", &["u2", "u3", "g1", "g3"]),
            group("g3", &["u4"]),
        ];
        assert_eq!(
            d.transitive_members(0),
            vec!["u1", "g2", "u2", "u3", "g1", "g3", "u4"]
        );
        assert_eq!(d.organization_name, "Contoso");
    }

    #[test]
    fn a_round_shows_only_selected_changes() {
        let mut d = DirectoryState::new("x.com");
        d.user_created("U1");
        let after_create = d.version;
        d.user_changed("u1", ["jobTitle".to_owned()]);
        let upto = d.version;
        let sel = vec!["displayName".to_owned()];
        assert!(!d.user_in_round("u1", after_create, upto, Some(&sel), false));
        assert!(d.user_in_round("u1", after_create, upto, None, false));
        let sel = vec!["JobTitle".to_owned()];
        assert!(d.user_in_round("u1", after_create, upto, Some(&sel), false));
        assert!(d.user_in_round("u1", 0, upto, Some(&sel), false));
        d.user_changed("u1", ["manager".to_owned()]);
        let (before, upto) = (upto, d.version);
        assert!(!d.user_in_round("u1", before, upto, None, false));
        assert!(d.user_in_round("u1", before, upto, Some(&sel), true));
    }
}
