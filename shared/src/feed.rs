//! Change feeds between runs: what the producer remembers of each folder so that a run can skip what did not
//! change, and the pure rules that decide when skipping is safe.
//!
//! A sync that re-reads every folder costs at least one request per 1,000 contacts per mailbox and run, even when
//! nothing changed. Graph's per-folder contact delta answers "did anything change since this link?" in one
//! request. Workers stay stateless: the producer keeps the links in its state store (`producer/src/state.rs`),
//! puts them into jobs as [`Cursors`], and takes the advanced ones back from reports.
//!
//! Delta is used as a change detector, never as the source of contacts: a full read (with the sync id property
//! expanded) still feeds every plan, so a skipped folder is one whose full read would have planned nothing. The
//! rules below are the only place that decides when that holds; each errs towards a full read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Graph's opaque `@odata.deltaLink` for one folder: following it returns what changed since it was issued.
/// It holds no credential; the client still follows it only when it points at the tenant's Graph endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeltaLink(String);

impl DeltaLink {
    /// Wraps a link as Graph sent it.
    pub fn new(link: impl Into<String>) -> Self {
        Self(link.into())
    }

    /// The link, to be followed verbatim.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeltaLink {
    /// The token is long and meaningless to a reader: show where it points and how long it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.0.split('?').next().unwrap_or_default();
        write!(f, "DeltaLink({path}?… {} bytes)", self.0.len())
    }
}

/// A version of the central folder's content: it changes whenever phase 1 writes to the folder or sees it
/// changed by someone else. A mailbox brought in line with generation `g` needs nothing while `g` stands and the
/// mailbox itself has not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(Uuid);

/// Namespace of the generations derived from content ([`Generation::of_content`], [`Generation::combined`]).
const CONTENT_NAMESPACE: Uuid = Uuid::from_u128(0x3c9e_51a2_7d04_4f6b_9e18_b2c7_40d5_a961);

impl Generation {
    /// A new generation, different from every earlier one.
    pub fn fresh() -> Self {
        Self(Uuid::now_v7())
    }

    /// The generation of a content given by its canonical bytes: equal contents, equal generations, whoever
    /// computed them (the producer from its kept directory, a worker from its own read).
    pub fn of_content(bytes: &[u8]) -> Self {
        Self(Uuid::new_v5(&CONTENT_NAMESPACE, bytes))
    }

    /// What a receiving mailbox is brought in line with when the directory is one of its sources: the central
    /// generation (`None` without the mirror) and the directory's content together.
    pub fn combined(central: Option<Generation>, directory: Generation) -> Self {
        let central = central.map(|g| g.0).unwrap_or_default();
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(b"c");
        bytes.extend_from_slice(central.as_bytes());
        bytes.extend_from_slice(b"d");
        bytes.extend_from_slice(directory.0.as_bytes());
        Self::of_content(&bytes)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where one folder's change feed stands, and what is known to be true of the folder at that point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderFeed {
    /// Changes after this link are changes the tool has not seen.
    pub link: DeltaLink,
    /// For a user's folder: the central generation it was last brought in line with, if it has not changed since.
    /// For the central folder: the generation of its content at `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_line_with: Option<Generation>,
    /// The tool's own writes after `link`, which the next check recognises instead of a request moving the link
    /// past them now (see [`OwnWrites`]). Absent: every change after `link` is someone else's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_writes: Option<OwnWrites>,
    /// For a user's folder in line (`in_line_with`): when it was brought in line it held nothing but copies
    /// phase 1 does without (`sync::CentralKeys::is_inert` against the central folder of that generation), so
    /// while it stays unchanged and that generation stands, phase 1 need not read it ([`source_unread`]).
    /// Meaningless without `in_line_with`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_copies: bool,
}

impl FolderFeed {
    /// A feed at `link`, with nothing of the tool's own after it.
    pub fn at(link: DeltaLink, in_line_with: Option<Generation>) -> Self {
        Self {
            link,
            in_line_with,
            own_writes: None,
            only_copies: false,
        }
    }

