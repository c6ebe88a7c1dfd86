//! `jst2kd check --mapping [--days N]`: the base-data preflight, read-only on both services.
//!
//! It asks Kingdee (ExecuteBillQuery on `ORG_Organizations`, `BD_STOCK`, `BD_MATERIAL`,
//! `BD_Department`) whether every organisation, stock, department and material the
//! configuration names exists, each stock in the organisation that books it, each stock that
//! manages locations with one configured, each configured unit the material's own; then reads
//! the Jushuitan count documents of the last N days (paced with the producer's limits) and
//! maps them with the transformer's own mapping, checking what they would book: unmapped
//! warehouses, materials missing in Kingdee, lot-managed materials without a lot, units that
//! differ. One line per problem says what to add or fix. Exit 0: nothing wrong; 1: something
//! is; 2: it could not ask.
//!
//! Field keys: `FNumber`, `FUseOrgId.FNumber` (the organisation that uses allocated base
//! data: one row per organisation), `FIsOpenLocation` (BD_STOCK: the stock manages stock
//! locations), `FBaseUnitId.FNumber` and `FIsBatchManage` (BD_MATERIAL) — the keys of the
//! base-data forms in Kingdee's WebAPI (`../shared/apis/kingdee.md`, and the forms' field
//! lists in Kingdee's open-platform documentation).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use clap::ValueEnum;
use common::config::{ConfigError, Layers};
use common::messages::{BillMessage, CountDoc, text_field};
use common::time::{format_beijing, now_beijing};
use jst::{CountQuery, JstClient, JstConfig};
use kingdee::{KingdeeClient, KingdeeConfig};
use producer::{MAX_WINDOW, ProducerConfig, windows};
use serde::Serialize;
use serde_json::{Value, json};
use transformer::mapping::plan;
use transformer::{MapError, MappingConfig, Plan};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per problem, then a summary.
    Text,
    /// One JSON object.
    Json,
}

/// What `check --mapping` was asked.
pub struct Preflight {
    /// Days of Jushuitan documents to read.
    pub days: u32,
    /// Output format.
    pub format: Format,
    /// Print a `[mapping.units]` block from Kingdee's units.
    pub write_units: bool,
}

/// The preflight could not ask a service (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("could not ask {0}")]
pub struct CouldNotAsk(pub String);

/// One thing to add or fix.
#[derive(Debug, Serialize)]
struct Problem {
    /// `organisation`, `stock`, `location`, `department`, `material`, `unit`, `lot`,
    /// `warehouse`, `mapping`, `document`.
    kind: &'static str,
    /// The configuration key concerned.
    key: String,
    /// The number concerned (stock, material, organisation, department, warehouse).
    number: String,
    /// What to do.
    message: String,
}

/// A material as the documents would book it.
#[derive(Default)]
struct Seen {
    /// JST SKUs booked as this material.
    skus: BTreeSet<String>,
    /// Organisations that book it.
    orgs: BTreeSet<String>,
    /// Units it is booked in.
    units: BTreeSet<String>,
    /// Entries without a lot, and one document of them.
    without_lot: (usize, i64),
    /// Entries in all.
    entries: usize,
}

/// Rows of a base-data query: number → (use organisation, the other fields).
type Rows = BTreeMap<String, Vec<(Option<String>, Vec<Value>)>>;

/// What a base-data query found: the usable records, and why others are not.
struct Found {
    rows: Rows,
    /// Numbers found only disabled (禁用) or not audited.
    unusable: BTreeMap<String, &'static str>,
}

impl Found {
    fn get(&self, number: &str) -> Option<&Vec<(Option<String>, Vec<Value>)>> {
        self.rows.get(number)
    }

    fn contains_key(&self, number: &str) -> bool {
        self.rows.contains_key(number)
    }

    /// Why `number` cannot be used: "does not exist in Kingdee", or what state it is in.
    fn why(&self, number: &str) -> &'static str {
        self.unusable
            .get(number)
            .copied()
            .unwrap_or("does not exist in Kingdee")
    }
}

