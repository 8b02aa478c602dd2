//! One job, start to finish: read, plan with the pure rules, write, and say how it went.
//!
//! This is the code every mode runs: the AMQP consumer and the embedded queue both call [`JobRunner::run`]. It
//! never touches a queue; what happens next is decided from its [`AttemptResult`] by
//! [`crate::disposition`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use shared::config::{Settings, TenantSettings};
use shared::graph::{ErrorKind, FolderRef, GraphClient, GraphError, TenantClient};
use shared::message::{
    CentralFolder, FailureReason, GraphCounts, Job, JobKind, Report, SourceFailure, SCHEMA_VERSION,
};
use shared::model::{Contact, Mailbox, WriteOp};
use shared::sync::{self, Plan, PlanContext, PlanCounts, SourceMailbox};
use tracing::{info, warn};

use crate::central_cache::CentralCache;
use crate::disposition::AttemptResult;

/// How many source mailboxes a phase-1 job reads at once (each has its own Graph budget).
const SOURCE_READ_CONCURRENCY: usize = 16;

/// Runs jobs against Graph. Cheap to share: one per process.
pub struct JobRunner {
    graph: GraphClient,
    settings: Arc<Settings>,
    central: CentralCache,
}

/// The result of one attempt: the report to publish and what the queue should make of it.
#[derive(Debug)]
pub struct Attempt {
    /// The report (its outcome is filled in by the caller once the next step is known).
    pub report: Report,
    /// How the attempt ended.
    pub result: AttemptResult,
}

/// What a successful attempt did.
#[derive(Default)]
struct Done {
    counts: PlanCounts,
    failed_writes: u64,
    source_failures: Vec<SourceFailure>,
    planned: Vec<String>,
}

impl JobRunner {
    /// A runner for the tenants in `settings`, sharing `graph` (and so its tokens and limits) with other runners.
    pub fn new(graph: GraphClient, settings: Arc<Settings>) -> Self {
        Self {
            graph,
            settings,
            central: CentralCache::default(),
        }
    }

    /// The Graph client (for stats).
    pub fn graph(&self) -> &GraphClient {
        &self.graph
    }

    /// Runs attempt number `attempt` of `job`. Never panics on bad input; every failure becomes an
    /// [`AttemptResult`].
    pub async fn run(&self, job: &Job, attempt: u32) -> Attempt {
        let started = Instant::now();
        // A client per job: its tally counts this job's requests only, however many jobs run beside it.
        let mut tally = (0, 0);
        let result = match self.settings.tenant(&job.tenant_id) {
            None => Err(AttemptResult::Permanent {
                reason: FailureReason::UnknownTenant,
                error: format!(
                    "tenant {} is not in this worker's configuration (check the worker's AUTOMATION_SYNCCONTACTS_* settings)",
                    job.tenant_id
                ),
            }),
            Some(tenant) => {
                let client = self.graph.tenant(tenant);
                let result = match &job.kind {
                    JobKind::Phase1 { central, sources } => {
                        self.phase1(tenant, &client, job, central, sources).await
                    }
                    JobKind::Phase2 { central, mailbox } => {
                        self.phase2(tenant, &client, job, central, mailbox).await
                    }
                };
                tally = client.tally();
                result
            }
        };
        let (done, result) = match result {
            Ok(done) => (done, AttemptResult::Done),
            Err(failure) => (Done::default(), failure),
        };
        let report = Report {
            schema: SCHEMA_VERSION,
            job_id: job.job_id,
            run_id: job.run_id,
            tenant_id: job.tenant_id.clone(),
            phase: job.phase(),
            mailbox: job.mailbox().clone(),
            attempt,
            outcome: shared::message::Outcome::Succeeded,
            counts: done.counts,
            failed_writes: done.failed_writes,
            source_failures: done.source_failures,
            planned: done.planned,
            graph: GraphCounts {
                requests: tally.0,
                throttled: tally.1,
            },
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            finished_at: Utc::now(),
        };
        Attempt { report, result }
    }

    async fn phase1(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: &CentralFolder,
        sources: &[Mailbox],
    ) -> Result<Done, AttemptResult> {
        let central_contacts = read_central(client, central).await?;
        let reads: Vec<(Mailbox, Result<Vec<Contact>, GraphError>)> =
            stream::iter(sources.iter().cloned())
                .map(|mailbox| async move {
                    let contacts = client.list_contacts(&mailbox.id, &FolderRef::Default).await;
                    (mailbox, contacts)
                })
                .buffer_unordered(SOURCE_READ_CONCURRENCY)
                .collect()
                .await;
        let mut source_mailboxes = Vec::with_capacity(reads.len());
        let mut source_failures = Vec::new();
        for (mailbox, read) in reads {
            match read {
                Ok(contacts) => source_mailboxes.push(SourceMailbox { mailbox, contacts }),
                Err(error) => {
                    match classify(&error, &format!("reading contacts of {}", mailbox.upn)) {
                        AttemptResult::Permanent { reason, error } => {
                            warn!(mailbox = %mailbox.upn, %reason, %error, "source mailbox skipped");
                            source_failures.push(SourceFailure {
                                mailbox,
                                reason,
                                error,
                            });
                        }
                        // A source that cannot be read now would be missing from the merge: retry the whole job.
                        transient => return Err(transient),
                    }
                }
            }
        }
        source_mailboxes.sort_by(|a, b| a.mailbox.id.cmp(&b.mailbox.id));
        let ctx = PlanContext {
            tenant_id: job.tenant_id.clone(),
            owner: central.mailbox.clone(),
            options: tenant.mirror.clone(),
            now: Utc::now(),
        };
        let plan = sync::plan_central(&ctx, &source_mailboxes, &central_contacts);
        let folder = match &central.folder_id {
            Some(id) => FolderRef::Id(id.clone()),
            None if job.dry_run => FolderRef::Default,
            None => {
                return Err(AttemptResult::Permanent {
                    reason: FailureReason::MalformedJob,
                    error: "phase-1 job without a central folder id outside a dry run".into(),
                })
            }
        };
        let mut done = self
            .apply(client, job, &central.mailbox, &folder, &plan)
            .await?;
        done.source_failures = source_failures;
        Ok(done)
    }

