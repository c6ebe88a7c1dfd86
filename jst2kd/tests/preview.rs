#![allow(clippy::expect_used, clippy::unwrap_used)]
//! `jst2kd preview`: machine-readable bills on stdout, reasons on stderr, exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/local.toml")
}

fn preview(doc: &serde_json::Value, extra_env: &[(&str, &str)]) -> Output {
    let file = std::env::temp_dir().join(format!(
        "jst2kd-preview-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&file, doc.to_string()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jst2kd"));
    cmd.args(["preview", "--config"]).arg(config()).arg(&file);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    std::fs::remove_file(&file).ok();
    out
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_document_prints_its_bills_a_skip_prints_an_empty_array_and_a_gap_exits_1() {
    let doc = serde_json::json!({"io_id": 101, "status": "Confirmed", "io_date": "2026-03-01 10:00:00",
        "modified": "2026-03-01 10:05:00", "wh_id": 1, "wms_co_id": 0,
        "items": [{"ioi_id": 1, "sku_id": "A-1", "qty": -2}, {"ioi_id": 2, "sku_id": "A-2", "qty": 3}]});
    let out = preview(&doc, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bills: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(bills[0]["bill_no"], "JSTPD101");
    assert_eq!(bills[0]["form_id"], "STK_MisDelivery");
    assert_eq!(
        bills.as_array().map(Vec::len),
        Some(1),
        "gains are ignored by default"
    );

    let out = preview(&doc, &[("JST2KD_MAPPING__GAINS", "misc_in")]);
    let bills: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(bills[1]["bill_no"], "JSTPY101");

    let out = preview(
        &serde_json::json!({"io_id": 5, "status": "WaitConfirm", "items": []}),
        &[],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mapping.statuses"));

    let unmapped = serde_json::json!({"io_id": 6, "status": "Confirmed", "io_date": "2026-03-01", "wh_id": 9,
        "items": [{"sku_id": "A", "qty": -1}]});
    let out = preview(&unmapped, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("under [mapping.warehouses]"));

    let out = preview(&doc, &[("JST2KD_MAPPING__BILL_NO_TEMPLATE", "NOID")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad configuration is a usage error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("mapping.bill_no_template"));
}
