//! `jst2kd bench`: how fast the whole pipeline runs on this machine, against what the broker
//! alone can do, what each process costs per document, and how much memory each worker needs
//! with a backlog waiting.
//!
//! Three phases, each on the real RabbitMQ under a prefix of its own (deleted afterwards):
//! 1. the ceiling ([`ceiling`]): a plain two-hop lapin pipeline, the most the broker moves;
//! 2. the pipeline: both simulators (limits off, no latency) and the three workers, each a
//!    process of its own as deployed, started together; timed from the workers' start to the
//!    last bill in the Kingdee simulator, with every process's CPU time over that span;
//! 3. the backlog: the same documents through one worker at a time, so that each starts with
//!    the whole backlog waiting in its input queue; its peak resident memory is what it needs.
//!
//! The documents are generated ones that each become at least one bill (a document skipped
//! by its status costs less), so a document here makes both hops, as a ceiling message does.

mod ceiling;
mod procs;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use common::config::{FromLayers, Layers, Secret};
use common::messages::CountDoc;
use common::queue::rabbit::RabbitBroker;
use common::queue::{AmqpConfig, Topology, Work};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use procs::Proc;

/// The configuration the bench's workers start from: the demo's (the simulators' built-in
/// credentials and the mapping of every generated warehouse).
const LOCAL_TOML: &str = include_str!("../../config/local.toml");

