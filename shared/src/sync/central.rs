//! Phase 1: every licensed user's default contacts -> the central folder of the shared mailbox.
//!
//! Why this exists: the central folder is the one list everyone receives, so each person must appear in it once,
//! with the newest edit made anywhere (an owner's original or anyone's distributed copy), and nothing a user kept
//! private or anything removed centrally may come back. See [`plan_central`] for the rules.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use crate::config::CentralFields;
use crate::model::{Contact, ContactWrite, FieldSet, Mailbox, PackedFields, WriteOp};

use super::fields;
use super::identity::{effective_sync_id, ownership, property_sync_id, Ownership, SyncId};
use super::matching::{agrees, DataIndex};
use super::normalize::{has_category, name_key, normalize, EmailKeys, NormalizedFields};
use super::plan::{deletion_allowance, ActionKind, Plan, PlanContext, PlanItem, Reason};
use super::stamp::{format_time, restamp, NotesStamp};

/// One user's default-folder contacts, as read for phase 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMailbox {
    /// The user.
    pub mailbox: Mailbox,
    /// Every contact of the user's default contacts folder (a complete read; a failed read is an error upstream).
    pub contacts: Vec<Contact>,
}

/// What matching and comparing a contact need, computed from its fields once (compact: a whole central folder's
/// keys are held at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchKeys {
    pub(crate) emails: EmailKeys,
    pub(crate) name: Option<Box<str>>,
    pub(crate) norm: NormalizedFields,
}

impl MatchKeys {
    /// The keys of `contact`.
    pub fn of(contact: &Contact) -> Self {
        MatchKeys {
            emails: EmailKeys::of(&contact.fields),
            name: name_key(&contact.fields).map(String::into_boxed_str),
            norm: normalize(&contact.fields),
        }
    }

    /// The keys of `contact` as the central folder may hold it ([`fields::central_view`]): the fields outside
    /// `central` count as empty (the match keys are always central fields).
    pub(crate) fn central(contact: &Contact, central: CentralFields) -> Self {
        let keys = MatchKeys::of(contact);
        MatchKeys {
            norm: keys.norm.masked(central.set()),
            ..keys
        }
    }
}

/// A source contact with what matching needs precomputed (its keys borrowed when computed earlier, e.g. once per
/// cached central folder).
pub(crate) struct Candidate<'a> {
    pub(crate) mailbox: &'a Mailbox,
    pub(crate) contact: &'a Contact,
    keys: Cow<'a, MatchKeys>,
}

impl<'a> Candidate<'a> {
    pub(crate) fn new(mailbox: &'a Mailbox, contact: &'a Contact) -> Self {
        Candidate {
            mailbox,
            contact,
            keys: Cow::Owned(MatchKeys::of(contact)),
        }
    }

    /// A phase-1 candidate: compared as the central folder may hold it (see [`MatchKeys::central`]).
    fn central(mailbox: &'a Mailbox, contact: &'a Contact, central: CentralFields) -> Self {
        Candidate {
            mailbox,
            contact,
            keys: Cow::Owned(MatchKeys::central(contact, central)),
        }
    }

    /// A candidate whose keys were computed before (they must be `contact`'s).
    pub(crate) fn with_keys(
        mailbox: &'a Mailbox,
        contact: &'a Contact,
        keys: &'a MatchKeys,
    ) -> Self {
        Candidate {
            mailbox,
            contact,
            keys: Cow::Borrowed(keys),
        }
    }
}

impl std::ops::Deref for Candidate<'_> {
    type Target = MatchKeys;

    fn deref(&self) -> &MatchKeys {
        &self.keys
    }
}

/// Of `members` (indices into `candidates`), the one with the newest `last_modified` (unknown counts as oldest);
/// the first one on a tie.
fn newest_index(
    members: impl IntoIterator<Item = usize>,
    candidates: &[Candidate],
) -> Option<usize> {
    members.into_iter().fold(None, |best, m| match best {
        Some(b) if candidates[m].contact.last_modified <= candidates[b].contact.last_modified => {
            Some(b)
        }
        _ => Some(m),
    })
}

