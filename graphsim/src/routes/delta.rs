//! Per-folder contact delta: `GET .../contactFolders/{id}/contacts/delta`.
//!
//! Tokens are opaque (base64url JSON) and encode the folder, the change window and the `$select`, so
//! follow-up calls carry no query options. Every write bumps the mailbox's change counter; a round returns
//! the contacts changed in `(since, upto]` and, after the initial round, `@removed` entries for deletions.
//! Bumping the store's delta epoch invalidates every token (410 SyncStateNotFound).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::contact_json::Layout;
use crate::odata;
use crate::reply::{errors, Reply};
use crate::routes::contacts::{page_size, select_and_expand};

/// The `@odata.type` of every delta item.
const CONTACT_TYPE: &str = "#microsoft.graph.contact";
use crate::server::Op;
use crate::state::Mailbox;

#[derive(Debug, Serialize, Deserialize)]
struct Token {
    /// Folder id.
    f: String,
    /// Changes after this mailbox version...
    s: u64,
    /// ...up to this one (snapshot of the round).
    u: u64,
    /// Items of the round already returned.
    o: usize,
    /// Delta epoch the token belongs to.
    e: u64,
    /// `$select` of the initial request.
    sel: Option<Vec<String>>,
}

const PREFIX: &str = "GSD1";

fn encode(t: &Token) -> String {
    let raw = serde_json::to_vec(t).unwrap_or_default();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

fn decode(s: &str) -> Option<Token> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.strip_prefix(PREFIX)?)
        .ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Answers one delta page.
pub fn handle(
    mailbox: &Mailbox,
    folder: usize,
    op: &Op,
    base: &str,
    ctx: &str,
    epoch: u64,
) -> Reply {
    let folder_id = mailbox.folders[folder].id.clone();
    let is_delta_token = op.q("$deltatoken").is_some();
    let token_param = op.q("$skiptoken").or_else(|| op.q("$deltatoken"));
    let token = match token_param {
        Some(raw) => match decode(raw) {
            Some(t) if t.e == epoch && t.f == folder_id => {
                if is_delta_token {
                    // A new round: everything changed since the last one, up to now.
                    Token {
                        u: mailbox.version,
                        o: 0,
                        ..t
                    }
                } else {
                    t
                }
            }
            _ => return errors::sync_state_not_found(),
        },
        None => {
            let select = match select_and_expand(op) {
                Ok((s, _)) => s,
                Err(e) => return e,
            };
            if op.q("$filter").is_some() {
                return errors::outlook_bad_filter();
            }
            Token {
                f: folder_id.clone(),
                s: 0,
                u: mailbox.version,
                o: 0,
                e: epoch,
                sel: select,
            }
        }
    };
    let size = match page_size(op, 10) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let mut changed: Vec<_> = mailbox
        .folder_contacts(folder)
        .filter(|c| c.version > token.s && c.version <= token.u)
        .collect();
    changed.sort_by_key(|c| c.version);
    // Changed items (`Ok`), then removed ones (`Err`); tagged first and rendered after the page is cut, so only the
    // page asked for is rendered.
    let removed: Vec<&String> = if token.s > 0 {
        mailbox.folders[folder]
            .tombstones
            .iter()
            .filter(|(v, _)| *v > token.s && *v <= token.u)
            .map(|(_, id)| id)
            .collect()
    } else {
        Vec::new()
    };
    let total = changed.len() + removed.len();
    let layout = Layout::new(token.sel.as_deref(), None).annotated("@odata.type", CONTACT_TYPE);
    let page: Vec<Value> = changed
        .iter()
        .map(Ok)
        .chain(removed.iter().map(|id| Err(*id)))
        .skip(token.o)
        .take(size)
        .map(|item| match item {
            Ok(c) => Value::Object(layout.of(c).to_map()),
            Err(id) => {
                json!({"@odata.type": CONTACT_TYPE, "id": id, "@removed": {"reason": "deleted"}})
            }
        })
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{ctx}/contactFolders('{folder_id}')/contacts/delta"
        )),
    );
    let link_base = format!("{base}{}", op.raw_path);
    if token.o.saturating_add(size) < total {
        let next = Token {
            o: token.o.saturating_add(size),
            ..token
        };
        let q = odata::rebuild_query("", &[], &[("$skiptoken", encode(&next))]);
        body.insert("@odata.nextLink".into(), json!(format!("{link_base}?{q}")));
    } else {
        let next = Token {
            s: token.u,
            u: token.u,
            o: 0,
            ..token
        };
        let q = odata::rebuild_query("", &[], &[("$deltatoken", encode(&next))]);
        body.insert("@odata.deltaLink".into(), json!(format!("{link_base}?{q}")));
    }
    body.insert("value".into(), Value::Array(page));
    Reply::json(200, Value::Object(body))
}
