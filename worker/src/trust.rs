//! A job from the broker is input, not an order: anyone who can publish to the jobs exchange can write one. The
//! worker therefore takes the central mailbox and folder from its own configuration (`GlobalAddressBookUserId`,
//! `CentralFolderName`) and refuses a job that names others, so a forged job cannot copy one user's contacts into
//! another mailbox or a foreign folder into everyone's contacts.
//!
//! Likewise the user mailboxes: with a `TestUserList` the worker applies the producer's rule
//! ([`shared::test_users`]) to the tenant's directory itself and accepts only the users it selects, by object id
//! (the UPN in a job is only a label).
//!
//! The checks here are pure; [`Locations`] caches what the worker resolved through Graph per tenant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared::config::TenantSettings;
use shared::message::{Job, JobKind};
use shared::model::Mailbox;
use shared::test_users::Selection;

/// Where this worker's configuration says a tenant's central folder is, as resolved through Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralLocation {
    /// The mailbox `GlobalAddressBookUserId` names.
    pub mailbox: Mailbox,
    /// The top-level folder named `CentralFolderName` in it; `None` while it does not exist (dry runs).
    pub folder_id: Option<String>,
}

/// Whose mailboxes a job of the tenant may name, by this worker's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receivers {
    /// No `TestUserList`: every user but the shared mailbox.
    Everyone,
    /// The users the `TestUserList` selects in the tenant's directory, as the producer selects them.
    Selected(Selection),
}

/// What the worker resolved of a tenant through Graph to check its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where the central folder is; `None` when the tenant's mirror is off.
    pub central: Option<CentralLocation>,
    /// Whose mailboxes a job may name.
    pub receivers: Receivers,
}

/// Why a job is refused; the text names what did not match, never a secret.
///
/// `expected` is where the tenant's central folder is, `None` when the tenant's mirror is off: a job must then name
/// no central folder, and with the mirror on a phase-2 job must name it (a job leaving the mirror out would have
/// every mirrored copy planned as gone).
pub fn check(job: &Job, tenant: &TenantSettings, resolved: &Resolved) -> Result<(), String> {
    let expected = resolved.central.as_ref();
    if !tenant.distribution.receives() {
        // A pure source: planned against nothing, a mailbox would only lose its managed copies.
        return Err(format!(
            "tenant {} receives nothing by this worker's configuration (Mirror and Directory off, no \
             Directory.FromTenants: its directory is only read for other tenants)",
            tenant.tenant_id
        ));
    }
    match (job.central(), expected) {
        (Some(central), Some(expected)) => {
            if !central
                .mailbox
                .id
                .eq_ignore_ascii_case(&expected.mailbox.id)
            {
                return Err(format!(
                    "the job's central mailbox {} is not this worker's GlobalAddressBookUserId {}",
                    central.mailbox.upn, tenant.global_address_book_user_id
                ));
            }
            if central.folder_id != expected.folder_id {
                return Err(format!(
                    "the job's central folder is not the folder named {:?} in {}",
                    tenant.mirror.central_folder_name, tenant.global_address_book_user_id
                ));
            }
        }
        (Some(central), None) => {
            return Err(format!(
                "the job names a central mailbox {} but the tenant's mirror is off in this worker's configuration",
                central.mailbox.upn
            ))
        }
        (None, Some(_)) => {
            return Err(
                "the job leaves out the central folder but the tenant's mirror is on in this worker's configuration"
                    .into(),
            )
        }
        (None, None) => {}
    }
    let shared = expected.map(|e| &e.mailbox);
    let allowed = |mailbox: &Mailbox| -> Result<(), String> {
        if shared.is_some_and(|s| mailbox.id.eq_ignore_ascii_case(&s.id)) {
            return Err(format!(
                "the job names the shared mailbox {} as a user mailbox",
                mailbox.upn
            ));
        }
        match &resolved.receivers {
            Receivers::Selected(selection) if !selection.contains(mailbox) => Err(format!(
                "{} (object id {}) is not a user this worker's TestUserList selects",
                mailbox.upn, mailbox.id
            )),
            _ => Ok(()),
        }
    };
    match &job.kind {
        JobKind::Phase1 { sources, .. } => sources.iter().try_for_each(allowed),
        JobKind::Phase2 { mailbox, .. } => allowed(mailbox),
    }
}

