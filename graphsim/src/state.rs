//! In-memory directory and mailbox state: tenants, apps, users, contact folders, contacts and issued tokens.
//!
//! One `Store` sits behind a mutex; handlers lock it for the length of one synchronous operation and never
//! across an `.await`.

use crate::credentials::{AppCertificate, FederatedCredential, FederatedCredentialSeed};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::contact::{Contact, ContactBody};
use crate::directory::DirectoryState;
use crate::ids::{self, Clock};

/// SKU id given to licensed users (ENTERPRISEPACK, Office 365 E3).
pub const LICENSE_SKU: &str = "6fd2c87f-b296-42f0-b197-1e91e994b900";

/// A tenant with one app registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSeed {
    /// Domain (`contoso.onmicrosoft.com`) or GUID; the other form is derived. Both are accepted in the token URL.
    pub tenant_id: String,
    /// App (client) id.
    pub client_id: String,
    /// Client secret value.
    pub client_secret: String,
    /// Whether an admin consented to the app's application permissions (default true). Without it tokens
    /// are issued but Graph answers 403.
    #[serde(default = "yes")]
    pub admin_consent: bool,
    /// Certificates uploaded to the app (PEM; only the public part is kept). Assertions signed with their keys
    /// are accepted instead of the secret.
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Federated identity credentials of the app (workload identity).
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredentialSeed>,
}

fn yes() -> bool {
    true
}

impl TenantSeed {
    /// A consented tenant.
    pub fn new(tenant_id: &str, client_id: &str, client_secret: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            admin_consent: true,
            certificates: Vec::new(),
            federated_credentials: Vec::new(),
        }
    }
}

/// Exchange state of a user's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MailboxState {
    /// Exchange Online mailbox reachable through Graph.
    #[default]
    Enabled,
    /// No Exchange Online mailbox: 404 MailboxNotEnabledForRESTAPI.
    NoMailbox,
    /// Excluded by an application access policy: 403 ErrorAccessDenied "Access to OData is disabled.".
    BlockedByPolicy,
}

/// A directory user to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserSeed {
    /// User principal name (guests: `x_contoso.com#EXT#@tenant.onmicrosoft.com`).
    pub upn: String,
    /// Display name.
    pub display_name: String,
    /// Primary SMTP address; `None` renders `"mail": null`.
    pub mail: Option<String>,
    /// Has an assigned licence (SKU [`LICENSE_SKU`]).
    pub licensed: bool,
    /// `accountEnabled`.
    pub account_enabled: bool,
    /// `userType`: "Member", "Guest" or empty for null (pre-2014 accounts).
    pub user_type: String,
    /// Mailbox state.
    pub mailbox: MailboxState,
    /// Any other `microsoft.graph.user` properties (givenName, surname, jobTitle, businessPhones, ...).
    pub properties: Map<String, Value>,
}

impl Default for UserSeed {
    fn default() -> Self {
        Self {
            upn: String::new(),
            display_name: String::new(),
            mail: None,
            licensed: true,
            account_enabled: true,
            user_type: "Member".into(),
            mailbox: MailboxState::Enabled,
            properties: Map::new(),
        }
    }
}

impl UserSeed {
    /// A licensed, enabled member with a mailbox and `mail` = UPN.
    pub fn member(upn: &str, display_name: &str) -> Self {
        Self {
            upn: upn.to_owned(),
            display_name: display_name.to_owned(),
            mail: Some(upn.to_owned()),
            ..Self::default()
        }
    }
}

/// A contact folder.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Server id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Parent folder id (the root `Contacts` folder's parent is the mailbox root).
    pub parent_id: String,
    /// Contacts in creation order: seq -> contact id.
    pub contacts: BTreeMap<u64, String>,
    /// Deleted contacts: (mailbox version at deletion, id), for delta.
    pub tombstones: Vec<(u64, String)>,
}

