//! Logs, metrics and the `/metrics`, `/healthz`, `/readyz` endpoint.
//!
//! Metric names and labels are the contract of SPEC section 7 (dashboards and alerts rely on
//! them). Each process keeps its metrics in its own [`prometheus::Registry`] (never the global
//! one), registers the metrics of the roles it plays, and initialises every label value it knows
//! to 0 so a series exists before the first event. Label values come from enums, never from ids
//! or error text.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The metric handle types, for the named events of each crate.
pub use prometheus::{Gauge, Histogram, IntCounter, IntGauge};

/// Log output format (`runtime.log_format`, `--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// Starts logging to stderr (stdout is for command output). `RUST_LOG` refines the level.
pub fn init_logging(format: LogFormat) {
    init_logging_with(format, DEFAULT_FILTER);
}

/// Our events at `info`, lapin's at `warn`, except lapin's channel closes: a producer waiting
/// for the lock has its declaration refused (`RESOURCE_LOCKED`) every few seconds, which lapin
/// logs as an error; every channel error that matters comes back to our code as a result,
/// which logs it with its context.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,lapin::channel=off";

/// Starts logging with `default_filter` where `RUST_LOG` is not set.
pub fn init_logging_with(format: LogFormat, default_filter: &str) {
    init_logging_to(format, default_filter, std::io::stderr);
}

/// Starts logging with `default_filter` to `writer` (for the CLI: stderr, around its progress
/// bar). Colours only when stderr is a terminal.
pub fn init_logging_to<W>(format: LogFormat, default_filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    init_subscriber(format, default_filter, writer, None);
}

/// Starts a worker's logging, with its spans exported when `traces` is given (see
/// [`crate::traces`]); log lines inside a traced span then carry `trace_id` and `span_id`.
pub fn init_logging_traced(format: LogFormat, traces: Option<crate::traces::Layer>) {
    init_subscriber(format, DEFAULT_FILTER, std::io::stderr, traces);
}

fn init_subscriber<W>(
    format: LogFormat,
    default_filter: &str,
    writer: W,
    traces: Option<crate::traces::Layer>,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // `RUST_LOG` filters the log lines; exported spans have their own filter (traces.rs).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(traces);
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    // A second initialisation (tests, the demo) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .map_event_format(WithTraceIds)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                layer
                    .compact()
                    // Colours for a person at a terminal; none in a file or a pipe.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .fmt_fields(escaped_fields())
                    .map_event_format(WithTraceIds)
                    .with_filter(filter),
            )
            .try_init(),
    };
}

/// An event format that adds `trace_id` and `span_id` to a line written inside a traced span
/// (the JSON object gains two keys; a human line ends with them), so a log search finds the
/// trace. Lines outside a span, with tracing off, or in colour at a terminal (a person reading,
/// and the colours could not be kept around the ids) are the inner format's, unchanged.
struct WithTraceIds<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if !crate::traces::enabled() || writer.has_ansi_escapes() {
            return self.0.format_event(ctx, writer, event);
        }
        let span = event
            .parent()
            .cloned()
            .or_else(|| ctx.lookup_current().map(|s| s.id()));
        let Some((trace_id, span_id)) = span.and_then(|id| crate::traces::ids_of(&id)) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        writer.write_str(&with_ids(&line, &trace_id, &span_id))
    }
}

/// `line` (one formatted event) with the ids added: inside the JSON object when it is one,
/// else at the end of the line.
fn with_ids(line: &str, trace_id: &str, span_id: &str) -> String {
    let body = line.trim_end_matches('\n');
    match body.strip_suffix('}') {
        Some(open) if body.starts_with('{') => {
            format!("{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}\n")
        }
        _ => format!("{body} trace_id={trace_id} span_id={span_id}\n"),
    }
}

/// Fields of the human log format with control characters escaped: a message, an error or
/// an id from outside (Jushuitan's `msg`, a header, a message id) cannot move the cursor,
/// recolour the terminal or forge a log line. (The JSON format escapes them by itself.)
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = crate::http::escape(&format!("{value:?}"));
        if field.name() == "message" {
            write!(writer, "{text}")
        } else {
            write!(writer, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// A pipeline stage, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Polls JST.
    Producer,
    /// Maps documents to bills.
    Transformer,
    /// Saves bills in Kingdee.
    Loader,
}

impl Stage {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Producer => "producer",
            Stage::Transformer => "transformer",
            Stage::Loader => "loader",
        }
    }
}

