//! `jst2kd demo`: the whole pipeline once, in one process, against the built-in simulators.
//!
//! Both simulators serve real HTTP on loopback (free ports), the three stages run on the
//! in-process queue (or on RabbitMQ with `--amqp URL`, under a prefix of their own that is
//! deleted afterwards), with the mapping of `config/local.toml`. The demo waits until every
//! document has been settled, prints a summary on stdout and exits 0.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use common::config::{FromLayers, Layers, Secret};
use common::messages::{header, header_text};
use common::queue::memory::MemoryBroker;
use common::queue::rabbit::RabbitBroker;
use common::queue::{Broker, Topology, Work};
use common::telemetry::{self, DeadKind, LogFormat, Metrics, Stage};
use common::worker::{Context, MetricsConfig};
use jst::JstClient;
use kingdee::KingdeeClient;
use producer::{Producer, StartAt};
use sim::jst::{JstCredentials, JstSim};
use sim::kingdee::{KingdeeCredentials, KingdeeSim};
use tokio_util::sync::CancellationToken;

/// The mapping and credentials the demo uses: the same file the workers use on loopback.
const LOCAL_TOML: &str = include_str!("../../config/local.toml");

#[derive(Args)]
pub struct DemoArgs {
    /// Count documents to generate.
    #[arg(long, default_value_t = 200)]
    documents: usize,
    /// Seed of the generator (the same seed gives the same documents).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use this RabbitMQ instead of the in-process queue.
    #[arg(long)]
    amqp: Option<String>,
    /// Give up when the pipeline has not drained after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Log format of the (stderr) logs.
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Only warnings by default: the summary is the demo's output.
    telemetry::init_logging_with(args.log_format, "warn,lapin=error");
    // The built-in file alone: JST2KD_… variables meant for real workers must not leak in.
    let layers = Layers::load_from_str(LOCAL_TOML, Vec::new())
        .and_then(|l| {
            Ok((
                producer::Config::from_layers(&l)?,
                transformer::Config::from_layers(&l)?,
                loader::Config::from_layers(&l)?,
                l.section::<MetricsConfig>()?,
            ))
        })
        .context("built-in config/local.toml")?;
    let (mut produce, transform, mut load, metrics) = layers;
    // One broker for the three stages: they read the same `[amqp]`.
    let mut amqp = produce.amqp.clone();
    let cancel = CancellationToken::new();

    let docs = sim::jst::generate(args.documents, args.seed);
    let jst_sim = JstSim::new(JstCredentials::default(), docs);
    let kingdee_sim = KingdeeSim::new(KingdeeCredentials::default(), None);
    produce.jst.base_url = sim::spawn_local(jst_sim.router(), cancel.clone()).await?;
    load.kingdee.base_url = format!(
        "{}/k3cloud",
        sim::spawn_local(kingdee_sim.router(), cancel.clone()).await?
    );
    let state_dir = std::env::temp_dir().join(format!("jst2kd-demo-{}", std::process::id()));
    produce.producer.checkpoint = state_dir.join("producer.checkpoint.json");
    produce.producer.start_at = StartAt::Ago(Duration::from_secs(31 * 86_400));

    let ctx = Context::new(&[Stage::Producer, Stage::Transformer, Stage::Loader]);
    // The demo builds the queue, so it keeps the concrete one for what only it has: the
    // in-process queue's dead letters, the demo prefix to delete on RabbitMQ.
    let (broker, queue) = match &args.amqp {
        None => {
            let memory = MemoryBroker::new(Topology::from_config(&amqp));
            (Broker::Memory(memory.clone()), DemoQueue::Memory(memory))
        }
        Some(url) => {
            amqp.url = Secret::new(url.clone());
            amqp.prefix = format!("jst2kd-demo-{}", std::process::id());
            let rabbit = tokio::time::timeout(
                Duration::from_secs(30),
                RabbitBroker::connect(
                    amqp.url.clone(),
                    "jst2kd-demo",
                    Topology::from_config(&amqp),
                    ctx.cancel.clone(),
                ),
            )
            .await
            .context("RabbitMQ did not answer within 30 s")??;
            (
                Broker::Rabbit(rabbit.clone()),
                DemoQueue::Rabbit(rabbit, amqp.prefix.clone()),
            )
        }
    };
    let _metrics_server = serve_metrics(&metrics, &ctx).await;
    // The outcome log: in memory, or the demo prefix's stream on RabbitMQ.
    ctx.metrics.outcomes.attach(broker.clone());

