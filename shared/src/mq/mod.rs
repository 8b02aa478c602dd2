//! RabbitMQ plumbing shared by the producer and the workers: connecting, declaring the topology, publishing with
//! confirms, and reading the headers the fleet relies on.
//!
//! Every publish here waits for the broker's confirm and treats an unroutable (returned) message as an error,
//! because "acked" alone does not mean "routed" (see `../shared/docs/rabbitmq-and-peers.md` §B.4).

pub mod board;
pub mod topology;

use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::message::{FailureReason, Job, Phase, Report};
use crate::run_status::{RunStatus, MESSAGE_TYPE as RUN_STATUS_TYPE};
pub use topology::{
    queue_arguments, retry_level_for, QueueSpec, Topology, RETRY_LEVELS, RUN_STATUS_ROUTING_KEY,
};

/// Header carrying the attempt number of a job (1 for the first delivery of a fresh publish).
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Header carrying the tenant id, so operators can filter dead letters without parsing bodies.
pub const TENANT_HEADER: &str = "x-tenant";
/// Header carrying why a job was dead-lettered by a worker.
pub const REASON_HEADER: &str = "x-cm-reason";
/// Header carrying the error text of a dead-lettered job.
pub const ERROR_HEADER: &str = "x-cm-error";

/// The largest message this fleet publishes. RabbitMQ refuses bigger ones by closing the channel (its
/// `max_message_size`, 16 MiB by default since 4.0), which would take every other publish on that channel down
/// with it, so the size is checked before sending.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqError {
    /// The AMQP client failed.
    #[error("{context}")]
    Amqp {
        /// What we were doing.
        context: String,
        /// The client's error.
        #[source]
        source: lapin::Error,
    },
    /// The RabbitMQ URL is not one the client can use (shown without its credentials).
    #[error(
        "the RabbitMQ URL {url} is not of the form amqp://user:password@host:port/vhost (percent-encode a '/' or '@' \
         in the user, password or vhost: %2F, %40)"
    )]
    BadUrl {
        /// The URL, credentials removed.
        url: String,
    },
    /// The broker refused the message (nack).
    #[error("broker refused a message published to {exchange} ({routing_key})")]
    Nacked {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// The message does not fit the broker's limit (checked before publishing, so the channel stays usable).
    #[error(
        "a message for {exchange} ({routing_key}) is {size} bytes, over the {limit}-byte limit"
    )]
    TooLarge {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A message of a batch not sent because an earlier one could not be (the connection broke under it).
    #[error("not sent: an earlier message of the batch could not be ({cause})")]
    NotSent {
        /// Why the earlier one failed.
        cause: String,
    },
    /// The message matched no queue.
    #[error("message to {exchange} ({routing_key}) was unroutable: is the topology declared?")]
    Unroutable {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
    },
    /// The broker did not answer in time (a connection handshake during a restart, say).
    #[error("{what}: no answer within {}s", after.as_secs_f64())]
    TimedOut {
        /// What we were doing.
        what: String,
        /// How long we waited.
        after: Duration,
    },
}

impl MqError {
    /// A lost connection or channel, as an error naming `context` (noticed by a status check or an ended consumer,
    /// where lapin gives no error of its own).
    pub fn lost(context: impl Into<String>) -> Self {
        MqError::Amqp {
            context: context.into(),
            source: lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                lapin::ConnectionState::Closed,
            )),
        }
    }

    /// Whether publishing the same message again can never succeed (so retrying it is pointless).
    pub fn is_permanent(&self) -> bool {
        matches!(self, MqError::TooLarge { .. })
    }
}

/// Wraps a lapin error with what was being done: `.map_err(mq::amqp("declaring ..."))`.
pub fn amqp(context: impl Into<String>) -> impl FnOnce(lapin::Error) -> MqError {
    let context = context.into();
    move |source| MqError::Amqp { context, source }
}

