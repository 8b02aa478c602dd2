//! Issue 10, scenario 10 (bounded memory): what planning a large folder costs on the heap, per contact.
//!
//! A counting allocator (this test binary's own) records the peak of live heap bytes while each planner runs, over
//! what its inputs already hold. Failed before the compact planning forms: a normalised contact took 4 KiB (a
//! struct of 30 values) and every plan item 1.2 KiB of inline write fields, so phase 2 of a 100,000-contact folder
//! held about 1 GiB of planning state per job on top of the folders it read. The bounds are per contact and far
//! above what the planners now need, so only a return of a per-contact cost of that size fails them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{TimeZone, Utc};
use shared::config::{DeletionPolicy, MirrorOptions};
use shared::model::{Contact, ContactFields, EmailAddress, Mailbox, WriteOp};
use shared::sync::{
    plan_central, plan_distribution_from, Plan, PlanContext, PreparedCentral, SourceMailbox,
};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak of live heap bytes it added over what was live before it.
fn peak_over_live<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - before)
}

const TENANT: &str = "contoso.onmicrosoft.com";
const CONTACTS: usize = 20_000;

fn mailbox(name: &str) -> Mailbox {
    Mailbox {
        id: format!("id-{name}"),
        upn: format!("{name}@contoso.com"),
    }
}

fn ctx(owner: &Mailbox) -> PlanContext {
    PlanContext {
        tenant_id: TENANT.into(),
        owner: owner.clone(),
        options: MirrorOptions {
            central_folder_name: "All Contacts".into(),
            managed_category: None,
            stamp_notes: true,
            opt_out_category: "Private".into(),
            deletion: DeletionPolicy {
                enabled: true,
                max_share: 0.10,
            },
            update_existing: true,
            fields: Default::default(),
        },
        now: Utc
            .with_ymd_and_hms(2026, 1, 2, 0, 0, 0)
            .single()
            .expect("a time"),
        rebuild_central: false,
    }
}

/// The bench's big user: `n` contacts of five fields each, as `tests/examples/bench/estate.rs` seeds them.
fn originals(n: usize) -> Vec<Contact> {
    (0..n)
        .map(|i| Contact {
            id: format!("AAMkAGI2-original-{i:08}"),
            last_modified: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single(),
            fields: ContactFields {
                given_name: Some("Bulk".into()),
                surname: Some(format!("Person {i}").into()),
                display_name: Some(format!("Bulk Person {i}").into()),
                email_addresses: vec![EmailAddress {
                    name: None,
                    address: Some(format!("bulk.{i}@example.org")),
                }],
                mobile_phone: Some(format!("+41 79 {i:07}").into()),
                ..ContactFields::default()
            },
            personal_notes: None,
            categories: Vec::new(),
            sync_id_property: None,
            owner_property: None,
            photo_hash: None,
            photo_source: None,
            has_picture: false,
            change_key: None,
        })
        .collect()
}

/// The folder after the plan's writes (creates and updates only; the model in `sync::simulate` looks ids up one
/// by one, too slow for this size).
fn applied(plan: &Plan, mut folder: Vec<Contact>, prefix: &str) -> Vec<Contact> {
    let at: std::collections::HashMap<String, usize> = folder
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let now = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).single();
    for (n, op) in plan.writes().enumerate() {
        let (contact, write) = match op {
            WriteOp::Create(write) => {
                folder.push(Contact {
                    id: format!("AAMkAGI2-{prefix}-{n:08}"),
                    last_modified: None,
                    fields: ContactFields::default(),
                    personal_notes: None,
                    categories: Vec::new(),
                    sync_id_property: None,
                    owner_property: None,
                    photo_hash: None,
                    photo_source: None,
                    has_picture: false,
                    change_key: None,
                });
                (folder.last_mut().expect("just pushed"), write)
            }
            WriteOp::Update { id, write, .. } => (&mut folder[at[id]], write),
            WriteOp::Delete { .. } => panic!("no deletes expected"),
        };
        contact.last_modified = now;
        if let Some(fields) = &write.fields {
            contact.fields = fields.unpack();
        }
        if let Some(notes) = &write.personal_notes {
            contact.personal_notes = Some(notes.clone());
        }
        if let Some(categories) = &write.categories {
            contact.categories = categories.clone();
        }
        if let Some(sync) = &write.sync_id {
            contact.sync_id_property = Some(sync.clone());
        }
    }
    folder
}

