//! Writing contacts through JSON `$batch`, with per-item results and per-item retries.
//!
//! A create is never sent twice blindly (`retry::Effect`): when Graph may have applied it (a 5xx item answer, or
//! a whole envelope answered 5xx or lost), it is looked up by its sync id first, and sent again only if absent.
//!
//! Graph evaluates each batch item against the mailbox limits on its own: an envelope `200` says nothing about
//! the items, and a throttled item carries its own `Retry-After`. So the items of a call are sent in batches of up
//! to 20; each answer is decided item by item ([`retry::decide`](super::retry)); retryable items go back into
//! the queue, the mailbox is blocked for the longest `Retry-After` the batch returned (or the call backs off when
//! none was given), and the next batch carries them again, up to the attempt limit per item.
//!
//! Graph runs at most four unordered items of a batch at a time against one mailbox, so a batch occupies up to
//! four of the mailbox's in-flight permits (and one rate cell per item).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::contacts::{FolderRef, WriteOutcome};
use super::error::{api_error, ErrorKind, GraphError};
use super::pipeline;
use super::retry::{
    decide, may_have_applied, next_step, parse_retry_after, Decision, Effect, Failure, Next, Wait,
    WaitOrigin,
};
use super::transport::{relative_path, retry_after_of, Call};
use super::wire::{
    create_body, decode_value, update_body, BatchItem, BatchRequest, BatchResponse, WireContact,
};
use super::TenantInner;
use crate::model::{Contact, ContactWrite, WriteOp};

/// Graph's limit of requests per `$batch`.
pub(crate) const MAX_BATCH: usize = 20;

/// The `$batch` item for `op` (without its id).
pub(crate) fn item_for(op: &WriteOp, mailbox: &str, folder: &FolderRef) -> BatchItem {
    let collection = folder.contacts_segments(mailbox);
    let json_headers = || {
        Some(HashMap::from([(
            "Content-Type".to_owned(),
            "application/json".to_owned(),
        )]))
    };
    match op {
        WriteOp::Create(write) => BatchItem {
            id: String::new(),
            method: "POST",
            url: relative_path(&collection),
            headers: json_headers(),
            body: Some(create_body(write)),
        },
        WriteOp::Update {
            id,
            write,
            if_match,
        } => {
            let mut segments = collection.clone();
            segments.push(id);
            let mut headers = json_headers();
            if let (Some(headers), Some(change_key)) = (headers.as_mut(), if_match) {
                // The etag form Graph answers with: `W/"<changeKey>"`.
                headers.insert("If-Match".to_owned(), format!("W/\"{change_key}\""));
            }
            BatchItem {
                id: String::new(),
                method: "PATCH",
                url: relative_path(&segments),
                headers,
                body: Some(update_body(write)),
            }
        }
        WriteOp::Delete { id } => {
            let mut segments = collection.clone();
            segments.push(id);
            BatchItem {
                id: String::new(),
                method: "DELETE",
                url: relative_path(&segments),
                headers: None,
                body: None,
            }
        }
    }
}

/// The successful outcome of item `op` from its answer body.
fn success(op: &WriteOp, body: Option<Value>) -> WriteOutcome {
    let (written, is_delete) = match op {
        WriteOp::Create(write) => (Some(write), false),
        WriteOp::Update { write, .. } => (Some(write), false),
        WriteOp::Delete { .. } => (None, true),
    };
    if is_delete {
        return Ok(None);
    }
    let Some(body) = body.filter(|b| !b.is_null()) else {
        return Ok(None);
    };
    let wire: WireContact = decode_value("written contact", body)?;
    let mut contact = Contact::from(wire);
    // Graph never echoes extended properties: report the sync id that was written.
    if contact.sync_id_property.is_none() {
        contact.sync_id_property = written.and_then(|w| w.sync_id.clone());
    }
    Ok(Some(contact))
}