/// What was resolved so far, per tenant (lower-cased id). Resolved again when a job does not match, so a folder
/// recreated by the producer or a user who joined the directory is picked up.
#[derive(Default)]
pub struct Locations {
    entries: Mutex<HashMap<String, Resolved>>,
    /// One resolution of a tenant at a time: the jobs a process takes at once (up to its concurrency, all of a
    /// run's first batch) would otherwise each resolve the shared mailbox before the first had kept its answer.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locations {
    /// Waits for the turn to resolve `tenant`; whoever held it before may have kept what this job needs, so look
    /// again with [`Locations::get`] before resolving.
    pub async fn turn(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = self
            .turns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(tenant.to_ascii_lowercase())
            .or_default()
            .clone();
        turn.lock_owned().await
    }

    /// What was resolved for `tenant`, if anything.
    pub fn get(&self, tenant: &str) -> Option<Resolved> {
        self.lock().get(&tenant.to_ascii_lowercase()).cloned()
    }

    /// Keeps what was resolved for `tenant`.
    pub fn put(&self, tenant: &str, resolved: Resolved) {
        self.lock().insert(tenant.to_ascii_lowercase(), resolved);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resolved>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use shared::graph::DirectoryUser;
    use shared::message::CentralFolder;
    use shared::test_users;
    use uuid::Uuid;

    use super::*;

    fn mailbox(id: &str) -> Mailbox {
        Mailbox {
            id: id.into(),
            upn: format!("{id}@contoso.com"),
        }
    }

    fn tenant() -> TenantSettings {
        let document = serde_json::json!({ "MicrosoftTenants": [{
            "TenantId": "contoso.onmicrosoft.com",
            "ClientId": "00000000-0000-0000-0000-000000000001",
            "ClientSecret": "not-a-real-secret",
            "GlobalAddressBookUserId": "shared@contoso.com",
        }]})
        .to_string();
        let env = move |name: &str| {
            (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| document.clone())
        };
        let settings =
            shared::config::Settings::from_sources(&env, None).expect("valid configuration");
        settings.tenants[0].clone()
    }

    fn expected() -> CentralLocation {
        CentralLocation {
            mailbox: mailbox("shared"),
            folder_id: Some("central".into()),
        }
    }

    /// A mirror tenant without a `TestUserList`.
    fn mirrored() -> Resolved {
        Resolved {
            central: Some(expected()),
            receivers: Receivers::Everyone,
        }
    }

    /// A tenant whose mirror is off, without a `TestUserList`.
    fn unmirrored() -> Resolved {
        Resolved {
            central: None,
            receivers: Receivers::Everyone,
        }
    }

    fn job(central: Mailbox, folder: &str, kind: impl FnOnce(CentralFolder) -> JobKind) -> Job {
        let central = CentralFolder {
            mailbox: central,
            folder_id: Some(folder.into()),
        };
        Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            kind(central),
        )
    }

    fn phase1(central: Mailbox, folder: &str, sources: &[&str]) -> Job {
        let sources = sources.iter().map(|s| mailbox(s)).collect();
        job(central, folder, |central| JobKind::Phase1 {
            central,
            sources,
        })
    }

    fn phase2(central: Mailbox, folder: &str, target: &str) -> Job {
        job(central, folder, |central| JobKind::Phase2 {
            central: Some(central),
            mailbox: mailbox(target),
        })
    }

    #[test]
    fn the_producers_jobs_pass() {
        let t = tenant();
        assert_eq!(
            check(
                &phase1(mailbox("shared"), "central", &["alice", "bob"]),
                &t,
                &mirrored()
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &phase2(mailbox("shared"), "central", "alice"),
                &t,
                &mirrored()
            ),
            Ok(())
        );
    }

