//! Maps one JST count document to Kingdee bills (SPEC section 4, rules 1–6, loss documents).
//!
//! Pure: no I/O, the same input always gives the same bills, and the bill number depends only
//! on `io_id` — which is what makes a re-sent document a harmless duplicate in Kingdee.

use crate::config::{Gains, LossSign, MappingConfig, Warehouse};
use common::messages::{BillMessage, BillSource, CountBatch, CountDoc, CountItem, DocError};
use common::time::{count_date, date_part};
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
    warehouse: &'a Warehouse,
    date: String,
    /// The loss bill, then the gain bill: each its entries as specs.
    bills: Vec<(Kind, Vec<Spec<'a>>)>,
    /// Which bill, and which of its parts (0-based), comes next.
    next: (usize, usize),
}

/// One entry to build: a line, or one batch of it, with its own sign.
#[derive(Debug)]
struct Spec<'a> {
    line: &'a CountItem,
    /// The line's SKU, else its batch's.
    sku: &'a str,
    /// As JST wrote it (signed).
    qty: f64,
    lot: Option<Lot<'a>>,
}

/// A lot: a batch of the line, or the lot the line itself names (`batch_id`).
#[derive(Debug)]
struct Lot<'a> {
    number: &'a str,
    produced: Option<&'a str>,
    expires: Option<&'a str>,
}

impl<'a> Lot<'a> {
    fn of_batch(b: &'a CountBatch) -> Self {
        Self {
            number: &b.batch_no,
            produced: b.product_date.as_deref(),
            expires: b.expiration_date.as_deref(),
        }
    }

    fn of_line(line: &'a CountItem) -> Option<Self> {
        line.batch_id.as_deref().map(|number| Self {
            number,
            produced: line.product_date.as_deref(),
            expires: line.expiration_date.as_deref(),
        })
    }
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
            let books = Books::of(self.config, self.warehouse);
            let entries = specs
                .iter()
                .skip(part * size)
                .take(size)
                .map(|s| entry(s, &books, self.config, *kind))
                .collect();
            return Some(bill(
                self.doc,
                self.config,
                &books,
                *kind,
                entries,
                &self.date,
                (part + 1, parts),
            ));
        }
    }
}

/// Where a document is booked: the warehouse's stock, organisation, location, department.
struct Books<'a> {
    stock: &'a str,
    org: &'a str,
    dept: Option<&'a str>,
    location: Option<(&'a str, &'a str)>,
}

impl<'a> Books<'a> {
    fn of(config: &'a MappingConfig, w: &'a Warehouse) -> Self {
        let nonempty = |s: &'a Option<String>| s.as_deref().filter(|v| !v.is_empty());
        Self {
            stock: &w.stock,
            org: nonempty(&w.org).unwrap_or(&config.org),
            dept: nonempty(&w.dept).or_else(|| nonempty(&config.dept)),
            location: nonempty(&w.location)
                .zip(nonempty(&config.location_field))
                .map(|(loc, field)| (field, loc)),
        }
    }
}

