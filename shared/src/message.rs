//! The messages the fleet exchanges: jobs (producer -> workers) and reports (workers -> producer).
//!
//! Both are versioned JSON. A job never carries a secret: workers look the tenant up in their own configuration.
//! Job ids are deterministic (UUID v5 of tenant, mailbox, phase and run), so a job published twice is the same job.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::TargetFolder;
use crate::feed::{self, Cursors};
use crate::model::Mailbox;
use crate::sync::{CleanupSource, PlanCounts};

/// The version of the job and report schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Namespace for deterministic job ids.
const JOB_ID_NAMESPACE: Uuid = Uuid::from_u128(0x3d0c_6f1e_2a4b_4c8d_9e0f_1a2b_3c4d_5e6f);

/// The two phases of a tenant's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Users' contacts -> the central folder (one merge job per tenant).
    Phase1,
    /// The central folder -> every user's contacts (one job per mailbox).
    Phase2,
}

impl Phase {
    /// The routing key of the phase's job queue.
    pub fn routing_key(self) -> &'static str {
        match self {
            Phase::Phase1 => "sync.phase1",
            Phase::Phase2 => "sync.phase2",
        }
    }

    /// Both phases, in run order.
    pub const ALL: [Phase; 2] = [Phase::Phase1, Phase::Phase2];
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Phase1 => "phase1",
            Phase::Phase2 => "phase2",
        })
    }
}

/// Which of a phase's job queues a job travels in (issue 13, fair tenants across runs).
///
/// Each phase has [`Lane::COUNT`] job queues, consumed in turn by every worker process. A run on RabbitMQ holds a
/// lane no other run holds (or, with every lane held, takes the one with the fewest jobs waiting), so a run started
/// while another run's thousands of jobs wait does not queue behind them: RabbitMQ 3.10's quorum queues are first
/// in, first out and have no priorities, and a worker takes the next job of every non-empty lane in turn. Lane 0 is the phase's queue of
/// earlier releases (same name and routing key), so a job without a lane, from an older producer, still runs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct Lane(u8);

impl Lane {
    /// The job queues per phase. Few, because each is a quorum queue (a Raft group on every broker node): enough
    /// that a run started beside one or two large runs finds a lane of its own.
    pub const COUNT: u8 = 4;

    /// Lane 0: the phase's queue of earlier releases.
    pub const FIRST: Lane = Lane(0);

    /// Lane `number`, if there is one.
    pub fn new(number: u8) -> Option<Self> {
        (number < Self::COUNT).then_some(Self(number))
    }

    /// Every lane, in order.
    pub fn all() -> impl Iterator<Item = Lane> {
        (0..Self::COUNT).map(Lane)
    }

    /// Every job queue: each phase's lanes, phase 1 first.
    pub fn of_every_phase() -> impl Iterator<Item = (Phase, Lane)> {
        Phase::ALL
            .into_iter()
            .flat_map(|phase| Lane::all().map(move |lane| (phase, lane)))
    }

    /// The lane's number, from 0.
    pub fn number(self) -> u8 {
        self.0
    }

    /// The routing key of `phase`'s queue in this lane: [`Phase::routing_key`] for lane 0, with `.lane<n>` after it
    /// for the others. A retried job keeps its routing key, so it comes back to its own lane.
    pub fn routing_key(self, phase: Phase) -> String {
        match self.0 {
            0 => phase.routing_key().to_owned(),
            n => format!("{}.lane{n}", phase.routing_key()),
        }
    }

    /// The phase and lane a routing key made by [`Lane::routing_key`] names; `None` for any other key.
    pub fn of_routing_key(key: &str) -> Option<(Phase, Lane)> {
        Phase::ALL.into_iter().find_map(|phase| {
            let rest = key.strip_prefix(phase.routing_key())?;
            if rest.is_empty() {
                return Some((phase, Lane::FIRST));
            }
            let number: u8 = rest.strip_prefix(".lane")?.parse().ok()?;
            Lane::new(number)
                .filter(|lane| lane.0 != 0 && rest == format!(".lane{number}"))
                .map(|lane| (phase, lane))
        })
    }

    /// Whether this is lane 0 (left out of a job's JSON, as in messages of earlier releases).
    pub fn is_first(&self) -> bool {
        self.0 == 0
    }
}

impl TryFrom<u8> for Lane {
    type Error = String;

