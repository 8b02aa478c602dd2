//! The `/_sim/` control surface (not part of Graph): seed and reset state, read mailboxes back, read
//! counters and the request log, change throttle/fault/token settings while running.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | POST | `/_sim/reset` | clears everything |
//! | POST | `/_sim/seed` | `EstateParams` -> `[SeededTenant]` |
//! | GET | `/_sim/tenants` | tenants with users |
//! | POST | `/_sim/tenants` | `TenantSeed` |
//! | POST | `/_sim/tenants/{t}/users` | `UserSeed` -> `{"id"}` |
//! | PUT | `/_sim/tenants/{t}/users/{u}/mailbox` | `{"state": "Enabled" \| "NoMailbox" \| "BlockedByPolicy"}` |
//! | GET/POST | `/_sim/tenants/{t}/users/{u}/contacts[?folder=Name]` | full contacts / contact body -> `{"id"}` |
//! | GET | `/_sim/tenants/{t}/users/{u}/folders` | folders |
//! | GET | `/_sim/stats`, POST `/_sim/stats/reset` | `SimStats` |
//! | GET | `/_sim/requests` | request log |
//! | PUT | `/_sim/faults` | `FaultConfig`; POST `/_sim/faults/scripted`: `ScriptedFault` |
//! | PUT | `/_sim/throttle` | `ThrottleConfig` (`window` in seconds); POST `/_sim/throttle/reset` |
//! | PUT | `/_sim/token-lifetime`, `/_sim/latency` | `{"seconds": n}` |
//! | POST | `/_sim/tokens/expire`, `/_sim/delta/invalidate` | |
//! | POST | `/_sim/seed-directory` | `DirectoryParams` -> `SeededDirectory` |
//! | POST | `/_sim/tenants/{t}/groups`, `/_sim/tenants/{t}/org-contacts` | `GroupSeed` / orgContact -> `{"id"}` |
//! | PUT | `/_sim/tenants/{t}/roles` | `{"roles": ["User.Read.All", ...]}` |
//! | PATCH, DELETE | `/_sim/tenants/{t}/users/{u}` | directory properties (e.g. `{"accountEnabled": false}`) / delete |
//! | PUT | `/_sim/tenants/{t}/users/{u}/manager` | `{"manager": "upn" \| null}` |

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::config::{FaultConfig, ScriptedFault, ThrottleConfig};
use crate::directory::GroupSeed;
use crate::directory_seed::{seed_directory, DirectoryParams};
use crate::reply::{graph_error, Reply};
use crate::seed::{seed_estate, EstateParams};
use crate::server::{Op, Shared};
use crate::state::{MailboxState, TenantSeed, UserSeed};
use crate::Sim;

fn body<T: DeserializeOwned>(op: &Op) -> Result<T, Reply> {
    serde_json::from_slice(&op.body)
        .map_err(|e| graph_error(400, "BadRequest", &format!("invalid control body: {e}")))
}

fn seconds(op: &Op) -> Result<Duration, Reply> {
    let v: Value = body(op)?;
    v.get("seconds")
        .and_then(Value::as_f64)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| graph_error(400, "BadRequest", "expected {\"seconds\": number}"))
}

fn bad_request(e: String) -> Reply {
    graph_error(400, "BadRequest", &e)
}

fn ok() -> Reply {
    Reply::json(200, json!({"ok": true}))
}

/// Handles `/_sim/...`.
pub async fn handle(shared: &Arc<Shared>, op: Op) -> Reply {
    let sim = Sim::view(shared);
    match run(&sim, &op) {
        Ok(r) | Err(r) => r,
    }
}

