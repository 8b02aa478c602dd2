//! From the variables or the file to validated [`Settings`]: which form applies, run-wide defaults, per-tenant
//! validation, the test-user merge and the duplicate check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::{Host, Url};
use uuid::Uuid;

use super::distribution;
use super::field_rules;
use super::raw::{self, Fields, Loc, Node};
use super::{
    CentralFields, ConfigError, DeletionPolicy, FieldPolicies, FieldPolicy, FieldRules,
    GraphLimits, InvalidTenant, MirrorOptions, Settings, TenantSettings,
    ALLOW_INSECURE_AUTHORITY_VAR, ALLOW_INSECURE_GRAPH_VAR, CERTIFICATE_FILE_VAR,
    CERTIFICATE_PASSWORD_FILE_VAR, CLIENT_ID_VAR, CLIENT_SECRET_FILE_VAR, CLIENT_SECRET_VAR,
    CONFIG_JSON_VAR, DEFAULT_AUTHORITY_HOST, DEFAULT_CENTRAL_FOLDER_NAME, DEFAULT_GRAPH_ENDPOINT,
    DEFAULT_MAX_DELETE_SHARE, DEFAULT_OPT_OUT_CATEGORY, DRY_RUN_VAR, FEDERATED_TOKEN_FILE_VAR,
    GLOBAL_ADDRESS_BOOK_USER_ID_VAR, MICROSOFT_TENANTS_JSON_VAR, TENANT_ID_VAR,
    TEST_USER_LIST_BY_TENANT_JSON_VAR,
};
use crate::credential::{ClientCertificate, Credential, FederatedTokenFile};
use crate::model::Field;
use crate::secret::Secret;

/// Keys of the document root only.
const ROOT_KEYS: &[&str] = &["MicrosoftTenants", "DryRun", "AllowMassDelete"];
/// Keys that describe one tenant.
const TENANT_KEYS: &[&str] = &[
    "TenantId",
    "ClientId",
    "ClientSecret",
    "ClientSecretFile",
    "CertificateFile",
    "CertificatePasswordFile",
    "FederatedTokenFile",
    "GlobalAddressBookUserId",
    "TestUserList",
    "PrimaryDomain",
    "TenantDomain",
    "Enabled",
];
/// Keys of a `MicrosoftTenants` entry only: at the document root `DryRun` is run-wide.
const ENTRY_KEYS: &[&str] = &["DryRun"];
/// Optional keys, per tenant or as run-wide defaults at the document root.
const OPTION_KEYS: &[&str] = &[
    "AuthorityHost",
    "GraphEndpoint",
    "CentralFolderName",
    "ManagedCategory",
    "StampNotes",
    "OptOutCategory",
    "DeleteManagedCopies",
    "MaxDeleteShare",
    "MaxInFlightPerMailbox",
    "RequestsPerWindow",
    "WindowSeconds",
    "Mirror",
    "Directory",
    "TargetGroups",
    "TargetFolder",
    "UpdateExisting",
    "CentralFields",
    "Fields",
    "Photos",
    "UploadBytesPerWindow",
    "UploadWindowSeconds",
];

const TENANT_ID: &str = "a tenant id (GUID) or verified domain such as contoso.onmicrosoft.com";
const CLIENT_ID: &str = "the app registration's client id (a GUID)";
const MAILBOX: &str = "the shared mailbox holding the central folder (UPN or object id)";
const SECRET: &str =
    "a credential: ClientSecret, ClientSecretFile, CertificateFile or FederatedTokenFile";
/// The keys of which a tenant names exactly one.
const CREDENTIAL_KEYS: [&str; 4] = [
    "ClientSecret",
    "ClientSecretFile",
    "CertificateFile",
    "FederatedTokenFile",
];
const ENDPOINT: &str =
    "an https URL (http:// only for a loopback host: localhost, 127.0.0.0/8 or ::1)";

/// Tenants in configuration order, each with the location of its TenantId.
type Tenants = Vec<(TenantSettings, Loc)>;

/// One load. Remembers every secret it has seen, so errors can be scrubbed of them.
pub(super) struct Builder<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Every secret value seen so far (variables, documents, secret files).
    pub(super) secrets: Vec<String>,
    /// Relative `ClientSecretFile` paths resolve against this (the config file's directory), else the working dir.
    base_dir: Option<PathBuf>,
    /// Where each tenant (in order) gave `FromTenants`, checked once every tenant is known.
    from_tenants_at: Vec<Option<Loc>>,
    /// The document's run-wide `AllowMassDelete`, when it sets it.
    allow_mass_delete: Option<bool>,
    /// Tenant entries that parse but cannot run, each with its error: the other tenants still run.
    invalid: Vec<InvalidTenant>,
}