    fn try_from(number: u8) -> Result<Self, Self::Error> {
        Lane::new(number).ok_or_else(|| {
            format!(
                "lane {number} does not exist: lanes are 0 to {}",
                Lane::COUNT - 1
            )
        })
    }
}

impl From<Lane> for u8 {
    fn from(lane: Lane) -> Self {
        lane.0
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lane {}", self.0)
    }
}

/// Where the central folder lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CentralFolder {
    /// The shared mailbox.
    pub mailbox: Mailbox,
    /// The folder's Graph id; `None` only in a dry run where the folder does not exist yet.
    pub folder_id: Option<String>,
}

/// A receiving mailbox's folder for managed copies, as a job names it (the configuration's `TargetFolder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FolderChoice {
    /// The default Contacts folder.
    DefaultContacts,
    /// A top-level contact folder of this name.
    Named(String),
}

impl From<&TargetFolder> for FolderChoice {
    fn from(folder: &TargetFolder) -> Self {
        match folder {
            TargetFolder::DefaultContacts => FolderChoice::DefaultContacts,
            TargetFolder::Named(name) => FolderChoice::Named(name.as_str().to_owned()),
        }
    }
}

impl fmt::Display for FolderChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FolderChoice::DefaultContacts => f.write_str("the default Contacts folder"),
            FolderChoice::Named(name) => write!(f, "the folder {name:?}"),
        }
    }
}

/// What a job does. Tagged by `phase` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum JobKind {
    /// Phase 1: read every source mailbox and the central folder, then write the net changes to the central folder.
    /// One per tenant, so the shared mailbox has exactly one writer.
    Phase1 {
        /// The central folder.
        central: CentralFolder,
        /// The users whose contacts are published.
        sources: Vec<Mailbox>,
    },
    /// Phase 2: bring one receiving mailbox in line with its sources: the central folder (the mirror) and/or the
    /// tenant's directory (which the worker's own configuration enables; it is read there, never carried here).
    Phase2 {
        /// The central folder; `None` when the tenant's mirror is off (a directory-only tenant has no shared
        /// mailbox). Absent in JSON means `None`; messages of older producers always carry it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        central: Option<CentralFolder>,
        /// The user mailbox to write.
        mailbox: Mailbox,
    },
}

/// One unit of work for a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// Deterministic id: UUID v5 of tenant, mailbox, phase and run.
    pub job_id: Uuid,
    /// The run this job belongs to.
    pub run_id: Uuid,
    /// The tenant, as configured (`TenantId`).
    pub tenant_id: String,
    /// Plan and report, but write nothing.
    pub dry_run: bool,
    /// When the producer created the job.
    pub enqueued_at: DateTime<Utc>,
    /// What the producer kept of the job's folders from earlier runs (empty: read everything).
    #[serde(default, skip_serializing_if = "Cursors::is_empty")]
    pub cursors: Cursors,
    /// The queue this run reads its reports from (a run's own queue, so two runs on one broker never take each
    /// other's reports); `None`, as in messages from older producers, means the shared report queue. A worker
    /// only honours a name inside its own queue prefix (see [`crate::mq::Topology::report_queue_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_queue: Option<String>,
    /// Phase 1 only: the central folder was lost and is being restored from the users' contacts (`run
    /// --rebuild-central`), so stamped copies in users' mailboxes are sources to publish, never removals.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rebuild_central: bool,
    /// `contactmirror-producer cleanup`: instead of syncing, remove this source's managed copies (phase 2: from the
    /// mailbox; phase 1: from the central folder) and take the tool's stamp off owners' contacts. No deletion cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<CleanupSource>,
    /// Phase 2: the folder the tenant's managed copies were last brought into, when the configured `TargetFolder`
    /// is another: its managed copies move (created in the new place, then deleted from this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_from: Option<FolderChoice>,
    /// The deletion cap is lifted for this run (`run --allow-mass-delete`, or `AllowMassDelete` in the
    /// configuration). The refusal of an empty source list stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_mass_delete: bool,
    /// Phases overlap (issue 13): a phase-1 job tells the tenant's phase-2 jobs its plan and each confirmed
    /// central create on its board (memory in one process, a RabbitMQ stream in a fleet), and a phase-2 job sent
    /// before phase 1 ended sends those persons' copies as they come, then settles against the folder phase 1 left
    /// (`sync::overlap`). A worker from before fleet boards ignores it (upgrade workers before the producer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overlapped: bool,
    /// The job queue of its phase it travels in ([`Lane`]); the producer picks it per tenant. Absent in JSON
    /// means lane 0.
    #[serde(default, skip_serializing_if = "Lane::is_first")]
    pub lane: Lane,
    /// What to do.
    #[serde(flatten)]
    pub kind: JobKind,
}

