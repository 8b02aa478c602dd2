//! The directory between runs, pure: the tenant's users as `/users/delta` last showed them (kept by the producer
//! with the feed's link, like the folder feeds), how a round of changes is applied to them, and the generation of
//! a selected set of persons, which tells a receiving mailbox whether the directory changed since it was last
//! brought in line.
//!
//! Why the whole user list and not the selection: `/users/delta` takes no `$filter` (only `id eq`), so the feed
//! covers every user and the selection ([`super::select`]) is applied to the kept list each run. A disabled user
//! stays in the list with `accountEnabled: false` (the selection leaves them out); only `@removed` deletes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::feed::{DeltaLink, Generation};

use super::record::UserRecord;
use super::selection::DirectoryPerson;

/// Every user of a tenant at the feed's `link`, by lower-cased object id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptUsers {
    /// Changes after this link are not in `users`.
    pub link: DeltaLink,
    users: BTreeMap<String, UserRecord>,
}

/// One round of `/users/delta`, as applied to [`KeptUsers`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersChanges {
    /// Users created or changed (the whole user as selected; the manager as reported, if it was).
    pub changed: Vec<UserRecord>,
    /// Object ids of deleted users.
    pub removed: Vec<String>,
    /// Lower-cased ids of changed users whose manager was removed.
    pub manager_removed: BTreeSet<String>,
}

fn key(id: &str) -> String {
    id.trim().to_lowercase()
}

impl KeptUsers {
    /// The users of a first round (every user), at its link.
    pub fn start(users: Vec<UserRecord>, link: DeltaLink) -> Self {
        let mut kept = Self {
            link: link.clone(),
            users: BTreeMap::new(),
        };
        kept.apply(
            UsersChanges {
                changed: users,
                ..UsersChanges::default()
            },
            link,
        );
        kept
    }

    /// Applies a round that ended at `link`: a changed user replaces the kept one (Graph sends every selected
    /// property of a changed object), keeping the kept manager unless the round reported or removed it; a removed
    /// id is dropped.
    pub fn apply(&mut self, changes: UsersChanges, link: DeltaLink) {
        for mut user in changes.changed {
            let id = key(&user.id);
            if user.manager.is_none() && !changes.manager_removed.contains(&id) {
                user.manager = self.users.get(&id).and_then(|u| u.manager.clone());
            }
            self.users.insert(id, user);
        }
        for id in &changes.removed {
            self.users.remove(&key(id));
        }
        self.link = link;
    }

    /// How many users are kept.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user is kept.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every kept user, ordered by id, each manager named as the kept manager is named now (a renamed manager
    /// changes no subordinate's record, but it changes their contacts).
    pub fn users(&self) -> Vec<UserRecord> {
        self.users
            .values()
            .map(|user| {
                let mut user = user.clone();
                if let Some(manager) = &mut user.manager {
                    if let Some(found) = manager
                        .id
                        .as_deref()
                        .and_then(|id| self.users.get(&key(id)))
                    {
                        manager.display_name = found.display_name.clone();
                    }
                }
                user
            })
            .collect()
    }
}

