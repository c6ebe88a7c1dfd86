#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst2kd check --mapping` against both simulators: clean master data passes, and each kind
//! of problem fails with a line that names it.

use std::process::{Command, Output};

use common::time::{format_beijing, now_beijing};
use e2e::{Scratch, Sims, binary};
use serde_json::{Value, json};

/// Documents modified an hour ago: one per warehouse of the configuration below.
fn documents(extra: &[Value]) -> Vec<Value> {
    let modified = format_beijing(&(now_beijing() - chrono::Duration::hours(1)));
    let doc = |io_id: i64, wms: i64, wh: i64, items: Value| {
        json!({"io_id": io_id, "status": "Confirmed", "io_date": modified, "modified": modified,
            "wh_id": wh, "wms_co_id": wms, "items": items})
    };
    let mut docs = vec![
        doc(
            1,
            0,
            1,
            json!([{"ioi_id": 11, "sku_id": "A-1", "qty": -2}, {"sku_id": "B-1", "qty": -1}]),
        ),
        doc(2, 10001, 1, json!([{"sku_id": "A-1", "qty": -3}])),
        doc(
            3,
            0,
            2,
            json!([{"sku_id": "L-1", "qty": -1, "batchs": [{"batch_no": "L9", "qty": -1}]}]),
        ),
    ];
    docs.extend(extra.iter().cloned());
    docs
}

const CONFIG: &str = r#"
[jst]
app_key = "local-app-key"
app_secret = "local-app-secret"
access_token = "local-access-token"
rate_per_second = 0
rate_per_minute = 0
[kingdee]
acct_id = "local-acct"
user_name = "local-user"
app_id = "123456_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY"
app_secret = "0123456789abcdef0123456789abcdef"
[mapping]
org = "100"
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
                   {"number": "CK002", "org": "100", "locations": ["A-01"]}],
        "materials": [{"number": "A-1"}, {"number": "MAT-B", "unit": "Box"},
                      {"number": "L-1", "lot": true}],
        "departments": [{"number": "BM02", "org": "100"}]
    })
}

struct Setup {
    dir: Scratch,
    config: std::path::PathBuf,
    sims: Sims,
}

impl Setup {
    async fn new(name: &str, extra_docs: &[Value]) -> Self {
        let dir = Scratch::new(name);
        let data = dir.path("docs.json");
        std::fs::write(&data, serde_json::to_vec(&documents(extra_docs)).unwrap()).unwrap();
        let master_file = dir.path("master.json");
        std::fs::write(&master_file, master().to_string()).unwrap();
        let sims = Sims::start_with(
            &dir.0,
            &["--data", data.to_str().unwrap()],
            &["--master-data", master_file.to_str().unwrap()],
        )
        .await;
        let config = dir.path("config.toml");
        std::fs::write(&config, CONFIG).unwrap();
        Self { dir, config, sims }
    }

    fn check(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(binary("jst2kd"));
        cmd.args(["check", "--mapping", "--config"])
            .arg(&self.config)
            .args(args)
            .env("JST2KD_JST__BASE_URL", &self.sims.jst)
            .env(
                "JST2KD_KINGDEE__BASE_URL",
                format!("{}/k3cloud", self.sims.kingdee),
            )
            .env(
                "JST2KD_PRODUCER__CHECKPOINT",
                self.dir.path("producer.checkpoint.json"),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn a_clean_mapping_passes_and_shows_a_real_document() {
    let s = Setup::new("preflight-clean", &[]).await;
    let out = s.check(&["--write-units"], &[]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("mapping: ok"), "{text}");
    assert!(!text.contains("PROBLEM"), "{text}");
    // Progress goes to stderr, as plain lines when it is not a terminal.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("reading Jushuitan: ") && progress.contains(" queries in "),
        "{progress}"
    );
    assert!(text.contains("3 documents of the last 7 days"), "{text}");
    assert!(text.contains("preview of a document"), "{text}");
    assert!(text.contains("mapping.loss_sign"), "{text}");
    assert!(
        text.contains("[mapping.units]\n\"MAT-B\" = \"Box\""),
        "{text}"
    );
    let out = s.check(&["--format", "json"], &[]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"], json!([]));
    assert_eq!(report["preview"]["bill_no"], "JSTPD1");
}

#[tokio::test]
async fn each_kind_of_problem_is_named_with_what_to_fix() {
    let modified = format_beijing(&(now_beijing() - chrono::Duration::hours(1)));
    let doc = |io_id: i64, wh: i64, items: Value| {
        json!({"io_id": io_id, "status": "Confirmed", "io_date": modified, "modified": modified,
            "wh_id": wh, "wms_co_id": 0, "items": items})
    };
    // Documents that book a missing material, a lot-managed one without a lot, and a
    // warehouse the configuration does not map.
    let s = Setup::new(
        "preflight-problems",
        &[
            doc(4, 1, json!([{"sku_id": "GHOST", "qty": -1}])),
            doc(5, 1, json!([{"sku_id": "L-1", "qty": -1}])),
            doc(6, 9, json!([{"sku_id": "A-1", "qty": -1}])),
        ],
    )
    .await;
    let out = s.check(&[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for expected in [
        "PROBLEM material: material GHOST",
        "PROBLEM lot: material L-1 is lot-managed",
        "PROBLEM warehouse: JST warehouse 0:9 has no Kingdee stock",
        "add \"0:9\" = \"<stock number>\" under [mapping.warehouses]",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    // Problems of the configuration itself, one at a time.
    for (env, expected) in [
        (
            vec![("JST2KD_MAPPING__ORG", "999")],
            "PROBLEM organisation: organisation 999 (mapping.org) does not exist",
        ),
        (
            vec![("JST2KD_MAPPING__WAREHOUSES__1", "CK404")],
            "PROBLEM stock: stock CK404",
        ),
        (
            vec![("JST2KD_MAPPING__WAREHOUSES__10001:1__org", "100")],
            "stock CK101 is not used by organisation 100",
        ),
        (
            vec![("JST2KD_MAPPING__WAREHOUSES__2", "CK002")],
            "PROBLEM location: stock CK002 manages stock locations",
        ),
        (
            vec![("JST2KD_MAPPING__WAREHOUSES__2__dept", "BM99")],
            "PROBLEM department: department BM99",
        ),
        (
            vec![("JST2KD_MAPPING__UNITS__MAT-B", "Pcs")],
            "PROBLEM unit: material MAT-B's unit in Kingdee is Box",
        ),
        (
            vec![("JST2KD_MAPPING__UNITS__MAT-404", "Box")],
            "PROBLEM material: material MAT-404 (mapping.units) does not exist in Kingdee",
        ),
    ] {
        let out = s.check(&[], &env);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {text}");
        assert!(text.contains(expected), "{env:?}: {expected} in\n{text}");
    }
}

#[tokio::test]
async fn a_service_it_cannot_ask_exits_2() {
    let s = Setup::new("preflight-unreachable", &[]).await;
    let closed = format!("http://127.0.0.1:{}/k3cloud", e2e::free_port());
    let out = s.check(&[], &[("JST2KD_KINGDEE__BASE_URL", &closed)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("could not ask"), "{stderr}");
}
