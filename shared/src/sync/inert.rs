//! What phase 1 can do without (issues 10 and 13): the contacts it drops while it reads a source, and the sources
//! it need not read at all. Its own file because both phases ask it: phase 1 of each contact it reads, phase 2 of the
//! folder its plan leaves (`FolderFeed::only_copies`), and the two must give the same answer.

use std::collections::{HashMap, HashSet};

use crate::model::{Contact, ContactWrite, Mailbox, PackedFields, WriteOp};

use super::central::{MatchKeys, SourceMailbox};
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
        let mut sorted: Vec<&Contact> = central.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        let mut by_sync = HashMap::new();
        for contact in sorted {
            let sync = effective_sync_id(contact)
                .unwrap_or_else(|| SyncId::derive(&ctx.tenant_id, &ctx.owner.id, &contact.id));
            by_sync.entry(sync).or_insert_with(|| CentralPerson {
                norm: MatchKeys::central(contact, ctx.options.fields.central).norm,
                creator_known: NotesStamp::parse(contact.personal_notes.as_deref())
                    .created_by
                    .is_some(),
                packed: packed.then(|| PackedFields::pack(&contact.fields)),
            });
        }
        CentralKeys { by_sync }
    }

    /// Whether the central folder holds the person `sync_id` (photos: a contact whose derived id it is, is that
    /// person's origin).
    pub fn holds(&self, sync_id: &SyncId) -> bool {
        self.by_sync.contains_key(sync_id)
    }

    /// Whether [`plan_central`](super::plan_central) plans the same without `contact` of `mailbox` (see [`CentralKeys`]).
    pub fn is_inert(&self, ctx: &PlanContext, mailbox: &Mailbox, contact: &Contact) -> bool {
        let property = property_sync_id(contact);
        self.inert_with(
            ctx,
            mailbox,
            &contact.id,
            property,
            &contact.categories,
            |person| {
                person.norm == normalize(&contact.fields).masked(ctx.options.fields.central.set())
            },
        )
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
        let Some(property) = property else {
            return false;
        };
        if has_category(categories, &ctx.options.opt_out_category) {
            return false;
        }
        let Some(person) = self.by_sync.get(&property) else {
            return false;
        };
        // Every contact of every source read comes through here: the derived id (a SHA-1) is computed only when
        // it can matter, and only the normalised fields (not the match keys) are compared.
        let names_creator = ctx.options.stamp_notes
            && !person.creator_known
            && SyncId::derive(&ctx.tenant_id, &mailbox.id, id) == property;
        !names_creator && same_fields(person)
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
                WriteOp::Update { id, write, .. } => {
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
