//! `jst2kd trace IO_ID [--since DURATION] [--kingdee] [--format text|json]`: a count
//! document's history from the outcome log, in time order, ending in where it is now; with
//! `--kingdee`, its bills as Kingdee has them.
//!
//! Exit 0 with the history, 1 when the document has no event in the period, 2 when the
//! configuration is wrong or RabbitMQ (or Kingdee) cannot be asked.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, ValueEnum};
use common::config::{ConfigError, parse_duration};
use common::http::escape;
use common::outcomes::{self, Outcome, OutcomeKind};
use common::queue::rabbit::RabbitBroker;
use common::queue::{AmqpConfig, Broker, Topology};
use common::time::{beijing, format_beijing};
use common::worker::{self, WorkerArgs};
use kingdee::{KingdeeClient, KingdeeConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::preflight::CouldNotAsk;

#[derive(Args)]
pub struct TraceArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// The Jushuitan count document (`io_id`).
    io_id: i64,
    /// How far back to read the outcome log, e.g. "7d", "12h".
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    since: Duration,
    /// Also show the bills as Kingdee has them now (ExecuteBillQuery).
    #[arg(long)]
    kingdee: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per event, then where the document is now.
    Text,
    /// One JSON object.
    Json,
}

/// What `--kingdee` asks of each bill.
const BILL_FIELDS: &str =
    "FBillNo,FID,FDocumentStatus,FDate,FMaterialId.FNumber,FStockId.FNumber,FQty,FLot.FNumber";

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let (process, layers) = worker::load_config(&args.worker)?;
    common::telemetry::init_logging_with(process.runtime.log_format, "warn,lapin=off");
    let amqp = layers.section::<AmqpConfig>()?;
    let kingdee = if args.kingdee {
        let config = layers.section::<KingdeeConfig>()?;
        config.check_credentials()?;
        Some(config)
    } else {
        None
    };
    let since = chrono::Utc::now()
        - chrono::Duration::from_std(args.since)
            .map_err(|_| ConfigError("--since is too long".into()))?;
    let broker = RabbitBroker::connect_once(
        amqp.url.clone(),
        "jst2kd-trace",
        Topology::from_config(&amqp),
        CancellationToken::new(),
    )
    .await
    .map_err(|e| CouldNotAsk(format!("RabbitMQ: {e}")))?;
    let io_id = args.io_id;
    let events = outcomes::read(&Broker::Rabbit(broker.clone()), since, |o| {
        o.io_id == Some(io_id)
    })
    .await
    .map_err(|e| CouldNotAsk(format!("the outcome log: {e}")));
    broker.close().await;
    let mut events = events?;
    // Stages write to the stream as they go, each a little late; an event is dated when its
    // message was sent, so time order is the document's order.
    events.sort_by_key(|o| o.at);
    let since_text = format_beijing(&since.with_timezone(&beijing()));
    if events.is_empty() {
        anyhow::bail!(
            "document {io_id} has no event in the outcome log since {since_text} (Beijing); try a longer --since"
        );
    }
    let now = where_now(&events);
    let bills = match &kingdee {
        Some(config) => Some(kingdee_bills(config, &events).await?),
        None => None,
    };
    match args.format {
        Format::Json => {
            let mut out = json!({
                "io_id": io_id,
                "since": since.to_rfc3339(),
                "events": events,
                "now": now,
            });
            if let (Some(bills), Some(obj)) = (bills, out.as_object_mut()) {
                obj.insert("kingdee".into(), Value::Array(bills));
            }
            println!("{out}");
        }
        Format::Text => {
            println!(
                "document {io_id}: {} events since {since_text} (Beijing)",
                events.len()
            );
            for event in &events {
                println!("  {}", line(event));
            }
            println!("now: {}", escape(&now));
            if let Some(bills) = bills {
                for bill in bills {
                    println!("kingdee: {}", kingdee_line(&bill));
                }
            }
        }
    }
    Ok(())
}

/// One event as a line: time (Beijing), stage, event, and what it says.
fn line(o: &Outcome) -> String {
    let at =
        o.at.with_timezone(&beijing())
            .format("%Y-%m-%d %H:%M:%S%.3f");
    let mut what: Vec<String> = Vec::new();
    if let Some(modified) = &o.modified {
        what.push(format!("version {modified}"));
    }
    // A mapping's bills are listed in its details.
    if let (Some(bill), false) = (&o.bill_no, o.details.contains_key("bills")) {
        what.push(format!("bill {bill}"));
    }
    for (key, value) in &o.details {
        let value = match value {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        what.push(format!("{key} {value}"));
    }
    escape(&format!(
        "{at}  {:<11}  {:<13}  {}",
        o.stage,
        o.event.as_str(),
        what.join("; ")
    ))
}

fn detail<'a>(o: &'a Outcome, key: &str) -> &'a str {
    o.details.get(key).and_then(Value::as_str).unwrap_or("")
}

