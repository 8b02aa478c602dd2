//! The folders a job reads and writes, and their change feeds: finding (or creating) a named folder, checking a
//! folder's feed before reading, and the feed a job leaves after its own writes. Kept apart from the steps because
//! phase 1, phase 2 and cleanup share them.

use shared::feed::{self, Check, DeltaLink, FolderFeed, Generation};
use shared::graph::{ErrorKind, FolderRef, GraphError, TenantClient, DELTA_PAGE_ITEMS};
use shared::message::{FolderChoice, Job};
use shared::model::Mailbox;
use tracing::{debug, info};

use super::{classify, Done};
use crate::disposition::AttemptResult;

/// Where a folder's feed stands after checking it.
pub(super) struct FeedCheck {
    pub(super) check: Check,
    /// `None` only when the folder does not exist yet (a dry run before the central folder is created).
    pub(super) link: Option<DeltaLink>,
}

/// The folder `choice` names in `mailbox`: the default Contacts folder, or the top-level folder of that name,
/// created when `create` (never in a dry run); `None` when it does not exist and is not created.
pub(super) async fn find_folder(
    client: &TenantClient,
    job: &Job,
    mailbox: &Mailbox,
    choice: &FolderChoice,
    create: bool,
) -> Result<Option<FolderRef>, AttemptResult> {
    let FolderChoice::Named(name) = choice else {
        return Ok(Some(FolderRef::Default));
    };
    let doing = format!("finding the folder {name:?} of {}", mailbox.upn);
    let found = if create && !job.dry_run {
        client
            .ensure_top_level_folder(&mailbox.id, name)
            .await
            .map(Some)
    } else {
        client.find_top_level_folder(&mailbox.id, name).await
    }
    .map_err(|e| classify(&e, &doing))?;
    Ok(found.map(|folder| FolderRef::Id(folder.id)))
}

/// A receiving mailbox's kept feed checked by its own phase-2 job (no phase 1 did): the feed moved to now, still
/// in line only if it shows no change; `None` when the link is not usable any more (Graph no longer knows it, or
/// the folder it follows is gone), which means a full read and a new feed.
pub(super) async fn check_kept(
    client: &TenantClient,
    mailbox: &Mailbox,
    prior: &FolderFeed,
) -> Result<Option<FolderFeed>, AttemptResult> {
    match client.delta_since(&mailbox.id, &prior.link).await {
        Ok(round) if prior.still_as_left(&round.changes) => {
            Ok(Some(prior.moved_as_left(round.link)))
        }
        Ok(round) => Ok(Some(FolderFeed::at(round.link, None))),
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::InvalidDeltaToken | ErrorKind::ItemNotFound
            ) || matches!(error, GraphError::Protocol(_)) =>
        {
            info!(mailbox = %mailbox.upn, %error, "kept delta link not usable; reading the mailbox in full");
            Ok(None)
        }
        Err(error) => Err(classify(
            &error,
            &format!("checking contacts of {}", mailbox.upn),
        )),
    }
}

/// Checks a folder's feed: what changed since `prior`, or, without a usable link, a new feed (and so
/// [`Check::Unknown`]). A link Graph no longer knows, or one that points elsewhere, is dropped, not an error.
/// When the producer keeps no feeds (`tracked` false) nothing is sent and nothing is known.
pub(super) async fn check_feed(
    client: &TenantClient,
    mailbox: &Mailbox,
    folder: &FolderRef,
    tracked: bool,
    prior: Option<&FolderFeed>,
) -> Result<FeedCheck, GraphError> {
    if !tracked {
        return Ok(FeedCheck {
            check: Check::Unknown,
            link: None,
        });
    }
    if let Some(prior) = prior {
        match client.delta_since(&mailbox.id, &prior.link).await {
            Ok(round) => {
                let check = if prior.still_as_left(&round.changes) {
                    Check::Unchanged
                } else {
                    Check::Changed
                };
                return Ok(FeedCheck {
                    check,
                    link: Some(round.link),
                });
            }
            Err(error)
                if matches!(error.kind(), ErrorKind::InvalidDeltaToken)
                    || matches!(error, GraphError::Protocol(_)) =>
            {
                debug!(mailbox = %mailbox.upn, %error, "kept delta link not usable; starting a new feed");
            }
            Err(error) => return Err(error),
        }
    }
    let round = client.delta_start(&mailbox.id, folder).await?;
    Ok(FeedCheck {
        check: Check::Unknown,
        link: Some(round.link),
    })
}

/// The feed a job leaves after writing to the folder; `in_line_with` is what the folder holds once its writes
/// are in. Writes that fit in one page of the next run's check stay after the link as a fingerprint that check
/// recognises (see [`feed::OwnWrites`]): no request now, and the check costs its one request anyway. More than
/// that would add pages to the next run's check, so the feed is moved past them now, with one round that must
/// show exactly them; a round showing anything else leaves it where it was (the next run reads the folder again,
/// which is always safe).
pub(super) async fn feed_after_writes(
    client: &TenantClient,
    mailbox: &Mailbox,
    before: DeltaLink,
    in_line_with: Option<Generation>,
    done: &Done,
) -> FolderFeed {
    let writes = done.written.len() + done.deleted.len();
    let Some(own) = feed::OwnWrites::of(&done.written, &done.deleted) else {
        // Nothing written, or a write Graph answered without a change key: the next check decides.
        return FolderFeed::at(before, in_line_with);
    };
    if writes < DELTA_PAGE_ITEMS {
        return FolderFeed {
            own_writes: Some(own),
            ..FolderFeed::at(before, in_line_with)
        };
    }
    // Checked item by item as the round goes by: a round as long as the writes is never held.
    let mut check = feed::OwnWritesCheck::new(&done.written, &done.deleted);
    match client
        .delta_since_checked(&mailbox.id, &before, &mut check)
        .await
    {
        Ok(link) if check.only_own() => FolderFeed::at(link, in_line_with),
        Ok(_) => {
            debug!(mailbox = %mailbox.upn, "changed by someone else meanwhile; the next run reads it again");
            FolderFeed::at(before, in_line_with)
        }
        Err(error) => {
            debug!(mailbox = %mailbox.upn, %error, "could not move the feed past this run's writes; the next run reads it again");
            FolderFeed::at(before, in_line_with)
        }
    }
}
