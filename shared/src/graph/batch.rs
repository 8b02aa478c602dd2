//! Writing contacts through JSON `$batch`, with per-item results and per-item retries.
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
use super::error::{api_error, GraphError};
use super::retry::{decide, parse_retry_after, Decision};
use super::transport::{relative_path, Call};
use super::wire::{
    create_body, decode_value, update_body, BatchItem, BatchRequest, BatchResponse, WireContact,
};
use super::TenantInner;
use crate::model::{Contact, WriteOp};

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
        WriteOp::Update { id, write } => {
            let mut segments = collection.clone();
            segments.push(id);
            BatchItem {
                id: String::new(),
                method: "PATCH",
                url: relative_path(&segments),
                headers: json_headers(),
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
    let mut attempts = vec![0u32; ops.len()];
    let mut pending: VecDeque<usize> = (0..ops.len()).collect();
    let url = inner.url(&["$batch"], &[])?;

    while !pending.is_empty() {
        let take = pending.len().min(MAX_BATCH);
        let chunk: Vec<usize> = pending.drain(..take).collect();
        for &index in &chunk {
            attempts[index] += 1;
        }
        let request = BatchRequest {
            requests: chunk.iter().map(|&i| items[i].clone()).collect(),
        };
        let body = serde_json::to_value(&request)
            .map_err(|e| GraphError::Protocol(format!("cannot serialise a $batch request: {e}")))?;
        let reply = inner
            .send(&Call {
                method: Method::POST,
                url: url.clone(),
                body: Some(&body),
                eventual: false,
                mailbox,
                batch_items: u32::try_from(chunk.len()).ok(),
                prefer: None,
            })
            .await?;
        let response: BatchResponse = super::wire::decode("$batch response", &reply.body)?;
        let mut answers: HashMap<String, _> = response
            .responses
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();

        let mut longest_wait: Option<Duration> = None;
        let mut backoff_attempt: Option<u32> = None;
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
            counters.batch_item(item.method, answer.status);
            inner.tally.batch_item(answer.status);
            tracing::debug!(
                method = item.method,
                mailbox,
                item = %item.id,
                attempt = attempts[index],
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
            let request_id = answer.header("request-id");
            let body = answer
                .body
                .map(|b| serde_json::to_vec(&b).unwrap_or_default())
                .unwrap_or_default();
            let error = api_error(answer.status, &body, request_id, retry_after);
            let may_retry = attempts[index] < policy.max_attempts;
            match decide(answer.status, retry_after) {
                Decision::RetryAfter(wait) if may_retry && wait <= policy.max_retry_after => {
                    counters.retry(&inner.tenant_id, Some(wait));
                    longest_wait = longest_wait.max(Some(wait));
                    retry_later.push(index);
                }
                Decision::Backoff if may_retry => {
                    counters.retry(&inner.tenant_id, None);
                    backoff_attempt = backoff_attempt.max(Some(attempts[index]));
                    retry_later.push(index);
                }
                Decision::RetryAfter(wait) => {
                    inner.limits.block(mailbox, wait);
                    outcomes[index] = Some(Err(error));
                }
                Decision::Backoff | Decision::Fail => outcomes[index] = Some(Err(error)),
            }
        }
        if !retry_later.is_empty() {
            // Retried items go first, in their original order, so every item keeps moving.
            for index in retry_later.into_iter().rev() {
                pending.push_front(index);
            }
            if let Some(wait) = longest_wait {
                // The gate makes every request for this mailbox wait, this call's next batch included.
                inner.limits.block(mailbox, wait);
            } else if let Some(attempt) = backoff_attempt {
                let wait = policy.backoff.delay(attempt, &mut rand::rng());
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
            },
            "u@x.com",
            &folder,
        );
        assert_eq!(update.method, "PATCH");
        assert_eq!(
            update.url,
            "/users/u@x.com/contactFolders/AQMk%2Ffold%3D/contacts/AAMk%2Bc%2F1%3D"
        );

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
