//! The Graph client against graphsim: tokens, Retry-After, the in-flight cap, paging, `$batch` retries, read
//! failures and folder creation, each measured on the simulator's side as well as the client's.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use graphsim::{
    FaultConfig, MailboxState, ScriptedFault, Sim, SimConfig, TenantSeed, ThrottleConfig, UserSeed,
};
use serde_json::json;
use shared::config::{DeletionPolicy, GraphLimits, MirrorOptions, TenantSettings};
use shared::graph::{
    AuthProblem, ClientOptions, ErrorKind, FolderRef, GraphClient, GraphError, TenantClient,
};
use shared::model::{ContactFields, ContactWrite, WriteOp, SYNC_ID_PROPERTY};
use shared::secret::Secret;
use url::Url;

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cr3t~value-never-shown";
const ALICE: &str = "alice@contoso.onmicrosoft.com";
const BOB: &str = "bob@contoso.onmicrosoft.com";

struct Fixture {
    sim: Sim,
    graph: GraphClient,
    tenant: TenantClient,
    alice: String,
    bob: String,
}

fn settings(sim: &Sim, secret: &str) -> TenantSettings {
    TenantSettings {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        client_secret: Secret::new(secret),
        global_address_book_user_id: ALICE.into(),
        test_user_list: None,
        authority_host: Url::parse(&sim.authority_url()).expect("authority url"),
        graph_endpoint: Url::parse(&sim.graph_url()).expect("graph url"),
        mirror: MirrorOptions {
            central_folder_name: "All Contacts".into(),
            managed_category: None,
            stamp_notes: true,
            opt_out_category: "Private".into(),
            deletion: DeletionPolicy {
                enabled: true,
                max_share: 0.1,
            },
        },
        limits: GraphLimits::default(),
        distribution: Default::default(),
    }
}

/// Quick retries so failure tests do not take long.
fn fast_options() -> ClientOptions {
    ClientOptions {
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..ClientOptions::default()
    }
}

async fn fixture_with(config: SimConfig, options: ClientOptions) -> Fixture {
    let sim = graphsim::spawn(config).await.expect("graphsim starts");
    sim.add_tenant(TenantSeed::new(TENANT, CLIENT, SECRET));
    let alice = sim.add_user(TENANT, UserSeed::member(ALICE, "Alice Smith"));
    let bob = sim.add_user(TENANT, UserSeed::member(BOB, "Bob Jones"));
    let graph = GraphClient::new(options).expect("client");
    let tenant = graph.tenant(&settings(&sim, SECRET));
    Fixture {
        sim,
        graph,
        tenant,
        alice,
        bob,
    }
}

async fn fixture() -> Fixture {
    fixture_with(SimConfig::default(), fast_options()).await
}

fn contact_body(i: usize) -> serde_json::Value {
    json!({
        "displayName": format!("Person {i:05}"),
        "givenName": "Person",
        "surname": format!("{i:05}"),
        "emailAddresses": [{"name": format!("Person {i}"), "address": format!("person{i}@example.com")}],
    })
}

fn at(entry: &graphsim::LoggedRequest) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&entry.at)
        .expect("log time")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn one_token_is_shared_by_concurrent_callers_and_tenant_clients() {
    let f = fixture().await;
    let other = f.graph.tenant(&settings(&f.sim, SECRET));
    let calls = (0..10).map(|i| {
        let client = if i % 2 == 0 {
            f.tenant.clone()
        } else {
            other.clone()
        };
        async move { client.user(ALICE).await }
    });
    for result in join_all(calls).await {
        assert_eq!(result.expect("user").user_principal_name, ALICE);
    }
    assert_eq!(f.sim.stats().token_requests, 1);
    assert_eq!(f.graph.stats().token_refreshes, 1);
}

