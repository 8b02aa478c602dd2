//! A changed `TargetFolder` (issue 11): the managed copies move from the previous folder to the current one in one
//! run. Pure, no I/O.
//!
//! Why this exists: Graph has no move for contacts, so a move is a create in the new place and a delete of the old
//! copy, and a copy must never be deleted before its replacement exists (an interrupted move would lose people).
//! The job plans the current folder as always ([`super::plan_distribution`]), lets [`carry_over`] give each new
//! copy what the user added to the old one (note text, categories), writes, and only then asks
//! [`plan_move_out`] which old copies go: those whose person now has a contact in the current folder (created by
//! this job, or already there). A move is not a mass deletion: moved copies are not held back by the cap. Only
//! old copies whose person left the sources count against it, as in phase 2. Users' own contacts never move.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Contact, Mailbox, PackedFields, WriteOp};

use super::identity::{
    creators_of, effective_sync_id, ownership_among, property_sync_id, Ownership, SyncId,
};
use super::normalize::has_category;
use super::plan::{
    deletion_allowance, ActionKind, Plan, PlanContext, PlanItem, PlanRefusal, Reason,
};
use super::stamp::{restamp, user_text, NotesStamp};

/// The managed copies of `old` (by the one ownership rule), by their sync id (the first by contact id of several).
fn managed_copies<'a>(
    ctx: &PlanContext,
    mailbox: &Mailbox,
    old: &'a [Contact],
    persons: &[Contact],
) -> BTreeMap<SyncId, &'a Contact> {
    let creators = creators_of(persons);
    let mut sorted: Vec<&Contact> = old.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = BTreeMap::new();
    for contact in sorted {
        if ownership_among(&ctx.tenant_id, mailbox, contact, &creators) != Ownership::ManagedCopy {
            continue;
        }
        if let Some(id) = property_sync_id(contact) {
            out.entry(id).or_insert(contact);
        }
    }
    out
}

/// Gives each copy `plan` creates in the current folder what the user added to the old copy of that person in
/// `old`: its note text (the new stamp kept) and its categories. A copy the user opted out keeps its own fields
/// too: the tool never changes an opted-out copy, so it moves as it is.
pub fn carry_over(
    ctx: &PlanContext,
    mailbox: &Mailbox,
    plan: &mut Plan,
    old: &[Contact],
    persons: &[Contact],
) {
    let copies = managed_copies(ctx, mailbox, old, persons);
    for item in &mut plan.items {
        let (Some(WriteOp::Create(write)), Some(sync)) = (
            item.op.as_mut(),
            item.sync_id.as_deref().and_then(SyncId::parse),
        ) else {
            continue;
        };
        let Some(old) = copies.get(&sync) else {
            continue;
        };
        let old_notes = old.personal_notes.as_deref();
        write.personal_notes = match &write.personal_notes {
            Some(new) => Some(restamp(old_notes, &NotesStamp::parse(Some(new)))),
            None => old_notes.map(user_text).filter(|t| !t.is_empty()),
        };
        let mut categories = old.categories.clone();
        for category in write.categories.iter().flatten() {
            if !has_category(&categories, category) {
                categories.push(category.clone());
            }
        }
        write.categories = Some(categories);
        if has_category(&old.categories, &ctx.options.opt_out_category) {
            write.fields = Some(PackedFields::pack(&old.fields));
        }
    }
}

/// The persons `plan` (of the current folder) found an existing contact for: they need no new copy, so their old
/// copies may go. Creates are not here: a created copy is proven by Graph's answer, which the caller adds.
pub fn matched_persons(plan: &Plan) -> BTreeSet<SyncId> {
    plan.items
        .iter()
        .filter(|item| {
            item.contact_id.is_some()
                && matches!(item.action, ActionKind::Skip | ActionKind::Update)
                && matches!(
                    item.reason,
                    Reason::Unchanged
                        | Reason::SourceNewer
                        | Reason::TargetNewer
                        | Reason::StampMissing
                )
        })
        .filter_map(|item| item.sync_id.as_deref().and_then(SyncId::parse))
        .collect()
}

/// Which contacts of the previous folder (`old`) go once the current folder is written: each managed copy whose
/// person has a contact in the current folder (`replaced`: [`matched_persons`] plus the sync ids of the copies
/// Graph confirmed created) is deleted ([`Reason::Moved`], never held back by the cap); a managed copy whose person
/// left the sources (`persons`) is deleted like phase 2 deletes it, within the cap
/// ([`PlanRefusal::TooManyDeletions`] otherwise, naming the mailbox); the rest stays until its replacement
/// exists. Owners' own contacts are never touched.
pub fn plan_move_out(
    ctx: &PlanContext,
    mailbox: &Mailbox,
    old: &[Contact],
    replaced: &BTreeSet<SyncId>,
    persons: &[Contact],
) -> Result<Plan, PlanRefusal> {
    let creators = creators_of(persons);
    let person_ids: BTreeSet<SyncId> = persons.iter().filter_map(effective_sync_id).collect();
    let options = &ctx.options;
    let mut sorted: Vec<&Contact> = old.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut items = Vec::with_capacity(sorted.len());
    let (mut managed, mut leavers) = (0usize, 0usize);
    for contact in sorted {
        let mut item = PlanItem {
            op: None,
            action: ActionKind::Skip,
            reason: Reason::OwnerCreated,
            sync_id: effective_sync_id(contact).map(|id| id.to_string()),
            display_name: contact.fields.display_name.clone(),
            contact_id: Some(contact.id.clone()),
            source: None,
            changed_fields: Vec::new(),
        };
        let owner = ownership_among(&ctx.tenant_id, mailbox, contact, &creators);
        let sync = property_sync_id(contact);
        if let (Ownership::ManagedCopy, Some(sync)) = (owner, sync) {
            managed += 1;
            let delete = if replaced.contains(&sync) {
                item.reason = Reason::Moved;
                true
            } else if person_ids.contains(&sync) {
                item.reason = Reason::AwaitingReplacement;
                false
            } else if !options.deletion.enabled {
                item.reason = Reason::DeletionDisabled;
                false
            } else {
                item.reason = Reason::NoLongerCentral;
                leavers += 1;
                true
            };
            if delete {
                item.op = Some(WriteOp::Delete {
                    id: contact.id.clone(),
                });
                item.action = ActionKind::Delete;
            }
        }
        items.push(item);
    }
    let plan = Plan { items };
    let allowed = deletion_allowance(managed, options.deletion.max_share);
    if leavers > allowed {
        return Err(PlanRefusal::TooManyDeletions {
            mailbox: mailbox.upn.clone(),
            deletes: leavers,
            managed,
            allowed,
            max_share: options.deletion.max_share,
            plan: Box::new(plan),
        });
    }
    Ok(plan)
}
