//! An in-memory model of what Graph does with a plan's writes, for tests of the rules and of their callers.
//!
//! Why this exists: the rules promise convergence (apply a plan, plan again, nothing to do), crash safety and
//! ownership across runs. Checking those promises needs a folder that reacts to writes the way a mailbox does:
//! a POST gets a new id, every write bumps `lastModifiedDateTime`, `fields` are replaced whole (but the `unchanged`
//! ones, which are not sent), and the sync id
//! lands in the extended property. This module is that model; it is deliberately simple (no normalisation by the
//! server, no throttling) and is no substitute for `graphsim` when testing the Graph client. Phase 2 also uses its
//! write rules ([`created_contact`], [`merge`]) to tell what a folder holds once its plan is written
//! (`CentralKeys::leaves_only_inert`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{Contact, ContactWrite, WriteOp};

use super::plan::Plan;

/// A write the model could not apply: Graph would have answered 404 `ErrorItemNotFound`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotFound {
    /// The id that was not in the folder.
    pub id: String,
}

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "contact {} not found", self.id)
    }
}

impl std::error::Error for NotFound {}

/// Applies every write of `plan` to `folder` at time `now`; returns the ids of created contacts in plan order.
/// Stops at the first write that names a missing contact.
pub fn apply(
    plan: &Plan,
    folder: &mut Vec<Contact>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, NotFound> {
    apply_ops(plan.writes(), folder, now)
}

/// Applies writes to `folder` at time `now` (use a prefix of a plan's writes to model a job that crashed midway).
/// Contacts are found by id through an index built once, so a plan of N writes against a folder of M contacts
/// costs about N + M, not N x M (a 100,000-person plan's creates took most of a worker's CPU otherwise).
pub fn apply_ops<'a>(
    ops: impl IntoIterator<Item = &'a WriteOp>,
    folder: &mut Vec<Contact>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, NotFound> {
    let mut at: HashMap<String, usize> = folder
        .iter()
        .enumerate()
        .map(|(n, c)| (c.id.clone(), n))
        .collect();
    // Deleted contacts leave the folder at the end, in one pass that keeps the others' order.
    let mut gone: HashSet<usize> = HashSet::new();
    let mut created = Vec::new();
    let mut outcome = Ok(());
    for (n, op) in ops.into_iter().enumerate() {
        match op {
            WriteOp::Create(write) => {
                let id = new_id(&at, now, n, folder.len() - gone.len());
                at.insert(id.clone(), folder.len());
                folder.push(created_contact(id.clone(), write, now));
                created.push(id);
            }
            WriteOp::Update { id, write, .. } => {
                let Some(&n) = at.get(id) else {
                    outcome = Err(NotFound { id: id.clone() });
                    break;
                };
                let contact = &mut folder[n];
                merge(contact, write);
                contact.last_modified = Some(now);
            }
            WriteOp::Delete { id } => {
                let Some(n) = at.remove(id) else {
                    outcome = Err(NotFound { id: id.clone() });
                    break;
                };
                gone.insert(n);
            }
        }
    }
    if !gone.is_empty() {
        let mut n = 0;
        folder.retain(|_| {
            let keep = !gone.contains(&n);
            n += 1;
            keep
        });
    }
    outcome.map(|()| created)
}

/// The contact a create of `write` makes, under `id`.
pub(crate) fn created_contact(id: String, write: &ContactWrite, now: DateTime<Utc>) -> Contact {
    let mut contact = Contact {
        id,
        last_modified: Some(now),
        fields: Default::default(),
        personal_notes: None,
        categories: Vec::new(),
        sync_id_property: None,
        owner_property: None,
        photo_hash: None,
        photo_source: None,
        has_picture: false,
        change_key: None,
    };
    merge(&mut contact, write);
    contact
}

/// Sets the parts of `write` that are present.
pub(crate) fn merge(contact: &mut Contact, write: &ContactWrite) {
    if let Some(fields) = &write.fields {
        let before = std::mem::replace(&mut contact.fields, fields.unpack());
        for field in write.unchanged.iter() {
            field.copy(&before, &mut contact.fields);
        }
    }
    if let Some(notes) = &write.personal_notes {
        contact.personal_notes = Some(notes.clone());
    }
    if let Some(categories) = &write.categories {
        contact.categories = categories.clone();
    }
    if let Some(sync_id) = &write.sync_id {
        contact.sync_id_property = Some(sync_id.clone());
    }
    if let Some(owner) = &write.owner {
        // An emptied mark reads back as none (`graph::wire`).
        contact.owner_property = Some(owner.clone()).filter(|o| !o.trim().is_empty());
    }
}

/// A fresh id not used in the folder (`taken`: its ids; `len`: how many contacts it holds), deterministic like a
/// server's but unrelated to any sync id.
fn new_id(taken: &HashMap<String, usize>, now: DateTime<Utc>, n: usize, len: usize) -> String {
    let namespace = Uuid::from_u128(0x3d2c_8f41_0b6e_4a7d_9e15_c2a4_6f80_b931);
    (0u64..)
        .map(|salt| {
            let name = format!(
                "{}|{}|{}|{}",
                now.timestamp_nanos_opt().unwrap_or_default(),
                n,
                len,
                salt
            );
            format!("AAMk{}", Uuid::new_v5(&namespace, name.as_bytes()).simple())
        })
        .find(|id| !taken.contains_key(id))
        .unwrap_or_default()
}
