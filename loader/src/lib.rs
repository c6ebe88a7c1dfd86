//! The loader stage: gathers bills into batches, saves each batch with one BatchSave per form,
//! and settles every bill by its own result.
//!
//! Invariant: a delivery is acked only after Kingdee answered for its bill (created, or its
//! number already used — the overlap and redeliveries re-send bills, and a bill number is
//! deterministic, so "already used" means "already loaded"), or after the message was
//! re-published, with a broker confirm, to a retry tier or the dead letters. A BatchSave that
//! failed as a whole (timeout, 5xx, unreadable answer) may have committed: its bills are retried,
//! and the retry sees the duplicate and acks.

use std::collections::BTreeMap;
use std::sync::Arc;

use common::config::LoaderConfig;
use common::messages::{BillMessage, header, header_text};
use common::queue::{Broker, Delivery, QueueError, Work};
use common::settle::{DeadReason, Settler};
use common::telemetry::{DeadKind, Stage};
use common::worker::{Context, InFlight};
use kingdee::{BillError, BillResult, KingdeeClient};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// What to do with one bill after Kingdee answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    /// Saved now: ack.
    Created,
    /// Its number is already used: it was loaded before; ack.
    Duplicate,
    /// Refused for a reason retrying cannot fix: dead-letter `rejected` with these errors.
    Rejected(Vec<BillError>),
    /// Worth another try later.
    Retry(String),
}

/// MsgCodes that describe a passing condition rather than the bill (exception, database,
/// bill locked, call limit).
const TRANSIENT_MSG_CODES: [i64; 4] = [4, 6, 13, 14];

/// Decides a bill's fate from its BatchSave result.
pub fn settle(result: &BillResult) -> Settlement {
    match result {
        BillResult::Saved { .. } => Settlement::Created,
        BillResult::Failed { errors, .. } if errors.iter().any(BillError::is_duplicate_bill_no) => {
            Settlement::Duplicate
        }
        BillResult::Failed { msg_code, errors } if TRANSIENT_MSG_CODES.contains(msg_code) => {
            Settlement::Retry(format!(
                "kingdee MsgCode {msg_code}: {}",
                errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        }
        BillResult::Failed { errors, .. } => Settlement::Rejected(errors.clone()),
        BillResult::Missing => Settlement::Retry("kingdee gave no result for this bill".into()),
    }
}

/// A bill read from its delivery.
struct Pending {
    delivery: Delivery,
    bill: BillMessage,
    _in_flight: InFlight,
}

/// Consumes `{prefix}.bills` until `ctx.cancel` fires, then flushes its open batch and waits
/// for the BatchSave calls in flight.
pub async fn run(
    config: &LoaderConfig,
    prefetch: u16,
    broker: Broker,
    client: KingdeeClient,
    ctx: Context,
) -> Result<(), QueueError> {
    let wanted = config.batch_size.saturating_mul(config.concurrency);
    let prefetch = prefetch.max(u16::try_from(wanted).unwrap_or(u16::MAX));
    let mut consumer = broker.consume(Work::Bills, prefetch).await?;
    let settler = Settler::new(
        broker.clone(),
        ctx.metrics.clone(),
        Stage::Loader,
        Work::Bills,
    );
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let tasks = TaskTracker::new();
    let linger = config.linger.0;
    info!(queue = %broker.topology().work_queue(Work::Bills), prefetch, batch_size = config.batch_size, concurrency = config.concurrency, "Loader consuming.");
    let mut batch: Vec<Pending> = Vec::with_capacity(config.batch_size);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let linger_over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ctx.cancel.cancelled() => break,
            () = linger_over => {
                flush(&mut batch, &slots, &tasks, &client, &settler, &ctx).await;
                deadline = None;
            }
            next = consumer.next() => {
                let Some(delivery) = next else { break };
                let in_flight = InFlight::start(&ctx);
                ctx.metrics.consumed.with_label_values(&[Stage::Loader.as_str()]).inc();
                match BillMessage::from_slice(&delivery.body) {
                    Ok(bill) => {
                        batch.push(Pending { delivery, bill, _in_flight: in_flight });
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    }
                    Err(e) => {
                        warn!(message_id = delivery.message_id.as_deref().unwrap_or(""), error = %e, "Not a valid bill; dead-lettering it.");
                        let reason = DeadReason { kind: DeadKind::Malformed, error: e.to_string(), kingdee_errors: None };
                        settler.dead_letter(delivery, reason).await.ok();
                        drop(in_flight);
                    }
                }
                if batch.len() >= config.batch_size {
                    flush(&mut batch, &slots, &tasks, &client, &settler, &ctx).await;
                    deadline = None;
                }
            }
        }
    }
    consumer.cancel().await;
    flush(&mut batch, &slots, &tasks, &client, &settler, &ctx).await;
    tasks.close();
    tasks.wait().await;
    info!("Loader stopped consuming; every held bill was settled.");
    Ok(())
}

