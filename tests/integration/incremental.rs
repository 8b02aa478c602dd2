//! Runs that start from the change feeds an earlier run kept (`--state-dir`): an unchanged mailbox costs at most
//! one Graph request per phase, and every kind of change still arrives exactly as a run that reads everything
//! would have brought it (the same estate, seeded twice, one synced with kept state and one without).

use std::collections::BTreeSet;

use graphsim::{EstateParams, SimConfig};
use producer::cli::RunArgs;
use producer::summary::RunReport;
use shared::config::Settings;

use crate::fleet::{assert_only_unreachable_failed, embedded_args, run, snapshot, total};
use crate::support::{self, Estate};

const FOLDER: &str = "All Contacts";

fn params() -> EstateParams {
    EstateParams {
        tenants: 2,
        users_per_tenant: 12,
        contacts_per_user: 6,
        overlap: 0.3,
        seed: 41,
    }
}

/// A seeded estate plus one user holding 1,100 contacts (two pages of a full read).
async fn estate() -> Estate {
    let estate = Estate::seed(SimConfig::default(), params()).await;
    let t0 = &estate.tenants[0];
    for i in 0..1_100 {
        estate.sim.add_contact(
            &t0.tenant_id,
            &t0.mirror_target_upns[0],
            None,
            serde_json::json!({
                "displayName": format!("Bulk Person {i:04}"),
                "emailAddresses": [{"address": format!("bulk.{i}@example.net")}],
            }),
        );
    }
    estate
}

/// Since the last reset: the most requests a mirrored user's mailbox received, the most any other user's
/// mailbox received (unreachable ones, which fail in both phases), and the shared mailboxes' counts.
fn requests_per_mailbox(estate: &Estate) -> (u64, u64, Vec<(String, u64)>) {
    let stats = estate.sim.stats();
    let shared: BTreeSet<String> = estate
        .tenants
        .iter()
        .map(|t| t.shared_mailbox_upn.to_lowercase())
        .collect();
    let targets: BTreeSet<String> = estate
        .tenants
        .iter()
        .flat_map(|t| t.mirror_target_upns.iter().map(|u| u.to_lowercase()))
        .collect();
    let most = |pick: &dyn Fn(&str) -> bool| {
        stats
            .mailboxes
            .iter()
            .filter(|(upn, _)| pick(upn))
            .map(|(_, m)| m.requests)
            .max()
            .unwrap_or(0)
    };
    let mirrored = most(&|upn| targets.contains(upn));
    let others = most(&|upn| !targets.contains(upn) && !shared.contains(upn));
    let central = stats
        .mailboxes
        .iter()
        .filter(|(upn, _)| shared.contains(*upn))
        .map(|(upn, m)| (upn.clone(), m.requests))
        .collect();
    (mirrored, others, central)
}

fn skipped(report: &RunReport) -> u64 {
    total(report, |c| c.mailboxes_unchanged)
}