impl Folder {
    /// Graph rendering.
    pub fn render(&self) -> Value {
        json!({"id": self.id, "displayName": self.display_name, "parentFolderId": self.parent_id})
    }
}

/// A user's Exchange mailbox (contacts part).
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// Folders; index 0 is the default `Contacts` folder.
    pub folders: Vec<Folder>,
    /// Contacts by id.
    pub contacts: HashMap<String, Contact>,
    /// Change counter (bumped by every write).
    pub version: u64,
    /// Creation counter for contacts.
    pub next_seq: u64,
    /// Contact photos by contact id (`…/contacts/{id}/photo/$value`).
    pub photos: HashMap<String, Vec<u8>>,
    /// The mailbox owner's own photo (`/users/{id}/photo/$value`).
    pub user_photo: Option<Vec<u8>>,
}

impl Mailbox {
    fn new() -> Self {
        let root_parent = ids::folder_id();
        let root = Folder {
            id: ids::folder_id(),
            display_name: "Contacts".into(),
            parent_id: root_parent.clone(),
            contacts: BTreeMap::new(),
            tombstones: Vec::new(),
        };
        Self {
            folders: vec![root],
            contacts: HashMap::new(),
            version: 0,
            next_seq: 0,
            photos: HashMap::new(),
            user_photo: None,
        }
    }

    /// Index of a folder by id or the well-known name `Contacts` (case-insensitive).
    pub fn folder_index(&self, id: &str) -> Option<usize> {
        if id.eq_ignore_ascii_case("contacts") {
            return Some(0);
        }
        self.folders.iter().position(|f| f.id == id)
    }

    /// Index of a direct child of `parent` named `name` (case-insensitive).
    pub fn child_named(&self, parent: usize, name: &str) -> Option<usize> {
        let parent_id = &self.folders[parent].id;
        self.folders.iter().position(|f| {
            &f.parent_id == parent_id && f.display_name.to_lowercase() == name.to_lowercase()
        })
    }

    /// Creates a folder under `parent`; `None` if the name is taken.
    pub fn create_folder(&mut self, parent: usize, name: &str) -> Option<usize> {
        if self.child_named(parent, name).is_some() {
            return None;
        }
        let folder = Folder {
            id: ids::folder_id(),
            display_name: name.to_owned(),
            parent_id: self.folders[parent].id.clone(),
            contacts: BTreeMap::new(),
            tombstones: Vec::new(),
        };
        self.folders.push(folder);
        Some(self.folders.len() - 1)
    }

    /// Direct children of a folder.
    pub fn children(&self, parent: usize) -> Vec<usize> {
        let parent_id = &self.folders[parent].id;
        (0..self.folders.len())
            .filter(|i| &self.folders[*i].parent_id == parent_id)
            .collect()
    }

    /// Deletes a folder, its subfolders and their contacts. The default folder cannot be deleted.
    pub fn delete_folder(&mut self, index: usize) -> bool {
        if index == 0 {
            return false;
        }
        let mut doomed = vec![self.folders[index].id.clone()];
        let mut i = 0;
        while i < doomed.len() {
            let id = doomed[i].clone();
            doomed.extend(
                self.folders
                    .iter()
                    .filter(|f| f.parent_id == id)
                    .map(|f| f.id.clone()),
            );
            i += 1;
        }
        self.contacts.retain(|_, c| !doomed.contains(&c.folder_id));
        self.folders.retain(|f| !doomed.contains(&f.id));
        self.version += 1;
        true
    }

    /// Creates a contact in a folder.
    pub fn create_contact(
        &mut self,
        folder: usize,
        body: ContactBody,
        clock: &mut Clock,
    ) -> &Contact {
        self.version += 1;
        self.next_seq += 1;
        let now = clock.next();
        let mut contact = Contact {
            id: ids::contact_id(),
            folder_id: self.folders[folder].id.clone(),
            change_key: ids::change_key(),
            created: now.clone(),
            modified: now,
            props: Map::new(),
            extended: BTreeMap::new(),
            other_navigation: Map::new(),
            version: self.version,
            seq: self.next_seq,
        };
        let generate_name = !body.props.contains_key("displayName");
        contact.apply(body);
        if generate_name && !contact.props.contains_key("displayName") {
            contact
                .props
                .insert("displayName".into(), Value::String(String::new()));
        }
        self.folders[folder]
            .contacts
            .insert(contact.seq, contact.id.clone());
        let id = contact.id.clone();
        self.contacts.insert(id.clone(), contact);
        &self.contacts[&id]
    }

