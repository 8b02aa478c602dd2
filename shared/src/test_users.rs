//! The one rule for which users a `TestUserList` names. The producer selects with it and the worker checks every
//! job's mailboxes against the same selection, so what the producer selects the worker accepts, and a job naming
//! anybody else is refused.
//!
//! An entry names a user by object id, UPN, mail or alias (the part of the UPN or mail before `@`), ignoring
//! case, tried in that order: the first kind that matches anybody decides. Object ids and UPNs are unique in a
//! tenant, so an entry that is one user's UPN and another's mail names the first (the other is named in a
//! warning). An entry that matches several users at the deciding kind (a mail or alias two users share) selects
//! nobody and is reported: picking one would be a guess, and taking both would let a job for the wrong user in.

use std::collections::BTreeSet;

use crate::config::TenantSettings;
use crate::graph::DirectoryUser;
use crate::model::Mailbox;

/// What a `TestUserList` selects among the candidate users, and what the operator should be told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The selected users' object ids, lower-cased.
    ids: BTreeSet<String>,
    /// Entries matching nobody.
    pub unmatched: Vec<String>,
    /// Entries matching several users at the deciding kind: each with those users' UPNs. They select nobody.
    pub ambiguous: Vec<(String, Vec<String>)>,
    /// Entries that selected one user by a stronger kind (id or UPN) while also being another user's mail or
    /// alias: each with the UPNs of those other users, who are not selected.
    pub shadowed: Vec<(String, Vec<String>)>,
}

/// The kinds of name an entry can be, strongest first.
const KINDS: [fn(&DirectoryUser, &str) -> bool; 4] = [
    |user, wanted| user.id.eq_ignore_ascii_case(wanted),
    |user, wanted| user.user_principal_name.eq_ignore_ascii_case(wanted),
    |user, wanted| {
        user.mail
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(wanted))
    },
    |user, wanted| {
        std::iter::once(user.user_principal_name.as_str())
            .chain(user.mail.as_deref())
            .any(|address| alias(address).eq_ignore_ascii_case(wanted))
    },
];

/// The part of an address before `@`.
fn alias(address: &str) -> &str {
    address.split('@').next().unwrap_or_default()
}

/// Applies `list` to `candidates` (the tenant's licensed users without the shared mailbox, see [`candidates`]).
pub fn select(candidates: &[DirectoryUser], list: &[String]) -> Selection {
    let mut selection = Selection::default();
    for entry in list {
        let wanted = entry.trim();
        if wanted.is_empty() {
            continue;
        }
        let matching = |kind: &fn(&DirectoryUser, &str) -> bool| -> Vec<&DirectoryUser> {
            candidates.iter().filter(|u| kind(u, wanted)).collect()
        };
        let Some((level, found)) = KINDS
            .iter()
            .enumerate()
            .map(|(level, kind)| (level, matching(kind)))
            .find(|(_, found)| !found.is_empty())
        else {
            selection.unmatched.push(entry.clone());
            continue;
        };
        let upns = |users: &[&DirectoryUser]| -> Vec<String> {
            users
                .iter()
                .map(|u| u.user_principal_name.clone())
                .collect()
        };
        match found.as_slice() {
            [one] => {
                selection.ids.insert(one.id.to_lowercase());
                let others: Vec<&DirectoryUser> = KINDS[level + 1..]
                    .iter()
                    .flat_map(|kind| matching(kind))
                    .filter(|u| u.id != one.id)
                    .collect::<Vec<_>>();
                let mut others = upns(&others);
                others.sort();
                others.dedup();
                if !others.is_empty() {
                    selection.shadowed.push((entry.clone(), others));
                }
            }
            several => selection.ambiguous.push((entry.clone(), upns(several))),
        }
    }
    selection
}

/// The users a `TestUserList` is applied to: the licensed users without the tenant's shared mailbox (`shared`
/// when resolved, else by its configured UPN or object id, as without the mirror it is not looked up).
pub fn candidates(
    licensed: Vec<DirectoryUser>,
    tenant: &TenantSettings,
    shared: Option<&Mailbox>,
) -> Vec<DirectoryUser> {
    let not_shared = |u: &DirectoryUser| match (shared, tenant.shared_mailbox()) {
        (Some(shared), _) => !u.id.eq_ignore_ascii_case(&shared.id),
        (None, Some(name)) => {
            !(u.user_principal_name.eq_ignore_ascii_case(name) || u.id.eq_ignore_ascii_case(name))
        }
        (None, None) => true,
    };
    licensed.into_iter().filter(not_shared).collect()
}

impl Selection {
    /// Whether the list selected this mailbox (by its object id: the UPN in a job is only a label).
    pub fn contains(&self, mailbox: &Mailbox) -> bool {
        self.ids.contains(&mailbox.id.to_lowercase())
    }