#[tokio::test]
async fn token_is_refreshed_before_expiry_and_once_on_401() {
    let f = fixture().await;
    f.sim.set_token_lifetime(Duration::from_secs(2));
    f.tenant.user(ALICE).await.expect("first call");
    assert_eq!(f.graph.stats().token_refreshes, 1);
    // Refreshed at half its lifetime (1 s) at the latest: the next call fetches a new token without a 401.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    f.tenant
        .user(ALICE)
        .await
        .expect("call after refresh point");
    assert_eq!(f.graph.stats().token_refreshes, 2);
    assert!(
        f.sim.request_log().iter().all(|r| r.status != 401),
        "no request went out with a stale token"
    );

    // A token revoked early: Graph answers 401, the client refreshes once and the call succeeds.
    f.sim.set_token_lifetime(Duration::from_secs(3599));
    f.sim.expire_tokens();
    f.tenant.user(ALICE).await.expect("call after 401");
    assert_eq!(f.graph.stats().token_refreshes, 3);
    assert_eq!(
        f.sim
            .request_log()
            .iter()
            .filter(|r| r.status == 401)
            .count(),
        1
    );
}

#[tokio::test]
async fn token_errors_name_the_wrong_setting_and_never_the_secret() {
    let f = fixture().await;
    let wrong_secret = f.graph.tenant(&settings(&f.sim, "wrong-secret-value-xyz"));
    let error = wrong_secret.user(ALICE).await.expect_err("bad secret");
    assert_eq!(error.kind(), ErrorKind::Auth(AuthProblem::BadSecret));
    assert!(!error.is_transient());
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("wrong-secret-value-xyz"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("ClientSecret"), "{shown}");

    let mut unknown_client = settings(&f.sim, SECRET);
    unknown_client.client_id = "99999999-0000-0000-0000-000000000000".into();
    let error = f
        .graph
        .tenant(&unknown_client)
        .user(ALICE)
        .await
        .expect_err("unknown client");
    assert_eq!(error.kind(), ErrorKind::Auth(AuthProblem::UnknownClient));

    let mut unknown_tenant = settings(&f.sim, SECRET);
    unknown_tenant.tenant_id = "nowhere.onmicrosoft.com".into();
    let error = f
        .graph
        .tenant(&unknown_tenant)
        .user(ALICE)
        .await
        .expect_err("unknown tenant");
    assert_eq!(error.kind(), ErrorKind::Auth(AuthProblem::UnknownTenant));
    assert!(!format!("{error:?}").contains(SECRET));
}

#[tokio::test]
async fn retry_after_is_honoured_and_holds_every_request_of_the_mailbox() {
    let f = fixture().await;
    f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim.push_fault(ScriptedFault {
        status: 429,
        retry_after: Some("1.5".into()),
        commit: false,
        path_contains: Some("/contacts".into()),
        method: Some("GET".into()),
    });
    let started = Instant::now();
    let first = {
        let tenant = f.tenant.clone();
        tokio::spawn(async move { tenant.list_contacts(ALICE, &FolderRef::Default).await })
    };
    // While the mailbox is blocked, another request for it waits too, and another mailbox does not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = {
        let tenant = f.tenant.clone();
        tokio::spawn(async move { tenant.list_contacts(ALICE, &FolderRef::Default).await })
    };
    let bob_started = Instant::now();
    f.tenant
        .list_contacts(BOB, &FolderRef::Default)
        .await
        .expect("bob");
    assert!(
        bob_started.elapsed() < Duration::from_millis(1000),
        "bob was held"
    );

    let first = first.await.expect("task").expect("alice after retry");
    let second = second.await.expect("task").expect("alice second");
    assert_eq!((first.len(), second.len()), (1, 1));
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "waited {:?}",
        started.elapsed()
    );

    let log = f.sim.request_log();
    let alice: Vec<_> = log
        .iter()
        .filter(|r| r.mailbox.as_deref() == Some(ALICE))
        .collect();
    let throttled = alice.iter().position(|r| r.status == 429).expect("the 429");
    let throttled_at = at(alice[throttled]);
    let later: Vec<_> = alice[throttled + 1..].iter().collect();
    assert_eq!(later.len(), 2, "{alice:?}");
    for request in later {
        let gap = at(request) - throttled_at;
        assert!(
            gap >= chrono::Duration::milliseconds(1500),
            "a request for alice was sent {gap} after the 429"
        );
    }
    let stats = f.graph.stats();
    assert_eq!(stats.throttled, 1);
    assert!(stats.retry_after_seconds >= 1.5);
    assert!(stats.blocked_wait_seconds >= 1.0);
}