    let transformer = {
        let (mapping, broker, ctx) = (transform.mapping, broker.clone(), ctx.clone());
        tokio::spawn(async move { transformer::run(&mapping, broker, ctx).await })
    };
    let loader = {
        let client = KingdeeClient::new(
            &load.kingdee,
            load.loader.concurrency,
            Some(ctx.metrics.clone()),
        )?;
        let (loader_config, broker, ctx) = (load.loader, broker.clone(), ctx.clone());
        tokio::spawn(async move { loader::run(&loader_config, broker, client, ctx).await })
    };

    let started = Instant::now();
    let producer = Producer::new(
        JstClient::new(&produce.jst, Some(ctx.metrics.clone()))?,
        broker.clone(),
        produce.producer.clone(),
        ctx.metrics.clone(),
    );
    let report = producer
        .poll_once()
        .await
        .context("the producer's poll failed")?;

    let drained = wait_until_drained(&broker, &ctx, Duration::from_secs(args.timeout_secs)).await;
    ctx.cancel.cancel();
    transformer.await.context("transformer task")??;
    loader.await.context("loader task")??;
    let elapsed = started.elapsed();
    let dead = queue.dead_letter_reasons();
    ctx.metrics.outcomes.close().await;
    if let DemoQueue::Rabbit(rabbit, _) = &queue {
        rabbit.delete_topology().await.ok();
        rabbit.close().await;
    }
    cancel.cancel();
    std::fs::remove_dir_all(&state_dir).ok();
    if !drained {
        bail!("the pipeline did not drain within {} s", args.timeout_secs);
    }
    let outcome = Outcome {
        queue: queue.describe(),
        statuses: produce.producer.statuses.clone(),
        fetched: report.published,
        in_kingdee: kingdee_sim.bills().len(),
        dead,
        elapsed,
    };
    print_summary(&args, &outcome, &ctx.metrics);
    Ok(())
}

/// Serves the demo's metrics on `metrics.listen` (default 127.0.0.1:9790) when the port is
/// free; the demo runs on without them otherwise.
async fn serve_metrics(metrics: &MetricsConfig, ctx: &Context) -> Option<CancellationToken> {
    let listen = metrics
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9790".into());
    let listener = telemetry::bind(&listen).await.ok()?;
    ctx.health.set_ready(true);
    let stop = CancellationToken::new();
    tokio::spawn(telemetry::serve_http(
        listener,
        ctx.metrics.clone(),
        ctx.health.clone(),
        stop.clone(),
    ));
    Some(stop)
}

/// True once both work queues are empty and nothing is in flight, twice in a row.
async fn wait_until_drained(broker: &Broker, ctx: &Context, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let progress = std::io::stderr().is_terminal();
    let mut quiet_checks = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let counts = broker.depth(Work::Counts).await.unwrap_or(u64::MAX);
        let bills = broker.depth(Work::Bills).await.unwrap_or(u64::MAX);
        let in_flight = ctx.in_flight.load(Ordering::SeqCst);
        if progress {
            let m = &ctx.metrics;
            eprint!(
                "\r  waiting: {counts} documents and {bills} bills queued, {in_flight} in flight, {} bills created   ",
                Metrics::count(&m.loader_bills, &["created"])
            );
        }
        if counts == 0 && bills == 0 && in_flight == 0 {
            quiet_checks += 1;
            if quiet_checks >= 2 {
                if progress {
                    eprintln!();
                }
                return true;
            }
        } else {
            quiet_checks = 0;
        }
    }
    false
}