/// Why a message was dead-lettered (`jst2kd-error-kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadKind {
    /// Body not parseable.
    Malformed,
    /// No mapping for a warehouse or SKU.
    Mapping,
    /// Kingdee refused the bill.
    Rejected,
    /// The bill number exists in Kingdee with other content.
    Conflict,
    /// Transient failures outlasted the retry tiers.
    Exhausted,
    /// Larger than `amqp.max_message_bytes` (not parsed), or too large to publish again.
    TooLarge,
}

impl DeadKind {
    /// Every kind.
    pub const ALL: [DeadKind; 6] = [
        DeadKind::Malformed,
        DeadKind::Mapping,
        DeadKind::Rejected,
        DeadKind::Conflict,
        DeadKind::Exhausted,
        DeadKind::TooLarge,
    ];
    /// Header and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Malformed => "malformed",
            DeadKind::Mapping => "mapping",
            DeadKind::Rejected => "rejected",
            DeadKind::Conflict => "conflict",
            DeadKind::Exhausted => "exhausted",
            DeadKind::TooLarge => "too_large",
        }
    }
}

/// Every metric of SPEC section 7.
pub struct Metrics {
    registry: Registry,
    /// `jst2kd_consumed_total{stage}`
    pub consumed: IntCounterVec,
    /// `jst2kd_published_total{stage,queue}`
    pub published: IntCounterVec,
    /// `jst2kd_retried_total{stage}`
    pub retried: IntCounterVec,
    /// `jst2kd_dead_lettered_total{stage,kind}`
    pub dead_lettered: IntCounterVec,
    /// `jst2kd_skipped_total{stage,reason}`
    pub skipped: IntCounterVec,
    /// `jst2kd_jst_requests_total{outcome}`
    pub jst_requests: IntCounterVec,
    /// `jst2kd_jst_request_seconds`
    pub jst_request_seconds: Histogram,
    /// `jst2kd_producer_checkpoint_timestamp_seconds`
    pub checkpoint_timestamp: Gauge,
    /// `jst2kd_kingdee_requests_total{op,outcome}`
    pub kingdee_requests: IntCounterVec,
    /// `jst2kd_kingdee_request_seconds{op}`
    pub kingdee_request_seconds: HistogramVec,
    /// `jst2kd_loader_bills_total{result}`
    pub loader_bills: IntCounterVec,
    /// `jst2kd_loader_batch_size`
    pub loader_batch_size: Histogram,
    /// `jst2kd_end_to_end_seconds`
    pub end_to_end_seconds: Histogram,
    /// `jst2kd_queue_messages{queue}`
    pub queue_messages: IntGaugeVec,
    /// `jst2kd_amqp_connected`
    pub amqp_connected: IntGauge,
    /// `jst2kd_events_dropped_total`: outcome events not recorded (buffer full, broker
    /// refusing).
    pub events_dropped: IntCounter,
    /// `jst2kd_spans_dropped_total{reason}` (`queue_full`, `export_failed`): finished spans not
    /// exported (see [`crate::traces`]); 0 while tracing is off.
    pub spans_dropped: IntCounterVec,
    /// The outcome log every stage records into (detached until the stage has a broker).
    pub outcomes: crate::outcomes::OutcomeLog,
    /// `jst2kd_build_info{version}`
    pub build_info: IntGaugeVec,
    /// `jst2kd_jst_token_expiry_timestamp_seconds{app_kind}` (`own`, `isv`): resolved by the
    /// Jushuitan client, which knows its kind.
    pub jst_token_expiry: GaugeVec,
}

/// Label values of `jst2kd_jst_requests_total{outcome}`.
pub const JST_OUTCOMES: [&str; 4] = ["ok", "rate_limited", "token_expired", "error"];
/// Label values of `jst2kd_kingdee_requests_total{outcome}`.
pub const KINGDEE_OUTCOMES: [&str; 4] = ["ok", "partial", "failed", "transient"];
/// Label values of `jst2kd_kingdee_requests_total{op}`.
pub const KINGDEE_OPS: [&str; 5] = [
    "batch_save",
    "execute_bill_query",
    "login",
    "submit",
    "audit",
];
/// Label values of `jst2kd_loader_bills_total{result}`.
pub const LOADER_RESULTS: [&str; 5] = ["created", "duplicate", "conflict", "rejected", "exhausted"];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable_metric(&e))
}