/// A contact of the central folder during planning.
struct Entry<'a> {
    /// Compared as the central folder may hold it.
    c: Candidate<'a>,
    /// It holds a field outside `CentralFields` (from an earlier run or configuration): cleared by an update.
    private: bool,
    sync: SyncId,
    canonical: bool,
    stamp: NotesStamp,
    members: Vec<usize>,
}

/// A person not yet in the central folder, gathered from sources during planning.
struct NewPerson {
    /// The sync id the person must keep: set only when rebuilding, from managed copies' extended property.
    key: Option<SyncId>,
    members: Vec<usize>,
}

/// Adds `category` to `categories` unless present (case-insensitive).
pub(crate) fn with_category(categories: &[String], category: &str) -> Vec<String> {
    let mut out = categories.to_vec();
    if !has_category(categories, category) {
        out.push(category.trim().to_owned());
    }
    out
}

/// How many rounds [`settle`] tries before falling back to updates from identified sources only.
const SETTLE_ROUNDS: usize = 8;

/// The fields in which the newest edit wins: the central ones the policy overwrites. The others (`FillEmpty`,
/// `Ignore`) are the person's origin's ([`fields::origin_fields`]).
fn newest_wins(ctx: &PlanContext) -> FieldSet {
    fields::newest_wins(&ctx.options.fields)
}

/// Whether `member` is the contact `entry`'s person was first published from (its own derived id is the person's).
fn is_origin(ctx: &PlanContext, entry: &Entry, member: &Candidate) -> bool {
    SyncId::derive(&ctx.tenant_id, &member.mailbox.id, &member.contact.id) == entry.sync
}

/// Whether `member` holds an edit of `entry`'s person: a field where the newest edit wins differs.
fn differs(ctx: &PlanContext, entry: &Entry, member: &Candidate) -> bool {
    member.norm.differs_in(&entry.c.norm, newest_wins(ctx))
}

/// For each central entry, the member whose data updates it: the newest member whose data differs, when newer
/// than the central contact.
fn drivers(
    ctx: &PlanContext,
    entries: &[Entry],
    candidates: &[Candidate],
    unvouched: &BTreeSet<usize>,
    unidentified: &[usize],
    assignment: &[Option<usize>],
) -> Vec<Option<usize>> {
    let mut assigned = assigned_members(entries.len(), unidentified, assignment);
    entries
        .iter()
        .enumerate()
        .map(|(ci, entry)| {
            if !entry.canonical {
                return None;
            }
            let mut members = entry.members.clone();
            members.append(&mut assigned[ci]);
            members.sort_unstable();
            newest_index(
                members
                    .into_iter()
                    .filter(|&m| differs(ctx, entry, &candidates[m]) && !unvouched.contains(&m)),
                candidates,
            )
            .filter(|&m| candidates[m].contact.last_modified > entry.c.contact.last_modified)
        })
        .collect()
}

/// Per central entry, the unidentified sources `assignment` matched with it, in `unidentified` order: one pass,
/// where a scan of every source per entry made a 100,000-contact folder's plan quadratic.
fn assigned_members(
    entries: usize,
    unidentified: &[usize],
    assignment: &[Option<usize>],
) -> Vec<Vec<usize>> {
    let mut assigned = vec![Vec::new(); entries];
    for (&si, a) in unidentified.iter().zip(assignment) {
        if let Some(ci) = *a {
            assigned[ci].push(si);
        }
    }
    assigned
}

/// New people by their first member's keys. A person can only take a source sharing an email with every member
/// (without emails: the same name), so the first member's keys find every person that can; looking there instead
/// of scanning every person per source keeps gathering linear (100,000 new contacts took hours).
#[derive(Default)]
struct PeopleIndex<'c> {
    by_email: HashMap<&'c str, Vec<usize>>,
    by_name: HashMap<&'c str, Vec<usize>>,
    by_key: HashMap<SyncId, usize>,
}

