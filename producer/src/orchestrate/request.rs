//! What one run covers ([`RunRequest`]), and what follows from it for each tenant: whether the run selects it,
//! writes in it, and where its copies move from.

use std::time::Duration;

use shared::config::{Settings, TenantSettings};
use shared::message::{CentralFolder, FolderChoice, Job, JobKind};
use shared::model::Mailbox;
use shared::sync::CleanupSource;
use tracing::info;
use uuid::Uuid;

use crate::state::StateStore;

/// What one run covers.
pub struct RunRequest<'a> {
    /// The validated settings.
    pub settings: &'a Settings,
    /// Only these tenants (all when empty).
    pub only_tenants: &'a [String],
    /// Write nothing in any tenant (a tenant's own `DryRun` makes that tenant alone dry).
    pub dry_run: bool,
    /// Give up on jobs whose final report has not come after this long without any report.
    pub idle_timeout: Duration,
    /// Where feeds are kept between runs; `None` reads every folder in full every run. Not used in a dry run.
    pub state: Option<&'a StateStore>,
    /// Restore lost central folders from the users' contacts (`run --rebuild-central`) instead of stopping.
    pub rebuild_central: bool,
    /// Lift the deletion cap for this run (`run --allow-mass-delete`, `AllowMassDelete`).
    pub allow_mass_delete: bool,
    /// `cleanup --source`: instead of syncing, every receiving mailbox's cleanup job, then (when all succeeded)
    /// the central folder's. No feeds are kept.
    pub cleanup: Option<CleanupSource>,
    /// Count a licensed user without an Exchange mailbox as failed on every run (`run --strict`), not only on the
    /// first run that saw it.
    pub strict: bool,
    /// How long to wait for a tenant's lease another run holds (`run --wait-for-lease`); zero: not at all.
    pub wait_for_lease: Duration,
}

impl<'a> RunRequest<'a> {
    /// Whether the run covers the tenant named `name` (`--tenant`; every tenant when none is named).
    pub(super) fn selects(&self, name: &str) -> bool {
        self.only_tenants.is_empty()
            || self
                .only_tenants
                .iter()
                .any(|id| id.eq_ignore_ascii_case(name))
    }

    /// The selected tenants that receive contacts: the enabled ones, then the disabled ones.
    pub(super) fn tenants(&self) -> (Vec<&'a TenantSettings>, Vec<&'a TenantSettings>) {
        self.settings
            .tenants
            .iter()
            .filter(|t| self.selects(&t.tenant_id))
            .filter(|t| {
                let receives = t.distribution.receives();
                if !receives {
                    info!(tenant = %t.tenant_id, "a pure source (Mirror and Directory off): read only for the tenants naming it in Directory.FromTenants, no jobs of its own");
                }
                receives
            })
            .partition(|t| t.enabled)
    }

    /// Whether `tenant` writes nothing in this run: any source saying dry run wins, the run's (`--dry-run`, the
    /// settings) or the tenant's own.
    pub(super) fn dry(&self, tenant: &TenantSettings) -> bool {
        tenant.dry_run || self.dry_run
    }

    /// Where `tenant`'s managed copies move from in this run: the folder recorded as last completed
    /// ([`StateStore::target_folder`]; the default Contacts folder when a state is kept but names none, as
    /// before `TargetFolder` existed) when the configured one is another. Nothing moves without a state, on a
    /// tenant's first run (no copies anywhere yet) or in a cleanup.
    pub(super) fn move_from(&self, tenant: &TenantSettings) -> Option<FolderChoice> {
        let store = self
            .state
            .filter(|store| self.cleanup.is_none() && store.knows(&tenant.tenant_id))?;
        let current = FolderChoice::from(&tenant.distribution.target_folder);
        let previous = store
            .target_folder(&tenant.tenant_id)
            .unwrap_or(FolderChoice::DefaultContacts);
        (previous != current).then_some(previous)
    }

    /// A phase-2 job of this run bringing `mailbox` in line with its sources: the central folder when the mirror
    /// is on (`central`), and the directory when the tenant's configuration enables it (the worker reads it).
    pub(super) fn phase2_job(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        dry_run: bool,
        central: Option<CentralFolder>,
        mailbox: &Mailbox,
        move_from: Option<&FolderChoice>,
    ) -> Job {
        let mut job = Job::new(
            run_id,
            tenant_id,
            dry_run,
            JobKind::Phase2 {
                central,
                mailbox: mailbox.clone(),
            },
        );
        job.allow_mass_delete = self.allow_mass_delete;
        job.cleanup = self.cleanup;
        job.move_from = move_from.cloned();
        job
    }
}
