#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The loader stage on the in-process queue against the Kingdee simulator: created, duplicate,
//! rejected (with Kingdee's errors) and malformed bills each settled their own way.

use std::time::Duration;

use common::config::{Dur, Secret};

use common::queue::AmqpConfig;

use kingdee::KingdeeConfig;

use common::messages::{Headers, header, header_text};
use common::queue::memory::MemoryBroker;
use common::queue::{Broker, Destination, Outgoing, Topology, Work};
use common::telemetry::{Metrics, Stage};
use common::worker::Context;
use kingdee::KingdeeClient;
use loader::LoaderConfig;
use serde_json::{Value, json};
use sim::kingdee::{KingdeeCredentials, KingdeeSim};
use tokio_util::sync::CancellationToken;

fn bill(no: &str, stock: Value) -> Outgoing {
    bill_of(no, stock, 1.0)
}

fn bill_of(no: &str, stock: Value, qty: f64) -> Outgoing {
    let model = json!({"FBillNo": no, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FStockOrgId": {"FNumber": "100"},
        "FPickOrgId": {"FNumber": "100"}, "FOwnerIdHead": {"FNumber": "100"}, "FOwnerTypeIdHead": "BD_OwnerOrg",
        "FStockDirect": "GENERAL", "FDate": "2026-03-01",
        "FEntity": [{"FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"}, "FQty": qty, "FStockId": stock}]});
    let body = json!({"form_id": "STK_MisDelivery", "bill_no": no, "source": {"io_id": 1, "modified": "m"}, "model": model});
    Outgoing {
        destination: Destination::Work(Work::Bills),
        message_id: no.into(),
        headers: Headers::new(),
        body: body.to_string().into_bytes(),
    }
}

/// The default topology with a prefetch of 10, as these tests were written for.
fn topology() -> Topology {
    Topology {
        prefetch: 10,
        ..Topology::from_config(&AmqpConfig::default())
    }
}

/// The `[kingdee]` section for the simulator at `url`, with its default credentials.
fn kingdee_config(url: &str) -> KingdeeConfig {
    let c = KingdeeCredentials::default();
    KingdeeConfig {
        base_url: format!("{url}/k3cloud"),
        acct_id: Secret::new(c.acct_id),
        user_name: Secret::new(c.user_name),
        app_id: Secret::new(c.app_id),
        app_secret: Secret::new(c.app_secret),
        ..KingdeeConfig::default()
    }
}

/// Runs the loader until the bills queue is empty (within `within`), then stops it cleanly.
async fn load_until_drained(
    broker: &Broker,
    client: KingdeeClient,
    config: &LoaderConfig,
    within: Duration,
) -> Context {
    let ctx = Context::new(&[Stage::Loader]);
    let stage = tokio::spawn({
        let (broker, ctx, config) = (broker.clone(), ctx.clone(), config.clone());
        async move { loader::run(&config, broker, client, ctx).await }
    });
    let deadline = tokio::time::Instant::now() + within;
    while broker.depth(Work::Bills).await.expect("depth") > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the loader settles every bill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.cancel.cancel();
    stage.await.expect("task").expect("clean stop");
    ctx
}