    async fn phase2(
        &self,
        tenant: &TenantSettings,
        client: &TenantClient,
        job: &Job,
        central: &CentralFolder,
        mailbox: &Mailbox,
    ) -> Result<Done, AttemptResult> {
        let central_contacts = self
            .central
            .get_or_load(&job.tenant_id, job.run_id, central, || {
                read_central(client, central)
            })
            .await?;
        let target = client
            .list_contacts(&mailbox.id, &FolderRef::Default)
            .await
            .map_err(|e| classify(&e, &format!("reading contacts of {}", mailbox.upn)))?;
        let ctx = PlanContext {
            tenant_id: job.tenant_id.clone(),
            owner: mailbox.clone(),
            options: tenant.mirror.clone(),
            now: Utc::now(),
        };
        let plan = sync::plan_distribution(&ctx, &central_contacts, mailbox, &target).map_err(
            |refusal| AttemptResult::Permanent {
                reason: FailureReason::DeletionCapExceeded,
                error: refusal.to_string(),
            },
        )?;
        self.apply(client, job, mailbox, &FolderRef::Default, &plan)
            .await
    }

    /// Writes the plan (unless the job is a dry run) and counts what happened.
    async fn apply(
        &self,
        client: &TenantClient,
        job: &Job,
        mailbox: &Mailbox,
        folder: &FolderRef,
        plan: &Plan,
    ) -> Result<Done, AttemptResult> {
        let counts = plan.counts();
        if job.dry_run {
            let planned = plan.items.iter().map(|item| item.to_string()).collect();
            return Ok(Done {
                counts,
                planned,
                ..Done::default()
            });
        }
        let ops: Vec<WriteOp> = plan.writes().cloned().collect();
        if ops.is_empty() {
            return Ok(Done {
                counts,
                ..Done::default()
            });
        }
        let outcomes = client
            .write(&mailbox.id, folder, &ops)
            .await
            .map_err(|e| classify(&e, &format!("writing to {}", mailbox.upn)))?;
        let mut failed_writes = 0u64;
        let mut retry_wait: Option<Duration> = None;
        let mut first_transient = None;
        for outcome in &outcomes {
            if let Err(error) = outcome {
                match classify(error, &format!("writing to {}", mailbox.upn)) {
                    AttemptResult::Transient { wait, error } => {
                        retry_wait = Some(retry_wait.map_or(wait, |w| w.max(wait)));
                        first_transient.get_or_insert(error);
                    }
                    _ => {
                        warn!(mailbox = %mailbox.upn, %error, "write refused");
                        failed_writes += 1;
                    }
                }
            }
        }
        if let (Some(wait), Some(error)) = (retry_wait, first_transient) {
            // Re-running the job is safe: sync ids are deterministic and matched first, so what was written is
            // found, not written again.
            return Err(AttemptResult::Transient { wait, error });
        }
        info!(mailbox = %mailbox.upn, created = counts.created, updated = counts.updated,
              deleted = counts.deleted, failed = failed_writes, "applied");
        Ok(Done {
            counts,
            failed_writes,
            ..Done::default()
        })
    }
}

async fn read_central(
    client: &TenantClient,
    central: &CentralFolder,
) -> Result<Vec<Contact>, AttemptResult> {
    match &central.folder_id {
        // Dry run before the folder exists: the central folder is empty by definition.
        None => Ok(Vec::new()),
        Some(id) => client
            .list_contacts(&central.mailbox.id, &FolderRef::Id(id.clone()))
            .await
            .map_err(|e| {
                classify(
                    &e,
                    &format!("reading the central folder of {}", central.mailbox.upn),
                )
            }),
    }
}

/// Maps a Graph error to retry-or-not, keeping the error's text and Graph's requested wait.
pub fn classify(error: &GraphError, doing: &str) -> AttemptResult {
    let text = format!("{doing}: {error}");
    let permanent = |reason| AttemptResult::Permanent {
        reason,
        error: text.clone(),
    };
    match error.kind() {
        ErrorKind::MailboxNotEnabled => permanent(FailureReason::NoMailbox),
        ErrorKind::AccessDenied => permanent(FailureReason::AccessDenied),
        ErrorKind::Auth(_) => permanent(FailureReason::Authentication),
        _ if error.is_transient() => AttemptResult::Transient {
            wait: error.retry_after().unwrap_or(Duration::ZERO),
            error: text,
        },
        _ => permanent(FailureReason::GraphRejected),
    }
}
