//! What a planning call returns: every create, update, delete and skip, each with its reason.
//!
//! Why this exists: the rules decide, the caller writes. Keeping the decision as data lets a dry run report the
//! complete plan without writing anything, lets the worker batch the writes, and lets tests check the rules
//! without a server. The serialised form (for reports) summarises each write (which parts it sets, which fields
//! changed) and never includes note text or field values.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::config::MirrorOptions;
use crate::model::{Mailbox, WriteOp};

/// Everything a planning call needs besides the contacts.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanContext {
    /// The tenant (id or domain, as configured); part of every derived sync id.
    pub tenant_id: String,
    /// The mailbox whose folder the plan writes: the shared mailbox in phase 1, the user in phase 2.
    pub owner: Mailbox,
    /// The tenant's mirroring policy.
    pub options: MirrorOptions,
    /// The time of this job, written into `LastUpdatedAt` stamps.
    pub now: DateTime<Utc>,
    /// Phase 1 only: the central folder was lost (deleted or renamed) and is restored from the users' contacts.
    /// Managed copies then publish their person again under its sync id instead of counting as removed, and the
    /// plan deletes nothing. `false` everywhere except an operator's explicit rebuild.
    pub rebuild_central: bool,
}

/// What a plan item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// POST a new contact.
    Create,
    /// PATCH an existing contact.
    Update,
    /// DELETE a contact.
    Delete,
    /// Nothing to write.
    Skip,
}

/// Why a plan item does what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The person is not in the folder yet.
    New,
    /// The data differs and the source's last edit is newer than the target's.
    SourceNewer,
    /// The data is the same after normalisation.
    Unchanged,
    /// The data differs but the target was edited more recently; the target's edit wins (and travels the other way).
    TargetNewer,
    /// The contact carries the opt-out category: never published, never changed.
    OptedOut,
    /// The contact's sync id is no longer in the central folder: it was removed there and is not published again.
    RemovedCentrally,
    /// A managed copy whose person left the central folder.
    NoLongerCentral,
    /// Only the identity stamp (extended property, notes stamp or managed category) is missing or outdated.
    StampMissing,
    /// Created by the mailbox owner: kept whatever happens centrally.
    OwnerCreated,
    /// Would be deleted, but the deletion policy is off.
    DeletionDisabled,
    /// A central contact without a sync id (phase 2 waits for phase 1 to stamp it).
    NoSyncId,
    /// Another contact in the same folder carries the same sync id and is the one kept in sync.
    DuplicateSyncId,
    /// An extra managed copy of a person (another carries the same sync id) that the deletion cap leaves for a
    /// later run: the folder is not in line until it goes ([`Plan::defers`]).
    DuplicateLeftForLater,
    /// A managed copy in the previous target folder whose replacement exists in the current one.
    Moved,
    /// A managed copy in the previous target folder whose replacement is not there yet: kept until it is.
    AwaitingReplacement,
    /// Cleanup: a managed copy the tool made, removed.
    CleanedUp,
    /// Cleanup: the owner's own contact carried the tool's stamp, which is taken off (notes text kept).
    Unstamped,
    /// Cleanup: a managed copy holding the owner's own note text is handed over to the owner (stamp taken off,
    /// note kept) instead of deleted.
    HandedOver,
    /// Would be updated, but the tenant creates only (`UpdateExisting` false).
    UpdatesDisabled,
    /// A central contact held fields outside `CentralFields` (from an earlier run or configuration): cleared.
    OutsideCentralFields,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::New => "new person",
            Reason::SourceNewer => "source edited more recently",
            Reason::Unchanged => "unchanged",
            Reason::TargetNewer => "target edited more recently; not overwritten",
            Reason::OptedOut => "carries the opt-out category",
            Reason::RemovedCentrally => "removed from the central folder; not published again",
            Reason::NoLongerCentral => "no longer in the central folder",
            Reason::StampMissing => "identity stamp missing or outdated",
            Reason::OwnerCreated => "created by the mailbox owner; never deleted",
            Reason::DeletionDisabled => "no longer in the central folder, but deletion is disabled",
            Reason::NoSyncId => "central contact without a sync id yet",
            Reason::DuplicateSyncId => "duplicate of another contact with the same sync id",
            Reason::DuplicateLeftForLater => {
                "duplicate of another contact with the same sync id; deleted on a later run (deletion cap)"
            }
            Reason::Moved => "moved: its replacement exists in the target folder",
            Reason::AwaitingReplacement => {
                "not moved yet: its replacement is not in the target folder"
            }
            Reason::CleanedUp => "managed copy removed by cleanup",
            Reason::Unstamped => "own contact: the tool's stamp removed",
            Reason::HandedOver => "managed copy with the owner's note: handed over, stamp removed",
            Reason::UpdatesDisabled => "would be updated, but UpdateExisting is off",
            Reason::OutsideCentralFields => "held fields outside CentralFields; cleared",
        })
    }
}

