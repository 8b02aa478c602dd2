//! Who is distributed: from the entries read, the resolved group memberships and a tenant's `Directory` settings
//! to the exact set of directory persons, and from that set to what one receiving mailbox gets (everyone but
//! itself).
//!
//! `UserFilter` is not applied here: Graph applies it to the user read it is ANDed into.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{DirectoryOptions, MemberType};
use crate::model::{ContactFields, ContactWrite, Mailbox, PackedFields};
use crate::sync::SyncId;

use super::mapping::{org_contact_fields, user_fields};
use super::record::{OrgContactRecord, UserRecord};

/// The fixed "source mailbox" slot of a directory person's sync id, so ids never collide with those of mirrored
/// personal contacts (whose slot is a mailbox object id).
pub const DIRECTORY_SYNC_NAMESPACE: &str = "directory";

/// The sync id of a directory person: [`SyncId::derive`] over the *source* tenant, [`DIRECTORY_SYNC_NAMESPACE`]
/// and the lower-cased object id. Deterministic, so every copy of a person is traceable to the entry and a
/// re-run finds what it wrote.
pub fn directory_sync_id(source_tenant: &str, object_id: &str) -> SyncId {
    SyncId::derive(
        source_tenant,
        DIRECTORY_SYNC_NAMESPACE,
        &object_id.trim().to_lowercase(),
    )
}

/// Resolved group filters: the object ids (lower case) of the transitive members of `IncludeGroups` and
/// `ExcludeGroups`. `include: None` means no `IncludeGroups` configured (everyone passes); `Some(empty)` means
/// the groups have no members (nobody passes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFilter {
    include: Option<BTreeSet<String>>,
    exclude: BTreeSet<String>,
}

impl GroupFilter {
    /// A filter from the members of the include groups (`None` when none are configured) and of the exclude
    /// groups.
    pub fn new(
        include: Option<impl IntoIterator<Item = String>>,
        exclude: impl IntoIterator<Item = String>,
    ) -> Self {
        let lower = |ids: &mut dyn Iterator<Item = String>| {
            ids.map(|id| id.trim().to_lowercase())
                .collect::<BTreeSet<_>>()
        };
        Self {
            include: include.map(|ids| lower(&mut ids.into_iter())),
            exclude: lower(&mut exclude.into_iter()),
        }
    }

    /// Whether the object passes: in an include group (when any is configured) and in no exclude group.
    pub fn admits(&self, object_id: &str) -> bool {
        let id = object_id.trim().to_lowercase();
        self.include.as_ref().is_none_or(|ids| ids.contains(&id)) && !self.exclude.contains(&id)
    }
}

/// What is read from one source tenant for the selection.
#[derive(Debug, Clone, Copy)]
pub struct DirectoryRead<'a> {
    /// The source tenant's configured id (the sync ids' tenant part).
    pub tenant_id: &'a str,
    /// Users (any kind; the selection decides).
    pub users: &'a [UserRecord],
    /// Org contacts (read only when `Contact` is a member type).
    pub org_contacts: &'a [OrgContactRecord],
    /// The resolved include/exclude groups.
    pub groups: &'a GroupFilter,
    /// The organisation's display name, for users without a company name.
    pub organization_name: Option<&'a str>,
    /// The mirror's shared mailbox (UPN, mail or object id), never distributed.
    pub shared_mailbox: Option<&'a str>,
}

/// A source tenant's directory as read once per run: the owned counterpart of [`DirectoryRead`], what
/// `TenantClient::read_directory` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectorySnapshot {
    /// The source tenant's configured id.
    pub tenant_id: String,
    /// Users of the configured member types (enabled members and/or guests), managers filled in.
    pub users: Vec<UserRecord>,
    /// Org contacts (empty unless `Contact` is a member type).
    pub org_contacts: Vec<OrgContactRecord>,
    /// The resolved include/exclude groups.
    pub groups: GroupFilter,
    /// The organisation's display name.
    pub organization_name: Option<String>,
    /// The mirror's shared mailbox, if configured.
    pub shared_mailbox: Option<String>,
}

impl DirectorySnapshot {
    /// A borrowed view for [`select`].
    pub fn read(&self) -> DirectoryRead<'_> {
        DirectoryRead {
            tenant_id: &self.tenant_id,
            users: &self.users,
            org_contacts: &self.org_contacts,
            groups: &self.groups,
            organization_name: self.organization_name.as_deref(),
            shared_mailbox: self.shared_mailbox.as_deref(),
        }
    }
}

