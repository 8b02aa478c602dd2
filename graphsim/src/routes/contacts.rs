//! Outlook contacts and contact folders of one mailbox: `/users/{id|upn}/contacts[...]` and
//! `/users/{id|upn}/contactFolders[/{id}[/childFolders/...]][/contacts[...]]`.

use serde_json::{json, Map, Value};

use crate::contact::{self, Contact};
use crate::contact_json::{ContactJson, Layout};
use crate::ids::{self, CONTACT_PREFIX, FOLDER_PREFIX};
use crate::odata::{self, EvalOptions, Expr, Literal};
use crate::reply::{errors, graph_error, Reply};
use crate::routes::delta;
use crate::server::Op;
use crate::state::{Mailbox, Store};

/// What a mailbox path names.
#[derive(Debug)]
enum Resource {
    Folders(usize),
    Folder(usize),
    Contacts(usize),
    Contact(Option<usize>, String),
    /// `…/contacts/{id}/photo/$value`.
    ContactPhoto(Option<usize>, String),
    /// `/users/{id}/photo/$value`: the mailbox owner's photo.
    UserPhoto,
    Delta(usize),
}

/// Whether `rest` is `photo/$value`.
fn is_photo_value(rest: &[String]) -> bool {
    rest.len() == 2 && rest[0].eq_ignore_ascii_case("photo") && rest[1] == "$value"
}

fn folder_ref(mailbox: &Mailbox, id: &str, parent: Option<usize>) -> Result<usize, Reply> {
    if id.eq_ignore_ascii_case("contacts") && parent.is_none() {
        return Ok(0);
    }
    if !ids::well_formed(id, FOLDER_PREFIX) {
        return Err(errors::id_malformed());
    }
    let index = mailbox
        .folder_index(id)
        .ok_or_else(errors::item_not_found)?;
    if let Some(p) = parent {
        if mailbox.folders[index].parent_id != mailbox.folders[p].id {
            return Err(errors::item_not_found());
        }
    }
    Ok(index)
}

fn parse(mailbox: &Mailbox, rest: &[String]) -> Result<Resource, Reply> {
    let s = |i: usize| rest.get(i).map(String::as_str);
    if is_photo_value(rest) {
        return Ok(Resource::UserPhoto);
    }
    match s(0) {
        Some(c) if c.eq_ignore_ascii_case("contacts") => match (s(1), rest.len()) {
            (None, _) => Ok(Resource::Contacts(0)),
            (Some("delta"), 2) => Ok(Resource::Delta(0)),
            (Some(id), 2) => Ok(Resource::Contact(None, id.to_owned())),
            (Some(id), 4) if is_photo_value(&rest[2..]) => {
                Ok(Resource::ContactPhoto(None, id.to_owned()))
            }
            _ => Err(errors::unknown_segment(&rest[2])),
        },
        Some(c) if c.eq_ignore_ascii_case("contactFolders") => {
            let Some(first) = s(1) else {
                return Ok(Resource::Folders(0));
            };
            if first == "delta" {
                return Err(graph_error(
                    501,
                    "NotImplemented",
                    "contactFolders/delta is not supported by graphsim.",
                ));
            }
            let mut folder = folder_ref(mailbox, first, None)?;
            let mut i = 2;
            loop {
                match s(i) {
                    None => return Ok(Resource::Folder(folder)),
                    Some(c) if c.eq_ignore_ascii_case("childFolders") => match s(i + 1) {
                        None => return Ok(Resource::Folders(folder)),
                        Some(id) => {
                            folder = folder_ref(mailbox, id, Some(folder))?;
                            i += 2;
                        }
                    },
                    Some(c) if c.eq_ignore_ascii_case("contacts") => {
                        return match (s(i + 1), rest.len() - i) {
                            (None, _) => Ok(Resource::Contacts(folder)),
                            (Some("delta"), 2) => Ok(Resource::Delta(folder)),
                            (Some(id), 2) => Ok(Resource::Contact(Some(folder), id.to_owned())),
                            (Some(id), 4) if is_photo_value(&rest[i + 2..]) => {
                                Ok(Resource::ContactPhoto(Some(folder), id.to_owned()))
                            }
                            _ => Err(errors::unknown_segment(&rest[i + 2])),
                        };
                    }
                    Some(other) => return Err(errors::unknown_segment(other)),
                }
            }
        }
        Some(other) => Err(errors::unknown_segment(other)),
        None => Err(errors::unknown_segment("users")),
    }
}

