//! Photos on managed copies (issue 14): which copy needs its photo sent, removed, or nothing. Pure, no I/O.
//!
//! A photo is sent only when it changed: every copy carries the content hash of the photo the tool last put on
//! it in [`PHOTO_HASH_PROPERTY`] (a single-value extended property, like the sync id), read with the contacts at
//! no extra request. Comparing it with the source photo's hash decides everything, so a re-run where no photo
//! changed costs no photo request on any mailbox. A photo larger than Graph's 4 MB request limit is never sent
//! (the copy keeps whatever it has; the report names it). Graph cannot remove an extended property: after a
//! removal the property holds an empty value, which reads as "no photo", like the cleanup's emptied sync id.
//!
//! Mirrored persons (phase 1, [`plan_central_photos`]): a person's photo is its *origin*'s, the user's own contact
//! the person was first published from (its sync id is derived from it), so no grouping of sources is needed.
//! Exchange keeps a contact's photo as an attachment of the item: putting or removing one changes the item's
//! change key and its `PidLidHasPicture` ([`HAS_PICTURE_PROPERTY`]), both read with the contact list at no extra
//! request. The central contact keeps, beside its [`PHOTO_HASH_PROPERTY`], the origin's change key at which the
//! photo was last read ([`PHOTO_SOURCE_PROPERTY`]): an origin whose change key did not move since is not read
//! again, one without a picture is never read, and the central contact's hash is then what phase 2 compares each
//! copy's with, exactly as for directory users.

use std::collections::BTreeMap;
use std::fmt;

use super::SyncId;

/// The extended property holding the hash of the photo the tool put on a copy (same property set as the sync id).
pub const PHOTO_HASH_PROPERTY: &str =
    "String {5f3c1a2e-8b7d-4c6e-9a1f-2d4b6c8e0a13} Name PhotoHash";

/// The central contact's record of its origin's change key when the tool last read the origin's photo (same
/// property set as the sync id). Emptied or absent: the origin's photo is read on the next pass.
pub const PHOTO_SOURCE_PROPERTY: &str =
    "String {5f3c1a2e-8b7d-4c6e-9a1f-2d4b6c8e0a13} Name PhotoSource";

/// MAPI's `PidLidHasPicture` (`dispidHasPicture`, PSETID_Address, LID 0x8015, PT_BOOLEAN): "true" when the
/// contact's attachment table holds its photo. Exchange sets it with the photo; the tool only reads it.
pub const HAS_PICTURE_PROPERTY: &str = "Boolean {00062004-0000-0000-C000-000000000046} Id 0x8015";

/// Graph's request size limit: a photo body larger than this is refused (4 MB).
pub const MAX_PHOTO_BYTES: usize = 4 * 1024 * 1024;

/// The SHA-256 of a photo's bytes, as 64 lowercase hex digits: what [`PHOTO_HASH_PROPERTY`] holds.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct PhotoHash(String);

impl PhotoHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        Self(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The hash a copy's property holds, if it is one (an empty or foreign value is none: the copy is treated
    /// as holding no photo of the tool's).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(value.to_ascii_lowercase()))
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhotoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A source's photo as the decision needs it: its hash and size (the bytes stay with the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePhoto {
    /// [`PhotoHash::of`] its bytes.
    pub hash: PhotoHash,
    /// Its size in bytes.
    pub size: usize,
}

impl SourcePhoto {
    /// The photo of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hash: PhotoHash::of(bytes),
            size: bytes.len(),
        }
    }

    /// The photo the tool put on a central contact, known by the hash it recorded there (its bytes are read only
    /// when a copy needs them). Phase 1 never puts one over [`MAX_PHOTO_BYTES`], so it is never too large.
    pub fn central(hash: PhotoHash) -> Self {
        Self { hash, size: 0 }
    }
}

/// What one copy's photo needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhotoAction {
    /// Nothing: the copy holds the source's photo, or neither has one.
    Keep,
    /// Put the source's photo on the copy, then its hash in the property.
    Send,
    /// Remove the copy's photo (gone at the source), then empty the property.
    Remove,
    /// The source's photo is over [`MAX_PHOTO_BYTES`]: not sent, the copy left as it is, reported.
    TooLarge {
        /// The photo's size.
        size: usize,
    },
}

