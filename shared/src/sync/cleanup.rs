//! Cleanup (issue 11): what `contactmirror-producer cleanup` takes out of one folder. Pure, no I/O.
//!
//! Why this exists: an operator who stops using the tool (or one of its sources) must get every mailbox back as it
//! was, without losing anything a user made. So the one ownership rule decides ([`ownership_among`]: the extended
//! property as proof, `CreatedBy` naming the owner, and phase 2's renamed-UPN rule), never a stamp alone:
//! - a managed copy of a covered person is deleted, unless it holds the owner's own note text or carries the
//!   opt-out category: then it is handed over (stamp lines and property taken off, note and categories kept but
//!   the managed category), because a user's note is never lost;
//! - an owner's own contact the tool stamped (it carries the property) gets the stamp lines taken out of its notes
//!   (the owner's text comes back byte for byte, [`user_text`]) and the property emptied (Graph cannot remove an
//!   extended property; an empty value reads as no sync id);
//! - everything else is left alone.
//!
//! The deletion cap does not apply: cleanup is an explicit operator command. Applying the plan and planning again
//! plans nothing, so an interrupted cleanup is simply run again.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{Contact, ContactWrite, FieldSet, Mailbox, WriteOp};

use super::identity::{creators_of, ownership_among, property_sync_id, Ownership, SyncId};
use super::normalize::has_category;
use super::plan::{ActionKind, Plan, PlanContext, PlanItem, Reason};
use super::stamp::{has_stamp_lines, user_text};

/// Which source's copies a cleanup removes (`cleanup --source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupSource {
    /// The mirror's copies (every managed copy not of a directory person) and the central folder's contacts.
    Mirror,
    /// The copies of the tenant's directory persons.
    Directory,
    /// Every managed copy, and the central folder's contacts.
    All,
}

impl CleanupSource {
    /// Whether a contact whose property names `sync` is this source's: a directory person's id is the
    /// directory's; any other id the mirror's (the tool has no third source).
    pub fn covers(self, sync: &SyncId, directory_ids: &BTreeSet<SyncId>) -> bool {
        match self {
            CleanupSource::All => true,
            CleanupSource::Directory => directory_ids.contains(sync),
            CleanupSource::Mirror => !directory_ids.contains(sync),
        }
    }

    /// Whether the central folder is emptied too.
    pub fn includes_central(self) -> bool {
        !matches!(self, CleanupSource::Directory)
    }

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupSource::Mirror => "mirror",
            CleanupSource::Directory => "directory",
            CleanupSource::All => "all",
        }
    }
}

impl fmt::Display for CleanupSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CleanupSource {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            CleanupSource::Mirror,
            CleanupSource::Directory,
            CleanupSource::All,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(value.trim()))
        .ok_or_else(|| format!("expected mirror, directory or all, got {value:?}"))
    }
}

/// What a cleanup plan knows besides the folder.
#[derive(Debug, Clone, Copy)]
pub struct CleanupScope<'a> {
    /// Whose copies go.
    pub source: CleanupSource,
    /// The sync ids of the tenant's directory persons (empty without a directory).
    pub directory_ids: &'a BTreeSet<SyncId>,
    /// The persons the mailbox is planned against in phase 2 (central folder and directory combined): their
    /// `CreatedBy` tells an owner's stamped contact from a copy, as in phase 2. Empty for the central folder.
    pub persons: &'a [Contact],
}

/// Plans the cleanup of `folder` in `mailbox` (see the module documentation). Deterministic: by contact id.
pub fn plan_cleanup(
    ctx: &PlanContext,
    mailbox: &Mailbox,
    folder: &[Contact],
    scope: &CleanupScope<'_>,
) -> Plan {
    let creators = creators_of(scope.persons);
    let mut sorted: Vec<&Contact> = folder.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let managed_category = ctx.options.managed_category.as_deref();
    let mut items = Vec::with_capacity(sorted.len());
    for contact in sorted {
        let property = property_sync_id(contact);
        let covered = property
            .as_ref()
            .is_some_and(|id| scope.source.covers(id, scope.directory_ids));
        let mut item = PlanItem {
            op: None,
            action: ActionKind::Skip,
            reason: Reason::Unchanged,
            sync_id: property.as_ref().map(ToString::to_string),
            display_name: contact.fields.display_name.clone(),
            contact_id: Some(contact.id.clone()),
            source: None,
            changed_fields: Vec::new(),
        };
        let owner = ownership_among(&ctx.tenant_id, mailbox, contact, &creators);
        let notes = contact.personal_notes.as_deref();
        let stamped_notes = notes.is_some_and(has_stamp_lines);
        let unstamp = |categories: Option<Vec<String>>| ContactWrite {
            unchanged: FieldSet::empty(),
            fields: None,
            personal_notes: notes.filter(|_| stamped_notes).map(user_text),
            categories,
            sync_id: Some(String::new()),
            owner: contact.owner_property.as_ref().map(|_| String::new()),
        };
        match (owner, covered) {
            (Ownership::ManagedCopy, true) => {
                let own_text = notes.map(user_text).is_some_and(|t| !t.trim().is_empty());
                let opted_out = has_category(&contact.categories, &ctx.options.opt_out_category);
                if own_text || opted_out {
                    let categories = managed_category
                        .filter(|cat| has_category(&contact.categories, cat))
                        .map(|cat| {
                            let cat = cat.trim().to_lowercase();
                            contact
                                .categories
                                .iter()
                                .filter(|c| c.trim().to_lowercase() != cat)
                                .cloned()
                                .collect()
                        });
                    item.op = Some(WriteOp::Update {
                        id: contact.id.clone(),
                        write: unstamp(categories),
                        // The notes go back as read: only if no one wrote them since.
                        if_match: contact.change_key.as_deref().map(Box::from),
                    });
                    item.action = ActionKind::Update;
                    item.reason = Reason::HandedOver;
                } else {
                    item.op = Some(WriteOp::Delete {
                        id: contact.id.clone(),
                    });
                    item.action = ActionKind::Delete;
                    item.reason = Reason::CleanedUp;
                }
            }
            (Ownership::OwnerCreated(_), true) => {
                item.op = Some(WriteOp::Update {
                    id: contact.id.clone(),
                    write: unstamp(None),
                    if_match: contact.change_key.as_deref().map(Box::from),
                });
                item.action = ActionKind::Update;
                item.reason = Reason::Unstamped;
            }
            (Ownership::OwnerCreated(_), false) => item.reason = Reason::OwnerCreated,
            (Ownership::ManagedCopy, false) => {}
        }
        items.push(item);
    }
    Plan { items }
}