/// Removes any password from an AMQP URL, for logs and errors. A URL whose `@` is not after a user name (no `//`
/// before the credentials: `amqp:user:password@host` parses with no user or host at all) is not shown.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            } else if parsed.username().is_empty() && url.contains('@') {
                return "<amqp url not shown: credentials outside amqp://user:password@host>"
                    .to_owned();
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable amqp url>".to_owned(),
    }
}

/// Refuses a URL the AMQP client would misread and then quote in its errors, password and all: one with no
/// `//host` part (`amqp:user:password@host`: `Invalid URL: '<url>'`), an empty host (`amqp:///user:password@host`
/// reads as the vhost `user:password@host` of localhost, which the broker's refusal names), or an `@` after no user
/// (`amqp://ops/team:pw@rabbit`, a `/` in the user name, reads as host `ops` and that vhost). An `@` that belongs in
/// a vhost is written `%40`.
fn usable_url(url: &str) -> Result<(), MqError> {
    match url::Url::parse(url) {
        Ok(parsed)
            if !parsed.cannot_be_a_base()
                && parsed.host_str().is_some_and(|host| !host.is_empty())
                && !(parsed.username().is_empty()
                    && parsed.password().is_none()
                    && url.contains('@')) =>
        {
            Ok(())
        }
        _ => Err(MqError::BadUrl {
            url: redact_url(url),
        }),
    }
}

/// Opens a connection named `name` (visible in the management UI), with lapin's automatic recovery **off**.
///
/// The producer and the worker each reconnect themselves (a new connection, channels and consumers, then the
/// failed step again). With lapin's recovery on as well, the old connection came back by itself beside the new
/// one and its recovered consumers took reports and jobs that nobody read, held unacknowledged until that
/// connection died (a run waited its whole idle timeout for a report the old consumer held). One mechanism: a
/// lost connection stays lost, and its owner replaces it.
pub async fn connect(url: &str, name: &str) -> Result<Connection, MqError> {
    connect_within(url, name, CONNECT_WAIT).await
}

/// How long a connection handshake may take. A broker caught mid-restart can accept the socket and never answer;
/// without a bound the producer's or worker's reconnect would wait for ever instead of trying again.
pub const CONNECT_WAIT: Duration = Duration::from_secs(15);

/// The longest one broker operation on an open connection is waited for: opening a channel, declaring, starting
/// a consumer, a publish with its confirm, an ack. A broker caught mid-restart, or a socket that died without
/// lapin noticing, may never answer; past this bound the operation fails as [`MqError::TimedOut`], which every
/// caller treats like a lost connection (it reconnects), so no wait on the broker is unbounded.
pub const OPERATION_WAIT: Duration = Duration::from_secs(30);

/// Waits for `operation` at most [`OPERATION_WAIT`]; `what` names it in the error.
pub async fn bounded<T>(
    what: impl Into<String>,
    operation: impl std::future::Future<Output = Result<T, MqError>>,
) -> Result<T, MqError> {
    bounded_by(OPERATION_WAIT, what, operation).await
}

/// [`bounded`] with a wait of the caller's.
pub async fn bounded_by<T>(
    wait: Duration,
    what: impl Into<String>,
    operation: impl std::future::Future<Output = Result<T, MqError>>,
) -> Result<T, MqError> {
    match tokio::time::timeout(wait, operation).await {
        Ok(result) => result,
        Err(_) => Err(MqError::TimedOut {
            what: what.into(),
            after: wait,
        }),
    }
}

/// Opens a channel on `connection`, bounded; `what` says what it is for.
pub async fn open_channel(connection: &Connection, what: &str) -> Result<Channel, MqError> {
    let context = format!("opening a {what} channel");
    bounded(context.clone(), async move {
        connection.create_channel().await.map_err(amqp(context))
    })
    .await
}

