//! Maps one JST count document to Kingdee bills (SPEC section 4, rules 1–6, loss documents).
//!
//! Pure: no I/O, the same input always gives the same bills, and the bill number depends only
//! on `io_id` — which is what makes a re-sent document a harmless duplicate in Kingdee.

use crate::config::{Gains, LossSign, MappingConfig};
use common::messages::{BillMessage, BillSource, CountBatch, CountDoc, CountItem, DocError};
use common::time::date_part;
use serde_json::{Map, Value, json};

pub use common::messages::{FORM_MIS_DELIVERY, FORM_MISCELLANEOUS};

/// Which bill a line goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Loss,
    Gain,
}

/// Why a document produced no bill on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Its status is not in `mapping.statuses`.
    Status,
    /// No line becomes an entry.
    NoLines,
}

impl SkipReason {
    /// Every reason.
    pub const ALL: [SkipReason; 2] = [SkipReason::Status, SkipReason::NoLines];

    /// Label of `jst2kd_skipped_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Status => "status",
            SkipReason::NoLines => "no_lines",
        }
    }
}

/// What a document becomes.
#[derive(Clone, Debug, PartialEq)]
pub enum Mapped {
    /// Nothing, on purpose.
    Skipped(SkipReason),
    /// These bills.
    Bills(Vec<BillMessage>),
}

/// Why a document cannot be mapped.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MapError {
    /// The document cannot be read (dead-lettered as `malformed`).
    #[error("{0}")]
    Malformed(#[from] DocError),
    /// The configuration lacks a mapping (dead-lettered as `mapping`); the text says what to add.
    #[error("{0}")]
    Mapping(String),
}

/// Maps a raw `jst.count.v1` body.
pub fn map_document(raw: &Value, config: &MappingConfig) -> Result<Mapped, MapError> {
    let doc = CountDoc::from_value(raw)?;
    map_count(&doc, config)
}

/// Maps a parsed document.
pub fn map_count(doc: &CountDoc, config: &MappingConfig) -> Result<Mapped, MapError> {
    Ok(match plan(doc, config)? {
        Plan::Skipped(reason) => Mapped::Skipped(reason),
        Plan::Bills(parts) => Mapped::Bills(parts.collect()),
    })
}

/// What a document becomes, with its bills still to be built.
#[derive(Debug)]
pub enum Plan<'a> {
    /// Nothing, on purpose.
    Skipped(SkipReason),
    /// These bills, built one at a time.
    Bills(Parts<'a>),
}

/// The bills of a document, built one part at a time as they are asked for: a document with
/// 100,000 lines never has more than one part's entries built at once.
#[derive(Debug)]
pub struct Parts<'a> {
    doc: &'a CountDoc,
    config: &'a MappingConfig,
    date: String,
    /// The loss bill, then the gain bill: each its entries as specs.
    bills: Vec<(Kind, Vec<Spec<'a>>)>,
    /// Which bill, and which of its parts (0-based), comes next.
    next: (usize, usize),
}

/// One entry to build: a line, or one batch of it.
#[derive(Debug)]
struct Spec<'a> {
    line: &'a CountItem,
    batch: Option<&'a CountBatch>,
    stock: &'a str,
}

impl Parts<'_> {
    /// How many bills there are in all.
    pub fn count(&self) -> usize {
        let size = self.config.max_entries.max(1);
        self.bills
            .iter()
            .map(|(_, specs)| specs.len().div_ceil(size).max(1))
            .sum()
    }
}

impl Iterator for Parts<'_> {
    type Item = BillMessage;

    fn next(&mut self) -> Option<BillMessage> {
        let size = self.config.max_entries.max(1);
        loop {
            let (which, part) = self.next;
            let (kind, specs) = self.bills.get(which)?;
            let parts = specs.len().div_ceil(size).max(1);
            if part >= parts {
                self.next = (which + 1, 0);
                continue;
            }
            self.next = (which, part + 1);
            let entries = specs
                .iter()
                .skip(part * size)
                .take(size)
                .map(|s| {
                    let material = material(s.line, self.config);
                    let qty = s.batch.map_or(s.line.qty, |b| b.qty);
                    entry(s.line, &material, s.stock, self.config, *kind, qty, s.batch)
                })
                .collect();
            return Some(bill(
                self.doc,
                self.config,
                *kind,
                entries,
                &self.date,
                (part + 1, parts),
            ));
        }
    }
}