/// The optional settings of one level (document root or tenant); `None` means "not set here".
#[derive(Default, Clone)]
struct Layer {
    authority_host: Option<Url>,
    graph_endpoint: Option<Url>,
    central_folder_name: Option<String>,
    managed_category: Option<String>,
    stamp_notes: Option<bool>,
    opt_out_category: Option<String>,
    delete_managed_copies: Option<bool>,
    max_delete_share: Option<f64>,
    max_in_flight: Option<u32>,
    requests_per_window: Option<u32>,
    window_seconds: Option<u64>,
    update_existing: Option<bool>,
    central_fields: Option<CentralFields>,
    /// `Fields` as configured at this level; merged key by key with the level below.
    field_policies: BTreeMap<Field, FieldPolicy>,
    photos: Option<bool>,
    upload_bytes_per_window: Option<u32>,
    upload_window_seconds: Option<u64>,
    distribution: distribution::Layer,
}

impl Layer {
    fn read(fields: &Fields) -> Result<Self, ConfigError> {
        let mut layer = Layer::default();
        if let Some((node, at)) = fields.get("AuthorityHost") {
            layer.authority_host = endpoint(node, at)?;
        }
        if let Some((node, at)) = fields.get("GraphEndpoint") {
            layer.graph_endpoint = endpoint(node, at)?;
        }
        if let Some((node, at)) = fields.get("CentralFolderName") {
            layer.central_folder_name = raw::string(node, at, "a folder name")?;
        }
        if let Some((node, at)) = fields.get("ManagedCategory") {
            layer.managed_category = raw::string(node, at, "a category name")?;
        }
        if let Some((node, at)) = fields.get("StampNotes") {
            layer.stamp_notes = raw::boolean(node, at)?;
        }
        if let Some((node, at)) = fields.get("OptOutCategory") {
            layer.opt_out_category = raw::string(node, at, "a category name")?;
        }
        if let Some((node, at)) = fields.get("DeleteManagedCopies") {
            layer.delete_managed_copies = raw::boolean(node, at)?;
        }
        if let Some((node, at)) = fields.get("MaxDeleteShare") {
            const SHARE: &str = "a share greater than 0 and at most 1 (0.1 allows 10%)";
            layer.max_delete_share = match raw::number(node, at, SHARE)? {
                Some(share) if share > 0.0 && share <= 1.0 => Some(share),
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        at: at.to_string(),
                        expected: SHARE.into(),
                        got: raw::shown(node),
                    })
                }
                None => None,
            };
        }
        if let Some((node, at)) = fields.get("MaxInFlightPerMailbox") {
            layer.max_in_flight = raw::integer(
                node,
                at,
                1,
                4,
                "a whole number from 1 to 4 (Graph allows 4)",
            )?
            .and_then(|v| u32::try_from(v).ok());
        }
        if let Some((node, at)) = fields.get("RequestsPerWindow") {
            layer.requests_per_window = raw::integer(
                node,
                at,
                1,
                u64::from(u32::MAX),
                "a whole number of requests, at least 1",
            )?
            .and_then(|v| u32::try_from(v).ok());
        }
        if let Some((node, at)) = fields.get("WindowSeconds") {
            layer.window_seconds = raw::integer(
                node,
                at,
                1,
                86_400,
                "a whole number of seconds from 1 to 86400",
            )?;
        }
        if let Some((node, at)) = fields.get("UpdateExisting") {
            layer.update_existing = raw::boolean(node, at)?;
        }
        if let Some((node, at)) = fields.get("CentralFields") {
            layer.central_fields = Some(field_rules::read_central_fields(node, at)?);
        }
        if let Some((node, at)) = fields.get("Fields") {
            layer.field_policies = field_rules::read_field_policies(node, at)?;
        }
        if let Some((node, at)) = fields.get("Photos") {
            layer.photos = raw::boolean(node, at)?;
        }
        if let Some((node, at)) = fields.get("UploadBytesPerWindow") {
            layer.upload_bytes_per_window = raw::integer(
                node,
                at,
                1,
                u64::from(u32::MAX),
                "a whole number of bytes, at least 1 (Graph allows 150 MB per 5 minutes)",
            )?
            .and_then(|v| u32::try_from(v).ok());
        }
        if let Some((node, at)) = fields.get("UploadWindowSeconds") {
            layer.upload_window_seconds = raw::integer(
                node,
                at,
                1,
                86_400,
                "a whole number of seconds from 1 to 86400",
            )?;
        }
        layer.distribution = distribution::Layer::read(fields)?;
        Ok(layer)
    }

    /// This level's values, falling back to `base` where unset.
    fn over(self, base: &Layer) -> Layer {
        Layer {
            authority_host: self.authority_host.or_else(|| base.authority_host.clone()),
            graph_endpoint: self.graph_endpoint.or_else(|| base.graph_endpoint.clone()),
            central_folder_name: self
                .central_folder_name
                .or_else(|| base.central_folder_name.clone()),
            managed_category: self
                .managed_category
                .or_else(|| base.managed_category.clone()),
            stamp_notes: self.stamp_notes.or(base.stamp_notes),
            opt_out_category: self
                .opt_out_category
                .or_else(|| base.opt_out_category.clone()),
            delete_managed_copies: self.delete_managed_copies.or(base.delete_managed_copies),
            max_delete_share: self.max_delete_share.or(base.max_delete_share),
            max_in_flight: self.max_in_flight.or(base.max_in_flight),
            requests_per_window: self.requests_per_window.or(base.requests_per_window),
            window_seconds: self.window_seconds.or(base.window_seconds),
            update_existing: self.update_existing.or(base.update_existing),
            central_fields: self.central_fields.or(base.central_fields),
            field_policies: base
                .field_policies
                .iter()
                .map(|(f, p)| (*f, *p))
                .chain(self.field_policies)
                .collect(),
            photos: self.photos.or(base.photos),
            upload_bytes_per_window: self
                .upload_bytes_per_window
                .or(base.upload_bytes_per_window),
            upload_window_seconds: self.upload_window_seconds.or(base.upload_window_seconds),
            distribution: self.distribution.over(&base.distribution),
        }
    }
}

