#![allow(clippy::expect_used)]
//! Mapping and transformer benchmark (not a test; run it by hand, RabbitMQ on 127.0.0.1):
//!
//! ```sh
//! cargo bench -p transformer --bench map
//! cargo bench -p transformer --bench map -- --documents 20000
//! ```
//!
//! 1. The mapping alone: documents of 20 lines, a quarter of them with two batches.
//! 2. The transformer stage on RabbitMQ: a backlog of such documents in the counts queue,
//!    consumed, mapped, published as bills with confirms and acked.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::queue::AmqpConfig;

use common::messages::Headers;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Destination, Outgoing, Topology, Work};
use common::telemetry::{Metrics, Stage};
use common::worker::Context;
use e2e::bench_arg as arg;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use transformer::{MappingConfig, Warehouse};

fn document(io_id: i64) -> Value {
    let items: Vec<Value> = (0..20)
        .map(|l| {
            let qty = if l % 3 == 0 { 4 } else { -3 };
            let mut item = json!({"io_id": io_id, "ioi_id": io_id * 100 + l, "sku_id": format!("SKU-{l:04}"),
                "name": "商品", "properties_value": "默认", "r_qty": 10, "qty": qty});
            if l % 4 == 0 {
                item["batchs"] = json!([
                    {"batch_no": format!("L{l}A"), "qty": qty - qty / 2, "product_date": "2026-01-15 00:00:00", "expiration_date": "2027-01-15 00:00:00"},
                    {"batch_no": format!("L{l}B"), "qty": qty / 2, "product_date": "2026-01-15 00:00:00", "expiration_date": "2027-01-15 00:00:00"}
                ]);
            }
            item
        })
        .collect();
    json!({"io_id": io_id, "type": "盘点", "io_date": "2026-03-01 10:00:00", "status": "Confirmed", "warehouse": "主仓",
        "wh_id": 1, "wms_co_id": 0, "creator_name": "x", "remark": "bench", "modified": "2026-03-01 10:05:00", "items": items})
}

fn mapping() -> MappingConfig {
    let mut m = MappingConfig {
        org: "100".into(),
        ..MappingConfig::default()
    };
    m.warehouses.insert("1".into(), Warehouse::stock("CK001"));
    m
}

#[tokio::main]
async fn main() {
    let n = arg("--documents", 10_000) as usize;
    let docs: Vec<Value> = (0..n).map(|i| document(1_000_000 + i as i64)).collect();
    let config = mapping();

    let started = Instant::now();
    let mut bills = 0;
    for doc in &docs {
        if let Ok(transformer::Mapped::Bills(b)) = transformer::map_document(doc, &config) {
            bills += b.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "mapping alone: {n} documents of 20 lines ({bills} bills) in {secs:.3} s = {:.0} documents/s",
        n as f64 / secs
    );

    let amqp = AmqpConfig {
        prefix: format!("jst2kd-bench-transformer-{}", std::process::id()),
        ..AmqpConfig::default()
    };
    let rabbit = RabbitBroker::connect(
        amqp.url.clone(),
        "jst2kd-bench",
        Topology::from_config(&amqp),
        CancellationToken::new(),
    )
    .await
    .expect("RabbitMQ on 127.0.0.1:5672");
    let broker = Broker::Rabbit(rabbit.clone());
    for chunk in docs.chunks(1000) {
        let messages = chunk
            .iter()
            .map(|d| Outgoing {
                destination: Destination::Work(Work::Counts),
                message_id: d["io_id"].to_string(),
                headers: Headers::new(),
                body: d.to_string().into_bytes(),
            })
            .collect();
        broker.publish_all(messages).await.expect("backlog");
    }
    let ctx = Context::new(&[Stage::Transformer]);
    let started = Instant::now();
    let stage = tokio::spawn({
        let (broker, ctx) = (broker.clone(), ctx.clone());
        async move { transformer::run(&config, broker, ctx).await }
    });
    while Metrics::count(&ctx.metrics.published, &["transformer", "bills"]) < bills as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while ctx.in_flight.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "transformer on RabbitMQ (prefetch {}): {n} documents consumed, mapped, {bills} bills published with confirms and acked in {secs:.2} s = {:.0} documents/s",
        amqp.prefetch,
        n as f64 / secs
    );
    ctx.cancel.cancel();
    stage.await.expect("task").expect("transformer");
    rabbit.delete_topology().await.ok();
    rabbit.close().await;
}
