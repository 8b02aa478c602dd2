//! The simulated estate: graphsim on its own runtime (so its CPU can be told apart from the fleet's), seeded
//! from the bench's parameters, the configuration document that points the fleet at it, the edits between runs,
//! and content snapshots from which the changes a run made are counted.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use graphsim::{EstateParams, SeededTenant, Sim, SimConfig, ThrottleConfig};
use serde_json::{json, Value};

use crate::figures::Budget;

/// Numbers the simulators of one bench run, so each one's threads have their own name.
static NEXT_SIM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The central folder's display name (the configuration default).
pub const CENTRAL_FOLDER: &str = "All Contacts";

/// graphsim running on a runtime of its own.
pub struct SimHost {
    runtime: Option<tokio::runtime::Runtime>,
    /// The simulator.
    pub sim: Arc<Sim>,
    /// Name of its runtime's threads ([`crate::probe::threads_cpu`] sums their CPU). Unique per simulator: the
    /// threads of one shut down earlier may still be exiting and must not be counted.
    pub threads: String,
}

impl SimHost {
    /// Starts graphsim with `budget` as its throttle and `latency` per operation.
    pub async fn start(budget: Budget, latency: Duration) -> Result<Self> {
        let threads = format!(
            "graphsim-{}.",
            NEXT_SIM.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(&threads)
            .enable_all()
            .build()
            .context("building graphsim's runtime")?;
        let config = SimConfig {
            throttle: budget.throttle(),
            latency,
            // The log is not used and would cost memory and CPU per request.
            request_log_capacity: 0,
            ..SimConfig::default()
        };
        let sim = runtime
            .spawn(graphsim::spawn(config))
            .await
            .context("graphsim's start-up task")?
            .context("starting graphsim")?;
        Ok(Self {
            runtime: Some(runtime),
            sim: Arc::new(sim),
            threads,
        })
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        // Dropping a runtime inside async code panics; shutting it down in the background does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Budget {
    /// graphsim's throttle for this budget.
    pub fn throttle(&self) -> ThrottleConfig {
        match self {
            Budget::Unlimited => ThrottleConfig::unlimited(),
            Budget::Window {
                requests,
                window,
                in_flight,
            } => ThrottleConfig {
                requests_per_window: *requests,
                window: *window,
                max_in_flight: *in_flight,
            },
        }
    }
}

/// What to seed.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shape {
    /// Tenants.
    pub tenants: usize,
    /// Users per tenant.
    pub users: usize,
    /// Contacts per user (and in the shared mailbox's default folder).
    pub contacts: usize,
    /// Share of contacts that copy colleagues.
    pub overlap: f64,
    /// One user of the first tenant holds this many contacts instead (0: none).
    pub big_user_contacts: usize,
    /// The big user's contacts go to one user of every tenant, not only the first (the MSP-scale estate where
    /// only a few mailboxes hold contacts).
    pub big_user_in_every_tenant: bool,
}

/// A seeded estate.
pub struct Estate {
    /// graphsim.
    pub host: SimHost,
    /// What was seeded.
    pub tenants: Vec<SeededTenant>,
    /// The shape.
    pub shape: Shape,
    /// Ids of each user's own seeded contacts (default folder, before any sync), per tenant and UPN, for edits.
    originals: Vec<BTreeMap<String, Vec<String>>>,
    /// The producer's state directory for this estate: re-runs start from the change feeds the last run kept,
    /// as a scheduled producer does.
    pub state_dir: std::path::PathBuf,
    /// A directory-only tenant (issue 11): no mirror, every member receives the directory.
    pub directory: bool,
    /// `Photos` on (issue 14): every member has a photo, written to every copy.
    pub photos: bool,
}

impl Estate {
    /// Starts graphsim and seeds `shape` with a fixed seed (the same estate every time, ids aside).
    pub async fn seed(shape: Shape, budget: Budget, latency: Duration) -> Result<Self> {
        let host = SimHost::start(budget, latency).await?;
        let tenants = graphsim::seed_estate(
            &host.sim,
            EstateParams {
                tenants: shape.tenants,
                users_per_tenant: shape.users,
                contacts_per_user: shape.contacts,
                overlap: shape.overlap,
                seed: 9,
            },
        );
        if shape.big_user_contacts > shape.contacts {
            let holders = if shape.big_user_in_every_tenant {
                tenants.len()
            } else {
                1
            };
            for t in tenants.iter().take(holders) {
                let upn = t
                    .mirror_target_upns
                    .first()
                    .with_context(|| format!("tenant {} has no regular user", t.tenant_id))?;
                for i in shape.contacts..shape.big_user_contacts {
                    host.sim
                        .try_add_contact(
                            &t.tenant_id,
                            upn,
                            None,
                            json!({"givenName": "Bulk", "surname": format!("Person {i}"),
                                   "displayName": format!("Bulk Person {i}"),
                                   "emailAddresses": [{"address": format!("bulk.{i}@example.org")}],
                                   "mobilePhone": format!("+41 79 {:07}", i)}),
                        )
                        .map_err(anyhow::Error::msg)
                        .context("seeding the big user")?;
                }
            }
        }
        let originals = tenants
            .iter()
            .map(|t| {
                t.mirror_target_upns
                    .iter()
                    .map(|upn| {
                        let ids = host
                            .sim
                            .contacts(&t.tenant_id, upn, None)
                            .iter()
                            .filter_map(|c| c["id"].as_str().map(str::to_owned))
                            .collect();
                        (upn.clone(), ids)
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            host,
            tenants,
            shape,
            originals,
            state_dir: scratch_state_dir(),
            directory: false,
            photos: false,
        })
    }

    /// Issue 13's fair-tenants estate: one large tenant (first) of `large_users` users, of whom one holds
    /// `large_contacts` contacts and the others none (so its phase 2 is many short jobs, not days of writes), then
    /// `small_tenants` tenants of `small_users` users holding `small_contacts` each.
    pub async fn seed_fair(
        (large_users, large_contacts): (usize, usize),
        (small_tenants, small_users, small_contacts): (usize, usize, usize),
        budget: Budget,
        latency: Duration,
    ) -> Result<Self> {
        let host = SimHost::start(budget, latency).await?;
        let mut tenants = graphsim::seed_estate(
            &host.sim,
            EstateParams {
                tenants: 1,
                users_per_tenant: large_users,
                contacts_per_user: 0,
                overlap: 0.0,
                seed: 13,
            },
        );
        let large = tenants.first().context("no large tenant seeded")?;
        let holder = large
            .mirror_target_upns
            .first()
            .context("the large tenant has no regular user")?;
        for i in 0..large_contacts {
            host.sim
                .try_add_contact(
                    &large.tenant_id,
                    holder,
                    None,
                    json!({"displayName": format!("Partner {i}"),
                           "emailAddresses": [{"address": format!("partner.{i}@example.org")}]}),
                )
                .map_err(anyhow::Error::msg)
                .context("seeding the large tenant's contacts")?;
        }
        tenants.extend(graphsim::seed_estate(
            &host.sim,
            EstateParams {
                tenants: small_tenants,
                users_per_tenant: small_users,
                contacts_per_user: small_contacts,
                overlap: 0.2,
                seed: 14,
            },
        ));
        Ok(Self {
            host,
            tenants,
            shape: Shape {
                tenants: 1 + small_tenants,
                users: large_users,
                contacts: small_contacts,
                overlap: 0.2,
                big_user_contacts: large_contacts,
                big_user_in_every_tenant: false,
            },
            originals: Vec::new(),
            state_dir: scratch_state_dir(),
            directory: false,
            photos: false,
        })
    }

    /// Starts graphsim and seeds one directory-only tenant of `members` visible, licensed members (graphsim's
    /// directory seed: a manager, full profiles, one hidden member, a few other accounts left out by the
    /// selection), every one of them receiving.
    /// With `photo_bytes`, every member has a photo of that size and `Photos` is on.
    pub async fn seed_directory(
        members: usize,
        budget: Budget,
        latency: Duration,
        photo_bytes: Option<usize>,
    ) -> Result<Self> {
        let host = SimHost::start(budget, latency).await?;
        let d = graphsim::seed_directory(
            &host.sim,
            graphsim::DirectoryParams {
                members: members.max(2),
                guests: 0,
                org_contacts: 0,
                ..graphsim::DirectoryParams::default()
            },
        );
        if let Some(size) = photo_bytes {
            for member in &d.members {
                host.sim.set_user_photo(
                    &d.tenant.tenant_id,
                    member,
                    Some(graphsim::sample_jpeg(member, size)),
                );
            }
        }
        Ok(Self {
            host,
            tenants: vec![d.tenant],
            shape: Shape {
                tenants: 1,
                users: members,
                contacts: 0,
                overlap: 0.0,
                big_user_contacts: 0,
                big_user_in_every_tenant: false,
            },
            originals: Vec::new(),
            state_dir: scratch_state_dir(),
            directory: true,
            photos: photo_bytes.is_some(),
        })
    }

    /// Issue 14, mirrored photos: every user's own seeded contact gets a photo of `size` bytes (as its owner's
    /// Outlook would put it) and `Photos` is on.
    pub fn with_personal_photos(mut self, size: usize) -> Result<Self> {
        for (t, originals) in self.tenants.iter().zip(&self.originals) {
            for (upn, ids) in originals {
                for id in ids {
                    let photo = graphsim::sample_jpeg(id, size);
                    self.sim()
                        .set_contact_photo(&t.tenant_id, upn, id, Some(photo))
                        .map_err(anyhow::Error::msg)
                        .context("putting a photo on a user's contact")?;
                }
            }
        }
        self.photos = true;
        Ok(self)
    }

    /// Replaces the photo of `share` of the users' own contacts (at least one) with another of `size` bytes, as
    /// their owners would. Returns how many changed.
    pub fn change_personal_photos(&self, share: f64, size: usize) -> Result<usize> {
        let mut changed = 0;
        for (t, originals) in self.tenants.iter().zip(&self.originals) {
            let all: Vec<(&String, &String)> = originals
                .iter()
                .flat_map(|(upn, ids)| ids.iter().map(move |id| (upn, id)))
                .collect();
            let wanted = ((all.len() as f64) * share).ceil() as usize;
            for (upn, id) in all.into_iter().take(wanted) {
                let photo = graphsim::sample_jpeg(&format!("{id} changed"), size);
                self.sim()
                    .set_contact_photo(&t.tenant_id, upn, id, Some(photo))
                    .map_err(anyhow::Error::msg)
                    .context("changing a photo")?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// An admin renames `n` directory members (display name and job title): the next run brings each change to
    /// every other mailbox through the users delta.
    pub fn rename_directory_users(&self, n: usize) -> Result<usize> {
        let t = self.tenants.first().context("no tenant seeded")?;
        let mut renamed = 0;
        // The first member manages the others: renaming them would change every subordinate's copies too.
        for upn in t.mirror_target_upns.iter().skip(1).take(n) {
            let props = json!({"displayName": format!("Renamed {renamed}"), "jobTitle": "Renamed"});
            self.sim()
                .update_user(
                    &t.tenant_id,
                    upn,
                    props.as_object().cloned().unwrap_or_default(),
                )
                .map_err(anyhow::Error::msg)
                .context("renaming a directory user")?;
            renamed += 1;
        }
        Ok(renamed)
    }

    /// The simulator.
    pub fn sim(&self) -> &Arc<Sim> {
        &self.host.sim
    }

    /// The configuration document (AUTOMATION_SYNCCONTACTS_CONFIG_JSON form) with the client's budget.
    pub fn config_json(&self, budget: Budget) -> Value {
        let (requests, window) = match budget {
            // The client still needs a budget; make it one the run cannot reach.
            Budget::Unlimited => (u64::from(u32::MAX), 1),
            Budget::Window {
                requests, window, ..
            } => (u64::from(requests), window.as_secs().max(1)),
        };
        let tenants: Vec<Value> = self
            .tenants
            .iter()
            .map(|t| {
                if self.directory {
                    return json!({
                        "TenantId": t.tenant_id, "ClientId": t.client_id, "ClientSecret": t.client_secret,
                        "Mirror": {"Enabled": false}, "Directory": {"Enabled": true}, "Photos": self.photos,
                        "AuthorityHost": self.sim().authority_url(), "GraphEndpoint": self.sim().graph_url(),
                    });
                }
                json!({
                    "TenantId": t.tenant_id, "ClientId": t.client_id, "ClientSecret": t.client_secret,
                    "GlobalAddressBookUserId": t.shared_mailbox_upn, "Photos": self.photos,
                    "AuthorityHost": self.sim().authority_url(), "GraphEndpoint": self.sim().graph_url(),
                })
            })
            .collect();
        json!({"MicrosoftTenants": tenants, "DryRun": "false",
               "RequestsPerWindow": requests, "WindowSeconds": window})
    }

    /// Settings from the document, through the real loader.
    pub fn settings(&self, budget: Budget) -> Result<shared::config::Settings> {
        let text = self.config_json(budget).to_string();
        let env =
            move |name: &str| (name == "AUTOMATION_SYNCCONTACTS_CONFIG_JSON").then(|| text.clone());
        shared::config::Settings::from_sources(&env, None)
            .context("loading the bench configuration")
    }

    /// Changes `share` of the users' own contacts the way their owners would: three in four edits of an existing
    /// contact (job title and mobile phone), one in four new contacts (the second change is the first new one, so
    /// even a small estate gets both). Returns (edited, added).
    pub fn change(&self, share: f64) -> Result<(usize, usize)> {
        let (mut edited, mut added) = (0, 0);
        for (t, originals) in self.tenants.iter().zip(&self.originals) {
            let total: usize = originals.values().map(Vec::len).sum();
            let wanted = ((total as f64) * share).ceil() as usize;
            let users: Vec<(&String, &Vec<String>)> = originals
                .iter()
                .filter(|(_, ids)| !ids.is_empty())
                .collect();
            if users.is_empty() {
                continue;
            }
            for i in 0..wanted {
                let (upn, ids) = users[i % users.len()];
                if i % 4 == 1 {
                    self.sim()
                        .try_add_contact(
                            &t.tenant_id,
                            upn,
                            None,
                            json!({"givenName": "Newly", "surname": format!("Met {i}"),
                                   "displayName": format!("Newly Met {i}"),
                                   "emailAddresses": [{"address": format!("newly.met.{i}@example.org")}]}),
                        )
                        .map_err(anyhow::Error::msg)
                        .context("adding a contact")?;
                    added += 1;
                } else {
                    let id = &ids[(i / users.len()) % ids.len()];
                    self.sim()
                        .update_contact(
                            &t.tenant_id,
                            upn,
                            id,
                            json!({"jobTitle": format!("Edited title {i}"),
                                   "mobilePhone": format!("+41 78 {:07}", i)}),
                        )
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("editing a contact of {upn}"))?;
                    edited += 1;
                }
            }
        }
        Ok((edited, added))
    }

    /// Content fingerprints of every folder the fleet reads or writes.
    pub fn snapshot(&self) -> Snapshot {
        let mut folders = HashMap::new();
        for t in &self.tenants {
            let mut mailboxes = t.user_upns.clone();
            mailboxes.push(t.shared_mailbox_upn.clone());
            for upn in &mailboxes {
                folders.insert(
                    FolderKey::new(upn, false),
                    fingerprints(&self.sim().contacts(&t.tenant_id, upn, None)),
                );
            }
            let central = self
                .sim()
                .folders(&t.tenant_id, &t.shared_mailbox_upn)
                .iter()
                .any(|f| f["displayName"] == CENTRAL_FOLDER);
            if central {
                folders.insert(
                    FolderKey::new(&t.shared_mailbox_upn, true),
                    fingerprints(&self.sim().contacts(
                        &t.tenant_id,
                        &t.shared_mailbox_upn,
                        Some(CENTRAL_FOLDER),
                    )),
                );
            }
        }
        Snapshot { folders }
    }
}

/// A fresh state directory for one estate.
fn scratch_state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "contactmirror-bench-state-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// A folder: mailbox (lower-cased UPN) and whether it is the central folder (else the default folder).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FolderKey {
    /// Lower-cased UPN.
    pub mailbox: String,
    /// The central folder of the shared mailbox.
    pub central: bool,
}

impl FolderKey {
    pub fn new(upn: &str, central: bool) -> Self {
        Self {
            mailbox: upn.to_lowercase(),
            central,
        }
    }
}

/// Per folder: contact id -> hash of its content (server-set change markers left out).
pub struct Snapshot {
    /// The folders; a missing central folder is absent.
    pub folders: HashMap<FolderKey, HashMap<String, u64>>,
}

/// What changed in one folder between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// Contacts that appeared.
    pub created: u64,
    /// Contacts whose content changed.
    pub updated: u64,
    /// Contacts that disappeared.
    pub deleted: u64,
}

impl Changes {
    /// All three.
    pub fn total(&self) -> u64 {
        self.created + self.updated + self.deleted
    }

    /// Adds another folder's changes.
    pub fn add(&mut self, other: Changes) {
        self.created += other.created;
        self.updated += other.updated;
        self.deleted += other.deleted;
    }
}

impl Snapshot {
    /// Contacts in a folder (0 if it does not exist).
    pub fn size(&self, key: &FolderKey) -> usize {
        self.folders.get(key).map_or(0, HashMap::len)
    }

    /// Whether a folder exists.
    pub fn has(&self, key: &FolderKey) -> bool {
        self.folders.contains_key(key)
    }

    /// Per-folder changes from `self` (before) to `after`.
    pub fn changes(&self, after: &Snapshot) -> HashMap<FolderKey, Changes> {
        let empty = HashMap::new();
        let mut out = HashMap::new();
        for (key, now) in &after.folders {
            let then = self.folders.get(key).unwrap_or(&empty);
            let mut c = Changes::default();
            for (id, hash) in now {
                match then.get(id) {
                    None => c.created += 1,
                    Some(old) if old != hash => c.updated += 1,
                    Some(_) => {}
                }
            }
            c.deleted = then.keys().filter(|id| !now.contains_key(*id)).count() as u64;
            out.insert(key.clone(), c);
        }
        for (key, then) in &self.folders {
            if !after.folders.contains_key(key) {
                out.insert(
                    key.clone(),
                    Changes {
                        deleted: then.len() as u64,
                        ..Changes::default()
                    },
                );
            }
        }
        out
    }
}

fn fingerprints(contacts: &[Value]) -> HashMap<String, u64> {
    contacts
        .iter()
        .filter_map(|c| {
            let id = c["id"].as_str()?.to_owned();
            let mut content = c.as_object()?.clone();
            for volatile in ["@odata.etag", "lastModifiedDateTime", "changeKey"] {
                content.remove(volatile);
            }
            let mut h = DefaultHasher::new();
            Value::Object(content).to_string().hash(&mut h);
            Some((id, h.finish()))
        })
        .collect()
}
