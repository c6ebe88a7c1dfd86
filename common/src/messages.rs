//! The contract between the stages: message bodies, schemas and headers (SPEC section 3).
//!
//! A `jst.count.v1` body is the JST count document exactly as JST returned it, every field kept;
//! [`CountDoc`] is a lenient, typed *view* of it (numbers as numbers or numeric text, `""` for
//! absent). A `kd.bill.v1` body is a [`BillMessage`]. Nothing else crosses a queue.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Schema of a count document message.
pub const SCHEMA_COUNT: &str = "jst.count.v1";
/// Schema of a Kingdee bill message.
pub const SCHEMA_BILL: &str = "kd.bill.v1";
/// `jst2kd-schema` of a backfill request on the control queue.
pub const SCHEMA_BACKFILL: &str = "jst2kd.backfill.v1";

/// Header names. Ours start with `jst2kd-`; the broker owns `x-`.
pub mod header {
    /// `jst.count.v1` or `kd.bill.v1`.
    pub const SCHEMA: &str = "jst2kd-schema";
    /// How often this stage has tried (1 = first retry).
    pub const ATTEMPT: &str = "jst2kd-attempt";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// Stage that dead-lettered the message.
    pub const STAGE: &str = "jst2kd-stage";
    /// Why it was dead-lettered: `malformed`, `mapping`, `rejected`, `conflict`, `exhausted`.
    pub const ERROR_KIND: &str = "jst2kd-error-kind";
    /// Human-readable reason, at most 4 KiB.
    pub const ERROR: &str = "jst2kd-error";
    /// Kingdee `Errors` of the bill, JSON, at most 16 KiB.
    pub const KINGDEE_ERRORS: &str = "jst2kd-kingdee-errors";
    /// For a `conflict`: the entries of the bill Kingdee already holds, as JSON, at most
    /// 16 KiB (the message body is the new version).
    pub const KINGDEE_EXISTING: &str = "jst2kd-kingdee-existing";
    /// Queue a replay sends the message back to.
    pub const ORIGIN_QUEUE: &str = "jst2kd-origin-queue";
    /// Routing key a replay uses.
    pub const ORIGIN_KEY: &str = "jst2kd-origin-key";
    /// When it was dead-lettered (RFC 3339).
    pub const FAILED_AT: &str = "jst2kd-failed-at";
    /// How often it was replayed.
    pub const REPLAYED: &str = "jst2kd-replayed";
    /// When the producer published the count document (RFC 3339).
    pub const PUBLISHED_AT: &str = "jst2kd-published-at";
    /// On a retry or dead-letter copy whose headers were bounded: the names of the headers of
    /// the original that were cut or left out.
    pub const HEADERS_TRUNCATED: &str = "jst2kd-headers-truncated";
    /// Broker's dead-letter history.
    pub const X_DEATH: &str = "x-death";
}

/// Message headers; values are JSON values (text and integers in practice).
pub type Headers = BTreeMap<String, Value>;

/// Reads a text header.
pub fn header_text<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(Value::as_str)
}

