//! RabbitMQ through lapin: the product's queue implementation.
//!
//! Two layers of recovery. lapin's own (`enable_auto_recover`) reconnects and replays channels,
//! declarations and consumers after a network error; a publish or delivery caught in the break
//! fails with a recoverable error, and [`lapin::Channel::wait_for_recovery`] waits it out. When
//! lapin gives up (the connection ends in error or closed), the supervisor here drops it and
//! builds a new connection, channels and consumers, with backoff, until shutdown.
//!
//! Invariants: a publish returns `Ok` only after the broker's positive confirm without a
//! `basic.return` (messages are `mandatory`); a message whose confirm was lost with the
//! connection is published again (at least once — every stage is idempotent); deliveries of a
//! channel that died are redelivered by the broker, never acked here on its behalf.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Acker, Delivery, Destination, Outgoing, QueueError, Topology, Work};
use crate::config::Secret;
use crate::messages::Headers;

/// How many times a publish whose channel could not be recovered is tried on a new connection.
const PUBLISH_ROUNDS: usize = 6;

/// A supervised connection with a publishing channel in confirm mode.
#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

struct Inner {
    url: Secret,
    name: String,
    topology: Topology,
    live: Mutex<Option<Live>>,
    /// The current connection, for readiness checks that must not wait for `live`.
    current: std::sync::Mutex<Option<Arc<Connection>>>,
    generation: AtomicU64,
    cancel: CancellationToken,
    /// A failure retrying cannot fix (the topology changed under us); the process stops.
    fatal: std::sync::Mutex<Option<QueueError>>,
}

/// How long opening a connection (TCP, TLS, AMQP handshake) may take: a TLS client talking
/// to a plain AMQP port otherwise waits for a handshake that never comes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    publisher: Channel,
    generation: u64,
}

impl RabbitBroker {
    /// Connects and declares the topology, retrying with backoff until it succeeds, `cancel`
    /// fires, or the broker refuses a declaration (a [`QueueError::TopologyMismatch`], which
    /// retrying cannot fix).
    pub async fn connect(
        url: Secret,
        connection_name: impl Into<String>,
        topology: Topology,
        cancel: CancellationToken,
    ) -> Result<Self, QueueError> {
        let broker = Self {
            inner: Arc::new(Inner {
                url,
                name: connection_name.into(),
                topology,
                live: Mutex::new(None),
                current: std::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                cancel,
                fatal: std::sync::Mutex::new(None),
            }),
        };
        broker.live().await?;
        Ok(broker)
    }

