//! `jst2kd reconcile --from DATE --to DATE [--format text|json|csv]`: do Kingdee's books agree
//! with Jushuitan's counts of a period?
//!
//! 1. The count documents whose `io_date` falls in the period (both dates included), read
//!    from Jushuitan whatever their modified time (from the period's first day to now, every
//!    status) through the holder of the producer lock, as `backfill` reads: one quota.
//! 2. What each should have become, with the mapping (`[mapping]`).
//! 3. The bills of the period in Kingdee whose numbers follow our templates (ExecuteBillQuery,
//!    both forms, paged).
//! 4. Every difference — `missing`, `unexpected`, `different` — with the reason the outcome
//!    log gives where it has one, then totals per stock × material and one summary line.
//!
//! It changes nothing in either system. Exit 0 when nothing differs, 1 when something does,
//! 2 when it could not ask.

use std::collections::BTreeMap;

use chrono::{Duration as ChronoDuration, NaiveDate, TimeZone};
use clap::{Args, ValueEnum};
use common::config::{ConfigError, FromLayers};
use common::http::escape;
use common::messages::{BILL_FORMS, CountDoc, FORM_MIS_DELIVERY};
use common::outcomes::{self, Outcome, OutcomeKind};
use common::queue::Broker;
use common::queue::rabbit::RabbitBroker;
use common::telemetry::Stage;
use common::time::{beijing, now_beijing};
use common::worker::{self, Context, WorkerArgs};
use kingdee::{KingdeeClient, KingdeeConfig};
use loader::Entry;
use loader::decide::{CHECK_FIELDS, bill_no_filter, entries_of_model, entries_of_rows};
use producer::control::Deliver;
use producer::{MAX_WINDOW, windows};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use transformer::{MappingConfig, Plan};

use crate::backfill::{View, ask_holder, start_logging};
use crate::preflight::CouldNotAsk;

#[derive(Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// First day of the period (`yyyy-MM-dd`, Beijing).
    #[arg(long)]
    from: String,
    /// Last day of the period, included.
    #[arg(long)]
    to: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per difference, the totals, a summary line.
    Text,
    /// One JSON object on stdout; the summary line on stderr.
    Json,
    /// The differences as CSV on stdout; the summary line on stderr.
    Csv,
}

/// What kind of difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A document that should have a bill has none.
    Missing,
    /// A bill whose document is no longer eligible, or does not exist.
    Unexpected,
    /// A bill whose entries differ from what its document maps to now.
    Different,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Unexpected => "unexpected",
            Kind::Different => "different",
        }
    }
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    /// What kind.
    pub kind: Kind,
    /// The document, when known.
    pub io_id: Option<i64>,
    /// The bill.
    pub bill_no: String,
    /// Why, as far as Jushuitan, the mapping and the outcome log say.
    pub reason: String,
    /// The entries the document maps to now.
    pub expected: Option<Vec<Entry>>,
    /// The entries Kingdee has.
    pub actual: Option<Vec<Entry>>,
}

/// Quantities of one stock × material × form, both sides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Total {
    /// Kingdee form (`STK_MisDelivery` losses, `STK_MISCELLANEOUS` gains).
    pub form_id: String,
    /// Kingdee stock number (the mapped warehouse).
    pub stock: String,
    /// Material number.
    pub material: String,
    /// What the documents map to.
    pub jushuitan: f64,
    /// What Kingdee's bills hold.
    pub kingdee: f64,
}

/// A bill expected from a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Expected {
    /// The document.
    pub io_id: i64,
    /// `STK_MisDelivery` or `STK_MISCELLANEOUS`.
    pub form_id: String,
    /// Its number.
    pub bill_no: String,
    /// Its entries.
    pub entries: Vec<Entry>,
}

/// What the documents of the period should have become.
#[derive(Debug, Default)]
pub struct Plans {
    /// Bills expected, by (form, number).
    pub bills: BTreeMap<(String, String), Expected>,
    /// Documents that should have bills but cannot be mapped now, with why.
    pub unmappable: BTreeMap<i64, String>,
    /// Why a document of the period has no bill (its status, or a skip reason).
    pub no_bill: BTreeMap<i64, String>,
}

