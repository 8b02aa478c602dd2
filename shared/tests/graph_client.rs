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
use shared::credential::Credential;
use shared::graph::{
    AuthProblem, ClientOptions, ErrorKind, FolderRef, GraphClient, GraphError, TenantClient,
};
use shared::model::{ContactFields, ContactWrite, PackedFields, WriteOp, SYNC_ID_PROPERTY};
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
    settings_at(&sim.authority_url(), &sim.graph_url(), secret)
}

fn settings_at(authority: &str, graph: &str, secret: &str) -> TenantSettings {
    TenantSettings {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        credential: Credential::Secret(Secret::new(secret)),
        global_address_book_user_id: ALICE.into(),
        test_user_list: None,
        domains: Vec::new(),
        enabled: true,
        dry_run: false,
        authority_host: Url::parse(authority).expect("authority url"),
        graph_endpoint: Url::parse(graph).expect("graph url"),
        mirror: MirrorOptions {
            central_folder_name: "All Contacts".into(),
            managed_category: None,
            stamp_notes: true,
            opt_out_category: "Private".into(),
            deletion: DeletionPolicy {
                enabled: true,
                max_share: 0.1,
            },
            update_existing: true,
            fields: Default::default(),
        },
        limits: GraphLimits::default(),
        photos: false,
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
                        fields: Some(PackedFields::pack(&ContactFields {
                            display_name: Some(format!("B{n}-{i}").into()),
                            ..ContactFields::default()
                        })),
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
        unchanged: Default::default(),
        fields: Some(PackedFields::pack(&ContactFields {
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
        })),
        personal_notes: Some(format!("SyncId={sync_id}")),
        categories: Some(vec!["Managed".into()]),
        sync_id: Some(sync_id.into()),
        owner: None,
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

/// An update carrying the change key it was planned against (`if_match`) applies only while the contact still has
/// it: an edit made since is answered 412 and kept as it is (an early identity stamp never overwrites an owner's
/// edit).
#[tokio::test]
async fn an_update_with_a_stale_change_key_is_refused_and_changes_nothing() {
    let f = fixture().await;
    let id = f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    let read = f.sim.contacts(TENANT, ALICE, None);
    let planned_against: Box<str> = read[0]["changeKey"].as_str().expect("a change key").into();
    let stamp = |key: &str| WriteOp::Update {
        id: id.clone(),
        write: ContactWrite {
            personal_notes: Some("SyncId: s-1".into()),
            ..ContactWrite::default()
        },
        if_match: Some(key.into()),
    };
    // The owner edits the contact after it was read.
    let edited = f
        .tenant
        .write(
            ALICE,
            &FolderRef::Default,
            &[WriteOp::Update {
                id: id.clone(),
                write: ContactWrite {
                    personal_notes: Some("call back on Monday".into()),
                    ..ContactWrite::default()
                },
                if_match: None,
            }],
        )
        .await
        .expect("write");
    let current = edited[0]
        .as_ref()
        .expect("the owner's edit")
        .as_ref()
        .and_then(|c| c.change_key.clone())
        .expect("a new change key");
    let refused = f
        .tenant
        .write(ALICE, &FolderRef::Default, &[stamp(&planned_against)])
        .await
        .expect("write");
    let error = refused[0].as_ref().expect_err("a stale change key");
    assert!(
        error.to_string().contains("ErrorIrresolvableConflict"),
        "{error}"
    );
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(
        stored[0]["personalNotes"], "call back on Monday",
        "the edit stays"
    );
    let applied = f
        .tenant
        .write(ALICE, &FolderRef::Default, &[stamp(&current)])
        .await
        .expect("write");
    assert!(applied[0].is_ok(), "{:?}", applied[0]);
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(stored[0]["personalNotes"], "SyncId: s-1");
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
                fields: Some(PackedFields::pack(&ContactFields {
                    display_name: Some("Renamed".into()),
                    ..ContactFields::default()
                })),
                ..ContactWrite::default()
            },
            if_match: None,
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
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(
        stored[0]["changeKey"].as_str(),
        updated.change_key.as_deref(),
        "the write reports the version it made"
    );
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

    // Graph creates the folder but answers 500; the create in doubt is looked up, not posted again.
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
        .expect("ensure after a create in doubt");
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
    assert_eq!(statuses, vec![201, 500]);
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

#[tokio::test]
async fn debug_logs_show_requests_but_never_secrets_or_tokens() {
    let capture = shared::telemetry::CapturedLog::default();
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
    let text = capture.text();
    assert!(text.contains("graph request"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(!text.contains("another-secret-123"), "{text}");
    assert!(!text.to_lowercase().contains("bearer "), "{text}");
    assert!(!text.contains("access_token"), "{text}");
}

/// The stored contacts of `user` per sync id property value.
fn sync_id_counts(f: &Fixture, user: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for contact in f.sim.contacts(TENANT, user, None) {
        let notes = contact["personalNotes"].as_str().unwrap_or_default();
        let sync = notes.trim_start_matches("SyncId=").to_owned();
        *counts.entry(sync).or_insert(0) += 1;
    }
    counts
}

/// A commit-then-fail fault for the next POST to a contact collection.
fn applied_then_failed(status: u16, path: &str, method: &str) -> ScriptedFault {
    ScriptedFault {
        status,
        retry_after: (status == 503).then(|| "0.2".to_owned()),
        commit: true,
        path_contains: Some(path.into()),
        method: Some(method.into()),
    }
}

/// Failed before the fix: Graph applied three of the creates and answered 500, 503 and 504; the client sent them
/// again in place, so those three people stood twice in the folder (each sync id twice).
#[tokio::test]
async fn batch_items_applied_then_failed_are_looked_up_not_created_twice() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    for status in [500, 503, 504] {
        f.sim
            .push_fault(applied_then_failed(status, "/contacts", "POST"));
    }
    let ops: Vec<WriteOp> = (0..5)
        .map(|i| create(&format!("Person {i:02}"), &format!("sync-{i:02}")))
        .collect();
    let outcomes = f
        .tenant
        .write(ALICE, &FolderRef::Default, &ops)
        .await
        .expect("write");
    let stored = f.sim.contacts(TENANT, ALICE, None);
    for (i, outcome) in outcomes.iter().enumerate() {
        let contact = outcome
            .as_ref()
            .expect("item ok")
            .as_ref()
            .expect("contact");
        assert_eq!(
            contact.sync_id_property.as_deref(),
            Some(format!("sync-{i:02}").as_str())
        );
        let change_key = contact.change_key.as_deref().expect("a change key");
        assert!(
            stored
                .iter()
                .any(|c| c["id"] == contact.id.as_str() && c["changeKey"] == change_key),
            "the outcome names the stored contact and its version"
        );
    }
    let counts = sync_id_counts(&f, ALICE);
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    let posts = f
        .sim
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.url.contains("/contacts"))
        .count();
    assert_eq!(posts, 5, "no create was sent twice");
}

/// Failed before the fix: the whole `$batch` was applied and answered 504; the client sent the envelope again
/// (up to its attempt limit), writing every person once per envelope.
#[tokio::test]
async fn a_batch_envelope_applied_then_failed_writes_each_contact_once() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    let existing = f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    let doomed = f.sim.add_contact(TENANT, ALICE, None, contact_body(2));
    for _ in 0..2 {
        f.sim.push_fault(applied_then_failed(504, "$batch", "POST"));
    }
    let mut ops: Vec<WriteOp> = (0..3)
        .map(|i| create(&format!("Person {i:02}"), &format!("sync-{i:02}")))
        .collect();
    ops.push(WriteOp::Update {
        id: existing.clone(),
        write: ContactWrite {
            fields: Some(PackedFields::pack(&ContactFields {
                display_name: Some("Renamed".into()),
                ..ContactFields::default()
            })),
            ..ContactWrite::default()
        },
        if_match: None,
    });
    ops.push(WriteOp::Delete { id: doomed.clone() });
    let outcomes = f
        .tenant
        .write(ALICE, &FolderRef::Default, &ops)
        .await
        .expect("write");
    let counts = sync_id_counts(&f, ALICE);
    for i in 0..3 {
        assert_eq!(counts.get(&format!("sync-{i:02}")), Some(&1), "{counts:?}");
    }
    for outcome in &outcomes[..4] {
        assert!(outcome.as_ref().expect("item ok").is_some());
    }
    // Deleted by the first envelope; the 404 of the later one means done.
    assert!(outcomes[4].as_ref().expect("delete done").is_none());
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(stored.len(), 4, "three created, one renamed, one deleted");
    assert!(stored.iter().all(|c| c["id"] != doomed.as_str()));
}

/// A `$batch` of deletes and guarded updates only (a cleanup, a plan with no creates) applied then answered 504.
/// Failed before the fix: such an envelope was sent again by the request pipeline itself, so the batch never learnt
/// that its items may have been applied, and the resend's 404 and 412 came back as failures of writes that were done.
#[tokio::test]
async fn a_batch_of_deletes_and_guarded_updates_applied_then_failed_is_done() {
    let f = fixture().await;
    let doomed = f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    let kept = f.sim.add_contact(TENANT, ALICE, None, contact_body(2));
    let change_key = f
        .sim
        .contacts(TENANT, ALICE, None)
        .iter()
        .find(|c| c["id"] == kept.as_str())
        .and_then(|c| c["changeKey"].as_str().map(str::to_owned))
        .expect("a change key");
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim.push_fault(applied_then_failed(504, "$batch", "POST"));
    let ops = [
        WriteOp::Delete { id: doomed.clone() },
        WriteOp::Update {
            id: kept.clone(),
            write: ContactWrite {
                fields: Some(PackedFields::pack(&ContactFields {
                    display_name: Some("Renamed".into()),
                    ..ContactFields::default()
                })),
                ..ContactWrite::default()
            },
            if_match: Some(change_key.into()),
        },
    ];
    let outcomes = f
        .tenant
        .write(ALICE, &FolderRef::Default, &ops)
        .await
        .expect("write");
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(None)),
            "a write that was done came back as {outcomes:?}"
        );
    }
    let stored = f.sim.contacts(TENANT, ALICE, None);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["displayName"], "Renamed");
}