/// Asks `form` for the `numbers`, 100 at a time; `keys` after `FNumber,FUseOrgId.FNumber`.
/// Only audited (`FDocumentStatus` C), enabled (`FForbidStatus` not B) records count: a bill
/// naming another is refused.
async fn base_data(
    client: &KingdeeClient,
    form: &str,
    keys: &[&str],
    numbers: &BTreeSet<String>,
) -> Result<Found, CouldNotAsk> {
    let mut found = Found {
        rows: BTreeMap::new(),
        unusable: BTreeMap::new(),
    };
    let numbers: Vec<&String> = numbers.iter().collect();
    let with_org = form != "ORG_Organizations";
    let mut fields = vec!["FNumber"];
    if with_org {
        fields.push("FUseOrgId.FNumber");
    }
    fields.extend_from_slice(keys);
    fields.extend_from_slice(&["FDocumentStatus", "FForbidStatus"]);
    let skip = if with_org { 2 } else { 1 };
    for chunk in numbers.chunks(100) {
        // Quotes doubled, as SQL filter strings escape them.
        let list: Vec<String> = chunk
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect();
        let filter = format!("FNumber in ({})", list.join(","));
        let answer = client
            .execute_bill_query(form, &fields.join(","), &filter)
            .await
            .map_err(|e| CouldNotAsk(format!("Kingdee ({form}): {e}")))?;
        for row in answer {
            let Some(number) = text_field(row.first()) else {
                continue;
            };
            let status = text_field(row.get(skip + keys.len()));
            let forbid = text_field(row.get(skip + keys.len() + 1));
            if forbid.as_deref() == Some("B") {
                found
                    .unusable
                    .entry(number)
                    .or_insert("exists in Kingdee but is disabled (禁用): enable it");
                continue;
            }
            if status.as_deref().is_some_and(|s| s != "C") {
                found
                    .unusable
                    .entry(number)
                    .or_insert("exists in Kingdee but is not audited: audit it");
                continue;
            }
            let org = if with_org {
                text_field(row.get(1))
            } else {
                None
            };
            let rest = row.iter().skip(skip).take(keys.len()).cloned().collect();
            found.rows.entry(number).or_default().push((org, rest));
        }
    }
    for number in found.rows.keys() {
        found.unusable.remove(number);
    }
    Ok(found)
}

/// Kingdee writes booleans as `true`, `1` or `"1"`.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(Value::String(s)) => matches!(s.trim(), "1" | "true" | "True"),
        _ => false,
    }
}

fn used_by(rows: &[(Option<String>, Vec<Value>)], org: &str) -> bool {
    rows.iter()
        .any(|(o, _)| o.as_deref().is_none_or(|o| o == org))
}

fn orgs_of(rows: &[(Option<String>, Vec<Value>)]) -> String {
    let orgs: BTreeSet<&str> = rows.iter().filter_map(|(o, _)| o.as_deref()).collect();
    orgs.into_iter().collect::<Vec<_>>().join(", ")
}

