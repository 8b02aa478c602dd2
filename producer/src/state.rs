//! The producer's memory between runs: per tenant, where each folder's change feed stands, so a run with nothing
//! to do costs about one Graph request per mailbox and phase instead of full reads.
//!
//! Workers stay stateless: the producer puts what it remembers into jobs ([`Cursors`]) and keeps what the final
//! reports bring back. One JSON file per tenant under the state directory, replaced atomically (write, fsync,
//! rename), so a crash leaves the previous state, which is always safe to start from (a feed that is older than
//! it could be only shows more changes). A missing, unreadable or foreign file means "remember nothing": the run
//! reads everything, as a first run does. Nothing here is a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::config::TenantSettings;
use shared::directory::KeptUsers;
use shared::feed::{Cursors, FolderFeed, Generation};
use shared::message::{CentralFolder, FolderChoice};
use shared::model::Mailbox;
use tracing::{info, warn};
use uuid::Uuid;

/// The version of the state file this build reads and writes; another version is ignored (full reads once).
const STATE_SCHEMA: u32 = 1;

/// Namespace of [`scope`] ids.
const SCOPE_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_0c57_8e2d_4b7a_a3c1_5d9e_2f40_b816);

/// A directory holding one state file per tenant.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

/// What is remembered of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantMemory {
    schema: u32,
    /// What the feeds belong to (see [`scope`]); a state made for another scope is not used.
    scope: Uuid,
    /// The source mailboxes the central folder's generation was made from.
    sources: BTreeSet<String>,
    /// The central folder's feed and generation.
    central: Option<FolderFeed>,
    /// Users' default contacts folders, by mailbox id.
    mailboxes: BTreeMap<String, FolderFeed>,
    /// The central folder a successful phase 1 last filled: if it is gone (deleted, renamed), the next run
    /// must stop instead of filling a fresh folder (see [`crate::prepare::CentralExpectation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filled_central: Option<KnownCentral>,
    /// Licensed users the last run found without an Exchange mailbox (UPNs, lowercase): the next run lists them as
    /// not applicable instead of failing (see [`crate::summary::TenantReport::mark_not_applicable`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    without_mailbox: BTreeSet<String>,
    /// When the state was saved.
    saved_at: Option<DateTime<Utc>>,
}

/// The target folder a tenant's copies were last completely brought into (its own file: see
/// [`StateStore::target_folder`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KnownTargetFolder {
    schema: u32,
    target_folder: FolderChoice,
}

/// Board streams that may still be on the broker (see [`StateStore::boards`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KnownBoards {
    schema: u32,
    streams: BTreeSet<String>,
}

/// The central folder earlier runs filled: the shared mailbox's and the folder's Graph ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownCentral {
    /// The shared mailbox's object id.
    pub mailbox_id: String,
    /// The folder's id.
    pub folder_id: String,
    /// The name it was configured under (`CentralFolderName`): under another name, another folder is expected.
    pub folder_name: String,
}

/// The identity of what a tenant's feeds describe: Graph endpoint, shared mailbox, central folder and the
/// mirroring policy. Changing any of them (a new folder name, another opt-out category) makes the remembered
/// state meaningless, so the next run reads everything again.
pub fn scope(tenant: &TenantSettings, central: &CentralFolder) -> Uuid {
    let mut key = format!(
        "{}|{}|{}|{}|{:?}",
        tenant.tenant_id.to_lowercase(),
        tenant.graph_endpoint.as_str().trim_end_matches('/'),
        central.mailbox.id.to_lowercase(),
        central.folder_id.as_deref().unwrap_or_default(),
        tenant.mirror,
    );
    // `Photos` turned on must read every folder once (photos already there are nothing the feeds show); only
    // then, so a tenant without photos keeps the scope it had.
    if tenant.photos {
        key.push_str("|photos");
    }
    Uuid::new_v5(&SCOPE_NAMESPACE, key.as_bytes())
}

