#![allow(clippy::expect_used)]
//! Loader throughput benchmark (not a test; run it by hand, RabbitMQ on 127.0.0.1):
//!
//! ```sh
//! cargo bench -p loader --bench load
//! cargo bench -p loader --bench load -- --bills 20000 --slow-bills 8000 --backlog 50000
//! ```
//!
//! 1. The Kingdee simulator at zero latency, batch 50, concurrency 2 (the defaults).
//! 2. 300 ms per call, batch 50, concurrency 4: bills per second as a share of the ideal
//!    `concurrency × batch / latency`.
//! 3. A backlog of 50,000 bills in the queue: resident memory before and at peak (the loader's
//!    share is bounded by its prefetch; the simulator keeps every saved bill in memory).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::config::{Dur, Secret};

use common::queue::AmqpConfig;

use kingdee::KingdeeConfig;

use common::messages::Headers;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Destination, Outgoing, Topology, Work};
use common::telemetry::Stage;
use common::worker::Context;
use e2e::{bench_arg as arg, proc_mib};
use kingdee::KingdeeClient;
use loader::LoaderConfig;
use serde_json::json;
use sim::kingdee::{KingdeeBehaviour, KingdeeCredentials, KingdeeSim};
use tokio_util::sync::CancellationToken;

fn bill(no: &str) -> Outgoing {
    let org = json!({"FNumber": "100"});
    let model = json!({"FID": 0, "FBillNo": no, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FStockOrgId": org,
        "FPickOrgId": org, "FStockDirect": "GENERAL", "FDate": "2026-03-01", "FOwnerTypeIdHead": "BD_OwnerOrg",
        "FOwnerIdHead": org, "FNote": "bench",
        "FEntity": [{"FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"}, "FBaseUnitId": {"FNumber": "Pcs"},
            "FQty": 2.0, "FStockId": {"FNumber": "CK001"}, "FStockStatusId": {"FNumber": "KCZT01_SYS"},
            "FOwnerTypeId": "BD_OwnerOrg", "FOwnerId": org, "FKeeperTypeId": "BD_KeeperOrg", "FKeeperId": org,
            "FEntryNote": "1"}]});
    let body = json!({"form_id": "STK_MisDelivery", "bill_no": no, "source": {"io_id": 1, "modified": "m"}, "model": model});
    Outgoing {
        destination: Destination::Work(Work::Bills),
        message_id: no.into(),
        headers: Headers::new(),
        body: body.to_string().into_bytes(),
    }
}

/// Fills the queue with `n` bills, runs the loader until it is empty, returns (seconds, peak MiB).
async fn run(
    name: &str,
    n: usize,
    latency: Duration,
    batch_size: usize,
    concurrency: usize,
) -> (f64, f64, f64) {
    let behaviour = KingdeeBehaviour {
        latency,
        ..KingdeeBehaviour::default()
    };
    let sim = KingdeeSim::with_behaviour(KingdeeCredentials::default(), None, behaviour);
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("simulator");
    let amqp = AmqpConfig {
        prefix: format!("jst2kd-bench-{name}-{}", std::process::id()),
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
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        broker
            .publish_all(
                chunk
                    .iter()
                    .map(|i| bill(&format!("{name}{i:07}")))
                    .collect(),
            )
            .await
            .expect("backlog published");
    }
    let c = KingdeeCredentials::default();
    let kingdee = KingdeeConfig {
        base_url: format!("{url}/k3cloud"),
        acct_id: Secret::new(c.acct_id),
        user_name: Secret::new(c.user_name),
        app_id: Secret::new(c.app_id),
        app_secret: Secret::new(c.app_secret),
        ..KingdeeConfig::default()
    };
    let client = KingdeeClient::new(&kingdee, concurrency, None).expect("client");
    let config = LoaderConfig {
        batch_size,
        linger: Dur::millis(200),
        concurrency,
    };
    let ctx = Context::new(&[Stage::Loader]);
    let before = proc_mib(None, "VmRSS:");
    let started = Instant::now();
    let stage = tokio::spawn({
        let (broker, ctx) = (broker.clone(), ctx.clone());
        async move { loader::run(&config, broker, client, ctx).await }
    });
    while sim.bill_count() < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    while ctx.in_flight.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.cancel.cancel();
    stage.await.expect("task").expect("loader");
    rabbit.delete_topology().await.ok();
    rabbit.close().await;
    stop.cancel();
    (secs, before, proc_mib(None, "VmHWM:"))
}

#[tokio::main]
async fn main() {
    let fast = arg("--bills", 20_000) as usize;
    let (secs, _, _) = run("fast", fast, Duration::ZERO, 50, 2).await;
    println!(
        "zero latency, batch 50, concurrency 2: {fast} bills in {secs:.2} s = {:.0} bills/s",
        fast as f64 / secs
    );

    let slow = arg("--slow-bills", 8_000) as usize;
    let (secs, _, _) = run("slow", slow, Duration::from_millis(300), 50, 4).await;
    let ideal = 4.0 * 50.0 / 0.3;
    let rate = slow as f64 / secs;
    println!(
        "300 ms per call, batch 50, concurrency 4: {rate:.0} bills/s = {:.1}% of the ideal {ideal:.0} bills/s",
        100.0 * rate / ideal
    );

    let backlog = arg("--backlog", 50_000) as usize;
    let (secs, before, peak) = run("backlog", backlog, Duration::ZERO, 50, 2).await;
    println!(
        "backlog of {backlog} bills: drained in {secs:.1} s; resident memory {before:.1} MiB before the loader started, peak {peak:.1} MiB (the simulator holds every saved bill)"
    );
}
