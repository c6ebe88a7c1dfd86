//! The loader stage: gathers bills into batches, saves each batch with one BatchSave per form,
//! and settles every bill by its own result.
//!
//! Invariant: a delivery is acked only after Kingdee answered for its bill (created, or its
//! number already used — the overlap and redeliveries re-send bills, and a bill number is
//! deterministic, so "already used" means "already loaded"), or after the message was
//! re-published, with a broker confirm, to a retry tier or the dead letters. A BatchSave that
//! failed as a whole (timeout, 5xx, unreadable answer) may have committed: its bills are retried,
//! and the retry sees the duplicate and acks.

mod config;
pub mod decide;
pub mod events;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::config::ConfigError;
use common::intake::Intake;
use common::messages::{BillMessage, header, header_text};
use common::queue::{Broker, Delivery, QueueError, Role, Work};
use common::settle::{DeadReason, Settler};
use common::telemetry::{DeadKind, Stage};
use common::worker::{self, Context, InFlight, WorkerError};
use kingdee::{AfterSave, BillError, KingdeeClient, Operation};

pub use config::{Config, LoaderConfig};
pub use decide::{Entry, Settlement};
use events::{LoaderEvents, Settled};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, error, info, warn};

/// A bill read from its delivery.
struct Pending {
    delivery: Delivery,
    bill: BillMessage,
    /// The bill's span in its document's trace, from its arrival to its settlement.
    span: tracing::Span,
    _in_flight: InFlight,
}

/// The loader process: the Kingdee client, RabbitMQ, the stage, and the connection closed.
pub async fn start(config: Config, ctx: Context) -> Result<(), WorkerError> {
    let client = KingdeeClient::new(
        &config.kingdee,
        config.loader.concurrency,
        Some(ctx.metrics.clone()),
    )
    .map_err(|e| WorkerError::Config(ConfigError(e.to_string())))?;
    let broker = worker::connect_rabbit(&config.amqp, "jst2kd-loader", Role::Loader, &ctx).await?;
    let result = run(&config.loader, broker.clone(), client, ctx.clone()).await;
    worker::close(&broker, &ctx).await;
    result
}