    /// Whether the list selected nobody.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// What the operator should read: entries matching nobody, several users, or shadowing another user.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.unmatched.is_empty() {
            warnings.push(format!(
                "TestUserList: {} match(es) no licensed user other than the shared mailbox (by UPN, object id, \
                 mail or alias): {}",
                self.unmatched.len(),
                self.unmatched.join(", ")
            ));
        }
        for (entry, users) in &self.ambiguous {
            warnings.push(format!(
                "TestUserList: {entry} is ambiguous, it matches {} users ({}): none of them is selected; name \
                 the one meant by UPN or object id",
                users.len(),
                users.join(", ")
            ));
        }
        for (entry, users) in &self.shadowed {
            warnings.push(format!(
                "TestUserList: {entry} selects the user whose object id or UPN it is, not {} whose mail or alias \
                 it also is; name them by UPN or object id to include them",
                users.join(", ")
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, upn: &str, mail: Option<&str>) -> DirectoryUser {
        DirectoryUser {
            id: id.into(),
            user_principal_name: upn.into(),
            mail: mail.map(Into::into),
            display_name: None,
            user_type: None,
        }
    }

    fn mailbox(id: &str) -> Mailbox {
        Mailbox {
            id: id.into(),
            upn: "label@contoso.com".into(),
        }
    }

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn entries_match_by_object_id_upn_mail_or_alias_and_the_rest_are_named() {
        let users = [
            user(
                "0a1b",
                "ann@contoso.onmicrosoft.com",
                Some("ann.smith@contoso.com"),
            ),
            user("2c3d", "bob@contoso.onmicrosoft.com", None),
            user("4e5f", "cat@contoso.onmicrosoft.com", None),
            user("6a7b", "dan@contoso.onmicrosoft.com", None),
        ];
        let selection = select(
            &users,
            &list(&[
                "ANN.SMITH",
                "2C3D",
                "cat@contoso.onmicrosoft.com",
                "nobody",
                "eve@contoso.com",
            ]),
        );
        for (id, selected) in [
            ("0a1b", true),
            ("2c3d", true),
            ("4e5f", true),
            ("6a7b", false),
        ] {
            assert_eq!(selection.contains(&mailbox(id)), selected, "{id}");
        }
        assert_eq!(selection.unmatched, ["nobody", "eve@contoso.com"]);
        assert!(selection.ambiguous.is_empty() && selection.shadowed.is_empty());
    }

    /// Failed before the fix: the producer selected every user an entry matched in any way (so a UPN that was
    /// also a colleague's mail selected both), and the worker compared the job's UPN label with the list (so it
    /// refused users named by mail and accepted a forged job carrying a listed UPN over another user's id).
    #[test]
    fn a_shared_mail_selects_nobody_and_a_upn_beats_a_colleagues_mail() {
        let users = [
            user("a", "ann@contoso.com", Some("ann@contoso.com")),
            // A second account of Ann's, with her mail.
            user("a2", "ann.admin@contoso.com", Some("ANN@contoso.com")),
            user("b", "bob@contoso.com", Some("robert@contoso.com")),
            user("c", "cat@contoso.com", Some("team@contoso.com")),
            user("d", "dan@contoso.com", Some("team@contoso.com")),
        ];
        let selection = select(
            &users,
            &list(&["ann@contoso.com", "team@contoso.com", "robert"]),
        );
        assert!(selection.contains(&mailbox("a")));
        assert!(
            !selection.contains(&mailbox("a2")),
            "Ann's mail is not the entry's meaning"
        );
        assert!(selection.contains(&mailbox("b")), "named by mail alias");
        assert!(!selection.contains(&mailbox("c")) && !selection.contains(&mailbox("d")));
        assert_eq!(
            selection.ambiguous,
            [(
                "team@contoso.com".to_owned(),
                vec!["cat@contoso.com".to_owned(), "dan@contoso.com".to_owned()]
            )]
        );
        assert_eq!(
            selection.shadowed,
            [(
                "ann@contoso.com".to_owned(),
                vec!["ann.admin@contoso.com".to_owned()]
            )]
        );
        let warnings = selection.warnings().join("\n");
        assert!(
            warnings.contains("team@contoso.com is ambiguous"),
            "{warnings}"
        );
        assert!(warnings.contains("ann.admin@contoso.com"), "{warnings}");
    }

    #[test]
    fn a_job_mailbox_is_recognised_by_object_id_not_by_its_upn_label() {
        let users = [
            user("a", "ann@contoso.com", None),
            user("b", "bob@contoso.com", None),
        ];
        let selection = select(&users, &list(&["ann@contoso.com"]));
        let forged = Mailbox {
            id: "b".into(),
            upn: "ann@contoso.com".into(),
        };
        assert!(!selection.contains(&forged));
    }
}