/// Maps each document (the newest version of each) with `mapping`.
pub fn plan_all<'a>(docs: impl IntoIterator<Item = &'a Value>, mapping: &MappingConfig) -> Plans {
    let mut plans = Plans::default();
    for raw in docs {
        let doc = match CountDoc::from_value(raw) {
            Ok(doc) => doc,
            Err(e) => {
                if let Some(io_id) = common::messages::int_field(raw.get("io_id")) {
                    plans
                        .unmappable
                        .insert(io_id, format!("the document cannot be read: {e}"));
                }
                continue;
            }
        };
        match transformer::mapping::plan(&doc, mapping) {
            Ok(Plan::Skipped(reason)) => {
                let why = match reason {
                    transformer::SkipReason::Status => {
                        format!("its status is {} now", doc.status)
                    }
                    transformer::SkipReason::NoLines => "no line becomes an entry".into(),
                };
                plans.no_bill.insert(doc.io_id, why);
            }
            Ok(Plan::Bills(parts)) => {
                for bill in parts {
                    plans.bills.insert(
                        (bill.form_id.clone(), bill.bill_no.clone()),
                        Expected {
                            io_id: doc.io_id,
                            form_id: bill.form_id.clone(),
                            bill_no: bill.bill_no.clone(),
                            entries: entries_of_model(&bill.model),
                        },
                    );
                }
            }
            Err(e) => {
                plans.unmappable.insert(doc.io_id, e.to_string());
            }
        }
    }
    plans
}

/// The document a bill number of `template` (`JSTPD{io_id}`, parts `-2`, `-3` …) belongs to.
pub fn io_id_of(bill_no: &str, template: &str) -> Option<i64> {
    let (prefix, suffix) = template.split_once("{io_id}")?;
    let rest = bill_no.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    let after = after.strip_prefix(suffix)?;
    let part_ok = after.is_empty()
        || after
            .strip_prefix('-')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    part_ok.then(|| digits.parse().ok()).flatten()
}

/// What the outcome log says last of a document, as a reason.
pub fn logged_reason(events: &[&Outcome]) -> Option<String> {
    let last = events.iter().rev().find(|o| {
        !matches!(
            o.event,
            OutcomeKind::Fetched | OutcomeKind::Published | OutcomeKind::Mapped
        )
    })?;
    let detail = |key: &str| {
        last.details
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Some(match last.event {
        OutcomeKind::DeadLettered => {
            format!("dead-lettered ({}): {}", detail("kind"), detail("reason"))
        }
        OutcomeKind::Retried => format!("waiting to be retried: {}", detail("reason")),
        OutcomeKind::Skipped => format!("skipped: {}", detail("reason")),
        OutcomeKind::Conflict => "dead-lettered as a conflict".into(),
        OutcomeKind::Booked | OutcomeKind::Submitted | OutcomeKind::Audited => format!(
            "booked as {} on {}",
            last.bill_no.as_deref().unwrap_or("?"),
            last.at.with_timezone(&beijing()).format("%Y-%m-%d %H:%M")
        ),
        _ => return None,
    })
}

/// What else is known of the documents and bills outside the period.
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// The count date of every document read whose date is outside the period now.
    pub document_days: BTreeMap<i64, String>,
    /// The date of each expected bill that Kingdee holds dated outside the period.
    pub bill_dates: BTreeMap<(String, String), String>,
}

