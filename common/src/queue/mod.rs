//! The queue abstraction the stages are written against.
//!
//! Two implementations with the same semantics: [`rabbit`] (the product: RabbitMQ through lapin,
//! quorum queues, confirms, manual acks) and [`memory`] (in-process, so `jst2kd demo` needs no
//! broker). Only `rabbit` knows lapin.
//!
//! Invariants every implementation keeps:
//! - [`Broker::publish`] returns `Ok` only once the message is safely stored (a broker confirm);
//!   an unroutable or refused message is an error, never silently dropped.
//! - A [`Delivery`] that is neither acked nor requeued is redelivered when its consumer goes away.
//! - Work queues send a message that was delivered more than `delivery_limit` times to the
//!   dead-letter queue (a safety net against crash loops).

mod config;
pub mod memory;
pub mod permissions;
pub mod rabbit;

use std::time::Duration;

use crate::messages::Headers;

pub use config::AmqpConfig;

/// A logical work queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// Count documents (`{prefix}.counts`), consumed by the transformer.
    Counts,
    /// Kingdee bills (`{prefix}.bills`), consumed by the loader.
    Bills,
}

impl Work {
    /// Both work queues.
    pub const ALL: [Work; 2] = [Work::Counts, Work::Bills];

    /// Routing key and logical name (`counts`, `bills`).
    pub fn key(self) -> &'static str {
        match self {
            Work::Counts => "counts",
            Work::Bills => "bills",
        }
    }
}

/// Names of every exchange and queue, derived from one prefix (SPEC section 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// `amqp.prefix`.
    pub prefix: String,
    /// One retry tier per delay (whole seconds).
    pub retry_delays: Vec<Duration>,
    /// `x-delivery-limit` of the work queues.
    pub delivery_limit: u32,
    /// `amqp.max_message_bytes`: a consumed body larger than this is dead-lettered
    /// `too_large` without being parsed.
    pub max_message_bytes: usize,
    /// `amqp.prefetch`: unsettled deliveries per consumer (a stage may ask for more).
    pub prefetch: u16,
    /// `amqp.events_max_age`: the outcome log's retention by age.
    pub events_max_age: Duration,
    /// `amqp.events_max_bytes`: the outcome log's retention by size.
    pub events_max_bytes: u64,
    /// The TLS files of `[amqp]` (carried with the names: both come from that section and
    /// reach every connection the broker opens).
    pub tls: AmqpTls,
    /// Which part of the topology this process declares.
    pub role: Role,
}

/// Who is connecting, and so which part of the topology it declares: each worker the names it
/// uses, so that its RabbitMQ user needs `configure` on nothing else (see [`permissions`]);
/// the operations commands (and tests) everything.
///
/// Each worker declares every name it publishes into or consumes from, so the three start in
/// any order on an empty broker, and a worker that reconnects redeclares only its own names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// The `jst2kd` commands: the whole topology.
    #[default]
    Operator,
    /// The work exchange, `counts` (it publishes into it), the outcome log, the control
    /// queue (and the lock, on its own connection).
    Producer,
    /// The work exchange, `counts` and its retry tiers, `bills` (it publishes into it), the
    /// dead letters, the outcome log.
    Transformer,
    /// The work exchange, `bills` and its retry tiers, the dead letters, the outcome log.
    Loader,
}

impl Role {
    /// The three workers.
    pub const WORKERS: [Role; 3] = [Role::Producer, Role::Transformer, Role::Loader];

    /// `producer`, `transformer`, `loader`, `operator`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Producer => "producer",
            Role::Transformer => "transformer",
            Role::Loader => "loader",
        }
    }

    /// Whether it declares the work queue `work` (with its binding).
    pub fn declares_work(self, work: Work) -> bool {
        match self {
            Role::Operator | Role::Transformer => true,
            Role::Producer => work == Work::Counts,
            Role::Loader => work == Work::Bills,
        }
    }

    /// Whether it declares the retry tiers of `work` (the stage that retries into them).
    pub fn declares_retries(self, work: Work) -> bool {
        match self {
            Role::Operator => true,
            Role::Producer => false,
            Role::Transformer => work == Work::Counts,
            Role::Loader => work == Work::Bills,
        }
    }

    /// Whether it declares the dead-letter exchange and queue (the stages that dead-letter).
    pub fn declares_dead(self) -> bool {
        self != Role::Producer
    }

    /// Whether it declares the control queue (the producer reads it, `jst2kd backfill`
    /// writes it).
    pub fn declares_control(self) -> bool {
        matches!(self, Role::Operator | Role::Producer)
    }
}

