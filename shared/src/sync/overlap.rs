//! Pipelined phases (issue 13): a mailbox's phase 2 sends the copies of the persons phase 1 creates, and the
//! identity stamps of the owner's originals of them ([`early_writes`]), as soon as Graph confirms each central
//! create, instead of waiting for the whole central folder to be written; once phase 1 is over it checks that the
//! copies it sent are what the ordered run sends, and undoes them when not.
//!
//! Why the check and not a proof: phase 2's plan depends on the central folder as a whole (ties between persons
//! are broken by their central ids, which Graph gives only on create; a person phase 1 fails to write changes whom
//! a user's own contact matches). So the early creates are planned against the folder phase 1's plan leaves
//! ([`planned_folder`]), and the ordered plan, made against the folder as read once phase 1 is over, decides
//! ([`settle`]): the early creates it contains stay and the rest of it is written; otherwise the early creates are
//! deleted (they are this job's own copies, made minutes before) and the ordered plan is written whole. Either way
//! the mailbox ends as the ordered run leaves it.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::model::{Contact, Mailbox, WriteOp};

use super::identity::SyncId;
use super::plan::{ActionKind, Plan, Reason, Writes};
use super::simulate;

/// The central folder phase 1's `plan` leaves when every write succeeds: `read` (the folder as phase 1 read it)
/// with the plan applied, created persons under ids of the model ([`simulate`]). `None` when the plan names a
/// contact the folder does not hold (it was not planned against `read`).
pub fn planned_folder(
    mut read: Vec<Contact>,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Option<Vec<Contact>> {
    simulate::apply(plan, &mut read, now).ok()?;
    Some(read)
}

/// The persons phase 1's `plan` creates in the central folder: the ones whose copies may go early.
pub fn created_persons(plan: &Plan) -> BTreeSet<SyncId> {
    plan.items
        .iter()
        .filter(|item| item.action == ActionKind::Create)
        .filter_map(|item| SyncId::parse(item.sync_id.as_deref()?))
        .collect()
}

/// Of a mailbox's plan against the [`planned_folder`], what may be sent once its person's central create is
/// confirmed, each with its person, in plan order:
/// - the creates of persons in `created` (phase 1 creates them);
/// - the identity stamps of the owner's own originals of those persons: the contact a person was first published
///   from (its derived sync id is the person's), stamped and nothing else. Such a stamp changes nothing of who
///   the contact is (both phases read an unstamped contact as its derived id, and it stays the owner's), so it
///   stands whatever phase 1's outcome; it is sent only while the contact still has the change key it was read
///   at (the plan's `If-Match`; a contact read without one is not stamped early), so an edit the owner makes
///   meanwhile is never overwritten. A mailbox holding thousands of
///   originals (the largest customer's slice) stamps them while phase 1 writes instead of after it, in a second
///   window of its own budget.
///
/// Nothing else goes early: any other update, or a delete, could not be undone exactly.
pub fn early_writes(
    plan: Plan,
    created: &BTreeSet<SyncId>,
    tenant_id: &str,
    mailbox: &Mailbox,
) -> Vec<(SyncId, WriteOp)> {
    plan.items
        .into_iter()
        .filter_map(|item| {
            let person = SyncId::parse(item.sync_id.as_deref()?)?;
            if !created.contains(&person) {
                return None;
            }
            match item.op? {
                WriteOp::Create(write) => Some((person, WriteOp::Create(write))),
                WriteOp::Update {
                    id,
                    write,
                    if_match: Some(if_match),
                } if item.reason == Reason::StampMissing
                    && write.fields.is_none()
                    && write.categories.is_none()
                    && SyncId::derive(tenant_id, &mailbox.id, &id) == person =>
                {
                    Some((
                        person,
                        WriteOp::Update {
                            id,
                            write,
                            if_match: Some(if_match),
                        },
                    ))
                }
                _ => None,
            }
        })
        .collect()
}

/// What is left to write once the ordered plan is known ([`settle`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Every early create is one the ordered plan makes: these are its other writes (its counts whole).
    Rest(Writes),
    /// An early create is not the ordered plan's: delete the early copies, then write the ordered plan whole.
    Undo(Writes),
}

/// The `ordered` plan's writes, made against the central folder phase 1 left and the mailbox as read once phase 1
/// is over, without the early creates. The originals stamped early (`stamped`, by id) are in that mailbox, so the
/// plan is made from them as they are; an ordered run would have stamped each of them, so each one the plan leaves
/// alone counts as updated rather than skipped, and the report reads as the ordered run's.
pub fn ordered_writes(ordered: Plan, stamped: &BTreeSet<String>) -> Writes {
    let restamped: usize = ordered
        .items
        .iter()
        .filter(|item| item.op.is_none() && item.sync_id.is_some())
        .filter(|item| {
            item.contact_id
                .as_ref()
                .is_some_and(|id| stamped.contains(id))
        })
        .count();
    let mut writes = ordered.into_writes();
    writes.counts.updated += restamped;
    writes.counts.skipped = writes.counts.skipped.saturating_sub(restamped);
    writes
}