/// Decides what a document becomes (skip, mapping error, or its bills), building no entry yet.
pub fn plan<'a>(doc: &'a CountDoc, config: &'a MappingConfig) -> Result<Plan<'a>, MapError> {
    if !config.statuses.iter().any(|s| s == &doc.status) {
        return Ok(Plan::Skipped(SkipReason::Status));
    }
    let is_loss = |qty: f64| match config.loss_sign {
        LossSign::Negative => qty < 0.0,
        LossSign::Positive => qty > 0.0,
    };
    let losses: Vec<&CountItem> = doc.items.iter().filter(|i| is_loss(i.qty)).collect();
    let gains: Vec<&CountItem> = match config.gains {
        Gains::Ignore => Vec::new(),
        Gains::MiscIn => doc
            .items
            .iter()
            .filter(|i| i.qty != 0.0 && !is_loss(i.qty))
            .collect(),
    };
    if losses.is_empty() && gains.is_empty() {
        return Ok(Plan::Skipped(SkipReason::NoLines));
    }
    // Only lines that become entries need a mapping.
    let mut missing = Vec::new();
    let stock = match warehouse(doc, config) {
        Some(s) => s,
        None => {
            missing.push(format!(
                "no Kingdee stock for JST warehouse wms_co_id={} wh_id={}: add \"{}:{}\" or \"{}\" under [mapping.warehouses]",
                doc.wms_co_id, doc.wh_id, doc.wms_co_id, doc.wh_id, doc.wh_id
            ));
            ""
        }
    };
    let mut unmapped_skus: Vec<&str> = Vec::new();
    for line in losses.iter().chain(&gains) {
        if config.require_sku_mapping
            && !config.skus.contains_key(&line.sku_id)
            && !unmapped_skus.contains(&line.sku_id.as_str())
        {
            unmapped_skus.push(&line.sku_id);
        }
    }
    if !unmapped_skus.is_empty() {
        let keys: Vec<String> = unmapped_skus
            .iter()
            .map(|s| format!("\"{s}\" = \"<material number>\""))
            .collect();
        missing.push(format!(
            "no Kingdee material for SKU {} (mapping.require_sku_mapping is on): add {} under [mapping.skus]",
            unmapped_skus.join(", "),
            keys.join(", ")
        ));
    }
    if !missing.is_empty() {
        return Err(MapError::Mapping(format!(
            "document {}: {}",
            doc.io_id,
            missing.join("; ")
        )));
    }
    let date = date_part(&doc.io_date)
        .or_else(|| date_part(&doc.modified))
        .ok_or_else(|| {
            DocError(format!(
                "document {}: neither io_date nor modified is a readable date",
                doc.io_id
            ))
        })?;
    let specs = |lines: &[&'a CountItem]| -> Vec<Spec<'a>> {
        lines
            .iter()
            .flat_map(|line| {
                let batches: Vec<&CountBatch> =
                    line.batchs.iter().filter(|b| b.qty != 0.0).collect();
                if batches.is_empty() {
                    vec![Spec {
                        line,
                        batch: None,
                        stock,
                    }]
                } else {
                    batches
                        .into_iter()
                        .map(|b| Spec {
                            line,
                            batch: Some(b),
                            stock,
                        })
                        .collect()
                }
            })
            .collect()
    };
    let mut bills = Vec::new();
    if !losses.is_empty() {
        bills.push((Kind::Loss, specs(&losses)));
    }
    if !gains.is_empty() {
        bills.push((Kind::Gain, specs(&gains)));
    }
    Ok(Plan::Bills(Parts {
        doc,
        config,
        date,
        bills,
        next: (0, 0),
    }))
}

/// The bill number of part `part` (1-based) of `bill_no`: the first part keeps the plain
/// number, so a document that fits in one bill is numbered as it always was.
pub fn part_number(bill_no: &str, part: usize) -> String {
    if part <= 1 {
        bill_no.to_string()
    } else {
        format!("{bill_no}-{part}")
    }
}

/// One bill (part `part.0` of `part.1`) of a document: the loss bill or the gain bill.
fn bill(
    doc: &CountDoc,
    config: &MappingConfig,
    kind: Kind,
    entries: Vec<Value>,
    date: &str,
    (part, parts): (usize, usize),
) -> BillMessage {
    let (form, template, bill_type) = match kind {
        Kind::Loss => (
            FORM_MIS_DELIVERY,
            &config.bill_no_template,
            &config.bill_type,
        ),
        Kind::Gain => (
            FORM_MISCELLANEOUS,
            &config.gain_bill_no_template,
            &config.gain_bill_type,
        ),
    };
    let bill_no = part_number(&template.replace("{io_id}", &doc.io_id.to_string()), part);
    let org = reference(&config.org);
    let mut model = Map::new();
    model.insert("FID".into(), json!(0));
    model.insert("FBillNo".into(), json!(bill_no));
    model.insert("FBillTypeID".into(), json!({"FNUMBER": bill_type}));
    model.insert("FStockOrgId".into(), org.clone());
    if kind == Kind::Loss {
        model.insert("FPickOrgId".into(), org.clone());
    }
    model.insert("FStockDirect".into(), json!("GENERAL"));
    model.insert("FDate".into(), json!(date));
    if let Some(dept) = config.dept.as_deref().filter(|d| !d.is_empty()) {
        model.insert("FDeptId".into(), reference(dept));
    }
    model.insert("FOwnerTypeIdHead".into(), json!("BD_OwnerOrg"));
    model.insert("FOwnerIdHead".into(), org);
    let note = if parts > 1 {
        format!("{}（第 {part}/{parts} 部分）", note(doc))
    } else {
        note(doc)
    };
    model.insert("FNote".into(), json!(note));
    model.insert("FEntity".into(), Value::Array(entries));
    BillMessage {
        form_id: form.into(),
        bill_no,
        source: BillSource {
            io_id: doc.io_id,
            modified: doc.modified.clone(),
        },
        model: Value::Object(model),
    }
}

/// `"{wms_co_id}:{wh_id}"` first, then `"{wh_id}"`.
fn warehouse<'a>(doc: &CountDoc, config: &'a MappingConfig) -> Option<&'a str> {
    config
        .warehouses
        .get(&format!("{}:{}", doc.wms_co_id, doc.wh_id))
        .or_else(|| config.warehouses.get(&doc.wh_id.to_string()))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