/// One decision about one contact.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanItem {
    /// The write to make; `None` for a skip.
    #[serde(rename = "write", serialize_with = "serialize_op")]
    pub op: Option<WriteOp>,
    /// What the item does.
    pub action: ActionKind,
    /// Why.
    pub reason: Reason,
    /// The person's sync id, when known.
    pub sync_id: Option<String>,
    /// The person's display name, for humans.
    pub display_name: Option<Box<str>>,
    /// The Graph id of the existing contact the item is about (updated, deleted or skipped), if any.
    pub contact_id: Option<String>,
    /// The UPN of the mailbox the data (or the skipped contact) comes from, when not the central folder.
    pub source: Option<String>,
    /// Graph names of the mirrored fields an update changes.
    pub changed_fields: Vec<&'static str>,
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActionKind::Create => "create",
            ActionKind::Update => "update",
            ActionKind::Delete => "delete",
            ActionKind::Skip => "skip",
        })
    }
}

/// One line for humans (dry-run reports): action, person, ids, reason, changed fields, source. Never note text
/// or field values beyond the display name.
impl std::fmt::Display for PlanItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?}",
            self.action,
            self.display_name.as_deref().unwrap_or("")
        )?;
        if let Some(id) = &self.sync_id {
            write!(f, " sync={id}")?;
        }
        if let Some(id) = &self.contact_id {
            write!(f, " contact={id}")?;
        }
        write!(f, ": {}", self.reason)?;
        if !self.changed_fields.is_empty() {
            write!(f, " [{}]", self.changed_fields.join(", "))?;
        }
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

/// Summarises a write for reports: its kind, target id and which parts it sets (never their values).
fn serialize_op<S: Serializer>(op: &Option<WriteOp>, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Summary<'a> {
        kind: &'static str,
        id: Option<&'a str>,
        sets: Vec<&'static str>,
    }
    let summary = op.as_ref().map(|op| {
        let (kind, id, write) = match op {
            WriteOp::Create(w) => ("create", None, Some(w)),
            WriteOp::Update { id, write, .. } => ("update", Some(id.as_str()), Some(write)),
            WriteOp::Delete { id } => ("delete", Some(id.as_str()), None),
        };
        let mut sets = Vec::new();
        if let Some(w) = write {
            for (set, name) in [
                (w.fields.is_some(), "fields"),
                (w.personal_notes.is_some(), "personalNotes"),
                (w.categories.is_some(), "categories"),
                (w.sync_id.is_some(), "syncId"),
            ] {
                if set {
                    sets.push(name);
                }
            }
        }
        Summary { kind, id, sets }
    });
    summary.serialize(serializer)
}

/// How many items of each kind a plan has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCounts {
    /// Contacts to create.
    pub created: usize,
    /// Contacts to update.
    pub updated: usize,
    /// Contacts to delete.
    pub deleted: usize,
    /// Contacts left as they are.
    pub skipped: usize,
}

/// The complete decision of one planning call, in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Every decision, skips included.
    pub items: Vec<PlanItem>,
}

impl Plan {
    /// The writes to make, in plan order.
    pub fn writes(&self) -> impl Iterator<Item = &WriteOp> {
        self.items.iter().filter_map(|item| item.op.as_ref())
    }

    /// Counts per action.
    pub fn counts(&self) -> PlanCounts {
        let mut counts = PlanCounts::default();
        for item in &self.items {
            match item.action {
                ActionKind::Create => counts.created += 1,
                ActionKind::Update => counts.updated += 1,
                ActionKind::Delete => counts.deleted += 1,
                ActionKind::Skip => counts.skipped += 1,
            }
        }
        counts
    }