/// What a copy whose property holds `copy` needs when its source has `source`.
pub fn decide(source: Option<&SourcePhoto>, copy: Option<&PhotoHash>) -> PhotoAction {
    match (source, copy) {
        (Some(source), Some(copy)) if source.hash == *copy => PhotoAction::Keep,
        (Some(source), _) if source.size > MAX_PHOTO_BYTES => {
            PhotoAction::TooLarge { size: source.size }
        }
        (Some(_), _) => PhotoAction::Send,
        (None, Some(_)) => PhotoAction::Remove,
        (None, None) => PhotoAction::Keep,
    }
}

/// A managed copy in a mailbox, as far as photos go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPhoto {
    /// The copy's Graph id.
    pub contact_id: String,
    /// What its [`PHOTO_HASH_PROPERTY`] holds.
    pub hash: Option<PhotoHash>,
}

/// One photo write the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoStep {
    /// The person whose copy it is.
    pub sync_id: SyncId,
    /// The copy.
    pub contact_id: String,
    /// [`PhotoAction::Send`], [`PhotoAction::Remove`] or [`PhotoAction::TooLarge`] (never `Keep`).
    pub action: PhotoAction,
}

/// The photo steps of one mailbox: for every person with a managed copy there (`copies`, by sync id), what its
/// photo needs given the person's source photo (`sources`; a person absent there has none). Persons without a
/// copy get nothing (their copy is created first, then planned on the next pass with its id). In sync id order.
pub fn plan_photos(
    sources: &BTreeMap<SyncId, SourcePhoto>,
    copies: &BTreeMap<SyncId, CopyPhoto>,
) -> Vec<PhotoStep> {
    copies
        .iter()
        .filter_map(|(sync_id, copy)| {
            let action = decide(sources.get(sync_id), copy.hash.as_ref());
            (action != PhotoAction::Keep).then(|| PhotoStep {
                sync_id: sync_id.clone(),
                contact_id: copy.contact_id.clone(),
                action,
            })
        })
        .collect()
}

/// The hash a copy holds once `step` was applied (what the next run reads in its property).
pub fn after(
    step: &PhotoStep,
    source: Option<&SourcePhoto>,
    before: Option<&PhotoHash>,
) -> Option<PhotoHash> {
    match step.action {
        PhotoAction::Send => source.map(|s| s.hash.clone()),
        PhotoAction::Remove => None,
        PhotoAction::TooLarge { .. } | PhotoAction::Keep => before.cloned(),
    }
}

/// What phase 1 saw of a person's origin (the user's own contact its sync id is derived from) in this run's read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPhoto {
    /// The user's mailbox (its own budget pays for the read).
    pub mailbox_id: String,
    /// The contact.
    pub contact_id: String,
    /// Its change key as listed; a photo put or removed moves it.
    pub change_key: Option<String>,
    /// Its `PidLidHasPicture`.
    pub has_picture: bool,
}

/// A central person's contact, as far as photos go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralPhoto {
    /// The central contact's Graph id.
    pub contact_id: String,
    /// Its [`PHOTO_HASH_PROPERTY`]: the photo the tool put there.
    pub hash: Option<PhotoHash>,
    /// Its [`PHOTO_SOURCE_PROPERTY`]: the origin's change key when its photo was last read.
    pub source: Option<String>,
}

/// What a central contact's photo needs before anything is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginCheck {
    /// Nothing: the origin did not change since its photo was read, or neither has a photo.
    Keep,
    /// Read the origin's photo, then [`decide`] against the central hash (and record the change key read at).
    Read,
    /// The origin has no photo any more: remove the central one (and record the change key).
    Remove,
}

/// What the central contact `central` needs given its person's `origin` as read now.
pub fn check_origin(origin: &OriginPhoto, central: &CentralPhoto) -> OriginCheck {
    if !origin.has_picture {
        return if central.hash.is_some() {
            OriginCheck::Remove
        } else {
            OriginCheck::Keep
        };
    }
    match (&origin.change_key, &central.source) {
        (Some(now), Some(read_at)) if now == read_at => OriginCheck::Keep,
        _ => OriginCheck::Read,
    }
}

/// One central photo step: read (or remove) for one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CentralPhotoStep {
    /// The person.
    pub sync_id: SyncId,
    /// The central contact as read (or created by this run: no hash, no source).
    pub central: CentralPhoto,
    /// The person's origin as read now.
    pub origin: OriginPhoto,
    /// [`OriginCheck::Read`] or [`OriginCheck::Remove`] (never `Keep`).
    pub check: OriginCheck,
}