    /// This feed, noting whether the folder holds nothing but copies phase 1 does without (kept only while the
    /// folder is in line).
    pub fn holding_only_copies(self, only_copies: bool) -> Self {
        Self {
            only_copies: only_copies && self.in_line_with.is_some(),
            ..self
        }
    }

    /// This feed moved to `link` by a round that showed no change but the tool's own writes
    /// ([`FolderFeed::still_as_left`]): what was true of the folder still is.
    pub fn moved_as_left(&self, link: DeltaLink) -> Self {
        Self::at(link, self.in_line_with).holding_only_copies(self.only_copies)
    }

    /// Whether a round following `link` shows no change but the tool's own writes: what was true of the folder
    /// (`in_line_with`) still is.
    pub fn still_as_left(&self, seen: &Changes) -> bool {
        let nothing = seen.changed.is_empty() && seen.removed.is_empty();
        nothing || self.own_writes.is_some_and(|own| own.are(seen))
    }
}

/// A fingerprint of the items a job wrote to a folder after its feed's link: each created or updated item with the
/// change key its write returned, and each deleted item.
///
/// Why: moving a feed past a job's own writes cost one delta request per written folder and run (and a feed the
/// job could not move made the next run read the folder in full). Kept with the link instead, the next run's
/// check, which is sent anyway, recognises them: a round showing exactly these items, at exactly these change
/// keys, is the tool's own; any other item, key or removal is someone's change and means a full read, as before.
/// A fingerprint, not the list, so a feed stays a few dozen bytes in the producer's state and in every job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnWrites(Uuid);

/// Namespace of [`OwnWrites`] fingerprints.
const OWN_WRITES_NAMESPACE: Uuid = Uuid::from_u128(0x8f1d_2b6e_5a43_4c97_b0e2_71c8_d93a_4e15);

impl OwnWrites {
    /// The fingerprint of a job's writes; `None` when there were none, or when a written item's change key is
    /// unknown (such an item can never be proved the job's own).
    pub fn of(written: &Written, deleted: &BTreeSet<String>) -> Option<Self> {
        if written.is_empty() && deleted.is_empty() {
            return None;
        }
        let written = written
            .iter()
            .map(|(id, key)| Some((id.as_str(), key.as_deref()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self::fingerprint(written, deleted))
    }

    /// Whether `seen` shows exactly these writes.
    pub fn are(&self, seen: &Changes) -> bool {
        let changed = seen
            .changed
            .iter()
            .map(|id| Some((id.as_str(), seen.change_keys.get(id)?.as_str())))
            .collect::<Option<Vec<_>>>();
        changed.is_some_and(|changed| Self::fingerprint(changed, &seen.removed) == *self)
    }

    /// Both sides list items in id order (`BTreeMap`, `BTreeSet`); lengths prefix every string, so no two lists
    /// give the same bytes.
    fn fingerprint<'a>(
        changed: impl IntoIterator<Item = (&'a str, &'a str)>,
        removed: &BTreeSet<String>,
    ) -> Self {
        let mut bytes = Vec::new();
        let mut put = |tag: u8, text: &str| {
            bytes.push(tag);
            bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        };
        for (id, key) in changed {
            put(b'c', id);
            put(b'k', key);
        }
        for id in removed {
            put(b'r', id);
        }
        Self(Uuid::new_v5(&OWN_WRITES_NAMESPACE, &bytes))
    }
}

/// Tells, item by item as a delta round goes by, whether the round shows exactly a job's own writes (`written` at
/// the change keys their answers carried, `deleted` removed): what [`OwnWrites::are`] tells of a whole round,
/// without holding the round. Why: a job moving its feed past 100,000 writes held the round's 100,000 ids twice
/// (about 40 MB) beside its own records, while the next job planned beside it (the 100,000-contact benchmark's
/// peak). As in a round read whole, Graph may replay an item and the last word about it counts.
#[derive(Debug)]
pub struct OwnWritesCheck<'a> {
    written: &'a Written,
    deleted: &'a BTreeSet<String>,
    /// The last word seen about each of the job's items: whether it leaves the item as the job did.
    last: BTreeMap<&'a str, bool>,
    /// An item the job neither wrote nor deleted showed up: someone else changed the folder.
    foreign: bool,
}

impl<'a> OwnWritesCheck<'a> {
    /// A check for a round after a job wrote `written` and deleted `deleted`.
    pub fn new(written: &'a Written, deleted: &'a BTreeSet<String>) -> Self {
        Self {
            written,
            deleted,
            last: BTreeMap::new(),
            foreign: false,
        }
    }

