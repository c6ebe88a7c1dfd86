//! Reading the outcome log's stream from a point in time (`jst2kd trace`, `reconcile`).
//!
//! A stream is read, not consumed: a consumer names where to start (`x-stream-offset`, here a
//! timestamp) and the broker delivers from there on; its acks only give credit for more.

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

use super::*;

/// How far before the asked time a read starts, for a broker whose clock is behind.
const CLOCK_MARGIN: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Deliveries asked ahead of the reader.
const CREDIT: u16 = 1_000;

/// A reader of `{prefix}.events` on a channel of its own.
pub struct StreamReader {
    channel: Channel,
    consumer: lapin::Consumer,
}

impl RabbitBroker {
    /// Reads the outcome stream from the first event at or after `since`.
    pub async fn read_events(&self, since: DateTime<Utc>) -> Result<StreamReader, QueueError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(CREDIT, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        // The broker stamps chunks with its own clock, which may be behind ours (an Erlang VM
        // corrects a jump of the system clock only slowly: 6 s behind was seen here). Started
        // at `since` itself, a read would then begin after the events it wants and wait for
        // ever; so it starts a margin earlier, and the caller filters by the events' own time.
        let start = since - chrono::Duration::from_std(CLOCK_MARGIN).unwrap_or_default();
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::Timestamp(u64::try_from(start.timestamp()).unwrap_or(0)),
        );
        let consumer = channel
            .basic_consume(
                self.inner.topology.events_stream().into(),
                format!("{}-reader-{}", self.inner.name, rand::random::<u32>()).into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(unavailable)?;
        Ok(StreamReader { channel, consumer })
    }
}

impl StreamReader {
    /// The next event's body; `None` when none came within `wait` (the reader has caught up).
    pub async fn next(&mut self, wait: std::time::Duration) -> Result<Option<Vec<u8>>, QueueError> {
        match tokio::time::timeout(wait, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(QueueError::Unavailable(
                "the stream's consumer was closed".into(),
            )),
            Ok(Some(Err(e))) => Err(unavailable(e)),
            Ok(Some(Ok(delivery))) => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
                Ok(Some(delivery.data))
            }
        }
    }

    /// Stops reading.
    pub async fn close(self) {
        self.channel.close(200, "read".into()).await.ok();
    }
}