#[tokio::test]
async fn each_bill_is_settled_by_its_own_result() {
    let sim = KingdeeSim::new(KingdeeCredentials::default(), None);
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("sim");
    let client = KingdeeClient::new(&kingdee_config(&url), 1, None).expect("client");

    let memory = MemoryBroker::new(topology());
    let broker = Broker::Memory(memory.clone());
    for m in [
        bill("B1", json!({"FNumber": "CK001"})),
        bill("B1", json!({"FNumber": "CK001"})),
        bill("B2", json!("CK001")),
        bill_of("B3", json!({"FNumber": "CK001"}), 1.0),
        bill_of("B3", json!({"FNumber": "CK001"}), 4.0),
    ] {
        broker.publish(m).await.expect("stored");
    }
    broker
        .publish(Outgoing {
            destination: Destination::Work(Work::Bills),
            message_id: "junk".into(),
            headers: Headers::new(),
            body: b"[]".to_vec(),
        })
        .await
        .expect("stored");
    let config = LoaderConfig {
        batch_size: 10,
        linger: Dur::millis(50),
        concurrency: 1,
    };
    let ctx = load_until_drained(&broker, client, &config, Duration::from_secs(10)).await;

    let m = &ctx.metrics;
    assert_eq!(Metrics::count(&m.loader_bills, &["created"]), 2);
    assert_eq!(Metrics::count(&m.loader_bills, &["conflict"]), 1);
    assert_eq!(Metrics::count(&m.loader_bills, &["duplicate"]), 1);
    assert_eq!(Metrics::count(&m.loader_bills, &["rejected"]), 1);
    assert_eq!(
        Metrics::count(&m.dead_lettered, &["loader", "malformed"]),
        1
    );
    let dead = memory.dead_letters();
    assert_eq!(sim.bills().len(), 2, "each booked once");
    let conflict = dead
        .iter()
        .find(|d| header_text(&d.headers, header::ERROR_KIND) == Some("conflict"))
        .expect("conflict letter");
    assert_eq!(conflict.message_id, "B3");
    let existing =
        header_text(&conflict.headers, header::KINGDEE_EXISTING).expect("existing version");
    assert!(existing.contains("1.000000"), "{existing}");
    assert!(
        String::from_utf8_lossy(&conflict.body).contains("4.0"),
        "the body is the new version"
    );
    let rejected = dead
        .iter()
        .find(|d| header_text(&d.headers, header::ERROR_KIND) == Some("rejected"))
        .expect("rejected letter");
    assert_eq!(rejected.message_id, "B2");
    let errors: Value = serde_json::from_str(
        header_text(&rejected.headers, header::KINGDEE_ERRORS).expect("kingdee errors"),
    )
    .expect("json");
    assert!(errors.to_string().contains("FStockId"), "{errors}");
    assert_eq!(
        header_text(&rejected.headers, header::ORIGIN_QUEUE),
        Some("jst2kd.bills")
    );
    stop.cancel();
}

#[tokio::test]
async fn under_faults_every_bill_is_booked_exactly_once() {
    use sim::kingdee::KingdeeBehaviour;
    // Half the write calls fail (half of those after committing), some are refused as busy:
    // only retries and the duplicate check bring every bill in, once.
    let behaviour = KingdeeBehaviour {
        fail_rate: 0.4,
        busy_rate: 0.1,
        seed: 9,
        ..KingdeeBehaviour::default()
    };
    let sim = KingdeeSim::with_behaviour(KingdeeCredentials::default(), None, behaviour);
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("sim");
    let client = KingdeeClient::new(&kingdee_config(&url), 1, None).expect("client");
    let topology = Topology {
        retry_delays: vec![Duration::from_millis(50); 12],
        prefetch: 20,
        ..topology()
    };
    let memory = MemoryBroker::new(topology);
    let broker = Broker::Memory(memory.clone());
    for i in 0..60 {
        broker
            .publish(bill(&format!("F{i:03}"), json!({"FNumber": "CK001"})))
            .await
            .expect("stored");
    }
    let config = LoaderConfig {
        batch_size: 7,
        linger: Dur::millis(20),
        concurrency: 2,
    };
    let ctx = load_until_drained(&broker, client, &config, Duration::from_secs(60)).await;

    let bills = sim.bills();
    let numbers: std::collections::BTreeSet<&str> =
        bills.iter().map(|b| b.bill_no.as_str()).collect();
    assert_eq!(bills.len(), 60, "no bill booked twice");
    assert_eq!(numbers.len(), 60, "every bill booked");
    let m = &ctx.metrics;
    assert_eq!(
        Metrics::count(&m.loader_bills, &["created"])
            + Metrics::count(&m.loader_bills, &["duplicate"]),
        60
    );
    assert!(
        Metrics::count(&m.retried, &["loader"]) > 0,
        "faults were retried"
    );
    assert!(
        Metrics::count(&m.loader_bills, &["duplicate"]) > 0,
        "a 500 after commit came back as a duplicate"
    );
    assert!(memory.dead_letters().is_empty());
    stop.cancel();
}

