//! Directory reads for the directory source (issue 11): users with every mapped field and their manager, org
//! contacts, transitive group members (a group given by mail resolved first), `/users/delta` rounds and the
//! organisation's name. Built on the client's one request path (`send`, `get_all`): no retry loop of its own.
//!
//! Why the errors are their own type: a tenant that lacks a permission must fail with a message naming that
//! permission (`GroupMember.Read.All`, `OrgContact.Read.All`, ...), and Graph's 400 for a `UserFilter` is a
//! configuration error of that key, not a Graph outage.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;
use tracing::info;
use url::Url;

use super::error::GraphError;
use super::page::same_origin_url;
use super::transport::DIRECTORY;
use super::TenantClient;
use crate::config::{DirectoryOptions, GroupRef, MemberType, UserFilter};
use crate::directory::{
    resolve_manager_names, DirectorySnapshot, GroupFilter, KeptUsers, ManagerRef, OrgContactRecord,
    UserRecord, UsersChanges,
};
use crate::feed::DeltaLink;

/// The application permission a directory read needs (least privileged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryPermission {
    /// Users, their managers, `/users/delta`.
    UserReadAll,
    /// Group membership (`transitiveMembers`, groups by mail).
    GroupMemberReadAll,
    /// Organisational contacts.
    OrgContactReadAll,
    /// The organisation's name.
    OrganizationReadAll,
}

impl DirectoryPermission {
    /// The permission's name as the Entra portal shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryPermission::UserReadAll => "User.Read.All",
            DirectoryPermission::GroupMemberReadAll => "GroupMember.Read.All",
            DirectoryPermission::OrgContactReadAll => "OrgContact.Read.All",
            DirectoryPermission::OrganizationReadAll => "Organization.Read.All",
        }
    }
}

impl fmt::Display for DirectoryPermission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed directory read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// Graph refused the read (403): the app registration lacks the permission, or admin consent for it.
    #[error(
        "the app registration lacks the application permission {permission} (grant it and give admin consent): {source}"
    )]
    MissingPermission {
        /// What to grant.
        permission: DirectoryPermission,
        /// Graph's answer.
        #[source]
        source: GraphError,
    },
    /// Graph refused the configured `Directory.UserFilter` (400): a configuration error of that key.
    #[error("Directory.UserFilter {filter:?} was refused by Graph: {source}")]
    UserFilterRejected {
        /// The filter as configured.
        filter: String,
        /// Graph's answer.
        #[source]
        source: GraphError,
    },
    /// A configured group (`IncludeGroups`, `ExcludeGroups`, `TargetGroups`) does not exist.
    #[error("group {group} does not exist in the tenant (check IncludeGroups, ExcludeGroups and TargetGroups)")]
    GroupNotFound {
        /// The group as configured.
        group: GroupRef,
    },
    /// Any other failure (throttling, outage, token): as classified by [`GraphError::kind`].
    #[error(transparent)]
    Graph(#[from] GraphError),
}

impl DirectoryError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DirectoryError::Graph(e) if e.is_transient())
    }
}

/// Maps a 403 to the permission the read needs.
fn needs(permission: DirectoryPermission) -> impl Fn(GraphError) -> DirectoryError {
    move |error| match error.status() {
        Some(403) => DirectoryError::MissingPermission {
            permission,
            source: error,
        },
        _ => DirectoryError::Graph(error),
    }
}

/// Which users a directory read asks Graph for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserKind {
    /// Enabled users with a licence (today's licensed-user query; `userType` is checked by the selection).
    Members,
    /// Enabled guests.
    Guests,
}

impl UserKind {
    fn filter(self) -> &'static str {
        match self {
            UserKind::Members => "assignedLicenses/$count ne 0 and accountEnabled eq true",
            UserKind::Guests => "userType eq 'Guest' and accountEnabled eq true",
        }
    }
}

/// One round of `/users/delta`: what changed and where the feed stands now.
#[derive(Debug, Clone)]
pub struct UsersDeltaRound {
    /// Users created or changed in the round (all users in a first round), the last word per id. A disabled
    /// user is a change of `accountEnabled`, not a removal.
    pub changed: Vec<UserRecord>,
    /// Object ids of deleted users.
    pub removed: Vec<String>,
    /// Lower-cased ids of changed users whose manager the round removed. A changed user with no manager and
    /// not listed here keeps the manager known before (Graph reports a relationship when it changes).
    pub manager_removed: BTreeSet<String>,
    /// The link for the next round.
    pub link: DeltaLink,
}

impl UsersDeltaRound {
    /// What the round changed, for [`KeptUsers::apply`].
    pub fn into_changes(self) -> UsersChanges {
        UsersChanges {
            changed: self.changed,
            removed: self.removed,
            manager_removed: self.manager_removed,
        }
    }
}

