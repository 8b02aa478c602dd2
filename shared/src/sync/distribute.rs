//! Phase 2: the central folder -> one user's default contacts.
//!
//! Why this exists: every user must end up with every central person exactly once, receive central edits that are
//! newer than their own, keep their own notes, categories and newer edits, and lose only copies the tool manages
//! when a person leaves the central folder, never en masse by accident. See [`plan_distribution`] for the rules.

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::config::{CentralFields, MirrorOptions};
use crate::model::{Contact, ContactWrite, FieldSet, Mailbox, PackedFields, WriteOp};

use super::central::{with_category, Candidate, MatchKeys};
use super::fields::{self, Data, Existing};
use super::identity::{
    effective_sync_id, names_mailbox, ownership_of, property_sync_id, stamped_as_own, OwnerReason,
    Ownership, SyncId,
};
use super::inert::CentralKeys;
use super::matching::{agrees, DataIndex};
use super::normalize::{has_category, normalize};
use super::plan::{
    deletion_allowance, ActionKind, Plan, PlanContext, PlanItem, PlanRefusal, Reason,
};
use super::stamp::{format_time, restamp, NotesStamp};

/// A contact of the target folder during planning.
struct Target<'a> {
    c: Candidate<'a>,
    property: Option<SyncId>,
    stamp: TargetStamp,
    derived: SyncId,
    ownership: Ownership,
    opted_out: bool,
}

impl Target<'_> {
    /// Its sync id: the extended property, else the notes stamp's (as [`effective_sync_id`]).
    fn effective(&self) -> Option<&SyncId> {
        self.property.as_ref().or(self.stamp.sync_id.as_ref())
    }
}

/// Targets by a sync id they carry: each id's targets in index order. A sorted list of pairs, not a map of lists:
/// a mailbox's every contact is in one (its derived id), and a map entry with its own list took about 70 bytes a
/// contact against 16 (issue 10, scenario 10).
struct TargetsById<'a>(Vec<(&'a SyncId, usize)>);

impl<'a> TargetsById<'a> {
    fn new() -> Self {
        TargetsById(Vec::new())
    }

    /// Adds target `ti`; targets are added in index order.
    fn push(&mut self, id: &'a SyncId, ti: usize) {
        self.0.push((id, ti));
    }

    /// Ready for [`TargetsById::get`] (a stable sort keeps each id's targets in index order).
    fn sorted(mut self) -> Self {
        self.0.sort_by(|a, b| a.0.cmp(b.0));
        self.0.shrink_to_fit();
        self
    }

    /// The targets carrying `id`, in index order; `None` when there are none.
    fn get(&self, id: &SyncId) -> Option<impl Iterator<Item = usize> + Clone + '_> {
        let start = self.0.partition_point(|(other, _)| *other < id);
        let end = start + self.0[start..].partition_point(|(other, _)| *other == id);
        (end > start).then(|| self.0[start..end].iter().map(|&(_, ti)| ti))
    }
}

/// What phase 2 reads of a target's notes stamp: its sync id and creator (the rest of a parsed [`NotesStamp`],
/// 88 bytes a contact, is never read, and a whole mailbox is planned at once: issue 10, scenario 10).
struct TargetStamp {
    sync_id: Option<SyncId>,
    created_by: Option<Box<str>>,
}

impl TargetStamp {
    fn of(stamp: NotesStamp) -> Self {
        TargetStamp {
            sync_id: stamp.sync_id,
            created_by: stamp.created_by.map(String::into_boxed_str),
        }
    }
}

/// A central contact during planning (borrowing what [`PreparedCentral`] computed once for every job).
struct Source<'a> {
    c: Candidate<'a>,
    sync: &'a SyncId,
    stamp: &'a CentralStamp,
    canonical: bool,
}

/// What phase 2 reads of a central person's notes stamp: who created the person and whose edit its data came from.
/// Its sync id is [`PreparedCentral`]'s `syncs`, and the rest is never read: a whole central folder's stamps are
/// cached for the run, so only these are kept (issue 10, scenario 10).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CentralStamp {
    created_by: Option<Box<str>>,
    last_updated_by: Option<Box<str>>,
}