impl<'a> Builder<'a> {
    /// Plain `http://` endpoints are accepted for loopback hosts, and for any host only when `switch` is true (a
    /// lab such as docker-compose, where graphsim is `http://graphsim:8080`): [`ALLOW_INSECURE_GRAPH_VAR`] for
    /// the GraphEndpoint, [`ALLOW_INSECURE_AUTHORITY_VAR`] for the AuthorityHost, which receives the secret.
    fn plain_http_allowed(&self, url: &Url, at: &Loc, switch: &str) -> Result<(), ConfigError> {
        if url.scheme() != "http" || is_loopback(url) {
            return Ok(());
        }
        let allowed = (self.env)(switch).is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "y"
            )
        });
        if allowed {
            return Ok(());
        }
        Err(invalid(
            at,
            &format!("{ENDPOINT} (or set {switch}=1 to allow plain http in a lab)"),
            raw::quoted(url.as_str()),
        ))
    }

    pub(super) fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            env,
            secrets: Vec::new(),
            base_dir: None,
            from_tenants_at: Vec::new(),
            allow_mass_delete: None,
            invalid: Vec::new(),
        }
    }

    /// A variable's value; unset and blank are the same.
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|value| !value.trim().is_empty())
    }

    /// The whole load. Precedence: the file, else `AUTOMATION_SYNCCONTACTS_CONFIG_JSON`, else
    /// `AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON`, else the single-tenant variables.
    pub(super) fn load(&mut self, file: Option<&Path>) -> Result<Settings, ConfigError> {
        if let Some(secret) = self.var(CLIENT_SECRET_VAR) {
            self.secrets.push(secret);
        }
        let (mut tenants, dry_run) = if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::ReadFile {
                path: path.display().to_string(),
                reason: io_reason(&error),
            })?;
            self.base_dir = path.parent().map(Path::to_path_buf);
            self.document(&text, &Loc::new(path.display().to_string()))?
        } else if let Some(text) = self.var(CONFIG_JSON_VAR) {
            self.document(&text, &Loc::new(CONFIG_JSON_VAR))?
        } else if let Some(text) = self.var(MICROSOFT_TENANTS_JSON_VAR) {
            (self.tenant_array(&text)?, None)
        } else {
            (self.single_tenant_variables()?, None)
        };
        // Safety rule: any source that says dry run wins. A document saying `"DryRun": false` never overrides
        // AUTOMATION_SYNCCONTACTS_DRY_RUN=true (nor `--dry-run`, applied by the caller).
        let env_dry_run = match self.var(DRY_RUN_VAR) {
            Some(value) => {
                raw::boolean(&Node::String(value), &Loc::new(DRY_RUN_VAR))?.unwrap_or(false)
            }
            None => false,
        };
        let dry_run = dry_run.unwrap_or(false) || env_dry_run;
        for (tenant, _) in &mut tenants {
            tenant.dry_run |= dry_run;
        }
        self.drop_duplicates(&mut tenants);
        if tenants.is_empty() {
            // No tenant can run: the configuration as a whole is wrong (exit 2), as before isolation.
            if let Some(first) = self.invalid.drain(..).next() {
                return Err(first.error);
            }
        }
        let sources: Vec<(&str, &super::Distribution, Option<&Loc>)> = tenants
            .iter()
            .zip(&self.from_tenants_at)
            .map(|((t, _), at)| (t.tenant_id.as_str(), &t.distribution, at.as_ref()))
            .collect();
        distribution::check_from_tenants(&sources)?;
        self.merge_test_users(&mut tenants)?;
        Ok(Settings {
            tenants: tenants.into_iter().map(|(tenant, _)| tenant).collect(),
            dry_run,
            allow_mass_delete: self.allow_mass_delete.unwrap_or(false),
            invalid_tenants: std::mem::take(&mut self.invalid),
        })
    }

    /// A tenant configured twice cannot run under either entry (which one was meant?): every entry of it becomes
    /// invalid, naming the other.
    fn drop_duplicates(&mut self, tenants: &mut Tenants) {
        let shown = |at: &Loc| {
            if at.path().is_empty() {
                at.to_string()
            } else {
                at.path().to_owned()
            }
        };
        // Each entry's other places, if the tenant is configured more than once.
        let others: Vec<Vec<String>> = tenants
            .iter()
            .enumerate()
            .map(|(i, (tenant, _))| {
                tenants
                    .iter()
                    .enumerate()
                    .filter(|(j, (other, _))| *j != i && other.tenant_id == tenant.tenant_id)
                    .map(|(_, (_, at))| shown(at))
                    .collect()
            })
            .collect();
        let entries = std::mem::take(tenants);
        let from_tenants_at = std::mem::take(&mut self.from_tenants_at);
        for (((tenant, at), from), others) in entries.into_iter().zip(from_tenants_at).zip(others) {
            if others.is_empty() {
                tenants.push((tenant, at));
                self.from_tenants_at.push(from);
                continue;
            }
            let id = tenant.tenant_id;
            self.invalid.push(InvalidTenant {
                error: ConfigError::Conflict {
                    at: at.to_string(),
                    problem: format!(
                        "tenant {id:?} is configured twice (also at {}), expected each tenant once",
                        others.join(", ")
                    ),
                },
                name: id,
            });
        }
    }

    /// The `AUTOMATION_SYNCCONTACTS_CONFIG_JSON` document (or the file): `MicrosoftTenants` plus run-wide settings,
    /// or the older flat single-tenant object.
    fn document(&mut self, text: &str, at: &Loc) -> Result<(Tenants, Option<bool>), ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::Missing {
                at: at.to_string(),
                expected: "a JSON object (the AUTOMATION_SYNCCONTACTS_CONFIG_JSON document)".into(),
            });
        }
        let node = raw::parse(text, at)?;
        node.collect_secrets(&mut self.secrets);
        let known: Vec<&'static str> = [ROOT_KEYS, TENANT_KEYS, OPTION_KEYS].concat();
        let root = Fields::from_object(&node, at, &known, &|_| None)?;
        let dry_run = match root.get("DryRun") {
            Some((node, at)) => raw::boolean(node, at)?,
            None => None,
        };
        if let Some((node, at)) = root.get("AllowMassDelete") {
            self.allow_mass_delete = raw::boolean(node, at)?;
        }
        let defaults = Layer::read(&root)?;
        let Some((list, list_at)) = root.get("MicrosoftTenants") else {
            // The older flat form: the root is the one tenant.
            let tenant = self.tenant(&root, at, &|key| at.key(key), &defaults)?;
            return Ok((vec![tenant], dry_run));
        };
        if let Some(key) = TENANT_KEYS.iter().find(|key| root.has(key)) {
            return Err(ConfigError::Conflict {
                at: at.key(key).to_string(),
                problem: "a tenant key next to MicrosoftTenants, expected it inside each MicrosoftTenants entry".into(),
            });
        }
        let hint = |key: &str| {
            ROOT_KEYS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(key))
                .then(|| format!("{key} is run-wide: set it at the top level of the document"))
        };
        let tenants = self.tenants(list, list_at, &hint, &defaults)?;
        Ok((tenants, dry_run))
    }

    /// `AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON`: the tenant array.
    fn tenant_array(&mut self, text: &str) -> Result<Tenants, ConfigError> {
        let at = Loc::new(MICROSOFT_TENANTS_JSON_VAR);
        let node = raw::parse(text, &at)?;
        node.collect_secrets(&mut self.secrets);
        self.tenants(&node, &at, &|_| None, &Layer::default())
    }

    /// A tenant array (or one tenant object, as PowerShell's `ConvertTo-Json` writes a one-element array).
    fn tenants(
        &mut self,
        list: &Node,
        at: &Loc,
        hint: &dyn Fn(&str) -> Option<String>,
        defaults: &Layer,
    ) -> Result<Tenants, ConfigError> {
        let entries: Vec<(&Node, Loc)> = match list {
            Node::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, at.index(i)))
                .collect(),
            Node::Object(_) => vec![(list, at.clone())],
            other => {
                return Err(ConfigError::Invalid {
                    at: at.to_string(),
                    expected: "an array of tenant objects".into(),
                    got: other.kind().into(),
                })
            }
        };
        if entries.is_empty() {
            return Err(ConfigError::Invalid {
                at: at.to_string(),
                expected: "at least one tenant".into(),
                got: "an empty array".into(),
            });
        }
        let known: Vec<&'static str> = [TENANT_KEYS, ENTRY_KEYS, OPTION_KEYS].concat();
        let mut tenants = Vec::with_capacity(entries.len());
        // Each entry stands alone: one that cannot run is set aside with its error, the others still run.
        for (node, tenant_at) in entries {
            let tenant = Fields::from_object(node, &tenant_at, &known, hint).and_then(|fields| {
                self.tenant(&fields, &tenant_at, &|key| tenant_at.key(key), defaults)
            });
            match tenant {
                Ok(tenant) => tenants.push(tenant),
                Err(error) => self.invalid.push(InvalidTenant {
                    name: entry_name(node, &tenant_at),
                    error,
                }),
            }
        }
        Ok(tenants)
    }

    /// `AUTOMATION_SYNCCONTACTS_TENANT_ID`, `_CLIENT_ID`, `_CLIENT_SECRET` (or `_CLIENT_SECRET_FILE`) and
    /// `_GLOBAL_ADDRESS_BOOK_USER_ID`.
    fn single_tenant_variables(&mut self) -> Result<Tenants, ConfigError> {
        let vars = [
            ("TenantId", TENANT_ID_VAR),
            ("ClientId", CLIENT_ID_VAR),
            ("ClientSecret", CLIENT_SECRET_VAR),
            ("ClientSecretFile", CLIENT_SECRET_FILE_VAR),
            ("CertificateFile", CERTIFICATE_FILE_VAR),
            ("CertificatePasswordFile", CERTIFICATE_PASSWORD_FILE_VAR),
            ("FederatedTokenFile", FEDERATED_TOKEN_FILE_VAR),
            ("GlobalAddressBookUserId", GLOBAL_ADDRESS_BOOK_USER_ID_VAR),
        ];
        let mut fields = Fields::empty();
        for (key, var) in vars {
            if let Some(value) = self.var(var) {
                fields.insert(key, Node::String(value), Loc::new(var));
            }
        }
        if !vars.iter().any(|(key, _)| fields.has(key)) {
            return Err(ConfigError::NotConfigured);
        }
        let var_of = |key: &str| {
            Loc::new(
                vars.iter()
                    .find(|(k, _)| *k == key)
                    .map_or(TENANT_ID_VAR, |(_, var)| var),
            )
        };
        let tenant = self.tenant(
            &fields,
            &Loc::new(TENANT_ID_VAR),
            &var_of,
            &Layer::default(),
        )?;
        Ok(vec![tenant])
    }

    /// One tenant. `missing` says where to point when a required key is absent. Returns the tenant and the
    /// location of its TenantId.
    fn tenant(
        &mut self,
        fields: &Fields,
        parent: &Loc,
        missing: &dyn Fn(&str) -> Loc,
        defaults: &Layer,
    ) -> Result<(TenantSettings, Loc), ConfigError> {
        let (tenant_id, tenant_at) = required(fields, "TenantId", missing, TENANT_ID)?;
        let tenant_id = match Uuid::parse_str(&tenant_id) {
            Ok(guid) => guid.hyphenated().to_string(),
            Err(_) if is_domain(&tenant_id) => tenant_id.to_ascii_lowercase(),
            Err(_) => return Err(invalid(&tenant_at, TENANT_ID, raw::quoted(&tenant_id))),
        };
        let (client_id, client_at) = required(fields, "ClientId", missing, CLIENT_ID)?;
        let client_id = match Uuid::parse_str(&client_id) {
            Ok(guid) => guid.hyphenated().to_string(),
            Err(_) => return Err(invalid(&client_at, "a GUID", raw::quoted(&client_id))),
        };
        let credential = self.credential(fields, missing)?;
        let layer = Layer::read(fields)?.over(defaults);
        // A directory-only tenant (`Mirror.Enabled` false) touches no shared mailbox, so needs none.
        let global_address_book_user_id = if layer.distribution.mirror_enabled() {
            required(fields, "GlobalAddressBookUserId", missing, MAILBOX)?.0
        } else {
            match fields.get("GlobalAddressBookUserId") {
                Some((node, at)) => raw::string(node, at, MAILBOX)?.unwrap_or_default(),
                None => String::new(),
            }
        };
        let test_user_list = match fields.get("TestUserList") {
            Some((node, at)) => raw::user_list(node, at)?,
            None => None,
        };
        let mut domains = Vec::new();
        for key in ["PrimaryDomain", "TenantDomain"] {
            if let Some((node, at)) = fields.get(key) {
                const DOMAIN: &str = "a verified domain such as contoso.com";
                if let Some(domain) = raw::string(node, at, DOMAIN)? {
                    if !is_domain(&domain) {
                        return Err(invalid(at, DOMAIN, raw::quoted(&domain)));
                    }
                    let domain = domain.to_ascii_lowercase();
                    if domain != tenant_id && !domains.contains(&domain) {
                        domains.push(domain);
                    }
                }
            }
        }
        let enabled = match fields.get("Enabled") {
            Some((node, at)) => raw::boolean(node, at)?.unwrap_or(true),
            None => true,
        };
        let dry_run = match fields.get("DryRun") {
            Some((node, at)) => raw::boolean(node, at)?.unwrap_or(false),
            None => false,
        };
        let opt_out_category = layer
            .opt_out_category
            .unwrap_or_else(|| DEFAULT_OPT_OUT_CATEGORY.to_owned());
        if let Some(managed) = &layer.managed_category {
            if managed.eq_ignore_ascii_case(&opt_out_category) {
                return Err(ConfigError::Conflict {
                    at: parent.to_string(),
                    problem: format!(
                        "ManagedCategory and OptOutCategory are both {managed:?}, expected different categories \
                         (managed copies would count as opted out)"
                    ),
                });
            }
        }
        for (key, url, switch) in [
            (
                "AuthorityHost",
                &layer.authority_host,
                ALLOW_INSECURE_AUTHORITY_VAR,
            ),
            (
                "GraphEndpoint",
                &layer.graph_endpoint,
                ALLOW_INSECURE_GRAPH_VAR,
            ),
        ] {
            if let Some(url) = url {
                self.plain_http_allowed(url, &parent.key(key), switch)?;
            }
        }
        let central_folder_name = layer
            .central_folder_name
            .unwrap_or_else(|| DEFAULT_CENTRAL_FOLDER_NAME.to_owned());
        let (distribution, from_tenants_at) = layer.distribution.finish(&central_folder_name)?;
        self.from_tenants_at.push(from_tenants_at);
        let defaults = GraphLimits::default();
        let tenant = TenantSettings {
            tenant_id,
            client_id,
            credential,
            global_address_book_user_id,
            test_user_list,
            domains,
            enabled,
            dry_run,
            authority_host: layer
                .authority_host
                .unwrap_or_else(|| default_url(DEFAULT_AUTHORITY_HOST)),
            graph_endpoint: layer
                .graph_endpoint
                .unwrap_or_else(|| default_url(DEFAULT_GRAPH_ENDPOINT)),
            mirror: MirrorOptions {
                central_folder_name,
                managed_category: layer.managed_category,
                stamp_notes: layer.stamp_notes.unwrap_or(true),
                opt_out_category,
                deletion: DeletionPolicy {
                    enabled: layer.delete_managed_copies.unwrap_or(true),
                    max_share: layer.max_delete_share.unwrap_or(DEFAULT_MAX_DELETE_SHARE),
                },
                update_existing: layer.update_existing.unwrap_or(true),
                fields: FieldRules {
                    central: layer.central_fields.unwrap_or_default(),
                    // Each level's policies were checked when read; merged they hold only those values.
                    policy: FieldPolicies::new(&layer.field_policies).map_err(|field| {
                        invalid(
                            &parent.key("Fields").key(field.graph_name()),
                            "Overwrite",
                            raw::quoted(field.graph_name()),
                        )
                    })?,
                },
            },
            limits: GraphLimits {
                max_in_flight: layer.max_in_flight.unwrap_or(defaults.max_in_flight),
                requests_per_window: layer
                    .requests_per_window
                    .unwrap_or(defaults.requests_per_window),
                window: layer
                    .window_seconds
                    .map_or(defaults.window, Duration::from_secs),
                upload_bytes_per_window: layer
                    .upload_bytes_per_window
                    .unwrap_or(defaults.upload_bytes_per_window),
                upload_window: layer
                    .upload_window_seconds
                    .map_or(defaults.upload_window, Duration::from_secs),
            },
            photos: layer.photos.unwrap_or(false),
            distribution,
        };
        Ok((tenant, tenant_at))
    }

    /// Exactly one of `ClientSecret`, `ClientSecretFile`, `CertificateFile` (with `CertificatePasswordFile` for a
    /// password-protected PKCS#12) and `FederatedTokenFile`. Two or none name the keys.
    fn credential(
        &mut self,
        fields: &Fields,
        missing: &dyn Fn(&str) -> Loc,
    ) -> Result<Credential, ConfigError> {
        let given: Vec<&str> = CREDENTIAL_KEYS
            .iter()
            .copied()
            .filter(|key| fields.has(key))
            .collect();
        if let [first, second, ..] = given.as_slice() {
            let (_, at) = fields.get(second).expect("the key is present");
            return Err(ConfigError::Conflict {
                at: at.to_string(),
                problem: format!(
                    "both {first} and {second} are set, expected exactly one of {}",
                    CREDENTIAL_KEYS.join(", ")
                ),
            });
        }
        if let Some((_, at)) = fields.get("CertificatePasswordFile") {
            if !fields.has("CertificateFile") {
                return Err(ConfigError::Conflict {
                    at: at.to_string(),
                    problem: "CertificatePasswordFile is set without CertificateFile, expected it only next to \
                              a PKCS#12 CertificateFile"
                        .into(),
                });
            }
        }
        match given.first().copied() {
            Some("CertificateFile") => self.certificate(fields),
            Some("FederatedTokenFile") => {
                let (node, at) = fields
                    .get("FederatedTokenFile")
                    .expect("the key is present");
                let path = self.credential_path(node, at)?;
                let file = FederatedTokenFile::new(&path);
                // Read once now so a wrong path stops here; the token itself is read again for every request.
                file.read().map_err(|reason| ConfigError::CredentialFile {
                    at: at.to_string(),
                    file: path.display().to_string(),
                    reason: reason
                        .rsplit_once(": ")
                        .map_or(reason.clone(), |(_, why)| why.to_owned()),
                })?;
                Ok(Credential::FederatedToken(file))
            }
            _ => self.secret(fields, missing).map(Credential::Secret),
        }
    }

    /// A path from a credential key, relative to the configuration file's directory.
    fn credential_path(&self, node: &Node, at: &Loc) -> Result<PathBuf, ConfigError> {
        let Some(name) = raw::string(node, at, "a file path")? else {
            return Err(ConfigError::Missing {
                at: at.to_string(),
                expected: SECRET.into(),
            });
        };
        Ok(match &self.base_dir {
            Some(dir) if Path::new(&name).is_relative() => dir.join(&name),
            _ => PathBuf::from(&name),
        })
    }

    /// `CertificateFile`: PEM with key and certificate, or PKCS#12 opened with `CertificatePasswordFile`'s
    /// content (none: an empty password). An expired certificate loads: the tenant fails at its token request,
    /// naming the fix, while the others run.
    fn certificate(&mut self, fields: &Fields) -> Result<Credential, ConfigError> {
        let (node, at) = fields.get("CertificateFile").expect("the key is present");
        let path = self.credential_path(node, at)?;
        let file_error = |at: &Loc, path: &Path, reason: String| ConfigError::CredentialFile {
            at: at.to_string(),
            file: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| file_error(at, &path, io_reason(&e)))?;
        let password = match fields.get("CertificatePasswordFile") {
            Some((node, password_at)) => {
                let password_path = self.credential_path(node, password_at)?;
                let text = std::fs::read_to_string(&password_path)
                    .map_err(|e| file_error(password_at, &password_path, io_reason(&e)))?;
                self.secrets.push(text.clone());
                let password = text.trim_end_matches(['\r', '\n']).to_owned();
                self.secrets.push(password.clone());
                Some(password)
            }
            None => None,
        };
        let certificate = ClientCertificate::from_bytes(&bytes, password.as_deref())
            .map_err(|e| file_error(at, &path, e.to_string()))?;
        Ok(Credential::Certificate(certificate))
    }

    /// `ClientSecret` (used as given, minus trailing line breaks) or `ClientSecretFile` (the file's content minus
    /// trailing line breaks).
    fn secret(
        &mut self,
        fields: &Fields,
        missing: &dyn Fn(&str) -> Loc,
    ) -> Result<Secret, ConfigError> {
        match (fields.get("ClientSecret"), fields.get("ClientSecretFile")) {
            (Some(_), Some((_, file_at))) => Err(ConfigError::Conflict {
                at: file_at.to_string(),
                problem: "both ClientSecret and ClientSecretFile are set, expected exactly one"
                    .into(),
            }),
            (Some((Node::String(secret), _)), None) => {
                Ok(Secret::new(secret.trim_end_matches(['\r', '\n'])))
            }
            (Some((other, at)), None) => Err(invalid(
                at,
                "the client secret as a string",
                other.kind().into(),
            )),
            (None, Some((node, at))) => {
                let Some(name) = raw::string(node, at, "a file path")? else {
                    return Err(ConfigError::Missing {
                        at: at.to_string(),
                        expected: SECRET.into(),
                    });
                };
                let path = match &self.base_dir {
                    Some(dir) if Path::new(&name).is_relative() => dir.join(&name),
                    _ => PathBuf::from(&name),
                };
                let content =
                    std::fs::read_to_string(&path).map_err(|error| ConfigError::SecretFile {
                        at: at.to_string(),
                        file: path.display().to_string(),
                        reason: io_reason(&error),
                    })?;
                self.secrets.push(content.clone());
                let secret = content.trim_end_matches(['\r', '\n']);
                self.secrets.push(secret.to_owned());
                if secret.trim().is_empty() {
                    return Err(ConfigError::SecretFile {
                        at: at.to_string(),
                        file: path.display().to_string(),
                        reason: "the file is empty, expected the client secret".into(),
                    });
                }
                Ok(Secret::new(secret))
            }
            (None, None) => Err(ConfigError::Missing {
                at: missing("ClientSecret").to_string(),
                expected: SECRET.into(),
            }),
        }
    }

    /// `AUTOMATION_SYNCCONTACTS_TEST_USER_LIST_BY_TENANT_JSON`: `{"<TenantId>": ["upn", ...]}`, keys matched to the
    /// configured tenants ignoring case; the users are added to the tenant's `TestUserList`.
    fn merge_test_users(&self, tenants: &mut Tenants) -> Result<(), ConfigError> {
        let Some(text) = self.var(TEST_USER_LIST_BY_TENANT_JSON_VAR) else {
            return Ok(());
        };
        let at = Loc::new(TEST_USER_LIST_BY_TENANT_JSON_VAR);
        let node = raw::parse(&text, &at)?;
        let Node::Object(entries) = &node else {
            return Err(invalid(
                &at,
                "a JSON object mapping TenantId to a list of users",
                node.kind().into(),
            ));
        };
        let mut seen: Vec<(usize, &str)> = Vec::new();
        for (key, value) in entries {
            let key_at = at.key(&raw::quoted(key));
            let wanted = normalize_tenant_id(key);
            let Some(index) = tenants.iter().position(|(t, _)| t.is_known_as(&wanted)) else {
                if self
                    .invalid
                    .iter()
                    .any(|t| t.name.eq_ignore_ascii_case(&wanted))
                {
                    // The tenant's entry is invalid and fails on its own; its test users have nowhere to go.
                    continue;
                }
                let configured: Vec<&str> =
                    tenants.iter().map(|(t, _)| t.tenant_id.as_str()).collect();
                return Err(invalid(
                    &key_at,
                    &format!(
                        "the TenantId, PrimaryDomain or TenantDomain of a configured tenant ({})",
                        configured.join(", ")
                    ),
                    raw::quoted(key),
                ));
            };
            if let Some((_, first)) = seen.iter().find(|(i, _)| *i == index) {
                return Err(ConfigError::Conflict {
                    at: key_at.to_string(),
                    problem: format!(
                        "the tenant is already listed as {first:?}, expected each tenant once"
                    ),
                });
            }
            seen.push((index, key));
            if let Some(users) = raw::user_list(value, &key_at)? {
                let list = tenants[index].0.test_user_list.get_or_insert_with(Vec::new);
                for user in users {
                    if !list.iter().any(|known| known.eq_ignore_ascii_case(&user)) {
                        list.push(user);
                    }
                }
            }
        }
        Ok(())
    }
}

