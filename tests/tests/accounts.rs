#![allow(clippy::expect_used, clippy::unwrap_used)]
//! A real account's shape, end to end through the three worker binaries and RabbitMQ: two
//! organisations, a stock with locations, materials in other units, lots of both signs. The
//! Kingdee simulator checks every bill against its master data (a stock of the wrong
//! organisation, a missing location, a wrong unit, a lot-managed material without a lot are
//! refused), and the test compares what it saved with the bills it computes itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::time::{format_beijing, now_beijing};
use e2e::{Proc, Scratch, Sims, delete_queues, free_port, get_json, http, queue_messages, wait_ok};
use serde_json::{Value, json};

const MAPPING: &str = r#"org = "100"
gains = "misc_in"
location_field = "FF100001"
[mapping.skus]
"B-1" = "MAT-B"
[mapping.units]
"MAT-B" = "Box"
[mapping.warehouses]
"1" = "CK001"
"10001:1" = { stock = "CK101", org = "200" }
"2" = { stock = "CK002", location = "A-01", dept = "BM02" }
"#;

fn master() -> Value {
    json!({
        "orgs": ["100", "200"],
        "stocks": ["CK001", {"number": "CK101", "org": "200"},
                   {"number": "CK002", "org": "100", "locations": ["A-01", "A-02"]}],
        "materials": [{"number": "A-1"}, {"number": "MAT-B", "unit": "Box"},
                      {"number": "L-1", "lot": true}],
        "departments": [{"number": "BM02", "org": "100"}]
    })
}

fn documents() -> Vec<Value> {
    let modified = format_beijing(&(now_beijing() - chrono::Duration::hours(1)));
    let doc = |io_id: i64, wms: i64, wh: i64, items: Value| {
        json!({"io_id": io_id, "status": "Confirmed", "io_date": modified, "modified": modified,
            "wh_id": wh, "wms_co_id": wms, "items": items})
    };
    vec![
        doc(
            1,
            0,
            1,
            json!([
                {"ioi_id": 11, "sku_id": "A-1", "qty": -2},
                {"ioi_id": 12, "sku_id": "B-1", "qty": -1},
                {"ioi_id": 13, "sku_id": "L-1", "qty": 1, "batchs": [
                    {"batch_no": "L1", "qty": -2}, {"batch_no": "L2", "qty": 3}, {"batch_no": "L3", "qty": 0}]},
                {"ioi_id": 14, "qty": 0}
            ]),
        ),
        doc(
            2,
            10001,
            1,
            json!([{"sku_id": "A-1", "qty": -3}, {"sku_id": "B-1", "qty": 2}]),
        ),
        doc(
            3,
            0,
            2,
            json!([{"sku_id": "A-1", "qty": -1}, {"sku_id": "L-1", "qty": -4, "batch_id": "L7"}]),
        ),
    ]
}

/// An entry as compared: material, unit, quantity, stock, location, lot.
type Entry = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
);

/// A bill as compared: form, organisation, department, sorted entries.
type Bill = (String, String, Option<String>, Vec<Entry>);

/// The bills the documents should become, by this test's own reading of the rules.
fn expected(docs: &[Value]) -> BTreeMap<String, Bill> {
    // (wms_co_id:wh_id) → stock, organisation, location, department.
    let warehouse = |wms: i64, wh: i64| match (wms, wh) {
        (10001, 1) => ("CK101", "200", None, None),
        (_, 1) => ("CK001", "100", None, None),
        (_, 2) => ("CK002", "100", Some("A-01"), Some("BM02")),
        other => panic!("unmapped {other:?}"),
    };
    let material = |sku: &str| if sku == "B-1" { "MAT-B" } else { sku }.to_string();
    let unit = |m: &str| if m == "MAT-B" { "Box" } else { "Pcs" }.to_string();
    let mut out: BTreeMap<String, Bill> = BTreeMap::new();
    for doc in docs {
        let io_id = doc["io_id"].as_i64().unwrap();
        let (stock, org, location, dept) = warehouse(
            doc["wms_co_id"].as_i64().unwrap(),
            doc["wh_id"].as_i64().unwrap(),
        );
        for line in doc["items"].as_array().unwrap() {
            let sku = line["sku_id"].as_str().unwrap_or("");
            let batches: Vec<(f64, Option<String>)> = line["batchs"]
                .as_array()
                .map(|b| {
                    b.iter()
                        .map(|x| {
                            (
                                x["qty"].as_f64().unwrap(),
                                x["batch_no"].as_str().map(String::from),
                            )
                        })
                        .filter(|(q, _)| *q != 0.0)
                        .collect()
                })
                .unwrap_or_default();
            let booked = if batches.is_empty() {
                vec![(
                    line["qty"].as_f64().unwrap_or(0.0),
                    line["batch_id"].as_str().map(String::from),
                )]
            } else {
                batches
            };
            for (qty, lot) in booked.into_iter().filter(|(q, _)| *q != 0.0) {
                let (bill_no, form) = if qty < 0.0 {
                    (format!("JSTPD{io_id}"), "STK_MisDelivery")
                } else {
                    (format!("JSTPY{io_id}"), "STK_MISCELLANEOUS")
                };
                let m = material(sku);
                let bill = out.entry(bill_no).or_insert_with(|| {
                    (
                        form.to_string(),
                        org.to_string(),
                        dept.map(String::from),
                        Vec::new(),
                    )
                });
                bill.3.push((
                    m.clone(),
                    unit(&m),
                    format!("{:.3}", qty.abs()),
                    stock.to_string(),
                    location.map(String::from),
                    lot,
                ));
                bill.3.sort();
            }
        }
    }
    out
}