fn unreachable_metric(e: &prometheus::Error) -> ! {
    // Names and labels are constants of this file; an error here is a programming bug that the
    // unit tests catch before any release.
    panic!("invalid metric definition: {e}")
}

impl Metrics {
    /// All metrics, registered for the given stages (a process may play several: the demo).
    pub fn new(stages: &[Stage]) -> Arc<Self> {
        let secs = prometheus::exponential_buckets(0.005, 2.0, 14)
            .unwrap_or_else(|e| unreachable_metric(&e));
        let e2e = prometheus::exponential_buckets(0.05, 2.0, 16)
            .unwrap_or_else(|e| unreachable_metric(&e));
        let events_dropped = IntCounter::new(
            "jst2kd_events_dropped_total",
            "Outcome events not recorded in the outcome log.",
        )
        .unwrap_or_else(|e| unreachable_metric(&e));
        let m = Self {
            registry: Registry::new(),
            consumed: counter("jst2kd_consumed_total", "Deliveries received.", &["stage"]),
            published: counter(
                "jst2kd_published_total",
                "Messages published and confirmed.",
                &["stage", "queue"],
            ),
            retried: counter(
                "jst2kd_retried_total",
                "Messages sent to a retry tier.",
                &["stage"],
            ),
            dead_lettered: counter(
                "jst2kd_dead_lettered_total",
                "Messages dead-lettered, by kind.",
                &["stage", "kind"],
            ),
            skipped: counter(
                "jst2kd_skipped_total",
                "Documents skipped on purpose, by reason.",
                &["stage", "reason"],
            ),
            jst_requests: counter(
                "jst2kd_jst_requests_total",
                "Jushuitan API calls, by outcome.",
                &["outcome"],
            ),
            jst_request_seconds: Histogram::with_opts(
                HistogramOpts::new("jst2kd_jst_request_seconds", "Jushuitan call latency.")
                    .buckets(secs.clone()),
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            checkpoint_timestamp: Gauge::new(
                "jst2kd_producer_checkpoint_timestamp_seconds",
                "Unix time up to which the producer has published every document.",
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            kingdee_requests: counter(
                "jst2kd_kingdee_requests_total",
                "Kingdee WebAPI calls, by operation and outcome.",
                &["op", "outcome"],
            ),
            kingdee_request_seconds: HistogramVec::new(
                HistogramOpts::new("jst2kd_kingdee_request_seconds", "Kingdee call latency.")
                    .buckets(secs),
                &["op"],
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            loader_bills: counter(
                "jst2kd_loader_bills_total",
                "Bills settled by the loader, by result.",
                &["result"],
            ),
            loader_batch_size: Histogram::with_opts(
                HistogramOpts::new("jst2kd_loader_batch_size", "Bills per BatchSave call.")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]),
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            end_to_end_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "jst2kd_end_to_end_seconds",
                    "From the producer's publish to the bill saved in Kingdee.",
                )
                .buckets(e2e),
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            queue_messages: IntGaugeVec::new(
                Opts::new(
                    "jst2kd_queue_messages",
                    "Messages ready in the queue this process consumes.",
                ),
                &["queue"],
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            spans_dropped: counter(
                "jst2kd_spans_dropped_total",
                "Finished trace spans not exported (queue full, export failed).",
                &["reason"],
            ),
            events_dropped: events_dropped.clone(),
            outcomes: crate::outcomes::OutcomeLog::new(events_dropped),
            amqp_connected: IntGauge::new(
                "jst2kd_amqp_connected",
                "1 while connected to RabbitMQ with the topology declared.",
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            build_info: IntGaugeVec::new(
                Opts::new("jst2kd_build_info", "Build of this process."),
                &["version"],
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
            jst_token_expiry: GaugeVec::new(
                Opts::new(
                    "jst2kd_jst_token_expiry_timestamp_seconds",
                    "Unix time the current Jushuitan access token expires (0 while unknown).",
                ),
                &["app_kind"],
            )
            .unwrap_or_else(|e| unreachable_metric(&e)),
        };
        m.register_for(stages);
        Arc::new(m)
    }

    fn register_for(&self, stages: &[Stage]) {
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.amqp_connected.clone()),
            Box::new(self.events_dropped.clone()),
            Box::new(self.spans_dropped.clone()),
            Box::new(self.build_info.clone()),
            Box::new(self.published.clone()),
        ];
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in ["queue_full", "export_failed"] {
            self.spans_dropped.with_label_values(&[reason]);
        }
        let consumes = stages.iter().any(|s| *s != Stage::Producer);
        if consumes {
            collectors.push(Box::new(self.consumed.clone()));
            collectors.push(Box::new(self.retried.clone()));
            collectors.push(Box::new(self.dead_lettered.clone()));
            collectors.push(Box::new(self.queue_messages.clone()));
        }
        if stages.contains(&Stage::Producer) || stages.contains(&Stage::Transformer) {
            collectors.push(Box::new(self.skipped.clone()));
        }
        for stage in stages {
            let s = stage.as_str();
            match stage {
                Stage::Producer => {
                    self.published.with_label_values(&[s, "counts"]);
                    self.skipped.with_label_values(&[s, "already_published"]);
                    for o in JST_OUTCOMES {
                        self.jst_requests.with_label_values(&[o]);
                    }
                    collectors.push(Box::new(self.jst_requests.clone()));
                    collectors.push(Box::new(self.jst_request_seconds.clone()));
                    collectors.push(Box::new(self.checkpoint_timestamp.clone()));
                    collectors.push(Box::new(self.jst_token_expiry.clone()));
                }
                Stage::Transformer => {
                    for r in ["status", "no_lines"] {
                        self.skipped.with_label_values(&[s, r]);
                    }
                    for q in ["bills", "retry", "dead"] {
                        self.published.with_label_values(&[s, q]);
                    }
                    self.queue_messages.with_label_values(&["counts"]);
                    self.queue_messages.with_label_values(&["dead"]);
                }
                Stage::Loader => {
                    for q in ["retry", "dead"] {
                        self.published.with_label_values(&[s, q]);
                    }
                    for op in KINGDEE_OPS {
                        self.kingdee_request_seconds.with_label_values(&[op]);
                        for o in KINGDEE_OUTCOMES {
                            self.kingdee_requests.with_label_values(&[op, o]);
                        }
                    }
                    for r in LOADER_RESULTS {
                        self.loader_bills.with_label_values(&[r]);
                    }
                    self.queue_messages.with_label_values(&["bills"]);
                    self.queue_messages.with_label_values(&["dead"]);
                    collectors.push(Box::new(self.kingdee_requests.clone()));
                    collectors.push(Box::new(self.kingdee_request_seconds.clone()));
                    collectors.push(Box::new(self.loader_bills.clone()));
                    collectors.push(Box::new(self.loader_batch_size.clone()));
                    collectors.push(Box::new(self.end_to_end_seconds.clone()));
                }
            }
            if *stage != Stage::Producer {
                self.consumed.with_label_values(&[s]);
                self.retried.with_label_values(&[s]);
                for k in DeadKind::ALL {
                    self.dead_lettered.with_label_values(&[s, k.as_str()]);
                }
            }
        }
        for c in collectors {
            if let Err(e) = self.registry.register(c) {
                unreachable_metric(&e);
            }
        }
    }

    /// The text exposition of every registered metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!(error = %e, "Cannot encode metrics.");
        }
        out
    }