/// What decides whether a phase-2 job may skip its mailbox ([`Job::phase2_standing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase2Standing<'a> {
    /// The kept feeds follow the default Contacts folder, which phase 1 checks, or, without the mirror, the target
    /// folder itself, which the job checks. A mirror tenant writing into another folder has no feed for it, and a
    /// pending move reads both folders: the mailbox is read in full.
    pub feeds_apply: bool,
    /// What the mailbox must have been brought in line with to be skipped: the central generation and/or the
    /// directory's content, as the producer found them in this run (none with `FromTenants`: never skipped).
    pub in_line_before: Option<feed::Generation>,
    /// Where the managed copies move from (a changed `TargetFolder`).
    pub moving: Option<&'a FolderChoice>,
}

impl Job {
    /// The one-time operation this job does for its own run, if any, named as the operator asked for it. Replayed
    /// after later runs (`dlq requeue`), it would act on a tenant that moved on: a cleanup's job removes copies and
    /// central persons those runs brought back, a rebuild publishes persons deleted since. (A lifted deletion cap,
    /// `allow_mass_delete`, is dropped from a replayed job instead: the job itself is an ordinary one.)
    pub fn run_confirmation(&self) -> Option<&'static str> {
        if self.cleanup.is_some() {
            Some("cleanup")
        } else if self.rebuild_central {
            Some("run --rebuild-central")
        } else {
            None
        }
    }

    /// Builds a job with its deterministic id.
    pub fn new(run_id: Uuid, tenant_id: &str, dry_run: bool, kind: JobKind) -> Self {
        let mut job = Job {
            schema: SCHEMA_VERSION,
            job_id: Uuid::nil(),
            run_id,
            tenant_id: tenant_id.to_owned(),
            dry_run,
            enqueued_at: Utc::now(),
            cursors: Cursors::default(),
            report_queue: None,
            rebuild_central: false,
            cleanup: None,
            move_from: None,
            allow_mass_delete: false,
            overlapped: false,
            lane: Lane::FIRST,
            kind,
        };
        let key = format!(
            "{}|{}|{}|{}",
            tenant_id.to_ascii_lowercase(),
            job.mailbox().id,
            job.phase(),
            run_id
        );
        job.job_id = Uuid::new_v5(&JOB_ID_NAMESPACE, key.as_bytes());
        job
    }

    /// The job's phase.
    pub fn phase(&self) -> Phase {
        match self.kind {
            JobKind::Phase1 { .. } => Phase::Phase1,
            JobKind::Phase2 { .. } => Phase::Phase2,
        }
    }

    /// The routing key of the job queue it travels in: its phase's, in its lane.
    pub fn routing_key(&self) -> String {
        self.lane.routing_key(self.phase())
    }

    /// The mailbox the job writes: the shared mailbox in phase 1, the user in phase 2.
    pub fn mailbox(&self) -> &Mailbox {
        match &self.kind {
            JobKind::Phase1 { central, .. } => &central.mailbox,
            JobKind::Phase2 { mailbox, .. } => mailbox,
        }
    }

    /// Whether this job's phases may overlap (`Job::overlapped`), whatever the flag says: the plain mirror into
    /// the default Contacts folder of a real sync. The directory, photos, a `TargetFolder`, a move, a rebuild and
    /// a cleanup have steps of their own around the plan. The one rule the producer (marking a tenant's phase-1
    /// job, with `moving`: whether its phase-2 jobs move copies) and the worker (before overlapping) apply.
    pub fn may_overlap(&self, tenant: &crate::config::TenantSettings, moving: bool) -> bool {
        !self.dry_run
            && self.cleanup.is_none()
            && self.move_from.is_none()
            && !moving
            && !self.rebuild_central
            && tenant.distribution.mirror_enabled
            && !tenant.photos
            && !tenant.distribution.receives_directory()
            && FolderChoice::from(&tenant.distribution.target_folder)
                == FolderChoice::DefaultContacts
    }

    /// What decides whether this phase-2 job may skip its mailbox, from the job and the tenant's configuration:
    /// whether the mirror is a source (`mirror`), the directory too (`receives_directory`), and the folder it writes
    /// (`target`). The one place both the producer and the worker take it from.
    pub fn phase2_standing(
        &self,
        mirror: bool,
        receives_directory: bool,
        target: &FolderChoice,
    ) -> Phase2Standing<'_> {
        let moving = self.move_from.as_ref().filter(|from| *from != target);
        let in_line_before = feed::phase2_sources(
            mirror,
            self.cursors.central_generation,
            receives_directory,
            self.cursors.directory_generation,
        );
        Phase2Standing {
            feeds_apply: self.cursors.tracked
                && (*target == FolderChoice::DefaultContacts || !mirror)
                && moving.is_none(),
            in_line_before,
            moving,
        }
    }

    /// The report of a mirror tenant's phase-2 job whose mailbox phase 1 of the run found in line, decided from the
    /// job alone: such a mailbox needs no read, no plan and no request, so whoever holds the job can settle it
    /// (the producer, before sending it; a worker, before its trust check). `None`: the job must run.
    pub fn in_line_report(
        &self,
        receives_directory: bool,
        target: &FolderChoice,
    ) -> Option<Report> {
        let (
            JobKind::Phase2 {
                central: Some(_),
                mailbox,
            },
            None,
        ) = (&self.kind, self.cleanup)
        else {
            return None;
        };
        let standing = self.phase2_standing(true, receives_directory, target);
        let prior = self
            .cursors
            .mailboxes
            .get(&mailbox.id)
            .filter(|_| standing.feeds_apply)?;
        let cursors = feed::phase2_skipped(&mailbox.id, standing.in_line_before, prior)?;
        Some(Report {
            cursors,
            skipped: true,
            ..Report::of(self, 1, Outcome::Succeeded)
        })
    }

    /// The report of a phase-2 job whose mailbox this run's phase 1 could not read for a reason the mailbox
    /// itself has (`failure`, from phase 1's report or its plan's news; see
    /// [`FailureReason::bars_the_mailbox`]): failed with phase 1's reason and error, without a request, as the job
    /// would fail on its first read. `None`: the job must run (another mailbox, another reason, a cleanup).
    pub fn unreadable_report(&self, failure: &SourceFailure) -> Option<Report> {
        let (JobKind::Phase2 { mailbox, .. }, None) = (&self.kind, self.cleanup) else {
            return None;
        };
        if mailbox.id != failure.mailbox.id || !failure.reason.bars_the_mailbox() {
            return None;
        }
        Some(Report::of(
            self,
            1,
            Outcome::Failed {
                reason: failure.reason,
                error: failure.error.clone(),
            },
        ))
    }

    /// The central folder: always in phase 1; in phase 2 only when the mirror is a source of the mailbox.
    pub fn central(&self) -> Option<&CentralFolder> {
        match &self.kind {
            JobKind::Phase1 { central, .. } => Some(central),
            JobKind::Phase2 { central, .. } => central.as_ref(),
        }
    }

    /// Serialises the job for the wire.
    pub fn to_json(&self) -> Vec<u8> {
        // A Job holds only strings, numbers and timestamps: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a job from the wire, refusing other schema versions.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        let job: Job = serde_json::from_slice(bytes).map_err(|e| MessageError::Malformed {
            what: "job",
            detail: e.to_string(),
        })?;
        if job.schema != SCHEMA_VERSION {
            return Err(MessageError::UnsupportedSchema {
                what: "job",
                found: job.schema,
            });
        }
        Ok(job)
    }
}