/// Failed before the fix: a DELETE applied then answered 500 was sent again and its 404 reported as a failure.
#[tokio::test]
async fn a_delete_applied_then_failed_is_done() {
    let f = fixture().await;
    let doomed = f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim
        .push_fault(applied_then_failed(500, "/contacts", "DELETE"));
    let outcomes = f
        .tenant
        .write(
            ALICE,
            &FolderRef::Default,
            &[WriteOp::Delete { id: doomed }],
        )
        .await
        .expect("write");
    assert!(outcomes[0].as_ref().expect("done").is_none());
    assert!(f.sim.contacts(TENANT, ALICE, None).is_empty());
}

/// A guarded PATCH (`If-Match` on the change key read) applied then answered 500 is sent again and meets 412: its
/// own write moved the change key. Failed before the fix: the 412 was the item's failure, so a phase-2 job failed
/// its attempt (read again, planned again) for a write that was done.
#[tokio::test]
async fn a_guarded_update_applied_then_failed_is_done() {
    let f = fixture().await;
    let id = f.sim.add_contact(TENANT, ALICE, None, contact_body(1));
    let read = f.sim.contacts(TENANT, ALICE, None);
    let change_key = read[0]["changeKey"]
        .as_str()
        .expect("a change key")
        .to_owned();
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim
        .push_fault(applied_then_failed(500, "/contacts", "PATCH"));
    let write = ContactWrite {
        fields: Some(PackedFields::pack(&ContactFields {
            display_name: Some("Renamed".into()),
            ..ContactFields::default()
        })),
        ..ContactWrite::default()
    };
    let outcomes = f
        .tenant
        .write(
            ALICE,
            &FolderRef::Default,
            &[WriteOp::Update {
                id,
                write,
                if_match: Some(change_key.into()),
            }],
        )
        .await
        .expect("write");
    assert!(
        outcomes[0].as_ref().expect("done").is_none(),
        "{outcomes:?}"
    );
    let statuses: Vec<u16> = f
        .sim
        .request_log()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![500, 412],
        "sent again, and its own write met"
    );
    assert_eq!(
        f.sim.contacts(TENANT, ALICE, None)[0]["displayName"],
        "Renamed"
    );
}