impl CentralStamp {
    fn of(stamp: NotesStamp) -> Self {
        CentralStamp {
            created_by: stamp.created_by.map(String::into_boxed_str),
            last_updated_by: stamp.last_updated_by.map(String::into_boxed_str),
        }
    }
}

/// Plans phase 2 for one user: what to write into `target_mailbox`'s default contacts (`target`) so that it mirrors
/// the central folder (`central`). `ctx.owner` should be `target_mailbox`; ownership is judged by `target_mailbox`.
///
/// Matching (each central person claims at most one target, each target serves at most one person), in passes
/// over all central contacts so a weaker key never steals what a stronger key identifies: the extended property,
/// then the notes `SyncId` (targets without the property, and only when the data agrees: anyone can paste a stamp
/// line), then the target whose derived sync id is the central
/// one (the unstamped original the person was first published from), then email addresses, then the displayName
/// when neither side has an email. Email and name matches only consider targets without a sync id or whose sync id
/// left the central folder (those are adopted: re-stamped instead of deleted and re-created; a managed copy only by
/// a person not opted out, which takes no copy but its own), and pair a target
/// only with the central person phase 1 would match it with (most shared addresses, first by id on a tie; by name,
/// the first with that name), so both phases agree; of several such targets the one sharing the most addresses,
/// then the first by id, is the person's, and the others are left alone.
///
/// Per central person (central contacts without a sync id are skipped until phase 1 stamps them; of several with
/// one sync id the first by id is used):
/// - central contact carries the opt-out category: nothing is created or changed (existing copies are kept);
/// - no target: create it with the central data, the sync id (property and, when `stamp_notes`, notes with
///   `CreatedBy` from the central stamp), the managed category;
/// - target carries the opt-out category: left alone;
/// - what the field policy makes of the target ([`fields::for_target`]: `Overwrite` fields take the central value,
///   `Ignore` fields and filled `FillEmpty` fields keep the target's, an owner's contact keeps what lies outside
///   `CentralFields`) differs and central is newer (or as new: ties go to the central folder): PATCH the data
///   (fields written whole, cleared fields as null, lists replaced; a new copy never gets an `Ignore` field);
///   the target's own note text and categories are preserved exactly: only stamp lines are rewritten and the
///   managed category is added to managed copies (never to the owner's own contacts);
/// - the identity stamp is missing or outdated: completed in the same PATCH, or alone. Stamping a contact the
///   owner created keeps it recognisable as theirs (`CreatedBy=<owner>`); when notes stamping is off and the sync
///   id is not the contact's own derived id, such a contact is not stamped at all (it stays matched by email),
///   because a bare property would make it look like a managed copy.
///
/// Deletion, only ever of a managed copy (see [`super::ownership`]: it needs the extended property as proof, so a notes
/// stamp alone never makes a contact deletable) that no central person claimed, when `deletion.enabled`:
/// - its sync id is not in the central folder ([`Reason::NoLongerCentral`]);
/// - it is an extra copy of a person still central ([`Reason::DuplicateSyncId`]: an ambiguous create resent, say).
///   Of several targets with one sync id the owner's own contact is the one kept, else the one holding the central
///   data, else the first by id. These go within what the cap leaves after the first kind, the rest on later runs
///   ([`Reason::DuplicateLeftForLater`]), so duplicates never cause a refusal.
///
/// Owner-created and opted-out contacts are kept. A matched contact with the extended property whose `CreatedBy`
/// is neither this mailbox nor the central person's creator counts as the owner's ([`OwnerReason::StampedAsOwn`]:
/// an earlier version stamped it with the owner's UPN before a rename) and is re-stamped with the object id. Safety: when deletion is enabled and the central folder has no
/// contact with a sync id while the mailbox holds managed copies, or the contacts no longer central are more than
/// [`deletion_allowance`] of the mailbox's managed copies, the whole plan is refused.
pub fn plan_distribution(
    ctx: &PlanContext,
    central: &[Contact],
    target_mailbox: &Mailbox,
    target: &[Contact],
) -> Result<Plan, PlanRefusal> {
    plan_distribution_from(
        ctx,
        &PreparedCentral::of_central_folder(central.to_vec(), ctx.options.fields.central),
        target_mailbox,
        target,
    )
}