/// Decides what a document becomes (skip, mapping error, or its bills), building no entry yet.
///
/// Each line becomes entries by its own sign: a line with non-zero `batchs` by each batch's
/// sign (its own `qty` is then not used), otherwise by its `qty`, with the lot it names
/// itself (`batch_id`). A line that becomes no entry is never an error, whatever it lacks.
pub fn plan<'a>(doc: &'a CountDoc, config: &'a MappingConfig) -> Result<Plan<'a>, MapError> {
    if !config.statuses.iter().any(|s| s == &doc.status) {
        return Ok(Plan::Skipped(SkipReason::Status));
    }
    let kind_of = |qty: f64| -> Option<Kind> {
        let loss = match config.loss_sign {
            LossSign::Negative => qty < 0.0,
            LossSign::Positive => qty > 0.0,
        };
        if loss {
            Some(Kind::Loss)
        } else if qty != 0.0 && config.gains == Gains::MiscIn {
            Some(Kind::Gain)
        } else {
            None
        }
    };
    let (mut losses, mut gains) = (Vec::new(), Vec::new());
    for (index, line) in doc.items.iter().enumerate() {
        let batches: Vec<&CountBatch> = line.batchs.iter().filter(|b| b.qty != 0.0).collect();
        let specs: Vec<(Kind, Spec<'a>)> = if batches.is_empty() {
            let Some(qty) = line.qty else {
                return Err(MapError::Malformed(DocError(format!(
                    "document {}: line {} ({}) has an unreadable qty",
                    doc.io_id,
                    index + 1,
                    line.sku_id
                ))));
            };
            kind_of(qty)
                .map(|kind| {
                    // A line without a SKU takes its batches' (all of them zero here).
                    let sku = if line.sku_id.is_empty() {
                        line.batchs
                            .iter()
                            .find_map(|b| b.sku_id.as_deref())
                            .unwrap_or("")
                    } else {
                        &line.sku_id
                    };
                    let spec = Spec {
                        line,
                        sku,
                        qty,
                        lot: Lot::of_line(line),
                    };
                    (kind, spec)
                })
                .into_iter()
                .collect()
        } else {
            batches
                .into_iter()
                .filter_map(|b| {
                    let sku = if line.sku_id.is_empty() {
                        b.sku_id.as_deref().unwrap_or("")
                    } else {
                        &line.sku_id
                    };
                    let spec = Spec {
                        line,
                        sku,
                        qty: b.qty,
                        lot: Some(Lot::of_batch(b)),
                    };
                    kind_of(b.qty).map(|kind| (kind, spec))
                })
                .collect()
        };
        for (kind, spec) in specs {
            if spec.sku.is_empty() {
                return Err(MapError::Malformed(DocError(format!(
                    "document {}: line {} books {} but has no sku_id, nor has its batch",
                    doc.io_id,
                    index + 1,
                    spec.qty
                ))));
            }
            match kind {
                Kind::Loss => losses.push(spec),
                Kind::Gain => gains.push(spec),
            }
        }
    }
    if losses.is_empty() && gains.is_empty() {
        return Ok(Plan::Skipped(SkipReason::NoLines));
    }
    // Only lines that become entries need a mapping.
    let mut missing = Vec::new();
    let found = warehouse(doc, config);
    if found.is_none() {
        missing.push(format!(
            "no Kingdee stock for JST warehouse wms_co_id={} wh_id={}: add \"{}:{}\" or \"{}\" under [mapping.warehouses]",
            doc.wms_co_id, doc.wh_id, doc.wms_co_id, doc.wh_id, doc.wh_id
        ));
    }
    let mut unmapped_skus: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    if config.require_sku_mapping {
        for spec in losses.iter().chain(&gains) {
            if !config.skus.contains_key(spec.sku) {
                unmapped_skus.insert(spec.sku);
            }
        }
    }
    if !unmapped_skus.is_empty() {
        let unmapped_skus: Vec<&str> = unmapped_skus.into_iter().collect();
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
    let Some(warehouse) = found.filter(|_| missing.is_empty()) else {
        return Err(MapError::Mapping(format!(
            "document {}: {}",
            doc.io_id,
            missing.join("; ")
        )));
    };
    let date = count_date(&doc.io_date, &doc.modified).ok_or_else(|| {
        DocError(format!(
            "document {}: neither io_date nor modified is a readable date",
            doc.io_id
        ))
    })?;
    let mut bills = Vec::new();
    if !losses.is_empty() {
        bills.push((Kind::Loss, losses));
    }
    if !gains.is_empty() {
        bills.push((Kind::Gain, gains));
    }
    Ok(Plan::Bills(Parts {
        doc,
        config,
        warehouse,
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

/// One bill (part `part.0` of `part.1`) of a document: the loss bill or the gain bill, booked
/// in the organisation (and department) of its warehouse.
fn bill(
    doc: &CountDoc,
    config: &MappingConfig,
    books: &Books<'_>,
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
    let org = reference(books.org);
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
    if let Some(dept) = books.dept {
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
fn warehouse<'a>(doc: &CountDoc, config: &'a MappingConfig) -> Option<&'a Warehouse> {
    config
        .warehouses
        .get(&format!("{}:{}", doc.wms_co_id, doc.wh_id))
        .or_else(|| config.warehouses.get(&doc.wh_id.to_string()))
        .filter(|w| !w.stock.is_empty())
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

/// The Kingdee material of a SKU: `mapping.skus`, else the SKU itself.
fn material<'a>(sku: &'a str, config: &'a MappingConfig) -> &'a str {
    config.skus.get(sku).map_or(sku, String::as_str)
}

/// The unit of a material: `mapping.units`, else `mapping.unit`.
fn unit<'a>(material: &str, config: &'a MappingConfig) -> &'a str {
    config
        .units
        .get(material)
        .map_or(config.unit.as_str(), String::as_str)
}

fn entry(spec: &Spec<'_>, books: &Books<'_>, config: &MappingConfig, kind: Kind) -> Value {
    let org = reference(books.org);
    let material = material(spec.sku, config);
    let unit = reference(unit(material, config));
    let mut e = Map::new();
    if kind == Kind::Gain {
        // 合格 (qualified) stock-in.
        e.insert("FInStockType".into(), json!("1"));
    }
    e.insert("FMaterialId".into(), reference(material));
    e.insert("FUnitID".into(), unit.clone());
    if kind == Kind::Loss {
        // The gain form has no base unit field: it follows from the material.
        e.insert("FBaseUnitId".into(), unit);
    }
    e.insert("FQty".into(), json!(spec.qty.abs()));
    e.insert("FStockId".into(), reference(books.stock));
    if let Some((field, location)) = books.location {
        // A flex field: the key names the account's stock-location dimension.
        e.insert(
            "FStockLocId".into(),
            json!({ format!("FSTOCKLOCID__{field}"): reference(location) }),
        );
    }
    e.insert("FStockStatusId".into(), reference("KCZT01_SYS"));
    e.insert("FOwnerTypeId".into(), json!("BD_OwnerOrg"));
    e.insert("FOwnerId".into(), org.clone());
    e.insert("FKeeperTypeId".into(), json!("BD_KeeperOrg"));
    e.insert("FKeeperId".into(), org);
    e.insert(
        "FEntryNote".into(),
        json!(spec.line.ioi_id.map(|i| i.to_string()).unwrap_or_default()),
    );
    if let Some(lot) = &spec.lot {
        if !lot.number.is_empty() {
            e.insert("FLot".into(), reference(lot.number));
        }
        if let Some(d) = lot.produced.and_then(date_part) {
            e.insert("FProduceDate".into(), json!(d));
        }
        if let Some(d) = lot.expires.and_then(date_part) {
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
        c.warehouses.insert("1".into(), Warehouse::stock("CK001"));
        c.warehouses
            .insert("10001:1".into(), Warehouse::stock("CK101"));
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
    use std::collections::BTreeMap;

    fn config(gains: Gains) -> MappingConfig {
        let mut c = MappingConfig {
            org: "100".into(),
            gains,
            ..MappingConfig::default()
        };
        c.warehouses.insert("1".into(), Warehouse::stock("CK001"));
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
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(sku, qty, batches, sku_on_batches, line_lot)| {
                let sku = format!("S{sku}");
                let mut l = json!({"qty": qty});
                if batches.is_empty() || !sku_on_batches {
                    l["sku_id"] = json!(sku);
                }
                if batches.is_empty() && line_lot {
                    l["batch_id"] = json!("LL");
                }
                if !batches.is_empty() {
                    l["batchs"] = Value::Array(
                        batches
                            .iter()
                            .enumerate()
                            .map(|(i, q)| json!({"sku_id": sku, "batch_no": format!("L{i}"), "qty": q}))
                            .collect(),
                    );
                }
                l
            })
    }

    /// What the document should book, read from the raw JSON by this test's own reading of
    /// the rules: `(form, SKU, lot)` → quantity. A line with non-zero batches books each batch
    /// by its own sign; otherwise the line books its `qty`.
    fn expected(lines: &[Value]) -> BTreeMap<(&'static str, String, String), f64> {
        let mut out = BTreeMap::new();
        for l in lines {
            // The line's SKU, else its batches'.
            let sku = l["sku_id"]
                .as_str()
                .or_else(|| l["batchs"][0]["sku_id"].as_str())
                .unwrap_or("")
                .to_string();
            let batches: Vec<(String, f64)> = l["batchs"]
                .as_array()
                .map(|b| {
                    b.iter()
                        .map(|x| {
                            let lot = x["batch_no"].as_str().unwrap_or("").to_string();
                            (lot, x["qty"].as_f64().unwrap_or(0.0))
                        })
                        .filter(|(_, q)| *q != 0.0)
                        .collect()
                })
                .unwrap_or_default();
            let booked = if batches.is_empty() {
                let lot = l["batch_id"].as_str().unwrap_or("").to_string();
                vec![(lot, l["qty"].as_f64().unwrap_or(0.0))]
            } else {
                batches
            };
            for (lot, q) in booked.into_iter().filter(|(_, q)| *q != 0.0) {
                let form = if q < 0.0 {
                    FORM_MIS_DELIVERY
                } else {
                    FORM_MISCELLANEOUS
                };
                *out.entry((form, sku.clone(), lot)).or_insert(0.0) += q.abs();
            }
        }
        out
    }

    /// What the bills book: `(form, material, lot)` → quantity.
    fn booked(bills: &[BillMessage]) -> BTreeMap<(&'static str, String, String), f64> {
        let mut out = BTreeMap::new();
        for b in bills {
            let form = if b.form_id == FORM_MIS_DELIVERY {
                FORM_MIS_DELIVERY
            } else {
                FORM_MISCELLANEOUS
            };
            for e in b.model["FEntity"].as_array().cloned().unwrap_or_default() {
                let material = e["FMaterialId"]["FNumber"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let lot = e["FLot"]["FNumber"].as_str().unwrap_or("").to_string();
                *out.entry((form, material, lot)).or_insert(0.0) +=
                    e["FQty"].as_f64().unwrap_or(0.0);
            }
        }
        out
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
            let want = expected(&lines);
            match first {
                Mapped::Skipped(_) => prop_assert!(want.is_empty(), "skipped with eligible lines"),
                Mapped::Bills(bills) => {
                    let got = booked(&bills);
                    prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
                    for (key, q) in &want {
                        prop_assert!((got[key] - q).abs() < 1e-9, "{:?}: {} vs {}", key, got[key], q);
                    }
                    for b in &bills {
                        prop_assert!(b.bill_no.ends_with(&io_id.to_string()));
                        prop_assert!(b.model["FEntity"].as_array().is_some_and(|e| !e.is_empty()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod account_tests {
    //! The rules a real Kingdee account needs: units per material, organisation, location and
    //! department per warehouse, lots by their own sign.
    use super::*;

    fn config() -> MappingConfig {
        let mut c = MappingConfig {
            org: "100".into(),
            dept: Some("BM01".into()),
            gains: Gains::MiscIn,
            location_field: Some("FF100001".into()),
            ..MappingConfig::default()
        };
        c.units.insert("MAT-2".into(), "Box".into());
        c.skus.insert("S2".into(), "MAT-2".into());
        c.warehouses.insert("1".into(), Warehouse::stock("CK001"));
        c.warehouses.insert(
            "10001:1".into(),
            Warehouse {
                stock: "CK101".into(),
                org: Some("200".into()),
                ..Warehouse::default()
            },
        );
        c.warehouses.insert(
            "2".into(),
            Warehouse {
                stock: "CK002".into(),
                location: Some("A-01".into()),
                dept: Some("BM02".into()),
                ..Warehouse::default()
            },
        );
        c
    }

    fn bills(wms_co_id: i64, wh_id: i64, items: Value) -> Vec<BillMessage> {
        let raw = json!({"io_id": 5, "status": "Confirmed", "io_date": "2026-03-01 10:00:00",
            "modified": "2026-03-01 10:00:00", "wh_id": wh_id, "wms_co_id": wms_co_id, "items": items});
        match map_document(&raw, &config()).expect("maps") {
            Mapped::Bills(b) => b,
            other => panic!("bills expected, got {other:?}"),
        }
    }

    fn entries(bill: &BillMessage) -> &Vec<Value> {
        bill.model["FEntity"].as_array().expect("entries")
    }

    #[test]
    fn each_material_carries_its_own_unit() {
        let b = bills(
            0,
            1,
            json!([{"sku_id": "S1", "qty": -1}, {"sku_id": "S2", "qty": -2}]),
        );
        let e = entries(&b[0]);
        assert_eq!(e[0]["FUnitID"], json!({"FNumber": "Pcs"}));
        assert_eq!(e[0]["FBaseUnitId"], json!({"FNumber": "Pcs"}));
        assert_eq!(e[1]["FMaterialId"], json!({"FNumber": "MAT-2"}));
        assert_eq!(e[1]["FUnitID"], json!({"FNumber": "Box"}));
        assert_eq!(e[1]["FBaseUnitId"], json!({"FNumber": "Box"}));
    }

    #[test]
    fn a_branch_warehouse_books_the_whole_bill_in_its_organisation() {
        let b = bills(
            10001,
            1,
            json!([{"sku_id": "S1", "qty": -1}, {"sku_id": "S1", "qty": 2}]),
        );
        for bill in &b {
            for key in ["FStockOrgId", "FOwnerIdHead"] {
                assert_eq!(bill.model[key], json!({"FNumber": "200"}), "{key}");
            }
            assert_eq!(
                bill.model["FDeptId"],
                json!({"FNumber": "BM01"}),
                "falls back"
            );
            for e in entries(bill) {
                assert_eq!(e["FOwnerId"], json!({"FNumber": "200"}));
                assert_eq!(e["FKeeperId"], json!({"FNumber": "200"}));
                assert_eq!(e["FStockId"], json!({"FNumber": "CK101"}));
                assert!(e.get("FStockLocId").is_none());
            }
        }
        assert_eq!(b[0].model["FPickOrgId"], json!({"FNumber": "200"}));
        let main = bills(0, 1, json!([{"sku_id": "S1", "qty": -1}]));
        assert_eq!(main[0].model["FStockOrgId"], json!({"FNumber": "100"}));
    }

    #[test]
    fn a_warehouse_with_a_location_and_a_department_puts_them_on_every_entry() {
        let b = bills(
            0,
            2,
            json!([{"sku_id": "S1", "qty": -1}, {"sku_id": "S3", "qty": 4}]),
        );
        for bill in &b {
            assert_eq!(bill.model["FDeptId"], json!({"FNumber": "BM02"}));
            assert_eq!(bill.model["FStockOrgId"], json!({"FNumber": "100"}));
            for e in entries(bill) {
                assert_eq!(
                    e["FStockLocId"],
                    json!({"FSTOCKLOCID__FF100001": {"FNumber": "A-01"}})
                );
            }
        }
    }

    #[test]
    fn batches_are_booked_by_their_own_sign() {
        let b = bills(
            0,
            1,
            json!([{"ioi_id": 1, "sku_id": "S1", "qty": 1, "batchs": [
                {"batch_no": "L1", "qty": -3, "product_date": "2026-01-01 00:00:00"},
                {"batch_no": "L2", "qty": 4},
                {"batch_no": "L3", "qty": 0}
            ]}]),
        );
        assert_eq!(b.len(), 2);
        let loss = entries(&b[0]);
        assert_eq!(loss.len(), 1);
        assert_eq!(loss[0]["FLot"], json!({"FNumber": "L1"}));
        assert_eq!(loss[0]["FQty"], 3.0);
        assert_eq!(loss[0]["FProduceDate"], "2026-01-01");
        let gain = entries(&b[1]);
        assert_eq!(gain.len(), 1);
        assert_eq!(gain[0]["FLot"], json!({"FNumber": "L2"}));
        assert_eq!(gain[0]["FQty"], 4.0);
        // With gains ignored, the gain batch books nothing.
        let mut c = config();
        c.gains = Gains::Ignore;
        let raw = json!({"io_id": 5, "status": "Confirmed", "io_date": "2026-03-01", "wh_id": 1,
            "items": [{"sku_id": "S1", "qty": 1, "batchs": [{"batch_no": "L1", "qty": -3}, {"batch_no": "L2", "qty": 4}]}]});
        let Ok(Mapped::Bills(only)) = map_document(&raw, &c) else {
            panic!("bills expected")
        };
        assert_eq!(only.len(), 1);
        assert_eq!(entries(&only[0]).len(), 1);
    }

    #[test]
    fn a_line_names_its_own_lot_and_a_batch_its_own_sku() {
        let b = bills(
            0,
            1,
            json!([
                {"sku_id": "S1", "qty": -2, "batch_id": "LOT9", "product_date": "2026-01-02", "expiration_date": "2027-01-02 00:00:00"},
                {"qty": -1, "batchs": [{"sku_id": "S2", "batch_no": "L5", "qty": -1}]}
            ]),
        );
        let e = entries(&b[0]);
        assert_eq!(e[0]["FLot"], json!({"FNumber": "LOT9"}));
        assert_eq!(e[0]["FProduceDate"], "2026-01-02");
        assert_eq!(e[0]["FExpiryDate"], "2027-01-02");
        assert_eq!(e[1]["FMaterialId"], json!({"FNumber": "MAT-2"}));
        assert_eq!(e[1]["FUnitID"], json!({"FNumber": "Box"}));
    }

    #[test]
    fn a_line_that_books_nothing_is_never_an_error() {
        let b = bills(
            0,
            1,
            json!([
                {"sku_id": "S1", "qty": -1},
                {"qty": 0},
                {"sku_id": "S2"},
                {"qty": "many", "batchs": [{"sku_id": "S2", "batch_no": "L1", "qty": -1}]},
                {"batchs": [{"batch_no": "L1", "qty": 0}]}
            ]),
        );
        assert_eq!(entries(&b[0]).len(), 2);
        let raw = |items: Value| json!({"io_id": 5, "status": "Confirmed", "io_date": "2026-03-01", "wh_id": 1, "items": items});
        for (items, says) in [
            (json!([{"qty": -1}]), "no sku_id"),
            (json!([{"sku_id": "S1", "qty": "many"}]), "unreadable qty"),
        ] {
            let err = map_document(&raw(items.clone()), &config()).expect_err("malformed");
            assert!(
                matches!(&err, MapError::Malformed(_)) && err.to_string().contains(says),
                "{items}: {err}"
            );
        }
    }
}