    /// The round showed item `id`, removed or changed (at `change_key`).
    pub fn saw(&mut self, id: &str, removed: bool, change_key: Option<&str>) {
        if let Some((own, key)) = self.written.get_key_value(id) {
            let as_left = !removed && key.is_some() && key.as_deref() == change_key;
            self.last.insert(own.as_str(), as_left);
        } else if let Some(own) = self.deleted.get(id) {
            self.last.insert(own.as_str(), removed);
        } else {
            self.foreign = true;
        }
    }

    /// Whether the round showed exactly the job's writes: each item, last as the job left it, and nothing else.
    pub fn only_own(&self) -> bool {
        !self.foreign
            && self.last.len() == self.written.len() + self.deleted.len()
            && self.last.values().all(|&as_left| as_left)
    }
}

/// The feeds a job starts from (from the producer) or ends with (in its report). Empty on a first run or
/// without a state store, which means full reads everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursors {
    /// The producer keeps feeds between runs: check and report them. Without it a job reads in full and sends no
    /// delta request at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tracked: bool,
    /// The central folder's feed (phase 1 jobs and reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub central: Option<FolderFeed>,
    /// The central generation phase 1 of this run left (phase 2 jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub central_generation: Option<Generation>,
    /// The content of the tenant's selected directory as the producer read it in this run (phase 2 jobs of a
    /// tenant distributing its directory; see [`Generation::of_content`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_generation: Option<Generation>,
    /// Default contacts folders by mailbox id: the sources (phase 1) or the target (phase 2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mailboxes: BTreeMap<String, FolderFeed>,
}

impl Cursors {
    /// The cursors a phase-2 job reports: its mailbox's feed.
    pub fn of_mailbox(mailbox_id: &str, feed: FolderFeed) -> Self {
        Self {
            tracked: true,
            mailboxes: [(mailbox_id.to_owned(), feed)].into(),
            ..Self::default()
        }
    }

    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        !self.tracked
            && self.central.is_none()
            && self.central_generation.is_none()
            && self.directory_generation.is_none()
            && self.mailboxes.is_empty()
    }
}

/// What checking a folder's feed found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The feed shows no change since the link.
    Unchanged,
    /// The feed shows changes.
    Changed,
    /// There was no usable link (none kept, or Graph no longer knows it): anything may have changed.
    Unknown,
}

/// One source mailbox of a phase-1 job, as its check found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceCheck {
    /// Its feed could be read.
    Read(Check),
    /// It cannot be read at all (no mailbox, access denied): a permanent failure of this source.
    Unreadable {
        /// Whether it contributed to the central folder last time (it had a feed).
        had_feed: bool,
    },
}

/// Phase 1 needs no read and no plan when the central folder's content is known and unchanged, and every source
/// is as it was when that content was made: unchanged if it contributed, still unreadable if it did not. Returns
/// the generation that stands.
///
/// The producer passes the central feed only when the set of sources is the one that generation was made from
/// (`producer/src/state.rs`), so a user who left is never silently kept.
pub fn phase1_skip(
    central: Check,
    generation: Option<Generation>,
    sources: &[SourceCheck],
) -> Option<Generation> {
    let generation = generation?;
    let sources_as_before = sources.iter().all(|s| match s {
        SourceCheck::Read(check) => *check == Check::Unchanged,
        SourceCheck::Unreadable { had_feed } => !had_feed,
    });
    (central == Check::Unchanged && sources_as_before).then_some(generation)
}

