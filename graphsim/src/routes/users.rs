//! `GET /v1.0/users` and `GET /v1.0/users/{id|upn}`: the directory side, with Graph's default property
//! set, `$select`, `$top`, `$skiptoken` paging and the `$filter` subset with the advanced-query gate.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::odata::{self, EvalOptions, Expr, Literal};
use crate::reply::{errors, graph_error, Reply};
use crate::server::Op;
use crate::state::Store;

const DEFAULT_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

const COLLECTION_ONLY_SINGLE: &[&str] = &[
    "aboutMe",
    "birthday",
    "hireDate",
    "interests",
    "mySite",
    "pastProjects",
    "preferredName",
    "responsibilities",
    "schools",
    "skills",
    "mailboxSettings",
];

/// Every property of `microsoft.graph.user` (graph-schemas.json).
const USER_PROPERTIES: &[&str] = &[
    "id",
    "deletedDateTime",
    "aboutMe",
    "accountEnabled",
    "ageGroup",
    "assignedLicenses",
    "assignedPlans",
    "authorizationInfo",
    "birthday",
    "businessPhones",
    "city",
    "companyName",
    "consentProvidedForMinor",
    "country",
    "createdDateTime",
    "creationType",
    "customSecurityAttributes",
    "department",
    "deviceEnrollmentLimit",
    "displayName",
    "employeeHireDate",
    "employeeId",
    "employeeLeaveDateTime",
    "employeeOrgData",
    "employeeType",
    "externalUserState",
    "externalUserStateChangeDateTime",
    "faxNumber",
    "givenName",
    "hireDate",
    "identities",
    "identityParentId",
    "imAddresses",
    "interests",
    "isManagementRestricted",
    "isResourceAccount",
    "jobTitle",
    "lastPasswordChangeDateTime",
    "legalAgeGroupClassification",
    "licenseAssignmentStates",
    "mail",
    "mailboxSettings",
    "mailNickname",
    "mobilePhone",
    "mySite",
    "officeLocation",
    "onPremisesDistinguishedName",
    "onPremisesDomainName",
    "onPremisesExtensionAttributes",
    "onPremisesImmutableId",
    "onPremisesLastSyncDateTime",
    "onPremisesProvisioningErrors",
    "onPremisesSamAccountName",
    "onPremisesSecurityIdentifier",
    "onPremisesSyncEnabled",
    "onPremisesUserPrincipalName",
    "otherMails",
    "passwordPolicies",
    "passwordProfile",
    "pastProjects",
    "postalCode",
    "preferredDataLocation",
    "preferredLanguage",
    "preferredName",
    "print",
    "provisionedPlans",
    "proxyAddresses",
    "responsibilities",
    "schools",
    "securityIdentifier",
    "serviceProvisioningErrors",
    "showInAddressList",
    "signInActivity",
    "signInSessionsValidFromDateTime",
    "skills",
    "state",
    "streetAddress",
    "surname",
    "usageLocation",
    "userPrincipalName",
    "userType",
];

/// Properties whose `eq` filter is a default (non-advanced) query.
const FILTERABLE: &[&str] = &[
    "accountEnabled",
    "userType",
    "mail",
    "userPrincipalName",
    "displayName",
    "givenName",
    "surname",
    "id",
    "jobTitle",
    "department",
    "companyName",
    "city",
    "country",
    "officeLocation",
    "employeeId",
    "mailNickname",
    "onPremisesSyncEnabled",
    "usageLocation",
    "state",
    "createdDateTime",
    "creationType",
    "employeeType",
    "proxyAddresses",
];

fn advanced_needed(op_name: &str) -> Reply {
    graph_error(
        400,
        "Request_UnsupportedQuery",
        &format!("Operator '{op_name}' is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information"),
    )
}

fn unsupported_property(property: &str) -> Reply {
    graph_error(
        400,
        "Request_UnsupportedQuery",
        &format!("Unsupported or invalid query filter clause specified for property '{property}' of resource 'User'."),
    )
}