impl<'c> PeopleIndex<'c> {
    /// Records person number `person`, whose first member is `first` and rebuild key `key`.
    fn add(&mut self, person: usize, first: &'c Candidate, key: Option<&SyncId>) {
        for email in first.emails.iter() {
            self.by_email.entry(email).or_default().push(person);
        }
        if let Some(name) = &first.name {
            self.by_name.entry(name).or_default().push(person);
        }
        if let Some(key) = key {
            self.by_key.entry(key.clone()).or_insert(person);
        }
    }

    /// The first person (in creation order) `source` joins: every member shares an email with it, or, when it has
    /// none, every member has its name.
    fn gathering(
        &self,
        people: &[NewPerson],
        candidates: &[Candidate],
        source: &Candidate,
    ) -> Option<usize> {
        let mut found: Vec<usize> = if source.emails.is_empty() {
            let name = source.name.as_deref()?;
            self.by_name.get(name).cloned().unwrap_or_default()
        } else {
            source
                .emails
                .iter()
                .filter_map(|e| self.by_email.get(e))
                .flatten()
                .copied()
                .collect()
        };
        found.sort_unstable();
        found.dedup();
        found.into_iter().find(|&p| {
            let members = &people[p].members;
            if source.emails.is_empty() {
                members.iter().all(|&m| candidates[m].name == source.name)
            } else {
                members
                    .iter()
                    .all(|&m| !candidates[m].emails.is_disjoint(&source.emails))
            }
        })
    }
}

/// Matches each unidentified source to the central entry its data names after `updates` (see [`DataIndex`]: the
/// most shared email addresses, the first entry on a tie, else the first with the same displayName when neither
/// has an email); `None` when it matches none.
fn assign(
    entries: &[Entry],
    candidates: &[Candidate],
    unidentified: &[usize],
    updates: &[Option<usize>],
) -> Vec<Option<usize>> {
    let mut index = DataIndex::default();
    for (ci, entry) in entries.iter().enumerate().filter(|(_, e)| e.canonical) {
        index.insert(ci, updates[ci].map_or(&entry.c, |m| &candidates[m]));
    }
    unidentified
        .iter()
        .map(|&si| index.best(&candidates[si]).map(|m| m.index))
        .collect()
}

/// The updates of central entries and the matches of unidentified sources, consistent with each other: every
/// unidentified source is matched against the central data as the plan leaves it, and the matched sources take
/// part in choosing each entry's newest edit. That consistency is what makes planning again after applying the plan
/// find nothing to do. Found by iteration from the identified sources' updates; if it does not settle within
/// [`SETTLE_ROUNDS`], only identified sources update (unidentified ones then count once phase 2 has stamped them).
fn settle(
    ctx: &PlanContext,
    entries: &[Entry],
    candidates: &[Candidate],
    unvouched: &BTreeSet<usize>,
    unidentified: &[usize],
) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
    let none = vec![None; unidentified.len()];
    let identified_only = drivers(ctx, entries, candidates, unvouched, unidentified, &none);
    let mut updates = identified_only.clone();
    for _ in 0..SETTLE_ROUNDS {
        let assignment = assign(entries, candidates, unidentified, &updates);
        let next = drivers(
            ctx,
            entries,
            candidates,
            unvouched,
            unidentified,
            &assignment,
        );
        if next == updates {
            return (updates, assignment);
        }
        updates = next;
    }
    let assignment = assign(entries, candidates, unidentified, &identified_only);
    (identified_only, assignment)
}