/// The identity of a tenant's state when it has no mirror (a directory-only tenant): Graph endpoint, the folder
/// the directory is distributed into and every option phase 2 plans with. Another `TargetFolder` makes the kept
/// feeds meaningless; other `Fields`, deletion, update, category or stamp options mean mailboxes "in line" were
/// brought in line under other rules (a leaver's copies kept while `DeleteManagedCopies` was off stayed once it
/// was turned on). The central folder's name and fields play no part here.
pub fn directory_scope(tenant: &TenantSettings) -> Uuid {
    let mirror = &tenant.mirror;
    let mut key = format!(
        "{}|{}|directory-only|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{}",
        tenant.tenant_id.to_lowercase(),
        tenant.graph_endpoint.as_str().trim_end_matches('/'),
        tenant.distribution.target_folder,
        mirror.fields.policy,
        mirror.deletion,
        mirror.managed_category,
        mirror.stamp_notes,
        mirror.opt_out_category,
        mirror.update_existing,
    );
    if tenant.photos {
        key.push_str("|photos");
    }
    Uuid::new_v5(&SCOPE_NAMESPACE, key.as_bytes())
}

/// The identity of a tenant's users feed: the tenant and its Graph endpoint (the feed lists every user, whatever
/// the settings select).
fn users_scope(tenant: &TenantSettings) -> Uuid {
    let key = format!(
        "{}|{}|users",
        tenant.tenant_id.to_lowercase(),
        tenant.graph_endpoint.as_str().trim_end_matches('/'),
    );
    Uuid::new_v5(&SCOPE_NAMESPACE, key.as_bytes())
}

/// The users feed file: the tenant's users as `/users/delta` last showed them, with the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsersMemory {
    schema: u32,
    scope: Uuid,
    kept: KeptUsers,
}