/// A saved bill, read the same way.
fn saved(bill: &Value) -> (String, Bill) {
    let model = &bill["model"];
    let number = |v: &Value| v["FNumber"].as_str().map(String::from);
    let org = number(&model["FStockOrgId"]).unwrap();
    assert_eq!(number(&model["FOwnerIdHead"]).as_ref(), Some(&org));
    let mut entries: Vec<Entry> = model["FEntity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(number(&e["FOwnerId"]).as_ref(), Some(&org), "entry owner");
            assert_eq!(number(&e["FKeeperId"]).as_ref(), Some(&org), "entry keeper");
            (
                number(&e["FMaterialId"]).unwrap(),
                number(&e["FUnitID"]).unwrap(),
                format!("{:.3}", e["FQty"].as_f64().unwrap()),
                number(&e["FStockId"]).unwrap(),
                e["FStockLocId"]["FSTOCKLOCID__FF100001"]["FNumber"]
                    .as_str()
                    .map(String::from),
                number(&e["FLot"]),
            )
        })
        .collect();
    entries.sort();
    (
        bill["bill_no"].as_str().unwrap().to_string(),
        (
            bill["form_id"].as_str().unwrap().to_string(),
            org,
            number(&model["FDeptId"]),
            entries,
        ),
    )
}

#[tokio::test]
async fn two_organisations_units_locations_and_lots_book_exactly_the_computed_bills() {
    let dir = Scratch::new("accounts");
    let prefix = format!("jst2kdtest-e2e-accounts-{}", std::process::id());
    let docs = documents();
    let data = dir.path("docs.json");
    std::fs::write(&data, serde_json::to_vec(&docs).unwrap()).unwrap();
    let master_file = dir.path("master.json");
    std::fs::write(&master_file, master().to_string()).unwrap();
    let sims = Sims::start_with(
        &dir.0,
        &["--data", data.to_str().unwrap()],
        &["--master-data", master_file.to_str().unwrap()],
    )
    .await;
    let config = dir.path("config.toml");
    std::fs::write(
        &config,
        sims.worker_toml_with(
            &prefix,
            &dir.path("producer.checkpoint.json"),
            MAPPING,
            "[loader]\nlinger = \"50ms\"\n",
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let mut workers: Vec<Proc> = Vec::new();
    for name in ["loader", "transformer", "producer"] {
        let port = free_port();
        let env = [("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
        let proc = Proc::start(name, name, &["--config", &config], &env, &dir.0);
        let ready = wait_ok(
            &http(),
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(30),
        )
        .await;
        assert!(ready, "{name} not ready:\n{}", proc.log_text());
        workers.push(proc);
    }
    let want = expected(&docs);
    let deadline = Instant::now() + Duration::from_secs(60);
    let bills = loop {
        let bills = get_json(&http(), &format!("{}/_sim/bills", sims.kingdee))
            .await
            .unwrap();
        let dead = queue_messages(&format!("{prefix}.dead"));
        assert_eq!(
            dead,
            Some(0),
            "a bill was refused; the loader's log:\n{}",
            workers[0].log_text()
        );
        if bills.as_array().unwrap().len() >= want.len() {
            break bills;
        }
        assert!(
            Instant::now() < deadline,
            "only {bills} after 60 s; loader log:\n{}",
            workers[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got: BTreeMap<String, Bill> = bills.as_array().unwrap().iter().map(saved).collect();
    assert_eq!(got, want);
    // The computed bills are the interesting ones: two organisations, a location, a unit.
    assert_eq!(want["JSTPD2"].1, "200");
    assert_eq!(want["JSTPD3"].2.as_deref(), Some("BM02"));
    for w in &workers {
        w.signal("TERM");
    }
    for w in &mut workers {
        w.wait_exit(Duration::from_secs(30)).await;
    }
    delete_queues(&prefix);
}