/// Where one item stands across the rounds of a call.
#[derive(Default)]
struct ItemState {
    /// Attempts sent so far.
    attempts: u32,
    /// An earlier attempt may have been applied (a 5xx, or the envelope failed ambiguously).
    may_be_applied: bool,
    /// A create to look up by its sync id before it may be sent again.
    look_up: bool,
    /// Why the item is in doubt, kept as its result should it stay in doubt.
    doubt: Option<GraphError>,
}

/// The error for an item that may have been applied.
fn in_doubt(item: &BatchItem, wait: Wait, source: GraphError) -> GraphError {
    GraphError::Ambiguous {
        method: item.method.to_owned(),
        path: item.url.clone(),
        wait,
        source: Box::new(source),
    }
}

/// The contact a create in doubt made, if it was applied: found by its sync id. Without a sync id it cannot be
/// found, and stays in doubt (the job re-reads and re-plans).
async fn look_up(
    inner: &TenantInner,
    mailbox: &str,
    folder: &FolderRef,
    op: &WriteOp,
) -> Result<Option<Contact>, GraphError> {
    match op {
        WriteOp::Create(ContactWrite {
            sync_id: Some(sync_id),
            ..
        }) => inner.find_by_sync_id(mailbox, folder, sync_id).await,
        _ => Err(GraphError::Protocol(
            "a create without a sync id cannot be looked up".into(),
        )),
    }
}

