#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Traces over OTLP, end to end: the three workers as processes on the real RabbitMQ, with the
//! simulators, export to a receiver of the test's own (an HTTP server decoding the
//! `opentelemetry-proto` messages). Each document that became bills is one trace holding
//! spans of all three services; a BatchSave span links to the traces of several bills; a
//! dead letter stays in its document's trace and its log line names the trace. Without the
//! variable nothing is exported; with an endpoint that is down the work goes on and the lost
//! spans are counted.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::messages::{Headers, header};
use common::queue::{Broker, Destination, Outgoing, Work};
use e2e::{
    Proc, Scratch, Sims, delete_queues, free_port, get_text, http, metric, queue_messages, wait_ok,
};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{Value, json};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: BTreeMap<String, String>,
    linked_traces: Vec<String>,
    /// 2 = error (OTLP `STATUS_CODE_ERROR`).
    status: i32,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

/// An OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf body.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Got>>>,
    requests: Arc<Mutex<usize>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let requests: Arc<Mutex<usize>> = Arc::default();
        let (s, r) = (spans.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, r) = (s.clone(), r.clone());
                        async move { Ok::<_, Infallible>(receive(req, &s, &r).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url,
            spans,
            requests,
            _task: task,
        }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: &Mutex<Vec<Got>>,
    requests: &Mutex<usize>,
) -> Response<Full<Bytes>> {
    *requests.lock().unwrap() += 1;
    let wrong = |status: u16, why: &str| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(why.to_string())))
            .unwrap()
    };
    if req.uri().path() != "/v1/traces" {
        return wrong(404, "not /v1/traces");
    }
    let protobuf = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf");
    if !protobuf {
        return wrong(415, "not application/x-protobuf");
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return wrong(400, "not an ExportTraceServiceRequest");
    };
    let mut got = spans.lock().unwrap();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    linked_traces: span.links.iter().map(|l| hex(&l.trace_id)).collect(),
                    status: span.status.map(|s| s.code).unwrap_or(0),
                });
            }
        }
    }
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::new(Bytes::from(answer)))
        .unwrap()
}

/// A worker started with `env`, once it is ready; returns it and its metrics URL.
async fn worker(name: &str, config: &str, dir: &Scratch, env: &[(&str, String)]) -> (Proc, String) {
    let port = free_port();
    let mut all = vec![("JST2KD_METRICS__LISTEN", format!("127.0.0.1:{port}"))];
    all.extend(env.iter().cloned());
    let proc = Proc::start(name, name, &["--config", config], &all, &dir.0);
    let base = format!("http://127.0.0.1:{port}");
    if !wait_ok(&http(), &format!("{base}/readyz"), Duration::from_secs(30)).await {
        panic!("{name} not ready; its log:\n{}", proc.log_text());
    }
    (proc, base)
}

async fn series(url: &str, name: &str) -> f64 {
    let page = get_text(&http(), &format!("{url}/metrics"))
        .await
        .unwrap_or_default();
    metric(&page, name).unwrap_or(0.0)
}

async fn stop(w: &mut Proc) {
    w.signal("TERM");
    assert_eq!(
        w.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{} exits 0 on SIGTERM; log:\n{}",
        w.name,
        w.log_text()
    );
}

