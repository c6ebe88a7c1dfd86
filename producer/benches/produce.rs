#![allow(clippy::expect_used)]
//! Producer throughput and pacing benchmark (not a test; run it by hand):
//!
//! ```sh
//! cargo bench -p producer --bench produce                 # both parts, RabbitMQ on 127.0.0.1
//! cargo bench -p producer --bench produce -- --documents 50000 --limited-seconds 130
//! ```
//!
//! 1. *Unlimited*: the Jushuitan simulator without rate limits, the client without pacing:
//!    documents per second from JST pages to confirmed messages on RabbitMQ.
//! 2. *Limited*: the simulator enforcing 5/s and 100/min, the client pacing at the same
//!    defaults, one document per page so every call counts: the calls made as a share of what
//!    the limits allow in the period, and how many were refused (199/200; should be none).
//!
//! Prints the resident memory once the simulator holds its documents, and the peak during the
//! unlimited poll: the difference is what the producer itself needs (it publishes page by page).

use std::time::{Duration, Instant};

use common::config::{Dur, Secret};

use common::queue::AmqpConfig;

use jst::JstConfig;

use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Topology};
use common::telemetry::{Metrics, Stage};
use e2e::{bench_arg as arg, proc_mib};
use jst::JstClient;
use producer::Producer;
use producer::{ProducerConfig, StartAt};
use sim::jst::{JstBehaviour, JstCredentials, JstSim};
use tokio_util::sync::CancellationToken;

struct Run {
    stop: CancellationToken,
    sim: JstSim,
    producer: Producer,
    rabbit: RabbitBroker,
    dir: std::path::PathBuf,
}

async fn setup(
    name: &str,
    documents: usize,
    behaviour: JstBehaviour,
    rate: (u32, u32),
    page_size: u32,
) -> Run {
    let sim = JstSim::with_behaviour(
        JstCredentials::default(),
        sim::jst::generate(documents, 42),
        behaviour,
    );
    let stop = CancellationToken::new();
    let url = sim::spawn_local(sim.router(), stop.clone())
        .await
        .expect("simulator");
    let c = JstCredentials::default();
    let jst = JstConfig {
        base_url: url,
        app_key: Secret::new(c.app_key),
        app_secret: Secret::new(c.app_secret),
        access_token: Secret::new(c.access_token),
        page_size,
        rate_per_second: rate.0,
        rate_per_minute: rate.1,
        ..JstConfig::default()
    };
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
    let dir = std::env::temp_dir().join(format!("jst2kd-bench-{name}-{}", std::process::id()));
    let config = ProducerConfig {
        start_at: StartAt::Ago(Duration::from_secs(31 * 86_400)),
        lag: Dur::secs(0),
        checkpoint: dir.join("producer.checkpoint.json"),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(
        JstClient::new(&jst, None).expect("client"),
        Broker::Rabbit(rabbit.clone()),
        config,
        Metrics::new(&[Stage::Producer]),
    );
    Run {
        stop,
        sim,
        producer,
        rabbit,
        dir,
    }
}

async fn finish(run: Run) {
    run.stop.cancel();
    run.rabbit.delete_topology().await.ok();
    run.rabbit.close().await;
    std::fs::remove_dir_all(&run.dir).ok();
}

/// Calls the limits allow in `secs` seconds starting fresh: 100 per minute, 5 per second.
fn allowed(secs: u64) -> u64 {
    100 * (secs / 60) + (5 * (secs % 60)).min(100)
}

#[tokio::main]
async fn main() {
    let documents = arg("--documents", 20_000) as usize;
    let limited_secs = arg("--limited-seconds", 130);

    let run = setup(
        "unlimited",
        documents,
        JstBehaviour {
            rate_limit: false,
            ..JstBehaviour::default()
        },
        (0, 0),
        50,
    )
    .await;
    let before = proc_mib(None, "VmRSS:");
    let started = Instant::now();
    let report = run.producer.poll_once().await.expect("poll");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "unlimited: {} documents published in {secs:.2} s = {:.0} documents/s ({} windows, pages of 50)",
        report.published,
        report.published as f64 / secs,
        report.windows
    );
    println!(
        "memory: {before:.1} MiB resident with the simulator's documents loaded, peak {:.1} MiB during the poll",
        proc_mib(None, "VmHWM:")
    );
    finish(run).await;

    let run = setup("limited", documents, JstBehaviour::default(), (5, 100), 1).await;
    let _ = tokio::time::timeout(Duration::from_secs(limited_secs), run.producer.poll_once()).await;
    let stats = run.sim.stats();
    let ok = stats.get("ok").copied().unwrap_or(0);
    let refused = stats.get("rate_limited").copied().unwrap_or(0);
    println!(
        "limited (5/s, 100/min) for {limited_secs} s: {ok} calls answered, {refused} refused with 199/200; {:.1}% of the {} calls the limits allow",
        100.0 * ok as f64 / allowed(limited_secs) as f64,
        allowed(limited_secs)
    );
    finish(run).await;
}
