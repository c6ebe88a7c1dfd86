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

use common::config::AfterSave;
use common::config::{Config, ConfigError, LoaderConfig};
use common::messages::{BillMessage, header, header_text};
use common::queue::{Broker, Delivery, QueueError, Work};
use common::settle::{DeadReason, Settler};
use common::telemetry::{DeadKind, Stage};
use common::worker::{self, Context, InFlight, WorkerError};
use kingdee::{BillError, BillResult, KingdeeClient, Operation};
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
    /// Its number is used by a bill with other content (the JST document changed after it was
    /// booked): dead-letter `conflict` with the existing entries.
    Conflict(Vec<Entry>),
    /// Worth another try later.
    Retry(String),
}

/// What the conflict check compares of an entry: material, stock, quantity, lot.
pub type Entry = (String, String, String, String);

/// The fields ExecuteBillQuery returns for the check, in this order.
pub const CHECK_FIELDS: &str = "FBillNo,FMaterialId.FNumber,FStockId.FNumber,FQty,FLot.FNumber";

fn quantity(v: Option<&serde_json::Value>) -> String {
    common::messages::num_field(v).map_or_else(String::new, |q| format!("{:.6}", q.abs()))
}

fn text(v: Option<&serde_json::Value>) -> String {
    common::messages::text_field(v).unwrap_or_default()
}

fn reference(v: Option<&serde_json::Value>) -> String {
    let obj = v.and_then(serde_json::Value::as_object);
    text(obj.and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("FNumber"))
            .map(|(_, n)| n)
    }))
}

