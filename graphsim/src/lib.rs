//! graphsim: a strict local stand-in for the parts of Microsoft Graph contactmirror uses (users, Outlook
//! contacts and folders, extended properties, delta, `$batch`) and for the Entra ID token endpoint.
//! It runs in-process for tests (`spawn`) or as the `graphsim` binary, and reproduces Graph's throttling,
//! error bodies and headers so that a client that passes here behaves against Graph.
//!
//! Layout:
//! - [`config`]: run-time knobs (throttle, faults, token lifetime, latency).
//! - `server`: HTTP framing and common headers; `routes`: token, users, contacts, delta, batch, `/_sim/`.
//! - `state`: tenants, users, mailboxes; `contact`: the contact entity; `odata`: query options.
//! - `throttle`: the Outlook (app, mailbox) model; `faults`: injected failures; [`stats`]: counters and log.
//! - [`seed`]: realistic tenants from a size and a seed.
#![deny(missing_docs)]

pub mod config;
mod contact;
mod contact_json;
pub mod credentials;
pub mod directory;
pub mod directory_seed;
mod faults;
mod ids;
mod odata;
mod reply;
mod routes;
pub mod seed;
mod server;
mod state;
pub mod stats;
pub mod test_credentials;
mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

pub use config::{FaultConfig, FaultProfile, RetryAfter, ScriptedFault, SimConfig, ThrottleConfig};
pub use directory::{GroupSeed, OrgContactSeed, DEFAULT_ROLES};
pub use directory_seed::{sample_jpeg, seed_directory, DirectoryParams, SeededDirectory};
pub use seed::{seed_estate, EstateParams, SeededTenant};
pub use state::{MailboxState, TenantSeed, UserSeed, LICENSE_SKU};
pub use stats::{LoggedRequest, MailboxStats, SimStats};

use server::Shared;

/// A running simulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

/// Starts a simulator on `127.0.0.1:0` (an ephemeral port).
pub async fn spawn(config: SimConfig) -> Result<Sim, std::io::Error> {
    spawn_at(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts a simulator on a given address.
pub async fn spawn_at(config: SimConfig, addr: SocketAddr) -> Result<Sim, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Shared::new(&config, format!("http://{addr}"));
    let app = server::router(Arc::clone(&shared));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(error) = serve.await {
            tracing::error!(%error, "graphsim server stopped");
        }
    });
    Ok(Sim {
        shared,
        addr,
        stop: Some(stop),
    })
}

impl Sim {
    /// A non-owning view used by the control surface (dropping it does not stop the server).
    pub(crate) fn view(shared: &Arc<Shared>) -> Sim {
        let addr = shared
            .base_url
            .trim_start_matches("http://")
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        Sim {
            shared: Arc::clone(shared),
            addr,
            stop: None,
        }
    }

