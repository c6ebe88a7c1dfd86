//! The transformer stage: consumes count documents, maps each to zero or more bills, publishes
//! them, and acks the document.
//!
//! Invariant: a document is acked only after its bills were confirmed by the broker, after it
//! was counted as skipped, or after its dead letter was confirmed. A crash anywhere before the
//! ack redelivers the document; its bills are then published again with the same bill numbers,
//! which the loader recognises as duplicates.

mod config;
pub mod events;
pub mod mapping;

use common::intake::Intake;
use common::messages::{self, CountDoc, header};
use common::queue::{Broker, Delivery, Destination, Outgoing, QueueError, Role, Work};
use common::settle::{DeadReason, Settler};
use common::telemetry::{DeadKind, Stage};
use common::worker::{self, Context, WorkerError};
use serde_json::Value;
use tracing::{Instrument as _, warn};

pub use config::{Config, Gains, LossSign, MappingConfig, Warehouse};
use events::TransformerEvents;
pub use mapping::{MapError, Mapped, Parts, Plan, SkipReason, map_document};

/// The transformer process: connects to RabbitMQ, runs the stage, closes the connection.
pub async fn start(config: Config, ctx: Context) -> Result<(), WorkerError> {
    let broker =
        worker::connect_rabbit(&config.amqp, "jst2kd-transformer", Role::Transformer, &ctx).await?;
    let result = run(&config.mapping, broker.clone(), ctx.clone()).await;
    worker::close(&broker, &ctx).await;
    result
}

/// Consumes `{prefix}.counts` until `ctx.cancel` fires, then finishes what it holds.
pub async fn run(config: &MappingConfig, broker: Broker, ctx: Context) -> Result<(), WorkerError> {
    let prefetch = broker.topology().prefetch;
    let mut intake =
        Intake::open(&broker, Stage::Transformer, Work::Counts, prefetch, &ctx).await?;
    let events = TransformerEvents::new(&ctx.metrics);
    while let Some(delivery) = intake.next().await {
        let Some((delivery, in_flight)) = intake.admit(delivery).await else {
            continue;
        };
        let (broker, settler, config, events) = (
            broker.clone(),
            intake.settler().clone(),
            config.clone(),
            events.clone(),
        );
        // The document's span in its trace (a child of the producer's publish span).
        let span = common::trace_span!(parent: None, "map", io_id = tracing::field::Empty, message_id = delivery.message_id.as_deref().unwrap_or(""));
        common::traces::continue_from(&span, &delivery.headers);
        intake.tasks().spawn(
            async move {
                handle(delivery, &config, &broker, &settler, &events).await;
                drop(in_flight);
            }
            .instrument(span),
        );
    }
    intake.finish().await
}

/// Settles one document.
async fn handle(
    delivery: Delivery,
    config: &MappingConfig,
    broker: &Broker,
    settler: &Settler,
    events: &TransformerEvents,
) {
    let raw: Value = match serde_json::from_slice(&delivery.body) {
        Ok(v) => v,
        Err(e) => {
            let reason = DeadReason::new(DeadKind::Malformed, format!("body is not JSON: {e}"));
            settler.dead_letter(delivery, reason).await.ok();
            return;
        }
    };
    let doc = match CountDoc::from_value(&raw) {
        Ok(doc) => doc,
        Err(e) => {
            let mut reason = DeadReason::new(DeadKind::Malformed, e.to_string());
            if let Some(io_id) = messages::int_field(raw.get("io_id")) {
                reason = reason.of_document(io_id);
            }
            settler.dead_letter(delivery, reason).await.ok();
            return;
        }
    };
    // The typed document is all the mapping needs: the raw one goes before bills are built.
    drop(raw);
    let io_id = doc.io_id;
    tracing::Span::current().record("io_id", io_id);
    match mapping::plan(&doc, config) {
        Ok(Plan::Skipped(reason)) => {
            let message_id = delivery.message_id.clone().unwrap_or_default();
            if delivery.ack().await.is_ok() {
                events.skipped(&message_id, io_id, reason);
            }
        }
        Ok(Plan::Bills(parts)) => {
            publish_bills(delivery, parts, broker, settler, events, io_id).await;
        }
        Err(err) => {
            let kind = match err {
                MapError::Malformed(_) => DeadKind::Malformed,
                MapError::Mapping(_) => DeadKind::Mapping,
            };
            let reason = DeadReason::new(kind, err.to_string()).of_document(io_id);
            settler.dead_letter(delivery, reason).await.ok();
        }
    }
}

/// Bills published and confirmed together: a document in many parts is published a few
/// megabytes at a time, so its bills never all sit in memory at once.
const PUBLISH_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Publishes the bills of one document chunk by chunk, each confirmed, then acks it. When a
/// chunk fails, the document is requeued (or dead-lettered `too_large` when it can never be
/// published); bills published before are harmless duplicates when it comes again.
async fn publish_bills(
    delivery: Delivery,
    parts: Parts<'_>,
    broker: &Broker,
    settler: &Settler,
    events: &TransformerEvents,
    io_id: i64,
) {
    let mut copied = messages::Headers::new();
    for name in [header::TRACEPARENT, header::PUBLISHED_AT] {
        // Both are short by their format; anything longer is not ours to pass on.
        if let Some(v) = delivery.headers.get(name)
            && v.as_str().is_some_and(|t| t.len() <= 128)
        {
            copied.insert(name.into(), v.clone());
        }
    }
    // The bills carry this document's span, so the loader's work joins the trace.
    if let Some(traceparent) = common::traces::traceparent(&tracing::Span::current()) {
        copied.insert(header::TRACEPARENT.into(), traceparent.into());
    }
    let sent_at = chrono::Utc::now();
    let mut bill_nos: Vec<String> = Vec::new();
    let mut chunk: Vec<Outgoing> = Vec::new();
    let mut chunk_bytes = 0;
    let mut parts = parts.peekable();
    while let Some(bill) = parts.next() {
        let body = match serde_json::to_vec(&bill) {
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
        let mut headers = copied.clone();
        headers.insert(header::SCHEMA.into(), messages::SCHEMA_BILL.into());
        chunk_bytes += body.len();
        bill_nos.push(bill.bill_no.clone());
        chunk.push(Outgoing {
            destination: Destination::Work(Work::Bills),
            message_id: bill.bill_no,
            headers,
            body,
        });
        if chunk_bytes < PUBLISH_CHUNK_BYTES && parts.peek().is_some() {
            continue;
        }
        let count = chunk.len();
        chunk_bytes = 0;
        match broker.publish_all(std::mem::take(&mut chunk)).await {
            Ok(()) => events.bills_published(count),
            Err(e @ QueueError::TooLarge { .. }) => {
                // Publishing it again would fail again: dead-letter it, once.
                let reason = DeadReason::new(DeadKind::TooLarge, e.to_string()).of_document(io_id);
                settler.dead_letter(delivery, reason).await.ok();
                return;
            }
            Err(e) => {
                warn!(io_id, error = %e, "Cannot publish the bills; requeueing the document.");
                delivery
                    .requeue_after(common::settle::REQUEUE_PAUSE)
                    .await
                    .ok();
                return;
            }
        }
    }
    events.mapped(
        delivery.message_id.as_deref().unwrap_or(""),
        io_id,
        &bill_nos,
        sent_at,
    );
    if let Err(e) = delivery.ack().await {
        warn!(io_id, error = %e, "Bills are published but the document could not be acked; it will come again and its bills be seen as duplicates.");
    }
}