/// A delta item: a user, or an id with `@removed`. The manager comes as `manager@delta` (ids only): delta
/// tracks navigation properties that way and has no `$expand`.
#[derive(Debug, Deserialize)]
struct DeltaItem {
    #[serde(rename = "@removed", default)]
    removed: Option<serde_json::Value>,
    #[serde(rename = "manager@delta", default)]
    manager_delta: Option<Vec<ManagerDelta>>,
    #[serde(flatten)]
    user: UserRecord,
}

/// One entry of `manager@delta`: the manager, or (with `@removed`) the one the user no longer has.
#[derive(Debug, Deserialize)]
struct ManagerDelta {
    #[serde(rename = "@removed", default)]
    removed: Option<serde_json::Value>,
    #[serde(flatten)]
    manager: ManagerRef,
}

/// An id and the expanded manager, from the manager listing.
#[derive(Debug, Deserialize)]
struct ManagerOf {
    id: String,
    #[serde(default)]
    manager: Option<ManagerRef>,
}

/// A directory object's id (transitive members, groups by mail).
#[derive(Debug, Deserialize)]
struct ObjectId {
    id: String,
}

/// The organisation's name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Organization {
    #[serde(default)]
    display_name: Option<String>,
}

/// Page size for directory lists (Graph's maximum for users).
const TOP: &str = "999";
/// What the manager of a user is read as.
const MANAGER_EXPAND: &str = "manager($select=id,displayName)";
/// A users delta selects every mapped field and tracks the manager.
const DELTA_SELECT: &str = concat!(
    "id,userPrincipalName,displayName,givenName,surname,jobTitle,department,companyName,officeLocation,",
    "businessPhones,mobilePhone,mail,proxyAddresses,streetAddress,city,state,postalCode,country,userType,",
    "accountEnabled,showInAddressList,assignedLicenses,manager"
);

/// Fills each user's manager from the manager listing.
fn attach_managers(users: &mut [UserRecord], managers: &HashMap<String, ManagerRef>) {
    for user in users {
        user.manager = managers.get(&user.id.to_lowercase()).cloned();
    }
}