/// `amqp.ca_file`, `amqp.cert_file`, `amqp.key_file`: paths, read at each connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmqpTls {
    /// Certificate authorities to trust besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// The client certificate.
    pub cert_file: Option<std::path::PathBuf>,
    /// Its private key.
    pub key_file: Option<std::path::PathBuf>,
}

impl Topology {
    /// From the `[amqp]` section.
    pub fn from_config(amqp: &AmqpConfig) -> Self {
        Self {
            prefix: amqp.prefix.clone(),
            retry_delays: amqp.retry_delays.iter().map(|d| d.0).collect(),
            delivery_limit: amqp.delivery_limit,
            max_message_bytes: usize::try_from(amqp.max_message_bytes).unwrap_or(usize::MAX),
            prefetch: amqp.prefetch,
            events_max_age: amqp.events_max_age.0,
            events_max_bytes: amqp.events_max_bytes,
            tls: AmqpTls {
                ca_file: amqp.ca_file.clone(),
                cert_file: amqp.cert_file.clone(),
                key_file: amqp.key_file.clone(),
            },
            role: Role::Operator,
        }
    }

    /// The same names, declared as `role` needs them.
    pub fn for_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The direct work exchange.
    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }

    /// The fanout dead-letter exchange (and its queue, of the same name).
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// A work queue.
    pub fn work_queue(&self, work: Work) -> String {
        format!("{}.{}", self.prefix, work.key())
    }

    /// A retry-tier queue, named by its delay in whole seconds.
    pub fn retry_queue(&self, work: Work, tier: usize) -> Option<String> {
        let delay = self.retry_delays.get(tier)?;
        Some(format!(
            "{}.{}.retry.{}s",
            self.prefix,
            work.key(),
            delay.as_secs()
        ))
    }

    /// The exclusive queue the running producer holds (declared by the producer only).
    pub fn lock_queue(&self) -> String {
        format!("{}.producer.lock", self.prefix)
    }

    /// The quorum queue of requests for the producer that holds the lock (`jst2kd backfill`).
    pub fn control_queue(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// The stream of outcome events (`jst2kd trace`, `jst2kd reconcile`).
    pub fn events_stream(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Every queue name this topology declares (not the producer's lock).
    pub fn all_queues(&self) -> Vec<String> {
        let mut names = vec![self.dead(), self.control_queue(), self.events_stream()];
        for work in Work::ALL {
            names.push(self.work_queue(work));
            names.extend((0..self.retry_delays.len()).filter_map(|t| self.retry_queue(work, t)));
        }
        names
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A work queue, through the work exchange.
    Work(Work),
    /// A retry tier of a work queue (0-based), through the default exchange.
    Retry(Work, usize),
    /// The dead-letter exchange.
    Dead,
    /// The outcome log's stream, through the default exchange.
    Events,
}

/// A message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Target.
    pub destination: Destination,
    /// `message_id` property.
    pub message_id: String,
    /// Our headers.
    pub headers: Headers,
    /// JSON body.
    pub body: Vec<u8>,
}

/// A failure of the queue layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The broker refused a declaration because an argument differs from the existing queue.
    #[error(
        "queue {queue} exists with other arguments ({detail}); drain it, delete it and start again to re-declare it"
    )]
    TopologyMismatch {
        /// The queue or exchange.
        queue: String,
        /// The broker's words.
        detail: String,
    },
    /// The broker could not be reached or the connection broke.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the message (nack) or could not route it.
    #[error("broker did not accept the message {message_id}: {reason}")]
    NotAccepted {
        /// The message.
        message_id: String,
        /// Nacked, unroutable, …
        reason: String,
    },
    /// Shutting down: the operation was abandoned.
    #[error("shutting down")]
    Cancelled,
    /// A retry tier that does not exist.
    #[error("no retry tier {0}")]
    NoSuchTier(usize),
    /// The message cannot be published as it is: its headers would not fit in one AMQP frame
    /// or its body exceeds what the broker takes. It was not sent, and sending it again would
    /// fail again (the broker closes the connection over an oversized frame), so it is never
    /// retried as it is.
    #[error("message {message_id} is too large to publish: {what}")]
    TooLarge {
        /// The message.
        message_id: String,
        /// Which part, how large, against which limit.
        what: String,
    },
}

/// The frame size RabbitMQ offers by default (`frame_max`, 128 KiB); the in-process queue
/// enforces it too, so both implementations refuse the same messages.
pub const DEFAULT_FRAME_MAX: usize = 131_072;

/// The largest body RabbitMQ accepts by default (`max_message_size`, 128 MiB).
pub const BROKER_MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Room in a content-header frame beside the headers: the frame's own overhead and the other
/// properties (message id, content type, delivery mode, …).
const HEADER_FRAME_RESERVE: usize = 1024;