#[derive(Args)]
pub struct BenchArgs {
    /// Count documents through the pipeline (each becomes at least one bill).
    #[arg(long, default_value_t = 20_000)]
    documents: usize,
    /// Messages waiting in each worker's input queue when it starts, for the memory figures
    /// (0: skip that phase).
    #[arg(long, default_value_t = 50_000)]
    backlog: usize,
    /// The RabbitMQ to measure (a prefix of the bench's own, deleted afterwards).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// `text` (a table) or `json`.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Give up a phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// What a process used over a phase.
#[derive(Clone, Debug, Serialize)]
struct Cost {
    process: String,
    cpu_seconds: f64,
    cpu_seconds_per_1000_documents: f64,
    /// Peak resident memory (`VmHWM`), MiB; `None` for processes started before the phase
    /// (the simulators hold their data, the broker everything else).
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CeilingReport {
    messages: u64,
    /// Of the median run.
    seconds: f64,
    /// The median of the runs: a short run on a busy machine varies by a fifth either way.
    messages_per_second: f64,
    runs_messages_per_second: Vec<f64>,
    /// RabbitMQ's CPU seconds per 1,000 messages through both hops, over all runs.
    broker_cpu_seconds_per_1000: Option<f64>,
}

/// Ceiling runs; the median is the ceiling.
const CEILING_RUNS: usize = 3;

#[derive(Debug, Serialize)]
struct PipelineReport {
    documents: usize,
    bills: usize,
    seconds: f64,
    /// From the workers' start to the first bill in Kingdee: connecting, declaring, the first
    /// poll and the first batch.
    first_bill_seconds: f64,
    documents_per_second: f64,
    /// Documents per second ÷ the ceiling's messages per second.
    of_ceiling: Option<f64>,
    dead_letters: u64,
    costs: Vec<Cost>,
}

#[derive(Debug, Serialize)]
struct BacklogStage {
    worker: String,
    /// Messages in its input queue when it started (documents in Jushuitan for the producer).
    waiting: usize,
    seconds: f64,
    per_second: f64,
    peak_rss_mib: f64,
    cpu_seconds_per_1000: f64,
    /// RabbitMQ's CPU seconds per 1,000 of them, while this worker ran alone.
    broker_cpu_seconds_per_1000: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    /// The queue names' prefix the bench used (its queues are deleted).
    prefix: String,
    cores: usize,
    ceiling: Option<CeilingReport>,
    pipeline: Option<PipelineReport>,
    backlog: Vec<BacklogStage>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Interrupted, the bench stops its children (dropped, they are killed) before it exits.
    tokio::select! {
        r = bench(args) => r,
        () = interrupted() => bail!(
            "interrupted: the processes it started are stopped; queues named jst2kd-bench-{}* may be left (rabbitmqctl delete_queue)",
            std::process::id()
        ),
    }
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    tokio::signal::ctrl_c().await.ok();
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    crate::progress::init_logging(common::telemetry::LogFormat::Pretty, "warn,lapin=off");
    if args.documents == 0 {
        bail!(common::config::ConfigError(
            "--documents must be at least 1".into()
        ));
    }
    if !common::queue::rabbit::is_valid_url(&args.amqp) {
        bail!(common::config::ConfigError(
            "--amqp is not an AMQP URL".into()
        ));
    }
    let bins = Binaries::find()?;
    let ticks = procs::clock_ticks();
    let broker = broker_port(&args.amqp).and_then(procs::broker_pid);
    let prefix = format!("jst2kd-bench-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut show = Progress::new();
    let timeout = Duration::from_secs(args.timeout_secs);

    show.line(&format!(
        "generating {} documents that each become bills",
        args.documents.max(args.backlog)
    ));
    let plan = Documents::generate(args.documents.max(args.backlog))?;

    let n = args.documents as u64;
    let mut runs = Vec::new();
    let mut broker_cpu = Some(0.0);
    for round in 1..=CEILING_RUNS {
        quiet(broker, ticks, &mut show).await;
        let before = broker.and_then(|p| procs::usage(p, ticks));
        let measured = ceiling::run(&args.amqp, &prefix, n, |done| {
            show.count(
                &format!("ceiling, run {round} of {CEILING_RUNS}"),
                "messages through two hops",
                done,
                n,
            );
        })
        .await
        .context("the ceiling run failed")?;
        let after = broker.and_then(|p| procs::usage(p, ticks));
        broker_cpu = broker_cpu
            .zip(before.zip(after))
            .map(|(sum, (a, b))| sum + b.cpu_seconds - a.cpu_seconds);
        runs.push(measured);
    }
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let median = runs[runs.len() / 2];
    let ceiling = CeilingReport {
        messages: median.messages,
        seconds: median.elapsed.as_secs_f64(),
        messages_per_second: median.rate(),
        runs_messages_per_second: runs.iter().map(ceiling::Ceiling::rate).collect(),
        broker_cpu_seconds_per_1000: broker_cpu
            .map(|cpu| cpu * 1000.0 / (n as f64 * CEILING_RUNS as f64)),
    };
    show.done(&format!(
        "ceiling: {:.0} messages/s (the median of {CEILING_RUNS} runs)",
        ceiling.messages_per_second
    ));

    let setup = Setup {
        bins: &bins,
        dir: &dir,
        amqp: &args.amqp,
        ticks,
        broker,
        timeout,
    };
    let docs = plan.first(args.documents);
    quiet(broker, ticks, &mut show).await;
    let pipeline = setup
        .pipeline(&format!("{prefix}-pipeline"), &docs, &mut show)
        .await;
    let mut pipeline = match pipeline {
        Ok(p) => p,
        Err(e) => {
            return Err(e.context(format!(
                "the pipeline run failed; logs in {}",
                dir.display()
            )));
        }
    };
    pipeline.of_ceiling = Some(pipeline.documents_per_second / ceiling.messages_per_second);
    show.done(&format!(
        "pipeline: {:.0} documents/s",
        pipeline.documents_per_second
    ));

    let backlog = if args.backlog > 0 {
        let docs = plan.first(args.backlog);
        quiet(broker, ticks, &mut show).await;
        match setup
            .backlog(&format!("{prefix}-backlog"), &docs, &mut show)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                return Err(e.context(format!("the backlog run failed; logs in {}", dir.display())));
            }
        }
    } else {
        Vec::new()
    };
    std::fs::remove_dir_all(&dir).ok();
    let report = Report {
        schema: "jst2kd.bench.v1",
        prefix,
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        ceiling: Some(ceiling),
        pipeline: Some(pipeline),
        backlog,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print_table(&report),
    }
    Ok(())
}

/// The port of an `amqp://` URL on this machine (the broker's CPU is read only there).
fn broker_port(url: &str) -> Option<u16> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    matches!(
        uri.authority.host.as_str(),
        "127.0.0.1" | "localhost" | "::1"
    )
    .then_some(uri.authority.port)
}