    /// Whether the plan writes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes().next().is_none()
    }

    /// The plan reduced to what writing it needs: its counts and its writes, in plan order. A plan is held while
    /// it is written (minutes at Graph's pace) beside the next job's planning; its skips, names and ids are not
    /// (issue 10, scenario 10: about 300 B per item of a 100,000-item plan).
    pub fn into_writes(self) -> Writes {
        let counts = self.counts();
        let defers = self.defers();
        let mut ops: Vec<WriteOp> = self.items.into_iter().filter_map(|item| item.op).collect();
        ops.shrink_to_fit();
        Writes {
            counts,
            ops,
            defers,
        }
    }

    /// Whether the plan leaves a write for a later run ([`Reason::DuplicateLeftForLater`]): the folder it leaves
    /// is then not in line with its sources, and a kept feed must not say so (the next run would skip it).
    pub fn defers(&self) -> bool {
        self.items
            .iter()
            .any(|item| item.reason == Reason::DuplicateLeftForLater)
    }
}

/// What writing a [`Plan`] needs ([`Plan::into_writes`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Writes {
    /// The plan's counts per action.
    pub counts: PlanCounts,
    /// The writes, in plan order.
    pub ops: Vec<WriteOp>,
    /// The plan left a write for a later run ([`Plan::defers`]).
    pub defers: bool,
}

/// Why phase 2 refuses to touch a mailbox at all. The caller fails the job and writes nothing of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanRefusal {
    /// The plan would delete more managed copies than the deletion cap allows.
    TooManyDeletions {
        /// UPN of the mailbox.
        mailbox: String,
        /// Deletions the plan contains.
        deletes: usize,
        /// Managed copies in the mailbox.
        managed: usize,
        /// The most one job may delete here (see [`deletion_allowance`]).
        allowed: usize,
        /// The configured share.
        max_share: f64,
        /// The refused plan, for the report.
        plan: Box<Plan>,
    },
    /// The central folder read as empty while the mailbox holds managed copies: almost certainly a bad read.
    CentralEmpty {
        /// UPN of the mailbox.
        mailbox: String,
        /// Managed copies in the mailbox.
        managed: usize,
        /// The refused plan, for the report.
        plan: Box<Plan>,
    },
}

impl PlanRefusal {
    /// The refused plan (what would have been written), for reports.
    pub fn plan(&self) -> &Plan {
        match self {
            PlanRefusal::TooManyDeletions { plan, .. } | PlanRefusal::CentralEmpty { plan, .. } => {
                plan
            }
        }
    }
}

impl std::fmt::Display for PlanRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanRefusal::TooManyDeletions {
                mailbox,
                deletes,
                managed,
                allowed,
                max_share,
                ..
            } => write!(
                f,
                "refusing to change {mailbox}: the plan would delete {deletes} of its {managed} managed contacts, \
                 more than the safety cap allows ({allowed}, max share {:.0}%); nothing was written",
                max_share * 100.0
            ),
            PlanRefusal::CentralEmpty {
                mailbox, managed, ..
            } => write!(
                f,
                "refusing to change {mailbox}: the central folder read as empty while the mailbox holds {managed} \
                 managed contacts; nothing was written"
            ),
        }
    }
}

impl std::error::Error for PlanRefusal {}

/// The most managed copies one job may delete from a mailbox holding `managed` of them.
///
/// `floor(max_share * managed)` (with a tiny tolerance for float rounding), but at least 1 when `max_share > 0`:
/// without that floor a mailbox with fewer than 10 managed copies (at the default 10%) could never lose one.
/// Deleting everything at once is still refused by the empty-central rule, and `max_share <= 0` allows none.
pub fn deletion_allowance(managed: usize, max_share: f64) -> usize {
    if max_share.is_nan() || max_share <= 0.0 {
        return 0;
    }
    let share = max_share.min(1.0);
    // usize -> f64 is exact for any realistic mailbox size; the product is non-negative and <= managed.
    let allowed = (share * managed as f64 + 1e-9).floor() as usize;
    allowed.clamp(1, managed.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance() {
        assert_eq!(deletion_allowance(0, 0.1), 1);
        assert_eq!(deletion_allowance(5, 0.1), 1);
        assert_eq!(deletion_allowance(10, 0.1), 1);
        assert_eq!(deletion_allowance(29, 0.1), 2);
        assert_eq!(deletion_allowance(100, 0.29), 29);
        assert_eq!(deletion_allowance(30, 0.1), 3);
        assert_eq!(deletion_allowance(50, 0.0), 0);
        assert_eq!(deletion_allowance(50, f64::NAN), 0);
        assert_eq!(deletion_allowance(50, 2.0), 50);
    }
}