/// Every difference between what the documents map to and the bills Kingdee has.
pub fn compare(
    plans: &Plans,
    docs: &BTreeMap<i64, Value>,
    actual: &BTreeMap<(String, String), Vec<Entry>>,
    elsewhere: &Elsewhere,
    templates: &[&str],
    log: &BTreeMap<i64, Vec<Outcome>>,
) -> Vec<Difference> {
    // What the outcome log says last of a bill (its events, and its document's own).
    let reason_of = |io_id: i64, bill_no: &str, fallback: &str| {
        let events: Vec<&Outcome> = log
            .get(&io_id)
            .map(|e| {
                e.iter()
                    .filter(|o| o.bill_no.as_deref().is_none_or(|b| b == bill_no))
                    .collect()
            })
            .unwrap_or_default();
        match logged_reason(&events) {
            Some(logged) => format!("{fallback}; outcome log: {logged}"),
            None if events.is_empty() => format!("{fallback}; the outcome log has no event of it"),
            None => fallback.to_string(),
        }
    };
    let bills_of = |io_id: i64| -> Vec<&(String, String)> {
        actual
            .keys()
            .filter(|(_, no)| templates.iter().any(|t| io_id_of(no, t) == Some(io_id)))
            .collect()
    };
    let mut out = Vec::new();
    for (key, expected) in &plans.bills {
        match actual.get(key) {
            None => {
                let (kind, fallback) = match elsewhere.bill_dates.get(key) {
                    Some(date) => (
                        Kind::Different,
                        format!("in Kingdee dated {date}, outside the period"),
                    ),
                    None => (Kind::Missing, "not in Kingdee".to_string()),
                };
                out.push(Difference {
                    kind,
                    io_id: Some(expected.io_id),
                    bill_no: expected.bill_no.clone(),
                    reason: reason_of(expected.io_id, &expected.bill_no, &fallback),
                    expected: Some(expected.entries.clone()),
                    actual: None,
                });
            }
            Some(entries) if *entries != expected.entries => out.push(Difference {
                kind: Kind::Different,
                io_id: Some(expected.io_id),
                bill_no: expected.bill_no.clone(),
                reason: reason_of(
                    expected.io_id,
                    &expected.bill_no,
                    "the entries differ from what the document maps to now",
                ),
                expected: Some(expected.entries.clone()),
                actual: Some(entries.clone()),
            }),
            Some(_) => {}
        }
    }
    for (io_id, why) in &plans.unmappable {
        let booked = bills_of(*io_id);
        if booked.is_empty() {
            let bill_no = templates
                .first()
                .map(|t| t.replace("{io_id}", &io_id.to_string()))
                .unwrap_or_default();
            out.push(Difference {
                kind: Kind::Missing,
                io_id: Some(*io_id),
                reason: reason_of(*io_id, &bill_no, &format!("cannot be mapped: {why}")),
                bill_no,
                expected: None,
                actual: None,
            });
        }
        // Booked before, unmappable now: nothing to compare the bill with.
        for key in booked {
            out.push(Difference {
                kind: Kind::Different,
                io_id: Some(*io_id),
                bill_no: key.1.clone(),
                reason: reason_of(
                    *io_id,
                    &key.1,
                    &format!("its document cannot be mapped now: {why}"),
                ),
                expected: None,
                actual: actual.get(key).cloned(),
            });
        }
    }
    for (key, entries) in actual {
        if plans.bills.contains_key(key) {
            continue;
        }
        let io_id = templates.iter().find_map(|t| io_id_of(&key.1, t));
        let why = match io_id {
            Some(id) if plans.unmappable.contains_key(&id) => continue,
            Some(id) => match (
                plans.no_bill.get(&id),
                docs.contains_key(&id),
                elsewhere.document_days.get(&id),
            ) {
                (Some(why), _, _) => format!("its document is no longer eligible: {why}"),
                (None, true, _) => "its document maps to other bills now".into(),
                (None, false, Some(day)) => {
                    format!("its document's count date is {day} now, outside the period")
                }
                (None, false, None) => "no document of the period has this number".into(),
            },
            None => "the number follows none of the templates".into(),
        };
        out.push(Difference {
            kind: Kind::Unexpected,
            io_id,
            bill_no: key.1.clone(),
            reason: io_id.map_or(why.clone(), |id| reason_of(id, &key.1, &why)),
            expected: None,
            actual: Some(entries.clone()),
        });
    }
    out.sort_by(|a, b| (a.kind, a.io_id, &a.bill_no).cmp(&(b.kind, b.io_id, &b.bill_no)));
    out
}

/// The count date of a raw document, as the mapping reads it (`common::time::count_date`).
pub fn count_day(doc: &Value) -> Option<String> {
    let text = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or("");
    common::time::count_date(text("io_date"), text("modified"))
}