/// A message that could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// Not valid JSON for the expected shape.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// "job" or "report".
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// A schema version this build does not know.
    #[error("unsupported {what} schema version {found} (this build reads {SCHEMA_VERSION})")]
    UnsupportedSchema {
        /// "job" or "report".
        what: &'static str,
        /// The version found.
        found: u32,
    },
}

/// Why a job failed for good (it is dead-lettered with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The user has no Exchange Online mailbox (Graph 404 MailboxNotEnabledForRESTAPI).
    NoMailbox,
    /// Graph refused access: application access policy, or admin consent missing.
    AccessDenied,
    /// The tenant's credentials were rejected (client id, secret or tenant id).
    Authentication,
    /// The job names a tenant this worker has no configuration for.
    UnknownTenant,
    /// The message could not be parsed.
    MalformedJob,
    /// Transient failures went on past the retry budget.
    AttemptsExhausted,
    /// The plan would delete more than the safety cap allows.
    DeletionCapExceeded,
    /// Any other error Graph called permanent.
    GraphRejected,
    /// The job was lost: no report arrived (crash budget spent, or the run timed out).
    NoReport,
    /// Graph asked for a wait longer than the retry queues' longest level: the mailbox is failed, not waited for.
    ThrottledTooLong,
    /// The job names a central mailbox or folder other than the worker's own configuration does (forged or stale).
    UntrustedJob,
    /// An overlapped phase-2 job whose tenant's phase 1 failed: as in an ordered run, the mailbox is left as it
    /// was (the copies it had sent early were deleted).
    Phase1Failed,
}

