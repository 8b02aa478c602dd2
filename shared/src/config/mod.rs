//! Configuration: the PowerShell script's `AUTOMATION_SYNCCONTACTS_*` variables (or the same JSON document from a
//! file), validated into typed [`Settings`] before anything is contacted.
//!
//! Entry points: [`Settings::from_env`], [`Settings::from_file`] and the testable core [`Settings::from_sources`].
//!
//! # Where the configuration comes from
//! The first of these that is set (a blank variable counts as unset) describes the tenants; the others are ignored:
//! 1. the file given to [`Settings::from_file`] (`--config PATH`): the same JSON document as
//!    [`CONFIG_JSON_VAR`];
//! 2. [`CONFIG_JSON_VAR`]: `{"MicrosoftTenants":[{..tenant..}], "DryRun":"true", ..run-wide defaults..}`, or the
//!    older flat single-tenant form `{"TenantId":..,"ClientId":..,"ClientSecret":..,"GlobalAddressBookUserId":..,
//!    "DryRun":..}`;
//! 3. [`MICROSOFT_TENANTS_JSON_VAR`]: the tenant array alone (a single tenant object is accepted too, as PowerShell
//!    writes a one-element array that way);
//! 4. the single-tenant variables [`TENANT_ID_VAR`], [`CLIENT_ID_VAR`], [`CLIENT_SECRET_VAR`] (or
//!    [`CLIENT_SECRET_FILE_VAR`]) and [`GLOBAL_ADDRESS_BOOK_USER_ID_VAR`].
//!
//! Dry run: any source that says dry run wins, and none can take it back. The run is dry when the document's
//! `DryRun` or [`DRY_RUN_VAR`] says true (or `--dry-run` is given); a document saying `"DryRun": false` never
//! overrides the variable. A tenant entry's own `DryRun: true` makes that tenant alone dry (onboarding a customer
//! while the others write); its `DryRun: false` cannot make a dry run write.
//!
//! # One tenant's mistake is that tenant's
//! A `MicrosoftTenants` entry that parses but cannot run (a missing key, an invalid value, a tenant configured
//! twice) is set aside in [`Settings::invalid_tenants`] with its error; every other tenant runs. Malformed JSON, an
//! invalid run-wide setting or a document where no tenant is valid stays an error of the whole configuration.
//! [`TEST_USER_LIST_BY_TENANT_JSON_VAR`] (`{"contoso.onmicrosoft.com":["user1@contoso.com"]}`) applies to every
//! form: its users are added to the `TestUserList` of the tenant whose TenantId matches the key (ignoring case); a
//! key naming no configured tenant is an error.
//!
//! # Keys
//! Per tenant: `TenantId`, `ClientId`, one credential (`ClientSecret`, `ClientSecretFile`, `CertificateFile` with
//! an optional `CertificatePasswordFile` for PKCS#12, or `FederatedTokenFile`), `GlobalAddressBookUserId`,
//! `TestUserList` (object ids, UPNs, mails or aliases, see [`crate::test_users`]; `[]` or absent: every user), `PrimaryDomain` / `TenantDomain`
//! (other names [`TEST_USER_LIST_BY_TENANT_JSON_VAR`] may use for the tenant), `Enabled` (default true; false:
//! configured but not run), `DryRun` (this tenant only), and the optional settings `UpdateExisting` (default true;
//! false: create missing contacts, never change an existing one), `AuthorityHost`, `GraphEndpoint`, `CentralFolderName`, `ManagedCategory`,
//! `StampNotes`, `OptOutCategory`, `DeleteManagedCopies`, `MaxDeleteShare`, `MaxInFlightPerMailbox`,
//! `RequestsPerWindow`, `WindowSeconds`, `Photos` (default false: directory users' photos on their copies),
//! `UploadBytesPerWindow` and `UploadWindowSeconds` (the per-mailbox upload budget, default 150,000,000 bytes per
//! 300 s), what travels (issue 14, see [`FieldRules`]): `CentralFields` (Graph names
//! of the fields a personal contact may publish) and `Fields` (`{"<Graph name>": "Overwrite"|"FillEmpty"|"Ignore"}`,
//! merged key by key with the run-wide one), and what is distributed where (issue 11, see [`Distribution`]): `Mirror`
//! `{Enabled}` (default true; when false `GlobalAddressBookUserId` is not required), `Directory` `{Enabled,
//! MemberTypes, IncludeGroups, ExcludeGroups, UserFilter, ExcludeHidden, FromTenants}`, `TargetGroups` and
//! `TargetFolder`. The optional settings may also be given at the top level of the document as run-wide defaults;
//! a tenant's own value wins (inside `Directory`, key by key).
//!
//! Keys match ignoring ASCII case (`tenantId` is `TenantId`), like PowerShell's property access that the script
//! relied on. This is unambiguous because no two known keys differ only in case; an object holding the same key
//! twice (in any spelling) is rejected, and so is any unknown key, with a suggestion for likely typos.
//!
//! Values: null and empty (or all-blank) strings count as missing. Booleans are JSON booleans, the numbers 0/1, or
//! the strings true/false/1/0/yes/no/y/n in any case. Numbers may be given as JSON numbers or numeric strings.
//!
//! # Errors and secrets
//! Every [`ConfigError`] names the variable or file and the JSON path (`AUTOMATION_SYNCCONTACTS_CONFIG_JSON:
//! MicrosoftTenants[1].ClientId: expected a GUID, got "abc"`). No error ever contains a secret: JSON syntax errors
//! give only line and column, secret fields are described by type only, and every error is finally scrubbed of
//! every secret value the load has seen (in case one was pasted into the wrong field).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use url::Url;

