//! The control queue `{prefix}.control`: requests for the producer that holds the lock
//! (`jst2kd backfill`), and their replies.
//!
//! Both ends live on connections **without** automatic recovery, like the lock:
//! - The holder reads requests with `basic.get` on a channel of the lock's connection, one at a
//!   time and only between its own polls, so no request waits unacknowledged in a prefetch
//!   buffer while the producer polls (RabbitMQ closes a channel whose delivery stays
//!   unacknowledged past `consumer_timeout`, 30 minutes by default). A request that was taken
//!   but not finished when the lock's connection dropped goes back to the queue for the next
//!   holder.
//! - The requester's replies arrive in an exclusive, server-named queue of its own connection:
//!   when the requester goes away, so does the queue, and the holder's next reply comes back
//!   unroutable (`mandatory`), which tells it to stop. A recovering connection would declare a
//!   queue of another name and never hear from the holder again, hence no recovery.

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use super::*;

/// A request on the control queue (persistent JSON, like every message of ours).
#[derive(Clone, Debug)]
pub struct ControlMessage {
    /// `message_id` property.
    pub message_id: String,
    /// Our headers (`jst2kd-schema`).
    pub headers: Headers,
    /// JSON body.
    pub body: Vec<u8>,
}

impl ControlMessage {
    fn properties(&self) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(self.message_id.clone().into())
            .with_headers(to_table(&self.headers))
    }
}

/// What became of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replied {
    /// The requester's queue took it.
    Delivered,
    /// The requester's queue is gone (it stopped, or its connection dropped).
    Gone,
}

/// The lock holder's side: takes requests, answers their requesters, and puts a request back
/// with its progress. Its channel is opened again when the broker closed it (a channel error
/// leaves the connection, and so the lock, in place).
pub struct ControlServer {
    connection: Arc<Connection>,
    channel: Mutex<Channel>,
    queue: String,
}

impl ControlServer {
    /// A channel in confirm mode on the lock's `connection`.
    pub(super) async fn open(
        connection: Arc<Connection>,
        queue: String,
    ) -> Result<Self, QueueError> {
        let channel = confirming_channel(&connection).await?;
        Ok(Self {
            connection,
            channel: Mutex::new(channel),
            queue,
        })
    }

    /// The channel, opened again when the broker closed the last one.
    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut channel = self.channel.lock().await;
        if !channel.status().connected() {
            *channel = confirming_channel(&self.connection).await?;
        }
        Ok(channel.clone())
    }

    /// The next request, if one waits. Settle it: ack when done with it, or requeue (a
    /// `Delivery` dropped unsettled is requeued).
    pub async fn next(&self) -> Result<Option<Delivery>, QueueError> {
        let got = self
            .channel()
            .await?
            .basic_get(self.queue.clone().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(unavailable)?;
        Ok(got.map(|message| {
            let acker = super::RabbitAcker::single(message.delivery.acker.clone());
            super::consumer::convert(message.delivery, acker)
        }))
    }

    /// Sends `body` to the requester's queue `to` and waits for the broker's confirm.
    pub async fn reply(&self, to: &str, id: &str, body: Vec<u8>) -> Result<Replied, QueueError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(id.to_string().into());
        match self.publish(to, &body, properties).await? {
            Confirmation::Ack(Some(_)) => Ok(Replied::Gone),
            _ => Ok(Replied::Delivered),
        }
    }

    /// Puts `message` (a request with its progress) at the tail of the control queue,
    /// persistent, and waits for the confirm; the caller then acks the request it replaces.
    pub async fn put_back(&self, message: &ControlMessage) -> Result<(), QueueError> {
        match self
            .publish(&self.queue, &message.body, message.properties())
            .await?
        {
            Confirmation::Ack(None) => Ok(()),
            _ => Err(QueueError::NotAccepted {
                message_id: message.message_id.clone(),
                reason: format!("the control queue {} did not take it", self.queue),
            }),
        }
    }

    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirmation, QueueError> {
        let confirm = self
            .channel()
            .await?
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await
            .map_err(unavailable)?;
        match confirm.await.map_err(unavailable)? {
            Confirmation::Nack(_) => Err(QueueError::NotAccepted {
                message_id: queue.to_string(),
                reason: "nacked by the broker".into(),
            }),
            other => Ok(other),
        }
    }
}

async fn confirming_channel(connection: &Connection) -> Result<Channel, QueueError> {
    let channel = connection.create_channel().await.map_err(unavailable)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok(channel)
}

/// The requester's side: a connection of its own with an exclusive reply queue.
pub struct ControlClient {
    connection: Connection,
    channel: Channel,
    reply_queue: String,
    replies: lapin::Consumer,
    control: String,
}

impl ControlClient {
    /// Connects once, declares the topology (the control queue among it) and a reply queue.
    pub async fn connect(
        url: &Secret,
        connection_name: &str,
        topology: &Topology,
    ) -> Result<Self, QueueError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(connection_name.to_string().into());
        let connection = connect_first(url, &topology.tls, properties)
            .await
            .map_err(QueueError::Unavailable)?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        super::topology::declare(&channel, topology).await?;
        let reply = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let reply_queue = reply.name().to_string();
        let replies = channel
            .basic_consume(
                reply_queue.clone().into(),
                format!("{connection_name}-replies").into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        Ok(Self {
            connection,
            channel,
            reply_queue,
            replies,
            control: topology.control_queue(),
        })
    }

    /// The name of the queue replies arrive in.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Puts a request on the control queue, persistent, and waits for the confirm.
    pub async fn request(&self, message: &ControlMessage) -> Result<(), QueueError> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.control.clone().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &message.body,
                message.properties(),
            )
            .await
            .map_err(unavailable)?;
        match confirm.await.map_err(unavailable)? {
            Confirmation::Ack(None) => Ok(()),
            _ => Err(QueueError::NotAccepted {
                message_id: message.message_id.clone(),
                reason: format!("the control queue {} did not take it", self.control),
            }),
        }
    }

    /// The next reply's body; `None` once the connection is gone. Cancel-safe.
    pub async fn next_reply(&mut self) -> Option<Vec<u8>> {
        match self.replies.next().await {
            Some(Ok(delivery)) => Some(delivery.data),
            Some(Err(_)) | None => None,
        }
    }

    /// Closes the connection: the reply queue goes with it, which tells the holder to stop.
    pub async fn close(self) {
        self.connection.close(200, "done".into()).await.ok();
    }
}