fn reference(number: &str) -> Value {
    json!({ "FNumber": number })
}

fn note(doc: &CountDoc) -> String {
    if doc.remark.is_empty() {
        format!("聚水潭盘点单 {}", doc.io_id)
    } else {
        format!("聚水潭盘点单 {}：{}", doc.io_id, doc.remark)
    }
}

/// The Kingdee material of a line: `mapping.skus`, else the SKU itself.
fn material(line: &CountItem, config: &MappingConfig) -> String {
    config
        .skus
        .get(&line.sku_id)
        .cloned()
        .unwrap_or_else(|| line.sku_id.clone())
}

fn entry(
    line: &CountItem,
    material: &str,
    stock: &str,
    config: &MappingConfig,
    kind: Kind,
    qty: f64,
    batch: Option<&CountBatch>,
) -> Value {
    let org = reference(&config.org);
    let mut e = Map::new();
    if kind == Kind::Gain {
        // 合格 (qualified) stock-in.
        e.insert("FInStockType".into(), json!("1"));
    }
    e.insert("FMaterialId".into(), reference(material));
    e.insert("FUnitID".into(), reference(&config.unit));
    if kind == Kind::Loss {
        // The gain form has no base unit field: it follows from the material.
        e.insert("FBaseUnitId".into(), reference(&config.unit));
    }
    e.insert("FQty".into(), json!(qty.abs()));
    e.insert("FStockId".into(), reference(stock));
    e.insert("FStockStatusId".into(), reference("KCZT01_SYS"));
    e.insert("FOwnerTypeId".into(), json!("BD_OwnerOrg"));
    e.insert("FOwnerId".into(), org.clone());
    e.insert("FKeeperTypeId".into(), json!("BD_KeeperOrg"));
    e.insert("FKeeperId".into(), org);
    e.insert(
        "FEntryNote".into(),
        json!(line.ioi_id.map(|i| i.to_string()).unwrap_or_default()),
    );
    if let Some(b) = batch {
        if !b.batch_no.is_empty() {
            e.insert("FLot".into(), reference(&b.batch_no));
        }
        if let Some(d) = b.product_date.as_deref().and_then(date_part) {
            e.insert("FProduceDate".into(), json!(d));
        }
        if let Some(d) = b.expiration_date.as_deref().and_then(date_part) {
            e.insert("FExpiryDate".into(), json!(d));
        }
    }
    Value::Object(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MappingConfig {
        let mut c = MappingConfig {
            org: "100".into(),
            ..MappingConfig::default()
        };
        c.warehouses.insert("1".into(), "CK001".into());
        c.warehouses.insert("10001:1".into(), "CK101".into());
        c
    }

    fn doc(status: &str, wh: i64, items: Value) -> Value {
        json!({"io_id": 42, "status": status, "io_date": "2026-03-01 10:00:00", "modified": "2026-03-02 08:00:00",
            "wh_id": wh, "wms_co_id": 0, "remark": "月度", "items": items})
    }

    fn bills(m: Mapped) -> Vec<BillMessage> {
        match m {
            Mapped::Bills(b) => b,
            other => panic!("expected bills, got {other:?}"),
        }
    }

    #[test]
    fn a_document_with_many_lines_becomes_numbered_parts() {
        let mut c = config();
        c.gains = Gains::MiscIn;
        let mut items: Vec<Value> = (0..2_500)
            .map(|i| json!({"ioi_id": i, "sku_id": format!("S{i}"), "qty": -1}))
            .collect();
        items.push(json!({"sku_id": "G", "qty": 4}));
        let Mapped::Bills(bills) =
            map_document(&doc("Confirmed", 1, json!(items)), &c).expect("maps")
        else {
            panic!("skipped")
        };
        let numbers: Vec<&str> = bills.iter().map(|b| b.bill_no.as_str()).collect();
        assert_eq!(numbers, ["JSTPD42", "JSTPD42-2", "JSTPD42-3", "JSTPY42"]);
        let sizes: Vec<usize> = bills.iter().map(BillMessage::entry_count).collect();
        assert_eq!(sizes, [1000, 1000, 500, 1]);
        for b in &bills {
            assert_eq!(b.model["FBillNo"], json!(b.bill_no));
        }
        assert!(
            bills[1].model["FNote"]
                .as_str()
                .expect("note")
                .contains("2/3")
        );
        assert!(
            !bills[3].model["FNote"]
                .as_str()
                .expect("note")
                .contains('/')
        );
        // Every line is booked exactly once across the parts.
        let skus: std::collections::BTreeSet<&str> = bills[..3]
            .iter()
            .flat_map(|b| b.model["FEntity"].as_array().expect("entries"))
            .map(|e| e["FMaterialId"]["FNumber"].as_str().expect("sku"))
            .collect();
        assert_eq!(skus.len(), 2_500);
        c.max_entries = 2_500;
        let Mapped::Bills(bills) =
            map_document(&doc("Confirmed", 1, json!(items)), &c).expect("maps")
        else {
            panic!("skipped")
        };
        assert_eq!(
            bills[0].bill_no, "JSTPD42",
            "a document that fits keeps its number"
        );
        assert_eq!(bills.len(), 2);
    }

    #[test]
    fn a_loss_document_becomes_one_bill_with_reference_objects() {
        let raw = doc(
            "Confirmed",
            1,
            json!([
                {"ioi_id": 1, "sku_id": "A", "qty": -2},
                {"ioi_id": 2, "sku_id": "B", "qty": 3},
                {"ioi_id": 3, "sku_id": "C", "qty": 0},
            ]),
        );
        let b = bills(map_document(&raw, &config()).expect("maps"));
        assert_eq!(b.len(), 1);
        let bill = &b[0];
        assert_eq!(bill.bill_no, "JSTPD42");
        assert_eq!(bill.form_id, "STK_MisDelivery");
        let m = &bill.model;
        assert_eq!(m["FBillNo"], "JSTPD42");
        assert_eq!(m["FBillTypeID"], json!({"FNUMBER": "QTCKD01_SYS"}));
        assert_eq!(m["FStockOrgId"], json!({"FNumber": "100"}));
        assert_eq!(m["FDate"], "2026-03-01");
        assert_eq!(m["FNote"], "聚水潭盘点单 42：月度");
        assert_eq!(m["FEntity"].as_array().map(Vec::len), Some(1));
        let e = &m["FEntity"][0];
        assert_eq!(e["FMaterialId"], json!({"FNumber": "A"}));
        assert_eq!(e["FStockId"], json!({"FNumber": "CK001"}));
        assert_eq!(e["FQty"], 2.0);
        assert_eq!(e["FEntryNote"], "1");
        assert_eq!(e["FKeeperTypeId"], "BD_KeeperOrg");
        assert!(e.get("FLot").is_none());
    }

    #[test]
    fn batches_become_entries_and_the_branch_warehouse_wins() {
        let mut raw = doc(
            "Archive",
            1,
            json!([{"ioi_id": 7, "sku_id": "L", "qty": -5, "batchs": [
                {"batch_no": "X1", "qty": -3, "product_date": "2026-01-01 00:00:00", "expiration_date": "2027-01-01"},
                {"batch_no": "X2", "qty": 0},
                {"batch_no": "X3", "qty": "-2"},
            ]}]),
        );
        raw["wms_co_id"] = json!("10001");
        let b = bills(map_document(&raw, &config()).expect("maps"));
        let entries = b[0].model["FEntity"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["FLot"], json!({"FNumber": "X1"}));
        assert_eq!(entries[0]["FQty"], 3.0);
        assert_eq!(entries[0]["FProduceDate"], "2026-01-01");
        assert_eq!(entries[0]["FExpiryDate"], "2027-01-01");
        assert_eq!(entries[1]["FQty"], 2.0);
        assert_eq!(entries[1]["FStockId"], json!({"FNumber": "CK101"}));
    }

    #[test]
    fn skips_and_errors() {
        let table: Vec<(Value, Result<Mapped, &str>)> = vec![
            (
                doc("WaitConfirm", 1, json!([{"sku_id": "A", "qty": -1}])),
                Ok(Mapped::Skipped(SkipReason::Status)),
            ),
            (
                doc("Confirmed", 1, json!([{"sku_id": "A", "qty": 4}])),
                Ok(Mapped::Skipped(SkipReason::NoLines)),
            ),
            (
                doc("Confirmed", 9, json!([{"sku_id": "A", "qty": 4}])),
                Ok(Mapped::Skipped(SkipReason::NoLines)),
            ),
            (
                doc("Confirmed", 9, json!([{"sku_id": "A", "qty": -4}])),
                Err("add \"0:9\" or \"9\" under [mapping.warehouses]"),
            ),
            (json!({"io_id": "x"}), Err("io_id")),
        ];
        for (raw, expected) in table {
            let got = map_document(&raw, &config());
            match (got, expected) {
                (Ok(m), Ok(e)) => assert_eq!(m, e),
                (Err(err), Err(needle)) => assert!(err.to_string().contains(needle), "{err}"),
                (got, expected) => panic!("{raw}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn sku_mapping_and_positive_loss_sign() {
        let mut c = config();
        c.loss_sign = LossSign::Positive;
        c.skus.insert("A".into(), "MAT-A".into());
        c.dept = Some("BM01".into());
        let raw = doc(
            "Confirmed",
            1,
            json!([{"sku_id": "A", "qty": 2}, {"sku_id": "B", "qty": -1}]),
        );
        let b = bills(map_document(&raw, &c).expect("maps"));
        assert_eq!(
            b[0].model["FEntity"][0]["FMaterialId"],
            json!({"FNumber": "MAT-A"})
        );
        assert_eq!(b[0].model["FDeptId"], json!({"FNumber": "BM01"}));
        c.require_sku_mapping = true;
        let raw = doc("Confirmed", 1, json!([{"sku_id": "Z", "qty": 2}]));
        let err = map_document(&raw, &c).expect_err("unmapped sku");
        assert!(
            matches!(&err, MapError::Mapping(m) if m.contains("\"Z\" = \"<material number>\" under [mapping.skus]")),
            "{err}"
        );
    }
}

#[cfg(test)]
mod gain_tests {
    use super::*;
    use proptest::prelude::*;

    fn config(gains: Gains) -> MappingConfig {
        let mut c = MappingConfig {
            org: "100".into(),
            gains,
            ..MappingConfig::default()
        };
        c.warehouses.insert("1".into(), "CK001".into());
        c
    }

    #[test]
    fn gains_become_an_other_inbound_bill_when_asked() {
        let raw = json!({"io_id": 7, "status": "Confirmed", "io_date": "2026-03-01 10:00:00", "modified": "m",
            "wh_id": 1, "items": [{"ioi_id": 1, "sku_id": "A", "qty": -2}, {"ioi_id": 2, "sku_id": "B", "qty": 3,
            "batchs": [{"batch_no": "L9", "qty": 3, "expiration_date": "2027-01-01"}]}]});
        let Mapped::Bills(ignored) = map_document(&raw, &config(Gains::Ignore)).expect("maps")
        else {
            panic!("bills expected")
        };
        assert_eq!(ignored.len(), 1);
        let Mapped::Bills(both) = map_document(&raw, &config(Gains::MiscIn)).expect("maps") else {
            panic!("bills expected")
        };
        assert_eq!(both.len(), 2);
        let gain = &both[1];
        assert_eq!(gain.form_id, "STK_MISCELLANEOUS");
        assert_eq!(gain.bill_no, "JSTPY7");
        assert_eq!(gain.model["FBillTypeID"], json!({"FNUMBER": "QTRKD01_SYS"}));
        assert!(gain.model.get("FPickOrgId").is_none());
        let e = &gain.model["FEntity"][0];
        assert_eq!(e["FInStockType"], "1");
        assert_eq!(e["FQty"], 3.0);
        assert_eq!(e["FLot"], json!({"FNumber": "L9"}));
        assert_eq!(e["FExpiryDate"], "2027-01-01");
        assert!(e.get("FBaseUnitId").is_none());
        let gain_only = json!({"io_id": 8, "status": "Confirmed", "io_date": "2026-03-01", "wh_id": 1,
            "items": [{"sku_id": "B", "qty": 1}]});
        assert_eq!(
            map_document(&gain_only, &config(Gains::Ignore)),
            Ok(Mapped::Skipped(SkipReason::NoLines))
        );
        let Mapped::Bills(only) = map_document(&gain_only, &config(Gains::MiscIn)).expect("maps")
        else {
            panic!("bills expected")
        };
        assert_eq!(only[0].bill_no, "JSTPY8");
    }

    fn line() -> impl Strategy<Value = Value> {
        (
            0..4u8,
            -20i64..20,
            proptest::collection::vec(-10i64..10, 0..3),
        )
            .prop_map(|(sku, qty, batches)| {
                let mut l = json!({"sku_id": format!("S{sku}"), "qty": qty});
                if !batches.is_empty() {
                    l["batchs"] = Value::Array(
                        batches
                            .iter()
                            .enumerate()
                            .map(|(i, q)| json!({"batch_no": format!("L{i}"), "qty": q}))
                            .collect(),
                    );
                }
                l
            })
    }

    /// What a line contributes: the non-zero batches, or the line when there are none.
    fn effective(l: &Value) -> f64 {
        let batches: Vec<f64> = l["batchs"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|x| x["qty"].as_f64())
                    .filter(|q| *q != 0.0)
                    .collect()
            })
            .unwrap_or_default();
        if batches.is_empty() {
            l["qty"].as_f64().unwrap_or(0.0).abs()
        } else {
            batches.iter().map(|q| q.abs()).sum()
        }
    }

    proptest! {
        #[test]
        fn entries_add_up_and_the_same_document_gives_the_same_bills(
            io_id in 1i64..1_000_000_000_000,
            lines in proptest::collection::vec(line(), 0..8),
        ) {
            let raw = json!({"io_id": io_id, "status": "Archive", "io_date": "2026-03-01 10:00:00",
                "modified": "2026-03-01 10:00:00", "wh_id": 1, "items": lines});
            let c = config(Gains::MiscIn);
            let first = map_document(&raw, &c).expect("maps");
            prop_assert_eq!(&first, &map_document(&raw, &c).expect("maps"));
            let want = |loss: bool| -> f64 {
                lines.iter().filter(|l| {
                    let q = l["qty"].as_f64().unwrap_or(0.0);
                    if loss { q < 0.0 } else { q > 0.0 }
                }).map(effective).sum()
            };
            let got = |form: &str, bills: &[BillMessage]| -> f64 {
                bills.iter().filter(|b| b.form_id == form)
                    .flat_map(|b| b.model["FEntity"].as_array().cloned().unwrap_or_default())
                    .filter_map(|e| e["FQty"].as_f64()).sum()
            };
            match first {
                Mapped::Skipped(_) => prop_assert!(lines.iter().all(|l| l["qty"] == 0), "skipped with eligible lines"),
                Mapped::Bills(bills) => {
                    prop_assert!((got(FORM_MIS_DELIVERY, &bills) - want(true)).abs() < 1e-9);
                    prop_assert!((got(FORM_MISCELLANEOUS, &bills) - want(false)).abs() < 1e-9);
                    for b in &bills {
                        prop_assert!(b.bill_no.ends_with(&io_id.to_string()));
                        prop_assert!(b.model["FEntity"].as_array().is_some_and(|e| !e.is_empty()));
                    }
                }
            }
        }
    }
}
