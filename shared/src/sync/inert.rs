//! What phase 1 can do without (issues 10 and 13): the contacts it drops while it reads a source, and the sources
//! it need not read at all. Its own file because both phases ask it: phase 1 of each contact it reads, phase 2 of the
//! folder its plan leaves (`FolderFeed::only_copies`), and the two must give the same answer.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::model::{Contact, ContactWrite, Mailbox, PackedFields, WriteOp};

use super::central::{MatchKeys, SourceMailbox};
use super::fields;
use super::identity::{effective_sync_id, property_sync_id, SyncId};
use super::normalize::{has_category, normalize, NormalizedFields};
use super::plan::{Plan, PlanContext};
use super::simulate;
use super::stamp::NotesStamp;

/// Tells, while sources are read, the contacts phase 1 can do without: a source carrying the extended property of
/// a person the central folder holds, with exactly that person's data, is a member that never updates it and is
/// never published, so [`plan_central`](super::plan_central) plans the same without it. A distributed copy never names the person's
/// creator either (its own derived id is another); the original does, so it is kept only when the central stamp
/// does not name the creator and stamps are written (`plan_entry` then looks for it). In a steady tenant that is
/// every distributed copy and every original in every mailbox, so phase 1 holds the central folder plus what
/// differs from it, not users x central persons, nor a large source's own contacts (issue 10, scenario 10; issue
/// 13's 2.3 GiB job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralKeys {
    /// The person kept in sync for each sync id (the first by id, as [`plan_central`](super::plan_central)).
    by_sync: HashMap<SyncId, CentralPerson>,
}

/// The most central persons whose fields [`CentralKeys::for_copies`] keeps packed.
pub const PACKED_PERSONS: usize = 10_000;

/// What [`CentralKeys`] knows of one central person.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CentralPerson {
    norm: NormalizedFields,
    /// Its notes stamp names its creator (else `plan_entry` looks for the original among the sources).
    creator_known: bool,
    /// Its fields packed ([`CentralKeys::for_copies`] only).
    packed: Option<PackedFields>,
}

impl CentralKeys {
    /// The keys of `central` (the folder [`plan_central`](super::plan_central) will be given, with the same `ctx`).
    pub fn new(ctx: &PlanContext, central: &[Contact]) -> Self {
        Self::build(ctx, central, false)
    }

    /// The keys of `central` for [`Self::leaves_only_inert`]: each person also keeps its fields packed, so the
    /// creates of a copy written whole from them (most of every phase-2 plan of an initial sync) are told inert by
    /// comparing bytes instead of normalising each copy. Not above [`PACKED_PERSONS`] persons: held once per
    /// worker beside the cached folder, the packed fields would add about 300 B a person (30 MB for a
    /// 100,000-person folder, whose few receiving mailboxes normalise their creates instead).
    pub fn for_copies(ctx: &PlanContext, central: &[Contact]) -> Self {
        Self::build(ctx, central, central.len() <= PACKED_PERSONS)
    }

    fn build(ctx: &PlanContext, central: &[Contact], packed: bool) -> Self {
        let by_sync = first_by_sync_id(ctx, central)
            .into_iter()
            .map(|(sync, contact)| (sync, CentralPerson::of(ctx, contact, packed)))
            .collect();
        CentralKeys { by_sync }
    }

    /// Whether the central folder holds the person `sync_id` (photos: a contact whose derived id it is, is that
    /// person's origin).
    pub fn holds(&self, sync_id: &SyncId) -> bool {
        self.by_sync.contains_key(sync_id)
    }

    /// Whether [`plan_central`](super::plan_central) plans the same without `contact` of `mailbox` (see [`CentralKeys`]).
    pub fn is_inert(&self, ctx: &PlanContext, mailbox: &Mailbox, contact: &Contact) -> bool {
        contact_is_inert(ctx, mailbox, contact, |sync| self.by_sync.get(sync))
    }

    /// [`Self::is_inert`] of a contact given by its parts; `same_fields` compares its fields with its person's.
    fn inert_with(
        &self,
        ctx: &PlanContext,
        mailbox: &Mailbox,
        id: &str,
        property: Option<SyncId>,
        categories: &[String],
        same_fields: impl FnOnce(&CentralPerson) -> bool,
    ) -> bool {
        inert_with(
            ctx,
            mailbox,
            id,
            property,
            categories,
            |sync| self.by_sync.get(sync),
            same_fields,
        )
    }

