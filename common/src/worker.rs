//! What every worker binary does around its stage: arguments, configuration, logging, the
//! metrics endpoint, signals, the broker connection, and an orderly shutdown.
//!
//! Invariant (SPEC section 8): SIGTERM / SIGINT → not ready → the stage stops taking work and
//! finishes what it holds → confirms awaited → connection closed → exit 0, all within
//! `runtime.shutdown_timeout`; past it the process exits 1 and the broker redelivers whatever
//! was not acked.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use serde::Deserialize;

use crate::config::{ConfigError, Dur, FromLayers, Layers, Section};
use crate::events::BrokerEvents;
use crate::queue::rabbit::RabbitBroker;
use crate::queue::{AmqpConfig, Broker, QueueError, Role, Topology, Work};
use crate::telemetry::{self, Health, LogFormat, Metrics, Stage};

/// Arguments every worker takes.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// TOML configuration file (environment `JST2KD_<SECTION>__<KEY>` overrides it).
    #[arg(long, env = "JST2KD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: json (default) or pretty.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// `[runtime]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// How long a graceful shutdown may take.
    pub shutdown_timeout: Dur,
    /// `json` or `pretty`.
    pub log_format: LogFormat,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Dur::secs(30),
            log_format: LogFormat::Json,
        }
    }
}

impl Section for RuntimeConfig {
    const NAME: &'static str = "runtime";