impl StateStore {
    /// A store in `dir` (created when first saved to).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default place: `$XDG_STATE_HOME/contactmirror`, else `~/.local/state/contactmirror`; `None` with neither
    /// variable set (a system service, `env -i`). Not the shared temporary directory: another local user could
    /// make it first and read, replace or lock what is in it.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        env("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|home| Path::new(&home).join(".local/state")))
            .map(|base| base.join("contactmirror"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The users feed kept for `tenant` (see [`KeptUsers`]); `None` when there is none usable (first run, another
    /// endpoint, damaged file): the run then lists every user once.
    pub fn load_users(&self, tenant: &TenantSettings) -> Option<KeptUsers> {
        let path = self.users_file(&tenant.tenant_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "users feed unreadable; listing every user");
                return None;
            }
        };
        match serde_json::from_slice::<UsersMemory>(&bytes) {
            Ok(memory) if memory.schema == STATE_SCHEMA && memory.scope == users_scope(tenant) => {
                Some(memory.kept)
            }
            Ok(_) => None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "users feed is not valid; listing every user");
                None
            }
        }
    }

    /// Keeps `kept` as `tenant`'s users feed, replacing the previous file atomically.
    pub fn save_users(&self, tenant: &TenantSettings, kept: &KeptUsers) -> Result<()> {
        let memory = UsersMemory {
            schema: STATE_SCHEMA,
            scope: users_scope(tenant),
            kept: kept.clone(),
        };
        // Compact: a tenant of 50,000 users makes a file of some tens of megabytes.
        let json = serde_json::to_vec(&memory).context("serialising the users feed")?;
        self.replace(&self.users_file(&tenant.tenant_id), &json)
    }

    fn users_file(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!(
            "tenant-{}.users.json",
            crate::lease::file_safe(tenant_id)
        ))
    }

    fn file(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!(
            "tenant-{}.json",
            crate::lease::file_safe(tenant_id)
        ))
    }

    /// What is remembered of `tenant_id` for `scope`; empty (a first run) when nothing usable is there.
    pub fn load(&self, tenant_id: &str, scope: Uuid) -> TenantMemory {
        let fresh = TenantMemory::new(scope);
        let path = self.file(tenant_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return fresh,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "state file unreadable; reading every folder in full");
                return fresh;
            }
        };
        match serde_json::from_slice::<TenantMemory>(&bytes) {
            Ok(memory) if memory.schema == STATE_SCHEMA && memory.scope == scope => memory,
            Ok(other) => {
                info!(tenant = tenant_id, "the kept state is for another folder, endpoint or policy; reading every folder in full");
                // Which folder was last filled outlives the feeds: a rebuild that has not succeeded yet must not
                // make the lost folder forgotten.
                let own = other.schema == STATE_SCHEMA;
                TenantMemory {
                    filled_central: other.filled_central.filter(|_| own),
                    without_mailbox: if own {
                        other.without_mailbox
                    } else {
                        BTreeSet::new()
                    },
                    ..fresh
                }
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "state file is not valid; reading every folder in full");
                fresh
            }
        }
    }

    /// The central folder the last successful phase 1 of `tenant_id` filled, whatever the state's scope (a
    /// lost folder changes the scope). `None` when no state says so.
    pub fn filled_central(&self, tenant_id: &str) -> Option<KnownCentral> {
        read_own(&self.file(tenant_id), |m: &TenantMemory| m.schema)?.filled_central
    }

    /// The users the last saved run of `tenant_id` found without an Exchange mailbox (UPNs, lowercase), whatever
    /// the state's scope; empty when no state says so.
    pub fn without_mailbox(&self, tenant_id: &str) -> BTreeSet<String> {
        read_own(&self.file(tenant_id), |m: &TenantMemory| m.schema)
            .map(|memory| memory.without_mailbox)
            .unwrap_or_default()
    }

    /// Saves `memory` for `tenant_id`, replacing the previous file atomically. Called under the tenant's lease
    /// (see [`crate::lease`]).
    pub fn save(&self, tenant_id: &str, memory: &TenantMemory) -> Result<()> {
        let mut saved = memory.clone();
        saved.saved_at = Some(Utc::now());
        let json = serde_json::to_vec_pretty(&saved).context("serialising the state")?;
        self.replace(&self.file(tenant_id), &json)
    }

    fn folder_file(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!(
            "target-folder-{}.json",
            crate::lease::file_safe(tenant_id)
        ))
    }

    /// Whether any run kept a state for `tenant_id` here (a tenant never seen has no copies anywhere yet).
    pub fn knows(&self, tenant_id: &str) -> bool {
        self.file(tenant_id).exists() || self.folder_file(tenant_id).exists()
    }

    /// The folder every receiving mailbox of `tenant_id` last had its managed copies brought into (its
    /// `TargetFolder` then), whatever the feeds' scope; `None` when nothing is recorded. A changed `TargetFolder`
    /// moves the copies from there.
    pub fn target_folder(&self, tenant_id: &str) -> Option<FolderChoice> {
        read_own(&self.folder_file(tenant_id), |k: &KnownTargetFolder| {
            k.schema
        })
        .map(|known| known.target_folder)
    }

    /// Records `folder` as where every receiving mailbox of `tenant_id` now has its managed copies.
    pub fn save_target_folder(&self, tenant_id: &str, folder: &FolderChoice) -> Result<()> {
        let known = KnownTargetFolder {
            schema: STATE_SCHEMA,
            target_folder: folder.clone(),
        };
        let json = serde_json::to_vec_pretty(&known).context("serialising the target folder")?;
        self.replace(&self.folder_file(tenant_id), &json)
    }

    fn boards_file(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!(
            "boards-{}.json",
            crate::lease::file_safe(tenant_id)
        ))
    }

    /// The phase-1 board streams runs of `tenant_id` put on the broker and did not delete (a producer that
    /// crashed, or lost the broker at its end): the next run of the tenant deletes them. Empty when none is noted
    /// or the note is unreadable (a stream then stays until deleted by hand, as before notes were kept).
    pub fn boards(&self, tenant_id: &str) -> BTreeSet<String> {
        read_own(&self.boards_file(tenant_id), |k: &KnownBoards| k.schema)
            .map(|known| known.streams)
            .unwrap_or_default()
    }

    /// Notes `streams` as `tenant_id`'s boards that may be on the broker; none removes the note.
    pub fn save_boards(&self, tenant_id: &str, streams: &BTreeSet<String>) -> Result<()> {
        let path = self.boards_file(tenant_id);
        if streams.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            };
        }
        let known = KnownBoards {
            schema: STATE_SCHEMA,
            streams: streams.clone(),
        };
        let json = serde_json::to_vec_pretty(&known).context("serialising the boards")?;
        self.replace(&path, &json)
    }

    /// Writes `json` to `path` atomically ([`crate::files::write_atomically`]), creating the state directory.
    fn replace(&self, path: &Path, json: &[u8]) -> Result<()> {
        crate::files::create_private_dir(&self.dir)
            .with_context(|| format!("creating the state directory {}", self.dir.display()))?;
        crate::files::write_atomically(path, json)
            .with_context(|| format!("replacing {}", path.display()))
    }
}