#[tokio::test]
async fn audit_after_save_and_negative_stock() {
    use kingdee::AfterSave;
    use sim::kingdee::MasterData;
    let master = MasterData {
        on_hand: [("CK001:SKU-1".to_string(), 3.0)].into_iter().collect(),
        ..MasterData::default()
    };
    let sim = KingdeeSim::new(
        KingdeeCredentials::default(),
        Some(MasterData {
            orgs: vec!["100".into()],
            stocks: vec![sim::kingdee::Stock {
                number: "CK001".into(),
                ..Default::default()
            }],
            materials: vec![sim::kingdee::Material {
                number: "SKU-1".into(),
                unit: "Pcs".into(),
                lot: false,
                org: None,
            }],
            ..master
        }),
    );
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("sim");
    let c = KingdeeCredentials::default();
    let kingdee = |allow_negative_stock: bool| KingdeeConfig {
        base_url: format!("{url}/k3cloud"),
        acct_id: Secret::new(c.acct_id.clone()),
        user_name: Secret::new(c.user_name.clone()),
        app_id: Secret::new(c.app_id.clone()),
        app_secret: Secret::new(c.app_secret.clone()),
        after_save: AfterSave::Audit,
        allow_negative_stock,
        ..KingdeeConfig::default()
    };
    let run = |client: KingdeeClient, bills: Vec<Outgoing>| async move {
        let memory = MemoryBroker::new(topology());
        let broker = Broker::Memory(memory.clone());
        for b in bills {
            broker.publish(b).await.expect("stored");
        }
        let config = LoaderConfig {
            batch_size: 10,
            linger: Dur::millis(20),
            concurrency: 1,
        };
        load_until_drained(&broker, client, &config, Duration::from_secs(60)).await;
        memory.dead_letters()
    };
    let strict = KingdeeClient::new(&kingdee(false), 1, None).expect("client");
    let dead = run(
        strict,
        vec![
            bill_of("N1", json!({"FNumber": "CK001"}), 2.0),
            bill_of("N2", json!({"FNumber": "CK001"}), 2.0),
        ],
    )
    .await;
    assert_eq!(
        dead.len(),
        1,
        "the second outbound would take stock below zero"
    );
    assert!(
        header_text(&dead[0].headers, header::KINGDEE_ERRORS)
            .unwrap()
            .contains("AbstractInteractionResult")
    );
    assert_eq!(
        header_text(&dead[0].headers, header::ERROR_KIND),
        Some("rejected")
    );
    assert!(
        header_text(&dead[0].headers, header::ERROR)
            .unwrap()
            .contains("更新库存时出现可以忽略的异常数据"),
        "Kingdee's own message"
    );
    // Stock moves at audit: both bills were saved, the second stays submitted, unaudited.
    // Each saved bill's number and status (A created, B submitted, C audited).
    let statuses = || -> Vec<(String, String)> {
        sim.bills()
            .into_iter()
            .map(|b| (b.bill_no, b.status))
            .collect()
    };
    assert_eq!(
        statuses(),
        vec![
            ("N1".to_string(), "C".to_string()),
            ("N2".to_string(), "B".to_string())
        ]
    );
    let lenient = KingdeeClient::new(&kingdee(true), 1, None).expect("client");
    // The replay of N2 finds its number used and the same entries: the existing bill is
    // audited (with the flag now), not just acked. N1 comes again too (a redelivery):
    // already audited, a duplicate that re-audits fine.
    let dead = run(
        lenient,
        vec![
            bill_of("N2", json!({"FNumber": "CK001"}), 2.0),
            bill_of("N1", json!({"FNumber": "CK001"}), 2.0),
        ],
    )
    .await;
    assert!(dead.is_empty(), "allowed with STK_InvCheckResult: {dead:?}");
    assert_eq!(
        statuses(),
        vec![
            ("N1".to_string(), "C".to_string()),
            ("N2".to_string(), "C".to_string())
        ],
        "both audited"
    );
    stop.cancel();
}

#[tokio::test]
async fn transient_failures_that_outlast_the_tiers_are_dead_lettered_as_exhausted() {
    use sim::kingdee::KingdeeBehaviour;
    // Every write call refused for every bill (MsgCode 13/14, Kingdee busy): nothing is ever
    // committed, so every bill must run out of tiers.
    let behaviour = KingdeeBehaviour {
        busy_rate: 1.0,
        ..KingdeeBehaviour::default()
    };
    let sim = KingdeeSim::with_behaviour(KingdeeCredentials::default(), None, behaviour);
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("sim");
    let config = kingdee_config(&url);
    let client = KingdeeClient::new(&config, 1, None).expect("client");
    let topology = Topology {
        retry_delays: vec![Duration::from_millis(20); 3],
        ..topology()
    };
    let memory = MemoryBroker::new(topology);
    let broker = Broker::Memory(memory.clone());
    for i in 0..6 {
        broker
            .publish(bill(&format!("E{i}"), json!({"FNumber": "CK001"})))
            .await
            .expect("stored");
    }
    let loader_config = LoaderConfig {
        batch_size: 1,
        linger: Dur::millis(5),
        concurrency: 1,
    };
    let ctx = load_until_drained(&broker, client, &loader_config, Duration::from_secs(20)).await;
    let dead = memory.dead_letters();
    assert!(sim.bills().is_empty(), "Kingdee committed nothing");
    assert_eq!(dead.len(), 6, "every bill ran out of tiers");
    for d in &dead {
        assert_eq!(
            header_text(&d.headers, header::ERROR_KIND),
            Some("exhausted")
        );
        assert_eq!(
            d.headers
                .get("jst2kd-attempt")
                .and_then(serde_json::Value::as_i64),
            Some(3)
        );
        assert!(
            header_text(&d.headers, header::ERROR)
                .is_some_and(|e| e.contains("gave up after 3 retries"))
        );
    }
    assert_eq!(Metrics::count(&ctx.metrics.loader_bills, &["exhausted"]), 6);
    stop.cancel();
}

