//! Pipelined phases (issue 13): a mailbox's phase 2 sends the copies of the persons phase 1 creates as soon as
//! Graph confirms each central create, instead of waiting for the whole central folder to be written; once phase 1
//! is over it checks that what it sent is what the ordered run sends, and undoes it when not.
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

use crate::model::{Contact, WriteOp};

use super::identity::SyncId;
use super::plan::{ActionKind, Plan, Writes};
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

/// Of a mailbox's plan against the [`planned_folder`], the creates of persons in `created` (phase 1 creates
/// them), each with its person, in plan order: what may be sent once that person's central create is confirmed.
/// Nothing else goes early: an update or delete could not be undone exactly.
pub fn early_creates(plan: Plan, created: &BTreeSet<SyncId>) -> Vec<(SyncId, WriteOp)> {
    plan.items
        .into_iter()
        .filter_map(|item| match item.op {
            Some(WriteOp::Create(write)) => {
                let person = SyncId::parse(write.sync_id.as_deref()?)?;
                created
                    .contains(&person)
                    .then_some((person, WriteOp::Create(write)))
            }
            _ => None,
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

/// Compares the creates sent early (`sent`, each confirmed by Graph) with the `ordered` plan, made against the
/// central folder phase 1 left and the mailbox as read before the early creates.
pub fn settle(sent: &[WriteOp], ordered: Plan) -> Settled {
    let writes = ordered.into_writes();
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
    let Writes { counts, ops } = writes;
    let rest = ops
        .into_iter()
        .enumerate()
        .filter(|(at, _)| !taken.contains(at))
        .map(|(_, op)| op)
        .collect();
    Settled::Rest(Writes { counts, ops: rest })
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
        match settle(&[create(&b, "B")], ordered) {
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
            match settle(&sent, ordered.clone()) {
                Settled::Undo(all) => assert_eq!(all.ops, vec![create(&a, "A")]),
                other => panic!("{sent:?}: expected an undo, got {other:?}"),
            }
        }
        assert_eq!(
            settle(&[], ordered.clone()),
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
        };
        let mailbox_plan = plan(vec![create(&a, "A"), update, create(&b, "B")]);
        let created: BTreeSet<SyncId> = [b.clone()].into();
        assert_eq!(
            early_creates(mailbox_plan, &created),
            vec![(b.clone(), create(&b, "B"))]
        );
        let central = plan(vec![create(&a, "A"), WriteOp::Delete { id: "gone".into() }]);
        assert_eq!(created_persons(&central), [a].into());
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
