//! Routing and the per-operation pipeline shared by plain requests and `$batch` items:
//! authenticate -> resolve the target -> count and throttle -> consent and mailbox state -> latency ->
//! faults -> handler -> record.

pub mod batch;
pub mod contacts;
pub mod control;
pub mod delta;
pub mod directory;
pub mod token;
pub mod users;

use std::sync::Arc;
use std::time::Instant;

use crate::reply::{errors, graph_error, Reply};
use crate::server::{invalid_version, Op, Shared};
use crate::state::MailboxState;
use crate::stats::Outcome;
use crate::throttle::ThrottleKey;

/// The authenticated app behind a Graph request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Tenant index in the store.
    pub tenant: usize,
    /// Tenant GUID.
    pub tenant_guid: String,
    /// App id.
    pub app_id: String,
    /// Whether the token carries application roles.
    pub consent: bool,
    /// The application roles the token carries.
    pub roles: Vec<String>,
}

/// Routes one HTTP request.
pub async fn dispatch(shared: &Arc<Shared>, op: Op) -> Reply {
    let first = op.segments.first().cloned().unwrap_or_default();
    if first == "_sim" {
        return control::handle(shared, op).await;
    }
    if op.segments.len() == 4
        && op.segments[1].eq_ignore_ascii_case("oauth2")
        && op.segments[2] == "v2.0"
        && op.segments[3] == "token"
    {
        shared.recorder.http("token");
        return token::handle(shared, &op);
    }
    if first != "v1.0" {
        shared.recorder.http("graph");
        return invalid_version(&first);
    }
    let is_batch = op.segments.get(1).is_some_and(|s| s == "$batch");
    shared
        .recorder
        .http(if is_batch { "batch" } else { "graph" });
    let caller = match authenticate(shared, &op) {
        Ok(c) => c,
        Err(reply) => {
            record(shared, &op, &reply, None, None, false, false);
            return reply;
        }
    };
    if is_batch {
        return match shared.faults.decide_envelope(&op.method, &op.raw_path) {
            None => batch::handle(shared, &caller, op).await,
            Some(fault) => {
                if fault.commit {
                    let _ = batch::handle(shared, &caller, op).await;
                }
                fault.reply
            }
        };
    }
    run(shared, &caller, op).await
}

/// Checks the bearer token.
pub fn authenticate(shared: &Shared, op: &Op) -> Result<Caller, Reply> {
    let Some(auth) = op.header("authorization") else {
        return Err(errors::unauthenticated("Access token is empty."));
    };
    let token = match auth.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            token.trim()
        }
        _ => return Err(errors::unauthenticated("Access token is empty.")),
    };
    let store = shared.store_read();
    let Some(info) = store.tokens.get(token) else {
        return Err(errors::unauthenticated(
            "Access token validation failure. Invalid audience.",
        ));
    };
    if Instant::now() >= info.expires {
        return Err(errors::unauthenticated(
            "Access token has expired or is not yet valid.",
        ));
    }
    let tenant = store
        .tenants
        .get(info.tenant)
        .ok_or_else(|| errors::unauthenticated("Access token validation failure."))?;
    Ok(Caller {
        tenant: info.tenant,
        tenant_guid: tenant.guid.clone(),
        app_id: info.app_id.clone(),
        consent: info.consent,
        roles: info.roles.clone(),
    })
}

fn record(
    shared: &Shared,
    op: &Op,
    reply: &Reply,
    mailbox: Option<&str>,
    app: Option<&str>,
    injected: bool,
    applied: bool,
) {
    let url = op.url();
    shared.recorder.finish(Outcome {
        method: &op.method,
        url: &url,
        status: reply.status,
        error_code: reply.error_code(),
        mailbox,
        app_id: app,
        batch_item: op.batch_item,
        client_request_id: op.header("client-request-id"),
        injected,
        applied,
        received: op.received,
        retry_after: retry_after(reply),
    });
}

/// The `Retry-After` of an answer as a duration (whole or fractional seconds), if it carries one.
fn retry_after(reply: &Reply) -> Option<std::time::Duration> {
    reply
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| value.trim().parse::<f64>().ok())
        .and_then(|secs| std::time::Duration::try_from_secs_f64(secs).ok())
}

enum Target {
    Tenant,
    Mailbox {
        user: usize,
        upn: String,
        id: String,
        state: MailboxState,
    },
}

/// Runs one Graph operation (a plain request or a batch item) through the whole pipeline.
pub async fn run(shared: &Arc<Shared>, caller: &Caller, mut op: Op) -> Reply {
    if op.batch_item {
        op.received = chrono::Utc::now();
    }
    let target = match resolve(shared, caller, &op) {
        Ok(t) => t,
        Err(reply) => {
            record(
                shared,
                &op,
                &reply,
                None,
                Some(&caller.app_id),
                false,
                false,
            );
            return reply;
        }
    };
    let mailbox_upn = match &target {
        Target::Mailbox { upn, .. } => Some(upn.to_lowercase()),
        Target::Tenant => None,
    };
    let (reply, injected, applied) = run_target(shared, caller, &op, &target).await;
    record(
        shared,
        &op,
        &reply,
        mailbox_upn.as_deref(),
        Some(&caller.app_id),
        injected,
        applied,
    );
    reply
}

