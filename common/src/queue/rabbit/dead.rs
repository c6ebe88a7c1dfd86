//! Reading the dead letters in place: held unacked on a consumer, given back in order.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::*;
use lapin::types::FieldTable;

use super::consumer::id_and_headers;
use super::*;

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
        let channel = self.channel().await?;
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