impl FailureReason {
    /// The reason as it appears in headers and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoMailbox => "no_mailbox",
            FailureReason::AccessDenied => "access_denied",
            FailureReason::Authentication => "authentication",
            FailureReason::UnknownTenant => "unknown_tenant",
            FailureReason::MalformedJob => "malformed_job",
            FailureReason::AttemptsExhausted => "attempts_exhausted",
            FailureReason::DeletionCapExceeded => "deletion_cap_exceeded",
            FailureReason::GraphRejected => "graph_rejected",
            FailureReason::NoReport => "no_report",
            FailureReason::ThrottledTooLong => "throttled_too_long",
            FailureReason::UntrustedJob => "untrusted_job",
            FailureReason::Phase1Failed => "phase1_failed",
        }
    }
}

impl FailureReason {
    /// Whether this reason is the mailbox's own, whatever the job: it has no Exchange mailbox, or Graph refuses
    /// the app access to it. A mailbox phase 1 could not read for such a reason fails its phase-2 job the same
    /// way in the same run, so the producer settles that job without sending it ([`Job::unreadable_report`]).
    pub fn bars_the_mailbox(self) -> bool {
        matches!(self, FailureReason::NoMailbox | FailureReason::AccessDenied)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Done; the mailbox is in line (possibly with some item-level failures counted in `counts.failed`).
    Succeeded,
    /// A transient failure; the job was scheduled again.
    Retrying {
        /// Seconds until the next attempt.
        after_secs: u64,
        /// What went wrong.
        error: String,
    },
    /// A permanent failure; the job was dead-lettered.
    Failed {
        /// The category.
        reason: FailureReason,
        /// What went wrong, for the operator.
        error: String,
    },
}

impl Outcome {
    /// Whether this outcome ends the job (no further report will come).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Retrying { .. })
    }
}

/// Per-mailbox result inside a phase-1 report: a source mailbox that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFailure {
    /// The mailbox.
    pub mailbox: Mailbox,
    /// The category.
    pub reason: FailureReason,
    /// What went wrong.
    pub error: String,
}

/// What one job did with photos (issue 14).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoReport {
    /// Photos put on copies.
    #[serde(default)]
    pub sent: u64,
    /// Photos removed from copies (gone at the source).
    #[serde(default)]
    pub removed: u64,
    /// Photos not sent, each with why (over Graph's 4 MB request limit), naming the person.
    #[serde(default)]
    pub skipped: Vec<String>,
}

impl PhotoReport {
    /// Nothing done, nothing skipped.
    pub fn is_empty(&self) -> bool {
        self.sent == 0 && self.removed == 0 && self.skipped.is_empty()
    }
}

/// Counts of Graph traffic caused by one job attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphCounts {
    /// HTTP requests sent (a `$batch` counts its items).
    pub requests: u64,
    /// 429 answers received.
    pub throttled: u64,
}

/// What a job attempt did, published to the report queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// The job.
    pub job_id: Uuid,
    /// The run.
    pub run_id: Uuid,
    /// The tenant.
    pub tenant_id: String,
    /// The phase.
    pub phase: Phase,
    /// The mailbox written.
    pub mailbox: Mailbox,
    /// Attempt number, starting at 1.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// What the plan did (or, in a dry run, would do).
    pub counts: PlanCounts,
    /// Planned writes that Graph refused (counted apart from `counts`).
    #[serde(default)]
    pub failed_writes: u64,
    /// Phase 1: source mailboxes that could not be read.
    #[serde(default)]
    pub source_failures: Vec<SourceFailure>,
    /// In a dry run, the whole plan as human-readable lines.
    #[serde(default)]
    pub planned: Vec<String>,
    /// Graph traffic of this attempt.
    pub graph: GraphCounts,
    /// The folders' feeds after a successful attempt, for the producer to keep (empty in a dry run).
    #[serde(default, skip_serializing_if = "Cursors::is_empty")]
    pub cursors: Cursors,
    /// The attempt wrote nothing because it ran dry: its job said so, or the worker's own configuration did (a
    /// worker not restarted since its tenant was switched on). The producer then keeps nothing of it as done.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The feeds showed nothing changed since the last run, so nothing was read or planned.
    #[serde(default)]
    pub skipped: bool,
    /// Photos written to the mailbox's copies (`Photos` on), and those not sent with why.
    #[serde(default, skip_serializing_if = "PhotoReport::is_empty")]
    pub photos: PhotoReport,
    /// Wall time of the attempt.
    pub duration_ms: u64,
    /// When the attempt finished.
    pub finished_at: DateTime<Utc>,
}