/// The generation of a selected set of persons: equal exactly when every person, with every field a copy holds,
/// is equal (order included; [`super::select`] orders by object id).
pub fn persons_generation(persons: &[DirectoryPerson]) -> Generation {
    let mut bytes = Vec::with_capacity(persons.len() * 256);
    for person in persons {
        // Serialising plain strings and `ContactFields` cannot fail; a failure would only make two equal sets
        // look different (a full read), never the reverse.
        let line = serde_json::to_vec(&(
            person.kind.as_str(),
            &person.object_id,
            &person.user_principal_name,
            person.sync_id.as_str(),
            &person.fields,
        ))
        .unwrap_or_else(|_| uuid::Uuid::new_v4().as_bytes().to_vec());
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    Generation::of_content(&bytes)
}

/// [`persons_generation`] with the persons' photos (`Photos` on): a changed, new or removed photo is a new
/// generation, so the mailboxes holding that person are planned again rather than skipped.
pub fn with_photos(
    persons: Generation,
    photos: &std::collections::BTreeMap<crate::sync::SyncId, crate::sync::photo::PhotoHash>,
) -> Generation {
    let mut bytes = serde_json::to_vec(&persons).unwrap_or_default();
    for (sync_id, hash) in photos {
        bytes.extend_from_slice(format!("\n{}={}", sync_id.as_str(), hash.as_str()).as_bytes());
    }
    Generation::of_content(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DirectoryOptions;
    use crate::directory::{select, DirectoryRead, GroupFilter, ManagerRef};

    fn user(id: &str, name: &str, manager: Option<&str>) -> UserRecord {
        UserRecord {
            id: id.into(),
            user_principal_name: Some(format!("{id}@contoso.com")),
            display_name: Some(name.into()),
            mail: Some(format!("{id}@contoso.com")),
            account_enabled: Some(true),
            assigned_licenses: vec![Default::default()],
            manager: manager.map(|m| ManagerRef {
                id: Some(m.into()),
                display_name: None,
            }),
            ..UserRecord::default()
        }
    }

    fn link(n: u32) -> DeltaLink {
        DeltaLink::new(format!("https://graph.example/users/delta?$deltatoken={n}"))
    }

    fn persons(users: &[UserRecord]) -> Vec<DirectoryPerson> {
        let groups = GroupFilter::default();
        let read = DirectoryRead {
            tenant_id: "contoso",
            users,
            org_contacts: &[],
            groups: &groups,
            organization_name: None,
            shared_mailbox: None,
        };
        select(&read, &DirectoryOptions::default())
    }

    #[test]
    fn a_round_replaces_changed_users_drops_removed_ones_and_keeps_a_disabled_one() {
        let mut kept = KeptUsers::start(
            vec![
                user("a", "Ann", None),
                user("b", "Bob", Some("a")),
                user("c", "Cy", None),
            ],
            link(1),
        );
        let mut disabled = user("c", "Cy", None);
        disabled.account_enabled = Some(false);
        kept.apply(
            UsersChanges {
                changed: vec![
                    user("A", "Ann Renamed", None),
                    disabled,
                    user("d", "Dee", None),
                ],
                removed: vec!["B".into()],
                manager_removed: BTreeSet::new(),
            },
            link(2),
        );
        assert_eq!(kept.link, link(2));
        let users = kept.users();
        let names: Vec<_> = users
            .iter()
            .map(|u| u.display_name.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["Ann Renamed", "Cy", "Dee"]);
        assert_eq!(
            users[1].account_enabled,
            Some(false),
            "disabled is kept, not removed"
        );
        let selected: Vec<_> = persons(&users).into_iter().map(|p| p.object_id).collect();
        assert_eq!(
            selected,
            ["A", "d"],
            "the selection leaves the disabled user out"
        );
    }

    #[test]
    fn a_manager_is_kept_until_reported_or_removed_and_named_as_now() {
        let mut kept = KeptUsers::start(
            vec![user("boss", "Boss", None), user("e", "Emp", Some("boss"))],
            link(1),
        );
        assert_eq!(
            kept.users()[1]
                .manager
                .as_ref()
                .and_then(|m| m.display_name.clone())
                .as_deref(),
            Some("Boss")
        );
        // The employee changed without a manager report, and the boss was renamed.
        kept.apply(
            UsersChanges {
                changed: vec![user("e", "Emp 2", None), user("boss", "Big Boss", None)],
                ..UsersChanges::default()
            },
            link(2),
        );
        let emp = kept
            .users()
            .into_iter()
            .find(|u| u.id == "e")
            .expect("kept");
        assert_eq!(
            emp.manager.and_then(|m| m.display_name).as_deref(),
            Some("Big Boss")
        );
        kept.apply(
            UsersChanges {
                changed: vec![user("e", "Emp 2", None)],
                manager_removed: ["e".to_owned()].into(),
                ..UsersChanges::default()
            },
            link(3),
        );
        let emp = kept
            .users()
            .into_iter()
            .find(|u| u.id == "e")
            .expect("kept");
        assert_eq!(emp.manager, None);
    }

    #[test]
    fn the_generation_follows_every_field_of_every_person() {
        let base = vec![user("a", "Ann", None), user("b", "Bob", Some("a"))];
        let g = persons_generation(&persons(&base));
        assert_eq!(g, persons_generation(&persons(&base.clone())));
        let mut renamed = base.clone();
        renamed[1].job_title = Some("Chief".into());
        assert_ne!(g, persons_generation(&persons(&renamed)));
        assert_ne!(g, persons_generation(&persons(&base[..1])));
        assert_ne!(persons_generation(&[]), g);
    }

    #[test]
    fn kept_users_round_trip_through_json() {
        let kept = KeptUsers::start(vec![user("a", "Ann", None)], link(1));
        let json = serde_json::to_string(&kept).expect("json");
        assert_eq!(
            serde_json::from_str::<KeptUsers>(&json).expect("parse"),
            kept
        );
    }
}