/// "after 30 s (attempt 2): reason", from a `retried` event.
fn retry(o: &Outcome) -> String {
    let number = |key: &str| o.details.get(key).and_then(Value::as_u64);
    format!(
        "after {} s (attempt {}): {}",
        number("delay_s").map_or_else(|| "?".into(), |d| d.to_string()),
        number("attempt").map_or_else(|| "?".into(), |a| a.to_string()),
        detail(o, "reason")
    )
}

/// Where the document is now, from its latest events: the last version fetched, and what
/// became of it.
pub fn where_now(events: &[Outcome]) -> String {
    let Some(last) = events.last() else {
        return "unknown".into();
    };
    // The bills the document's latest mapping made, and what the loader said of each since
    // (an older version's bills may carry the same numbers).
    let latest_mapping = events.iter().rposition(|o| o.event == OutcomeKind::Mapped);
    let bills: Vec<String> = latest_mapping
        .and_then(|i| events[i].details.get("bills"))
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut state: BTreeMap<&str, String> = BTreeMap::new();
    let mut ids: BTreeMap<&str, i64> = BTreeMap::new();
    for o in &events[latest_mapping.map_or(0, |i| i + 1)..] {
        let Some(bill) = o.bill_no.as_deref() else {
            continue;
        };
        let said = match o.event {
            OutcomeKind::Booked => {
                if let Some(id) = o.details.get("id").and_then(Value::as_i64) {
                    ids.insert(bill, id);
                }
                format!("booked ({})", detail(o, "result"))
            }
            OutcomeKind::Submitted => "booked, submitted".into(),
            OutcomeKind::Audited => "booked, submitted, audited".into(),
            OutcomeKind::Retried => format!("waiting to be retried {}", retry(o)),
            OutcomeKind::DeadLettered => format!(
                "in the dead letters ({}): {}",
                detail(o, "kind"),
                detail(o, "reason")
            ),
            // Recorded beside its dead letter, in either order: the dead letter has the
            // reason.
            OutcomeKind::Conflict => {
                if !state
                    .get(bill)
                    .is_some_and(|s| s.starts_with("in the dead letters (conflict)"))
                {
                    state.insert(bill, "in the dead letters (conflict)".into());
                }
                continue;
            }
            _ => continue,
        };
        state.insert(bill, said);
    }
    match last.event {
        OutcomeKind::Fetched | OutcomeKind::Published => {
            "published by the producer, waiting for the transformer".into()
        }
        OutcomeKind::Skipped => format!("skipped: {}", detail(last, "reason")),
        OutcomeKind::DeadLettered if last.bill_no.is_none() => format!(
            "in the dead letters ({}): {}",
            detail(last, "kind"),
            detail(last, "reason")
        ),
        OutcomeKind::Retried if last.bill_no.is_none() => {
            format!(
                "waiting to be retried by the {} {}",
                last.stage,
                retry(last)
            )
        }
        _ if bills.is_empty() => "no bill known".into(),
        _ => bills
            .iter()
            .map(|b| {
                let what = state
                    .get(b.as_str())
                    .cloned()
                    .unwrap_or_else(|| "waiting for the loader".into());
                match ids.get(b.as_str()) {
                    Some(id) => format!("bill {b} (Kingdee id {id}) {what}"),
                    None => format!("bill {b} {what}"),
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The document's bills as Kingdee has them now, one object per bill number asked.
async fn kingdee_bills(config: &KingdeeConfig, events: &[Outcome]) -> anyhow::Result<Vec<Value>> {
    let mut by_form: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in events {
        if let (OutcomeKind::Booked | OutcomeKind::Conflict, Some(bill)) =
            (o.event, o.bill_no.as_ref())
        {
            let form = match detail(o, "form") {
                "" => common::messages::FORM_MIS_DELIVERY,
                f => f,
            };
            let numbers = by_form.entry(form.to_string()).or_default();
            if !numbers.contains(bill) {
                numbers.push(bill.clone());
            }
        }
    }
    let client =
        KingdeeClient::new(config, 1, None).map_err(|e| CouldNotAsk(format!("Kingdee: {e}")))?;
    let mut bills = Vec::new();
    for (form, numbers) in by_form {
        let numbers_text: Vec<&str> = numbers.iter().map(String::as_str).collect();
        let filter = loader::decide::bill_no_filter(&numbers_text);
        let rows = client
            .execute_bill_query(&form, BILL_FIELDS, &filter)
            .await
            .map_err(|e| CouldNotAsk(format!("Kingdee: {e}")))?;
        for number in numbers {
            let mine: Vec<&Vec<Value>> = rows
                .iter()
                .filter(|r| r.first().and_then(Value::as_str) == Some(number.as_str()))
                .collect();
            let Some(first) = mine.first() else {
                bills.push(json!({"bill_no": number, "form_id": form, "found": false}));
                continue;
            };
            let entries: Vec<Value> = mine
                .iter()
                .map(|r| {
                    json!({"material": r.get(4), "stock": r.get(5), "qty": r.get(6), "lot": r.get(7)})
                })
                .collect();
            bills.push(json!({
                "bill_no": number, "form_id": form, "found": true,
                "id": first.get(1), "status": first.get(2), "date": first.get(3),
                "entries": entries,
            }));
        }
    }
    Ok(bills)
}

fn kingdee_line(bill: &Value) -> String {
    let no = bill["bill_no"].as_str().unwrap_or("");
    if bill["found"] != json!(true) {
        return escape(&format!("{no}: not in Kingdee"));
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let entries = bill["entries"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    format!(
                        "{} {} × {}{}",
                        text(&e["material"]),
                        text(&e["stock"]),
                        text(&e["qty"]),
                        match text(&e["lot"]).as_str() {
                            "" | "null" => String::new(),
                            lot => format!(" lot {lot}"),
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    escape(&format!(
        "{no} ({}) id {}, status {}, date {}: {entries}",
        text(&bill["form_id"]),
        text(&bill["id"]),
        text(&bill["status"]),
        text(&bill["date"])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::telemetry::Stage;

    fn event(stage: Stage, kind: OutcomeKind) -> Outcome {
        Outcome::new(stage, kind).of_version("7@2026-01-02 03:04:05")
    }

    #[test]
    fn where_a_document_is_now() {
        let fetched = event(Stage::Producer, OutcomeKind::Fetched);
        assert_eq!(
            where_now(std::slice::from_ref(&fetched)),
            "published by the producer, waiting for the transformer"
        );
        let skipped = event(Stage::Transformer, OutcomeKind::Skipped).with("reason", "status");
        assert_eq!(where_now(&[fetched.clone(), skipped]), "skipped: status");
        let dead = event(Stage::Transformer, OutcomeKind::DeadLettered)
            .with("kind", "mapping")
            .with("reason", "no warehouse 4");
        assert_eq!(
            where_now(&[fetched.clone(), dead]),
            "in the dead letters (mapping): no warehouse 4"
        );
        let mapped = event(Stage::Transformer, OutcomeKind::Mapped)
            .of_bill(Some("JSTPD7"))
            .with("bills", vec!["JSTPD7", "JSTPD7-2"]);
        let bill = |kind| {
            Outcome::new(Stage::Loader, kind)
                .of_document(Some(7))
                .of_bill(Some("JSTPD7"))
        };
        let retried = bill(OutcomeKind::Retried)
            .with("tier", 0)
            .with("delay_s", 5)
            .with("attempt", 1)
            .with("reason", "busy");
        let booked = bill(OutcomeKind::Booked)
            .with("result", "created")
            .with("id", 100_003);
        let audited = bill(OutcomeKind::Audited);
        assert_eq!(
            where_now(&[fetched.clone(), mapped.clone(), retried.clone()]),
            "bill JSTPD7 waiting to be retried after 5 s (attempt 1): busy; bill JSTPD7-2 waiting for the loader"
        );
        assert_eq!(
            where_now(&[fetched.clone(), mapped.clone(), retried, booked, audited]),
            "bill JSTPD7 (Kingdee id 100003) booked, submitted, audited; bill JSTPD7-2 waiting for the loader"
        );
        let conflict = bill(OutcomeKind::Conflict);
        let dead = bill(OutcomeKind::DeadLettered)
            .with("kind", "conflict")
            .with("reason", "other entries");
        let expected = "bill JSTPD7 in the dead letters (conflict): other entries; bill JSTPD7-2 waiting for the loader";
        assert_eq!(
            where_now(&[
                fetched.clone(),
                mapped.clone(),
                conflict.clone(),
                dead.clone()
            ]),
            expected
        );
        // The loader records the dead letter first.
        assert_eq!(
            where_now(&[fetched.clone(), mapped.clone(), dead, conflict]),
            expected
        );
        // A new version, mapped again: the old version's bill states no longer count.
        let booked_old = bill(OutcomeKind::Booked).with("result", "created");
        assert_eq!(
            where_now(&[fetched.clone(), mapped.clone(), booked_old, fetched, mapped]),
            "bill JSTPD7 waiting for the loader; bill JSTPD7-2 waiting for the loader"
        );
    }

    #[test]
    fn a_line_shows_time_stage_event_and_details_escaped() {
        let o = event(Stage::Transformer, OutcomeKind::Skipped).with("reason", "a\u{1b}[2Jb");
        let text = line(&o);
        assert!(text.contains("transformer"), "{text}");
        assert!(text.contains("skipped"), "{text}");
        assert!(text.contains("version 2026-01-02 03:04:05"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