    /// The keys of the central folder as it was before a phase-1 plan wrote it, from these keys of the folder
    /// after it (with the writes in, all or some) and the persons the plan wrote as they were before
    /// ([`superseded`]): every other person is the same in both.
    pub fn before<'a>(&'a self, ctx: &PlanContext, superseded: &Superseded) -> PriorKeys<'a> {
        PriorKeys {
            after: self,
            superseded: superseded
                .persons
                .iter()
                .map(|person| {
                    let before = person
                        .before
                        .as_ref()
                        .map(|contact| CentralPerson::of(ctx, contact, false));
                    (person.sync_id.clone(), before)
                })
                .collect(),
        }
    }

    /// [`Self::is_inert`] of the contact a create of `write` makes (its id not known yet: no id is its own
    /// derived one). A copy whose fields are its person's, packed byte for byte ([`Self::for_copies`]), is equal
    /// to it without being normalised.
    fn create_is_inert(&self, ctx: &PlanContext, mailbox: &Mailbox, write: &ContactWrite) -> bool {
        let property = write.sync_id.as_deref().and_then(SyncId::parse);
        let categories = write.categories.as_deref().unwrap_or_default();
        self.inert_with(ctx, mailbox, "", property, categories, |person| {
            let whole = write.unchanged.is_empty()
                && person.packed.is_some()
                && person.packed.as_ref() == write.fields.as_ref();
            whole || {
                let copy = simulate::created_contact(String::new(), write, ctx.now);
                person.norm == normalize(&copy.fields).masked(ctx.options.fields.central.set())
            }
        })
    }

    /// Whether `mailbox`'s folder, `target` as read with `plan`'s writes in, holds nothing but contacts
    /// [`Self::is_inert`] drops: phase 1 then plans the same without reading it, as long as it and the central
    /// folder these keys are of stay as they are (`feed::source_unread`). What the writes leave is taken from the
    /// writes themselves (Graph's rules as [`simulate`] models them); a contact written twice, or a write naming a
    /// contact not read, answers `false`.
    pub fn leaves_only_inert(
        &self,
        ctx: &PlanContext,
        mailbox: &Mailbox,
        target: &[Contact],
        plan: &Plan,
    ) -> bool {
        let mut updated: HashMap<&str, &ContactWrite> = HashMap::new();
        let mut deleted: HashSet<&str> = HashSet::new();
        for op in plan.writes() {
            // A create is judged as it comes; an update or delete once the contact it names is found, and only once.
            let once = match op {
                WriteOp::Create(write) => self.create_is_inert(ctx, mailbox, write),
                WriteOp::Update { id, write } => {
                    !deleted.contains(id.as_str()) && updated.insert(id, write).is_none()
                }
                WriteOp::Delete { id } => !updated.contains_key(id.as_str()) && deleted.insert(id),
            };
            if !once {
                return false;
            }
        }
        let named = target
            .iter()
            .filter(|c| updated.contains_key(c.id.as_str()) || deleted.contains(c.id.as_str()))
            .count();
        named == updated.len() + deleted.len()
            && target
                .iter()
                .filter(|c| !deleted.contains(c.id.as_str()))
                .all(|c| match updated.get(c.id.as_str()) {
                    Some(write) => {
                        let mut after = c.clone();
                        simulate::merge(&mut after, write);
                        self.is_inert(ctx, mailbox, &after)
                    }
                    None => self.is_inert(ctx, mailbox, c),
                })
    }

    /// Drops from `source` the contacts [`plan_central`](super::plan_central) can do without.
    pub fn retain_candidates(&self, ctx: &PlanContext, source: &mut SourceMailbox) {
        let mailbox = &source.mailbox;
        source
            .contacts
            .retain(|contact| !self.is_inert(ctx, mailbox, contact));
        source.contacts.shrink_to_fit();
    }
}

impl CentralPerson {
    /// What the keys keep of the central contact `contact` (its fields `packed` too, see [`CentralKeys::for_copies`]).
    fn of(ctx: &PlanContext, contact: &Contact, packed: bool) -> Self {
        CentralPerson {
            norm: MatchKeys::central(contact, ctx.options.fields.central).norm,
            creator_known: NotesStamp::parse(contact.personal_notes.as_deref())
                .created_by
                .is_some(),
            packed: packed.then(|| PackedFields::pack(&contact.fields)),
        }
    }
}

/// The sync id a central contact is kept in sync for: its own, or (never stamped) the one derived from it.
fn central_sync_id(ctx: &PlanContext, contact: &Contact) -> SyncId {
    effective_sync_id(contact)
        .unwrap_or_else(|| SyncId::derive(&ctx.tenant_id, &ctx.owner.id, &contact.id))
}

/// Each sync id of `central` with the contact kept in sync for it: the first by id, as
/// [`plan_central`](super::plan_central) takes it.
fn first_by_sync_id<'a>(ctx: &PlanContext, central: &'a [Contact]) -> HashMap<SyncId, &'a Contact> {
    let mut sorted: Vec<&Contact> = central.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut by_sync = HashMap::new();
    for contact in sorted {
        by_sync
            .entry(central_sync_id(ctx, contact))
            .or_insert(contact);
    }
    by_sync
}

/// Whether `contact` of `mailbox` is inert against the central person `person_of` gives for its sync id.
fn contact_is_inert<'p>(
    ctx: &PlanContext,
    mailbox: &Mailbox,
    contact: &Contact,
    person_of: impl FnOnce(&SyncId) -> Option<&'p CentralPerson>,
) -> bool {
    inert_with(
        ctx,
        mailbox,
        &contact.id,
        property_sync_id(contact),
        &contact.categories,
        person_of,
        |person| person.norm == normalize(&contact.fields).masked(ctx.options.fields.central.set()),
    )
}