/// How long a close, or an ack, nack or cancel on the way out, is waited for. A close waits for the broker's
/// close-ok; one that never comes (a broker mid-restart, a socket lapin has not seen die) would hold whoever
/// closes for ever, so past this bound the channel or connection is left to be dropped, which ends it on the
/// client's side.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Closes `channel` (`why` is what the broker logs), waiting at most [`CLOSE_WAIT`]. Closing hands the channel's
/// unacknowledged deliveries back to their queues; the error says when that may not have happened.
pub async fn close_channel(channel: &Channel, why: &str) -> Result<(), MqError> {
    let context = format!("closing the channel ({why})");
    bounded_by(CLOSE_WAIT, context.clone(), async move {
        channel.close(200, why.into()).await.map_err(amqp(context))
    })
    .await
}

/// Closes `connection` (`why` is what the broker logs), waiting at most [`CLOSE_WAIT`]: the one way this code base
/// closes a connection, so no close waits for ever on a broker that does not answer.
pub async fn close_connection(connection: &Connection, why: &str) -> Result<(), MqError> {
    let context = format!("closing the connection ({why})");
    bounded_by(CLOSE_WAIT, context.clone(), async move {
        connection
            .close(200, why.into())
            .await
            .map_err(amqp(context))
    })
    .await
}

/// A queue's live counts, read by a passive declare (bounded). A missing queue is an error, and the broker closes
/// `channel` with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready to be delivered.
    pub ready: u32,
    /// Consumers attached.
    pub consumers: u32,
}

/// Reads `queue`'s [`QueueCounts`] on `channel`.
pub async fn queue_counts(channel: &Channel, queue: &str) -> Result<QueueCounts, MqError> {
    let context = format!("reading the counts of queue {queue}");
    bounded(context.clone(), async move {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .map_err(amqp(context))?;
        Ok(QueueCounts {
            ready: declared.message_count(),
            consumers: declared.consumer_count(),
        })
    })
    .await
}

/// Starts consuming `queue` on `channel` as `tag`, bounded like every broker wait.
pub async fn consume(
    channel: &Channel,
    queue: &str,
    tag: &str,
) -> Result<lapin::Consumer, MqError> {
    let context = format!("consuming {queue}");
    bounded(context.clone(), async move {
        channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(context))
    })
    .await
}

/// [`connect`], giving up after `wait`. No channel exists yet then, so nothing is left holding messages.
pub async fn connect_within(url: &str, name: &str, wait: Duration) -> Result<Connection, MqError> {
    usable_url(url)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match tokio::time::timeout(wait, Connection::connect(url, properties)).await {
        Ok(connected) => connected.map_err(amqp(format!(
            "cannot connect to RabbitMQ at {}",
            redact_url(url)
        ))),
        Err(_) => Err(MqError::TimedOut {
            what: format!("connecting to RabbitMQ at {}", redact_url(url)),
            after: wait,
        }),
    }
}

/// Declares run `run_id`'s own report queue (durable, so reports survive a broker restart; expiring, so an
/// abandoned run's queue goes away by itself) and binds it to the report exchange under the run's own routing key.
pub async fn declare_run_reports(
    channel: &Channel,
    topology: &Topology,
    run_id: uuid::Uuid,
) -> Result<String, MqError> {
    let name = topology.run_reports_queue(run_id);
    bounded(
        format!("declaring the run's report queue {name}"),
        declare_run_reports_unbounded(channel, topology, run_id, name.clone()),
    )
    .await?;
    Ok(name)
}

async fn declare_run_reports_unbounded(
    channel: &Channel,
    topology: &Topology,
    run_id: uuid::Uuid,
    name: String,
) -> Result<(), MqError> {
    declare_bound(
        channel,
        &name,
        &topology.run_reports_queue_arguments(),
        &topology.reports_exchange(),
        &Topology::run_reports_routing_key(run_id),
    )
    .await
}

/// Declares durable queue `name` with `arguments` and binds it to `exchange` under `routing_key` (a run's own
/// queues: its report queue, its tenants' boards). Unbounded: the caller bounds it.
async fn declare_bound(
    channel: &Channel,
    name: &str,
    arguments: &serde_json::Value,
    exchange: &str,
    routing_key: &str,
) -> Result<(), MqError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, field_table(arguments))
        .await
        .map_err(amqp(format!("declaring the queue {name}")))?;
    bind(channel, name, exchange, routing_key).await
}