/// Phase 1 need not read a source that, when last brought in line with the central generation that still stands,
/// held nothing but copies phase 1 does without, and shows no change since: its read would add nothing to the
/// plan (every contact dropped as inert), so the plan is the same without it. `feed` is the source's feed as this
/// run's check left it ([`FolderFeed::moved_as_left`] when unchanged); `central` and `generation` are the central
/// folder's check and the generation it stood at. Errs towards reading: any doubt reads.
///
/// Why it is safe: an inert contact is a copy equal to a person the central folder holds; the central folder is
/// as it was when the copies were made (unchanged, same generation), and the source is as the job that made them
/// left it (no change but its own writes), so every contact is still inert.
pub fn source_unread(
    central: Check,
    generation: Option<Generation>,
    source: Check,
    feed: Option<&FolderFeed>,
) -> bool {
    let Some(generation) = generation else {
        return false;
    };
    central == Check::Unchanged
        && source == Check::Unchanged
        && feed.is_some_and(|f| f.only_copies && f.in_line_with == Some(generation))
}

/// The central generation phase 1 leaves: the old one when it wrote nothing and the folder had not changed under
/// it, a fresh one otherwise.
pub fn next_generation(central: Check, previous: Option<Generation>, writes: usize) -> Generation {
    match previous {
        Some(g) if central == Check::Unchanged && writes == 0 => g,
        _ => Generation::fresh(),
    }
}

/// Phase 2 needs no read, no plan and no request for a mailbox brought in line with the generation that still
/// stands, when phase 1 of the same run found it unchanged (its feed comes from that check, which cleared
/// `in_line_with` on any change). A change made since that check is after the feed's link, so the next run's
/// phase 1 sees it: skipping never loses it.
pub fn phase2_skip(current: Option<Generation>, feed: &FolderFeed) -> bool {
    current.is_some() && current == feed.in_line_with
}

/// The cursors of a phase-2 job that skips its mailbox ([`phase2_skip`]): its feed where it stands, still in line
/// with `current`. `None`: the mailbox must be brought in line.
pub fn phase2_skipped(
    mailbox_id: &str,
    current: Option<Generation>,
    feed: &FolderFeed,
) -> Option<Cursors> {
    phase2_skip(current, feed)
        .then(|| Cursors::of_mailbox(mailbox_id, feed.moved_as_left(feed.link.clone())))
}

/// What a receiving mailbox's content must be in line with for phase 2 to skip it: the central generation when the
/// mirror is on, combined with the directory's content when the directory is on. `None` (never skip) when a needed
/// part is unknown, or when the mailbox receives nothing at all.
pub fn phase2_sources(
    mirror: bool,
    central: Option<Generation>,
    directory_on: bool,
    directory: Option<Generation>,
) -> Option<Generation> {
    let central = if mirror { Some(central?) } else { None };
    match (directory_on, central) {
        (false, central) => central,
        (true, central) => Some(Generation::combined(central, directory?)),
    }
}

/// What a folder's feed showed after the tool wrote to it: changed and removed item ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Created or updated items.
    pub changed: BTreeSet<String>,
    /// Deleted items.
    pub removed: BTreeSet<String>,
    /// The change key of each changed item, as the feed showed it (absent when Graph sent none).
    pub change_keys: BTreeMap<String, String>,
}

impl Changes {
    /// A delta round showed item `id`, removed or changed (at `change_key`). Graph may replay an item in one round;
    /// the last word about it wins.
    pub fn saw(&mut self, id: String, removed: bool, change_key: Option<String>) {
        if removed {
            self.changed.remove(&id);
            self.change_keys.remove(&id);
            self.removed.insert(id);
        } else {
            self.removed.remove(&id);
            match change_key {
                Some(key) => self.change_keys.insert(id.clone(), key),
                None => self.change_keys.remove(&id),
            };
            self.changed.insert(id);
        }
    }
}

