//! What a tenant distributes and where (issue 11): `Mirror`, `Directory`, `TargetGroups`, `TargetFolder`.
//!
//! Each value is parsed into a type that cannot hold an invalid setting (a [`GroupRef`] is a GUID or a mail
//! address, a [`UserFilter`] has balanced quotes and parentheses and smuggles no query option, a [`FolderName`] is
//! one plain folder name), so the planners and the Graph reads never re-check them. `FromTenants` is checked
//! against the other tenants once all are read ([`check_from_tenants`]).

use std::collections::BTreeSet;
use std::fmt;

use uuid::Uuid;

use super::raw::{self, Fields, Loc, Node};
use super::ConfigError;

/// Keys of the `Mirror` object.
const MIRROR_KEYS: &[&str] = &["Enabled"];
/// Keys of the `Directory` object.
const DIRECTORY_KEYS: &[&str] = &[
    "Enabled",
    "MemberTypes",
    "IncludeGroups",
    "ExcludeGroups",
    "UserFilter",
    "ExcludeHidden",
    "FromTenants",
];

const GROUP: &str = "a group object id (GUID) or mail address";
const GROUPS: &str = "an array of group object ids (GUIDs) or mail addresses";
const MEMBER_TYPES: &str = "an array of member types (Member, Guest, Contact)";
const FOLDER: &str = "a top-level contact folder name (no / or \\, not the central folder's name)";
const FILTER: &str = "an OData $filter expression over users, such as department eq 'Sales'";
const TENANTS: &str = "an array of TenantIds of other tenants in this configuration";

/// A kind of directory entry the `Directory` source distributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberType {
    /// Enabled, licensed member users (today's definition of a licensed user).
    Member,
    /// Enabled guest users.
    Guest,
    /// Organisational contacts (`GET /contacts`, orgContact).
    Contact,
}

impl MemberType {
    const ALL: [MemberType; 3] = [MemberType::Member, MemberType::Guest, MemberType::Contact];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberType::Member => "Member",
            MemberType::Guest => "Guest",
            MemberType::Contact => "Contact",
        }
    }
}

/// A non-empty set of member types (an empty list would silently distribute nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTypes(BTreeSet<MemberType>);

impl MemberTypes {
    /// The set; `None` when empty.
    pub fn new(types: impl IntoIterator<Item = MemberType>) -> Option<Self> {
        let set: BTreeSet<MemberType> = types.into_iter().collect();
        (!set.is_empty()).then_some(Self(set))
    }

    /// Whether `kind` is distributed.
    pub fn contains(&self, kind: MemberType) -> bool {
        self.0.contains(&kind)
    }

    /// The types, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = MemberType> + '_ {
        self.0.iter().copied()
    }
}

impl Default for MemberTypes {
    /// `["Member"]`.
    fn default() -> Self {
        Self(BTreeSet::from([MemberType::Member]))
    }
}

/// A group as configured: its object id, or its mail address (resolved with `GET /groups?$filter=mail eq '...'`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupRef {
    /// Object id, hyphenated lowercase.
    Id(String),
    /// Mail address, lowercase.
    Mail(String),
}

impl GroupRef {
    /// Parses a GUID or a mail address (`local@domain.tld`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(guid) = Uuid::parse_str(text) {
            return Some(GroupRef::Id(guid.hyphenated().to_string()));
        }
        let (local, domain) = text.split_once('@')?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"@'\"(),;<>[]\\".contains(c))
        };
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| !label.is_empty())
            && plain(domain);
        (plain(local) && domain_ok).then(|| GroupRef::Mail(text.to_lowercase()))
    }
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupRef::Id(id) => f.write_str(id),
            GroupRef::Mail(mail) => f.write_str(mail),
        }
    }
}

/// An OData `$filter` over users, checked as far as possible without Graph: single quotes and parentheses
/// balanced, no control characters, and no `&`, `?`, `#` or `$option` outside string literals, so it cannot add
/// query options to the request it is ANDed into. Graph may still refuse it (a 400 the reader reports as this
/// key's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFilter(String);