/// Consumes `{prefix}.bills` until `ctx.cancel` fires, then flushes its open batch and waits
/// for the BatchSave calls in flight.
pub async fn run(
    config: &LoaderConfig,
    broker: Broker,
    client: KingdeeClient,
    ctx: Context,
) -> Result<(), WorkerError> {
    let prefetch = broker.topology().prefetch;
    // One batch more than run at once: the next batch fills while the others are in Kingdee.
    let wanted = config
        .batch_size
        .saturating_mul(config.concurrency.saturating_add(1));
    let prefetch = prefetch.max(u16::try_from(wanted).unwrap_or(u16::MAX));
    let mut intake = Intake::open(&broker, Stage::Loader, Work::Bills, prefetch, &ctx).await?;
    let events = LoaderEvents::new(&ctx.metrics);
    let settler = intake.settler().clone();
    let tasks = intake.tasks().clone();
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let linger = config.linger.0;
    info!(
        batch_size = config.batch_size,
        concurrency = config.concurrency,
        "Loader batching."
    );
    let mut batch: Vec<Pending> = Vec::with_capacity(config.batch_size);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut batch_entries = 0;
    let quiet = linger.min(QUIET);
    loop {
        // The batch goes when it is full, when `loader.linger` has passed since its first
        // bill, or when no bill came for QUIET: the end of a burst does not wait the linger.
        let linger_over = async {
            match deadline {
                Some(d) => {
                    tokio::time::sleep_until(d.min(tokio::time::Instant::now() + quiet)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = linger_over => {
                // Quiet with every slot busy: the batch keeps filling until one is free or
                // the linger is over.
                let lingered = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
                if lingered || slots.available_permits() > 0 {
                    flush(&mut batch, &slots, &tasks, &client, &settler, &events).await;
                    deadline = None;
                    batch_entries = 0;
                }
            }
            next = intake.next() => {
                let Some(delivery) = next else { break };
                let Some((delivery, in_flight)) = intake.admit(delivery).await else {
                    continue;
                };
                let span = common::trace_span!(
                    parent: None,
                    "load",
                    io_id = tracing::field::Empty,
                    bill_no = tracing::field::Empty,
                    result = tracing::field::Empty,
                );
                common::traces::continue_from(&span, &delivery.headers);
                match BillMessage::from_slice(&delivery.body) {
                    Ok(bill) => {
                        span.record("io_id", bill.source.io_id);
                        span.record("bill_no", bill.bill_no.as_str());
                        batch_entries += bill.entry_count();
                        batch.push(Pending { delivery, bill, span, _in_flight: in_flight });
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    }
                    Err(e) => {
                        let reason = DeadReason::new(DeadKind::Malformed, e.to_string());
                        settler.dead_letter(delivery, reason).instrument(span).await.ok();
                        drop(in_flight);
                    }
                }
                if batch.len() >= config.batch_size || batch_entries >= MAX_CALL_ENTRIES {
                    flush(&mut batch, &slots, &tasks, &client, &settler, &events).await;
                    deadline = None;
                    batch_entries = 0;
                }
            }
        }
    }
    intake.stop().await;
    flush(&mut batch, &slots, &tasks, &client, &settler, &events).await;
    intake.finish().await
}

/// How long an open batch waits for the next bill before it goes (at most `loader.linger`).
/// Bills come in bursts (a producer page, a document's parts): a burst's bills are
/// milliseconds apart and still fill batches, and the last batch of a burst is not held for
/// the whole linger. It adds no call while every `loader.concurrency` slot is busy: the batch
/// then keeps filling until a slot is free or the linger is over.
pub const QUIET: std::time::Duration = std::time::Duration::from_millis(20);

/// Hands the open batch to a BatchSave task once a concurrency slot is free.
async fn flush(
    batch: &mut Vec<Pending>,
    slots: &Arc<Semaphore>,
    tasks: &TaskTracker,
    client: &KingdeeClient,
    settler: &Settler,
    events: &LoaderEvents,
) {
    if batch.is_empty() {
        return;
    }
    let Ok(permit) = slots.clone().acquire_owned().await else {
        return;
    };
    let bills = std::mem::take(batch);
    let (client, settler, events) = (client.clone(), settler.clone(), events.clone());
    tasks.spawn(async move {
        save_batch(bills, &client, &settler, &events).await;
        drop(permit);
    });
}

/// Entries one BatchSave call carries at most (besides at most `loader.batch_size` bills): a
/// batch is flushed when it reaches this many, and a group is split to stay under it, so the
/// memory a call needs is bounded whatever the bills hold. A single bill with more entries
/// goes in a call of its own.
pub const MAX_CALL_ENTRIES: usize = 5_000;

/// Splits bills into consecutive groups of at most [`MAX_CALL_ENTRIES`] entries (a larger
/// bill alone).
fn by_entries(bills: Vec<Pending>) -> Vec<Vec<Pending>> {
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    let mut entries = 0;
    for p in bills {
        let n = p.bill.entry_count();
        match groups.last_mut() {
            Some(group) if entries + n <= MAX_CALL_ENTRIES => {
                group.push(p);
                entries += n;
            }
            _ => {
                groups.push(vec![p]);
                entries = n;
            }
        }
    }
    groups
}

/// One BatchSave per form (and per [`MAX_CALL_ENTRIES`]); every bill settled by its own
/// result.
async fn save_batch(
    bills: Vec<Pending>,
    client: &KingdeeClient,
    settler: &Settler,
    events: &LoaderEvents,
) {
    let mut by_form: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
    for p in bills {
        by_form.entry(p.bill.form_id.clone()).or_default().push(p);
    }
    let mut calls: std::collections::VecDeque<(String, Vec<Pending>)> = by_form
        .into_iter()
        .flat_map(|(form, group)| {
            by_entries(group)
                .into_iter()
                .map(move |g| (form.clone(), g))
        })
        .collect();
    while let Some((form, group)) = calls.pop_front() {
        events.batch(group.len());
        let models: Vec<&serde_json::Value> = group.iter().map(|p| &p.bill.model).collect();
        // One call saves bills of many documents: its span links to each bill's trace.
        let call =
            common::trace_span!(parent: None, "BatchSave", form = %form, bills = group.len());
        for p in &group {
            common::traces::link(&call, &p.span);
        }
        match client.batch_save(&form, &models).instrument(call).await {
            Ok(results) => {
                let mut settled = Vec::with_capacity(group.len());
                let mut duplicates = Vec::new();
                let mut ids = std::collections::HashMap::new();
                for (pending, result) in group.into_iter().zip(results) {
                    if let kingdee::BillResult::Saved { id: Some(id), .. } = &result {
                        ids.insert(pending.bill.bill_no.clone(), *id);
                    }
                    match decide::save(&result, &pending.bill.bill_no) {
                        Settlement::Duplicate => duplicates.push(pending),
                        other => settled.push((pending, other)),
                    }
                }
                settled.extend(check_duplicates(&form, duplicates, client).await);
                let settled = after_save(&form, settled, &ids, client, events).await;
                apply_all(settled, settler, events).await;
            }
            Err(err) if err.is_transient() => {
                // Kingdee may have committed before failing: the bills it holds now are settled
                // here (as duplicates, after after-save), only the others are retried.
                warn!(form = %form, bills = group.len(), error = %err, "BatchSave failed; checking which bills Kingdee committed before retrying the others.");
                let checked = check_saved(&form, group, client, &err.to_string()).await;
                let no_ids = std::collections::HashMap::new();
                let settled = after_save(&form, checked, &no_ids, client, events).await;
                apply_all(settled, settler, events).await;
            }
            Err(kingdee::KingdeeError::Http(kingdee::HTTP_TOO_LARGE)) if group.len() > 1 => {
                // Too large together: each bill on its own, so only the one too large for
                // Kingdee's web server is refused.
                warn!(form = %form, bills = group.len(), "Kingdee refused the call as too large (HTTP 413); saving its bills one by one.");
                for pending in group.into_iter().rev() {
                    calls.push_front((form.clone(), vec![pending]));
                }
            }
            Err(err @ kingdee::KingdeeError::Http(kingdee::HTTP_TOO_LARGE)) => {
                // Sending it again cannot make it smaller.
                let refused = BillError {
                    field_name: None,
                    message: format!(
                        "{err}: the bill is too large for Kingdee's web server; lower mapping.max_entries so documents are split into smaller bills, then replay"
                    ),
                };
                let settled = group
                    .into_iter()
                    .map(|p| (p, Settlement::Rejected(vec![refused.clone()])));
                apply_all(settled, settler, events).await;
            }
            Err(err) => {
                error!(form = %form, bills = group.len(), error = %err, "Kingdee refused the call; check the kingdee section of the configuration. The bills go to a retry tier.");
                let settled = group
                    .into_iter()
                    .map(|p| (p, Settlement::Retry(err.to_string())));
                apply_all(settled, settler, events).await;
            }
        }
    }
}

/// After a failed BatchSave: bills Kingdee holds with the same entries are duplicates, with
/// other entries conflicts; the ones it does not hold are retried with `error`.
async fn check_saved(
    form: &str,
    group: Vec<Pending>,
    client: &KingdeeClient,
    error: &str,
) -> Vec<(Pending, Settlement)> {
    check_duplicates(form, group, client)
        .await
        .into_iter()
        .map(|(p, s)| (p, decide::after_failed_call(s, error)))
        .collect()
}

/// Looks the bills whose number is already used up in Kingdee (one query for the batch) and
/// decides each as a duplicate or a conflict; when the query fails they are retried.
async fn check_duplicates(
    form: &str,
    duplicates: Vec<Pending>,
    client: &KingdeeClient,
) -> Vec<(Pending, Settlement)> {
    if duplicates.is_empty() {
        return Vec::new();
    }
    let numbers: Vec<&str> = duplicates.iter().map(|p| p.bill.bill_no.as_str()).collect();
    match client
        .execute_bill_query(
            form,
            decide::CHECK_FIELDS,
            &decide::bill_no_filter(&numbers),
        )
        .await
    {
        Ok(rows) => {
            let existing = decide::entries_of_rows(&rows);
            duplicates
                .into_iter()
                .map(|p| {
                    let settlement =
                        decide::duplicate(existing.get(&p.bill.bill_no), &p.bill.model);
                    (p, settlement)
                })
                .collect()
        }
        Err(err) => {
            warn!(form, bills = duplicates.len(), error = %err, "Cannot look up bills whose number is used; they go to a retry tier.");
            duplicates
                .into_iter()
                .map(|p| {
                    (
                        p,
                        Settlement::Retry(format!("duplicate check failed: {err}")),
                    )
                })
                .collect()
        }
    }
}

/// Submits (and audits) the bills now in Kingdee, as `kingdee.after_save` asks, before they
/// are acked. A bill whose operation fails transiently is retried (the retry finds it saved
/// and operates again); one Kingdee refuses is dead-lettered as rejected, saved but not
/// submitted or audited.
async fn after_save(
    form: &str,
    settled: Vec<(Pending, Settlement)>,
    ids: &std::collections::HashMap<String, i64>,
    client: &KingdeeClient,
    events: &LoaderEvents,
) -> Vec<(Pending, Settlement)> {
    for (pending, settlement) in &settled {
        if let Settlement::Created | Settlement::Duplicate = settlement {
            events.booked(
                pending.bill.source.io_id,
                &pending.bill.bill_no,
                (form, ids.get(&pending.bill.bill_no).copied()),
                *settlement == Settlement::Created,
            );
        }
    }
    let operations: &[Operation] = match client.after_save() {
        AfterSave::None => &[],
        AfterSave::Submit => &[Operation::Submit],
        AfterSave::Audit => &[Operation::Submit, Operation::Audit],
    };
    let mut settled = settled;
    for op in operations {
        let numbers: Vec<&str> = settled
            .iter()
            .filter(|(_, s)| matches!(s, Settlement::Created | Settlement::Duplicate))
            .map(|(p, _)| p.bill.bill_no.as_str())
            .collect();
        if numbers.is_empty() {
            break;
        }
        let outcome = client.operate(*op, form, &numbers).await;
        let mut results = outcome.as_ref().ok().map(|r| r.iter());
        for (pending, settlement) in settled
            .iter_mut()
            .filter(|(_, s)| matches!(s, Settlement::Created | Settlement::Duplicate))
        {
            let result = match (&outcome, results.as_mut()) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(results)) => Ok(results.next()),
                (Ok(_), None) => Ok(None),
            };
            match decide::operation(*op, result) {
                Some(next) => *settlement = next,
                None => events.operated(*op, pending.bill.source.io_id, &pending.bill.bill_no),
            }
        }
    }
    settled
}

/// Settles the bills of one call together: their acks leave as one frame where they can
/// (see `common::queue::rabbit`'s ack window), their dead letters and retries are published
/// side by side instead of one confirm after another.
async fn apply_all(
    settled: impl IntoIterator<Item = (Pending, Settlement)>,
    settler: &Settler,
    events: &LoaderEvents,
) {
    futures_util::future::join_all(settled.into_iter().map(|(pending, settlement)| {
        let span = pending.span.clone();
        apply(pending, settlement, settler, events).instrument(span)
    }))
    .await;
}

async fn apply(pending: Pending, settlement: Settlement, settler: &Settler, events: &LoaderEvents) {
    let Pending {
        delivery,
        bill,
        span: _,
        _in_flight,
    } = pending;
    let (io_id, bill_no) = (bill.source.io_id, bill.bill_no.as_str());
    match settlement {
        Settlement::Created | Settlement::Duplicate => {
            let created = settlement == Settlement::Created;
            if let Err(e) = delivery_ack(delivery, events, created).await {
                warn!(io_id, bill_no, error = %e, "Saved but not acked; the redelivery will be seen as a duplicate.");
            }
            let result = if created {
                Settled::Created
            } else {
                Settled::Duplicate
            };
            events.settled(result, io_id, bill_no);
        }
        Settlement::Rejected(errors) => {
            let text = errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let reason = DeadReason {
                kingdee_errors: Some(json!(errors)),
                ..DeadReason::new(
                    DeadKind::Rejected,
                    format!("kingdee rejected bill {bill_no}: {text}"),
                )
                .of_bill(io_id, bill_no)
            };
            if settler.dead_letter(delivery, reason).await.is_ok() {
                events.settled(Settled::Rejected, io_id, bill_no);
            }
        }
        Settlement::Conflict(existing) => {
            let new = decide::entries_of_model(&bill.model);
            let reason = DeadReason {
                existing: Some(json!(existing)),
                ..DeadReason::new(
                    DeadKind::Conflict,
                    format!(
                        "bill {bill_no} exists in Kingdee with other entries (material, stock, quantity, lot): existing {} / new {}",
                        json!(existing),
                        json!(new)
                    ),
                )
                .of_bill(io_id, bill_no)
            };
            if settler.dead_letter(delivery, reason).await.is_ok() {
                events.settled(Settled::Conflict, io_id, bill_no);
            }
        }
        Settlement::Retry(why) => {
            // Anything but an exhausted bill is logged by the settler; the bill comes again.
            if let Ok(common::settle::NextTry::Exhausted) =
                settler.retry(delivery, why, Some((io_id, bill_no))).await
            {
                events.settled(Settled::Exhausted, io_id, bill_no);
            }
        }
    }
}

/// Acks and records the end-to-end latency of a created bill.
async fn delivery_ack(
    delivery: Delivery,
    events: &LoaderEvents,
    created: bool,
) -> Result<(), QueueError> {
    if created
        && let Some(at) = header_text(&delivery.headers, header::PUBLISHED_AT)
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(at)
    {
        let secs = (chrono::Utc::now() - at.to_utc()).num_milliseconds() as f64 / 1000.0;
        events.end_to_end(secs);
    }
    delivery.ack().await
}
