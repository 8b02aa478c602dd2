//! A job from the broker is input, not an order: anyone who can publish to the jobs exchange can write one. The
//! worker therefore takes the central mailbox and folder from its own configuration (`GlobalAddressBookUserId`,
//! `CentralFolderName`) and refuses a job that names others, so a forged job cannot copy one user's contacts into
//! another mailbox or a foreign folder into everyone's contacts.
//!
//! The checks here are pure; [`Locations`] caches what the worker resolved through Graph per tenant.

use std::collections::HashMap;
use std::sync::Mutex;

use shared::config::TenantSettings;
use shared::message::{Job, JobKind};
use shared::model::Mailbox;

/// Where this worker's configuration says a tenant's central folder is, as resolved through Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralLocation {
    /// The mailbox `GlobalAddressBookUserId` names.
    pub mailbox: Mailbox,
    /// The top-level folder named `CentralFolderName` in it; `None` while it does not exist (dry runs).
    pub folder_id: Option<String>,
}

/// Why a job is refused; the text names what did not match, never a secret.
///
/// `expected` is where the tenant's central folder is, `None` when the tenant's mirror is off: a job must then name
/// no central folder, and with the mirror on a phase-2 job must name it (a job leaving the mirror out would have
/// every mirrored copy planned as gone).
pub fn check(
    job: &Job,
    tenant: &TenantSettings,
    expected: Option<&CentralLocation>,
) -> Result<(), String> {
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
        match &tenant.test_user_list {
            Some(list) if !list.iter().any(|u| u.eq_ignore_ascii_case(&mailbox.upn)) => Err(
                format!("{} is not in this worker's TestUserList", mailbox.upn),
            ),
            _ => Ok(()),
        }
    };
    match &job.kind {
        JobKind::Phase1 { sources, .. } => sources.iter().try_for_each(allowed),
        JobKind::Phase2 { mailbox, .. } => allowed(mailbox),
    }
}

/// The central locations resolved so far, per tenant (lower-cased id). Resolved again when a job does not match,
/// so a folder recreated by the producer is picked up.
#[derive(Default)]
pub struct Locations {
    entries: Mutex<HashMap<String, CentralLocation>>,
}

impl Locations {
    /// What was resolved for `tenant`, if anything.
    pub fn get(&self, tenant: &str) -> Option<CentralLocation> {
        self.lock().get(&tenant.to_ascii_lowercase()).cloned()
    }

    /// Keeps what was resolved for `tenant`.
    pub fn put(&self, tenant: &str, location: CentralLocation) {
        self.lock().insert(tenant.to_ascii_lowercase(), location);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CentralLocation>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use shared::message::CentralFolder;
    use uuid::Uuid;

    use super::*;

    fn mailbox(id: &str) -> Mailbox {
        Mailbox {
            id: id.into(),
            upn: format!("{id}@contoso.com"),
        }
    }

    fn tenant(test_users: Option<Vec<String>>) -> TenantSettings {
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
        let mut tenant = settings.tenants[0].clone();
        tenant.test_user_list = test_users;
        tenant
    }

    fn expected() -> CentralLocation {
        CentralLocation {
            mailbox: mailbox("shared"),
            folder_id: Some("central".into()),
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
        let t = tenant(None);
        assert_eq!(
            check(
                &phase1(mailbox("shared"), "central", &["alice", "bob"]),
                &t,
                Some(&expected())
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &phase2(mailbox("shared"), "central", "alice"),
                &t,
                Some(&expected())
            ),
            Ok(())
        );
    }

    /// Failed before the fix (no check existed): a phase-1 job naming bob's mailbox as the central one copied
    /// alice's contacts into bob's folder.
    #[test]
    fn a_job_naming_another_central_mailbox_or_folder_is_refused() {
        let t = tenant(None);
        let forged = check(
            &phase1(mailbox("bob"), "bobs-folder", &["alice"]),
            &t,
            Some(&expected()),
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
            Some(&expected()),
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
        let t = tenant(Some(vec!["Alice@contoso.com".into()]));
        assert_eq!(
            check(
                &phase2(mailbox("shared"), "central", "alice"),
                &t,
                Some(&expected())
            ),
            Ok(())
        );
        assert!(check(
            &phase2(mailbox("shared"), "central", "carol"),
            &t,
            Some(&expected())
        )
        .is_err());
        assert!(check(
            &phase1(mailbox("shared"), "central", &["alice", "carol"]),
            &t,
            Some(&expected())
        )
        .is_err());
        let into_shared = check(
            &phase2(mailbox("shared"), "central", "shared"),
            &tenant(None),
            Some(&expected()),
        );
        assert!(into_shared.is_err());
    }

    /// A directory-only tenant (mirror off) has no central folder: its jobs name none, and a job that does, or a
    /// mirror tenant's job that leaves it out (every mirrored copy would look gone), is refused.
    #[test]
    fn the_central_folder_is_named_exactly_when_the_mirror_is_on() {
        let t = tenant(None);
        let directory_only = Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: None,
                mailbox: mailbox("alice"),
            },
        );
        assert_eq!(check(&directory_only, &t, None), Ok(()));
        let without_mirror = check(&directory_only, &t, Some(&expected()));
        assert!(
            without_mirror
                .as_ref()
                .is_err_and(|e| e.contains("mirror is on")),
            "{without_mirror:?}"
        );
        let forged = check(&phase2(mailbox("shared"), "central", "alice"), &t, None);
        assert!(
            forged.as_ref().is_err_and(|e| e.contains("mirror is off")),
            "{forged:?}"
        );
        assert!(check(&phase1(mailbox("shared"), "central", &["alice"]), &t, None).is_err());
    }

    /// A pure source (mirror and directory off, no FromTenants) has no jobs: one arriving is refused, so no
    /// mailbox of it is planned against an empty list. With a FromTenants source it receives again.
    #[test]
    fn a_job_for_a_pure_source_tenant_is_refused() {
        let mut t = tenant(None);
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
        let refused = check(&job, &t, None);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("receives nothing")),
            "{refused:?}"
        );
        t.distribution.directory.from_tenants = vec!["fabrikam.onmicrosoft.com".into()];
        assert_eq!(check(&job, &t, None), Ok(()));
    }
}
