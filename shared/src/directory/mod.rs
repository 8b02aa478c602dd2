//! The directory as a source (issue 11), pure: no tokio, reqwest or lapin.
//!
//! - [`record`]: users and org contacts as Graph returns them (what `graph::directory` decodes into);
//! - [`selection`]: a tenant's `Directory` settings applied to what was read -> the exact persons to distribute,
//!   and what one receiving mailbox gets (never its own entry); the deterministic sync id of a person;
//! - [`mapping`]: a directory entry -> the fields of a contact (README, "field mapping").
//!
//! Not wired into jobs yet: the planners will take [`DirectoryPerson`]s beside the central folder's contacts.

pub mod mapping;
pub mod record;
pub mod selection;

#[cfg(test)]
mod tests;

pub use mapping::{org_contact_fields, user_fields, MAX_EMAIL_ADDRESSES};
pub use record::{
    resolve_manager_names, AssignedLicense, ManagerRef, OfficeAddress, OrgContactRecord, Phone,
    UserRecord,
};
pub use selection::{
    directory_sync_id, persons_for, select, DirectoryPerson, DirectoryRead, DirectorySnapshot,
    GroupFilter, DIRECTORY_SYNC_NAMESPACE,
};
