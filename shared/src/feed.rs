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

/// The items a job created or updated: Graph id -> the change key the write's answer carried (`None` when the
/// answer had none: such an item can never be proved the job's own).
pub type Written = BTreeMap<String, Option<String>>;

/// The feed may move past the tool's own writes only when every change it shows is one of them; a change by
/// anyone else (which the plan may not have seen) keeps the feed where it was, so the next run looks again.
/// A changed item is the tool's own only when its change key is the one the tool's write returned: the same id
/// with another key is someone's edit after that write.
pub fn only_own_writes(seen: &Changes, written: &Written, deleted: &BTreeSet<String>) -> bool {
    seen.changed.iter().all(|id| match written.get(id) {
        Some(Some(key)) => seen.change_keys.get(id) == Some(key),
        _ => false,
    }) && seen.removed.iter().all(|id| deleted.contains(id))
}

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
        let feed = |in_line_with| FolderFeed {
            link: DeltaLink::new("https://graph.example/x"),
            in_line_with,
        };
        for current in [None, Some(g), Some(h)] {
            for then in [None, Some(g), Some(h)] {
                let f = feed(then);
                let expected = current.is_some() && current == then;
                assert_eq!(phase2_skip(current, &f), expected, "{current:?} {then:?}");
            }
        }
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

    #[test]
    fn the_feed_moves_past_own_writes_only() {
        let written: Written = [("a", "ka"), ("b", "kb")]
            .iter()
            .map(|(id, key)| ((*id).to_owned(), Some((*key).to_owned())))
            .collect();
        let deleted = ids(&["x"]);
        let seen = |changed: &[&str], removed: &[&str]| Changes {
            changed: ids(changed),
            removed: ids(removed),
            change_keys: keyed(&[("a", "ka"), ("b", "kb"), ("c", "kc"), ("x", "kx")]),
        };
        assert!(only_own_writes(&seen(&[], &[]), &written, &deleted));
        assert!(only_own_writes(&seen(&["a"], &["x"]), &written, &deleted));
        assert!(!only_own_writes(
            &seen(&["a", "c"], &[]),
            &written,
            &deleted
        ));
        assert!(!only_own_writes(&seen(&[], &["y"]), &written, &deleted));
        // An item we deleted showing as changed is someone else's doing.
        assert!(!only_own_writes(&seen(&["x"], &[]), &written, &deleted));
    }

    /// Failed before the fix: only ids were compared, so a user's edit of a contact right after the job wrote it
    /// (same id, a newer change key) was taken for the job's own write and the feed moved past it: the next run
    /// skipped the folder and the edit was never published.
    #[test]
    fn a_later_edit_of_an_item_the_job_wrote_is_someone_elses_change() {
        let written: Written = [("a".to_owned(), Some("k1".to_owned()))].into();
        let edited = Changes {
            changed: ids(&["a"]),
            change_keys: keyed(&[("a", "k2")]),
            ..Changes::default()
        };
        assert!(!only_own_writes(&edited, &written, &BTreeSet::new()));
        let own = Changes {
            change_keys: keyed(&[("a", "k1")]),
            ..edited.clone()
        };
        assert!(only_own_writes(&own, &written, &BTreeSet::new()));
        // No key from the feed, or none from the write's answer: not provably ours.
        let unkeyed = Changes {
            change_keys: BTreeMap::new(),
            ..edited
        };
        assert!(!only_own_writes(&unkeyed, &written, &BTreeSet::new()));
        let unknown: Written = [("a".to_owned(), None)].into();
        assert!(!only_own_writes(&own, &unknown, &BTreeSet::new()));
    }

    #[test]
    fn cursors_round_trip_and_empty_ones_vanish_from_json() {
        let empty = Cursors::default();
        assert_eq!(serde_json::to_string(&empty).expect("json"), "{}");
        let full = Cursors {
            tracked: true,
            central: Some(FolderFeed {
                link: DeltaLink::new("https://graph.example/central?$deltatoken=1"),
                in_line_with: Some(Generation::fresh()),
            }),
            central_generation: Some(Generation::fresh()),
            directory_generation: Some(Generation::of_content(b"persons")),
            mailboxes: [(
                "u1".to_owned(),
                FolderFeed {
                    link: DeltaLink::new("https://graph.example/u1?$deltatoken=2"),
                    in_line_with: None,
                },
            )]
            .into(),
        };
        let json = serde_json::to_string(&full).expect("json");
        assert_eq!(serde_json::from_str::<Cursors>(&json).expect("parse"), full);
        assert!(!format!("{:?}", full.central).contains("deltatoken=1"));
    }
}