/// Heap bytes `value` holds, measured by dropping it.
fn held_by<T>(value: T) -> usize {
    let live = LIVE.load(Ordering::SeqCst);
    drop(value);
    live - LIVE.load(Ordering::SeqCst)
}

/// Heap bytes `contacts` hold (what reading them costs), measured by building a copy.
fn held(contacts: &[Contact]) -> usize {
    let (copy, bytes) = peak_over_live(|| contacts.to_vec());
    drop(copy);
    bytes
}

#[test]
fn planning_a_large_folder_costs_a_bounded_amount_per_contact() {
    let (shared_mailbox, ann, bob) = (mailbox("contacts"), mailbox("ann"), mailbox("bob"));
    let sources = vec![SourceMailbox {
        mailbox: ann.clone(),
        contacts: originals(CONTACTS),
    }];
    let folder = held(&sources[0].contacts) / CONTACTS;

    // Phase 1, initial sync: every contact is a new person.
    let (plan, phase1) = peak_over_live(|| plan_central(&ctx(&shared_mailbox), &sources, &[]));
    assert_eq!(plan.counts().created, CONTACTS);
    let central = applied(&plan, Vec::new(), "central");
    drop(plan);

    // Phase 2: the central folder prepared once, then the owner's originals stamped, then a re-run of copies.
    let (prepared, prepare) = peak_over_live(|| PreparedCentral::new(central.clone()));
    drop(central);
    let (plan, stamp) = peak_over_live(|| {
        plan_distribution_from(&ctx(&ann), &prepared, &ann, &sources[0].contacts).expect("plans")
    });
    assert_eq!(plan.counts().updated, CONTACTS);
    let stamping = (held_by(plan.clone()), held_by(plan.into_writes()));
    let (plan, create) =
        peak_over_live(|| plan_distribution_from(&ctx(&bob), &prepared, &bob, &[]).expect("plans"));
    assert_eq!(plan.counts().created, CONTACTS);
    let copies = applied(&plan, Vec::new(), "bob");
    let creating = (held_by(plan.clone()), held_by(plan.into_writes()));
    let (plan, steady) = peak_over_live(|| {
        plan_distribution_from(&ctx(&bob), &prepared, &bob, &copies).expect("plans")
    });
    assert_eq!(plan.counts().skipped, CONTACTS);
    let unchanged = (held_by(plan.clone()), held_by(plan.into_writes()));

    let per = |bytes: usize| bytes / CONTACTS;
    eprintln!(
        "heap per contact: a read folder {folder} B; phase 1 initial {} B; prepared central {} B; phase 2 \
         stamping originals {} B, creating {} B, unchanged {} B",
        per(phase1),
        per(prepare),
        per(stamp),
        per(create),
        per(steady)
    );
    eprintln!(
        "held through the writes per contact, plan -> its writes: stamping originals {} -> {} B, creating {} -> {} \
         B, unchanged {} -> {} B",
        per(stamping.0),
        per(stamping.1),
        per(creating.0),
        per(creating.1),
        per(unchanged.0),
        per(unchanged.1)
    );
    // Failed before the compact text fields (`Option<Box<str>>`, not `Option<String>`): a read contact took 949 B.
    assert!(folder <= 850, "a read contact holds {folder} B");
    // Failed before `Plan::into_writes`: the worker held the whole plan through its writes (skips, names and ids
    // included), beside the next job's planning.
    assert_eq!(unchanged.1, 0, "an unchanged mailbox's writes hold nothing");
    // Failed before `PackedFields`: a held create took 888 B (its fields a boxed struct of 30 mostly empty slots
    // with their strings), more than the contact it copies as read (813 B); a mailbox's 100,000 creates are held
    // while the next mailbox is planned.
    assert!(
        per(creating.1) * 3 <= folder * 2,
        "a held create holds {} B, a read contact {folder} B",
        per(creating.1)
    );
    assert!(
        stamping.1 * 4 <= stamping.0 * 3,
        "writing holds {} B per item, the plan {} B",
        per(stamping.1),
        per(stamping.0)
    );
    // Before the compact forms: about 4,300 B per normalised contact and 1,232 B per plan item.
    for (what, bytes) in [
        ("phase 1 initial", phase1),
        ("preparing the central folder", prepare),
        ("phase 2 stamping originals", stamp),
        ("phase 2 creating", create),
        ("phase 2 unchanged", steady),
    ] {
        assert!(
            per(bytes) <= 3 * folder,
            "{what}: {} B per contact, more than three read contacts ({folder} B each)",
            per(bytes)
        );
    }
}