/// The id of the first contact in `user`'s default folder (by display name) that `pick` accepts.
fn find(
    estate: &Estate,
    tenant: usize,
    user: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> String {
    let t = &estate.tenants[tenant];
    let mut contacts = estate.sim.contacts(&t.tenant_id, user, None);
    contacts.sort_by_key(|c| c["displayName"].as_str().unwrap_or_default().to_owned());
    contacts
        .iter()
        .find(|c| pick(c))
        .and_then(|c| c["id"].as_str())
        .unwrap_or_else(|| panic!("no fitting contact in {user}: {contacts:#?}"))
        .to_owned()
}

/// Ids of the contacts each user of the first tenant held before any sync (their own, not copies).
pub(crate) fn originals(estate: &Estate) -> BTreeSet<String> {
    let t = &estate.tenants[0];
    t.mirror_target_upns
        .iter()
        .flat_map(|u| estate.sim.contacts(&t.tenant_id, u, None))
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect()
}

/// The same user-side changes in an estate: an edit, a deleted copy, a new contact, a deleted original.
pub(crate) async fn change(estate: &Estate, originals: &BTreeSet<String>) {
    let t = estate.tenants[0].clone();
    let users = &t.mirror_target_upns;
    let own = |c: &serde_json::Value| c["id"].as_str().is_some_and(|id| originals.contains(id));
    let edited = find(estate, 0, &users[1], own);
    support::patch_contact(
        estate,
        &t,
        &users[1],
        &edited,
        serde_json::json!({"displayName": "Renamed By Owner", "jobTitle": "After"}),
    )
    .await;
    let copy = find(estate, 0, &users[2], |c| !own(c));
    support::delete_contact(estate, &t, &users[2], &copy).await;
    estate.sim.add_contact(
        &t.tenant_id,
        &users[3],
        None,
        serde_json::json!({"displayName": "Newly Met", "emailAddresses": [{"address": "newly.met@example.org"}]}),
    );
    let original = find(estate, 0, &users[4], |c| {
        own(c) && !c["emailAddresses"].as_array().is_none_or(|a| a.is_empty())
    });
    support::delete_contact(estate, &t, &users[4], &original).await;
}

fn with_state(dir: &std::path::Path) -> RunArgs {
    RunArgs {
        state_dir: Some(dir.to_owned()),
        ..embedded_args()
    }
}

async fn sync(estate: &Estate, settings: &Settings, args: &RunArgs) -> RunReport {
    estate.sim.reset_stats();
    let report = run(settings, args).await;
    assert_only_unreachable_failed(&report, estate);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_feeds_make_unchanged_mailboxes_cheap_and_changes_arrive_as_in_a_full_run() {
    let kept = estate().await;
    let full = estate().await;
    assert_eq!(
        snapshot(&kept, FOLDER),
        snapshot(&full, FOLDER),
        "the two estates differ"
    );
    let state = support::scratch_dir("incremental-state");
    let (kept_settings, full_settings) = (kept.settings(), full.settings());
    let (kept_own, full_own) = (originals(&kept), originals(&full));
    let kept_args = with_state(&state);
    let full_args = embedded_args();

    // First run: no feeds yet, everything is read; both estates end the same.
    sync(&kept, &kept_settings, &kept_args).await;
    sync(&full, &full_settings, &full_args).await;
    assert_eq!(snapshot(&kept, FOLDER), snapshot(&full, FOLDER));
    // (Beside them, each tenant's lease lock file and the record of the folder its copies are in.)
    let state_files = std::fs::read_dir(&state)
        .expect("state dir")
        .filter(|entry| {
            entry.as_ref().is_ok_and(|e| {
                e.path().extension().is_some_and(|x| x == "json")
                    && !e
                        .file_name()
                        .to_string_lossy()
                        .starts_with("target-folder-")
            })
        })
        .count();
    assert_eq!(state_files, 2, "one state file per tenant");

    // Nothing changed: one request on a mirrored mailbox (phase 1's change check; phase 2 trusts it), even the
    // one holding 1,100 contacts; a mailbox that cannot be reached fails with one request per phase.
    let again = sync(&kept, &kept_settings, &kept_args).await;
    let (max_user, max_other, central) = requests_per_mailbox(&kept);
    assert_eq!(kept.sim.stats().total_writes(), 0);
    assert_eq!(max_user, 1, "a mirrored mailbox took {max_user} requests");
    assert!(
        max_other <= 2,
        "an unreachable mailbox took {max_other} requests"
    );
    // The shared mailbox: the producer's folder lookup, phase 1's feed check, and each worker's own lookup of the
    // central folder it trusts (once per tenant per worker process, `worker/src/trust.rs`): a constant per tenant.
    for (upn, n) in &central {
        assert!(*n <= 4, "{upn} (central) took {n} requests");
    }
    assert!(skipped(&again) > 0, "no job reported a skip");
    sync(&full, &full_settings, &full_args).await;
    let (full_max_user, _, _) = requests_per_mailbox(&full);
    assert!(
        full_max_user > max_user,
        "reading everything cost {full_max_user} on the busiest mailbox, the kept feeds {max_user}"
    );

    // Owners edit, delete a managed copy, add a contact and delete an original: the same writes, the same end.
    change(&kept, &kept_own).await;
    change(&full, &full_own).await;
    sync(&kept, &kept_settings, &kept_args).await;
    let kept_writes = kept.sim.stats().writes;
    sync(&full, &full_settings, &full_args).await;
    let full_writes = full.sim.stats().writes;
    assert_eq!(
        kept_writes, full_writes,
        "kept feeds changed what was written"
    );
    assert!(
        kept_writes.values().sum::<u64>() > 0,
        "the changes wrote nothing"
    );
    assert_eq!(snapshot(&kept, FOLDER), snapshot(&full, FOLDER));

    // Those runs wrote a few contacts per mailbox, so each feed kept them as a fingerprint for the next check
    // instead of a request moving it past them (`feed::OwnWrites`). The same kind of user-side changes on top of
    // those writes (a copy just written deleted among them) still arrive as in a full run, and a quiet run after
    // them costs one request per mirrored mailbox: the check recognised the tool's own writes.
    change(&kept, &kept_own).await;
    change(&full, &full_own).await;
    sync(&kept, &kept_settings, &kept_args).await;
    let kept_writes = kept.sim.stats().writes;
    sync(&full, &full_settings, &full_args).await;
    assert_eq!(
        kept_writes,
        full.sim.stats().writes,
        "fingerprinted feeds changed what was written"
    );
    assert_eq!(snapshot(&kept, FOLDER), snapshot(&full, FOLDER));
    let quiet = sync(&kept, &kept_settings, &kept_args).await;
    let (max_user, _, _) = requests_per_mailbox(&kept);
    assert_eq!(kept.sim.stats().total_writes(), 0);
    assert_eq!(
        max_user, 1,
        "after the tool's own small writes a mirrored mailbox took {max_user} requests"
    );
    assert!(skipped(&quiet) > 0, "no job reported a skip");

    // Graph forgets every delta token: the next run reads everything, writes nothing, and keeps fresh feeds.
    kept.sim.invalidate_delta_tokens();
    sync(&kept, &kept_settings, &kept_args).await;
    assert_eq!(kept.sim.stats().total_writes(), 0);
    let settled = sync(&kept, &kept_settings, &kept_args).await;
    let (max_user, _, _) = requests_per_mailbox(&kept);
    assert_eq!(
        max_user, 1,
        "after a resync a mirrored mailbox took {max_user} requests"
    );
    assert_eq!(total(&settled, |c| c.created + c.updated + c.deleted), 0);
    std::fs::remove_dir_all(&state).ok();
}

/// The embedded transport, counting the phase-2 jobs the producer hands it.
struct CountingPhase2 {
    inner: producer::dispatch::Embedded,
    phase2: usize,
}

impl producer::dispatch::Dispatch for CountingPhase2 {
    async fn submit(&mut self, jobs: Vec<shared::message::Job>) -> anyhow::Result<()> {
        self.phase2 += jobs
            .iter()
            .filter(|job| job.phase() == shared::message::Phase::Phase2)
            .count();
        self.inner.submit(jobs).await
    }
    async fn next_event(
        &mut self,
        wait: std::time::Duration,
    ) -> anyhow::Result<Option<producer::dispatch::Event>> {
        self.inner.next_event(wait).await
    }
    fn mode(&self) -> &'static str {
        self.inner.mode()
    }
    fn limits(&self) -> producer::fair::Limits {
        self.inner.limits()
    }
    async fn lease(&mut self, tenant_id: &str) -> Result<(), producer::lease::LeaseError> {
        self.inner.lease(tenant_id).await
    }
}

/// Runs one sync of `settings` through [`CountingPhase2`], keeping feeds in `state`; returns the report and how
/// many phase-2 jobs went to the transport.
async fn counted_sync(settings: &Settings, state: &std::path::Path) -> (RunReport, usize) {
    let graph = shared::graph::GraphClient::new(shared::graph::ClientOptions::default())
        .expect("graph client");
    let runner = std::sync::Arc::new(worker::job::JobRunner::new(
        graph.clone(),
        std::sync::Arc::new(settings.clone()),
    ));
    let mut dispatch = CountingPhase2 {
        inner: producer::dispatch::Embedded::start(
            runner,
            4,
            worker::disposition::RetryPolicy::default(),
            None,
        ),
        phase2: 0,
    };
    let store = producer::state::StateStore::new(state);
    let request = producer::orchestrate::RunRequest {
        settings,
        only_tenants: &[],
        dry_run: false,
        idle_timeout: std::time::Duration::from_secs(60),
        state: Some(&store),
        rebuild_central: false,
        allow_mass_delete: false,
        cleanup: None,
        strict: false,
        wait_for_lease: std::time::Duration::ZERO,
    };
    let report = producer::orchestrate::run(&mut dispatch, &graph, request)
        .await
        .expect("the run completes");
    (report, dispatch.phase2)
}

/// A quiet re-run hands the transport no phase-2 job for a mailbox phase 1 found in line: the producer settles it
/// itself (`Job::in_line_report`), so on RabbitMQ neither the job nor its report crosses the broker. A changed
/// mailbox's job still goes out.
///
/// Failed before the fix: every receiving mailbox's job was sent, and its worker found it in line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_rerun_sends_no_phase2_job_for_a_mailbox_in_line() {
    let estate = estate().await;
    let settings = estate.settings();
    let state = support::scratch_dir("settled-here");
    let originals = originals(&estate);
    let (first, sent_first) = counted_sync(&settings, &state).await;
    assert_only_unreachable_failed(&first, &estate);
    assert!(sent_first > 0, "the first run sent no phase-2 job");

    let (quiet, sent_quiet) = counted_sync(&settings, &state).await;
    assert_only_unreachable_failed(&quiet, &estate);
    let skipped: u64 = quiet
        .tenants
        .iter()
        .filter_map(|t| t.phases.get(&shared::message::Phase::Phase2))
        .map(|c| c.mailboxes_unchanged)
        .sum();
    assert!(skipped > 0, "no mailbox was found in line");
    assert_eq!(
        sent_quiet as u64 + skipped,
        sent_first as u64,
        "every mailbox is either settled by the producer or sent"
    );
    assert!(
        sent_quiet < sent_first,
        "{sent_quiet} of {sent_first} phase-2 jobs were sent on a quiet run"
    );

    // A changed mailbox still gets its job, and the changes are written.
    change(&estate, &originals).await;
    let (changed, sent_changed) = counted_sync(&settings, &state).await;
    assert_only_unreachable_failed(&changed, &estate);
    assert!(
        sent_changed > sent_quiet,
        "a changed tenant sent only {sent_changed} phase-2 jobs"
    );
    assert!(
        total(&changed, |c| c.created + c.updated + c.deleted) > 0,
        "the changes wrote nothing"
    );
    std::fs::remove_dir_all(&state).ok();
}