fn run(sim: &Sim, op: &Op) -> Result<Reply, Reply> {
    let segs: Vec<&str> = op.segments.iter().skip(1).map(String::as_str).collect();
    let folder = op.q("folder");
    let reply = match (op.method.as_str(), segs.as_slice()) {
        ("POST", ["reset"]) => {
            sim.reset();
            ok()
        }
        ("POST", ["seed"]) => {
            let params: EstateParams = body(op)?;
            if params.tenants * (params.users_per_tenant + 1) * (params.contacts_per_user + 1)
                > 50_000_000
            {
                return Err(graph_error(
                    413,
                    "RequestEntityTooLarge",
                    "estate too large",
                ));
            }
            Reply::json(200, json!(seed_estate(sim, params)))
        }
        ("GET", ["tenants"]) => Reply::json(200, sim.directory()),
        ("POST", ["seed-directory"]) => {
            let params: DirectoryParams = body(op)?;
            if params.members + params.guests + params.org_contacts > 100_000 {
                return Err(graph_error(
                    413,
                    "RequestEntityTooLarge",
                    "directory too large",
                ));
            }
            Reply::json(200, json!(seed_directory(sim, params)))
        }
        ("POST", ["tenants", t, "groups"]) => {
            let g: GroupSeed = body(op)?;
            let id = sim.add_group(t, g).map_err(bad_request)?;
            Reply::json(201, json!({"id": id}))
        }
        ("POST", ["tenants", t, "org-contacts"]) => {
            let c: serde_json::Map<String, Value> = body(op)?;
            let id = sim.add_org_contact(t, c).map_err(bad_request)?;
            Reply::json(201, json!({"id": id}))
        }
        ("PUT", ["tenants", t, "roles"]) => {
            let v: Value = body(op)?;
            let roles: Vec<String> =
                serde_json::from_value(v.get("roles").cloned().unwrap_or(Value::Null))
                    .map_err(|e| graph_error(400, "BadRequest", &e.to_string()))?;
            let refs: Vec<&str> = roles.iter().map(String::as_str).collect();
            sim.set_app_roles(t, &refs).map_err(bad_request)?;
            ok()
        }
        ("PATCH", ["tenants", t, "users", u]) => {
            let props: serde_json::Map<String, Value> = body(op)?;
            sim.update_user(t, u, props).map_err(bad_request)?;
            ok()
        }
        ("DELETE", ["tenants", t, "users", u]) => {
            sim.remove_user(t, u).map_err(bad_request)?;
            ok()
        }
        ("PUT", ["tenants", t, "users", u, "manager"]) => {
            let v: Value = body(op)?;
            sim.set_manager(t, u, v.get("manager").and_then(Value::as_str))
                .map_err(bad_request)?;
            ok()
        }
        ("POST", ["tenants"]) => {
            let t: TenantSeed = body(op)?;
            let id = t.tenant_id.clone();
            sim.add_tenant(t);
            let (guid, domain) = sim.tenant_ids(&id).unwrap_or_default();
            Reply::json(201, json!({"tenantGuid": guid, "domain": domain}))
        }
        ("POST", ["tenants", t, "users"]) => {
            let u: UserSeed = body(op)?;
            let id = sim
                .try_add_user(t, u)
                .map_err(|e| graph_error(400, "BadRequest", &e))?;
            Reply::json(201, json!({"id": id}))
        }
        ("PUT", ["tenants", t, "users", u, "mailbox"]) => {
            let v: Value = body(op)?;
            let state: MailboxState =
                serde_json::from_value(v.get("state").cloned().unwrap_or(Value::Null))
                    .map_err(|e| graph_error(400, "BadRequest", &e.to_string()))?;
            sim.set_mailbox_state(t, u, state);
            ok()
        }
        ("POST", ["tenants", t, "certificates"]) => {
            // The PEM itself (as `curl --data-binary @cert.pem` sends it), or {"certificate": PEM}.
            let text = String::from_utf8_lossy(&op.body).into_owned();
            let pem = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.get("certificate")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or(text);
            sim.add_app_certificate(t, &pem).map_err(bad_request)?;
            Reply::json(201, json!({}))
        }
        ("POST", ["tenants", t, "federated-credentials"]) => {
            let f: crate::credentials::FederatedCredentialSeed = body(op)?;
            sim.add_federated_credential(t, f).map_err(bad_request)?;
            Reply::json(201, json!({}))
        }
        ("PUT", ["tenants", t, "consent"]) => {
            let v: Value = body(op)?;
            sim.set_admin_consent(
                t,
                v.get("adminConsent")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            );
            ok()
        }
        ("GET", ["tenants", t, "users", u, "contacts"]) => {
            Reply::json(200, Value::Array(sim.contacts(t, u, folder)))
        }
        ("POST", ["tenants", t, "users", u, "contacts"]) => {
            let c: Value = body(op)?;
            let id = sim
                .try_add_contact(t, u, folder, c)
                .map_err(|e| graph_error(400, "BadRequest", &e))?;
            Reply::json(201, json!({"id": id}))
        }
        ("GET", ["tenants", t, "users", u, "folders"]) => {
            Reply::json(200, Value::Array(sim.folders(t, u)))
        }
        ("GET", ["stats"]) => Reply::json(200, json!(sim.stats())),
        ("POST", ["stats", "reset"]) => {
            sim.reset_stats();
            ok()
        }
        ("GET", ["requests"]) => Reply::json(200, json!(sim.request_log())),
        ("PUT", ["faults"]) => {
            let f: FaultConfig = body(op)?;
            sim.set_faults(f);
            ok()
        }
        ("POST", ["faults", "scripted"]) => {
            let f: ScriptedFault = body(op)?;
            sim.push_fault(f);
            ok()
        }
        ("PUT", ["throttle"]) => {
            let t: ThrottleConfig = body(op)?;
            sim.set_throttle(t);
            ok()
        }
        ("POST", ["throttle", "reset"]) => {
            sim.reset_throttle();
            ok()
        }
        ("PUT", ["token-lifetime"]) => {
            sim.set_token_lifetime(seconds(op)?);
            ok()
        }
        ("PUT", ["latency"]) => {
            sim.set_latency(seconds(op)?);
            ok()
        }
        ("POST", ["tokens", "expire"]) => {
            sim.expire_tokens();
            ok()
        }
        ("POST", ["delta", "invalidate"]) => {
            sim.invalidate_delta_tokens();
            ok()
        }
        _ => graph_error(
            404,
            "NotFound",
            &format!("unknown control request {} {}", op.method, op.raw_path),
        ),
    };
    Ok(reply)
}