/// The mailbox reads that change nothing (folder and contact lists, a folder, delta pages), served from a shared
/// borrow of the store; `None` for anything else, which [`handle`] serves. A path that does not parse is left to
/// [`handle`] too, so every error is answered in one place.
pub fn handle_read(
    store: &Store,
    tenant: usize,
    user: usize,
    op: &Op,
    base: &str,
) -> Option<Reply> {
    let u = store.tenants.get(tenant)?.users.get(user)?;
    let mailbox = &u.mailbox;
    let resource = parse(mailbox, &op.segments[3..]).ok()?;
    let ctx = format!("{base}/v1.0/$metadata#users('{}')", u.id);
    match resource {
        Resource::Folders(parent) => Some(list_folders(mailbox, parent, op, base, &ctx)),
        Resource::Folder(f) => Some(folder_reply(mailbox, f, &ctx)),
        Resource::Contacts(f) => Some(list_contacts(mailbox, f, op, base, &ctx)),
        Resource::Delta(f) => Some(delta::handle(mailbox, f, op, base, &ctx, store.delta_epoch)),
        _ => None,
    }
}

/// A folder as Graph answers `GET …/contactFolders/{id}`.
fn folder_reply(mailbox: &Mailbox, folder: usize, ctx: &str) -> Reply {
    let mut body = mailbox.folders[folder].render();
    body["@odata.context"] = json!(format!("{ctx}/contactFolders/$entity"));
    Reply::json(200, body)
}

/// Mailbox requests.
pub fn handle(store: &mut Store, tenant: usize, user: usize, op: &Op, base: &str) -> Reply {
    let rest = &op.segments[3..];
    let delta_epoch = store.delta_epoch;
    let Store { tenants, clock, .. } = store;
    let Some(u) = tenants.get_mut(tenant).and_then(|t| t.users.get_mut(user)) else {
        return errors::invalid_user(&op.segments[2]);
    };
    let user_id = u.id.clone();
    let mailbox = &mut u.mailbox;
    let resource = match parse(mailbox, rest) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let ctx = format!("{base}/v1.0/$metadata#users('{user_id}')");
    match (resource, op.method.as_str()) {
        (Resource::Folders(parent), "GET") => list_folders(mailbox, parent, op, base, &ctx),
        (Resource::Folders(parent), "POST") => create_folder(mailbox, parent, op, &ctx),
        (Resource::Folder(f), "GET") => folder_reply(mailbox, f, &ctx),
        (Resource::Folder(f), "PATCH") => rename_folder(mailbox, f, op),
        (Resource::Folder(f), "DELETE") => {
            if mailbox.delete_folder(f) {
                Reply::empty(204)
            } else {
                graph_error(
                    403,
                    "ErrorDeleteDistinguishedFolder",
                    "Distinguished folders cannot be deleted.",
                )
            }
        }
        (Resource::Contacts(f), "GET") => list_contacts(mailbox, f, op, base, &ctx),
        (Resource::Contacts(f), "POST") => match op.json().and_then(|b| contact::parse_body(&b)) {
            Ok(body) => {
                let c = mailbox.create_contact(f, body, clock);
                entity(201, c, &ctx, Layout::new(None, None))
            }
            Err(e) => e,
        },
        (Resource::Contact(f, id), method) => {
            contact_item(mailbox, f, &id, method, op, &ctx, clock)
        }
        (Resource::Delta(f), "GET") => delta::handle(mailbox, f, op, base, &ctx, delta_epoch),
        (Resource::UserPhoto, "GET") => match &mailbox.user_photo {
            Some(bytes) => Reply::bytes(200, bytes.clone(), image_type(bytes)),
            None => errors::image_not_found(),
        },
        (Resource::UserPhoto, "PUT") => match photo_body(op) {
            Ok(bytes) => {
                mailbox.user_photo = Some(bytes);
                Reply::empty(200)
            }
            Err(e) => e,
        },
        (Resource::ContactPhoto(f, id), method) => {
            contact_photo(mailbox, f, &id, method, op, clock)
        }
        _ => errors::method_not_allowed(),
    }
}