/// Filterable properties that are collections: Graph compares them only through a lambda (`any`), and refuses
/// `eq`, `in` or a function on the collection itself rather than match nobody.
const COLLECTIONS: &[&str] = &["proxyAddresses"];

/// Refuses `path` when it names one of the [`COLLECTIONS`] itself (compared, listed or passed to a function).
fn refuse_whole_collection(path: &[String]) -> Result<(), Reply> {
    match path {
        [name] if COLLECTIONS.contains(&name.as_str()) => Err(errors::invalid_filter_clause()),
        _ => Ok(()),
    }
}

/// Checks a parsed filter; returns the first operator that needs advanced query parameters, if any.
fn check(expr: &Expr) -> Result<Option<String>, Reply> {
    let merge = |a: Option<String>, b: Option<String>| a.or(b);
    match expr {
        Expr::And(items) | Expr::Or(items) => {
            let mut need = None;
            for item in items {
                need = merge(need, check(item)?);
            }
            Ok(need)
        }
        Expr::Not(inner) => Ok(merge(Some("Not".into()), check(inner)?)),
        Expr::Cmp(path, op, lit) => {
            let name = path.join("/");
            if path.len() == 2 && path[0] == "assignedLicenses" && path[1] == "$count" {
                return match (op.as_str(), lit) {
                    ("eq" | "ne", Literal::Num(n)) if *n == 0.0 => Ok(Some("$count".into())),
                    _ => Err(unsupported_property("assignedLicenses")),
                };
            }
            if path.len() != 1 || !FILTERABLE.contains(&path[0].as_str()) {
                return Err(unsupported_property(&name));
            }
            refuse_whole_collection(path)?;
            if path[0] == "accountEnabled" && !matches!(lit, Literal::Bool(_)) {
                return Err(errors::invalid_filter_clause());
            }
            match op.as_str() {
                "eq" => Ok(None),
                "ne" => Ok(Some("ne".into())),
                _ => Ok(Some(op.clone())),
            }
        }
        Expr::In(path, _) => {
            refuse_whole_collection(path)?;
            if path.len() == 1 && FILTERABLE.contains(&path[0].as_str()) {
                Ok(None)
            } else {
                Err(unsupported_property(&path.join("/")))
            }
        }
        Expr::Call(name, path, _) => {
            if path.len() != 1 || !FILTERABLE.contains(&path[0].as_str()) {
                return Err(unsupported_property(&path.join("/")));
            }
            refuse_whole_collection(path)?;
            match name.as_str() {
                "startswith" => Ok(None),
                "endswith" => Ok(Some("endsWith".into())),
                _ => Err(errors::invalid_filter_clause()),
            }
        }
        Expr::Any(path, var, body) => {
            let ok = path.len() == 1
                && path[0] == "assignedLicenses"
                && matches!(body.as_ref(), Expr::Cmp(p, op, Literal::Guid(_)) if p.len() == 2 && &p[0] == var && p[1] == "skuId" && op == "eq");
            if ok {
                Ok(None)
            } else {
                Err(unsupported_property(&path.join("/")))
            }
        }
    }
}

pub(crate) fn parse_top(op: &Op, default: usize, max: usize) -> Result<usize, Reply> {
    match op.q("$top") {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(graph_error(
                400,
                "Request_BadRequest",
                &format!(
                    "Invalid page size specified: '{v}'. Must be between 1 and {max} inclusive."
                ),
            )),
        },
    }
}

pub(crate) fn project(user: &Map<String, Value>, select: Option<&[String]>) -> Value {
    let mut out = Map::new();
    match select {
        None => {
            for p in DEFAULT_PROPERTIES {
                out.insert((*p).into(), user.get(*p).cloned().unwrap_or(Value::Null));
            }
        }
        Some(list) => {
            for p in list {
                if let Some(name) = USER_PROPERTIES.iter().find(|u| u.eq_ignore_ascii_case(p)) {
                    let default = if p.ends_with('s') && !p.eq_ignore_ascii_case("accountEnabled") {
                        json!([])
                    } else {
                        Value::Null
                    };
                    out.insert((*name).into(), user.get(*name).cloned().unwrap_or(default));
                }
            }
        }
    }
    Value::Object(out)
}