impl Report {
    /// The report of `job`'s attempt `attempt` that ended with `outcome`, with nothing counted yet: the one place
    /// a report takes its job's identity (ids, tenant, phase, mailbox).
    pub fn of(job: &Job, attempt: u32, outcome: Outcome) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            job_id: job.job_id,
            run_id: job.run_id,
            tenant_id: job.tenant_id.clone(),
            phase: job.phase(),
            mailbox: job.mailbox().clone(),
            attempt,
            outcome,
            counts: PlanCounts::default(),
            failed_writes: 0,
            source_failures: Vec::new(),
            planned: Vec::new(),
            graph: GraphCounts::default(),
            cursors: Cursors::default(),
            dry_run: job.dry_run,
            skipped: false,
            photos: PhotoReport::default(),
            duration_ms: 0,
            finished_at: Utc::now(),
        }
    }

    /// Serialises the report for the wire.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a report from the wire.
    pub fn from_json(bytes: &[u8]) -> Result<Self, MessageError> {
        let report: Report =
            serde_json::from_slice(bytes).map_err(|e| MessageError::Malformed {
                what: "report",
                detail: e.to_string(),
            })?;
        if report.schema != SCHEMA_VERSION {
            return Err(MessageError::UnsupportedSchema {
                what: "report",
                found: report.schema,
            });
        }
        Ok(report)
    }

    /// The routing key on the report exchange: `report.<phase>.<outcome>`.
    pub fn routing_key(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::Succeeded => "ok",
            Outcome::Retrying { .. } => "retry",
            Outcome::Failed { .. } => "failed",
        };
        format!("report.{}.{}", self.phase, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(id: &str) -> Mailbox {
        Mailbox {
            id: id.into(),
            upn: format!("{id}@contoso.com"),
        }
    }

    fn phase2_job(run: Uuid) -> Job {
        Job::new(
            run,
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: Some(CentralFolder {
                    mailbox: mailbox("shared"),
                    folder_id: Some("AAMk-folder".into()),
                }),
                mailbox: mailbox("alice"),
            },
        )
    }

    /// Every condition of the rule, each on its own: only a tracked mirror job into the default folder, no move,
    /// no cleanup, whose mailbox is in line with this run's generation (and directory) is settled without a request.
    #[test]
    fn only_a_job_whose_mailbox_phase1_found_in_line_is_settled_without_a_request() {
        use crate::feed::{DeltaLink, FolderFeed, Generation};
        let g = Generation::fresh();
        let d = Generation::of_content(b"directory");
        let default = FolderChoice::DefaultContacts;
        let in_line = |in_line_with| {
            let mut job = phase2_job(Uuid::now_v7());
            job.cursors = Cursors {
                tracked: true,
                central_generation: Some(g),
                directory_generation: Some(d),
                mailboxes: [(
                    "alice".to_owned(),
                    FolderFeed::at(DeltaLink::new("https://graph.example/a"), in_line_with),
                )]
                .into(),
                ..Cursors::default()
            };
            job
        };
        let job = in_line(Some(g));
        let report = job.in_line_report(false, &default).expect("settled");
        assert!(report.skipped);
        assert_eq!(report.outcome, Outcome::Succeeded);
        assert_eq!((report.job_id, report.attempt), (job.job_id, 1));
        assert_eq!(report.cursors.mailboxes["alice"].in_line_with, Some(g));
        assert_eq!(report.graph.requests, 0);
        // In line with the directory too, when the mailbox receives it.
        let with_directory = Generation::combined(Some(g), d);
        assert!(in_line(Some(with_directory))
            .in_line_report(true, &default)
            .is_some());
        assert!(
            job.in_line_report(true, &default).is_none(),
            "the directory part is missing"
        );
        // Each condition alone turns it off.
        assert!(in_line(None).in_line_report(false, &default).is_none());
        assert!(in_line(Some(Generation::fresh()))
            .in_line_report(false, &default)
            .is_none());
        assert!(
            job.in_line_report(false, &FolderChoice::Named("Phones".into()))
                .is_none(),
            "another target folder"
        );
        let mut moving = job.clone();
        moving.move_from = Some(FolderChoice::Named("Old".into()));
        assert!(moving.in_line_report(false, &default).is_none());
        let mut cleanup = job.clone();
        cleanup.cleanup = Some(CleanupSource::All);
        assert!(cleanup.in_line_report(false, &default).is_none());
        let mut untracked = job.clone();
        untracked.cursors.tracked = false;
        assert!(untracked.in_line_report(false, &default).is_none());
        let mut no_mirror = job.clone();
        if let JobKind::Phase2 { central, .. } = &mut no_mirror.kind {
            *central = None;
        }
        assert!(no_mirror.in_line_report(false, &default).is_none());
    }

    #[test]
    fn job_round_trips_and_ids_are_deterministic() {
        let run = Uuid::now_v7();
        let job = phase2_job(run);
        let parsed = Job::from_json(&job.to_json()).expect("parse");
        assert_eq!(parsed, job);
        assert_eq!(phase2_job(run).job_id, job.job_id);
        assert_ne!(phase2_job(Uuid::now_v7()).job_id, job.job_id);
        let text = String::from_utf8(job.to_json()).expect("utf8");
        assert!(text.contains("\"phase\":\"phase2\""), "{text}");
    }

    #[test]
    fn jobs_of_older_producers_still_parse() {
        let job = phase2_job(Uuid::now_v7());
        let mut value = serde_json::to_value(&job).expect("value");
        let fields = value.as_object_mut().expect("object");
        assert!(!fields.contains_key("report_queue") && !fields.contains_key("rebuild_central"));
        assert!(!["cleanup", "move_from", "allow_mass_delete"]
            .iter()
            .any(|key| fields.contains_key(*key)));
        fields.remove("report_queue");
        let parsed = Job::from_json(&serde_json::to_vec(&value).expect("bytes")).expect("parse");
        assert_eq!(parsed.report_queue, None);
        assert!(!parsed.rebuild_central);
        let mut routed = job.clone();
        routed.report_queue = Some("cm.reports.x".into());
        routed.rebuild_central = true;
        assert_eq!(Job::from_json(&routed.to_json()).expect("parse"), routed);
        assert!(
            parsed.cleanup.is_none() && parsed.move_from.is_none() && !parsed.allow_mass_delete
        );
        routed.cleanup = Some(CleanupSource::Directory);
        routed.move_from = Some(FolderChoice::Named("Company Directory".into()));
        routed.allow_mass_delete = true;
        assert_eq!(Job::from_json(&routed.to_json()).expect("parse"), routed);
    }

    /// A lane's routing key names its phase and lane and nothing else; lane 0 keeps the phase's key of earlier
    /// releases, and a job's lane travels in its JSON (absent: lane 0, as from an older producer).
    #[test]
    fn lanes_route_by_phase_and_read_back() {
        for phase in Phase::ALL {
            assert_eq!(Lane::FIRST.routing_key(phase), phase.routing_key());
            for lane in Lane::all() {
                assert_eq!(
                    Lane::of_routing_key(&lane.routing_key(phase)),
                    Some((phase, lane))
                );
            }
        }
        assert_eq!(Lane::new(Lane::COUNT), None);
        for key in [
            "sync.phase2.lane0",
            "sync.phase2.lane9",
            "sync.phase2.lane01",
            "sync.phase2.lane",
            "sync.phase3",
            "sync.phase1x",
            "",
        ] {
            assert_eq!(Lane::of_routing_key(key), None, "{key}");
        }
        let mut job = phase2_job(Uuid::now_v7());
        let value = serde_json::to_value(&job).expect("json");
        assert!(value.get("lane").is_none(), "lane 0 is left out");
        job.lane = Lane::new(2).expect("lane 2");
        assert_eq!(job.routing_key(), "sync.phase2.lane2");
        assert_eq!(Job::from_json(&job.to_json()).expect("parse"), job);
        let mut value = serde_json::to_value(&job).expect("json");
        value["lane"] = serde_json::json!(Lane::COUNT);
        let refused = Job::from_json(&serde_json::to_vec(&value).expect("bytes"));
        assert!(
            refused.is_err_and(|error| error.to_string().contains("lane")),
            "a lane that does not exist is refused by name"
        );
    }

    /// A directory-only tenant's job says "no mirror source" by leaving the central folder out, and reads back so.
    #[test]
    fn a_phase2_job_without_a_mirror_source_has_no_central_folder() {
        let job = Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: None,
                mailbox: mailbox("alice"),
            },
        );
        let text = String::from_utf8(job.to_json()).expect("utf8");
        assert!(!text.contains("central"), "{text}");
        let parsed = Job::from_json(text.as_bytes()).expect("parse");
        assert_eq!(parsed.central(), None);
        assert_eq!(parsed, job);
        let mirrored = phase2_job(Uuid::now_v7());
        assert!(Job::from_json(&mirrored.to_json())
            .expect("parse")
            .central()
            .is_some());
    }

    #[test]
    fn malformed_and_future_jobs_are_refused() {
        assert!(matches!(
            Job::from_json(b"{not json"),
            Err(MessageError::Malformed { .. })
        ));
        let mut value = serde_json::to_value(phase2_job(Uuid::now_v7())).expect("value");
        value["schema"] = serde_json::json!(99);
        let bytes = serde_json::to_vec(&value).expect("bytes");
        assert_eq!(
            Job::from_json(&bytes),
            Err(MessageError::UnsupportedSchema {
                what: "job",
                found: 99
            })
        );
    }

    /// Only the job's own mailbox, only a reason the mailbox itself has, never a cleanup; the report carries
    /// phase 1's reason and error as the job's final failure.
    #[test]
    fn a_mailbox_phase1_could_not_read_fails_its_phase2_job_without_running_it() {
        let job = phase2_job(Uuid::now_v7());
        let failure = |id: &str, reason| SourceFailure {
            mailbox: mailbox(id),
            reason,
            error: "reading contacts of alice@contoso.com: MailboxNotEnabledForRESTAPI".into(),
        };
        let settled = job
            .unreadable_report(&failure("alice", FailureReason::NoMailbox))
            .expect("settled");
        assert_eq!(
            settled.outcome,
            Outcome::Failed {
                reason: FailureReason::NoMailbox,
                error: "reading contacts of alice@contoso.com: MailboxNotEnabledForRESTAPI".into()
            }
        );
        assert_eq!(
            (
                settled.job_id,
                settled.phase,
                settled.attempt,
                settled.graph.requests
            ),
            (job.job_id, Phase::Phase2, 1, 0)
        );
        assert!(job
            .unreadable_report(&failure("alice", FailureReason::AccessDenied))
            .is_some());
        assert_eq!(
            job.unreadable_report(&failure("bob", FailureReason::NoMailbox)),
            None,
            "another mailbox"
        );
        for reason in [
            FailureReason::GraphRejected,
            FailureReason::AttemptsExhausted,
            FailureReason::Authentication,
        ] {
            assert_eq!(
                job.unreadable_report(&failure("alice", reason)),
                None,
                "{reason} says nothing of the mailbox"
            );
        }
        let cleanup = Job {
            cleanup: Some(CleanupSource::All),
            ..job.clone()
        };
        assert_eq!(
            cleanup.unreadable_report(&failure("alice", FailureReason::NoMailbox)),
            None
        );
        let phase1 = Job::new(
            job.run_id,
            &job.tenant_id,
            false,
            JobKind::Phase1 {
                central: CentralFolder {
                    mailbox: mailbox("alice"),
                    folder_id: None,
                },
                sources: vec![mailbox("alice")],
            },
        );
        assert_eq!(
            phase1.unreadable_report(&failure("alice", FailureReason::NoMailbox)),
            None
        );
    }

    #[test]
    fn report_routing_keys_name_phase_and_outcome() {
        let job = phase2_job(Uuid::now_v7());
        let report = Report::of(
            &job,
            1,
            Outcome::Failed {
                reason: FailureReason::NoMailbox,
                error: "404".into(),
            },
        );
        assert_eq!(report.routing_key(), "report.phase2.failed");
        let parsed = Report::from_json(&report.to_json()).expect("parse");
        assert_eq!(parsed, report);
    }
}