/// The programs the bench starts: the workers beside this `jst2kd`, as the release archive
/// and the image install them, and `jst2kd sim` for the simulators.
struct Binaries {
    jst2kd: PathBuf,
    producer: PathBuf,
    transformer: PathBuf,
    loader: PathBuf,
}

impl Binaries {
    fn find() -> anyhow::Result<Self> {
        let jst2kd = std::env::current_exe().context("cannot find this program")?;
        let dir = jst2kd
            .parent()
            .context("this program has no directory")?
            .to_path_buf();
        let beside = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "the worker binary {name} is not beside jst2kd in {}: build them together (cargo build --release --bins)",
                    dir.display()
                )
            }
        };
        Ok(Self {
            producer: beside("producer")?,
            transformer: beside("transformer")?,
            loader: beside("loader")?,
            jst2kd,
        })
    }
}

/// Generated documents that each become bills, and how many bills each becomes.
struct Documents {
    docs: Vec<(Value, usize)>,
}

impl Documents {
    fn generate(wanted: usize) -> anyhow::Result<Self> {
        let layers = Layers::load_from_str(LOCAL_TOML, Vec::new())?;
        let mapping = transformer::Config::from_layers(&layers)?.mapping;
        let statuses = producer::Config::from_layers(&layers)?.producer.statuses;
        let mut docs = Vec::with_capacity(wanted);
        let mut seed = 1;
        while docs.len() < wanted {
            // Each seed gives io_ids from 200,000 up: a seed of its own per round would repeat
            // them, so rounds are told apart by an offset.
            let offset = (seed - 1) as i64 * 10_000_000;
            for mut doc in sim::jst::generate(wanted.max(1_000) * 2, seed) {
                if docs.len() == wanted {
                    break;
                }
                if offset > 0 {
                    shift_io_id(&mut doc, offset);
                }
                let Ok(typed) = CountDoc::from_value(&doc) else {
                    continue;
                };
                if !statuses.contains(&typed.status) {
                    continue;
                }
                if let Ok(transformer::Plan::Bills(parts)) =
                    transformer::mapping::plan(&typed, &mapping)
                {
                    let bills = parts.count();
                    if bills > 0 {
                        docs.push((doc, bills));
                    }
                }
            }
            seed += 1;
        }
        Ok(Self { docs })
    }

    fn first(&self, n: usize) -> Batch {
        let docs = &self.docs[..n.min(self.docs.len())];
        Batch {
            json: Value::Array(docs.iter().map(|(d, _)| d.clone()).collect()),
            documents: docs.len(),
            bills: docs.iter().map(|(_, b)| b).sum(),
        }
    }
}

/// Moves a generated document (and its lines) to another io_id.
fn shift_io_id(doc: &mut Value, offset: i64) {
    let shift = |v: &mut Value, by: i64| {
        if let Some(n) = v.as_i64() {
            *v = Value::from(n + by);
        }
    };
    if let Some(id) = doc.get_mut("io_id") {
        shift(id, offset);
    }
    if let Some(Value::Array(items)) = doc.get_mut("items") {
        for item in items {
            if let Some(id) = item.get_mut("io_id") {
                shift(id, offset);
            }
            if let Some(id) = item.get_mut("ioi_id") {
                shift(id, offset * 10);
            }
        }
    }
}

/// Some documents, as the Jushuitan simulator's `--data`.
struct Batch {
    json: Value,
    documents: usize,
    bills: usize,
}

/// What every phase with workers shares.
struct Setup<'a> {
    bins: &'a Binaries,
    dir: &'a Path,
    amqp: &'a str,
    ticks: f64,
    broker: Option<u32>,
    timeout: Duration,
}

/// The two simulators of one phase.
struct Sims {
    jst: Proc,
    kingdee: Proc,
    jst_url: String,
    kingdee_url: String,
}

impl Sims {
    async fn stop(&mut self) {
        self.jst.stop(Duration::from_secs(5)).await;
        self.kingdee.stop(Duration::from_secs(5)).await;
    }
}