/// The document at `path` when it reads as a `T` of this build's schema (`schema` tells a document's); `None` when
/// it is missing, unreadable or foreign, which callers take as "nothing known".
fn read_own<T: serde::de::DeserializeOwned>(path: &Path, schema: impl Fn(&T) -> u32) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<T>(&bytes)
        .ok()
        .filter(|doc| schema(doc) == STATE_SCHEMA)
}

impl TenantMemory {
    /// Nothing remembered, for `scope`.
    pub fn new(scope: Uuid) -> Self {
        Self {
            schema: STATE_SCHEMA,
            scope,
            ..Self::default()
        }
    }

    /// The cursors of a phase-1 job over `sources`. The central generation is offered only when the sources are
    /// the ones it was made from: a user who left (or joined) must be re-planned.
    pub fn phase1_cursors(&self, sources: &[Mailbox]) -> Cursors {
        let ids: BTreeSet<String> = sources.iter().map(|m| m.id.clone()).collect();
        let central = self.central.clone().map(|mut feed| {
            if ids != self.sources {
                feed.in_line_with = None;
            }
            feed
        });
        Cursors {
            tracked: true,
            central,
            central_generation: None,
            directory_generation: None,
            mailboxes: self
                .mailboxes
                .iter()
                .filter(|(id, _)| ids.contains(*id))
                .map(|(id, feed)| (id.clone(), feed.clone()))
                .collect(),
        }
    }

    /// Keeps what a successful phase 1 over `sources` reported. Sources it brought no feed for (unreadable)
    /// are forgotten, and users no longer among the sources are dropped.
    pub fn phase1_succeeded(&mut self, sources: &[Mailbox], reported: &Cursors) {
        self.sources = sources.iter().map(|m| m.id.clone()).collect();
        self.central = reported.central.clone();
        self.mailboxes = reported
            .mailboxes
            .iter()
            .filter(|(id, _)| self.sources.contains(*id))
            .map(|(id, feed)| (id.clone(), feed.clone()))
            .collect();
    }

    /// A phase 1 succeeded on `central`, configured as `folder_name`: it is the folder later runs must find
    /// again.
    pub fn filled(&mut self, central: &CentralFolder, folder_name: &str) {
        self.filled_central = central.folder_id.as_ref().map(|folder_id| KnownCentral {
            mailbox_id: central.mailbox.id.clone(),
            folder_id: folder_id.clone(),
            folder_name: folder_name.to_owned(),
        });
    }

    /// Remembers the users this run found without an Exchange mailbox (replacing the last run's: one that got a
    /// mailbox since is forgotten).
    pub fn set_without_mailbox(&mut self, users: BTreeSet<String>) {
        self.without_mailbox = users;
    }