/// Plans phase 1 for one tenant: what to write into the central folder (`ctx.owner` is the shared mailbox).
///
/// Rules, in order:
/// - Sources are taken in (mailbox id, contact id) order, so every decision (and every derived sync id) is
///   deterministic.
/// - A source with the opt-out category is skipped ([`Reason::OptedOut`]): it is never published.
/// - *Identified* sources: a source with a sync id (extended property, else notes) that is in the central folder
///   belongs to that central contact. A source without the extended property whose derived sync id is in the
///   central folder is the original that central contact was created from (a retried job finds what it created).
///   A source known only by a notes stamp whose data does not agree with the central contact (no shared address,
///   nor the same name without addresses: a pasted line) stays a member but never updates it.
/// - The other sources match the central contact whose data, *as this plan leaves it*, shares the most email
///   addresses with them (the first by id on a tie), else the one with the same displayName when neither has an
///   email (phase 2 adopts them the same way). A source whose *extended property* names a sync id no longer in the
///   central folder and that matches no central contact was removed centrally and is skipped
///   ([`Reason::RemovedCentrally`]; managed copies and owners' contacts the tool stamped): it is never published
///   again. Only the property is that proof, because only this tool writes it and only on contacts of a person
///   the central folder held. A sync id only in the notes (the replaced script's stamps, or a line pasted by a
///   user) proves nothing: such a contact is a candidate like any other (issue 10, scenario 5b).
/// - An existing central contact is updated with the data of its newest matched source whose data differs, only
///   when that source is newer than the central contact: the newest edit wins wherever it was made (the owner's
///   original or anyone's copy). Updates and matches are settled together (a fixed point, see `settle`), so that
///   planning again after applying finds every source where it was and nothing to do.
/// - The rest are new people: a source joins a person gathered earlier in this plan when it shares an email with
///   every member gathered so far (without emails: the same displayName), else it starts one, whose sync id is
///   derived from it, unless a member's notes stamp carries a sync id that is consistent (see `new_people_ids`),
///   which the person keeps so the replaced script's copies elsewhere match it. A new person is created with the
///   data of its newest member, the stamp (`CreatedBy` = the
///   first member's owner, `LastUpdatedBy` = the newest member's owner), the managed category, and none of the
///   owners' note text or categories.
/// - A central contact's identity stamp is completed when missing, in the same PATCH as a data change or alone:
///   the extended property (for contacts adopted from the old script, or created by hand in the central folder,
///   which get the id derived from themselves), the notes stamp when `stamp_notes`, the managed category.
/// - Phase 1 never deletes a person: removing one from the central folder is an administrator's decision, and a
///   source that disappears may just be a user tidying their own list. Of central contacts sharing a sync id the
///   first by id is kept in sync; the others are deleted when they are managed copies ([`ownership`] in the shared
///   mailbox) and `deletion.enabled`, at most [`deletion_allowance`] of the folder's managed copies per run (the
///   rest on later runs: [`Reason::DuplicateLeftForLater`]), else left alone ([`Reason::DuplicateSyncId`]).
/// - *What travels* (issue 14, [`fields`]): every source and central contact is compared as the central folder may
///   hold it (`CentralFields` only), and only that is written; a central contact holding more (an earlier run's
///   data) is cleared by an update ([`Reason::OutsideCentralFields`], duplicates too). The newest edit wins only
///   in the fields the policy overwrites; `FillEmpty` and `Ignore` fields are the person's origin's (the source
///   its sync id is derived from), whoever edited last: elsewhere phase 2 may have left a user's own value there,
///   and it never writes them into the origin, so no timestamp says anything about them.
/// - *Rebuild* (`ctx.rebuild_central`, after the central folder was lost): nothing counts as removed centrally,
///   sources carrying the extended property are grouped by it and each group is created under that sync id (so
///   every copy in every mailbox stays matched), other sources join them as above, and nothing is deleted.
pub fn plan_central(ctx: &PlanContext, sources: &[SourceMailbox], central: &[Contact]) -> Plan {
    let options = &ctx.options;
    let mut items = Vec::new();

    // Central contacts, by id, with their identity; the first contact per sync id is the one kept in sync.
    let mut central_sorted: Vec<&Contact> = central.iter().collect();
    central_sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut entries: Vec<Entry> = Vec::with_capacity(central_sorted.len());
    let mut by_sync: HashMap<SyncId, usize> = HashMap::new();
    for contact in central_sorted {
        let sync = effective_sync_id(contact)
            .unwrap_or_else(|| SyncId::derive(&ctx.tenant_id, &ctx.owner.id, &contact.id));
        let canonical = !by_sync.contains_key(&sync);
        if canonical {
            by_sync.insert(sync.clone(), entries.len());
        }
        let c = Candidate::central(&ctx.owner, contact, options.fields.central);
        entries.push(Entry {
            stamp: NotesStamp::parse(contact.personal_notes.as_deref()),
            private: c.norm != normalize(&contact.fields),
            c,
            sync,
            canonical,
            members: Vec::new(),
        });
    }

    // Sources, in a deterministic order.
    let mut candidates: Vec<Candidate> = sources
        .iter()
        .flat_map(|s| {
            s.contacts
                .iter()
                .map(move |c| Candidate::central(&s.mailbox, c, options.fields.central))
        })
        .collect();
    candidates.sort_by(|a, b| (&a.mailbox.id, &a.contact.id).cmp(&(&b.mailbox.id, &b.contact.id)));

    // Identified sources join their central contact; the others wait for the central data to settle. Sources whose
    // sync id provably left the central folder may join an existing person but are never published as a new one.
    // Only the extended property proves the central folder held a person (the tool writes it nowhere else); a
    // notes stamp alone may be pasted or come from the replaced script, so its contact is a candidate like any
    // other. When rebuilding a lost central folder, nothing counts as removed.
    let mut unidentified: Vec<usize> = Vec::new();
    let mut removed: BTreeSet<usize> = BTreeSet::new();
    // Members known only by a notes stamp whose data is not the person's (a pasted line): they stay members, so they
    // are never published as someone new, but their data never updates the person.
    let mut unvouched: BTreeSet<usize> = BTreeSet::new();
    for (si, source) in candidates.iter().enumerate() {
        let contact = source.contact;
        if has_category(&contact.categories, &options.opt_out_category) {
            items.push(source_skip(source, Reason::OptedOut));
            continue;
        }
        // A source belongs to the central contact with its sync id, else (when it has no extended property: a
        // notes stamp may be any pasted id) to the one derived from itself: a retried job finds what it created.
        let sync = effective_sync_id(contact);
        let property = property_sync_id(contact);
        let derived = SyncId::derive(&ctx.tenant_id, &source.mailbox.id, &contact.id);
        let by_stamp = sync.as_ref().and_then(|s| by_sync.get(s));
        let central_match =
            by_stamp.or_else(|| by_sync.get(&derived).filter(|_| property.is_none()));
        match central_match {
            Some(&ci) => {
                if property.is_none()
                    && by_stamp.is_some()
                    && derived != entries[ci].sync
                    && !agrees(source, &entries[ci].c)
                {
                    unvouched.insert(si);
                }
                entries[ci].members.push(si);
            }
            None => {
                if property.is_some() && !ctx.rebuild_central {
                    removed.insert(si);
                }
                unidentified.push(si);
            }
        }
    }

    // Unidentified sources match the central data as this plan leaves it, and may themselves be the newest edit
    // that changes it: iterate to a fixed point (see `settle`).
    let (updates, assignment) = settle(ctx, &entries, &candidates, &unvouched, &unidentified);

    // Unidentified sources that match no central contact are new people.
    let mut people: Vec<NewPerson> = Vec::new();
    let mut index = PeopleIndex::default();
    for (&si, assigned) in unidentified.iter().zip(&assignment) {
        if assigned.is_some() {
            continue;
        }
        let source = &candidates[si];
        if removed.contains(&si) {
            items.push(source_skip(source, Reason::RemovedCentrally));
            continue;
        }
        // Rebuilding: a contact the tool stamped brings its person back under the same sync id, so every copy in
        // every mailbox stays matched.
        let key = property_sync_id(source.contact).filter(|_| ctx.rebuild_central);
        let gathered = match &key {
            Some(key) => index.by_key.get(key).copied(),
            None => index.gathering(&people, &candidates, source),
        };
        match gathered {
            Some(person) => people[person].members.push(si),
            None => {
                index.add(people.len(), source, key.as_ref());
                people.push(NewPerson {
                    key,
                    members: vec![si],
                });
            }
        }
    }
    let people_ids = new_people_ids(ctx, &people, &candidates, by_sync.keys());

    // Extra central copies of one person (an ambiguous create resent, say) are deleted when they are provably the
    // tool's, within the deletion cap (the rest on later runs); never while rebuilding.
    let is_managed = |entry: &Entry| {
        ownership(&ctx.tenant_id, &ctx.owner, entry.c.contact) == Ownership::ManagedCopy
    };
    let mut duplicates_left = if options.deletion.enabled && !ctx.rebuild_central {
        deletion_allowance(
            entries.iter().filter(|e| is_managed(e)).count(),
            options.deletion.max_share,
        )
    } else {
        0
    };
    let mut assigned = assigned_members(entries.len(), &unidentified, &assignment);
    for (ci, entry) in entries.iter().enumerate() {
        if !entry.canonical && duplicates_left > 0 && is_managed(entry) {
            duplicates_left -= 1;
            items.push(duplicate_delete(entry));
            continue;
        }
        let mut members = entry.members.clone();
        members.append(&mut assigned[ci]);
        let mut item = plan_entry(ctx, entry, &candidates, &members, updates[ci]);
        // An extra copy the cap alone keeps goes on a later run, which must then not find the folder in line.
        let capped = options.deletion.enabled && !ctx.rebuild_central && is_managed(entry);
        // (Its op, if any, only clears fields outside `CentralFields`; the copy itself stays.)
        if !entry.canonical && capped {
            item.reason = Reason::DuplicateLeftForLater;
        }
        items.push(item);
    }

    for (person, sync) in people.iter().zip(&people_ids) {
        let Some(newest) =
            newest_index(person.members.iter().copied(), &candidates).map(|m| &candidates[m])
        else {
            continue;
        };
        let first = &candidates[person.members[0]];
        let stamp = NotesStamp {
            sync_id: Some(sync.clone()),
            created_by: Some(first.mailbox.upn.clone()),
            last_updated_at: Some(format_time(ctx.now)),
            last_updated_by: Some(newest.mailbox.upn.clone()),
        };
        // The newest edit's fields; the origin's own (`FillEmpty`, `Ignore`) from the member the person is derived
        // from, when there is one.
        let origin = person
            .members
            .iter()
            .map(|&m| &candidates[m])
            .find(|m| SyncId::derive(&ctx.tenant_id, &m.mailbox.id, &m.contact.id) == *sync);
        let fields = match origin {
            Some(origin) => fields::for_central(
                &options.fields,
                &newest.contact.fields,
                &origin.contact.fields,
                fields::newest_wins(&options.fields),
            ),
            None => fields::central_view(&newest.contact.fields, options.fields.central),
        };
        let write = ContactWrite {
            unchanged: FieldSet::empty(),
            fields: Some(PackedFields::pack(&fields)),
            personal_notes: options.stamp_notes.then(|| restamp(None, &stamp)),
            categories: options
                .managed_category
                .as_ref()
                .map(|c| vec![c.trim().to_owned()]),
            sync_id: Some(sync.to_string()),
            owner: None,
        };
        items.push(PlanItem {
            op: Some(WriteOp::Create(write)),
            action: ActionKind::Create,
            reason: Reason::New,
            sync_id: Some(sync.to_string()),
            display_name: newest.contact.fields.display_name.clone(),
            contact_id: None,
            source: Some(newest.mailbox.upn.clone()),
            changed_fields: Vec::new(),
        });
    }

    Plan { items }
}