use crate::credential::Credential;

pub use distribution::{
    DirectoryOptions, Distribution, FolderName, GroupRef, MemberType, MemberTypes, TargetFolder,
    UserFilter,
};
pub use field_rules::{
    CentralFields, FieldPolicies, FieldPolicy, FieldRules, DEFAULT_CENTRAL_FIELDS, MATCH_FIELDS,
};

mod build;
mod distribution;
mod field_rules;
mod raw;
#[cfg(test)]
mod tests;

/// The JSON document (preferred when set): `{"MicrosoftTenants":[...],"DryRun":..}` or the flat single-tenant form.
pub const CONFIG_JSON_VAR: &str = "AUTOMATION_SYNCCONTACTS_CONFIG_JSON";
/// The tenant array alone.
pub const MICROSOFT_TENANTS_JSON_VAR: &str = "AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON";
/// Single-tenant form: the tenant id or domain.
pub const TENANT_ID_VAR: &str = "AUTOMATION_SYNCCONTACTS_TENANT_ID";
/// Single-tenant form: the app's client id.
pub const CLIENT_ID_VAR: &str = "AUTOMATION_SYNCCONTACTS_CLIENT_ID";
/// Single-tenant form: the app's client secret.
pub const CLIENT_SECRET_VAR: &str = "AUTOMATION_SYNCCONTACTS_CLIENT_SECRET";
/// Single-tenant form: a file holding the client secret (instead of [`CLIENT_SECRET_VAR`]).
pub const CLIENT_SECRET_FILE_VAR: &str = "AUTOMATION_SYNCCONTACTS_CLIENT_SECRET_FILE";
/// Single-tenant form: a PEM (key and certificate) or PKCS#12 file (instead of a client secret).
pub const CERTIFICATE_FILE_VAR: &str = "AUTOMATION_SYNCCONTACTS_CERTIFICATE_FILE";
/// Single-tenant form: a file holding the password of a PKCS#12 [`CERTIFICATE_FILE_VAR`].
pub const CERTIFICATE_PASSWORD_FILE_VAR: &str = "AUTOMATION_SYNCCONTACTS_CERTIFICATE_PASSWORD_FILE";
/// Single-tenant form: a workload-identity token file, re-read for every token (instead of a client secret).
pub const FEDERATED_TOKEN_FILE_VAR: &str = "AUTOMATION_SYNCCONTACTS_FEDERATED_TOKEN_FILE";
/// Single-tenant form: the shared mailbox holding the central folder.
pub const GLOBAL_ADDRESS_BOOK_USER_ID_VAR: &str =
    "AUTOMATION_SYNCCONTACTS_GLOBAL_ADDRESS_BOOK_USER_ID";
