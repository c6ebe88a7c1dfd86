#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The limits of issue 15 on the real binaries and the real RabbitMQ: a count document of
//! 100,000 lines is booked completely, in parts, with the transformer and the loader inside
//! their Kubernetes memory limits (256 and 512 MiB, read from each process's peak RSS); a
//! message whose headers nearly fill a frame neither stops the transformer nor holds up good
//! documents, and the dlq tools read and purge it.

use std::process::Command;
use std::time::{Duration, Instant};

use common::config::Secret;

use common::messages::Headers;
use common::queue::AmqpConfig;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Destination, Outgoing, Topology, Work};
use e2e::{
    Proc, Scratch, Sims, binary, delete_queues, free_port, get_json, http, proc_mib,
    queue_messages, wait_ok,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5";

struct Setup {
    dir: Scratch,
    prefix: String,
    kingdee: String,
    config: String,
    _sims: Sims,
}

impl Setup {
    /// The Kingdee simulator, and the JST simulator serving `docs`.
    async fn new(test: &str, docs: &[Value]) -> Self {
        let dir = Scratch::new(test);
        let prefix = format!("jst2kdtest-e2e-{test}-{}", std::process::id());
        let data = dir.path("docs.json");
        std::fs::write(&data, serde_json::to_vec(docs).unwrap()).unwrap();
        let sims = Sims::start(&dir.0, &["--data", data.to_str().unwrap()]).await;
        let kingdee = sims.kingdee.clone();
        let config = sims.worker_toml(
            &prefix,
            &dir.path("producer.checkpoint.json"),
            &[("1", "CK001")],
            "",
        );
        let path = dir.path("config.toml");
        std::fs::write(&path, config).unwrap();
        Self {
            dir,
            prefix,
            kingdee,
            config: path.display().to_string(),
            _sims: sims,
        }
    }

    /// Starts a worker and waits until it is ready; returns it with its metrics base URL.
    async fn worker(&self, name: &str) -> (Proc, String) {
        let port = free_port();
        let env = [("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
        let proc = Proc::start(name, name, &["--config", &self.config], &env, &self.dir.0);
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            wait_ok(&http(), &format!("{base}/readyz"), Duration::from_secs(30)).await,
            "{name} not ready: {}",
            proc.log_text()
        );
        (proc, base)
    }

    async fn bills(&self) -> Vec<Value> {
        // The bills of a 100,000-line document make a large answer: a patient client.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        client
            .get(format!("{}/_sim/bills", self.kingdee))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until Kingdee holds `n` bills (counted by `/_sim/stats`, cheap), then reads them.
    async fn wait_for_bills(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let held = get_json(&http(), &format!("{}/_sim/stats", self.kingdee))
                .await
                .ok()
                .and_then(|s| s["bills"].as_u64())
                .unwrap_or(0) as usize;
            if held >= n {
                return self.bills().await;
            }
            assert!(Instant::now() < deadline, "only {held} of {n} bills");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn dlq(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["dlq"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &self.config]);
        Command::new(binary("jst2kd")).args(&all).output().unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        delete_queues(&self.prefix);
    }
}

fn beijing_now() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(8) - chrono::Duration::minutes(30))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn doc(io_id: i64, lines: usize) -> Value {
    let m = beijing_now();
    let items: Vec<Value> = (0..lines)
        .map(|i| json!({"ioi_id": i, "sku_id": format!("SKU-{i:06}"), "r_qty": 10, "qty": -((i % 7) as i64 + 1)}))
        .collect();
    json!({"io_id": io_id, "type": "盘点", "io_date": m, "status": "Confirmed", "warehouse": "主仓",
        "wh_id": 1, "wms_co_id": 0, "remark": "", "modified": m, "items": items})
}

#[tokio::test]
async fn a_document_of_100000_lines_is_booked_in_parts_within_the_memory_limits() {
    const LINES: usize = 100_000;
    let s = Setup::new("lines", &[doc(900_001, LINES)]).await;
    let (transformer, _) = s.worker("transformer").await;
    let (loader, _) = s.worker("loader").await;
    let (producer, _) = s.worker("producer").await;
    let bills = s.wait_for_bills(100, Duration::from_secs(180)).await;
    let mut numbers: Vec<String> = bills
        .iter()
        .map(|b| b["bill_no"].as_str().unwrap().to_string())
        .collect();
    numbers.sort();
    let mut expected: Vec<String> = std::iter::once("JSTPD900001".to_string())
        .chain((2..=100).map(|p| format!("JSTPD900001-{p}")))
        .collect();
    expected.sort();
    assert_eq!(numbers, expected);
    let (mut entries, mut total) = (0, 0.0);
    let mut skus = std::collections::BTreeSet::new();
    for b in &bills {
        for e in b["model"]["FEntity"].as_array().unwrap() {
            entries += 1;
            total += e["FQty"].as_f64().unwrap();
            skus.insert(e["FMaterialId"]["FNumber"].as_str().unwrap().to_string());
        }
    }
    let want: f64 = (0..LINES).map(|i| (i % 7) as f64 + 1.0).sum();
    assert_eq!(
        (entries, skus.len()),
        (LINES, LINES),
        "every line booked once"
    );
    assert!((total - want).abs() < 1e-6, "{total} != {want}");
    let (t, l) = (
        proc_mib(Some(transformer.pid()), "VmHWM:"),
        proc_mib(Some(loader.pid()), "VmHWM:"),
    );
    let p = proc_mib(Some(producer.pid()), "VmHWM:");
    eprintln!("peak RSS: producer {p:.0} MiB, transformer {t:.0} MiB, loader {l:.0} MiB");
    assert!(p < 256.0, "producer peaked at {p:.0} MiB (limit 256)");
    assert!(t < 256.0, "transformer peaked at {t:.0} MiB (limit 256)");
    assert!(l < 512.0, "loader peaked at {l:.0} MiB (limit 512)");
}

/// Publishes with lapin directly (our broker refuses headers this large, as it should).
async fn publish_raw(exchange: &str, key: &str, id: &str, headers: FieldTable, body: &[u8]) {
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_message_id(id.into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack(), "{confirm:?}");
    conn.close(200, "done".into()).await.ok();
}

fn huge_headers(bytes: usize) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "huge".into(),
        AMQPValue::LongString("h".repeat(bytes).into()),
    );
    t
}