    /// Current value of a counter, for summaries and tests.
    pub fn count(vec: &IntCounterVec, labels: &[&str]) -> u64 {
        vec.get_metric_with_label_values(labels)
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

/// Liveness and readiness of one process: ready while every condition holds (the broker
/// connection, and whatever the stage adds, such as the producer's lock) and until shutdown.
#[derive(Default)]
pub struct Health {
    conditions: std::sync::Mutex<std::collections::BTreeMap<&'static str, bool>>,
    stopping: AtomicBool,
}

impl Health {
    /// A fresh, not-ready state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Ready as far as the broker goes: connected with the topology declared.
    pub fn set_ready(&self, ready: bool) {
        self.set("broker", ready);
    }
    /// Sets one named condition of readiness.
    pub fn set(&self, condition: &'static str, ok: bool) {
        self.conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(condition, ok);
    }
    /// From now on never ready again.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
    /// What `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        let conditions = self
            .conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !conditions.is_empty()
            && conditions.values().all(|ok| *ok)
            && !self.stopping.load(Ordering::SeqCst)
    }
}

/// Bounds of the metrics listener: it faces whatever can reach the port, so neither slow nor
/// many connections may hold it, and running out of file descriptors must not spin it.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (slowloris).
    pub header_timeout: std::time::Duration,
    /// Longest life of one connection, keep-alive included.
    pub connection_lifetime: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: std::time::Duration::from_secs(5),
            connection_lifetime: std::time::Duration::from_secs(60),
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on an already-bound listener until `cancel`,
/// within [`ServeLimits::default`].
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    serve_http_with(listener, metrics, health, cancel, ServeLimits::default()).await;
}