impl UserFilter {
    /// Checks a filter; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty filter".into());
        }
        if text.chars().any(char::is_control) {
            return Err("a control character (line break, tab)".into());
        }
        let mut in_string = false;
        let mut depth: i64 = 0;
        let mut previous = ' ';
        for c in text.chars() {
            if c == '\'' {
                // OData escapes a quote inside a string by doubling it: "'O''Brien'" toggles four times.
                in_string = !in_string;
            } else if !in_string {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth < 0 {
                            return Err("a ')' without its '('".into());
                        }
                    }
                    '&' | '?' | '#' => {
                        return Err(format!("{c:?} outside a string (a filter cannot add query options)"))
                    }
                    // `assignedLicenses/$count` is a path segment; `$top=...` or ` $select` would be an option.
                    '$' if previous != '/' => {
                        return Err("'$' outside a string and not after '/' (a filter cannot add query options)".into())
                    }
                    _ => {}
                }
            }
            previous = c;
        }
        if in_string {
            return Err("an unterminated string (unbalanced ')".into());
        }
        if depth != 0 {
            return Err("a '(' without its ')'".into());
        }
        Ok(Self(text.to_owned()))
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One plain folder name: not empty, no path separator or control character, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderName(String);

impl FolderName {
    /// Checks a name; `central` is the tenant's central folder name, which a target folder must not take.
    pub fn parse(text: &str, central: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty name".into());
        }
        if text.contains(['/', '\\']) {
            return Err("a path (folders are named, not nested)".into());
        }
        if text.chars().any(char::is_control) {
            return Err("a control character".into());
        }
        if text.chars().count() > 255 {
            return Err("a name longer than 255 characters".into());
        }
        if text.eq_ignore_ascii_case(central) || text.to_lowercase() == central.to_lowercase() {
            return Err(format!(
                "the central folder's name {central:?} (it would mix the mirror's folder with managed copies)"
            ));
        }
        if text.eq_ignore_ascii_case("Contacts") {
            return Err("the default folder's name \"Contacts\" (leave the key out for it)".into());
        }
        Ok(Self(text.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where managed copies live in a receiving mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TargetFolder {
    /// The default Contacts folder (today's behaviour).
    #[default]
    DefaultContacts,
    /// A top-level contact folder of this name, created when missing.
    Named(FolderName),
}

/// The `Directory` settings of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryOptions {
    /// Distribute the directory into this tenant's mailboxes (default false). A source tenant's filters apply to
    /// what it exports whether or not this is on.
    pub enabled: bool,
    /// Which entries (default `Member`).
    pub member_types: MemberTypes,
    /// Only members (transitive) of any of these groups, when not empty.
    pub include_groups: Vec<GroupRef>,
    /// Never members (transitive) of any of these groups.
    pub exclude_groups: Vec<GroupRef>,
    /// ANDed into the user query.
    pub user_filter: Option<UserFilter>,
    /// Leave out users hidden from the address list (default true).
    pub exclude_hidden: bool,
    /// Other configured tenants whose directory is also distributed here (normalised TenantIds).
    pub from_tenants: Vec<String>,
}

impl Default for DirectoryOptions {
    fn default() -> Self {
        Self {
            enabled: false,
            member_types: MemberTypes::default(),
            include_groups: Vec::new(),
            exclude_groups: Vec::new(),
            user_filter: None,
            exclude_hidden: true,
            from_tenants: Vec::new(),
        }
    }
}

/// What a tenant distributes and to where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// `Mirror.Enabled` (default true): today's two phases through the shared mailbox.
    pub mirror_enabled: bool,
    /// The directory source.
    pub directory: DirectoryOptions,
    /// Only members of these groups receive anything; `None` = every licensed member user.
    pub target_groups: Option<Vec<GroupRef>>,
    /// Where managed copies live.
    pub target_folder: TargetFolder,
}

impl Distribution {
    /// Whether any directory reaches this tenant's mailboxes: its own (`Directory.Enabled`) or another tenant's
    /// (`Directory.FromTenants`).
    pub fn receives_directory(&self) -> bool {
        self.directory.enabled || !self.directory.from_tenants.is_empty()
    }