/// The sorted entries of a bill model we sent.
pub fn entries_of_model(model: &serde_json::Value) -> Vec<Entry> {
    let mut entries: Vec<Entry> = model
        .get("FEntity")
        .and_then(serde_json::Value::as_array)
        .map(|rows| {
            rows.iter()
                .map(|e| {
                    (
                        reference(e.get("FMaterialId")),
                        reference(e.get("FStockId")),
                        quantity(e.get("FQty")),
                        reference(e.get("FLot")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    entries
}

/// The sorted entries per bill number of ExecuteBillQuery rows in [`CHECK_FIELDS`] order.
pub fn entries_of_rows(rows: &[Vec<serde_json::Value>]) -> BTreeMap<String, Vec<Entry>> {
    let mut bills: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for row in rows {
        let bill_no = text(row.first());
        bills.entry(bill_no).or_default().push((
            text(row.get(1)),
            text(row.get(2)),
            quantity(row.get(3)),
            text(row.get(4)),
        ));
    }
    for entries in bills.values_mut() {
        entries.sort();
    }
    bills
}

/// Decides a duplicate after looking the existing bill up: the same entries → duplicate.
pub fn check_duplicate(existing: Option<&Vec<Entry>>, model: &serde_json::Value) -> Settlement {
    match existing {
        None => Settlement::Retry(
            "kingdee says the bill number is used but the query finds no such bill".into(),
        ),
        Some(entries) if *entries == entries_of_model(model) => Settlement::Duplicate,
        Some(entries) => Settlement::Conflict(entries.clone()),
    }
}

/// `FBillNo in ('A','B')`, quotes doubled.
fn bill_no_filter(numbers: &[&str]) -> String {
    let list: Vec<String> = numbers
        .iter()
        .map(|n| format!("'{}'", n.replace('\'', "''")))
        .collect();
    format!("FBillNo in ({})", list.join(","))
}

/// MsgCodes that describe a passing condition rather than the bill (exception, database,
/// bill locked, call limit).
const TRANSIENT_MSG_CODES: [i64; 4] = [4, 6, 13, 14];

/// Decides a bill's fate from its BatchSave result.
pub fn settle(result: &BillResult, bill_no: &str) -> Settlement {
    match result {
        // Kingdee numbered the bill itself: the bill type's numbering rule overrides ours, so
        // the number can no longer tell a re-sent document from a new one. Stop it loudly.
        BillResult::Saved {
            number: Some(n), ..
        } if n != bill_no => Settlement::Rejected(vec![BillError {
            field_name: Some("FBillNo".into()),
            message: format!(
                "Kingdee saved this bill as {n}, not {bill_no}: the bill type's numbering rule replaces manual numbers, so re-sent documents would be booked again. Allow manual numbers for the bill type in Kingdee, delete bill {n} there, then replay."
            ),
        }]),
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

/// The loader process: the Kingdee client, RabbitMQ, the stage, and the connection closed.
pub async fn start(config: Config, ctx: Context) -> Result<(), WorkerError> {
    let client = KingdeeClient::new(
        &config.kingdee,
        config.loader.concurrency,
        Some(ctx.metrics.clone()),
    )
    .map_err(|e| WorkerError::Config(ConfigError(e.to_string())))?;
    let broker = worker::connect_rabbit(&config, "jst2kd-loader", Some(Work::Bills), &ctx).await?;
    let result = run(&config.loader, broker.clone(), client, ctx).await;
    broker.close().await;
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
    let mut batch_entries = 0;
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
                batch_entries = 0;
            }
            next = consumer.next() => {
                let Some(delivery) = next else { break };
                let in_flight = InFlight::start(&ctx);
                ctx.metrics.consumed.with_label_values(&[Stage::Loader.as_str()]).inc();
                if let Some(reason) = settler.oversized(&delivery) {
                    warn!(message_id = %common::http::escape(delivery.message_id.as_deref().unwrap_or("")), error = %reason.error, "Bill too large; dead-lettering it unread.");
                    settler.dead_letter(delivery, reason).await.ok();
                    drop(in_flight);
                    continue;
                }
                match BillMessage::from_slice(&delivery.body) {
                    Ok(bill) => {
                        batch_entries += bill.entry_count();
                        batch.push(Pending { delivery, bill, _in_flight: in_flight });
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + linger);
                    }
                    Err(e) => {
                        warn!(message_id = %common::http::escape(delivery.message_id.as_deref().unwrap_or("")), error = %e, "Not a valid bill; dead-lettering it.");
                        let reason = DeadReason::new(DeadKind::Malformed, e.to_string());
                        settler.dead_letter(delivery, reason).await.ok();
                        drop(in_flight);
                    }
                }
                if batch.len() >= config.batch_size || batch_entries >= MAX_CALL_ENTRIES {
                    flush(&mut batch, &slots, &tasks, &client, &settler, &ctx).await;
                    deadline = None;
                    batch_entries = 0;
                }
            }
        }
    }
    consumer.cancel().await;
    flush(&mut batch, &slots, &tasks, &client, &settler, &ctx).await;
    tasks.close();
    tasks.wait().await;
    info!("Loader stopped consuming; every held bill was settled.");
    broker
        .fatal()
        .map_or(Ok(()), |e| Err(WorkerError::Queue(e)))
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
async fn save_batch(bills: Vec<Pending>, client: &KingdeeClient, settler: &Settler, ctx: &Context) {
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
        ctx.metrics.loader_batch_size.observe(group.len() as f64);
        let models: Vec<&serde_json::Value> = group.iter().map(|p| &p.bill.model).collect();
        match client.batch_save(&form, &models).await {
            Ok(results) => {
                let mut settled = Vec::with_capacity(group.len());
                let mut duplicates = Vec::new();
                for (pending, result) in group.into_iter().zip(results) {
                    match settle(&result, &pending.bill.bill_no) {
                        Settlement::Duplicate => duplicates.push(pending),
                        other => settled.push((pending, other)),
                    }
                }
                settled.extend(check_duplicates(&form, duplicates, client).await);
                for (pending, settlement) in after_save(&form, settled, client).await {
                    apply(pending, settlement, settler, ctx).await;
                }
            }
            Err(err) if err.is_transient() => {
                // Kingdee may have committed before failing: the bills it holds now are settled
                // here (as duplicates, after after-save), only the others are retried.
                warn!(form = %form, bills = group.len(), error = %err, "BatchSave failed; checking which bills Kingdee committed before retrying the others.");
                let checked = check_saved(&form, group, client, &err.to_string()).await;
                for (pending, settlement) in after_save(&form, checked, client).await {
                    apply(pending, settlement, settler, ctx).await;
                }
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
                for pending in group {
                    apply(
                        pending,
                        Settlement::Rejected(vec![refused.clone()]),
                        settler,
                        ctx,
                    )
                    .await;
                }
            }
            Err(err) => {
                error!(form = %form, bills = group.len(), error = %err, "Kingdee refused the call; check the kingdee section of the configuration. The bills go to a retry tier.");
                for pending in group {
                    apply(pending, Settlement::Retry(err.to_string()), settler, ctx).await;
                }
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
        .map(|(p, s)| match s {
            Settlement::Retry(_) => (p, Settlement::Retry(error.to_string())),
            other => (p, other),
        })
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
        .execute_bill_query(form, CHECK_FIELDS, &bill_no_filter(&numbers))
        .await
    {
        Ok(rows) => {
            let existing = entries_of_rows(&rows);
            duplicates
                .into_iter()
                .map(|p| {
                    let settlement = check_duplicate(existing.get(&p.bill.bill_no), &p.bill.model);
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
    client: &KingdeeClient,
) -> Vec<(Pending, Settlement)> {
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
        let mut results = match &outcome {
            Ok(results) => results.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        for (_, settlement) in settled
            .iter_mut()
            .filter(|(_, s)| matches!(s, Settlement::Created | Settlement::Duplicate))
        {
            let next = match (&outcome, results.next()) {
                (Err(e), _) => Some(Settlement::Retry(format!("{} failed: {e}", op.label()))),
                (Ok(_), Some(BillResult::Saved { .. })) => None,
                (Ok(_), Some(BillResult::Failed { msg_code, .. }))
                    if TRANSIENT_MSG_CODES.contains(&msg_code) =>
                {
                    Some(Settlement::Retry(format!(
                        "{} refused for now (MsgCode {msg_code})",
                        op.label()
                    )))
                }
                (Ok(_), Some(BillResult::Failed { errors, .. })) => {
                    let mut all = vec![BillError {
                        field_name: None,
                        message: format!(
                            "the bill is saved, but Kingdee refused to {} it",
                            op.label()
                        ),
                    }];
                    all.extend(errors);
                    Some(Settlement::Rejected(all))
                }
                (Ok(_), Some(BillResult::Missing) | None) => Some(Settlement::Retry(format!(
                    "kingdee gave no {} result for this bill",
                    op.label()
                ))),
            };
            if let Some(next) = next {
                *settlement = next;
            }
        }
    }
    settled
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
                kingdee_errors: Some(json!(errors)),
                ..DeadReason::new(
                    DeadKind::Rejected,
                    format!("kingdee rejected bill {bill_no}: {text}"),
                )
            };
            if settler.dead_letter(delivery, reason).await.is_ok() {
                count("rejected");
            }
        }
        Settlement::Conflict(existing) => {
            let new = entries_of_model(&bill.model);
            warn!(
                io_id,
                bill_no,
                "The bill number exists in Kingdee with other content; dead-lettering it as a conflict for a person to decide."
            );
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
            };
            if settler.dead_letter(delivery, reason).await.is_ok() {
                count("conflict");
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

    #[test]
    fn a_duplicate_with_the_same_entries_is_acked_and_one_with_others_is_a_conflict() {
        let model = json!({"FEntity": [
            {"FMaterialId": {"FNumber": "A"}, "FStockId": {"FNumber": "CK1"}, "FQty": 2.0},
            {"FMaterialId": {"FNumber": "B"}, "FStockId": {"FNumber": "CK1"}, "FQty": 1, "FLot": {"FNumber": "L1"}},
        ]});
        let same = vec![
            vec![
                json!("X"),
                json!("B"),
                json!("CK1"),
                json!("1"),
                json!("L1"),
            ],
            vec![
                json!("X"),
                json!("A"),
                json!("CK1"),
                json!("2"),
                json!(null),
            ],
        ];
        let existing = entries_of_rows(&same);
        assert_eq!(
            check_duplicate(existing.get("X"), &model),
            Settlement::Duplicate
        );
        let changed = vec![vec![
            json!("X"),
            json!("A"),
            json!("CK1"),
            json!(5),
            json!(null),
        ]];
        let existing = entries_of_rows(&changed);
        assert!(matches!(
            check_duplicate(existing.get("X"), &model),
            Settlement::Conflict(_)
        ));
        assert!(matches!(
            check_duplicate(None, &model),
            Settlement::Retry(_)
        ));
        assert_eq!(bill_no_filter(&["A", "O'B"]), "FBillNo in ('A','O''B')");
    }

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
            (
                BillResult::Saved {
                    id: Some(1),
                    number: Some("B".into()),
                },
                "created",
            ),
            (
                BillResult::Saved {
                    id: Some(1),
                    number: Some("QTCK0001".into()),
                },
                "rejected",
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
            let got = match settle(&result, "B") {
                Settlement::Created => "created",
                Settlement::Duplicate => "duplicate",
                Settlement::Conflict(_) => "conflict",
                Settlement::Rejected(_) => "rejected",
                Settlement::Retry(_) => "retry",
            };
            assert_eq!(got, expected, "{result:?}");
        }
    }
}