/// Failed before the fix: a single POST applied then answered 500 was sent again (saved only by Graph's 409 for
/// folder names). Now it is looked up instead, and never posted twice.
#[tokio::test]
async fn a_single_create_applied_then_failed_is_looked_up_not_sent_again() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim
        .push_fault(applied_then_failed(502, "contactFolders", "POST"));
    let folder = f
        .tenant
        .ensure_top_level_folder(BOB, "All Contacts")
        .await
        .expect("ensure");
    assert_eq!(folder.display_name, "All Contacts");
    assert_eq!(f.sim.folders(TENANT, BOB).len(), 1);
    let posts: Vec<u16> = f
        .sim
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.url.contains("contactFolders"))
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, vec![502], "the create in doubt was not sent again");
}

/// Failed before the fix: `Retry-After: 18446744073709551615` panicked ("overflow when adding duration to
/// instant"); now it, and `9999999999`, fail the call as throttled at once, with a bounded wait.
#[tokio::test]
async fn absurd_retry_after_values_fail_the_call_without_panicking() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    for (value, mailbox) in [("18446744073709551615", ALICE), ("9999999999", BOB)] {
        f.sim.push_fault(ScriptedFault {
            status: 429,
            retry_after: Some(value.into()),
            commit: false,
            path_contains: Some("/contacts".into()),
            method: Some("GET".into()),
        });
        let error = f
            .tenant
            .list_contacts(mailbox, &FolderRef::Default)
            .await
            .expect_err("throttled");
        let wait = error
            .retry_after()
            .expect("the wait travels with the error");
        assert!(wait > Duration::from_secs(300) && wait <= Duration::from_secs(86_400));
        assert!(matches!(error.kind(), ErrorKind::Throttled { .. }));
        // The mailbox stays blocked in this client: the next call fails without a request.
        let sent = f.sim.request_log().len();
        assert!(f
            .tenant
            .list_contacts(mailbox, &FolderRef::Default)
            .await
            .is_err());
        assert_eq!(f.sim.request_log().len(), sent);
    }
}

