//! One dead-lettered message as an operator reads it, and the filter that selects dead letters.
//!
//! A message reaches a dead-letter queue two ways, and both must read the same:
//! - a worker publishes it with [`REASON_HEADER`] and [`ERROR_HEADER`] (permanent failure, attempts spent,
//!   malformed body);
//! - the broker dead-letters it (a crash loop hit the delivery limit), leaving only `x-death` and
//!   `x-first-death-*` headers.
//!
//! The worker's reason wins when both are present: a job that went through a retry queue carries an `x-death`
//! entry (`expired`) from that detour, which says nothing about why it failed.

use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, ShortString};
use lapin::BasicProperties;
use serde::Serialize;
use shared::message::{Job, Phase};
use shared::mq::{attempt_of, header_str, ERROR_HEADER, REASON_HEADER, TENANT_HEADER};

/// Who decided the message was dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonSource {
    /// A worker (the reason is one of `FailureReason`).
    Worker,
    /// The broker (`delivery_limit`, `rejected`, `expired`, `maxlen`).
    Broker,
    /// Neither header is present (published to the dead-letter exchange by something else).
    Unknown,
}

/// A dead-lettered job, as `dlq list` and `dlq show` print it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The dead-letter queue holding it.
    pub queue: String,
    /// The phase of that queue.
    pub phase: Phase,
    /// The job id (the message id; deterministic per tenant, mailbox, phase and run).
    pub job_id: Option<String>,
    /// The run the job belongs to.
    pub run_id: Option<String>,
    /// The tenant (header, else the job body).
    pub tenant: Option<String>,
    /// The mailbox the job writes (user principal name).
    pub mailbox: Option<String>,
    /// The attempt that failed (`x-attempt`).
    pub attempts: u32,
    /// Why: the worker's reason, else the broker's first-death reason, else `unknown`.
    pub reason: String,
    /// Who gave the reason.
    pub reason_source: ReasonSource,
    /// The queue the broker first dead-lettered it from, when the broker did.
    pub first_death_queue: Option<String>,
    /// When the broker first dead-lettered it, when the broker did.
    pub first_death_at: Option<DateTime<Utc>>,
    /// The error text, for the operator.
    pub error: Option<String>,
    /// When the producer created the job.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Why the body is not a usable job, if it is not (such a dead letter cannot be requeued).
    pub body_error: Option<String>,
    /// The job itself, when the body parses.
    #[serde(skip)]
    pub job: Option<Job>,
}

impl DeadLetter {
    /// Reads a message taken from the dead-letter queue `queue` of `phase`.
    pub fn from_delivery(queue: &str, phase: Phase, delivery: &Delivery) -> Self {
        Self::from_parts(queue, phase, &delivery.properties, &delivery.data)
    }

    /// Reads a dead letter from its properties and body.
    pub fn from_parts(
        queue: &str,
        phase: Phase,
        properties: &BasicProperties,
        body: &[u8],
    ) -> Self {
        let (job, body_error) = match Job::from_json(body) {
            Ok(job) => (Some(job), None),
            Err(error) => (None, Some(error.to_string())),
        };
        let worker_reason = header_str(properties, REASON_HEADER);
        let broker_reason = header_str(properties, "x-first-death-reason");
        let first_death_queue = header_str(properties, "x-first-death-queue");
        let (reason, reason_source) = match (worker_reason, broker_reason.clone()) {
            (Some(reason), _) => (reason, ReasonSource::Worker),
            (None, Some(reason)) => (reason, ReasonSource::Broker),
            (None, None) => ("unknown".to_owned(), ReasonSource::Unknown),
        };
        let error = header_str(properties, ERROR_HEADER).or_else(|| {
            (reason_source == ReasonSource::Broker).then(|| {
                format!(
                    "dead-lettered by the broker ({reason}) from {}",
                    first_death_queue.as_deref().unwrap_or("an unknown queue")
                )
            })
        });
        let short = |value: &Option<ShortString>| value.as_ref().map(|v| v.as_str().to_owned());
        Self {
            queue: queue.to_owned(),
            phase,
            job_id: short(properties.message_id())
                .or_else(|| job.as_ref().map(|j| j.job_id.to_string())),
            run_id: short(properties.correlation_id())
                .or_else(|| job.as_ref().map(|j| j.run_id.to_string())),
            tenant: header_str(properties, TENANT_HEADER)
                .or_else(|| job.as_ref().map(|j| j.tenant_id.clone())),
            mailbox: job.as_ref().map(|j| j.mailbox().upn.clone()),
            attempts: attempt_of(properties),
            reason,
            reason_source,
            first_death_queue,
            first_death_at: first_death_time(properties),
            error,
            enqueued_at: job.as_ref().map(|j| j.enqueued_at),
            body_error,
            job,
        }
    }
}

/// The `time` of the oldest `x-death` entry (the broker appends newer deaths at the front).
fn first_death_time(properties: &BasicProperties) -> Option<DateTime<Utc>> {
    let headers = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get(&ShortString::from("x-death"))? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().last()? else {
        return None;
    };
    match first.inner().get(&ShortString::from("time"))? {
        AMQPValue::Timestamp(secs) => DateTime::from_timestamp(i64::try_from(*secs).ok()?, 0),
        _ => None,
    }
}