/// The central folder as phase 2 plans from it: sorted by id, normalised and its stamps read once, so the phase-2
/// jobs of a run that share one cached folder (100,000 contacts, say) do not each sort, normalise and parse it
/// again, nor each hold a copy of what that produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedCentral {
    /// By id (a stable sort: contacts sharing an id keep their read order).
    contacts: Vec<Contact>,
    /// `keys[i]` are `contacts[i]`'s.
    keys: Vec<MatchKeys>,
    /// `stamps[i]` is what phase 2 reads of `contacts[i]`'s notes stamp.
    stamps: Vec<CentralStamp>,
    /// `syncs[i]` is `contacts[i]`'s sync id ([`effective_sync_id`]).
    syncs: Vec<Option<SyncId>>,
    /// What phase 1 drops as inert against this folder, built by the first job that asks ([`Self::central_keys`]).
    inert: OnceLock<CentralKeys>,
}

impl PreparedCentral {
    /// Sorts and normalises `contacts` (a complete read of the central folder).
    pub fn new(mut contacts: Vec<Contact>) -> Self {
        contacts.sort_by(|a, b| a.id.cmp(&b.id));
        contacts.shrink_to_fit();
        let keys = contacts.iter().map(MatchKeys::of).collect();
        let stamps = contacts
            .iter()
            .map(|c| CentralStamp::of(NotesStamp::parse(c.personal_notes.as_deref())))
            .collect();
        let syncs = contacts.iter().map(effective_sync_id).collect();
        PreparedCentral {
            contacts,
            keys,
            stamps,
            syncs,
            inert: OnceLock::new(),
        }
    }

    /// What phase 1 would drop as inert against this folder ([`CentralKeys`]), built once for every phase-2 job
    /// that shares it. `ctx` is phase 1's (its owner the shared mailbox, whose contacts' derived ids it gives);
    /// every job of one run passes the same.
    pub fn central_keys(&self, ctx: &PlanContext) -> &CentralKeys {
        self.inert
            .get_or_init(|| CentralKeys::for_copies(ctx, &self.contacts))
    }

    /// The central folder's contacts as phase 2 may distribute them ([`fields::central_folder_view`]).
    pub fn of_central_folder(contacts: Vec<Contact>, central: CentralFields) -> Self {
        Self::new(fields::central_folder_view(contacts, central))
    }

    /// The contacts, by id.
    pub fn contacts(&self) -> &[Contact] {
        &self.contacts
    }
}