/// Dry run, when the document does not set `DryRun`.
pub const DRY_RUN_VAR: &str = "AUTOMATION_SYNCCONTACTS_DRY_RUN";
/// Allows an `http://` GraphEndpoint on a host other than loopback (labs only, e.g. docker-compose). Never the
/// AuthorityHost: the token call carries the client secret.
pub const ALLOW_INSECURE_GRAPH_VAR: &str = "CONTACTMIRROR_ALLOW_INSECURE_GRAPH";
/// Allows an `http://` AuthorityHost on a host other than loopback: the client secret then travels in plain
/// text, so only for a lab with a fake secret (docker-compose's graphsim). Separate from
/// [`ALLOW_INSECURE_GRAPH_VAR`] so that switch can never expose a real secret.
pub const ALLOW_INSECURE_AUTHORITY_VAR: &str = "CONTACTMIRROR_ALLOW_INSECURE_AUTHORITY";
/// Test users per tenant: `{"<TenantId>":["upn",...]}`, merged into the tenants' `TestUserList`.
pub const TEST_USER_LIST_BY_TENANT_JSON_VAR: &str =
    "AUTOMATION_SYNCCONTACTS_TEST_USER_LIST_BY_TENANT_JSON";

/// Default `AuthorityHost`.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
/// Default `GraphEndpoint`.
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com/";
/// Default `CentralFolderName`.
pub const DEFAULT_CENTRAL_FOLDER_NAME: &str = "All Contacts";
/// Default `OptOutCategory`.
pub const DEFAULT_OPT_OUT_CATEGORY: &str = "Private";
/// Default `MaxDeleteShare`.
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.10;

/// Why the configuration was refused. Every message names the variable or file and the JSON path, says what was
/// expected, and never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No variable and no file describes a tenant.
    #[error(
        "no configuration: set AUTOMATION_SYNCCONTACTS_CONFIG_JSON, AUTOMATION_SYNCCONTACTS_MICROSOFT_TENANTS_JSON \
         or AUTOMATION_SYNCCONTACTS_TENANT_ID, _CLIENT_ID, _CLIENT_SECRET and _GLOBAL_ADDRESS_BOOK_USER_ID, \
         or pass a configuration file"
    )]
    NotConfigured,
    /// The configuration file cannot be read.
    #[error("{path}: cannot read the configuration file: {reason}")]
    ReadFile {
        /// The file.
        path: String,
        /// Why (the I/O error kind, never content).
        reason: String,
    },
    /// A JSON value does not parse. Only the position is given: the text may hold a secret.
    #[error("{at}: not valid JSON: {kind} at line {line}, column {column}")]
    Json {
        /// The variable or file.
        at: String,
        /// "syntax error" or "unexpected end of input".
        kind: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// A required value is absent, null or empty.
    #[error("{at}: missing, expected {expected}")]
    Missing {
        /// The variable or file and JSON path.
        at: String,
        /// What should be there.
        expected: String,
    },
    /// A value has the wrong type or is out of range.
    #[error("{at}: expected {expected}, got {got}")]
    Invalid {
        /// The variable or file and JSON path.
        at: String,
        /// What was expected.
        expected: String,
        /// What was found: the value if it is not secret, else only its type.
        got: String,
    },
    /// A key nobody reads (typos must not pass silently).
    #[error("{at}: unknown key {key:?}{}", hint_suffix(.hint))]
    UnknownKey {
        /// The variable or file and JSON path of the object holding the key.
        at: String,
        /// The key as written.
        key: String,
        /// A likely intended key, or where the key belongs.
        hint: Option<String>,
    },
    /// Values that contradict each other: a key given twice, a tenant configured twice, both `ClientSecret` and
    /// `ClientSecretFile`, a tenant key next to `MicrosoftTenants`.
    #[error("{at}: {problem}")]
    Conflict {
        /// The variable or file and JSON path.
        at: String,
        /// What is wrong and what was expected.
        problem: String,
    },
    /// The file named by `CertificateFile`, `CertificatePasswordFile` or `FederatedTokenFile` cannot be used.
    #[error("{at}: cannot use {file}: {reason}")]
    CredentialFile {
        /// The variable or file and JSON path of the key.
        at: String,
        /// The file.
        file: String,
        /// Why (never content).
        reason: String,
    },
    /// The file named by `ClientSecretFile` cannot be used.
    #[error("{at}: cannot read the client secret from {file}: {reason}")]
    SecretFile {
        /// The variable or file and JSON path of `ClientSecretFile`.
        at: String,
        /// The secret file.
        file: String,
        /// Why (never content).
        reason: String,
    },
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_deref()
        .map(|hint| format!(" ({hint})"))
        .unwrap_or_default()
}