/// Hands the open batch to a BatchSave task once a concurrency slot is free.
async fn flush(
    batch: &mut Vec<Pending>,
    slots: &Arc<Semaphore>,
    tasks: &TaskTracker,
    client: &KingdeeClient,
    settler: &Settler,
    ctx: &Context,
) {
    if batch.is_empty() {
        return;
    }
    let Ok(permit) = slots.clone().acquire_owned().await else {
        return;
    };
    let bills = std::mem::take(batch);
    let (client, settler, ctx) = (client.clone(), settler.clone(), ctx.clone());
    tasks.spawn(async move {
        save_batch(bills, &client, &settler, &ctx).await;
        drop(permit);
    });
}

/// One BatchSave per form; every bill settled by its own result.
async fn save_batch(bills: Vec<Pending>, client: &KingdeeClient, settler: &Settler, ctx: &Context) {
    let mut by_form: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
    for p in bills {
        by_form.entry(p.bill.form_id.clone()).or_default().push(p);
    }
    for (form, group) in by_form {
        ctx.metrics.loader_batch_size.observe(group.len() as f64);
        let models: Vec<serde_json::Value> = group.iter().map(|p| p.bill.model.clone()).collect();
        match client.batch_save(&form, &models).await {
            Ok(results) => {
                for (pending, result) in group.into_iter().zip(results) {
                    apply(pending, settle(&result), settler, ctx).await;
                }
            }
            Err(err) => {
                if err.is_transient() {
                    warn!(form = %form, bills = group.len(), error = %err, "BatchSave failed; the bills go to a retry tier.");
                } else {
                    error!(form = %form, bills = group.len(), error = %err, "Kingdee refused the call; check the kingdee section of the configuration. The bills go to a retry tier.");
                }
                for pending in group {
                    apply(pending, Settlement::Retry(err.to_string()), settler, ctx).await;
                }
            }
        }
    }
}

async fn apply(pending: Pending, settlement: Settlement, settler: &Settler, ctx: &Context) {
    let Pending {
        delivery,
        bill,
        _in_flight,
    } = pending;
    let (io_id, bill_no) = (bill.source.io_id, bill.bill_no.as_str());
    let count = |result: &str| ctx.metrics.loader_bills.with_label_values(&[result]).inc();
    match settlement {
        Settlement::Created | Settlement::Duplicate => {
            let created = settlement == Settlement::Created;
            if let Err(e) = delivery_ack(delivery, ctx, created).await {
                warn!(io_id, bill_no, error = %e, "Saved but not acked; the redelivery will be seen as a duplicate.");
            }
            count(if created { "created" } else { "duplicate" });
            debug!(io_id, bill_no, created, "Bill settled.");
        }
        Settlement::Rejected(errors) => {
            let text = errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            warn!(io_id, bill_no, error = %text, "Kingdee rejected the bill; dead-lettering it.");
            let reason = DeadReason {
                kind: DeadKind::Rejected,
                error: format!("kingdee rejected bill {bill_no}: {text}"),
                kingdee_errors: Some(json!(errors)),
            };
            if settler.dead_letter(delivery, reason).await.is_ok() {
                count("rejected");
            }
        }
        Settlement::Retry(why) => match settler.retry(delivery, why).await {
            Ok(common::settle::NextTry::Exhausted) => count("exhausted"),
            Ok(_) => {}
            Err(e) => {
                warn!(io_id, bill_no, error = %e, "Cannot schedule the retry; the bill goes back to its queue.")
            }
        },
    }
}

/// Acks and records the end-to-end latency of a created bill.
async fn delivery_ack(delivery: Delivery, ctx: &Context, created: bool) -> Result<(), QueueError> {
    if created
        && let Some(at) = header_text(&delivery.headers, header::PUBLISHED_AT)
        && let Ok(at) = chrono::DateTime::parse_from_rfc3339(at)
    {
        let secs = (chrono::Utc::now() - at.to_utc()).num_milliseconds() as f64 / 1000.0;
        ctx.metrics.end_to_end_seconds.observe(secs.max(0.0));
    }
    delivery.ack().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(msg_code: i64, field: Option<&str>, message: &str) -> BillResult {
        BillResult::Failed {
            msg_code,
            errors: vec![BillError {
                field_name: field.map(str::to_string),
                message: message.into(),
            }],
        }
    }

    #[test]
    fn each_result_has_one_settlement() {
        let dup = "违反字段唯一性要求：编码唯一。[JSTPD1]在当前系统中已经被使用。";
        let table = [
            (
                BillResult::Saved {
                    id: Some(1),
                    number: None,
                },
                "created",
            ),
            (failed(11, Some("FBillNo"), dup), "duplicate"),
            (failed(11, Some("FStockId"), "仓库字段必录"), "rejected"),
            (
                failed(9, Some("FXxx"), "元数据中标识为FXxx的字段不存在"),
                "rejected",
            ),
            (failed(13, None, "网控冲突"), "retry"),
            (failed(14, None, "调用次数超限"), "retry"),
            (BillResult::Missing, "retry"),
        ];
        for (result, expected) in table {
            let got = match settle(&result) {
                Settlement::Created => "created",
                Settlement::Duplicate => "duplicate",
                Settlement::Rejected(_) => "rejected",
                Settlement::Retry(_) => "retry",
            };
            assert_eq!(got, expected, "{result:?}");
        }
    }
}