/// Takes the lease `queue` (see [`Topology::lease_queue`]) for as long as `connection` lives: `Ok(false)` when
/// another connection holds it (the broker answers RESOURCE_LOCKED).
pub async fn take_lease(connection: &Connection, queue: &str) -> Result<bool, MqError> {
    // A refused declare closes its channel, so each attempt gets one of its own.
    let channel = open_channel(connection, "lease").await?;
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let declare = async {
        match channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if is_resource_locked(&error) => Ok(false),
            Err(source) => Err(MqError::Amqp {
                context: format!("declaring the lease queue {queue}"),
                source,
            }),
        }
    };
    bounded(format!("declaring the lease queue {queue}"), declare).await
}

/// Gives up the lease `queue` taken with [`take_lease`] on `connection` (deletes the queue), so another
/// connection may take it without this one closing.
pub async fn release_lease(connection: &Connection, queue: &str) -> Result<(), MqError> {
    let channel = open_channel(connection, "lease release").await?;
    let context = format!("deleting the lease queue {queue}");
    let delete = async {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map_err(amqp(context.clone()))?;
        let _ = close_channel(&channel, "released").await;
        Ok(())
    };
    bounded(context.clone(), delete).await
}

fn is_resource_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405)
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Turns the JSON arguments of a [`QueueSpec`] into an AMQP table: strings as long strings, integers as 64-bit
/// integers (RabbitMQ compares integer arguments by value, whatever their width).
fn field_table(arguments: &serde_json::Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Some(map) = arguments.as_object() {
        for (key, value) in map {
            let value = match value {
                serde_json::Value::String(text) => string(text),
                serde_json::Value::Bool(flag) => AMQPValue::Boolean(*flag),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(int) => AMQPValue::LongLongInt(int),
                    None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
                },
                other => string(&other.to_string()),
            };
            table.insert(key.as_str().into(), value);
        }
    }
    table
}

/// Declares every exchange, queue and binding of `topology` (idempotent while the arguments are unchanged).
///
/// What is declared is [`topology::exchanges`] and [`topology::queue_arguments`], the same data
/// `deploy/rabbitmq/definitions.json` is checked against.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), MqError> {
    bounded(
        format!("declaring the topology {}", topology.prefix()),
        declare_unbounded(channel, topology),
    )
    .await
}

async fn declare_unbounded(channel: &Channel, topology: &Topology) -> Result<(), MqError> {
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for exchange in topology::exchanges(topology) {
        let kind = match exchange.kind {
            topology::ExchangeKind::Direct => ExchangeKind::Direct,
            topology::ExchangeKind::Topic => ExchangeKind::Topic,
            topology::ExchangeKind::Fanout => ExchangeKind::Fanout,
        };
        let options = ExchangeDeclareOptions {
            durable: exchange.durable,
            ..ExchangeDeclareOptions::default()
        };
        let name = exchange.name;
        channel
            .exchange_declare(name.as_str().into(), kind, options, FieldTable::default())
            .await
            .map_err(amqp(format!("declaring exchange {name}")))?;
    }
    for queue in topology::queue_arguments(topology) {
        let options = QueueDeclareOptions {
            durable: queue.durable,
            ..queue_options
        };
        channel
            .queue_declare(
                queue.name.as_str().into(),
                options,
                field_table(&queue.arguments),
            )
            .await
            .map_err(amqp(format!("declaring queue {}", queue.name)))?;
        for binding in &queue.bindings {
            bind(
                channel,
                &queue.name,
                &binding.exchange,
                &binding.routing_key,
            )
            .await?;
        }
    }
    Ok(())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), MqError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp(format!("binding queue {queue} to {exchange}")))
}

