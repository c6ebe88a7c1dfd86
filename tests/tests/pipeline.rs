#![allow(clippy::expect_used, clippy::unwrap_used)]
//! End to end: `jst2kd sim jst`, `jst2kd sim kingdee` and the three real worker binaries as
//! processes on the real RabbitMQ. The expected bills are computed here from the documents the
//! simulator serves, by this file's own reading of SPEC section 4 — not by the mapping code.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::{
    Proc, Scratch, Sims, delete_queues, free_port, get_json, get_text, http, metric,
    queue_messages, status, wait_ok,
};
use serde_json::Value;

/// Warehouse mapping of the test configuration (the same as config/local.toml).
/// One expected entry: material, quantity, stock, lot.
type Entry = (String, String, String, Option<String>);

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        _ => panic!("not a number: {v}"),
    }
}

fn qty_text(q: f64) -> String {
    format!("{:.3}", q.abs())
}

/// The bills SPEC section 4 asks for, by bill number, each as its sorted entries.
fn expected_bills(docs: &[Value]) -> BTreeMap<String, Vec<Entry>> {
    let mut out = BTreeMap::new();
    for doc in docs {
        let status = doc["status"].as_str().unwrap();
        if status != "Confirmed" && status != "Archive" {
            continue;
        }
        let key = format!("{}:{}", doc["wms_co_id"], doc["wh_id"]);
        let wh = doc["wh_id"].to_string();
        let stock = e2e::GENERATED_WAREHOUSES
            .iter()
            .find(|(k, _)| *k == key)
            .or_else(|| e2e::GENERATED_WAREHOUSES.iter().find(|(k, _)| *k == wh))
            .map(|(_, s)| s.to_string())
            .expect("the generator only uses mapped warehouses");
        let mut entries = Vec::new();
        for line in doc["items"].as_array().unwrap() {
            let q = num(&line["qty"]);
            if q >= 0.0 {
                continue;
            }
            let sku = line["sku_id"].as_str().unwrap().to_string();
            let batches: Vec<&Value> = line
                .get("batchs")
                .and_then(Value::as_array)
                .map(|b| b.iter().filter(|b| num(&b["qty"]) != 0.0).collect())
                .unwrap_or_default();
            if batches.is_empty() {
                entries.push((sku, qty_text(q), stock.clone(), None));
            } else {
                for b in batches {
                    let lot = b["batch_no"].as_str().map(str::to_string);
                    entries.push((sku.clone(), qty_text(num(&b["qty"])), stock.clone(), lot));
                }
            }
        }
        if !entries.is_empty() {
            entries.sort();
            out.insert(format!("JSTPD{}", doc["io_id"]), entries);
        }
    }
    out
}

/// The entries of a saved bill, read from the model the loader sent.
fn saved_entries(model: &Value) -> Vec<Entry> {
    let mut entries: Vec<Entry> = model["FEntity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["FMaterialId"]["FNumber"].as_str().unwrap().to_string(),
                qty_text(num(&e["FQty"])),
                e["FStockId"]["FNumber"].as_str().unwrap().to_string(),
                e.get("FLot")
                    .map(|l| l["FNumber"].as_str().unwrap().to_string()),
            )
        })
        .collect();
    entries.sort();
    entries
}

/// The simulators, a configuration, and the workers started from it.
struct Pipeline {
    dir: Scratch,
    prefix: String,
    jst: String,
    kingdee: String,
    _sims: Sims,
    config: String,
}

impl Pipeline {
    async fn start(test: &str, documents: usize, loader: &str) -> Self {
        let dir = Scratch::new(test);
        let prefix = format!("jst2kdtest-e2e-{test}-{}", std::process::id());
        let sims = Sims::start(
            &dir.0,
            &["--generate", &documents.to_string(), "--seed", "7"],
        )
        .await;
        let (jst, kingdee) = (sims.jst.clone(), sims.kingdee.clone());
        let config = sims.worker_toml(
            &prefix,
            &dir.path("producer.checkpoint.json"),
            &e2e::GENERATED_WAREHOUSES,
            &format!("[loader]\n{loader}\n"),
        );
        let path = dir.path("config.toml");
        std::fs::write(&path, config).expect("config");
        Self {
            prefix,
            jst,
            kingdee,
            _sims: sims,
            config: path.display().to_string(),
            dir,
        }
    }