/// The UPNs (lower-case) of the mailboxes of `tenant` that phase 2 last left holding nothing but copies phase 1
/// does without, as the producer's state keeps them (`FolderFeed::only_copies`).
fn left_holding_only_copies(
    estate: &Estate,
    tenant: usize,
    state: &std::path::Path,
) -> BTreeSet<String> {
    let t = &estate.tenants[tenant];
    let file = state.join(format!(
        "tenant-{}.json",
        producer::lease::file_safe(&t.tenant_id)
    ));
    let memory: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("state file")).expect("state json");
    let directory = estate.sim.directory();
    let upn_of = |id: &str| {
        directory
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["users"].as_array().into_iter().flatten())
            .find(|u| u["id"] == id)
            .and_then(|u| u["userPrincipalName"].as_str())
            .map(str::to_lowercase)
    };
    memory["mailboxes"]
        .as_object()
        .expect("mailbox feeds")
        .iter()
        .filter(|(_, feed)| feed["onlyCopies"] == true)
        .filter_map(|(id, _)| upn_of(id))
        .collect()
}

/// Since the last reset, the full reads (contact lists, not change checks) each mailbox received.
fn full_reads(estate: &Estate) -> std::collections::BTreeMap<String, usize> {
    let mut reads = std::collections::BTreeMap::new();
    for request in estate.sim.request_log() {
        let list = request.method == "GET"
            && request.url.contains("/contacts")
            && !request.url.contains("delta");
        if let (true, Some(mailbox)) = (list, request.mailbox) {
            *reads.entry(mailbox).or_insert(0) += 1;
        }
    }
    reads
}