/// Checks that a message can be published: its properties fit in one frame of `frame_max`
/// bytes (a content header cannot be split; the broker closes the connection over a larger
/// one) and its body is within the broker's message size.
pub fn check_size(message: &Outgoing, frame_max: usize) -> Result<(), QueueError> {
    // The id as an error may show it: escaped, and short.
    let too_large = |what: String| QueueError::TooLarge {
        message_id: crate::http::escape(&crate::settle::truncate(&message.message_id, 200)),
        what,
    };
    // AMQP short strings: longer ones cannot be encoded at all (lapin would panic).
    if message.message_id.len() > 255 {
        return Err(too_large("a message id over 255 bytes".into()));
    }
    if let Some(name) = message.headers.keys().find(|n| n.len() > 255) {
        return Err(too_large(format!(
            "a header name over 255 bytes ({}…)",
            crate::http::escape(&crate::settle::truncate(name, 40))
        )));
    }
    let headers = encoded_headers_len(&message.headers) + message.message_id.len();
    if headers + HEADER_FRAME_RESERVE > frame_max {
        return Err(too_large(format!(
            "headers of {headers} bytes do not fit in a frame of {frame_max}"
        )));
    }
    if message.body.len() > BROKER_MAX_MESSAGE_BYTES {
        return Err(too_large(format!(
            "body of {} bytes is over the broker's {BROKER_MAX_MESSAGE_BYTES}",
            message.body.len()
        )));
    }
    Ok(())
}

/// The size of headers encoded as an AMQP field table, as the RabbitMQ adapter encodes them
/// (text as long strings, integers as 64-bit, lists as arrays, objects as tables).
pub fn encoded_headers_len(headers: &crate::messages::Headers) -> usize {
    4 + headers
        .iter()
        .map(|(name, value)| encoded_header_len(name, value))
        .sum::<usize>()
}

/// One table entry: the name as a short string, then the typed value.
pub fn encoded_header_len(name: &str, value: &serde_json::Value) -> usize {
    1 + name.len() + encoded_value_len(value)
}

fn encoded_value_len(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    1 + match value {
        Value::String(s) => 4 + s.len(),
        Value::Number(n) if n.is_i64() => 8,
        Value::Bool(_) => 1,
        Value::Array(items) => 4 + items.iter().map(encoded_value_len).sum::<usize>(),
        Value::Object(map) => {
            4 + map
                .iter()
                .map(|(k, v)| encoded_header_len(k, v))
                .sum::<usize>()
        }
        other => 4 + other.to_string().len(),
    }
}

/// How a delivery is settled with the broker.
pub(crate) enum Acker {
    Memory(memory::MemoryAcker),
    Rabbit(rabbit::RabbitAcker),
}

/// A message received from a work queue.
///
/// Settle it with [`Delivery::ack`] or [`Delivery::requeue`]; one dropped unsettled (a bug, a
/// panic in its task) is requeued, so its prefetch slot is never lost.
pub struct Delivery {
    /// `message_id` property, when set.
    pub message_id: Option<String>,
    /// Headers (ours and the broker's).
    pub headers: Headers,
    /// Body bytes.
    pub body: Vec<u8>,
    /// The broker delivered it before.
    pub redelivered: bool,
    acker: Option<Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("redelivered", &self.redelivered)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Delivery {
    pub(crate) fn new(
        message_id: Option<String>,
        headers: Headers,
        body: Vec<u8>,
        redelivered: bool,
        acker: Acker,
    ) -> Self {
        Self {
            message_id,
            headers,
            body,
            redelivered,
            acker: Some(acker),
        }
    }

    /// Done with it: the broker forgets it.
    pub async fn ack(mut self) -> Result<(), QueueError> {
        match self.acker.take() {
            Some(Acker::Memory(a)) => {
                a.ack();
                Ok(())
            }
            Some(Acker::Rabbit(a)) => a.ack().await,
            None => Ok(()),
        }
    }

    /// Give it back to the queue for another try (counts toward the delivery limit).
    pub async fn requeue(mut self) -> Result<(), QueueError> {
        match self.acker.take() {
            Some(Acker::Memory(a)) => {
                a.requeue();
                Ok(())
            }
            Some(Acker::Rabbit(a)) => a.requeue().await,
            None => Ok(()),
        }
    }

    /// Requeues after a pause: a publish that just failed (broker briefly refusing) would fail
    /// again at once, and immediate redeliveries would use up the delivery limit in
    /// milliseconds. Holding the delivery meanwhile also slows the consumer down.
    pub async fn requeue_after(self, pause: std::time::Duration) -> Result<(), QueueError> {
        tokio::time::sleep(pause).await;
        self.requeue().await
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        match self.acker.take() {
            None => {}
            // The in-process acker requeues itself on drop.
            Some(Acker::Memory(a)) => drop(a),
            Some(Acker::Rabbit(a)) => a.requeue_detached(),
        }
    }
}

/// A connection to a broker, cheap to clone.
#[derive(Clone)]
pub enum Broker {
    /// In-process.
    Memory(memory::MemoryBroker),
    /// RabbitMQ.
    Rabbit(rabbit::RabbitBroker),
}

impl Broker {
    /// The names this broker uses.
    pub fn topology(&self) -> &Topology {
        match self {
            Broker::Memory(b) => b.topology(),
            Broker::Rabbit(b) => b.topology(),
        }
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: Outgoing) -> Result<(), QueueError> {
        match self {
            Broker::Memory(b) => b.publish(message),
            Broker::Rabbit(b) => b.publish_all(vec![message]).await,
        }
    }