#[tokio::test]
async fn each_document_is_one_trace_across_the_three_workers() {
    let receiver = Receiver::start().await;
    let dir = Scratch::new("traces");
    let prefix = format!("jst2kdtest-e2e-traces-{}", std::process::id());
    let sims = Sims::start(&dir.0, &["--generate", "60", "--seed", "11"]).await;
    // Warehouse 4 is left unmapped: its documents are dead-lettered by the
    // transformer, and stay in their traces.
    let mapped: Vec<(&str, &str)> = e2e::GENERATED_WAREHOUSES
        .iter()
        .copied()
        .filter(|(k, _)| *k != "4")
        .collect();
    let config = sims.worker_toml(
        &prefix,
        &dir.path("producer.checkpoint.json"),
        &mapped,
        "[loader]\nbatch_size = 20\nlinger = \"300ms\"\n",
    );
    let config_path = dir.path("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let config = config_path.display().to_string();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ];
    // RUST_LOG quiets the loader's log, not its spans.
    let mut quiet = env.to_vec();
    quiet.push(("RUST_LOG", "warn".to_string()));
    let (mut loader, loader_url) = worker("loader", &config, &dir, &quiet).await;
    let (mut transformer, transformer_url) = worker("transformer", &config, &dir, &env).await;
    let (mut producer, producer_url) = worker("producer", &config, &dir, &env).await;

    // Done: every document published is consumed, every bill published is saved, and the
    // figures hold still for a second (the producer's first poll takes them all).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = None;
    let (published, bills, dead) = loop {
        let published = series(
            &producer_url,
            "jst2kd_published_total{queue=\"counts\",stage=\"producer\"}",
        )
        .await;
        let consumed = series(
            &transformer_url,
            "jst2kd_consumed_total{stage=\"transformer\"}",
        )
        .await;
        let bills = series(
            &transformer_url,
            "jst2kd_published_total{queue=\"bills\",stage=\"transformer\"}",
        )
        .await;
        let created = series(&loader_url, "jst2kd_loader_bills_total{result=\"created\"}").await;
        let dead = series(
            &transformer_url,
            "jst2kd_dead_lettered_total{kind=\"mapping\",stage=\"transformer\"}",
        )
        .await;
        let now = (published, consumed, bills, created, dead);
        let done = published > 0.0 && consumed >= published && bills > 0.0 && created >= bills;
        if done && last == Some(now) {
            break (published, bills, dead);
        }
        last = Some(now);
        assert!(
            Instant::now() < deadline,
            "pipeline not done: published {published}, consumed {consumed}, bills {bills}, created {created}"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    assert!(
        dead > 0.0,
        "the unmapped warehouse's documents are dead-lettered"
    );
    // Stopping flushes what each worker still holds.
    for w in [&mut producer, &mut transformer, &mut loader] {
        stop(w).await;
    }
    let spans = receiver.spans();
    for s in &spans {
        assert!(
            ["producer", "transformer", "loader"].contains(&s.service.as_str()),
            "service.name is the binary's name: {s:?}"
        );
    }
    let by_id: BTreeMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let named = |service: &str, name: &str| -> Vec<&Got> {
        spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect()
    };
    let publishes = named("producer", "publish");
    assert_eq!(
        publishes.len() as f64,
        published,
        "one publish span per document"
    );
    for p in &publishes {
        assert!(
            p.parent_id.is_empty(),
            "the publish span is the root: {p:?}"
        );
    }
    let doc_traces: BTreeSet<&str> = publishes.iter().map(|p| p.trace_id.as_str()).collect();
    assert_eq!(doc_traces.len(), publishes.len(), "one trace per document");

    // Each transformer span is the child of its document's publish span.
    let maps = named("transformer", "map");
    assert_eq!(maps.len(), publishes.len(), "each document mapped once");
    for m in &maps {
        let parent = by_id
            .get(m.parent_id.as_str())
            .unwrap_or_else(|| panic!("parent of {m:?}"));
        assert_eq!(
            (parent.service.as_str(), parent.name.as_str()),
            ("producer", "publish")
        );
        assert_eq!(parent.trace_id, m.trace_id);
        assert_eq!(parent.attributes.get("io_id"), m.attributes.get("io_id"));
    }

    // Each bill's loader span is the child of its document's transformer span: the trace of
    // every document that became bills holds the three services.
    let loads = named("loader", "load");
    assert_eq!(loads.len() as f64, bills, "one loader span per bill");
    for l in &loads {
        let parent = by_id
            .get(l.parent_id.as_str())
            .unwrap_or_else(|| panic!("parent of {l:?}"));
        assert_eq!(
            (parent.service.as_str(), parent.name.as_str()),
            ("transformer", "map")
        );
        assert_eq!(parent.trace_id, l.trace_id);
        assert_eq!(l.attributes.get("io_id"), parent.attributes.get("io_id"));
        assert_eq!(
            l.attributes.get("result").map(String::as_str),
            Some("created"),
            "{l:?}"
        );
        let services: BTreeSet<&str> = spans
            .iter()
            .filter(|s| s.trace_id == l.trace_id)
            .map(|s| s.service.as_str())
            .collect();
        assert_eq!(
            services,
            BTreeSet::from(["producer", "transformer", "loader"])
        );
    }

    // A BatchSave span links to the traces of the bills it saved, several documents at once.
    let saves = named("loader", "BatchSave");
    assert!(!saves.is_empty());
    let linked: usize = saves.iter().map(|s| s.linked_traces.len()).sum();
    assert_eq!(
        linked as f64, bills,
        "every bill is linked from the call that saved it"
    );
    assert!(
        saves
            .iter()
            .any(|s| s.linked_traces.iter().collect::<BTreeSet<_>>().len() >= 2),
        "a BatchSave links several documents' traces: {saves:?}"
    );
    for s in &saves {
        for t in &s.linked_traces {
            assert!(
                doc_traces.contains(t.as_str()),
                "a link to a document's trace"
            );
        }
    }

    // A dead letter stays in its document's trace, its span marked failed, and its log line
    // names the trace.
    let failed: Vec<&&Got> = maps.iter().filter(|m| m.status == 2).collect();
    assert_eq!(
        failed.len() as f64,
        dead,
        "each dead-lettered document's span failed"
    );
    let log = transformer.log_text();
    for f in &failed {
        assert_eq!(
            f.attributes.get("jst2kd.error_kind").map(String::as_str),
            Some("mapping")
        );
        assert!(doc_traces.contains(f.trace_id.as_str()));
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["trace_id"] == f.trace_id.as_str())
            .unwrap_or_else(|| panic!("a log line names trace {}:\n{log}", f.trace_id));
        assert_eq!(line["span_id"], f.span_id.as_str());
        assert_eq!(line["io_id"].to_string(), f.attributes["io_id"]);
    }
    assert_eq!(
        series(
            &loader_url,
            "jst2kd_spans_dropped_total{reason=\"queue_full\"}"
        )
        .await,
        0.0
    );
    drop(sims);
    delete_queues(&prefix);
}

/// A transformer alone, consuming `docs` count documents published by the test.
async fn transformer_alone(test: &str, env: &[(&str, String)]) -> (Proc, String, String, Scratch) {
    let dir = Scratch::new(test);
    let prefix = format!("jst2kdtest-e2e-{test}-{}", std::process::id());
    let config = format!(
        "[amqp]\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nprefix = \"{prefix}\"\n[mapping]\norg = \"100\"\n[mapping.warehouses]\n\"1\" = \"CK001\"\n"
    );
    let path = dir.path("config.toml");
    std::fs::write(&path, config).unwrap();
    let (proc, url) = worker("transformer", &path.display().to_string(), &dir, env).await;
    let broker = Broker::Rabbit(e2e::rabbit(&prefix, &format!("e2e-{test}")).await);
    let docs: Vec<Outgoing> = (1..=50)
        .map(|io_id| {
            let mut headers = Headers::new();
            headers.insert(
                header::TRACEPARENT.into(),
                common::messages::new_traceparent().into(),
            );
            Outgoing {
                destination: Destination::Work(Work::Counts),
                message_id: format!("{io_id}@m"),
                headers,
                body:
                    json!({"io_id": io_id, "status": "Confirmed", "io_date": "2026-03-01 10:00:00",
                    "modified": "m", "wh_id": 1, "items": [{"sku_id": "A", "qty": -1}]})
                    .to_string()
                    .into_bytes(),
            }
        })
        .collect();
    broker.publish_all(docs).await.unwrap();
    let bills = format!("{prefix}.bills");
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_messages(&bills) != Some(50) {
        assert!(Instant::now() < deadline, "the documents are mapped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (proc, url, prefix, dir)
}

#[tokio::test]
async fn without_the_variable_nothing_is_exported_and_nothing_waits() {
    let receiver = Receiver::start().await;
    // The receiver's address is set, under a name that turns nothing on.
    let (mut proc, url, prefix, _dir) = transformer_alone(
        "traces-off",
        &[("JST2KD_UNUSED_OTLP", receiver.url.clone())],
    )
    .await;
    let page = get_text(&http(), &format!("{url}/metrics")).await.unwrap();
    assert_eq!(
        metric(&page, "jst2kd_spans_dropped_total{reason=\"queue_full\"}"),
        Some(0.0),
        "the series exists from the start"
    );
    let started = Instant::now();
    stop(&mut proc).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping waits for no exporter"
    );
    assert!(
        !proc.log_text().contains("trace_id"),
        "no trace ids in the log"
    );
    assert_eq!(receiver.requests(), 0, "nothing exported");
    delete_queues(&prefix);
}

#[tokio::test]
async fn an_endpoint_that_is_down_loses_spans_counted_never_work() {
    // Nothing listens there.
    let down = format!("http://127.0.0.1:{}", free_port());
    let (mut proc, url, prefix, _dir) = transformer_alone(
        "traces-down",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", down),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lost = series(&url, "jst2kd_spans_dropped_total{reason=\"export_failed\"}").await;
        if lost >= 50.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed exports are counted ({lost}); log:\n{}",
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        proc.log_text().contains("Cannot export spans"),
        "the failure is logged"
    );
    stop(&mut proc).await;
    delete_queues(&prefix);
}
