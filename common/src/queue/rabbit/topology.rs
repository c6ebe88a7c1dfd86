//! Declaring the topology of SPEC section 3, and reading the broker's refusals of it.

use lapin::Channel;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};

use super::*;

/// Declares the exchanges and queues of `topology.role` (see [`crate::queue::Role`]); `PRECONDITION_FAILED`
/// becomes a [`QueueError::TopologyMismatch`].
pub(super) async fn declare(channel: &Channel, topology: &Topology) -> Result<(), QueueError> {
    let role = topology.role;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let mismatch = |name: &str| {
        let name = name.to_string();
        move |err: lapin::Error| classify(err, &name)
    };
    channel
        .exchange_declare(
            topology.exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(mismatch(&topology.exchange()))?;
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    if role.declares_dead() {
        channel
            .exchange_declare(
                topology.dead().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(mismatch(&topology.dead()))?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(topology.dead().into(), queue_options, dead_args)
            .await
            .map_err(mismatch(&topology.dead()))?;
        channel
            .queue_bind(
                topology.dead().into(),
                topology.dead().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(mismatch(&topology.dead()))?;
    }
    // Requests for the lock holder. No dead-lettering: a request is no document, and one that
    // crashed its holders CONTROL_DELIVERY_LIMIT times is dropped rather than crash-looping
    // the producer; its requester hears nothing more and stops waiting when interrupted. A
    // constant, so that changing `amqp.delivery_limit` leaves this queue alone.
    let mut control_args = FieldTable::default();
    control_args.insert("x-queue-type".into(), text("quorum"));
    control_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(CONTROL_DELIVERY_LIMIT),
    );
    if role.declares_control() {
        channel
            .queue_declare(topology.control_queue().into(), queue_options, control_args)
            .await
            .map_err(mismatch(&topology.control_queue()))?;
    }
    // The outcome log: a stream, kept by age and size. Retention removes whole segments, so
    // a segment is a tenth of the size kept (RabbitMQ's default, 500 MB, would keep a small
    // log whole for ever).
    let segment = (topology.events_max_bytes / 10).clamp(1024 * 1024, 500 * 1024 * 1024);
    let mut stream_args = FieldTable::default();
    stream_args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(segment).unwrap_or(i64::MAX)),
    );
    stream_args.insert("x-queue-type".into(), text("stream"));
    stream_args.insert(
        "x-max-age".into(),
        text(&format!("{}s", topology.events_max_age.as_secs())),
    );
    stream_args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(topology.events_max_bytes).unwrap_or(i64::MAX)),
    );
    channel
        .queue_declare(topology.events_stream().into(), queue_options, stream_args)
        .await
        .map_err(mismatch(&topology.events_stream()))?;
    for work in Work::ALL.into_iter().filter(|w| role.declares_work(*w)) {
        let name = topology.work_queue(work);
        let mut args = safe_dead_lettering(&topology.dead(), None);
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
        );
        channel
            .queue_declare(name.clone().into(), queue_options, args)
            .await
            .map_err(mismatch(&name))?;
        channel
            .queue_bind(
                name.clone().into(),
                topology.exchange().into(),
                work.key().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(mismatch(&name))?;
    }
    for work in Work::ALL.into_iter().filter(|w| role.declares_retries(*w)) {
        for (tier, delay) in topology.retry_delays.iter().enumerate() {
            let Some(retry) = topology.retry_queue(work, tier) else {
                continue;
            };
            let mut args = safe_dead_lettering(&topology.exchange(), Some(work.key()));
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            channel
                .queue_declare(retry.clone().into(), queue_options, args)
                .await
                .map_err(mismatch(&retry))?;
        }
    }
    Ok(())
}

/// `x-delivery-limit` of the control queue.
const CONTROL_DELIVERY_LIMIT: i64 = 10;

/// Quorum queue arguments under which the broker's own dead-lettering never drops a message.
fn safe_dead_lettering(exchange: &str, key: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert("x-dead-letter-exchange".into(), text(exchange));
    if let Some(key) = key {
        args.insert("x-dead-letter-routing-key".into(), text(key));
    }
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

pub(super) fn classify(err: lapin::Error, name: &str) -> QueueError {
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind() {
        match amqp.get_id() {
            406 => {
                return QueueError::TopologyMismatch {
                    queue: name.to_string(),
                    detail: amqp.get_message().to_string(),
                };
            }
            // Retried like an unreachable broker: permissions can be mended while it waits.
            403 => {
                return QueueError::Unavailable(format!(
                    "{} (`jst2kd permissions` prints what each user needs)",
                    amqp.get_message()
                ));
            }
            _ => {}
        }
    }
    unavailable(err)
}