/// The second mirrored user of the first tenant renames one of their own contacts; returns that user (lower-case).
async fn rename_an_original(estate: &Estate, own: &BTreeSet<String>) -> String {
    let t = estate.tenants[0].clone();
    let user = t.mirror_target_upns[1].clone();
    let id = find(estate, 0, &user, |c| {
        c["id"].as_str().is_some_and(|id| own.contains(id))
    });
    support::patch_contact(
        estate,
        &t,
        &user,
        &id,
        serde_json::json!({"displayName": "Renamed By Owner"}),
    )
    .await;
    user.to_lowercase()
}

/// Issue 13: a changed run reads a mailbox phase 2 left holding nothing but copies (and stamped originals) equal to
/// their persons, unchanged since, once (phase 2) instead of twice: phase 1 knows from its change check and the
/// kept feed that the read would add nothing (`feed::source_unread`). The run ends as one that reads everything,
/// and an own contact added to such a mailbox afterwards is read and published by the next run.
///
/// Failed before the change: every mirrored mailbox of a changed run took two full reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_run_reads_a_mailbox_left_holding_only_copies_once() {
    let kept = Estate::seed(SimConfig::default(), params()).await;
    let full = Estate::seed(SimConfig::default(), params()).await;
    let state = support::scratch_dir("only-copies-state");
    let (kept_settings, full_settings) = (kept.settings(), full.settings());
    let (kept_own, full_own) = (originals(&kept), originals(&full));
    let kept_args = with_state(&state);
    let full_args = embedded_args();
    sync(&kept, &kept_settings, &kept_args).await;
    sync(&full, &full_settings, &full_args).await;
    sync(&kept, &kept_settings, &kept_args).await;
    let only = left_holding_only_copies(&kept, 0, &state);
    assert!(
        only.len() >= 2,
        "phase 2 left no mailbox holding only copies: {only:?}"
    );

    // One owner renames an original: its person changes in every mailbox of the tenant.
    let edited = rename_an_original(&kept, &kept_own).await;
    rename_an_original(&full, &full_own).await;
    sync(&kept, &kept_settings, &kept_args).await;
    let reads = full_reads(&kept);
    let kept_writes = kept.sim.stats().writes;
    sync(&full, &full_settings, &full_args).await;
    assert_eq!(
        kept_writes,
        full.sim.stats().writes,
        "leaving mailboxes unread changed what was written"
    );
    assert!(
        kept_writes.values().sum::<u64>() > 0,
        "the rename wrote nothing"
    );
    assert_eq!(snapshot(&kept, FOLDER), snapshot(&full, FOLDER));
    let mut unread = 0;
    for upn in kept.tenants[0]
        .mirror_target_upns
        .iter()
        .map(|u| u.to_lowercase())
    {
        let expected = if only.contains(&upn) && upn != edited {
            1
        } else {
            2
        };
        unread += usize::from(expected == 1);
        assert_eq!(
            reads.get(&upn).copied().unwrap_or(0),
            expected,
            "full reads of {upn}: {reads:?}"
        );
    }
    assert!(unread > 0, "no mailbox went unread in phase 1");

    // A mailbox left unread gets a contact of its own: the next run reads it and publishes it, as a full run does.
    let quiet = only
        .iter()
        .find(|upn| **upn != edited)
        .expect("an unread mailbox")
        .clone();
    for estate in [&kept, &full] {
        let t = &estate.tenants[0];
        let user = t
            .mirror_target_upns
            .iter()
            .find(|u| u.to_lowercase() == quiet)
            .expect("the quiet user");
        estate.sim.add_contact(
            &t.tenant_id,
            user,
            None,
            serde_json::json!({"displayName": "Met Since", "emailAddresses": [{"address": "met.since@example.org"}]}),
        );
    }
    sync(&kept, &kept_settings, &kept_args).await;
    assert_eq!(
        full_reads(&kept).get(&quiet).copied(),
        Some(2),
        "the changed mailbox was not read"
    );
    sync(&full, &full_settings, &full_args).await;
    assert_eq!(snapshot(&kept, FOLDER), snapshot(&full, FOLDER));
    let t = &kept.tenants[0];
    let central = kept
        .sim
        .contacts(&t.tenant_id, &t.shared_mailbox_upn, Some(FOLDER));
    assert!(
        central.iter().any(|c| c["displayName"] == "Met Since"),
        "the new contact was not published"
    );
    std::fs::remove_dir_all(&state).ok();
}