/// Reads an integer header (sent as a number, tolerated as text).
pub fn header_int(headers: &Headers, name: &str) -> Option<i64> {
    match headers.get(name)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A random identifier of 16 hex digits (a backfill request's id).
pub fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A W3C `traceparent` with a fresh random trace id, for a document entering the pipeline.
pub fn new_traceparent() -> String {
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    format!("00-{trace:032x}-{span:016x}-01")
}

/// Why a count document could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DocError(pub String);

/// A typed, lenient view of one JST count document (盘点单).
#[derive(Debug, Clone, PartialEq)]
pub struct CountDoc {
    /// 盘点单号.
    pub io_id: i64,
    /// `WaitConfirm`, `Confirmed`, `Archive`, `Cancelled`, `Delete`.
    pub status: String,
    /// Document date as JST wrote it.
    pub io_date: String,
    /// Last change as JST wrote it.
    pub modified: String,
    /// Warehouse kind (1 main, 2 returns, …).
    pub wh_id: i64,
    /// Branch warehouse; absent or empty counts as 0.
    pub wms_co_id: i64,
    /// Free text.
    pub remark: String,
    /// Lines.
    pub items: Vec<CountItem>,
}

/// One line of a count document. Read leniently: what a line lacks matters only when the line
/// becomes an entry (the mapping decides), so a line that books nothing is never an error.
#[derive(Debug, Clone, PartialEq)]
pub struct CountItem {
    /// Line id.
    pub ioi_id: Option<i64>,
    /// 商品编码; empty when the line has none (its batches may carry it).
    pub sku_id: String,
    /// Count difference: negative loss, positive gain (JST's convention). Absent or empty
    /// counts as 0; `None` when it is there but not a number.
    pub qty: Option<f64>,
    /// Batches, when batch management is on.
    pub batchs: Vec<CountBatch>,
    /// A lot given on the line itself (`batch_id`, lines without `batchs`).
    pub batch_id: Option<String>,
    /// The line lot's production date, as JST wrote it.
    pub product_date: Option<String>,
    /// The line lot's expiry date, as JST wrote it.
    pub expiration_date: Option<String>,
}

/// One batch of a line.
#[derive(Debug, Clone, PartialEq)]
pub struct CountBatch {
    /// The batch's own 商品编码, used when the line has none.
    pub sku_id: Option<String>,
    /// Lot number.
    pub batch_no: String,
    /// Quantity (same sign convention as the line).
    pub qty: f64,
    /// Production date, as JST wrote it.
    pub product_date: Option<String>,
    /// Expiry date, as JST wrote it.
    pub expiration_date: Option<String>,
}

impl CountDoc {
    /// Reads the fields the pipeline uses from a raw document; every other field stays in the
    /// raw value untouched.
    pub fn from_value(v: &Value) -> Result<Self, DocError> {
        let obj = v
            .as_object()
            .ok_or_else(|| DocError("the count document is not a JSON object".into()))?;
        let io_id = int_field(obj.get("io_id"))
            .ok_or_else(|| DocError("the count document has no readable io_id".into()))?;
        let items = match obj.get("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if s.is_empty() => Vec::new(),
            Some(Value::Array(lines)) => lines
                .iter()
                .enumerate()
                .map(|(i, line)| CountItem::from_value(line, i))
                .collect::<Result<_, _>>()
                .map_err(|e| DocError(format!("document {io_id}: {e}")))?,
            Some(_) => {
                return Err(DocError(format!("document {io_id}: items is not a list")));
            }
        };
        Ok(Self {
            io_id,
            status: text_field(obj.get("status")).unwrap_or_default(),
            io_date: text_field(obj.get("io_date")).unwrap_or_default(),
            modified: text_field(obj.get("modified")).unwrap_or_default(),
            wh_id: int_field(obj.get("wh_id")).unwrap_or(0),
            wms_co_id: int_field(obj.get("wms_co_id")).unwrap_or(0),
            remark: text_field(obj.get("remark")).unwrap_or_default(),
            items,
        })
    }

    /// `{io_id}@{modified}`: the message id of this version of the document.
    pub fn message_id(&self) -> String {
        format!("{}@{}", self.io_id, self.modified)
    }
}

impl CountItem {
    fn from_value(v: &Value, index: usize) -> Result<Self, DocError> {
        let obj = v
            .as_object()
            .ok_or_else(|| DocError(format!("line {} is not an object", index + 1)))?;
        let sku_id = text_field(obj.get("sku_id")).unwrap_or_default();
        let qty = match obj.get("qty") {
            None | Some(Value::Null) => Some(0.0),
            Some(Value::String(s)) if s.trim().is_empty() => Some(0.0),
            present => num_field(present).filter(|q| q.is_finite()),
        };
        let batchs = match obj.get("batchs") {
            Some(Value::Array(bs)) => bs
                .iter()
                .enumerate()
                .map(|(b_index, b)| CountBatch::from_value(b, index, b_index, &sku_id))
                .collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        let text = |key: &str| text_field(obj.get(key)).filter(|s| !s.is_empty());
        Ok(Self {
            ioi_id: int_field(obj.get("ioi_id")),
            sku_id,
            qty,
            batchs,
            batch_id: text("batch_id"),
            product_date: text("product_date"),
            expiration_date: text("expiration_date"),
        })
    }
}

impl CountBatch {
    /// A batch of line `line`. Its quantity may be absent (JST writes absent values as `""`:
    /// the batch then counts as 0); a quantity that is there but not a finite number makes the
    /// document malformed, since reading it as 0 would book the line wrongly without a word.
    fn from_value(v: &Value, line: usize, index: usize, sku_id: &str) -> Result<Self, DocError> {
        let at = || format!("line {} ({sku_id}) batch {}", line + 1, index + 1);
        let b = v
            .as_object()
            .ok_or_else(|| DocError(format!("{} is not an object", at())))?;
        let qty = match b.get("qty") {
            None | Some(Value::Null) => 0.0,
            Some(Value::String(s)) if s.trim().is_empty() => 0.0,
            present => num_field(present)
                .filter(|q| q.is_finite())
                .ok_or_else(|| DocError(format!("{} has an unreadable qty", at())))?,
        };
        Ok(Self {
            sku_id: text_field(b.get("sku_id")).filter(|s| !s.is_empty()),
            batch_no: text_field(b.get("batch_no")).unwrap_or_default(),
            qty,
            product_date: text_field(b.get("product_date")).filter(|s| !s.is_empty()),
            expiration_date: text_field(b.get("expiration_date")).filter(|s| !s.is_empty()),
        })
    }
}

/// An integer given as a number or numeric text; `""`, `null` and absence are `None`.
pub fn int_field(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

/// A number given as a number or numeric text.
pub fn num_field(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok().filter(|f: &f64| f.is_finite()),
        _ => None,
    }
}

/// Text given as text or a number; `null` and absence are `None`.
pub fn text_field(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Where a bill came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillSource {
    /// The JST count document.
    pub io_id: i64,
    /// Its `modified` at mapping time.
    pub modified: String,
}

/// A `kd.bill.v1` body: one Kingdee bill ready for BatchSave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillMessage {
    /// `STK_MisDelivery` (loss) or `STK_MISCELLANEOUS` (gain).
    pub form_id: String,
    /// Equals the model's `FBillNo`.
    pub bill_no: String,
    /// The JST document it came from.
    pub source: BillSource,
    /// The Kingdee Model object.
    pub model: Value,
}

/// Form of the loss bill (其他出库单).
pub const FORM_MIS_DELIVERY: &str = "STK_MisDelivery";
/// Form of the gain bill (其他入库单).
pub const FORM_MISCELLANEOUS: &str = "STK_MISCELLANEOUS";
/// The only forms a `kd.bill.v1` message may name: the ones the mapping produces.
pub const BILL_FORMS: [&str; 2] = [FORM_MIS_DELIVERY, FORM_MISCELLANEOUS];

impl BillMessage {
    /// Parses and checks a body before anything of it is sent to Kingdee: the form is one the
    /// mapping produces, the bill number is the model's `FBillNo`, and the model has entries
    /// whose `FQty` is a finite number above 0. The loader trusts nothing else it reads from a
    /// queue that other programs can publish to.
    pub fn from_slice(body: &[u8]) -> Result<Self, DocError> {
        let bill: BillMessage = serde_json::from_slice(body)
            .map_err(|e| DocError(format!("not a kd.bill.v1 body: {e}")))?;
        if bill.bill_no.is_empty() {
            return Err(DocError("bill_no is empty".into()));
        }
        if !BILL_FORMS.contains(&bill.form_id.as_str()) {
            return Err(DocError(format!(
                "bill {}: form_id {:?} is not one the mapping produces ({})",
                bill.bill_no,
                bill.form_id,
                BILL_FORMS.join(", ")
            )));
        }
        if bill.model.get("FBillNo").and_then(Value::as_str) != Some(bill.bill_no.as_str()) {
            return Err(DocError(format!(
                "bill {}: model.FBillNo differs from bill_no",
                bill.bill_no
            )));
        }
        // A new bill only: an FID or FEntryID would make BatchSave update (and, with
        // IsDeleteEntry, empty) a bill Kingdee already holds.
        let id_set = |v: Option<&Value>| {
            v.is_some_and(|v| !(v.is_null() || *v == 0 || *v == "0" || *v == ""))
        };
        if id_set(bill.model.get("FID")) {
            return Err(DocError(format!(
                "bill {}: model.FID names an existing bill; only new bills are sent",
                bill.bill_no
            )));
        }
        let Some(entries) = bill.model.get("FEntity").and_then(Value::as_array) else {
            return Err(DocError(format!(
                "bill {}: model.FEntity is not a list of entries",
                bill.bill_no
            )));
        };
        if entries.is_empty() {
            return Err(DocError(format!(
                "bill {}: model.FEntity is empty",
                bill.bill_no
            )));
        }
        for (i, entry) in entries.iter().enumerate() {
            if id_set(entry.get("FEntryID")) {
                return Err(DocError(format!(
                    "bill {}: entry {} names an existing entry (FEntryID)",
                    bill.bill_no,
                    i + 1
                )));
            }
            let qty = entry.get("FQty").and_then(Value::as_f64);
            if !qty.is_some_and(|q| q.is_finite() && q > 0.0) {
                return Err(DocError(format!(
                    "bill {}: entry {} has no FQty above 0",
                    bill.bill_no,
                    i + 1
                )));
            }
        }
        Ok(bill)
    }

    /// Entries of the model (0 when it has none).
    pub fn entry_count(&self) -> usize {
        self.model
            .get("FEntity")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_documents_leniently_and_keeps_unknown_fields_in_the_raw_value() {
        let raw = json!({
            "io_id": "9007199254740993", "status": "Confirmed", "io_date": "2026-03-01 10:00:00",
            "modified": "2026-03-01  10:05:00", "wh_id": "1", "wms_co_id": "", "remark": "r",
            "labels": ["x"], "f_status": "z",
            "items": [
                {"ioi_id": 11, "sku_id": "A-1", "qty": "-2", "batchs": [
                    {"batch_no": "L1", "qty": -1, "product_date": "", "expiration_date": "2027-01-01"}
                ]},
                {"sku_id": 1234, "qty": 3.0}
            ]
        });
        let doc = CountDoc::from_value(&raw).expect("readable");
        assert_eq!(doc.io_id, 9_007_199_254_740_993);
        assert_eq!(doc.wh_id, 1);
        assert_eq!(doc.wms_co_id, 0);
        assert_eq!(doc.items[0].qty, Some(-2.0));
        assert_eq!(doc.items[0].batchs[0].product_date, None);
        assert_eq!(doc.items[1].sku_id, "1234");
        assert_eq!(doc.items[1].ioi_id, None);
        assert_eq!(doc.message_id(), "9007199254740993@2026-03-01  10:05:00");
    }

    #[test]
    fn unreadable_documents_are_errors_not_panics() {
        for bad in [
            json!([]),
            json!({"status": "Confirmed"}),
            json!({"io_id": "abc"}),
            json!({"io_id": 1, "items": {"a": 1}}),
            json!({"io_id": 1, "items": ["a line"]}),
        ] {
            assert!(CountDoc::from_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_line_is_read_leniently_and_the_mapping_decides_what_it_lacks() {
        let raw = json!({"io_id": 1, "items": [
            {"sku_id": "A", "qty": "many"},
            {"qty": 1},
            {"sku_id": "C"},
            {"sku_id": "D", "qty": -1, "batch_id": "L9", "product_date": "2026-01-01", "expiration_date": ""},
            {"qty": -2, "batchs": [{"sku_id": "E", "qty": -2, "batch_no": "L1"}]}
        ]});
        let doc = CountDoc::from_value(&raw).expect("readable");
        let i = &doc.items;
        assert_eq!(i[0].qty, None, "there but not a number");
        assert_eq!((i[1].sku_id.as_str(), i[1].qty), ("", Some(1.0)));
        assert_eq!(i[2].qty, Some(0.0), "absent counts as 0");
        assert_eq!(i[3].batch_id.as_deref(), Some("L9"));
        assert_eq!(i[3].product_date.as_deref(), Some("2026-01-01"));
        assert_eq!(i[3].expiration_date, None);
        assert_eq!(i[4].batchs[0].sku_id.as_deref(), Some("E"));
    }

    #[test]
    fn bill_bodies_are_checked() {
        let bill = |form: &str, model: Value| {
            json!({"form_id": form, "bill_no": "B1", "source": {"io_id": 1, "modified": "m"},
                "model": model})
            .to_string()
        };
        let entry = |qty: Value| json!({"FMaterialId": {"FNumber": "M"}, "FQty": qty});
        let good = bill(
            "STK_MisDelivery",
            json!({"FBillNo": "B1", "FEntity": [entry(json!(2.5))]}),
        );
        let parsed = BillMessage::from_slice(good.as_bytes()).expect("good bill");
        let with_zero_fid = bill(
            "STK_MisDelivery",
            json!({"FID": 0, "FBillNo": "B1", "FEntity": [entry(json!(1))]}),
        );
        assert!(
            BillMessage::from_slice(with_zero_fid.as_bytes()).is_ok(),
            "FID 0 is a new bill"
        );
        assert_eq!(parsed.entry_count(), 1);
        let gain = bill(
            "STK_MISCELLANEOUS",
            json!({"FBillNo": "B1", "FEntity": [entry(json!(1))]}),
        );
        assert!(BillMessage::from_slice(gain.as_bytes()).is_ok());
        let bad = [
            bill(
                "STK_MisDelivery",
                json!({"FBillNo": "B2", "FEntity": [entry(json!(1))]}),
            ),
            // Only the forms the mapping produces reach Kingdee.
            bill(
                "BD_MATERIAL",
                json!({"FBillNo": "B1", "FEntity": [entry(json!(1))]}),
            ),
            bill(
                "SAL_OUTSTOCK",
                json!({"FBillNo": "B1", "FEntity": [entry(json!(1))]}),
            ),
            bill("STK_MisDelivery", json!({"FBillNo": "B1"})),
            bill("STK_MisDelivery", json!({"FBillNo": "B1", "FEntity": []})),
            bill(
                "STK_MisDelivery",
                json!({"FBillNo": "B1", "FEntity": [entry(json!(0))]}),
            ),
            bill(
                "STK_MisDelivery",
                json!({"FBillNo": "B1", "FEntity": [entry(json!(-3))]}),
            ),
            bill(
                "STK_MisDelivery",
                json!({"FBillNo": "B1", "FEntity": [entry(json!("NaN"))]}),
            ),
            bill(
                "STK_MisDelivery",
                json!({"FBillNo": "B1", "FEntity": [entry(json!(null))]}),
            ),
            // An existing bill or entry would be overwritten: only new bills are sent.
            bill(
                "STK_MisDelivery",
                json!({"FID": 140_670, "FBillNo": "B1", "FEntity": [entry(json!(1))]}),
            ),
            bill(
                "STK_MisDelivery",
                json!({"FBillNo": "B1",
                    "FEntity": [{"FEntryID": 9, "FMaterialId": {"FNumber": "M"}, "FQty": 1}]}),
            ),
        ];
        for body in bad {
            assert!(BillMessage::from_slice(body.as_bytes()).is_err(), "{body}");
        }
        assert!(BillMessage::from_slice(b"{not json").is_err());
        // JSON has no NaN or infinity; a number too large for f64 is refused by the parser.
        let huge = good.replace("2.5", "1e999");
        assert!(BillMessage::from_slice(huge.as_bytes()).is_err());
    }

    #[test]
    fn a_batch_quantity_is_read_or_the_document_is_malformed() {
        let doc = |batch: Value| json!({"io_id": 1, "items": [{"sku_id": "A", "qty": -2, "batchs": [batch]}]});
        for empty in [
            json!({"batch_no": "L"}),
            json!({"qty": ""}),
            json!({"qty": null}),
        ] {
            let d = CountDoc::from_value(&doc(empty.clone())).expect("absent qty reads as 0");
            assert_eq!(d.items[0].batchs[0].qty, 0.0, "{empty}");
        }
        for bad in [
            json!({"qty": "many"}),
            json!({"qty": "NaN"}),
            json!({"qty": "inf"}),
            json!({"qty": {"v": 1}}),
            json!("L1"),
        ] {
            let err = CountDoc::from_value(&doc(bad.clone())).expect_err("malformed");
            assert!(err.0.contains("batch 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let t = new_traceparent();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
    }
}