impl ConfigError {
    /// Replaces every occurrence of a known secret in every text field: as given and trimmed (an error quotes a
    /// value trimmed, and a secret mounted from a file often ends with a newline), each also as `{:?}` would escape
    /// it.
    fn scrub(self, secrets: &[String]) -> Self {
        let clean = |mut text: String| {
            for secret in secrets.iter().filter(|s| !s.trim().is_empty()) {
                for given in [secret.as_str(), secret.trim()] {
                    let escaped = format!("{given:?}");
                    let escaped = &escaped[1..escaped.len() - 1];
                    for form in [given, escaped] {
                        if text.contains(form) {
                            text = text.replace(form, "[redacted]");
                        }
                    }
                }
            }
            text
        };
        match self {
            ConfigError::NotConfigured => ConfigError::NotConfigured,
            ConfigError::ReadFile { path, reason } => ConfigError::ReadFile {
                path: clean(path),
                reason: clean(reason),
            },
            ConfigError::Json {
                at,
                kind,
                line,
                column,
            } => ConfigError::Json {
                at: clean(at),
                kind,
                line,
                column,
            },
            ConfigError::Missing { at, expected } => ConfigError::Missing {
                at: clean(at),
                expected: clean(expected),
            },
            ConfigError::Invalid { at, expected, got } => ConfigError::Invalid {
                at: clean(at),
                expected: clean(expected),
                got: clean(got),
            },
            ConfigError::UnknownKey { at, key, hint } => ConfigError::UnknownKey {
                at: clean(at),
                key: clean(key),
                hint: hint.map(clean),
            },
            ConfigError::Conflict { at, problem } => ConfigError::Conflict {
                at: clean(at),
                problem: clean(problem),
            },
            ConfigError::SecretFile { at, file, reason } => ConfigError::SecretFile {
                at: clean(at),
                file: clean(file),
                reason: clean(reason),
            },
            ConfigError::CredentialFile { at, file, reason } => ConfigError::CredentialFile {
                at: clean(at),
                file: clean(file),
                reason: clean(reason),
            },
        }
    }
}

/// Validated settings for one run: every tenant plus run-wide options.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The tenants to mirror, in configuration order.
    pub tenants: Vec<TenantSettings>,
    /// Compute and report the plan, write nothing (every tenant).
    pub dry_run: bool,
    /// `AllowMassDelete` (run-wide, default false): lift the deletion cap for the run, like
    /// `run --allow-mass-delete`.
    pub allow_mass_delete: bool,
    /// Tenant entries that cannot run, each failed alone with its error while the others run.
    pub invalid_tenants: Vec<InvalidTenant>,
}

/// A tenant entry that parses but cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenant {
    /// Its TenantId when readable, else its place in the list (`MicrosoftTenants[2]`).
    pub name: String,
    /// What is wrong, naming the key at fault.
    pub error: ConfigError,
}

/// How to reach one tenant and how to mirror it.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Tenant id (GUID) or verified domain (`contoso.onmicrosoft.com`), as the token endpoint accepts it.
    pub tenant_id: String,
    /// The app registration's client id.
    pub client_id: String,
    /// How the app authenticates: client secret, certificate or federated token (exactly one).
    pub credential: Credential,
    /// The shared mailbox holding the central folder (UPN or object id). Empty only when `Mirror.Enabled` is
    /// false and none was configured; read it through [`TenantSettings::shared_mailbox`].
    pub global_address_book_user_id: String,
    /// When set, both phases are restricted to these users (object ids, UPNs, mails or aliases, compared
    /// case-insensitively; [`crate::test_users`] is the one rule applying it).
    pub test_user_list: Option<Vec<String>>,
    /// Other names of the tenant (`PrimaryDomain`, `TenantDomain`), lowercase: the test-user map may use them.
    pub domains: Vec<String>,
    /// Run this tenant (`Enabled`, default true).
    pub enabled: bool,
    /// Write nothing in this tenant: its own `DryRun`, or the run's (which it cannot override).
    pub dry_run: bool,
    /// Entra authority, default `https://login.microsoftonline.com`.
    pub authority_host: Url,
    /// Graph endpoint, default `https://graph.microsoft.com`.
    pub graph_endpoint: Url,
    /// How contacts are mirrored in this tenant.
    pub mirror: MirrorOptions,
    /// Graph request limits per mailbox.
    pub limits: GraphLimits,
    /// Write directory users' photos to their managed copies (`Photos`, default false; issue 14).
    pub photos: bool,
    /// What the tenant distributes (mirror, directory) and where (issue 11). Default: today's mirror only.
    pub distribution: Distribution,
}