    /// The cursors of `user`'s phase-2 job in a tenant without the mirror: its kept feed (no phase 1 checked it:
    /// the job does) and the directory's generation this run.
    pub fn directory_only_cursors(&self, user: &Mailbox, directory: Option<Generation>) -> Cursors {
        Cursors {
            tracked: true,
            directory_generation: directory,
            mailboxes: self
                .mailboxes
                .get(&user.id)
                .map(|feed| (user.id.clone(), feed.clone()))
                .into_iter()
                .collect(),
            ..Cursors::default()
        }
    }

    /// Forgets the feeds of mailboxes no longer receiving (a tenant without the mirror has no phase 1 to do it).
    pub fn receivers(&mut self, users: &[Mailbox]) {
        let ids: BTreeSet<&str> = users.iter().map(|m| m.id.as_str()).collect();
        self.mailboxes.retain(|id, _| ids.contains(id.as_str()));
    }

    /// The cursors of `user`'s phase-2 job, from what phase 1 of this run reported, and the directory's generation
    /// this run when the tenant distributes it.
    pub fn phase2_cursors(
        phase1: &Cursors,
        user: &Mailbox,
        directory: Option<Generation>,
    ) -> Cursors {
        Cursors {
            tracked: true,
            central: None,
            directory_generation: directory,
            central_generation: phase1.central.as_ref().and_then(|f| f.in_line_with),
            mailboxes: phase1
                .mailboxes
                .get(&user.id)
                .map(|feed| (user.id.clone(), feed.clone()))
                .into_iter()
                .collect(),
        }
    }

    /// Keeps the feed a successful phase 2 of `user` reported.
    pub fn phase2_succeeded(&mut self, user: &str, reported: &Cursors) {
        match reported.mailboxes.get(user) {
            Some(feed) => {
                self.mailboxes.insert(user.to_owned(), feed.clone());
            }
            None => self.phase2_failed(user),
        }
    }