fn find_contact<'m>(
    mailbox: &'m Mailbox,
    folder: Option<usize>,
    id: &str,
) -> Result<&'m Contact, Reply> {
    if !ids::well_formed(id, CONTACT_PREFIX) {
        return Err(errors::id_malformed());
    }
    let c = mailbox
        .contacts
        .get(id)
        .ok_or_else(errors::item_not_found)?;
    if let Some(f) = folder {
        if c.folder_id != mailbox.folders[f].id {
            return Err(errors::item_not_found());
        }
    }
    Ok(c)
}

fn if_match_ok(op: &Op, contact: &Contact) -> bool {
    match op.header("if-match") {
        None => true,
        Some(v) => {
            let v = v.trim();
            v == "*" || v.trim_start_matches("W/").trim_matches('"') == contact.change_key
        }
    }
}

fn contact_item(
    mailbox: &mut Mailbox,
    folder: Option<usize>,
    id: &str,
    method: &str,
    op: &Op,
    ctx: &str,
    clock: &mut crate::ids::Clock,
) -> Reply {
    let current = match find_contact(mailbox, folder, id) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match method {
        "GET" => {
            let (select, expand) = match select_and_expand(op) {
                Ok(v) => v,
                Err(e) => return e,
            };
            entity(
                200,
                current,
                ctx,
                Layout::new(select.as_deref(), expand.as_deref()),
            )
        }
        "PATCH" => {
            if !if_match_ok(op, current) {
                return errors::change_key_conflict();
            }
            let body = match op.json().and_then(|b| contact::parse_body(&b)) {
                Ok(b) => b,
                Err(e) => return e,
            };
            match mailbox.update_contact(id, body, clock) {
                Some(c) => entity(200, c, ctx, Layout::new(None, None)),
                None => errors::item_not_found(),
            }
        }
        "DELETE" => {
            if !if_match_ok(op, current) {
                return errors::change_key_conflict();
            }
            if mailbox.delete_contact(id) {
                Reply::empty(204)
            } else {
                errors::item_not_found()
            }
        }
        _ => errors::method_not_allowed(),
    }
}

/// The content type of stored photo bytes (PNG by its signature, else JPEG).
fn image_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        "image/png"
    } else {
        "image/jpeg"
    }
}

/// The bytes of a photo PUT: a plain request (not a `$batch` item) with `Content-Type: image/jpeg` or
/// `image/png` and a body of that format. (Bodies over the 4 MB request limit never get here: 413.)
fn photo_body(op: &Op) -> Result<Vec<u8>, Reply> {
    if op.batch_item {
        return Err(graph_error(
            400,
            "BadRequest",
            "Binary request bodies are not supported in a JSON batch by graphsim.",
        ));
    }
    let content_type = op
        .header("content-type")
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let bytes = op.body.to_vec();
    let format_ok = match content_type.as_str() {
        "image/jpeg" | "image/jpg" => bytes.starts_with(&[0xFF, 0xD8]),
        "image/png" => bytes.starts_with(&[0x89, b'P', b'N', b'G']),
        _ => {
            return Err(graph_error(
                415,
                "UnsupportedMediaType",
                &format!("Content type '{content_type}' is not supported for a photo; use image/jpeg or image/png."),
            ))
        }
    };
    if !format_ok {
        return Err(graph_error(
            400,
            "ErrorInvalidImage",
            "The image is not valid.",
        ));
    }
    Ok(bytes)
}