/// One person to distribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryPerson {
    /// Which kind of entry.
    pub kind: MemberType,
    /// The entry's object id in its source tenant.
    pub object_id: String,
    /// The user's UPN (users only): with the object id, how a receiving mailbox recognises its own entry.
    pub user_principal_name: Option<String>,
    /// Deterministic identity of every copy.
    pub sync_id: SyncId,
    /// What a copy holds.
    pub fields: ContactFields,
}

impl DirectoryPerson {
    /// What creating this person's copy writes: the mapped fields and the sync id property. Notes stamps and the
    /// managed category are the planner's, as for mirrored copies.
    pub fn contact_write(&self) -> ContactWrite {
        ContactWrite {
            fields: Some(PackedFields::pack(&self.fields)),
            sync_id: Some(self.sync_id.as_str().to_owned()),
            ..ContactWrite::default()
        }
    }
}

/// Whether `user` is the shared mailbox given as UPN, mail or object id (ignoring case).
fn is_shared_mailbox(user: &UserRecord, shared: Option<&str>) -> bool {
    let Some(shared) = shared.map(str::trim).filter(|s| !s.is_empty()) else {
        return false;
    };
    [
        Some(user.id.as_str()),
        user.user_principal_name.as_deref(),
        user.mail.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|v| v.trim().eq_ignore_ascii_case(shared))
}

/// The kind a user is distributed as, if any: enabled (an unknown state counts as disabled), a guest or a
/// licensed member.
fn user_kind(user: &UserRecord) -> Option<MemberType> {
    if user.account_enabled != Some(true) {
        return None;
    }
    if user.is_guest() {
        Some(MemberType::Guest)
    } else if user.is_licensed() {
        Some(MemberType::Member)
    } else {
        None
    }
}

/// The exact set of persons a tenant's `Directory` settings select from `read`, ordered by object id, each once.
/// Left out: disabled and unlicensed accounts, kinds not in `MemberTypes`, the shared mailbox, users hidden from
/// the address list when `ExcludeHidden`, non-members of `IncludeGroups`, members of `ExcludeGroups`.
pub fn select(read: &DirectoryRead<'_>, options: &DirectoryOptions) -> Vec<DirectoryPerson> {
    let mut out: BTreeMap<String, DirectoryPerson> = BTreeMap::new();
    for user in read.users {
        let Some(kind) = user_kind(user) else {
            continue;
        };
        let hidden = options.exclude_hidden && user.show_in_address_list == Some(false);
        if !options.member_types.contains(kind)
            || hidden
            || is_shared_mailbox(user, read.shared_mailbox)
            || !read.groups.admits(&user.id)
        {
            continue;
        }
        let key = user.id.trim().to_lowercase();
        out.entry(key).or_insert_with(|| DirectoryPerson {
            kind,
            object_id: user.id.clone(),
            user_principal_name: user.user_principal_name.clone(),
            sync_id: directory_sync_id(read.tenant_id, &user.id),
            fields: user_fields(user, read.organization_name),
        });
    }
    if options.member_types.contains(MemberType::Contact) {
        for contact in read.org_contacts {
            if !read.groups.admits(&contact.id) {
                continue;
            }
            let key = contact.id.trim().to_lowercase();
            out.entry(key).or_insert_with(|| DirectoryPerson {
                kind: MemberType::Contact,
                object_id: contact.id.clone(),
                user_principal_name: None,
                sync_id: directory_sync_id(read.tenant_id, &contact.id),
                fields: org_contact_fields(contact),
            });
        }
    }
    out.into_values().collect()
}

/// What receiving mailbox `mailbox` gets: every person except its own entry (same object id or UPN, or an
/// e-mail address that is the mailbox's UPN, ignoring case). A user is never given their own contact, also not
/// from another tenant's directory (`FromTenants`), where they may be a guest with another object id.
pub fn persons_for<'a>(
    mailbox: &Mailbox,
    persons: &'a [DirectoryPerson],
) -> Vec<&'a DirectoryPerson> {
    let upn = mailbox.upn.trim();
    persons
        .iter()
        .filter(|p| {
            let same_id = p.object_id.trim().eq_ignore_ascii_case(mailbox.id.trim());
            let same_upn = p
                .user_principal_name
                .as_deref()
                .is_some_and(|u| u.trim().eq_ignore_ascii_case(upn));
            let mails_upn = !upn.is_empty()
                && p.fields.email_addresses.iter().any(|e| {
                    e.address
                        .as_deref()
                        .is_some_and(|a| a.trim().eq_ignore_ascii_case(upn))
                });
            !(same_id || same_upn || mails_upn)
        })
        .collect()
}
