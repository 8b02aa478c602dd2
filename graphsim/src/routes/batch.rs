//! JSON batching: `POST /v1.0/$batch` with at most 20 requests. Every item runs through the same pipeline
//! as a plain request (so it is counted and throttled on its own); unordered items run at most four at a
//! time by default (`SimConfig::batch_parallelism`), as Graph dispatches them to Outlook; `dependsOn` makes the batch sequential and failed
//! prerequisites give 424.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::reply::{graph_error, Reply, Serialized};
use crate::routes::{run, Caller};
use crate::server::{finish_reply, Op, Shared};

/// Most requests in one batch.
pub const MAX_REQUESTS: usize = 20;

struct Item {
    id: String,
    depends_on: Vec<String>,
    op: Op,
}

fn bad(message: &str) -> Reply {
    graph_error(400, "BadRequest", message)
}

fn parse(body: &Value) -> Result<Vec<Item>, Reply> {
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("Invalid batch payload format."))?;
    if requests.is_empty() {
        return Err(bad("Invalid batch payload format."));
    }
    if requests.len() > MAX_REQUESTS {
        return Err(bad(&format!(
            "The number of batch requests exceeds the maximum of {MAX_REQUESTS}."
        )));
    }
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    for r in requests {
        let id = match r.get("id") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(bad("Request id is missing or invalid.")),
        };
        if !seen.insert(id.to_lowercase()) {
            return Err(bad(&format!(
                "Request id '{id}' is duplicated in the batch."
            )));
        }
        let method = r
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("Request method is missing for id : {id}.")))?;
        if !["GET", "POST", "PATCH", "PUT", "DELETE"]
            .contains(&method.to_ascii_uppercase().as_str())
        {
            return Err(bad(&format!(
                "Invalid method '{method}' for request id : {id}."
            )));
        }
        let url = r
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("Request url is missing for id : {id}.")))?;
        if url.starts_with("http://") || url.starts_with("https://") {
            return Err(bad(&format!("Request url for id : {id} must be relative.")));
        }
        let mut headers = HashMap::new();
        if let Some(h) = r.get("headers") {
            let Some(map) = h.as_object() else {
                return Err(bad("Invalid batch payload format."));
            };
            for (k, v) in map {
                let Some(v) = v.as_str() else {
                    return Err(bad("Invalid batch payload format."));
                };
                headers.insert(k.to_ascii_lowercase(), v.to_owned());
            }
        }
        let body = r.get("body").cloned();
        if body.is_some() && !headers.contains_key("content-type") {
            return Err(bad(&format!(
                "Write request id : {id} does not contain Content-Type header or body."
            )));
        }
        let depends_on = match r.get("dependsOn") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => return Err(bad("Invalid batch payload format.")),
        };
        for d in &depends_on {
            if !items.iter().any(|i: &Item| i.id.eq_ignore_ascii_case(d)) {
                return Err(bad(&format!("Request id '{id}' depends on '{d}', which is not an earlier request in the batch.")));
            }
        }
        let path = format!("/v1.0/{}", url.trim_start_matches('/'));
        let mut op = Op::new(method, &path, headers, Bytes::new());
        op.json_body = body;
        op.batch_item = true;
        items.push(Item { id, depends_on, op });
    }
    Ok(items)
}

fn item_response(id: &str, mut reply: Reply) -> Value {
    let request_id = uuid::Uuid::new_v4().to_string();
    finish_reply(&mut reply, &request_id, &request_id);
    let mut headers = serde_json::Map::new();
    if reply.has_json_body() {
        headers.insert(
            "Content-Type".into(),
            json!("application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"),
        );
    }
    for (k, v) in &reply.headers {
        headers.insert(k.clone(), json!(v));
    }
    let mut out = json!({"id": id, "status": reply.status, "headers": headers});
    // A body serialised straight from the store is read back: a batch answer embeds it as JSON.
    let body = match reply.raw.take() {
        Some(Serialized::Json(text)) => serde_json::from_slice(&text).ok(),
        _ => reply.body.take(),
    };
    if let Some(body) = body {
        out["body"] = body;
    }
    out
}

/// Runs a batch.
pub async fn handle(shared: &Arc<Shared>, caller: &Caller, op: Op) -> Reply {
    if op.method != "POST" {
        return crate::reply::errors::method_not_allowed();
    }
    let body = match op.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let mut items = match parse(&body) {
        Ok(i) => i,
        Err(e) => return e,
    };
    for item in &mut items {
        item.op.sent = op.sent;
    }
    let sequential = items.iter().any(|i| !i.depends_on.is_empty());
    let mut responses = Vec::with_capacity(items.len());
    if sequential {
        let mut statuses: HashMap<String, u16> = HashMap::new();
        for item in items {
            let failed = item.depends_on.iter().any(|d| {
                statuses
                    .get(&d.to_lowercase())
                    .is_none_or(|s| !(200..300).contains(s))
            });
            let reply = if failed {
                graph_error(424, "FailedDependency", "Failed dependency.")
            } else {
                run(shared, caller, item.op).await
            };
            statuses.insert(item.id.to_lowercase(), reply.status);
            responses.push(item_response(&item.id, reply));
        }
    } else {
        let results: Vec<Value> = stream::iter(items)
            .map(|item| async move {
                let reply = run(shared, caller, item.op).await;
                item_response(&item.id, reply)
            })
            .buffer_unordered(shared.runtime().batch_parallelism)
            .collect()
            .await;
        responses = results;
    }
    Reply::json(200, json!({"responses": responses}))
}