/// `GET|PUT|DELETE …/contacts/{id}/photo/$value`. Putting or removing a photo is a change of the contact: its
/// change key and `lastModifiedDateTime` move, its feed shows it, and its `PidLidHasPicture` follows.
fn contact_photo(
    mailbox: &mut Mailbox,
    folder: Option<usize>,
    id: &str,
    method: &str,
    op: &Op,
    clock: &mut crate::ids::Clock,
) -> Reply {
    if let Err(e) = find_contact(mailbox, folder, id) {
        return e;
    }
    match method {
        "GET" => match mailbox.photos.get(id) {
            Some(bytes) => Reply::bytes(200, bytes.clone(), image_type(bytes)),
            None => errors::image_not_found(),
        },
        "PUT" => match photo_body(op) {
            Ok(bytes) => {
                mailbox.put_photo(id, bytes, clock);
                Reply::empty(200)
            }
            Err(e) => e,
        },
        "DELETE" => {
            if !mailbox.remove_photo(id, clock) {
                return errors::image_not_found();
            }
            Reply::empty(204)
        }
        _ => errors::method_not_allowed(),
    }
}

/// A list of names from a query option, `None` when the option is absent.
pub type Selection = Option<Vec<String>>;

/// `$select` and the extended-property ids of `$expand`.
pub fn select_and_expand(op: &Op) -> Result<(Selection, Selection), Reply> {
    let select = match op.q("$select") {
        None => None,
        Some(raw) => {
            let list = odata::parse_select(raw);
            if let Some(bad) = list.iter().find(|p| !contact::selectable(p)) {
                return Err(errors::unknown_select(bad, contact::TYPE_NAME));
            }
            Some(list)
        }
    };
    let expand = match op.q("$expand") {
        None => None,
        Some(raw) => {
            let items = odata::parse_expand(raw).ok_or_else(bad_expand)?;
            let mut ids = Vec::new();
            for item in items {
                if !item
                    .name
                    .eq_ignore_ascii_case("singleValueExtendedProperties")
                {
                    return Err(bad_expand());
                }
                let filter = item.filter.ok_or_else(bad_expand)?;
                ids.extend(odata::expand_ids(&filter).ok_or_else(bad_expand)?);
            }
            Some(ids)
        }
    };
    Ok((select, expand))
}

fn bad_expand() -> Reply {
    graph_error(
        400,
        "ErrorInvalidUrlQuery",
        "The query string contains an invalid $expand clause.",
    )
}

fn check_contact_filter(expr: &Expr) -> bool {
    match expr {
        Expr::And(items) => items.iter().all(check_contact_filter),
        Expr::Any(path, var, body) if path.len() == 1 => {
            let is = |e: &Expr, prop: &str| matches!(e, Expr::Cmp(p, op, Literal::Str(_)) if p.len() == 2 && &p[0] == var && p[1] == prop && op == "eq");
            match path[0].as_str() {
                "emailAddresses" => is(body, "address"),
                "singleValueExtendedProperties" => match body.as_ref() {
                    Expr::And(items) if items.len() == 2 => {
                        (is(&items[0], "id") && is(&items[1], "value"))
                            || (is(&items[0], "value") && is(&items[1], "id"))
                    }
                    e => is(e, "id"),
                },
                _ => false,
            }
        }
        _ => false,
    }
}

fn filter_view(c: &Contact) -> Value {
    json!({
        "emailAddresses": c.props.get("emailAddresses").cloned().unwrap_or(json!([])),
        "singleValueExtendedProperties": c.extended.iter().map(|(id, v)| json!({"id": id, "value": v})).collect::<Vec<_>>(),
    })
}