    /// Whether this tenant's mailboxes receive anything. A tenant with `Mirror.Enabled` and `Directory.Enabled`
    /// false and no `FromTenants` is a pure source: its directory is read for the tenants naming it in their
    /// `FromTenants`, and no job runs for its own mailboxes.
    pub fn receives(&self) -> bool {
        self.mirror_enabled || self.receives_directory()
    }
}

impl Default for Distribution {
    /// Today's behaviour: mirror on, directory off, every licensed user, default Contacts folder.
    fn default() -> Self {
        Self {
            mirror_enabled: true,
            directory: DirectoryOptions::default(),
            target_groups: None,
            target_folder: TargetFolder::DefaultContacts,
        }
    }
}

impl fmt::Display for Distribution {
    /// `mirror on, directory on (Member, Guest; 1 include group, user filter; from 1 tenant), receivers: 1 group,
    /// folder "Company Directory"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        let d = &self.directory;
        let types: Vec<&str> = d.member_types.iter().map(MemberType::as_str).collect();
        let mut details = vec![types.join(", ")];
        if !d.include_groups.is_empty() {
            details.push(format!("{} include group(s)", d.include_groups.len()));
        }
        if !d.exclude_groups.is_empty() {
            details.push(format!("{} exclude group(s)", d.exclude_groups.len()));
        }
        if d.user_filter.is_some() {
            details.push("user filter".into());
        }
        if !d.exclude_hidden {
            details.push("hidden users included".into());
        }
        if !d.from_tenants.is_empty() {
            details.push(format!("from {} tenant(s)", d.from_tenants.len()));
        }
        let receivers = match &self.target_groups {
            None => "every licensed user".to_owned(),
            Some(groups) => format!("{} group(s)", groups.len()),
        };
        let folder = match &self.target_folder {
            TargetFolder::DefaultContacts => "default Contacts".to_owned(),
            TargetFolder::Named(name) => format!("{:?}", name.as_str()),
        };
        write!(
            f,
            "mirror {}, directory {} ({}), receivers: {receivers}, folder {folder}",
            on(self.mirror_enabled),
            on(d.enabled),
            details.join("; ")
        )
    }
}

/// The distribution keys of one level (document root or tenant); `None` = not set here. `Directory` merges key by
/// key, so a root `Directory.MemberTypes` and a tenant's `Directory.Enabled` combine.
#[derive(Debug, Clone, Default)]
pub(super) struct Layer {
    mirror_enabled: Option<bool>,
    enabled: Option<bool>,
    member_types: Option<MemberTypes>,
    include_groups: Option<Vec<GroupRef>>,
    exclude_groups: Option<Vec<GroupRef>>,
    user_filter: Option<UserFilter>,
    exclude_hidden: Option<bool>,
    from_tenants: Option<(Vec<String>, Loc)>,
    target_groups: Option<Vec<GroupRef>>,
    /// The raw name and its location: checked in [`Layer::finish`], where the central folder name is known.
    target_folder: Option<(String, Loc)>,
}

