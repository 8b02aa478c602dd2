//! Phase 2's photos (`Photos` on): the managed copies' photos brought in line with their persons' (a directory
//! user's, or the central contact's), each photo PUT and hash PATCH one task of the attempt; and how a job's photo
//! writes, phase 1's included, are counted.

use std::collections::BTreeMap;
use std::sync::Arc;

use shared::config::TenantSettings;
use shared::graph::{FolderRef, GraphError, TenantClient};
use shared::message::{CentralFolder, Job};
use shared::model::{Contact, Mailbox};
use shared::sync::photo::{self, CopyPhoto, PhotoAction, SourcePhoto};
use shared::sync::{self, identity, Ownership, PreparedCentral, SyncId};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::apply::joined;
use super::{classify, Done, JobRunner};
use crate::central_photos::CentralPhotos;
use crate::directory_cache::Selected;
use crate::disposition::AttemptResult;

impl JobRunner {
    /// Brings the photos of the managed copies in `folder` in line with their persons' (`Photos` on): directory
    /// users' photos from `from.lists`, mirrored persons' from the central folder (`from.central`: each central
    /// contact's `PhotoHash` is its person's photo, the bytes read once per worker and run when a copy needs
    /// them). `target` is the folder as read before this job's writes, `done` what they did (created copies get
    /// their photo now). Only managed copies (the sync id property proves them) are touched, never an owner's
    /// contact. Each send is the photo PUT, then the hash written into the copy's property (a failure between the
    /// two sends the photo again next run, which is harmless); the pair runs as a task of `writes`, so a
    /// cancelled attempt never leaves one half-sent. A transient failure fails the attempt (retried: what was
    /// sent is found by its hash); a refused photo is counted as a refused write.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_photos(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        target: &[Contact],
        done: &Done,
        from: PhotoSources<'_>,
        writes: &TaskTracker,
    ) -> Result<Done, AttemptResult> {
        let mut names: BTreeMap<SyncId, String> = BTreeMap::new();
        let mut sources = BTreeMap::new();
        let mut bytes: BTreeMap<SyncId, PhotoBytes> = BTreeMap::new();
        // A directory user's photo by each of the user's addresses: a person both sources know (one contact under
        // the mirror's sync id, see `directory::combine`) takes the directory's photo, as it takes its fields.
        let mut directory_photos = BTreeMap::new();
        for list in from.lists {
            for person in &list.persons {
                if let Some(photo) = list.photos.get(&person.sync_id) {
                    for key in shared::sync::normalize::email_keys(&person.fields) {
                        directory_photos.entry(key).or_insert(photo);
                    }
                }
            }
        }
        // The mirror's persons first; the directory's entries, which never share a sync id with a central one, come
        // after.
        if let Some((central, contacts)) = from.central {
            for contact in contacts.contacts() {
                // The directory's own entries in a combined list are not central contacts.
                if contact.id.starts_with("directory:") {
                    continue;
                }
                let Some(sync_id) = sync::effective_sync_id(contact) else {
                    continue;
                };
                let name = contact.fields.display_name.as_deref().unwrap_or_default();
                names.insert(sync_id.clone(), name.to_owned());
                let merged = shared::sync::normalize::email_keys(&contact.fields)
                    .iter()
                    .find_map(|key| directory_photos.get(key).copied());
                if let Some(photo) = merged {
                    sources.insert(sync_id.clone(), photo.source.clone());
                    bytes.insert(sync_id, PhotoBytes::Loaded(photo.bytes.clone()));
                } else if let Some(hash) = &contact.photo_hash {
                    sources.insert(sync_id.clone(), SourcePhoto::central(hash.clone()));
                    let read = CentralPhotoRead {
                        cache: self.central_photos.clone(),
                        tenant: job.tenant_id.clone(),
                        run: job.run_id,
                        mailbox: central.mailbox.id.clone(),
                        folder: central.folder_id.clone(),
                        contact_id: contact.id.clone(),
                    };
                    bytes.insert(sync_id, PhotoBytes::Central(read));
                }
            }
        }
        for list in from.lists {
            for person in &list.persons {
                let name = person
                    .user_principal_name
                    .clone()
                    .unwrap_or_else(|| person.object_id.clone());
                names.insert(person.sync_id.clone(), name);
            }
            for (sync_id, photo) in &list.photos {
                sources.insert(sync_id.clone(), photo.source.clone());
                bytes.insert(sync_id.clone(), PhotoBytes::Loaded(photo.bytes.clone()));
            }
        }
        let mut copies = BTreeMap::new();
        // Judged as the plan judged them (`identity::ownership_among`, phase 2's rule): an owner's contact stamped
        // under a UPN since renamed carries the property but is the owner's, and a photo never goes onto it.
        let creators = identity::creators_of(from.persons);
        for contact in target {
            let Some(sync_id) = contact.sync_id_property.as_deref().and_then(SyncId::parse) else {
                continue;
            };
            let managed = identity::ownership_among(&tenant.tenant_id, mailbox, contact, &creators)
                == Ownership::ManagedCopy;
            if !managed || !names.contains_key(&sync_id) || done.deleted.contains(&contact.id) {
                continue;
            }
            copies.entry(sync_id).or_insert_with(|| CopyPhoto {
                contact_id: contact.id.clone(),
                hash: contact.photo_hash.clone(),
            });
        }
        for (sync_id, id) in &done.created_ids {
            if names.contains_key(sync_id) {
                copies.insert(
                    sync_id.clone(),
                    CopyPhoto {
                        contact_id: id.clone(),
                        hash: None,
                    },
                );
            }
        }
        let steps = photo::plan_photos(&sources, &copies);
        let mut out = Done::default();
        let mut sending = Vec::new();
        for step in steps {
            let name = names.get(&step.sync_id).cloned().unwrap_or_default();
            match step.action {
                PhotoAction::TooLarge { size } => out.photos.skipped.push(format!(
                    "photo of {name} not sent: {size} bytes is over Graph's 4 MB request limit"
                )),
                PhotoAction::Send | PhotoAction::Remove => {
                    let send = match step.action {
                        PhotoAction::Send => bytes.get(&step.sync_id).cloned(),
                        _ => None,
                    };
                    let hash = sources.get(&step.sync_id).map(|s| s.hash.clone());
                    let (client, mailbox_id, folder) =
                        (client.clone(), mailbox.id.clone(), folder.clone());
                    let id = step.contact_id.clone();
                    sending.push((
                        name,
                        writes.spawn(async move {
                            let stored = match send {
                                Some(photo) => {
                                    // A central photo gone since the folder was read: nothing to send now.
                                    let Some(photo) = photo.get(&client).await? else {
                                        return Ok(None);
                                    };
                                    client
                                        .put_contact_photo(&mailbox_id, &folder, &id, &photo)
                                        .await?;
                                    let stored = client
                                        .set_photo_hash(
                                            &mailbox_id,
                                            &folder,
                                            &id,
                                            hash.as_ref(),
                                            None,
                                        )
                                        .await?;
                                    (true, stored)
                                }
                                None => {
                                    client
                                        .delete_contact_photo(&mailbox_id, &folder, &id)
                                        .await?;
                                    let stored = client
                                        .set_photo_hash(&mailbox_id, &folder, &id, None, None)
                                        .await?;
                                    (false, stored)
                                }
                            };
                            Ok::<_, GraphError>(Some(stored))
                        }),
                    ));
                }
                PhotoAction::Keep => {}
            }
        }
        let mut first_transient = None;
        for (name, task) in sending {
            let answered = joined(task.await, &format!("writing photos to {}", mailbox.upn))?;
            match answered {
                Ok(None) => {}
                Ok(Some((sent, stored))) => {
                    if sent {
                        out.photos.sent += 1;
                    } else {
                        out.photos.removed += 1;
                    }
                    out.written
                        .insert(stored.id.clone(), stored.change_key.clone());
                }
                Err(error) => {
                    photo_write_failed(&mut out, &mut first_transient, mailbox, &name, &error)
                }
            }
        }
        photos_done(out, first_transient, mailbox, "photos")
    }
}