/// Runs the preflight; `Ok(true)` when nothing is wrong.
pub async fn run(layers: &Layers, ask: &Preflight) -> anyhow::Result<bool> {
    let mapping: MappingConfig = layers.section()?;
    let kingdee_config: KingdeeConfig = layers.section()?;
    kingdee_config.check_credentials()?;
    let jst_config: JstConfig = layers.section()?;
    let polling: ProducerConfig = layers.section()?;
    let kingdee = KingdeeClient::new(&kingdee_config, 1, None)
        .map_err(|e| ConfigError(format!("kingdee: {e}")))?;
    let mut problems: Vec<Problem> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // 1. What the Jushuitan documents of the window would book.
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut unmapped: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    let mut preview: Option<BillMessage> = None;
    let sku_of: BTreeMap<&str, &str> = mapping
        .skus
        .iter()
        .map(|(sku, m)| (m.as_str(), sku.as_str()))
        .collect();
    let mut documents = 0;
    if jst_config.app_key.is_empty() {
        notes.push(
            "jushuitan: skipped (jst.app_key not set): only the configuration was checked".into(),
        );
    } else {
        jst_config.check_credentials()?;
        let client = JstClient::new(&jst_config, None)
            .and_then(|c| c.with_token_file(jst::token_file_for(&polling.checkpoint)))
            .map(JstClient::without_refresh)
            .map_err(|e| ConfigError(format!("jst: {e}")))?;
        let to = now_beijing();
        let from = to - chrono::Duration::days(i64::from(ask.days.max(1)));
        let windows = windows(from, to, MAX_WINDOW);
        let mut progress = crate::progress::Progress::new(
            "reading Jushuitan",
            "queries",
            Some((windows.len() * polling.statuses.len()) as u64),
        );
        for (begin, end) in windows {
            for status in &polling.statuses {
                let query = CountQuery {
                    modified_begin: format_beijing(&begin),
                    modified_end: format_beijing(&end),
                    status: Some(status.clone()),
                };
                let docs = client
                    .count_window(&query)
                    .await
                    .map_err(|e| CouldNotAsk(format!("Jushuitan: {e}")))?;
                for raw in docs {
                    documents += 1;
                    read_document(
                        &raw,
                        &mapping,
                        &sku_of,
                        &mut seen,
                        &mut unmapped,
                        &mut preview,
                        &mut problems,
                    );
                }
                progress.inc(1);
            }
        }
        progress.finish();
        notes.push(format!(
            "jushuitan: {documents} documents of the last {} days read (statuses {})",
            ask.days,
            polling.statuses.join(", ")
        ));
    }
    for (warehouse, (count, io_id)) in &unmapped {
        problems.push(Problem {
            kind: "warehouse",
            key: "mapping.warehouses".into(),
            number: warehouse.clone(),
            message: format!(
                "JST warehouse {warehouse} has no Kingdee stock ({count} documents, e.g. {io_id}): add \"{warehouse}\" = \"<stock number>\" under [mapping.warehouses]"
            ),
        });
    }

    // 2. Kingdee: organisations, stocks, departments, materials.
    let booking = |w: &transformer::Warehouse| -> String {
        w.org
            .clone()
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| mapping.org.clone())
    };
    let mut orgs: BTreeMap<String, String> = BTreeMap::new();
    orgs.insert(mapping.org.clone(), "mapping.org".into());
    for (k, w) in &mapping.warehouses {
        if let Some(o) = w.org.as_ref().filter(|o| !o.is_empty()) {
            orgs.entry(o.clone())
                .or_insert_with(|| format!("mapping.warehouses.\"{k}\".org"));
        }
    }
    let found = base_data(
        &kingdee,
        "ORG_Organizations",
        &[],
        &orgs.keys().cloned().collect(),
    )
    .await?;
    for (org, key) in &orgs {
        if !found.contains_key(org) {
            problems.push(Problem {
                kind: "organisation",
                key: key.clone(),
                number: org.clone(),
                message: format!(
                    "organisation {org} ({key}) {}: fix the organisation number",
                    found.why(org)
                ),
            });
        }
    }

    let stocks: BTreeSet<String> = mapping
        .warehouses
        .values()
        .map(|w| w.stock.clone())
        .collect();
    let found = base_data(&kingdee, "BD_STOCK", &["FIsOpenLocation"], &stocks).await?;
    for (k, w) in &mapping.warehouses {
        let key = format!("mapping.warehouses.\"{k}\"");
        let org = booking(w);
        let stock = &w.stock;
        let Some(rows) = found.get(stock) else {
            problems.push(Problem {
                kind: "stock",
                key,
                number: stock.clone(),
                message: format!(
                    "stock {stock} ({k}) {}: fix the stock number of {k}",
                    found.why(stock)
                ),
            });
            continue;
        };
        if !used_by(rows, &org) {
            problems.push(Problem {
                kind: "stock",
                key: key.clone(),
                number: stock.clone(),
                message: format!(
                    "stock {stock} is not used by organisation {org}, which books {key}: allocate it to {org} in Kingdee, or give {key} org = \"{}\"",
                    orgs_of(rows)
                ),
            });
            continue;
        }
        let locations = rows
            .iter()
            .filter(|(o, _)| o.as_deref().is_none_or(|o| o == org))
            .any(|(_, rest)| truthy(rest.first()));
        match (locations, w.location.is_some()) {
            (true, false) => problems.push(Problem {
                kind: "location",
                key: key.clone(),
                number: stock.clone(),
                message: format!(
                    "stock {stock} manages stock locations: give {key} location = \"<location number>\" (and set mapping.location_field)"
                ),
            }),
            (false, true) => problems.push(Problem {
                kind: "location",
                key: format!("{key}.location"),
                number: stock.clone(),
                message: format!(
                    "stock {stock} does not manage stock locations: remove location from {key}"
                ),
            }),
            _ => {}
        }
    }

    let mut departments: BTreeMap<(String, String), String> = BTreeMap::new();
    for (k, w) in &mapping.warehouses {
        let own = w.dept.as_ref().filter(|d| !d.is_empty());
        if let Some(d) = own.or(mapping.dept.as_ref().filter(|d| !d.is_empty())) {
            let key = if own.is_some() {
                format!("mapping.warehouses.\"{k}\".dept")
            } else {
                "mapping.dept".to_string()
            };
            departments.entry((d.clone(), booking(w))).or_insert(key);
        }
    }
    if !departments.is_empty() {
        let numbers = departments.keys().map(|(d, _)| d.clone()).collect();
        let found = base_data(&kingdee, "BD_Department", &[], &numbers).await?;
        for ((dept, org), key) in &departments {
            if !found.get(dept).is_some_and(|rows| used_by(rows, org)) {
                problems.push(Problem {
                    kind: "department",
                    key: key.clone(),
                    number: dept.clone(),
                    message: format!(
                        "department {dept} ({key}) {} for organisation {org}: fix the department number",
                        found.why(dept)
                    ),
                });
            }
        }
    }

    // Materials: those the configuration names, and those the documents would book.
    let mut materials: BTreeSet<String> = seen.keys().cloned().collect();
    materials.extend(mapping.skus.values().cloned());
    materials.extend(mapping.units.keys().cloned());
    let found = base_data(
        &kingdee,
        "BD_MATERIAL",
        &["FBaseUnitId.FNumber", "FIsBatchManage"],
        &materials,
    )
    .await?;
    let unit_of = |m: &str| -> Option<String> {
        found
            .get(m)
            .and_then(|rows| rows.first())
            .and_then(|(_, rest)| rest.first())
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    for (material, unit) in &mapping.units {
        if !found.contains_key(material) {
            problems.push(Problem {
                kind: "material",
                key: format!("mapping.units.\"{material}\""),
                number: material.clone(),
                message: format!(
                    "material {material} (mapping.units) {}: fix the material number",
                    found.why(material)
                ),
            });
            continue;
        }
        if let Some(own) = unit_of(material)
            && &own != unit
        {
            problems.push(Problem {
                kind: "unit",
                key: format!("mapping.units.\"{material}\""),
                number: material.clone(),
                message: format!(
                    "material {material}'s unit in Kingdee is {own}, not {unit}: set \"{material}\" = \"{own}\" under [mapping.units]"
                ),
            });
        }
    }
    for (sku, material) in &mapping.skus {
        if !found.contains_key(material) {
            problems.push(Problem {
                kind: "material",
                key: format!("mapping.skus.\"{sku}\""),
                number: material.clone(),
                message: format!(
                    "material {material} (mapping.skus.\"{sku}\") {}: fix the material number",
                    found.why(material)
                ),
            });
        }
    }
    for (material, s) in &seen {
        let skus = s.skus.iter().cloned().collect::<Vec<_>>().join(", ");
        let Some(rows) = found.get(material) else {
            if !mapping.skus.values().any(|m| m == material) {
                problems.push(Problem {
                    kind: "material",
                    key: "mapping.skus".into(),
                    number: material.clone(),
                    message: format!(
                        "material {material} (JST SKU {skus}, {} entries) {}: create it, or add \"{}\" = \"<material number>\" under [mapping.skus]",
                        s.entries,
                        found.why(material),
                        s.skus.first().map_or(material.as_str(), String::as_str)
                    ),
                });
            }
            continue;
        };
        for org in &s.orgs {
            if !used_by(rows, org) {
                problems.push(Problem {
                    kind: "material",
                    key: "mapping.skus".into(),
                    number: material.clone(),
                    message: format!(
                        "material {material} (JST SKU {skus}) is not used by organisation {org}, which books it: allocate it to {org} in Kingdee"
                    ),
                });
            }
        }
        if let Some(own) = unit_of(material)
            && s.units.iter().any(|u| *u != own)
        {
            problems.push(Problem {
                kind: "unit",
                key: format!("mapping.units.\"{material}\""),
                number: material.clone(),
                message: format!(
                    "material {material}'s unit in Kingdee is {own}; the mapping books it in {}: add \"{material}\" = \"{own}\" under [mapping.units]",
                    s.units.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let lot_managed = rows.iter().any(|(_, rest)| truthy(rest.get(1)));
        let (without, example) = s.without_lot;
        if lot_managed && without > 0 {
            problems.push(Problem {
                kind: "lot",
                key: "items[].batchs".into(),
                number: material.clone(),
                message: format!(
                    "material {material} is lot-managed in Kingdee but {without} entries would book it without a lot (e.g. document {example}): turn on batch management for SKU {skus} in Jushuitan, or lot management off in Kingdee"
                ),
            });
        }
    }
    let units: BTreeMap<String, String> = seen
        .keys()
        .chain(mapping.units.keys())
        .filter_map(|m| unit_of(m).map(|u| (m.clone(), u)))
        .filter(|(_, u)| u != &mapping.unit)
        .collect();
    notes.push(format!(
        "kingdee: {} organisations, {} stocks, {} departments, {} materials checked",
        orgs.len(),
        stocks.len(),
        departments.len(),
        materials.len()
    ));

    report(ask, &mapping, &problems, &notes, preview.as_ref(), &units)?;
    Ok(problems.is_empty())
}

/// Maps one document as the transformer would (its lazy `plan`, one bill at a time), and
/// records what it would book; keeps the first bill of the first document as the preview.
fn read_document(
    raw: &Value,
    mapping: &MappingConfig,
    sku_of: &BTreeMap<&str, &str>,
    seen: &mut BTreeMap<String, Seen>,
    unmapped: &mut BTreeMap<String, (usize, i64)>,
    preview: &mut Option<BillMessage>,
    problems: &mut Vec<Problem>,
) {
    let doc = match CountDoc::from_value(raw) {
        Ok(doc) => doc,
        Err(e) => {
            let number = raw
                .get("io_id")
                .map(ToString::to_string)
                .unwrap_or_default();
            problems.push(Problem {
                kind: "document",
                key: format!("document {number}"),
                number,
                message: format!("a document cannot be read, and would be dead-lettered: {e}"),
            });
            return;
        }
    };
    let warehouse = format!("{}:{}", doc.wms_co_id, doc.wh_id);
    let mapped = mapping.warehouses.contains_key(&warehouse)
        || mapping.warehouses.contains_key(&doc.wh_id.to_string());
    let parts = match plan(&doc, mapping) {
        Ok(Plan::Bills(parts)) => parts,
        Ok(Plan::Skipped(_)) => return,
        Err(e) => {
            // A document may be both: its warehouse unmapped and a line malformed.
            if !mapped {
                let entry = unmapped.entry(warehouse).or_insert((0, doc.io_id));
                entry.0 += 1;
            }
            let malformed = matches!(e, MapError::Malformed(_));
            if mapped || malformed {
                problems.push(Problem {
                    kind: if malformed { "document" } else { "mapping" },
                    key: format!("document {}", doc.io_id),
                    number: doc.io_id.to_string(),
                    message: format!("would be dead-lettered: {e}"),
                });
            }
            return;
        }
    };
    for bill in parts {
        let org = bill.model["FStockOrgId"]["FNumber"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for e in bill.model["FEntity"].as_array().into_iter().flatten() {
            let material = e["FMaterialId"]["FNumber"].as_str().unwrap_or("");
            let s = seen.entry(material.to_string()).or_default();
            s.entries += 1;
            if !s.orgs.contains(&org) {
                s.orgs.insert(org.clone());
            }
            if let Some(u) = e["FUnitID"]["FNumber"].as_str()
                && !s.units.contains(u)
            {
                s.units.insert(u.to_string());
            }
            if e.get("FLot").is_none() {
                if s.without_lot.0 == 0 {
                    s.without_lot.1 = doc.io_id;
                }
                s.without_lot.0 += 1;
            }
            // The SKU behind the material: `mapping.skus` read backwards, else the same.
            let sku = sku_of.get(material).copied().unwrap_or(material);
            if !s.skus.contains(sku) {
                s.skus.insert(sku.to_string());
            }
        }
        if preview.is_none() {
            *preview = Some(bill);
        }
    }
}

fn report(
    ask: &Preflight,
    mapping: &MappingConfig,
    problems: &[Problem],
    notes: &[String],
    preview: Option<&BillMessage>,
    units: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let sign = match mapping.loss_sign {
        transformer::LossSign::Negative => "negative",
        transformer::LossSign::Positive => "positive",
    };
    if ask.format == Format::Json {
        let out = json!({
            "ok": problems.is_empty(),
            "problems": problems,
            "notes": notes,
            "loss_sign": sign,
            "preview": preview,
            "units": units,
        });
        println!(
            "{}",
            serde_json::to_string(&out).context("encoding the report")?
        );
        return Ok(());
    }
    for p in problems {
        println!("PROBLEM {}: {}", p.kind, p.message);
    }
    if let Some(b) = preview {
        println!("preview of a document of the window, as it would be booked:");
        {
            let form = if b.form_id == transformer::mapping::FORM_MIS_DELIVERY {
                "other outbound (loss)"
            } else {
                "other inbound (gain)"
            };
            println!(
                "  {} {} {}, organisation {}, {} entries",
                b.bill_no,
                b.form_id,
                form,
                b.model["FStockOrgId"]["FNumber"].as_str().unwrap_or(""),
                b.entry_count()
            );
            for e in b.model["FEntity"].as_array().into_iter().flatten().take(5) {
                println!(
                    "    {} {} {} in stock {}{}",
                    e["FMaterialId"]["FNumber"].as_str().unwrap_or(""),
                    e["FQty"],
                    e["FUnitID"]["FNumber"].as_str().unwrap_or(""),
                    e["FStockId"]["FNumber"].as_str().unwrap_or(""),
                    e["FLot"]["FNumber"]
                        .as_str()
                        .map_or(String::new(), |l| format!(", lot {l}"))
                );
            }
        }
        println!(
            "  (mapping.loss_sign = \"{sign}\": a {sign} qty is a loss; if the document's losses show as gains here, set the other sign)"
        );
    }
    for n in notes {
        println!("{n}");
    }
    if ask.write_units {
        println!("[mapping.units]");
        // JSON strings are valid TOML basic strings: quotes and backslashes escaped.
        for (m, u) in units {
            println!("{} = {}", json!(m), json!(u));
        }
    }
    if problems.is_empty() {
        println!("mapping: ok, nothing to add or fix");
    } else {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for p in problems {
            *kinds.entry(p.kind).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "mapping: {} problems ({})",
            problems.len(),
            kinds.join(", ")
        );
    }
    Ok(())
}