/// [`plan_distribution`] from a central folder prepared once ([`PreparedCentral`]); the same plan.
pub fn plan_distribution_from(
    ctx: &PlanContext,
    central: &PreparedCentral,
    target_mailbox: &Mailbox,
    target: &[Contact],
) -> Result<Plan, PlanRefusal> {
    let options = &ctx.options;
    let mut items = Vec::new();

    // Central persons, by id.
    let mut sources: Vec<Source> = Vec::with_capacity(central.contacts.len());
    let mut central_ids: HashSet<&SyncId> = HashSet::with_capacity(central.contacts.len());
    for (((contact, keys), stamp), sync) in central
        .contacts
        .iter()
        .zip(&central.keys)
        .zip(&central.stamps)
        .zip(&central.syncs)
    {
        let Some(sync) = sync else {
            items.push(PlanItem {
                op: None,
                action: ActionKind::Skip,
                reason: Reason::NoSyncId,
                sync_id: None,
                display_name: contact.fields.display_name.clone(),
                contact_id: Some(contact.id.clone()),
                source: None,
                changed_fields: Vec::new(),
            });
            continue;
        };
        let canonical = central_ids.insert(sync);
        sources.push(Source {
            c: Candidate::with_keys(&ctx.owner, contact, keys),
            stamp,
            sync,
            canonical,
        });
    }

    // Target contacts, by id.
    let mut target_sorted: Vec<&Contact> = target.iter().collect();
    target_sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut targets: Vec<Target> = target_sorted
        .into_iter()
        .map(|contact| {
            let property = property_sync_id(contact);
            let stamp = NotesStamp::parse(contact.personal_notes.as_deref());
            let derived = SyncId::derive(&ctx.tenant_id, &target_mailbox.id, &contact.id);
            Target {
                c: Candidate::new(target_mailbox, contact),
                ownership: ownership_of(
                    target_mailbox,
                    property.as_ref(),
                    &stamp,
                    contact.owner_property.as_deref(),
                    &derived,
                ),
                property,
                stamp: TargetStamp::of(stamp),
                derived,
                opted_out: has_category(&contact.categories, &options.opt_out_category),
            }
        })
        .collect();
    // The cap's base: managed copies as `ownership` judges them on their own.
    let managed = targets
        .iter()
        .filter(|t| t.ownership == Ownership::ManagedCopy)
        .count();

    // Matching.
    let mut matched: Vec<Option<usize>> = vec![None; sources.len()];
    let mut claimed: Vec<bool> = vec![false; targets.len()];
    let (mut by_property, mut by_notes, mut by_derived) =
        (TargetsById::new(), TargetsById::new(), TargetsById::new());
    for (ti, t) in targets.iter().enumerate() {
        match (&t.property, &t.stamp.sync_id) {
            (Some(p), _) => by_property.push(p, ti),
            // A notes stamp may be any pasted id: the contact may also have been published under its own.
            (None, Some(n)) => {
                by_notes.push(n, ti);
                by_derived.push(&t.derived, ti);
            }
            (None, None) => by_derived.push(&t.derived, ti),
        }
    }
    let (by_property, by_notes, by_derived) =
        (by_property.sorted(), by_notes.sorted(), by_derived.sorted());
    // Email and name matches only consider targets without a sync id, or whose sync id left the central folder.
    let adoptable: Vec<bool> = targets
        .iter()
        .map(|t| t.effective().is_none_or(|s| !central_ids.contains(s)))
        .collect();
    // A sync id only in the notes is trusted when the data agrees (anyone can paste a stamp line): a contact of
    // someone else carrying a pasted stamp is left alone, never rewritten into the central person.
    for (index, needs_agreement) in [
        (&by_property, false),
        (&by_notes, true),
        (&by_derived, false),
    ] {
        for (si, source) in sources.iter().enumerate() {
            if !source.canonical || matched[si].is_some() {
                continue;
            }
            // Of several targets with one id (duplicates), the owner's own contact is kept in sync (it can never
            // be deleted, so keeping a managed copy beside it would leave two), else the one already holding the
            // same data, else the first by id; the extra managed copies are deleted below.
            let free = index.get(source.sync).and_then(|ts| {
                let free = || {
                    ts.clone().filter(|&ti| {
                        !claimed[ti] && (!needs_agreement || agrees(&targets[ti].c, &source.c))
                    })
                };
                free()
                    .find(|&ti| targets[ti].ownership.is_owner_created())
                    .or_else(|| free().find(|&ti| targets[ti].c.norm == source.c.norm))
                    .or_else(|| free().next())
            });
            if let Some(ti) = free {
                matched[si] = Some(ti);
                claimed[ti] = true;
            }
        }
    }
    // Email, then name: a target is matched only by the central person phase 1 matches it with (one rule for both,
    // in `matching`: the one sharing the most addresses, the first by id on a tie; by name, the first with that
    // name), so both phases agree on who it is. Of several targets for one person, the one sharing the most addresses (then the first by id) wins;
    // the others are left alone.
    // The index of every central person is built only when some target is left to match by data: in a mailbox
    // already in line every target was claimed by its sync id, and a 100,000-person index would be built for
    // nothing (issue 10, scenario 10).
    let open: Vec<usize> = (0..targets.len())
        .filter(|&ti| !claimed[ti] && adoptable[ti])
        .collect();
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    if !open.is_empty() {
        let mut index = DataIndex::default();
        for (si, source) in sources.iter().enumerate().filter(|(_, s)| s.canonical) {
            index.insert(si, &source.c);
        }
        // A managed copy whose person left is adopted only by a person that takes copies: an opted-out one keeps
        // its own (claimed above by sync id) and takes no other, or the stale copy would stay beside the copy the
        // next person sharing its address gets (proptest `combined_runs_keep_owners_contacts_…`). An owner's
        // contact still meets every person, as phase 1 matches it.
        let takes_copies: Vec<bool> = sources
            .iter()
            .map(|s| !has_category(&s.c.contact.categories, &options.opt_out_category))
            .collect();
        for ti in open {
            let target = &targets[ti];
            let found = if target.ownership == Ownership::ManagedCopy {
                index.best_where(&target.c, |si| takes_copies[si])
            } else {
                index.best(&target.c)
            };
            if let Some(m) = found {
                pairs.push((m.shared, m.index, ti));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, si, ti) in pairs {
        if matched[si].is_none() && !claimed[ti] {
            matched[si] = Some(ti);
            claimed[ti] = true;
        }
    }

    // The tool copies the central person's `CreatedBy` into every copy it makes. A matched contact carrying the
    // extended property but a different `CreatedBy` (naming neither this mailbox nor the person's creator) was not
    // made from the central folder: it is an owner's contact the tool stamped with the owner's UPN before a rename.
    // It stays the owner's, and its stamp is rewritten to the owner's object id, which no rename changes.
    // Only against the person its property names, as `identity::ownership_among` judges for cleanup: a copy of a
    // person who left, matched by address to another, was stamped with the other person's creator, and taken for
    // an owner's contact it kept the old sync id under the new data, so the next phase 1 read it as a newer source
    // of the person who left (proptest `two_runs_converge_and_owners_keep_their_contacts`, case ba1a10ed).
    for (si, ti) in matched.iter().enumerate() {
        let Some(ti) = *ti else { continue };
        let creator = sources[si].stamp.created_by.as_deref();
        let target = &mut targets[ti];
        if target.ownership == Ownership::ManagedCopy
            && target.property.as_ref() == Some(sources[si].sync)
            && stamped_as_own(target.stamp.created_by.as_deref(), creator)
        {
            target.ownership = Ownership::OwnerCreated(OwnerReason::StampedAsOwn);
        }
    }

    for (si, source) in sources.iter().enumerate() {
        let target = matched[si].map(|ti| &targets[ti]);
        items.push(plan_person(ctx, source, target));
    }

    // Deletion: managed copies whose person left the central folder, then extra managed copies of a person still
    // central (an ambiguous create resent, say) within what the cap leaves; the rest of those go on later runs.
    let allowed = deletion_allowance(managed, options.deletion.max_share);
    let unclaimed: Vec<(&Target, &SyncId)> = targets
        .iter()
        .zip(&claimed)
        .filter(|(_, claimed)| !**claimed)
        .filter_map(|(t, _)| t.effective().map(|sync| (t, sync)))
        .collect();
    let gone = unclaimed
        .iter()
        .filter(|(t, sync)| deletable(t, options) && !central_ids.contains(*sync))
        .count();
    let mut duplicates_left = allowed.saturating_sub(gone);
    for (t, sync) in unclaimed {
        let contact = t.c.contact;
        let (reason, delete) = if t.ownership.is_owner_created() {
            (Reason::OwnerCreated, false)
        } else if t.opted_out {
            (Reason::OptedOut, false)
        } else if !options.deletion.enabled {
            (Reason::DeletionDisabled, false)
        } else if !central_ids.contains(sync) {
            (Reason::NoLongerCentral, true)
        } else if duplicates_left > 0 {
            duplicates_left -= 1;
            (Reason::DuplicateSyncId, true)
        } else {
            (Reason::DuplicateLeftForLater, false)
        };
        let op = delete.then(|| WriteOp::Delete {
            id: contact.id.clone(),
        });
        items.push(PlanItem {
            action: if op.is_some() {
                ActionKind::Delete
            } else {
                ActionKind::Skip
            },
            op,
            reason,
            sync_id: Some(sync.to_string()),
            display_name: contact.fields.display_name.clone(),
            contact_id: Some(contact.id.clone()),
            source: None,
            changed_fields: Vec::new(),
        });
    }

    let plan = Plan { items };
    if options.deletion.enabled && managed > 0 && central_ids.is_empty() {
        return Err(PlanRefusal::CentralEmpty {
            mailbox: target_mailbox.upn.clone(),
            managed,
            plan: Box::new(plan),
        });
    }
    let deletes = plan.counts().deleted;
    if deletes > allowed {
        return Err(PlanRefusal::TooManyDeletions {
            mailbox: target_mailbox.upn.clone(),
            deletes,
            managed,
            allowed,
            max_share: options.deletion.max_share,
            plan: Box::new(plan),
        });
    }
    Ok(plan)
}

/// Whether the policy lets the tool delete `target` at all: a managed copy, not opted out, deletion enabled.
fn deletable(target: &Target, options: &MirrorOptions) -> bool {
    target.ownership == Ownership::ManagedCopy && !target.opted_out && options.deletion.enabled
}

/// The `CreatedBy` to write into `mailbox`: the creator as the central folder names them, except that a creator
/// naming this mailbox is written as its object id (a copy in its creator's mailbox counts as theirs, and the id
/// survives a rename).
fn recorded_creator(created_by: &str, mailbox: &Mailbox) -> String {
    if names_mailbox(created_by, mailbox) {
        mailbox.id.clone()
    } else {
        created_by.to_owned()
    }
}

/// Whether a write's notes stamp (`written`: the write carries notes) names `mailbox` as the contact's creator: a
/// copy in its creator's mailbox (`recorded_creator`) or an owner's contact. Such a write carries the owner mark
/// too (`model::OWNER_PROPERTY`), the notes' claim out of the user's reach.
fn notes_name_owner(written: bool, stamp: &NotesStamp, mailbox: &Mailbox) -> bool {
    written && stamp.created_by.as_deref() == Some(mailbox.id.as_str())
}

/// The decision about one central person in this mailbox.
fn plan_person(ctx: &PlanContext, source: &Source, target: Option<&Target>) -> PlanItem {
    let options = &ctx.options;
    let central = source.c.contact;
    let mut item = PlanItem {
        op: None,
        action: ActionKind::Skip,
        reason: Reason::Unchanged,
        sync_id: Some(source.sync.to_string()),
        display_name: central.fields.display_name.clone(),
        contact_id: target.map(|t| t.c.contact.id.clone()),
        source: None,
        changed_fields: Vec::new(),
    };
    if !source.canonical {
        item.reason = Reason::DuplicateSyncId;
        item.contact_id = Some(central.id.clone());
        return item;
    }
    if has_category(&central.categories, &options.opt_out_category) {
        item.reason = Reason::OptedOut;
        return item;
    }
    let last_updated_by = source
        .stamp
        .last_updated_by
        .as_deref()
        .or(source.stamp.created_by.as_deref())
        .map(str::to_owned);

    let Some(t) = target else {
        let created_by = source
            .stamp
            .created_by
            .as_deref()
            .map(|by| recorded_creator(by, &ctx.owner));
        let stamp = NotesStamp {
            sync_id: Some(source.sync.clone()),
            created_by,
            last_updated_at: Some(format_time(ctx.now)),
            last_updated_by,
        };
        let (fields, unchanged) = fields::for_target(
            &options.fields,
            Data {
                fields: &central.fields,
                norm: &source.c.norm,
            },
            None,
        );
        let personal_notes = options.stamp_notes.then(|| restamp(None, &stamp));
        item.op = Some(WriteOp::Create(ContactWrite {
            fields: Some(PackedFields::pack(&fields)),
            unchanged,
            owner: notes_name_owner(personal_notes.is_some(), &stamp, &ctx.owner)
                .then(|| ctx.owner.id.clone()),
            personal_notes,
            categories: options
                .managed_category
                .as_ref()
                .map(|c| vec![c.trim().to_owned()]),
            sync_id: Some(source.sync.to_string()),
        }));
        item.action = ActionKind::Create;
        item.reason = Reason::New;
        return item;
    };

    if t.opted_out {
        item.reason = Reason::OptedOut;
        return item;
    }
    let contact = t.c.contact;
    let owner_created = t.ownership.is_owner_created();
    // What the policy makes of the target's fields; computed only when they differ from the source's at all
    // (equal data stays equal under every policy).
    let desired = (t.c.norm != source.c.norm).then(|| {
        let fields = fields::for_target(
            &options.fields,
            Data {
                fields: &central.fields,
                norm: &source.c.norm,
            },
            Some(Existing {
                data: Data {
                    fields: &contact.fields,
                    norm: &t.c.norm,
                },
                owner_created,
            }),
        );
        let norm = normalize(&fields.0);
        (fields, norm)
    });
    let desired = desired.filter(|(_, norm)| *norm != t.c.norm);
    let differs = desired.is_some();
    // Ties (equal or both unknown timestamps) go to the central folder: phase 1 publishes only strictly newer
    // edits, so a tie left alone here would be stamped, look newer next run and flip the person back.
    let write_data = differs && central.last_modified >= contact.last_modified;
    // A bare property would make an owner's contact look like a managed copy; only stamp when ownership survives.
    let may_stamp = !owner_created || options.stamp_notes || t.derived == *source.sync;
    let needs_property = may_stamp && t.property.as_ref() != Some(source.sync);
    // An owner's contact carrying someone else's sync id is recognised as theirs by `CreatedBy` naming the owner
    // by object id, which survives a rename (an older stamp naming the UPN is rewritten once, before any rename).
    let owner_unproven = owner_created
        && t.derived != *source.sync
        && !t
            .stamp
            .created_by
            .as_deref()
            .is_some_and(|by| by.trim().eq_ignore_ascii_case(t.c.mailbox.id.trim()));
    let needs_notes = may_stamp
        && options.stamp_notes
        && (t.stamp.sync_id.as_ref() != Some(source.sync) || owner_unproven);
    let needs_category = !owner_created
        && options
            .managed_category
            .as_deref()
            .is_some_and(|cat| !has_category(&contact.categories, cat));
    // An owner's contact the tool stamps carries the owner mark too (`model::OWNER_PROPERTY`), so it stays the
    // owner's once its notes lose their stamp lines or, an original, its id changes in a move (out of the folder
    // and back). Contacts stamped before the mark get it once, alone, even where the policy stamps nothing more
    // (the mark adds no sync id: it only keeps the one there the owner's).
    let mark_missing = (may_stamp || t.property.is_some())
        && !contact
            .owner_property
            .as_deref()
            .is_some_and(|by| names_mailbox(by, t.c.mailbox));
    // Not alone onto a contact the owner's only against its person's creator (`StampedAsOwn`): the first run
    // stamps such a contact as a copy, and only then does it read as the owner's.
    let needs_mark = owner_created
        && mark_missing
        && t.ownership != Ownership::OwnerCreated(OwnerReason::StampedAsOwn);

    if !write_data && !needs_property && !needs_notes && !needs_category && !needs_mark {
        if differs {
            item.reason = Reason::TargetNewer;
        }
        return item;
    }

    let created_by = if owner_created {
        Some(t.c.mailbox.id.clone())
    } else {
        source
            .stamp
            .created_by
            .as_deref()
            .or(t.stamp.created_by.as_deref())
            .map(|by| recorded_creator(by, t.c.mailbox))
    };
    let stamp = NotesStamp {
        sync_id: Some(source.sync.clone()),
        created_by,
        last_updated_at: Some(format_time(ctx.now)),
        last_updated_by,
    };
    let personal_notes = (may_stamp && options.stamp_notes && (write_data || needs_notes))
        .then(|| restamp(contact.personal_notes.as_deref(), &stamp));
    // The mark goes wherever the contact is the owner's or this write's notes say so, as on a create.
    let names_owner = notes_name_owner(personal_notes.is_some(), &stamp, t.c.mailbox);
    let write = ContactWrite {
        fields: desired
            .as_ref()
            .filter(|_| write_data)
            .map(|((fields, _), _)| PackedFields::pack(fields)),
        unchanged: desired
            .as_ref()
            .filter(|_| write_data)
            .map_or(FieldSet::empty(), |((_, kept), _)| *kept),
        personal_notes,
        categories: options
            .managed_category
            .as_deref()
            .filter(|_| needs_category)
            .map(|cat| with_category(&contact.categories, cat)),
        sync_id: needs_property.then(|| source.sync.to_string()),
        owner: (mark_missing && (owner_created || names_owner)).then(|| t.c.mailbox.id.clone()),
    };
    if !options.update_existing {
        // Create only: an existing contact is never changed, not even its stamp.
        item.reason = Reason::UpdatesDisabled;
        return item;
    }
    // Fields are written whole: sent only if the contact is still as read, so an edit its owner made since (a
    // note, a number, the opt-out category) is planned with on a second read, never overwritten.
    item.op = Some(WriteOp::Update {
        id: contact.id.clone(),
        write,
        if_match: contact.change_key.as_deref().map(Box::from),
    });
    item.action = ActionKind::Update;
    if write_data {
        item.reason = Reason::SourceNewer;
        item.changed_fields = desired
            .as_ref()
            .map(|(_, norm)| norm.changed(&t.c.norm))
            .unwrap_or_default();
    } else {
        item.reason = Reason::StampMissing;
    }
    item
}