async fn run_target(
    shared: &Arc<Shared>,
    caller: &Caller,
    op: &Op,
    target: &Target,
) -> (Reply, bool, bool) {
    let _in_flight = match target {
        Target::Mailbox { upn, .. } => Some(shared.recorder.enter_at(&upn.to_lowercase(), op.sent)),
        Target::Tenant => None,
    };
    let scope = match target {
        Target::Mailbox { id, .. } => id.clone(),
        Target::Tenant => format!("tenant:{}", caller.tenant_guid),
    };
    let key = ThrottleKey {
        app: caller.app_id.clone(),
        scope,
    };
    let _permit = match shared.throttle.admit(key.clone()) {
        Ok(p) => p,
        Err(reply) => return (reply, false, false),
    };
    if matches!(target, Target::Mailbox { .. })
        && matches!(op.method.as_str(), "POST" | "PATCH" | "PUT")
    {
        // Outlook's upload limit counts the bytes of every body written to the mailbox.
        let bytes = match &op.json_body {
            Some(json) if op.batch_item => serde_json::to_vec(json).map_or(0, |b| b.len()),
            _ => op.body.len(),
        };
        if let Err(reply) = shared.throttle.admit_upload(&key, bytes as u64) {
            return (reply, false, false);
        }
    }
    if !caller.consent {
        let reply = match target {
            Target::Tenant => errors::directory_access_denied(),
            Target::Mailbox { .. } => errors::mailbox_access_denied(),
        };
        return (reply, false, false);
    }
    if let Err(reply) =
        directory::permitted(op, matches!(target, Target::Mailbox { .. }), &caller.roles)
    {
        return (reply, false, false);
    }
    if let Target::Mailbox { state, .. } = target {
        match state {
            MailboxState::Enabled => {}
            MailboxState::NoMailbox => {
                let n = shared
                    .no_mailbox_answers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if shared.runtime().alternate_no_mailbox && n % 2 == 1 {
                    return (
                        graph_error(404, "ResourceNotFound", "Resource could not be discovered."),
                        false,
                        false,
                    );
                }
                return (errors::mailbox_not_enabled(), false, false);
            }
            MailboxState::BlockedByPolicy => return (errors::access_policy_denied(), false, false),
        }
    }
    let latency = shared.runtime().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = shared.faults.decide(&op.method, &op.raw_path);
    if let Some(f) = &fault {
        if !f.commit {
            return (f.reply.clone(), true, false);
        }
    }
    let base = shared.base_url.clone();
    let reply = match target {
        Target::Tenant => directory::handle(&shared.store_read(), caller.tenant, op, &base),
        Target::Mailbox { user, .. } => {
            // A read takes the store beside other reads; anything else (or a read `handle_read` does not
            // serve) takes it alone.
            let read = (op.method == "GET")
                .then(|| {
                    contacts::handle_read(&shared.store_read(), caller.tenant, *user, op, &base)
                })
                .flatten();
            read.unwrap_or_else(|| {
                contacts::handle(&mut shared.store(), caller.tenant, *user, op, &base)
            })
        }
    };
    let applied =
        matches!(op.method.as_str(), "POST" | "PATCH" | "DELETE" | "PUT") && reply.is_success();
    match fault {
        Some(f) if applied => (f.reply, true, true),
        _ => (reply, false, applied),
    }
}

fn resolve(shared: &Shared, caller: &Caller, op: &Op) -> Result<Target, Reply> {
    let seg = |i: usize| op.segments.get(i).map(String::as_str);
    match seg(1) {
        Some(s) if s.eq_ignore_ascii_case("users") => {}
        Some(s)
            if directory::TENANT_COLLECTIONS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(s)) =>
        {
            return Ok(Target::Tenant)
        }
        Some("me") => {
            return Err(graph_error(
                400,
                "BadRequest",
                "/me request is only valid with delegated authentication flow.",
            ))
        }
        Some("$batch") => {
            return Err(graph_error(
                400,
                "BadRequest",
                "Nested batch requests are not supported.",
            ))
        }
        Some(other) => return Err(errors::unknown_segment(other)),
        None => return Err(errors::unknown_segment("v1.0")),
    }
    if op.segments.len() <= 3 || directory::is_user_directory_path(&op.segments) {
        return Ok(Target::Tenant);
    }
    let key = &op.segments[2];
    let store = shared.store_read();
    let tenant = store
        .tenants
        .get(caller.tenant)
        .ok_or_else(|| errors::invalid_user(key))?;
    let index = tenant
        .user_index(key)
        .ok_or_else(|| errors::invalid_user(key))?;
    let user = &tenant.users[index];
    Ok(Target::Mailbox {
        user: index,
        upn: user.upn.clone(),
        id: user.id.clone(),
        state: user.mailbox_state,
    })
}