/// The sync id of each new person, in order. A rebuilt person keeps its key. Otherwise a person keeps the notes
/// stamp's sync id of its first stamped member when that is consistent: every source carrying that id is a member,
/// and no other person or central contact has it (so the replaced script's copies elsewhere match it). Every other
/// person gets the id derived from its first member.
fn new_people_ids<'s>(
    ctx: &PlanContext,
    people: &[NewPerson],
    candidates: &[Candidate],
    central_ids: impl Iterator<Item = &'s SyncId>,
) -> Vec<SyncId> {
    let mut carriers: HashMap<SyncId, BTreeSet<usize>> = HashMap::new();
    for (si, candidate) in candidates.iter().enumerate() {
        if let Some(sync) = effective_sync_id(candidate.contact) {
            carriers.entry(sync).or_default().insert(si);
        }
    }
    let derived = |person: &NewPerson| {
        let first = &candidates[person.members[0]];
        SyncId::derive(&ctx.tenant_id, &first.mailbox.id, &first.contact.id)
    };
    let stamped = |person: &NewPerson| {
        person.key.clone().or_else(|| {
            person
                .members
                .iter()
                .filter_map(|&m| effective_sync_id(candidates[m].contact))
                .find(|sync| {
                    carriers
                        .get(sync)
                        .is_some_and(|c| c.iter().all(|si| person.members.contains(si)))
                })
        })
    };
    let wanted: Vec<Option<SyncId>> = people.iter().map(stamped).collect();
    // Ids taken before a stamped id may be kept: the central folder's and every derived id in use.
    let mut used: BTreeSet<SyncId> = central_ids.cloned().collect();
    for (person, wanted) in people.iter().zip(&wanted) {
        if wanted.is_none() || person.key.is_none() {
            used.insert(derived(person));
        }
    }
    people
        .iter()
        .zip(wanted)
        .map(|(person, wanted)| match wanted {
            Some(key) if person.key.is_some() => key,
            Some(sync) if used.insert(sync.clone()) => sync,
            _ => derived(person),
        })
        .collect()
}