/// The queue the demo built, kept concrete for what only the demo does with it.
enum DemoQueue {
    /// The in-process queue.
    Memory(MemoryBroker),
    /// RabbitMQ, under the demo's own prefix.
    Rabbit(RabbitBroker, String),
}

impl DemoQueue {
    fn describe(&self) -> String {
        match self {
            DemoQueue::Memory(_) => "the in-process queue".to_string(),
            DemoQueue::Rabbit(_, prefix) => format!("RabbitMQ (prefix {prefix})"),
        }
    }

    /// The first reason of each dead letter kind (in-process queue only; RabbitMQ keeps them
    /// in its dead-letter queue, deleted with the demo's prefix).
    fn dead_letter_reasons(&self) -> Vec<(String, String)> {
        let DemoQueue::Memory(memory) = self else {
            return Vec::new();
        };
        memory
            .dead_letters()
            .into_iter()
            .map(|d| {
                (
                    header_text(&d.headers, header::ERROR_KIND)
                        .unwrap_or("poison")
                        .to_string(),
                    header_text(&d.headers, header::ERROR)
                        .unwrap_or("dead-lettered by the broker")
                        .to_string(),
                )
            })
            .collect()
    }
}

/// What the run did, besides the metrics.
struct Outcome {
    queue: String,
    statuses: Vec<String>,
    fetched: usize,
    in_kingdee: usize,
    dead: Vec<(String, String)>,
    elapsed: Duration,
}

fn print_summary(args: &DemoArgs, o: &Outcome, m: &Metrics) {
    let Outcome {
        queue,
        statuses,
        fetched,
        in_kingdee,
        dead,
        elapsed,
    } = o;
    let t = Stage::Transformer.as_str();
    let l = Stage::Loader.as_str();
    let dead_total: u64 = DeadKind::ALL
        .iter()
        .map(|k| {
            Metrics::count(&m.dead_lettered, &[t, k.as_str()])
                + Metrics::count(&m.dead_lettered, &[l, k.as_str()])
        })
        .sum();
    println!(
        "jst2kd demo: {} generated count documents (seed {}) through {queue}",
        args.documents, args.seed
    );
    println!(
        "documents fetched (statuses {}): {fetched}",
        statuses.join(", ")
    );
    println!(
        "bills published: {}",
        Metrics::count(&m.published, &[t, "bills"])
    );
    println!(
        "bills created: {}",
        Metrics::count(&m.loader_bills, &["created"])
    );
    println!(
        "bills already in Kingdee (duplicate): {}",
        Metrics::count(&m.loader_bills, &["duplicate"])
    );
    println!(
        "skipped (status not mapped): {}",
        Metrics::count(&m.skipped, &[t, "status"])
    );
    println!(
        "skipped (no loss lines): {}",
        Metrics::count(&m.skipped, &[t, "no_lines"])
    );
    println!("dead-lettered: {dead_total}");
    for kind in DeadKind::ALL {
        let n = Metrics::count(&m.dead_lettered, &[t, kind.as_str()])
            + Metrics::count(&m.dead_lettered, &[l, kind.as_str()]);
        if n > 0 {
            let example = dead
                .iter()
                .find(|(k, _)| k == kind.as_str())
                .map(|(_, e)| e.as_str())
                .unwrap_or("");
            println!("dead-lettered ({}): {n}  e.g. {example}", kind.as_str());
        }
    }
    println!(
        "retried: {}",
        Metrics::count(&m.retried, &[l]) + Metrics::count(&m.retried, &[t])
    );
    println!("bills in the Kingdee simulator: {in_kingdee}");
    println!("elapsed: {:.1} s", elapsed.as_secs_f64());
}