/// [`CentralKeys::is_inert`] of a contact given by its parts, its person from `person_of`; `same_fields` compares
/// its fields with its person's.
fn inert_with<'p>(
    ctx: &PlanContext,
    mailbox: &Mailbox,
    id: &str,
    property: Option<SyncId>,
    categories: &[String],
    person_of: impl FnOnce(&SyncId) -> Option<&'p CentralPerson>,
    same_fields: impl FnOnce(&CentralPerson) -> bool,
) -> bool {
    let Some(property) = property else {
        return false;
    };
    if has_category(categories, &ctx.options.opt_out_category) {
        return false;
    }
    let Some(person) = person_of(&property) else {
        return false;
    };
    // Every contact of every source read comes through here: the derived id (a SHA-1) is computed only when
    // it can matter, and only the normalised fields (not the match keys) are compared.
    let names_creator = ctx.options.stamp_notes
        && !person.creator_known
        && SyncId::derive(&ctx.tenant_id, &mailbox.id, id) == property;
    !names_creator && same_fields(person)
}

/// The central persons a phase-1 plan writes, each as the folder held it before the plan (none: the plan creates
/// it), with only the fields the folder publishes (`CentralFields`). Why: phase 1 may leave a source holding only
/// copies unchecked when its plan writes the central folder (`feed::source_deferrable`); the phase-2 job that reads
/// that mailbox anyway must then tell whether phase 1 could have done without it, which is a question about the
/// folder before the plan ([`CentralKeys::before`]). Small by construction: phase 1 leaves sources unchecked only
/// for a plan of one `$batch` at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Superseded {
    persons: Vec<SupersededPerson>,
}

/// One person of [`Superseded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SupersededPerson {
    sync_id: SyncId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<Contact>,
}

impl Superseded {
    /// How many persons it names.
    pub fn len(&self) -> usize {
        self.persons.len()
    }

    /// Whether it names none.
    pub fn is_empty(&self) -> bool {
        self.persons.is_empty()
    }
}

/// The persons `plan` writes in `central` (the folder it was planned against, with the same `ctx`), as they were:
/// every sync id a write touches (the one a contact held before an update or delete, the one it holds after an
/// update or create) with the contact that held it first by id. `None` when that cannot be told: a write naming a
/// contact not in `central`, or a create whose sync id would be derived from the id Graph gives it.
pub fn superseded(ctx: &PlanContext, central: &[Contact], plan: &Plan) -> Option<Superseded> {
    let by_id: HashMap<&str, &Contact> = central.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut touched: BTreeMap<SyncId, Option<Contact>> = BTreeMap::new();
    for op in plan.writes() {
        match op {
            WriteOp::Create(write) => {
                let created = simulate::created_contact(String::new(), write, ctx.now);
                touched.insert(effective_sync_id(&created)?, None);
            }
            WriteOp::Update { id, write } => {
                let before = by_id.get(id.as_str())?;
                let mut after = (*before).clone();
                simulate::merge(&mut after, write);
                touched.insert(central_sync_id(ctx, before), None);
                touched.insert(central_sync_id(ctx, &after), None);
            }
            WriteOp::Delete { id } => {
                touched.insert(central_sync_id(ctx, by_id.get(id.as_str())?), None);
            }
        }
    }
    for (sync, contact) in first_by_sync_id(ctx, central) {
        if let Some(slot) = touched.get_mut(&sync) {
            let central_set = ctx.options.fields.central;
            *slot = fields::central_folder_view(vec![contact.clone()], central_set).pop();
        }
    }
    Some(Superseded {
        persons: touched
            .into_iter()
            .map(|(sync_id, before)| SupersededPerson { sync_id, before })
            .collect(),
    })
}

/// The keys of the central folder before a phase-1 plan ([`CentralKeys::before`]).
#[derive(Debug)]
pub struct PriorKeys<'a> {
    after: &'a CentralKeys,
    /// The persons the plan wrote, as they were (`None`: not in the folder then).
    superseded: HashMap<SyncId, Option<CentralPerson>>,
}

impl PriorKeys<'_> {
    /// [`CentralKeys::is_inert`] against the folder as it was before the plan.
    pub fn is_inert(&self, ctx: &PlanContext, mailbox: &Mailbox, contact: &Contact) -> bool {
        contact_is_inert(ctx, mailbox, contact, |sync| {
            match self.superseded.get(sync) {
                Some(before) => before.as_ref(),
                None => self.after.by_sync.get(sync),
            }
        })
    }

    /// Whether `mailbox`'s folder, `contacts` as read, holds nothing but contacts phase 1 would have dropped as
    /// inert had it read them before its plan: it then planned the same without them.
    pub fn hold_only_inert(
        &self,
        ctx: &PlanContext,
        mailbox: &Mailbox,
        contacts: &[Contact],
    ) -> bool {
        contacts.iter().all(|c| self.is_inert(ctx, mailbox, c))
    }
}