/// Serves within the given limits. Accept errors (out of file descriptors, …) back off from
/// 10 ms to 1 s and are logged at most once per 10 s, with how many there were.
pub async fn serve_http_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    cancel: CancellationToken,
    limits: ServeLimits,
) {
    use std::time::Duration;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Duration::from_millis(10);
    let mut errors = LogEvery::new(Duration::from_secs(10));
    let mut refused = LogEvery::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    if let Some(suppressed) = errors.tick() {
                        warn!(error = %e, suppressed, "Cannot accept a metrics connection; backing off.");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: close it at once rather than let it wait in a queue we do not bound.
            if let Some(suppressed) = refused.tick() {
                warn!(peer = %peer, suppressed, max = limits.max_connections, "Too many metrics connections; closing new ones.");
            }
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                let health = health.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics, &health)) }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_lifetime, connection).await {
                Ok(Err(e)) => {
                    debug!(peer = %peer, error = %e, "Metrics connection ended with an error.");
                }
                Ok(Ok(())) => {}
                Err(_) => debug!(peer = %peer, "Metrics connection outlived its limit; closed."),
            }
            drop(slot);
        });
    }
}

/// Lets a repeated log line through at most once per period, counting the ones held back.
struct LogEvery {
    period: std::time::Duration,
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl LogEvery {
    fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last line)` when a line may be written now.
    fn tick(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|t| now < t + self.period) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(metrics.render()),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        (&Method::GET, "/readyz") if health.is_ready() => {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            Bytes::from_static(b"not ready\n"),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// Binds the metrics listener.
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "metrics.listen must be host:port",
        )
    })?;
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_ids_go_inside_a_json_line_and_at_the_end_of_a_human_one() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let json = with_ids(
            "{\"level\":\"INFO\",\"message\":\"Saved.\"}\n",
            t,
            "00f067aa0ba902b7",
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("still one JSON object");
        assert_eq!(v["trace_id"], t);
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert_eq!(v["message"], "Saved.");
        assert!(json.ends_with("}\n") && json.matches('\n').count() == 1);
        let human = with_ids("12:00:01 INFO Saved. io_id=7\n", t, "00f067aa0ba902b7");
        assert_eq!(
            human,
            format!("12:00:01 INFO Saved. io_id=7 trace_id={t} span_id=00f067aa0ba902b7\n")
        );
    }

    use super::*;

    #[test]
    fn every_owned_metric_is_exported_from_the_start() {
        let m = Metrics::new(&[Stage::Producer, Stage::Transformer, Stage::Loader]);
        // The Jushuitan client resolves the token gauge with its app kind.
        m.jst_token_expiry.with_label_values(&["own"]);
        let text = String::from_utf8(m.render()).expect("utf-8");
        for name in [
            "jst2kd_consumed_total",
            "jst2kd_published_total",
            "jst2kd_retried_total",
            "jst2kd_dead_lettered_total",
            "jst2kd_skipped_total",
            "jst2kd_jst_requests_total",
            "jst2kd_jst_request_seconds",
            "jst2kd_producer_checkpoint_timestamp_seconds",
            "jst2kd_kingdee_requests_total",
            "jst2kd_kingdee_request_seconds",
            "jst2kd_loader_bills_total",
            "jst2kd_loader_batch_size",
            "jst2kd_end_to_end_seconds",
            "jst2kd_queue_messages",
            "jst2kd_amqp_connected",
            "jst2kd_build_info",
            "jst2kd_jst_token_expiry_timestamp_seconds",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(
            text.contains(r#"jst2kd_dead_lettered_total{kind="mapping",stage="transformer"} 0"#)
        );
    }

    #[test]
    fn a_producer_does_not_export_loader_metrics() {
        let m = Metrics::new(&[Stage::Producer]);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("jst2kd_jst_requests_total"));
        assert!(!text.contains("jst2kd_loader_bills_total"));
    }

    #[test]
    fn readiness_needs_every_condition_and_ends_with_shutdown() {
        let h = Health::new();
        assert!(!h.is_ready());
        h.set_ready(true);
        assert!(h.is_ready());
        h.set("lock", false);
        assert!(!h.is_ready());
        h.set("lock", true);
        assert!(h.is_ready());
        h.set_stopping();
        assert!(!h.is_ready());
    }
}
