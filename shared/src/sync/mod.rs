//! The mirroring rules: pure functions that decide what to create, update, skip or delete. No I/O.
//!
//! Why this module exists: the scripts contactmirror replaces got their decisions wrong in ways that hurt people
//! (duplicates, leaked private notes, edits that never propagate, deletions that return forever or wipe
//! everything). Keeping every decision here, free of Graph and queues, makes them testable exhaustively; the
//! worker reads folders, calls a planner and writes what the [`Plan`] says.
//!
//! - Phase 1, [`plan_central`]: users' default contacts -> the central folder in the shared mailbox.
//! - Phase 2, [`plan_distribution`]: the central folder -> one user's default contacts.
//! - [`cleanup`]: what `cleanup` removes; [`relocate`]: managed copies moving to a changed `TargetFolder`.
//!
//! Identity ([`identity`]): every managed contact carries a sync id (a UUID; new ones derived deterministically
//! from tenant, source mailbox and source contact id) in the [`crate::model::SYNC_ID_PROPERTY`] extended property
//! and, when `stamp_notes`, in script-compatible stamp lines in personal notes ([`stamp`]). Data is compared after
//! normalisation ([`normalize`]) so unchanged contacts cost nothing. [`simulate`] models Graph applying a plan.

pub mod central;
pub mod cleanup;
pub mod distribute;
pub mod fields;
pub mod identity;
pub mod inert;
mod matching;
pub mod normalize;
pub mod overlap;
pub mod photo;
pub mod plan;
pub mod relocate;
pub mod simulate;
pub mod stamp;

#[cfg(test)]
mod cleanup_tests;
#[cfg(test)]
mod tests;

pub use central::{plan_central, SourceMailbox};
pub use cleanup::{plan_cleanup, CleanupScope, CleanupSource};
pub use distribute::{plan_distribution, plan_distribution_from, PreparedCentral};
pub use identity::{effective_sync_id, ownership, OwnerReason, Ownership, SyncId};
pub use inert::CentralKeys;
pub use plan::{ActionKind, Plan, PlanContext, PlanCounts, PlanItem, PlanRefusal, Reason, Writes};
pub use relocate::{carry_over, matched_persons, plan_move_out};
pub use stamp::NotesStamp;