    fn check(&self) -> Result<(), ConfigError> {
        if self.shutdown_timeout.0.is_zero() {
            return Err(ConfigError::key(
                "runtime.shutdown_timeout",
                "must be more than 0 (in-flight work needs time to finish)",
            ));
        }
        Ok(())
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address; each binary has its own default port.
    pub listen: Option<String>,
}

impl Section for MetricsConfig {
    const NAME: &'static str = "metrics";
}

/// What the harness itself reads: `[runtime]` and `[metrics]`, with `--log-format` applied.
#[derive(Clone, Debug)]
pub struct Process {
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
}

/// What a stage is given to run.
#[derive(Clone)]
pub struct Context {
    /// Fires on SIGTERM / SIGINT.
    pub cancel: CancellationToken,
    /// `/readyz`.
    pub health: Arc<Health>,
    /// This process's metrics.
    pub metrics: Arc<Metrics>,
    /// Every task the stage spawns, awaited on shutdown.
    pub tracker: TaskTracker,
    /// Deliveries received and not yet settled, across the stages of this process.
    pub in_flight: Arc<AtomicUsize>,
}

/// Counts one delivery as in flight until dropped (settled, or abandoned to redelivery).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Starts counting.
    pub fn start(ctx: &Context) -> Self {
        ctx.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(ctx.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Context {
    /// A context for `stages` (tests and the demo build their own).
    pub fn new(stages: &[Stage]) -> Self {
        Self {
            cancel: CancellationToken::new(),
            health: Health::new(),
            metrics: Metrics::new(stages),
            tracker: TaskTracker::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Exit 2 for a topology mismatch, 1 otherwise.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Exit 1.
    #[error("{0}")]
    Runtime(String),
    /// Exit 1: work was still running at `runtime.shutdown_timeout`; it will be redelivered.
    #[error("shutdown timed out")]
    ShutdownTimeout,
}

impl WorkerError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Config(_) | WorkerError::Queue(QueueError::TopologyMismatch { .. }) => 2,
            _ => 1,
        }
    }
}

/// Loads the file and environment named by `args`: the harness's own sections (with
/// `--log-format` applied) and the layers, from which a stage or command takes its own.
pub fn load_config(args: &WorkerArgs) -> Result<(Process, Layers), ConfigError> {
    let layers = Layers::load(args.config.as_deref())?;
    let mut runtime: RuntimeConfig = layers.section()?;
    if let Some(format) = args.log_format {
        runtime.log_format = format;
    }
    let metrics = layers.section()?;
    Ok((Process { runtime, metrics }, layers))
}

/// Publishes what the outcome log still buffers, then closes the broker connection: the end
/// of every stage process.
pub async fn close(broker: &Broker, ctx: &Context) {
    ctx.metrics.outcomes.close().await;
    broker.close().await;
}

/// Connects to RabbitMQ as `name` (declaring the names `role` uses) and keeps
/// `jst2kd_amqp_connected`, the queue depth gauge and readiness up to date until `cancel`.
pub async fn connect_rabbit(
    amqp: &AmqpConfig,
    name: &str,
    role: Role,
    ctx: &Context,
) -> Result<Broker, QueueError> {
    let topology = Topology::from_config(amqp).for_role(role);
    let consumes = match role {
        Role::Transformer => Some(Work::Counts),
        Role::Loader => Some(Work::Bills),
        Role::Producer | Role::Operator => None,
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let name = format!("{name}@{host}-{}", std::process::id());
    let (url, cancel) = (amqp.url.clone(), ctx.cancel.clone());
    let rabbit = match consumes {
        Some(_) => RabbitBroker::connect(url, name, topology, cancel).await?,
        None => RabbitBroker::connect_publisher(url, name, topology, cancel).await?,
    };
    let broker = Broker::Rabbit(rabbit);
    ctx.metrics.outcomes.attach(broker.clone());
    let watched = broker.clone();
    let ctx2 = ctx.clone();
    let events = BrokerEvents::new(&ctx.metrics, consumes);
    ctx.tracker.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            let mut ready = watched.is_ready();
            if !ready && !ctx2.cancel.is_cancelled() {
                // Not ready is reported before anything is tried, then a connection lost for
                // good is rebuilt here too (on the next node of a cluster), not only when the
                // stage next publishes or consumes. A rebuild already under way is not waited
                // for.
                events.connected(false);
                ctx2.health.set_ready(false);
                ready = watched.reconnect().await.is_ok() && watched.is_ready();
            }
            events.connected(ready);
            ctx2.health.set_ready(ready);
            if let (Some(work), true) = (consumes, ready) {
                if let Ok(depth) = watched.depth(work).await {
                    events.depth(work.key(), depth);
                }
                // Dead letters wait for a person: their count drives an alert that stays on
                // until they are replayed or purged.
                if let Ok(depth) = watched.dead_depth().await {
                    events.depth("dead", depth);
                }
            }
            tokio::select! {
                () = ctx2.cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
        }
        ctx2.health.set_ready(false);
    });
    Ok(broker)
}

/// Runs a worker binary: `main` of producer, transformer and loader is one call to this.
/// The stage's configuration `C` is taken out and checked before anything starts.
pub fn main<C, F, Fut>(stage: Stage, default_listen: &str, args: WorkerArgs, run: F) -> ExitCode
where
    C: FromLayers,
    F: FnOnce(C, Context) -> Fut,
    Fut: Future<Output = Result<(), WorkerError>>,
{
    let loaded =
        load_config(&args).and_then(|(process, layers)| Ok((process, C::from_layers(&layers)?)));
    let (process, config) = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", stage.as_str());
            return ExitCode::from(2);
        }
    };
    let (mut traces, layer) = match crate::traces::from_env(stage.as_str()) {
        Ok(Some((traces, layer))) => (Some(traces), Some(layer)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("{}: {e}", stage.as_str());
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging_traced(process.runtime.log_format, layer);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", stage.as_str());
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        let ctx = Context::new(&[stage]);
        if let Some(traces) = traces.as_mut() {
            traces.start(ctx.metrics.spans_dropped.clone());
            info!(service = traces.service(), "Exporting traces over OTLP.");
        }
        let listen = process
            .metrics
            .listen
            .clone()
            .unwrap_or_else(|| default_listen.to_string());
        let listener = match telemetry::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                error!(listen = %listen, error = %e, "Cannot bind the metrics endpoint.");
                return 2;
            }
        };
        let http_cancel = CancellationToken::new();
        let server = tokio::spawn(telemetry::serve_http(
            listener,
            ctx.metrics.clone(),
            ctx.health.clone(),
            http_cancel.clone(),
        ));
        spawn_signal_handler(ctx.cancel.clone(), ctx.health.clone());
        let timeout = process.runtime.shutdown_timeout.0;
        info!(stage = stage.as_str(), version = env!("CARGO_PKG_VERSION"), metrics = %listen, "Starting.");
        let cancel = ctx.cancel.clone();
        let tracker = ctx.tracker.clone();
        let work = run(config, ctx);
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = async { cancel.cancelled().await; tokio::time::sleep(timeout).await } => {
                error!(timeout_s = timeout.as_secs(), "Shutdown took longer than runtime.shutdown_timeout; exiting, unsettled messages will be redelivered.");
                Err(WorkerError::ShutdownTimeout)
            }
        };
        tracker.close();
        // Past the shutdown deadline nothing more is awaited: the orchestrator's own grace
        // period (kept a little longer than shutdown_timeout) would kill us anyway.
        // The background tasks and the spans share one 5 s: the grace periods of compose
        // and Kubernetes are shutdown_timeout + 10 s.
        let timed_out = matches!(result, Err(WorkerError::ShutdownTimeout));
        let last = tokio::time::Instant::now() + Duration::from_secs(5);
        if !timed_out
            && tokio::time::timeout_at(last, tracker.wait())
                .await
                .is_err()
        {
            warn!("Background tasks did not stop in time.");
        }
        if let Some(traces) = &traces
            && !timed_out
        {
            // Past the shutdown deadline nothing more is awaited, spans included.
            let left = last.saturating_duration_since(tokio::time::Instant::now());
            traces.flush(left.max(Duration::from_millis(500))).await;
        }
        http_cancel.cancel();
        server.abort();
        match result {
            // Shutdown asked while still connecting: nothing was taken, nothing is lost.
            Ok(()) | Err(WorkerError::Queue(QueueError::Cancelled)) => {
                info!(stage = stage.as_str(), "Stopped.");
                0
            }
            Err(e) => {
                error!(stage = stage.as_str(), error = %e, "Stopped with an error.");
                e.exit_code()
            }
        }
    });
    leave_runtime(runtime);
    ExitCode::from(code)
}

