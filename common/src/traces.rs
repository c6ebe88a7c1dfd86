//! Traces with OpenTelemetry: one count document is one trace across the three workers.
//!
//! Off unless the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then each worker exports the `tracing` spans
//! of its work over OTLP, HTTP/protobuf (the SDKs' default protocol; the exporter appends
//! `/v1/traces` to the generic endpoint, as the specification says), through
//! `tracing-opentelemetry`. `OTEL_SERVICE_NAME` names the service (default: the binary's
//! name); `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` (per export request, our
//! client enforces it), `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` and
//! `OTEL_BSP_SCHEDULE_DELAY` mean what the specification says
//! (<https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/>).
//! `RUST_LOG` filters the log lines only: the exported spans are our crates' `info` spans and
//! events, whatever the log level.
//!
//! Invariants:
//! - **Exporting never blocks or fails the pipeline.** A finished span goes into a bounded
//!   queue with `try_send`; a full queue drops it and counts it
//!   (`jst2kd_spans_dropped_total{reason="queue_full"}`), a failed export counts its spans
//!   (`reason="export_failed"`). One task of the worker's runtime exports, a batch at a time,
//!   with our HTTP client (no redirects, a timeout).
//! - **The `traceparent` header carries the trace** (W3C Trace Context): the producer's publish
//!   span is the root of a document's trace, the transformer's span is its child, the bills it
//!   publishes carry the transformer's span, the loader's span of a bill is that span's child,
//!   and a BatchSave span links to every bill it saves. A retry or a dead letter keeps the
//!   header, so it stays in the document's trace. With tracing off the header is still set
//!   (a random root) and passed on unchanged.
//! - **A worker flushes its spans when it stops** ([`Traces::flush`]), within a bounded time.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot};
use tracing::{Span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;

use crate::messages::{Headers, header};

/// Whether spans are exported: set once, when a worker starts with an endpoint.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An `info_span!` when traces are exported, else [`Span::none`]: with tracing off the work
/// on a message costs no span at all (no allocation, no field formatting).
#[macro_export]
macro_rules! trace_span {
    ($($arg:tt)*) => {
        if $crate::traces::enabled() {
            ::tracing::info_span!($($arg)*)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// The `tracing` layer that turns spans into OpenTelemetry spans, with its own filter (our
/// crates at `info`), so `RUST_LOG` cannot turn traces off by accident.
pub type Layer = tracing_subscriber::filter::Filtered<
    tracing_opentelemetry::OpenTelemetryLayer<
        tracing_subscriber::Registry,
        opentelemetry_sdk::trace::Tracer,
    >,
    tracing_subscriber::filter::Targets,
    tracing_subscriber::Registry,
>;

/// The crates whose spans and events are exported.
const TRACED: [&str; 7] = [
    "producer",
    "transformer",
    "loader",
    "common",
    "jst",
    "kingdee",
    "jst2kd",
];

/// Links a BatchSave span keeps at most: one per bill of the largest `loader.batch_size`
/// (the SDK's default, 128, would cut them silently).
const MAX_LINKS: u32 = 1000;

/// Why the trace set-up could not be made (an endpoint variable that is not a URL). A
/// malformed `OTEL_EXPORTER_OTLP_HEADERS` pair is left out by the exporter without a word;
/// the collector's refusal then shows as `export_failed`.
#[derive(Debug, thiserror::Error)]
#[error("traces: {0}")]
pub struct TraceError(String);

/// What the environment asks of the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    service: String,
    max_queue: usize,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl Settings {
    fn from_env(default_service: &str) -> Self {
        Self::from_lookup(default_service, |name| std::env::var(name).ok())
    }

    fn from_lookup(default_service: &str, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let num = |name: &str, default: usize| {
            var(name)
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let max_queue = num("OTEL_BSP_MAX_QUEUE_SIZE", 2048);
        Self {
            service: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string()),
            max_queue,
            max_batch: num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).min(max_queue),
            delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000) as u64),
            timeout: Duration::from_millis(
                var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                    .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .unwrap_or(10_000),
            ),
        }
    }
}

/// Whether the environment turns tracing on.
fn wanted() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// The finished spans on their way to the export task.
#[derive(Debug)]
struct Queue {
    spans: mpsc::Sender<SpanData>,
    dropped: Arc<OnceLock<IntCounterVec>>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // Never waits: a full queue (an exporter slower than the pipeline) loses the span.
        if self.spans.try_send(span).is_err()
            && let Some(dropped) = self.dropped.get()
        {
            dropped.with_label_values(&["queue_full"]).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Flushing is asynchronous, through [`Traces::flush`]; nothing here can wait for it.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The exporting side of a worker's traces; [`Traces::start`] it in the worker's runtime and
/// [`Traces::flush`] it when the worker stops.
pub struct Traces {
    settings: Settings,
    exporter: Option<opentelemetry_otlp::SpanExporter>,
    spans: Option<mpsc::Receiver<SpanData>>,
    flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
    flush_requests: Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>,
    dropped: Arc<OnceLock<IntCounterVec>>,
    // Kept so the provider outlives every span (the layer holds a tracer of it too).
    _provider: SdkTracerProvider,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The exporter holds the endpoint's headers, which may be credentials.
        f.debug_struct("Traces")
            .field("service", &self.settings.service)
            .finish_non_exhaustive()
    }
}

/// Sets tracing up from the environment: `None` when no OTLP endpoint is set (nothing is
/// built, nothing exported, nothing waits).
pub fn from_env(default_service: &str) -> Result<Option<(Traces, Layer)>, TraceError> {
    if !wanted() {
        return Ok(None);
    }
    let settings = Settings::from_env(default_service);
    // The exporter applies OTEL_EXPORTER_OTLP_TIMEOUT only to a client it builds itself: ours
    // (no redirects, like every API client) enforces it on each request.
    let client = crate::http::client(settings.timeout).map_err(|e| TraceError(e.to_string()))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_http_client(client)
        .build()
        .map_err(|e| TraceError(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(settings.service.clone())
        .build();
    exporter.set_resource(&resource);
    let (spans_tx, spans_rx) = mpsc::channel(settings.max_queue);
    let dropped = Arc::new(OnceLock::new());
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_max_links_per_span(MAX_LINKS)
        .with_span_processor(Queue {
            spans: spans_tx,
            dropped: dropped.clone(),
        })
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("jst2kd"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(
            TRACED
                .iter()
                .fold(tracing_subscriber::filter::Targets::new(), |t, name| {
                    t.with_target(*name, tracing::Level::INFO)
                }),
        );
    let (flushes, flush_requests) = mpsc::unbounded_channel();
    ENABLED.store(true, Ordering::Relaxed);
    let traces = Traces {
        settings,
        exporter: Some(exporter),
        spans: Some(spans_rx),
        flushes,
        flush_requests: Some(flush_requests),
        dropped,
        _provider: provider,
    };
    Ok(Some((traces, layer)))
}

impl Traces {
    /// The service name spans are exported under.
    pub fn service(&self) -> &str {
        &self.settings.service
    }

    /// Starts the export task on the current runtime; drops are counted in `dropped`
    /// (`jst2kd_spans_dropped_total{reason}`).
    pub fn start(&mut self, dropped: IntCounterVec) {
        let _ = self.dropped.set(dropped.clone());
        let (Some(exporter), Some(spans), Some(flushes)) = (
            self.exporter.take(),
            self.spans.take(),
            self.flush_requests.take(),
        ) else {
            return;
        };
        tokio::spawn(export_loop(
            exporter,
            spans,
            flushes,
            self.settings.clone(),
            dropped,
        ));
    }

    /// Exports every span finished so far; waits at most `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        let (reply, done) = oneshot::channel();
        if self.flushes.send(reply).is_err() {
            return;
        }
        if tokio::time::timeout(timeout, done).await.is_err() {
            warn!(
                timeout_s = timeout.as_secs(),
                "Spans not exported when stopping (the trace endpoint is slow or down)."
            );
        }
    }
}

/// Batches spans and exports them, one request at a time, until the process ends.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut spans: mpsc::Receiver<SpanData>,
    mut flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    settings: Settings,
    dropped: IntCounterVec,
) {
    let mut failing = false;
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.max_batch);
    loop {
        let mut flush = None;
        // A batch is sent when full, `delay` after its first span, or on a flush.
        if batch.is_empty() {
            tokio::select! {
                n = spans.recv_many(&mut batch, settings.max_batch) => if n == 0 { return },
                // Once `Traces` is gone (the process is ending) no flush can come: the branch
                // is disabled rather than ready forever.
                Some(reply) = flushes.recv() => flush = Some(reply),
            }
        }
        if flush.is_none() && batch.len() < settings.max_batch {
            let deadline = tokio::time::Instant::now() + settings.delay;
            while batch.len() < settings.max_batch {
                let room = settings.max_batch - batch.len();
                tokio::select! {
                    n = spans.recv_many(&mut batch, room) => if n == 0 { break },
                    () = tokio::time::sleep_until(deadline) => break,
                    Some(reply) = flushes.recv() => { flush = Some(reply); break }
                }
            }
        }
        if flush.is_some() {
            while let Ok(span) = spans.try_recv() {
                batch.push(span);
            }
        }
        while !batch.is_empty() {
            let rest = if batch.len() > settings.max_batch {
                batch.split_off(settings.max_batch)
            } else {
                Vec::new()
            };
            let sent = std::mem::replace(&mut batch, rest);
            let count = sent.len() as u64;
            match exporter.export(sent).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("Exporting spans again.");
                }
                Ok(()) => {}
                Err(e) => {
                    dropped.with_label_values(&["export_failed"]).inc_by(count);
                    if !failing {
                        failing = true;
                        warn!(error = %crate::http::escape(&e.to_string()), spans = count, "Cannot export spans; they are dropped (counted in jst2kd_spans_dropped_total) and the work goes on.");
                    }
                }
            }
        }
        if let Some(reply) = flush {
            let _ = reply.send(());
        }
    }
}

