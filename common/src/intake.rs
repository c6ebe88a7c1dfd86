//! What every consuming stage (transformer, loader) does around its own work: consume a work
//! queue, count each delivery in, keep it in flight until settled, dead-letter a body over
//! `amqp.max_message_bytes` unread, and on shutdown stop consuming, wait for the stage's own
//! tasks and report a broker failure.
//!
//! Invariant: [`Intake::finish`] returns only after every task the stage spawned on
//! [`Intake::tasks`] has ended, so nothing it took is left unsettled when the stage returns
//! (what could not settle is redelivered by the broker).

use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info};

use crate::events::StageEvents;
use crate::queue::{Broker, Consumer, Delivery, QueueError, Work};
use crate::settle::Settler;
use crate::telemetry::Stage;
use crate::worker::{Context, InFlight, WorkerError};

/// A stage's consumer, its settler and its tasks.
pub struct Intake {
    consumer: Consumer,
    settler: Settler,
    tasks: TaskTracker,
    broker: Broker,
    stage: Stage,
    ctx: Context,
}

impl Intake {
    /// Starts consuming `work` with `prefetch` unsettled deliveries at most.
    pub async fn open(
        broker: &Broker,
        stage: Stage,
        work: Work,
        prefetch: u16,
        ctx: &Context,
    ) -> Result<Self, QueueError> {
        let consumer = broker.consume(work, prefetch).await?;
        let settler = Settler::new(broker.clone(), StageEvents::new(&ctx.metrics, stage), work);
        info!(stage = stage.as_str(), queue = %broker.topology().work_queue(work), prefetch, "Consuming.");
        Ok(Self {
            consumer,
            settler,
            // The stage's own tasks, awaited before it returns (the context's outlive it).
            tasks: TaskTracker::new(),
            broker: broker.clone(),
            stage,
            ctx: ctx.clone(),
        })
    }

    /// Sends failures to retry tiers or the dead letters.
    pub fn settler(&self) -> &Settler {
        &self.settler
    }

    /// Where the stage spawns the work it does per delivery or batch.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The next delivery; `None` once shutdown began or the consumer ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<Delivery> {
        tokio::select! {
            () = self.ctx.cancel.cancelled() => None,
            d = self.consumer.next() => d,
        }
    }

    /// Counts a delivery in and keeps it in flight; one whose body is over
    /// `amqp.max_message_bytes` is dead-lettered `too_large` here, unread, and `None` returned.
    pub async fn admit(&self, delivery: Delivery) -> Option<(Delivery, InFlight)> {
        let in_flight = InFlight::start(&self.ctx);
        self.settler.events().consumed();
        if let Some(reason) = self.settler.oversized(&delivery) {
            // Unread, but still in its document's trace.
            let span = crate::trace_span!(parent: None, "oversized");
            crate::traces::continue_from(&span, &delivery.headers);
            self.settler
                .dead_letter(delivery, reason)
                .instrument(span)
                .await
                .ok();
            return None;
        }
        Some((delivery, in_flight))
    }

    /// Stops deliveries; those received can still be settled.
    pub async fn stop(&mut self) {
        self.consumer.cancel().await;
    }

    /// Waits for the stage's tasks, then reports a failure that stopped the broker for good.
    pub async fn finish(mut self) -> Result<(), WorkerError> {
        self.consumer.cancel().await;
        self.tasks.close();
        self.tasks.wait().await;
        info!(
            stage = self.stage.as_str(),
            "Stopped consuming; every message held was settled."
        );
        self.broker
            .fatal()
            .map_or(Ok(()), |e| Err(WorkerError::Queue(e)))
    }
}