/// A channel in confirm mode: every publish returns only once the broker has taken responsibility for it.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: &Connection, topology: Topology) -> Result<Self, MqError> {
        let channel = open_channel(connection, "publish").await?;
        bounded("enabling publisher confirms", async {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp("enabling publisher confirms"))
        })
        .await?;
        Ok(Self { channel, topology })
    }

    /// The topology this publisher targets.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes a job to its phase queue as attempt `attempt`.
    pub async fn publish_job(&self, job: &Job, attempt: u32) -> Result<(), MqError> {
        // One result per job: the batch of one has exactly one.
        let mut results = self.publish_jobs(std::slice::from_ref(job), attempt).await;
        results.pop().unwrap_or(Ok(()))
    }

    /// Publishes a job to the retry level that fits `wait`; it comes back to its phase queue when the level's TTL
    /// runs out, as attempt `attempt`.
    pub async fn publish_retry(
        &self,
        job: &Job,
        attempt: u32,
        wait: Duration,
    ) -> Result<(), MqError> {
        let exchange = self.topology.retry_queue(retry_level_for(wait));
        self.publish(
            &exchange,
            &job.routing_key(),
            job.to_json(),
            job_properties(job, attempt),
        )
        .await
    }

    /// Publishes a message body to the dead-letter exchange with the reason and error in headers.
    ///
    /// `body` is the original message (which may not even be a valid job), so nothing is lost.
    pub async fn publish_dead_letter(
        &self,
        phase: Phase,
        body: &[u8],
        original: &BasicProperties,
        reason: FailureReason,
        error: &str,
    ) -> Result<(), MqError> {
        let properties = dead_letter_properties(original, reason, error);
        let exchange = self.topology.dead_letter_exchange();
        self.publish(&exchange, phase.routing_key(), body.to_vec(), properties)
            .await
    }

    /// Puts jobs that were never sent in their phase's dead-letter queue, each with its reason and error, as a
    /// worker's dead letter of its first attempt looks (the producer settled them as failed: their mailbox's phase
    /// 1 could not read it, see `Job::unreadable_report`). One result per letter, in order, as
    /// [`Publisher::publish_jobs`].
    pub async fn dead_letter_unsent(
        &self,
        letters: &[(Job, FailureReason, String)],
    ) -> Vec<Result<(), MqError>> {
        let exchange = self.topology.dead_letter_exchange();
        self.publish_all(letters.iter().map(|(job, reason, error)| {
            let properties = dead_letter_properties(&job_properties(job, 1), *reason, error);
            (
                exchange.as_str(),
                job.phase().routing_key(),
                job.to_json(),
                properties,
            )
        }))
        .await
    }

    /// Publishes `job`'s report: to its run's own queue when the job names one this topology owns (see
    /// [`Topology::report_queue_of`]), else to the report exchange (older producers' shared queue).
    ///
    /// A run's queue that no longer exists means that run's producer is gone for good (it deletes the queue at
    /// its end; the broker drops an abandoned one): nobody will read the report, so it is dropped with a warning
    /// instead of failing the job, which would only run it again for nothing.
    pub async fn publish_report(&self, job: &Job, report: &Report) -> Result<(), MqError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(format!("{}:{}", report.job_id, report.attempt).into())
            .with_correlation_id(report.run_id.to_string().into())
            .with_type("contactmirror.report.v1".into());
        let Some(queue) = self.topology.report_queue_of(job) else {
            let exchange = self.topology.reports_exchange();
            return self
                .publish(
                    &exchange,
                    &report.routing_key(),
                    report.to_json(),
                    properties,
                )
                .await;
        };
        let exchange = self.topology.reports_exchange();
        let routing_key = Topology::run_reports_routing_key(job.run_id);
        match self
            .publish(&exchange, &routing_key, report.to_json(), properties)
            .await
        {
            Err(MqError::Unroutable { .. }) => {
                tracing::warn!(queue = %queue, job_id = %job.job_id,
                    "the run's report queue is gone (its producer ended); dropping the report");
                Ok(())
            }
            other => other,
        }
    }

    /// Publishes a run-progress snapshot to the runs queue, where it replaces the previous one. Persistent, so the
    /// last run survives a broker restart.
    pub async fn publish_run_status(&self, status: &RunStatus) -> Result<(), MqError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id(status.run_id.to_string().into())
            .with_type(RUN_STATUS_TYPE.into())
            .with_timestamp(u64::try_from(status.updated_at.timestamp()).unwrap_or_default());
        let exchange = self.topology.reports_exchange();
        self.publish(
            &exchange,
            RUN_STATUS_ROUTING_KEY,
            status.to_json(),
            properties,
        )
        .await
    }

    /// Publishes jobs in their order, as attempt `attempt`, and waits for the broker's confirms together: one
    /// result per job, in the same order. Why: a confirm of a quorum queue waits for the broker to commit the
    /// message to disk, about a millisecond; one publish after another cost a run of 10,000 mailboxes seconds of
    /// round trips. The messages leave in order (each is handed to the connection before the next); only the
    /// waits for their confirms overlap. A job after a send that failed is not sent; its result is that error.
    pub async fn publish_jobs(&self, jobs: &[Job], attempt: u32) -> Vec<Result<(), MqError>> {
        let exchange = self.topology.jobs_exchange();
        let keys: Vec<String> = jobs.iter().map(Job::routing_key).collect();
        self.publish_all(jobs.iter().zip(&keys).map(|(job, key)| {
            (
                exchange.as_str(),
                key.as_str(),
                job.to_json(),
                job_properties(job, attempt),
            )
        }))
        .await
    }

    /// Publishes `messages` (exchange, routing key, body, properties) in their order and waits for the broker's
    /// confirms together (see [`Publisher::publish_jobs`] for why): one result per message, in order; a message
    /// after a send that failed is not sent, its result is that error.
    async fn publish_all<'e>(
        &self,
        messages: impl Iterator<Item = (&'e str, &'e str, Vec<u8>, BasicProperties)>,
    ) -> Vec<Result<(), MqError>> {
        let mut sent = Vec::new();
        let mut broken: Option<String> = None;
        for (exchange, routing_key, body, properties) in messages {
            let result = match &broken {
                Some(error) => Err(MqError::NotSent {
                    cause: error.clone(),
                }),
                None => self.send(exchange, routing_key, body, properties).await,
            };
            if let Err(error) = &result {
                if !error.is_permanent() && broken.is_none() {
                    broken = Some(error.to_string());
                }
            }
            sent.push(result);
        }
        futures_util::future::join_all(sent.into_iter().map(|sent| async move {
            match sent {
                Ok(sent) => sent.confirmed().await,
                Err(error) => Err(error),
            }
        }))
        .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<(), MqError> {
        self.send(exchange, routing_key, body, properties)
            .await?
            .confirmed()
            .await
    }

    /// Hands a message to the connection; its [`Sent::confirmed`] waits for the broker's word.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<Sent, MqError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(MqError::TooLarge {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                size: body.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = bounded(format!("publishing to {exchange}"), async {
            self.channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &body,
                    properties,
                )
                .await
                .map_err(amqp(format!("publishing to {exchange}")))
        })
        .await?;
        Ok(Sent {
            confirm,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        })
    }
}

