//! The transformer stage: consumes count documents, maps each to zero or more bills, publishes
//! them, and acks the document.
//!
//! Invariant: a document is acked only after its bills were confirmed by the broker, after it
//! was counted as skipped, or after its dead letter was confirmed. A crash anywhere before the
//! ack redelivers the document; its bills are then published again with the same bill numbers,
//! which the loader recognises as duplicates.

pub mod mapping;

use common::config::MappingConfig;
use common::messages::{self, BillMessage, header};
use common::queue::{Broker, Delivery, Destination, Outgoing, QueueError, Work};
use common::settle::{DeadReason, Settler};
use common::telemetry::{DeadKind, Stage};
use common::worker::{Context, InFlight};
use serde_json::Value;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use mapping::{MapError, Mapped, SkipReason, map_document};

/// Consumes `{prefix}.counts` until `ctx.cancel` fires, then finishes what it holds.
pub async fn run(
    config: &MappingConfig,
    prefetch: u16,
    broker: Broker,
    ctx: Context,
) -> Result<(), QueueError> {
    let mut consumer = broker.consume(Work::Counts, prefetch).await?;
    let settler = Settler::new(
        broker.clone(),
        ctx.metrics.clone(),
        Stage::Transformer,
        Work::Counts,
    );
    info!(queue = %broker.topology().work_queue(Work::Counts), prefetch, "Transformer consuming.");
    // This stage's own tasks, awaited before it returns (the context's tracker outlives it).
    let tasks = TaskTracker::new();
    loop {
        let delivery = tokio::select! {
            () = ctx.cancel.cancelled() => break,
            d = consumer.next() => match d {
                Some(d) => d,
                None => break,
            },
        };
        let guard = InFlight::start(&ctx);
        ctx.metrics
            .consumed
            .with_label_values(&[Stage::Transformer.as_str()])
            .inc();
        let (broker, settler, config, ctx2) =
            (broker.clone(), settler.clone(), config.clone(), ctx.clone());
        tasks.spawn(async move {
            handle(delivery, &config, &broker, &settler, &ctx2).await;
            drop(guard);
        });
    }
    consumer.cancel().await;
    tasks.close();
    tasks.wait().await;
    info!("Transformer stopped consuming; every held document was settled.");
    broker.fatal().map_or(Ok(()), Err)
}

/// Settles one document.
async fn handle(
    delivery: Delivery,
    config: &MappingConfig,
    broker: &Broker,
    settler: &Settler,
    ctx: &Context,
) {
    let raw: Value = match serde_json::from_slice(&delivery.body) {
        Ok(v) => v,
        Err(e) => {
            warn!(message_id = delivery.message_id.as_deref().unwrap_or(""), error = %e, "Unreadable count document; dead-lettering it.");
            let reason = DeadReason::new(DeadKind::Malformed, format!("body is not JSON: {e}"));
            settler.dead_letter(delivery, reason).await.ok();
            return;
        }
    };
    let io_id = messages::int_field(raw.get("io_id")).unwrap_or_default();
    match map_document(&raw, config) {
        Ok(Mapped::Skipped(reason)) => {
            debug!(io_id, reason = reason.as_str(), "Document skipped.");
            if delivery.ack().await.is_ok() {
                ctx.metrics
                    .skipped
                    .with_label_values(&[Stage::Transformer.as_str(), reason.as_str()])
                    .inc();
            }
        }
        Ok(Mapped::Bills(bills)) => publish_bills(delivery, bills, broker, ctx, io_id).await,
        Err(err) => {
            let kind = match err {
                MapError::Malformed(_) => DeadKind::Malformed,
                MapError::Mapping(_) => DeadKind::Mapping,
            };
            warn!(io_id, kind = kind.as_str(), error = %err, "Document cannot be mapped; dead-lettering it.");
            let reason = DeadReason::new(kind, err.to_string());
            settler.dead_letter(delivery, reason).await.ok();
        }
    }
}

async fn publish_bills(
    delivery: Delivery,
    bills: Vec<BillMessage>,
    broker: &Broker,
    ctx: &Context,
    io_id: i64,
) {
    let mut outgoing = Vec::with_capacity(bills.len());
    for bill in &bills {
        let mut headers = messages::Headers::new();
        headers.insert(header::SCHEMA.into(), messages::SCHEMA_BILL.into());
        for copied in [header::TRACEPARENT, header::PUBLISHED_AT] {
            if let Some(v) = delivery.headers.get(copied) {
                headers.insert(copied.into(), v.clone());
            }
        }
        let body = match serde_json::to_vec(bill) {
            Ok(b) => b,
            Err(e) => {
                // Serialising our own struct cannot fail; if it ever does, try again later.
                warn!(io_id, error = %e, "Cannot encode a bill; requeueing the document.");
                delivery
                    .requeue_after(common::settle::REQUEUE_PAUSE)
                    .await
                    .ok();
                return;
            }
        };
        outgoing.push(Outgoing {
            destination: Destination::Work(Work::Bills),
            message_id: bill.bill_no.clone(),
            headers,
            body,
        });
    }
    let count = outgoing.len() as u64;
    match broker.publish_all(outgoing).await {
        Ok(()) => {
            ctx.metrics
                .published
                .with_label_values(&[Stage::Transformer.as_str(), "bills"])
                .inc_by(count);
            let bill_nos: Vec<&str> = bills.iter().map(|b| b.bill_no.as_str()).collect();
            debug!(io_id, bill_no = ?bill_nos, "Bills published.");
            if let Err(e) = delivery.ack().await {
                warn!(io_id, error = %e, "Bills are published but the document could not be acked; it will come again and its bills be seen as duplicates.");
            }
        }
        Err(e) => {
            warn!(io_id, error = %e, "Cannot publish the bills; requeueing the document.");
            delivery
                .requeue_after(common::settle::REQUEUE_PAUSE)
                .await
                .ok();
        }
    }
}