    /// Applies a PATCH to a contact.
    pub fn update_contact(
        &mut self,
        id: &str,
        body: ContactBody,
        clock: &mut Clock,
    ) -> Option<&Contact> {
        self.version += 1;
        let version = self.version;
        let contact = self.contacts.get_mut(id)?;
        contact.apply(body);
        contact.change_key = ids::change_key();
        contact.modified = clock.next();
        contact.version = version;
        Some(contact)
    }

    /// Puts `bytes` as contact `id`'s photo. The photo is an attachment of the item, so the item changes (change
    /// key, `lastModifiedDateTime`, delta) and its `PidLidHasPicture` says it has one.
    pub fn put_photo(&mut self, id: &str, bytes: Vec<u8>, clock: &mut Clock) {
        self.photos.insert(id.to_owned(), bytes);
        self.update_contact(id, has_picture(true), clock);
    }

    /// Removes contact `id`'s photo (a change of the item, `PidLidHasPicture` false); `false` when it had none.
    pub fn remove_photo(&mut self, id: &str, clock: &mut Clock) -> bool {
        if self.photos.remove(id).is_none() {
            return false;
        }
        self.update_contact(id, has_picture(false), clock);
        true
    }

    /// Deletes a contact, leaving a tombstone for delta.
    pub fn delete_contact(&mut self, id: &str) -> bool {
        let Some(contact) = self.contacts.remove(id) else {
            return false;
        };
        self.photos.remove(id);
        self.version += 1;
        if let Some(folder) = self.folders.iter_mut().find(|f| f.id == contact.folder_id) {
            folder.contacts.remove(&contact.seq);
            folder.tombstones.push((self.version, contact.id));
        }
        true
    }

    /// Contacts of a folder in creation order.
    pub fn folder_contacts(&self, folder: usize) -> impl Iterator<Item = &Contact> {
        self.folders[folder]
            .contacts
            .values()
            .filter_map(|id| self.contacts.get(id))
    }
}

/// A directory user with its mailbox.
#[derive(Debug, Clone)]
pub struct User {
    /// Object id (GUID).
    pub id: String,
    /// UPN.
    pub upn: String,
    /// Mailbox state.
    pub mailbox_state: MailboxState,
    /// Directory object as Graph renders it with every property known.
    pub directory: Map<String, Value>,
    /// Contacts.
    pub mailbox: Mailbox,
}

/// A tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant GUID.
    pub guid: String,
    /// Initial domain.
    pub domain: String,
    /// App registration.
    pub client_id: String,
    /// App secret.
    pub client_secret: String,
    /// Admin consent granted.
    pub admin_consent: bool,
    /// Certificates uploaded to the app.
    pub certificates: Vec<AppCertificate>,
    /// Federated identity credentials of the app.
    pub federated: Vec<FederatedCredential>,
    /// Users in creation order.
    pub users: Vec<User>,
    /// Lower-cased UPN and id -> index in `users`.
    pub index: HashMap<String, usize>,
    /// Groups, org contacts, the organisation, the app's roles and the users' change log.
    pub dir: DirectoryState,
}

impl Tenant {
    /// A user by object id or UPN (case-insensitive).
    pub fn user_index(&self, key: &str) -> Option<usize> {
        self.index.get(&key.to_lowercase()).copied()
    }
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Index of the tenant.
    pub tenant: usize,
    /// App id.
    pub app_id: String,
    /// Expiry.
    pub expires: Instant,
    /// Whether the app had consent when the token was issued.
    pub consent: bool,
    /// The application roles the token carries (empty without consent).
    pub roles: Vec<String>,
}