/// An embedded run looks up each tenant's shared mailbox and central folder once: its worker takes what its producer
/// resolved moments before (`JobRunner::knows`) instead of asking Graph again before the tenant's first job, and
/// the producer's check for a lost folder is the folder's look-up (`prepare`). Three requests, one after the other,
/// at the start of every run: 0.6 s at Graph's 200 ms a request.
///
/// Failed before the change: the shared mailbox was looked up twice and the folder three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_run_looks_up_the_shared_mailbox_and_its_folder_once() {
    let estate = Estate::seed(SimConfig::default(), params()).await;
    let settings = estate.settings();
    let state = support::scratch_dir("looked-up-once");
    let args = with_state(&state);
    for run in ["first", "quiet"] {
        sync(&estate, &settings, &args).await;
        let log = estate.sim.request_log();
        for t in &estate.tenants {
            let shared = t.shared_mailbox_upn.to_lowercase();
            let lookups = log
                .iter()
                .filter(|r| {
                    let path = r.url.split('?').next().unwrap_or_default().to_lowercase();
                    r.method == "GET" && path.ends_with(&format!("/users/{shared}"))
                })
                .count();
            let folder_lookups = log
                .iter()
                .filter(|r| {
                    r.method == "GET"
                        && r.mailbox.as_deref() == Some(shared.as_str())
                        && r.url.contains("/contactFolders?")
                        && r.url.contains("filter")
                })
                .count();
            assert_eq!(
                lookups, 1,
                "{run} run: the shared mailbox of {} looked up {lookups} times",
                t.tenant_id
            );
            assert_eq!(
                folder_lookups, 1,
                "{run} run: the central folder of {} looked up {folder_lookups} times",
                t.tenant_id
            );
        }
    }
    std::fs::remove_dir_all(&state).ok();
}