    /// Publishes several messages and waits until every one is confirmed.
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        match self {
            Broker::Memory(b) => messages.into_iter().try_for_each(|m| b.publish(m)),
            Broker::Rabbit(b) => b.publish_all(messages).await,
        }
    }

    /// Starts consuming a work queue with at most `prefetch` unsettled deliveries.
    pub async fn consume(&self, work: Work, prefetch: u16) -> Result<Consumer, QueueError> {
        match self {
            Broker::Memory(b) => Ok(Consumer::Memory(b.consume(work, prefetch))),
            Broker::Rabbit(b) => Ok(Consumer::Rabbit(Box::new(b.consume(work, prefetch).await?))),
        }
    }

    /// Messages waiting in a work queue (ready ones; the in-process queue counts unsettled and
    /// delayed ones too).
    pub async fn depth(&self, work: Work) -> Result<u64, QueueError> {
        match self {
            Broker::Memory(b) => Ok(b.depth(work)),
            Broker::Rabbit(b) => b.depth(work).await,
        }
    }

    /// The failure that stopped the broker for good (a topology changed under a running
    /// worker): the stage returns it so that the process exits 2.
    pub fn fatal(&self) -> Option<QueueError> {
        match self {
            Broker::Memory(_) => None,
            Broker::Rabbit(b) => b.fatal(),
        }
    }

    /// True while connected with the topology declared.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Rabbit(b) => b.is_ready(),
        }
    }

    /// One attempt to connect again when the connection is lost for good (no publish or
    /// consumer may ask for one soon: a producer between polls).
    pub async fn reconnect(&self) -> Result<(), QueueError> {
        match self {
            Broker::Memory(_) => Ok(()),
            Broker::Rabbit(b) => b.reconnect().await,
        }
    }

    /// Dead letters waiting for a person.
    pub async fn dead_depth(&self) -> Result<u64, QueueError> {
        match self {
            Broker::Memory(b) => Ok(b.dead_letters().len() as u64),
            Broker::Rabbit(b) => b.dead_depth().await,
        }
    }

    /// Closes the connection after outstanding confirms.
    pub async fn close(&self) {
        match self {
            Broker::Memory(_) => {}
            Broker::Rabbit(b) => b.close().await,
        }
    }
}

/// A stream of deliveries from one work queue.
pub enum Consumer {
    /// In-process.
    Memory(memory::MemoryConsumer),
    /// RabbitMQ (recovers from connection loss on its own).
    Rabbit(Box<rabbit::RabbitConsumer>),
}

impl Consumer {
    /// The next delivery; `None` once the consumer was cancelled or the broker closed for good.
    pub async fn next(&mut self) -> Option<Delivery> {
        match self {
            Consumer::Memory(c) => c.next().await,
            Consumer::Rabbit(c) => c.next().await,
        }
    }

    /// Stops receiving; unsettled deliveries can still be settled.
    pub async fn cancel(&mut self) {
        match self {
            Consumer::Memory(c) => c.cancel(),
            Consumer::Rabbit(c) => c.cancel().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        let t = Topology::from_config(&AmqpConfig::default());
        assert_eq!(t.exchange(), "jst2kd");
        assert_eq!(t.dead(), "jst2kd.dead");
        assert_eq!(t.work_queue(Work::Counts), "jst2kd.counts");
        assert_eq!(
            t.retry_queue(Work::Bills, 2).as_deref(),
            Some("jst2kd.bills.retry.120s")
        );
        assert_eq!(t.retry_queue(Work::Bills, 4), None);
        assert_eq!(t.all_queues().len(), 13);
        assert_eq!(t.events_stream(), "jst2kd.events");
        assert_eq!(t.control_queue(), "jst2kd.control");
        assert_eq!(t.lock_queue(), "jst2kd.producer.lock");
    }
}