/// A string literal for an OData filter: quotes doubled.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl TenantClient {
    /// Enabled users of `kind`, `filter` ANDed in, with every field [`UserRecord`] maps and their managers.
    ///
    /// Two listings: the advanced query (Graph refuses `$expand` with `ConsistencyLevel: eventual`), then every
    /// user's manager (`$expand=manager`), joined by id.
    pub async fn directory_users(
        &self,
        kind: UserKind,
        filter: Option<&UserFilter>,
    ) -> Result<Vec<UserRecord>, DirectoryError> {
        let mut users = self.users_of(kind, filter).await?;
        let managers = self.managers().await?;
        attach_managers(&mut users, &managers);
        Ok(users)
    }

    /// A tenant's directory as its `Directory` settings select it, read once: the users of the configured member
    /// types (their managers from one listing), org contacts when `Contact` is listed, the include/exclude groups'
    /// members, and the organisation's name. A constant number of listings per tenant, whatever the number of
    /// receiving mailboxes.
    pub async fn read_directory(
        &self,
        options: &DirectoryOptions,
        shared_mailbox: Option<&str>,
    ) -> Result<DirectorySnapshot, DirectoryError> {
        let filter = options.user_filter.as_ref();
        let mut users = Vec::new();
        if options.member_types.contains(MemberType::Member) {
            users.extend(self.users_of(UserKind::Members, filter).await?);
        }
        if options.member_types.contains(MemberType::Guest) {
            users.extend(self.users_of(UserKind::Guests, filter).await?);
        }
        if !users.is_empty() {
            let managers = self.managers().await?;
            attach_managers(&mut users, &managers);
        }
        self.directory_around(options, shared_mailbox, users).await
    }

    /// The directory as [`TenantClient::read_directory`] reads it, its users taken from the users' change feed
    /// `kept` (the last run's, brought up to date by one `/users/delta` round: one request when nothing changed)
    /// instead of two listings; returns the feed to keep. A link Graph no longer knows (410 `SyncStateNotFound`)
    /// or none starts a new feed, which lists every user once. With a `UserFilter` no feed is used (`/users/delta`
    /// takes no `$filter`): the users are listed as `read_directory` lists them and no feed is returned.
    /// Org contacts and group memberships have no such feed here: they are read in full, only when the settings
    /// use them (`Contact`, `IncludeGroups`, `ExcludeGroups`).
    pub async fn read_directory_kept(
        &self,
        options: &DirectoryOptions,
        shared_mailbox: Option<&str>,
        kept: Option<KeptUsers>,
    ) -> Result<(DirectorySnapshot, Option<KeptUsers>), DirectoryError> {
        if options.user_filter.is_some() {
            return Ok((self.read_directory(options, shared_mailbox).await?, None));
        }
        let kept = self.users_feed(kept).await?;
        let users = if options.member_types.contains(MemberType::Member)
            || options.member_types.contains(MemberType::Guest)
        {
            kept.users()
        } else {
            Vec::new()
        };
        let snapshot = self
            .directory_around(options, shared_mailbox, users)
            .await?;
        Ok((snapshot, Some(kept)))
    }

    /// The users' change feed brought up to date: one round from `kept`'s link applied to it, or, without a
    /// usable link, a new feed listing every user.
    pub async fn users_feed(&self, kept: Option<KeptUsers>) -> Result<KeptUsers, DirectoryError> {
        if let Some(mut kept) = kept {
            match self.users_delta_since(&kept.link).await {
                Ok(round) => {
                    let link = round.link.clone();
                    kept.apply(round.into_changes(), link);
                    return Ok(kept);
                }
                Err(DirectoryError::Graph(error))
                    if matches!(error.kind(), super::ErrorKind::InvalidDeltaToken)
                        || matches!(error, GraphError::Protocol(_)) =>
                {
                    info!(tenant = %self.tenant_id(), %error, "kept users delta link not usable; listing every user again");
                }
                Err(error) => return Err(error),
            }
        }
        let round = self.users_delta_start().await?;
        Ok(KeptUsers::start(round.changed, round.link))
    }

    /// Everything of a directory but its users: org contacts (when `Contact` is listed), the include/exclude
    /// groups' members, the organisation's name.
    async fn directory_around(
        &self,
        options: &DirectoryOptions,
        shared_mailbox: Option<&str>,
        users: Vec<UserRecord>,
    ) -> Result<DirectorySnapshot, DirectoryError> {
        let org_contacts = if options.member_types.contains(MemberType::Contact) {
            self.org_contacts().await?
        } else {
            Vec::new()
        };
        let include = if options.include_groups.is_empty() {
            None
        } else {
            Some(self.members_of_any(&options.include_groups).await?)
        };
        let exclude = self.members_of_any(&options.exclude_groups).await?;
        Ok(DirectorySnapshot {
            tenant_id: self.tenant_id().to_owned(),
            users,
            org_contacts,
            groups: GroupFilter::new(include, exclude),
            organization_name: self.organization_name().await?,
            shared_mailbox: shared_mailbox.map(str::to_owned),
        })
    }

    /// The object ids of the transitive members of any of `groups` (`TargetGroups`, or a filter's groups).
    pub async fn members_of_any(&self, groups: &[GroupRef]) -> Result<Vec<String>, DirectoryError> {
        let mut out = Vec::new();
        for group in groups {
            out.extend(self.group_members(group).await?);
        }
        Ok(out)
    }

    /// Enabled users of `kind` with `filter` ANDed in, without managers.
    async fn users_of(
        &self,
        kind: UserKind,
        filter: Option<&UserFilter>,
    ) -> Result<Vec<UserRecord>, DirectoryError> {
        let expression = match filter {
            Some(f) => format!("({}) and ({})", kind.filter(), f.as_str()),
            None => kind.filter().to_owned(),
        };
        let url = self.inner.url(
            &["users"],
            &[
                ("$filter", &expression),
                ("$count", "true"),
                ("$select", UserRecord::SELECT),
                ("$top", TOP),
            ],
        )?;
        self.inner
            .get_all("directory user page", url, DIRECTORY, true)
            .await
            .map_err(|error| match (error.status(), filter) {
                (Some(400), Some(f)) => DirectoryError::UserFilterRejected {
                    filter: f.as_str().to_owned(),
                    source: error,
                },
                _ => needs(DirectoryPermission::UserReadAll)(error),
            })
    }

    /// Every user's manager (id and display name), by lower-cased user id; users without one are absent.
    pub async fn managers(&self) -> Result<HashMap<String, ManagerRef>, DirectoryError> {
        let url = self.inner.url(
            &["users"],
            &[
                ("$select", "id"),
                ("$expand", MANAGER_EXPAND),
                ("$top", TOP),
            ],
        )?;
        let rows: Vec<ManagerOf> = self
            .inner
            .get_all("manager page", url, DIRECTORY, false)
            .await
            .map_err(needs(DirectoryPermission::UserReadAll))?;
        Ok(rows
            .into_iter()
            .filter_map(|row| row.manager.map(|m| (row.id.to_lowercase(), m)))
            .collect())
    }

    /// Every organisational contact (`GET /contacts`).
    pub async fn org_contacts(&self) -> Result<Vec<OrgContactRecord>, DirectoryError> {
        let url = self.inner.url(
            &["contacts"],
            &[("$select", OrgContactRecord::SELECT), ("$top", TOP)],
        )?;
        self.inner
            .get_all("org contact page", url, DIRECTORY, false)
            .await
            .map_err(needs(DirectoryPermission::OrgContactReadAll))
    }

    /// A group's object id: as configured, or looked up by mail address (`GET /groups?$filter=mail eq '...'`).
    pub async fn resolve_group(&self, group: &GroupRef) -> Result<String, DirectoryError> {
        let mail = match group {
            GroupRef::Id(id) => return Ok(id.clone()),
            GroupRef::Mail(mail) => mail,
        };
        let filter = format!("mail eq {}", literal(mail));
        let url = self
            .inner
            .url(&["groups"], &[("$filter", &filter), ("$select", "id,mail")])?;
        let found: Vec<ObjectId> = self
            .inner
            .get_all("group page", url, DIRECTORY, false)
            .await
            .map_err(needs(DirectoryPermission::GroupMemberReadAll))?;
        found
            .into_iter()
            .next()
            .map(|g| g.id)
            .ok_or_else(|| DirectoryError::GroupNotFound {
                group: group.clone(),
            })
    }

    /// Object ids of every transitive member of a group (users, org contacts and nested groups), all pages.
    pub async fn group_members(&self, group: &GroupRef) -> Result<Vec<String>, DirectoryError> {
        let id = self.resolve_group(group).await?;
        let url = self.inner.url(
            &["groups", &id, "transitiveMembers"],
            &[("$select", "id"), ("$top", TOP)],
        )?;
        let members: Vec<ObjectId> = self
            .inner
            .get_all("group member page", url, DIRECTORY, false)
            .await
            .map_err(|error| match error.status() {
                Some(404) => DirectoryError::GroupNotFound {
                    group: group.clone(),
                },
                _ => needs(DirectoryPermission::GroupMemberReadAll)(error),
            })?;
        Ok(members.into_iter().map(|m| m.id).collect())
    }

    /// The organisation's display name (`GET /organization`), the company name of users without one.
    pub async fn organization_name(&self) -> Result<Option<String>, DirectoryError> {
        let url = self
            .inner
            .url(&["organization"], &[("$select", "displayName")])?;
        let orgs: Vec<Organization> = self
            .inner
            .get_all("organization", url, DIRECTORY, false)
            .await
            .map_err(needs(DirectoryPermission::OrganizationReadAll))?;
        Ok(orgs
            .into_iter()
            .find_map(|o| o.display_name.filter(|n| !n.trim().is_empty())))
    }

    /// Starts the users' change feed: a first round listing every user (with every mapped field and the manager)
    /// that ends with the feed's first link. Managers arrive as ids; a round resolves the names it can from its own
    /// users (a first round: all), the caller the rest against its kept snapshot
    /// ([`crate::directory::resolve_manager_names`]).
    pub async fn users_delta_start(&self) -> Result<UsersDeltaRound, DirectoryError> {
        let url = self
            .inner
            .url(&["users", "delta"], &[("$select", DELTA_SELECT)])?;
        self.users_delta_round(url).await
    }

    /// What changed among users since `link`. A link Graph no longer knows fails with
    /// [`ErrorKind::InvalidDeltaToken`](super::ErrorKind::InvalidDeltaToken): start a new feed.
    pub async fn users_delta_since(
        &self,
        link: &DeltaLink,
    ) -> Result<UsersDeltaRound, DirectoryError> {
        let base = self.inner.base()?;
        let url = same_origin_url(&base, "the kept users delta link", link.as_str())?;
        self.users_delta_round(url).await
    }

    async fn users_delta_round(&self, first: Url) -> Result<UsersDeltaRound, DirectoryError> {
        // Graph may replay an object within a round: the last word about each id wins (sorted out at the end).
        let mut items: Vec<DeltaItem> = Vec::new();
        let link = self
            .follow_delta(first, DIRECTORY, None, "users delta page", |page| {
                items.extend(page)
            })
            .await
            .map_err(needs(DirectoryPermission::UserReadAll))?;
        let mut seen = std::collections::HashSet::new();
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        let mut manager_removed = BTreeSet::new();
        for item in items.into_iter().rev() {
            if !seen.insert(item.user.id.to_lowercase()) {
                continue;
            }
            if item.removed.is_some() {
                removed.push(item.user.id);
                continue;
            }
            let mut user = item.user;
            let entries = item.manager_delta.unwrap_or_default();
            user.manager = entries
                .iter()
                .find(|m| m.removed.is_none() && m.manager.id.is_some())
                .map(|m| m.manager.clone());
            if user.manager.is_none() && entries.iter().any(|m| m.removed.is_some()) {
                manager_removed.insert(user.id.to_lowercase());
            }
            changed.push(user);
        }
        changed.reverse();
        resolve_manager_names(&mut changed);
        removed.reverse();
        Ok(UsersDeltaRound {
            changed,
            removed,
            manager_removed,
            link,
        })
    }
}