/// Which dead letters a command acts on. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this tenant (case-insensitive, as tenant ids are domain names).
    pub tenant: Option<String>,
    /// Only this phase.
    pub phase: Option<Phase>,
    /// Only this reason (exact).
    pub reason: Option<String>,
    /// Only this job id (case-insensitive, as UUIDs print either way).
    pub job_id: Option<String>,
    /// At most this many matches (the scan still reads the whole queue, to keep its order; see `scan`).
    pub limit: Option<usize>,
}

impl Filter {
    /// Whether a filter narrows anything (a purge without one can empty the queue in one call).
    pub fn selects_whole_queues(&self) -> bool {
        self.tenant.is_none()
            && self.reason.is_none()
            && self.job_id.is_none()
            && self.limit.is_none()
    }

    /// The phases whose dead-letter queues need reading.
    pub fn phases(&self) -> Vec<Phase> {
        match self.phase {
            Some(phase) => vec![phase],
            None => Phase::ALL.to_vec(),
        }
    }

    /// Whether `letter` is selected (the limit is the scan's business).
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let same = |wanted: &Option<String>, found: Option<&str>| match wanted {
            None => true,
            Some(wanted) => found.is_some_and(|found| found.eq_ignore_ascii_case(wanted)),
        };
        self.phase.is_none_or(|phase| phase == letter.phase)
            && same(&self.tenant, letter.tenant.as_deref())
            && self
                .reason
                .as_ref()
                .is_none_or(|reason| *reason == letter.reason)
            && same(&self.job_id, letter.job_id.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, FieldTable, LongString};
    use shared::message::{CentralFolder, JobKind};
    use shared::model::Mailbox;
    use uuid::Uuid;

    use super::*;

    fn job() -> Job {
        let mailbox = |id: &str| Mailbox {
            id: id.into(),
            upn: format!("{id}@contoso.com"),
        };
        Job::new(
            Uuid::now_v7(),
            "contoso.onmicrosoft.com",
            false,
            JobKind::Phase2 {
                central: Some(CentralFolder {
                    mailbox: mailbox("shared"),
                    folder_id: Some("folder".into()),
                }),
                mailbox: mailbox("alice"),
            },
        )
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

    #[test]
    fn the_workers_reason_wins_over_a_retry_detour() {
        let mut death = FieldTable::default();
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut headers = FieldTable::default();
        headers.insert("x-first-death-reason".into(), text("expired"));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(REASON_HEADER.into(), text("no_mailbox"));
        headers.insert(ERROR_HEADER.into(), text("MailboxNotEnabledForRESTAPI"));
        headers.insert("x-attempt".into(), AMQPValue::LongLongInt(3));
        let properties = BasicProperties::default().with_headers(headers);
        let letter = DeadLetter::from_parts(
            "cm.phase2.dead",
            Phase::Phase2,
            &properties,
            &job().to_json(),
        );
        assert_eq!(letter.reason, "no_mailbox");
        assert_eq!(letter.reason_source, ReasonSource::Worker);
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.mailbox.as_deref(), Some("alice@contoso.com"));
        assert_eq!(letter.tenant.as_deref(), Some("contoso.onmicrosoft.com"));
        assert_eq!(letter.error.as_deref(), Some("MailboxNotEnabledForRESTAPI"));
        assert_eq!(
            letter.first_death_at.map(|t| t.timestamp()),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn a_broker_dead_letter_explains_itself_and_a_bad_body_is_kept() {
        let mut headers = FieldTable::default();
        headers.insert("x-first-death-reason".into(), text("delivery_limit"));
        headers.insert("x-first-death-queue".into(), text("cm.phase1"));
        let properties = BasicProperties::default().with_headers(headers);
        let letter = DeadLetter::from_parts("cm.phase1.dead", Phase::Phase1, &properties, b"{oops");
        assert_eq!(letter.reason, "delivery_limit");
        assert_eq!(letter.reason_source, ReasonSource::Broker);
        assert!(
            letter
                .error
                .as_deref()
                .is_some_and(|e| e.contains("cm.phase1")),
            "{letter:?}"
        );
        assert!(letter.body_error.is_some());
        assert!(letter.job.is_none());
        assert_eq!(letter.attempts, 1);
    }

    #[test]
    fn filters_combine_with_and() {
        let properties = BasicProperties::default();
        let mut letter = DeadLetter::from_parts(
            "cm.phase2.dead",
            Phase::Phase2,
            &properties,
            &job().to_json(),
        );
        letter.reason = "access_denied".into();
        let all = Filter::default();
        assert!(all.matches(&letter) && all.selects_whole_queues());
        let tenant = Filter {
            tenant: Some("CONTOSO.onmicrosoft.com".into()),
            ..Filter::default()
        };
        assert!(tenant.matches(&letter));
        let wrong_reason = Filter {
            reason: Some("no_mailbox".into()),
            ..tenant.clone()
        };
        assert!(!wrong_reason.matches(&letter));
        let wrong_phase = Filter {
            phase: Some(Phase::Phase1),
            ..tenant
        };
        assert!(!wrong_phase.matches(&letter));
        assert_eq!(wrong_phase.phases(), vec![Phase::Phase1]);
    }
}