pub(crate) fn parse_select(op: &Op) -> Result<Option<Vec<String>>, Reply> {
    let Some(raw) = op.q("$select") else {
        return Ok(None);
    };
    let list = odata::parse_select(raw);
    check_select(&list)?;
    Ok(Some(list))
}

/// Every name is a `microsoft.graph.user` property a collection may return.
pub(crate) fn check_select(list: &[String]) -> Result<(), Reply> {
    for p in list {
        if !USER_PROPERTIES.iter().any(|u| u.eq_ignore_ascii_case(p)) {
            return Err(graph_error(
                400,
                "Request_BadRequest",
                &format!("Could not find a property named '{p}' on type 'microsoft.graph.user'."),
            ));
        }
        if COLLECTION_ONLY_SINGLE
            .iter()
            .any(|u| u.eq_ignore_ascii_case(p))
        {
            return Err(graph_error(
                501,
                "NotImplemented",
                &format!("This operation target is not yet supported. The property '{p}' cannot be returned for a collection of users."),
            ));
        }
    }
    Ok(())
}

/// Directory requests of a tenant.
pub fn handle(store: &Store, tenant: usize, op: &Op, base: &str) -> Reply {
    if op.method != "GET" {
        return errors::method_not_allowed();
    }
    let Some(t) = store.tenants.get(tenant) else {
        return errors::unknown_segment("users");
    };
    let select = match parse_select(op) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let manager = match manager_expand(op) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let render = |d: &Map<String, Value>| {
        let mut body = project(d, select.as_deref());
        if let (Some(manager_select), Value::Object(m)) = (&manager, &mut body) {
            if let Some(boss) = manager_of(t, d) {
                m.insert(
                    "manager".into(),
                    render_manager(boss, manager_select.as_deref()),
                );
            }
        }
        body
    };
    if let Some(key) = op.segments.get(2) {
        if key == "$count" || key == "delta" {
            return graph_error(
                400,
                "Request_BadRequest",
                "$count is not currently supported.",
            );
        }
        return match t.user_index(key) {
            Some(i) => {
                let mut body = render(&t.users[i].directory);
                if let Value::Object(m) = &mut body {
                    m.insert("@odata.context".into(), Value::String(format!("{base}/v1.0/$metadata#users/$entity")));
                }
                Reply::json(200, body)
            }
            None => graph_error(
                404,
                "Request_ResourceNotFound",
                &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
            ),
        };
    }
    let advanced = op
        .header("consistencylevel")
        .is_some_and(|v| v.eq_ignore_ascii_case("eventual"));
    let count_requested = op
        .q("$count")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let filter = match op.q("$filter") {
        None => None,
        Some(raw) => {
            let Some(expr) = odata::parse_filter(raw) else {
                return errors::invalid_filter_clause();
            };
            match check(&expr) {
                Err(r) => return r,
                Ok(Some(op_name)) if !(advanced && count_requested) => {
                    return advanced_needed(&op_name)
                }
                Ok(_) => Some(expr),
            }
        }
    };
    if manager.is_some() && advanced {
        // Graph: "$expand is not supported with advanced queries" (graph-facts.md section 2).
        return graph_error(
            400,
            "Request_UnsupportedQuery",
            "Expand is not supported with advanced queries (ConsistencyLevel: eventual).",
        );
    }
    if op.q("$orderby").is_some() && filter.is_some() && !(advanced && count_requested) {
        return advanced_needed("OrderBy");
    }
    if op.q("$skip").is_some() {
        return graph_error(
            400,
            "Request_BadRequest",
            "'$skip' is not supported by the service.",
        );
    }
    let top = match parse_top(op, 100, 999) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let offset = match op.q("$skiptoken") {
        None => 0,
        Some(tok) => match decode_skiptoken(tok) {
            Some(o) => o,
            None => {
                return graph_error(400, "Request_BadRequest", "Invalid or expired skip token.")
            }
        },
    };
    let matching: Vec<&Map<String, Value>> = t
        .users
        .iter()
        .map(|u| &u.directory)
        .filter(|d| {
            filter.as_ref().is_none_or(|f| {
                odata::eval(f, &Value::Object((*d).clone()), EvalOptions::default())
            })
        })
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(top)
        .map(|d| render(d))
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(format!("{base}/v1.0/$metadata#users")),
    );
    if advanced && count_requested && op.q("$skiptoken").is_none() {
        body.insert("@odata.count".into(), json!(matching.len()));
    }
    if offset.saturating_add(top) < matching.len() {
        let query = odata::rebuild_query(
            &op.raw_query,
            &["$skiptoken"],
            &[("$skiptoken", encode_skiptoken(offset.saturating_add(top)))],
        );
        body.insert(
            "@odata.nextLink".into(),
            Value::String(format!("{base}{}?{query}", op.raw_path)),
        );
    }
    body.insert("value".into(), Value::Array(page));
    Reply::json(200, Value::Object(body))
}

