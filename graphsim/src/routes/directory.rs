//! Tenant-level directory requests: `/users` (list, one user, `/users/{id}/manager`, `/users/delta`), `/groups`
//! (by mail, one group, `/groups/{id}/transitiveMembers[/microsoft.graph.user|orgContact]`), `/contacts`
//! (orgContact) and `/organization`, each behind the application permission Graph demands for it.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::odata::{self, Expr, Literal};
use crate::reply::{errors, graph_error, Reply};
use crate::routes::contacts::prefer_max_page_size;
use crate::routes::users;
use crate::server::Op;
use crate::state::{Store, Tenant};

/// Collections under `/v1.0` other than `users` that address the tenant's directory.
pub const TENANT_COLLECTIONS: &[&str] = &["groups", "contacts", "organization"];

/// Roles that allow reading users.
const USER_ROLES: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
/// Roles that allow reading group membership.
const GROUP_ROLES: &[&str] = &[
    "GroupMember.Read.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
/// Roles that allow reading organisational contacts.
const ORG_CONTACT_ROLES: &[&str] = &[
    "OrgContact.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
/// Roles that allow reading the organisation.
const ORGANIZATION_ROLES: &[&str] = &[
    "Organization.Read.All",
    "Organization.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
/// Roles that allow reading (GET) and writing mailbox contacts.
const CONTACT_READ_ROLES: &[&str] = &["Contacts.Read", "Contacts.ReadWrite"];
const CONTACT_WRITE_ROLES: &[&str] = &["Contacts.ReadWrite"];

/// Whether `/users/{id}/{rest}` is a directory request rather than a mailbox one.
pub fn is_user_directory_path(segments: &[String]) -> bool {
    segments.len() == 4 && segments[3].eq_ignore_ascii_case("manager")
}

/// Checks that the token's roles allow the request: 403 `Authorization_RequestDenied` for directory reads,
/// 403 `ErrorAccessDenied` for mailbox contacts.
pub fn permitted(op: &Op, mailbox: bool, roles: &[String]) -> Result<(), Reply> {
    let has = |allowed: &[&str]| {
        roles
            .iter()
            .any(|r| allowed.iter().any(|a| a.eq_ignore_ascii_case(r)))
    };
    // A user's own photo is a profile read (User.Read.All or ProfilePhoto.Read.All), though Outlook holds it.
    let user_photo = op.segments.len() == 5
        && op.segments[3].eq_ignore_ascii_case("photo")
        && op.segments[4] == "$value";
    if mailbox && user_photo && op.method == "GET" {
        return if has(USER_ROLES) || has(&["ProfilePhoto.Read.All", "ProfilePhoto.ReadWrite.All"]) {
            Ok(())
        } else {
            Err(errors::directory_access_denied())
        };
    }
    if mailbox {
        let needed = if op.method == "GET" {
            CONTACT_READ_ROLES
        } else {
            CONTACT_WRITE_ROLES
        };
        return if has(needed) {
            Ok(())
        } else {
            Err(errors::mailbox_access_denied())
        };
    }
    let collection = op.segments.get(1).map(|s| s.to_ascii_lowercase());
    let needed = match collection.as_deref() {
        Some("groups") => GROUP_ROLES,
        Some("contacts") => ORG_CONTACT_ROLES,
        Some("organization") => ORGANIZATION_ROLES,
        _ => USER_ROLES,
    };
    if has(needed) {
        Ok(())
    } else {
        Err(errors::directory_access_denied())
    }
}

/// Routes one tenant-level request.
pub fn handle(store: &Store, tenant: usize, op: &Op, base: &str) -> Reply {
    if op.method != "GET" {
        return errors::method_not_allowed();
    }
    let Some(t) = store.tenants.get(tenant) else {
        return errors::unknown_segment("v1.0");
    };
    let seg = |i: usize| op.segments.get(i).map(|s| s.to_ascii_lowercase());
    match (seg(1).as_deref(), seg(2).as_deref()) {
        (Some("users"), Some("delta")) if op.segments.len() == 3 => {
            users_delta(t, store.delta_epoch, op, base)
        }
        (Some("users"), Some(_)) if is_user_directory_path(&op.segments) => manager(t, op, base),
        (Some("users"), _) => users::handle(store, tenant, op, base),
        (Some("groups"), _) => groups(t, op, base),
        (Some("contacts"), _) => org_contacts(t, op, base),
        (Some("organization"), None) => organization(t, base),
        (Some(other), _) => errors::unknown_segment(other),
        (None, _) => errors::unknown_segment("v1.0"),
    }
}

fn not_found(key: &str) -> Reply {
    graph_error(
        404,
        "Request_ResourceNotFound",
        &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
    )
}

/// `GET /users/{id}/manager`: the manager as a directory object, 404 when the user has none.
fn manager(t: &Tenant, op: &Op, base: &str) -> Reply {
    let key = &op.segments[2];
    let Some(i) = t.user_index(key) else {
        return not_found(key);
    };
    let select = match users::parse_select(op) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match users::manager_of(t, &t.users[i].directory) {
        Some(boss) => {
            let mut body = users::render_manager(boss, select.as_deref());
            if let Value::Object(m) = &mut body {
                m.insert(
                    "@odata.context".into(),
                    json!(format!("{base}/v1.0/$metadata#directoryObjects/$entity")),
                );
            }
            Reply::json(200, body)
        }
        None => not_found("manager"),
    }
}

/// A page of already rendered items with a `$skiptoken` nextLink.
fn page(
    items: Vec<Value>,
    offset: usize,
    size: usize,
    op: &Op,
    base: &str,
    context: &str,
) -> Reply {
    let total = items.len();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{base}/v1.0/$metadata#{context}")),
    );
    if offset.saturating_add(size) < total {
        let query = odata::rebuild_query(
            &op.raw_query,
            &["$skiptoken"],
            &[(
                "$skiptoken",
                users::encode_skiptoken(offset.saturating_add(size)),
            )],
        );
        body.insert(
            "@odata.nextLink".into(),
            json!(format!("{base}{}?{query}", op.raw_path)),
        );
    }
    body.insert(
        "value".into(),
        Value::Array(items.into_iter().skip(offset).take(size).collect()),
    );
    Reply::json(200, Value::Object(body))
}

fn offset(op: &Op) -> Result<usize, Reply> {
    match op.q("$skiptoken") {
        None => Ok(0),
        Some(tok) => users::decode_skiptoken(tok).ok_or_else(|| {
            graph_error(400, "Request_BadRequest", "Invalid or expired skip token.")
        }),
    }
}

/// `$select` for a type whose properties are `known`; `id` is always returned.
fn select_of(op: &Op, known: &[&str], type_name: &str) -> Result<Option<Vec<String>>, Reply> {
    let Some(raw) = op.q("$select") else {
        return Ok(None);
    };
    let list = odata::parse_select(raw);
    if let Some(bad) = list
        .iter()
        .find(|p| !known.iter().any(|k| k.eq_ignore_ascii_case(p)))
    {
        return Err(graph_error(
            400,
            "Request_BadRequest",
            &format!("Could not find a property named '{bad}' on type '{type_name}'."),
        ));
    }
    Ok(Some(list))
}

fn pick(object: &Map<String, Value>, select: Option<&[String]>) -> Map<String, Value> {
    match select {
        None => object.clone(),
        Some(list) => {
            let mut out = Map::new();
            if let Some(id) = object.get("id") {
                out.insert("id".into(), id.clone());
            }
            for p in list {
                if let Some((k, v)) = object.iter().find(|(k, _)| k.eq_ignore_ascii_case(p)) {
                    out.insert(k.clone(), v.clone());
                }
            }
            out
        }
    }
}

/// Properties of `microsoft.graph.orgContact`.
pub(crate) const ORG_CONTACT_PROPERTIES: &[&str] = &[
    "id",
    "deletedDateTime",
    "addresses",
    "companyName",
    "department",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mailNickname",
    "onPremisesLastSyncDateTime",
    "onPremisesProvisioningErrors",
    "onPremisesSyncEnabled",
    "phones",
    "proxyAddresses",
    "serviceProvisioningErrors",
    "surname",
];

/// Properties of a group as graphsim renders it.
const GROUP_PROPERTIES: &[&str] = &[
    "id",
    "displayName",
    "mail",
    "mailEnabled",
    "securityEnabled",
    "groupTypes",
    "description",
    "deletedDateTime",
];

/// `GET /contacts` and `GET /contacts/{id}`.
fn org_contacts(t: &Tenant, op: &Op, base: &str) -> Reply {
    let select = match select_of(op, ORG_CONTACT_PROPERTIES, "microsoft.graph.orgContact") {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(key) = op.segments.get(2) {
        if op.segments.len() > 3 {
            return errors::unknown_segment(&op.segments[3]);
        }
        return match t
            .dir
            .org_contact_index(key)
            .filter(|_| uuid::Uuid::parse_str(key).is_ok())
        {
            Some(i) => {
                let mut body = pick(&t.dir.org_contacts[i], select.as_deref());
                body.insert(
                    "@odata.context".into(),
                    json!(format!("{base}/v1.0/$metadata#contacts/$entity")),
                );
                Reply::json(200, Value::Object(body))
            }
            None => not_found(key),
        };
    }
    if op.q("$filter").is_some() || op.q("$skip").is_some() {
        return graph_error(
            400,
            "Request_UnsupportedQuery",
            "graphsim supports $select, $top and paging on /contacts only.",
        );
    }
    let (size, offset) = match (users::parse_top(op, 100, 999), offset(op)) {
        (Ok(s), Ok(o)) => (s, o),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let items = t
        .dir
        .org_contacts
        .iter()
        .map(|c| Value::Object(pick(c, select.as_deref())))
        .collect();
    page(items, offset, size, op, base, "contacts")
}

/// `GET /organization`.
fn organization(t: &Tenant, base: &str) -> Reply {
    Reply::json(
        200,
        json!({
            "@odata.context": format!("{base}/v1.0/$metadata#organization"),
            "value": [{
                "id": t.guid,
                "displayName": t.dir.organization_name,
                "verifiedDomains": [{"name": t.domain, "isDefault": true, "isInitial": true, "type": "Managed", "capabilities": "Email, OfficeCommunicationsOnline"}],
                "tenantType": "AAD",
            }]
        }),
    )
}

/// `mail eq '...'` or `id eq '...'`: the only group filters graphsim answers (what a client needs to resolve a
/// group given by mail address).
fn group_filter(raw: &str) -> Result<(String, String), Reply> {
    match odata::parse_filter(raw) {
        Some(Expr::Cmp(path, op, Literal::Str(value)))
            if path.len() == 1
                && op == "eq"
                && ["mail", "id", "displayName"].contains(&path[0].as_str()) =>
        {
            Ok((path[0].clone(), value))
        }
        Some(_) => Err(graph_error(
            400,
            "Request_UnsupportedQuery",
            "Unsupported or invalid query filter clause specified for resource 'Group'.",
        )),
        None => Err(errors::invalid_filter_clause()),
    }
}

/// `GET /groups[?$filter=mail eq '...']`, `GET /groups/{id}`, `GET /groups/{id}/transitiveMembers[/cast]`.
fn groups(t: &Tenant, op: &Op, base: &str) -> Reply {
    let Some(key) = op.segments.get(2) else {
        let select = match select_of(op, GROUP_PROPERTIES, "microsoft.graph.group") {
            Ok(s) => s,
            Err(r) => return r,
        };
        let filter = match op.q("$filter").map(group_filter).transpose() {
            Ok(f) => f,
            Err(r) => return r,
        };
        let (size, offset) = match (users::parse_top(op, 100, 999), offset(op)) {
            (Ok(s), Ok(o)) => (s, o),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        let items = t
            .dir
            .groups
            .iter()
            .map(|g| g.render())
            .filter(|g| {
                filter.as_ref().is_none_or(|(p, v)| {
                    g.get(p.as_str())
                        .and_then(Value::as_str)
                        .is_some_and(|x| x.eq_ignore_ascii_case(v))
                })
            })
            .map(|g| match g {
                Value::Object(m) => Value::Object(pick(&m, select.as_deref())),
                other => other,
            })
            .collect();
        return page(items, offset, size, op, base, "groups");
    };
    let Some(index) = t
        .dir
        .groups
        .iter()
        .position(|g| g.id.eq_ignore_ascii_case(key))
    else {
        return not_found(key);
    };
    let group = &t.dir.groups[index];
    match op.segments.len() {
        3 => {
            let mut body = match group.render() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            body.insert(
                "@odata.context".into(),
                json!(format!("{base}/v1.0/$metadata#groups/$entity")),
            );
            Reply::json(200, Value::Object(body))
        }
        4 | 5 if op.segments[3].eq_ignore_ascii_case("transitiveMembers") => {
            let cast = op.segments.get(4).map(|s| s.to_ascii_lowercase());
            let wanted = match cast.as_deref() {
                None => None,
                Some("microsoft.graph.user") => Some("user"),
                Some("microsoft.graph.orgcontact") => Some("orgContact"),
                Some("microsoft.graph.group") => Some("group"),
                Some(other) => return errors::unknown_segment(other),
            };
            transitive_members(t, index, wanted, op, base)
        }
        _ => errors::unknown_segment(op.segments.last().map_or("groups", String::as_str)),
    }
}

fn transitive_members(
    t: &Tenant,
    index: usize,
    wanted: Option<&str>,
    op: &Op,
    base: &str,
) -> Reply {
    if op.q("$filter").is_some() || op.q("$count").is_some() {
        return graph_error(
            400,
            "Request_UnsupportedQuery",
            "graphsim supports $select, $top and paging on transitiveMembers only.",
        );
    }
    // Users are selected with user properties; a cast-less listing mixes types, so $select is checked loosely.
    let select = match op.q("$select") {
        None => None,
        Some(_) if wanted == Some("user") => match users::parse_select(op) {
            Ok(s) => s,
            Err(r) => return r,
        },
        Some(raw) => Some(odata::parse_select(raw)),
    };
    let (size, offset) = match (users::parse_top(op, 100, 999), offset(op)) {
        (Ok(s), Ok(o)) => (s, o),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let mut items = Vec::new();
    for member in t.dir.transitive_members(index) {
        let (kind, mut object) = if let Some(u) = t.user_index(&member) {
            (
                "user",
                match users::project(&t.users[u].directory, select.as_deref()) {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
            )
        } else if let Some(g) = t.dir.group_index(&member) {
            (
                "group",
                match t.dir.groups[g].render() {
                    Value::Object(m) => pick(&m, select.as_deref()),
                    _ => Map::new(),
                },
            )
        } else if let Some(c) = t.dir.org_contact_index(&member) {
            (
                "orgContact",
                pick(&t.dir.org_contacts[c], select.as_deref()),
            )
        } else {
            continue;
        };
        if wanted.is_some_and(|w| w != kind) {
            continue;
        }
        if !object.contains_key("id") {
            object.insert("id".into(), json!(member));
        }
        object.insert(
            "@odata.type".into(),
            json!(format!("#microsoft.graph.{kind}")),
        );
        items.push(Value::Object(object));
    }
    page(items, offset, size, op, base, "directoryObjects")
}

/// A `/users/delta` token: the change window, the position in the round and the query it was started with.
#[derive(Debug, Serialize, Deserialize)]
struct DeltaToken {
    /// Changes after this directory version...
    s: u64,
    /// ...up to this one.
    u: u64,
    /// Items of the round already returned.
    o: usize,
    /// Delta epoch.
    e: u64,
    /// `$select` (without `manager`).
    sel: Option<Vec<String>>,
    /// Whether `manager` was selected: tracked and returned as `manager@delta`.
    m: bool,
}

const DELTA_PREFIX: &str = "GSU1";

fn encode(t: &DeltaToken) -> String {
    let raw = serde_json::to_vec(t).unwrap_or_default();
    format!(
        "{DELTA_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn decode(s: &str) -> Option<DeltaToken> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.strip_prefix(DELTA_PREFIX)?)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

/// `$select` of a users delta: user properties plus the navigation property `manager`, which delta tracks and
/// returns as `manager@delta` (graph-facts.md section 2: no `$expand` on `/users/delta`).
fn delta_select(op: &Op) -> Result<(Option<Vec<String>>, bool), Reply> {
    let Some(raw) = op.q("$select") else {
        return Ok((None, false));
    };
    let (managers, list): (Vec<String>, Vec<String>) = odata::parse_select(raw)
        .into_iter()
        .partition(|p| p.eq_ignore_ascii_case("manager"));
    users::check_select(&list)?;
    Ok((Some(list), !managers.is_empty()))
}

/// `GET /users/delta`: `$select` (with `manager` as `manager@delta`), pages by `Prefer: odata.maxpagesize` (default 100),
/// `$deltatoken=latest`, `@removed {"reason":"deleted"}` for deleted users; a disabled user is a change of
/// `accountEnabled`. Tokens of an older epoch answer 410 `SyncStateNotFound`.
fn users_delta(t: &Tenant, epoch: u64, op: &Op, base: &str) -> Reply {
    let is_delta_token = op.q("$deltatoken").is_some();
    let latest = op
        .q("$deltatoken")
        .is_some_and(|v| v.eq_ignore_ascii_case("latest"));
    let token = match op.q("$skiptoken").or_else(|| op.q("$deltatoken")) {
        Some(_) if latest => None,
        Some(raw) => match decode(raw) {
            Some(tok) if tok.e == epoch => Some(if is_delta_token {
                DeltaToken {
                    u: t.dir.version,
                    o: 0,
                    ..tok
                }
            } else {
                tok
            }),
            _ => return errors::sync_state_not_found(),
        },
        None => None,
    };
    let token = match token {
        Some(tok) => tok,
        None => {
            for unsupported in ["$top", "$orderby", "$skip", "$search", "$count", "$expand"] {
                if op.q(unsupported).is_some() {
                    return graph_error(
                        400,
                        "Request_UnsupportedQuery",
                        &format!("The query option '{unsupported}' is not supported with delta."),
                    );
                }
            }
            if op.q("$filter").is_some() {
                return graph_error(
                    400,
                    "Request_UnsupportedQuery",
                    "graphsim supports no $filter on /users/delta (Graph allows only id eq '...').",
                );
            }
            let (sel, m) = match delta_select(op) {
                Ok(s) => s,
                Err(r) => return r,
            };
            DeltaToken {
                s: if latest { t.dir.version } else { 0 },
                u: t.dir.version,
                o: 0,
                e: epoch,
                sel,
                m,
            }
        }
    };
    let size = prefer_max_page_size(op).unwrap_or(100);
    let mut items: Vec<Value> = Vec::new();
    // `$deltatoken=latest` starts at the current version, so its round is empty.
    for user in &t.users {
        let shows = if token.s == 0 {
            true
        } else {
            t.dir
                .user_in_round(&user.id, token.s, token.u, token.sel.as_deref(), token.m)
        };
        if !shows {
            continue;
        }
        let mut body = match users::project(&user.directory, token.sel.as_deref()) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        body.insert("id".into(), json!(user.id));
        if token.m {
            if let Some(boss) = users::manager_of(t, &user.directory) {
                body.insert(
                    "manager@delta".into(),
                    json!([{"@odata.type": "#microsoft.graph.user", "id": boss.get("id")}]),
                );
            }
        }
        items.push(Value::Object(body));
    }
    if token.s > 0 {
        for (v, id) in &t.dir.removed {
            if *v > token.s && *v <= token.u {
                items.push(json!({"id": id, "@removed": {"reason": "deleted"}}));
            }
        }
    }
    let total = items.len();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{base}/v1.0/$metadata#users")),
    );
    let link_base = format!("{base}{}", op.raw_path);
    if token.o.saturating_add(size) < total {
        let next = DeltaToken {
            o: token.o.saturating_add(size),
            s: token.s,
            u: token.u,
            e: token.e,
            sel: token.sel.clone(),
            m: token.m,
        };
        let q = odata::rebuild_query("", &[], &[("$skiptoken", encode(&next))]);
        body.insert("@odata.nextLink".into(), json!(format!("{link_base}?{q}")));
    } else {
        let next = DeltaToken {
            s: token.u,
            u: token.u,
            o: 0,
            e: token.e,
            sel: token.sel.clone(),
            m: token.m,
        };
        let q = odata::rebuild_query("", &[], &[("$deltatoken", encode(&next))]);
        body.insert("@odata.deltaLink".into(), json!(format!("{link_base}?{q}")));
    }
    body.insert(
        "value".into(),
        Value::Array(items.into_iter().skip(token.o).take(size).collect()),
    );
    Reply::json(200, Value::Object(body))
}
