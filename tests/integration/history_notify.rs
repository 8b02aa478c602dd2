//! Run history and notifications, through the real binary on graphsim: `history` lists the newest kept runs;
//! a failing run notifies a local receiver exactly once (without the webhook's key in any output), a
//! successful one does not by default, and a receiver failing once is retried without failing the run.

use std::sync::{Arc, Mutex};

use graphsim::{EstateParams, SimConfig};
use serde_json::Value;

use crate::check::producer;
use crate::support::{self, Estate};

fn params(users: usize, seed: u64) -> EstateParams {
    EstateParams {
        tenants: 1,
        users_per_tenant: users,
        contacts_per_user: 4,
        overlap: 0.3,
        seed,
    }
}

/// The run id of the JSON report at `path`.
fn run_id(path: &std::path::Path) -> String {
    let report: Value =
        serde_json::from_slice(&std::fs::read(path).expect("report")).expect("JSON");
    report["run_id"].as_str().expect("run id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_the_newest_kept_runs() {
    let estate = Estate::seed(SimConfig::default(), params(4, 91)).await;
    let config = estate.config_json();
    let state = support::scratch_dir("history");
    let state_arg = state.to_string_lossy().into_owned();
    let mut ids = Vec::new();
    for i in 0..3 {
        let report = state.join(format!("report-{i}.json"));
        let report_arg = report.to_string_lossy().into_owned();
        let (code, out, err) = producer(
            &[
                "run",
                "--state-dir",
                &state_arg,
                "--keep-runs",
                "2",
                "--report",
                &report_arg,
            ],
            &config,
        )
        .await;
        assert_eq!(code, 0, "{out}\n{err}");
        ids.push(run_id(&report));
    }
    let kept = std::fs::read_dir(state.join("runs"))
        .expect("runs kept")
        .count();
    assert_eq!(kept, 2, "only the newest two runs are kept");

    let (code, table, err) = producer(&["history", "--state-dir", &state_arg], &config).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one line per run:\n{table}");
    assert!(lines[0].starts_with("RUN"), "{table}");
    assert!(lines[1].starts_with(&ids[2]), "newest first:\n{table}");
    assert!(lines[2].starts_with(&ids[1]), "{table}");
    assert!(!table.contains(&ids[0]), "the oldest run is gone:\n{table}");
    let tenant = &estate.tenants[0].tenant_id;
    for line in &lines[1..] {
        assert!(
            line.contains(tenant.as_str()) && line.ends_with("  ok"),
            "{table}"
        );
    }

    let (_, json, _) = producer(
        &[
            "history",
            "--state-dir",
            &state_arg,
            "--last",
            "1",
            "--json",
        ],
        &config,
    )
    .await;
    let json: Value = serde_json::from_str(&json).expect("JSON");
    let runs = json.as_array().expect("a list");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["run_id"], ids[2].as_str());
    assert_eq!(runs[0]["tenants"][0]["tenant_id"], tenant.as_str());
    for key in ["created", "updated", "deleted", "failed"] {
        assert!(runs[0]["tenants"][0][key].is_u64(), "{key}: {json}");
    }
    let (_, other, _) = producer(
        &[
            "history",
            "--state-dir",
            &state_arg,
            "--tenant",
            "someone-else.onmicrosoft.com",
        ],
        &config,
    )
    .await;
    assert!(other.starts_with("no runs kept"), "{other}");
    let _ = std::fs::remove_dir_all(&state);
}

/// A local webhook: records every POST body and answers each with the next status of `answers` (then 200).
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn receiver(answers: Vec<u16>) -> Receiver {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/hook/{key}",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            let answers = answers.clone();
            async move {
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push(value);
                let status = answers.lock().unwrap().next().unwrap_or(200);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url: format!("http://{addr}/hook/webhook-k3y-s3cret"),
        bodies,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_notifies_exactly_once_and_a_successful_one_does_not() {
    // Sixteen users include one without a mailbox and one blocked by policy: the run fails (exit 1).
    let failing = Estate::seed(SimConfig::default(), params(16, 92)).await;
    let hook = receiver(vec![]).await;
    let (code, out, err) =
        producer(&["run", "--notify-url", &hook.url], &failing.config_json()).await;
    assert_eq!(code, 1, "{out}\n{err}");
    let bodies = hook.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "exactly one notification: {bodies:?}");
    let body = &bodies[0];
    assert_eq!(body["status"], "failed");
    assert!(body["text"].as_str().unwrap().contains("FAILED"), "{body}");
    let tenant = &body["tenants"][0];
    assert_eq!(tenant["tenant_id"], failing.tenants[0].tenant_id.as_str());
    assert_eq!(tenant["failed"], 2, "{body}");
    let reasons: Vec<&str> = tenant["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["access_denied", "no_mailbox"], "{body}");
    let everything = format!("{out}{err}{body}");
    assert!(
        !everything.contains("k3y-s3cret"),
        "the webhook key leaked:\n{everything}"
    );
    assert!(!everything.contains(&failing.tenants[0].client_secret));

    // A run that succeeds is not notified by default ...
    let fine = Estate::seed(SimConfig::default(), params(4, 93)).await;
    let quiet = receiver(vec![]).await;
    let (code, out, err) =
        producer(&["run", "--notify-url", &quiet.url], &fine.config_json()).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(quiet.bodies.lock().unwrap().is_empty());

    // ... and with --notify always, a receiver failing once gets it on the retry; the run still succeeds.
    let flaky = receiver(vec![503]).await;
    let (code, out, err) = producer(
        &["run", "--notify-url", &flaky.url, "--notify", "always"],
        &fine.config_json(),
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let bodies = flaky.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        2,
        "one failed attempt, one delivered: {bodies:?}"
    );
    assert_eq!(bodies[1]["status"], "succeeded");
    assert!(!format!("{out}{err}").contains("k3y-s3cret"));
}