    /// Graph base URL, e.g. `http://127.0.0.1:PORT` (clients append `/v1.0/...`).
    pub fn graph_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Authority base URL (clients append `/{tenant}/oauth2/v2.0/token`).
    pub fn authority_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn store(&self) -> std::sync::RwLockWriteGuard<'_, state::Store> {
        self.shared.store()
    }

    /// Adds (or replaces) a tenant and its app registration.
    pub fn add_tenant(&self, t: TenantSeed) {
        self.store().add_tenant(t);
    }

    /// The tenant's GUID and domain, given either.
    pub fn tenant_ids(&self, tenant: &str) -> Option<(String, String)> {
        let store = self.store();
        let t = &store.tenants[store.tenant(tenant)?];
        Some((t.guid.clone(), t.domain.clone()))
    }

    /// Adds a user and returns its object id.
    ///
    /// # Panics
    /// If the tenant does not exist (a test set-up error); see [`Sim::try_add_user`].
    pub fn add_user(&self, tenant: &str, u: UserSeed) -> String {
        self.try_add_user(tenant, u)
            .unwrap_or_else(|e| panic!("graphsim: {e}"))
    }

    /// Adds a user and returns its object id, or says why not.
    pub fn try_add_user(&self, tenant: &str, u: UserSeed) -> Result<String, String> {
        if u.upn.trim().is_empty() {
            return Err("a user needs a upn".into());
        }
        let mut store = self.store();
        let index = store
            .tenant(tenant)
            .ok_or_else(|| format!("unknown tenant {tenant}"))?;
        Ok(store.add_user(index, u))
    }

    /// Adds a contact (a Graph-shaped body, may include `singleValueExtendedProperties`) to the default
    /// folder or to a top-level folder by display name (created if missing). Returns the contact id.
    ///
    /// # Panics
    /// If the tenant or user does not exist or the body is not a valid contact (test set-up errors); see
    /// [`Sim::try_add_contact`].
    pub fn add_contact(
        &self,
        tenant: &str,
        user: &str,
        folder: Option<&str>,
        contact: Value,
    ) -> String {
        self.try_add_contact(tenant, user, folder, contact)
            .unwrap_or_else(|e| panic!("graphsim: {e}"))
    }

    /// Adds a contact and returns its id, or says why not.
    pub fn try_add_contact(
        &self,
        tenant: &str,
        user: &str,
        folder: Option<&str>,
        contact: Value,
    ) -> Result<String, String> {
        let body = contact::parse_body(&contact)
            .map_err(|e| format!("invalid contact body: {}", e.body.unwrap_or_default()))?;
        let mut store = self.store();
        let state::Store {
            tenants,
            tenant_index,
            clock,
            ..
        } = &mut *store;
        let mailbox = mailbox_of(tenants, tenant_index, tenant, user)?;
        let f = match folder {
            None => 0,
            Some(name) => match mailbox.child_named(0, name) {
                Some(i) => i,
                None => mailbox.create_folder(0, name).unwrap_or(0),
            },
        };
        Ok(mailbox.create_contact(f, body, clock).id.clone())
    }

    /// Changes a contact as its owner would (Outlook, a phone): applies `patch` with PATCH semantics, bumps
    /// `lastModifiedDateTime` and `changeKey`, and makes it show up in delta. Not counted or throttled, so
    /// benchmarks can change an estate between runs without touching the figures.
    pub fn update_contact(
        &self,
        tenant: &str,
        user: &str,
        id: &str,
        patch: Value,
    ) -> Result<(), String> {
        let body = contact::parse_body(&patch)
            .map_err(|e| format!("invalid contact body: {}", e.body.unwrap_or_default()))?;
        let mut store = self.store();
        let state::Store {
            tenants,
            tenant_index,
            clock,
            ..
        } = &mut *store;
        mailbox_of(tenants, tenant_index, tenant, user)?
            .update_contact(id, body, clock)
            .map(|_| ())
            .ok_or_else(|| format!("no contact {id} in {user}"))
    }

    /// Deletes a contact as its owner would (Outlook, a phone): it leaves a tombstone for delta. Not counted or
    /// throttled, like [`Sim::update_contact`].
    pub fn delete_contact(&self, tenant: &str, user: &str, id: &str) -> Result<(), String> {
        let mut store = self.store();
        let state::Store {
            tenants,
            tenant_index,
            ..
        } = &mut *store;
        if mailbox_of(tenants, tenant_index, tenant, user)?.delete_contact(id) {
            Ok(())
        } else {
            Err(format!("no contact {id} in {user}"))
        }
    }

    /// Tenants with their users (id, upn, mailbox state), for the control surface.
    pub fn directory(&self) -> Value {
        let store = self.store();
        Value::Array(
            store
                .tenants
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "tenantGuid": t.guid, "domain": t.domain, "clientId": t.client_id, "adminConsent": t.admin_consent,
                        "users": t.users.iter().map(|u| serde_json::json!({
                            "id": u.id, "userPrincipalName": u.upn, "mailbox": u.mailbox_state,
                            "contacts": u.mailbox.contacts.len(), "folders": u.mailbox.folders.len() - 1,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    /// Full state of the contacts in the default folder or a top-level folder by display name, including
    /// `singleValueExtendedProperties`, `lastModifiedDateTime` and `id`. Empty if anything is missing.
    pub fn contacts(&self, tenant: &str, user: &str, folder: Option<&str>) -> Vec<Value> {
        let mut store = self.store();
        let Some(u) = store.user_mut(tenant, user) else {
            return Vec::new();
        };
        let mailbox = &u.mailbox;
        let f = match folder {
            None => Some(0),
            Some(name) => mailbox.child_named(0, name),
        };
        f.map(|f| {
            mailbox
                .folder_contacts(f)
                .map(contact_json::full_state)
                .collect()
        })
        .unwrap_or_default()
    }

    /// Every folder below the default `Contacts` folder (nested ones too), with `parentFolderId`.
    pub fn folders(&self, tenant: &str, user: &str) -> Vec<Value> {
        let mut store = self.store();
        let Some(u) = store.user_mut(tenant, user) else {
            return Vec::new();
        };
        u.mailbox
            .folders
            .iter()
            .skip(1)
            .map(|f| f.render())
            .collect()
    }

    /// Id of the default `Contacts` folder of a mailbox.
    pub fn default_folder_id(&self, tenant: &str, user: &str) -> Option<String> {
        let mut store = self.store();
        store
            .user_mut(tenant, user)
            .map(|u| u.mailbox.folders[0].id.clone())
    }

    /// Changes a user's mailbox state.
    pub fn set_mailbox_state(&self, tenant: &str, user: &str, state: MailboxState) {
        if let Some(u) = self.store().user_mut(tenant, user) {
            u.mailbox_state = state;
        }
    }

    /// Uploads a certificate (PEM; only its public part is kept) to the tenant's app registration.
    pub fn add_app_certificate(&self, tenant: &str, pem: &str) -> Result<(), String> {
        let certificate = credentials::AppCertificate::from_pem(pem)?;
        let mut store = self.store();
        let t = store
            .tenant(tenant)
            .ok_or_else(|| format!("no tenant {tenant}"))?;
        store.tenants[t].certificates.push(certificate);
        Ok(())
    }

    /// Adds a federated identity credential to the tenant's app registration.
    pub fn add_federated_credential(
        &self,
        tenant: &str,
        credential: credentials::FederatedCredentialSeed,
    ) -> Result<(), String> {
        let credential = credentials::FederatedCredential::new(credential)?;
        let mut store = self.store();
        let t = store
            .tenant(tenant)
            .ok_or_else(|| format!("no tenant {tenant}"))?;
        store.tenants[t].federated.push(credential);
        Ok(())
    }

    /// Grants or revokes admin consent; affects tokens issued afterwards.
    pub fn set_admin_consent(&self, tenant: &str, consent: bool) {
        let mut store = self.store();
        if let Some(t) = store.tenant(tenant) {
            store.tenants[t].admin_consent = consent;
        }
    }

    /// Counters snapshot.
    pub fn stats(&self) -> SimStats {
        self.shared.recorder.snapshot()
    }

    /// Zeroes counters and the request log.
    pub fn reset_stats(&self) {
        self.shared.recorder.reset();
    }

    /// The request log, oldest first.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.recorder.log()
    }

    /// Replaces the fault configuration.
    pub fn set_faults(&self, f: FaultConfig) {
        self.shared.faults.set(f);
    }

    /// Queues a one-off fault for the next matching operation.
    pub fn push_fault(&self, f: ScriptedFault) {
        self.shared.faults.push(f);
    }

    /// Sets (or with `None` removes) a user's own photo (`/users/{id}/photo/$value`).
    pub fn set_user_photo(&self, tenant: &str, user: &str, photo: Option<Vec<u8>>) {
        if let Some(u) = self.store().user_mut(tenant, user) {
            u.mailbox.user_photo = photo;
        }
    }

    /// Puts (`Some`) or removes (`None`) the photo of a contact in `user`'s mailbox as its owner's Outlook would:
    /// the contact changes as with `PUT|DELETE …/photo/$value` (change key, delta, `PidLidHasPicture`). Not
    /// counted or throttled, so benchmarks can change an estate between runs without touching the figures.
    pub fn set_contact_photo(
        &self,
        tenant: &str,
        user: &str,
        contact_id: &str,
        photo: Option<Vec<u8>>,
    ) -> Result<(), String> {
        let mut store = self.store();
        let state::Store {
            tenants,
            tenant_index,
            clock,
            ..
        } = &mut *store;
        let mailbox = mailbox_of(tenants, tenant_index, tenant, user)?;
        if !mailbox.contacts.contains_key(contact_id) {
            return Err(format!("no contact {contact_id} in {user}"));
        }
        match photo {
            Some(bytes) => mailbox.put_photo(contact_id, bytes, clock),
            None => {
                mailbox.remove_photo(contact_id, clock);
            }
        }
        Ok(())
    }

    /// The photo of a contact in `user`'s mailbox, if it has one.
    pub fn contact_photo(&self, tenant: &str, user: &str, contact_id: &str) -> Option<Vec<u8>> {
        self.store()
            .user_mut(tenant, user)
            .and_then(|u| u.mailbox.photos.get(contact_id).cloned())
    }

    /// Replaces the per-mailbox upload budget (bytes of PATCH/POST/PUT bodies per window; Graph: 150 MB / 5 min).
    pub fn set_upload_budget(&self, bytes: u64, window: Duration) {
        self.shared.throttle.set_upload_budget(bytes, window);
    }

    /// How many uploads graphsim refused with 429 because a mailbox's upload budget was spent.
    pub fn upload_refusals(&self) -> u64 {
        self.shared.throttle.upload_refusals()
    }

    /// Replaces Graph's global limit per app (requests per window across all tenants; default 130,000 / 10 s).
    pub fn set_app_limit(&self, requests: u32, window: Duration) {
        self.shared.throttle.set_app_limit(requests, window);
    }

    /// The most requests one app made inside one global-limit window so far.
    pub fn app_peak(&self) -> u64 {
        self.shared.throttle.app_peak()
    }

    /// How many requests graphsim refused because their app was over its global limit.
    pub fn app_refusals(&self) -> u64 {
        self.shared.throttle.app_refusals()
    }

    /// Replaces the throttle limits.
    pub fn set_throttle(&self, t: ThrottleConfig) {
        self.shared.throttle.set_config(t);
    }

    /// Forgets all requests the throttle has counted.
    pub fn reset_throttle(&self) {
        self.shared.throttle.clear();
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        if let Ok(mut r) = self.shared.runtime.lock() {
            r.token_lifetime = d;
        }
    }

    /// Latency added to every Graph operation from now on.
    pub fn set_latency(&self, d: Duration) {
        if let Ok(mut r) = self.shared.runtime.lock() {
            r.latency = d;
        }
    }

    /// Makes every other answer for a user without mailbox 404 `ResourceNotFound` "Resource could not be
    /// discovered." instead of `MailboxNotEnabledForRESTAPI` (Graph has been seen to alternate; default off).
    pub fn set_alternate_no_mailbox(&self, on: bool) {
        if let Ok(mut r) = self.shared.runtime.lock() {
            r.alternate_no_mailbox = on;
        }
    }

    /// Makes every issued token expired (the next Graph call gets 401).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for info in self.store().tokens.values_mut() {
            info.expires = now;
        }
    }

    /// Invalidates every delta token (the next delta call with one gets 410 SyncStateNotFound).
    pub fn invalidate_delta_tokens(&self) {
        self.store().delta_epoch += 1;
    }

    /// Removes all tenants, users, mailboxes and tokens, and zeroes counters.
    pub fn reset(&self) {
        let epoch = {
            let store = self.store();
            store.delta_epoch + 1
        };
        *self.store() = state::Store {
            delta_epoch: epoch,
            ..state::Store::default()
        };
        self.shared.recorder.reset();
        self.shared.throttle.clear();
        self.shared.faults.clear_scripted();
    }

    /// Stops the server.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The mailbox of `user` in `tenant` (as the simulator indexes tenants, any case), or which of the two is unknown.
fn mailbox_of<'a>(
    tenants: &'a mut [state::Tenant],
    tenant_index: &std::collections::HashMap<String, usize>,
    tenant: &str,
    user: &str,
) -> Result<&'a mut state::Mailbox, String> {
    let t = tenant_index
        .get(&tenant.to_lowercase())
        .copied()
        .ok_or_else(|| format!("unknown tenant {tenant}"))?;
    let u = tenants[t]
        .user_index(user)
        .ok_or_else(|| format!("unknown user {user}"))?;
    Ok(&mut tenants[t].users[u].mailbox)
}