/// How an entry that cannot run is named: its TenantId when it has a readable one, else its place in the list.
fn entry_name(node: &Node, at: &Loc) -> String {
    if let Node::Object(entries) = node {
        let id = entries.iter().find_map(|(key, value)| match value {
            Node::String(id)
                if key.trim().eq_ignore_ascii_case("TenantId") && !id.trim().is_empty() =>
            {
                Some(normalize_tenant_id(id))
            }
            _ => None,
        });
        if let Some(id) = id {
            return id;
        }
    }
    if at.path().is_empty() {
        at.to_string()
    } else {
        at.path().to_owned()
    }
}

/// A required, non-secret string.
fn required(
    fields: &Fields,
    name: &'static str,
    missing: &dyn Fn(&str) -> Loc,
    expected: &str,
) -> Result<(String, Loc), ConfigError> {
    match fields.get(name) {
        Some((node, at)) => match raw::string(node, at, expected)? {
            Some(value) => Ok((value, at.clone())),
            None => Err(ConfigError::Missing {
                at: at.to_string(),
                expected: expected.into(),
            }),
        },
        None => Err(ConfigError::Missing {
            at: missing(name).to_string(),
            expected: expected.into(),
        }),
    }
}

fn invalid(at: &Loc, expected: &str, got: String) -> ConfigError {
    ConfigError::Invalid {
        at: at.to_string(),
        expected: expected.to_owned(),
        got,
    }
}