/// Quantities per form × stock × material on both sides.
pub fn totals(plans: &Plans, actual: &BTreeMap<(String, String), Vec<Entry>>) -> Vec<Total> {
    let mut sums: BTreeMap<(String, String, String), (f64, f64)> = BTreeMap::new();
    let qty = |e: &Entry| e.qty.parse::<f64>().unwrap_or(0.0);
    for expected in plans.bills.values() {
        for e in &expected.entries {
            sums.entry((
                expected.form_id.clone(),
                e.stock.clone(),
                e.material.clone(),
            ))
            .or_default()
            .0 += qty(e);
        }
    }
    for ((form, _), entries) in actual {
        for e in entries {
            sums.entry((form.clone(), e.stock.clone(), e.material.clone()))
                .or_default()
                .1 += qty(e);
        }
    }
    sums.into_iter()
        .map(|((form_id, stock, material), (jushuitan, kingdee))| Total {
            form_id,
            stock,
            material,
            jushuitan: round6(jushuitan),
            kingdee: round6(kingdee),
        })
        .collect()
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn day(key: &str, text: &str) -> Result<NaiveDate, ConfigError> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| ConfigError(format!("--{key} must be a date such as 2026-03-01")))
}

pub async fn run(args: ReconcileArgs) -> anyhow::Result<()> {
    let (process, layers) = worker::load_config(&args.worker)?;
    let config = producer::Config::from_layers(&layers)?;
    let mapping = layers.section::<MappingConfig>()?;
    let kingdee = layers.section::<KingdeeConfig>()?;
    kingdee.check_credentials()?;
    let terminal = start_logging(process.runtime.log_format);
    let (from, to) = (day("from", &args.from)?, day("to", &args.to)?);
    if to < from {
        return Err(ConfigError("--to must not be before --from".into()).into());
    }
    let start = beijing()
        .from_local_datetime(&from.and_hms_opt(0, 0, 0).unwrap_or_default())
        .single()
        .ok_or_else(|| ConfigError("--from is not a time in Beijing".into()))?;
    let now = now_beijing();
    if start > now {
        return Err(ConfigError("--from is in the future".into()).into());
    }

    // 1. Jushuitan, through the lock holder: from the period's first day to now, so that a
    //    document changed or cancelled since still counts for its count date.
    let ctx = Context::new(&[Stage::Producer]);
    worker::spawn_signal_handler(ctx.cancel.clone(), ctx.health.clone());
    let mut view = View::new("reconcile", terminal, windows(start, now, MAX_WINDOW).len());
    let (first, last) = (
        from.format("%Y-%m-%d").to_string(),
        to.format("%Y-%m-%d").to_string(),
    );
    // The newest version of each document; only those of the period are kept whole.
    let mut newest: BTreeMap<i64, (Option<String>, Result<Value, String>)> = BTreeMap::new();
    let fetched = ask_holder(
        &config,
        &ctx,
        (start, now),
        Deliver::Reply,
        &mut view,
        |docs| {
            for doc in docs {
                let Some(io_id) = common::messages::int_field(doc.get("io_id")) else {
                    continue;
                };
                let modified = doc
                    .get("modified")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if newest.get(&io_id).is_some_and(|(held, _)| *held > modified) {
                    continue;
                }
                let kept = match count_day(&doc) {
                    Some(day) if day >= first && day <= last => Ok(doc),
                    Some(day) => Err(day),
                    None => Err("unknown".into()),
                };
                newest.insert(io_id, (modified, kept));
            }
        },
    )
    .await;
    if let Err(e) = fetched {
        ctx.cancel.cancel();
        return Err(
            if e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some()) {
                e
            } else {
                CouldNotAsk(format!("Jushuitan: {e:#}")).into()
            },
        );
    }
    let mut docs: BTreeMap<i64, Value> = BTreeMap::new();
    let mut elsewhere = Elsewhere::default();
    for (io_id, (_, kept)) in newest {
        match kept {
            Ok(doc) => {
                docs.insert(io_id, doc);
            }
            Err(day) => {
                elsewhere.document_days.insert(io_id, day);
            }
        }
    }

    // 2. What they map to.
    let plans = plan_all(docs.values(), &mapping);

    // 3. Kingdee's bills of the period with our numbers.
    let after = (to + ChronoDuration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let templates = [
        mapping.bill_no_template.as_str(),
        mapping.gain_bill_no_template.as_str(),
    ];
    let client =
        KingdeeClient::new(&kingdee, 1, None).map_err(|e| CouldNotAsk(format!("Kingdee: {e}")))?;
    let mut actual: BTreeMap<(String, String), Vec<Entry>> = BTreeMap::new();
    for form in BILL_FORMS {
        let template = if form == FORM_MIS_DELIVERY {
            templates[0]
        } else {
            templates[1]
        };
        let prefix = template.split("{io_id}").next().unwrap_or("");
        // Kingdee compares dates with their time: before the day after the last.
        let mut filter = format!("FDate >= '{first}' and FDate < '{after}'");
        if !prefix.is_empty() {
            filter.push_str(&format!(
                " and FBillNo like '{}%'",
                prefix.replace('\'', "''")
            ));
        }
        let rows = client
            .execute_bill_query(form, CHECK_FIELDS, &filter)
            .await
            .map_err(|e| CouldNotAsk(format!("Kingdee: {e}")))?;
        for (bill_no, entries) in entries_of_rows(&rows) {
            if templates.iter().any(|t| io_id_of(&bill_no, t).is_some()) {
                actual.insert((form.to_string(), bill_no), entries);
            }
        }
    }

    // Expected bills not in the period: in Kingdee under another date?
    for form in BILL_FORMS {
        let absent: Vec<&str> = plans
            .bills
            .keys()
            .filter(|key| key.0 == form && !actual.contains_key(*key))
            .map(|(_, no)| no.as_str())
            .collect();
        for numbers in absent.chunks(500) {
            let rows = client
                .execute_bill_query(form, "FBillNo,FDate", &bill_no_filter(numbers))
                .await
                .map_err(|e| CouldNotAsk(format!("Kingdee: {e}")))?;
            for row in rows {
                let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
                let (no, date) = (text(row.first()), text(row.get(1)));
                elsewhere.bill_dates.insert(
                    (form.to_string(), no),
                    date.get(..10).unwrap_or(&date).to_string(),
                );
            }
        }
    }

    // 4. The outcome log's reasons.
    let broker = RabbitBroker::connect_once(
        config.amqp.url.clone(),
        "jst2kd-reconcile",
        common::queue::Topology::from_config(&config.amqp),
        CancellationToken::new(),
    )
    .await
    .map_err(|e| CouldNotAsk(format!("RabbitMQ: {e}")))?;
    let since = (start - ChronoDuration::days(1)).to_utc();
    let wanted: std::collections::BTreeSet<i64> = docs
        .keys()
        .copied()
        .chain(plans.unmappable.keys().copied())
        .chain(
            actual
                .keys()
                .filter_map(|(_, no)| templates.iter().find_map(|t| io_id_of(no, t))),
        )
        .collect();
    let events = outcomes::read(&Broker::Rabbit(broker.clone()), since, |o| {
        o.io_id.is_some_and(|id| wanted.contains(&id))
    })
    .await
    .map_err(|e| CouldNotAsk(format!("the outcome log: {e}")));
    broker.close().await;
    ctx.cancel.cancel();
    let mut log: BTreeMap<i64, Vec<Outcome>> = BTreeMap::new();
    for event in events? {
        if let Some(id) = event.io_id {
            log.entry(id).or_default().push(event);
        }
    }
    for events in log.values_mut() {
        events.sort_by_key(|o| o.at);
    }

    let differences = compare(&plans, &docs, &actual, &elsewhere, &templates, &log);
    let totals = totals(&plans, &actual);
    let count = |k: Kind| differences.iter().filter(|d| d.kind == k).count();
    let summary = format!(
        "reconcile {first} – {last}: {} documents, {} bills in Kingdee, {} differences ({} missing, {} unexpected, {} different)",
        docs.len(),
        actual.len(),
        differences.len(),
        count(Kind::Missing),
        count(Kind::Unexpected),
        count(Kind::Different)
    );
    match args.format {
        Format::Json => {
            let out = json!({
                "from": first, "to": last, "documents": docs.len(), "bills": actual.len(),
                "differences": differences, "totals": totals,
            });
            println!("{out}");
            eprintln!("{summary}");
        }
        Format::Csv => {
            println!("kind,io_id,bill_no,reason,expected,actual");
            for d in &differences {
                let entries = |e: &Option<Vec<Entry>>| {
                    e.as_ref()
                        .map(|e| serde_json::to_string(e).unwrap_or_default())
                        .unwrap_or_default()
                };
                println!(
                    "{},{},{},{},{},{}",
                    d.kind.as_str(),
                    d.io_id.map(|i| i.to_string()).unwrap_or_default(),
                    csv(&d.bill_no),
                    csv(&d.reason),
                    csv(&entries(&d.expected)),
                    csv(&entries(&d.actual))
                );
            }
            eprintln!("{summary}");
        }
        Format::Text => {
            for d in &differences {
                println!(
                    "{:<10}  {:<16}  {}",
                    d.kind.as_str(),
                    escape(&d.bill_no),
                    escape(&d.reason)
                );
                for (side, entries) in [("expected", &d.expected), ("kingdee", &d.actual)] {
                    if let Some(entries) = entries {
                        let text: Vec<String> = entries
                            .iter()
                            .map(|e| {
                                format!(
                                    "{} {} × {}{}",
                                    e.material,
                                    e.stock,
                                    e.qty.trim_end_matches('0').trim_end_matches('.'),
                                    if e.lot.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" lot {}", e.lot)
                                    }
                                )
                            })
                            .collect();
                        println!("            {side}: {}", escape(&text.join(", ")));
                    }
                }
            }
            println!("totals (form, stock, material: jushuitan / kingdee):");
            for t in &totals {
                let mark = if (t.jushuitan - t.kingdee).abs() > 1e-6 {
                    "  ≠"
                } else {
                    ""
                };
                println!(
                    "  {} {} {}: {} / {}{mark}",
                    t.form_id,
                    escape(&t.stock),
                    escape(&t.material),
                    t.jushuitan,
                    t.kingdee
                );
            }
            println!("{summary}");
        }
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Differences(differences.len()).into())
    }
}