pub(crate) fn encode_skiptoken(offset: usize) -> String {
    let raw = format!("RFNwdAIAAQAA:{offset}:{}", uuid::Uuid::new_v4().simple());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub(crate) fn decode_skiptoken(token: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let mut parts = text.split(':');
    (parts.next()? == "RFNwdAIAAQAA").then_some(())?;
    parts.next()?.parse().ok()
}

/// `$expand=manager` or `$expand=manager($select=a,b)`: `Ok(None)` when not asked for, `Ok(Some(select))` when
/// asked; any other navigation property is refused, as Graph refuses unknown ones.
pub(crate) fn manager_expand(op: &Op) -> Result<Option<Option<Vec<String>>>, Reply> {
    let Some(raw) = op.q("$expand") else {
        return Ok(None);
    };
    let raw = raw.trim();
    let (name, inner) = match raw.split_once('(') {
        None => (raw, None),
        Some((name, rest)) => match rest.strip_suffix(')') {
            Some(inner) => (name.trim(), Some(inner)),
            None => return Err(errors::invalid_filter_clause()),
        },
    };
    if !name.eq_ignore_ascii_case("manager") {
        return Err(graph_error(
            400,
            "Request_BadRequest",
            &format!("Could not find a property named '{name}' on type 'microsoft.graph.user'."),
        ));
    }
    let Some(inner) = inner else {
        return Ok(Some(None));
    };
    let mut select = None;
    for option in inner.split(';') {
        match option.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("$select") => {
                let list = odata::parse_select(v);
                if let Some(bad) = list
                    .iter()
                    .find(|p| !USER_PROPERTIES.iter().any(|u| u.eq_ignore_ascii_case(p)))
                {
                    return Err(graph_error(
                        400,
                        "Request_BadRequest",
                        &format!("Could not find a property named '{bad}' on type 'microsoft.graph.directoryObject'."),
                    ));
                }
                select = Some(list);
            }
            _ => {
                return Err(graph_error(
                    400,
                    "Request_BadRequest",
                    "Only $select is supported inside $expand=manager(...).",
                ))
            }
        }
    }
    Ok(Some(select))
}

/// The manager of a user (by the user's directory object), if the user has one.
pub(crate) fn manager_of<'a>(
    t: &'a crate::state::Tenant,
    user: &Map<String, Value>,
) -> Option<&'a Map<String, Value>> {
    let id = user.get("id").and_then(Value::as_str)?;
    let boss = t.dir.managers.get(id)?;
    t.user_index(boss).map(|i| &t.users[i].directory)
}

/// A manager as Graph expands it: a directory object cast to user, `id` always present.
pub(crate) fn render_manager(boss: &Map<String, Value>, select: Option<&[String]>) -> Value {
    let mut body = project(boss, select);
    if let Value::Object(m) = &mut body {
        m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
        if !m.contains_key("id") {
            m.insert("id".into(), boss.get("id").cloned().unwrap_or(Value::Null));
        }
    }
    body
}