    /// Failed before the fix (no check existed): a phase-1 job naming bob's mailbox as the central one copied
    /// alice's contacts into bob's folder.
    #[test]
    fn a_job_naming_another_central_mailbox_or_folder_is_refused() {
        let t = tenant();
        let forged = check(
            &phase1(mailbox("bob"), "bobs-folder", &["alice"]),
            &t,
            &mirrored(),
        );
        assert!(
            forged
                .as_ref()
                .is_err_and(|e| e.contains("GlobalAddressBookUserId")),
            "{forged:?}"
        );
        let other_folder = check(
            &phase2(mailbox("shared"), "private", "alice"),
            &t,
            &mirrored(),
        );
        assert!(
            other_folder
                .as_ref()
                .is_err_and(|e| e.contains("All Contacts")),
            "{other_folder:?}"
        );
    }

    #[test]
    fn user_mailboxes_must_be_users_this_worker_mirrors() {
        let t = tenant();
        let directory: Vec<DirectoryUser> = ["alice", "carol"]
            .iter()
            .map(|id| DirectoryUser {
                id: (*id).into(),
                user_principal_name: format!("{id}@contoso.com"),
                mail: Some(format!("{id}.mail@contoso.com")),
                display_name: None,
                user_type: None,
            })
            .collect();
        // Alice named by mail: the producer selects her, so the worker accepts her.
        let only_alice = Resolved {
            central: Some(expected()),
            receivers: Receivers::Selected(test_users::select(
                &directory,
                &["Alice.Mail@contoso.com".to_owned()],
            )),
        };
        assert_eq!(
            check(
                &phase2(mailbox("shared"), "central", "alice"),
                &t,
                &only_alice
            ),
            Ok(())
        );
        assert!(check(
            &phase2(mailbox("shared"), "central", "carol"),
            &t,
            &only_alice
        )
        .is_err());
        assert!(check(
            &phase1(mailbox("shared"), "central", &["alice", "carol"]),
            &t,
            &only_alice
        )
        .is_err());
        // A forged label: Alice's UPN over Carol's object id.
        let mut carol_as_alice = phase2(mailbox("shared"), "central", "carol");
        if let JobKind::Phase2 { mailbox, .. } = &mut carol_as_alice.kind {
            mailbox.upn = "alice@contoso.com".into();
        }
        assert!(check(&carol_as_alice, &t, &only_alice).is_err());
        let into_shared = check(
            &phase2(mailbox("shared"), "central", "shared"),
            &tenant(),
            &mirrored(),
        );
        assert!(into_shared.is_err());
    }

    /// A directory-only tenant (mirror off) has no central folder: its jobs name none, and a job that does, or a
    /// mirror tenant's job that leaves it out (every mirrored copy would look gone), is refused.
    #[test]
    fn the_central_folder_is_named_exactly_when_the_mirror_is_on() {
        let t = tenant();
        let directory_only = Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: None,
                mailbox: mailbox("alice"),
            },
        );
        assert_eq!(check(&directory_only, &t, &unmirrored()), Ok(()));
        let without_mirror = check(&directory_only, &t, &mirrored());
        assert!(
            without_mirror
                .as_ref()
                .is_err_and(|e| e.contains("mirror is on")),
            "{without_mirror:?}"
        );
        let forged = check(
            &phase2(mailbox("shared"), "central", "alice"),
            &t,
            &unmirrored(),
        );
        assert!(
            forged.as_ref().is_err_and(|e| e.contains("mirror is off")),
            "{forged:?}"
        );
        assert!(check(
            &phase1(mailbox("shared"), "central", &["alice"]),
            &t,
            &unmirrored()
        )
        .is_err());
    }

    /// A pure source (mirror and directory off, no FromTenants) has no jobs: one arriving is refused, so no
    /// mailbox of it is planned against an empty list. With a FromTenants source it receives again.
    #[test]
    fn a_job_for_a_pure_source_tenant_is_refused() {
        let mut t = tenant();
        t.distribution.mirror_enabled = false;
        let job = Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: None,
                mailbox: mailbox("alice"),
            },
        );
        let refused = check(&job, &t, &unmirrored());
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("receives nothing")),
            "{refused:?}"
        );
        t.distribution.directory.from_tenants = vec!["fabrikam.onmicrosoft.com".into()];
        assert_eq!(check(&job, &t, &unmirrored()), Ok(()));
    }
}