/// The items a job created or updated: Graph id -> the change key the write's answer carried (`None` when the
/// answer had none: such an item can never be proved the job's own).
pub type Written = BTreeMap<String, Option<String>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    const CHECKS: [Check; 3] = [Check::Unchanged, Check::Changed, Check::Unknown];

    fn all_sources() -> Vec<SourceCheck> {
        let mut all: Vec<SourceCheck> = CHECKS.iter().map(|c| SourceCheck::Read(*c)).collect();
        all.push(SourceCheck::Unreadable { had_feed: true });
        all.push(SourceCheck::Unreadable { had_feed: false });
        all
    }

    #[test]
    fn phase1_skips_only_when_everything_is_as_the_generation_was_made() {
        let g = Generation::fresh();
        let all = all_sources();
        // Every central check, generation known or not, and every pair of source states.
        for central in CHECKS {
            for generation in [None, Some(g)] {
                for a in &all {
                    for b in &all {
                        let skip = phase1_skip(central, generation, &[*a, *b]);
                        let fine = |s: &SourceCheck| {
                            matches!(
                                s,
                                SourceCheck::Read(Check::Unchanged)
                                    | SourceCheck::Unreadable { had_feed: false }
                            )
                        };
                        let expected = generation.is_some()
                            && central == Check::Unchanged
                            && fine(a)
                            && fine(b);
                        assert_eq!(
                            skip.is_some(),
                            expected,
                            "{central:?} {generation:?} {a:?} {b:?}"
                        );
                        if let Some(kept) = skip {
                            assert_eq!(kept, g);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn phase1_with_no_sources_skips_on_the_central_check_alone() {
        let g = Generation::fresh();
        assert_eq!(phase1_skip(Check::Unchanged, Some(g), &[]), Some(g));
        assert_eq!(phase1_skip(Check::Changed, Some(g), &[]), None);
    }

    #[test]
    fn a_generation_stands_only_without_writes_or_outside_changes() {
        let g = Generation::fresh();
        assert_eq!(next_generation(Check::Unchanged, Some(g), 0), g);
        for (check, previous, writes) in [
            (Check::Unchanged, Some(g), 1),
            (Check::Changed, Some(g), 0),
            (Check::Unknown, Some(g), 0),
            (Check::Unchanged, None, 0),
        ] {
            assert_ne!(next_generation(check, previous, writes), g);
        }
    }

    #[test]
    fn phase2_skips_only_a_mailbox_in_line_with_the_standing_generation() {
        let g = Generation::fresh();
        let h = Generation::fresh();
        let feed =
            |in_line_with| FolderFeed::at(DeltaLink::new("https://graph.example/x"), in_line_with);
        for current in [None, Some(g), Some(h)] {
            for then in [None, Some(g), Some(h)] {
                let f = feed(then);
                let expected = current.is_some() && current == then;
                assert_eq!(phase2_skip(current, &f), expected, "{current:?} {then:?}");
            }
        }
    }

    /// Issue 13: a source goes unread only when the central folder and the source are as they were when phase 2
    /// left it holding only copies of the generation that stands; every other combination reads.
    #[test]
    fn a_source_goes_unread_only_as_left_holding_copies_of_the_standing_generation() {
        let (g, h) = (Generation::fresh(), Generation::fresh());
        let link = || DeltaLink::new("https://graph.example/x");
        for central in CHECKS {
            for source in CHECKS {
                for generation in [None, Some(g)] {
                    for in_line_with in [None, Some(g), Some(h)] {
                        for only_copies in [false, true] {
                            let feed = FolderFeed {
                                only_copies,
                                ..FolderFeed::at(link(), in_line_with)
                            };
                            let expected = central == Check::Unchanged
                                && source == Check::Unchanged
                                && generation.is_some()
                                && in_line_with == generation
                                && only_copies;
                            assert_eq!(
                                source_unread(central, generation, source, Some(&feed)),
                                expected,
                                "{central:?} {source:?} {generation:?} {in_line_with:?} {only_copies}"
                            );
                        }
                    }
                }
                assert!(!source_unread(central, Some(g), source, None));
            }
        }
    }

    /// What phase 2 notes goes with the folder only while it is in line, and is carried by an unchanged check, a
    /// skipped phase 2 and the producer's state (older state without it reads as `false`).
    #[test]
    fn only_copies_is_kept_with_the_folder_in_line_and_nowhere_else() {
        let g = Generation::fresh();
        let link = DeltaLink::new("https://graph.example/x");
        let in_line = FolderFeed::at(link.clone(), Some(g)).holding_only_copies(true);
        assert!(in_line.only_copies);
        assert!(
            !FolderFeed::at(link.clone(), None)
                .holding_only_copies(true)
                .only_copies
        );
        let moved = in_line.moved_as_left(DeltaLink::new("https://graph.example/y"));
        assert!(moved.only_copies && moved.in_line_with == Some(g));
        let skipped = phase2_skipped("m", Some(g), &in_line).expect("in line");
        assert!(skipped.mailboxes["m"].only_copies);
        let json = serde_json::to_value(&in_line).expect("json");
        assert_eq!(json["onlyCopies"], true);
        let back: FolderFeed = serde_json::from_value(json).expect("back");
        assert_eq!(back, in_line);
        let older: FolderFeed =
            serde_json::from_value(serde_json::json!({"link": "https://graph.example/x"}))
                .expect("older state");
        assert!(!older.only_copies);
        assert!(!serde_json::to_string(&older)
            .expect("json")
            .contains("onlyCopies"));
    }

    #[test]
    fn content_generations_are_equal_exactly_for_equal_content() {
        assert_eq!(Generation::of_content(b"a"), Generation::of_content(b"a"));
        assert_ne!(Generation::of_content(b"a"), Generation::of_content(b"b"));
        let (c, d, e) = (
            Generation::fresh(),
            Generation::of_content(b"d"),
            Generation::of_content(b"e"),
        );
        assert_eq!(
            Generation::combined(Some(c), d),
            Generation::combined(Some(c), d)
        );
        assert_ne!(
            Generation::combined(Some(c), d),
            Generation::combined(Some(c), e)
        );
        assert_ne!(
            Generation::combined(Some(c), d),
            Generation::combined(None, d)
        );
        assert_ne!(
            Generation::combined(Some(c), d),
            Generation::combined(Some(Generation::fresh()), d)
        );
        // A combined generation is never the central one alone: turning the directory on re-plans every mailbox.
        assert_ne!(Generation::combined(Some(c), d), c);
    }

    /// Every combination: phase 2 may skip only against a generation covering every source the mailbox has.
    #[test]
    fn phase2_sources_need_every_part_the_mailbox_receives() {
        let c = Generation::fresh();
        let d = Generation::of_content(b"persons");
        for mirror in [false, true] {
            for central in [None, Some(c)] {
                for directory_on in [false, true] {
                    for directory in [None, Some(d)] {
                        let got = phase2_sources(mirror, central, directory_on, directory);
                        let expected = match (mirror, directory_on) {
                            (true, false) => central,
                            (true, true) => central
                                .zip(directory)
                                .map(|(c, d)| Generation::combined(Some(c), d)),
                            (false, true) => directory.map(|d| Generation::combined(None, d)),
                            (false, false) => None,
                        };
                        assert_eq!(
                            got, expected,
                            "{mirror} {central:?} {directory_on} {directory:?}"
                        );
                    }
                }
            }
        }
    }

    fn keyed(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(id, key)| ((*id).to_owned(), (*key).to_owned()))
            .collect()
    }

    /// The item-by-item check agrees with the fingerprint of the whole round, replays included.
    #[test]
    fn checking_a_round_item_by_item_agrees_with_its_fingerprint() {
        let job = written(&[("a", "ka"), ("b", "kb")]);
        let gone = ids(&["x"]);
        let own = OwnWrites::of(&job, &gone).expect("keys known");
        // (id, removed, change key) as the round shows them, in order.
        type Word = (&'static str, bool, Option<&'static str>);
        let rounds: Vec<(Vec<Word>, &str)> = vec![
            (
                vec![
                    ("a", false, Some("ka")),
                    ("b", false, Some("kb")),
                    ("x", true, None),
                ],
                "exactly the job's",
            ),
            (
                vec![
                    ("x", true, None),
                    ("b", false, Some("kb")),
                    ("a", false, Some("ka")),
                ],
                "in another order",
            ),
            (
                vec![
                    ("a", false, Some("k0")),
                    ("a", false, Some("ka")),
                    ("b", false, Some("kb")),
                    ("x", true, None),
                ],
                "a replay, the last word as left",
            ),
            (
                vec![
                    ("a", false, Some("ka")),
                    ("a", false, Some("k2")),
                    ("b", false, Some("kb")),
                    ("x", true, None),
                ],
                "edited after the job's write",
            ),
            (
                vec![("a", false, Some("ka")), ("b", false, Some("kb"))],
                "a delete missing",
            ),
            (
                vec![
                    ("a", false, Some("ka")),
                    ("b", true, None),
                    ("x", true, None),
                ],
                "a written item removed",
            ),
            (
                vec![
                    ("a", false, Some("ka")),
                    ("b", false, Some("kb")),
                    ("x", true, None),
                    ("y", false, Some("ky")),
                ],
                "someone else's item",
            ),
            (
                vec![
                    ("a", false, Some("ka")),
                    ("b", false, Some("kb")),
                    ("x", true, None),
                    ("y", false, Some("ky")),
                    ("y", true, None),
                ],
                "someone else's item, then removed",
            ),
            (
                vec![
                    ("a", false, None),
                    ("b", false, Some("kb")),
                    ("x", true, None),
                ],
                "no change key",
            ),
            (vec![], "nothing"),
        ];
        for (words, what) in rounds {
            let mut whole = Changes::default();
            let mut check = OwnWritesCheck::new(&job, &gone);
            for (id, removed, key) in &words {
                check.saw(id, *removed, *key);
                whole.saw((*id).to_owned(), *removed, key.map(str::to_owned));
            }
            assert_eq!(check.only_own(), own.are(&whole), "{what}");
        }
        let mut exact = OwnWritesCheck::new(&job, &gone);
        for (id, removed, key) in [
            ("a", false, Some("ka")),
            ("b", false, Some("kb")),
            ("x", true, None),
        ] {
            exact.saw(id, removed, key);
        }
        assert!(exact.only_own(), "the job's own writes are recognised");
    }

    fn written(list: &[(&str, &str)]) -> Written {
        list.iter()
            .map(|(id, key)| ((*id).to_owned(), Some((*key).to_owned())))
            .collect()
    }

    /// A feed left after writing `a` and `b` (change keys `ka`, `kb`) and deleting `x`.
    fn left_after_writes() -> FolderFeed {
        FolderFeed {
            own_writes: OwnWrites::of(&written(&[("a", "ka"), ("b", "kb")]), &ids(&["x"])),
            ..FolderFeed::at(DeltaLink::new("l"), Some(Generation::fresh()))
        }
    }

    fn seen(changed: &[&str], removed: &[&str]) -> Changes {
        Changes {
            changed: ids(changed),
            removed: ids(removed),
            change_keys: keyed(&[("a", "ka"), ("b", "kb"), ("c", "kc"), ("x", "kx")]),
        }
    }

    #[test]
    fn the_next_check_recognises_exactly_the_jobs_own_writes() {
        let feed = left_after_writes();
        assert!(feed.own_writes.is_some());
        assert!(feed.still_as_left(&seen(&[], &[])));
        assert!(feed.still_as_left(&seen(&["a", "b"], &["x"])));
        // Anything more, less or else is someone's change (or not provably ours): a full read.
        assert!(!feed.still_as_left(&seen(&["a", "b", "c"], &["x"])));
        assert!(!feed.still_as_left(&seen(&["a", "b"], &["x", "y"])));
        assert!(!feed.still_as_left(&seen(&["a", "b"], &[])));
        assert!(!feed.still_as_left(&seen(&["a"], &["x"])));
        // An item the job deleted showing as changed, or one it wrote showing as removed (a user deleted a copy).
        assert!(!feed.still_as_left(&seen(&["a", "b", "x"], &[])));
        assert!(!feed.still_as_left(&seen(&["a"], &["b", "x"])));
        // Without own writes, only an empty round leaves the feed as it was.
        let plain = FolderFeed::at(DeltaLink::new("l"), None);
        assert!(plain.still_as_left(&seen(&[], &[])));
        assert!(!plain.still_as_left(&seen(&["a", "b"], &["x"])));
        assert_eq!(OwnWrites::of(&Written::new(), &BTreeSet::new()), None);
    }

    /// A user's edit of a contact right after the job wrote it (same id, a newer change key) must never be taken
    /// for the job's own write: the next run would skip the folder and the edit would never be published.
    #[test]
    fn a_later_edit_of_an_item_the_job_wrote_is_someone_elses_change() {
        let feed = FolderFeed {
            own_writes: OwnWrites::of(&written(&[("a", "k1")]), &BTreeSet::new()),
            ..FolderFeed::at(DeltaLink::new("l"), None)
        };
        let edited = Changes {
            changed: ids(&["a"]),
            change_keys: keyed(&[("a", "k2")]),
            ..Changes::default()
        };
        assert!(!feed.still_as_left(&edited));
        let own = Changes {
            change_keys: keyed(&[("a", "k1")]),
            ..edited.clone()
        };
        assert!(feed.still_as_left(&own));
        // No key from the feed, or none from the write's answer: not provably ours.
        let unkeyed = Changes {
            change_keys: BTreeMap::new(),
            ..edited
        };
        assert!(!feed.still_as_left(&unkeyed));
        let unknown: Written = [("a".to_owned(), None)].into();
        assert_eq!(OwnWrites::of(&unknown, &BTreeSet::new()), None);
    }

    /// Ids and keys are length-prefixed: moving characters between an id and its key, or between items, gives
    /// another fingerprint.
    #[test]
    fn fingerprints_tell_apart_lists_that_concatenate_alike() {
        let one = OwnWrites::of(&written(&[("ab", "c")]), &BTreeSet::new());
        let other = OwnWrites::of(&written(&[("a", "bc")]), &BTreeSet::new());
        assert_ne!(one, other);
        let deleted = OwnWrites::of(&Written::new(), &ids(&["ab"]));
        let created = OwnWrites::of(&written(&[("ab", "")]), &BTreeSet::new());
        assert_ne!(deleted, created);
    }

    #[test]
    fn cursors_round_trip_and_empty_ones_vanish_from_json() {
        let empty = Cursors::default();
        assert_eq!(serde_json::to_string(&empty).expect("json"), "{}");
        let full = Cursors {
            tracked: true,
            central: Some(FolderFeed {
                own_writes: OwnWrites::of(
                    &[("c1".to_owned(), Some("k".to_owned()))].into(),
                    &BTreeSet::new(),
                ),
                ..FolderFeed::at(
                    DeltaLink::new("https://graph.example/central?$deltatoken=1"),
                    Some(Generation::fresh()),
                )
            }),
            central_generation: Some(Generation::fresh()),
            directory_generation: Some(Generation::of_content(b"persons")),
            mailboxes: [(
                "u1".to_owned(),
                FolderFeed::at(
                    DeltaLink::new("https://graph.example/u1?$deltatoken=2"),
                    None,
                ),
            )]
            .into(),
        };
        let json = serde_json::to_string(&full).expect("json");
        assert_eq!(serde_json::from_str::<Cursors>(&json).expect("parse"), full);
        assert!(!format!("{:?}", full.central).contains("deltatoken=1"));
    }
}