/// All state.
#[derive(Debug, Default)]
pub struct Store {
    /// Tenants in creation order.
    pub tenants: Vec<Tenant>,
    /// Lower-cased GUID and domain -> tenant index.
    pub tenant_index: HashMap<String, usize>,
    /// Issued tokens.
    pub tokens: HashMap<String, TokenInfo>,
    /// Timestamp source.
    pub clock: Clock,
    /// Bumped to invalidate every delta token.
    pub delta_epoch: u64,
}

impl Store {
    /// A tenant by GUID or domain (case-insensitive).
    pub fn tenant(&self, key: &str) -> Option<usize> {
        self.tenant_index.get(&key.to_lowercase()).copied()
    }

    /// Adds (or replaces) a tenant; returns its index.
    pub fn add_tenant(&mut self, seed: TenantSeed) -> usize {
        let (guid, domain) = match uuid::Uuid::parse_str(&seed.tenant_id) {
            Ok(guid) => (
                guid.to_string(),
                format!("t{}.onmicrosoft.com", &guid.simple().to_string()[..12]),
            ),
            Err(_) => (
                uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_DNS,
                    seed.tenant_id.to_lowercase().as_bytes(),
                )
                .to_string(),
                seed.tenant_id.to_lowercase(),
            ),
        };
        let tenant = Tenant {
            guid: guid.clone(),
            domain: domain.clone(),
            client_id: seed.client_id,
            client_secret: seed.client_secret,
            admin_consent: seed.admin_consent,
            // A seed is test set-up: an unusable certificate is left out (and logged), so tokens are refused.
            certificates: seed
                .certificates
                .iter()
                .filter_map(|pem| {
                    AppCertificate::from_pem(pem)
                        .map_err(|e| tracing::warn!("graphsim: certificate left out: {e}"))
                        .ok()
                })
                .collect(),
            federated: seed
                .federated_credentials
                .into_iter()
                .filter_map(|f| {
                    FederatedCredential::new(f)
                        .map_err(|e| tracing::warn!("graphsim: federated credential left out: {e}"))
                        .ok()
                })
                .collect(),
            users: Vec::new(),
            index: HashMap::new(),
            dir: DirectoryState::new(&domain),
        };
        let index = match self.tenant(&guid) {
            Some(i) => {
                self.tenants[i] = tenant;
                i
            }
            None => {
                self.tenants.push(tenant);
                self.tenants.len() - 1
            }
        };
        self.tenant_index.insert(guid, index);
        self.tenant_index.insert(domain, index);
        index
    }

    /// Adds a user to a tenant; returns its object id.
    pub fn add_user(&mut self, tenant: usize, seed: UserSeed) -> String {
        let id = seed
            .properties
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let created = self.clock.next();
        let t = &mut self.tenants[tenant];
        let mut given = seed.display_name.split_whitespace();
        let first = given.next().map(str::to_owned);
        let rest: Vec<&str> = given.collect();
        let mut directory = Map::new();
        let defaults = json!({
            "businessPhones": [],
            "displayName": seed.display_name,
            "givenName": first,
            "jobTitle": null,
            "mail": seed.mail,
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": null,
            "surname": if rest.is_empty() { Value::Null } else { Value::String(rest.join(" ")) },
            "userPrincipalName": seed.upn,
            "id": id,
            "accountEnabled": seed.account_enabled,
            "userType": if seed.user_type.is_empty() { Value::Null } else { Value::String(seed.user_type.clone()) },
            "assignedLicenses": if seed.licensed { json!([{"disabledPlans": [], "skuId": LICENSE_SKU}]) } else { json!([]) },
            "proxyAddresses": seed.mail.as_ref().map(|m| vec![format!("SMTP:{m}")]).unwrap_or_default(),
            "mailNickname": seed.upn.split('@').next().unwrap_or_default(),
            "createdDateTime": created,
            "companyName": null,
            "department": null,
            "usageLocation": if seed.licensed { Value::String("US".into()) } else { Value::Null },
            "otherMails": [],
            "imAddresses": [],
            "city": null, "country": null, "state": null, "streetAddress": null, "postalCode": null,
            "faxNumber": null, "employeeId": null, "showInAddressList": null, "onPremisesSyncEnabled": null,
            "deletedDateTime": null, "creationType": null, "externalUserState": null,
        });
        if let Value::Object(d) = defaults {
            directory = d;
        }
        for (k, v) in seed.properties {
            directory.insert(k, v);
        }
        let user = User {
            id: id.clone(),
            upn: seed.upn.clone(),
            mailbox_state: seed.mailbox,
            directory,
            mailbox: Mailbox::new(),
        };
        let index = match t.user_index(&seed.upn) {
            Some(i) => {
                let old_id = t.users[i].id.to_lowercase();
                t.index.remove(&old_id);
                t.users[i] = user;
                i
            }
            None => {
                t.users.push(user);
                t.users.len() - 1
            }
        };
        t.index.insert(seed.upn.to_lowercase(), index);
        t.index.insert(id.to_lowercase(), index);
        t.dir.user_created(&id);
        id
    }

    /// A user's mailbox by tenant key and user key.
    pub fn user_mut(&mut self, tenant: &str, user: &str) -> Option<&mut User> {
        let t = self.tenant(tenant)?;
        let u = self.tenants[t].user_index(user)?;
        Some(&mut self.tenants[t].users[u])
    }

    /// Issues a token.
    pub fn issue_token(&mut self, tenant: usize, lifetime: Duration) -> String {
        let t = &self.tenants[tenant];
        let now = chrono::Utc::now().timestamp();
        let issuer = format!("https://sts.windows.net/{}/", t.guid);
        // The app's service principal: one object id per tenant and app, as Entra's `oid`/`sub` of app tokens.
        let principal = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{}|{}", t.guid, t.client_id.to_lowercase()).as_bytes(),
        )
        .to_string();
        // Entra's v1.0 app-only access token for Graph. `roles` is absent (not null, not empty) when the app
        // holds no granted application permission, e.g. before admin consent.
        let mut claims = json!({
            "aud": "https://graph.microsoft.com",
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
            "appid": t.client_id,
            "appidacr": "1",
            "idp": issuer,
            "idtyp": "app",
            "oid": principal,
            "sub": principal,
            "tid": t.guid,
            "uti": uuid::Uuid::new_v4().simple().to_string(),
            "ver": "1.0",
        });
        if t.admin_consent && !t.dir.roles.is_empty() {
            claims["roles"] = json!(t.dir.roles);
        }
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = format!(
            "{}.{}.{}",
            b64.encode(br#"{"typ":"JWT","alg":"RS256","x5t":"graphsim"}"#),
            b64.encode(claims.to_string()),
            b64.encode(uuid::Uuid::new_v4().as_bytes())
        );
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                tenant,
                app_id: t.client_id.clone(),
                expires: Instant::now() + lifetime,
                consent: t.admin_consent,
                roles: if t.admin_consent {
                    t.dir.roles.clone()
                } else {
                    Vec::new()
                },
            },
        );
        token
    }
}

/// MAPI's `PidLidHasPicture` as Graph names it for `$expand`: Exchange keeps it with the photo attachment.
pub const HAS_PICTURE_PROPERTY: &str = "Boolean {00062004-0000-0000-C000-000000000046} Id 0x8015";

/// The change a photo put (`true`) or removed (`false`) makes to its contact's properties.
fn has_picture(present: bool) -> ContactBody {
    ContactBody {
        extended: vec![(HAS_PICTURE_PROPERTY.to_owned(), Some(present.to_string()))],
        ..ContactBody::default()
    }
}