/// The central photo steps of phase 1: for every central person whose origin this run read (`origins`, by sync
/// id; a person whose origin was not read, because its mailbox failed or the contact is gone, keeps what it has),
/// what [`check_origin`] asks for. In sync id order.
pub fn plan_central_photos(
    origins: &BTreeMap<SyncId, OriginPhoto>,
    central: &BTreeMap<SyncId, CentralPhoto>,
) -> Vec<CentralPhotoStep> {
    central
        .iter()
        .filter_map(|(sync_id, contact)| {
            let origin = origins.get(sync_id)?;
            let check = check_origin(origin, contact);
            (check != OriginCheck::Keep).then(|| CentralPhotoStep {
                sync_id: sync_id.clone(),
                central: contact.clone(),
                origin: origin.clone(),
                check,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> SyncId {
        SyncId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02x}")).expect("uuid")
    }

    #[test]
    fn hashes_are_sha256_hex_and_parse_back() {
        let hash = PhotoHash::of(b"abc");
        assert_eq!(
            hash.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(PhotoHash::parse(&hash.as_str().to_uppercase()), Some(hash));
        assert_eq!(
            PhotoHash::parse(""),
            None,
            "an emptied property is no photo"
        );
        assert_eq!(PhotoHash::parse("not a hash"), None);
    }

    #[test]
    fn each_case_of_the_decision() {
        let small = SourcePhoto::of(b"small photo");
        let big = SourcePhoto {
            hash: PhotoHash::of(b"big"),
            size: MAX_PHOTO_BYTES + 1,
        };
        let other = PhotoHash::of(b"older photo");
        assert_eq!(decide(None, None), PhotoAction::Keep);
        assert_eq!(decide(Some(&small), Some(&small.hash)), PhotoAction::Keep);
        assert_eq!(decide(Some(&small), None), PhotoAction::Send);
        assert_eq!(decide(Some(&small), Some(&other)), PhotoAction::Send);
        assert_eq!(decide(None, Some(&other)), PhotoAction::Remove);
        assert_eq!(
            decide(Some(&big), Some(&other)),
            PhotoAction::TooLarge {
                size: MAX_PHOTO_BYTES + 1
            }
        );
        let exactly = SourcePhoto {
            hash: PhotoHash::of(b"limit"),
            size: MAX_PHOTO_BYTES,
        };
        assert_eq!(decide(Some(&exactly), None), PhotoAction::Send);
    }

    fn source() -> impl Strategy<Value = Option<SourcePhoto>> {
        prop_oneof![
            Just(None),
            (
                0u8..4,
                prop_oneof![1usize..1_000, Just(MAX_PHOTO_BYTES + 10)]
            )
                .prop_map(|(n, size)| {
                    Some(SourcePhoto {
                        hash: PhotoHash::of(&[n]),
                        size,
                    })
                }),
        ]
    }

    fn copy_hash() -> impl Strategy<Value = Option<PhotoHash>> {
        prop_oneof![Just(None), (0u8..4).prop_map(|n| Some(PhotoHash::of(&[n])))]
    }

    proptest! {
        /// Applying the plan settles it: a second plan over what the first left asks only for what cannot be
        /// sent (too large); nothing is ever sent twice, nothing sent that is too large, and a copy whose hash
        /// equals its source's is never touched.
        #[test]
        fn a_plan_applied_settles_and_never_sends_what_is_too_large(
            people in proptest::collection::vec((source(), proptest::option::of(copy_hash())), 0..12)
        ) {
            let mut sources = BTreeMap::new();
            let mut copies = BTreeMap::new();
            for (n, (photo, copy)) in people.iter().enumerate() {
                let sync_id = id(u8::try_from(n).expect("small"));
                if let Some(photo) = photo {
                    sources.insert(sync_id.clone(), photo.clone());
                }
                if let Some(hash) = copy {
                    copies.insert(sync_id, CopyPhoto { contact_id: format!("c{n}"), hash: hash.clone() });
                }
            }
            let steps = plan_photos(&sources, &copies);
            let mut settled = copies.clone();
            for step in &steps {
                prop_assert!(copies.contains_key(&step.sync_id), "a step for a person without a copy");
                let source = sources.get(&step.sync_id);
                let before = copies[&step.sync_id].hash.as_ref();
                match &step.action {
                    PhotoAction::Send => {
                        let s = source.expect("sent from a source");
                        prop_assert!(s.size <= MAX_PHOTO_BYTES);
                        prop_assert_ne!(Some(&s.hash), before);
                    }
                    PhotoAction::Remove => prop_assert!(source.is_none() && before.is_some()),
                    PhotoAction::TooLarge { size } => prop_assert!(*size > MAX_PHOTO_BYTES),
                    PhotoAction::Keep => prop_assert!(false, "Keep is never a step"),
                }
                if let Some(copy) = settled.get_mut(&step.sync_id) {
                    copy.hash = after(step, source, before);
                }
            }
            for (sync_id, copy) in &copies {
                if sources.get(sync_id).map(|s| &s.hash) == copy.hash.as_ref() {
                    prop_assert!(steps.iter().all(|s| &s.sync_id != sync_id));
                }
            }
            let again = plan_photos(&sources, &settled);
            prop_assert!(again.iter().all(|s| matches!(s.action, PhotoAction::TooLarge { .. })), "{again:?}");
        }

        /// Phase 1's central photos: an origin never changed since its photo was read is never read again, one
        /// without a picture never read at all; applying the steps as the worker does (read, [`decide`], record
        /// the change key) leaves the central hash equal to the origin's photo (unless too large) and the next
        /// plan empty: a re-run with no photo change reads and writes no photo.
        #[test]
        fn central_photos_follow_their_origin_and_settle(
            people in proptest::collection::vec(
                (source(), 0u8..3, copy_hash(), proptest::option::of(0u8..3), any::<bool>()),
                0..12,
            )
        ) {
            let mut origins = BTreeMap::new();
            let mut central = BTreeMap::new();
            let mut photos = BTreeMap::new();
            for (n, (photo, key, hash, source, read)) in people.iter().enumerate() {
                let sync_id = id(u8::try_from(n).expect("small"));
                central.insert(sync_id.clone(), CentralPhoto {
                    contact_id: format!("c{n}"),
                    hash: hash.clone(),
                    source: source.map(|k| format!("ck{k}")),
                });
                if *read {
                    origins.insert(sync_id.clone(), OriginPhoto {
                        mailbox_id: "m".into(),
                        contact_id: format!("o{n}"),
                        change_key: Some(format!("ck{key}")),
                        has_picture: photo.is_some(),
                    });
                }
                photos.insert(sync_id, photo.clone());
            }
            let steps = plan_central_photos(&origins, &central);
            let mut settled = central.clone();
            for step in &steps {
                let origin = &origins[&step.sync_id];
                prop_assert!(step.check != OriginCheck::Keep);
                if step.check == OriginCheck::Read {
                    prop_assert!(origin.has_picture, "an origin without a picture is never read");
                    prop_assert_ne!(origin.change_key.as_ref(), step.central.source.as_ref());
                }
                let photo = photos[&step.sync_id].as_ref();
                let after = match step.check {
                    OriginCheck::Read => {
                        let action = decide(photo, step.central.hash.as_ref());
                        let as_step = PhotoStep {
                            sync_id: step.sync_id.clone(),
                            contact_id: step.central.contact_id.clone(),
                            action,
                        };
                        super::after(&as_step, photo, step.central.hash.as_ref())
                    }
                    _ => None,
                };
                let contact = settled.get_mut(&step.sync_id).expect("central");
                contact.hash = after;
                contact.source = origin.change_key.clone();
            }
            for (sync_id, contact) in &settled {
                let Some(photo) = photos.get(sync_id).filter(|_| origins.contains_key(sync_id)) else {
                    prop_assert_eq!(contact, &central[sync_id], "an origin not read changes nothing");
                    continue;
                };
                let stepped = steps.iter().any(|s| &s.sync_id == sync_id);
                match photo {
                    Some(p) if stepped && p.size <= MAX_PHOTO_BYTES => {
                        prop_assert_eq!(contact.hash.as_ref(), Some(&p.hash));
                    }
                    None => prop_assert_eq!(contact.hash.as_ref(), None),
                    _ => {}
                }
            }
            prop_assert!(plan_central_photos(&origins, &settled).is_empty());
        }
    }
}
