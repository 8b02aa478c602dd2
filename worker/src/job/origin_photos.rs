//! Phase 1's photos (`Photos` on): each central person's photo is its origin's (the user's own contact its sync
//! id is derived from), noted while the sources are read and read from the origin only when it changed.

use std::collections::BTreeMap;

use shared::graph::{FolderRef, GraphError, TenantClient};
use shared::model::{Contact, Mailbox};
use shared::sync::photo::{self, CentralPhoto, OriginCheck, OriginPhoto, PhotoAction, SourcePhoto};
use shared::sync::{self, Ownership, PlanContext, SyncId};
use tokio_util::task::TaskTracker;

use super::apply::joined;
use super::photos::{photo_write_failed, photos_done};
use super::{Done, JobRunner};
use crate::disposition::AttemptResult;

impl JobRunner {
    /// Brings the central folder's photos in line with their persons' origins (phase 1, `Photos` on): `targets`
    /// the central persons as read (see `central_photo_targets`), `done` what the plan's writes did (created
    /// persons get their origin's photo now, deleted duplicates none). An origin's photo is read (on its own
    /// mailbox's budget) only when [`photo::check_origin`] says so; then the photo is put or removed as
    /// [`photo::decide`] says, and the hash with the origin's change key recorded in one PATCH, as a task of
    /// `writes` (a cancel never leaves one half-done; a failure between the two reads the origin again next run).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_central_photos(
        &self,
        client: &TenantClient,
        mailbox: &Mailbox,
        folder: &FolderRef,
        mut targets: BTreeMap<SyncId, (CentralPhoto, String)>,
        created_names: &BTreeMap<String, String>,
        origins: &BTreeMap<SyncId, OriginPhoto>,
        done: &Done,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        targets.retain(|_, (target, _)| !done.deleted.contains(&target.contact_id));
        for (sync_id, id) in &done.created_ids {
            if !origins.contains_key(sync_id) {
                continue;
            }
            let name = created_names
                .get(sync_id.as_str())
                .cloned()
                .unwrap_or_default();
            let created = CentralPhoto {
                contact_id: id.clone(),
                hash: None,
                source: None,
            };
            targets.insert(sync_id.clone(), (created, name));
        }
        let names: BTreeMap<SyncId, String> = targets
            .iter()
            .map(|(sync_id, (_, name))| (sync_id.clone(), name.clone()))
            .collect();
        let central: BTreeMap<SyncId, CentralPhoto> = targets
            .into_iter()
            .map(|(sync_id, (target, _))| (sync_id, target))
            .collect();
        let steps = photo::plan_central_photos(origins, &central);
        let mut tasks = Vec::with_capacity(steps.len());
        for step in steps {
            let name = names.get(&step.sync_id).cloned().unwrap_or_default();
            let (client, mailbox_id, folder) = (client.clone(), mailbox.id.clone(), folder.clone());
            tasks.push((
                name,
                writes.spawn(async move {
                    let (central, origin) = (&step.central, &step.origin);
                    let read = match step.check {
                        OriginCheck::Read => {
                            client
                                .contact_photo(
                                    &origin.mailbox_id,
                                    &FolderRef::Default,
                                    &origin.contact_id,
                                )
                                .await?
                        }
                        OriginCheck::Remove | OriginCheck::Keep => None,
                    };
                    let source = read.as_deref().map(SourcePhoto::of);
                    let action = photo::decide(source.as_ref(), central.hash.as_ref());
                    let id = &central.contact_id;
                    match &action {
                        PhotoAction::Send => {
                            let bytes = read.as_deref().unwrap_or_default();
                            client
                                .put_contact_photo(&mailbox_id, &folder, id, bytes)
                                .await?;
                        }
                        PhotoAction::Remove => {
                            client
                                .delete_contact_photo(&mailbox_id, &folder, id)
                                .await?;
                        }
                        PhotoAction::Keep | PhotoAction::TooLarge { .. } => {}
                    }
                    let hash = match &action {
                        PhotoAction::Send => source.as_ref().map(|s| s.hash.clone()),
                        PhotoAction::Remove => None,
                        PhotoAction::Keep | PhotoAction::TooLarge { .. } => central.hash.clone(),
                    };
                    let read_at = origin.change_key.as_deref().unwrap_or_default();
                    let stored = client
                        .set_photo_hash(&mailbox_id, &folder, id, hash.as_ref(), Some(read_at))
                        .await?;
                    Ok::<_, GraphError>((action, stored))
                }),
            ));
        }
        let mut out = Done::default();
        let mut first_transient = None;
        for (name, task) in tasks {
            let answered = joined(task.await, &format!("writing photos to {}", mailbox.upn))?;
            match answered {
                Ok((action, stored)) => {
                    match action {
                        PhotoAction::Send => out.photos.sent += 1,
                        PhotoAction::Remove => out.photos.removed += 1,
                        PhotoAction::TooLarge { size } => out.photos.skipped.push(format!(
                            "photo of {name} not sent: {size} bytes is over Graph's 4 MB request limit"
                        )),
                        PhotoAction::Keep => {}
                    }
                    out.written
                        .insert(stored.id.clone(), stored.change_key.clone());
                }
                Err(error) => {
                    photo_write_failed(&mut out, &mut first_transient, mailbox, &name, &error)
                }
            }
        }
        photos_done(out, first_transient, mailbox, "central photos")
    }
}

/// The person `contact` of `mailbox` is the origin of, noted for the central photo step (`Photos` on): a user's own
/// contact (never a managed copy, never one carrying the opt-out category) whose derived sync id is a central
/// person's (its photo, or that it has none, is that person's), or that has a photo (a person it starts in this
/// run gets it once created).
pub(super) fn origin_photo(
    ctx: &PlanContext,
    keys: &sync::CentralKeys,
    mailbox: &Mailbox,
    contact: &Contact,
) -> Option<(SyncId, OriginPhoto)> {
    if shared::sync::normalize::has_category(&contact.categories, &ctx.options.opt_out_category)
        || sync::ownership(&ctx.tenant_id, mailbox, contact) == Ownership::ManagedCopy
    {
        return None;
    }
    let derived = SyncId::derive(&ctx.tenant_id, &mailbox.id, &contact.id);
    (contact.has_picture || keys.holds(&derived)).then(|| {
        let origin = OriginPhoto {
            mailbox_id: mailbox.id.clone(),
            contact_id: contact.id.clone(),
            change_key: contact.change_key.clone(),
            has_picture: contact.has_picture,
        };
        (derived, origin)
    })
}

/// The central persons whose origin phase 1 read, with their photo properties and display name: the contact kept
/// in sync for each sync id (the first by id, as `plan_central` keeps it).
pub(super) fn central_photo_targets(
    ctx: &PlanContext,
    central: &[Contact],
    origins: &BTreeMap<SyncId, OriginPhoto>,
) -> BTreeMap<SyncId, (CentralPhoto, String)> {
    let mut sorted: Vec<&Contact> = central.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out = BTreeMap::new();
    for contact in sorted {
        let sync = sync::effective_sync_id(contact)
            .unwrap_or_else(|| SyncId::derive(&ctx.tenant_id, &ctx.owner.id, &contact.id));
        if !origins.contains_key(&sync) || out.contains_key(&sync) {
            continue;
        }
        let target = CentralPhoto {
            contact_id: contact.id.clone(),
            hash: contact.photo_hash.clone(),
            source: contact.photo_source.clone(),
        };
        let name = contact.fields.display_name.as_deref().unwrap_or_default();
        out.insert(sync, (target, name.to_owned()));
    }
    out
}