/// The `traceparent` carrier of the W3C propagator.
struct Carrier(HashMap<String, String>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// Makes `span` (just created, not yet entered) a child of the span a message's `traceparent`
/// names, so the work on the message joins the document's trace. Without tracing, or without
/// a readable header, nothing happens (the span then starts a trace of its own).
pub fn continue_from(span: &Span, headers: &Headers) {
    if !enabled() {
        return;
    }
    let Some(parent) = headers.get(header::TRACEPARENT).and_then(|v| v.as_str()) else {
        return;
    };
    let carrier = Carrier(HashMap::from([(
        header::TRACEPARENT.to_string(),
        parent.to_string(),
    )]));
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent` naming `span`, for the messages published in it; `None` without tracing.
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier(HashMap::new());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.0.remove(header::TRACEPARENT)
}

/// Links `span` (just created, not yet entered) to the span of `other`: a BatchSave to the
/// bills it saves.
pub fn link(span: &Span, other: &Span) {
    if !enabled() {
        return;
    }
    let linked = other.context().span().span_context().clone();
    span.add_link(linked);
}

/// Longest reason a span's status carries (the dead-letter header keeps the whole of it).
const STATUS_BYTES: usize = 512;

/// Marks the current span failed: its message was dead-lettered (`kind`) with `reason`.
pub fn dead_lettered(kind: &'static str, reason: &str) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.set_attribute("jst2kd.error_kind", kind);
    failed(&span, &format!("dead-lettered ({kind}): {reason}"));
}

/// Marks `span` failed with `reason` (cut to [`STATUS_BYTES`]).
pub fn failed(span: &Span, reason: &str) {
    if !enabled() {
        return;
    }
    let mut end = reason.len().min(STATUS_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    span.set_status(Status::error(reason[..end].to_string()));
}

/// The trace and span id of the span an event belongs to, for log lines.
pub(crate) fn ids_of(id: &tracing::span::Id) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = tracing::dispatcher::get_default(|dispatch| {
        tracing_opentelemetry::get_otel_context(id, dispatch)
    })?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_variables_tune_the_queue_and_unreadable_values_keep_the_defaults() {
        let none = Settings::from_lookup("loader", |_| None);
        assert_eq!(
            none,
            Settings {
                service: "loader".into(),
                max_queue: 2048,
                max_batch: 512,
                delay: Duration::from_secs(5),
                timeout: Duration::from_secs(10),
            }
        );
        let vars = HashMap::from([
            ("OTEL_SERVICE_NAME", "jst2kd-loader-eu"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ]);
        let set = Settings::from_lookup("loader", |n| vars.get(n).map(|v| v.to_string()));
        assert_eq!(set.service, "jst2kd-loader-eu");
        assert_eq!(
            (set.max_queue, set.max_batch),
            (100, 100),
            "a batch never exceeds the queue"
        );
        assert_eq!(set.delay, Duration::from_millis(250));
        assert_eq!(set.timeout, Duration::from_secs(3));
        let bad = HashMap::from([
            ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
            ("OTEL_SERVICE_NAME", " "),
        ]);
        let kept = Settings::from_lookup("producer", |n| bad.get(n).map(|v| v.to_string()));
        assert_eq!((kept.service.as_str(), kept.max_queue), ("producer", 2048));
    }

    #[test]
    fn without_tracing_the_helpers_do_nothing() {
        // ENABLED is only ever set by from_env with an endpoint, which no unit test does.
        let span = tracing::info_span!("map");
        let mut headers = Headers::new();
        headers.insert(
            header::TRACEPARENT.into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        continue_from(&span, &headers);
        assert_eq!(traceparent(&span), None);
    }
}