/// Reconciliation found differences (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0} differences between Jushuitan and Kingdee")]
pub struct Differences(pub usize);

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(material: &str, qty: &str) -> Entry {
        Entry {
            material: material.into(),
            stock: "CK001".into(),
            qty: qty.into(),
            lot: String::new(),
        }
    }

    fn expected(io_id: i64, entries: Vec<Entry>) -> ((String, String), Expected) {
        let bill_no = format!("JSTPD{io_id}");
        (
            (FORM_MIS_DELIVERY.into(), bill_no.clone()),
            Expected {
                io_id,
                form_id: FORM_MIS_DELIVERY.into(),
                bill_no,
                entries,
            },
        )
    }

    #[test]
    fn bill_numbers_name_their_document() {
        assert_eq!(io_id_of("JSTPD123", "JSTPD{io_id}"), Some(123));
        assert_eq!(io_id_of("JSTPD123-2", "JSTPD{io_id}"), Some(123));
        assert_eq!(io_id_of("JSTPY123", "JSTPD{io_id}"), None);
        assert_eq!(io_id_of("JSTPD12x", "JSTPD{io_id}"), None);
        assert_eq!(io_id_of("JSTPD", "JSTPD{io_id}"), None);
        assert_eq!(io_id_of("X-7-Y", "X-{io_id}-Y"), Some(7));
        assert_eq!(io_id_of("X-7-Y-3", "X-{io_id}-Y"), Some(7));
        assert_eq!(io_id_of("anything", "no placeholder"), None);
    }

    #[test]
    fn every_kind_of_difference_is_found_once() {
        let templates = ["JSTPD{io_id}", "JSTPY{io_id}"];
        let mut plans = Plans::default();
        plans.bills.extend([
            expected(1, vec![entry("A", "1.000000")]),
            expected(2, vec![entry("B", "2.000000")]),
            expected(3, vec![entry("C", "3.000000")]),
        ]);
        plans
            .unmappable
            .insert(4, "no mapping for warehouse 9".into());
        plans
            .no_bill
            .insert(5, "its status is Cancelled now".into());
        let docs: BTreeMap<i64, Value> = (1..=5).map(|i| (i, json!({"io_id": i}))).collect();
        let mut actual = BTreeMap::new();
        // 1 agrees; 2 is missing; 3 differs; 5 is no longer eligible; 9 has no document.
        actual.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD1".into()),
            vec![entry("A", "1.000000")],
        );
        actual.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD3".into()),
            vec![entry("C", "4.000000")],
        );
        actual.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD5".into()),
            vec![entry("E", "5.000000")],
        );
        actual.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD9".into()),
            vec![entry("F", "1.000000")],
        );
        let mut log = BTreeMap::new();
        log.insert(
            4,
            vec![
                Outcome::new(Stage::Transformer, OutcomeKind::DeadLettered)
                    .of_document(Some(4))
                    .with("kind", "mapping")
                    .with("reason", "no warehouse 9"),
            ],
        );
        let found = compare(
            &plans,
            &docs,
            &actual,
            &Elsewhere::default(),
            &templates,
            &log,
        );
        let kinds: Vec<(Kind, &str)> = found.iter().map(|d| (d.kind, d.bill_no.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Missing, "JSTPD2"),
                (Kind::Missing, "JSTPD4"),
                (Kind::Unexpected, "JSTPD5"),
                (Kind::Unexpected, "JSTPD9"),
                (Kind::Different, "JSTPD3"),
            ]
        );
        assert!(
            found[1]
                .reason
                .contains("dead-lettered (mapping): no warehouse 9"),
            "{:?}",
            found[1]
        );
        assert!(found[0].reason.contains("no event"), "{:?}", found[0]);
        assert!(found[2].reason.contains("Cancelled"), "{:?}", found[2]);
        assert!(found[3].reason.contains("no document"), "{:?}", found[3]);
        assert_eq!(found[4].actual, Some(vec![entry("C", "4.000000")]));

        let totals = totals(&plans, &actual);
        let c = totals.iter().find(|t| t.material == "C").expect("C");
        assert_eq!((c.jushuitan, c.kingdee), (3.0, 4.0));
    }

    #[test]
    fn bills_dated_elsewhere_and_documents_unmappable_now_are_different() {
        let templates = ["JSTPD{io_id}", "JSTPY{io_id}"];
        let mut plans = Plans::default();
        plans
            .bills
            .extend([expected(1, vec![entry("A", "1.000000")])]);
        plans
            .unmappable
            .insert(2, "no mapping for warehouse 9".into());
        let docs: BTreeMap<i64, Value> = (1..=2).map(|i| (i, json!({"io_id": i}))).collect();
        let mut actual = BTreeMap::new();
        actual.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD2".into()),
            vec![entry("B", "1.000000")],
        );
        actual.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD3".into()),
            vec![entry("C", "1.000000")],
        );
        let mut elsewhere = Elsewhere::default();
        elsewhere.bill_dates.insert(
            (FORM_MIS_DELIVERY.into(), "JSTPD1".into()),
            "2026-10-31".into(),
        );
        elsewhere.document_days.insert(3, "2026-12-02".into());
        let found = compare(
            &plans,
            &docs,
            &actual,
            &elsewhere,
            &templates,
            &BTreeMap::new(),
        );
        let kinds: Vec<(Kind, &str)> = found.iter().map(|d| (d.kind, d.bill_no.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Unexpected, "JSTPD3"),
                (Kind::Different, "JSTPD1"),
                (Kind::Different, "JSTPD2"),
            ]
        );
        assert!(
            found[0].reason.contains("count date is 2026-12-02"),
            "{:?}",
            found[0]
        );
        assert!(
            found[1].reason.contains("dated 2026-10-31"),
            "{:?}",
            found[1]
        );
        assert!(
            found[2].reason.contains("cannot be mapped now"),
            "{:?}",
            found[2]
        );
    }

    #[test]
    fn count_days_are_read_as_the_mapping_reads_them() {
        assert_eq!(
            count_day(&json!({"io_date": "2026-11-05 10:00:00"})).as_deref(),
            Some("2026-11-05")
        );
        assert_eq!(
            count_day(&json!({"modified": "2026-11-06 10:00:00"})).as_deref(),
            Some("2026-11-06")
        );
        assert_eq!(count_day(&json!({})), None);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"x\""), "\"say \"\"x\"\"\"");
    }
}