/// Page size from `$top` (max 1000) or `Prefer: odata.maxpagesize`, else `default`.
pub fn page_size(op: &Op, default: usize) -> Result<usize, Reply> {
    if let Some(v) = op.q("$top") {
        return match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(1000)),
            _ => Err(graph_error(
                400,
                "ErrorInvalidUrlQuery",
                &format!("The value '{v}' of the query option $top is invalid."),
            )),
        };
    }
    Ok(prefer_max_page_size(op).unwrap_or(default))
}

/// `Prefer: odata.maxpagesize=N`.
pub fn prefer_max_page_size(op: &Op) -> Option<usize> {
    op.header("prefer")?
        .split(',')
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("odata.maxpagesize")
                .then(|| v.trim().trim_matches('"').parse::<usize>().ok())?
        })
        .map(|n| n.clamp(1, 1000))
}

fn skip(op: &Op) -> Result<usize, Reply> {
    match op.q("$skip") {
        None => Ok(0),
        Some(v) => v.trim().parse().map_err(|_| {
            graph_error(
                400,
                "ErrorInvalidUrlQuery",
                &format!("The value '{v}' of the query option $skip is invalid."),
            )
        }),
    }
}

fn next_link(op: &Op, base: &str, next: usize) -> String {
    let query = odata::rebuild_query(&op.raw_query, &["$skip"], &[("$skip", next.to_string())]);
    format!("{base}{}?{query}", op.raw_path)
}