    /// Starts a worker; returns it and its metrics URL once it is ready.
    async fn worker(&self, name: &str, extra_env: &[(&str, String)]) -> (Proc, String) {
        let port = free_port();
        let mut env = vec![("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
        env.extend(extra_env.iter().cloned());
        let proc = Proc::start(name, name, &["--config", &self.config], &env, &self.dir.0);
        let base = format!("http://127.0.0.1:{port}");
        if !wait_ok(&http(), &format!("{base}/readyz"), Duration::from_secs(30)).await {
            panic!("{name} not ready; its log:\n{}", proc.log_text());
        }
        (proc, base)
    }

    /// Nothing waits or is being worked on in the work, retry and control queues.
    fn quiet(&self) -> bool {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "name", "messages"])
            .output();
        let Ok(out) = out else { return false };
        String::from_utf8_lossy(&out.stdout).lines().all(|line| {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(count)) = (parts.next(), parts.next()) else {
                return true;
            };
            // The dead letters stay, and so does the outcome log (a stream is read, not
            // consumed).
            !name.starts_with(&format!("{}.", self.prefix))
                || name == format!("{}.dead", self.prefix)
                || name == format!("{}.events", self.prefix)
                || count == "0"
        })
    }

    async fn docs(&self) -> Vec<Value> {
        get_json(&http(), &format!("{}/_sim/counts", self.jst))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    async fn bills(&self) -> Vec<Value> {
        get_json(&http(), &format!("{}/_sim/bills", self.kingdee))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until Kingdee holds `n` bills and the pipeline has gone quiet (nothing waiting or
    /// unacked in the work and retry queues), so that an extra bill would be there to see.
    async fn wait_for_bills(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let bills = self.bills().await;
            if bills.len() >= n && self.quiet() {
                // Queue figures can trail the broker by a moment: settled means two looks,
                // half a second apart, that agree.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let again = self.bills().await;
                if again.len() == bills.len() && self.quiet() {
                    return again;
                }
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} bills after {timeout:?}",
                bills.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every expected bill exactly once, with the expected entries.
    fn check(expected: &BTreeMap<String, Vec<Entry>>, bills: &[Value]) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for b in bills {
            *seen
                .entry(b["bill_no"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "bills booked twice: {twice:?}");
        let saved: Vec<&String> = seen.keys().collect();
        let wanted: Vec<&String> = expected.keys().collect();
        assert_eq!(saved, wanted, "exactly the expected bill numbers");
        for b in bills {
            let no = b["bill_no"].as_str().unwrap();
            assert_eq!(b["form_id"], "STK_MisDelivery");
            assert_eq!(saved_entries(&b["model"]), expected[no], "entries of {no}");
            assert_eq!(b["model"]["FStockOrgId"]["FNumber"], "100");
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}

#[tokio::test]
async fn two_hundred_documents_become_exactly_the_expected_bills() {
    let p = Pipeline::start("pipeline", 200, "batch_size = 20\nlinger = \"100ms\"").await;
    let expected = expected_bills(&p.docs().await);
    assert!(expected.len() > 50, "the generated set has loss documents");
    let (mut loader, loader_url) = p.worker("loader", &[]).await;
    let (mut transformer, transformer_url) = p.worker("transformer", &[]).await;
    let (mut producer, producer_url) = p.worker("producer", &[]).await;

    let bills = p
        .wait_for_bills(expected.len(), Duration::from_secs(120))
        .await;
    Pipeline::check(&expected, &bills);
    assert_eq!(
        queue_messages(&format!("{}.dead", p.prefix)),
        Some(0),
        "nothing dead-lettered"
    );

    let client = http();
    for url in [&loader_url, &transformer_url, &producer_url] {
        assert_eq!(status(&client, &format!("{url}/healthz")).await, 200);
        assert_eq!(status(&client, &format!("{url}/readyz")).await, 200);
    }
    let metrics = get_text(&client, &format!("{loader_url}/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "jst2kd_loader_bills_total{{result=\"created\"}} {}",
            expected.len()
        )),
        "{metrics}"
    );
    let metrics = get_text(&client, &format!("{producer_url}/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("jst2kd_producer_checkpoint_timestamp_seconds"),
        "{metrics}"
    );

    for w in [&mut producer, &mut transformer, &mut loader] {
        w.signal("TERM");
        assert_eq!(
            w.wait_exit(Duration::from_secs(30)).await,
            Some(0),
            "{} exits 0 on SIGTERM; log:\n{}",
            w.name,
            w.log_text()
        );
    }
}

#[tokio::test]
async fn sigterm_mid_run_stops_each_worker_cleanly_with_nothing_lost() {
    // One bill per BatchSave call and one document at a time, so there is a run to interrupt.
    let p = Pipeline::start(
        "sigterm",
        1200,
        "batch_size = 1\nlinger = \"10ms\"\nconcurrency = 1",
    )
    .await;
    let expected = expected_bills(&p.docs().await);
    let slow = [("JST2KD_AMQP__PREFETCH", "1".to_string())];

    let (mut producer, _) = p.worker("producer", &[]).await;
    let counts = format!("{}.counts", p.prefix);
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_messages(&counts).unwrap_or(0) < 500 {
        assert!(
            Instant::now() < deadline,
            "the producer published documents"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (mut transformer, transformer_url) = p.worker("transformer", &slow).await;
    let client = http();
    let consumed = "jst2kd_consumed_total{stage=\"transformer\"}";
    loop {
        let page = get_text(&client, &format!("{transformer_url}/metrics"))
            .await
            .unwrap_or_default();
        if metric(&page, consumed).unwrap_or(0.0) >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transformer consumed documents"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    transformer.signal("TERM");
    assert_eq!(
        transformer.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "transformer log:\n{}",
        transformer.log_text()
    );
    assert!(
        queue_messages(&counts).unwrap_or(0) > 0,
        "the transformer was stopped mid-run"
    );

    let (mut loader, _) = p.worker("loader", &[]).await;
    while p.bills().await.len() < 5 {
        assert!(Instant::now() < deadline, "the loader saved bills");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loader.signal("TERM");
    assert_eq!(
        loader.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "loader log:\n{}",
        loader.log_text()
    );
    let saved_before = p.bills().await.len();
    assert!(
        saved_before < expected.len(),
        "the loader was stopped mid-run"
    );

    producer.signal("TERM");
    assert_eq!(
        producer.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "producer log:\n{}",
        producer.log_text()
    );

    // Start again: everything that was in flight is redelivered and ends as exactly one bill.
    let (_transformer, _) = p.worker("transformer", &[]).await;
    let (_loader, _) = p.worker("loader", &[]).await;
    let bills = p
        .wait_for_bills(expected.len(), Duration::from_secs(180))
        .await;
    Pipeline::check(&expected, &bills);
    assert_eq!(
        queue_messages(&format!("{}.dead", p.prefix)),
        Some(0),
        "nothing dead-lettered"
    );
}