    /// The names it declares.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The failure that stopped this broker for good, if any.
    pub fn fatal(&self) -> Option<QueueError> {
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// True while the current connection is up (not recovering, not broken).
    pub fn is_ready(&self) -> bool {
        self.current()
            .is_some_and(|connection| connection.status().connected())
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_current(&self, connection: Option<Arc<Connection>>) {
        *self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = connection;
    }

    /// The current connection, or a new one when lapin's recovery gave up.
    async fn live(&self) -> Result<Live, QueueError> {
        let mut guard = self.inner.live.lock().await;
        if let Some(live) = guard.as_ref() {
            let status = live.connection.status();
            if !(status.closed() || status.errored() || status.closing()) {
                return Ok(live.clone());
            }
            warn!(connection = %self.inner.name, "RabbitMQ connection lost for good; building a new one.");
            *guard = None;
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let opened = tokio::select! {
                () = self.inner.cancel.cancelled() => return Err(QueueError::Cancelled),
                r = self.open() => r,
            };
            match opened {
                Ok(live) => {
                    info!(connection = %self.inner.name, "Connected to RabbitMQ, topology declared.");
                    self.set_current(Some(live.connection.clone()));
                    *guard = Some(live.clone());
                    return Ok(live);
                }
                Err(err @ QueueError::TopologyMismatch { .. }) => {
                    // Re-declaring cannot succeed until someone migrates the queue: stop the
                    // process (exit 2) instead of retrying forever.
                    tracing::error!(connection = %self.inner.name, error = %err, "RabbitMQ refused the topology; stopping.");
                    *self
                        .inner
                        .fatal
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.clone());
                    self.inner.cancel.cancel();
                    return Err(err);
                }
                Err(err) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    warn!(connection = %self.inner.name, error = %err, retry_in_ms = delay.as_millis() as u64, "Cannot reach RabbitMQ; retrying.");
                    tokio::select! {
                        () = self.inner.cancel.cancelled() => return Err(QueueError::Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn open(&self) -> Result<Live, QueueError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(self.inner.name.clone().into())
            .enable_auto_recover();
        let url = self.inner.url.expose();
        let connection = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(url, properties),
        )
        .await
        {
            Ok(connected) => connected.map_err(unavailable)?,
            Err(_) if url.starts_with("amqps://") => {
                return Err(QueueError::Unavailable(format!(
                    "no TLS handshake with RabbitMQ within {} s: check that amqp.url names a TLS port (5671 by default; 5672 speaks plain amqp://)",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Err(_) => {
                return Err(QueueError::Unavailable(format!(
                    "RabbitMQ did not complete the connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let declarer = connection.create_channel().await.map_err(unavailable)?;
        declare(&declarer, &self.inner.topology).await?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
            generation,
        })
    }

    /// Drops a connection that failed beyond lapin's recovery, so the next call rebuilds it.
    async fn discard(&self, generation: u64) {
        let mut guard = self.inner.live.lock().await;
        if guard.as_ref().is_some_and(|l| l.generation == generation) {
            *guard = None;
            self.set_current(None);
        }
    }

    /// Publishes every message and returns once each is confirmed. Messages whose confirm was
    /// lost with the connection are sent again; a nack or a return is an error.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let mut pending = messages;
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .with_jitter()
            .with_max_times(PUBLISH_ROUNDS)
            .build();
        while !pending.is_empty() {
            let live = self.live().await?;
            let mut confirms = Vec::with_capacity(pending.len());
            let mut failed: Vec<Outgoing> = Vec::new();
            let mut first_error = None;
            let frame_max = usize::try_from(live.connection.configuration().frame_max())
                .unwrap_or(super::DEFAULT_FRAME_MAX);
            for message in &pending {
                // Checked before anything is sent: an oversized frame makes the broker close
                // the connection, and sending it again after the reconnect would do the same.
                super::check_size(message, frame_max)?;
            }
            for message in pending {
                let (exchange, key) = route(&self.inner.topology, message.destination)?;
                let sent = live
                    .publisher
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &message.body,
                        properties(&message),
                    )
                    .await;
                match sent {
                    Ok(confirm) => confirms.push((message, confirm)),
                    Err(err) => {
                        first_error.get_or_insert(err);
                        failed.push(message);
                    }
                }
            }
            for (message, confirm) in confirms {
                match confirm.await {
                    Ok(Confirmation::Ack(None)) => {}
                    Ok(Confirmation::Ack(Some(returned))) => {
                        return Err(QueueError::NotAccepted {
                            message_id: message.message_id,
                            reason: format!("unroutable ({})", returned.reply_text),
                        });
                    }
                    Ok(Confirmation::Nack(_)) => {
                        return Err(QueueError::NotAccepted {
                            message_id: message.message_id,
                            reason: "nacked by the broker".into(),
                        });
                    }
                    Ok(Confirmation::NotRequested) => {
                        return Err(QueueError::Unavailable(
                            "the publishing channel is not in confirm mode".into(),
                        ));
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                        failed.push(message);
                    }
                }
            }
            if let Some(err) = first_error {
                warn!(connection = %self.inner.name, error = %err, unconfirmed = failed.len(), "Publish interrupted; sending the unconfirmed messages again.");
                let recovered = tokio::select! {
                    () = self.inner.cancel.cancelled() => Err(QueueError::Cancelled),
                    r = live.publisher.wait_for_recovery(err) => r.map_err(unavailable),
                };
                match recovered {
                    Err(QueueError::Cancelled) => return Err(QueueError::Cancelled),
                    Err(e) => {
                        self.discard(live.generation).await;
                        // Not recoverable by lapin (e.g. a channel closed for a permission):
                        // try a new connection a few times, then let the caller decide.
                        let Some(pause) = pauses.next() else {
                            return Err(e);
                        };
                        tokio::select! {
                            () = self.inner.cancel.cancelled() => return Err(QueueError::Cancelled),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    Ok(()) => {}
                }
            }
            pending = failed;
        }
        Ok(())
    }

    /// Starts a consumer on its own channel.
    pub async fn consume(&self, work: Work, prefetch: u16) -> Result<RabbitConsumer, QueueError> {
        let mut consumer = RabbitConsumer {
            broker: self.clone(),
            work,
            prefetch: prefetch.max(1),
            tag: format!(
                "{}-{}-{}",
                self.inner.name,
                work.key(),
                rand::random::<u32>()
            ),
            state: None,
            cancelled: false,
        };
        consumer.start().await?;
        Ok(consumer)
    }

    /// Ready messages in a work queue (a passive declaration, on a channel of its own).
    pub async fn depth(&self, work: Work) -> Result<u64, QueueError> {
        self.depth_of(&self.inner.topology.work_queue(work)).await
    }

    /// Ready messages in the dead-letter queue.
    pub async fn dead_depth(&self) -> Result<u64, QueueError> {
        self.depth_of(&self.inner.topology.dead()).await
    }

    async fn depth_of(&self, name: &str) -> Result<u64, QueueError> {
        let live = self.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let queue = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        channel.close(200, "depth read".into()).await.ok();
        Ok(u64::from(queue.message_count()))
    }

    /// Deletes every queue and exchange of the topology (tests, demo clean-up).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        let live = self.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        for queue in self.inner.topology.all_queues() {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        for exchange in [self.inner.topology.exchange(), self.inner.topology.dead()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        channel.close(200, "deleted".into()).await.ok();
        Ok(())
    }

    /// Waits for outstanding confirms, then closes the connection.
    pub async fn close(&self) {
        let live = self.inner.live.lock().await.take();
        self.set_current(None);
        if let Some(live) = live {
            live.publisher.wait_for_confirms().await.ok();
            live.publisher.close(200, "shutdown".into()).await.ok();
            live.connection.close(200, "shutdown".into()).await.ok();
        }
    }
}

fn unavailable(err: lapin::Error) -> QueueError {
    QueueError::Unavailable(err.to_string())
}

/// Exchange and routing key of a destination.
fn route(topology: &Topology, destination: Destination) -> Result<(String, String), QueueError> {
    Ok(match destination {
        Destination::Work(work) => (topology.exchange(), work.key().to_string()),
        Destination::Retry(work, tier) => (
            String::new(),
            topology
                .retry_queue(work, tier)
                .ok_or(QueueError::NoSuchTier(tier))?,
        ),
        Destination::Dead => (topology.dead(), String::new()),
    })
}

fn properties(message: &Outgoing) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.message_id.clone().into())
        .with_headers(to_table(&message.headers))
}

/// Declares exchanges and queues; `PRECONDITION_FAILED` becomes a [`QueueError::TopologyMismatch`].
async fn declare(channel: &Channel, topology: &Topology) -> Result<(), QueueError> {
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
    channel
        .exchange_declare(
            topology.dead().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(mismatch(&topology.dead()))?;
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
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
    for work in Work::ALL {
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

fn classify(err: lapin::Error, name: &str) -> QueueError {
    if let lapin::ErrorKind::ProtocolError(amqp) = err.kind()
        && amqp.get_id() == 406
    {
        return QueueError::TopologyMismatch {
            queue: name.to_string(),
            detail: amqp.get_message().to_string(),
        };
    }
    unavailable(err)
}

/// Our headers as an AMQP table: text as long strings, integers as 64-bit, anything else as JSON.
pub fn to_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(ShortString::from(name.clone()), to_amqp(value));
    }
    table
}

fn to_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::String(s) => AMQPValue::LongString(s.clone().into()),
        Value::Number(n) if n.is_i64() => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for item in items {
                array.push(to_amqp(item));
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                table.insert(ShortString::from(k.clone()), to_amqp(v));
            }
            AMQPValue::FieldTable(table)
        }
        other => AMQPValue::LongString(other.to_string().into()),
    }
}

/// An AMQP table (headers, `x-death` entries) as JSON.
pub fn from_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(k, v)| (k.to_string(), from_amqp(v)))
        .collect()
}

fn from_amqp(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::from(f64::from(*f)),
        AMQPValue::Double(f) => Value::from(*f),
        AMQPValue::DecimalValue(d) => Value::from(format!("{d:?}")),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).to_string()),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice()).to_string()),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), from_amqp(v)))
                .collect(),
        ),
        AMQPValue::Void => Value::Null,
    }
}