/// A tenant id as stored: GUIDs hyphenated lowercase, domains lowercase.
pub(super) fn normalize_tenant_id(id: &str) -> String {
    let id = id.trim();
    match Uuid::parse_str(id) {
        Ok(guid) => guid.hyphenated().to_string(),
        Err(_) => id.to_ascii_lowercase(),
    }
}

/// A DNS name with at least two labels (`contoso.onmicrosoft.com`), so `common`/`organizations` are refused: they
/// do not work with client credentials.
fn is_domain(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// An authority or Graph endpoint: https, or http to a loopback host; no credentials, query or fragment. The path
/// gets a trailing `/` so that `Url::join` keeps it.
fn endpoint(node: &Node, at: &Loc) -> Result<Option<Url>, ConfigError> {
    let Some(text) = raw::string(node, at, ENDPOINT)? else {
        return Ok(None);
    };
    // A URL with '@' may carry a password: never quote it.
    let got = || {
        if text.contains('@') {
            "a URL with user information (not shown)".to_owned()
        } else {
            raw::quoted(&text)
        }
    };
    let mut url =
        Url::parse(&text).map_err(|error| invalid(at, &format!("{ENDPOINT}; {error}"), got()))?;
    // http to a non-loopback host is refused later, in `Builder::plain_http_allowed`, where the environment is known.
    let scheme_ok = url.scheme() == "https" || url.scheme() == "http";
    if !scheme_ok || url.host().is_none() || url.cannot_be_a_base() {
        return Err(invalid(at, ENDPOINT, got()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(at, "a URL without user name or password", got()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(at, "a URL without query or fragment", got()));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(Some(url))
}

/// Whether `url` points at this machine (where plain http cannot be intercepted on the way).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn default_url(text: &str) -> Url {
    Url::parse(text).expect("the built-in default URLs are valid")
}

/// An I/O error's kind in words (never the file's content).
fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::InvalidData => "not valid UTF-8 text".into(),
        std::io::ErrorKind::IsADirectory => "is a directory, expected a file".into(),
        kind => kind.to_string(),
    }
}