/// Applies `ops` in `$batch`es of up to 20. Every item answer is decided by [`next_step`]; a create that may
/// have been applied (its own 5xx, or a failed envelope) is looked up by its sync id first and sent again only
/// if it is not there.
pub(crate) async fn write(
    inner: &TenantInner,
    mailbox: &str,
    folder: &FolderRef,
    ops: &[WriteOp],
) -> Result<Vec<WriteOutcome>, GraphError> {
    let policy = inner.shared.policy;
    let counters = &inner.shared.counters;
    let items: Vec<BatchItem> = ops
        .iter()
        .enumerate()
        .map(|(index, op)| BatchItem {
            id: (index + 1).to_string(),
            ..item_for(op, mailbox, folder)
        })
        .collect();
    let mut outcomes: Vec<Option<WriteOutcome>> = ops.iter().map(|_| None).collect();
    let mut states: Vec<ItemState> = ops.iter().map(|_| ItemState::default()).collect();
    let mut pending: VecDeque<usize> = (0..ops.len()).collect();
    let url = inner.url(&["$batch"], &[])?;

    while !pending.is_empty() {
        // Creates in doubt are looked up before anything is sent again.
        for &index in &pending {
            if !std::mem::take(&mut states[index].look_up) {
                continue;
            }
            let state = &mut states[index];
            let found = look_up(inner, mailbox, folder, &ops[index]).await;
            if let Err(error) = &found {
                tracing::debug!(mailbox, item = %items[index].id, %error, "create in doubt could not be looked up");
            }
            match found {
                Ok(Some(contact)) => {
                    tracing::debug!(mailbox, item = %items[index].id, "create in doubt was applied");
                    outcomes[index] = Some(Ok(Some(contact)));
                }
                Ok(None) if state.attempts < policy.max_attempts => {
                    tracing::debug!(mailbox, item = %items[index].id, "create in doubt was not applied; sending again");
                }
                Ok(None) | Err(_) => {
                    let doubt = state.doubt.take().unwrap_or_else(|| {
                        GraphError::Protocol("a create in doubt stayed in doubt".into())
                    });
                    outcomes[index] = Some(Err(doubt));
                }
            }
        }
        pending.retain(|&index| outcomes[index].is_none());
        if pending.is_empty() {
            break;
        }

        let take = pending.len().min(MAX_BATCH);
        let chunk: Vec<usize> = pending.drain(..take).collect();
        for &index in &chunk {
            states[index].attempts += 1;
        }
        let request = BatchRequest {
            requests: chunk.iter().map(|&i| items[i].clone()).collect(),
        };
        let body = serde_json::to_value(&request)
            .map_err(|e| GraphError::Protocol(format!("cannot serialise a $batch request: {e}")))?;
        // Sent as a create whatever its items: an envelope that may have been applied comes back here
        // (`Ambiguous`), where each item's resend is judged (a create looked up, a DELETE's 404 or a guarded PATCH's
        // 412 done). Sent again by the pipeline, those answers would read as refusals of writes that were done.
        let sent = inner
            .send_as(
                &Call {
                    body: Some(&body),
                    batch_items: u32::try_from(chunk.len()).ok(),
                    ..Call::new(Method::POST, url.clone(), mailbox)
                },
                Effect::Create,
            )
            .await;
        let reply = match sent {
            Ok(reply) => reply,
            Err(GraphError::Ambiguous { wait, source, .. }) => {
                // The envelope may have run, all or in part: its creates are looked up, the rest sent again.
                let why = source.to_string();
                // The pipeline counted this send as a first attempt; the backoff grows with the items' own.
                let tries = chunk.iter().map(|&i| states[i].attempts).max().unwrap_or(1);
                let wait = wait.at_least(policy.backoff.delay(tries, &mut rand::rng()));
                for &index in &chunk {
                    let state = &mut states[index];
                    state.may_be_applied = true;
                    state.look_up = Effect::of_method(items[index].method) == Effect::Create;
                    let envelope = GraphError::Protocol(format!("the $batch failed: {why}"));
                    let doubt = in_doubt(&items[index], wait, envelope);
                    if !state.look_up && state.attempts >= policy.max_attempts {
                        outcomes[index] = Some(Err(doubt));
                    } else {
                        state.doubt = Some(doubt);
                    }
                }
                let mut again = false;
                for &index in chunk.iter().rev() {
                    if outcomes[index].is_none() {
                        pending.push_front(index);
                        again = true;
                    }
                }
                // Nothing of the chunk is tried again (every item out of attempts): no wait for it.
                if again {
                    counters.retry(&inner.tenant_id, retry_after_of(wait));
                    pipeline::sleep_for(wait, false).await;
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let response: BatchResponse = super::wire::decode("$batch response", &reply.body)?;
        let mut answers: HashMap<String, _> = response
            .responses
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();

        let mut graph_wait = false;
        let mut backoff: Option<Duration> = None;
        let mut retry_later = Vec::new();
        for &index in &chunk {
            let item = &items[index];
            let Some(answer) = answers.remove(&item.id) else {
                outcomes[index] = Some(Err(GraphError::Protocol(format!(
                    "the $batch answer has no response for item {} ({} {})",
                    item.id, item.method, item.url
                ))));
                continue;
            };
            let state = &mut states[index];
            counters.batch_item(item.method, answer.status);
            inner.tally.batch_item(answer.status);
            tracing::debug!(
                method = item.method,
                mailbox,
                item = %item.id,
                attempt = state.attempts,
                status = answer.status,
                "graph batch item"
            );
            if (200..300).contains(&answer.status) {
                outcomes[index] = Some(success(&ops[index], answer.body));
                continue;
            }
            let retry_after = answer
                .header("Retry-After")
                .and_then(|v| parse_retry_after(&v, chrono::Utc::now()));
            if answer.status == 429 {
                counters.throttled_metric(&inner.tenant_id);
            }
            if let Decision::RetryAfter(wait) = decide(answer.status, retry_after) {
                // The gate makes every request for this mailbox wait, this call's next batch included.
                inner.limits.block(mailbox, wait);
            }
            let request_id = answer.header("request-id");
            let body = answer
                .body
                .map(|b| serde_json::to_vec(&b).unwrap_or_default())
                .unwrap_or_default();
            let error = api_error(answer.status, &body, request_id, retry_after);
            let failure = Failure::Answered {
                status: answer.status,
                retry_after,
            };
            state.may_be_applied |= may_have_applied(failure);
            let effect = Effect::of_method(item.method);
            let next = next_step(&policy, state.attempts, effect, failure, &mut rand::rng());
            let wait = match next {
                Next::Retry(wait) => wait,
                Next::LookUp(wait) => {
                    state.look_up = true;
                    state.doubt = Some(in_doubt(item, wait, error));
                    wait
                }
                Next::Fail => {
                    // After an attempt that may have been applied: a DELETE that finds nothing is done, and so is a
                    // guarded PATCH whose `If-Match` no longer holds. Either that attempt was applied (the change
                    // key moved with this very write) or the owner edited the contact meanwhile; nothing is to be
                    // sent now either way, and without the change key an answer would have brought, the next
                    // run's check sees the contact changed and reads it again.
                    let done = state.may_be_applied
                        && match item.method {
                            "DELETE" => error.kind() == ErrorKind::ItemNotFound,
                            "PATCH" => error.kind() == ErrorKind::ChangedSinceRead,
                            _ => false,
                        };
                    outcomes[index] = Some(if done { Ok(None) } else { Err(error) });
                    continue;
                }
            };
            counters.retry(&inner.tenant_id, retry_after_of(wait));
            match wait.origin {
                WaitOrigin::RetryAfter => graph_wait = true,
                WaitOrigin::Backoff => backoff = backoff.max(Some(wait.duration)),
            }
            retry_later.push(index);
        }
        if !retry_later.is_empty() {
            // Retried items go first, in their original order, so every item keeps moving.
            for index in retry_later.into_iter().rev() {
                pending.push_front(index);
            }
            if let Some(wait) = backoff.filter(|_| !graph_wait) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| Err(GraphError::Protocol("a write was never answered".into())))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContactWrite;

    #[test]
    fn items_address_the_folder() {
        let create = item_for(
            &WriteOp::Create(ContactWrite::default()),
            "u@x.com",
            &FolderRef::Default,
        );
        assert_eq!(create.method, "POST");
        assert_eq!(create.url, "/users/u@x.com/contacts");
        assert!(create.headers.is_some());

        let folder = FolderRef::Id("AQMk/fold=".into());
        let update = item_for(
            &WriteOp::Update {
                id: "AAMk+c/1=".into(),
                write: ContactWrite::default(),
                if_match: None,
            },
            "u@x.com",
            &folder,
        );
        assert_eq!(update.method, "PATCH");
        assert_eq!(
            update.url,
            "/users/u@x.com/contactFolders/AQMk%2Ffold%3D/contacts/AAMk%2Bc%2F1%3D"
        );
        let if_match = |item: &BatchItem| item.headers.as_ref()?.get("If-Match").cloned();
        assert_eq!(if_match(&update), None, "no precondition unless asked");
        let guarded = item_for(
            &WriteOp::Update {
                id: "c1".into(),
                write: ContactWrite::default(),
                if_match: Some("EQAAABYAAAD".into()),
            },
            "u",
            &FolderRef::Default,
        );
        assert_eq!(if_match(&guarded).as_deref(), Some("W/\"EQAAABYAAAD\""));

        let delete = item_for(
            &WriteOp::Delete { id: "c1".into() },
            "u",
            &FolderRef::Default,
        );
        assert_eq!(delete.method, "DELETE");
        assert!(delete.body.is_none() && delete.headers.is_none());
    }

    #[test]
    fn created_contact_reports_the_written_sync_id() {
        let op = WriteOp::Create(ContactWrite {
            sync_id: Some("s-1".into()),
            ..ContactWrite::default()
        });
        let outcome = success(
            &op,
            Some(serde_json::json!({"id": "new", "displayName": "A"})),
        );
        let contact = outcome.expect("ok").expect("contact");
        assert_eq!(contact.id, "new");
        assert_eq!(contact.sync_id_property.as_deref(), Some("s-1"));
        let deleted = success(&WriteOp::Delete { id: "x".into() }, None).expect("ok");
        assert!(deleted.is_none());
    }
}