#[tokio::test]
async fn a_message_with_headers_that_fill_a_frame_stops_nothing() {
    let s = Setup::new("header", &[]).await;
    let (transformer, base) = s.worker("transformer").await;
    let (_loader, _) = s.worker("loader").await;
    let exchange = s.prefix.clone();
    // 130,000 bytes of headers: the frame (131,072) takes it, a copy with our dead-letter
    // headers added would not.
    publish_raw(
        &exchange,
        "counts",
        "bad-body",
        huge_headers(130_000),
        b"{not json",
    )
    .await;
    publish_raw(
        &exchange,
        "counts",
        "7001@m",
        huge_headers(130_000),
        doc(7001, 3).to_string().as_bytes(),
    )
    .await;
    // One straight into the dead letters, as another tool might have left it.
    let mut dead = huge_headers(130_000);
    dead.insert(
        "jst2kd-error-kind".into(),
        AMQPValue::LongString("malformed".into()),
    );
    publish_raw(
        &format!("{}.dead", s.prefix),
        "",
        "left-by-hand",
        dead,
        b"{}",
    )
    .await;
    let broker = RabbitBroker::connect(
        Secret::new(URL),
        "e2e-header",
        Topology::from_config(&AmqpConfig {
            prefix: s.prefix.clone(),
            ..AmqpConfig::default()
        }),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let good: Vec<Outgoing> = (1..=20)
        .map(|i| Outgoing {
            destination: Destination::Work(Work::Counts),
            message_id: format!("{i}@m"),
            headers: Headers::new(),
            body: doc(i, 2).to_string().into_bytes(),
        })
        .collect();
    Broker::Rabbit(broker.clone())
        .publish_all(good)
        .await
        .unwrap();
    let bills = s.wait_for_bills(21, Duration::from_secs(60)).await;
    assert_eq!(
        bills.len(),
        21,
        "the 20 good documents and the big-header one"
    );
    assert_eq!(
        http()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let dead_queue = format!("{}.dead", s.prefix);
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_messages(&dead_queue) != Some(2) {
        assert!(
            Instant::now() < deadline,
            "dead letters: {:?}",
            queue_messages(&dead_queue)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = transformer.log_text();
    assert!(
        !log.contains("Publish interrupted"),
        "the connection churned:\n{log}"
    );

    let out = s.dlq(&["list", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let ours = listed
        .iter()
        .find(|l| l["message_id"] == "bad-body")
        .expect("listed");
    assert_eq!(ours["kind"], "malformed");
    let out = s.dlq(&["show", "bad-body"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("jst2kd-headers-truncated"), "{shown}");
    let out = s.dlq(&["purge", "--kind", "malformed", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_messages(&dead_queue) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "dead letters left: {:?}",
            queue_messages(&dead_queue)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.close().await;
}

#[tokio::test]
async fn text_from_outside_reaches_no_terminal_raw() {
    let s = Setup::new("escape", &[]).await;
    let port = free_port();
    let env = [
        ("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}")),
        ("JST2KD_RUNTIME__LOG_FORMAT", "pretty".to_string()),
    ];
    let transformer = Proc::start(
        "transformer",
        "transformer",
        &["--config", &s.config],
        &env,
        &s.dir.0,
    );
    assert!(
        wait_ok(
            &http(),
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(30)
        )
        .await
    );
    let hostile = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nFAKE ERROR line";
    let mut headers = FieldTable::default();
    headers.insert("x-note".into(), AMQPValue::LongString(hostile.into()));
    publish_raw(&s.prefix, "counts", hostile, headers, b"\x1b[31m{not json").await;
    let dead_queue = format!("{}.dead", s.prefix);
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue_messages(&dead_queue) != Some(1) {
        assert!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = transformer.log_text();
    // The settler's one dead-letter event names the message and why.
    assert!(
        log.contains("Dead-lettered") && log.contains("malformed"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "raw escapes in the log:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("FAKE")),
        "a forged line:\n{log}"
    );
    let out = s.dlq(&["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        !table.contains('\u{1b}') && !table.contains('\r'),
        "{table:?}"
    );
    assert_eq!(
        table.lines().count(),
        3,
        "header, one letter, summary:\n{table}"
    );
    assert!(table.contains("evil\\u{1b}"), "{table}");
}

#[tokio::test]
async fn overflowing_values_are_configuration_errors_and_amqps_on_a_plain_port_says_so() {
    let s = Setup::new("values", &[]).await;
    for (var, value, key) in [
        (
            "JST2KD_RUNTIME__SHUTDOWN_TIMEOUT",
            "99999999999999999999d",
            "runtime.shutdown_timeout",
        ),
        (
            "JST2KD_RUNTIME__SHUTDOWN_TIMEOUT",
            "0s",
            "runtime.shutdown_timeout",
        ),
        (
            "JST2KD_LOADER__LINGER",
            "99999999999999999999d",
            "loader.linger",
        ),
        ("JST2KD_AMQP__DELIVERY_LIMIT", "0", "amqp.delivery_limit"),
        ("JST2KD_AMQP__RETRY_DELAYS", "[]", "amqp.retry_delays"),
        (
            "JST2KD_AMQP__MAX_MESSAGE_BYTES",
            "1",
            "amqp.max_message_bytes",
        ),
        ("JST2KD_MAPPING__MAX_ENTRIES", "0", "mapping.max_entries"),
    ] {
        let worker = if key.starts_with("mapping") {
            "transformer"
        } else {
            "loader"
        };
        let out = Command::new(binary(worker))
            .args(["--config", &s.config])
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(key) && !stderr.contains("panicked"),
            "{var}={value}: {stderr}"
        );
    }
    let out = Command::new(binary("jst2kd"))
        .args([
            "dlq",
            "list",
            "--older-than",
            "99999999999999999999d",
            "--config",
            &s.config,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // amqps:// against the plain port: a clear error within the handshake timeout, not ready,
    // and a clean stop.
    let port = free_port();
    let env = [
        ("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}")),
        (
            "JST2KD_AMQP__URL",
            "amqps://guest:guest@127.0.0.1:5672/%2f".to_string(),
        ),
    ];
    let mut transformer = Proc::start(
        "tls",
        "transformer",
        &["--config", &s.config],
        &env,
        &s.dir.0,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // Our own handshake names the node and the reason at once (lapin alone would retry until
    // the connect timeout).
    while !transformer
        .log_text()
        .contains("127.0.0.1:5672: TLS handshake failed: received corrupt message")
    {
        assert!(Instant::now() < deadline, "{}", transformer.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = http()
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    transformer.signal("TERM");
    assert_eq!(
        transformer.wait_exit(Duration::from_secs(15)).await,
        Some(0),
        "{}",
        transformer.log_text()
    );
    assert!(
        !transformer.log_text().contains("panicked"),
        "{}",
        transformer.log_text()
    );
}
