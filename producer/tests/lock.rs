#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The producer's broker lock, in process, on the real RabbitMQ: while another producer holds
//! the lock this one neither polls nor reports ready; when the lock comes free it takes it and
//! polls; cancelled, it stops cleanly.

use std::time::Duration;

use common::config::{Dur, Secret};

use common::queue::AmqpConfig;

use jst::JstConfig;

use common::queue::rabbit::{ProducerLock, RabbitBroker};
use common::queue::{Broker, Topology, Work};
use common::telemetry::Stage;
use common::worker::Context;
use jst::JstClient;
use producer::Exclusion;
use producer::{ProducerConfig, StartAt};
use sim::jst::{JstCredentials, JstSim};
use tokio_util::sync::CancellationToken;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5";

#[tokio::test]
async fn a_producer_waits_for_the_lock_then_polls() {
    let docs = sim::jst::generate(30, 4);
    let wanted = docs
        .iter()
        .filter(|d| d["status"] == "Confirmed" || d["status"] == "Archive")
        .count() as u64;
    let sim = JstSim::new(JstCredentials::default(), docs);
    let url = sim::spawn_local(sim.router(), CancellationToken::new())
        .await
        .expect("sim");
    let c = JstCredentials::default();
    let jst = JstConfig {
        base_url: url,
        app_key: Secret::new(c.app_key),
        app_secret: Secret::new(c.app_secret),
        access_token: Secret::new(c.access_token),
        rate_per_second: 0,
        rate_per_minute: 0,
        ..JstConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("jst2kd-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = ProducerConfig {
        start_at: StartAt::Ago(Duration::from_secs(31 * 86_400)),
        lag: Dur::secs(0),
        checkpoint: dir.join("producer.checkpoint.json"),
        ..ProducerConfig::default()
    };
    let amqp = AmqpConfig {
        prefix: format!("jst2kdtest-lock-{}", std::process::id()),
        ..AmqpConfig::default()
    };
    let topology = Topology::from_config(&amqp);
    let ctx = Context::new(&[Stage::Producer]);
    let rabbit = RabbitBroker::connect(
        Secret::new(URL),
        "lock-test",
        topology.clone(),
        ctx.cancel.clone(),
    )
    .await
    .expect("broker");
    let broker = Broker::Rabbit(rabbit.clone());
    ctx.health.set_ready(true);

    // Another producer holds the lock.
    let other = ProducerLock::acquire(&Secret::new(URL), "lock-test-other", &topology)
        .await
        .expect("the other takes the lock");
    let stage = tokio::spawn({
        let (config, broker, ctx) = (config.clone(), broker.clone(), ctx.clone());
        let client = JstClient::new(&jst, None).expect("client");
        let exclusion = Exclusion::BrokerLock {
            url: Secret::new(URL),
            queue: topology.lock_queue(),
            connection_name: "lock-test-producer".into(),
        };
        async move { producer::run(&config, broker, client, exclusion, ctx).await }
    });
    // Its first attempt fails at once; give it time for a second one (every 3 s).
    tokio::time::sleep(producer::LOCK_RETRY + Duration::from_millis(500)).await;
    assert!(!ctx.health.is_ready(), "ready without the lock");
    assert!(
        sim.stats().is_empty(),
        "polled without the lock: {:?}",
        sim.stats()
    );
    assert_eq!(broker.depth(Work::Counts).await.expect("depth"), 0);

    other.release().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.depth(Work::Counts).await.expect("depth") < wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never polled after the lock came free"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ctx.health.is_ready(),
        "holding the lock and polling, yet not ready"
    );

    ctx.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), stage)
        .await
        .expect("stops when cancelled")
        .expect("task")
        .expect("clean stop");
    rabbit.delete_topology().await.ok();
    rabbit.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