/// A message handed to the connection, its confirm not yet in.
struct Sent {
    confirm: lapin::PublisherConfirm,
    exchange: String,
    routing_key: String,
}

impl Sent {
    /// Waits for the broker's confirm: a nack or a returned (unroutable) message is an error.
    async fn confirmed(self) -> Result<(), MqError> {
        let Sent {
            confirm,
            exchange,
            routing_key,
        } = self;
        let confirm = bounded(
            format!("publishing to {exchange} (the broker's confirm)"),
            async {
                confirm.await.map_err(amqp(format!(
                    "waiting for the confirm of a publish to {exchange}"
                )))
            },
        )
        .await?;
        if confirm.is_nack() {
            return Err(MqError::Nacked {
                exchange,
                routing_key,
            });
        }
        if confirm.take_message().is_some() {
            return Err(MqError::Unroutable {
                exchange,
                routing_key,
            });
        }
        Ok(())
    }
}

fn job_properties(job: &Job, attempt: u32) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    headers.insert(TENANT_HEADER.into(), string(&job.tenant_id));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(job.job_id.to_string().into())
        .with_correlation_id(job.run_id.to_string().into())
        .with_type(format!("contactmirror.{}.v1", job.phase()).into())
        .with_timestamp(u64::try_from(job.enqueued_at.timestamp()).unwrap_or_default())
        .with_headers(headers)
}