impl Layer {
    pub(super) fn read(fields: &Fields) -> Result<Self, ConfigError> {
        let mut layer = Layer::default();
        if let Some((node, at)) = fields.get("Mirror") {
            let mirror = Fields::from_object(node, at, MIRROR_KEYS, &|_| None)?;
            if let Some((node, at)) = mirror.get("Enabled") {
                layer.mirror_enabled = raw::boolean(node, at)?;
            }
        }
        if let Some((node, at)) = fields.get("Directory") {
            let hint = |key: &str| {
                ["TargetGroups", "TargetFolder"]
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(key))
                    .then(|| format!("{key} belongs next to Directory, not inside it"))
            };
            let d = Fields::from_object(node, at, DIRECTORY_KEYS, &hint)?;
            if let Some((node, at)) = d.get("Enabled") {
                layer.enabled = raw::boolean(node, at)?;
            }
            if let Some((node, at)) = d.get("MemberTypes") {
                layer.member_types = Some(member_types(node, at)?);
            }
            if let Some((node, at)) = d.get("IncludeGroups") {
                layer.include_groups = Some(groups(node, at)?);
            }
            if let Some((node, at)) = d.get("ExcludeGroups") {
                layer.exclude_groups = Some(groups(node, at)?);
            }
            if let Some((node, at)) = d.get("UserFilter") {
                if let Some(text) = raw::string(node, at, FILTER)? {
                    layer.user_filter =
                        Some(
                            UserFilter::parse(&text).map_err(|why| ConfigError::Invalid {
                                at: at.to_string(),
                                expected: FILTER.into(),
                                got: format!("{} ({why})", raw::quoted(&text)),
                            })?,
                        );
                }
            }
            if let Some((node, at)) = d.get("ExcludeHidden") {
                layer.exclude_hidden = raw::boolean(node, at)?;
            }
            if let Some((node, at)) = d.get("FromTenants") {
                let list = strings(node, at, TENANTS, "a TenantId")?;
                let ids = list
                    .into_iter()
                    .map(|(id, _)| super::build::normalize_tenant_id(&id))
                    .fold(Vec::new(), |mut out: Vec<String>, id| {
                        if !out.contains(&id) {
                            out.push(id);
                        }
                        out
                    });
                layer.from_tenants = Some((ids, at.clone()));
            }
        }
        if let Some((node, at)) = fields.get("TargetGroups") {
            let list = groups(node, at)?;
            if list.is_empty() {
                return Err(ConfigError::Invalid {
                    at: at.to_string(),
                    expected: "at least one group (leave the key out for every licensed user)"
                        .into(),
                    got: "an empty array".into(),
                });
            }
            layer.target_groups = Some(list);
        }
        if let Some((node, at)) = fields.get("TargetFolder") {
            layer.target_folder = raw::string(node, at, FOLDER)?.map(|name| (name, at.clone()));
        }
        Ok(layer)
    }

    /// This level's values, falling back to `base` where unset.
    pub(super) fn over(self, base: &Layer) -> Layer {
        Layer {
            mirror_enabled: self.mirror_enabled.or(base.mirror_enabled),
            enabled: self.enabled.or(base.enabled),
            member_types: self.member_types.or_else(|| base.member_types.clone()),
            include_groups: self.include_groups.or_else(|| base.include_groups.clone()),
            exclude_groups: self.exclude_groups.or_else(|| base.exclude_groups.clone()),
            user_filter: self.user_filter.or_else(|| base.user_filter.clone()),
            exclude_hidden: self.exclude_hidden.or(base.exclude_hidden),
            from_tenants: self.from_tenants.or_else(|| base.from_tenants.clone()),
            target_groups: self.target_groups.or_else(|| base.target_groups.clone()),
            target_folder: self.target_folder.or_else(|| base.target_folder.clone()),
        }
    }

    /// Whether `Mirror.Enabled` is on (the default), i.e. whether `GlobalAddressBookUserId` is required.
    pub(super) fn mirror_enabled(&self) -> bool {
        self.mirror_enabled.unwrap_or(true)
    }

    /// The settings, with the target folder checked against the tenant's central folder name. Also returns where
    /// `FromTenants` was given, for [`check_from_tenants`].
    pub(super) fn finish(self, central: &str) -> Result<(Distribution, Option<Loc>), ConfigError> {
        let target_folder = match self.target_folder {
            None => TargetFolder::DefaultContacts,
            Some((name, at)) => {
                TargetFolder::Named(FolderName::parse(&name, central).map_err(|why| {
                    ConfigError::Invalid {
                        at: at.to_string(),
                        expected: FOLDER.into(),
                        got: format!("{} ({why})", raw::quoted(&name)),
                    }
                })?)
            }
        };
        let (from_tenants, from_at) = match self.from_tenants {
            Some((ids, at)) => (ids, Some(at)),
            None => (Vec::new(), None),
        };
        let distribution = Distribution {
            mirror_enabled: self.mirror_enabled.unwrap_or(true),
            directory: DirectoryOptions {
                enabled: self.enabled.unwrap_or(false),
                member_types: self.member_types.unwrap_or_default(),
                include_groups: self.include_groups.unwrap_or_default(),
                exclude_groups: self.exclude_groups.unwrap_or_default(),
                user_filter: self.user_filter,
                exclude_hidden: self.exclude_hidden.unwrap_or(true),
                from_tenants,
            },
            target_groups: self.target_groups,
            target_folder,
        };
        Ok((distribution, from_at))
    }
}