/// The mirroring policy of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorOptions {
    /// Name of the top-level central folder in the shared mailbox (default "All Contacts").
    pub central_folder_name: String,
    /// Category added to every managed copy, if any (default none).
    pub managed_category: Option<String>,
    /// Also write the script-compatible stamp lines into personal notes (default true).
    pub stamp_notes: bool,
    /// Contacts carrying this category are never published (default "Private").
    pub opt_out_category: String,
    /// What phase 2 may delete.
    pub deletion: DeletionPolicy,
    /// Change existing contacts when their source changed (`UpdateExisting`, default true); false: create only.
    pub update_existing: bool,
    /// What travels (`CentralFields`, `Fields`; issue 14). Default: the privacy default, every field overwritten.
    pub fields: FieldRules,
}

/// Whether and how much the tool may delete from one mailbox in one job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeletionPolicy {
    /// Delete managed copies whose sync id left the central folder (default true).
    pub enabled: bool,
    /// The largest share of a mailbox's managed contacts one job may delete (default 0.10).
    pub max_share: f64,
}

impl Eq for DeletionPolicy {}

/// Graph's per-mailbox limits as the client enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphLimits {
    /// Requests in flight per mailbox (default 4).
    pub max_in_flight: u32,
    /// Requests per window per mailbox (default 10,000).
    pub requests_per_window: u32,
    /// The window (default 600 s).
    pub window: Duration,
    /// Bytes uploaded (PUT, POST, PATCH bodies; photos are what counts) per upload window per mailbox (default
    /// 150,000,000: Graph's 150 MB, read as decimal megabytes so the client never passes Graph's count).
    pub upload_bytes_per_window: u32,
    /// The upload window (default 300 s).
    pub upload_window: Duration,
}

impl Default for GraphLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            requests_per_window: 10_000,
            window: Duration::from_secs(600),
            upload_bytes_per_window: 150_000_000,
            upload_window: Duration::from_secs(300),
        }
    }
}

impl Settings {
    /// Loads the settings from the process environment (see the [module docs](self) for the forms and precedence).
    pub fn from_env() -> Result<Settings, ConfigError> {
        Self::from_sources(&|name| std::env::var(name).ok(), None)
    }

    /// Loads the settings from a file holding the `AUTOMATION_SYNCCONTACTS_CONFIG_JSON` document. The environment
    /// still supplies `AUTOMATION_SYNCCONTACTS_DRY_RUN` (when the file has no `DryRun`) and
    /// `AUTOMATION_SYNCCONTACTS_TEST_USER_LIST_BY_TENANT_JSON`.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        Self::load(Some(path))
    }

    /// [`Settings::from_file`] when a `--config` file is given, else [`Settings::from_env`]: what every binary
    /// does with its `--config` option.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::from_sources(&|name| std::env::var(name).ok(), file)
    }

    /// The loader itself: `env` looks variables up, `file` (when given) replaces the environment's tenant
    /// configuration. Reads nothing but `env` and the named files; contacts nothing.
    pub fn from_sources(
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<&Path>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = build::Builder::new(env);
        let result = builder.load(file);
        match result {
            Ok(mut settings) => {
                for invalid in &mut settings.invalid_tenants {
                    invalid.error = invalid.error.clone().scrub(&builder.secrets);
                }
                Ok(settings)
            }
            Err(error) => Err(error.scrub(&builder.secrets)),
        }
    }

    /// Makes every tenant dry (`--dry-run`): dryness can be added, never taken away.
    pub fn force_dry_run(&mut self) {
        self.dry_run = true;
        for tenant in &mut self.tenants {
            tenant.dry_run = true;
        }
    }

    /// Whether `id` names a configured tenant, valid or not.
    pub fn names_tenant(&self, id: &str) -> bool {
        let wanted = build::normalize_tenant_id(id);
        self.tenant(id).is_some()
            || self
                .invalid_tenants
                .iter()
                .any(|t| t.name.eq_ignore_ascii_case(&wanted))
    }

    /// The tenant with this id, ignoring case (GUIDs in any accepted spelling).
    pub fn tenant(&self, id: &str) -> Option<&TenantSettings> {
        let wanted = build::normalize_tenant_id(id);
        self.tenants
            .iter()
            .find(|t| t.tenant_id.eq_ignore_ascii_case(&wanted))
    }
}