    /// `user`'s phase 2 did not finish: its feed stays (phase 1 may still use it) but it is no longer known to be
    /// in line, so the next run brings it in line in full.
    pub fn phase2_failed(&mut self, user: &str) {
        if let Some(feed) = self.mailboxes.get_mut(user) {
            feed.in_line_with = None;
            feed.only_copies = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::feed::DeltaLink;

    use super::*;

    fn mailbox(id: &str) -> Mailbox {
        Mailbox {
            id: id.into(),
            upn: format!("{id}@contoso.com"),
        }
    }

    fn feed(name: &str, in_line_with: Option<Generation>) -> FolderFeed {
        FolderFeed::at(
            DeltaLink::new(format!("https://graph.example/{name}?$deltatoken=1")),
            in_line_with,
        )
    }

    fn phase1_report(g: Generation, users: &[&str]) -> Cursors {
        Cursors {
            tracked: true,
            central: Some(feed("central", Some(g))),
            central_generation: None,
            directory_generation: None,
            mailboxes: users
                .iter()
                .map(|u| ((*u).to_owned(), feed(u, None)))
                .collect(),
        }
    }

    #[test]
    fn the_target_folder_is_remembered_apart_from_the_feeds() {
        let dir = std::env::temp_dir().join(format!("cm-state-{}", Uuid::new_v4().simple()));
        let store = StateStore::new(&dir);
        assert_eq!(store.target_folder("t"), None);
        assert!(!store.knows("t"), "a tenant never run has nothing to move");
        let named = FolderChoice::Named("Company Directory".into());
        store.save_target_folder("t", &named).expect("saved");
        assert!(store.knows("t") && !store.knows("T2"));
        assert_eq!(store.target_folder("T2"), None);
        assert_eq!(store.target_folder("t"), Some(named));
        store
            .save_target_folder("t", &FolderChoice::DefaultContacts)
            .expect("saved");
        assert_eq!(
            store.target_folder("t"),
            Some(FolderChoice::DefaultContacts)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn boards_are_noted_per_tenant_and_the_note_goes_when_none_is_left() {
        let dir = std::env::temp_dir().join(format!("cm-state-{}", Uuid::new_v4().simple()));
        let store = StateStore::new(&dir);
        assert!(store.boards("t").is_empty());
        let streams: BTreeSet<String> =
            ["cm.board.r1.t".to_owned(), "cm.board.r2.t".to_owned()].into();
        store.save_boards("t", &streams).expect("noted");
        assert_eq!(store.boards("t"), streams);
        assert!(store.boards("other").is_empty(), "another tenant's boards");
        store.save_boards("t", &BTreeSet::new()).expect("cleared");
        assert!(store.boards("t").is_empty());
        assert!(!store.boards_file("t").exists(), "an empty note is removed");
        store
            .save_boards("t", &BTreeSet::new())
            .expect("clearing twice is no error");
        std::fs::write(store.boards_file("t"), b"{not json").expect("damaged");
        assert!(store.boards("t").is_empty(), "a damaged note names nothing");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_run_remembers_and_offers_back_what_its_reports_said() {
        let g = Generation::fresh();
        let sources = [mailbox("a"), mailbox("b")];
        let mut memory = TenantMemory::new(Uuid::nil());
        let first = memory.phase1_cursors(&sources);
        assert!(first.tracked && first.central.is_none() && first.mailboxes.is_empty());
        let reported = phase1_report(g, &["a", "b"]);
        memory.phase1_succeeded(&sources, &reported);
        let phase2 = TenantMemory::phase2_cursors(&reported, &sources[0], None);
        assert_eq!(phase2.central_generation, Some(g));
        assert_eq!(phase2.mailboxes.len(), 1);
        memory.phase2_succeeded(
            "a",
            &Cursors {
                mailboxes: [("a".to_owned(), feed("a2", Some(g)))].into(),
                ..Cursors::default()
            },
        );
        memory.phase2_failed("b");
        let next = memory.phase1_cursors(&sources);
        assert_eq!(next.central, Some(feed("central", Some(g))));
        assert_eq!(next.mailboxes["a"], feed("a2", Some(g)));
        assert_eq!(next.mailboxes["b"].in_line_with, None);
    }

    #[test]
    fn a_changed_set_of_sources_withholds_the_generation() {
        let g = Generation::fresh();
        let mut memory = TenantMemory::new(Uuid::nil());
        memory.phase1_succeeded(
            &[mailbox("a"), mailbox("b")],
            &phase1_report(g, &["a", "b"]),
        );
        // b left: the central folder must be planned again, and b's feed is not offered.
        let left = memory.phase1_cursors(&[mailbox("a")]);
        assert_eq!(left.central.as_ref().and_then(|c| c.in_line_with), None);
        assert!(left.central.is_some());
        assert!(!left.mailboxes.contains_key("b"));
        // c joined.
        let joined = memory.phase1_cursors(&[mailbox("a"), mailbox("b"), mailbox("c")]);
        assert_eq!(joined.central.and_then(|c| c.in_line_with), None);
    }

    #[test]
    fn an_unreadable_source_is_forgotten() {
        let g = Generation::fresh();
        let mut memory = TenantMemory::new(Uuid::nil());
        memory.phase1_succeeded(&[mailbox("a"), mailbox("b")], &phase1_report(g, &["a"]));
        let next = memory.phase1_cursors(&[mailbox("a"), mailbox("b")]);
        assert!(next.mailboxes.contains_key("a"));
        assert!(!next.mailboxes.contains_key("b"));
        assert!(next.central.and_then(|c| c.in_line_with).is_some());
    }

    #[test]
    fn the_store_round_trips_and_ignores_what_is_not_its_own() {
        let dir = std::env::temp_dir().join(format!("cm-state-{}", Uuid::new_v4()));
        let store = StateStore::new(&dir);
        let scope = Uuid::new_v4();
        assert_eq!(
            store.load("contoso.onmicrosoft.com", scope),
            TenantMemory::new(scope)
        );
        let mut memory = TenantMemory::new(scope);
        memory.phase1_succeeded(&[mailbox("a")], &phase1_report(Generation::fresh(), &["a"]));
        store
            .save("Contoso.onmicrosoft.com", &memory)
            .expect("save");
        let loaded = store.load("contoso.onmicrosoft.com", scope);
        assert_eq!(loaded.central, memory.central);
        assert_eq!(loaded.mailboxes, memory.mailboxes);
        // Another scope (other folder, endpoint or policy) starts afresh.
        assert_eq!(
            store
                .load("contoso.onmicrosoft.com", Uuid::new_v4())
                .central,
            None
        );
        // The folder last filled is kept across scopes (a lost folder changes the scope).
        let mut filled = loaded;
        filled.filled(
            &CentralFolder {
                mailbox: mailbox("shared"),
                folder_id: Some("F1".into()),
            },
            "All Contacts",
        );
        store
            .save("contoso.onmicrosoft.com", &filled)
            .expect("save");
        filled.set_without_mailbox(BTreeSet::from(["ann@contoso.com".to_owned()]));
        store
            .save("contoso.onmicrosoft.com", &filled)
            .expect("save");
        assert_eq!(
            store.without_mailbox("contoso.onmicrosoft.com"),
            BTreeSet::from(["ann@contoso.com".to_owned()])
        );
        let rescoped = store.load("contoso.onmicrosoft.com", Uuid::new_v4());
        assert_eq!(rescoped.filled_central, filled.filled_central);
        assert_eq!(rescoped.without_mailbox, filled.without_mailbox);
        assert_eq!(rescoped.central, None);
        assert_eq!(
            store.filled_central("contoso.onmicrosoft.com"),
            filled.filled_central
        );
        // A damaged file is ignored, not an error.
        let file = store.file("contoso.onmicrosoft.com");
        std::fs::write(&file, b"{not json").expect("write");
        assert_eq!(store.load("contoso.onmicrosoft.com", scope).central, None);
        assert!(!file.with_extension("json.tmp").exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    fn directory_tenant(target_folder: Option<&str>) -> TenantSettings {
        let mut entry = serde_json::json!({
            "TenantId": "contoso.onmicrosoft.com",
            "ClientId": "00000000-0000-0000-0000-000000000001",
            "ClientSecret": "not-a-real-secret",
            "Mirror": {"Enabled": false},
            "Directory": {"Enabled": true},
        });
        if let Some(folder) = target_folder {
            entry["TargetFolder"] = folder.into();
        }
        let document = serde_json::json!({ "MicrosoftTenants": [entry] }).to_string();
        let env = move |name: &str| {
            (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| document.clone())
        };
        let settings =
            shared::config::Settings::from_sources(&env, None).expect("valid configuration");
        settings.tenants[0].clone()
    }

    #[test]
    fn a_directory_only_tenant_offers_each_receiver_its_feed_and_the_directory_generation() {
        let g = Generation::fresh();
        let d = Generation::of_content(b"persons");
        let mut memory = TenantMemory::new(Uuid::nil());
        memory.phase2_succeeded(
            "a",
            &Cursors {
                mailboxes: [("a".to_owned(), feed("a", Some(g)))].into(),
                ..Cursors::default()
            },
        );
        memory.phase2_succeeded(
            "gone",
            &Cursors {
                mailboxes: [("gone".to_owned(), feed("gone", Some(g)))].into(),
                ..Cursors::default()
            },
        );
        memory.receivers(&[mailbox("a"), mailbox("b")]);
        let a = memory.directory_only_cursors(&mailbox("a"), Some(d));
        assert!(a.tracked);
        assert_eq!(a.directory_generation, Some(d));
        assert_eq!(a.central_generation, None);
        assert_eq!(a.mailboxes["a"], feed("a", Some(g)));
        let b = memory.directory_only_cursors(&mailbox("b"), Some(d));
        assert!(b.mailboxes.is_empty(), "no feed yet: a full read");
        assert!(
            !memory.mailboxes.contains_key("gone"),
            "a mailbox no longer receiving is forgotten"
        );
    }

    #[test]
    fn the_directory_scope_follows_the_target_folder() {
        assert_eq!(
            directory_scope(&directory_tenant(None)),
            directory_scope(&directory_tenant(None))
        );
        assert_ne!(
            directory_scope(&directory_tenant(None)),
            directory_scope(&directory_tenant(Some("Company Directory")))
        );
    }

    /// Issue 14: kept feeds say a mailbox is in line under the rules of the run that brought it in line; another
    /// `CentralFields` or `Fields` must make the next run read and plan everything again.
    #[test]
    fn the_scopes_follow_what_travels() {
        use shared::config::{CentralFields, FieldPolicies, FieldPolicy};
        use shared::model::{Field, FieldSet};
        let central = CentralFolder {
            mailbox: mailbox("shared"),
            folder_id: Some("F1".into()),
        };
        let tenant = directory_tenant(None);
        let mut wider = tenant.clone();
        wider.mirror.fields.central =
            CentralFields::new(FieldSet::all()).expect("holds the match fields");
        let mut policy = tenant.clone();
        policy.mirror.fields.policy =
            FieldPolicies::new(&[(Field::JobTitle, FieldPolicy::FillEmpty)].into()).expect("valid");
        assert_eq!(scope(&tenant, &central), scope(&tenant.clone(), &central));
        assert_ne!(scope(&tenant, &central), scope(&wider, &central));
        assert_ne!(scope(&tenant, &central), scope(&policy, &central));
        assert_ne!(directory_scope(&tenant), directory_scope(&policy));
        // Every option phase 2 plans with: failed before the fix for all but the field policy (a leaver's copies
        // kept with `DeleteManagedCopies` off stayed in mailboxes "in line" once it was turned on).
        let changed: [fn(&mut TenantSettings); 6] = [
            |t| t.mirror.deletion.enabled = !t.mirror.deletion.enabled,
            |t| t.mirror.update_existing = !t.mirror.update_existing,
            |t| t.mirror.stamp_notes = !t.mirror.stamp_notes,
            |t| t.mirror.managed_category = Some("Company".into()),
            |t| t.mirror.opt_out_category = "Not on my phone".into(),
            |t| t.photos = !t.photos,
        ];
        for change in changed {
            let mut other = tenant.clone();
            change(&mut other);
            assert_ne!(
                directory_scope(&tenant),
                directory_scope(&other),
                "{:?}",
                other.mirror
            );
        }
        // The central folder's name is no directory-only tenant's business.
        let mut renamed = tenant.clone();
        renamed.mirror.central_folder_name = "Elsewhere".into();
        assert_eq!(directory_scope(&tenant), directory_scope(&renamed));
        assert_eq!(directory_scope(&tenant), directory_scope(&wider));
    }

    #[test]
    fn the_users_feed_round_trips_and_ignores_a_damaged_file() {
        let dir = std::env::temp_dir().join(format!("cm-users-{}", Uuid::new_v4()));
        let store = StateStore::new(&dir);
        let tenant = directory_tenant(None);
        assert_eq!(store.load_users(&tenant), None);
        let kept = KeptUsers::start(
            vec![shared::directory::UserRecord {
                id: "u1".into(),
                display_name: Some("Ann".into()),
                ..Default::default()
            }],
            DeltaLink::new("https://graph.example/users/delta?$deltatoken=1"),
        );
        store.save_users(&tenant, &kept).expect("save");
        assert_eq!(store.load_users(&tenant), Some(kept));
        // The tenant's other state is a file of its own.
        assert_eq!(
            store.load("contoso.onmicrosoft.com", Uuid::nil()).central,
            None
        );
        std::fs::write(store.users_file(&tenant.tenant_id), b"{not json").expect("write");
        assert_eq!(store.load_users(&tenant), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
