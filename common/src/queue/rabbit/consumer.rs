//! Deliveries from one work queue, on a channel of its own, rebuilt when recovery fails.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tracing::warn;

use super::acker::AckWindow;
use super::*;

pub(super) struct ConsumerState {
    channel: Channel,
    stream: lapin::Consumer,
    /// The unsettled deliveries of this channel, whose acks go out together where they can.
    window: AckWindow,
    /// The tag of the last delivery registered in `window`.
    last_tag: u64,
    /// The connection the channel is on (kept: a connection the supervisor replaced while it
    /// still worked goes on serving this consumer until it fails).
    connection: Arc<lapin::Connection>,
}

/// Deliveries from one work queue, on a channel of its own; rebuilt when recovery fails.
pub struct RabbitConsumer {
    pub(super) broker: RabbitBroker,
    pub(super) work: Work,
    pub(super) prefetch: u16,
    pub(super) tag: String,
    pub(super) state: Option<ConsumerState>,
    pub(super) cancelled: bool,
}

impl RabbitConsumer {
    pub(super) async fn start(&mut self) -> Result<(), QueueError> {
        let (channel, connection) = self.broker.channel_on().await?;
        let queue = self.broker.inner.topology.work_queue(self.work);
        let consuming = async {
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            channel
                .basic_consume(
                    queue.into(),
                    self.tag.clone().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        // Bounded like the channel: a connection RabbitMQ stopped reading answers nothing.
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, consuming).await {
            Ok(consumer) => consumer.map_err(unavailable)?,
            Err(_) => {
                tokio::spawn(async move {
                    let closing = channel.close(200, "no answer".into());
                    tokio::time::timeout(CONNECT_TIMEOUT, closing).await.ok();
                });
                return Err(QueueError::Unavailable(format!(
                    "RabbitMQ did not start the consumer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        self.state = Some(ConsumerState {
            channel,
            stream,
            window: AckWindow::start(),
            last_tag: 0,
            connection,
        });
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
            // Without lapin's recovery (several nodes), a connection closed by the broker can
            // leave the consumer's stream silent instead of ended (seen after RabbitMQ closed a
            // connection with INTERNAL_ERROR while a node was lost): once the consumer's own
            // connection is closed or failed, consume again on a new one.
            let watched = (!self.broker.lapin_recovers()).then(|| state.connection.clone());
            let stuck = state.window.stuck();
            // Both checked now as well as every second while waiting: a caller that stops
            // waiting for `next` sooner (the loader's linger) would otherwise never let the
            // check run.
            if stuck.load(Ordering::SeqCst) {
                // Acks no longer leave: closing the channel hands everything unacknowledged on
                // it back to the broker, which redelivers it on the new one.
                warn!(
                    queue = self.work.key(),
                    "Acks on the consumer's channel stopped leaving; consuming again on a new channel."
                );
                let channel = state.channel.clone();
                tokio::spawn(async move {
                    let closing = channel.close(200, "acks stalled".into());
                    tokio::time::timeout(Duration::from_secs(10), closing)
                        .await
                        .ok();
                });
                self.state = None;
                continue;
            }
            if watched
                .as_ref()
                .is_some_and(|connection| !connection.status().connected())
            {
                warn!(
                    queue = self.work.key(),
                    "The consumer's connection is gone; consuming again on a new connection."
                );
                self.state = None;
                continue;
            }
            let gone = async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let lost = watched
                        .as_ref()
                        .is_some_and(|connection| !connection.status().connected());
                    if lost || stuck.load(Ordering::SeqCst) {
                        return;
                    }
                }
            };
            let next = tokio::select! {
                next = state.stream.next() => next,
                // The checks above say which, and start again.
                () = gone => continue,
            };
            match next {
                Some(Ok(delivery)) => {
                    let tag = delivery.delivery_tag;
                    if tag <= state.last_tag {
                        // A recovered channel numbers its deliveries from 1 again; the
                        // deliveries of the old one are the broker's to redeliver.
                        state.window = AckWindow::start();
                    }
                    state.last_tag = tag;
                    state.window.arrived(tag);
                    let acker = RabbitAcker::windowed(delivery.acker.clone(), &state.window, tag);
                    return Some(convert(delivery, acker));
                }
                Some(Err(err)) if !self.broker.lapin_recovers() => {
                    // Several nodes: no recovery to wait for (it could wait forever); consume
                    // again on the connection the supervisor builds on another node.
                    warn!(queue = self.work.key(), error = %err, "Consumer interrupted; consuming again on a new connection.");
                    self.state = None;
                    tokio::select! {
                        () = self.broker.inner.cancel.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
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
        // Once: a stage stops consuming, then its shutdown tail makes sure it did.
        if std::mem::replace(&mut self.cancelled, true) {
            return;
        }
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
pub(super) fn id_and_headers(properties: &BasicProperties) -> (Option<String>, Headers) {
    let message_id = properties.message_id().as_ref().map(|m| m.to_string());
    let headers = properties
        .headers()
        .as_ref()
        .map(from_table)
        .unwrap_or_default();
    (message_id, headers)
}

/// Our delivery of lapin's, settled through `acker`.
pub(super) fn convert(delivery: lapin::message::Delivery, acker: RabbitAcker) -> Delivery {
    let (message_id, headers) = id_and_headers(&delivery.properties);
    Delivery::new(
        message_id,
        headers,
        delivery.data,
        delivery.redelivered,
        Acker::Rabbit(acker),
    )
}