/// Serves `answer` for every request on a local port and counts the requests (a stand-in for Entra and Graph
/// where graphsim cannot send the hostile answer).
async fn stand_in(
    answer: impl Fn(&axum::http::Method, &str) -> axum::response::Response
        + Clone
        + Send
        + Sync
        + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let answer = answer.clone();
        let log = log.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            log.lock().expect("log").push(format!(
                "{} {} {}",
                parts.method,
                parts.uri.path(),
                String::from_utf8_lossy(&body)
            ));
            answer(&parts.method, parts.uri.path())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn json_answer(status: u16, body: serde_json::Value) -> axum::response::Response {
    axum::response::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .expect("response")
}

fn redirect_to(location: &str) -> axum::response::Response {
    axum::response::Response::builder()
        .status(307)
        .header("location", location)
        .body(axum::body::Body::empty())
        .expect("response")
}

fn user_answer() -> axum::response::Response {
    json_answer(200, json!({"id": "u1", "userPrincipalName": ALICE}))
}

/// Failed before the fix: `expires_in` of 18446744073709551615 panicked ("overflow when adding duration to
/// instant"); a negative or fractional one could not be decoded, failing every call. Now each gives a token that
/// is used and refreshed on a sane schedule (1 s to one day; 5 minutes when unreadable).
#[tokio::test]
async fn hostile_token_lifetimes_neither_panic_nor_fail() {
    for expires_in in [
        json!(u64::MAX),
        json!(0),
        json!(-5),
        json!("soon"),
        json!(3599.5),
        json!(null),
    ] {
        let lifetime = expires_in.clone();
        let (url, seen) = stand_in(move |_method, path| {
            if path.ends_with("/token") {
                json_answer(
                    200,
                    json!({"token_type": "Bearer", "access_token": "t0k3n", "expires_in": lifetime}),
                )
            } else {
                user_answer()
            }
        })
        .await;
        let graph = GraphClient::new(fast_options()).expect("client");
        let tenant = graph.tenant(&settings_at(&url, &url, SECRET));
        for _ in 0..2 {
            let user = tenant.user(ALICE).await.expect("user");
            assert_eq!(user.user_principal_name, ALICE, "{expires_in}");
        }
        let tokens = seen
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.contains("/token"))
            .count();
        assert!(
            (1..=2).contains(&tokens),
            "{expires_in}: {tokens} token requests"
        );
    }
}

/// Failed before the fix: the token endpoint's 307 was followed, and the client secret was posted to the
/// redirect's target; a Graph 307 carried the bearer token there too. Now no redirect is followed.
#[tokio::test]
async fn redirects_are_never_followed_so_the_secret_stays_home() {
    let (elsewhere, stolen) = stand_in(|_method, _path| user_answer()).await;
    let target = format!("{elsewhere}/steal");
    let (url, _) = stand_in(move |_method, _path| redirect_to(&target)).await;
    let graph = GraphClient::new(fast_options()).expect("client");
    let error = graph
        .tenant(&settings_at(&url, &url, SECRET))
        .user(ALICE)
        .await
        .expect_err("a redirected token call fails");
    assert!(!format!("{error} {error:?}").contains(SECRET));

    let target = format!("{elsewhere}/steal");
    let (graph_url, _) = stand_in(move |_method, path| {
        if path.ends_with("/token") {
            json_answer(
                200,
                json!({"token_type": "Bearer", "access_token": "t0k3n", "expires_in": 3599}),
            )
        } else {
            redirect_to(&target)
        }
    })
    .await;
    graph
        .tenant(&settings_at(&graph_url, &graph_url, SECRET))
        .user(ALICE)
        .await
        .expect_err("a redirected Graph call fails");
    assert!(
        stolen.lock().expect("log").is_empty(),
        "nothing reached the redirect's target: {:?}",
        stolen.lock().expect("log")
    );
}