struct ConsumerState {
    channel: Channel,
    stream: lapin::Consumer,
}

/// Deliveries from one work queue, on a channel of its own; rebuilt when recovery fails.
pub struct RabbitConsumer {
    broker: RabbitBroker,
    work: Work,
    prefetch: u16,
    tag: String,
    state: Option<ConsumerState>,
    cancelled: bool,
}

impl RabbitConsumer {
    async fn start(&mut self) -> Result<(), QueueError> {
        let live = self.broker.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let stream = channel
            .basic_consume(
                self.broker.inner.topology.work_queue(self.work).into(),
                self.tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        self.state = Some(ConsumerState { channel, stream });
        Ok(())
    }

    /// The next delivery; `None` once cancelled or shut down. Cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.cancelled || self.broker.inner.cancel.is_cancelled() && self.state.is_none() {
                return None;
            }
            let Some(state) = self.state.as_mut() else {
                match self.start().await {
                    Ok(()) => continue,
                    Err(QueueError::Cancelled | QueueError::TopologyMismatch { .. }) => {
                        return None;
                    }
                    Err(err) => {
                        warn!(queue = self.work.key(), error = %err, "Cannot start consuming; retrying.");
                        tokio::select! {
                            () = self.broker.inner.cancel.cancelled() => return None,
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            };
            match state.stream.next().await {
                Some(Ok(delivery)) => return Some(convert(delivery)),
                Some(Err(err)) => {
                    warn!(queue = self.work.key(), error = %err, "Consumer interrupted; waiting for recovery.");
                    let channel = state.channel.clone();
                    let recovered = tokio::select! {
                        () = self.broker.inner.cancel.cancelled() => return None,
                        r = channel.wait_for_recovery(err) => r,
                    };
                    if recovered.is_err() {
                        self.state = None;
                    }
                }
                None => {
                    if self.cancelled {
                        return None;
                    }
                    warn!(
                        queue = self.work.key(),
                        "Consumer stream ended; consuming again."
                    );
                    self.state = None;
                    tokio::select! {
                        () = self.broker.inner.cancel.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Stops deliveries; deliveries already received can still be settled.
    pub async fn cancel(&mut self) {
        self.cancelled = true;
        if let Some(state) = self.state.as_ref() {
            state
                .channel
                .basic_cancel(self.tag.clone().into(), BasicCancelOptions::default())
                .await
                .ok();
        }
    }
}

/// `message_id` and headers of a delivery's properties.
fn id_and_headers(properties: &BasicProperties) -> (Option<String>, Headers) {
    let message_id = properties.message_id().as_ref().map(|m| m.to_string());
    let headers = properties
        .headers()
        .as_ref()
        .map(from_table)
        .unwrap_or_default();
    (message_id, headers)
}

fn convert(delivery: lapin::message::Delivery) -> Delivery {
    let (message_id, headers) = id_and_headers(&delivery.properties);
    Delivery::new(
        message_id,
        headers,
        delivery.data,
        delivery.redelivered,
        Acker::Rabbit(delivery.acker),
    )
}

/// Why the producer lock was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// Another producer holds it (`RESOURCE_LOCKED`).
    #[error("another producer holds the lock")]
    Held,
    /// The broker could not be reached.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// The producer's lock: an exclusive queue declared on a connection of its own, **without**
/// automatic recovery. lapin's recovery would re-declare the queue on a new connection — and
/// either fail the other channels' recovery or silently re-take a lock another producer took
/// meanwhile. When this connection drops, the lock is gone: the holder must stop polling
/// before it tries again.
pub struct ProducerLock {
    connection: Connection,
    _channel: Channel,
}

impl ProducerLock {
    /// Tries once to take the lock queue `queue`.
    pub async fn acquire(
        url: &Secret,
        connection_name: &str,
        queue: &str,
    ) -> Result<Self, LockError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(connection_name.to_string().into());
        let connection = Connection::connect(url.expose(), properties)
            .await
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| LockError::Unavailable(e.to_string()))?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => Ok(Self {
                connection,
                _channel: channel,
            }),
            Err(err) => {
                connection.close(200, "lock not taken".into()).await.ok();
                match err.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 405 => {
                        Err(LockError::Held)
                    }
                    _ => Err(LockError::Unavailable(err.to_string())),
                }
            }
        }
    }

    /// True while the lock's connection is up.
    pub fn is_held(&self) -> bool {
        self.connection.status().connected()
    }

    /// Resolves once the lock is lost (its connection closed or failed).
    pub async fn lost(&self) {
        while self.is_held() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Gives the lock up.
    pub async fn release(self) {
        self.connection
            .close(200, "producer stopping".into())
            .await
            .ok();
    }
}

/// A dead letter read from `{prefix}.dead`, still held (unacked) by its [`DeadLetterBatch`].
#[derive(Debug)]
pub struct HeldDeadLetter {
    /// Position in the queue, from 1.
    pub position: usize,
    /// `message_id`.
    pub message_id: String,
    /// Headers, ours and the broker's.
    pub headers: Headers,
    /// Body.
    pub body: Vec<u8>,
    acker: lapin::Acker,
}

/// Every dead letter of the queue, held on a channel of its own. Dead letters that are not
/// removed go back, in their order, when the batch is closed (or the process dies).
pub struct DeadLetterBatch {
    channel: Channel,
    /// The dead letters, oldest first.
    pub letters: Vec<HeldDeadLetter>,
}

impl DeadLetterBatch {
    /// Removes one dead letter for good (after it was replayed, or when purging).
    pub async fn remove(&self, letter: &HeldDeadLetter) -> Result<(), QueueError> {
        match letter
            .acker
            .ack(lapin::options::BasicAckOptions::default())
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(QueueError::Unavailable(
                "the dead letter's channel is gone".into(),
            )),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Gives every dead letter not removed back to the queue, in order.
    pub async fn close(self) {
        self.channel
            .close(200, "dead letters read".into())
            .await
            .ok();
    }
}

impl RabbitBroker {
    /// Reads every dead letter without removing any: each is held unacked until
    /// [`DeadLetterBatch::close`], so the queue keeps its content and order. (A consumer, not
    /// `basic.get`: on this broker's quorum queues, the last message taken with `basic.get`
    /// came back second after a requeue.)
    pub async fn read_dead_letters(&self) -> Result<DeadLetterBatch, QueueError> {
        let live = self.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        let queue = self.inner.topology.dead();
        let count = channel
            .queue_declare(
                queue.clone().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?
            .message_count() as usize;
        let mut letters = Vec::with_capacity(count);
        // A consumer without a prefetch bound: the dead letters arrive in queue order and stay
        // unacked until the batch is closed. The count is a hint only: messages another reader
        // has just given back may not be counted yet, so reading goes on until the queue has
        // been quiet for a moment.
        channel
            .basic_qos(0, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let tag = format!("jst2kd-dlq-{}", rand::random::<u32>());
        let mut consumer = channel
            .basic_consume(
                queue.clone().into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        loop {
            let quiet = if letters.len() < count {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(500)
            };
            let delivery = match tokio::time::timeout(quiet, consumer.next()).await {
                Ok(Some(Ok(delivery))) => delivery,
                Ok(Some(Err(err))) => {
                    // Never a partial listing that looks whole: say where reading stopped.
                    let position = letters.len() + 1;
                    let hint = if err.to_string().contains("frame too large") {
                        "; its headers are larger than the broker's frame_max, which no AMQP client can read: raise frame_max in rabbitmq.conf to read it, or remove every dead letter with `rabbitmqctl purge_queue`"
                    } else {
                        ""
                    };
                    drop(letters);
                    channel.close(200, "dead letters read".into()).await.ok();
                    return Err(QueueError::Unavailable(format!(
                        "reading dead letter {position} of {queue} failed: {err}{hint}"
                    )));
                }
                Ok(None) | Err(_) => break,
            };
            let (message_id, headers) = id_and_headers(&delivery.properties);
            letters.push(HeldDeadLetter {
                position: letters.len() + 1,
                message_id: message_id.unwrap_or_default(),
                headers,
                body: delivery.data,
                acker: delivery.acker,
            });
        }
        channel
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(DeadLetterBatch { channel, letters })
    }
}
