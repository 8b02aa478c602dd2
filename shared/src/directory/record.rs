//! Directory entries as Graph returns them (`microsoft.graph.user`, `microsoft.graph.orgContact`), reduced to the
//! properties the directory distribution reads. Plain data with serde names, so the Graph reads decode straight
//! into them and the pure rules never see JSON.

use serde::{Deserialize, Deserializer, Serialize};

/// Graph sends `null` for an empty collection in a few places (and graphsim's defaults mirror that); both mean
/// "none".
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A user's manager, as `$expand=manager($select=id,displayName)` returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagerRef {
    /// Object id.
    #[serde(default)]
    pub id: Option<String>,
    /// Display name: what a contact's `manager` field holds.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// One assigned licence; only its presence matters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedLicense {
    /// The SKU.
    #[serde(default)]
    pub sku_id: Option<String>,
}

/// A directory user with every property the distribution selects on or maps into a contact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)] // Field names are Graph's property names; Graph's docs describe them.
pub struct UserRecord {
    /// Entra object id.
    pub id: String,
    #[serde(default)]
    pub user_principal_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub office_location: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub business_phones: Vec<String>,
    #[serde(default)]
    pub mobile_phone: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    /// `SMTP:primary@…`, `smtp:alias@…`, `X500:…`, … as Exchange keeps them.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub proxy_addresses: Vec<String>,
    #[serde(default)]
    pub street_address: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub postal_code: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
    /// `Member`, `Guest`, or `null` (old accounts, members).
    #[serde(default)]
    pub user_type: Option<String>,
    /// `None` when Graph did not return it: treated as not enabled.
    #[serde(default)]
    pub account_enabled: Option<bool>,
    /// `false` = hidden from the address list (where Graph reports it; Microsoft calls the value unreliable).
    #[serde(default)]
    pub show_in_address_list: Option<bool>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub assigned_licenses: Vec<AssignedLicense>,
    /// Present when read with `$expand=manager`, or filled in from a separate manager read.
    #[serde(default)]
    pub manager: Option<ManagerRef>,
}

impl UserRecord {
    /// The `$select` list that fills every field above.
    pub const SELECT: &'static str = "id,userPrincipalName,displayName,givenName,surname,jobTitle,department,\
companyName,officeLocation,businessPhones,mobilePhone,mail,proxyAddresses,streetAddress,city,state,postalCode,\
country,userType,accountEnabled,showInAddressList,assignedLicenses";

    /// Whether the user holds at least one licence.
    pub fn is_licensed(&self) -> bool {
        !self.assigned_licenses.is_empty()
    }

    /// Whether the account is a guest (`userType` Guest, any case). `null` counts as member, as for older
    /// directory-synced accounts.
    pub fn is_guest(&self) -> bool {
        self.user_type
            .as_deref()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("guest"))
    }
}

/// A phone of an org contact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Phone {
    /// The number.
    #[serde(default)]
    pub number: Option<String>,
    /// `business`, `mobile`, `home`, `businessFax`, … (`microsoft.graph.phoneType`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// An address of an org contact (`microsoft.graph.physicalOfficeAddress`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OfficeAddress {
    #[serde(default)]
    pub street: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub postal_code: Option<String>,
    #[serde(default)]
    pub country_or_region: Option<String>,
    #[serde(default)]
    pub office_location: Option<String>,
}

/// An organisational contact (`GET /contacts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct OrgContactRecord {
    /// Entra object id.
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub surname: Option<String>,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default)]
    pub company_name: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub proxy_addresses: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub phones: Vec<Phone>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: Vec<OfficeAddress>,
}

impl OrgContactRecord {
    /// The `$select` list that fills every field above.
    pub const SELECT: &'static str =
        "id,displayName,givenName,surname,mail,companyName,department,jobTitle,proxyAddresses,phones,addresses";
}

/// Fills in the display name of every manager known only by id (what `/users/delta` returns) from the users of
/// `users` themselves; a manager not among them keeps no name.
pub fn resolve_manager_names(users: &mut [UserRecord]) {
    let names: std::collections::HashMap<String, Option<String>> = users
        .iter()
        .map(|u| (u.id.to_lowercase(), u.display_name.clone()))
        .collect();
    for user in users.iter_mut() {
        if let Some(manager) = &mut user.manager {
            if manager.display_name.is_none() {
                if let Some(id) = &manager.id {
                    manager.display_name = names.get(&id.to_lowercase()).cloned().flatten();
                }
            }
        }
    }
}
