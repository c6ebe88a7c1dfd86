#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The transformer stage on the in-process queue: bills published with the document's trace
//! headers, skips counted, mapping and malformed documents dead-lettered with their kind.

use std::time::Duration;

use common::queue::AmqpConfig;

use common::messages::{Headers, header, header_text};
use common::queue::memory::MemoryBroker;
use common::queue::{Broker, Destination, Outgoing, Topology, Work};
use common::telemetry::{Metrics, Stage};
use common::worker::Context;
use serde_json::json;
use transformer::{MappingConfig, Warehouse};

fn doc(io_id: i64, status: &str, wh_id: i64, qty: i64) -> Outgoing {
    let mut headers = Headers::new();
    headers.insert(
        header::TRACEPARENT.into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    headers.insert(header::PUBLISHED_AT.into(), "2026-03-01T00:00:00Z".into());
    let body = json!({"io_id": io_id, "status": status, "io_date": "2026-03-01 10:00:00", "modified": "2026-03-01 10:00:00",
        "wh_id": wh_id, "wms_co_id": 0, "items": [{"ioi_id": 1, "sku_id": "A", "qty": qty}]});
    Outgoing {
        destination: Destination::Work(Work::Counts),
        message_id: format!("{io_id}"),
        headers,
        body: body.to_string().into_bytes(),
    }
}

#[tokio::test]
async fn every_document_ends_as_a_bill_a_skip_or_a_dead_letter() {
    let memory = MemoryBroker::new(Topology {
        prefetch: 10,
        ..Topology::from_config(&AmqpConfig::default())
    });
    let broker = Broker::Memory(memory.clone());
    let mut mapping = MappingConfig {
        org: "100".into(),
        ..MappingConfig::default()
    };
    mapping
        .warehouses
        .insert("1".into(), Warehouse::stock("CK001"));
    for m in [
        doc(1, "Confirmed", 1, -2),
        doc(2, "WaitConfirm", 1, -2),
        doc(3, "Confirmed", 1, 5),
        doc(4, "Confirmed", 9, -1),
    ] {
        broker.publish(m).await.expect("stored");
    }
    broker
        .publish(Outgoing {
            destination: Destination::Work(Work::Counts),
            message_id: "junk".into(),
            headers: Headers::new(),
            body: b"{oops".to_vec(),
        })
        .await
        .expect("stored");

    let ctx = Context::new(&[Stage::Transformer]);
    let stage = tokio::spawn({
        let (broker, ctx) = (broker.clone(), ctx.clone());
        async move { transformer::run(&mapping, broker, ctx).await }
    });
    let mut bills = broker.consume(Work::Bills, 10).await.expect("consume");
    let bill = tokio::time::timeout(Duration::from_secs(5), bills.next())
        .await
        .expect("a bill")
        .expect("delivery");
    assert_eq!(bill.message_id.as_deref(), Some("JSTPD1"));
    assert_eq!(
        header_text(&bill.headers, header::SCHEMA),
        Some("kd.bill.v1")
    );
    assert!(
        header_text(&bill.headers, header::TRACEPARENT).is_some_and(|t| t.starts_with("00-0af7"))
    );
    assert_eq!(
        header_text(&bill.headers, header::PUBLISHED_AT),
        Some("2026-03-01T00:00:00Z")
    );
    bill.ack().await.expect("ack");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while broker.depth(Work::Counts).await.expect("depth") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transformer settles every document"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.cancel.cancel();
    stage.await.expect("task").expect("clean stop");

    let m = &ctx.metrics;
    assert_eq!(Metrics::count(&m.skipped, &["transformer", "status"]), 1);
    assert_eq!(Metrics::count(&m.skipped, &["transformer", "no_lines"]), 1);
    assert_eq!(Metrics::count(&m.published, &["transformer", "bills"]), 1);
    let dead = memory.dead_letters();
    let kinds: Vec<&str> = dead
        .iter()
        .filter_map(|d| header_text(&d.headers, header::ERROR_KIND))
        .collect();
    assert_eq!(kinds.len(), 2);
    assert!(
        kinds.contains(&"mapping") && kinds.contains(&"malformed"),
        "{kinds:?}"
    );
    let mapping_letter = dead
        .iter()
        .find(|d| header_text(&d.headers, header::ERROR_KIND) == Some("mapping"))
        .unwrap();
    assert!(
        header_text(&mapping_letter.headers, header::ERROR)
            .unwrap()
            .contains("mapping.warehouses")
    );
    assert_eq!(
        header_text(&mapping_letter.headers, header::STAGE),
        Some("transformer")
    );
    assert_eq!(
        header_text(&mapping_letter.headers, header::ORIGIN_QUEUE),
        Some("jst2kd.counts")
    );
    assert_eq!(
        header_text(&mapping_letter.headers, header::ORIGIN_KEY),
        Some("counts")
    );
    assert!(header_text(&mapping_letter.headers, header::FAILED_AT).is_some());
    assert_eq!(
        Metrics::count(&m.dead_lettered, &["transformer", "mapping"]),
        1
    );
    assert_eq!(
        Metrics::count(&m.dead_lettered, &["transformer", "malformed"]),
        1
    );
}