fn list_contacts(mailbox: &Mailbox, folder: usize, op: &Op, base: &str, ctx: &str) -> Reply {
    let (select, expand) = match select_and_expand(op) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let filter = match op.q("$filter") {
        None => None,
        Some(raw) => match odata::parse_filter(raw) {
            Some(e) if check_contact_filter(&e) => Some(e),
            _ => return errors::outlook_bad_filter(),
        },
    };
    let (size, offset) = match (page_size(op, 10), skip(op)) {
        (Ok(s), Ok(o)) => (s, o),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut matching: Vec<&Contact> = mailbox
        .folder_contacts(folder)
        .filter(|c| {
            filter.as_ref().is_none_or(|f| {
                odata::eval(
                    f,
                    &filter_view(c),
                    EvalOptions {
                        case_sensitive_ids: true,
                    },
                )
            })
        })
        .collect();
    if let Some(order) = op.q("$orderby") {
        let mut parts = order.split_whitespace();
        let prop = parts.next().unwrap_or_default().to_owned();
        let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
        if !contact::selectable(&prop) {
            return errors::unknown_select(&prop, contact::TYPE_NAME);
        }
        let key = |c: &Contact| -> String {
            match prop.as_str() {
                "createdDateTime" => c.created.clone(),
                "lastModifiedDateTime" => c.modified.clone(),
                "id" => c.id.clone(),
                p => c
                    .props
                    .get(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_lowercase(),
            }
        };
        matching.sort_by_key(|c| key(c));
        if desc {
            matching.reverse();
        }
    }
    let layout = Layout::new(select.as_deref(), expand.as_deref());
    let page = ContactPage {
        context: format!("{ctx}/contacts"),
        count: op
            .q("$count")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            .then_some(matching.len()),
        next_link: (offset.saturating_add(size) < matching.len())
            .then(|| next_link(op, base, offset.saturating_add(size))),
        value: matching
            .iter()
            .skip(offset)
            .take(size)
            .map(|c| layout.of(c))
            .collect(),
    };
    Reply::serialized(200, &page)
}

/// One contact as Graph answers a read, create or update of it: rendered with `layout`, in its entity context.
fn entity(status: u16, contact: &Contact, ctx: &str, layout: Layout<'_>) -> Reply {
    let context = format!("{ctx}/contacts/$entity");
    Reply::serialized(
        status,
        &layout.annotated("@odata.context", &context).of(contact),
    )
}

/// A page of a contact list, members in the order a `serde_json::Map` writes them (see [`crate::contact_json`]).
#[derive(serde::Serialize)]
struct ContactPage<'a> {
    #[serde(rename = "@odata.context")]
    context: String,
    #[serde(rename = "@odata.count", skip_serializing_if = "Option::is_none")]
    count: Option<usize>,
    #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
    next_link: Option<String>,
    value: Vec<ContactJson<'a>>,
}

fn list_folders(mailbox: &Mailbox, parent: usize, op: &Op, base: &str, ctx: &str) -> Reply {
    let name_filter = match op.q("$filter") {
        None => None,
        Some(raw) => match odata::parse_filter(raw) {
            Some(Expr::Cmp(p, o, Literal::Str(v)))
                if p.len() == 1 && p[0] == "displayName" && o == "eq" =>
            {
                Some(v)
            }
            _ => return errors::outlook_bad_filter(),
        },
    };
    if let Some(raw) = op.q("$select") {
        if let Some(bad) = odata::parse_select(raw)
            .iter()
            .find(|p| !["id", "displayName", "parentFolderId"].contains(&p.as_str()))
        {
            return errors::unknown_select(bad, "Microsoft.OutlookServices.ContactFolder");
        }
    }
    let (size, offset) = match (page_size(op, 10), skip(op)) {
        (Ok(s), Ok(o)) => (s, o),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let all: Vec<Value> = mailbox
        .children(parent)
        .into_iter()
        .map(|i| &mailbox.folders[i])
        .filter(|f| {
            name_filter
                .as_ref()
                .is_none_or(|n| f.display_name.to_lowercase() == n.to_lowercase())
        })
        .map(|f| f.render())
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{ctx}/contactFolders")),
    );
    body.insert(
        "value".into(),
        Value::Array(all.iter().skip(offset).take(size).cloned().collect()),
    );
    if offset.saturating_add(size) < all.len() {
        body.insert(
            "@odata.nextLink".into(),
            json!(next_link(op, base, offset.saturating_add(size))),
        );
    }
    Reply::json(200, Value::Object(body))
}

fn folder_body(op: &Op) -> Result<Option<String>, Reply> {
    let body = op.json()?;
    let Value::Object(map) = body else {
        return Err(errors::unreadable_body());
    };
    let mut name = None;
    for (k, v) in &map {
        match k.as_str() {
            "displayName" => match v {
                Value::String(s) => name = Some(s.clone()),
                _ => return Err(errors::wrong_type("displayName", "Edm.String")),
            },
            "parentFolderId" | "id" => {}
            k if k.starts_with('@') => {}
            other => {
                return Err(errors::unknown_property(
                    other,
                    "Microsoft.OutlookServices.ContactFolder",
                ))
            }
        }
    }
    Ok(name)
}

fn create_folder(mailbox: &mut Mailbox, parent: usize, op: &Op, ctx: &str) -> Reply {
    let name = match folder_body(op) {
        Ok(Some(n)) if !n.trim().is_empty() => n,
        Ok(_) => {
            return graph_error(
                400,
                "ErrorInvalidParameter",
                "The folder display name is required.",
            )
        }
        Err(e) => return e,
    };
    match mailbox.create_folder(parent, &name) {
        Some(i) => {
            let mut body = mailbox.folders[i].render();
            body["@odata.context"] = json!(format!("{ctx}/contactFolders/$entity"));
            Reply::json(201, body)
        }
        None => errors::folder_exists(),
    }
}

fn rename_folder(mailbox: &mut Mailbox, folder: usize, op: &Op) -> Reply {
    let name = match folder_body(op) {
        Ok(n) => n,
        Err(e) => return e,
    };
    if let Some(name) = name {
        let parent = mailbox
            .folders
            .iter()
            .position(|f| f.id == mailbox.folders[folder].parent_id);
        if let Some(p) = parent {
            if mailbox.child_named(p, &name).is_some_and(|i| i != folder) {
                return errors::folder_exists();
            }
        }
        mailbox.folders[folder].display_name = name;
        mailbox.version += 1;
    }
    Reply::json(200, mailbox.folders[folder].render())
}
