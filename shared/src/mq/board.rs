//! The broker's side of overlapped phases in a fleet (issue 13): a tenant's phase-1 board is a RabbitMQ stream per
//! run ([`Topology::board_stream`]) that the phase-1 job appends to and every phase-2 job of the tenant reads from
//! its first entry, on whichever worker process it runs; news of a plan goes to the run's report queue. What the
//! entries say is the worker's (`worker::overlap::relay`); this module only moves bytes.

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use uuid::Uuid;

use super::{amqp, bounded, declare_bound, MqError, Publisher, Topology};

/// The AMQP `type` of a board entry.
pub const BOARD_TYPE: &str = "contactmirror.board.v1";

/// The AMQP `type` of a phase-1 job's news that it planned (on the run's report queue, beside its reports).
pub const PLANNED_TYPE: &str = "contactmirror.planned.v1";

/// Entries a board reader holds unacknowledged (a stream needs a prefetch; entries are small but for the plan's
/// folder parts).
const BOARD_PREFETCH: u16 = 64;

/// Declares `tenant_id`'s board stream for run `run_id` (idempotent: the phase-1 job, its readers and the producer
/// each declare it before use) and binds it to the report exchange; returns its name.
pub async fn declare_board(
    channel: &Channel,
    topology: &Topology,
    run_id: Uuid,
    tenant_id: &str,
) -> Result<String, MqError> {
    let name = topology.board_stream(run_id, tenant_id);
    let context = format!("declaring the board stream {name}");
    let (arguments, exchange) = (
        topology.board_stream_arguments(),
        topology.reports_exchange(),
    );
    let routing_key = Topology::board_routing_key(run_id, tenant_id);
    let declare = declare_bound(channel, &name, &arguments, &exchange, &routing_key);
    bounded(context, declare).await?;
    Ok(name)
}

/// Reads board stream `stream` from entry `offset` (0: the first) on `channel`, which this sets to the prefetch a
/// stream requires. Every delivery must be acknowledged for more to come.
pub async fn follow_board(
    channel: &Channel,
    stream: &str,
    tag: &str,
    offset: u64,
) -> Result<lapin::Consumer, MqError> {
    let context = format!("reading the board stream {stream}");
    let follow = async {
        channel
            .basic_qos(BOARD_PREFETCH, BasicQosOptions::default())
            .await
            .map_err(amqp(context.clone()))?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-stream-offset".into(),
            AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
        );
        channel
            .basic_consume(
                stream.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await
            .map_err(amqp(context.clone()))
    };
    bounded(context.clone(), follow).await
}

/// The stream offset of a board delivery (the broker sets it on every entry it hands out).
pub fn offset_of(properties: &BasicProperties) -> Option<u64> {
    super::header_int(properties, "x-stream-offset").and_then(|v| u64::try_from(v).ok())
}

impl Publisher {
    /// Appends `entry` to `tenant_id`'s board stream of run `run_id` (declared by the caller).
    pub async fn publish_board(
        &self,
        run_id: Uuid,
        tenant_id: &str,
        entry: Vec<u8>,
    ) -> Result<(), MqError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_correlation_id(run_id.to_string().into())
            .with_type(BOARD_TYPE.into());
        let exchange = self.topology.reports_exchange();
        self.publish(
            &exchange,
            &Topology::board_routing_key(run_id, tenant_id),
            entry,
            properties,
        )
        .await
    }

    /// Tells the producer of run `run_id`, through the run's report queue `report_queue` (as the job names it),
    /// that phase-1 job `job_id` planned (`news`). A job naming no queue of this run under this topology (an older
    /// producer's, which does not overlap phases) has nobody to tell.
    pub async fn publish_planned(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        report_queue: Option<&str>,
        news: Vec<u8>,
    ) -> Result<(), MqError> {
        if self
            .topology
            .report_queue_named(run_id, report_queue)
            .is_none()
        {
            return Ok(());
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(format!("{job_id}:planned").into())
            .with_correlation_id(run_id.to_string().into())
            .with_type(PLANNED_TYPE.into());
        let exchange = self.topology.reports_exchange();
        self.publish(
            &exchange,
            &Topology::run_reports_routing_key(run_id),
            news,
            properties,
        )
        .await
    }
}

/// Deletes board stream `stream` (the producer, at its run's end); one already gone is no error.
pub async fn delete_board(channel: &Channel, stream: &str) -> Result<(), MqError> {
    let context = format!("deleting the board stream {stream}");
    let delete = async {
        channel
            .queue_delete(stream.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(amqp(context.clone()))
    };
    bounded(context.clone(), delete).await
}