/// Every tenant's `FromTenants` names another configured tenant. `tenants` holds each tenant's id, its
/// distribution and where its `FromTenants` was given.
pub(super) fn check_from_tenants(
    tenants: &[(&str, &Distribution, Option<&Loc>)],
) -> Result<(), ConfigError> {
    for (id, distribution, at) in tenants {
        let Some(at) = at else { continue };
        for source in &distribution.directory.from_tenants {
            if source.eq_ignore_ascii_case(id) {
                return Err(ConfigError::Invalid {
                    at: at.to_string(),
                    expected: format!("{TENANTS} (not tenant {id} itself)"),
                    got: raw::quoted(source),
                });
            }
            if !tenants
                .iter()
                .any(|(other, _, _)| other.eq_ignore_ascii_case(source))
            {
                let configured: Vec<&str> = tenants.iter().map(|(t, _, _)| *t).collect();
                return Err(ConfigError::Invalid {
                    at: at.to_string(),
                    expected: format!(
                        "the TenantId of a configured tenant ({})",
                        configured.join(", ")
                    ),
                    got: raw::quoted(source),
                });
            }
        }
    }
    Ok(())
}

/// A list of non-empty strings with their locations; a single string counts as a one-element list (PowerShell's
/// `ConvertTo-Json` writes one-element arrays that way). An empty array is an empty list.
/// A list of strings (a single string counts as a one-element list), each with where it stands.
pub(super) fn strings(
    node: &Node,
    at: &Loc,
    expected: &str,
    item: &str,
) -> Result<Vec<(String, Loc)>, ConfigError> {
    let items: Vec<(&Node, Loc)> = match node {
        Node::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, n)| (n, at.index(i)))
            .collect(),
        Node::String(_) => vec![(node, at.clone())],
        other => {
            return Err(ConfigError::Invalid {
                at: at.to_string(),
                expected: expected.into(),
                got: other.kind().into(),
            })
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (node, item_at) in items {
        match raw::string(node, &item_at, item)? {
            Some(value) => out.push((value, item_at)),
            None => {
                return Err(ConfigError::Missing {
                    at: item_at.to_string(),
                    expected: item.into(),
                })
            }
        }
    }
    Ok(out)
}

fn groups(node: &Node, at: &Loc) -> Result<Vec<GroupRef>, ConfigError> {
    let mut out: Vec<GroupRef> = Vec::new();
    for (text, item_at) in strings(node, at, GROUPS, GROUP)? {
        let group = GroupRef::parse(&text).ok_or_else(|| ConfigError::Invalid {
            at: item_at.to_string(),
            expected: GROUP.into(),
            got: raw::quoted(&text),
        })?;
        if !out.contains(&group) {
            out.push(group);
        }
    }
    Ok(out)
}

fn member_types(node: &Node, at: &Loc) -> Result<MemberTypes, ConfigError> {
    let mut kinds = Vec::new();
    for (text, item_at) in strings(node, at, MEMBER_TYPES, "a member type")? {
        let kind = MemberType::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(&text))
            .ok_or_else(|| ConfigError::Invalid {
                at: item_at.to_string(),
                expected: "Member, Guest or Contact".into(),
                got: raw::quoted(&text),
            })?;
        kinds.push(kind);
    }
    MemberTypes::new(kinds).ok_or_else(|| ConfigError::Invalid {
        at: at.to_string(),
        expected: "at least one member type (leave the key out for Member)".into(),
        got: "an empty array".into(),
    })
}