/// A bill body with the given form and entries.
fn raw_bill(no: &str, form: &str, entries: Value) -> Outgoing {
    let model =
        json!({"FBillNo": no, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FEntity": entries});
    let body = json!({"form_id": form, "bill_no": no, "source": {"io_id": 1, "modified": "m"}, "model": model});
    Outgoing {
        destination: Destination::Work(Work::Bills),
        message_id: no.into(),
        headers: Headers::new(),
        body: body.to_string().into_bytes(),
    }
}

#[tokio::test]
async fn bills_the_mapping_cannot_produce_are_dead_lettered_without_a_call() {
    let sim = KingdeeSim::new(KingdeeCredentials::default(), None);
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("sim");
    let client = KingdeeClient::new(&kingdee_config(&url), 1, None).expect("client");
    let memory = MemoryBroker::new(topology());
    let broker = Broker::Memory(memory.clone());
    let entry = |qty: Value| json!([{"FMaterialId": {"FNumber": "SKU-1"}, "FQty": qty}]);
    for m in [
        raw_bill("X1", "BD_MATERIAL", entry(json!(1))),
        raw_bill("X2", "SAL_OUTSTOCK", entry(json!(1))),
        raw_bill("X3", "STK_MisDelivery", entry(json!(0))),
        raw_bill("X4", "STK_MisDelivery", entry(json!(-5))),
        raw_bill("X5", "STK_MisDelivery", entry(json!("NaN"))),
        raw_bill("X6", "STK_MisDelivery", json!([])),
    ] {
        broker.publish(m).await.expect("stored");
    }
    let config = LoaderConfig {
        batch_size: 10,
        linger: Dur::millis(20),
        concurrency: 1,
    };
    let ctx = load_until_drained(&broker, client, &config, Duration::from_secs(10)).await;
    assert_eq!(
        Metrics::count(&ctx.metrics.dead_lettered, &["loader", "malformed"]),
        6
    );
    let dead = memory.dead_letters();
    assert_eq!(dead.len(), 6);
    assert!(
        dead.iter()
            .all(|d| header_text(&d.headers, header::ERROR_KIND) == Some("malformed"))
    );
    let calls: u64 = Metrics::count(&ctx.metrics.kingdee_requests, &["batch_save", "ok"])
        + Metrics::count(&ctx.metrics.kingdee_requests, &["batch_save", "partial"]);
    assert_eq!(calls, 0);
    assert!(sim.bills().is_empty(), "nothing reached Kingdee");
    stop.cancel();
}

#[tokio::test]
async fn kingdee_413_rejects_the_bill_at_once_instead_of_retrying() {
    use axum::http::StatusCode;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let router = axum::Router::new().fallback(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large") }
    });
    let stop = CancellationToken::new();
    let url = sim::spawn_local(router, stop.clone()).await.expect("fake");
    let client = KingdeeClient::new(&kingdee_config(&url), 1, None).expect("client");
    let memory = MemoryBroker::new(topology());
    let broker = Broker::Memory(memory.clone());
    for no in ["L1", "L2", "L3"] {
        broker
            .publish(bill(no, json!({"FNumber": "CK001"})))
            .await
            .expect("stored");
    }
    let config = LoaderConfig {
        batch_size: 10,
        linger: Dur::millis(20),
        concurrency: 1,
    };
    let ctx = load_until_drained(&broker, client, &config, Duration::from_secs(10)).await;
    let dead = memory.dead_letters();
    assert_eq!(dead.len(), 3, "every bill refused");
    for d in &dead {
        assert_eq!(
            header_text(&d.headers, header::ERROR_KIND),
            Some("rejected")
        );
        assert!(
            header_text(&d.headers, header::KINGDEE_ERRORS).is_some_and(|e| e.contains("413")),
            "{:?}",
            d.headers
        );
    }
    assert_eq!(
        Metrics::count(&ctx.metrics.retried, &["loader"]),
        0,
        "no retry"
    );
    // The batch of three, then each bill alone.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    stop.cancel();
}