/// Compares the creates sent early (`sent`, each confirmed by Graph) with the ordered plan's `writes`
/// ([`ordered_writes`]). Early stamps are not compared: they are in the mailbox the ordered plan was made from.
pub fn settle(sent: &[WriteOp], writes: Writes) -> Settled {
    // The ordered plan's creates by person: at most one each (a person claims at most one target).
    let mut creates: HashMap<&str, Vec<usize>> = HashMap::new();
    for (at, op) in writes.ops.iter().enumerate() {
        if let WriteOp::Create(write) = op {
            if let Some(sync_id) = write.sync_id.as_deref() {
                creates.entry(sync_id).or_default().push(at);
            }
        }
    }
    let mut taken = BTreeSet::new();
    let contained = sent.iter().all(|op| {
        let WriteOp::Create(write) = op else {
            return false;
        };
        let Some(candidates) = write.sync_id.as_deref().and_then(|id| creates.get(id)) else {
            return false;
        };
        match candidates
            .iter()
            .find(|&&at| !taken.contains(&at) && &writes.ops[at] == op)
        {
            Some(&at) => taken.insert(at),
            None => false,
        }
    });
    if !contained {
        return Settled::Undo(writes);
    }
    let Writes {
        counts,
        ops,
        defers,
    } = writes;
    let rest = ops
        .into_iter()
        .enumerate()
        .filter(|(at, _)| !taken.contains(at))
        .map(|(_, op)| op)
        .collect();
    Settled::Rest(Writes {
        counts,
        ops: rest,
        defers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContactFields, ContactWrite};
    use crate::sync::plan::{PlanItem, Reason};

    fn create(sync: &SyncId, name: &str) -> WriteOp {
        WriteOp::Create(ContactWrite {
            fields: Some(
                ContactFields {
                    display_name: Some(name.into()),
                    ..ContactFields::default()
                }
                .into(),
            ),
            sync_id: Some(sync.to_string()),
            ..ContactWrite::default()
        })
    }

    fn item(op: WriteOp, action: ActionKind) -> PlanItem {
        let sync_id = match &op {
            WriteOp::Create(write) => write.sync_id.clone(),
            _ => None,
        };
        PlanItem {
            op: Some(op),
            action,
            reason: Reason::New,
            sync_id,
            display_name: None,
            contact_id: None,
            source: None,
            changed_fields: Vec::new(),
        }
    }

    fn plan(ops: Vec<WriteOp>) -> Plan {
        Plan {
            items: ops
                .into_iter()
                .map(|op| {
                    let action = match op {
                        WriteOp::Create(_) => ActionKind::Create,
                        WriteOp::Update { .. } => ActionKind::Update,
                        WriteOp::Delete { .. } => ActionKind::Delete,
                    };
                    item(op, action)
                })
                .collect(),
        }
    }

    fn person(n: u128) -> SyncId {
        SyncId::parse(&uuid::Uuid::from_u128(n).to_string()).expect("a uuid is a sync id")
    }

    #[test]
    fn early_creates_sent_as_the_ordered_plan_makes_them_leave_its_other_writes() {
        let (a, b) = (person(1), person(2));
        let delete = WriteOp::Delete { id: "old".into() };
        let ordered = plan(vec![create(&a, "A"), delete.clone(), create(&b, "B")]);
        match settle(&[create(&b, "B")], ordered.into_writes()) {
            Settled::Rest(rest) => {
                assert_eq!(rest.ops, vec![create(&a, "A"), delete]);
                assert_eq!(rest.counts.created, 2, "the counts are the ordered plan's");
            }
            other => panic!("expected the rest, got {other:?}"),
        }
    }

    #[test]
    fn an_early_create_the_ordered_plan_does_not_make_alike_is_undone() {
        let (a, b) = (person(1), person(2));
        let ordered = plan(vec![create(&a, "A")]);
        // Other data than the ordered plan's, a person it does not create, or one create sent twice.
        for sent in [
            vec![create(&a, "A (renamed)")],
            vec![create(&b, "B")],
            vec![create(&a, "A"), create(&a, "A")],
            vec![WriteOp::Delete { id: "x".into() }],
        ] {
            match settle(&sent, ordered.clone().into_writes()) {
                Settled::Undo(all) => assert_eq!(all.ops, vec![create(&a, "A")]),
                other => panic!("{sent:?}: expected an undo, got {other:?}"),
            }
        }
        assert_eq!(
            settle(&[], ordered.clone().into_writes()),
            Settled::Rest(ordered.into_writes()),
            "nothing sent early: the ordered plan whole"
        );
    }

    #[test]
    fn only_creates_of_persons_phase_1_creates_go_early() {
        let (a, b) = (person(1), person(2));
        let update = WriteOp::Update {
            id: "copy".into(),
            write: ContactWrite::default(),
            if_match: None,
        };
        let mailbox_plan = plan(vec![create(&a, "A"), update, create(&b, "B")]);
        let created: BTreeSet<SyncId> = [b.clone()].into();
        assert_eq!(
            early_writes(mailbox_plan, &created, TENANT, &owner()),
            vec![(b.clone(), create(&b, "B"))]
        );
        let central = plan(vec![create(&a, "A"), WriteOp::Delete { id: "gone".into() }]);
        assert_eq!(created_persons(&central), [a].into());
    }

    const TENANT: &str = "tenant";

    fn owner() -> Mailbox {
        Mailbox {
            id: "owner-id".into(),
            upn: "owner@example.com".into(),
        }
    }

    /// A stamp-only update of contact `id` for `person` (as phase 2 plans one: reason `StampMissing`).
    fn stamp(id: &str, person: &SyncId) -> PlanItem {
        PlanItem {
            op: Some(WriteOp::Update {
                id: id.into(),
                write: ContactWrite {
                    personal_notes: Some(format!("SyncId: {person}")),
                    sync_id: Some(person.to_string()),
                    ..ContactWrite::default()
                },
                if_match: None,
            }),
            action: ActionKind::Update,
            reason: Reason::StampMissing,
            sync_id: Some(person.to_string()),
            display_name: None,
            contact_id: Some(id.into()),
            source: None,
            changed_fields: Vec::new(),
        }
    }

    fn read_as(id: &str, change_key: &str) -> Contact {
        Contact {
            change_key: Some(change_key.into()),
            ..crate::sync::tests::contact(id, "Own", &[], 0)
        }
    }

    #[test]
    fn an_owners_original_of_a_person_phase_1_creates_is_stamped_early_against_its_change_key() {
        let own = SyncId::derive(TENANT, &owner().id, "original");
        let other = SyncId::derive(TENANT, "someone-else", "theirs");
        let not_created = SyncId::derive(TENANT, &owner().id, "older");
        let created: BTreeSet<SyncId> = [own.clone(), other.clone()].into();
        let read = vec![
            read_as("original", "ck-1"),
            read_as("matched", "ck-2"),
            read_as("older", "ck-3"),
        ];
        let with_data = {
            let mut item = stamp("original", &own);
            if let Some(WriteOp::Update { write, .. }) = item.op.as_mut() {
                write.fields = Some(ContactFields::default().into());
            }
            item.reason = Reason::SourceNewer;
            item
        };
        let guarded = |id: &str, person: &SyncId, key: &str| match stamp(id, person).op {
            Some(WriteOp::Update { id, write, .. }) => WriteOp::Update {
                id,
                write,
                if_match: Some(key.into()),
            },
            other => panic!("{other:?}"),
        };
        // Planned against `read`, as phase 2 plans: each update carries the change key its contact was read at.
        let early = |mut items: Vec<PlanItem>, read: &[Contact]| {
            for item in &mut items {
                if let Some(WriteOp::Update { id, if_match, .. }) = item.op.as_mut() {
                    *if_match = read
                        .iter()
                        .find(|c| c.id == *id)
                        .and_then(|c| c.change_key.as_deref())
                        .map(Box::from);
                }
            }
            early_writes(Plan { items }, &created, TENANT, &owner())
        };
        // The original of a person phase 1 creates: stamped early, against the change key read.
        assert_eq!(
            early(vec![stamp("original", &own)], &read),
            vec![(own.clone(), guarded("original", &own, "ck-1"))]
        );
        // Not early: another's person matched by address (not the contact's own identity), a person phase 1 does
        // not create, a stamp that writes data too, a contact read without a change key.
        assert!(early(vec![stamp("matched", &other)], &read).is_empty());
        assert!(early(vec![stamp("older", &not_created)], &read).is_empty());
        assert!(early(vec![with_data], &read).is_empty());
        assert!(early(vec![stamp("original", &own)], &[]).is_empty());
    }

    #[test]
    fn originals_stamped_early_count_as_the_ordered_run_counts_them() {
        let own = person(1);
        let unchanged = PlanItem {
            op: None,
            action: ActionKind::Skip,
            reason: Reason::Unchanged,
            ..stamp("original", &own)
        };
        let ordered = Plan {
            items: vec![unchanged.clone()],
        };
        let stamped: BTreeSet<String> = ["original".to_owned()].into();
        let writes = ordered_writes(ordered.clone(), &stamped);
        assert!(writes.ops.is_empty());
        assert_eq!((writes.counts.updated, writes.counts.skipped), (1, 0));
        let writes = ordered_writes(ordered, &BTreeSet::new());
        assert_eq!((writes.counts.updated, writes.counts.skipped), (0, 1));
    }

    #[test]
    fn the_planned_folder_is_the_read_one_with_the_plan_applied() {
        let a = person(1);
        let read = vec![crate::sync::tests::contact("gone", "Gone", &[], 0)];
        let central = plan(vec![create(&a, "A"), WriteOp::Delete { id: "gone".into() }]);
        let folder = planned_folder(read.clone(), &central, Utc::now()).expect("applies");
        assert_eq!(folder.len(), 1);
        assert_eq!(
            folder[0].sync_id_property.as_deref(),
            Some(a.to_string().as_str())
        );
        let elsewhere = plan(vec![WriteOp::Delete { id: "other".into() }]);
        assert_eq!(planned_folder(read, &elsewhere, Utc::now()), None);
    }
}