/// Failed before the fix: a POST that the server applied but answered only after the client's timeout was sent
/// again until the attempts ran out (3 POSTs, then a timeout error; this stand-in, like a contact create, has no
/// 409 to stop a second copy). Now the timed-out create is looked up and found.
#[tokio::test]
async fn a_create_that_timed_out_is_looked_up_not_sent_again() {
    let created = Arc::new(Mutex::new(false));
    let posts = Arc::new(Mutex::new(0u32));
    let (state, count) = (created.clone(), posts.clone());
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (state, count) = (state.clone(), count.clone());
        async move {
            let path = request.uri().path().to_owned();
            let folder =
                json!({"id": "AQMkF1", "displayName": "All Contacts", "parentFolderId": "root"});
            if path.ends_with("/token") {
                return json_answer(
                    200,
                    json!({"token_type": "Bearer", "access_token": "t0k3n", "expires_in": 3599}),
                );
            }
            if request.method() == axum::http::Method::POST {
                *count.lock().expect("count") += 1;
                *state.lock().expect("state") = true;
                // Applied, but the answer comes after the client gave up.
                tokio::time::sleep(Duration::from_secs(2)).await;
                return json_answer(201, folder);
            }
            let exists = *state.lock().expect("state");
            let value = if exists { vec![folder] } else { Vec::new() };
            json_answer(200, json!({ "value": value }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let graph = GraphClient::new(ClientOptions {
        request_timeout: Duration::from_millis(300),
        ..fast_options()
    })
    .expect("client");
    let folder = graph
        .tenant(&settings_at(&url, &url, SECRET))
        .ensure_top_level_folder(BOB, "All Contacts")
        .await
        .expect("found after the timeout");
    assert_eq!(folder.id, "AQMkF1");
    assert_eq!(*posts.lock().expect("count"), 1, "the create was sent once");
}

/// Failed before the fix (as issue 10 found it): every `$batch` envelope applied and then answered 5xx was sent
/// again up to the attempt limit (3 here, each applied: one copy of every person per envelope), then the whole
/// call failed with the 5xx.
#[tokio::test]
async fn every_envelope_applied_then_failed_still_writes_each_contact_once() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim.set_faults(FaultConfig {
        commit_then_fail_rate: 1.0,
        path_contains: Some("$batch".into()),
        retry_after: graphsim::RetryAfter::Fractional(0.05),
        ..FaultConfig::default()
    });
    let ops: Vec<WriteOp> = (0..25)
        .map(|i| create(&format!("Person {i:02}"), &format!("sync-{i:02}")))
        .collect();
    let outcomes = f
        .tenant
        .write(ALICE, &FolderRef::Default, &ops)
        .await
        .expect("write");
    let counts = sync_id_counts(&f, ALICE);
    assert_eq!(counts.len(), 25, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Ok(Some(_)))));
    assert_eq!(f.sim.stats().batches, 2, "each envelope sent once");
}

/// The other half of the rule: a create answered 500 that Graph did not apply is looked up, not found, and then
/// sent again, so it is written exactly once.
#[tokio::test]
async fn a_create_that_failed_without_effect_is_sent_again_after_the_lookup() {
    let f = fixture().await;
    f.tenant.user(ALICE).await.expect("warm the token");
    f.sim.push_fault(ScriptedFault {
        status: 500,
        retry_after: None,
        commit: false,
        path_contains: Some("/contacts".into()),
        method: Some("POST".into()),
    });
    let outcomes = f
        .tenant
        .write(
            ALICE,
            &FolderRef::Default,
            &[create("Person 00", "sync-00")],
        )
        .await
        .expect("write");
    assert!(matches!(outcomes[0], Ok(Some(_))));
    assert_eq!(sync_id_counts(&f, ALICE).get("sync-00"), Some(&1));
    let log = f.sim.request_log();
    let posts: Vec<u16> = log
        .iter()
        .filter(|r| r.method == "POST" && r.url.contains("/contacts"))
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, vec![500, 201]);
    let lookups = log
        .iter()
        .filter(|r| r.method == "GET" && r.url.contains("singleValueExtendedProperties/Any"))
        .count();
    assert_eq!(lookups, 1, "looked up once before sending again");
}
