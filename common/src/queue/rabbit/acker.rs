//! Settling one RabbitMQ delivery: ack, or nack with requeue.
//!
//! lapin answers `Ok(false)` when it did not send the ack (the channel was recovered or closed
//! meanwhile): the broker will redeliver, so for us it is a failure.

use lapin::options::{BasicAckOptions, BasicNackOptions};

use super::QueueError;

/// The acker of one delivery.
pub struct RabbitAcker(pub(super) lapin::Acker);

fn sent(result: Result<bool, lapin::Error>) -> Result<(), QueueError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(QueueError::Unavailable(
            "the channel of this delivery is gone; the broker will redeliver it".into(),
        )),
        Err(e) => Err(QueueError::Unavailable(e.to_string())),
    }
}

const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

impl RabbitAcker {
    /// The broker forgets the delivery.
    pub async fn ack(self) -> Result<(), QueueError> {
        sent(self.0.ack(BasicAckOptions::default()).await)
    }

    /// The delivery goes back to its queue (counting toward the delivery limit).
    pub async fn requeue(self) -> Result<(), QueueError> {
        sent(self.0.nack(REQUEUE).await)
    }

    /// Requeues from a `Drop`: on the current runtime, without waiting.
    pub fn requeue_detached(self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                self.0.nack(REQUEUE).await.ok();
            });
        }
    }
}