/// Where phase 2's photos come from: the directories' users (their bytes loaded with the persons) and the central
/// folder with the list the mailbox was planned against (its central contacts' `PhotoHash`).
pub(super) struct PhotoSources<'a> {
    pub(super) lists: &'a [Arc<Selected>],
    pub(super) central: Option<(&'a CentralFolder, &'a PreparedCentral)>,
    /// The persons the mailbox was planned against: their `CreatedBy` tells an owner's stamped contact from a copy,
    /// as the plan judged it.
    pub(super) persons: &'a [Contact],
}

/// A photo to send: loaded already (a directory user's), or a central contact's, read once per worker and run.
#[derive(Clone)]
enum PhotoBytes {
    Loaded(Arc<Vec<u8>>),
    Central(CentralPhotoRead),
}

/// How to read a central contact's photo through the worker's cache.
#[derive(Clone)]
struct CentralPhotoRead {
    cache: Arc<CentralPhotos>,
    tenant: String,
    run: uuid::Uuid,
    mailbox: String,
    folder: Option<String>,
    contact_id: String,
}

impl PhotoBytes {
    /// The bytes; `None` when a central contact has no photo any more.
    async fn get(self, client: &TenantClient) -> Result<Option<Arc<Vec<u8>>>, GraphError> {
        match self {
            PhotoBytes::Loaded(bytes) => Ok(Some(bytes)),
            PhotoBytes::Central(read) => {
                let folder = match &read.folder {
                    Some(id) => FolderRef::Id(id.clone()),
                    None => FolderRef::Default,
                };
                read.cache
                    .get_or_read(
                        &read.tenant,
                        read.run,
                        read.folder.as_deref(),
                        &read.contact_id,
                        || client.contact_photo(&read.mailbox, &folder, &read.contact_id),
                    )
                    .await
            }
        }
    }
}

/// Files a failed photo write of `name` in `out`: a transient failure is kept in `transient` (the first one fails
/// the job once the others are answered), Graph's 413 is a photo skipped and reported (its request size limit,
/// should it be lower than ours: not a failure), anything else a refused write.
pub(super) fn photo_write_failed(
    out: &mut Done,
    transient: &mut Option<AttemptResult>,
    mailbox: &Mailbox,
    name: &str,
    error: &GraphError,
) {
    match classify(error, &format!("writing photos to {}", mailbox.upn)) {
        failed @ AttemptResult::Transient { .. } => {
            transient.get_or_insert(failed);
        }
        _ if error.status() == Some(413) => out.photos.skipped.push(format!(
            "photo of {name} not sent: Graph refused it as too large (413)"
        )),
        _ => {
            debug!(mailbox = %mailbox.upn, %error, "photo write refused");
            out.failed_writes += 1;
        }
    }
}

/// What a job's photo writes (`what`: the central folder's or the copies') come to: `out`, or the first transient
/// failure among them.
pub(super) fn photos_done(
    out: Done,
    transient: Option<AttemptResult>,
    mailbox: &Mailbox,
    what: &str,
) -> Result<Done, AttemptResult> {
    if let Some(transient) = transient {
        return Err(transient);
    }
    debug!(mailbox = %mailbox.upn, sent = out.photos.sent, removed = out.photos.removed,
           skipped = out.photos.skipped.len(), "{what}");
    Ok(out)
}