/// `original` with the dead letter's reason and error headers, persistent.
fn dead_letter_properties(
    original: &BasicProperties,
    reason: FailureReason,
    error: &str,
) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), string(reason.as_str()));
    headers.insert(ERROR_HEADER.into(), string(&truncate(error, 2_000)));
    original.clone().with_headers(headers).with_delivery_mode(2)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Reads an integer header (the broker may hand integers back in any width).
pub fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Reads a string header.
pub fn header_str(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

/// The attempt number of a delivery (1 when the header is missing).
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    header_int(properties, ATTEMPT_HEADER)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v >= 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        let shown = redact_url("amqp://user:s3cr3t@rabbit:5672/%2f");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("rabbit"));
        assert_eq!(redact_url("not a url"), "<unparseable amqp url>");
    }

    /// Failed before the fix: without `//` the URL parses with no user and no password, so it came back whole, and
    /// the AMQP client's own error quoted it too (`Invalid URL: '<url>'`).
    #[tokio::test]
    async fn a_url_with_its_credentials_outside_user_and_host_is_never_shown() {
        for url in [
            "amqp:guest:s3cr3t@rabbit",
            "amqp:/guest:s3cr3t@rabbit",
            "amqps:guest:s3cr3t@rabbit:5671",
            "amqp:///guest:s3cr3t@rabbit",
            "amqp://ops/team:s3cr3t@rabbit/",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("s3cr3t"), "{url}: {shown}");
            let error = connect_within(url, "test", Duration::from_secs(5))
                .await
                .err()
                .map(|e| crate::telemetry::with_causes(&e))
                .unwrap_or_else(|| panic!("{url} connected"));
            assert!(!error.contains("s3cr3t"), "{url}: {error}");
        }
        assert_eq!(redact_url("amqp://guest@rabbit/"), "amqp://guest@rabbit/");
        // An `@` after no user is refused (it may be a password's: `amqp://ops/team:pw@rabbit`); one in a vhost is
        // written `%40`.
        assert!(usable_url("amqp://ops/team:s3cr3t@rabbit/").is_err());
        assert!(usable_url("amqp://rabbit/team%40x").is_ok());
        assert!(usable_url("amqp://:pw@rabbit/").is_ok());
    }

    #[test]
    fn attempt_defaults_to_one_and_reads_any_width() {
        assert_eq!(attempt_of(&BasicProperties::default()), 1);
        let mut headers = FieldTable::default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongInt(3));
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(attempt_of(&props), 3);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let text = "é".repeat(10);
        let cut = truncate(&text, 5);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", 10), "short");
    }

    /// A listener that takes the socket and never speaks AMQP (a broker caught mid-restart): the handshake gives up
    /// after the bound instead of waiting for ever (nothing bounded the handshake before).
    #[tokio::test]
    async fn a_silent_broker_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let port = listener.local_addr().expect("address").port();
        let _held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let url = format!("amqp://guest:secret@127.0.0.1:{port}/%2f");
        let result = connect_within(&url, "test", Duration::from_millis(300)).await;
        match result {
            Err(error @ MqError::TimedOut { .. }) => {
                assert!(!error.to_string().contains("secret"), "{error}");
            }
            Err(other) => panic!("expected a timeout, got {other}"),
            Ok(_) => panic!("a silent listener completed an AMQP handshake"),
        }
    }
}