/// The end of a phase on the broker: its queues deleted, the bench's connection closed.
async fn delete_and_close(rabbit: &RabbitBroker) {
    bounded(rabbit.delete_topology()).await;
    bounded(async {
        rabbit.close().await;
        Ok(())
    })
    .await;
}

impl Setup<'_> {
    /// Both simulators (limits off, no latency), the Jushuitan one holding `batch`, answering.
    async fn sims(&self, name: &str, batch: &Batch) -> anyhow::Result<Sims> {
        let data = self.dir.join(format!("{name}-documents.json"));
        std::fs::write(&data, serde_json::to_vec(&batch.json)?)?;
        let (jp, kp) = (free_port()?, free_port()?);
        let jst_listen = format!("127.0.0.1:{jp}");
        let kingdee_listen = format!("127.0.0.1:{kp}");
        let data_arg = data.display().to_string();
        let jst = Proc::start(
            "sim jst",
            &self.bins.jst2kd,
            &[
                "sim",
                "jst",
                "--listen",
                &jst_listen,
                "--data",
                &data_arg,
                "--rate-limit",
                "off",
            ],
            &[],
            self.dir,
        )?;
        let kingdee = Proc::start(
            "sim kingdee",
            &self.bins.jst2kd,
            &["sim", "kingdee", "--listen", &kingdee_listen],
            &[],
            self.dir,
        )?;
        let sims = Sims {
            jst,
            kingdee,
            jst_url: format!("http://{jst_listen}"),
            kingdee_url: format!("http://{kingdee_listen}"),
        };
        let http = common::http::client(Duration::from_secs(5))?;
        for url in [&sims.jst_url, &sims.kingdee_url] {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let up = http.get(format!("{url}/_sim/stats")).send().await;
                if up.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the simulator at {url} did not answer within 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(sims)
    }

    /// The environment of the workers of one phase: the demo's configuration file with the
    /// simulators, the broker, the prefix and a checkpoint of the phase's own.
    fn worker_env(
        &self,
        name: &str,
        prefix: &str,
        sims: &Sims,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let config = self.dir.join("workers.toml");
        std::fs::write(&config, LOCAL_TOML)?;
        let checkpoint = self.dir.join(format!("{name}.checkpoint.json"));
        let env = [
            ("JST2KD_CONFIG", config.display().to_string()),
            ("JST2KD_AMQP__URL", self.amqp.to_string()),
            ("JST2KD_AMQP__PREFIX", prefix.to_string()),
            ("JST2KD_RUNTIME__LOG_FORMAT", "json".to_string()),
            ("JST2KD_METRICS__LISTEN", "127.0.0.1:0".to_string()),
            ("JST2KD_JST__BASE_URL", sims.jst_url.clone()),
            (
                "JST2KD_KINGDEE__BASE_URL",
                format!("{}/k3cloud", sims.kingdee_url),
            ),
            (
                "JST2KD_PRODUCER__CHECKPOINT",
                checkpoint.display().to_string(),
            ),
            ("JST2KD_PRODUCER__LAG", "0s".to_string()),
            ("JST2KD_PRODUCER__POLL_INTERVAL", "1s".to_string()),
            // The simulator's limits are off, and so is the client's pacing: the bench
            // measures this machine, not Jushuitan's quota.
            ("JST2KD_JST__RATE_PER_SECOND", "0".to_string()),
            ("JST2KD_JST__RATE_PER_MINUTE", "0".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ];
        Ok(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn worker(&self, name: &'static str, env: &[(String, String)]) -> anyhow::Result<Proc> {
        let program = match name {
            "producer" => &self.bins.producer,
            "transformer" => &self.bins.transformer,
            _ => &self.bins.loader,
        };
        Proc::start(name, program, &[], env, self.dir)
    }

    /// The broker of `prefix`, for queue depths and clean-up.
    async fn rabbit(&self, prefix: &str) -> anyhow::Result<RabbitBroker> {
        let amqp = AmqpConfig {
            prefix: prefix.to_string(),
            ..AmqpConfig::default()
        };
        let connected = tokio::time::timeout(
            Duration::from_secs(30),
            RabbitBroker::connect_once(
                Secret::new(self.amqp),
                "jst2kd-bench",
                Topology::from_config(&amqp),
                CancellationToken::new(),
            ),
        )
        .await
        .context("RabbitMQ did not answer within 30 s")?;
        Ok(connected?)
    }

    /// The three workers together over `batch`, timed to the last bill.
    async fn pipeline(
        &self,
        prefix: &str,
        batch: &Batch,
        show: &mut Progress,
    ) -> anyhow::Result<PipelineReport> {
        let mut sims = self.sims("pipeline", batch).await?;
        let env = self.worker_env("pipeline", prefix, &sims)?;
        let http = common::http::client(Duration::from_secs(5))?;
        let sims_before = (
            sims.jst.sample(self.ticks)?,
            sims.kingdee.sample(self.ticks)?,
        );
        // From here on, the prefix's queues exist: every way out deletes them.
        let rabbit = self.rabbit(prefix).await?;
        let broker_before = self.broker.and_then(|p| procs::usage(p, self.ticks));
        let started = Instant::now();
        let mut workers = Vec::new();
        let mut first_bill = None;
        let result = async {
            for name in ["producer", "transformer", "loader"] {
                workers.push(self.worker(name, &env)?);
            }
            loop {
                let bills = kingdee_bills(&http, &sims.kingdee_url).await;
                let elapsed = started.elapsed().as_secs_f64();
                if bills > 0 {
                    first_bill.get_or_insert(elapsed);
                }
                show.count(
                    "pipeline",
                    "bills in Kingdee",
                    bills as u64,
                    batch.bills as u64,
                );
                if bills >= batch.bills {
                    break;
                }
                if started.elapsed() > self.timeout {
                    bail!(
                        "only {bills} of {} bills reached Kingdee within {} s",
                        batch.bills,
                        self.timeout.as_secs()
                    );
                }
                for w in &mut workers {
                    w.sample(self.ticks)?;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(started.elapsed())
        }
        .await;
        let broker_after = self.broker.and_then(|p| procs::usage(p, self.ticks));
        let sims_after = (sims.jst.sample(self.ticks), sims.kingdee.sample(self.ticks));
        let mut ends = Vec::new();
        for w in &mut workers {
            ends.push(w.sample(self.ticks));
        }
        let dead = bounded(rabbit.dead_depth()).await.unwrap_or(0);
        for w in &mut workers {
            w.stop(Duration::from_secs(30)).await;
        }
        sims.stop().await;
        delete_and_close(&rabbit).await;
        let elapsed = result?;
        let sims_after = (sims_after.0?, sims_after.1?);
        let per_1000 = |cpu: f64| cpu * 1000.0 / batch.documents as f64;
        let mut costs = Vec::new();
        for (w, end) in workers.iter().zip(ends) {
            let end = end?;
            costs.push(Cost {
                process: w.name.to_string(),
                cpu_seconds: end.cpu_seconds,
                cpu_seconds_per_1000_documents: per_1000(end.cpu_seconds),
                peak_rss_mib: Some(end.peak_mib),
            });
        }
        for (name, before, after) in [
            ("sim jst", sims_before.0, sims_after.0),
            ("sim kingdee", sims_before.1, sims_after.1),
        ] {
            let cpu = after.cpu_seconds - before.cpu_seconds;
            costs.push(Cost {
                process: name.to_string(),
                cpu_seconds: cpu,
                cpu_seconds_per_1000_documents: per_1000(cpu),
                peak_rss_mib: None,
            });
        }
        if let (Some(before), Some(after)) = (broker_before, broker_after) {
            let cpu = after.cpu_seconds - before.cpu_seconds;
            costs.push(Cost {
                process: "RabbitMQ".to_string(),
                cpu_seconds: cpu,
                cpu_seconds_per_1000_documents: per_1000(cpu),
                peak_rss_mib: None,
            });
        }
        Ok(PipelineReport {
            documents: batch.documents,
            bills: batch.bills,
            seconds: elapsed.as_secs_f64(),
            first_bill_seconds: first_bill.unwrap_or_default(),
            documents_per_second: batch.documents as f64 / elapsed.as_secs_f64().max(1e-9),
            of_ceiling: None,
            dead_letters: dead,
            costs,
        })
    }

    /// One worker at a time over `batch`, each starting with the whole backlog waiting.
    async fn backlog(
        &self,
        prefix: &str,
        batch: &Batch,
        show: &mut Progress,
    ) -> anyhow::Result<Vec<BacklogStage>> {
        let mut sims = self.sims("backlog", batch).await?;
        // From here on, the prefix's queues exist: every way out deletes them.
        let rabbit = self.rabbit(prefix).await?;
        let env = self.worker_env("backlog", prefix, &sims)?;
        let http = common::http::client(Duration::from_secs(5))?;
        let mut stages = Vec::new();
        let result = async {
            for (name, waiting) in [
                ("producer", batch.documents),
                ("transformer", batch.documents),
                ("loader", batch.bills),
            ] {
                quiet(self.broker, self.ticks, show).await;
                let started = Instant::now();
                let broker_before = self.broker.and_then(|p| procs::usage(p, self.ticks));
                let mut worker = self.worker(name, &env)?;
                loop {
                    let (done, of) = match name {
                        "producer" => (
                            bounded(rabbit.depth(Work::Counts)).await.unwrap_or(0) as usize,
                            batch.documents,
                        ),
                        // Bills are published before their document is acked: all there is
                        // all done.
                        "transformer" => (
                            bounded(rabbit.depth(Work::Bills)).await.unwrap_or(0) as usize,
                            batch.bills,
                        ),
                        _ => (kingdee_bills(&http, &sims.kingdee_url).await, batch.bills),
                    };
                    show.count(
                        &format!("backlog, {name} alone"),
                        "messages",
                        done as u64,
                        of as u64,
                    );
                    worker.sample(self.ticks)?;
                    if done >= of {
                        break;
                    }
                    if started.elapsed() > self.timeout {
                        bail!(
                            "{name} did only {done} of {of} within {} s",
                            self.timeout.as_secs()
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let seconds = started.elapsed().as_secs_f64();
                let end = worker.sample(self.ticks)?;
                let broker_after = self.broker.and_then(|p| procs::usage(p, self.ticks));
                worker.stop(Duration::from_secs(30)).await;
                stages.push(BacklogStage {
                    worker: name.to_string(),
                    waiting,
                    seconds,
                    per_second: waiting as f64 / seconds.max(1e-9),
                    peak_rss_mib: end.peak_mib,
                    cpu_seconds_per_1000: end.cpu_seconds * 1000.0 / waiting as f64,
                    broker_cpu_seconds_per_1000: broker_before
                        .zip(broker_after)
                        .map(|(a, b)| (b.cpu_seconds - a.cpu_seconds) * 1000.0 / waiting as f64),
                });
                show.done(&format!(
                    "backlog: {name} peaked at {:.1} MiB",
                    end.peak_mib
                ));
            }
            anyhow::Ok(())
        }
        .await;
        sims.stop().await;
        delete_and_close(&rabbit).await;
        result.map(|()| stages)
    }
}

/// Waits (at most 20 s) until the broker has finished the work of the phase before: RabbitMQ
/// goes on writing and deleting its quorum queues' logs for a few seconds after the last
/// message, and that CPU would be counted, and felt, in the next phase.
async fn quiet(broker: Option<u32>, ticks: f64, show: &mut Progress) {
    let Some(pid) = broker else { return };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(before) = procs::usage(pid, ticks) else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(after) = procs::usage(pid, ticks) else {
            return;
        };
        // Under a tenth of a core.
        if after.cpu_seconds - before.cpu_seconds < 0.05 {
            return;
        }
        show.update("waiting for RabbitMQ to finish the phase before");
    }
}

/// A broker call of the bench's own, given up after 10 s: its connection reconnects for as
/// long as it takes, and a broker gone for good must not hold the bench past its timeout.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, common::queue::QueueError>>,
) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .ok()
        .and_then(Result::ok)
}

/// Bills the Kingdee simulator holds (0 while it does not answer).
async fn kingdee_bills(http: &reqwest::Client, url: &str) -> usize {
    let Ok(response) = http.get(format!("{url}/_sim/stats")).send().await else {
        return 0;
    };
    response
        .json::<Value>()
        .await
        .ok()
        .and_then(|v| v.get("bills").and_then(Value::as_u64))
        .map_or(0, |n| n as usize)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A progress line on stderr: rewritten in place on a terminal, one line every few seconds
/// otherwise.
struct Progress {
    terminal: bool,
    last: Option<Instant>,
    /// The step being counted: a bar on a terminal, plain lines otherwise.
    counting: Option<crate::progress::Progress>,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            counting: None,
        }
    }

    /// `done` of `total` `unit`s of the step `what` (a new step ends the one before).
    fn count(&mut self, what: &str, unit: &'static str, done: u64, total: u64) {
        if self.counting.as_ref().is_some_and(|c| c.what() != what) {
            self.end_count();
        }
        if self.counting.is_none() && self.terminal {
            // A status line of `update` may be on screen: the bar starts on a clean line.
            eprint!("\r\x1b[2K");
        }
        self.counting
            .get_or_insert_with(|| crate::progress::Progress::new(what, unit, Some(total)))
            .set(done);
    }

    fn end_count(&mut self) {
        if let Some(counting) = self.counting.take() {
            counting.clear();
        }
    }

    fn update(&mut self, text: &str) {
        self.end_count();
        if self.terminal {
            eprint!("\r\x1b[2K{text}");
        } else if self
            .last
            .is_none_or(|t| t.elapsed() > Duration::from_secs(5))
        {
            eprintln!("{text}");
            self.last = Some(Instant::now());
        }
    }

    fn line(&mut self, text: &str) {
        self.end_count();
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
    }

    fn done(&mut self, text: &str) {
        self.line(text);
        self.last = None;
    }
}

fn print_table(report: &Report) {
    println!("jst2kd bench ({} cores)", report.cores);
    if let Some(c) = &report.ceiling {
        println!(
            "ceiling   two-hop RabbitMQ relay, {} persistent 1.5 KB messages on quorum queues: {:.0} messages/s (median of {CEILING_RUNS} runs)",
            c.messages, c.messages_per_second
        );
    }
    if let Some(p) = &report.pipeline {
        println!(
            "pipeline  {} documents → {} bills, three workers and both simulators: {:.0} documents/s in {:.1} s (the first bill after {:.1} s){}",
            p.documents,
            p.bills,
            p.documents_per_second,
            p.seconds,
            p.first_bill_seconds,
            p.of_ceiling
                .map(|r| format!(", {r:.2} of the ceiling"))
                .unwrap_or_default()
        );
        if p.dead_letters > 0 {
            println!(
                "          {} dead letters (there should be none)",
                p.dead_letters
            );
        }
        println!();
        println!(
            "{:<13} {:>14} {:>22} {:>14}",
            "process", "CPU seconds", "CPU s / 1,000 documents", "peak MiB"
        );
        for c in &p.costs {
            println!(
                "{:<13} {:>14.2} {:>22.3} {:>14}",
                c.process,
                c.cpu_seconds,
                c.cpu_seconds_per_1000_documents,
                c.peak_rss_mib
                    .map_or("-".to_string(), |m| format!("{m:.1}"))
            );
        }
    }
    if !report.backlog.is_empty() {
        println!();
        println!(
            "{:<13} {:>10} {:>12} {:>10} {:>15} {:>18}",
            "alone", "waiting", "per second", "peak MiB", "CPU s / 1,000", "RabbitMQ s / 1,000"
        );
        for s in &report.backlog {
            println!(
                "{:<13} {:>10} {:>12.0} {:>10.1} {:>15.3} {:>18}",
                s.worker,
                s.waiting,
                s.per_second,
                s.peak_rss_mib,
                s.cpu_seconds_per_1000,
                s.broker_cpu_seconds_per_1000
                    .map_or("-".to_string(), |c| format!("{c:.3}"))
            );
        }
    }
}