impl fmt::Display for Settings {
    /// One line per tenant plus the run mode; no secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.dry_run { "dry run" } else { "live" };
        write!(f, "{} tenant(s), {mode}", self.tenants.len())?;
        for tenant in &self.tenants {
            write!(f, "\n  {tenant}")?;
        }
        Ok(())
    }
}

impl TenantSettings {
    /// Whether `name` (normalised) is this tenant's TenantId, PrimaryDomain or TenantDomain.
    pub fn is_known_as(&self, name: &str) -> bool {
        self.tenant_id.eq_ignore_ascii_case(name)
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(name))
    }

    /// The mirror's shared mailbox, when configured: the directory leaves it out even when the mirror is off.
    pub fn shared_mailbox(&self) -> Option<&str> {
        Some(self.global_address_book_user_id.as_str()).filter(|m| !m.is_empty())
    }

    /// The tenants whose directory this tenant's mailboxes receive, each once: itself first when
    /// `Directory.Enabled`, then its `FromTenants` in the configured order. Each is read with that tenant's own
    /// credentials and `Directory` filters.
    pub fn directory_sources(&self) -> Vec<&str> {
        let own = self
            .distribution
            .directory
            .enabled
            .then_some(self.tenant_id.as_str());
        own.into_iter()
            .chain(
                self.distribution
                    .directory
                    .from_tenants
                    .iter()
                    .map(String::as_str)
                    .filter(|source| !source.eq_ignore_ascii_case(&self.tenant_id)),
            )
            .collect()
    }

    /// A one-line description for logs, without the secret (same as `Display`).
    pub fn redacted_summary(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for TenantSettings {
    /// `tenant contoso.onmicrosoft.com: client 1b2c..., secret [redacted], shared mailbox ..., ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users = match &self.test_user_list {
            Some(users) => format!("test users only ({})", users.len()),
            None => "all licensed users".to_owned(),
        };
        let deletion = &self.mirror.deletion;
        let deletes = if deletion.enabled {
            format!(
                "deletes managed copies (cap {}%)",
                deletion.max_share * 100.0
            )
        } else {
            "never deletes".to_owned()
        };
        write!(
            f,
            "tenant {}: client {}, {}, shared mailbox {}, {users}, authority {}, graph {}, folder {:?}, \
             managed category {}, notes stamped: {}, opt-out category {:?}, {deletes}, \
             limits {} in flight and {} requests per {} s per mailbox",
            self.tenant_id,
            self.client_id,
            self.credential,
            self.global_address_book_user_id,
            self.authority_host,
            self.graph_endpoint,
            self.mirror.central_folder_name,
            self.mirror.managed_category.as_deref().map_or_else(|| "none".to_owned(), |c| format!("{c:?}")),
            if self.mirror.stamp_notes { "yes" } else { "no" },
            self.mirror.opt_out_category,
            self.limits.max_in_flight,
            self.limits.requests_per_window,
            self.limits.window.as_secs(),
        )?;
        write!(f, ", {}", self.distribution)?;
        if !self.mirror.update_existing {
            f.write_str(", creates only (UpdateExisting false)")?;
        }
        let fields = &self.mirror.fields;
        if fields.central != CentralFields::default() {
            write!(f, ", CentralFields {:?}", fields.central.set())?;
        }
        for field in fields.policy.overwritten().complement().iter() {
            write!(f, ", {field} {}", fields.policy.get(field).as_str())?;
        }
        if self.photos {
            f.write_str(", photos")?;
        }
        if !self.enabled {
            f.write_str(", disabled")?;
        }
        if self.dry_run {
            f.write_str(", dry run")?;
        }
        Ok(())
    }
}