/// Ends the process without shutting the async runtime down. The shutdown that matters (stop
/// consuming, settle, confirms, close) is done by then; what is left are stray tasks, blocking
/// lookups, and lapin's I/O threads of a connection attempt that never finished (a TLS
/// handshake with a plain port): a runtime shutdown would wait for the first and make the
/// last panic ("A Tokio 1.x context was found, but it is being shutdown"). The process exit
/// ends them all.
pub fn leave_runtime(runtime: tokio::runtime::Runtime) {
    std::mem::forget(runtime);
}

/// SIGTERM / SIGINT → not ready, then cancel.
pub fn spawn_signal_handler(cancel: CancellationToken, health: Arc<Health>) {
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("Shutdown signal received.");
        health.set_stopping();
        cancel.cancel();
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                tokio::signal::ctrl_c().await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::shape;
    use crate::config::testing::env;

    #[test]
    fn the_types_have_the_registered_keys() {
        shape::registered::<RuntimeConfig>("runtime").expect("runtime");
        shape::registered::<MetricsConfig>("metrics").expect("metrics");
    }

    #[test]
    fn a_shutdown_timeout_is_positive_and_bounded() {
        let r: RuntimeConfig = env(&[]).and_then(|l| l.section()).expect("defaults");
        assert_eq!(r.shutdown_timeout, Dur::secs(30));
        assert_eq!(r.log_format, LogFormat::Json);
        for value in ["0s", "99999999999999999999d"] {
            let e = env(&[("JST2KD_RUNTIME__SHUTDOWN_TIMEOUT", value)])
                .and_then(|l| l.section::<RuntimeConfig>())
                .expect_err(value);
            assert!(e.to_string().contains("runtime.shutdown_timeout"), "{e}");
        }
    }
}