#[tokio::test]
async fn integer_retry_after_on_503_is_honoured() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim.push_fault(ScriptedFault {
        status: 503,
        retry_after: Some("1".into()),
        commit: false,
        path_contains: Some("/contacts".into()),
        method: Some("GET".into()),
    });
    let started = Instant::now();
    let contacts = f
        .tenant
        .list_contacts(ALICE, &FolderRef::Default)
        .await
        .expect("after 503");
    assert!(contacts.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn never_more_than_four_requests_in_flight_per_mailbox() {
    let f = fixture_with(
        SimConfig {
            latency: Duration::from_millis(150),
            ..SimConfig::default()
        },
        ClientOptions::default(),
    )
    .await;
    let calls = (0..20).map(|_| {
        let tenant = f.tenant.clone();
        async move { tenant.list_contacts(ALICE, &FolderRef::Default).await }
    });
    let started = Instant::now();
    for result in join_all(calls).await {
        result.expect("list");
    }
    let sim = f.sim.stats().mailbox(ALICE);
    assert!(
        sim.peak_in_flight <= 4,
        "graphsim saw {} in flight",
        sim.peak_in_flight
    );
    assert_eq!(
        sim.peak_in_flight, 4,
        "the cap should be used, not undershot"
    );
    // 20 requests, 4 at a time, 150 ms each.
    assert!(started.elapsed() >= Duration::from_millis(150 * 5));
    let client = f.graph.stats();
    let peak = client
        .peak_in_flight
        .iter()
        .find(|(k, _)| k.ends_with(ALICE))
        .map(|(_, v)| *v);
    assert_eq!(peak, Some(4));
}

#[tokio::test]
async fn batches_stay_within_the_mailbox_concurrency() {
    let f = fixture_with(
        SimConfig {
            latency: Duration::from_millis(50),
            ..SimConfig::default()
        },
        ClientOptions::default(),
    )
    .await;
    let calls = (0..4).map(|n| {
        let tenant = f.tenant.clone();
        async move {
            let ops: Vec<WriteOp> = (0..8)
                .map(|i| {
                    WriteOp::Create(ContactWrite {
                        fields: Some(ContactFields {
                            display_name: Some(format!("B{n}-{i}")),
                            ..ContactFields::default()
                        }),
                        ..ContactWrite::default()
                    })
                })
                .collect();
            tenant.write(ALICE, &FolderRef::Default, &ops).await
        }
    });
    for outcome in join_all(calls).await {
        assert!(outcome.expect("write").iter().all(Result::is_ok));
    }
    let sim = f.sim.stats().mailbox(ALICE);
    assert!(sim.peak_in_flight <= 4, "{sim:?}");
    assert_eq!(sim.throttled, 0, "{sim:?}");
    assert_eq!(f.sim.contacts(TENANT, ALICE, None).len(), 32);
}

#[tokio::test]
async fn paging_reads_2500_contacts_with_sync_ids() {
    let f = fixture().await;
    for i in 0..2500 {
        let mut body = contact_body(i);
        if i % 100 == 0 {
            body["singleValueExtendedProperties"] =
                json!([{"id": SYNC_ID_PROPERTY, "value": format!("sync-{i}")}]);
        }
        f.sim.add_contact(TENANT, ALICE, None, body);
    }
    let contacts = f
        .tenant
        .list_contacts(&f.alice, &FolderRef::Default)
        .await
        .expect("list");
    assert_eq!(contacts.len(), 2500);
    let mut ids: Vec<&str> = contacts.iter().map(|c| c.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2500);
    let with_sync: Vec<_> = contacts
        .iter()
        .filter_map(|c| c.sync_id_property.as_deref())
        .collect();
    assert_eq!(with_sync.len(), 25);
    let first = contacts
        .iter()
        .find(|c| c.fields.display_name.as_deref() == Some("Person 00100"))
        .expect("person 100");
    assert_eq!(first.sync_id_property.as_deref(), Some("sync-100"));
    assert_eq!(
        first.fields.email_addresses[0].address.as_deref(),
        Some("person100@example.com")
    );
    assert!(first.last_modified.is_some());
    let pages = f
        .sim
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.url.contains("/contacts"))
        .count();
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn a_folder_read_by_id_pages_too() {
    let f = fixture().await;
    for i in 0..1200 {
        f.sim
            .add_contact(TENANT, BOB, Some("All Contacts"), contact_body(i));
    }
    f.sim.add_contact(TENANT, BOB, None, contact_body(9999));
    let folder = f
        .tenant
        .find_top_level_folder(&f.bob, "All Contacts")
        .await
        .expect("find")
        .expect("exists");
    let contacts = f
        .tenant
        .list_contacts(&f.bob, &FolderRef::Id(folder.id))
        .await
        .expect("list");
    assert_eq!(contacts.len(), 1200);
}

#[tokio::test]
async fn a_read_that_keeps_failing_is_an_error_not_an_empty_list() {
    let f = fixture().await;
    f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    f.sim.set_faults(FaultConfig {
        rate: 1.0,
        statuses: vec![500],
        path_contains: Some("/contacts".into()),
        ..FaultConfig::default()
    });
    let error = f
        .tenant
        .list_contacts(ALICE, &FolderRef::Default)
        .await
        .expect_err("must fail");
    assert_eq!(error.kind(), ErrorKind::Transient);
    assert!(error.is_transient());
    assert!(
        matches!(error, GraphError::Api { status: 500, .. }),
        "{error:?}"
    );
    let attempts = f
        .sim
        .request_log()
        .iter()
        .filter(|r| r.url.contains("/contacts"))
        .count();
    assert_eq!(attempts, 3, "bounded attempts");
    assert_eq!(f.graph.stats().retries, 2);
}

#[tokio::test]
async fn a_failure_on_a_later_page_fails_the_whole_read() {
    let options = ClientOptions {
        max_retry_after: Duration::from_millis(500),
        ..fast_options()
    };
    let f = fixture_with(SimConfig::default(), options).await;
    for i in 0..1500 {
        f.sim.add_contact(TENANT, ALICE, None, contact_body(i));
    }
    // One request per minute for the mailbox: page 1 passes, page 2 is throttled for far longer than the client
    // waits in-process.
    f.sim.set_throttle(ThrottleConfig {
        requests_per_window: 1,
        window: Duration::from_secs(60),
        max_in_flight: 4,
    });
    let error = f
        .tenant
        .list_contacts(ALICE, &FolderRef::Default)
        .await
        .expect_err("page 2 fails");
    match error.kind() {
        ErrorKind::Throttled { retry_after } => {
            assert!(retry_after.expect("wait") > Duration::from_secs(30))
        }
        other => panic!("unexpected {other:?}: {error}"),
    }
    assert!(error.is_transient());
    // The mailbox stays blocked: the next call fails fast without sending anything.
    let sent = f.sim.request_log().len();
    let started = Instant::now();
    let again = f
        .tenant
        .list_contacts(ALICE, &FolderRef::Default)
        .await
        .expect_err("still blocked");
    assert!(matches!(again.kind(), ErrorKind::Throttled { .. }));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(f.sim.request_log().len(), sent);
}

fn create(name: &str, sync_id: &str) -> WriteOp {
    WriteOp::Create(ContactWrite {
        fields: Some(ContactFields {
            display_name: Some(name.into()),
            given_name: Some(name.into()),
            email_addresses: vec![shared::model::EmailAddress {
                name: Some(name.into()),
                address: Some(format!(
                    "{}@example.com",
                    name.to_lowercase().replace(' ', ".")
                )),
            }],
            ..ContactFields::default()
        }),
        personal_notes: Some(format!("SyncId={sync_id}")),
        categories: Some(vec!["Managed".into()]),
        sync_id: Some(sync_id.into()),
    })
}

#[tokio::test]
async fn batch_items_answered_429_are_retried_after_their_retry_after() {
    let f = fixture().await;
    let ops: Vec<WriteOp> = (0..25)
        .map(|i| create(&format!("Person {i:02}"), &format!("sync-{i:02}")))
        .collect();
    f.tenant.user(ALICE).await.expect("warm the token");
    for _ in 0..2 {
        f.sim.push_fault(ScriptedFault {
            status: 429,
            retry_after: Some("1".into()),
            commit: false,
            path_contains: Some("/contacts".into()),
            method: Some("POST".into()),
        });
    }
    let started = Instant::now();
    let outcomes = f
        .tenant
        .write(ALICE, &FolderRef::Default, &ops)
        .await
        .expect("write");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(outcomes.len(), 25);
    for (i, outcome) in outcomes.iter().enumerate() {
        let contact = outcome
            .as_ref()
            .expect("item ok")
            .as_ref()
            .expect("created contact");
        assert_eq!(
            contact.fields.display_name.as_deref(),
            Some(format!("Person {i:02}").as_str())
        );
        assert_eq!(
            contact.sync_id_property.as_deref(),
            Some(format!("sync-{i:02}").as_str())
        );
    }
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(stored.len(), 25, "no item lost, none duplicated");
    let stats = f.graph.stats();
    assert_eq!(stats.throttled, 2);
    assert!(stats.retries >= 2);
    assert_eq!(
        f.sim.stats().batches,
        2,
        "20, then the 2 retried items with the last 5"
    );

    // Read back: the sync id is stored in the extended property.
    let read = f
        .tenant
        .list_contacts(ALICE, &FolderRef::Default)
        .await
        .expect("list");
    let mut syncs: Vec<_> = read
        .iter()
        .filter_map(|c| c.sync_id_property.clone())
        .collect();
    syncs.sort();
    assert_eq!(syncs.len(), 25);
    assert_eq!(syncs[0], "sync-00");
}

#[tokio::test]
async fn batch_updates_deletes_and_per_item_errors() {
    let f = fixture().await;
    let a = f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    let b = f.sim.add_contact(TENANT, ALICE, None, contact_body(2));
    let ops = vec![
        WriteOp::Update {
            id: a.clone(),
            write: ContactWrite {
                fields: Some(ContactFields {
                    display_name: Some("Renamed".into()),
                    ..ContactFields::default()
                }),
                ..ContactWrite::default()
            },
        },
        WriteOp::Delete { id: b.clone() },
        WriteOp::Delete {
            id: "AAMkAGI2THVSAAA=".into(),
        },
    ];
    let outcomes = f
        .tenant
        .write(ALICE, &FolderRef::Default, &ops)
        .await
        .expect("write");
    let updated = outcomes[0]
        .as_ref()
        .expect("update ok")
        .as_ref()
        .expect("contact");
    assert_eq!(updated.id, a);
    assert_eq!(updated.fields.display_name.as_deref(), Some("Renamed"));
    assert_eq!(
        updated.fields.email_addresses.len(),
        0,
        "fields are written whole: cleared"
    );
    assert!(outcomes[1].as_ref().expect("delete ok").is_none());
    let missing = outcomes[2].as_ref().expect_err("unknown id");
    assert!(
        matches!(
            missing.kind(),
            ErrorKind::ItemNotFound | ErrorKind::Permanent
        ),
        "{missing:?}"
    );
    assert!(!missing.is_transient());
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(stored.len(), 1);
}

#[tokio::test]
async fn ensure_folder_creates_once_and_recovers_from_a_409() {
    let f = fixture().await;
    assert!(f
        .tenant
        .find_top_level_folder(ALICE, "All Contacts")
        .await
        .expect("find")
        .is_none());
    let created = f
        .tenant
        .ensure_top_level_folder(ALICE, "All Contacts")
        .await
        .expect("ensure");
    let again = f
        .tenant
        .ensure_top_level_folder(ALICE, "All Contacts")
        .await
        .expect("ensure again");
    assert_eq!(created.id, again.id);

    // Graph creates the folder but answers 500; the retried POST gets 409 ErrorFolderExists; the client finds it.
    f.sim.push_fault(ScriptedFault {
        status: 500,
        retry_after: None,
        commit: true,
        path_contains: Some("contactFolders".into()),
        method: Some("POST".into()),
    });
    let folder = f
        .tenant
        .ensure_top_level_folder(BOB, "O'Brien & Co")
        .await
        .expect("ensure after 409");
    assert_eq!(folder.display_name, "O'Brien & Co");
    let folders = f.sim.folders(TENANT, BOB);
    assert_eq!(folders.len(), 1, "{folders:?}");
    let statuses: Vec<u16> = f
        .sim
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.url.contains("contactFolders"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![201, 500, 409]);
}

#[tokio::test]
async fn licensed_users_only_and_typed_mailbox_errors() {
    let f = fixture().await;
    f.sim.add_user(
        TENANT,
        UserSeed {
            licensed: false,
            ..UserSeed::member("unlicensed@contoso.onmicrosoft.com", "Unlicensed")
        },
    );
    f.sim.add_user(
        TENANT,
        UserSeed {
            account_enabled: false,
            ..UserSeed::member("disabled@contoso.onmicrosoft.com", "Disabled")
        },
    );
    let mut users: Vec<String> = f
        .tenant
        .licensed_users()
        .await
        .expect("users")
        .iter()
        .map(|u| u.mailbox().upn)
        .collect();
    users.sort();
    assert_eq!(users, vec![ALICE.to_string(), BOB.to_string()]);
    let alice = f.tenant.user(&f.alice).await.expect("alice by id");
    assert_eq!(alice.mailbox().id, f.alice);

    f.sim
        .set_mailbox_state(TENANT, BOB, MailboxState::NoMailbox);
    let error = f
        .tenant
        .list_contacts(BOB, &FolderRef::Default)
        .await
        .expect_err("no mailbox");
    assert_eq!(error.kind(), ErrorKind::MailboxNotEnabled);
    f.sim
        .set_mailbox_state(TENANT, BOB, MailboxState::BlockedByPolicy);
    let error = f
        .tenant
        .list_contacts(BOB, &FolderRef::Default)
        .await
        .expect_err("policy");
    assert_eq!(error.kind(), ErrorKind::AccessDenied);
    let error = f
        .tenant
        .user("nobody@contoso.onmicrosoft.com")
        .await
        .expect_err("no such user");
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ItemNotFound | ErrorKind::MailboxNotEnabled
        ),
        "{error:?}"
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn debug_logs_show_requests_but_never_secrets_or_tokens() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = fixture().await;
    f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    f.tenant
        .list_contacts(ALICE, &FolderRef::Default)
        .await
        .expect("list");
    let wrong = f.graph.tenant(&settings(&f.sim, "another-secret-123"));
    let _ = wrong.user(ALICE).await;
    let text =
        String::from_utf8_lossy(&capture.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(text.contains("graph request"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("another-secret-123"), "{text}");
    assert!(!text.to_lowercase().contains("bearer "), "{text}");
    assert!(!text.contains("access_token"), "{text}");
}