/// The deletion of an extra central copy of a person (not the first by id, which is kept in sync).
fn duplicate_delete(entry: &Entry) -> PlanItem {
    let contact = entry.c.contact;
    PlanItem {
        op: Some(WriteOp::Delete {
            id: contact.id.clone(),
        }),
        action: ActionKind::Delete,
        reason: Reason::DuplicateSyncId,
        sync_id: Some(entry.sync.to_string()),
        display_name: contact.fields.display_name.clone(),
        contact_id: Some(contact.id.clone()),
        source: None,
        changed_fields: Vec::new(),
    }
}

/// A skip about a source contact.
fn source_skip(source: &Candidate, reason: Reason) -> PlanItem {
    PlanItem {
        op: None,
        action: ActionKind::Skip,
        reason,
        sync_id: effective_sync_id(source.contact).map(|s| s.to_string()),
        display_name: source.contact.fields.display_name.clone(),
        contact_id: Some(source.contact.id.clone()),
        source: Some(source.mailbox.upn.clone()),
        changed_fields: Vec::new(),
    }
}

/// The decision about one existing central contact, given the sources that joined it.
fn plan_entry(
    ctx: &PlanContext,
    entry: &Entry,
    candidates: &[Candidate],
    members: &[usize],
    update_from: Option<usize>,
) -> PlanItem {
    let options = &ctx.options;
    let central = entry.c.contact;
    let mut item = PlanItem {
        op: None,
        action: ActionKind::Skip,
        reason: Reason::Unchanged,
        sync_id: Some(entry.sync.to_string()),
        display_name: central.fields.display_name.clone(),
        contact_id: Some(central.id.clone()),
        source: None,
        changed_fields: Vec::new(),
    };
    if !entry.canonical {
        item.reason = Reason::DuplicateSyncId;
        // Not kept in sync nor distributed, but it is in the central folder: what it holds beyond
        // `CentralFields` goes.
        if entry.private && options.update_existing {
            let fields = fields::central_view(&central.fields, options.fields.central);
            item.changed_fields = normalize(&fields).changed(&normalize(&central.fields));
            item.op = Some(WriteOp::Update {
                id: central.id.clone(),
                write: ContactWrite {
                    fields: Some(PackedFields::pack(&fields)),
                    ..ContactWrite::default()
                },
                if_match: central.change_key.as_deref().map(Box::from),
            });
            item.action = ActionKind::Update;
            item.reason = Reason::OutsideCentralFields;
        }
        return item;
    }

    let members = || members.iter().map(|&m| &candidates[m]);
    let differing = members().any(|m| differs(ctx, entry, m));
    let update_from = update_from.map(|m| &candidates[m]);
    // The origin's `FillEmpty` and `Ignore` fields are the person's, whoever edited last (phase 2 never writes
    // them there, so its timestamps say nothing about them).
    let origin_fields = fields::origin_fields(&options.fields);
    let origin = members()
        .filter(|m| !origin_fields.is_empty() && is_origin(ctx, entry, m))
        .find(|m| m.norm.differs_in(&entry.c.norm, origin_fields));

    let needs_property = property_sync_id(central).as_ref() != Some(&entry.sync);
    let needs_notes = options.stamp_notes && entry.stamp.sync_id.as_ref() != Some(&entry.sync);
    let needs_category = options
        .managed_category
        .as_deref()
        .is_some_and(|cat| !has_category(&central.categories, cat));

    if update_from.is_none()
        && origin.is_none()
        && !entry.private
        && !needs_property
        && !needs_notes
        && !needs_category
    {
        if differing {
            item.reason = Reason::TargetNewer;
        }
        return item;
    }

    // Who created the person: the stamp says so; else the source it was derived from; else the shared mailbox.
    let created_by = entry.stamp.created_by.clone().unwrap_or_else(|| {
        members()
            .find(|m| SyncId::derive(&ctx.tenant_id, &m.mailbox.id, &m.contact.id) == entry.sync)
            .map_or_else(|| ctx.owner.upn.clone(), |m| m.mailbox.upn.clone())
    });
    let stamp = match update_from {
        Some(source) => NotesStamp {
            sync_id: Some(entry.sync.clone()),
            created_by: Some(created_by),
            last_updated_at: Some(format_time(ctx.now)),
            last_updated_by: Some(source.mailbox.upn.clone()),
        },
        None => NotesStamp {
            sync_id: Some(entry.sync.clone()),
            last_updated_at: entry
                .stamp
                .last_updated_at
                .clone()
                .or_else(|| Some(format_time(ctx.now))),
            last_updated_by: entry
                .stamp
                .last_updated_by
                .clone()
                .or_else(|| Some(created_by.clone())),
            created_by: Some(created_by),
        },
    };
    // The newest edit's fields, the origin's own ones, or (a contact holding fields outside `CentralFields`) its
    // own view.
    let fields = (update_from.is_some() || origin.is_some() || entry.private).then(|| {
        let newest = match update_from {
            Some(source) => fields::for_central(
                &options.fields,
                &source.contact.fields,
                &central.fields,
                newest_wins(ctx),
            ),
            None => fields::central_view(&central.fields, options.fields.central),
        };
        match origin {
            Some(origin) => fields::for_central(
                &options.fields,
                &origin.contact.fields,
                &newest,
                origin_fields,
            ),
            None => newest,
        }
    });
    let changed_fields = fields
        .as_ref()
        .map(|f| normalize(f).changed(&normalize(&central.fields)))
        .unwrap_or_default();
    let write = ContactWrite {
        unchanged: FieldSet::empty(),
        fields: fields.as_ref().map(PackedFields::pack),
        personal_notes: (options.stamp_notes && (update_from.is_some() || needs_notes))
            .then(|| restamp(central.personal_notes.as_deref(), &stamp)),
        categories: options
            .managed_category
            .as_deref()
            .filter(|_| needs_category)
            .map(|cat| with_category(&central.categories, cat)),
        sync_id: needs_property.then(|| entry.sync.to_string()),
        owner: None,
    };
    if !options.update_existing {
        // Create only: an existing contact is never changed, not even its stamp.
        item.reason = Reason::UpdatesDisabled;
        return item;
    }
    item.op = Some(WriteOp::Update {
        id: central.id.clone(),
        write,
        // An edit made in the central folder since it was read (an administrator's, by hand) is met with 412 and
        // read again, not written over.
        if_match: central.change_key.as_deref().map(Box::from),
    });
    item.action = ActionKind::Update;
    item.changed_fields = changed_fields;
    match update_from.or(origin) {
        Some(source) => {
            item.reason = Reason::SourceNewer;
            item.source = Some(source.mailbox.upn.clone());
        }
        None if entry.private => item.reason = Reason::OutsideCentralFields,
        None => item.reason = Reason::StampMissing,
    }
    item
}
