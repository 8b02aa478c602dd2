//! The directory as a source (issue 11), pure: no tokio, reqwest or lapin.
//!
//! - [`record`]: users and org contacts as Graph returns them (what `graph::directory` decodes into);
//! - [`selection`]: a tenant's `Directory` settings applied to what was read -> the exact persons to distribute,
//!   and what one receiving mailbox gets (never its own entry); the deterministic sync id of a person;
//! - [`mapping`]: a directory entry -> the fields of a contact (README, "field mapping");
//! - [`kept`]: the users `/users/delta` last showed, kept between runs, and the generation of a set of persons;
//! - [`combine`]: the central folder's contacts and one mailbox's persons -> the one list phase 2 plans against.

pub mod combine;
pub mod kept;
pub mod mapping;
pub mod record;
pub mod selection;

#[cfg(test)]
mod combine_tests;
#[cfg(test)]
mod tests;

pub use combine::{combine, drop_directory_copies, overlay};
pub use kept::{persons_generation, with_photos, KeptUsers, UsersChanges};
pub use mapping::{org_contact_fields, user_fields, MAX_EMAIL_ADDRESSES};
pub use record::{
    resolve_manager_names, AssignedLicense, ManagerRef, OfficeAddress, OrgContactRecord, Phone,
    UserRecord,
};
pub use selection::{
    directory_sync_id, persons_for, select, DirectoryPerson, DirectoryRead, DirectorySnapshot,
    GroupFilter, DIRECTORY_SYNC_NAMESPACE,
};
